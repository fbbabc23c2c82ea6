//! MessageBird (`MessageBird-Signature-JWT`, legacy `MessageBird-Signature`): payloads into unified events.
//!
//! WORK IN PROGRESS (issue 3).

use super::{Context, Normalized};
use crate::verify::Verified;

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let _ = (v, ctx);
    Normalized::default()
}
