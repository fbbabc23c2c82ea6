//! Normalization: a verified provider payload becomes unified [`Event`]s.
//!
//! A normalizer never fails the request: whatever it cannot turn into an event (an entry for
//! a business id no tenant owns, a body that is not the JSON it expects, an object of a shape
//! it does not know) becomes a [`DeadLetter`] carrying the part and the reason, and the
//! provider still gets its 200 once both are durably stored (docs/architecture.md step 3).
//!
//! Normalizers take `&Verified`: unverified bytes cannot reach them.

pub mod bird;
pub mod messagebird;
pub mod meta;
pub mod plivo;
pub mod sinch;
pub mod standard;
#[cfg(test)]
mod status_vocabulary;
pub mod telegram;
pub mod telnyx;
#[cfg(test)]
pub mod testing;
pub mod twilio;
pub mod util;
pub mod vonage;

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;

use crate::event::Event;

/// What a normalizer needs to know about the request besides its body.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The configured source id (`/webhooks/{source}`).
    pub source: &'a str,
    /// Gateway time of receipt, the same for every event of the request.
    pub received_at: OffsetDateTime,
    /// Whether each event carries the provider's original object in `raw`.
    pub include_raw: bool,
    /// Business-side id (WhatsApp phone_number_id or WABA id, Page id, Instagram account id,
    /// a phone number...) → tenant.
    pub channels: &'a HashMap<String, String>,
    /// Tenant for providers whose source belongs to a single tenant (non-Meta sources).
    pub default_tenant: Option<&'a str>,
}

impl Context<'_> {
    /// The tenant owning a business id: the channel map first, then the source's default.
    pub fn tenant_for(&self, business_id: &str) -> Option<&str> {
        self.channels
            .get(business_id)
            .map(String::as_str)
            .or(self.default_tenant)
    }
}

/// Stable reasons for dead letters (the `reason` field of a dead-letter entry and the
/// `reason` label of `switchboard_deadletters_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The body is not valid JSON (or not the encoding the provider documents).
    InvalidBody,
    /// The body parsed but its shape is not one the provider documents.
    UnexpectedShape,
    /// The business id of this entry is not in the source's channel map.
    UnknownChannel,
    /// A notification of a kind this version does not model, kept whole.
    Unsupported,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidBody => "invalid_body",
            DeadReason::UnexpectedShape => "unexpected_shape",
            DeadReason::UnknownChannel => "unknown_channel",
            DeadReason::Unsupported => "unsupported",
        }
    }
}

/// A verified part of a payload that could not become an event.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: DeadReason,
    /// Human-readable detail, e.g. "phone_number_id 1234 is not in source meta_demo's channels".
    pub detail: String,
    /// The part that failed (an entry, a change, a messaging item), or `None` when the whole
    /// body failed (the body is stored with the dead letter either way).
    pub part: Option<Value>,
}

/// The outcome of normalizing one request.
#[derive(Debug, Default)]
pub struct Normalized {
    pub events: Vec<Event>,
    pub dead_letters: Vec<DeadLetter>,
}
