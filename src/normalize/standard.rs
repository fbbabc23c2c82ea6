//! Standard Webhooks senders → unified events, through a generic payload shape that
//! switchboard defines (Standard Webhooks fixes the signature, not the payload).
//!
//! The envelope is the spec's recommendation, `{"type", "timestamp", "data"}`: `type` (string)
//! is required, `timestamp` (RFC 3339) is optional, `data` an object. Two types are messages;
//! they are checked strictly (a missing or mistyped field is a dead letter naming it, never a
//! guess):
//!
//! `message.received` — a contact wrote to the business:
//! - `data.id` (string, required): the sender's message id → `provider_message_id`, dedup.
//! - `data.channel` (required): sms, mms, whatsapp, messenger, instagram, viber, rcs,
//!   telegram or other.
//! - `data.from` (required): the contact, an address string or `{id, name?, username?}`.
//! - `data.to` (required): the business address (string or `{id, name?}`); the tenant is
//!   `channels[to]`, else the source's tenant; its `name` becomes `business.display`. A leading `+` is dropped from both addresses.
//! - `data.text` (string), `data.media` (array of `{type, url?, id?, mime_type?, filename?,
//!   caption?, sha256?}`, each with `url` or `id`), `data.location` (`{latitude, longitude,
//!   name?, address?}`), `data.reply` (`{id?, title?}`, a button/quick reply),
//!   `data.reply_to` (message id string): at least one of text, media, location, reply.
//! - `data.type` (string): the message type; default `reply` with a reply, else the first
//!   media's type, else `location`, else `text`.
//! - `data.timestamp` (RFC 3339): when it was sent; default the envelope's `timestamp`.
//!
//! `message.status` — the state of a message the business sent:
//! - `data.message_id` (required), `data.status` (required: accepted, queued, sending, sent,
//!   delivered, read, played, failed, undelivered, rejected, expired, deleted, unknown; any
//!   other word becomes `unknown` with the word in `provider_state`), `data.channel`
//!   (required), `data.from` (required, the business), `data.to` (required, the contact),
//!   `data.errors` (array of `{code (string or number), title?, message?}`),
//!   `data.timestamp` (RFC 3339).
//!
//! Any other `type` → `kind = notification`, `topic = type`, `data` = the envelope's `data`
//! (the whole body when it has none), tenant = `channels[<source id>]` else the source's.
//!
//! Dedup: a message on the sender's message id, a status on message id + recipient + status
//! word (all namespaced by the source id: ids come from arbitrary senders), a notification on
//! the `webhook-id` header — the spec's idempotency key, read via [`Verified::headers`].

use serde_json::Value;
use time::OffsetDateTime;

use super::util::{
    finish, json_body, raw, rfc3339, s, shared_state, strip_plus, tenant_or_dead, unexpected,
};
use super::{Context, Normalized};
use crate::event::{
    dedup_key, Channel, Direction, Event, EventKind, Location, Media, Message, Notification, Party,
    Provider, ProviderError, Reply, ReplyTo, Status,
};
use crate::verify::Verified;

pub fn normalize(req: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let Some(root) = json_body(req.body(), &mut out) else {
        return out;
    };
    let Some(kind) = root
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        unexpected(
            "Standard Webhooks payload without a string `type` (expected {\"type\", \"timestamp\", \"data\"})".into(),
            &root,
            &mut out,
        );
        return out;
    };
    let envelope_at = match optional_time(&root, "timestamp") {
        Ok(t) => t,
        Err(why) => return dead(why, &root, out),
    };
    let result = match kind {
        "message.received" => message(&root, envelope_at, ctx, &mut out),
        "message.status" => status(&root, envelope_at, ctx, &mut out),
        _ => notification(kind, &root, envelope_at, req, ctx, &mut out),
    };
    if let Err(why) = result {
        unexpected(format!("{kind}: {why}"), &root, &mut out);
    }
    out
}

