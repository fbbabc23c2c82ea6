//! Sinch Conversation API and SMS events (`x-sinch-webhook-signature`): signature verification.
//!
//! `x-sinch-webhook-signature` = base64 HMAC-SHA256(webhook secret,
//! raw body + "." + `x-sinch-webhook-signature-nonce` + "." + `x-sinch-webhook-signature-timestamp`),
//! with `x-sinch-webhook-signature-algorithm: HmacSHA256` (the only algorithm Sinch names; any
//! other value is refused). The official SDK checks no timestamp, so a captured request would
//! verify forever: the source's replay window is enforced here on the signed timestamp (unix
//! seconds). Every configured secret is tried; MACs compare in constant time.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{within_window, SignRequest, Unverified, Verified, VerifyError};
use crate::config::sinch::SinchSourceConfig;
use crate::crypto::Secret;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[
    HEADER_SIGNATURE,
    HEADER_NONCE,
    HEADER_TIMESTAMP,
    HEADER_ALGORITHM,
];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

pub const HEADER_SIGNATURE: &str = "x-sinch-webhook-signature";
pub const HEADER_NONCE: &str = "x-sinch-webhook-signature-nonce";
pub const HEADER_TIMESTAMP: &str = "x-sinch-webhook-signature-timestamp";
pub const HEADER_ALGORITHM: &str = "x-sinch-webhook-signature-algorithm";
/// The algorithm name Sinch sends.
pub const ALGORITHM: &str = "HmacSHA256";
/// Sinch nonces are ULIDs (26 characters); anything far longer is not one.
const MAX_NONCE_LEN: usize = 256;

/// What a Sinch source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    secrets: Vec<Secret>,
    replay_window: Duration,
}

impl Keys {
    pub fn from_config(c: &SinchSourceConfig) -> Keys {
        Keys {
            secrets: c.secrets.clone(),
            replay_window: Duration::from_secs(c.replay_window_secs),
        }
    }
}

