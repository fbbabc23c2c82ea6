//! Plivo Messaging (SMS, MMS, WhatsApp): payloads into unified events.
//!
//! One request is one callback: an incoming message (the application's `message_url`) or a
//! message status callback (the `url` given when sending). Plivo posts form parameters, puts
//! them in the query string of a GET, or posts JSON; the parameters are read by the helpers
//! shared with the Twilio normalizer ([`super::twilio::read_params`]) and kept whole in `raw`.
//!
//! - A callback with `Status` is a delivery report; without, an incoming message.
//! - Channel: `Type` (`sms`, `mms`, `whatsapp`); absent → `sms`.
//! - Incoming: contact = `From`, business = `To`; `Text` (SMS) or `Body` (MMS, WhatsApp);
//!   media from `Media<N>` (Plivo documents `Media1…`, its support articles `Media0…`: both
//!   are read, in index order), WhatsApp `ContentType` (`text`, `media`, `button`, `unknown`)
//!   and `MimeType`. Plivo gives no time for incoming messages.
//! - Status: contact = `To`, business = `From`; time from `DeliveryReportTime`, `SentTime`,
//!   `QueuedTime` or `MessageTime` by state (`YYYY-MM-DD HH:MM:SS[.ffffff][±HH:MM]`, UTC when
//!   no offset is given).
//! - Dedup: `MessageUUID`; statuses add `Status` and, when present, `Sequence` (the order of
//!   a message's callbacks), so a repeated state with a new sequence is a new event and a
//!   retry of the same callback is not.
//!
//! This module must never panic on any input and never fail the request.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::twilio::{media_kind, read_params, Params, MAX_MEDIA};
use super::util::{finish, raw, strip_plus, tenant_or_dead, unexpected};
use super::{Context, Normalized};
use crate::event::{
    dedup_key, Channel, Direction, Event, EventKind, Media, Message, Party, Provider,
    ProviderError, Reply, Status,
};
use crate::verify::Verified;

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    for params in read_params(v, &mut out) {
        one(&params, ctx, &mut out);
    }
    out
}

fn channel(p: &Params) -> Channel {
    match p
        .get("Type")
        .map(|t| t.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("whatsapp") => Channel::Whatsapp,
        Some("mms") => Channel::Mms,
        _ => Channel::Sms,
    }
}

fn one(p: &Params, ctx: &Context<'_>, out: &mut Normalized) {
    let raw_obj = p.raw();
    let Some(uuid) = p.get("MessageUUID") else {
        unexpected(
            "no MessageUUID: not a Plivo message or message status callback".into(),
            raw_obj,
            out,
        );
        return;
    };
    let (Some(from), Some(to)) = (p.get("From"), p.get("To")) else {
        unexpected(format!("message {uuid} has no From or To"), raw_obj, out);
        return;
    };
    match p.get("Status").map(|s| s.trim().to_ascii_lowercase()) {
        Some(word) => status(p, uuid, &word, from, to, ctx, out),
        None => message(p, uuid, from, to, ctx, out),
    }
}

/// `Media<N>` parameters in index order (at most [`MAX_MEDIA`]).
fn media_urls(p: &Params) -> Vec<String> {
    let Some(obj) = p.raw().as_object() else {
        return Vec::new();
    };
    let mut numbered: Vec<(u32, String)> = obj
        .iter()
        .filter_map(|(k, v)| {
            let n: u32 = k.strip_prefix("Media")?.parse().ok()?;
            let url = match v {
                serde_json::Value::String(s) if !s.is_empty() => s.clone(),
                serde_json::Value::Array(items) => items.first()?.as_str()?.to_string(),
                _ => return None,
            };
            Some((n, url))
        })
        .collect();
    numbered.sort();
    numbered.truncate(MAX_MEDIA);
    numbered.into_iter().map(|(_, u)| u).collect()
}

