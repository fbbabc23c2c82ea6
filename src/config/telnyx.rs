//! Telnyx Messaging (API v2 webhooks, Ed25519): source configuration.
//!
//! Telnyx signs every webhook with the account's Ed25519 private key; the gateway holds only
//! the public key (Mission Control Portal → Keys & Credentials → Public Key), base64 of the
//! raw 32-byte key. Several keys may be configured while one is being replaced.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::source_config;

source_config! {
    /// `[sources.<id>]` with `provider = "telnyx"`.
    pub struct TelnyxSourceConfig {
        /// Telnyx account public keys, base64 of the raw 32-byte Ed25519 key as the portal
        /// shows it. A webhook verifies when any of them accepts its signature (rotation).
        /// Public keys are not secret, but they are never printed either: a private key or
        /// an API key pasted here by mistake must not end up in logs.
        pub public_keys: Vec<String>,
    }
}

/// The verifying key a configured value denotes, or why it is unusable.
pub fn parse_public_key(value: &str) -> Result<ed25519_dalek::VerifyingKey, &'static str> {
    let bytes = STANDARD
        .decode(value.trim())
        .map_err(|_| "is not valid base64")?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "does not decode to 32 bytes (an Ed25519 public key is 32 bytes)")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "is not a valid Ed25519 public key (not a curve point)")?;
    if key.is_weak() {
        return Err("is a weak (small-order) Ed25519 key that would accept forged signatures");
    }
    Ok(key)
}

impl TelnyxSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.public_keys.is_empty() {
            errs.push(format!(
                "sources.{id}.public_keys: give at least one Telnyx public key (Mission Control Portal → Keys & Credentials → Public Key, base64)"
            ));
        }
        let n = self.public_keys.len();
        for (i, key) in self.public_keys.iter().enumerate() {
            if let Err(why) = parse_public_key(key) {
                errs.push(format!(
                    "sources.{id}.public_keys[{i}] (entry {} of {n}) {why}: copy the public key from Mission Control Portal → Keys & Credentials → Public Key",
                    i + 1
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    // Base64 of the public key of the seed [7; 32] (a fixed test key pair, see verify::telnyx).
    fn good_key() -> String {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        STANDARD.encode(sk.verifying_key().as_bytes())
    }

    fn load(keys: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            r#"
            [tenants.acme]
            [sources.tx]
            provider = "telnyx"
            tenant = "acme"
            public_keys = {keys}
            "#
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_valid_keys_and_rotation() {
        let k = good_key();
        assert!(load(&format!("[\"{k}\"]")).is_ok());
        let other = STANDARD.encode(
            ed25519_dalek::SigningKey::from_bytes(&[8u8; 32])
                .verifying_key()
                .as_bytes(),
        );
        assert!(load(&format!("[\"{k}\", \"{other}\"]")).is_ok());
    }

    #[test]
    fn rejects_empty_bad_base64_wrong_length_and_weak_keys() {
        let err = load("[]").unwrap_err();
        assert!(err.contains("sources.tx.public_keys"), "{err}");

        let err = load("[\"not base64!!\"]").unwrap_err();
        assert!(
            err.contains("public_keys[0]") && err.contains("base64"),
            "{err}"
        );
        assert!(
            !err.contains("not base64!!"),
            "the value is never printed: {err}"
        );

        let short = STANDARD.encode([1u8; 16]);
        let err = load(&format!("[\"{short}\"]")).unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(!err.contains(&short), "{err}");

        // The identity point (small order): decodes, but must be refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = STANDARD.encode(identity);
        let err = load(&format!("[\"{}\", \"{weak}\"]", good_key())).unwrap_err();
        assert!(
            err.contains("public_keys[1]") && err.contains("weak"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml(
            r#"
            [tenants.acme]
            [sources.tx]
            provider = "telnyx"
            tenant = "acme"
            public_keys = ["x"]
            public_key = "x"
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("public_key"), "{err}");
    }
}