fn dead(why: String, root: &Value, mut out: Normalized) -> Normalized {
    unexpected(why, root, &mut out);
    out
}

/// An optional RFC 3339 field: absent is fine, present but unreadable is an error.
fn optional_time(v: &Value, key: &str) -> Result<Option<OffsetDateTime>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => rfc3339(v, key)
            .map(Some)
            .ok_or_else(|| format!("`{key}` is not an RFC 3339 time")),
    }
}

fn data(root: &Value) -> Result<&Value, String> {
    root.get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| "`data` must be an object".to_string())
}

fn required_str(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("`data.{key}` must be a non-empty string")),
        None => Err(format!("`data.{key}` is required")),
    }
}

fn optional_str(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn channel(d: &Value) -> Result<Channel, String> {
    Ok(match required_str(d, "channel")?.as_str() {
        "sms" => Channel::Sms,
        "mms" => Channel::Mms,
        "whatsapp" => Channel::Whatsapp,
        "messenger" => Channel::Messenger,
        "instagram" => Channel::Instagram,
        "viber" => Channel::Viber,
        "rcs" => Channel::Rcs,
        "telegram" => Channel::Telegram,
        "other" => Channel::Other,
        c => {
            return Err(format!(
                "`data.channel` = {c:?}: use sms, mms, whatsapp, messenger, instagram, viber, rcs, telegram or other"
            ))
        }
    })
}

/// An address: a string, or an object with a string `id` (and optional name/username).
fn party(d: &Value, key: &str) -> Result<Party, String> {
    let p = match d.get(key) {
        Some(Value::String(id)) if !id.is_empty() => Party {
            id: strip_plus(id),
            ..Party::default()
        },
        Some(o @ Value::Object(_)) => Party {
            id: optional_str(o, "id")?
                .filter(|id| !id.is_empty())
                .map(|id| strip_plus(&id))
                .ok_or_else(|| format!("`data.{key}.id` must be a non-empty string"))?,
            name: optional_str(o, "name")?,
            username: optional_str(o, "username")?,
            ..Party::default()
        },
        None => return Err(format!("`data.{key}` is required")),
        Some(_) => {
            return Err(format!(
                "`data.{key}` must be an address string or an object with an `id`"
            ))
        }
    };
    if strip_plus(&p.id).is_empty() {
        return Err(format!("`data.{key}` is an empty address"));
    }
    Ok(p)
}

/// The business side: its `name` is a display name (`business.display`).
fn business_party(d: &Value, key: &str) -> Result<Party, String> {
    let mut p = party(d, key)?;
    p.display = p.name.take();
    Ok(p)
}

fn media(d: &Value) -> Result<Vec<Media>, String> {
    let list = match d.get("media") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("`data.media` must be an array".into()),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            if !m.is_object() {
                return Err(format!("`data.media[{i}]` must be an object"));
            }
            let field =
                |k: &str| optional_str(m, k).map_err(|e| format!("`data.media[{i}].{}", &e[1..]));
            let media = Media {
                kind: field("type")?
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| format!("`data.media[{i}].type` is required"))?,
                id: field("id")?,
                url: field("url")?,
                mime_type: field("mime_type")?,
                sha256: field("sha256")?,
                caption: field("caption")?,
                filename: field("filename")?,
                ..Media::default()
            };
            if media.id.is_none() && media.url.is_none() {
                return Err(format!("`data.media[{i}]` needs a `url` or an `id`"));
            }
            Ok(media)
        })
        .collect()
}

fn location(d: &Value) -> Result<Option<Location>, String> {
    let Some(l) = d.get("location").filter(|l| !l.is_null()) else {
        return Ok(None);
    };
    let coord = |k: &str| {
        l.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("`data.location.{k}` must be a number"))
    };
    Ok(Some(Location {
        latitude: coord("latitude")?,
        longitude: coord("longitude")?,
        name: optional_str(l, "name").map_err(|e| format!("`data.location.{}", &e[1..]))?,
        address: optional_str(l, "address").map_err(|e| format!("`data.location.{}", &e[1..]))?,
        ..Location::default()
    }))
}

