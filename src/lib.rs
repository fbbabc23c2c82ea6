//! switchboard: webhook ingestion and conversation routing for omnichannel CRMs.
//!
//! The pipeline, one module per stage (see DESIGN.md "the path of one webhook"):
//! [`ingest`] (HTTP) → [`verify`] → [`normalize`] → [`accept`] (dedup + enqueue) →
//! [`route`] (inbound → events) → [`persist`] (events → PostgreSQL); [`config`], [`telemetry`] and [`internal_events`]
//! (metrics + logs) serve them all.

pub mod accept;
pub mod admin;
pub mod api;
pub mod config;
pub mod error;
pub mod event;
pub mod https;
pub mod ingest;
pub mod internal_events;
pub mod normalize;
pub mod ops;
pub mod persist;
pub mod route;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod verify;
