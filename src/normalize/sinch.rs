//! Sinch normalizer: Conversation API callbacks and SMS REST API callbacks → unified events.
//!
//! **Conversation API** callbacks are one JSON object per trigger: the envelope (`app_id`,
//! `project_id`, `accepted_time`, `event_time`, `message_metadata`, `correlation_id`) plus one
//! trigger key: `message` (MESSAGE_INBOUND), `message_delivery_report`, or another
//! (`event`, `message_submit_notification`, `conversation_start_notification`,
//! `contact_create_notification`, `opt_in_notification`, `capability_notification`,
//! `channel_event_notification`, `unsupported_callback`...), which become notifications. The
//! business address is `app_id`; the contact is the channel identity (a phone number for SMS,
//! WhatsApp, RCS, Viber; a platform id for Messenger, Telegram...), else the Sinch
//! `contact_id`. A delivery report's identity is message id + status + channel: a message that
//! falls back across channels reports `SWITCHING_CHANNEL` once per channel left.
//!
//! **SMS REST API** callbacks carry `type`: `mo_text` / `mo_binary` / `mo_media` (inbound: the
//! business address is `to`), `recipient_delivery_report_sms` / `_mms` (one recipient) and
//! `delivery_report_sms` / `_mms` (a batch: one status per listed recipient; a summary
//! without recipients becomes a notification). Reports name no sender, so their business
//! address is the source id.
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

/// Keys of a Conversation API callback that are not the trigger.
const ENVELOPE: &[&str] = &[
    "app_id",
    "project_id",
    "accepted_time",
    "event_time",
    "message_metadata",
    "correlation_id",
    "processing_mode",
];

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    let Some(root) = json_body(v.body(), &mut out) else {
        return out;
    };
    if !root.is_object() {
        unexpected("the body is not a JSON object".into(), &root, &mut out);
        return out;
    }
    match root.get("type").and_then(Value::as_str) {
        Some(t @ ("mo_text" | "mo_binary" | "mo_media")) => sms_inbound(&root, t, ctx, &mut out),
        Some(
            "recipient_delivery_report_sms"
            | "recipient_delivery_report_mms"
            | "delivery_report_sms"
            | "delivery_report_mms",
        ) => sms_report(&root, ctx, &mut out),
        _ if root.get("app_id").is_some() => conversation(&root, ctx, &mut out),
        other => unexpected(
            format!(
                "neither a Conversation API callback (app_id) nor an SMS callback (type {})",
                other.map_or_else(|| "missing".to_string(), |t| format!("{t:?}"))
            ),
            &root,
            &mut out,
        ),
    }
    out
}

// ---------------------------------------------------------------------------------------
// helpers

fn channel_of(channel: &str) -> Channel {
    match channel {
        "WHATSAPP" => Channel::Whatsapp,
        "SMS" => Channel::Sms,
        "MMS" => Channel::Mms,
        "MESSENGER" => Channel::Messenger,
        "INSTAGRAM" => Channel::Instagram,
        "VIBER" | "VIBERBM" => Channel::Viber,
        "RCS" => Channel::Rcs,
        "TELEGRAM" => Channel::Telegram,
        _ => Channel::Other,
    }
}

/// Channels whose identity is a phone number (E.164 digits without `+` in our events).
fn phone_channel(channel: &str) -> bool {
    matches!(
        channel,
        "WHATSAPP" | "SMS" | "MMS" | "RCS" | "VIBER" | "VIBERBM"
    )
}

/// The contact of a Conversation object: its channel identity, else the Sinch contact id.
fn contact_of(o: &Value, channel: &str) -> Option<Party> {
    let identity = o
        .get("channel_identity")
        .and_then(|c| s(c, "identity"))
        .or_else(|| s(o, "identity"));
    let id = match identity {
        Some(i) if phone_channel(channel) => Some(strip_plus(i.trim())),
        Some(i) => Some(i),
        None => s(o, "contact_id"),
    }?;
    Some(Party {
        id,
        ..Party::default()
    })
}