fn reply(d: &Value) -> Result<Option<Reply>, String> {
    match d.get("reply") {
        None | Some(Value::Null) => Ok(None),
        Some(r @ Value::Object(_)) => Ok(Some(Reply {
            kind: "reply".into(),
            id: optional_str(r, "id").map_err(|e| format!("`data.reply.{}", &e[1..]))?,
            title: optional_str(r, "title").map_err(|e| format!("`data.reply.{}", &e[1..]))?,
            ..Reply::default()
        })),
        Some(_) => Err("`data.reply` must be an object".into()),
    }
}

fn message(
    root: &Value,
    envelope_at: Option<OffsetDateTime>,
    ctx: &Context<'_>,
    out: &mut Normalized,
) -> Result<(), String> {
    let d = data(root)?;
    let id = required_str(d, "id")?;
    let channel = channel(d)?;
    let contact = party(d, "from")?;
    let business = business_party(d, "to")?;
    let text = optional_str(d, "text").map_err(|e| format!("`data.{}", &e[1..]))?;
    let media = media(d)?;
    let location = location(d)?;
    let reply = reply(d)?;
    let reply_to = optional_str(d, "reply_to").map_err(|e| format!("`data.{}", &e[1..]))?;
    let at = optional_time(d, "timestamp").map_err(|e| format!("`data.{}", &e[1..]))?;
    if text.is_none() && media.is_empty() && location.is_none() && reply.is_none() {
        return Err("a message needs at least one of `data.text`, `data.media`, `data.location`, `data.reply`".into());
    }
    let kind = match optional_str(d, "type").map_err(|e| format!("`data.{}", &e[1..]))? {
        Some(t) if !t.is_empty() => t,
        _ if reply.is_some() => "reply".into(),
        _ => match (media.first(), &location) {
            (Some(m), _) => m.kind.clone(),
            (None, Some(_)) => "location".into(),
            (None, None) => "text".into(),
        },
    };
    let Some(tenant) = tenant_or_dead(ctx, &business.id, root, out) else {
        return Ok(());
    };
    let mut e = Event::new(
        EventKind::Message,
        Provider::Standard,
        channel,
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(
            Provider::Standard,
            &format!("message:{}", ctx.source),
            &id,
            None,
        ),
        at.or(envelope_at),
        ctx.received_at,
    );
    e.provider_message_id = Some(id);
    e.contact = Some(contact);
    e.business = Some(business);
    let mut message = Message {
        kind,
        text,
        location,
        reply,
        reply_to: reply_to.map(|id| ReplyTo {
            message_id: Some(id),
            ..ReplyTo::default()
        }),
        ..Message::default()
    };
    message.set_media(media);
    e.message = Some(message);
    e.raw = raw(ctx, root);
    finish(e, out);
    Ok(())
}

fn errors(d: &Value) -> Result<Vec<ProviderError>, String> {
    let list = match d.get("errors") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("`data.errors` must be an array".into()),
    };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let code = s(e, "code")
                .ok_or_else(|| format!("`data.errors[{i}].code` must be a string or a number"))?;
            Ok(ProviderError {
                code,
                title: optional_str(e, "title")
                    .map_err(|x| format!("`data.errors[{i}].{}", &x[1..]))?,
                message: optional_str(e, "message")
                    .map_err(|x| format!("`data.errors[{i}].{}", &x[1..]))?,
                ..ProviderError::default()
            })
        })
        .collect()
}

