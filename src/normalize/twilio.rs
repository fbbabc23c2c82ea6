//! Twilio Programmable Messaging (SMS, MMS, WhatsApp via Twilio): payloads into unified events.
//!
//! One request is one thing: an incoming message (the number's or Messaging Service's
//! "A message comes in" webhook) or a status callback (`StatusCallback`). Twilio posts form
//! parameters (or puts them in the query string of a GET), may post JSON for some
//! configurations, and adds parameters without notice: nothing here assumes a field exists
//! beyond the message id and the two addresses, and every parameter is kept in `raw` (a JSON
//! object; a name sent several times becomes an array of its values).
//!
//! - Channel: `whatsapp:` / `messenger:` / `rcs:` address prefixes name the channel (and are
//!   stripped with the `+` from ids); otherwise `mms` when `NumMedia` > 0 (or, for a status,
//!   the message id is an `MM…` MMS sid), else `sms`.
//! - Inbound message: contact = `From`, business = `To`. Status: contact = `To`, business =
//!   `From` (the business sent it), except `received`/`receiving`, which are about a message
//!   the contact sent.
//! - Twilio gives no event time: `occurred_at` is the time of receipt.
//! - Dedup: `MessageSid`; statuses add `MessageStatus` as Twilio words it (so `scheduled`
//!   and `queued`, which share the unified state `queued`, stay distinct).
//!
//! The request-parameter reading ([`Params`], [`read_params`]) is shared with the Plivo
//! normalizer, whose callbacks have the same form/GET/JSON shapes.
//!
//! This module must never panic on any input and never fail the request.

use serde_json::{Map, Value};

use super::util::{finish, strip_plus, tenant_or_dead, unexpected};
use super::{Context, DeadLetter, DeadReason, Normalized};
use crate::event::{
    dedup_key, Channel, Direction, Event, EventKind, Location, Media, Message, Party, Provider,
    ProviderError, Reply, ReplyTo, Status,
};
use crate::verify::{Method, Verified};

/// Most numbered media parameters (`MediaUrl0`…) read from one message.
pub(crate) const MAX_MEDIA: usize = 50;

/// The parameters of one callback, in order, with their `raw` JSON form.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    raw: Value,
}

impl Params {
    /// Form or query pairs; `raw` is an object whose repeated names hold arrays.
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Params {
        let mut raw = Map::new();
        for (k, v) in &pairs {
            match raw.get_mut(k) {
                None => {
                    raw.insert(k.clone(), Value::String(v.clone()));
                }
                Some(Value::Array(values)) => values.push(Value::String(v.clone())),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, Value::String(v.clone())]);
                }
            }
        }
        Params {
            pairs,
            raw: Value::Object(raw),
        }
    }

    /// The members of a JSON object; scalars are readable as strings, `raw` is the object.
    pub(crate) fn from_object(map: &Map<String, Value>) -> Params {
        let pairs = map
            .iter()
            .filter_map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.clone(), s))
            })
            .collect();
        Params {
            pairs,
            raw: Value::Object(map.clone()),
        }
    }

    /// The first non-empty value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` was sent at all (possibly empty).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub(crate) fn raw(&self) -> &Value {
        &self.raw
    }

    /// A non-negative count parameter (`NumMedia`, `MediaCount`).
    pub(crate) fn count(&self, key: &str) -> usize {
        self.get(key)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
    }

    /// The parameters whose names start with `prefix`, as a JSON object (for grouping
    /// provider fields such as Twilio's `Referral*` verbatim).
    pub(crate) fn with_prefix(&self, prefix: &str) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in &self.pairs {
            if k.starts_with(prefix) && !v.is_empty() && !out.contains_key(k) {
                out.insert(k.clone(), Value::String(v.clone()));
            }
        }
        out
    }
}

