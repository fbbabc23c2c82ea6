//! The unified event: the contract with CRM backends (`switchboard.event.v1`).
//!
//! Every provider's payload becomes one or more [`Event`]s. This module owns the envelope,
//! the identities derived from it (event id, dedup key, conversation id) and their stability
//! rules; [`content`] owns the typed bodies (message, status, notification).
//!
//! Stability rules a consumer may rely on:
//! - `event_id` is a pure function of the source the webhook came to and the provider's
//!   identity of the thing that happened (provider message id, plus the status state for
//!   statuses), so a redelivered webhook produces the same `event_id` and an at-least-once
//!   consumer can deduplicate on it. The source is part of it so that nothing sent to one
//!   source (one tenant) can be taken for a duplicate of what another receives.
//! - `conversation_id` is a pure function of (tenant, channel, business id, contact id).
//! - Fields are only ever added within v1; absent optional fields are omitted, not `null`.

pub mod content;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use content::*;

/// The value of `schema` on every event of this version.
pub const SCHEMA_V1: &str = "switchboard.event.v1";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A message from a contact (or, with `direction = outbound`, an echo of one we sent).
    Message,
    /// Delivery state of a message (sent, delivered, read, failed, ...).
    Status,
    /// A reaction added to or removed from a message.
    Reaction,
    /// A tap on a postback button (Messenger/Instagram), carrying its payload.
    Postback,
    /// A contact arrived through a referral (ad, link, QR) without a message.
    Referral,
    /// A system message about a contact (changed number, changed identity...).
    System,
    /// Any other provider notification (template status, account/quality updates...).
    Notification,
    /// Errors the provider reported without a message or status to attach them to.
    Error,
    /// A routing change made without a message from the contact (capacity freed, transfer,
    /// close, requeue, overflow): carries `assignment` and the conversation's parties.
    Assignment,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Status => "status",
            EventKind::Reaction => "reaction",
            EventKind::Postback => "postback",
            EventKind::Referral => "referral",
            EventKind::System => "system",
            EventKind::Notification => "notification",
            EventKind::Error => "error",
            EventKind::Assignment => "assignment",
        }
    }
}

/// Who sent the webhook. A closed set: every provider has its own verifier and normalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Meta,
    Twilio,
    Vonage,
    Messagebird,
    Bird,
    Telnyx,
    Plivo,
    Sinch,
    Telegram,
    Standard,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Meta => "meta",
            Provider::Twilio => "twilio",
            Provider::Vonage => "vonage",
            Provider::Messagebird => "messagebird",
            Provider::Bird => "bird",
            Provider::Telnyx => "telnyx",
            Provider::Plivo => "plivo",
            Provider::Sinch => "sinch",
            Provider::Telegram => "telegram",
            Provider::Standard => "standard",
        }
    }
}

/// The messaging channel the event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Whatsapp,
    Messenger,
    Instagram,
    Sms,
    Mms,
    Rcs,
    Viber,
    Telegram,
    Other,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Messenger => "messenger",
            Channel::Instagram => "instagram",
            Channel::Sms => "sms",
            Channel::Mms => "mms",
            Channel::Rcs => "rcs",
            Channel::Viber => "viber",
            Channel::Telegram => "telegram",
            Channel::Other => "other",
        }
    }
}

