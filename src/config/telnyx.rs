//! Telnyx Messaging (API v2, Ed25519): source configuration.
//!
//! WORK IN PROGRESS (issue 3): fields and validation to be completed by the provider's author.

use crate::config::source_config;
use crate::verify::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "telnyx"`.
    pub struct TelnyxSourceConfig {
        /// Secrets accepted, first one current (several during rotation).
        pub public_keys: Vec<Secret>,
    }
}

impl TelnyxSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.public_keys.is_empty() || self.public_keys.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!("sources.{id}.public_keys: give at least one non-empty value"));
        }
    }
}
