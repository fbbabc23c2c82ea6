//! The integration-test binary: real HTTP on port 0, real Redis.

mod backend;
mod cli;
mod deploy;
mod helpers;
mod metrics;
mod outage;
mod props;
mod providers;
mod routing;
mod routing_store;
mod webhook;