fn conversation_state(status: &str) -> &'static str {
    match status {
        "QUEUED_ON_CHANNEL" => "queued",
        "DELIVERED" => "delivered",
        "READ" => "read",
        "FAILED" => "failed",
        // The channel failed and Sinch is trying the next one: not final.
        "SWITCHING_CHANNEL" => "sending",
        _ => "unknown",
    }
}

fn sms_state(status: &str) -> &'static str {
    match status {
        "Queued" => "queued",
        "Dispatched" => "sent",
        "Delivered" => "delivered",
        "Failed" | "Aborted" | "Cancelled" => "failed",
        "Rejected" => "rejected",
        "Expired" => "expired",
        "Deleted" => "deleted",
        _ => "unknown",
    }
}

fn new_event(
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
        Provider::Sinch,
        channel,
        direction,
        tenant,
        ctx.source,
        key,
        at,
        ctx.received_at,
    )
}

fn party(id: String) -> Party {
    Party {
        id,
        ..Party::default()
    }
}

// ---------------------------------------------------------------------------------------
// Conversation API

fn conversation(root: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let Some(app_id) = s(root, "app_id") else {
        unexpected(
            "Conversation API callback with an empty app_id".into(),
            root,
            out,
        );
        return;
    };
    let triggers: Vec<(&String, &Value)> = root
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !ENVELOPE.contains(&k.as_str()))
        .collect();
    if triggers.is_empty() {
        unexpected(
            "Conversation API callback without a trigger object".into(),
            root,
            out,
        );
        return;
    }
    let Some(tenant) = tenant_or_dead(ctx, &app_id, root, out) else {
        return;
    };
    for (key, value) in triggers {
        match key.as_str() {
            "message" if value.is_object() => message(root, value, &app_id, tenant, ctx, out),
            "message_delivery_report" if value.is_object() => {
                delivery_report(root, value, &app_id, tenant, ctx, out)
            }
            _ => notification(root, key, value, &app_id, tenant, ctx, out),
        }
    }
}