fn message(p: &Params, uuid: &str, from: &str, to: &str, ctx: &Context<'_>, out: &mut Normalized) {
    let raw_obj = p.raw();
    let business_id = strip_plus(to.trim());
    let Some(tenant) = tenant_or_dead(ctx, &business_id, raw_obj, out) else {
        return;
    };
    let mut event = Event::new(
        EventKind::Message,
        Provider::Plivo,
        channel(p),
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Plivo, "MessageUUID", uuid, None),
        None,
        ctx.received_at,
    );
    event.provider_message_id = Some(uuid.to_string());
    event.contact = Some(Party {
        id: strip_plus(from.trim()),
        ..Party::default()
    });
    event.business = Some(Party {
        id: business_id,
        display: Some(to.trim().to_string()),
        ..Party::default()
    });
    let mime = p.get("MimeType");
    let media: Vec<Media> = media_urls(p)
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            // WhatsApp media carry one MimeType, for the (single) attachment.
            let mime = if i == 0 { mime } else { None };
            Media {
                kind: media_kind(mime).to_string(),
                url: Some(url),
                mime_type: mime.map(str::to_string),
                ..Media::default()
            }
        })
        .collect();
    let text = p.get("Text").or_else(|| p.get("Body")).map(str::to_string);
    let content_type = p.get("ContentType").map(|c| c.trim().to_ascii_lowercase());
    let kind = if let Some(first) = media.first() {
        first.kind.clone()
    } else {
        match content_type.as_deref() {
            Some("button") => "reply".to_string(),
            Some("unknown") => "unsupported".to_string(),
            Some("media") => media_kind(mime).to_string(),
            Some(other) if !other.is_empty() && other != "text" => other.to_string(),
            _ => "text".to_string(),
        }
    };
    let reply = (kind == "reply").then(|| Reply {
        kind: "button".into(),
        title: text.clone(),
        ..Reply::default()
    });
    let mut message = Message {
        kind,
        text,
        reply,
        ..Message::default()
    };
    message.set_media(media);
    event.message = Some(message);
    event.errors = errors(p);
    event.raw = raw(ctx, raw_obj);
    finish(event, out);
}

/// Plivo's status word in the shared vocabulary (its words are the shared ones).
fn state_for(word: &str) -> &'static str {
    match word {
        "queued" => "queued",
        "sent" => "sent",
        "delivered" => "delivered",
        "undelivered" => "undelivered",
        "failed" => "failed",
        "read" => "read",
        "rejected" => "rejected",
        "expired" => "expired",
        "accepted" => "accepted",
        _ => "unknown",
    }
}

#[allow(clippy::too_many_arguments)]
fn status(
    p: &Params,
    uuid: &str,
    word: &str,
    from: &str,
    to: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let raw_obj = p.raw();
    let business_id = strip_plus(from.trim());
    let Some(tenant) = tenant_or_dead(ctx, &business_id, raw_obj, out) else {
        return;
    };
    let state = state_for(word);
    let key_state = match p.get("Sequence").map(str::trim) {
        Some(seq) => format!("{word}:{seq}"),
        None => word.to_string(),
    };
    let time_keys: &[&str] = match state {
        "queued" => &["QueuedTime", "MessageTime"],
        "sent" => &["SentTime", "MessageTime"],
        _ => &["DeliveryReportTime", "SentTime", "MessageTime"],
    };
    let occurred_at = time_keys
        .iter()
        .find_map(|k| p.get(k).and_then(parse_plivo_time));
    let mut event = Event::new(
        EventKind::Status,
        Provider::Plivo,
        channel(p),
        Direction::Outbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Plivo, "MessageUUID", uuid, Some(&key_state)),
        occurred_at,
        ctx.received_at,
    );
    event.provider_message_id = Some(uuid.to_string());
    event.contact = Some(Party {
        id: strip_plus(to.trim()),
        ..Party::default()
    });
    event.business = Some(Party {
        id: business_id,
        display: Some(from.trim().to_string()),
        ..Party::default()
    });
    // WhatsApp statuses carry the conversation (window) they were charged to, and every
    // receipt the amount charged.
    let conversation = p.get("ConversationID").filter(|c| !c.is_empty()).map(|id| {
        serde_json::json!({
            "id": id,
            "origin": p.get("ConversationOrigin"),
            "expiration": p.get("ConversationExpirationTimestamp"),
        })
    });
    let pricing = p
        .get("TotalAmount")
        .filter(|a| !a.is_empty())
        .map(|amount| {
            serde_json::json!({
                "amount": amount,
                "rate": p.get("TotalRate"),
                "units": p.get("Units"),
            })
        });
    event.status = Some(Status {
        state: state.to_string(),
        provider_state: (state != word).then(|| word.to_string()),
        message_id: Some(uuid.to_string()),
        conversation,
        pricing,
        ..Status::default()
    });
    event.errors = errors(p);
    event.raw = raw(ctx, raw_obj);
    finish(event, out);
}

