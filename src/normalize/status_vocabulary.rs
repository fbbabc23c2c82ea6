//! Every provider's status word outside switchboard's vocabulary comes out as
//! `status.state = "unknown"` with the provider's word in `status.provider_state`
//! (docs/events.md, "status"): a consumer switching on `state` never meets a word it was not
//! told about, and the word is not lost. One test per provider (and per status family where a
//! provider has two), each taking a status fixture of that provider and replacing its status
//! word with one the provider never documented.

use std::collections::HashMap;

use time::macros::datetime;

use super::util::STATES;
use super::{Context, Normalized};
use crate::verify::Verified;

fn ctx(channels: &HashMap<String, String>) -> Context<'_> {
    Context {
        source: "vocabulary_test",
        received_at: datetime!(2026-01-01 00:00:00 UTC),
        include_raw: false,
        channels,
        default_tenant: Some("acme"),
    }
}

/// A fixture's bytes with `from` replaced by `to` (which must occur).
fn fixture_with(provider: &str, file: &str, from: &str, to: &str) -> String {
    let path = super::testing::dir(provider).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert!(text.contains(from), "{file} does not contain {from:?}");
    text.replace(from, to)
}

/// Every status event of `n` is `unknown` with `word` as the provider's state, and there is
/// at least one (the payload was not dead-lettered instead).
fn assert_unknown(n: &Normalized, word: &str) {
    assert!(
        n.dead_letters.is_empty(),
        "dead-lettered: {:?}",
        n.dead_letters
    );
    let statuses: Vec<_> = n.events.iter().filter_map(|e| e.status.as_ref()).collect();
    assert!(!statuses.is_empty(), "no status event");
    for st in statuses {
        assert_eq!(st.state, "unknown", "{st:?}");
        assert_eq!(st.provider_state.as_deref(), Some(word), "{st:?}");
        assert!(STATES.contains(&st.state.as_str()));
    }
}

fn body(text: String) -> Verified {
    Verified::assume_verified(text.into_bytes())
}

#[test]
fn meta_whatsapp() {
    let mut ch = HashMap::new();
    ch.insert("106540352242922".to_string(), "acme".to_string());
    let text = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MTE5MjA3NEE2NjA3NUQ0MEIA","status":"warning","timestamp":"1750263773","recipient_id":"16505551234"}]}}]}]}"#;
    let n = super::meta::normalize(&body(text.into()), &ctx(&ch));
    assert_unknown(&n, "warning");
    // The event id still follows Meta's word: a later, different unknown word is its own event.
    let other = super::meta::normalize(&body(text.replace("warning", "paused")), &ctx(&ch));
    assert_ne!(n.events[0].event_id, other.events[0].event_id);
}

#[test]
fn twilio() {
    let ch = HashMap::new();
    let text = fixture_with(
        "twilio",
        "status_sms_delivered.txt",
        "MessageStatus=delivered",
        "MessageStatus=warning",
    );
    assert_unknown(&super::twilio::normalize(&body(text), &ctx(&ch)), "warning");
}

#[test]
fn vonage_messages_api() {
    let ch = HashMap::new();
    let text = fixture_with(
        "vonage",
        "status_sms_delivered.json",
        r#""status": "delivered""#,
        r#""status": "warning""#,
    );
    assert_unknown(&super::vonage::normalize(&body(text), &ctx(&ch)), "warning");
}

#[test]
fn vonage_sms_api() {
    let ch = HashMap::new();
    let text = fixture_with(
        "vonage",
        "sms_dlr_delivered.json",
        r#""status": "delivered""#,
        r#""status": "warning""#,
    );
    assert_unknown(&super::vonage::normalize(&body(text), &ctx(&ch)), "warning");
}

#[test]
fn messagebird_sms() {
    let ch = HashMap::new();
    let url = fixture_with(
        "messagebird",
        "sms_dlr_delivered.url",
        "status=delivered",
        "status=warning",
    );
    let v = Verified::assume_verified_get(url.trim());
    assert_unknown(&super::messagebird::normalize(&v, &ctx(&ch)), "warning");
}

#[test]
fn messagebird_conversations() {
    let ch = HashMap::new();
    let text = fixture_with(
        "messagebird",
        "conversations_whatsapp_status_read.json",
        r#""status": "read""#,
        r#""status": "warning""#,
    );
    assert_unknown(
        &super::messagebird::normalize(&body(text), &ctx(&ch)),
        "warning",
    );
}

#[test]
fn bird() {
    let ch = HashMap::new();
    let text = fixture_with(
        "bird",
        "sms_outbound_delivered.json",
        r#""status":"delivered""#,
        r#""status":"warning""#,
    );
    assert_unknown(&super::bird::normalize(&body(text), &ctx(&ch)), "warning");
}

#[test]
fn telnyx() {
    let ch = HashMap::new();
    let text = fixture_with(
        "telnyx",
        "finalized_delivered.json",
        r#""status": "delivered""#,
        r#""status": "warning""#,
    );
    assert_unknown(&super::telnyx::normalize(&body(text), &ctx(&ch)), "warning");
}

#[test]
fn plivo() {
    let ch = HashMap::new();
    let text = fixture_with(
        "plivo",
        "status_delivered.txt",
        "Status=delivered",
        "Status=warning",
    );
    assert_unknown(&super::plivo::normalize(&body(text), &ctx(&ch)), "warning");
}

#[test]
fn sinch_conversation_api() {
    let ch = HashMap::new();
    let text = fixture_with(
        "sinch",
        "conversation_delivery_report_delivered_whatsapp.json",
        r#""status":"DELIVERED""#,
        r#""status":"WARNING""#,
    );
    assert_unknown(&super::sinch::normalize(&body(text), &ctx(&ch)), "WARNING");
}

#[test]
fn sinch_sms_api() {
    let ch = HashMap::new();
    let text = fixture_with(
        "sinch",
        "sms_recipient_delivery_report_delivered.json",
        r#""status":"Delivered""#,
        r#""status":"Warning""#,
    );
    assert_unknown(&super::sinch::normalize(&body(text), &ctx(&ch)), "Warning");
}

#[test]
fn standard_webhooks() {
    let ch = HashMap::new();
    let text = fixture_with(
        "standard",
        "message_status_delivered.json",
        r#""status":"delivered""#,
        r#""status":"warning""#,
    );
    assert_unknown(
        &super::standard::normalize(&body(text), &ctx(&ch)),
        "warning",
    );
}
