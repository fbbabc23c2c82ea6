//! Bird (bird.com Channels/Notifications API): `messagebird-signature` verification.
//!
//! `messagebird-signature` = base64 HMAC-SHA256(subscription signing key,
//! `messagebird-request-timestamp` + "\n" + the URL Bird called + "\n" + raw SHA-256 digest of
//! the body) (docs.bird.com, notifications-api → webhooks → verifying a webhook). The URL is
//! taken exactly as received (`req.url()`): scheme, host, port, path and query as Bird sent
//! them. Bird ships no SDK verifier and no tolerance for the timestamp: the source's replay
//! window is enforced here. Every configured key is tried; MACs compare in constant time.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{within_window, SignRequest, Unverified, Verified, VerifyError};
use crate::config::bird::BirdSourceConfig;
use crate::crypto::Secret;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[HEADER_SIGNATURE, HEADER_TIMESTAMP];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

pub const HEADER_SIGNATURE: &str = "messagebird-signature";
pub const HEADER_TIMESTAMP: &str = "messagebird-request-timestamp";

/// What a Bird source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    signing_keys: Vec<Secret>,
    replay_window: Duration,
}

impl Keys {
    pub fn from_config(c: &BirdSourceConfig) -> Keys {
        Keys {
            signing_keys: c.signing_keys.clone(),
            replay_window: Duration::from_secs(c.replay_window_secs),
        }
    }
}

fn mac(key: &[u8], timestamp: &str, url: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(url.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(body));
    mac
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let (Some(signature), Some(timestamp)) = (
        req.headers().get(HEADER_SIGNATURE),
        req.headers().get(HEADER_TIMESTAMP),
    ) else {
        return Err(VerifyError::Missing);
    };
    let timestamp = timestamp.trim();
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(VerifyError::Malformed);
    }
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::Malformed)?;
    let signature = signature.trim();
    if signature.len() > 128 {
        return Err(VerifyError::Malformed);
    }
    let expected = STANDARD
        .decode(signature)
        .map_err(|_| VerifyError::Malformed)?;
    if expected.len() != 32 {
        return Err(VerifyError::Malformed);
    }
    let ok = keys.signing_keys.iter().any(|k| {
        mac(k.expose().as_bytes(), timestamp, req.url(), req.body())
            .verify_slice(&expected)
            .is_ok()
    });
    if !ok {
        return Err(VerifyError::Mismatch);
    }
    if !within_window(ts, req.now(), keys.replay_window) {
        return Err(VerifyError::Expired);
    }
    Ok(req.into_verified())
}

/// The `messagebird-signature` value Bird would send for this request.
pub fn signature(key: &str, timestamp: &str, url: &str, body: &[u8]) -> String {
    STANDARD.encode(
        mac(key.as_bytes(), timestamp, url, body)
            .finalize()
            .into_bytes(),
    )
}