fn message(
    root: &Value,
    m: &Value,
    app_id: &str,
    tenant: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let Some(id) = s(m, "id") else {
        unexpected("Conversation API message without an id".into(), m, out);
        return;
    };
    let channel = m
        .get("channel_identity")
        .and_then(|c| s(c, "channel"))
        .unwrap_or_default();
    let direction = match m.get("direction").and_then(Value::as_str) {
        Some("TO_CONTACT") => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let mut e = new_event(
        EventKind::Message,
        channel_of(&channel),
        direction,
        tenant,
        dedup_key(Provider::Sinch, "conv_msg", &id, None),
        rfc3339(m, "accept_time")
            .or_else(|| rfc3339(root, "event_time"))
            .or_else(|| rfc3339(root, "accepted_time")),
        ctx,
    );
    e.provider_message_id = Some(id);
    e.contact = contact_of(m, &channel);
    e.business = Some(party(app_id.to_string()));
    let content = m
        .get("contact_message")
        .or_else(|| m.get("app_message"))
        .unwrap_or(&Value::Null);
    e.message = Some(contact_content(content));
    if let Some(reason) = content
        .get("fallback_message")
        .and_then(|f| f.get("reason"))
        .filter(|r| r.is_object())
    {
        e.errors.push(reason_error(reason));
    }
    e.raw = raw(ctx, root);
    finish(e, out);
}

fn contact_content(c: &Value) -> Message {
    let mut msg = Message {
        kind: "unknown".into(),
        ..Message::default()
    };
    if let Some(t) = c.get("text_message") {
        msg.kind = "text".into();
        msg.text = s(t, "text");
    } else if let Some(md) = c
        .get("media_message")
        .or_else(|| c.get("media_card_message"))
    {
        let url = s(md, "url");
        let kind = media_kind_from_url(url.as_deref());
        msg.kind = kind.to_string();
        let media = Media {
            kind: kind.to_string(),
            url,
            caption: s(md, "caption"),
            filename: s(md, "filename_override"),
            ..Media::default()
        };
        msg.text = media.caption.clone();
        msg.media = Some(media);
    } else if let Some(l) = c.get("location_message") {
        msg.kind = "location".into();
        let coords = l.get("coordinates").unwrap_or(&Value::Null);
        if let (Some(lat), Some(lon)) = (
            coords.get("latitude").and_then(Value::as_f64),
            coords.get("longitude").and_then(Value::as_f64),
        ) {
            msg.location = Some(Location {
                latitude: lat,
                longitude: lon,
                name: s(l, "title"),
                address: s(l, "label"),
                url: None,
            });
        }
    } else if let Some(r) = c.get("choice_response_message") {
        msg.kind = "reply".into();
        msg.reply = Some(Reply {
            kind: "choice_response".into(),
            id: s(r, "postback_data"),
            ..Reply::default()
        });
        msg.reply_to = s(r, "message_id").map(|id| ReplyTo {
            message_id: Some(id),
            ..ReplyTo::default()
        });
    } else if let Some(f) = c.get("fallback_message") {
        // Content Sinch could not map: `raw_message` is the channel's own payload (JSON for
        // most channels), not text the contact typed. Its type names what arrived; the
        // payload itself stays in `raw`.
        msg.kind = "unsupported".into();
        msg.content_type = Some(
            s(f, "raw_message")
                .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                .and_then(|r| s(&r, "type"))
                .unwrap_or_else(|| "fallback_message".into()),
        );
    } else if let Some((k, v)) = c
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.as_str() != "reply_to"))
    {
        // product_response_message, contact_info_message, app messages...: verbatim.
        msg.kind = k.trim_end_matches("_message").to_string();
        msg.text = s(v, "text");
    }
    if let Some(rt) = c.get("reply_to").and_then(|r| s(r, "message_id")) {
        msg.reply_to.get_or_insert_with(ReplyTo::default).message_id = Some(rt);
    }
    msg
}

/// Sinch media messages give only a URL; its extension is the best hint of the kind.
fn media_kind_from_url(url: Option<&str>) -> &'static str {
    let path = url.unwrap_or("").split(['?', '#']).next().unwrap_or("");
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" | "png" | "gif" | "webp" | "heic" => "image",
        "mp4" | "3gp" | "mov" | "webm" => "video",
        "mp3" | "ogg" | "oga" | "opus" | "aac" | "amr" | "m4a" | "wav" => "audio",
        "" => "media",
        _ => "document",
    }
}

fn reason_error(r: &Value) -> ProviderError {
    ProviderError {
        code: s(r, "code").unwrap_or_else(|| "UNKNOWN".into()),
        message: s(r, "description"),
        details: s(r, "sub_code"),
        ..ProviderError::default()
    }
}

fn delivery_report(
    root: &Value,
    r: &Value,
    app_id: &str,
    tenant: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let (Some(id), Some(status)) = (s(r, "message_id"), s(r, "status")) else {
        unexpected(
            "message_delivery_report without message_id or status".into(),
            r,
            out,
        );
        return;
    };
    let channel = r
        .get("channel_identity")
        .and_then(|c| s(c, "channel"))
        .unwrap_or_default();
    let state = conversation_state(&status);
    let mut e = new_event(
        EventKind::Status,
        channel_of(&channel),
        Direction::Outbound,
        tenant,
        dedup_key(
            Provider::Sinch,
            "conv_msg",
            &id,
            Some(&format!("{status}:{channel}")),
        ),
        rfc3339(root, "event_time").or_else(|| rfc3339(root, "accepted_time")),
        ctx,
    );
    e.provider_message_id = Some(id.clone());
    e.contact = contact_of(r, &channel);
    e.business = Some(party(app_id.to_string()));
    e.status = Some(Status {
        state: state.to_string(),
        provider_state: Some(status.clone()),
        message_id: Some(id),
        callback_data: s(root, "message_metadata"),
        ..Status::default()
    });
    if let Some(reason) = r.get("reason").filter(|r| r.is_object()) {
        e.errors.push(reason_error(reason));
    }
    e.raw = raw(ctx, root);
    finish(e, out);
}

