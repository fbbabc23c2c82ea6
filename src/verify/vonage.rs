//! Vonage Messages API (JWT) and SMS API (legacy `sig` parameter): signature verification.
//!
//! WORK IN PROGRESS (issue 3).

use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::vonage::VonageSourceConfig;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json", "application/x-www-form-urlencoded"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &["authorization"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = true;

/// What a Vonage source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    config: VonageSourceConfig,
}

impl Keys {
    pub fn from_config(c: &VonageSourceConfig) -> Keys {
        Keys { config: c.clone() }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let _ = (&req, keys);
    Err(VerifyError::Missing)
}

/// The headers a Vonage request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness).
pub fn sign(c: &VonageSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let _ = (c, req);
    Err("not yet".into())
}