/// The callbacks of a request: a GET's query, a form body, or a JSON object (or an array of
/// objects). Whatever cannot be read becomes a dead letter.
pub(crate) fn read_params(v: &Verified, out: &mut Normalized) -> Vec<Params> {
    let params = match v.method() {
        Method::Get => vec![Params::from_pairs(v.form_params())],
        Method::Post => {
            let body = v.body();
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            if matches!(first, Some(b'{') | Some(b'[')) {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(map)) => vec![Params::from_object(&map)],
                    Ok(Value::Array(items)) => {
                        let mut list = Vec::new();
                        for item in &items {
                            match item {
                                Value::Object(map) => list.push(Params::from_object(map)),
                                other => unexpected(
                                    "a JSON array item is not an object of callback parameters"
                                        .into(),
                                    other,
                                    out,
                                ),
                            }
                        }
                        if items.is_empty() {
                            unexpected(
                                "the body is an empty JSON array".into(),
                                &Value::Array(items.clone()),
                                out,
                            );
                        }
                        list
                    }
                    Ok(other) => {
                        unexpected("the JSON body is not an object".into(), &other, out);
                        Vec::new()
                    }
                    Err(e) => {
                        out.dead_letters.push(DeadLetter {
                            reason: DeadReason::InvalidBody,
                            detail: format!("the body is not JSON: {e}"),
                            part: None,
                        });
                        Vec::new()
                    }
                }
            } else {
                vec![Params::from_pairs(v.form_params())]
            }
        }
    };
    params
        .into_iter()
        .filter(|p| {
            if p.is_empty() {
                out.dead_letters.push(DeadLetter {
                    reason: DeadReason::InvalidBody,
                    detail: "the request carries no parameters".into(),
                    part: Some(p.raw().clone()),
                });
                false
            } else {
                true
            }
        })
        .collect()
}

/// A media kind from a MIME type.
pub(crate) fn media_kind(mime: Option<&str>) -> &'static str {
    let Some(mime) = mime else {
        return "file";
    };
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split('/').next().unwrap_or("") {
        "image" => "image",
        "audio" => "audio",
        "video" => "video",
        "" => "file",
        _ => "document",
    }
}

pub fn normalize(v: &Verified, ctx: &Context<'_>) -> Normalized {
    let mut out = Normalized::default();
    for params in read_params(v, &mut out) {
        one(&params, ctx, &mut out);
    }
    out
}

/// An address split into its channel prefix (if any) and the id (prefix and `+` removed).
fn address(value: &str) -> (Option<Channel>, String) {
    let value = value.trim();
    for (prefix, channel) in [
        ("whatsapp:", Channel::Whatsapp),
        ("messenger:", Channel::Messenger),
        ("rcs:", Channel::Rcs),
    ] {
        if let Some(rest) = value
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &value[prefix.len()..])
        {
            return (Some(channel), strip_plus(rest.trim()));
        }
    }
    (None, strip_plus(value))
}

/// The address as it is shown to people: prefix removed, `+` kept.
fn display(value: &str) -> String {
    let value = value.trim();
    match value.split_once(':') {
        Some((_, rest)) if !value.starts_with('+') => rest.trim().to_string(),
        _ => value.to_string(),
    }
}

fn one(p: &Params, ctx: &Context<'_>, out: &mut Normalized) {
    let raw = p.raw();
    let Some(sid) = p
        .get("MessageSid")
        .or_else(|| p.get("SmsMessageSid"))
        .or_else(|| p.get("SmsSid"))
    else {
        unexpected(
            "no MessageSid: not a Twilio messaging webhook or status callback".into(),
            raw,
            out,
        );
        return;
    };
    let (Some(from), Some(to)) = (p.get("From"), p.get("To")) else {
        unexpected(format!("message {sid} has no From or To"), raw, out);
        return;
    };
    let word = p
        .get("MessageStatus")
        .or_else(|| p.get("SmsStatus"))
        .map(|w| w.trim().to_ascii_lowercase());
    let has_content = [
        "Body",
        "NumMedia",
        "MediaUrl0",
        "Latitude",
        "ButtonPayload",
        "ButtonText",
    ]
    .iter()
    .any(|k| p.has(k));
    let inbound_word = matches!(word.as_deref(), None | Some("received") | Some("receiving"));
    if has_content && inbound_word {
        message(p, sid, from, to, ctx, out);
    } else if let Some(word) = word {
        status(p, sid, &word, from, to, ctx, out);
    } else {
        unexpected(
            format!("message {sid} has neither content nor a MessageStatus"),
            raw,
            out,
        );
    }
}

