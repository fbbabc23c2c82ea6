//! switchboard: webhook ingestion and conversation routing for omnichannel CRMs.
//!
//! The pipeline, one module per stage (see docs/architecture.md, "The path of one webhook"):
//! [`ingest`] (HTTP) → [`verify`] → [`normalize`] → [`accept`] (dedup + enqueue) →
//! [`route`] (inbound → events) → [`persist`] (events → PostgreSQL) and [`delivery`]
//! (events → the tenants' HTTP endpoints).
//!
//! The modules form layers, each using only those below it (checked by
//! `tests/it/layers.rs`), bottom to top: [`error`], [`event`], [`crypto`]; [`config`]
//! (data and validation, routing rule sets included), [`internal_events`]; [`telemetry`],
//! [`limits`], [`accept`], [`https`]; [`verify`]; [`normalize`]; [`route`]; [`persist`], [`source`];
//! [`admin`]; [`delivery`]; [`state`]; [`http`]; [`ingest`], [`api`]; [`ops`]; [`startup`].

pub mod accept;
pub mod admin;
pub mod api;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod error;
pub mod event;
pub mod http;
pub mod https;
pub mod ingest;
pub mod internal_events;
pub mod limits;
pub mod normalize;
pub mod ops;
pub mod persist;
pub mod route;
pub mod source;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod verify;