fn status(
    root: &Value,
    envelope_at: Option<OffsetDateTime>,
    ctx: &Context<'_>,
    out: &mut Normalized,
) -> Result<(), String> {
    let d = data(root)?;
    let message_id = required_str(d, "message_id")?;
    let word = required_str(d, "status")?;
    let channel = channel(d)?;
    let business = business_party(d, "from")?;
    let contact = party(d, "to")?;
    let errs = errors(d)?;
    let at = optional_time(d, "timestamp").map_err(|e| format!("`data.{}", &e[1..]))?;
    let (state, provider_state) = shared_state(&word);
    let Some(tenant) = tenant_or_dead(ctx, &business.id, root, out) else {
        return Ok(());
    };
    let mut e = Event::new(
        EventKind::Status,
        Provider::Standard,
        channel,
        Direction::Outbound,
        tenant,
        ctx.source,
        dedup_key(
            Provider::Standard,
            &format!("status:{}", ctx.source),
            &format!("{message_id}:{}", contact.id),
            Some(&word),
        ),
        at.or(envelope_at),
        ctx.received_at,
    );
    e.provider_message_id = Some(message_id.clone());
    e.contact = Some(contact);
    e.business = Some(business);
    e.status = Some(Status {
        state,
        provider_state,
        message_id: Some(message_id),
        ..Status::default()
    });
    e.errors = errs;
    e.raw = raw(ctx, root);
    finish(e, out);
    Ok(())
}

