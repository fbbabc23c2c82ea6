//! Runtime state, built once from a validated [`Config`]: what the request path reads.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accept::memory::MemoryBackend;
use crate::accept::partitioned::Partitioned;
use crate::accept::redis::RedisBackend;
use crate::accept::{Backend, BackendError, Limits};
use crate::config::{BackendKind, Config, SourceConfig};
use crate::event::Provider;
use crate::ingest::ratelimit::Limiters;
use crate::normalize::{self, Context, Normalized};
use crate::route::store::{memory::MemoryStore, redis::RedisStore, RoutingStore};
use crate::verify::meta::MetaKeys;
use crate::verify::{self, Secret, Unverified, Verified, VerifyError};

/// How a source verifies and what it accepts.
#[derive(Debug)]
pub enum SourceKind {
    Meta {
        keys: MetaKeys,
        verify_token: Secret,
    },
    Twilio(verify::twilio::Keys),
    Vonage(verify::vonage::Keys),
    Messagebird(verify::messagebird::Keys),
    Bird(verify::bird::Keys),
    Telnyx(verify::telnyx::Keys),
    Plivo(verify::plivo::Keys),
    Sinch(verify::sinch::Keys),
    Telegram(verify::telegram::Keys),
    Standard(verify::standard::Keys),
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
    pub fn from_config(id: &str, c: &SourceConfig, include_raw: bool) -> Source {
        let (provider, kind) = match c {
            SourceConfig::Meta(m) => (
                Provider::Meta,
                SourceKind::Meta {
                    keys: MetaKeys {
                        app_secrets: m.app_secrets.clone(),
                        allow_sha1: m.allow_sha1,
                    },
                    verify_token: m.verify_token.clone(),
                },
            ),
            SourceConfig::Twilio(c) => (
                Provider::Twilio,
                SourceKind::Twilio(verify::twilio::Keys::from_config(c)),
            ),
            SourceConfig::Vonage(c) => (
                Provider::Vonage,
                SourceKind::Vonage(verify::vonage::Keys::from_config(c)),
            ),
            SourceConfig::Messagebird(c) => (
                Provider::Messagebird,
                SourceKind::Messagebird(verify::messagebird::Keys::from_config(c)),
            ),
            SourceConfig::Bird(c) => (
                Provider::Bird,
                SourceKind::Bird(verify::bird::Keys::from_config(c)),
            ),
            SourceConfig::Telnyx(c) => (
                Provider::Telnyx,
                SourceKind::Telnyx(verify::telnyx::Keys::from_config(c)),
            ),
            SourceConfig::Plivo(c) => (
                Provider::Plivo,
                SourceKind::Plivo(verify::plivo::Keys::from_config(c)),
            ),
            SourceConfig::Sinch(c) => (
                Provider::Sinch,
                SourceKind::Sinch(verify::sinch::Keys::from_config(c)),
            ),
            SourceConfig::Telegram(c) => (
                Provider::Telegram,
                SourceKind::Telegram(verify::telegram::Keys::from_config(c)),
            ),
            SourceConfig::Standard(c) => (
                Provider::Standard,
                SourceKind::Standard(verify::standard::Keys::from_config(c)),
            ),
        };
        let (channels, default_tenant, include_raw_override, public_base_url) = match c {
            SourceConfig::Meta(m) => (&m.channels, None, m.include_raw, None),
            other => {
                let common = other.common().expect("non-Meta sources have common keys");
                (
                    common.channels,
                    common.tenant.map(str::to_string),
                    common.include_raw,
                    common.public_base_url.map(str::to_string),
                )
            }
        };
        Source {
            id: id.to_string(),
            provider,
            kind,
            channels: channels.clone().into_iter().collect(),
            default_tenant,
            include_raw: include_raw_override.unwrap_or(include_raw),
            public_base_url,
        }
    }

