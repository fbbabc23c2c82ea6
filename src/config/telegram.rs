//! Telegram Bot API webhooks: source configuration.
//!
//! Telegram does not sign updates. `setWebhook(url, secret_token=…)` makes it send the token
//! back in `X-Telegram-Bot-Api-Secret-Token` on every update; the gateway compares it, in
//! constant time, with the tokens configured here. One source is one bot.

use crate::config::source_config;
use crate::crypto::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "telegram"`.
    pub struct TelegramSourceConfig {
        /// The `secret_token` given to `setWebhook`, first one current; several are accepted
        /// while the webhook is being re-registered with a new one. Telegram's rule: 1-256
        /// characters of `A-Z a-z 0-9 _ -`.
        pub secret_tokens: Vec<Secret>,
    }
}

/// Telegram's rule for `secret_token`: 1-256 characters, `A-Z a-z 0-9 _ -`.
pub fn valid_secret_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TelegramSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.secret_tokens.is_empty() {
            errs.push(format!(
                "sources.{id}.secret_tokens: give at least one token, the secret_token you pass to setWebhook (without one, anyone who learns the URL could post updates)"
            ));
        }
        let n = self.secret_tokens.len();
        for (i, token) in self.secret_tokens.iter().enumerate() {
            if !valid_secret_token(token.expose()) {
                errs.push(format!(
                    "sources.{id}.secret_tokens[{i}] (entry {} of {n}, {} characters): Telegram accepts only 1-256 characters of A-Z, a-z, 0-9, '_' and '-' as secret_token",
                    i + 1,
                    token.expose().chars().count()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(tokens: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[tenants.acme]\n[sources.tg]\nprovider = \"telegram\"\ntenant = \"acme\"\nsecret_tokens = {tokens}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_telegram_tokens() {
        assert!(load("[\"abc-DEF_123\"]").is_ok());
        assert!(load(&format!("[\"a\", \"{}\"]", "Z".repeat(256))).is_ok());
    }

    #[test]
    fn rejects_missing_bad_chars_and_long_tokens_without_printing_them() {
        let err = load("[]").unwrap_err();
        assert!(err.contains("sources.tg.secret_tokens"), "{err}");
        for bad in ["", "has space", "dots.are.bad", "ümlaut"] {
            let err = load(&format!("[\"ok\", \"{bad}\"]")).unwrap_err();
            assert!(err.contains("sources.tg.secret_tokens[1]"), "{err}");
            if !bad.is_empty() {
                assert!(!err.contains(bad), "token printed: {err}");
            }
        }
        let long = "x".repeat(257);
        let err = load(&format!("[\"{long}\"]")).unwrap_err();
        assert!(
            err.contains("257 characters") && !err.contains(&long),
            "{err}"
        );
    }
}
