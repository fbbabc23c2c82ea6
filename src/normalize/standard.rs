//! Standard Webhooks senders (v1 HMAC-SHA256, v1a Ed25519): payloads into unified events.
//!
//! WORK IN PROGRESS (issue 3).

use super::{Context, Normalized};
use crate::verify::Verified;

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let _ = (v, ctx);
    Normalized::default()
}
