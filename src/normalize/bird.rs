//! Bird (bird.com) normalizer: Channels API webhooks → unified events.
//!
//! Every webhook is `{service, event, payload}`; `event` is `<platform>.<action>`
//! (`sms.inbound`, `whatsapp.outbound`, `whatsapp.interaction`, `channel.created`...).
//! `payload` of a message event is a Channels API message: `id`, `channelId` (the business
//! address: a Bird channel is one number/sender on one platform), `sender` / `receiver`
//! (a `contact` with `identifierKey`/`identifierValue`, or the `connector`), `body` (typed:
//! text, image, file, location, list, carousel, template...), `status`, `direction`
//! (`incoming` / `outgoing`), `reason` / `failure`, and timestamps.
//!
//! Incoming messages become `kind = message`; every outgoing message event is a status of that
//! message (Bird re-posts the message each time its `status` changes), deduplicated on
//! `payload.id` + `status`. Other events are notifications.
//!
//! This module must never panic on any input and never fail the request.

use serde_json::Value;

use super::util::{finish, json_body, raw, rfc3339, s, strip_plus, tenant_or_dead, unexpected};
use super::{Context, Normalized};
use crate::event::{
    dedup_key, short_hash, Channel, Direction, Event, EventKind, Location, Media, Message,
    Notification, Party, Provider, ProviderError, Reply, ReplyTo, Status,
};
use crate::verify::Verified;

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let Some(root) = json_body(v.body(), &mut out) else {
        return out;
    };
    let event = root.get("event").and_then(Value::as_str).unwrap_or("");
    let Some(payload) = root.get("payload").filter(|p| p.is_object()) else {
        unexpected(
            format!("not a Bird webhook envelope (event {event:?}, payload object missing)"),
            &root,
            &mut out,
        );
        return out;
    };
    let (platform, action) = event.rsplit_once('.').unwrap_or(("", event));
    let direction = payload.get("direction").and_then(Value::as_str);
    let is_message = payload.get("body").is_some() || payload.get("sender").is_some();
    match (action, direction) {
        ("inbound", _) | (_, Some("incoming")) if is_message => {
            message(payload, platform, &root, ctx, &mut out)
        }
        ("outbound", _) | (_, Some("outgoing")) if is_message => {
            status(payload, platform, &root, ctx, &mut out)
        }
        _ => notification(payload, event, platform, &root, ctx, &mut out),
    }
    out
}

// ---------------------------------------------------------------------------------------
// helpers

fn channel_of(platform: &str) -> Channel {
    match platform {
        "sms" => Channel::Sms,
        "mms" => Channel::Mms,
        "whatsapp" => Channel::Whatsapp,
        "facebook" | "messenger" => Channel::Messenger,
        "instagram" => Channel::Instagram,
        "telegram" => Channel::Telegram,
        "rcs" | "googlercs" | "google-rcs" => Channel::Rcs,
        "viber" => Channel::Viber,
        _ => Channel::Other,
    }
}

/// Bird message states → the shared vocabulary.
fn state_of(status: &str) -> &'static str {
    match status {
        "accepted" => "accepted",
        "scheduled" | "pending" | "processing" => "queued",
        "sending" => "sending",
        "sent" => "sent",
        "delivered" => "delivered",
        "read" | "clicked" => "read",
        "rejected" => "rejected",
        "sending_failed" | "delivery_failed" | "failed" => "failed",
        "deleted" => "deleted",
        "expired" => "expired",
        _ => "unknown",
    }
}

/// A contact's address: its identifier (phone numbers as E.164 digits without `+`), else the
/// Bird contact id.
fn contact_party(c: &Value) -> Option<Party> {
    let id = s(c, "identifierValue")
        .map(|v| strip_plus(v.trim()))
        .or_else(|| s(c, "id"))?;
    Some(Party {
        id,
        name: c
            .get("annotations")
            .and_then(|a| s(a, "name"))
            .or_else(|| s(c, "displayName")),
        ..Party::default()
    })
}

/// The business address of a payload: its channel.
fn business_of(payload: &Value) -> Option<String> {
    s(payload, "channelId")
}

