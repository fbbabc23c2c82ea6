//! The fuzz harnesses, shared by the targets in `fuzz_targets/` (one per provider verifier,
//! one per provider normalizer, one for the configuration parser).
//!
//! Every harness must never panic, whatever the bytes. Besides panics (index out of range,
//! overflow with debug assertions, `unwrap`, slicing inside a UTF-8 character...), they check:
//! - verify: a request the harness did not sign never verifies (nothing unverified passes);
//! - normalize: every event serializes to JSON that parses back, with an `evt_` id and a
//!   tenant, and the dead letters build their stored entries.
//!
//! Input formats are small and byte-oriented so that fixtures make good seeds
//! (`fuzz/seeds.py` writes them into `fuzz/corpus/<target>/`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use switchboard::config::{Config, SourceConfig};
use switchboard::normalize::{Context, Normalized};
use switchboard::source::Source;
use switchboard::verify::{self, Headers, Method, SignRequest, Unverified, Verified};
use time::OffsetDateTime;

pub const PROVIDERS: [&str; 10] = [
    "meta",
    "twilio",
    "vonage",
    "messagebird",
    "bird",
    "telnyx",
    "plivo",
    "sinch",
    "telegram",
    "standard",
];

/// The fuzz sources' keys (test values, not secrets). Telnyx and the Standard Webhooks
/// `v1a` scheme verify with public keys of fixed test seeds.
fn telnyx_key() -> SigningKey {
    SigningKey::from_bytes(&[41; 32])
}
fn standard_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}
const TELEGRAM_TOKEN: &str = "fuzz-telegram-token";

fn b64(k: &SigningKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
}