fn message(p: &Params, sid: &str, from: &str, to: &str, ctx: &Context<'_>, out: &mut Normalized) {
    let raw = p.raw();
    let (from_channel, contact_id) = address(from);
    let (to_channel, business_id) = address(to);
    let num_media = p.count("NumMedia");
    let channel = from_channel.or(to_channel).unwrap_or(if num_media > 0 {
        Channel::Mms
    } else {
        Channel::Sms
    });
    let Some(tenant) = tenant_or_dead(ctx, &business_id, raw, out) else {
        return;
    };
    let mut event = Event::new(
        EventKind::Message,
        Provider::Twilio,
        channel,
        Direction::Inbound,
        tenant,
        ctx.source,
        dedup_key(Provider::Twilio, "MessageSid", sid, None),
        None,
        ctx.received_at,
    );
    event.provider_message_id = Some(sid.to_string());
    event.contact = Some(Party {
        id: contact_id,
        name: p.get("ProfileName").map(str::to_string),
        phone: p.get("WaId").map(str::to_string),
        ..Party::default()
    });
    event.business = Some(Party {
        id: business_id,
        display: Some(display(to)),
        ..Party::default()
    });

    let mut msg = Message {
        text: p.get("Body").map(str::to_string),
        ..Message::default()
    };
    let media: Vec<Media> = (0..num_media.min(MAX_MEDIA))
        .filter_map(|i| {
            let url = p.get(&format!("MediaUrl{i}"))?;
            let mime = p.get(&format!("MediaContentType{i}"));
            Some(Media {
                kind: media_kind(mime).to_string(),
                url: Some(url.to_string()),
                mime_type: mime.map(str::to_string),
                ..Media::default()
            })
        })
        .collect();
    let location = match (
        p.get("Latitude").and_then(|v| v.trim().parse::<f64>().ok()),
        p.get("Longitude")
            .and_then(|v| v.trim().parse::<f64>().ok()),
    ) {
        (Some(latitude), Some(longitude)) if latitude.is_finite() && longitude.is_finite() => {
            Some(Location {
                latitude,
                longitude,
                name: p.get("Label").map(str::to_string),
                address: p.get("Address").map(str::to_string),
                url: None,
            })
        }
        _ => None,
    };
    let button = p.get("ButtonPayload").or_else(|| p.get("ButtonText"));
    msg.kind = if let Some(first) = media.first() {
        first.kind.clone()
    } else if location.is_some() {
        "location".into()
    } else if button.is_some() {
        "reply".into()
    } else {
        match p.get("MessageType").map(|t| t.trim().to_ascii_lowercase()) {
            Some(t) if t == "button" => "reply".into(),
            Some(t) if !t.is_empty() && t != "text" => t,
            _ => "text".into(),
        }
    };
    if msg.kind == "reply" {
        msg.reply = Some(Reply {
            kind: "button".into(),
            id: p.get("ButtonPayload").map(str::to_string),
            title: p
                .get("ButtonText")
                .or_else(|| p.get("Body"))
                .map(str::to_string),
            ..Reply::default()
        });
    }
    msg.set_media(media);
    msg.location = location;
    if let Some(replied) = p.get("OriginalRepliedMessageSid") {
        msg.reply_to = Some(ReplyTo {
            message_id: Some(replied.to_string()),
            from: p.get("OriginalRepliedMessageSender").map(|s| address(s).1),
            story: None,
        });
    }
    msg.forwarded = p
        .get("Forwarded")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    msg.frequently_forwarded = p
        .get("FrequentlyForwarded")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // Twilio sends `ReferralNumMedia=0` with ordinary messages: a referral is there only when
    // another Referral* field is.
    let mut referral = p.with_prefix("Referral");
    if referral.keys().any(|k| k != "ReferralNumMedia") {
        msg.referral = Some(Value::Object(std::mem::take(&mut referral)));
    }
    event.message = Some(msg);
    event.errors = errors(p);
    event.raw = super::util::raw(ctx, raw);
    finish(event, out);
}

/// Twilio's status word in the shared vocabulary.
fn state_for(word: &str) -> &'static str {
    match word {
        "accepted" => "accepted",
        "queued" | "scheduled" => "queued",
        "sending" | "receiving" => "sending",
        "sent" => "sent",
        "delivered" | "received" => "delivered",
        "read" => "read",
        "undelivered" => "undelivered",
        "failed" | "canceled" => "failed",
        _ => "unknown",
    }
}