    /// Content types (essence, lower case) this source's provider sends, checked before
    /// reading the body. The first is the one named in a 415 answer.
    pub fn accepted_media_types(&self) -> &'static [&'static str] {
        match self.kind {
            SourceKind::Meta { .. } => &["application/json"],
            SourceKind::Twilio(_) => verify::twilio::MEDIA_TYPES,
            SourceKind::Vonage(_) => verify::vonage::MEDIA_TYPES,
            SourceKind::Messagebird(_) => verify::messagebird::MEDIA_TYPES,
            SourceKind::Bird(_) => verify::bird::MEDIA_TYPES,
            SourceKind::Telnyx(_) => verify::telnyx::MEDIA_TYPES,
            SourceKind::Plivo(_) => verify::plivo::MEDIA_TYPES,
            SourceKind::Sinch(_) => verify::sinch::MEDIA_TYPES,
            SourceKind::Telegram(_) => verify::telegram::MEDIA_TYPES,
            SourceKind::Standard(_) => verify::standard::MEDIA_TYPES,
        }
    }

    /// Headers kept with a dead letter so that it can be re-verified on replay.
    pub fn signature_headers(&self) -> &'static [&'static str] {
        match self.kind {
            SourceKind::Meta { .. } => &[
                crate::verify::meta::HEADER_SHA256,
                crate::verify::meta::HEADER_SHA1,
            ],
            SourceKind::Twilio(_) => verify::twilio::SIGNATURE_HEADERS,
            SourceKind::Vonage(_) => verify::vonage::SIGNATURE_HEADERS,
            SourceKind::Messagebird(_) => verify::messagebird::SIGNATURE_HEADERS,
            SourceKind::Bird(_) => verify::bird::SIGNATURE_HEADERS,
            SourceKind::Telnyx(_) => verify::telnyx::SIGNATURE_HEADERS,
            SourceKind::Plivo(_) => verify::plivo::SIGNATURE_HEADERS,
            SourceKind::Sinch(_) => verify::sinch::SIGNATURE_HEADERS,
            SourceKind::Telegram(_) => verify::telegram::SIGNATURE_HEADERS,
            SourceKind::Standard(_) => verify::standard::SIGNATURE_HEADERS,
        }
    }

    /// What a dead letter keeps of signature header `name`: the value, except where the
    /// header is the secret itself (Telegram's token), which is kept as its digest.
    pub fn kept_header_value<'v>(&self, name: &str, value: &'v str) -> std::borrow::Cow<'v, str> {
        match self.kind {
            SourceKind::Telegram(_) if name == verify::telegram::HEADER => {
                std::borrow::Cow::Owned(verify::telegram::kept_value(value))
            }
            _ => std::borrow::Cow::Borrowed(value),
        }
    }

    /// Whether webhooks may arrive as GET with the parameters in the query string
    /// (for Meta, GET is the subscription handshake instead).
    pub fn accepts_get_delivery(&self) -> bool {
        match self.kind {
            SourceKind::Meta { .. } => false,
            SourceKind::Twilio(_) => verify::twilio::ACCEPTS_GET,
            SourceKind::Vonage(_) => verify::vonage::ACCEPTS_GET,
            SourceKind::Messagebird(_) => verify::messagebird::ACCEPTS_GET,
            SourceKind::Bird(_) => verify::bird::ACCEPTS_GET,
            SourceKind::Telnyx(_) => verify::telnyx::ACCEPTS_GET,
            SourceKind::Plivo(_) => verify::plivo::ACCEPTS_GET,
            SourceKind::Sinch(_) => verify::sinch::ACCEPTS_GET,
            SourceKind::Telegram(_) => verify::telegram::ACCEPTS_GET,
            SourceKind::Standard(_) => verify::standard::ACCEPTS_GET,
        }
    }

    /// Checks the request against this source's secrets.
    pub fn verify(&self, req: Unverified) -> Result<Verified, VerifyError> {
        match &self.kind {
            SourceKind::Meta { keys, .. } => verify::meta::verify(req, keys),
            SourceKind::Twilio(k) => verify::twilio::verify(req, k),
            SourceKind::Vonage(k) => verify::vonage::verify(req, k),
            SourceKind::Messagebird(k) => verify::messagebird::verify(req, k),
            SourceKind::Bird(k) => verify::bird::verify(req, k),
            SourceKind::Telnyx(k) => verify::telnyx::verify(req, k),
            SourceKind::Plivo(k) => verify::plivo::verify(req, k),
            SourceKind::Sinch(k) => verify::sinch::verify(req, k),
            SourceKind::Telegram(k) => verify::telegram::verify(req, k),
            SourceKind::Standard(k) => verify::standard::verify(req, k),
        }
    }

    /// Turns a verified request into events and dead letters.
    pub fn normalize(&self, v: &Verified, ctx: &Context<'_>) -> Normalized {
        match self.kind {
            SourceKind::Meta { .. } => normalize::meta::normalize(v, ctx),
            SourceKind::Twilio(_) => normalize::twilio::normalize(v, ctx),
            SourceKind::Vonage(_) => normalize::vonage::normalize(v, ctx),
            SourceKind::Messagebird(_) => normalize::messagebird::normalize(v, ctx),
            SourceKind::Bird(_) => normalize::bird::normalize(v, ctx),
            SourceKind::Telnyx(_) => normalize::telnyx::normalize(v, ctx),
            SourceKind::Plivo(_) => normalize::plivo::normalize(v, ctx),
            SourceKind::Sinch(_) => normalize::sinch::normalize(v, ctx),
            SourceKind::Telegram(_) => normalize::telegram::normalize(v, ctx),
            SourceKind::Standard(_) => normalize::standard::normalize(v, ctx),
        }
    }
}

