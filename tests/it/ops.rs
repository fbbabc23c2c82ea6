//! `switchboard replay` and `switchboard inspect` as an operator runs them, against the
//! real gateway and real Redis (a fresh key prefix per test).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use switchboard::config::{BackendKind, Config, SourceConfig};
use switchboard::verify::{self, Method, SignRequest};
use time::OffsetDateTime;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// A phone_number_id no tenant owns in [`BASE_CONFIG`].
const UNMAPPED: &str = "999";

/// Writes a configuration file for the CLI; the backend and Redis location come from the
/// environment (see [`run`]), as an operator's deployment would set them.
fn config_file(toml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-ops-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// BASE_CONFIG with `999` mapped to `globex`: the fix an operator makes.
fn fixed_config() -> String {
    let fixed = BASE_CONFIG.replacen(
        r#""222" = "globex","#,
        &format!(r#""222" = "globex", "{UNMAPPED}" = "globex","#),
        1,
    );
    assert_ne!(fixed, BASE_CONFIG);
    fixed
}

fn run(config: &PathBuf, app: &TestApp, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SWITCHBOARD__BACKEND", "redis")
        .env("SWITCHBOARD__REDIS__URL", &app.redis_url)
        .env("SWITCHBOARD__REDIS__KEY_PREFIX", &app.prefix)
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

async fn xlen(app: &TestApp, stream: &str) -> usize {
    let mut r = app.redis().await;
    r.xlen(app.key(stream)).await.unwrap()
}

/// The raw fields of every dead-letter entry.
async fn deadletter_fields(app: &TestApp) -> Vec<(String, String)> {
    let mut r = app.redis().await;
    let reply: redis::streams::StreamRangeReply =
        r.xrange_all(app.key("deadletter")).await.unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            (
                e.get::<String>("deadletter_id").unwrap(),
                e.get::<String>("deadletter").unwrap(),
            )
        })
        .collect()
}

async fn xadd_deadletter(app: &TestApp, id: &str, payload: &str) {
    let mut r = app.redis().await;
    let _: String = r
        .xadd(
            app.key("deadletter"),
            "*",
            &[("deadletter_id", id), ("deadletter", payload)],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn replay_republishes_a_dead_letter_once_its_channel_is_mapped() {
    let app = spawn_app(BackendKind::Redis).await;
    let wamid = unique_wamid();
    let res = app
        .post(&wa_text_batch(UNMAPPED, std::slice::from_ref(&wamid)))
        .await;
    assert_eq!(res.status(), 200);
    let receipt: Value = res.json().await.unwrap();
    assert_eq!(receipt["dead_lettered"], 1, "{receipt}");
    let stored = deadletter_fields(&app).await;
    assert_eq!(stored.len(), 1);
    let record: Value = serde_json::from_str(&stored[0].1).unwrap();
    assert_eq!(record["method"], "POST", "{record}");
    assert!(
        record["url"]
            .as_str()
            .unwrap()
            .ends_with("/webhooks/meta_test"),
        "{record}"
    );

    // Before the fix: still failing, for the same reason, and left in place.
    let unfixed = config_file(BASE_CONFIG);
    let report = json_of(&run(&unfixed, &app, &["replay", "--json"]));
    assert_eq!(report["examined"], 1, "{report}");
    assert_eq!(report["still_failing"], 1, "{report}");
    assert_eq!(report["entries"][0]["outcome"], "still_failing");
    assert_eq!(report["entries"][0]["reason"], "unknown_channel");
    assert_eq!(xlen(&app, "deadletter").await, 1);

    // After the fix, a dry run changes nothing.
    let fixed = config_file(&fixed_config());
    let report = json_of(&run(&fixed, &app, &["replay", "--dry-run", "--json"]));
    assert_eq!(report["would_replay"], 1, "{report}");
    assert_eq!(xlen(&app, "deadletter").await, 1);
    assert_eq!(xlen(&app, "inbound").await + xlen(&app, "events").await, 0);

    // Filters that match nothing touch nothing.
    let report = json_of(&run(
        &fixed,
        &app,
        &["replay", "--source", "meta_sha1", "--json"],
    ));
    assert_eq!(report["examined"], 0, "{report}");
    let report = json_of(&run(
        &fixed,
        &app,
        &["replay", "--reason", "invalid_body", "--json"],
    ));
    assert_eq!(report["examined"], 0, "{report}");

    // The replay: one new event, routed to the events stream, the entry removed.
    let out = run(
        &fixed,
        &app,
        &["replay", "--source", "meta_test", "--id", &stored[0].0],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 replayed (1 new event(s))"), "{text}");
    assert_eq!(xlen(&app, "deadletter").await, 0);
    let events = app.wait_for_events(1).await;
    assert_eq!(events.len(), 1);
    let event = &events[0]["event"];
    assert_eq!(event["provider_message_id"], wamid.as_str(), "{event}");
    assert_eq!(event["tenant"], "globex", "{event}");

    // A crash between the accept and the removal leaves the entry: replaying it again finds
    // its event as a duplicate, never a second event.
    xadd_deadletter(&app, &stored[0].0, &stored[0].1).await;
    let report = json_of(&run(&fixed, &app, &["replay", "--json"]));
    assert_eq!(report["duplicates"], 1, "{report}");
    assert_eq!(report["replayed"], 0, "{report}");
    assert_eq!(report["events_duplicate"], 1, "{report}");
    assert_eq!(xlen(&app, "deadletter").await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.events().await.len(), 1, "still one event");

    // Nothing left to replay.
    let report = json_of(&run(&fixed, &app, &["replay", "--json"]));
    assert_eq!(report["examined"], 0, "{report}");

    // A tampered entry does not verify, and stays.
    let mut tampered: Value = serde_json::from_str(&stored[0].1).unwrap();
    tampered["body"] = Value::String(tampered["body"].as_str().unwrap().replace("hello", "HELLO"));
    xadd_deadletter(&app, "dl_tampered", &tampered.to_string()).await;
    let report = json_of(&run(&fixed, &app, &["replay", "--json"]));
    assert_eq!(report["still_failing"], 1, "{report}");
    assert_eq!(report["entries"][0]["reason"], "verification_failed");
    assert_eq!(xlen(&app, "deadletter").await, 1);
    assert_eq!(app.events().await.len(), 1);
    app.stop().await;
}

/// MessageBird SMS webhooks are GET requests whose parameters and signature cover the URL:
/// the dead letter must keep the method and URL for the replay to verify.
#[tokio::test]
async fn replay_reverifies_a_signed_get_delivery_from_its_url() {
    let source = r#"
[sources.mb_test]
provider = "messagebird"
signing_keys = ["messagebird-signing-key"]
channels = { "31970001111111" = "acme" }
"#;
    let mut config =
        Config::from_toml(&format!("{BASE_CONFIG}{source}")).expect("test config is valid");
    config.backend = BackendKind::Redis;
    config.redis.url = redis_url();
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_with(config.clone()).await;
    let SourceConfig::Messagebird(mb) = &config.sources["mb_test"] else {
        unreachable!()
    };
    let url = app.url(
        "/webhooks/mb_test?id=a1b2c3d4e5f60718293a4b5c6d7e8f90&recipient=31970005555555\
         &originator=31612345678&body=Who+owns+this+number&createdDatetime=2026-01-01T09%3A33%3A00%2B00%3A00",
    );
    let headers = verify::messagebird::sign(
        mb,
        &SignRequest {
            method: Method::Get,
            url: &url,
            body: b"",
            now: OffsetDateTime::now_utc(),
        },
    )
    .unwrap();
    let mut req = app.client.get(&url);
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(xlen(&app, "deadletter").await, 1);

    let fixed = config_file(&format!(
        "{BASE_CONFIG}{}",
        source.replace(
            r#""31970001111111" = "acme""#,
            r#""31970001111111" = "acme", "31970005555555" = "globex""#
        )
    ));
    let report = json_of(&run(&fixed, &app, &["replay", "--json"]));
    assert_eq!(report["replayed"], 1, "{report}");
    let events = app.wait_for_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["tenant"], "globex");
    assert_eq!(
        events[0]["event"]["message"]["text"],
        "Who owns this number"
    );
    app.stop().await;
}

#[tokio::test]
async fn inspect_reports_lengths_groups_pending_lag_and_the_oldest_unacked_entry() {
    let app = spawn_app(BackendKind::Redis).await;
    for _ in 0..3 {
        assert_eq!(app.post(&wa_text(&unique_wamid())).await.status(), 200);
    }
    assert_eq!(
        app.post(&wa_text_batch(UNMAPPED, &[unique_wamid()]))
            .await
            .status(),
        200
    );
    assert_eq!(app.wait_for_events(3).await.len(), 3);
    // A CRM backend's group that read one entry and has not acknowledged it.
    let mut r = app.redis().await;
    let events_key = app.key("events");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&events_key)
        .arg("crm")
        .arg("0")
        .query_async(&mut r)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("crm")
        .arg("crm-1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&events_key)
        .arg(">")
        .query_async(&mut r)
        .await
        .unwrap();

    let config = config_file(BASE_CONFIG);
    let report = json_of(&run(&config, &app, &["inspect", "--json"]));
    let stream = |name: &str| {
        report["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let inbound = stream("inbound");
    assert_eq!(inbound["length"], 0, "{inbound}");
    let router = &inbound["groups"][0];
    assert_eq!(router["name"], "router", "{inbound}");
    assert_eq!(router["pending"], 0, "{inbound}");

    let events = stream("events");
    assert_eq!(events["length"], 3, "{events}");
    assert!(events["oldest_entry_age_ms"].as_u64().is_some(), "{events}");
    let crm = &events["groups"][0];
    assert_eq!(crm["name"], "crm", "{events}");
    assert_eq!(crm["consumers"], 1, "{events}");
    assert_eq!(crm["pending"], 1, "{events}");
    assert_eq!(crm["lag"], 2, "{events}");
    let oldest = &crm["oldest_pending"];
    assert_eq!(oldest["id"], events["oldest_entry_id"], "{events}");
    assert_eq!(oldest["consumer"], "crm-1");
    assert_eq!(oldest["deliveries"], 1);
    assert!(oldest["age_ms"].as_u64().unwrap() < 60_000, "{events}");

    let dead = stream("deadletter");
    assert_eq!(dead["length"], 1, "{dead}");
    assert_eq!(dead["groups"].as_array().unwrap().len(), 0, "{dead}");

    // The text form names the same things.
    let out = run(&config, &app, &["inspect"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "inbound",
        "events",
        "deadletter",
        "group crm",
        "pending 1",
        "lag 2",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    app.stop().await;
}

#[test]
fn replay_and_inspect_refuse_the_memory_backend_with_a_reason() {
    let config = config_file(BASE_CONFIG);
    for cmd in ["replay", "inspect"] {
        let out = Command::new(BIN)
            .arg(cmd)
            .arg("--config")
            .arg(&config)
            .env("SWITCHBOARD__BACKEND", "memory")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} must refuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs backend = \"redis\""), "{cmd}: {err}");
    }
}

/// With `streams.partitions` > 1 each partition has its own streams: replay reads and
/// removes across them, and inspect lists every partition's streams.
#[tokio::test]
async fn replay_and_inspect_work_across_stream_partitions() {
    let mut config = test_config(BackendKind::Redis);
    config.streams.partitions = 3;
    let app = spawn_with(config).await;
    for _ in 0..4 {
        let res = app.post(&wa_text_batch(UNMAPPED, &[unique_wamid()])).await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(app.deadletters().await.len(), 4);
    let run_p = |config: &PathBuf, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(config)
            .env("SWITCHBOARD__BACKEND", "redis")
            .env("SWITCHBOARD__STREAMS__PARTITIONS", "3")
            .env("SWITCHBOARD__REDIS__URL", &app.redis_url)
            .env("SWITCHBOARD__REDIS__KEY_PREFIX", &app.prefix)
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap()
    };
    let fixed = config_file(&fixed_config());
    let report = json_of(&run_p(&fixed, &["replay", "--limit", "3", "--json"]));
    assert_eq!(report["replayed"], 3, "{report}");
    let report = json_of(&run_p(&fixed, &["replay", "--json"]));
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(app.deadletters().await.len(), 0);
    assert_eq!(app.wait_for_events(4).await.len(), 4);

    let report = json_of(&run_p(&fixed, &["inspect", "--json"]));
    let streams = report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 9, "{report}");
    let events: u64 = streams
        .iter()
        .filter(|s| s["stream"] == "events")
        .map(|s| s["length"].as_u64().unwrap())
        .sum();
    assert_eq!(events, 4, "{report}");
    assert!(
        streams
            .iter()
            .any(|s| s["key"] == format!("{{{}:p2}}:deadletter", app.prefix)),
        "{report}"
    );
    app.stop().await;
}

/// Telegram's header is the secret token itself: a dead letter keeps only its digest (not
/// in Redis, not through the read API), the digest never verifies a network request, and
/// `switchboard replay` still re-verifies the entry against the configured tokens.
#[tokio::test]
async fn telegram_dead_letters_keep_no_token_and_still_replay() {
    const TOKEN: &str = "tg-Secret_token-123456";
    // No tenant and no channel for this bot: its updates are dead-lettered.
    let unmapped = format!(
        "{BASE_CONFIG}\n[sources.tg]\nprovider = \"telegram\"\nsecret_tokens = [\"{TOKEN}\"]\nchannels = {{ \"elsewhere\" = \"acme\" }}\n"
    );
    let mut config = Config::from_toml(&unmapped).expect("valid");
    config.backend = BackendKind::Redis;
    config.redis.url = redis_url();
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_with(config).await;
    let body = fixture("telegram/private_text.json");
    let post = |token: String| {
        app.client
            .post(app.url("/webhooks/tg"))
            .header("content-type", "application/json")
            .header("x-telegram-bot-api-secret-token", token)
            .body(body.clone())
            .send()
    };
    let res = post(TOKEN.to_string()).await.unwrap();
    assert_eq!(res.status(), 200);
    let stored = deadletter_fields(&app).await;
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].1.contains(TOKEN),
        "the token is in Redis: {}",
        stored[0].1
    );
    let record: Value = serde_json::from_str(&stored[0].1).unwrap();
    let kept = record["headers"].to_string();
    assert!(kept.contains("sha256:"), "{record}");
    let listed = app
        .client
        .get(app.url("/v1/deadletters?limit=10"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(TOKEN), "the token is in the read API");

    // The kept digest is no credential on the network.
    let digest = switchboard::verify::telegram::kept_value(TOKEN);
    assert_eq!(post(digest).await.unwrap().status(), 401);

    // Fixed (the source gets a tenant): replay verifies by digest and publishes the event.
    let fixed = config_file(&unmapped.replace(
        "channels = { \"elsewhere\" = \"acme\" }",
        "tenant = \"acme\"",
    ));
    let report = json_of(&run(&fixed, &app, &["replay", "--json"]));
    assert_eq!(report["replayed"], 1, "{report}");
    let events = app.wait_for_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["provider"], "telegram");
    // With another token configured, the entry no longer verifies.
    xadd_deadletter(&app, &stored[0].0, &stored[0].1).await;
    let rotated = config_file(
        &unmapped
            .replace(
                "channels = { \"elsewhere\" = \"acme\" }",
                "tenant = \"acme\"",
            )
            .replace(TOKEN, "a-different-token"),
    );
    let report = json_of(&run(&rotated, &app, &["replay", "--json"]));
    assert_eq!(report["still_failing"], 1, "{report}");
    assert_eq!(report["entries"][0]["reason"], "verification_failed");
    app.stop().await;
}