fn notification(
    root: &Value,
    topic: &str,
    value: &Value,
    app_id: &str,
    tenant: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let channel = value
        .get("channel_identity")
        .and_then(|c| s(c, "channel"))
        .or_else(|| s(value, "channel"))
        .unwrap_or_default();
    // The trigger's own id when it has one, else its content (with the envelope's times).
    let identity = s(value, "message_id")
        .or_else(|| s(value, "id"))
        .or_else(|| s(value, "event_id"))
        .or_else(|| s(value, "request_id"))
        .unwrap_or_else(|| short_hash(root.to_string().as_bytes()));
    let mut e = new_event(
        EventKind::Notification,
        channel_of(&channel),
        Direction::Inbound,
        tenant,
        dedup_key(Provider::Sinch, topic, &identity, None),
        rfc3339(root, "event_time").or_else(|| rfc3339(root, "accepted_time")),
        ctx,
    );
    e.provider_message_id = s(value, "message_id");
    e.contact = contact_of(value, &channel);
    e.business = Some(party(app_id.to_string()));
    e.notification = Some(Notification {
        topic: topic.to_string(),
        event: s(value, "status").or_else(|| s(value, "type")),
        data: value.clone(),
        standby: false,
    });
    if let Some(reason) = value.get("reason").filter(|r| r.is_object()) {
        e.errors.push(reason_error(reason));
    }
    e.raw = raw(ctx, root);
    finish(e, out);
}

// ---------------------------------------------------------------------------------------
// SMS REST API

fn sms_inbound(o: &Value, kind: &str, ctx: &Context<'_>, out: &mut Normalized) {
    let (Some(id), Some(to)) = (s(o, "id"), s(o, "to")) else {
        unexpected(format!("SMS {kind} without id or to"), o, out);
        return;
    };
    let business = strip_plus(to.trim());
    let Some(tenant) = tenant_or_dead(ctx, &business, o, out) else {
        return;
    };
    let channel = if kind == "mo_media" {
        Channel::Mms
    } else {
        Channel::Sms
    };
    let mut e = new_event(
        EventKind::Message,
        channel,
        Direction::Inbound,
        tenant,
        dedup_key(Provider::Sinch, "sms_mo", &id, None),
        rfc3339(o, "received_at").or_else(|| rfc3339(o, "sent_at")),
        ctx,
    );
    e.provider_message_id = Some(id);
    e.contact = s(o, "from").map(|f| party(strip_plus(f.trim())));
    e.business = Some(party(business));
    let mut msg = Message {
        kind: "text".into(),
        ..Message::default()
    };
    match kind {
        "mo_text" => msg.text = s(o, "body"),
        // Binary content (base64, with its UDH) stays in raw.
        "mo_binary" => msg.kind = "binary".into(),
        _ => {
            let body = o.get("body").unwrap_or(&Value::Null);
            msg.text = s(body, "message");
            let items: Vec<Media> = body
                .get("media")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|m| {
                    let mime = s(m, "contentType").or_else(|| s(m, "content_type"));
                    let kind = match mime.as_deref().and_then(|t| t.split('/').next()) {
                        Some("image") => "image",
                        Some("video") => "video",
                        Some("audio") => "audio",
                        _ => "document",
                    };
                    Media {
                        kind: kind.into(),
                        url: s(m, "url"),
                        mime_type: mime,
                        ..Media::default()
                    }
                })
                .collect();
            msg.set_media(items);
            if let Some(m) = &msg.media {
                msg.kind = m.kind.clone();
            }
        }
    }
    e.message = Some(msg);
    e.raw = raw(ctx, o);
    finish(e, out);
}

