//! The webhook path end to end: verification, errors, batching, dedup, dead letters.

use std::collections::HashSet;

use serde_json::Value;
use switchboard::config::BackendKind;
use switchboard::verify::meta::{sign_sha1, sign_sha256};

use crate::helpers::*;

async fn body_json(res: reqwest::Response) -> Value {
    res.json().await.expect("JSON body")
}

#[tokio::test]
async fn signed_message_becomes_one_event_on_the_events_stream() {
    let app = spawn_app(BackendKind::Redis).await;
    let id = unique_wamid();
    let res = app.post(&wa_text(&id)).await;
    assert_eq!(res.status(), 200);
    let receipt = body_json(res).await;
    assert_eq!(receipt["accepted"], 1, "{receipt}");
    let events = app.wait_for_events(1).await;
    assert_eq!(events.len(), 1);
    let ev = &events[0]["event"];
    assert_eq!(ev["schema"], "switchboard.event.v1");
    assert_eq!(ev["kind"], "message");
    assert_eq!(ev["tenant"], "acme");
    assert_eq!(ev["source"], "meta_test");
    assert_eq!(ev["provider"], "meta");
    assert_eq!(ev["channel"], "whatsapp");
    assert_eq!(ev["provider_message_id"], id.as_str());
    assert_eq!(ev["contact"]["id"], "16505551234");
    assert_eq!(ev["business"]["id"], PHONE_ID);
    assert_eq!(ev["message"]["text"], format!("hello {id}"));
    assert!(ev["event_id"].as_str().unwrap().starts_with("evt_"));
    assert!(ev["conversation_id"].as_str().unwrap().starts_with("conv_"));
    // Raw Redis: the entry is on {prefix}:events with its event id, and inbound is drained.
    let mut r = app.redis().await;
    let len: usize = redis::cmd("XLEN")
        .arg(app.key("events"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(len, 1);
    let inbound: usize = redis::cmd("XLEN")
        .arg(app.key("inbound"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(inbound, 0, "routed entries leave the inbound stream");
    app.stop().await;
}

#[tokio::test]
async fn memory_backend_serves_the_same_path() {
    let app = spawn_app(BackendKind::Memory).await;
    let id = unique_wamid();
    assert_eq!(app.post(&wa_text(&id)).await.status(), 200);
    assert_eq!(app.post(&wa_text(&id)).await.status(), 200);
    let events = app.wait_for_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["provider_message_id"], id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn signatures_valid_tampered_missing_wrong_secret_rotated() {
    let app = spawn_app(BackendKind::Redis).await;
    let body = wa_text(&unique_wamid());

    // Tampered: signed, then one byte changed.
    let sig = sign_sha256(SECRET, &body);
    let mut tampered = body.clone();
    let pos = tampered.iter().position(|b| *b == b'h').unwrap();
    tampered[pos] = b'H';
    let res = app
        .client
        .post(app.url("/webhooks/meta_test"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", &sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let v = body_json(res).await;
    assert_eq!(v["code"], "invalid_signature");
    assert!(
        !v.to_string().contains(&sig[7..]),
        "the response never echoes signatures"
    );

    // Missing header, wrong secret, malformed header.
    assert_eq!(
        app.post_signed("meta_test", &body, None).await.status(),
        401
    );
    assert_eq!(
        app.post_signed("meta_test", &body, Some("wrong"))
            .await
            .status(),
        401
    );
    let res = app
        .client
        .post(app.url("/webhooks/meta_test"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", "sha256=not-hex")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Nothing unverified passed.
    assert!(app.events().await.is_empty());

    // Both the old and the new secret verify (rotation).
    assert_eq!(
        app.post_signed("meta_test", &body, Some(OLD_SECRET))
            .await
            .status(),
        200
    );
    let other = wa_text(&unique_wamid());
    assert_eq!(
        app.post_signed("meta_test", &other, Some(SECRET))
            .await
            .status(),
        200
    );
    assert_eq!(app.wait_for_events(2).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn legacy_sha1_only_where_enabled() {
    let app = spawn_app(BackendKind::Memory).await;
    let body = wa_text(&unique_wamid());
    let sha1 = sign_sha1(SECRET, &body);
    for (source, expected) in [("meta_test", 401), ("meta_sha1", 200)] {
        let res = app
            .client
            .post(app.url(&format!("/webhooks/{source}")))
            .header("content-type", "application/json")
            .header("x-hub-signature", &sha1)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected, "{source}");
    }
    app.stop().await;
}

#[tokio::test]
async fn unicode_escaped_body_verifies_on_raw_bytes() {
    // Meta escapes non-ASCII as \uXXXX, '/' as '\/' and '@' as \u0040 before signing; only
    // the raw bytes verify. Text: "J'ai mangé des pâtes 😀 http://x user@example.com".
    let app = spawn_app(BackendKind::Redis).await;
    let id = unique_wamid();
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"111"}},"contacts":[{{"profile":{{"name":"Ren\u00e9e"}},"wa_id":"16505551234"}}],"messages":[{{"from":"16505551234","id":"{id}","timestamp":"1749416383","type":"text","text":{{"body":"J'ai mang\u00e9 des p\u00e2tes \ud83d\ude00 http:\/\/x user\u0040example.com"}}}}]}},"field":"messages"}}]}}]}}"#
    );
    let res = app.post(body.as_bytes()).await;
    assert_eq!(res.status(), 200);
    // A re-serialized body (what a naive gateway would verify) has a different MAC.
    let reserialized = serde_json::to_vec(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    assert_ne!(
        sign_sha256(SECRET, &reserialized),
        sign_sha256(SECRET, body.as_bytes())
    );
    let events = app.wait_for_events(1).await;
    assert_eq!(
        events[0]["event"]["message"]["text"],
        "J'ai mangé des pâtes 😀 http://x user@example.com"
    );
    assert_eq!(events[0]["event"]["contact"]["name"], "Renée");
    app.stop().await;
}

