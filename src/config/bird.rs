//! Bird (bird.com Channels/Notifications, `messagebird-signature`): source configuration.
//!
//! WORK IN PROGRESS (issue 3): fields and validation to be completed by the provider's author.

use crate::config::source_config;
use crate::verify::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "bird"`.
    pub struct BirdSourceConfig {
        /// Secrets accepted, first one current (several during rotation).
        pub signing_keys: Vec<Secret>,
    }
}

impl BirdSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.signing_keys.is_empty() || self.signing_keys.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!("sources.{id}.signing_keys: give at least one non-empty value"));
        }
    }
}
