//! MessageBird (`MessageBird-Signature-JWT`, legacy `MessageBird-Signature`): source configuration.

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "messagebird"`.
    pub struct MessagebirdSourceConfig {
        /// Signing keys (Dashboard → Developers → API access → Signing key), first one current.
        /// Several are accepted while a key is being rotated. This is not the API access key.
        pub signing_keys: Vec<Secret>,
        /// Also accept the deprecated `MessageBird-Signature` + `MessageBird-Request-Timestamp`
        /// scheme when a request carries no `MessageBird-Signature-JWT`. It covers the body, the
        /// query parameters and the timestamp but not the host or path. Never used when a JWT
        /// header is present (a bad JWT is not rescued by a good legacy signature).
        #[serde(default = "default_true")]
        pub allow_legacy_signature: bool,
    }
}

fn default_true() -> bool {
    true
}

impl MessagebirdSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.signing_keys.is_empty() {
            errs.push(format!(
                "sources.{id}.signing_keys: give at least one signing key (MessageBird Dashboard → Developers → API access → Signing key)"
            ));
        }
        for (i, key) in self.signing_keys.iter().enumerate() {
            let k = key.expose();
            if k.is_empty() {
                errs.push(format!(
                    "sources.{id}.signing_keys[{i}]: is empty; paste the signing key or remove the entry"
                ));
            } else if k.trim() != k {
                errs.push(format!(
                    "sources.{id}.signing_keys[{i}]: has leading or trailing whitespace; signing keys are used byte for byte, remove it"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, SourceConfig};

    fn load(keys: &str, extra: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[tenants.acme]\n[sources.mb]\nprovider = \"messagebird\"\ntenant = \"acme\"\nsigning_keys = {keys}\n{extra}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_source_loads_with_defaults() {
        let c = load(r#"["k1", "k2"]"#, "").unwrap();
        let SourceConfig::Messagebird(m) = &c.sources["mb"] else {
            panic!("not a messagebird source")
        };
        assert_eq!(m.signing_keys.len(), 2);
        assert!(m.allow_legacy_signature);
        assert_eq!(m.replay_window_secs, 300);
        let c = load(r#"["k1"]"#, "allow_legacy_signature = false").unwrap();
        let SourceConfig::Messagebird(m) = &c.sources["mb"] else {
            panic!("not a messagebird source")
        };
        assert!(!m.allow_legacy_signature);
    }

    #[test]
    fn missing_empty_and_padded_keys_are_named_never_printed() {
        let err = load("[]", "").unwrap_err();
        assert!(err.contains("sources.mb.signing_keys"), "{err}");
        let err = load(r#"["good", ""]"#, "").unwrap_err();
        assert!(err.contains("sources.mb.signing_keys[1]"), "{err}");
        let err = load(r#"[" topsecretkey "]"#, "").unwrap_err();
        assert!(err.contains("sources.mb.signing_keys[0]"), "{err}");
        assert!(err.contains("whitespace"), "{err}");
        assert!(!err.contains("topsecretkey"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = load(r#"["k"]"#, "signing_key = \"k\"").unwrap_err();
        assert!(err.contains("signing_key"), "{err}");
    }
}
