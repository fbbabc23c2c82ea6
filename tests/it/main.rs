//! The integration-test binary: real HTTP on port 0, real Redis, real PostgreSQL.

mod admin;
mod backend;
mod backend_groups;
mod cli;
mod cluster;
mod deploy;
mod helpers;
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
mod routing_queues;
mod routing_sim;
mod routing_store;
mod webhook;