fn sms_report(o: &Value, ctx: &Context<'_>, out: &mut Normalized) {
    let kind = s(o, "type").unwrap_or_default();
    let Some(batch) = s(o, "batch_id") else {
        unexpected(format!("SMS {kind} without a batch_id"), o, out);
        return;
    };
    let channel = if kind.ends_with("_mms") {
        Channel::Mms
    } else {
        Channel::Sms
    };
    // Delivery reports name no sender: the source is the business address.
    let business = ctx.source.to_string();
    let Some(tenant) = tenant_or_dead(ctx, &business, o, out) else {
        return;
    };
    let report = |recipient: String, status: String, code: Option<String>, at| {
        let state = sms_state(&status);
        let mut e = new_event(
            EventKind::Status,
            channel,
            Direction::Outbound,
            tenant,
            dedup_key(
                Provider::Sinch,
                "sms_batch",
                &format!("{batch}:{recipient}"),
                Some(&status),
            ),
            at,
            ctx,
        );
        e.provider_message_id = Some(batch.clone());
        e.contact = Some(party(strip_plus(recipient.trim())));
        e.business = Some(party(business.clone()));
        e.status = Some(Status {
            state: state.to_string(),
            provider_state: Some(status.clone()),
            message_id: Some(batch.clone()),
            callback_data: s(o, "client_reference"),
            ..Status::default()
        });
        if let Some(code) = code.filter(|_| matches!(state, "failed" | "rejected" | "expired")) {
            e.errors.push(ProviderError {
                code,
                title: Some(status),
                ..ProviderError::default()
            });
        }
        e.raw = raw(ctx, o);
        e
    };
    if kind.starts_with("recipient_") {
        let (Some(recipient), Some(status)) = (s(o, "recipient"), s(o, "status")) else {
            unexpected(format!("SMS {kind} without recipient or status"), o, out);
            return;
        };
        let at = rfc3339(o, "operator_status_at").or_else(|| rfc3339(o, "at"));
        finish(report(recipient, status, s(o, "code"), at), out);
        return;
    }
    // A batch report: one status per listed recipient. A status entry with counts only (no
    // recipients, the `summary` report type) is kept in a notification carrying the whole
    // report; an entry without a status word is a dead letter. Nothing is skipped.
    let mut produced = false;
    let mut counts_only = false;
    for st in o
        .get("statuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(status) = s(st, "status") else {
            unexpected(
                format!("SMS {kind} for batch {batch}: a statuses[] entry without status"),
                st,
                out,
            );
            continue;
        };
        let mut listed = false;
        for r in st
            .get("recipients")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            finish(
                report(r.to_string(), status.clone(), s(st, "code"), None),
                out,
            );
            listed = true;
        }
        produced |= listed;
        counts_only |= !listed;
    }
    if !produced || counts_only {
        // A summary (counts only): nothing to attach to a recipient.
        let mut e = new_event(
            EventKind::Notification,
            channel,
            Direction::Outbound,
            tenant,
            dedup_key(
                Provider::Sinch,
                &kind,
                &format!("{batch}:{}", short_hash(o.to_string().as_bytes())),
                None,
            ),
            None,
            ctx,
        );
        e.provider_message_id = Some(batch);
        e.business = Some(party(business));
        e.notification = Some(Notification {
            topic: kind,
            event: None,
            data: o.clone(),
            standby: false,
        });
        e.raw = raw(ctx, o);
        finish(e, out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::normalize::testing;
    use crate::normalize::DeadReason;

    const FIXTURES: &str = "sinch";
    const APP: &str = "01EB37HMH1M6SV18BSNS3G135H";

    fn channels() -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [APP, "12015550123", "sinch_test"]
            .iter()
            .map(|id| (id.to_string(), "acme".to_string()))
            .collect();
        m.insert("01GLOBEXAPP0000000000000000".into(), "globex".into());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "sinch_test",
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
    fn batch_report_entries_are_never_skipped() {
        let n = run(
            r#"{"type":"delivery_report_sms","batch_id":"B1","statuses":[
            {"code":0,"status":"Delivered","count":1,"recipients":["14155550100"]},
            {"code":402,"status":"Failed","count":2},
            {"code":401,"count":1,"recipients":["14155550101"]}]}"#,
        );
        let kinds: Vec<_> = n.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Status, EventKind::Notification]);
        assert_eq!(n.dead_letters.len(), 1);
        assert_eq!(n.dead_letters[0].reason, DeadReason::UnexpectedShape);
    }

    #[test]
    fn every_fixture_normalizes_as_expected() {
        let ch = channels();
        testing::check_all(FIXTURES, &ctx(&ch), normalize);
    }

    fn report(status: &str, channel: &str) -> String {
        format!(
            r#"{{"app_id":"{APP}","accepted_time":"2026-01-01T10:00:00Z","message_delivery_report":{{"message_id":"01M","status":"{status}","channel_identity":{{"channel":"{channel}","identity":"46732001122"}}}}}}"#
        )
    }

    #[test]
    fn event_ids_are_stable_across_redelivery_and_distinct_per_state_and_channel() {
        let a = run(&report("DELIVERED", "WHATSAPP"));
        let b = run(&report("DELIVERED", "WHATSAPP"));
        let c = run(&report("READ", "WHATSAPP"));
        let d = run(&report("SWITCHING_CHANNEL", "WHATSAPP"));
        let e = run(&report("SWITCHING_CHANNEL", "RCS"));
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        for other in [&c, &d, &e] {
            assert_ne!(a.events[0].event_id, other.events[0].event_id);
        }
        assert_ne!(d.events[0].event_id, e.events[0].event_id);
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
    fn nothing_verified_is_dropped() {
        for body in [
            "[]",
            "7",
            "{}",
            r#"{"app_id":"x"}"#,
            r#"{"type":"mo_text"}"#,
            r#"{"type":"delivery_report_sms"}"#,
        ] {
            let n = run(body);
            assert!(n.events.is_empty(), "{body}");
            assert_eq!(n.dead_letters.len(), 1, "{body}");
        }
        assert_eq!(run("").dead_letters[0].reason, DeadReason::InvalidBody);
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
            for key in ["message", "message_delivery_report", "event", "statuses"] {
                let wrapped = serde_json::json!({"app_id": APP, key: v.clone()});
                let _ = normalize(&Verified::assume_verified(wrapped.to_string()), &ctx(&ch));
            }
            for t in ["mo_text", "mo_media", "delivery_report_sms", "recipient_delivery_report_sms"] {
                let mut o = v.clone();
                if let Value::Object(m) = &mut o {
                    m.insert("type".into(), t.into());
                    m.insert("batch_id".into(), "b".into());
                    m.insert("to".into(), "12015550123".into());
                }
                let _ = normalize(&Verified::assume_verified(o.to_string()), &ctx(&ch));
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(Value::from),
            "[a-zA-Z_.]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let keys = prop_oneof![
                Just("id".to_string()),
                Just("message_id".to_string()),
                Just("status".to_string()),
                Just("channel_identity".to_string()),
                Just("channel".to_string()),
                Just("identity".to_string()),
                Just("contact_message".to_string()),
                Just("text_message".to_string()),
                Just("media_message".to_string()),
                Just("location_message".to_string()),
                Just("coordinates".to_string()),
                Just("choice_response_message".to_string()),
                Just("reply_to".to_string()),
                Just("reason".to_string()),
                Just("statuses".to_string()),
                Just("recipients".to_string()),
                Just("body".to_string()),
                Just("media".to_string()),
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
