//! Bird (bird.com Channels/Notifications, `messagebird-signature`): source configuration.

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "bird"`.
    pub struct BirdSourceConfig {
        /// The signing key given when the webhook subscription was created (Bird app →
        /// Developer → Webhooks, or the `signingKey` of `POST .../webhook-subscriptions`), first
        /// one current. Several are accepted while subscriptions are being re-created.
        pub signing_keys: Vec<Secret>,
    }
}

impl BirdSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.signing_keys.is_empty() {
            errs.push(format!(
                "sources.{id}.signing_keys: give at least one signing key (the signingKey of the Bird webhook subscription)"
            ));
        }
        for (i, key) in self.signing_keys.iter().enumerate() {
            let k = key.expose();
            if k.is_empty() {
                errs.push(format!(
                    "sources.{id}.signing_keys[{i}]: is empty; paste the subscription's signing key or remove the entry"
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
            "[tenants.acme]\n[sources.bird_main]\nprovider = \"bird\"\ntenant = \"acme\"\nsigning_keys = {keys}\n{extra}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_source_loads() {
        let c = load(r#"["k1"]"#, "replay_window_secs = 60").unwrap();
        let SourceConfig::Bird(b) = &c.sources["bird_main"] else {
            panic!("not a bird source")
        };
        assert_eq!(b.signing_keys.len(), 1);
        assert_eq!(b.replay_window_secs, 60);
    }

    #[test]
    fn missing_empty_and_padded_keys_are_named_never_printed() {
        let err = load("[]", "").unwrap_err();
        assert!(err.contains("sources.bird_main.signing_keys"), "{err}");
        let err = load(r#"["", "x"]"#, "").unwrap_err();
        assert!(err.contains("sources.bird_main.signing_keys[0]"), "{err}");
        let err = load(r#"["topsecretkey\n"]"#, "").unwrap_err();
        assert!(err.contains("whitespace"), "{err}");
        assert!(!err.contains("topsecretkey"), "{err}");
    }
}