#[tokio::test]
async fn batch_of_100_messages_is_100_events() {
    let app = spawn_app(BackendKind::Redis).await;
    let ids: Vec<String> = (0..100).map(|_| unique_wamid()).collect();
    let res = app.post(&wa_text_batch(PHONE_ID, &ids)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body_json(res).await["accepted"], 100);
    let events = app.wait_for_events(100).await;
    assert_eq!(events.len(), 100);
    let got: HashSet<&str> = events
        .iter()
        .map(|e| e["event"]["provider_message_id"].as_str().unwrap())
        .collect();
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    app.stop().await;
}

#[tokio::test]
async fn same_post_twice_is_one_event() {
    let app = spawn_app(BackendKind::Redis).await;
    let body = wa_text(&unique_wamid());
    let first = body_json(app.post(&body).await).await;
    let second = body_json(app.post(&body).await).await;
    assert_eq!(first["accepted"], 1);
    assert_eq!(second["accepted"], 0);
    assert_eq!(second["duplicates"], 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.wait_for_events(1).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_identical_posts_make_one_event() {
    let app = spawn_app(BackendKind::Redis).await;
    let ids: Vec<String> = (0..5).map(|_| unique_wamid()).collect();
    let body = wa_text_batch(PHONE_ID, &ids);
    let posts = (0..20).map(|_| app.post(&body));
    let responses = futures_util::future::join_all(posts).await;
    let mut accepted = 0;
    for r in responses {
        assert_eq!(r.status(), 200);
        accepted += body_json(r).await["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 5, "exactly one request accepted each event");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = app.wait_for_events(5).await;
    assert_eq!(events.len(), 5);
    let unique: HashSet<&str> = events
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), 5);
    app.stop().await;
}

#[tokio::test]
async fn unknown_source_oversize_and_media_type_errors() {
    let app = spawn_app(BackendKind::Memory).await;
    let body = wa_text(&unique_wamid());

    let res = app.post_signed("nope", &body, Some(SECRET)).await;
    assert_eq!(res.status(), 404);
    assert_eq!(body_json(res).await["code"], "unknown_source");

    // 5 MB > the 4 MiB default limit.
    let big = vec![b' '; 5 * 1024 * 1024];
    let res = app.post(&big).await;
    assert_eq!(res.status(), 413);
    assert_eq!(body_json(res).await["code"], "payload_too_large");

    let res = app
        .client
        .post(app.url("/webhooks/meta_test"))
        .header("content-type", "text/plain")
        .header("x-hub-signature-256", sign_sha256(SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(body_json(res).await["code"], "unsupported_media_type");

    let res = app
        .client
        .put(app.url("/webhooks/meta_test"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let res = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(body_json(res).await["code"], "not_found");
    app.stop().await;
}

#[tokio::test]
async fn handshake_accepts_the_right_token_and_rejects_the_rest() {
    let app = spawn_app(BackendKind::Memory).await;
    let ok = app
        .client
        .get(app.url(&format!("/webhooks/meta_test?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    for q in [
        "hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong",
        "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=test-verify-token",
        "hub.mode=subscribe&hub.verify_token=test-verify-token",
        "",
    ] {
        let res = app
            .client
            .get(app.url(&format!("/webhooks/meta_test?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{q}");
        assert_eq!(body_json(res).await["code"], "handshake_rejected");
    }
    let res = app
        .client
        .get(app.url("/webhooks/nope?hub.mode=subscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn unknown_business_id_and_invalid_json_are_dead_lettered_with_200() {
    let app = spawn_app(BackendKind::Redis).await;
    // One entry for a known number and one for a number no tenant owns.
    let known = unique_wamid();
    let mut body: Value = serde_json::from_slice(&wa_text(&known)).unwrap();
    let mut foreign: Value =
        serde_json::from_slice(&wa_text_batch("999", &[unique_wamid()])).unwrap();
    let foreign_entry = foreign["entry"][0].take();
    body["entry"].as_array_mut().unwrap().push(foreign_entry);
    let body = serde_json::to_vec(&body).unwrap();
    let res = app.post(&body).await;
    assert_eq!(res.status(), 200);
    let receipt = body_json(res).await;
    assert_eq!(receipt["accepted"], 1, "{receipt}");
    assert_eq!(receipt["dead_lettered"], 1, "{receipt}");

    // A verified body that is not JSON at all: 200, dead-lettered, never an error.
    let res = app.post(b"this is not json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(body_json(res).await["dead_lettered"], 1);
    // Redelivery of the same broken body is stored once.
    assert_eq!(
        body_json(app.post(b"this is not json").await).await["dead_lettered"],
        0
    );

    let dl = app.deadletters().await;
    assert_eq!(dl.len(), 2);
    let reasons: HashSet<&str> = dl
        .iter()
        .map(|d| d["deadletter"]["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains("unknown_channel"), "{reasons:?}");
    assert!(reasons.contains("invalid_body"), "{reasons:?}");
    for d in &dl {
        let entry = &d["deadletter"];
        assert_eq!(entry["source"], "meta_test");
        assert!(entry["body"].is_string(), "the body is kept for replay");
        assert!(entry["headers"].to_string().contains("x-hub-signature-256"));
        assert!(!entry.to_string().contains(SECRET));
    }
    assert_eq!(app.wait_for_events(1).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let mut config = test_config(BackendKind::Memory);
    config.limits.ip_requests_per_sec = 1;
    config.limits.ip_burst = 3;
    let app = spawn_with(config).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = app.post(&wa_text(&unique_wamid())).await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(
                res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            assert_eq!(body_json(res).await["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    app.stop().await;

    let mut config = test_config(BackendKind::Memory);
    config.tenants.get_mut("acme").unwrap().requests_per_sec = Some(1);
    config.tenants.get_mut("acme").unwrap().burst = Some(1);
    let app = spawn_with(config).await;
    assert_eq!(app.post(&wa_text(&unique_wamid())).await.status(), 200);
    let res = app.post(&wa_text(&unique_wamid())).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    // Another tenant is not affected.
    assert_eq!(
        app.post(&wa_text_batch("222", &[unique_wamid()]))
            .await
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn read_api_requires_the_token() {
    let app = spawn_app(BackendKind::Memory).await;
    let res = app.client.get(app.url("/v1/events")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/v1/events"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/v1/events?limit=0"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .get(app.url("/v1/events?after=x"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app(BackendKind::Redis).await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let v = body_json(ready).await;
    assert_eq!(v["backend"], "redis");
    app.stop().await;

    // A Redis that is not there: alive, not ready, webhooks 503.
    let mut config = test_config(BackendKind::Redis);
    config.redis.url = format!("redis://127.0.0.1:{}", free_port());
    let app = spawn_unchecked(config).await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let res = app.post(&wa_text(&unique_wamid())).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(body_json(res).await["code"], "dependency_unavailable");
    app.stop().await;
}

#[tokio::test]
async fn every_meta_fixture_is_accepted_over_http() {
    // Map each business id the expected events name to the tenant they expect, so that the
    // gateway resolves tenants exactly as the fixture tests do.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/meta");
    let mut cases = Vec::new();
    let mut config = test_config(BackendKind::Memory);
    config.limits.ip_burst = 100_000;
    config.limits.tenant_burst = 100_000;
    let Some(switchboard::config::SourceConfig::Meta(meta)) = config.sources.get_mut("meta_test")
    else {
        panic!("test_config has the meta_test source");
    };
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = name.strip_suffix(".expected.json") else {
            continue;
        };
        let expected: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for e in expected["events"].as_array().unwrap() {
            if let (Some(b), Some(t)) = (e["business"]["id"].as_str(), e["tenant"].as_str()) {
                meta.channels.insert(b.to_string(), t.to_string());
            }
        }
        let n_events = expected["events"].as_array().unwrap().len() as u64;
        cases.push((stem.to_string(), n_events));
    }
    assert!(cases.len() > 50, "fixtures found: {}", cases.len());
    let app = spawn_with(config).await;
    for (stem, n_events) in cases {
        let body = fixture(&format!("meta/{stem}.json"));
        let res = app.post(&body).await;
        assert_eq!(res.status(), 200, "{stem}");
        let r = body_json(res).await;
        let seen = r["accepted"].as_u64().unwrap() + r["duplicates"].as_u64().unwrap();
        assert_eq!(seen, n_events, "{stem}: {r}");
    }
    app.stop().await;
}