fn source_keys(provider: &str) -> String {
    match provider {
        "meta" => r#"app_secrets = ["fuzz-old-secret", "fuzz-app-secret"]
verify_token = "fuzz-verify"
allow_sha1 = true"#
            .into(),
        "twilio" => r#"auth_tokens = ["twilio-old-token", "twilio-auth-token"]
signing_keys = ["twilio-shared-key"]"#
            .into(),
        "plivo" => "auth_tokens = [\"plivo-auth-token\"]\nallow_v2 = true".into(),
        "vonage" => r#"signature_secrets = ["vonage-signature-secret-0123456789"]"#.into(),
        "telnyx" => format!(r#"public_keys = ["{}"]"#, b64(&telnyx_key())),
        "telegram" => format!(r#"secret_tokens = ["{TELEGRAM_TOKEN}"]"#),
        "messagebird" => r#"signing_keys = ["messagebird-signing-key"]"#.into(),
        "bird" => r#"signing_keys = ["bird-signing-key"]"#.into(),
        "sinch" => r#"secrets = ["sinch-webhook-secret"]"#.into(),
        "standard" => format!(
            "secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\npublic_keys = [\"whpk_{}\"]",
            b64(&standard_key())
        ),
        other => panic!("no fuzz source for {other}"),
    }
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"))
}

/// Business id → tenant for a provider, read from its fixtures' expected events (as the
/// fixture tests map them), so that fuzzed payloads close to a fixture get past the channel
/// lookup into the rest of the normalizer.
fn fixture_channels(provider: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(fixtures().join(provider)) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".expected.json") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        for e in v["events"].as_array().into_iter().flatten() {
            if let (Some(b), Some(t)) = (e["business"]["id"].as_str(), e["tenant"].as_str()) {
                out.push((b.to_string(), t.to_string()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Fixture {
    config: Config,
    sources: HashMap<&'static str, Source>,
    /// The same channel maps, with and without a default tenant.
    channels: HashMap<&'static str, HashMap<String, String>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut toml = String::from("[tenants.acme]\n[tenants.globex]\n[tenants.initech]\n");
        let mut tenants = std::collections::BTreeSet::new();
        let mut channels = HashMap::new();
        for p in PROVIDERS {
            let map: HashMap<String, String> = fixture_channels(p).into_iter().collect();
            tenants.extend(map.values().cloned());
            let inline = map
                .iter()
                .map(|(b, t)| format!("{b:?} = {t:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            toml.push_str(&format!(
                "[sources.{p}_fuzz]\nprovider = \"{p}\"\n{}\n",
                source_keys(p)
            ));
            if p == "meta" {
                toml.push_str(&format!("channels = {{ {inline} }}\n"));
            } else {
                toml.push_str("tenant = \"acme\"\n");
            }
            channels.insert(p, map);
        }
        for t in tenants {
            if !["acme", "globex", "initech"].contains(&t.as_str()) {
                toml.push_str(&format!("[tenants.{t}]\n"));
            }
        }
        let config = Config::from_toml(&toml).expect("the fuzz configuration is valid");
        let sources = PROVIDERS
            .iter()
            .map(|p| {
                let id = format!("{p}_fuzz");
                (*p, Source::from_config(&id, &config.sources[&id], true))
            })
            .collect();
        Fixture {
            config,
            sources,
            channels,
        }
    })
}

/// A cursor over the fuzz input.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u16(&mut self) -> usize {
        self.byte() as usize | (self.byte() as usize) << 8
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// The fixed clock of the harnesses (2026-01-01T00:00:00Z), moved by the input's skew.
const T0: i64 = 1_767_225_600;

/// Header names a verify input may set: the provider's signature headers, then these.
const EXTRA_HEADERS: &[&str] = &["content-type", "authorization", "x-forwarded-proto"];

/// Fuzzes a provider's verifier with an arbitrary request, then normalizes what passes.
///
/// Input: `flags` `skew` `n` (`index` `len` `value`){n ≤ 8} `query_len:u16le` `query` `body`
/// - flags bit 0: GET (else POST); bit 1: sign the request the way the provider does first
///   (then overrides tamper with the signed headers); bit 2: JSON content type (else form);
///   bit 3: the provider's second scheme (Meta SHA-1, Vonage SMS `sig`, Standard `v1a`);
///   bit 4: drop the first signature header; bit 5: normalize with a default tenant.
/// - skew: the verifier's clock is `T0 + (skew as i8) * 10 s` while signing uses `T0`,
///   which crosses the 5-minute replay windows both ways.
/// - each override sets header `index` (modulo the list of signature headers and
///   [`EXTRA_HEADERS`]) to `value` (lossy UTF-8).
pub fn verify(provider: &str, data: &[u8]) -> bool {
    let f = fixture();
    let src = &f.sources[provider];
    let id = format!("{provider}_fuzz");
    let cfg = &f.config.sources[&id];
    let mut input = Input(data);
    let flags = input.byte();
    let skew = input.byte() as i8 as i64 * 10;
    let n = (input.byte() % 9) as usize;
    let mut names: Vec<&str> = src.signature_headers().to_vec();
    names.extend_from_slice(EXTRA_HEADERS);
    let mut overrides = Vec::with_capacity(n);
    for _ in 0..n {
        let name = names[input.byte() as usize % names.len()];
        let len = input.byte() as usize;
        overrides.push((name, String::from_utf8_lossy(input.take(len)).into_owned()));
    }
    let query_len = input.u16();
    let query = String::from_utf8_lossy(input.take(query_len)).into_owned();
    let mut body = input.rest().to_vec();

    let method = if flags & 1 == 1 {
        Method::Get
    } else {
        Method::Post
    };
    let sign = flags & 2 != 0;
    let json = flags & 4 != 0;
    let second_scheme = flags & 8 != 0;
    let mut url = format!("https://hooks.example.com/webhooks/{id}");
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    let content_type = if json {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut headers: Vec<(String, String)> = vec![("content-type".into(), content_type.into())];
    let signed_at = OffsetDateTime::from_unix_timestamp(T0).unwrap();
    if sign {
        if provider == "twilio" && json && method == Method::Post {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!(
                "{url}{sep}bodySHA256={}",
                verify::twilio::body_sha256_hex(&body)
            );
        }
        let signed = sign_request(cfg, method, &mut url, &mut body, second_scheme, signed_at);
        headers.extend(signed);
    }
    if flags & 16 != 0 {
        if let Some(first) = src.signature_headers().first() {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(first));
        }
    }
    for (name, value) in overrides {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value));
    }
    let mut h = Headers::new();
    for (n, v) in &headers {
        h.insert(n, v);
    }
    let now = OffsetDateTime::from_unix_timestamp(T0 + skew).unwrap();
    let req = Unverified::new(h, Bytes::from(body))
        .with_method(method)
        .with_url(url)
        .with_now(now);
    match src.verify(req) {
        Ok(verified) => {
            assert!(
                sign,
                "{provider}: a request the harness did not sign verified"
            );
            normalize_verified(provider, &verified, flags & 32 != 0, true);
            true
        }
        Err(_) => false,
    }
}

/// The signature headers (and, for the Vonage SMS scheme, the signed URL or body) of a
/// request, as the provider would send them; nothing when the scheme cannot sign it.
fn sign_request(
    cfg: &SourceConfig,
    method: Method,
    url: &mut String,
    body: &mut Vec<u8>,
    second_scheme: bool,
    now: OffsetDateTime,
) -> Vec<(String, String)> {
    if let (SourceConfig::Vonage(c), true) = (cfg, second_scheme) {
        // The SMS API signs with a `sig` parameter of the URL or the body.
        let is_json = serde_json::from_slice::<serde_json::Value>(body).is_ok();
        let _ = match method {
            Method::Get => verify::vonage::signed_sms_url(c, url, now).map(|u| *url = u),
            Method::Post if is_json => {
                verify::vonage::signed_sms_json(c, body, now).map(|b| *body = b)
            }
            Method::Post => verify::vonage::signed_sms_form(c, body, now).map(|b| *body = b),
        };
        return Vec::new();
    }
    let req = SignRequest {
        method,
        url,
        body,
        now,
    };
    let headers = match cfg {
        SourceConfig::Meta(m) => {
            let secret = m.app_secrets[1].expose();
            Ok(if second_scheme {
                vec![(
                    verify::meta::HEADER_SHA1.to_string(),
                    verify::meta::sign_sha1(secret, body),
                )]
            } else {
                vec![(
                    verify::meta::HEADER_SHA256.to_string(),
                    verify::meta::sign_sha256(secret, body),
                )]
            })
        }
        SourceConfig::Twilio(c) => verify::twilio::sign(c, &req),
        SourceConfig::Vonage(c) => verify::vonage::sign(c, &req),
        SourceConfig::Messagebird(c) => verify::messagebird::sign(c, &req),
        SourceConfig::Bird(c) => verify::bird::sign(c, &req),
        SourceConfig::Telnyx(_) => Ok(verify::telnyx::sign_with_key(&telnyx_key(), &req)),
        SourceConfig::Plivo(c) => verify::plivo::sign(c, &req),
        SourceConfig::Sinch(c) => verify::sinch::sign(c, &req),
        SourceConfig::Telegram(c) => verify::telegram::sign(c, &req),
        SourceConfig::Standard(_) if second_scheme => {
            Ok(verify::standard::sign_with_key(&standard_key(), &req))
        }
        SourceConfig::Standard(c) => verify::standard::sign(c, &req),
    };
    headers.unwrap_or_default()
}

/// Fuzzes a provider's normalizer with an arbitrary verified request.
///
/// Input: `flags` then the body (POST) or the URL's query string (GET).
/// flags bit 0: GET; bit 1: the source has a default tenant (else only its fixtures'
/// channel map); bit 2: events carry `raw`.
pub fn normalize(provider: &str, data: &[u8]) {
    let mut input = Input(data);
    let flags = input.byte();
    let rest = input.rest();
    let (method, url, body) = if flags & 1 == 1 {
        (
            Method::Get,
            format!(
                "https://hooks.example.com/webhooks/{provider}_fuzz?{}",
                String::from_utf8_lossy(rest)
            ),
            Bytes::new(),
        )
    } else {
        (
            Method::Post,
            format!("https://hooks.example.com/webhooks/{provider}_fuzz"),
            Bytes::copy_from_slice(rest),
        )
    };
    // Normalizers take only Verified requests, and Verified has no public constructor:
    // the Telegram scheme (a token header) makes any body verified at no cost.
    let f = fixture();
    let mut h = Headers::new();
    h.insert(verify::telegram::HEADER, TELEGRAM_TOKEN);
    let req = Unverified::new(h, body).with_method(method).with_url(url);
    let verified = f.sources["telegram"]
        .verify(req)
        .expect("the harness's Telegram token verifies");
    normalize_verified(provider, &verified, flags & 2 != 0, flags & 4 != 0);
}

fn normalize_verified(
    provider: &str,
    verified: &Verified,
    default_tenant: bool,
    include_raw: bool,
) {
    let f = fixture();
    let src = &f.sources[provider];
    let received_at = OffsetDateTime::from_unix_timestamp(T0).unwrap();
    let ctx = Context {
        source: &src.id,
        received_at,
        include_raw,
        channels: &f.channels[provider],
        default_tenant: default_tenant.then_some("acme"),
    };
    let normalized: Normalized = src.normalize(verified, &ctx);
    for e in &normalized.events {
        assert!(e.event_id.starts_with("evt_"), "{provider}: {}", e.event_id);
        assert!(!e.tenant.is_empty(), "{provider}: event without tenant");
        let json = e.to_json();
        let back: serde_json::Value =
            serde_json::from_str(&json).expect("an event serializes to JSON");
        assert_eq!(back["event_id"], e.event_id.as_str());
    }
    let batch = switchboard::ingest::to_batch(src, &normalized, verified, &[], received_at);
    assert_eq!(batch.events.len(), normalized.events.len());
    for dl in &batch.dead_letters {
        assert!(dl.key.starts_with("dl_"));
        assert!(serde_json::from_str::<serde_json::Value>(&dl.payload).is_ok());
    }
}

/// Fuzzes the configuration parser: TOML → `Config` with every validation. It may refuse
/// anything, never panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(flags: u8, skew: i8, query: &str, body: &[u8]) -> Vec<u8> {
        let mut v = vec![flags, skew as u8, 0];
        v.extend_from_slice(&(query.len() as u16).to_le_bytes());
        v.extend_from_slice(query.as_bytes());
        v.extend_from_slice(body);
        v
    }

    /// The harness reaches past the signature check: every provider's fixtures, signed by
    /// the harness, verify (so the fuzzer explores the success path and the normalizer
    /// behind it), unsigned they do not, and a tampered signature does not.
    #[test]
    fn signed_fixtures_verify_and_unsigned_ones_do_not() {
        for provider in PROVIDERS {
            let mut verified = 0;
            for entry in std::fs::read_dir(fixtures().join(provider)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.to_string_lossy().to_string();
                if !path.is_file()
                    || name.ends_with(".expected.json")
                    || name.ends_with(".headers.json")
                    || name.ends_with(".md")
                {
                    continue;
                }
                let raw = std::fs::read(&path).unwrap();
                let (get, query, body) = if name.ends_with(".url") {
                    let url = String::from_utf8(raw).unwrap();
                    let q = url
                        .trim()
                        .split_once('?')
                        .map_or("", |(_, q)| q)
                        .to_string();
                    (1, q, Vec::new())
                } else {
                    (0, String::new(), raw)
                };
                let json = if name.ends_with(".json") { 4 } else { 0 };
                let flags = get | json;
                assert!(!verify(provider, &input(flags, 0, &query, &body)), "{name}");
                if verify(provider, &input(flags | 2, 0, &query, &body)) {
                    verified += 1;
                }
                // 40 minutes late: outside every replay window (schemes with a timestamp).
                let late = verify(provider, &input(flags | 2, -127, &query, &body));
                if ["bird", "telnyx", "sinch", "standard", "messagebird"].contains(&provider) {
                    assert!(!late, "{name} verified outside the replay window");
                }
            }
            assert!(verified > 0, "{provider}: no signed fixture verified");
            normalize(provider, b"\x02{}");
        }
    }
}
