//! Plivo Messaging (signature V3 and V2): signature verification.
//!
//! WORK IN PROGRESS (issue 3).

use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::plivo::PlivoSourceConfig;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/x-www-form-urlencoded", "application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &["x-plivo-signature-v3", "x-plivo-signature-ma-v3", "x-plivo-signature-v3-nonce", "x-plivo-signature-v2", "x-plivo-signature-ma-v2", "x-plivo-signature-v2-nonce"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = true;

/// What a Plivo source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    config: PlivoSourceConfig,
}

impl Keys {
    pub fn from_config(c: &PlivoSourceConfig) -> Keys {
        Keys { config: c.clone() }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let _ = (&req, keys);
    Err(VerifyError::Missing)
}

/// The headers a Plivo request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness).
pub fn sign(c: &PlivoSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let _ = (c, req);
    Err("not yet".into())
}