fn errors_of(payload: &Value) -> Vec<ProviderError> {
    let mut errs = Vec::new();
    if let Some(f) = payload.get("failure").filter(|f| f.is_object()) {
        errs.push(ProviderError {
            code: s(f, "code").unwrap_or_else(|| "unknown".into()),
            message: s(f, "description"),
            details: s(f, "source"),
            ..ProviderError::default()
        });
    } else if let Some(reason) = s(payload, "reason") {
        errs.push(ProviderError {
            code: reason,
            ..ProviderError::default()
        });
    }
    errs
}

fn media_kind(content_type: Option<&str>) -> &'static str {
    match content_type.unwrap_or("").split('/').next().unwrap_or("") {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        _ => "document",
    }
}

/// The typed body of a Channels API message.
fn content(body: &Value) -> Message {
    let kind = s(body, "type").unwrap_or_else(|| "unknown".into());
    let typed = body.get(&kind).unwrap_or(&Value::Null);
    let mut msg = Message {
        kind: kind.clone(),
        text: s(typed, "text"),
        ..Message::default()
    };
    match kind.as_str() {
        "image" => {
            msg.attachments = typed
                .get("images")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|i| Media {
                    kind: "image".into(),
                    url: s(i, "mediaUrl"),
                    caption: s(i, "altText"),
                    ..Media::default()
                })
                .collect();
        }
        "file" => {
            msg.attachments = typed
                .get("files")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|f| {
                    let mime = s(f, "contentType");
                    Media {
                        kind: media_kind(mime.as_deref()).into(),
                        url: s(f, "mediaUrl"),
                        mime_type: mime,
                        filename: s(f, "filename"),
                        caption: s(f, "altText"),
                        ..Media::default()
                    }
                })
                .collect();
            // A file message is typed by what it carries (image, audio, video, document).
            if let Some(first) = msg.attachments.first() {
                msg.kind = first.kind.clone();
            }
        }
        "location" => {
            let coords = typed.get("coordinates").unwrap_or(&Value::Null);
            if let (Some(lat), Some(lon)) = (
                coords.get("latitude").and_then(Value::as_f64),
                coords.get("longitude").and_then(Value::as_f64),
            ) {
                let place = typed.get("location").unwrap_or(&Value::Null);
                msg.location = Some(Location {
                    latitude: lat,
                    longitude: lon,
                    name: s(place, "label"),
                    address: s(place, "address"),
                    url: None,
                });
            }
        }
        _ => {}
    }
    // Built above as the full list; the contract keeps the first as `media`.
    let items = std::mem::take(&mut msg.attachments);
    msg.set_media(items);
    msg
}

fn event(
    kind: EventKind,
    channel: Channel,
    direction: Direction,
    tenant: &str,
    key: String,
    at: Option<time::OffsetDateTime>,
    ctx: &Context<'_>,
) -> Event {
    Event::new(
        kind,
        Provider::Bird,
        channel,
        direction,
        tenant,
        ctx.source,
        key,
        at,
        ctx.received_at,
    )
}

// ---------------------------------------------------------------------------------------
// events

fn message(p: &Value, platform: &str, root: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(business)) = (s(p, "id"), business_of(p)) else {
        unexpected(
            "Bird inbound message without id or channelId".into(),
            p,
            out,
        );
        return;
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, root, out) else {
        return;
    };
    let mut e = event(
        EventKind::Message,
        channel_of(platform),
        Direction::Inbound,
        tenant,
        dedup_key(Provider::Bird, "msg", &id, None),
        rfc3339(p, "createdAt").or_else(|| rfc3339(p, "lastStatusAt")),
        ctx,
    );
    e.provider_message_id = Some(id);
    e.contact = p
        .get("sender")
        .and_then(|snd| snd.get("contact"))
        .and_then(contact_party);
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    let mut msg = p.get("body").map(content).unwrap_or(Message {
        kind: "unknown".into(),
        ..Message::default()
    });
    // A tap on a button or list row: Bird names the action in `reply`.
    if let Some(r) = p.get("reply").filter(|r| r.is_object()) {
        msg.reply = Some(Reply {
            kind: s(r, "type").unwrap_or_else(|| "reply".into()),
            id: s(r, "id").or_else(|| s(r, "payload")),
            title: s(r, "text").or_else(|| msg.text.clone()),
            ..Reply::default()
        });
        msg.kind = "reply".into();
    }
    if let Some(ctx_msg) = p.get("context").and_then(|c| s(c, "messageId")) {
        msg.reply_to = Some(ReplyTo {
            message_id: Some(ctx_msg),
            ..ReplyTo::default()
        });
    }
    e.message = Some(msg);
    e.errors = errors_of(p);
    e.raw = raw(ctx, root);
    finish(e, out);
}

