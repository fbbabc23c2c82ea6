//! Runtime state, built once from a validated [`Config`]: what the request path reads,
//! and the glue that keeps it current (API-managed data reloaded from PostgreSQL).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accept::memory::MemoryBackend;
use crate::accept::partitioned::Partitioned;
use crate::accept::redis::RedisBackend;
use crate::accept::{Backend, BackendError, Limits};
use crate::config::{BackendKind, Config};
use crate::crypto::Secret;
use crate::limits::Limiters;
use crate::route::store::{memory::MemoryStore, redis::RedisStore, RoutingStore};
use crate::source::Source;

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
    /// Push delivery (None with the memory backend or `delivery.enabled = false`); set up
    /// with PostgreSQL by `startup`.
    pub delivery: Option<Arc<crate::delivery::Delivery>>,
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
            delivery: None,
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

/// Loads once, then polls the change counter every `reload_interval` while the state
/// lives (the task holds only a weak reference between polls).
pub async fn start_admin_sync(state: &Arc<AppState>) {
    let Some(pg) = state.persist.clone() else {
        return;
    };
    let admin = state.admin.clone();
    match tokio::time::timeout(Duration::from_secs(5), admin.reload(&pg, true)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "admin data not loaded yet (run `switchboard migrate`?); retrying")
        }
        Err(_) => tracing::warn!("admin data not loaded yet (PostgreSQL slow); retrying"),
    }
    sync_engine(state);
    let weak: Weak<AppState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let every = admin.reload_interval;
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            let Some(state) = weak.upgrade() else { break };
            match state.admin.reload(&pg, false).await {
                Ok(changed) => {
                    if changed {
                        sync_engine(&state);
                    }
                    if failing {
                        tracing::info!("admin data reloaded again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "admin data reload failed; keeping the last one");
                    }
                    failing = true;
                }
            }
        }
    });
}

/// Tenants created through the API become routing tenants too.
pub fn sync_engine(state: &AppState) {
    if let Some(engine) = &state.engine {
        for t in state.admin.all_tenants() {
            engine.add_tenant(&t);
        }
    }
}
