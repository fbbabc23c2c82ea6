//! The operator API under `/v1/` (token-authenticated JSON): routing administration
//! ([`routing`]). The read API of the streams (`/v1/events`, `/v1/deadletters`) lives with
//! the ingest handlers.
//!
//! Handlers stay thin: authenticate, parse, call the engine, map its errors to the catalogue
//! in `crate::error`. Bodies are parsed here (not with actix's extractors) so that every
//! refusal is a `{code, message}` body.

pub mod admin;
pub mod openapi;
pub mod privacy;
pub mod routing;
pub mod stream;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    routing::configure(cfg);
    stream::configure(cfg);
    privacy::configure(cfg);
    admin::configure(cfg);
    openapi::configure(cfg);
}