#[allow(clippy::too_many_arguments)]
fn status(
    p: &Params,
    sid: &str,
    word: &str,
    from: &str,
    to: &str,
    ctx: &Context<'_>,
    out: &mut Normalized,
) {
    let raw = p.raw();
    // received/receiving describe a message the contact sent; the others one we sent.
    let inbound = matches!(word, "received" | "receiving");
    let (business_raw, contact_raw) = if inbound { (to, from) } else { (from, to) };
    let (b_channel, business_id) = address(business_raw);
    let (c_channel, contact_id) = address(contact_raw);
    let mms = p.count("NumMedia") > 0 || sid.starts_with("MM");
    let channel = b_channel
        .or(c_channel)
        .unwrap_or(if mms { Channel::Mms } else { Channel::Sms });
    let Some(tenant) = tenant_or_dead(ctx, &business_id, raw, out) else {
        return;
    };
    let state = state_for(word);
    let mut event = Event::new(
        EventKind::Status,
        Provider::Twilio,
        channel,
        if inbound {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        tenant,
        ctx.source,
        dedup_key(Provider::Twilio, "MessageSid", sid, Some(word)),
        None,
        ctx.received_at,
    );
    event.provider_message_id = Some(sid.to_string());
    event.contact = Some(Party {
        id: contact_id,
        ..Party::default()
    });
    event.business = Some(Party {
        id: business_id,
        display: Some(display(business_raw)),
        ..Party::default()
    });
    event.status = Some(Status {
        state: state.to_string(),
        provider_state: (state != word).then(|| word.to_string()),
        message_id: Some(sid.to_string()),
        ..Status::default()
    });
    event.errors = errors(p);
    event.raw = super::util::raw(ctx, raw);
    finish(event, out);
}

/// `ErrorCode` (+ `ErrorMessage`), when Twilio reports one (`0` is no error).
fn errors(p: &Params) -> Vec<ProviderError> {
    match p.get("ErrorCode").map(str::trim) {
        Some(code) if !code.is_empty() && code.bytes().any(|b| b != b'0') => {
            vec![ProviderError {
                code: code.to_string(),
                message: p
                    .get("ErrorMessage")
                    .or_else(|| p.get("ChannelStatusMessage"))
                    .map(str::to_string),
                href: code
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| format!("https://www.twilio.com/docs/api/errors/{code}")),
                ..ProviderError::default()
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::normalize::testing;

    fn channels() -> HashMap<String, String> {
        let mut m: HashMap<String, String> = ["15557654321", "14155238886", "15005550006"]
            .iter()
            .map(|id| (id.to_string(), "acme".to_string()))
            .collect();
        m.insert("15559876543".into(), "globex".into());
        m
    }

    fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
        Context {
            source: "twilio_test",
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
        testing::check_all("twilio", &ctx(&ch), normalize);
    }

    #[test]
    fn every_fixture_yields_something() {
        let ch = channels();
        for path in testing::bodies("twilio") {
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

    const SMS: &str = "ToCountry=US&SmsMessageSid=SM11&NumMedia=0&SmsSid=SM11&SmsStatus=received&Body=Hi&To=%2B15557654321&MessageSid=SM11&AccountSid=AC1&From=%2B14155550100&ApiVersion=2010-04-01";

    #[test]
    fn redelivery_keeps_the_event_id_and_parameter_order_does_not_matter() {
        let a = run(SMS);
        let mut pairs = crate::verify::form_pairs(SMS.as_bytes());
        pairs.reverse();
        let reordered = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pairs)
            .finish();
        let b = run(&reordered);
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].event_id, run(SMS).events[0].event_id);
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
    }

    #[test]
    fn each_status_state_is_its_own_event_and_shares_the_conversation() {
        let status = |s: &str| {
            run(&format!(
                "MessageSid=SM22&MessageStatus={s}&From=%2B15557654321&To=%2B14155550100&AccountSid=AC1"
            ))
        };
        let words = [
            "accepted",
            "scheduled",
            "queued",
            "sending",
            "sent",
            "delivered",
            "read",
            "undelivered",
            "failed",
            "canceled",
        ];
        let events: Vec<Event> = words.iter().map(|w| status(w).events.remove(0)).collect();
        let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), words.len());
        assert_eq!(status("sent").events[0].event_id, events[4].event_id);
        // A status and the inbound message of the same contact share the conversation.
        let inbound = run(SMS).events.remove(0);
        assert!(events
            .iter()
            .all(|e| e.conversation_id == inbound.conversation_id));
        assert_eq!(events[1].status.as_ref().unwrap().state, "queued");
        assert_eq!(
            events[1].status.as_ref().unwrap().provider_state.as_deref(),
            Some("scheduled")
        );
    }

    #[test]
    fn junk_never_panics_and_is_never_dropped() {
        for body in [
            "",
            "&",
            "=",
            "a=1",
            "{",
            "[]",
            "[1]",
            "null",
            "{\"MessageSid\":{}}",
            "\u{0}\u{ffff}",
        ] {
            let n = run(body);
            assert!(
                !n.events.is_empty() || !n.dead_letters.is_empty(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn repeated_names_become_arrays_in_raw() {
        let n = run("MessageSid=SM3&From=%2B14155550100&To=%2B15557654321&Body=a&Tag=x&Tag=y&Tag=");
        assert_eq!(
            n.events[0].raw.as_ref().unwrap().to_value()["Tag"],
            serde_json::json!(["x", "y", ""])
        );
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
                    "MessageSid", "From", "To", "Body", "NumMedia", "MediaUrl0", "MediaContentType0",
                    "MediaUrl1", "Latitude", "Longitude", "ButtonPayload", "MessageStatus", "SmsStatus",
                    "ErrorCode", "MessageType", "ReferralNumMedia", "ReferralCtwaClid",
                    "OriginalRepliedMessageSid", "Forwarded",
                ]), ".{0,12}"),
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
