//! Plivo Messaging (signature V3 and V2): source configuration.
//!
//! Plivo signs callbacks with the (sub)account Auth Token. Signature V3
//! (`X-Plivo-Signature-V3`) covers the URL, its query and the POST parameters; V2
//! (`X-Plivo-Signature-V2`, the scheme Plivo's Messaging documentation describes) covers only
//! the URL without its query plus a nonce, so anyone who has seen one signed request to this
//! URL can replay its headers with a body of their choosing. V2 is therefore refused unless
//! `allow_v2 = true`. Neither scheme signs a timestamp: `replay_window_secs` has no effect;
//! redeliveries are caught by the dedup of `MessageUUID` (+ `Status`, + part).

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "plivo"`.
    pub struct PlivoSourceConfig {
        /// Auth Tokens accepted (Plivo Console → Overview → Account: Auth Token; for a
        /// subaccount its own token; the main account's token verifies the
        /// `X-Plivo-Signature-Ma-*` headers). The first is the current one; list several
        /// during a rotation (Plivo then sends one signature per active token).
        pub auth_tokens: Vec<Secret>,
        /// Accept signature V2 (URL without query + nonce; the body is NOT signed) when a
        /// request carries no V3 signature. Default false: V2-only requests are refused
        /// with `algorithm_disabled`.
        #[serde(default)]
        pub allow_v2: bool,
    }
}

impl PlivoSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.auth_tokens.is_empty() {
            errs.push(format!(
                "sources.{id}.auth_tokens: give at least one Plivo Auth Token (Plivo Console → Account overview)"
            ));
        }
        for (i, token) in self.auth_tokens.iter().enumerate() {
            let v = token.expose();
            if v.is_empty() {
                errs.push(format!("sources.{id}.auth_tokens[{i}]: must not be empty"));
            } else if v.chars().any(char::is_whitespace) {
                errs.push(format!(
                    "sources.{id}.auth_tokens[{i}]: contains whitespace; copy the token again without spaces or line breaks"
                ));
            } else if is_auth_id(v) {
                // Auth IDs (MA…/SA…, 20 characters) are public identifiers, not secrets.
                errs.push(format!(
                    "sources.{id}.auth_tokens[{i}]: this is an Auth ID (MA…/SA…), not the Auth Token shown next to it"
                ));
            }
        }
    }
}

fn is_auth_id(v: &str) -> bool {
    v.len() == 20
        && (v.starts_with("MA") || v.starts_with("SA"))
        && v.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: &str) -> Result<PlivoSourceConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(doc))
            .extract()
            .map_err(|e| e.to_string())
    }

    fn errors(doc: &str) -> Vec<String> {
        let mut errs = Vec::new();
        parse(doc).unwrap().validate("pl", &mut errs);
        errs
    }

    #[test]
    fn defaults_and_valid() {
        let c = parse(r#"auth_tokens = ["MzYzNjBkNzQ3ZDFhYjhkNWE5OTk4YzUxOTNkYmRl"]"#).unwrap();
        assert!(!c.allow_v2);
        assert_eq!(c.replay_window_secs, 300);
        assert!(errors(
            r#"auth_tokens = ["tok"]
                          allow_v2 = true"#
        )
        .is_empty());
    }

    #[test]
    fn missing_tokens_are_refused() {
        assert!(parse("allow_v2 = true").is_err(), "auth_tokens is required");
        let errs = errors("auth_tokens = []");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("sources.pl.auth_tokens:"), "{errs:?}");
    }

    #[test]
    fn bad_tokens_are_named_without_the_value() {
        let errs = errors(r#"auth_tokens = ["", "hidden token", "MAXXXXXXXXXXXXXXXXXX"]"#);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("auth_tokens[0]: must not be empty"));
        assert!(errs[1].contains("auth_tokens[1]: contains whitespace"));
        assert!(errs[2].contains("auth_tokens[2]: this is an Auth ID"));
        assert!(!errs.iter().any(|e| e.contains("hidden")));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(parse("auth_tokens = [\"x\"]\nallow_v1 = true").is_err());
    }
}
