//! Telegram Bot API webhooks: secret-token check.
//!
//! Telegram signs nothing. When the webhook was registered with
//! `setWebhook(url, secret_token=…)`, every update carries the token, verbatim, in
//! `X-Telegram-Bot-Api-Secret-Token`; a request without it, or with another value, is not
//! from Telegram. The presented value is compared with every configured token (rotation:
//! re-register the webhook with the new token, then drop the old one) in constant time, over
//! SHA-256 digests so that not even the tokens' lengths leak through timing.
//!
//! There is no timestamp in the header, hence no replay window: a captured request can be
//! replayed, and the gateway deduplicates on `update_id` (see `normalize::telegram`).
//! Updates are JSON POSTs only.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{SignRequest, Unverified, Verified, VerifyError};
use crate::config::telegram::{valid_secret_token, TelegramSourceConfig};
use crate::crypto::Secret;

/// Content types (essence, lower case) this provider posts.
pub const MEDIA_TYPES: &[&str] = &["application/json"];
pub const HEADER: &str = "x-telegram-bot-api-secret-token";
/// Headers kept with a dead letter so that it can be re-verified on replay.
pub const SIGNATURE_HEADERS: &[&str] = &[HEADER];
/// Whether the provider may deliver webhooks with GET (parameters in the query string).
pub const ACCEPTS_GET: bool = false;

/// What a Telegram source verifies with, built once from its configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    secret_tokens: Vec<Secret>,
}

impl Keys {
    pub fn from_config(c: &TelegramSourceConfig) -> Keys {
        Keys {
            secret_tokens: c.secret_tokens.clone(),
        }
    }
}

/// What a dead letter keeps of the header: the token is the secret itself, so only its
/// SHA-256 (`sha256:<hex>`), which `switchboard replay` checks against the configured tokens.
/// The digest is accepted only from a dead letter, never from the network.
pub fn kept_value(token: &str) -> String {
    format!(
        "{DIGEST_PREFIX}{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

const DIGEST_PREFIX: &str = "sha256:";

pub fn verify(req: Unverified, keys: &Keys) -> Result<Verified, VerifyError> {
    let presented = req.headers().get(HEADER).ok_or(VerifyError::Missing)?;
    if req.is_from_dead_letter() {
        if let Some(hexed) = presented.strip_prefix(DIGEST_PREFIX) {
            let digest = hex::decode(hexed).map_err(|_| VerifyError::Malformed)?;
            if digest.len() != 32 {
                return Err(VerifyError::Malformed);
            }
            return matching(req, keys, &digest);
        }
    }
    // Telegram only ever sends a token it accepted at setWebhook; anything else is not one.
    if !valid_secret_token(presented) {
        return Err(VerifyError::Malformed);
    }
    let presented = Sha256::digest(presented.as_bytes());
    matching(req, keys, &presented)
}

fn matching(req: Unverified, keys: &Keys, presented: &[u8]) -> Result<Verified, VerifyError> {
    // Every configured token is compared (no early exit), each over fixed-length digests.
    let matched = keys
        .secret_tokens
        .iter()
        .fold(subtle::Choice::from(0u8), |acc, token| {
            acc | Sha256::digest(token.expose().as_bytes())
                .as_slice()
                .ct_eq(presented)
        });
    if bool::from(matched) {
        Ok(req.into_verified())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// The header Telegram sends for a webhook registered with the source's first token.
pub fn sign(
    c: &TelegramSourceConfig,
    _req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, String> {
    let token = c
        .secret_tokens
        .first()
        .ok_or("the source has no secret_tokens to send")?;
    Ok(vec![(HEADER.to_string(), token.expose().to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Headers, Method};

    fn config(tokens: &[&str]) -> TelegramSourceConfig {
        let list: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
        let toml = format!(
            "[tenants.acme]\n[sources.tg]\nprovider = \"telegram\"\ntenant = \"acme\"\nsecret_tokens = [{}]\n",
            list.join(",")
        );
        match crate::config::Config::from_toml(&toml)
            .unwrap()
            .sources
            .remove("tg")
            .unwrap()
        {
            crate::config::SourceConfig::Telegram(c) => c,
            _ => unreachable!(),
        }
    }

    fn check(header: Option<&str>, tokens: &[&str]) -> Result<(), VerifyError> {
        let mut h = Headers::new();
        if let Some(v) = header {
            h.insert("X-Telegram-Bot-Api-Secret-Token", v);
        }
        let req = Unverified::new(h, bytes::Bytes::from_static(br#"{"update_id":1}"#));
        verify(req, &Keys::from_config(&config(tokens))).map(|_| ())
    }

    #[test]
    fn valid_wrong_and_rotated_tokens() {
        assert_eq!(check(Some("s3cr3t_TOKEN-1"), &["s3cr3t_TOKEN-1"]), Ok(()));
        assert_eq!(
            check(Some("s3cr3t_TOKEN-2"), &["s3cr3t_TOKEN-1"]),
            Err(VerifyError::Mismatch)
        );
        // Prefix and extension of the token are mismatches, not matches.
        assert_eq!(
            check(Some("s3cr3t"), &["s3cr3t_TOKEN-1"]),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(Some("s3cr3t_TOKEN-1x"), &["s3cr3t_TOKEN-1"]),
            Err(VerifyError::Mismatch)
        );
        // Case matters.
        assert_eq!(
            check(Some("S3CR3T_TOKEN-1"), &["s3cr3t_TOKEN-1"]),
            Err(VerifyError::Mismatch)
        );
        // Rotation: either configured token passes.
        assert_eq!(check(Some("old"), &["new", "old"]), Ok(()));
        assert_eq!(check(Some("new"), &["new", "old"]), Ok(()));
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(check(None, &["tok"]), Err(VerifyError::Missing));
        let huge = "a".repeat(100_000);
        for bad in ["", "tok en", "tok\u{e9}", "tok.", huge.as_str()] {
            assert_eq!(
                check(Some(bad), &["tok"]),
                Err(VerifyError::Malformed),
                "{bad:.10}"
            );
        }
    }

    #[test]
    fn sign_sends_the_first_token() {
        let c = config(&["current", "previous"]);
        let req = SignRequest {
            method: Method::Post,
            url: "https://hooks.example.com/webhooks/tg",
            body: b"{}",
            now: time::OffsetDateTime::UNIX_EPOCH,
        };
        let headers = sign(&c, &req).unwrap();
        assert_eq!(headers, vec![(HEADER.to_string(), "current".to_string())]);
        assert_eq!(check(Some(&headers[0].1), &["current", "previous"]), Ok(()));
    }
}
