//! Standard Webhooks senders (spec v1.0.0, standard-webhooks/standard-webhooks): signature
//! verification.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, with both headers
//! exactly as sent. `webhook-signature` is a space-delimited list of `<version>,<base64>`:
//! `v1` is HMAC-SHA256 under the base64-decoded secret (the part after `whsec_`), `v1a` an
//! Ed25519 signature checked against the configured `whpk_` public keys. The request verifies
//! when any listed signature matches any configured key (senders list one signature per
//! active key while rotating); entries of other versions are ignored, as the spec asks. The
//! timestamp must lie within the source's replay window (default 300 s, the libraries'
//! tolerance) either side.
//!
//! `webhook-id` is the idempotency key (the same on every retry of a message);
//! `normalize::standard` reads it from [`Verified::headers`].

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{within_window, SignRequest, Unverified, Verified, VerifyError};
use crate::config::standard::{decode_secret, parse_public_key, StandardSourceConfig};

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

/// Bounds on what is examined, so a hostile header cannot buy unbounded work.
const MAX_ID_LEN: usize = 256;
const MAX_SIGNATURE_HEADER: usize = 4096;
const MAX_SIGNATURES: usize = 16;

/// Decoded `whsec_` secret bytes; never printed.
#[derive(Clone)]
struct SecretBytes(Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a Standard Webhooks source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    secrets: Vec<SecretBytes>,
    public_keys: Vec<VerifyingKey>,
    replay_window: Duration,
}

impl Keys {
    pub fn from_config(c: &StandardSourceConfig) -> Keys {
        Keys {
            secrets: c
                .secrets
                .iter()
                .filter_map(|s| decode_secret(s.expose()).ok().map(SecretBytes))
                .collect(),
            public_keys: c
                .public_keys
                .iter()
                .filter_map(|k| parse_public_key(k).ok())
                .collect(),
            replay_window: Duration::from_secs(c.replay_window_secs),
        }
    }
}

/// `{id}.{timestamp}.{body}`.
fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(id.len() + timestamp.len() + 2 + body.len());
    m.extend_from_slice(id.as_bytes());
    m.push(b'.');
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