fn status(p: &Value, platform: &str, root: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(business), Some(provider_state)) =
        (s(p, "id"), business_of(p), s(p, "status"))
    else {
        unexpected(
            "Bird outbound message without id, channelId or status".into(),
            p,
            out,
        );
        return;
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, root, out) else {
        return;
    };
    let state = state_of(&provider_state);
    // The status is the message's; a message to several contacts yields one status event
    // per contact (each its own conversation), keyed by message id + contact + state.
    let contacts: Vec<Party> = p
        .get("receiver")
        .and_then(|r| r.get("contacts"))
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(contact_party).collect())
        .unwrap_or_default();
    let several = contacts.len() > 1;
    let contacts: Vec<Option<Party>> = if contacts.is_empty() {
        vec![None]
    } else {
        contacts.into_iter().map(Some).collect()
    };
    for contact in contacts {
        let identity = match (&contact, several) {
            (Some(c), true) => format!("{id}:{}", c.id),
            _ => id.clone(),
        };
        let mut e = event(
            EventKind::Status,
            channel_of(platform),
            Direction::Outbound,
            tenant,
            dedup_key(Provider::Bird, "msg", &identity, Some(&provider_state)),
            rfc3339(p, "lastStatusAt").or_else(|| rfc3339(p, "updatedAt")),
            ctx,
        );
        e.provider_message_id = Some(id.clone());
        e.contact = contact;
        e.business = Some(Party {
            id: business.clone(),
            ..Party::default()
        });
        e.status = Some(Status {
            state: state.to_string(),
            provider_state: (state != provider_state).then(|| provider_state.clone()),
            message_id: Some(id.clone()),
            callback_data: s(p, "reference"),
            ..Status::default()
        });
        e.errors = errors_of(p);
        e.raw = raw(ctx, root);
        finish(e, out);
    }
}