fn notification(
    kind: &str,
    root: &Value,
    envelope_at: Option<OffsetDateTime>,
    req: &Verified,
    ctx: &Context<'_>,
    out: &mut Normalized,
) -> Result<(), String> {
    // Verification requires webhook-id, so a verified request always has it.
    let webhook_id = req
        .headers()
        .get(crate::verify::standard::HEADER_ID)
        .filter(|id| !id.is_empty())
        .ok_or("no webhook-id header to identify the notification")?;
    let Some(tenant) = tenant_or_dead(ctx, ctx.source, root, out) else {
        return Ok(());
    };
    let mut e = Event::new(
        EventKind::Notification,
        Provider::Standard,
        Channel::Other,
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(
            Provider::Standard,
            &format!("webhook:{}", ctx.source),
            webhook_id,
            None,
        ),
        envelope_at,
        ctx.received_at,
    );
    e.notification = Some(Notification {
        topic: kind.to_string(),
        event: None,
        data: root.get("data").unwrap_or(root).clone(),
        standby: false,
    });
    e.raw = raw(ctx, root);
    finish(e, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::testing;
    use crate::normalize::util::STATES;
    use crate::verify::standard::verified_for_tests;
    use crate::verify::Headers;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use time::macros::datetime;

    fn channels() -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("14155550100".to_string(), "acme".to_string());
        m.insert("acme-page".to_string(), "acme".to_string());
        m.insert("442071838750".to_string(), "globex".to_string());
        // Notifications name no business address: the source id maps them.
        m.insert("standard_test".to_string(), "acme".to_string());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "standard_test",
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    fn with_id(body: &[u8], id: Option<&str>) -> Verified {
        let mut h = Headers::new();
        if let Some(id) = id {
            h.insert("webhook-id", id);
        }
        verified_for_tests(h, body.to_vec())
    }

    /// The fixture runner builds requests without headers; a fixture's
    /// `<case>.headers.json` (`{"webhook-id": ...}`) supplies them here, matched by body.
    fn fixture_headers() -> Vec<(Vec<u8>, String)> {
        testing::bodies("standard")
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
                let h = std::fs::read_to_string(p.with_file_name(format!("{stem}.headers.json")))
                    .ok()?;
                let h: Value = serde_json::from_str(&h).unwrap();
                Some((std::fs::read(&p).unwrap(), s(&h, "webhook-id")?))
            })
            .collect()
    }

    fn normalize_with_fixture_headers(
        table: &[(Vec<u8>, String)],
    ) -> impl Fn(&Verified, &Context<'_>) -> Normalized + '_ {
        move |v, c| {
            let id = table
                .iter()
                .find(|(body, _)| body.as_slice() == v.body())
                .map(|(_, id)| id.as_str());
            normalize(&with_id(v.body(), id), c)
        }
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        let table = fixture_headers();
        assert!(!table.is_empty());
        testing::check_all(
            "standard",
            &ctx(&ch),
            normalize_with_fixture_headers(&table),
        );
    }

    #[test]
    fn every_fixture_yields_something_and_ids_are_stable() {
        let ch = channels();
        let table = fixture_headers();
        let f = normalize_with_fixture_headers(&table);
        for path in testing::bodies("standard") {
            let v = Verified::assume_verified(std::fs::read(&path).unwrap());
            let a = f(&v, &ctx(&ch));
            let b = f(&v, &ctx(&ch));
            assert!(
                !a.events.is_empty() || !a.dead_letters.is_empty(),
                "{}",
                path.display()
            );
            let ids: Vec<&str> = a.events.iter().map(|e| e.event_id.as_str()).collect();
            let again: Vec<&str> = b.events.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, again, "{}", path.display());
        }
    }

    fn status_body(status: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "message.status", "timestamp": "2026-01-01T00:00:00Z",
            "data": {"message_id": "m-1", "status": status, "channel": "sms",
                     "from": "+14155550100", "to": "+14155550199"}
        }))
        .unwrap()
    }

    #[test]
    fn redelivery_keeps_ids_and_states_differ() {
        let ch = channels();
        // A retry carries the same webhook-id; a replay under a new webhook-id is still the
        // same status of the same message.
        let a = normalize(
            &with_id(&status_body("delivered"), Some("msg_1")),
            &ctx(&ch),
        );
        let b = normalize(
            &with_id(&status_body("delivered"), Some("msg_2")),
            &ctx(&ch),
        );
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        let mut seen = std::collections::HashSet::new();
        for st in STATES.iter().chain(["carrier_accepted"].iter()) {
            let n = normalize(&with_id(&status_body(st), Some("msg_1")), &ctx(&ch));
            assert!(seen.insert(n.events[0].event_id.clone()), "{st}");
        }
        // Notifications: keyed by webhook-id.
        let note = br#"{"type":"contact.updated","data":{"id":"c1"}}"#;
        let n1 = normalize(&with_id(note, Some("msg_a")), &ctx(&ch));
        let n2 = normalize(&with_id(note, Some("msg_a")), &ctx(&ch));
        let n3 = normalize(&with_id(note, Some("msg_b")), &ctx(&ch));
        assert_eq!(n1.events[0].event_id, n2.events[0].event_id);
        assert_ne!(n1.events[0].event_id, n3.events[0].event_id);
        // Without the header (impossible once verified) it is a dead letter, not a guess.
        let n4 = normalize(&with_id(note, None), &ctx(&ch));
        assert!(n4.events.is_empty() && n4.dead_letters.len() == 1);
    }

    #[test]
    fn junk_never_panics() {
        let ch = channels();
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"type\":7}",
            b"{\"type\":\"message.received\"}",
            b"{\"type\":\"message.received\",\"data\":{\"id\":\"1\",\"channel\":\"sms\",\"from\":\"+\",\"to\":\"x\",\"text\":\"t\"}}",
            b"{\"type\":\"message.received\",\"data\":{\"id\":\"1\",\"channel\":\"sms\",\"from\":{},\"to\":[],\"media\":[1]}}",
            b"{\"type\":\"message.status\",\"data\":{\"errors\":[{}]}}",
            b"{\"type\":\"x\",\"timestamp\":5}",
        ] {
            let n = normalize(&with_id(body, Some("msg_x")), &ctx(&ch));
            assert!(!n.events.is_empty() || !n.dead_letters.is_empty(), "{body:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let ch = channels();
            let _ = normalize(&with_id(&body, Some("msg_p")), &ctx(&ch));
        }
    }
}
