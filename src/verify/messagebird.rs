//! MessageBird (`MessageBird-Signature-JWT`, legacy `MessageBird-Signature`): signature verification.
//!
//! WORK IN PROGRESS (issue 3).

use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::messagebird::MessagebirdSourceConfig;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json", "application/x-www-form-urlencoded"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &["messagebird-signature-jwt", "messagebird-signature", "messagebird-request-timestamp"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = true;

/// What a MessageBird source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    config: MessagebirdSourceConfig,
}

impl Keys {
    pub fn from_config(c: &MessagebirdSourceConfig) -> Keys {
        Keys { config: c.clone() }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let _ = (&req, keys);
    Err(VerifyError::Missing)
}

/// The headers a MessageBird request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness).
pub fn sign(c: &MessagebirdSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let _ = (c, req);
    Err("not yet".into())
}