fn notification(
    p: &Value,
    topic: &str,
    platform: &str,
    root: &Value,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let business = business_of(p).or_else(|| {
        // A channel event (`channel.created`...) is about the channel itself.
        (platform == "channel").then(|| s(p, "id")).flatten()
    });
    let Some(business) = business else {
        unexpected(
            format!("Bird {topic:?} event without a channelId: no business address"),
            root,
            out,
        );
        return;
    };
    let Some(tenant) = tenant_or_dead(ctx, &business, root, out) else {
        return;
    };
    let topic = if topic.is_empty() { "unknown" } else { topic };
    // An interaction or event has its own id; else the payload is its identity.
    let identity = s(p, "id").unwrap_or_else(|| short_hash(p.to_string().as_bytes()));
    let mut e = event(
        EventKind::Notification,
        channel_of(platform),
        Direction::Inbound,
        tenant,
        dedup_key(Provider::Bird, topic, &identity, None),
        rfc3339(p, "createdAt").or_else(|| rfc3339(p, "updatedAt")),
        ctx,
    );
    e.provider_message_id = s(p, "messageId");
    e.business = Some(Party {
        id: business,
        ..Party::default()
    });
    e.notification = Some(Notification {
        topic: topic.to_string(),
        event: s(p, "type").or_else(|| s(p, "status")),
        data: p.clone(),
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

    const FIXTURES: &str = "bird";
    const SMS_CHANNEL: &str = "614208aa-b153-4d5d-9989-2fddfc0ce4c3";

    fn channels() -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            SMS_CHANNEL,
            "a5d2b1c3-7e4f-4f0a-9b8c-1d2e3f4a5b6c", // WhatsApp channel
        ]
        .iter()
        .map(|id| (id.to_string(), "acme".to_string()))
        .collect();
        m.insert(
            "0c9b8a7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d".into(),
            "globex".into(),
        );
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "bird_test",
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    fn run(body: &str) -> Normalized {
        let ch = channels();
        normalize(&Verified::assume_verified(body.to_string()), &ctx(&ch))
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all(FIXTURES, &ctx(&ch), normalize);
    }

    fn outbound(status: &str) -> String {
        format!(
            r#"{{"service":"channels","event":"sms.outbound","payload":{{"id":"m-1","channelId":"{SMS_CHANNEL}","status":"{status}","direction":"outgoing","receiver":{{"contacts":[{{"identifierValue":"+31612345678"}}]}},"body":{{"type":"text","text":{{"text":"x"}}}}}}}}"#
        )
    }

    #[test]
    fn event_ids_are_stable_across_redelivery_and_distinct_per_status() {
        let a = run(&outbound("sent"));
        let b = run(&outbound("sent"));
        let c = run(&outbound("delivered"));
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        assert_ne!(a.events[0].event_id, c.events[0].event_id);
        assert_eq!(c.events[0].status.as_ref().unwrap().state, "delivered");
        let ch = channels();
        for path in testing::bodies(FIXTURES) {
            let body = std::fs::read(&path).unwrap();
            let ids = |b: &[u8]| {
                normalize(&Verified::assume_verified(b.to_vec()), &ctx(&ch))
                    .events
                    .iter()
                    .map(|e| e.event_id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&body), ids(&body), "{}", path.display());
        }
    }

    #[test]
    fn a_status_for_several_contacts_is_one_event_each() {
        let mut body: serde_json::Value = serde_json::from_slice(
            &std::fs::read(testing::dir(FIXTURES).join("whatsapp_outbound_read.json")).unwrap(),
        )
        .unwrap();
        body["payload"]["receiver"]["contacts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"identifierKey": "phonenumber", "identifierValue": "+31687654321"}));
        let n = run(&body.to_string());
        assert_eq!(n.events.len(), 2, "{:?}", n.dead_letters);
        let contacts: Vec<_> = n
            .events
            .iter()
            .map(|e| e.contact.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(contacts, ["31612345678", "31687654321"]);
        assert_ne!(n.events[0].event_id, n.events[1].event_id);
        assert_ne!(n.events[0].conversation_id, n.events[1].conversation_id);
    }

    #[test]
    fn nothing_verified_is_dropped() {
        for body in [
            "",
            "[]",
            "{}",
            r#"{"event":"sms.inbound","payload":7}"#,
            r#"{"event":"x","payload":{}}"#,
        ] {
            let n = run(body);
            assert!(n.events.is_empty(), "{body}");
            assert_eq!(n.dead_letters.len(), 1, "{body}");
        }
        assert_eq!(run("nope").dead_letters[0].reason, DeadReason::InvalidBody);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_junk(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let ch = channels();
            let _ = normalize(&Verified::assume_verified(body), &ctx(&ch));
        }

        #[test]
        fn never_panics_on_json_shapes(v in arb_json()) {
            let ch = channels();
            for event in ["sms.inbound", "whatsapp.outbound", "whatsapp.interaction", "x"] {
                let mut p = v.clone();
                if let Value::Object(m) = &mut p {
                    m.insert("channelId".into(), SMS_CHANNEL.into());
                }
                let wrapped = serde_json::json!({"service": "channels", "event": event, "payload": p});
                let _ = normalize(&Verified::assume_verified(wrapped.to_string()), &ctx(&ch));
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(Value::from),
            "[a-z_]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let keys = prop_oneof![
                Just("id".to_string()),
                Just("type".to_string()),
                Just("body".to_string()),
                Just("text".to_string()),
                Just("image".to_string()),
                Just("images".to_string()),
                Just("file".to_string()),
                Just("files".to_string()),
                Just("location".to_string()),
                Just("coordinates".to_string()),
                Just("sender".to_string()),
                Just("receiver".to_string()),
                Just("contact".to_string()),
                Just("contacts".to_string()),
                Just("status".to_string()),
                Just("direction".to_string()),
                Just("reply".to_string()),
                Just("failure".to_string()),
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
