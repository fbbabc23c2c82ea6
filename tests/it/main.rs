//! The integration-test binary: real HTTP on port 0, real Redis, real PostgreSQL.

mod admin;
mod backend;
mod backend_groups;
mod cli;
mod cluster;
mod db_roles;
mod deploy;
mod docs;
mod erasure;
mod hardening;
mod helpers;
mod isolation;
mod layers;
mod metrics;
mod ops;
mod outage;
mod persist;
mod persist_outage;
mod pg;
mod privacy;
mod props;
mod providers;
mod routing;
mod routing_store;
mod webhook;
