//! Telnyx Messaging (API v2 webhooks) → unified events.
//!
//! One POST carries one event: `{data: {record_type: event, id, event_type, occurred_at,
//! payload}, meta: {attempt, delivered_to}}`.
//!
//! - `message.received` (inbound SMS/MMS; `payload.type` names the channel): a `message`
//!   event from `payload.from` to our number in `payload.to[]` (the first `to` entry the
//!   source's channels know, else the first one).
//! - `message.sent`, `message.finalized` (and any other event whose payload is an outbound
//!   message): one `status` event per recipient in `payload.to[]` and `payload.cc[]`, state from
//!   the recipient's `status` (`queued, sending, sent, delivered, sending_failed,
//!   delivery_failed, delivery_unconfirmed`), errors from `payload.errors[]`.
//! - Anything else: a `notification` with the event type as topic.
//!
//! Dedup/event ids. The webhook's `data.id` identifies the *webhook event*; we key on what it
//! is about instead: inbound messages on the message id (`payload.id`), statuses on message
//! id + recipient + Telnyx's status word, so that the id is a pure function of "this message
//! reached this state for this recipient", exactly like every other provider's statuses, and
//! a state reported twice under two event ids (a `message.sent` and a `message.finalized`
//! both saying `sent`... or a re-sent webhook) still collapses to one event. Only
//! notifications, which have no message, use `data.id`.
//!
//! Never panics, never drops: a body that is not a Telnyx envelope, a message without an id
//! or parties, a business number no tenant owns become dead letters.

use serde_json::Value;

use super::util::{finish, json_body, raw, rfc3339, s, strip_plus, tenant_or_dead, unexpected};
use super::{Context, Normalized};
use crate::event::{
    dedup_key, Channel, Direction, Event, EventKind, Media, Message, Notification, Party, Provider,
    ProviderError, Status,
};
use crate::verify::Verified;

pub fn normalize(req: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let Some(root) = json_body(req.body(), &mut out) else {
        return out;
    };
    let Some(data) = root.get("data").filter(|d| d.is_object()) else {
        unexpected(
            "not a Telnyx API v2 webhook: no `data` object".into(),
            &root,
            &mut out,
        );
        return out;
    };
    let Some(event_type) = s(data, "event_type") else {
        unexpected(
            "Telnyx webhook without `data.event_type`".into(),
            data,
            &mut out,
        );
        return out;
    };
    let payload = data.get("payload").unwrap_or(&Value::Null);
    let is_message = s(payload, "record_type").as_deref() == Some("message");
    let direction = s(payload, "direction");
    match (event_type.as_str(), direction.as_deref()) {
        ("message.received", _) => inbound(data, payload, ctx, &mut out),
        (_, Some("outbound")) if is_message || payload.get("to").is_some() => {
            statuses(data, payload, &event_type, ctx, &mut out)
        }
        _ => notification(data, payload, &event_type, ctx, &mut out),
    }
    out
}

/// `payload.type` → channel: SMS, MMS, and the channels Telnyx may add.
fn channel(payload: &Value) -> Channel {
    match s(payload, "type")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "sms" => Channel::Sms,
        "mms" => Channel::Mms,
        "whatsapp" => Channel::Whatsapp,
        "rcs" => Channel::Rcs,
        _ => Channel::Other,
    }
}

fn number(v: &Value) -> Option<String> {
    s(v, "phone_number").map(|n| strip_plus(&n))
}

/// Recipients of a message: `to[]` then `cc[]` (group MMS).
fn recipients(payload: &Value) -> impl Iterator<Item = &Value> {
    ["to", "cc"]
        .into_iter()
        .filter_map(|k| payload.get(k).and_then(Value::as_array))
        .flatten()
}

fn errors(payload: &Value) -> Vec<ProviderError> {
    payload
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| ProviderError {
            code: s(e, "code").unwrap_or_else(|| "unknown".into()),
            title: s(e, "title"),
            message: s(e, "detail"),
            details: e
                .get("meta")
                .filter(|m| !m.is_null())
                .map(|m| m.to_string()),
            href: None,
        })
        .collect()
}

/// MIME type → our media type.
fn media_kind(mime: Option<&str>) -> &'static str {
    let mime = mime.unwrap_or("").to_ascii_lowercase();
    match mime.split('/').next().unwrap_or("") {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        _ => "document",
    }
}

