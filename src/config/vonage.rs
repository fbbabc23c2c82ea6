//! Vonage Messages API (JWT) and SMS API (legacy `sig` parameter): source configuration.
//!
//! WORK IN PROGRESS (issue 3): fields and validation to be completed by the provider's author.

use crate::config::source_config;
use crate::verify::Secret;

source_config! {
    /// `[sources.<id>]` with `provider = "vonage"`.
    pub struct VonageSourceConfig {
        /// Secrets accepted, first one current (several during rotation).
        pub signature_secrets: Vec<Secret>,
    }
}

impl VonageSourceConfig {
    /// Provider-specific checks; messages name the key as `sources.<id>.<key>`.
    pub fn validate(&self, id: &str, errs: &mut Vec<String>) {
        if self.signature_secrets.is_empty() || self.signature_secrets.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!("sources.{id}.signature_secrets: give at least one non-empty value"));
        }
    }
}