/// The headers a Bird request for `req` carries, signed with the source's current key
/// (for `switchboard sign`, tests and the load harness).
pub fn sign(c: &BirdSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let key = c
        .signing_keys
        .first()
        .ok_or("the source has no signing_keys")?;
    if req.url.is_empty() {
        return Err("Bird signs the URL: give the public URL the provider calls".into());
    }
    let ts = req.now.unix_timestamp().to_string();
    Ok(vec![
        (
            "messagebird-signature".to_string(),
            signature(key.expose(), &ts, req.url, req.body),
        ),
        ("messagebird-request-timestamp".to_string(), ts),
    ])
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use time::OffsetDateTime;

    use super::*;
    use crate::verify::{Headers, Method};

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);
    const URL: &str = "https://hooks.example.com/webhooks/bird_main";
    const BODY: &[u8] = br#"{"service":"channels","event":"sms.inbound","payload":{"id":"x"}}"#;

    fn keys(secrets: &[&str]) -> Keys {
        Keys {
            signing_keys: secrets.iter().map(|s| Secret::new(*s)).collect(),
            replay_window: Duration::from_secs(300),
        }
    }

    fn req(headers: &[(&str, &str)], url: &str, body: &[u8], now: OffsetDateTime) -> Unverified {
        let mut h = Headers::new();
        for (n, v) in headers {
            h.insert(n, v);
        }
        Unverified::new(h, bytes::Bytes::copy_from_slice(body))
            .with_url(url)
            .with_now(now)
    }

    fn signed(key: &str, ts: i64, url: &str, body: &[u8]) -> [(&'static str, String); 2] {
        let ts = ts.to_string();
        [
            (HEADER_SIGNATURE, signature(key, &ts, url, body)),
            (HEADER_TIMESTAMP, ts),
        ]
    }

    fn check(
        h: &[(&'static str, String)],
        url: &str,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
        verify(req(&h, url, body, NOW), &keys(&["old", "new"]))
    }

    /// Bird publishes no test vector; this one was computed outside this code base with
    /// Python's `hmac`/`hashlib` from the documented formula
    /// (https://docs.bird.com/api/notifications-api/api-reference/webhooks/verifying-a-webhook):
    /// `b64(hmac_sha256(key, ts + "\n" + url + "\n" + sha256(body).digest()))`.
    #[test]
    fn independently_computed_vector() {
        let sig = "EntMuhdV/a72VudGufJt8b8SCFP+7BO5TDOGij6yLRM=";
        assert_eq!(
            signature("bird-signing-key-0001", "1719823259", URL, BODY),
            sig
        );
        let at = OffsetDateTime::from_unix_timestamp(1719823259).unwrap();
        let h = [(HEADER_SIGNATURE, sig), (HEADER_TIMESTAMP, "1719823259")];
        assert!(verify(req(&h, URL, BODY, at), &keys(&["bird-signing-key-0001"])).is_ok());
    }

    #[test]
    fn valid_rotated_and_wrong_key() {
        let n = NOW.unix_timestamp();
        assert!(check(&signed("old", n, URL, BODY), URL, BODY).is_ok());
        assert!(check(&signed("new", n, URL, BODY), URL, BODY).is_ok());
        assert!(check(&signed("new", n, URL, b""), URL, b"").is_ok());
        assert_eq!(
            check(&signed("other", n, URL, BODY), URL, BODY).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn tampered_body_or_url() {
        let n = NOW.unix_timestamp();
        let h = signed("new", n, URL, BODY);
        assert_eq!(
            check(
                &h,
                URL,
                br#"{"service":"channels","event":"sms.inbound","payload":{"id":"y"}}"#
            )
            .unwrap_err(),
            VerifyError::Mismatch
        );
        assert_eq!(check(&h, URL, b"").unwrap_err(), VerifyError::Mismatch);
        // The timestamp is signed too.
        let mut moved = h.clone();
        moved[1].1 = (n + 1).to_string();
        assert_eq!(check(&moved, URL, BODY).unwrap_err(), VerifyError::Mismatch);
    }

    #[test]
    fn url_is_signed_exactly_as_called() {
        let n = NOW.unix_timestamp();
        let with_query = "https://hooks.example.com/webhooks/bird_main?b=2&a=1";
        let h = signed("new", n, with_query, BODY);
        assert!(check(&h, with_query, BODY).is_ok());
        for variant in [
            "http://hooks.example.com/webhooks/bird_main?b=2&a=1",
            "https://hooks.example.com:443/webhooks/bird_main?b=2&a=1",
            "https://hooks.example.com/webhooks/bird_main/?b=2&a=1",
            "https://hooks.example.com/webhooks/bird_main?a=1&b=2",
            "https://hooks.example.com/webhooks/bird_main?b=3&a=1",
            "https://hooks.example.com/webhooks/bird_main",
        ] {
            assert_eq!(
                check(&h, variant, BODY).unwrap_err(),
                VerifyError::Mismatch,
                "{variant}"
            );
        }
        let with_port = "https://hooks.example.com:8443/webhooks/bird_main";
        assert!(check(&signed("new", n, with_port, BODY), with_port, BODY).is_ok());
    }

    #[test]
    fn replay_window_either_side() {
        let n = NOW.unix_timestamp();
        for skew in [-300, 0, 300] {
            assert!(
                check(&signed("new", n + skew, URL, BODY), URL, BODY).is_ok(),
                "{skew}"
            );
        }
        for skew in [-301, 301, -86_400] {
            assert_eq!(
                check(&signed("new", n + skew, URL, BODY), URL, BODY).unwrap_err(),
                VerifyError::Expired,
                "{skew}"
            );
        }
    }

    #[test]
    fn missing_and_malformed() {
        let n = NOW.unix_timestamp();
        let [sig, ts] = signed("new", n, URL, BODY);
        assert_eq!(check(&[], URL, BODY).unwrap_err(), VerifyError::Missing);
        assert_eq!(
            check(std::slice::from_ref(&sig), URL, BODY).unwrap_err(),
            VerifyError::Missing
        );
        assert_eq!(
            check(std::slice::from_ref(&ts), URL, BODY).unwrap_err(),
            VerifyError::Missing
        );
        for bad_ts in ["", "now", "-1", "1.5", "9999999999999999999999"] {
            let h = [sig.clone(), (HEADER_TIMESTAMP, bad_ts.to_string())];
            assert_eq!(
                check(&h, URL, BODY).unwrap_err(),
                VerifyError::Malformed,
                "{bad_ts}"
            );
        }
        for bad_sig in ["", "%%%", "AAAA", &"QUFB".repeat(1000)] {
            let h = [(HEADER_SIGNATURE, bad_sig.to_string()), ts.clone()];
            assert_eq!(check(&h, URL, BODY).unwrap_err(), VerifyError::Malformed);
        }
    }

    #[test]
    fn sign_produces_what_verify_accepts() {
        let toml = "[tenants.acme]\n[sources.bird_main]\nprovider = \"bird\"\ntenant = \"acme\"\nsigning_keys = [\"new\"]\n";
        let c = crate::config::Config::from_toml(toml).unwrap();
        let crate::config::SourceConfig::Bird(c) = &c.sources["bird_main"] else {
            panic!()
        };
        let headers = sign(
            c,
            &SignRequest {
                method: Method::Post,
                url: URL,
                body: BODY,
                now: NOW,
            },
        )
        .unwrap();
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert!(verify(req(&h, URL, BODY, NOW), &Keys::from_config(c)).is_ok());
    }
}
