//! Standard Webhooks senders (v1 HMAC-SHA256, v1a Ed25519): signature verification.
//!
//! WORK IN PROGRESS (issue 3).

use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::standard::StandardSourceConfig;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &["webhook-id", "webhook-timestamp", "webhook-signature"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

/// What a Standard Webhooks source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    config: StandardSourceConfig,
}

impl Keys {
    pub fn from_config(c: &StandardSourceConfig) -> Keys {
        Keys { config: c.clone() }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let _ = (&req, keys);
    Err(VerifyError::Missing)
}

/// The headers a Standard Webhooks request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness).
pub fn sign(c: &StandardSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let _ = (c, req);
    Err("not yet".into())
}