fn hmac(secret: &[u8], content: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(content);
    mac
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let h = req.headers();
    let id = h.get(HEADER_ID).ok_or(VerifyError::Missing)?;
    let ts_text = h.get(HEADER_TIMESTAMP).ok_or(VerifyError::Missing)?;
    let sig_header = h.get(HEADER_SIGNATURE).ok_or(VerifyError::Missing)?;
    if id.is_empty() || id.len() > MAX_ID_LEN || sig_header.len() > MAX_SIGNATURE_HEADER {
        return Err(VerifyError::Malformed);
    }
    if ts_text.is_empty() || ts_text.len() > 18 || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed);
    }
    let ts: i64 = ts_text.parse().map_err(|_| VerifyError::Malformed)?;

    // Parse the list first: the outcome names the most specific failure.
    let mut v1: Vec<Vec<u8>> = Vec::new();
    let mut v1a: Vec<Signature> = Vec::new();
    let mut malformed = false;
    let mut disabled = false;
    for entry in sig_header.split_ascii_whitespace().take(MAX_SIGNATURES) {
        let Some((version, b64)) = entry.split_once(',') else {
            malformed = true;
            continue;
        };
        let decoded = STANDARD.decode(b64);
        match (version, decoded) {
            ("v1", Ok(sig)) if sig.len() == 32 => {
                if keys.secrets.is_empty() {
                    disabled = true;
                } else {
                    v1.push(sig);
                }
            }
            ("v1a", Ok(sig)) if sig.len() == 64 => {
                if keys.public_keys.is_empty() {
                    disabled = true;
                } else if let Ok(bytes) = <[u8; 64]>::try_from(sig.as_slice()) {
                    v1a.push(Signature::from_bytes(&bytes));
                }
            }
            ("v1" | "v1a", _) => malformed = true,
            // Other versions are ignored (spec: verifiers skip signatures they do not know).
            _ => {}
        }
    }
    if v1.is_empty() && v1a.is_empty() {
        return Err(if disabled {
            VerifyError::AlgorithmDisabled
        } else if malformed {
            VerifyError::Malformed
        } else {
            // Empty, or only unknown versions: nothing we could check.
            VerifyError::Missing
        });
    }
    if !within_window(ts, req.now(), keys.replay_window) {
        return Err(VerifyError::Expired);
    }

    let content = signed_content(id, ts_text, req.body());
    let mut ok = false;
    for secret in &keys.secrets {
        if v1.is_empty() {
            break;
        }
        let mac = hmac(&secret.0, &content);
        for sig in &v1 {
            // verify_slice compares in constant time; the MAC state is cloned per candidate.
            ok |= mac.clone().verify_slice(sig).is_ok();
        }
    }
    for key in &keys.public_keys {
        for sig in &v1a {
            ok |= key.verify_strict(&content, sig).is_ok();
        }
    }
    if ok {
        Ok(req.into_verified())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// `v1,<base64>` for a message, under a configured `whsec_` secret.
pub fn sign_v1(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = decode_secret(secret).map_err(|why| format!("the secret {why}"))?;
    let mac = hmac(&key, &signed_content(id, &timestamp.to_string(), body));
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// A `webhook-id` for a signed request: stable for a body, as a sender's retries are.
fn message_id(body: &[u8]) -> String {
    format!("msg_{}", crate::event::short_hash(body))
}

/// The headers a sender using the source's first `whsec_` secret sends for `req` (`v1`).
pub fn sign(
    c: &StandardSourceConfig,
    req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, String> {
    let secret = c.secrets.first().ok_or(
        "the source has no `secrets` (whsec_): v1a senders sign with a private key, use \
         verify::standard::sign_with_key",
    )?;
    let id = message_id(req.body);
    let ts = req.now.unix_timestamp();
    let sig = sign_v1(secret.expose(), &id, ts, req.body)?;
    Ok(vec![
        (HEADER_ID.to_string(), id),
        (HEADER_TIMESTAMP.to_string(), ts.to_string()),
        (HEADER_SIGNATURE.to_string(), sig),
    ])
}

/// The headers a `v1a` (Ed25519) sender with private key `key` sends for `req`.
pub fn sign_with_key(key: &SigningKey, req: &SignRequest<'_>) -> Vec<(String, String)> {
    let id = message_id(req.body);
    let ts = req.now.unix_timestamp().to_string();
    let sig = key.sign(&signed_content(&id, &ts, req.body));
    vec![
        (HEADER_ID.to_string(), id),
        (HEADER_TIMESTAMP.to_string(), ts),
        (
            HEADER_SIGNATURE.to_string(),
            format!("v1a,{}", STANDARD.encode(sig.to_bytes())),
        ),
    ]
}

/// A verified request with the given headers, for the normalizer's tests (which need
/// `webhook-id`); only the verify tree can build one.
#[cfg(test)]
pub(crate) fn verified_for_tests(headers: super::Headers, body: Vec<u8>) -> Verified {
    Unverified::new(headers, bytes::Bytes::from(body)).into_verified()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Headers, Method};
    use time::OffsetDateTime;

    // Published vector: standard-webhooks/standard-webhooks @ b2fa7b87,
    // libraries/go/webhook_test.go (the same values are in the C# and Java tests).
    const VEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VEC_TS: i64 = 1614265330;
    const VEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(ts: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(ts).unwrap()
    }

    fn pk(seed: u8) -> String {
        format!(
            "whpk_{}",
            STANDARD.encode(
                SigningKey::from_bytes(&[seed; 32])
                    .verifying_key()
                    .as_bytes()
            )
        )
    }

    fn config(secrets: &[&str], public_keys: &[String]) -> StandardSourceConfig {
        let q = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let toml = format!(
            "[tenants.acme]\n[sources.sw]\nprovider = \"standard\"\ntenant = \"acme\"\nsecrets = [{}]\npublic_keys = [{}]\n",
            q(&secrets),
            q(public_keys)
        );
        match crate::config::Config::from_toml(&toml)
            .unwrap()
            .sources
            .remove("sw")
            .unwrap()
        {
            crate::config::SourceConfig::Standard(c) => c,
            _ => unreachable!(),
        }
    }

    fn headers(id: &str, ts: &str, sig: &str) -> Vec<(String, String)> {
        vec![
            (HEADER_ID.into(), id.into()),
            (HEADER_TIMESTAMP.into(), ts.into()),
            (HEADER_SIGNATURE.into(), sig.into()),
        ]
    }

    fn check(
        h: &[(String, String)],
        body: &[u8],
        now: OffsetDateTime,
        c: &StandardSourceConfig,
    ) -> Result<(), VerifyError> {
        let mut hh = Headers::new();
        for (n, v) in h {
            hh.insert(n, v);
        }
        let req = Unverified::new(hh, bytes::Bytes::copy_from_slice(body)).with_now(now);
        verify(req, &Keys::from_config(c)).map(|_| ())
    }

    fn sreq(body: &[u8], now: OffsetDateTime) -> SignRequest<'_> {
        SignRequest {
            method: Method::Post,
            url: "https://hooks.example.com/webhooks/sw",
            body,
            now,
        }
    }

    #[test]
    fn published_vector() {
        assert_eq!(
            sign_v1(VEC_SECRET, VEC_ID, VEC_TS, VEC_BODY).unwrap(),
            VEC_SIG
        );
        let c = config(&[VEC_SECRET], &[]);
        let h = headers(VEC_ID, &VEC_TS.to_string(), VEC_SIG);
        assert_eq!(check(&h, VEC_BODY, at(VEC_TS), &c), Ok(()));
        // The go test's negative cases: tampered id, timestamp, body, signature.
        let h2 = headers("msg_p5jXN8AQM9LWM0D4loKWxJeK", &VEC_TS.to_string(), VEC_SIG);
        assert_eq!(
            check(&h2, VEC_BODY, at(VEC_TS), &c),
            Err(VerifyError::Mismatch)
        );
        let h3 = headers(VEC_ID, &(VEC_TS + 1).to_string(), VEC_SIG);
        assert_eq!(
            check(&h3, VEC_BODY, at(VEC_TS), &c),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&h, br#"{"test": 2432232315}"#, at(VEC_TS), &c),
            Err(VerifyError::Mismatch)
        );
        // Too old / too new (5 minutes + 1 s either side).
        assert_eq!(
            check(&h, VEC_BODY, at(VEC_TS + 301), &c),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            check(&h, VEC_BODY, at(VEC_TS - 301), &c),
            Err(VerifyError::Expired)
        );
        assert_eq!(check(&h, VEC_BODY, at(VEC_TS + 300), &c), Ok(()));
    }

    #[test]
    fn signature_lists_and_rotation() {
        let c = config(&[VEC_SECRET], &[]);
        let ts = VEC_TS.to_string();
        let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let wrong = sign_v1(other, VEC_ID, VEC_TS, VEC_BODY).unwrap();
        // A list with an unknown version, a wrong signature and the right one.
        let list = format!("v2,abc {wrong} {VEC_SIG}");
        assert_eq!(
            check(&headers(VEC_ID, &ts, &list), VEC_BODY, at(VEC_TS), &c),
            Ok(())
        );
        // Only the wrong one.
        assert_eq!(
            check(&headers(VEC_ID, &ts, &wrong), VEC_BODY, at(VEC_TS), &c),
            Err(VerifyError::Mismatch)
        );
        // Rotation on our side: the second configured secret is accepted.
        let c2 = config(&[other, VEC_SECRET], &[]);
        assert_eq!(
            check(&headers(VEC_ID, &ts, VEC_SIG), VEC_BODY, at(VEC_TS), &c2),
            Ok(())
        );
        assert_eq!(
            check(&headers(VEC_ID, &ts, &wrong), VEC_BODY, at(VEC_TS), &c2),
            Ok(())
        );
    }

    #[test]
    fn sign_round_trip_v1() {
        let c = config(&[VEC_SECRET], &[]);
        let now = at(1767225600);
        let body = br#"{"type":"message.received","timestamp":"2026-01-01T00:00:00Z","data":{}}"#;
        let h = sign(&c, &sreq(body, now)).unwrap();
        assert!(h[0].1.starts_with("msg_") && h[2].1.starts_with("v1,"));
        assert_eq!(check(&h, body, now, &c), Ok(()));
        // Retries of the same body keep the same webhook-id.
        assert_eq!(
            sign(&c, &sreq(body, now + time::Duration::minutes(5))).unwrap()[0],
            h[0]
        );
    }

    #[test]
    fn v1a_ed25519() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let now = at(1767225600);
        let body = br#"{"type":"x","data":{}}"#;
        let h = sign_with_key(&key, &sreq(body, now));
        assert!(h[2].1.starts_with("v1a,"));
        assert_eq!(check(&h, body, now, &config(&[], &[pk(3)])), Ok(()));
        // Rotation: any configured public key.
        assert_eq!(check(&h, body, now, &config(&[], &[pk(4), pk(3)])), Ok(()));
        assert_eq!(
            check(&h, body, now, &config(&[], &[pk(4)])),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&h, b"{}", now, &config(&[], &[pk(3)])),
            Err(VerifyError::Mismatch)
        );
        // A v1a signature to a source with only whsec_ secrets: that algorithm is not enabled.
        assert_eq!(
            check(&h, body, now, &config(&[VEC_SECRET], &[])),
            Err(VerifyError::AlgorithmDisabled)
        );
        // And the reverse.
        let v1 = headers(VEC_ID, &VEC_TS.to_string(), VEC_SIG);
        assert_eq!(
            check(&v1, VEC_BODY, at(VEC_TS), &config(&[], &[pk(3)])),
            Err(VerifyError::AlgorithmDisabled)
        );
        // Both kinds configured, both signatures listed: fine.
        let both = format!("{} {}", VEC_SIG, h[2].1);
        let c = config(&[VEC_SECRET], &[pk(3)]);
        let hb = headers(&h[0].1, &h[1].1, &both);
        assert_eq!(check(&hb, body, now, &c), Ok(()));
        assert!(sign(&config(&[], &[pk(3)]), &sreq(body, now))
            .unwrap_err()
            .contains("sign_with_key"));
    }

    #[test]
    fn missing_and_malformed() {
        let c = config(&[VEC_SECRET], &[]);
        let ts = VEC_TS.to_string();
        let now = at(VEC_TS);
        let full = headers(VEC_ID, &ts, VEC_SIG);
        for skip in 0..3 {
            let mut h = full.clone();
            h.remove(skip);
            assert_eq!(
                check(&h, VEC_BODY, now, &c),
                Err(VerifyError::Missing),
                "{skip}"
            );
        }
        for bad_ts in [
            "",
            "abc",
            "1614265330.0",
            "-1614265330",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(&headers(VEC_ID, bad_ts, VEC_SIG), VEC_BODY, now, &c),
                Err(VerifyError::Malformed),
                "{bad_ts}"
            );
        }
        let long_id = "m".repeat(300);
        assert_eq!(
            check(&headers(&long_id, &ts, VEC_SIG), VEC_BODY, now, &c),
            Err(VerifyError::Malformed)
        );
        let huge = format!("v1,{}", "A".repeat(10_000));
        for bad_sig in [
            "v1",
            "v1,",
            "v1,@@@",
            "v1,AAAA",
            huge.as_str(),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                check(&headers(VEC_ID, &ts, bad_sig), VEC_BODY, now, &c),
                Err(VerifyError::Malformed),
                "{bad_sig:.20}"
            );
        }
        // Nothing checkable: empty list, or only versions we do not know.
        for nothing in ["", "   ", "v2,abc v0,xyz"] {
            assert_eq!(
                check(&headers(VEC_ID, &ts, nothing), VEC_BODY, now, &c),
                Err(VerifyError::Missing),
                "{nothing}"
            );
        }
        // A valid signature after 16 junk entries is not examined.
        let padded = format!("{}{VEC_SIG}", "v2,x ".repeat(16));
        assert_eq!(
            check(&headers(VEC_ID, &ts, &padded), VEC_BODY, now, &c),
            Err(VerifyError::Missing)
        );
    }

    #[test]
    fn keys_debug_never_prints_secrets() {
        let k = Keys::from_config(&config(&[VEC_SECRET], &[]));
        let dbg = format!("{k:?}");
        assert!(dbg.contains("[redacted]") && !dbg.contains("49"), "{dbg}");
    }
}
