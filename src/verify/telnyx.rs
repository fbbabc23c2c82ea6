//! Telnyx Messaging (API v2 webhooks): Ed25519 signature verification.
//!
//! Telnyx signs `"{telnyx-timestamp}|{raw body}"` with the account's Ed25519 private key and
//! sends the 64-byte signature base64-encoded in `telnyx-signature-ed25519`, the unix time in
//! seconds in `telnyx-timestamp`. The signed string uses the timestamp header exactly as sent
//! and the body exactly as received (re-serialized JSON does not verify). Every configured
//! public key is tried (rotation), each with `verify_strict` (rejects small-order keys and
//! non-canonical signatures); the timestamp must lie within the source's replay window
//! (`replay_window_secs`, default 300 s: the tolerance of Telnyx's SDKs), either side.
//!
//! The configuration holds only public keys, so [`sign`] cannot produce a signature; tests,
//! `switchboard sign` users and the load harness use [`sign_with_key`] with a private key.
//! Telnyx publishes no fixed signature vector; the tests use a key pair derived from a fixed
//! seed (see `tests`).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{within_window, SignRequest, Unverified, Verified, VerifyError};
use crate::config::telnyx::{parse_public_key, TelnyxSourceConfig};

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
pub const HEADER_SIGNATURE: &str = "telnyx-signature-ed25519";
pub const HEADER_TIMESTAMP: &str = "telnyx-timestamp";
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[HEADER_SIGNATURE, HEADER_TIMESTAMP];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

/// Longest header value examined: a base64 Ed25519 signature is 88 characters.
const MAX_SIGNATURE_HEADER: usize = 256;

/// What a Telnyx source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The configured public keys that parse (validation refuses a config with any that
    /// does not, so in practice all of them).
    public_keys: Vec<VerifyingKey>,
    replay_window: Duration,
}

impl Keys {
    pub fn from_config(c: &TelnyxSourceConfig) -> Keys {
        Keys {
            public_keys: c
                .public_keys
                .iter()
                .filter_map(|k| parse_public_key(k).ok())
                .collect(),
            replay_window: Duration::from_secs(c.replay_window_secs),
        }
    }
}

/// A unix timestamp header: ASCII digits only (as Telnyx sends it), at most 18 of them.
fn parse_timestamp(value: &str) -> Result<i64, VerifyError> {
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed);
    }
    value.parse().map_err(|_| VerifyError::Malformed)
}

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let sig_header = req
        .headers()
        .get(HEADER_SIGNATURE)
        .ok_or(VerifyError::Missing)?;
    let ts_header = req
        .headers()
        .get(HEADER_TIMESTAMP)
        .ok_or(VerifyError::Missing)?;
    let ts = parse_timestamp(ts_header)?;
    let sig_text = sig_header.trim();
    if sig_text.is_empty() || sig_text.len() > MAX_SIGNATURE_HEADER {
        return Err(VerifyError::Malformed);
    }
    let sig_bytes = STANDARD
        .decode(sig_text)
        .map_err(|_| VerifyError::Malformed)?;
    let sig_bytes: [u8; 64] = sig_bytes.try_into().map_err(|_| VerifyError::Malformed)?;
    let signature = Signature::from_bytes(&sig_bytes);
    if !within_window(ts, req.now(), keys.replay_window) {
        return Err(VerifyError::Expired);
    }
    let message = signed_message(ts_header, req.body());
    let ok = keys
        .public_keys
        .iter()
        .any(|k| k.verify_strict(&message, &signature).is_ok());
    if ok {
        Ok(req.into_verified())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// `{timestamp}|{body}`, the bytes Telnyx signs.
fn signed_message(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + 1 + body.len());
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'|');
    m.extend_from_slice(body);
    m
}

