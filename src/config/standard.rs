//! Standard Webhooks senders (<https://www.standardwebhooks.com>, spec v1.0.0): source
//! configuration.
//!
//! A sender signs with a symmetric secret (`v1`, HMAC-SHA256; the secret is shown as
//! `whsec_<base64>`) and/or an Ed25519 key pair (`v1a`; the public key is shown as
//! `whpk_<base64>`). Configure what the sender gave you; at least one key overall. Several of
//! each are accepted while the sender rotates them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "standard"`.
    pub struct StandardSourceConfig {
        /// Symmetric signing secrets (`v1`), `whsec_` followed by base64 as the sender shows
        /// them (the prefix may be omitted). The first one is used by `switchboard sign`.
        #[serde(default)]
        pub secrets: Vec<Secret>,
        /// Ed25519 public keys (`v1a`), `whpk_` followed by base64 of the 32-byte key (the
        /// prefix may be omitted).
        #[serde(default)]
        pub public_keys: Vec<String>,
    }
}

/// Decoded secret bytes: 16-128 (the spec asks senders for 24-64 random bytes; shorter ones
/// are refused as too weak, longer ones are accepted).
pub fn decode_secret(value: &str) -> Result<Vec<u8>, &'static str> {
    let b64 = value.trim();
    let b64 = b64.strip_prefix("whsec_").unwrap_or(b64);
    if b64.starts_with("whsk_") || b64.starts_with("whpk_") {
        return Err("is an asymmetric key (whsk_/whpk_), not a whsec_ secret: put a whpk_ public key in public_keys, never the whsk_ private key");
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| "is not whsec_ followed by valid base64")?;
    if bytes.len() < 16 || bytes.len() > 128 {
        return Err("does not decode to 16-128 bytes (senders use 24-64 random bytes)");
    }
    Ok(bytes)
}

/// The verifying key of a configured `whpk_` value.
pub fn parse_public_key(value: &str) -> Result<ed25519_dalek::VerifyingKey, &'static str> {
    let b64 = value.trim();
    let b64 = b64.strip_prefix("whpk_").unwrap_or(b64);
    if b64.starts_with("whsk_") {
        return Err("is a private key (whsk_): configure the sender's whpk_ public key instead, and treat this one as leaked");
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| "is not whpk_ followed by valid base64")?;
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

impl StandardSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.secrets.is_empty() && self.public_keys.is_empty() {
            errs.push(format!(
                "sources.{id}: set `secrets` (the sender's whsec_… signing secret, for v1 signatures) and/or `public_keys` (its whpk_… public key, for v1a)"
            ));
        }
        let n = self.secrets.len();
        for (i, secret) in self.secrets.iter().enumerate() {
            if let Err(why) = decode_secret(secret.expose()) {
                errs.push(format!(
                    "sources.{id}.secrets[{i}] (entry {} of {n}) {why}",
                    i + 1
                ));
            }
        }
        let n = self.public_keys.len();
        for (i, key) in self.public_keys.iter().enumerate() {
            if let Err(why) = parse_public_key(key) {
                errs.push(format!(
                    "sources.{id}.public_keys[{i}] (entry {} of {n}) {why}",
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

    // The secret of the standard-webhooks published test vector (24 bytes).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn pk(seed: u8) -> String {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        format!("whpk_{}", STANDARD.encode(sk.verifying_key().as_bytes()))
    }

    fn load(keys: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[tenants.acme]\n[sources.sw]\nprovider = \"standard\"\ntenant = \"acme\"\n{keys}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_secrets_public_keys_or_both() {
        assert!(load(&format!("secrets = [\"{SECRET}\"]")).is_ok());
        // Without the prefix too.
        assert!(load("secrets = [\"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]").is_ok());
        assert!(load(&format!("public_keys = [\"{}\"]", pk(3))).is_ok());
        assert!(load(&format!(
            "secrets = [\"{SECRET}\", \"{SECRET}\"]\npublic_keys = [\"{}\", \"{}\"]",
            pk(3),
            pk(4)
        ))
        .is_ok());
    }

    #[test]
    fn needs_at_least_one_key() {
        let err = load("").unwrap_err();
        assert!(err.contains("sources.sw: set `secrets`"), "{err}");
        let err = load("secrets = []\npublic_keys = []").unwrap_err();
        assert!(err.contains("whsec_"), "{err}");
    }

    #[test]
    fn rejects_bad_values_without_printing_them() {
        for (bad, why) in [
            ("whsec_!!!notbase64", "base64"),
            ("whsec_c2hvcnQ=", "16-128 bytes"),
            ("whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "asymmetric"),
        ] {
            let err = load(&format!("secrets = [\"{SECRET}\", \"{bad}\"]")).unwrap_err();
            assert!(
                err.contains("sources.sw.secrets[1]") && err.contains(why),
                "{err}"
            );
            assert!(!err.contains(bad), "secret printed: {err}");
        }
        for (bad, why) in [
            ("whpk_@@", "base64"),
            ("whpk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "32 bytes"),
            ("whsk_AAAA", "private key"),
        ] {
            let err = load(&format!("public_keys = [\"{bad}\"]")).unwrap_err();
            assert!(
                err.contains("sources.sw.public_keys[0]") && err.contains(why),
                "{err}"
            );
            assert!(!err.contains(bad), "key printed: {err}");
        }
    }
}