pub struct AppState {
    pub sources: HashMap<String, Arc<Source>>,
    pub backend: Backend,
    /// The routing engine (None with `routing.enabled = false`).
    pub engine: Option<Arc<crate::route::Engine>>,
    /// PostgreSQL history (None unless `[postgres] enabled`).
    pub persist: Option<crate::persist::Postgres>,
    /// The configuration file, for `POST /v1/routing/reload`.
    pub config_path: Option<std::path::PathBuf>,
    pub limiters: Limiters,
    pub max_body_bytes: usize,
    pub trusted_proxies: HashSet<IpAddr>,
    pub api_token: Option<Secret>,
    pub metrics: PrometheusHandle,
    /// API keys, API tenants and API sources (see `crate::admin`).
    pub admin: Arc<crate::admin::Admin>,
    /// Agents' open event streams (`crate::api::stream`).
    pub agent_streams: Arc<crate::api::stream::Streams>,
}

impl AppState {
    pub fn build(config: &Config, metrics: PrometheusHandle) -> Result<AppState, BackendError> {
        let backend = build_backend(config)?;
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
            engine: None,
            persist: None,
            config_path: None,
            limiters: Limiters::from_config(config),
            max_body_bytes: config.server.max_body_bytes,
            trusted_proxies: config.server.trusted_proxies.iter().copied().collect(),
            api_token: config.api.token.clone(),
            metrics,
            admin: Arc::new(crate::admin::Admin::from_config(config)),
            agent_streams: Arc::new(crate::api::stream::Streams::from_config(config)),
        })
    }

    /// The source a webhook path names: the configuration's, else an enabled one created
    /// through the API (the file wins on a clash, which the API refuses to create anyway).
    pub fn source(&self, id: &str) -> Option<Arc<Source>> {
        match self.sources.get(id) {
            Some(s) => Some(s.clone()),
            None => self.admin.live().sources.get(id).cloned(),
        }
    }
}

/// The configured backend: one stream partition under `{<prefix>}`, or
/// `streams.partitions` of them under `{<prefix>:p<n>}` (sharing one request-path
/// connection).
pub fn build_backend(config: &Config) -> Result<Backend, BackendError> {
    let limits = Limits::from_config(config);
    let n = config.streams.partitions;
    match config.backend {
        BackendKind::Memory if n <= 1 => Ok(Backend::Memory(MemoryBackend::new(limits))),
        BackendKind::Memory => Ok(Backend::Partitioned(Partitioned::new(
            (0..n)
                .map(|_| Backend::Memory(MemoryBackend::new(limits.clone())))
                .collect(),
        ))),
        BackendKind::Redis if n <= 1 => Ok(Backend::Redis(Box::new(RedisBackend::new(
            &config.redis,
            limits,
        )?))),
        BackendKind::Redis => {
            let first = RedisBackend::new(&config.redis, limits.clone())?;
            let conn = first.connection();
            let parts = (0..n)
                .map(|p| {
                    RedisBackend::partition(
                        &config.redis,
                        limits.clone(),
                        &format!("{{{}:p{p}}}", config.redis.key_prefix),
                        conn.clone(),
                    )
                    .map(|b| Backend::Redis(Box::new(b)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Backend::Partitioned(Partitioned::new(parts)))
        }
    }
}

/// The routing store that goes with a backend: in-process with the memory backend, the
/// same Redis (and connection) with the Redis backend.
pub fn routing_store(backend: &Backend, config: &Config) -> RoutingStore {
    match backend {
        Backend::Memory(_) => RoutingStore::Memory(MemoryStore::new()),
        Backend::Redis(r) => RoutingStore::Redis(Box::new(RedisStore::new(
            r.connection(),
            &config.redis.key_prefix,
            r.command_timeout(),
        ))),
        Backend::Partitioned(p) => routing_store(&p.parts()[0], config),
    }
}
