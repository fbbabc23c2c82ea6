//! Vonage normalizer: Messages API inbound messages and status callbacks, and SMS API
//! (legacy) inbound SMS and delivery receipts → unified events.
//!
//! Which API sent the request is read from its shape, the same way the verifier does:
//! - a JSON object with `message_uuid` is a **Messages API** webhook: a status callback when
//!   it has `status`, else an inbound message (channels sms, mms, whatsapp, messenger, viber,
//!   rcs);
//! - anything else is **SMS API** parameters (GET query, form body, or a JSON object, read by
//!   [`crate::verify::vonage::request_params`]): a delivery receipt when it has `status`, else
//!   an inbound SMS (`msisdn`, `to`, `messageId`).
//!
//! Each part of a concatenated inbound SMS is its own event (Vonage sends every part with its
//! own `messageId`, plus `concat-ref`, `concat-part`, `concat-total`): the part is in the
//! dedup key and in `message.system.sms_concat`, so a consumer can reassemble the text.
//!
//! Nothing here panics; what cannot be mapped becomes a dead letter with a reason.

use serde_json::{json, Map, Value};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::util::{finish, raw, rfc3339, s, secs, strip_plus, tenant_or_dead, unexpected};
use super::{Context, DeadLetter, DeadReason, Normalized};
use crate::event::{
    dedup_key, Channel, Direction, Event, EventKind, Location, Media, Message, Party, Provider,
    ProviderError, Reaction, Reply, ReplyTo, Status,
};
use crate::verify::vonage::request_params;
use crate::verify::Verified;

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let params = match request_params(v.method(), v.url(), v.body()) {
        Ok(p) => p,
        Err(detail) => {
            out.dead_letters.push(DeadLetter {
                reason: DeadReason::InvalidBody,
                detail,
                part: None,
            });
            return out;
        }
    };
    // A JSON body is kept as sent (types and nesting); form and query parameters become an
    // object of strings (a repeated name becomes an array of its values).
    let json_body = first_non_blank(v.body()) == Some(b'{');
    let object = if json_body {
        serde_json::from_slice::<Value>(v.body()).unwrap_or(Value::Null)
    } else {
        params_object(&params)
    };
    if params.is_empty() {
        out.dead_letters.push(DeadLetter {
            reason: DeadReason::UnexpectedShape,
            detail: "no parameters: neither a Messages API JSON body nor SMS API parameters".into(),
            part: Some(object),
        });
        return out;
    }
    if json_body && object.get("message_uuid").is_some() {
        if object.get("status").is_some() {
            messages_status(&object, ctx, &mut out);
        } else {
            messages_inbound(&object, ctx, &mut out);
        }
    } else if object.get("status").is_some() && object.get("messageId").is_some() {
        sms_receipt(&object, ctx, &mut out);
    } else if object.get("msisdn").is_some() || object.get("messageId").is_some() {
        sms_inbound(&object, ctx, &mut out);
    } else {
        unexpected(
            "not a Vonage webhook: no message_uuid (Messages API) nor msisdn/messageId (SMS API)"
                .into(),
            &object,
            &mut out,
        );
    }
    out
}

