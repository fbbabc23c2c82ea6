//! Sinch Conversation API and SMS events (`x-sinch-webhook-signature`): source configuration.
//!
//! WORK IN PROGRESS (issue 3): fields and validation to be completed by the provider's author.

use crate::config::source_config;
use crate::verify::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "sinch"`.
    pub struct SinchSourceConfig {
        /// Secrets accepted, first one current (several during rotation).
        pub secrets: Vec<Secret>,
    }
}

impl SinchSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.secrets.is_empty() || self.secrets.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!("sources.{id}.secrets: give at least one non-empty value"));
        }
    }
}
