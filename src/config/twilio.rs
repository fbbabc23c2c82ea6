//! Twilio Programmable Messaging (SMS, MMS, WhatsApp via Twilio): source configuration.
//!
//! Twilio signs every webhook with `X-Twilio-Signature` (HMAC-SHA1 of the public URL and the
//! sorted form parameters). The key is the account's Auth Token, or, when a Webhook Setting
//! names a SharedKey (Public Beta), that SharedKey's secret. Twilio signs no timestamp, so
//! `replay_window_secs` has no effect on this source: redeliveries are caught by the dedup
//! of `MessageSid` (+ `MessageStatus`).

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "twilio"`.
    pub struct TwilioSourceConfig {
        /// Account Auth Tokens accepted for `X-Twilio-Signature` (Console → Account →
        /// API keys & tokens). The first one is the current one; during a rotation list the
        /// primary and the secondary token (Twilio keeps signing with the primary until the
        /// secondary is promoted).
        #[serde(default)]
        pub auth_tokens: Vec<Secret>,
        /// SharedKey secrets (Webhooks configuration API, Public Beta) accepted when a request
        /// carries `X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256` (or
        /// `HMAC_SHA1`). Empty: such requests are refused (`algorithm_disabled`).
        #[serde(default)]
        pub signing_keys: Vec<Secret>,
    }
}

impl TwilioSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.auth_tokens.is_empty() && self.signing_keys.is_empty() {
            errs.push(format!(
                "sources.{id}.auth_tokens: give at least one Twilio Auth Token (Console → Account → API keys & tokens), or SharedKey secrets in sources.{id}.signing_keys"
            ));
        }
        check_secrets(id, "auth_tokens", &self.auth_tokens, errs);
        check_secrets(id, "signing_keys", &self.signing_keys, errs);
        for (i, token) in self.auth_tokens.iter().enumerate() {
            let v = token.expose();
            // An Account SID (AC + 32 hex) is public; pasting it instead of the token is the
            // most common mistake, and naming it does not disclose a secret.
            if v.len() == 34 && v.starts_with("AC") && v[2..].bytes().all(|b| b.is_ascii_hexdigit())
            {
                errs.push(format!(
                    "sources.{id}.auth_tokens[{i}]: this is an Account SID (AC…), not the Auth Token shown under it in the Console"
                ));
            }
        }
    }
}

fn check_secrets(id: &str, key: &str, secrets: &[Secret], errs: &mut Vec<String>) {
    for (i, s) in secrets.iter().enumerate() {
        let v = s.expose();
        if v.is_empty() {
            errs.push(format!("sources.{id}.{key}[{i}]: must not be empty"));
        } else if v.trim() != v || v.chars().any(char::is_whitespace) {
            errs.push(format!(
                "sources.{id}.{key}[{i}]: contains whitespace; copy the value again without spaces or line breaks"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_body: &str) -> TwilioSourceConfig {
        let doc = format!("channels = {{ \"15551234567\" = \"acme\" }}\n{toml_body}");
        parse(&doc).unwrap()
    }

    fn parse(doc: &str) -> Result<TwilioSourceConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(doc))
            .extract()
            .map_err(|e| e.to_string())
    }

    fn errors(c: &TwilioSourceConfig) -> Vec<String> {
        let mut errs = Vec::new();
        c.validate("tw", &mut errs);
        errs
    }

    #[test]
    fn a_token_is_enough() {
        assert!(errors(&cfg(
            r#"auth_tokens = ["0123456789abcdef0123456789abcdef"]"#
        ))
        .is_empty());
        assert!(errors(&cfg(r#"signing_keys = ["sharedkeysecret"]"#)).is_empty());
    }

    #[test]
    fn no_secret_at_all_is_refused() {
        let errs = errors(&cfg(""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("sources.tw.auth_tokens"), "{errs:?}");
    }

    #[test]
    fn empty_whitespace_and_sid_are_named_without_the_value() {
        let c = cfg(
            r#"auth_tokens = ["", "topsecret value", "AC0123456789abcdef0123456789abcdef"]
               signing_keys = [" padded"]"#,
        );
        let errs = errors(&c);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs
            .iter()
            .any(|e| e.contains("auth_tokens[0]: must not be empty")));
        assert!(errs
            .iter()
            .any(|e| e.contains("auth_tokens[1]: contains whitespace")));
        assert!(errs
            .iter()
            .any(|e| e.contains("auth_tokens[2]: this is an Account SID")));
        assert!(errs
            .iter()
            .any(|e| e.contains("signing_keys[0]: contains whitespace")));
        assert!(!errs
            .iter()
            .any(|e| e.contains("topsecret") || e.contains("padded")));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let doc = "auth_tokens = [\"x\"]\nauth_token = \"x\"\n";
        assert!(parse(doc).is_err());
    }
}
