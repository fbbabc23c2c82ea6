//! Plivo Messaging (signature V3 and V2): source configuration.
//!
//! WORK IN PROGRESS (issue 3): fields and validation to be completed by the provider's author.

use crate::config::source_config;
use crate::verify::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "plivo"`.
    pub struct PlivoSourceConfig {
        /// Secrets accepted, first one current (several during rotation).
        pub auth_tokens: Vec<Secret>,
    }
}

impl PlivoSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.auth_tokens.is_empty() || self.auth_tokens.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!("sources.{id}.auth_tokens: give at least one non-empty value"));
        }
    }
}