fn inbound(data: &Value, payload: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(from)) = (s(payload, "id"), payload.get("from").and_then(number)) else {
        return unexpected(
            "Telnyx message.received without payload.id or payload.from.phone_number".into(),
            data,
            out,
        );
    };
    // Our number: the first recipient the channel map knows, else the first recipient.
    let to: Vec<String> = recipients(payload).filter_map(number).collect();
    let Some(business) = to
        .iter()
        .find(|n| ctx.channels.contains_key(*n))
        .or_else(|| to.first())
        .cloned()
    else {
        return unexpected(
            format!("Telnyx message {id} has no recipient in payload.to[]"),
            data,
            out,
        );
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, data, out) else {
        return;
    };
    let media: Vec<Media> = payload
        .get("media")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.is_object())
        .map(|m| {
            let mime = s(m, "content_type");
            Media {
                kind: media_kind(mime.as_deref()).into(),
                url: s(m, "url"),
                sha256: s(m, "sha256"),
                mime_type: mime,
                ..Media::default()
            }
        })
        .collect();
    let text = s(payload, "text");
    let kind = match media.first() {
        Some(m) => m.kind.clone(),
        None => "text".into(),
    };
    let at = rfc3339(payload, "received_at").or_else(|| rfc3339(data, "occurred_at"));
    let mut e = Event::new(
        EventKind::Message,
        Provider::Telnyx,
        channel(payload),
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Telnyx, "message", &id, None),
        at,
        ctx.received_at,
    );
    e.provider_message_id = Some(id);
    e.contact = Some(Party {
        id: from,
        ..Party::default()
    });
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    let mut message = Message {
        kind,
        text,
        ..Message::default()
    };
    message.set_media(media);
    e.message = Some(message);
    e.errors = errors(payload);
    e.raw = raw(ctx, data);
    finish(e, out);
}

/// Telnyx's per-recipient status word → (our state, provider word when it differs).
fn state(word: &str) -> (&'static str, Option<String>) {
    let ours = match word {
        "queued" => "queued",
        "sending" => "sending",
        "sent" => "sent",
        "delivered" => "delivered",
        "sending_failed" => "failed",
        "delivery_failed" => "undelivered",
        "delivery_unconfirmed" => "unknown",
        _ => "unknown",
    };
    (ours, (ours != word).then(|| word.to_string()))
}

fn statuses(
    data: &Value,
    payload: &Value,
    event_type: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let (Some(id), Some(from)) = (s(payload, "id"), payload.get("from").and_then(number)) else {
        return unexpected(
            format!("Telnyx {event_type} without payload.id or payload.from.phone_number"),
            data,
            out,
        );
    };
    let recipients: Vec<&Value> = recipients(payload).collect();
    if recipients.is_empty() {
        return unexpected(
            format!("Telnyx {event_type} for message {id} has no recipient in payload.to[]"),
            data,
            out,
        );
    }
    let Some(tenant) = tenant_or_dead(ctx, &from, data, out) else {
        return;
    };
    let errs = errors(payload);
    let single = recipients.len() == 1;
    let at = rfc3339(data, "occurred_at")
        .or_else(|| rfc3339(payload, "completed_at"))
        .or_else(|| rfc3339(payload, "sent_at"));
    for r in recipients {
        let Some(contact) = number(r) else {
            unexpected(
                format!("Telnyx {event_type} for message {id}: a recipient without phone_number"),
                r,
                out,
            );
            continue;
        };
        // A recipient without a status: message.sent means sent; otherwise we cannot tell.
        let word = s(r, "status").unwrap_or_else(|| {
            if event_type == "message.sent" {
                "sent".into()
            } else {
                "unknown".into()
            }
        });
        // message.sent means "handed to the carrier", whatever the recipient's word still
        // says (Telnyx's own example carries `queued` there): the state is `sent`, the word
        // stays in provider_state.
        let (ours, provider_state) =
            if event_type == "message.sent" && matches!(word.as_str(), "queued" | "sending") {
                ("sent", Some(word.clone()))
            } else {
                state(&word)
            };
        let mut e = Event::new(
            EventKind::Status,
            Provider::Telnyx,
            channel(payload),
            Direction::Outbound,
            tenant,
            ctx.source,
            dedup_key(
                Provider::Telnyx,
                "status",
                &format!("{id}:{contact}"),
                Some(&word),
            ),
            at,
            ctx.received_at,
        );
        e.provider_message_id = Some(id.clone());
        e.contact = Some(Party {
            id: contact,
            ..Party::default()
        });
        e.business = Some(Party {
            id: from.clone(),
            ..Party::default()
        });
        e.status = Some(Status {
            state: ours.into(),
            provider_state,
            message_id: Some(id.clone()),
            pricing: payload.get("cost").filter(|c| c.is_object()).cloned(),
            ..Status::default()
        });
        // Errors concern the failed recipients; on a multi-recipient message Telnyx does not
        // say which, so they go with every recipient that did not succeed.
        if single || matches!(ours, "failed" | "undelivered" | "unknown") {
            e.errors = errs.clone();
        }
        e.raw = raw(ctx, data);
        finish(e, out);
    }
}

