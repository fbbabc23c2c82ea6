//! Meta normalizer (placeholder until the full WhatsApp/Messenger/Instagram mapping lands).

use super::{Context, Normalized};
use crate::verify::Verified;

pub fn normalize(_req: &Verified, _ctx: &Context<'_>) -> Normalized {
    Normalized::default()
}
