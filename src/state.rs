//! Runtime state, built once from a validated [`Config`]: what the request path reads.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accept::memory::MemoryBackend;
use crate::accept::redis::RedisBackend;
use crate::accept::{Backend, BackendError, Limits};
use crate::config::{BackendKind, Config, SourceConfig};
use crate::event::Provider;
use crate::ingest::ratelimit::Limiters;
use crate::verify::meta::MetaKeys;
use crate::verify::Secret;

/// How a source verifies and what it accepts.
#[derive(Debug)]
pub enum SourceKind {
    Meta {
        keys: MetaKeys,
        verify_token: Secret,
    },
}

/// One configured webhook endpoint.
#[derive(Debug)]
pub struct Source {
    pub id: String,
    pub provider: Provider,
    pub kind: SourceKind,
    pub channels: HashMap<String, String>,
    pub default_tenant: Option<String>,
    pub include_raw: bool,
    /// Scheme, host and optional path prefix the provider calls (URL-signing schemes).
    pub public_base_url: Option<String>,
}

impl Source {
    fn from_config(id: &str, c: &SourceConfig, include_raw: bool) -> Source {
        match c {
            SourceConfig::Meta(m) => Source {
                id: id.to_string(),
                provider: Provider::Meta,
                kind: SourceKind::Meta {
                    keys: MetaKeys {
                        app_secrets: m.app_secrets.clone(),
                        allow_sha1: m.allow_sha1,
                    },
                    verify_token: m.verify_token.clone(),
                },
                channels: m.channels.clone().into_iter().collect(),
                default_tenant: None,
                include_raw: m.include_raw.unwrap_or(include_raw),
                public_base_url: None,
            },
        }
    }

    /// Content types this source's provider sends (checked before reading the body).
    pub fn accepted_media_type(&self) -> &'static str {
        match self.kind {
            SourceKind::Meta { .. } => "application/json",
        }
    }

    /// Headers kept with a dead letter so that it can be re-verified on replay.
    pub fn signature_headers(&self) -> &'static [&'static str] {
        match self.kind {
            SourceKind::Meta { .. } => &[
                crate::verify::meta::HEADER_SHA256,
                crate::verify::meta::HEADER_SHA1,
            ],
        }
    }
}

pub struct AppState {
    pub sources: HashMap<String, Arc<Source>>,
    pub backend: Backend,
    pub limiters: Limiters,
    pub max_body_bytes: usize,
    pub trusted_proxies: HashSet<IpAddr>,
    pub api_token: Option<Secret>,
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub fn build(config: &Config, metrics: PrometheusHandle) -> Result<AppState, BackendError> {
        let limits = Limits::from_config(config);
        let backend = match config.backend {
            BackendKind::Memory => Backend::Memory(MemoryBackend::new(limits)),
            BackendKind::Redis => {
                Backend::Redis(Box::new(RedisBackend::new(&config.redis, limits)?))
            }
        };
        Ok(AppState {
            sources: config
                .sources
                .iter()
                .map(|(id, c)| {
                    (
                        id.clone(),
                        Arc::new(Source::from_config(id, c, config.streams.include_raw)),
                    )
                })
                .collect(),
            backend,
            limiters: Limiters::from_config(config),
            max_body_bytes: config.server.max_body_bytes,
            trusted_proxies: config.server.trusted_proxies.iter().copied().collect(),
            api_token: config.api.token.clone(),
            metrics,
        })
    }
}
