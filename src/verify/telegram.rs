//! Telegram Bot API (`X-Telegram-Bot-Api-Secret-Token`): signature verification.
//!
//! WORK IN PROGRESS (issue 3).

use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::telegram::TelegramSourceConfig;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &["x-telegram-bot-api-secret-token"];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

/// What a Telegram source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    config: TelegramSourceConfig,
}

impl Keys {
    pub fn from_config(c: &TelegramSourceConfig) -> Keys {
        Keys { config: c.clone() }
    }
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let _ = (&req, keys);
    Err(VerifyError::Missing)
}

/// The headers a Telegram request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness).
pub fn sign(c: &TelegramSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let _ = (c, req);
    Err("not yet".into())
}