/// Inbound: the contact wrote to the business. Outbound: the business side (an echo of a
/// message sent from another app or the provider's inbox, or a status of a message we sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One side of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Party {
    /// Stable address: E.164 digits for phones (no `+`), PSID/IGSID, business-scoped user id
    /// when a WhatsApp user has no phone number in the payload, page id, phone_number_id...
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Human-readable address of a business side (display phone number, page name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// WhatsApp username (`profile.username`), when the user has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Phone number identity (WhatsApp `wa_id`), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// WhatsApp business-scoped user id (`user_id`, 2026).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// WhatsApp parent business-scoped user id (`parent_user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// The contact's language as the provider reports it (Telegram `language_code`, an
    /// IETF tag such as "en" or "pt-BR"), for routing rules on language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Added by the routing engine (docs/architecture.md steps 7-9): who the conversation is assigned to,
/// how it was chosen and why. On `kind = message` (and reaction, postback, referral) events it
/// is the decision for that event; on `kind = assignment` events it is a change made without
/// a message (capacity freed, transfer, close, requeue, overflow). Absent on statuses and
/// notifications, and for tenants without routing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Assignment {
    /// What happened: `assigned` (a new owner), `kept` (the open conversation stays with its
    /// owner), `queued` (waiting for capacity), `waiting` (already queued), `transferred`,
    /// `requeued` (owner went offline), `overflowed` (moved to the fallback queue after a
    /// wait), `closed`, `unrouted` (queues full: not queued); with offers (a rule's
    /// `offer_timeout_secs`): `offered` (the agent holds a slot for it until they answer or
    /// `offer_expires_at`; a message while the offer is pending repeats it with the same
    /// `seq`), `accepted` (the agent now owns it), `rejected` and `expired` (back to its
    /// queue for the next candidate; `previous_agent` is the agent who had the offer).
    #[serde(default)]
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The owner before this change (transfer, reassignment after going offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The queue the conversation waits in or was served from (`team:<id>`, `rule:<id>`,
    /// `rule:<id>:fallback`, `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The rule that matched; absent when the tenant default applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub strategy: String,
    /// A short explanation, e.g. "rule vip-es → team es-sales, least_loaded: alice 2/5
    /// open, 3 candidates".
    pub reason: String,
    #[serde(default)]
    pub queued: bool,
    /// Whether the conversation waited in a queue before this assignment, and how long.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waited: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Queue priority of the conversation (0..=100, higher first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Eligible candidates the strategy ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<u32>,
    /// `offered`: when the offer expires if the agent does not answer (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_expires_at: Option<String>,
    /// The conversation's change counter after this decision: it grows by one with every
    /// change (assigned, queued, transferred, closed...) and stays for `kept`/`waiting`.
    /// Events of one conversation can reach the stream out of order when several routers
    /// run; apply a change only if its `seq` is above the last one you applied.
    #[serde(default)]
    pub seq: u64,
}

/// The unified event. See the module docs for the stability rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub schema: String,
    /// Stable delivery identity, the same on every redelivery: `evt_` + 32 hex digits derived
    /// from the source and the provider's identity of what happened, so the same provider id
    /// on two sources is two events (docs/events.md).
    pub event_id: String,
    pub kind: EventKind,
    pub tenant: String,
    pub source: String,
    pub provider: Provider,
    pub channel: Channel,
    pub direction: Direction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Party>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business: Option<Party>,
    /// Provider time (RFC 3339, UTC). Falls back to `received_at` when the provider gives none.
    pub occurred_at: String,
    /// Gateway time (RFC 3339, UTC).
    pub received_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    /// Errors the provider attached to this event (message-, status- or payload-level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProviderError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// The provider's original object for this event (one message/status/change, not the
    /// whole batch). Omitted when the source sets `include_raw = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub raw: Option<Raw>,
    /// The provider's identity of what happened (see [`dedup_key`]); never serialized. The
    /// event id is derived from it and the source ([`event_id`]).
    #[serde(skip)]
    pub dedup_key: String,
}

/// An event's `raw`: the provider's object as the compact JSON text it serializes to. It is
/// written once, when the event is normalized, and then passes through the gateway, the
/// streams, the router and the persister as text, never rebuilt as a tree; [`Raw::to_value`]
/// parses it for whoever reads into it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Raw(Box<serde_json::value::RawValue>);

impl Raw {
    /// The JSON text of `v`.
    pub fn of(v: &serde_json::Value) -> Raw {
        // A Value has string keys only: serializing it cannot fail.
        Raw(serde_json::value::to_raw_value(v)
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The object, parsed.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// Equal when they hold the same JSON value (texts that differ only in spacing or key
/// order are equal).
impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

impl Event {
    /// A new event with its identities derived from `source` and `dedup_key` (see
    /// [`event_id`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: EventKind,
        provider: Provider,
        channel: Channel,
        direction: Direction,
        tenant: &str,
        source: &str,
        dedup_key: String,
        occurred_at: Option<OffsetDateTime>,
        received_at: OffsetDateTime,
    ) -> Event {
        Event {
            schema: SCHEMA_V1.to_string(),
            event_id: event_id(source, &dedup_key),
            kind,
            tenant: tenant.to_string(),
            source: source.to_string(),
            provider,
            channel,
            direction,
            provider_message_id: None,
            conversation_id: None,
            contact: None,
            business: None,
            occurred_at: rfc3339(occurred_at.unwrap_or(received_at)),
            received_at: rfc3339(received_at),
            message: None,
            status: None,
            notification: None,
            errors: Vec::new(),
            assignment: None,
            raw: None,
            dedup_key,
        }
    }

    /// Sets `conversation_id` from the tenant, channel and both parties, when both are known.
    pub fn derive_conversation_id(&mut self) {
        if let (Some(business), Some(contact)) = (&self.business, &self.contact) {
            self.conversation_id = Some(conversation_id(
                &self.tenant,
                self.channel,
                &business.id,
                &contact.id,
            ));
        }
    }

    /// The event as the JSON stored in stream entries.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The JSON Schema (draft 2020-12) of [`Event`], as published in `docs/event.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Event)).unwrap_or_default();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), SCHEMA_V1.into());
        obj.insert(
            "description".into(),
            "A unified switchboard event (docs/events.md). Optional fields are omitted when absent.".into(),
        );
    }
    schema
}

/// The dedup identity of an event: provider, a namespace, the provider's id, and for statuses
/// the state (a message is delivered once, read once...). Namespaces keep ids of different
/// kinds (a wamid, a Messenger mid, a read watermark) from colliding.
pub fn dedup_key(provider: Provider, namespace: &str, id: &str, state: Option<&str>) -> String {
    match state {
        Some(state) => format!("{}:{namespace}:{id}:{state}", provider.as_str()),
        None => format!("{}:{namespace}:{id}", provider.as_str()),
    }
}

/// The delivery identity of an event: `evt_` + 32 hex digits (128 bits) of SHA-256 over the
/// source id and the dedup key (length-prefixed, so no two pairs share an input). It is also
/// the dedup identity, so it is scoped to the source: provider ids (a wamid, a MessageSid)
/// are chosen by whoever can post to a source, and one tenant's source must not be able to
/// mark another tenant's message as seen.
pub fn event_id(source: &str, dedup_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"switchboard.event_id.v2\0");
    h.update((source.len() as u64).to_be_bytes());
    h.update(source.as_bytes());
    h.update(dedup_key.as_bytes());
    format!("evt_{}", hex::encode(&h.finalize()[..16]))
}

/// The event id earlier versions derived from the dedup key alone (not scoped to the
/// source; their Redis dedup keys are `dedup:v1:`). Only the accept step uses it: for `streams.dedup_ttl_secs` after an upgrade, a
/// redelivery of a webhook the previous version accepted is still caught by its old key.
pub fn legacy_event_id(dedup_key: &str) -> String {
    format!("evt_{}", short_hash(dedup_key.as_bytes()))
}

/// `conv_` + 32 hex digits of SHA-256 over (tenant, channel, business id, contact id).
pub fn conversation_id(tenant: &str, channel: Channel, business: &str, contact: &str) -> String {
    let mut h = Sha256::new();
    for part in [tenant, channel.as_str(), business, contact] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("conv_{}", hex::encode(&h.finalize()[..16]))
}

/// 32 lowercase hex digits of SHA-256.
pub fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// RFC 3339 in UTC with second precision or better, e.g. `2025-06-08T20:59:43Z`.
/// Milliseconds since the epoch as RFC 3339 (UTC).
pub fn ms_rfc3339(ms: u64) -> String {
    rfc3339(
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_stable_and_distinguishes_states() {
        let a = dedup_key(Provider::Meta, "wamid", "wamid.X", None);
        assert_eq!(event_id("s", &a), event_id("s", &a.clone()));
        let sent = dedup_key(Provider::Meta, "wamid", "wamid.X", Some("sent"));
        let read = dedup_key(Provider::Meta, "wamid", "wamid.X", Some("read"));
        assert_ne!(event_id("s", &sent), event_id("s", &read));
        assert_ne!(event_id("s", &a), event_id("s", &sent));
        assert!(event_id("s", &a).starts_with("evt_"));
        assert_eq!(event_id("s", &a).len(), 4 + 32);
    }

    #[test]
    fn event_id_is_scoped_to_the_source() {
        let a = dedup_key(Provider::Meta, "wamid", "wamid.X", None);
        assert_ne!(event_id("tenant_b_meta", &a), event_id("tenant_c_meta", &a));
        // Length-prefixed: moving a character between source and key changes the id.
        assert_ne!(event_id("ab", "c"), event_id("a", "bc"));
        // The previous derivation is kept only to find keys older versions wrote.
        assert_ne!(event_id("s", &a), legacy_event_id(&a));
        assert_eq!(legacy_event_id(&a).len(), 4 + 32);
    }

    #[test]
    fn conversation_id_is_unambiguous() {
        // Length-prefixing means ("ab","c") and ("a","bc") cannot collide.
        let x = conversation_id("t", Channel::Sms, "ab", "c");
        let y = conversation_id("t", Channel::Sms, "a", "bc");
        assert_ne!(x, y);
        assert_eq!(x, conversation_id("t", Channel::Sms, "ab", "c"));
    }

    /// docs/event.schema.json is generated from the types; this keeps it current
    /// (`SWITCHBOARD_BLESS=1` rewrites it).
    #[test]
    fn published_schema_matches_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/event.schema.json");
        let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
        if std::env::var("SWITCHBOARD_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == generated,
            "docs/event.schema.json is stale: run SWITCHBOARD_BLESS=1 cargo test --lib event"
        );
    }

    #[test]
    fn rfc3339_is_utc() {
        let t = OffsetDateTime::from_unix_timestamp(1749416383).unwrap();
        assert_eq!(rfc3339(t), "2025-06-08T20:59:43Z");
    }
}
