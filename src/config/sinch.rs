//! Sinch Conversation API and SMS events (`x-sinch-webhook-signature`): source configuration.

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "sinch"`.
    pub struct SinchSourceConfig {
        /// Webhook secrets (Conversation API: the `secret` of the app's webhook, set in the
        /// Sinch dashboard or by the Webhooks API), first one current. Several are accepted
        /// while a secret is being rotated, or when one source serves webhooks of several apps.
        pub secrets: Vec<Secret>,
    }
}

impl SinchSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.secrets.is_empty() {
            errs.push(format!(
                "sources.{id}.secrets: give at least one webhook secret (Sinch dashboard → Conversation API → app → Webhooks → secret)"
            ));
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            let s = secret.expose();
            if s.is_empty() {
                errs.push(format!(
                    "sources.{id}.secrets[{i}]: is empty; set the webhook's secret or remove the entry (Sinch only signs webhooks that have a secret)"
                ));
            } else if s.trim() != s {
                errs.push(format!(
                    "sources.{id}.secrets[{i}]: has leading or trailing whitespace; secrets are used byte for byte, remove it"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, SourceConfig};

    fn load(secrets: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[tenants.acme]\n[sources.sinch_main]\nprovider = \"sinch\"\nchannels = {{ \"01EB37HMH1M6SV18BSNS3G135H\" = \"acme\" }}\nsecrets = {secrets}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_source_loads() {
        let c = load(r#"["a", "b"]"#).unwrap();
        let SourceConfig::Sinch(s) = &c.sources["sinch_main"] else {
            panic!("not a sinch source")
        };
        assert_eq!(s.secrets.len(), 2);
        assert_eq!(s.replay_window_secs, 300);
    }

    #[test]
    fn missing_empty_and_padded_secrets_are_named_never_printed() {
        let err = load("[]").unwrap_err();
        assert!(err.contains("sources.sinch_main.secrets"), "{err}");
        let err = load(r#"["ok", ""]"#).unwrap_err();
        assert!(err.contains("sources.sinch_main.secrets[1]"), "{err}");
        let err = load(r#"[" topsecretvalue"]"#).unwrap_err();
        assert!(err.contains("sources.sinch_main.secrets[0]"), "{err}");
        assert!(!err.contains("topsecretvalue"), "{err}");
    }
}