/// `ErrorCode`, unless it is empty or all zeros (`000` is Plivo's "no error").
fn errors(p: &Params) -> Vec<ProviderError> {
    match p.get("ErrorCode").map(str::trim) {
        Some(code) if code.bytes().any(|b| b != b'0') => vec![ProviderError {
            code: code.to_string(),
            ..ProviderError::default()
        }],
        _ => Vec::new(),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM|Z]` (a `T` separator accepted); UTC without offset.
fn parse_plivo_time(value: &str) -> Option<OffsetDateTime> {
    let v = value.trim();
    let b = v.as_bytes();
    if b.len() < 19 || !v.is_char_boundary(19) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = v.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let date = Date::from_calendar_date(
        num(0..4)? as i32,
        Month::try_from(num(5..7)? as u8).ok()?,
        num(8..10)? as u8,
    )
    .ok()?;
    let mut rest = &v[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut n: u64 = frac[..digits.min(9)].parse().ok()?;
        for _ in digits.min(9)..9 {
            n *= 10;
        }
        nanos = u32::try_from(n).ok()?;
        rest = &frac[digits..];
    }
    let time = Time::from_hms_nano(
        num(11..13)? as u8,
        num(14..16)? as u8,
        num(17..19)? as u8,
        nanos,
    )
    .ok()?;
    let offset = match rest.trim() {
        "" | "Z" | "z" => UtcOffset::UTC,
        o => {
            let sign: i8 = match o.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = o.get(1..)?.replace(':', "");
            if hm.len() != 4 || !hm.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let h: i8 = hm[..2].parse().ok()?;
            let m: i8 = hm[2..].parse().ok()?;
            UtcOffset::from_hms(sign * h, sign * m, 0).ok()?
        }
    };
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::normalize::testing;

    fn channels() -> HashMap<String, String> {
        let mut m: HashMap<String, String> = ["14155551234", "918031404444", "12025550142"]
            .iter()
            .map(|id| (id.to_string(), "acme".to_string()))
            .collect();
        m.insert("14155559999".into(), "globex".into());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "plivo_test",
            received_at: datetime!(2026-01-01 00:00:00 UTC),
            include_raw: true,
            channels,
            default_tenant: None,
        }
    }

    fn run(body: &str) -> Normalized {
        let ch = channels();
        normalize(
            &Verified::assume_verified(body.as_bytes().to_vec()),
            &ctx(&ch),
        )
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all("plivo", &ctx(&ch), normalize);
    }

    #[test]
    fn every_fixture_yields_something() {
        let ch = channels();
        for path in testing::bodies("plivo") {
            let body = std::fs::read(&path).unwrap();
            let v = if path.extension().is_some_and(|e| e == "url") {
                Verified::assume_verified_get(String::from_utf8_lossy(&body).trim())
            } else {
                Verified::assume_verified(body)
            };
            let n = normalize(&v, &ctx(&ch));
            assert!(
                !n.events.is_empty() || !n.dead_letters.is_empty(),
                "{}",
                path.display()
            );
        }
    }

    const DLR: &str = "MessageUUID=0936ec98-7c4c-11e4-9bd8-22000afa12b9&From=14155551234&To=12025550199&Type=sms&Units=1";

    #[test]
    fn status_ids_are_stable_and_distinct_per_state_and_sequence() {
        let ev = |extra: &str| run(&format!("{DLR}&{extra}")).events.remove(0);
        let queued = ev("Status=queued&Sequence=1");
        let sent = ev("Status=sent&Sequence=2");
        let delivered = ev("Status=delivered&Sequence=3");
        assert_eq!(sent.event_id, ev("Status=sent&Sequence=2").event_id);
        assert_ne!(queued.event_id, sent.event_id);
        assert_ne!(sent.event_id, delivered.event_id);
        assert_ne!(sent.event_id, ev("Status=sent&Sequence=4").event_id);
        assert_ne!(sent.event_id, ev("Status=sent").event_id);
        assert_eq!(queued.conversation_id, delivered.conversation_id);
        // The form and the JSON form of one callback are the same event.
        let json = r#"{"MessageUUID":"0936ec98-7c4c-11e4-9bd8-22000afa12b9","From":"14155551234","To":"12025550199","Type":"sms","Units":1,"Status":"sent","Sequence":2}"#;
        assert_eq!(run(json).events[0].event_id, sent.event_id);
    }

    #[test]
    fn inbound_ids_are_stable() {
        let body = "From=12025550199&To=14155551234&Text=hi&Type=sms&MessageUUID=abc";
        assert_eq!(run(body).events[0].event_id, run(body).events[0].event_id);
        let reordered = "MessageUUID=abc&Type=sms&Text=hi&To=14155551234&From=12025550199";
        assert_eq!(
            run(body).events[0].event_id,
            run(reordered).events[0].event_id
        );
    }

    #[test]
    fn plivo_times() {
        assert_eq!(
            parse_plivo_time("2025-12-31 23:59:58.123456"),
            Some(datetime!(2025-12-31 23:59:58.123456 UTC))
        );
        assert_eq!(
            parse_plivo_time("2025-12-31 23:59:58+05:30"),
            Some(datetime!(2025-12-31 23:59:58 +05:30))
        );
        for bad in [
            "",
            "2025-13-01 00:00:00",
            "2025-12-31",
            "2025-12-31 23:59:58.",
            "2025-12-31 23:59:58 junk",
            "ééééééééééééééééééééé",
        ] {
            assert_eq!(parse_plivo_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn junk_never_panics_and_is_never_dropped() {
        for body in [
            "",
            "&",
            "a=1",
            "{",
            "[]",
            "[1,{}]",
            "true",
            "{\"MessageUUID\":[1]}",
            "\u{0}",
        ] {
            let n = run(body);
            assert!(
                !n.events.is_empty() || !n.dead_letters.is_empty(),
                "{body:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let ch = channels();
            let _ = normalize(&Verified::assume_verified(body), &ctx(&ch));
        }

        #[test]
        fn never_panics_on_arbitrary_params(
            pairs in proptest::collection::vec(
                (prop::sample::select(vec![
                    "MessageUUID", "From", "To", "Text", "Body", "Type", "Status", "Sequence",
                    "Media0", "Media1", "MediaCount", "ContentType", "MimeType", "ErrorCode",
                    "DeliveryReportTime", "SentTime", "QueuedTime", "MessageTime",
                ]), ".{0,30}"),
                0..16,
            )
        ) {
            let ch = channels();
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish();
            let n = normalize(&Verified::assume_verified(body.into_bytes()), &ctx(&ch));
            prop_assert!(!n.events.is_empty() || !n.dead_letters.is_empty());
        }
    }
}