fn first_non_blank(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Form/query pairs as a JSON object; a repeated name becomes an array of its values.
fn params_object(params: &[(String, String)]) -> Value {
    let mut map = Map::new();
    for (k, v) in params {
        match map.get_mut(k) {
            None => {
                map.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(list)) => list.push(Value::String(v.clone())),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    Value::Object(map)
}

fn channel_of(name: Option<&str>) -> Channel {
    match name.map(str::to_ascii_lowercase).as_deref() {
        Some("sms") => Channel::Sms,
        Some("mms") => Channel::Mms,
        Some("whatsapp") => Channel::Whatsapp,
        Some("messenger") => Channel::Messenger,
        Some("instagram") => Channel::Instagram,
        Some("viber" | "viber_service") => Channel::Viber,
        Some("rcs") => Channel::Rcs,
        _ => Channel::Other,
    }
}

fn party(id: String) -> Party {
    Party {
        id: strip_plus(&id),
        ..Party::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn new_event(
    ctx: &Context<'_>,
    tenant: &str,
    kind: EventKind,
    channel: Channel,
    direction: Direction,
    key: String,
    at: Option<OffsetDateTime>,
) -> Event {
    Event::new(
        kind,
        Provider::Vonage,
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
// Messages API

/// Time of a Messages API webhook: RFC 3339 (`2025-02-03T12:14:25Z`, `...14:00:00.000Z`).
fn messages_time(o: &Value) -> Option<OffsetDateTime> {
    rfc3339(o, "timestamp").or_else(|| sms_time(o, "timestamp"))
}

fn messages_inbound(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(uuid), Some(from), Some(to)) = (s(o, "message_uuid"), s(o, "from"), s(o, "to"))
    else {
        unexpected(
            "Messages API inbound message without message_uuid, from or to".into(),
            o,
            out,
        );
        return;
    };
    let business = party(to);
    let Some(tenant) = tenant_or_dead(ctx, &business.id, o, out) else {
        return;
    };
    let channel = channel_of(o.get("channel").and_then(Value::as_str));
    let provider_type = s(o, "message_type").unwrap_or_else(|| "unknown".into());
    let kind = if provider_type == "reaction" {
        EventKind::Reaction
    } else {
        EventKind::Message
    };
    let mut e = new_event(
        ctx,
        tenant,
        kind,
        channel,
        Direction::Inbound,
        dedup_key(Provider::Vonage, "message_uuid", &uuid, None),
        messages_time(o),
    );
    e.provider_message_id = Some(uuid);
    let mut contact = party(from);
    contact.name = o.get("profile").and_then(|p| s(p, "name"));
    e.contact = Some(contact);
    e.business = Some(business);
    e.message = Some(messages_content(o, &provider_type));
    e.raw = raw(ctx, o);
    finish(e, out);
}

/// A media object `{url, caption?, name?}` of Vonage type `kind` as a unified attachment.
fn media(kind: &str, o: &Value) -> Media {
    Media {
        kind: kind.to_string(),
        url: s(o, "url"),
        caption: s(o, "caption"),
        filename: s(o, "name"),
        ..Media::default()
    }
}

/// Vonage's media type names → the unified vocabulary (`file` is Meta's `document`).
fn media_kind(vonage: &str) -> &str {
    match vonage {
        "file" => "document",
        other => other,
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(t) => t.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

fn messages_content(o: &Value, provider_type: &str) -> Message {
    let mut msg = Message {
        kind: provider_type.to_string(),
        text: s(o, "text"),
        ..Message::default()
    };
    match provider_type {
        "image" | "audio" | "video" | "file" | "sticker" => {
            msg.kind = media_kind(provider_type).to_string();
            if let Some(m) = o.get(provider_type) {
                let m = media(media_kind(provider_type), m);
                if msg.text.is_none() {
                    msg.text = m.caption.clone();
                }
                msg.media = Some(m);
            }
        }
        "vcard" => {
            // A contact card sent as a file (MMS, RCS): `contacts`, with the card's URL.
            msg.kind = "contacts".into();
            msg.media = o.get("vcard").map(|m| media("vcard", m));
        }
        "location" => {
            if let Some(l) = o.get("location") {
                let lat = number(l, "lat").or_else(|| number(l, "latitude"));
                let lon = number(l, "long").or_else(|| number(l, "longitude"));
                if let (Some(latitude), Some(longitude)) = (lat, lon) {
                    msg.location = Some(Location {
                        latitude,
                        longitude,
                        name: s(l, "name"),
                        address: s(l, "address"),
                        url: s(l, "url"),
                    });
                }
            }
        }
        "reply" => {
            msg.kind = "reply".into();
            if let Some(r) = o.get("reply") {
                msg.reply = Some(Reply {
                    kind: "reply".into(),
                    id: s(r, "id"),
                    title: s(r, "title"),
                    description: s(r, "description"),
                    ..Reply::default()
                });
                msg.text = s(r, "title").or(msg.text);
            }
        }
        "button" => {
            msg.kind = "reply".into();
            if let Some(b) = o.get("button") {
                msg.reply = Some(Reply {
                    kind: s(b, "subtype").unwrap_or_else(|| "button".into()),
                    id: s(b, "payload"),
                    title: s(b, "text"),
                    ..Reply::default()
                });
                msg.text = s(b, "text").or(msg.text);
            }
        }
        "order" => {
            msg.order = o.get("order").cloned();
            if let Some(order) = &msg.order {
                msg.text = s(order, "text").or(msg.text);
            }
        }
        "reaction" => {
            let r = o.get("reaction").unwrap_or(&Value::Null);
            let action = s(r, "action").unwrap_or_else(|| "react".into());
            let emoji = s(r, "emoji").filter(|_| action != "unreact");
            msg.reaction = Some(Reaction {
                message_id: o
                    .get("context")
                    .and_then(|c| s(c, "message_uuid"))
                    .unwrap_or_default(),
                emoji,
                action,
            });
        }
        _ => {}
    }
    // MMS with several attachments: `content: [{type, url, caption?, name?}]`.
    if let Some(items) = o.get("content").and_then(Value::as_array) {
        let attachments: Vec<Media> = items
            .iter()
            .map(|c| {
                let kind = s(c, "type").unwrap_or_else(|| "file".into());
                media(media_kind(&kind), c)
            })
            .collect();
        if msg.text.is_none() {
            msg.text = attachments.iter().find_map(|a| a.caption.clone());
        }
        // A typed media object (image, file...) next to `content` is the first item.
        let typed = msg.media.take();
        msg.set_media(typed.into_iter().chain(attachments));
    }
    if let Some(c) = o.get("context") {
        if provider_type != "reaction" {
            let id = s(c, "message_uuid");
            let from = s(c, "message_from").map(|f| strip_plus(&f));
            if id.is_some() || from.is_some() {
                msg.reply_to = Some(ReplyTo {
                    message_id: id,
                    from,
                    story: None,
                });
            }
        }
        msg.referred_product = c.get("referred_product").cloned();
    }
    msg.referral = o.get("whatsapp").and_then(|w| w.get("referral")).cloned();
    msg
}

/// Messages API status words → the shared vocabulary.
fn messages_state(status: &str) -> &'static str {
    match status {
        "submitted" => "sent",
        "delivered" => "delivered",
        "read" => "read",
        "rejected" => "rejected",
        "undeliverable" => "undelivered",
        "failed" => "failed",
        "accepted" => "accepted",
        "deleted" => "deleted",
        _ => "unknown",
    }
}

fn messages_status(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(uuid), Some(status)) = (s(o, "message_uuid"), s(o, "status")) else {
        unexpected(
            "Messages API status without message_uuid or status".into(),
            o,
            out,
        );
        return;
    };
    let Some(from) = s(o, "from") else {
        unexpected("Messages API status without from".into(), o, out);
        return;
    };
    let business = party(from);
    let Some(tenant) = tenant_or_dead(ctx, &business.id, o, out) else {
        return;
    };
    let provider_state = status.to_ascii_lowercase();
    let state = messages_state(&provider_state);
    let channel = channel_of(o.get("channel").and_then(Value::as_str));
    let mut e = new_event(
        ctx,
        tenant,
        EventKind::Status,
        channel,
        Direction::Outbound,
        dedup_key(
            Provider::Vonage,
            "message_uuid",
            &uuid,
            Some(&provider_state),
        ),
        messages_time(o),
    );
    e.provider_message_id = Some(uuid.clone());
    e.contact = s(o, "to").map(party);
    e.business = Some(business);
    e.status = Some(Status {
        state: state.to_string(),
        provider_state: (provider_state != state).then(|| provider_state.clone()),
        message_id: Some(uuid),
        conversation: o
            .get("whatsapp")
            .and_then(|w| w.get("conversation"))
            .cloned(),
        pricing: o.get("usage").cloned(),
        callback_data: s(o, "client_ref"),
        ..Status::default()
    });
    if let Some(err) = o.get("error").filter(|e| e.is_object()) {
        e.errors.push(messages_error(err));
    }
    e.raw = raw(ctx, o);
    finish(e, out);
}

/// `error {type, title, detail, instance}`: `title` is the code (e.g. "1340") in current
/// payloads; older ones carried `code`/`reason`. `type` is the documentation URL.
fn messages_error(err: &Value) -> ProviderError {
    let title = s(err, "title");
    let href = s(err, "type");
    let code = s(err, "code")
        .or_else(|| {
            title
                .clone()
                .filter(|t| t.chars().all(|c| c.is_ascii_digit()))
        })
        .or_else(|| {
            href.as_deref()
                .and_then(|h| h.rsplit_once('#'))
                .map(|(_, frag)| frag.to_string())
                .filter(|f| !f.is_empty())
        })
        .unwrap_or_else(|| "unknown".into());
    ProviderError {
        title: title.filter(|t| *t != code),
        message: s(err, "detail").or_else(|| s(err, "reason")),
        details: s(err, "instance"),
        href,
        code,
    }
}

// ---------------------------------------------------------------------------------------
// SMS API (legacy)

/// `message-timestamp` (`YYYY-MM-DD HH:MM:SS`, UTC), else the unix `timestamp`.
fn sms_time(o: &Value, key: &str) -> Option<OffsetDateTime> {
    let text = o.get(key)?.as_str()?;
    PrimitiveDateTime::parse(
        text,
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

/// `scts`, the carrier's time of the receipt: `YYMMDDhhmm` (UTC, 20YY).
fn scts_time(o: &Value) -> Option<OffsetDateTime> {
    let text = s(o, "scts")?;
    if text.len() != 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    PrimitiveDateTime::parse(
        &format!("20{text}"),
        format_description!("[year][month][day][hour][minute]"),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

fn sms_inbound(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(msisdn), Some(to)) = (s(o, "messageId"), s(o, "msisdn"), s(o, "to")) else {
        unexpected(
            "SMS API inbound message without messageId, msisdn or to".into(),
            o,
            out,
        );
        return;
    };
    let business = party(to);
    let Some(tenant) = tenant_or_dead(ctx, &business.id, o, out) else {
        return;
    };
    let concat = s(o, "concat").is_some_and(|c| c == "true");
    let (cref, cpart, ctotal) = (
        s(o, "concat-ref"),
        s(o, "concat-part"),
        s(o, "concat-total"),
    );
    // Every part has its own messageId; the part is added so that two parts can never share
    // an identity even if a carrier reused an id.
    let dedup_id = match (&cref, &cpart) {
        (Some(r), Some(p)) if concat => format!("{id}:concat:{r}:{p}"),
        _ => id.clone(),
    };
    let mut e = new_event(
        ctx,
        tenant,
        EventKind::Message,
        Channel::Sms,
        Direction::Inbound,
        dedup_key(Provider::Vonage, "sms", &dedup_id, None),
        sms_time(o, "message-timestamp").or_else(|| secs(o, "timestamp")),
    );
    e.provider_message_id = Some(id);
    e.contact = Some(party(msisdn));
    e.business = Some(business);
    let sms_type = s(o, "type").unwrap_or_else(|| "text".into());
    let mut msg = Message {
        // text and unicode are both text; binary (and anything new) keeps Vonage's word.
        kind: match sms_type.as_str() {
            "text" | "unicode" => "text".into(),
            other => other.to_string(),
        },
        text: s(o, "text"),
        ..Message::default()
    };
    if concat {
        let int = |v: &Option<String>| -> Value {
            match v.as_deref().map(str::parse::<u64>) {
                Some(Ok(n)) => json!(n),
                _ => v.clone().map(Value::String).unwrap_or(Value::Null),
            }
        };
        msg.system = Some(json!({
            "sms_concat": {"ref": cref, "part": int(&cpart), "total": int(&ctotal)}
        }));
    }
    e.message = Some(msg);
    e.raw = raw(ctx, o);
    finish(e, out);
}

/// DLR `status` → the shared vocabulary.
fn sms_state(status: &str) -> &'static str {
    match status {
        "delivered" => "delivered",
        "expired" => "expired",
        "failed" => "failed",
        "rejected" => "rejected",
        "accepted" => "accepted",
        "buffered" => "queued",
        "undelivered" | "undeliverable" => "undelivered",
        _ => "unknown",
    }
}

/// DLR `err-code` meanings (Vonage support article 204014733, "SMS Delivery Error Codes").
fn sms_error_title(code: &str) -> Option<&'static str> {
    Some(match code {
        "1" => "Unknown",
        "2" => "Absent Subscriber - Temporary",
        "3" => "Absent Subscriber - Permanent",
        "4" => "Call Barred by User",
        "5" => "Portability Error",
        "6" => "Anti-Spam Rejection",
        "7" => "Handset Busy",
        "8" => "Network Error",
        "9" => "Illegal Number",
        "10" => "Illegal Message",
        "11" => "Unroutable",
        "12" => "Destination Unreachable",
        "13" => "Subscriber Age Restriction",
        "14" => "Number Blocked by Carrier",
        _ => return None,
    })
}

fn sms_receipt(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(status)) = (s(o, "messageId"), s(o, "status")) else {
        unexpected(
            "SMS API delivery receipt without messageId or status".into(),
            o,
            out,
        );
        return;
    };
    // `to` is our sender (number or alphanumeric id), `msisdn` the recipient.
    let Some(to) = s(o, "to") else {
        unexpected(
            "SMS API delivery receipt without `to` (the sender)".into(),
            o,
            out,
        );
        return;
    };
    let business = party(to);
    let Some(tenant) = tenant_or_dead(ctx, &business.id, o, out) else {
        return;
    };
    let provider_state = status.to_ascii_lowercase();
    let state = sms_state(&provider_state);
    let mut e = new_event(
        ctx,
        tenant,
        EventKind::Status,
        Channel::Sms,
        Direction::Outbound,
        dedup_key(Provider::Vonage, "sms", &id, Some(&provider_state)),
        // Vonage's own second-precision time first; the carrier's `scts` has only minutes.
        sms_time(o, "message-timestamp")
            .or_else(|| scts_time(o))
            .or_else(|| secs(o, "timestamp")),
    );
    e.provider_message_id = Some(id.clone());
    e.contact = s(o, "msisdn").map(party);
    e.business = Some(business);
    let mut pricing = Map::new();
    for (from, to) in [("price", "price"), ("network-code", "network_code")] {
        if let Some(v) = s(o, from) {
            pricing.insert(to.into(), Value::String(v));
        }
    }
    e.status = Some(Status {
        state: state.to_string(),
        provider_state: (provider_state != state).then(|| provider_state.clone()),
        message_id: Some(id),
        pricing: (!pricing.is_empty()).then_some(Value::Object(pricing)),
        callback_data: s(o, "client-ref"),
        ..Status::default()
    });
    if let Some(code) = s(o, "err-code").filter(|c| c != "0") {
        e.errors.push(ProviderError {
            title: sms_error_title(&code).map(str::to_string),
            code,
            ..ProviderError::default()
        });
    }
    e.raw = raw(ctx, o);
    finish(e, out);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use time::macros::datetime;

    use super::*;
    use crate::normalize::testing;

    const FIXTURES: &str = "vonage";

    fn channels() -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            "447700900000",
            "14155550100",
            "12192259404",
            "1234567890123456",
            "VonageAPI",
            "441632960961",
        ]
        .iter()
        .map(|id| (id.to_string(), "acme".to_string()))
        .collect();
        m.insert("447700900999".into(), "globex".into());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "vonage_test",
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

    fn one(body: &str) -> Event {
        let ch = channels();
        let n = normalize(&Verified::assume_verified(body.to_string()), &ctx(&ch));
        assert!(n.dead_letters.is_empty(), "{:?}", n.dead_letters);
        assert_eq!(n.events.len(), 1);
        n.events.into_iter().next().unwrap()
    }

    #[test]
    fn event_ids_are_stable_and_distinct_per_state() {
        let status = |st: &str, ts: &str| {
            format!(
                r#"{{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","to":"447700900001","from":"447700900000","timestamp":"{ts}","status":"{st}","channel":"whatsapp"}}"#
            )
        };
        // Redelivery (even with another timestamp) keeps the id; each state has its own.
        let a = one(&status("delivered", "2025-01-01T00:00:00Z"));
        let b = one(&status("delivered", "2025-01-01T00:00:05Z"));
        assert_eq!(a.event_id, b.event_id);
        let ids: std::collections::HashSet<String> = ["submitted", "delivered", "read", "rejected"]
            .iter()
            .map(|st| one(&status(st, "2025-01-01T00:00:00Z")).event_id)
            .collect();
        assert_eq!(ids.len(), 4);

        // SMS API receipts: same per messageId+status; parts of a concatenated inbound SMS
        // are distinct events.
        let dlr = |st: &str| {
            format!(
                "msisdn=447700900001&to=447700900000&messageId=0A0000001234&status={st}&err-code=0"
            )
        };
        assert_eq!(
            one(&dlr("delivered")).event_id,
            one(&dlr("delivered")).event_id
        );
        assert_ne!(
            one(&dlr("delivered")).event_id,
            one(&dlr("buffered")).event_id
        );
        let part = |id: &str, p: &str| {
            format!("msisdn=447700900001&to=447700900000&messageId={id}&text=x&type=text&concat=true&concat-ref=7&concat-total=2&concat-part={p}")
        };
        let p1 = one(&part("0A01", "1"));
        let p2 = one(&part("0A02", "2"));
        assert_ne!(p1.event_id, p2.event_id);
        assert_eq!(p1.event_id, one(&part("0A01", "1")).event_id);
        assert_eq!(p1.message.unwrap().system.unwrap()["sms_concat"]["part"], 1);
        // The inbound message and a status of the same uuid never collide.
        let inbound = one(
            r#"{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","to":"447700900000","from":"447700900001","timestamp":"2025-01-01T00:00:00Z","channel":"sms","message_type":"text","text":"hi"}"#,
        );
        assert_ne!(inbound.event_id, a.event_id);
        // A contact's message and the status of our reply to them share the conversation.
        let reply_status =
            one(&status("delivered", "2025-01-01T00:00:00Z").replace("whatsapp", "sms"));
        assert!(inbound.conversation_id.is_some());
        assert_eq!(inbound.conversation_id, reply_status.conversation_id);
    }

    #[test]
    fn get_and_form_and_json_sms_agree() {
        let ch = channels();
        let q = "msisdn=447700900001&to=447700900000&messageId=0A0000000123ABCD1&text=Hello+world&type=text&message-timestamp=2025-12-31+23%3A59%3A00";
        let get = normalize(
            &Verified::assume_verified_get(&format!(
                "https://hooks.example.com/webhooks/vonage_test?{q}"
            )),
            &ctx(&ch),
        );
        let form = normalize(&Verified::assume_verified(q.to_string()), &ctx(&ch));
        let json_body = r#"{"msisdn":"447700900001","to":"447700900000","messageId":"0A0000000123ABCD1","text":"Hello world","type":"text","message-timestamp":"2025-12-31 23:59:00"}"#;
        let json = normalize(&Verified::assume_verified(json_body.to_string()), &ctx(&ch));
        for n in [&get, &form, &json] {
            assert_eq!(n.events.len(), 1);
        }
        assert_eq!(get.events[0], form.events[0]);
        assert_eq!(get.events[0].event_id, json.events[0].event_id);
        assert_eq!(get.events[0].occurred_at, "2025-12-31T23:59:00Z");
        assert_eq!(
            get.events[0].message.as_ref().unwrap().text.as_deref(),
            Some("Hello world")
        );
    }

    #[test]
    fn junk_never_panics() {
        let ch = channels();
        let c = ctx(&ch);
        let bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\xff\xfe\x00".to_vec(),
            b"{".to_vec(),
            b"[]".to_vec(),
            b"null".to_vec(),
            b"{}".to_vec(),
            br#"{"message_uuid":null}"#.to_vec(),
            br#"{"message_uuid":5,"from":[],"to":{},"status":7}"#.to_vec(),
            br#"{"message_uuid":"x","from":"1","to":"447700900000","message_type":"location","location":{"lat":"abc","long":1e400}}"#.to_vec(),
            br#"{"message_uuid":"x","from":"1","to":"447700900000","message_type":"image","image":"notanobject","content":[1,"a",null]}"#.to_vec(),
            br#"{"message_uuid":"x","from":"1","to":"447700900000","status":"delivered","error":"boom"}"#.to_vec(),
            br#"{"message_uuid":"x","from":"1","to":"447700900000","message_type":"reaction","reaction":[]}"#.to_vec(),
            b"msisdn=&to=&messageId=".to_vec(),
            b"status=delivered&messageId=1&to=447700900000&scts=99999999999&err-code=%FF".to_vec(),
            b"concat=true&concat-part=&msisdn=1&to=447700900000&messageId=2".to_vec(),
            b"a=1&a=2&a=3".to_vec(),
            "x".repeat(10_000).into_bytes(),
        ];
        for body in bodies {
            let n = normalize(&Verified::assume_verified(body.clone()), &c);
            assert!(
                !n.events.is_empty() || !n.dead_letters.is_empty(),
                "dropped: {}",
                String::from_utf8_lossy(&body)
            );
        }
        for url in [
            "https://x/w",
            "https://x/w?",
            "https://x/w?%%%",
            "not a url",
        ] {
            let n = normalize(&Verified::assume_verified_get(url), &c);
            assert!(!n.dead_letters.is_empty() || !n.events.is_empty(), "{url}");
        }
    }
}
