//! MessageBird normalizer: SMS webhooks (inbound messages and delivery reports, query or form
//! parameters) and Conversations API webhooks (`message.created` / `message.updated`, JSON)
//! → unified events.
//!
//! SMS webhooks are GET requests by default (POST form when so configured): the parameters
//! are the payload, and the raw object is a JSON object of them. An inbound message has
//! `originator` (the contact), `recipient` (our virtual number; `shortcode` on the shortcode
//! variant), `body` (`payload`/`message` on other variants), `id` (`mid`) and
//! `createdDatetime` (`receive_datetime`). A delivery report has `id`, `recipient` (the
//! contact), `status`, `statusReason`, `statusErrorCode`, `statusDatetime`, `reference`,
//! `mccmnc`...: it names no sender, so its business address is the source id (map it in
//! `channels` or give the source a `tenant`). One message to several recipients has one id:
//! the recipient is part of a report's identity.
//!
//! Conversations webhooks carry `{type, contact, conversation, message}`; the business
//! address is `message.channelId` (the MessageBird channel), the contact `message.from`
//! (received) or `message.to` (sent).
//!
//! This module must never panic on any input and never fail the request.

use serde_json::{Map, Value};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::util::{finish, json_body, raw, rfc3339, s, strip_plus, tenant_or_dead, unexpected};
use super::{Context, Normalized};
use crate::event::{
    dedup_key, short_hash, Channel, Direction, Event, EventKind, Location, Media, Message,
    Notification, Party, Provider, ProviderError, Reply, Status,
};
use crate::verify::Verified;

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let body = v.body();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{') | Some(b'[')) {
        if let Some(root) = json_body(body, &mut out) {
            conversations(&root, ctx, &mut out);
        }
        return out;
    }
    let params = v.form_params();
    let obj = params_object(&params);
    if params.is_empty() {
        unexpected(
            "neither a JSON body nor any query/form parameter: not a MessageBird webhook".into(),
            &obj,
            &mut out,
        );
    } else if obj.get("status").is_some() {
        sms_report(&obj, ctx, &mut out);
    } else if obj.get("originator").is_some() {
        sms_inbound(&obj, ctx, &mut out);
    } else {
        unexpected(
            "parameters are neither an inbound SMS (originator) nor a delivery report (status)"
                .into(),
            &obj,
            &mut out,
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// helpers

/// Identity of a payload that carries no id of its own (serde_json sorts object keys, so
/// key order does not change it).
fn short_hash_of(v: &Value) -> String {
    short_hash(v.to_string().as_bytes())
}

/// The parameters as a JSON object, in order; a repeated name becomes an array of its values.
fn params_object(params: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in params {
        match m.get_mut(k) {
            None => {
                m.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(a)) => a.push(Value::String(v.clone())),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    Value::Object(m)
}

/// `receive_datetime` of the shortcode variant: `YYYYMMDDHHMMSS`, UTC.
fn compact_time(v: &Value, key: &str) -> Option<OffsetDateTime> {
    let fmt = format_description!("[year][month][day][hour][minute][second]");
    PrimitiveDateTime::parse(v.get(key)?.as_str()?, &fmt)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// A phone-ish address: E.164 digits without `+`; alphanumeric senders stay as they are.
fn address(v: &Value, key: &str) -> Option<String> {
    s(v, key).map(|a| strip_plus(a.trim()))
}

/// SMS delivery states → the shared vocabulary.
fn sms_state(status: &str) -> &'static str {
    match status {
        "scheduled" => "queued",
        "buffered" => "queued",
        "sent" => "sent",
        "delivered" => "delivered",
        "expired" => "expired",
        "delivery_failed" => "failed",
        _ => "unknown",
    }
}

/// Conversations message states → the shared vocabulary.
fn conversation_state(status: &str) -> &'static str {
    match status {
        "accepted" => "accepted",
        "pending" => "queued",
        "transmitted" | "sent" => "sent",
        "delivered" | "received" => "delivered",
        "read" => "read",
        "failed" => "failed",
        "rejected" => "rejected",
        "deleted" => "deleted",
        _ => "unknown",
    }
}

fn status_of(state: &str, provider: &str, message_id: &str) -> Status {
    Status {
        state: state.to_string(),
        provider_state: (state != provider).then(|| provider.to_string()),
        message_id: Some(message_id.to_string()),
        ..Status::default()
    }
}

// ---------------------------------------------------------------------------------------
// SMS

fn sms_inbound(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let Some(id) = s(o, "id").or_else(|| s(o, "mid")) else {
        unexpected("inbound SMS without an id (or mid)".into(), o, out);
        return;
    };
    let Some(business) = address(o, "recipient").or_else(|| address(o, "shortcode")) else {
        unexpected(
            format!("inbound SMS {id} without a recipient (or shortcode)"),
            o,
            out,
        );
        return;
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, o, out) else {
        return;
    };
    let mut e = Event::new(
        EventKind::Message,
        Provider::Messagebird,
        Channel::Sms,
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Messagebird, "sms", &id, None),
        rfc3339(o, "createdDatetime").or_else(|| compact_time(o, "receive_datetime")),
        ctx.received_at,
    );
    e.provider_message_id = Some(id);
    e.contact = address(o, "originator").map(|id| Party {
        id,
        ..Party::default()
    });
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    e.message = Some(Message {
        kind: "text".into(),
        // `body` (virtual mobile numbers), `message` (shortcodes); an empty SMS has none.
        text: o
            .get("body")
            .or_else(|| o.get("payload"))
            .or_else(|| o.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Message::default()
    });
    e.raw = raw(ctx, o);
    finish(e, out);
}

fn sms_report(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(status)) = (s(o, "id"), s(o, "status")) else {
        unexpected("SMS delivery report without id or status".into(), o, out);
        return;
    };
    let recipient = address(o, "recipient");
    // Reports name no sender: the source itself is the business address unless one is given.
    let business = address(o, "originator").unwrap_or_else(|| ctx.source.to_string());
    let Some(tenant) = tenant_or_dead(ctx, &business, o, out) else {
        return;
    };
    let identity = format!("{id}:{}", recipient.as_deref().unwrap_or(""));
    let state = sms_state(&status);
    let mut e = Event::new(
        EventKind::Status,
        Provider::Messagebird,
        Channel::Sms,
        Direction::Outbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Messagebird, "sms", &identity, Some(&status)),
        rfc3339(o, "statusDatetime"),
        ctx.received_at,
    );
    e.provider_message_id = Some(id.clone());
    e.contact = recipient.map(|id| Party {
        id,
        ..Party::default()
    });
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    let mut st = status_of(state, &status, &id);
    st.callback_data = s(o, "reference");
    // `price[amount]` / `price[currency]` (form-style keys) and the network, when given.
    if let Some(amount) = s(o, "price[amount]") {
        st.pricing = Some(serde_json::json!({
            "amount": amount,
            "currency": s(o, "price[currency]"),
            "mccmnc": s(o, "mccmnc"),
        }));
    }
    e.status = Some(st);
    // statusErrorCode explains a failure; on a success it is absent or meaningless.
    let failure = matches!(state, "failed" | "expired" | "unknown");
    if let Some(code) = s(o, "statusErrorCode").filter(|_| failure) {
        e.errors.push(ProviderError {
            code,
            title: s(o, "statusReason"),
            ..ProviderError::default()
        });
    }
    e.raw = raw(ctx, o);
    finish(e, out);
}

// ---------------------------------------------------------------------------------------
// Conversations API

fn channel_of(platform: &str) -> Channel {
    match platform {
        "whatsapp" => Channel::Whatsapp,
        "sms" => Channel::Sms,
        "facebook" | "messenger" => Channel::Messenger,
        "instagram" => Channel::Instagram,
        "telegram" => Channel::Telegram,
        "viber" => Channel::Viber,
        "rcs" | "googlerbm" => Channel::Rcs,
        _ => Channel::Other,
    }
}

fn contact_name(contact: Option<&Value>) -> Option<String> {
    let c = contact?;
    s(c, "displayName").or_else(|| {
        let name = [s(c, "firstName"), s(c, "lastName")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        (!name.is_empty()).then_some(name)
    })
}

fn conversations(root: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let kind = root.get("type").and_then(Value::as_str).unwrap_or("");
    let Some(m) = root.get("message").filter(|m| m.is_object()) else {
        if kind.starts_with("conversation.") {
            conversation_notification(root, kind, ctx, out);
        } else {
            unexpected(
                format!(
                    "not a MessageBird Conversations webhook (type {kind:?}, no message object)"
                ),
                root,
                out,
            );
        }
        return;
    };
    let Some(id) = s(m, "id") else {
        unexpected("Conversations message without an id".into(), m, out);
        return;
    };
    let Some(business) = s(m, "channelId") else {
        unexpected(
            format!("Conversations message {id} without a channelId"),
            m,
            out,
        );
        return;
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, root, out) else {
        return;
    };
    let platform = s(m, "platform").unwrap_or_default();
    let channel = channel_of(&platform);
    let direction = match m.get("direction").and_then(Value::as_str) {
        Some("sent") => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let contact_address = match direction {
        Direction::Inbound => s(m, "from"),
        Direction::Outbound => s(m, "to"),
    }
    .or_else(|| root.get("contact").and_then(|c| s(c, "msisdn")));
    let status = s(m, "status");
    let (event_kind, key, at) = match (kind, direction, &status) {
        ("message.updated", Direction::Outbound, Some(st)) => (
            EventKind::Status,
            dedup_key(Provider::Messagebird, "conv_msg", &id, Some(st)),
            rfc3339(m, "updatedDatetime").or_else(|| rfc3339(m, "createdDatetime")),
        ),
        ("message.created", _, _) => (
            EventKind::Message,
            dedup_key(Provider::Messagebird, "conv_msg", &id, None),
            rfc3339(m, "createdDatetime"),
        ),
        _ => (
            EventKind::Notification,
            dedup_key(
                Provider::Messagebird,
                if kind.is_empty() { "unknown" } else { kind },
                &short_hash_of(root),
                None,
            ),
            rfc3339(m, "updatedDatetime").or_else(|| rfc3339(m, "createdDatetime")),
        ),
    };
    let mut e = Event::new(
        event_kind,
        Provider::Messagebird,
        channel,
        direction,
        tenant,
        ctx.source,
        key,
        at,
        ctx.received_at,
    );
    e.provider_message_id = Some(id.clone());
    e.contact = contact_address.map(|a| Party {
        id: strip_plus(&a),
        name: contact_name(root.get("contact")),
        ..Party::default()
    });
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    match event_kind {
        EventKind::Status => {
            let st = status.unwrap_or_default();
            e.status = Some(status_of(conversation_state(&st), &st, &id));
        }
        EventKind::Message => e.message = Some(conversation_content(m)),
        _ => {
            e.notification = Some(Notification {
                topic: if kind.is_empty() { "unknown" } else { kind }.to_string(),
                event: status,
                data: root.clone(),
                standby: false,
            })
        }
    }
    if let Some(err) = m.get("error").filter(|e| e.is_object()) {
        e.errors.push(ProviderError {
            code: s(err, "code").unwrap_or_else(|| "unknown".into()),
            message: s(err, "description"),
            ..ProviderError::default()
        });
    }
    e.raw = raw(ctx, root);
    finish(e, out);
}

fn media(kind: &str, o: &Value) -> Media {
    Media {
        kind: kind.to_string(),
        url: s(o, "url").or_else(|| s(o, "link")),
        caption: s(o, "caption"),
        ..Media::default()
    }
}

fn conversation_content(m: &Value) -> Message {
    let kind = s(m, "type").unwrap_or_else(|| "unknown".into());
    let content = m.get("content").unwrap_or(&Value::Null);
    let mut msg = Message {
        kind: kind.clone(),
        ..Message::default()
    };
    match kind.as_str() {
        "text" => msg.text = s(content, "text"),
        "image" | "video" | "audio" | "file" => {
            let mtype = if kind == "file" {
                "document"
            } else {
                kind.as_str()
            };
            msg.kind = mtype.to_string();
            if let Some(o) = content.get(&kind) {
                let md = media(mtype, o);
                msg.text = md.caption.clone();
                msg.media = Some(md);
            }
        }
        "whatsappSticker" => {
            msg.kind = "sticker".into();
            if let Some(o) = content.get("whatsappSticker") {
                msg.media = Some(media("sticker", o));
            }
        }
        "location" => {
            if let Some(l) = content.get("location") {
                if let (Some(lat), Some(lon)) = (
                    l.get("latitude").and_then(Value::as_f64),
                    l.get("longitude").and_then(Value::as_f64),
                ) {
                    msg.location = Some(Location {
                        latitude: lat,
                        longitude: lon,
                        ..Location::default()
                    });
                }
            }
        }
        "interactive" => {
            if let Some(i) = content.get("interactive") {
                if let Some(r) = i.get("reply").filter(|r| r.is_object()) {
                    msg.kind = "reply".into();
                    msg.text = s(r, "text");
                    msg.reply = Some(Reply {
                        kind: s(i, "type").unwrap_or_else(|| "interactive".into()),
                        id: s(r, "id"),
                        title: s(r, "text"),
                        description: s(r, "description"),
                        response: None,
                    });
                }
            }
        }
        _ => {
            // hsm, whatsappOrder, event...: the type verbatim; the content stays in raw.
            msg.text = content.get(&kind).and_then(|o| s(o, "text"));
        }
    }
    msg
}

fn conversation_notification(root: &Value, kind: &str, ctx: &Context<'_>, out: &mut Normalized) {
    let conv = root.get("conversation").unwrap_or(&Value::Null);
    let Some(business) = s(conv, "lastUsedChannelId").or_else(|| s(conv, "channelId")) else {
        unexpected(
            format!("{kind} without conversation.lastUsedChannelId: no business address"),
            root,
            out,
        );
        return;
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, root, out) else {
        return;
    };
    let mut e = Event::new(
        EventKind::Notification,
        Provider::Messagebird,
        Channel::Other,
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Messagebird, kind, &short_hash_of(root), None),
        rfc3339(conv, "updatedDatetime").or_else(|| rfc3339(conv, "createdDatetime")),
        ctx.received_at,
    );
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    e.notification = Some(Notification {
        topic: kind.to_string(),
        event: s(conv, "status"),
        data: root.clone(),
        standby: false,
    });
    e.raw = raw(ctx, root);
    finish(e, out);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::normalize::testing;
    use crate::normalize::DeadReason;

    const FIXTURES: &str = "messagebird";

    fn channels() -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            "31970001234567",                   // virtual mobile number
            "1008",                             // shortcode
            "messagebird_test",                 // the source: delivery reports
            "619747f69cf940a98fb443140ce9aed2", // WhatsApp channel
            "c0dae31e440145e094c4708b7d908842", // SMS channel
        ]
        .iter()
        .map(|id| (id.to_string(), "acme".to_string()))
        .collect();
        m.insert("31970009999999".into(), "globex".into());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "messagebird_test",
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all(FIXTURES, &ctx(&ch), normalize);
    }

    fn run_get(url: &str) -> Normalized {
        let ch = channels();
        normalize(&Verified::assume_verified_get(url), &ctx(&ch))
    }

    fn run(body: &str) -> Normalized {
        let ch = channels();
        normalize(&Verified::assume_verified(body.to_string()), &ctx(&ch))
    }

    const DLR: &str = "https://hooks.example.com/webhooks/mb?id=efa6405d518d4c0c88cce11f7db775fb&reference=order-17&recipient=31612345678&status=STATUS&statusDatetime=2026-01-01T10%3A00%3A00%2B00%3A00";

    #[test]
    fn event_ids_are_stable_across_redelivery_and_distinct_per_state() {
        let a = run_get(&DLR.replace("STATUS", "sent"));
        let b = run_get(&DLR.replace("STATUS", "sent"));
        let c = run_get(&DLR.replace("STATUS", "delivered"));
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        assert_ne!(a.events[0].event_id, c.events[0].event_id);
        // The same message to another recipient is another report.
        let d = run_get(
            &DLR.replace("STATUS", "sent")
                .replace("31612345678", "31687654321"),
        );
        assert_ne!(a.events[0].event_id, d.events[0].event_id);
        // Every fixture twice gives the same ids.
        let ch = channels();
        for path in testing::bodies(FIXTURES) {
            let body = std::fs::read(&path).unwrap();
            let once = |b: &[u8]| {
                let v = if path.extension().is_some_and(|e| e == "url") {
                    Verified::assume_verified_get(String::from_utf8_lossy(b).trim())
                } else {
                    Verified::assume_verified(b.to_vec())
                };
                normalize(&v, &ctx(&ch))
                    .events
                    .iter()
                    .map(|e| e.event_id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(once(&body), once(&body), "{}", path.display());
        }
    }

    #[test]
    fn conversation_statuses_differ_by_state_and_messages_from_statuses() {
        let body = |kind: &str, status: &str| {
            format!(
                r#"{{"type":"{kind}","message":{{"id":"m1","channelId":"619747f69cf940a98fb443140ce9aed2","platform":"whatsapp","direction":"sent","to":"+31612345678","status":"{status}"}}}}"#
            )
        };
        let sent = run(&body("message.updated", "sent"));
        let read = run(&body("message.updated", "read"));
        let created = run(&body("message.created", "pending"));
        assert_eq!(sent.events[0].kind, EventKind::Status);
        assert_ne!(sent.events[0].event_id, read.events[0].event_id);
        assert_ne!(sent.events[0].event_id, created.events[0].event_id);
        assert_eq!(created.events[0].kind, EventKind::Message);
        assert_eq!(created.events[0].direction, Direction::Outbound);
    }

    #[test]
    fn nothing_verified_is_dropped() {
        for body in [
            "",
            "{}",
            "[]",
            "null",
            "{\"type\":\"message.created\"}",
            "\u{0}\u{1}",
        ] {
            let n = run(body);
            assert!(n.events.is_empty(), "{body:?}");
            assert_eq!(n.dead_letters.len(), 1, "{body:?}");
        }
        let n = run("{not json");
        assert_eq!(n.dead_letters[0].reason, DeadReason::InvalidBody);
        let n = run_get("https://hooks.example.com/webhooks/mb?foo=bar");
        assert_eq!(n.dead_letters[0].reason, DeadReason::UnexpectedShape);
    }

    #[test]
    fn repeated_parameters_become_arrays_in_raw() {
        let n = run_get(
            "https://h/w?originator=31612345678&recipient=31970001234567&id=x&body=a&body=b",
        );
        let raw = n.events[0].raw.as_ref().unwrap().to_value();
        assert_eq!(raw["body"], serde_json::json!(["a", "b"]));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_junk(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let ch = channels();
            let _ = normalize(&Verified::assume_verified(body), &ctx(&ch));
        }

        #[test]
        fn never_panics_on_junk_queries(q in "[a-zA-Z0-9=&%+_.-]{0,300}") {
            let ch = channels();
            let _ = normalize(&Verified::assume_verified_get(&format!("https://h/w?{q}")), &ctx(&ch));
        }

        #[test]
        fn never_panics_on_json_shapes(v in arb_json()) {
            let ch = channels();
            for kind in ["message.created", "message.updated", "conversation.created"] {
                let wrapped = serde_json::json!({"type": kind, "message": v.clone(), "conversation": v.clone(), "contact": v.clone()});
                let _ = normalize(&Verified::assume_verified(wrapped.to_string()), &ctx(&ch));
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z_]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 48, 6, |inner| {
            let keys = prop_oneof![
                Just("id".to_string()),
                Just("type".to_string()),
                Just("channelId".to_string()),
                Just("content".to_string()),
                Just("direction".to_string()),
                Just("status".to_string()),
                Just("text".to_string()),
                Just("image".to_string()),
                Just("location".to_string()),
                Just("interactive".to_string()),
                Just("reply".to_string()),
                Just("error".to_string()),
                "[a-z]{1,8}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
