//! Small helpers shared by the normalizers: reading JSON fields leniently, provider times,
//! and adding events and dead letters to a [`Normalized`]. None of them panics on any input.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Context, DeadLetter, DeadReason, Normalized};
use crate::event::Event;

/// A string or number field as a string (Meta sends both for ids). An empty string counts as
/// absent: an id of "" would merge every contact without one into a single conversation.
pub fn s(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The states of `status.state`: switchboard's one vocabulary for every provider.
pub const STATES: &[&str] = &[
    "accepted",
    "queued",
    "sending",
    "sent",
    "delivered",
    "read",
    "played",
    "failed",
    "undelivered",
    "rejected",
    "expired",
    "deleted",
    "unknown",
];

/// A provider's status word that is meant to be one of [`STATES`] (Meta, Standard Webhooks):
/// `(word, None)` when it is, else `("unknown", Some(word))` so the word is kept in
/// `status.provider_state` and a consumer never meets a state outside the vocabulary.
pub fn shared_state(word: &str) -> (String, Option<String>) {
    if STATES.contains(&word) {
        (word.to_string(), None)
    } else {
        ("unknown".to_string(), Some(word.to_string()))
    }
}

pub fn strip_plus(id: &str) -> String {
    id.strip_prefix('+').unwrap_or(id).to_string()
}

/// WhatsApp: unix seconds as a string (or number).
pub fn secs(v: &Value, key: &str) -> Option<OffsetDateTime> {
    let n: i64 = s(v, key)?.parse().ok()?;
    OffsetDateTime::from_unix_timestamp(n).ok()
}

/// Messenger/Instagram: unix milliseconds.
pub fn millis(v: &Value, key: &str) -> Option<OffsetDateTime> {
    let n: i128 = s(v, key)?.parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(n.checked_mul(1_000_000)?).ok()
}

/// The event's `raw` from the provider's object: its JSON text, written straight from the
/// parsed payload (no copy of the tree).
pub fn raw(ctx: &Context<'_>, v: &Value) -> Option<crate::event::Raw> {
    ctx.include_raw.then(|| crate::event::Raw::of(v))
}

pub fn finish(mut event: Event, out: &mut Normalized) {
    event.derive_conversation_id();
    out.events.push(event);
}

pub fn unknown_channel(detail: String, part: &Value, out: &mut Normalized) {
    out.dead_letters.push(DeadLetter {
        reason: DeadReason::UnknownChannel,
        detail,
        part: Some(part.clone()),
    });
}

/// An RFC 3339 time (`2024-01-01T12:00:00Z`, `...+02:00`, fractional seconds).
pub fn rfc3339(v: &Value, key: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.get(key)?.as_str()?, &Rfc3339).ok()
}

/// The body as JSON, or a dead letter for the whole body.
pub fn json_body(body: &[u8], out: &mut Normalized) -> Option<Value> {
    match serde_json::from_slice(body) {
        Ok(v) => Some(v),
        Err(e) => {
            out.dead_letters.push(DeadLetter {
                reason: DeadReason::InvalidBody,
                detail: format!("the body is not JSON: {e}"),
                part: None,
            });
            None
        }
    }
}

/// A part whose shape is not one the provider documents.
pub fn unexpected(detail: String, part: &Value, out: &mut Normalized) {
    out.dead_letters.push(DeadLetter {
        reason: DeadReason::UnexpectedShape,
        detail,
        part: Some(part.clone()),
    });
}

/// The tenant of a business address (the number, sender or bot the contact wrote to), or a
/// dead letter for `part` when neither the channel map nor the source's tenant claims it.
pub fn tenant_or_dead<'c>(
    ctx: &'c Context<'_>,
    business: &str,
    part: &Value,
    out: &mut Normalized,
) -> Option<&'c str> {
    let tenant = ctx.tenant_for(business);
    if tenant.is_none() {
        unknown_channel(
            format!(
                "business address {business:?} is not in source {}'s channels and the source has no tenant",
                ctx.source
            ),
            part,
            out,
        );
    }
    tenant
}
