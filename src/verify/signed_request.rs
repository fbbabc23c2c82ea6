//! Meta's `signed_request` (the data deletion callback's form parameter):
//! `base64url(HMAC-SHA256(app secret, payload)) "." payload`, where payload is
//! `base64url(JSON)` and the HMAC is over the still-encoded payload. Both parts come
//! without padding (tolerated when present).
//!
//! Checked against every configured app secret in constant time, then the JSON must say
//! `"algorithm": "HMAC-SHA256"`, carry a `user_id`, and not be expired (`expires` in the
//! past, or `issued_at` older than [`MAX_AGE_SECS`] or in the future past the skew).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::crypto::{ct_eq, Secret};

/// Oldest `issued_at` accepted: Meta sends the callback when the user asks; a day covers
/// its retries without letting a captured request be replayed forever.
pub const MAX_AGE_SECS: i64 = 86_400;
/// Clock skew tolerated for `issued_at` in the future.
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedRequestError {
    #[error("signed_request is malformed")]
    Malformed,
    #[error("signed_request signature does not match")]
    Mismatch,
    #[error("signed_request algorithm is not HMAC-SHA256")]
    Algorithm,
    #[error("signed_request has expired")]
    Expired,
}

impl SignedRequestError {
    /// For `switchboard_signature_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignedRequestError::Malformed => "malformed",
            SignedRequestError::Mismatch => "mismatch",
            SignedRequestError::Algorithm => "algorithm_disabled",
            SignedRequestError::Expired => "expired",
        }
    }
}

/// The verified content of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// App-scoped user id.
    pub user_id: String,
    pub issued_at: Option<i64>,
}

fn decode(part: &str) -> Result<Vec<u8>, SignedRequestError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| SignedRequestError::Malformed)
}

/// Verifies `signed` with any of `secrets` at `now`.
pub fn verify(
    signed: &str,
    secrets: &[Secret],
    now: OffsetDateTime,
) -> Result<SignedRequest, SignedRequestError> {
    let (sig, payload) = signed
        .trim()
        .split_once('.')
        .ok_or(SignedRequestError::Malformed)?;
    let sig = decode(sig)?;
    if sig.len() != 32 || payload.is_empty() {
        return Err(SignedRequestError::Malformed);
    }
    let mut matched = false;
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(payload.as_bytes());
        // Every secret is tried, so that the time taken does not say which one matched.
        matched |= ct_eq(&mac.finalize().into_bytes(), &sig);
    }
    if !matched {
        return Err(SignedRequestError::Mismatch);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&decode(payload)?).map_err(|_| SignedRequestError::Malformed)?;
    let algorithm = json.get("algorithm").and_then(|a| a.as_str()).unwrap_or("");
    if !algorithm.eq_ignore_ascii_case("HMAC-SHA256") {
        return Err(SignedRequestError::Algorithm);
    }
    let user_id = match json.get("user_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(SignedRequestError::Malformed),
    };
    let number = |k: &str| -> Result<Option<i64>, SignedRequestError> {
        match json.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or(SignedRequestError::Malformed),
        }
    };
    let now = now.unix_timestamp();
    let issued_at = number("issued_at")?;
    if let Some(t) = issued_at {
        if t < now - MAX_AGE_SECS || t > now + MAX_SKEW_SECS {
            return Err(SignedRequestError::Expired);
        }
    }
    if let Some(exp) = number("expires")? {
        // 0 is what Meta sends for "does not expire" on some signed requests.
        if exp != 0 && exp <= now {
            return Err(SignedRequestError::Expired);
        }
    }
    Ok(SignedRequest { user_id, issued_at })
}

/// Builds a signed request the way Meta does (tests and `switchboard sign`-style tools).
pub fn sign(secret: &str, payload: &serde_json::Value) -> String {
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body.as_bytes());
    format!(
        "{}.{body}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn secrets() -> Vec<Secret> {
        vec![Secret::new("old"), Secret::new("appsecret")]
    }

    #[test]
    fn valid_request_with_any_configured_secret() {
        let p = json!({"algorithm": "HMAC-SHA256", "issued_at": 1_700_000_000 - 10, "user_id": "218471"});
        let r = verify(&sign("appsecret", &p), &secrets(), now()).unwrap();
        assert_eq!(r.user_id, "218471");
        assert!(verify(&sign("old", &p), &secrets(), now()).is_ok());
        // Padding, as some encoders add it, is tolerated.
        let padded = sign("appsecret", &p).replacen('.', "=.", 1);
        assert!(verify(&padded, &secrets(), now()).is_ok());
    }

    /// Meta's documented example: payload and signature computed independently here with
    /// the documented rule (HMAC over the encoded payload, base64url without padding).
    #[test]
    fn matches_the_documented_construction() {
        let payload_json = r#"{"algorithm":"HMAC-SHA256","expires":1291840400,"issued_at":1291836800,"user_id":"218471"}"#;
        let payload = URL_SAFE_NO_PAD.encode(payload_json);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"appsecret").unwrap();
        mac.update(payload.as_bytes());
        let signed = format!(
            "{}.{payload}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        let at = OffsetDateTime::from_unix_timestamp(1291836800 + 60).unwrap();
        assert_eq!(verify(&signed, &secrets(), at).unwrap().user_id, "218471");
        // The same request after it expired.
        let later = OffsetDateTime::from_unix_timestamp(1291840400 + 1).unwrap();
        assert_eq!(
            verify(&signed, &secrets(), later),
            Err(SignedRequestError::Expired)
        );
    }

    #[test]
    fn tampered_wrong_secret_malformed_and_expired_are_refused() {
        let p = json!({"algorithm": "HMAC-SHA256", "issued_at": 1_700_000_000, "user_id": "1"});
        let good = sign("appsecret", &p);
        let (sig, _) = good.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(
            json!({"algorithm": "HMAC-SHA256", "issued_at": 1_700_000_000, "user_id": "2"})
                .to_string(),
        );
        assert_eq!(
            verify(&format!("{sig}.{other}"), &secrets(), now()),
            Err(SignedRequestError::Mismatch)
        );
        assert_eq!(
            verify(&sign("nope", &p), &secrets(), now()),
            Err(SignedRequestError::Mismatch)
        );
        for bad in ["", "abc", ".", "!!!.abc", "abc.def"] {
            assert_eq!(
                verify(bad, &secrets(), now()),
                Err(SignedRequestError::Malformed),
                "{bad}"
            );
        }
        let alg = json!({"algorithm": "HMAC-SHA1", "user_id": "1"});
        assert_eq!(
            verify(&sign("appsecret", &alg), &secrets(), now()),
            Err(SignedRequestError::Algorithm)
        );
        let no_user = json!({"algorithm": "HMAC-SHA256"});
        assert_eq!(
            verify(&sign("appsecret", &no_user), &secrets(), now()),
            Err(SignedRequestError::Malformed)
        );
        let old = json!({"algorithm": "HMAC-SHA256", "issued_at": 1_700_000_000 - MAX_AGE_SECS - 1, "user_id": "1"});
        assert_eq!(
            verify(&sign("appsecret", &old), &secrets(), now()),
            Err(SignedRequestError::Expired)
        );
        let expired = json!({"algorithm": "HMAC-SHA256", "expires": 1_699_999_999, "user_id": "1"});
        assert_eq!(
            verify(&sign("appsecret", &expired), &secrets(), now()),
            Err(SignedRequestError::Expired)
        );
    }
}