fn mac(secret: &[u8], body: &[u8], nonce: &str, timestamp: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.update(b".");
    mac.update(nonce.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let h = req.headers();
    let (Some(signature), Some(nonce), Some(timestamp)) = (
        h.get(HEADER_SIGNATURE),
        h.get(HEADER_NONCE),
        h.get(HEADER_TIMESTAMP),
    ) else {
        return Err(VerifyError::Missing);
    };
    if let Some(alg) = h.get(HEADER_ALGORITHM) {
        if !alg.trim().eq_ignore_ascii_case(ALGORITHM) {
            return Err(VerifyError::AlgorithmDisabled);
        }
    }
    // The nonce and timestamp are signed as sent: no trimming.
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err(VerifyError::Malformed);
    }
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
    let ok = keys.secrets.iter().any(|s| {
        mac(s.expose().as_bytes(), req.body(), nonce, timestamp)
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

/// The `x-sinch-webhook-signature` value for `body`, `nonce` and `timestamp`.
pub fn signature(secret: &str, body: &[u8], nonce: &str, timestamp: &str) -> String {
    STANDARD.encode(
        mac(secret.as_bytes(), body, nonce, timestamp)
            .finalize()
            .into_bytes(),
    )
}

/// The headers a Sinch request for `req` carries, signed with the source's current secret
/// (for `switchboard sign`, tests and the load harness). The nonce is fresh each time.
pub fn sign(c: &SinchSourceConfig, req: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let secret = c.secrets.first().ok_or("the source has no secrets")?;
    let nonce = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase();
    let ts = req.now.unix_timestamp().to_string();
    Ok(vec![
        (
            HEADER_SIGNATURE.to_string(),
            signature(secret.expose(), req.body, &nonce, &ts),
        ),
        (HEADER_NONCE.to_string(), nonce),
        (HEADER_TIMESTAMP.to_string(), ts),
        (HEADER_ALGORITHM.to_string(), ALGORITHM.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use time::OffsetDateTime;

    use super::*;
    use crate::verify::{Headers, Method};

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);
    const BODY: &[u8] = br#"{"app_id":"01EB37HMH1M6SV18BSNS3G135H","message_delivery_report":{"message_id":"m1","status":"DELIVERED"}}"#;
    const NONCE: &str = "01FJA8B4A7BM43YGWSG9GBV067";

    fn keys(secrets: &[&str]) -> Keys {
        Keys {
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            replay_window: Duration::from_secs(300),
        }
    }

    fn req(headers: &[(&str, String)], body: &[u8], now: OffsetDateTime) -> Unverified {
        let mut h = Headers::new();
        for (n, v) in headers {
            h.insert(n, v);
        }
        Unverified::new(h, bytes::Bytes::copy_from_slice(body))
            .with_url("https://hooks.example.com/webhooks/sinch_main")
            .with_now(now)
    }

    fn signed(secret: &str, body: &[u8], ts: i64) -> Vec<(&'static str, String)> {
        let ts = ts.to_string();
        vec![
            (HEADER_SIGNATURE, signature(secret, body, NONCE, &ts)),
            (HEADER_NONCE, NONCE.to_string()),
            (HEADER_TIMESTAMP, ts),
            (HEADER_ALGORITHM, ALGORITHM.to_string()),
        ]
    }

    fn check(h: &[(&'static str, String)], body: &[u8]) -> Result<Verified, VerifyError> {
        verify(req(h, body, NOW), &keys(&["old", "new"]))
    }

    /// sinch/sinch-sdk-python@5fb7173cf71ed3b8d97a5841ff0d8ce534c9fd95
    /// `tests/unit/domains/conversation/v1/sinch_events/test_conversation_sinch_event.py`
    /// (`sample_body`, `VALID_SIGNATURE_HEADERS`, secret `foo_secret1234`). The SDK checks no
    /// timestamp; we pin `now` at the signed one, and show the replay window refusing it today.
    #[test]
    fn published_sdk_vector() {
        let body = concat!(
            r#"{"app_id":"01EB37HMH1M6SV18BSNS3G135H","accepted_time":"2020-11-17T15:09:11.659Z","#,
            r#""project_id":"c36f3d3d-1513-2edd-ae42-11995557ff61","#,
            r#""message_delivery_report":{"message_id":"01EQBC1A3BEK731GY4YXEN0C2R","#,
            r#""conversation_id":"01EPYATA64TMNZ1FV02JKF12JF","status":"QUEUED_ON_CHANNEL","#,
            r#""contact_id":"01EXA07N79THJ20WSN6AS30TMW"}}"#
        );
        let sig = "Yc+3R1pIS78xLASybulhs8BsSo9BPB3Pr92QCUoczfk=";
        assert_eq!(
            signature("foo_secret1234", body.as_bytes(), NONCE, "1634579353"),
            sig
        );
        let headers = [
            (HEADER_SIGNATURE, sig.to_string()),
            (HEADER_NONCE, NONCE.to_string()),
            (HEADER_TIMESTAMP, "1634579353".to_string()),
        ];
        let k = keys(&["foo_secret1234"]);
        let then = OffsetDateTime::from_unix_timestamp(1634579353).unwrap();
        assert!(verify(req(&headers, body.as_bytes(), then), &k).is_ok());
        assert_eq!(
            verify(req(&headers, body.as_bytes(), NOW), &k).unwrap_err(),
            VerifyError::Expired
        );
        // The SDK's own negative cases: no headers, signature "invalid".
        assert_eq!(
            verify(req(&[], body.as_bytes(), then), &k).unwrap_err(),
            VerifyError::Missing
        );
        let mut bad = headers.clone();
        bad[0].1 = "invalid".to_string();
        assert_eq!(
            verify(req(&bad, body.as_bytes(), then), &k).unwrap_err(),
            VerifyError::Malformed
        );
    }

    #[test]
    fn valid_rotated_and_wrong_secret() {
        let n = NOW.unix_timestamp();
        assert!(check(&signed("old", BODY, n), BODY).is_ok());
        assert!(check(&signed("new", BODY, n), BODY).is_ok());
        assert_eq!(
            check(&signed("other", BODY, n), BODY).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn tampered_body_nonce_or_timestamp() {
        let n = NOW.unix_timestamp();
        let h = signed("new", BODY, n);
        let other = br#"{"app_id":"01EB37HMH1M6SV18BSNS3G135H","message_delivery_report":{"message_id":"m1","status":"FAILED"}}"#;
        assert_eq!(check(&h, other).unwrap_err(), VerifyError::Mismatch);
        // Re-serialized JSON (whitespace) is not the signed body.
        let spaced = String::from_utf8_lossy(BODY).replace(':', ": ");
        assert_eq!(
            check(&h, spaced.as_bytes()).unwrap_err(),
            VerifyError::Mismatch
        );
        let mut nonce = h.clone();
        nonce[1].1 = "01FJA8B4A7BM43YGWSG9GBV068".into();
        assert_eq!(check(&nonce, BODY).unwrap_err(), VerifyError::Mismatch);
        let mut ts = h.clone();
        ts[2].1 = (n + 1).to_string();
        assert_eq!(check(&ts, BODY).unwrap_err(), VerifyError::Mismatch);
    }

    #[test]
    fn replay_window_either_side() {
        let n = NOW.unix_timestamp();
        for skew in [-300, 300] {
            assert!(
                check(&signed("new", BODY, n + skew), BODY).is_ok(),
                "{skew}"
            );
        }
        for skew in [-301, 301, -86_400] {
            assert_eq!(
                check(&signed("new", BODY, n + skew), BODY).unwrap_err(),
                VerifyError::Expired,
                "{skew}"
            );
        }
    }

    #[test]
    fn missing_malformed_and_other_algorithms() {
        let n = NOW.unix_timestamp();
        let h = signed("new", BODY, n);
        for drop in 0..3 {
            let mut partial = h.clone();
            partial.remove(drop);
            assert_eq!(
                check(&partial, BODY).unwrap_err(),
                VerifyError::Missing,
                "{drop}"
            );
        }
        // The algorithm header is optional (the SDK ignores it), but if sent must be ours.
        assert!(check(&h[..3], BODY).is_ok());
        let mut lower = h.clone();
        lower[3].1 = "hmacsha256".into();
        assert!(check(&lower, BODY).is_ok());
        for alg in ["HmacSHA1", "none", ""] {
            let mut other = h.clone();
            other[3].1 = alg.into();
            assert_eq!(
                check(&other, BODY).unwrap_err(),
                VerifyError::AlgorithmDisabled,
                "{alg}"
            );
        }
        for (i, bad) in [
            (0, ""),
            (0, "not base64!"),
            (0, "AAAA"),
            (1, ""),
            (2, ""),
            (2, "16345793.53"),
            (2, " 1634579353"),
            (2, "99999999999999999999"),
        ] {
            let mut m = h.clone();
            m[i].1 = bad.to_string();
            assert_eq!(
                check(&m, BODY).unwrap_err(),
                VerifyError::Malformed,
                "{i} {bad:?}"
            );
        }
        let mut huge = h.clone();
        huge[1].1 = "N".repeat(10_000);
        assert_eq!(check(&huge, BODY).unwrap_err(), VerifyError::Malformed);
    }

    #[test]
    fn sign_produces_what_verify_accepts() {
        let toml = "[tenants.acme]\n[sources.sinch_main]\nprovider = \"sinch\"\ntenant = \"acme\"\nsecrets = [\"new\"]\n";
        let c = crate::config::Config::from_toml(toml).unwrap();
        let crate::config::SourceConfig::Sinch(c) = &c.sources["sinch_main"] else {
            panic!()
        };
        let headers = sign(
            c,
            &SignRequest {
                method: Method::Post,
                url: "https://hooks.example.com/webhooks/sinch_main",
                body: BODY,
                now: NOW,
            },
        )
        .unwrap();
        let h: Vec<(&str, String)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        assert!(verify(req(&h, BODY, NOW), &Keys::from_config(c)).is_ok());
    }
}
