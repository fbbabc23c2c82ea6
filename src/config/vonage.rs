//! Vonage: source configuration for both webhook families a Vonage account sends.
//!
//! - **Messages API** (SMS, MMS, WhatsApp, Messenger, Viber, RCS): every inbound message and
//!   status is a JSON POST carrying `Authorization: Bearer <JWT>`, HS256 under the account's
//!   *signature secret*, with a `payload_hash` claim (hex SHA-256 of the body).
//! - **SMS API** (legacy): inbound SMS and delivery receipts by GET, form POST or JSON POST,
//!   signed (when Vonage support enabled it for the account) with a `sig` parameter over the
//!   other parameters, by the method chosen in the dashboard.
//!
//! Both use the same signature secret (Dashboard → API Settings → Signature secret), so one
//! source can serve both webhook families.

use serde::Deserialize;

use crate::config::source_config;
use crate::crypto::Secret;

/// How the SMS API computes `sig` (Dashboard → API Settings → Signature method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsSignatureMethod {
    /// "MD5 hash": `md5(base + secret)`. The dashboard's default.
    #[default]
    Md5hash,
    /// "MD5 HMAC": HMAC-MD5(secret, base).
    Md5,
    /// "SHA1 HMAC".
    Sha1,
    /// "SHA-256 HMAC".
    Sha256,
    /// "SHA-512 HMAC".
    Sha512,
}

impl SmsSignatureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SmsSignatureMethod::Md5hash => "md5hash",
            SmsSignatureMethod::Md5 => "md5",
            SmsSignatureMethod::Sha1 => "sha1",
            SmsSignatureMethod::Sha256 => "sha256",
            SmsSignatureMethod::Sha512 => "sha512",
        }
    }

    /// Length in bytes of the digest this method produces (the `sig` is its hex).
    pub fn digest_len(self) -> usize {
        match self {
            SmsSignatureMethod::Md5hash | SmsSignatureMethod::Md5 => 16,
            SmsSignatureMethod::Sha1 => 20,
            SmsSignatureMethod::Sha256 => 32,
            SmsSignatureMethod::Sha512 => 64,
        }
    }
}

source_config! {
    /// `[sources.<id>]` with `provider = "vonage"`.
    pub struct VonageSourceConfig {
        /// The account's signature secrets (Dashboard → API Settings → "Signature secret"),
        /// the current one first; list the old one too while rotating. They key both the
        /// Messages API JWT (HS256) and the SMS API `sig`.
        pub signature_secrets: Vec<Secret>,
        /// When set, a Messages API JWT must carry this `api_key` claim (the account's API
        /// key): a token signed for another account sharing the secret is refused.
        #[serde(default)]
        pub api_key: Option<String>,
        /// SMS API `sig` method, as chosen in the dashboard: "md5hash" (default, the
        /// dashboard's default), "md5" (HMAC-MD5), "sha1", "sha256", "sha512" (HMAC).
        #[serde(default)]
        pub sms_signature_method: SmsSignatureMethod,
        /// INSECURE. Accept SMS API webhooks that carry no `sig` at all (Vonage sends them
        /// unsigned unless support enabled signing). Anyone who knows the URL can then inject
        /// messages. Messages API webhooks are always verified regardless.
        #[serde(default)]
        pub allow_unsigned_sms: bool,
    }
}

impl VonageSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.signature_secrets.is_empty() {
            errs.push(format!(
                "sources.{id}.signature_secrets: give at least one signature secret (Vonage Dashboard → API Settings → Signature secret)"
            ));
        }
        for (i, secret) in self.signature_secrets.iter().enumerate() {
            let value = secret.expose();
            if value.is_empty() {
                errs.push(format!(
                    "sources.{id}.signature_secrets[{i}]: is empty; copy the signature secret from Vonage Dashboard → API Settings"
                ));
            } else if value.trim() != value {
                errs.push(format!(
                    "sources.{id}.signature_secrets[{i}]: has leading or trailing whitespace (a copy-paste slip?); remove it"
                ));
            }
        }
        if let Some(key) = &self.api_key {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errs.push(format!(
                    "sources.{id}.api_key = {key:?}: expected the account's API key (e.g. \"a1b2c3d4\") without spaces, or remove the key"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml(&format!(
            r#"
            [tenants.acme]
            [sources.vonage_main]
            provider = "vonage"
            tenant = "acme"
            {extra}
            "#
        ))
    }

    #[test]
    fn minimal_source_gets_defaults() {
        let c = config(r#"signature_secrets = ["s3cr3t"]"#).unwrap();
        let crate::config::SourceConfig::Vonage(v) = &c.sources["vonage_main"] else {
            panic!("not a vonage source")
        };
        assert_eq!(v.sms_signature_method, SmsSignatureMethod::Md5hash);
        assert!(!v.allow_unsigned_sms);
        assert_eq!(v.api_key, None);
        assert_eq!(v.replay_window_secs, 300);
    }

    #[test]
    fn every_method_parses() {
        for (name, m) in [
            ("md5hash", SmsSignatureMethod::Md5hash),
            ("md5", SmsSignatureMethod::Md5),
            ("sha1", SmsSignatureMethod::Sha1),
            ("sha256", SmsSignatureMethod::Sha256),
            ("sha512", SmsSignatureMethod::Sha512),
        ] {
            let c = config(&format!(
                "signature_secrets = [\"s\"]\nsms_signature_method = \"{name}\"\napi_key = \"abcd1234\"\nallow_unsigned_sms = true"
            ))
            .unwrap();
            let crate::config::SourceConfig::Vonage(v) = &c.sources["vonage_main"] else {
                panic!("not a vonage source")
            };
            assert_eq!(v.sms_signature_method, m);
            assert_eq!(m.as_str(), name);
        }
        let err = config("signature_secrets = [\"s\"]\nsms_signature_method = \"sha384\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha384"), "{err}");
    }

    #[test]
    fn validation_names_keys_and_never_prints_secrets() {
        let err = config("signature_secrets = []").unwrap_err().to_string();
        assert!(
            err.contains("sources.vonage_main.signature_secrets"),
            "{err}"
        );

        let err = config(r#"signature_secrets = ["good-secret-value", "", " padded-secret "]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature_secrets[1]: is empty"), "{err}");
        assert!(err.contains("signature_secrets[2]: has leading"), "{err}");
        assert!(!err.contains("padded-secret"), "{err}");
        assert!(!err.contains("good-secret-value"), "{err}");

        let err = config(
            r#"signature_secrets = ["s"]
            api_key = "has space""#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sources.vonage_main.api_key"), "{err}");

        let err = config(
            r#"signature_secrets = ["s"]
            unknown_key = 1"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown_key"), "{err}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = config(r#"signature_secrets = ["topsecretvalue"]"#).unwrap();
        assert!(!format!("{c:?}").contains("topsecretvalue"));
    }
}