/// Telnyx signs with a private key the configuration does not hold: use [`sign_with_key`].
pub fn sign(
    _c: &TelnyxSourceConfig,
    _req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, String> {
    Err(
        "Telnyx signs webhooks with its Ed25519 private key; a telnyx source holds only public \
         keys, so it cannot sign. Use verify::telnyx::sign_with_key with a test private key \
         (and configure its public key in public_keys)"
            .into(),
    )
}

/// The headers Telnyx would send for `req`, signed with `key` at `req.now`.
pub fn sign_with_key(key: &SigningKey, req: &SignRequest<'_>) -> Vec<(String, String)> {
    let ts = req.now.unix_timestamp().to_string();
    let sig = key.sign(&signed_message(&ts, req.body));
    vec![
        (
            HEADER_SIGNATURE.to_string(),
            STANDARD.encode(sig.to_bytes()),
        ),
        (HEADER_TIMESTAMP.to_string(), ts),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Headers, Method};
    use time::macros::datetime;
    use time::OffsetDateTime;

    // Telnyx publishes no fixed Ed25519 vector (team-telnyx/telnyx-python @ 6d68c8ca has none:
    // its generated tests/api_resources/test_webhooks.py exercises Standard Webhooks HMAC).
    // These tests therefore use deterministic key pairs from fixed seeds, signing exactly as
    // Telnyx documents (research/sigs/telnyx_sig.py does the same with PyNaCl).
    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public_b64(seed: u8) -> String {
        STANDARD.encode(key(seed).verifying_key().as_bytes())
    }

    fn config(seeds: &[u8]) -> TelnyxSourceConfig {
        let keys: Vec<String> = seeds
            .iter()
            .map(|s| format!("\"{}\"", public_b64(*s)))
            .collect();
        let toml = format!(
            "[tenants.acme]\n[sources.tx]\nprovider = \"telnyx\"\ntenant = \"acme\"\npublic_keys = [{}]\n",
            keys.join(",")
        );
        match crate::config::Config::from_toml(&toml)
            .unwrap()
            .sources
            .remove("tx")
            .unwrap()
        {
            crate::config::SourceConfig::Telnyx(c) => c,
            _ => unreachable!(),
        }
    }

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);
    const BODY: &[u8] = br#"{"data":{"event_type":"message.received","id":"b301ed3f","payload":{"text":"Hello"}},"meta":{"attempt":1}}"#;

    fn signed(seed: u8, body: &[u8], at: OffsetDateTime) -> Vec<(String, String)> {
        sign_with_key(
            &key(seed),
            &SignRequest {
                method: Method::Post,
                url: "https://hooks.example.com/webhooks/tx",
                body,
                now: at,
            },
        )
    }

    fn request(headers: &[(String, String)], body: &[u8]) -> Unverified {
        let mut h = Headers::new();
        for (n, v) in headers {
            h.insert(n, v);
        }
        Unverified::new(h, bytes::Bytes::copy_from_slice(body)).with_now(NOW)
    }

    fn check(headers: &[(String, String)], body: &[u8], seeds: &[u8]) -> Result<(), VerifyError> {
        verify(request(headers, body), &Keys::from_config(&config(seeds))).map(|_| ())
    }

    #[test]
    fn fixed_seed_key_pair_signs_ts_pipe_body() {
        // The documented construction, checked independently of sign_with_key.
        let ts = "1767225600"; // 2026-01-01T00:00:00Z
        let mut msg = ts.as_bytes().to_vec();
        msg.push(b'|');
        msg.extend_from_slice(BODY);
        let sig = key(7).sign(&msg);
        let headers = vec![
            (
                HEADER_SIGNATURE.to_string(),
                STANDARD.encode(sig.to_bytes()),
            ),
            (HEADER_TIMESTAMP.to_string(), ts.to_string()),
        ];
        assert_eq!(headers, signed(7, BODY, NOW));
        assert_eq!(check(&headers, BODY, &[7]), Ok(()));
        // Ed25519 is deterministic: the same seed and message always give this signature.
        assert_eq!(headers[0].1.len(), 88);
    }

    #[test]
    fn valid_tampered_wrong_key_and_rotation() {
        let h = signed(7, BODY, NOW);
        assert_eq!(check(&h, BODY, &[7]), Ok(()));
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(check(&h, &tampered, &[7]), Err(VerifyError::Mismatch));
        // Re-serialized JSON (spaces added) does not verify: only the raw bytes do.
        let reserialized =
            serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(BODY).unwrap())
                .unwrap();
        assert_eq!(check(&h, &reserialized, &[7]), Err(VerifyError::Mismatch));
        assert_eq!(check(&h, BODY, &[8]), Err(VerifyError::Mismatch));
        // Rotation: the old and the new key are both accepted.
        assert_eq!(check(&h, BODY, &[8, 7]), Ok(()));
        assert_eq!(check(&signed(8, BODY, NOW), BODY, &[8, 7]), Ok(()));
    }

    #[test]
    fn timestamp_is_signed_and_windowed() {
        // A signature moved to another timestamp fails.
        let mut h = signed(7, BODY, NOW);
        h[1].1 = (NOW.unix_timestamp() + 1).to_string();
        assert_eq!(check(&h, BODY, &[7]), Err(VerifyError::Mismatch));
        // Edges of the 300 s window, both sides.
        for offset in [-300i64, 300] {
            let at = NOW + time::Duration::seconds(offset);
            assert_eq!(check(&signed(7, BODY, at), BODY, &[7]), Ok(()), "{offset}");
        }
        for offset in [-301i64, 301, -86_400] {
            let at = NOW + time::Duration::seconds(offset);
            assert_eq!(
                check(&signed(7, BODY, at), BODY, &[7]),
                Err(VerifyError::Expired),
                "{offset}"
            );
        }
    }

    #[test]
    fn missing_and_malformed_headers() {
        let h = signed(7, BODY, NOW);
        assert_eq!(check(&h[..1], BODY, &[7]), Err(VerifyError::Missing));
        assert_eq!(check(&h[1..], BODY, &[7]), Err(VerifyError::Missing));
        assert_eq!(check(&[], BODY, &[7]), Err(VerifyError::Missing));
        let huge = "A".repeat(100_000);
        for bad_sig in [
            "",
            "not base64 !",
            "AAAA",
            &STANDARD.encode([0u8; 63]),
            &STANDARD.encode([0u8; 65]),
            huge.as_str(),
        ] {
            let hh = vec![(h[0].0.clone(), bad_sig.to_string()), h[1].clone()];
            assert_eq!(
                check(&hh, BODY, &[7]),
                Err(VerifyError::Malformed),
                "{bad_sig:.20}"
            );
        }
        for bad_ts in [
            "",
            "abc",
            "-5",
            "1767225600.5",
            " 1767225600",
            "99999999999999999999",
        ] {
            let hh = vec![
                h[0].clone(),
                (HEADER_TIMESTAMP.to_string(), bad_ts.to_string()),
            ];
            assert_eq!(
                check(&hh, BODY, &[7]),
                Err(VerifyError::Malformed),
                "{bad_ts}"
            );
        }
        // An all-zero signature of the right length parses, and fails as a mismatch.
        let zero = vec![
            (HEADER_SIGNATURE.to_string(), STANDARD.encode([0u8; 64])),
            h[1].clone(),
        ];
        assert_eq!(check(&zero, BODY, &[7]), Err(VerifyError::Mismatch));
    }

    #[test]
    fn sign_without_private_key_explains() {
        let err = sign(
            &config(&[7]),
            &SignRequest {
                method: Method::Post,
                url: "https://x/webhooks/tx",
                body: BODY,
                now: NOW,
            },
        )
        .unwrap_err();
        assert!(err.contains("sign_with_key"), "{err}");
    }
}
