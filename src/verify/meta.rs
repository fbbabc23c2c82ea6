//! Meta (WhatsApp Cloud API, Messenger, Instagram) signatures.
//!
//! `X-Hub-Signature-256: sha256=<hex>` is HMAC-SHA256 of the raw body under the app secret.
//! Meta signs the body as sent, with non-ASCII escaped as `\uXXXX` (and, in Messenger-era
//! payloads, `/` as `\/`, `@` as `\u0040`): only the raw bytes verify. Any configured secret
//! may match (rotation). The legacy `X-Hub-Signature: sha1=<hex>` is accepted only when the
//! source enables it, and never when a SHA-256 header is present.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::{Unverified, Verified, VerifyError};
use crate::crypto::Secret;

pub const HEADER_SHA256: &str = "x-hub-signature-256";
pub const HEADER_SHA1: &str = "x-hub-signature";

/// What a Meta source verifies with.
#[derive(Debug, Clone)]
pub struct MetaKeys {
    pub app_secrets: Vec<Secret>,
    pub allow_sha1: bool,
}

pub fn verify(req: Unverified, keys: &MetaKeys) -> Result<Verified, VerifyError> {
    if let Some(header) = req.headers().get(HEADER_SHA256) {
        let expected = parse_hex_header(header, "sha256=", 32)?;
        let body = req.body();
        let ok = keys.app_secrets.iter().any(|secret| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        });
        return if ok {
            Ok(req.into_verified())
        } else {
            Err(VerifyError::Mismatch)
        };
    }
    if let Some(header) = req.headers().get(HEADER_SHA1) {
        if !keys.allow_sha1 {
            return Err(VerifyError::AlgorithmDisabled);
        }
        let expected = parse_hex_header(header, "sha1=", 20)?;
        let body = req.body();
        let ok = keys.app_secrets.iter().any(|secret| {
            let mut mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        });
        return if ok {
            Ok(req.into_verified())
        } else {
            Err(VerifyError::Mismatch)
        };
    }
    Err(VerifyError::Missing)
}

fn parse_hex_header(value: &str, prefix: &str, len: usize) -> Result<Vec<u8>, VerifyError> {
    let value = value.trim();
    let hex_part = value
        .get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &value[prefix.len()..])
        .ok_or(VerifyError::Malformed)?;
    let bytes = hex::decode(hex_part).map_err(|_| VerifyError::Malformed)?;
    if bytes.len() != len {
        return Err(VerifyError::Malformed);
    }
    Ok(bytes)
}

/// `sha256=<hex>` for `body` under `secret`: what Meta would send. Used by `switchboard sign`,
/// the tests and the load harness.
pub fn sign_sha256(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<hex>`, the legacy header.
pub fn sign_sha1(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Headers;

    fn keys(secrets: &[&str], allow_sha1: bool) -> MetaKeys {
        MetaKeys {
            app_secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            allow_sha1,
        }
    }

    fn req(header: Option<(&str, &str)>, body: &[u8]) -> Unverified {
        let mut h = Headers::new();
        if let Some((n, v)) = header {
            h.insert(n, v);
        }
        Unverified::new(h, bytes::Bytes::copy_from_slice(body))
    }

    /// Test vector from whatsapp-api-js `test/index.test.js` (Secreto31126/whatsapp-api-js,
    /// MIT): app secret `YOUR_APP_SECRET`; the body as Meta puts it on the wire, with
    /// non-ASCII escaped as lowercase `\uXXXX`. See docs/protocols/meta.md, "Signature".
    const WAJS_BODY: &str = "Let's pretend this body is equal to the message object and can handle unicode characters like \\u307f\\u3069\\u308a\\u3044\\u308d and J'ai mang\\u00e9 des p\\u00e2tes";
    const WAJS_SIG: &str =
        "sha256=0363007aabdf1ab579f35936651a460fb5fa1aaf40df98b1264446b72cc96688";

    #[test]
    fn published_vector_verifies_on_raw_escaped_bytes() {
        let k = keys(&["YOUR_APP_SECRET"], false);
        assert!(verify(
            req(Some((HEADER_SHA256, WAJS_SIG)), WAJS_BODY.as_bytes()),
            &k
        )
        .is_ok());
        assert_eq!(
            sign_sha256("YOUR_APP_SECRET", WAJS_BODY.as_bytes()),
            WAJS_SIG
        );
        // The decoded text (what a re-serializer would hash) must not verify.
        let decoded = "Let's pretend this body is equal to the message object and can handle unicode characters like みどりいろ and J'ai mangé des pâtes";
        assert_eq!(
            verify(req(Some((HEADER_SHA256, WAJS_SIG)), decoded.as_bytes()), &k).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let k = keys(&["old", "new"], false);
        for s in ["old", "new"] {
            let sig = sign_sha256(s, body);
            assert!(verify(req(Some((HEADER_SHA256, &sig)), body), &k).is_ok());
        }
        let sig = sign_sha256("other", body);
        assert_eq!(
            verify(req(Some((HEADER_SHA256, &sig)), body), &k).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn malformed_and_missing() {
        let k = keys(&["s"], false);
        for bad in [
            "",
            "sha256=",
            "sha256=zz",
            "sha1=00",
            "md5=abcd",
            "sha256=abcd",
        ] {
            assert_eq!(
                verify(req(Some((HEADER_SHA256, bad)), b"{}"), &k).unwrap_err(),
                VerifyError::Malformed,
                "{bad}"
            );
        }
        assert_eq!(
            verify(req(None, b"{}"), &k).unwrap_err(),
            VerifyError::Missing
        );
    }

    #[test]
    fn sha1_only_when_enabled_and_never_over_sha256() {
        let body = b"{}";
        let sha1 = sign_sha1("s", body);
        assert_eq!(
            verify(req(Some((HEADER_SHA1, &sha1)), body), &keys(&["s"], false)).unwrap_err(),
            VerifyError::AlgorithmDisabled
        );
        assert!(verify(req(Some((HEADER_SHA1, &sha1)), body), &keys(&["s"], true)).is_ok());
        // A bad SHA-256 header is not rescued by a good SHA-1 one.
        let mut h = Headers::new();
        h.insert(HEADER_SHA256, &sign_sha256("wrong", body));
        h.insert(HEADER_SHA1, &sha1);
        let r = Unverified::new(h, bytes::Bytes::from_static(body));
        assert_eq!(
            verify(r, &keys(&["s"], true)).unwrap_err(),
            VerifyError::Mismatch
        );
    }
}
