//! Telegram Bot API (`X-Telegram-Bot-Api-Secret-Token`): source configuration.
//!
//! WORK IN PROGRESS (issue 3): fields and validation to be completed by the provider's author.

use crate::config::source_config;
use crate::verify::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "telegram"`.
    pub struct TelegramSourceConfig {
        /// Secrets accepted, first one current (several during rotation).
        pub secret_tokens: Vec<Secret>,
    }
}

impl TelegramSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.secret_tokens.is_empty() || self.secret_tokens.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!("sources.{id}.secret_tokens: give at least one non-empty value"));
        }
    }
}