fn notification(
    data: &Value,
    payload: &Value,
    event_type: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let Some(event_id) = s(data, "id") else {
        return unexpected(
            format!("Telnyx {event_type} webhook without data.id"),
            data,
            out,
        );
    };
    // A notification names no business number: the source itself answers for it.
    let Some(tenant) = tenant_or_dead(ctx, ctx.source, data, out) else {
        return;
    };
    let mut e = Event::new(
        EventKind::Notification,
        Provider::Telnyx,
        channel(payload),
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Telnyx, "event", &event_id, None),
        rfc3339(data, "occurred_at"),
        ctx.received_at,
    );
    e.notification = Some(Notification {
        topic: event_type.to_string(),
        event: None,
        data: payload.clone(),
        standby: false,
    });
    e.errors = errors(payload);
    e.raw = raw(ctx, data);
    finish(e, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::testing;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use time::macros::datetime;

    fn channels() -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("18445550001".to_string(), "acme".to_string());
        m.insert("13125550002".to_string(), "acme".to_string());
        m.insert("18885550003".to_string(), "globex".to_string());
        // Notifications name no number: the source id maps them.
        m.insert("telnyx_test".to_string(), "acme".to_string());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "telnyx_test",
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    fn run(body: &[u8]) -> Normalized {
        let ch = channels();
        normalize(&Verified::assume_verified(body.to_vec()), &ctx(&ch))
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all("telnyx", &ctx(&ch), normalize);
    }

    #[test]
    fn every_fixture_yields_something_and_ids_are_stable() {
        for path in testing::bodies("telnyx") {
            let body = std::fs::read(&path).unwrap();
            let a = run(&body);
            let b = run(&body);
            assert!(
                !a.events.is_empty() || !a.dead_letters.is_empty(),
                "{}",
                path.display()
            );
            let ids: Vec<&str> = a.events.iter().map(|e| e.event_id.as_str()).collect();
            let again: Vec<&str> = b.events.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, again, "{}", path.display());
            let unique: std::collections::HashSet<&&str> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{}", path.display());
        }
    }

    fn status_body(event_id: &str, event_type: &str, status: &str, attempt: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "data": {"record_type": "event", "id": event_id, "event_type": event_type,
                "occurred_at": "2026-01-01T00:00:00Z",
                "payload": {"record_type": "message", "direction": "outbound", "id": "msg-1",
                    "type": "SMS", "from": {"phone_number": "+18445550001"},
                    "to": [{"phone_number": "+18665550001", "status": status}], "errors": []}},
            "meta": {"attempt": attempt}
        }))
        .unwrap()
    }

    #[test]
    fn redelivery_keeps_ids_and_states_differ() {
        let first = run(&status_body("ev-1", "message.sent", "sent", 1));
        // A retry (attempt 2) is the same event.
        let retry = run(&status_body("ev-1", "message.sent", "sent", 2));
        assert_eq!(first.events[0].event_id, retry.events[0].event_id);
        // The same state under another webhook event id is still the same state.
        let other = run(&status_body("ev-9", "message.finalized", "sent", 1));
        assert_eq!(first.events[0].event_id, other.events[0].event_id);
        let mut seen = std::collections::HashSet::new();
        for st in [
            "queued",
            "sending",
            "sent",
            "delivered",
            "sending_failed",
            "delivery_failed",
            "delivery_unconfirmed",
        ] {
            let n = run(&status_body("ev-2", "message.finalized", st, 1));
            assert!(seen.insert(n.events[0].event_id.clone()), "{st}");
        }
    }

    #[test]
    fn junk_never_panics() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"data\":[]}",
            b"{\"data\":{\"event_type\":\"message.received\",\"payload\":{\"from\":[],\"to\":7}}}",
            b"{\"data\":{\"event_type\":\"message.sent\",\"payload\":{\"direction\":\"outbound\",\"id\":1,\"from\":{\"phone_number\":\"+1\"},\"to\":[null,1,{}]}}}",
            b"\xff\xfe",
        ] {
            let n = run(body);
            assert!(!n.events.is_empty() || !n.dead_letters.is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = run(&body);
        }
    }
}
