//! Every provider end to end over real HTTP and real Redis: each fixture of
//! `fixtures/<provider>/`, signed the way the provider signs it, is accepted with 200 and
//! becomes exactly the events its `.expected.json` names on the events stream; tampered,
//! unsigned and wrongly signed requests are refused with 401 and store nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use switchboard::config::{BackendKind, Config, SourceConfig};
use switchboard::verify::{self, Method, SignRequest};
use time::OffsetDateTime;

use crate::helpers::*;

/// The tests' Ed25519 key pairs (fixed seeds, not secrets).
fn telnyx_key() -> SigningKey {
    SigningKey::from_bytes(&[41; 32])
}
fn standard_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The provider keys of each test source (tenants come from the fixtures, see [`channels`]).
fn source_toml(provider: &str) -> String {
    source_keys(provider, false)
}

/// Keys of a test source; `wrong`: other secrets of the same shape (for wrong-secret cases).
fn source_keys(provider: &str, wrong: bool) -> String {
    if wrong {
        return match provider {
            "twilio" => r#"auth_tokens = ["not-the-twilio-token"]"#.into(),
            "plivo" => r#"auth_tokens = ["not-the-plivo-token"]"#.into(),
            "vonage" => r#"signature_secrets = ["not-the-vonage-secret-0123456789"]"#.into(),
            "telegram" => r#"secret_tokens = ["not-the-telegram-token"]"#.into(),
            "messagebird" => r#"signing_keys = ["not-the-messagebird-key"]"#.into(),
            "bird" => r#"signing_keys = ["not-the-bird-key"]"#.into(),
            "sinch" => r#"secrets = ["not-the-sinch-secret"]"#.into(),
            "standard" => r#"secrets = ["whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGw="]"#.into(),
            // Ed25519: signed with another private key (see `sign_fixture`).
            other => source_keys(other, false),
        };
    }
    let b64 = |k: &SigningKey| {
        base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
    };
    match provider {
        "twilio" => r#"auth_tokens = ["twilio-old-token", "twilio-auth-token"]"#.into(),
        "plivo" => r#"auth_tokens = ["plivo-auth-token"]"#.into(),
        "vonage" => r#"signature_secrets = ["vonage-signature-secret-0123456789"]"#.into(),
        "telnyx" => format!(r#"public_keys = ["{}"]"#, b64(&telnyx_key())),
        "telegram" => r#"secret_tokens = ["telegram-secret_token-1"]"#.into(),
        "messagebird" => r#"signing_keys = ["messagebird-signing-key"]"#.into(),
        "bird" => r#"signing_keys = ["bird-signing-key"]"#.into(),
        "sinch" => r#"secrets = ["sinch-webhook-secret"]"#.into(),
        "standard" => format!(
            r#"secrets = ["{STANDARD_SECRET}"]
public_keys = ["whpk_{}"]"#,
            b64(&standard_key())
        ),
        other => panic!("no test source for {other}"),
    }
}

/// Business id → tenant, as the fixture tests map them: read back from the expected events.
fn channels(provider: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (_, expected) in cases(provider) {
        for e in expected["events"].as_array().unwrap() {
            let business = e["business"]["id"]
                .as_str()
                .unwrap_or(e["source"].as_str().unwrap());
            out.insert(
                business.to_string(),
                e["tenant"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

/// (body file, expected output) of every fixture of a provider.
fn cases(provider: &str) -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(provider);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !path.is_file()
            || name.ends_with(".expected.json")
            || name.ends_with(".headers.json")
            || name.ends_with(".md")
        {
            continue;
        }
        let stem = name.rsplit_once('.').unwrap().0;
        let expected: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{stem}.expected.json"))).unwrap(),
        )
        .unwrap();
        out.push((path, expected));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The same source with wrong secrets, to sign requests the gateway must refuse.
fn wrong_config(provider: &str) -> Config {
    let toml = format!(
        "{BASE_CONFIG}\n[sources.{provider}_test]\nprovider = \"{provider}\"\n{}\ntenant = \"acme\"\n",
        source_keys(provider, true)
    );
    Config::from_toml(&toml).expect("wrong-secret config is valid")
}

async fn app_for(provider: &str) -> (TestApp, Config) {
    let source = format!("{provider}_test");
    let channels = channels(provider)
        .into_iter()
        .map(|(b, t)| format!("{b:?} = {t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        "{BASE_CONFIG}\n[sources.{source}]\nprovider = \"{provider}\"\n{}\nchannels = {{ {channels} }}\n",
        source_toml(provider)
    );
    let mut config = Config::from_toml(&toml).expect("provider test config is valid");
    config.backend = BackendKind::Redis;
    config.redis.url = redis_url();
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    config.limits.ip_burst = 100_000;
    config.limits.tenant_burst = 100_000;
    (spawn_with(config.clone()).await, config)
}

/// One request as the provider would send it.
struct Signed {
    method: Method,
    url: String,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

fn is_form_provider(provider: &str) -> bool {
    matches!(provider, "twilio" | "plivo" | "vonage" | "messagebird")
}

/// Builds and signs the request for one fixture file.
fn sign_fixture(
    config: &Config,
    provider: &str,
    base: &str,
    path: &Path,
) -> Result<Signed, String> {
    sign_for(config, &format!("{provider}_test"), provider, base, path)
}

/// Builds and signs the request for one fixture file, with the keys of source `source_id`.
fn sign_for(
    config: &Config,
    source_id: &str,
    provider: &str,
    base: &str,
    path: &Path,
) -> Result<Signed, String> {
    let source = &config.sources[source_id];
    let raw = std::fs::read(path).unwrap();
    let ext = path.extension().unwrap().to_str().unwrap();
    let now = OffsetDateTime::now_utc();
    let (method, mut url, body) = if ext == "url" {
        let fixture_url = String::from_utf8(raw).unwrap();
        let query = fixture_url
            .trim()
            .split_once('?')
            .map_or("", |(_, q)| q)
            .to_string();
        (Method::Get, format!("{base}?{query}"), Vec::new())
    } else {
        (Method::Post, base.to_string(), raw)
    };
    let content_type = if ext == "txt" && is_form_provider(provider) {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    if provider == "twilio" && ext == "json" {
        // Twilio signs JSON bodies through the URL.
        url = format!(
            "{url}?bodySHA256={}",
            verify::twilio::body_sha256_hex(&body)
        );
    }
    let sreq = SignRequest {
        method,
        url: &url,
        body: &body,
        now,
    };
    let mut signed = Signed {
        method,
        url: url.clone(),
        content_type,
        body: body.clone(),
        headers: Vec::new(),
    };
    match source {
        SourceConfig::Twilio(c) => signed.headers = verify::twilio::sign(c, &sreq).unwrap(),
        SourceConfig::Plivo(c) => signed.headers = verify::plivo::sign(c, &sreq)?,
        SourceConfig::Vonage(c) => {
            // Messages API webhooks carry a JWT; SMS API ones a `sig` parameter.
            let messages_api = std::str::from_utf8(&body).is_ok_and(|b| b.contains("message_uuid"))
                || (ext == "json"
                    && serde_json::from_slice::<Value>(&body).map_or(true, |v| !v.is_object()));
            if method == Method::Get {
                signed.url = verify::vonage::signed_sms_url(c, &url, now).unwrap();
            } else if messages_api
                || ext == "json"
                    && !String::from_utf8_lossy(&body).contains("msisdn")
                    && !String::from_utf8_lossy(&body).contains("messageId")
            {
                signed.headers = verify::vonage::sign(c, &sreq).unwrap();
            } else if ext == "json" {
                signed.body = verify::vonage::signed_sms_json(c, &body, now).unwrap();
            } else {
                signed.body = verify::vonage::signed_sms_form(c, &body, now).unwrap();
            }
        }
        SourceConfig::Telnyx(_) => {
            signed.headers = verify::telnyx::sign_with_key(&telnyx_key(), &sreq)
        }
        SourceConfig::Telegram(c) => signed.headers = verify::telegram::sign(c, &sreq).unwrap(),
        SourceConfig::Standard(c) => {
            let headers_file = path.with_file_name(format!(
                "{}.headers.json",
                path.file_stem().unwrap().to_str().unwrap()
            ));
            signed.headers = verify::standard::sign(c, &sreq).unwrap();
            // The fixture's own webhook-id (notifications are keyed on it): re-sign with it.
            if let Ok(text) = std::fs::read(&headers_file) {
                let h: Value = serde_json::from_slice(&text).unwrap();
                let id = h["webhook-id"].as_str().unwrap();
                let ts = now.unix_timestamp();
                let sig = verify::standard::sign_v1(STANDARD_SECRET, id, ts, &body).unwrap();
                signed.headers = vec![
                    ("webhook-id".into(), id.into()),
                    ("webhook-timestamp".into(), ts.to_string()),
                    ("webhook-signature".into(), sig),
                ];
            }
        }
        SourceConfig::Messagebird(c) => {
            signed.headers = verify::messagebird::sign(c, &sreq).unwrap()
        }
        SourceConfig::Bird(c) => signed.headers = verify::bird::sign(c, &sreq).unwrap(),
        SourceConfig::Sinch(c) => signed.headers = verify::sinch::sign(c, &sreq).unwrap(),
        other => panic!("no signer for {other:?}"),
    }
    Ok(signed)
}

async fn send(app: &TestApp, s: &Signed) -> reqwest::Response {
    let mut req = match s.method {
        Method::Get => app.client.get(&s.url),
        Method::Post => app
            .client
            .post(&s.url)
            .header("content-type", s.content_type)
            .body(s.body.clone()),
    };
    for (k, v) in &s.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.send().await.expect("request sent")
}

/// An event without the fields that depend on the time of the run.
fn comparable(mut e: Value) -> Value {
    let o = e.as_object_mut().unwrap();
    if o.get("occurred_at") == o.get("received_at") {
        o.remove("occurred_at");
    }
    if o.get("occurred_at").and_then(Value::as_str) == Some("2026-01-01T00:00:00Z") {
        o.remove("occurred_at");
    }
    o.remove("received_at");
    // Signing may add parameters (Vonage SMS `sig`, `timestamp`, `nonce`) that `raw` keeps.
    o.remove("raw");
    e
}

async fn every_fixture_over_http(provider: &str) {
    let (app, config) = app_for(provider).await;
    let base = app.url(&format!("/webhooks/{provider}_test"));
    let mut want: BTreeMap<String, Value> = BTreeMap::new();
    let mut want_dead = 0;
    let mut sent = 0;
    for (path, expected) in cases(provider) {
        // A body the provider cannot sign (Plivo V3 signs JSON objects only) is a
        // normalizer-only case: it can never arrive verified.
        let signed = match sign_fixture(&config, provider, &base, &path) {
            Ok(s) => s,
            Err(why) => {
                eprintln!("{}: not sent ({why})", path.display());
                continue;
            }
        };
        sent += 1;
        let res = send(&app, &signed).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 200, "{}: {text}", path.display());
        for e in expected["events"].as_array().unwrap() {
            want.insert(
                e["event_id"].as_str().unwrap().to_string(),
                comparable(e.clone()),
            );
        }
        want_dead += expected["dead_letters"].as_array().unwrap().len();
    }
    assert!(sent >= 5, "{provider}: only {sent} fixtures could be sent");
    let got: BTreeMap<String, Value> = app
        .wait_for_events(want.len())
        .await
        .into_iter()
        .map(|entry| {
            let e = entry["event"].clone();
            (e["event_id"].as_str().unwrap().to_string(), comparable(e))
        })
        .collect();
    let missing: BTreeSet<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: BTreeSet<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{provider}: missing {missing:?}, extra {extra:?}"
    );
    for (id, w) in &want {
        assert_eq!(&got[id], w, "{provider}: event {id} differs over HTTP");
    }
    // Distinct dead letters (the same failing part in two fixtures is stored once).
    let dead = app.deadletters().await.len();
    assert!(
        dead >= 1 || want_dead == 0,
        "{provider}: dead letters stored"
    );
    assert!(
        dead <= want_dead,
        "{provider}: {dead} dead letters for {want_dead} expected"
    );
    app.stop().await;
}

/// Tampered body, unsigned, and (where the scheme has one) a wrong secret: 401, nothing stored.
async fn refusals_over_http(provider: &str) {
    let (app, config) = app_for(provider).await;
    let base = app.url(&format!("/webhooks/{provider}_test"));
    let (path, _) = cases(provider)
        .into_iter()
        .find(|(p, e)| {
            p.extension().is_some_and(|x| x != "url") && !e["events"].as_array().unwrap().is_empty()
        })
        .expect("a POST fixture with events");
    let good = sign_fixture(&config, provider, &base, &path).unwrap();

    let mut unsigned = sign_fixture(&config, provider, &base, &path).unwrap();
    unsigned.headers.clear();
    if provider == "vonage" {
        unsigned.body = std::fs::read(&path).unwrap();
    }
    let mut tampered = sign_fixture(&config, provider, &base, &path).unwrap();
    let at = tampered
        .body
        .iter()
        .rposition(|b| b.is_ascii_digit())
        .expect("a digit to change");
    tampered.body[at] = if tampered.body[at] == b'9' {
        b'8'
    } else {
        tampered.body[at] + 1
    };

    let wrong = wrong_config(provider);
    let mut wrong_secret = sign_fixture(&wrong, provider, &base, &path).unwrap();
    if provider == "telnyx" {
        let sreq = SignRequest {
            method: Method::Post,
            url: &base,
            body: &wrong_secret.body,
            now: OffsetDateTime::now_utc(),
        };
        wrong_secret.headers =
            verify::telnyx::sign_with_key(&SigningKey::from_bytes(&[43; 32]), &sreq);
    }

    for (what, req) in [
        ("unsigned", &unsigned),
        ("tampered", &tampered),
        ("wrong secret", &wrong_secret),
    ] {
        // Telegram signs no body: a tampered body with the right token is genuine to it.
        if provider == "telegram" && what == "tampered" {
            continue;
        }
        let res = send(&app, req).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or_default();
        assert_eq!(status, 401, "{provider} {what}: {body}");
        assert_eq!(body["code"], "invalid_signature", "{provider} {what}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        app.events().await.is_empty(),
        "{provider}: a refused request stored events"
    );
    assert_eq!(
        send(&app, &good).await.status(),
        200,
        "{provider}: the genuine request"
    );
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "switchboard_signature_failures_total",
            &[("provider", provider)]
        ) >= 1.0,
        "{provider}: signature failures counted"
    );
    app.stop().await;
}

/// (accepted, duplicates) of a webhook answer: the JSON receipt, or Twilio's headers.
async fn receipt(res: reqwest::Response) -> (u64, u64) {
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    };
    if let (Some(a), Some(d)) = (
        header("x-switchboard-accepted"),
        header("x-switchboard-duplicates"),
    ) {
        return (a, d);
    }
    let v: Value = res.json().await.unwrap();
    (
        v["accepted"].as_u64().unwrap(),
        v["duplicates"].as_u64().unwrap(),
    )
}

/// A delivery's identity is scoped to its source (docs/architecture.md, invariant 3): the
/// same provider message delivered to two sources of two tenants (whoever controls a
/// source's secret can post any provider id to it) is accepted by both, each once; a
/// redelivery to either is still a duplicate. On both backends.
async fn same_message_on_two_sources(provider: &str) {
    let (path, expected) = cases(provider)
        .into_iter()
        .find(|(_, e)| !e["events"].as_array().unwrap().is_empty())
        .expect("a fixture with events");
    let n = expected["events"].as_array().unwrap().len() as u64;
    let channels = channels(provider)
        .into_iter()
        .map(|(b, t)| format!("{b:?} = {t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = source_toml(provider);
    let toml = format!(
        "{BASE_CONFIG}\n[sources.{provider}_test]\nprovider = \"{provider}\"\n{keys}\nchannels = {{ {channels} }}\n\
         [sources.{provider}_other]\nprovider = \"{provider}\"\n{keys}\ntenant = \"globex\"\n"
    );
    for backend in [BackendKind::Memory, BackendKind::Redis] {
        let mut config = Config::from_toml(&toml).expect("two-source config is valid");
        config.backend = backend;
        config.redis.url = redis_url();
        config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let app = spawn_with(config.clone()).await;
        let mut sent = Vec::new();
        for source in [format!("{provider}_test"), format!("{provider}_other")] {
            let base = app.url(&format!("/webhooks/{source}"));
            let signed = sign_for(&config, &source, provider, &base, &path).unwrap();
            assert_eq!(
                receipt(send(&app, &signed).await).await,
                (n, 0),
                "{provider} on {backend:?}: {source} accepts its own delivery"
            );
            sent.push((source, base));
        }
        for (source, base) in &sent {
            // Signed anew: schemes with a timestamp or nonce sign each delivery afresh.
            let again = sign_for(&config, source, provider, base, &path).unwrap();
            assert_eq!(
                receipt(send(&app, &again).await).await,
                (0, n),
                "{provider} on {backend:?}: a redelivery to {source} is a duplicate"
            );
        }
        let events = app.wait_for_events(2 * n as usize).await;
        let ids: BTreeSet<&str> = events
            .iter()
            .map(|e| e["event"]["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(events.len() as u64, 2 * n, "{provider} on {backend:?}");
        assert_eq!(
            ids.len() as u64,
            2 * n,
            "{provider} on {backend:?}: ids differ"
        );
        app.stop().await;
    }
}

macro_rules! provider_tests {
    ($($provider:ident),*) => {
        mod every_fixture {
            $(#[tokio::test]
            async fn $provider() {
                super::every_fixture_over_http(stringify!($provider)).await;
            })*
        }
        mod refusals {
            $(#[tokio::test]
            async fn $provider() {
                super::refusals_over_http(stringify!($provider)).await;
            })*
        }
        mod source_scoped_identity {
            $(#[tokio::test]
            async fn $provider() {
                super::same_message_on_two_sources(stringify!($provider)).await;
            })*
        }
    };
}

provider_tests!(
    twilio,
    plivo,
    vonage,
    messagebird,
    bird,
    telnyx,
    sinch,
    telegram,
    standard
);

/// Twilio signs the public URL: behind a TLS terminator the gateway must reconstruct it,
/// from the source's `public_base_url` or from X-Forwarded-* sent by a trusted proxy only.
#[tokio::test]
async fn url_signing_behind_a_proxy() {
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/twilio/sms_inbound.txt"),
    )
    .unwrap();
    let channels = channels("twilio")
        .into_iter()
        .map(|(b, t)| format!("{b:?} = {t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let public = "https://hooks.example.com/webhooks/twilio_test";
    for (case, extra, trusted, forwarded, want) in [
        (
            "public_base_url",
            "public_base_url = \"https://hooks.example.com\"",
            false,
            false,
            200,
        ),
        (
            "public_base_url with trailing slash",
            "public_base_url = \"https://hooks.example.com/\"",
            false,
            false,
            200,
        ),
        ("no public_base_url, no proxy", "", false, false, 401),
        ("X-Forwarded-* from a trusted proxy", "", true, true, 200),
        ("X-Forwarded-* from an untrusted peer", "", false, true, 401),
    ] {
        let toml = format!(
            "{BASE_CONFIG}\n[sources.twilio_test]\nprovider = \"twilio\"\n{}\nchannels = {{ {channels} }}\n{extra}\n",
            source_toml("twilio")
        );
        let mut config = Config::from_toml(&toml).unwrap();
        config.backend = BackendKind::Memory;
        if trusted {
            config.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        }
        let SourceConfig::Twilio(c) = &config.sources["twilio_test"] else {
            unreachable!()
        };
        let headers = verify::twilio::sign(
            c,
            &SignRequest {
                method: Method::Post,
                url: public,
                body: &body,
                now: OffsetDateTime::now_utc(),
            },
        )
        .unwrap();
        let app = spawn_with(config.clone()).await;
        let mut req = app
            .client
            .post(app.url("/webhooks/twilio_test"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if forwarded {
            req = req
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "hooks.example.com");
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), want, "{case}");
        if want == 200 {
            assert_eq!(
                res.headers()["content-type"],
                "text/xml; charset=utf-8",
                "{case}: Twilio gets TwiML"
            );
            let text = res.text().await.unwrap();
            assert!(text.ends_with("<Response/>"), "{case}: {text}");
        }
        app.stop().await;
    }
}

/// Providers that may deliver with GET get their webhook on GET; the others answer 405, and
/// a Meta source still answers its handshake.
#[tokio::test]
async fn get_deliveries_only_where_the_provider_uses_them() {
    for provider in ["telnyx", "sinch", "telegram", "standard", "bird"] {
        let (app, _) = app_for(provider).await;
        let res = app
            .client
            .get(app.url(&format!("/webhooks/{provider}_test?x=1")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{provider}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "method_not_allowed", "{provider}");
        app.stop().await;
    }
}
