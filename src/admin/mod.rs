//! Administration through the API: tenants, sources with encrypted secrets, API keys with
//! roles and tenant scopes, versioned routing rule sets, and the audit log of every change.
//!
//! **Where it lives.** PostgreSQL is the system of record (`migrations/0003_admin.sql`);
//! every change bumps the one-row counter `admin_changes` in its transaction. Each replica
//! keeps what the request path needs in memory ([`Live`]: enabled API sources with their
//! secrets decrypted, API key hashes, API tenants) and reloads it when the counter moved:
//! at once after its own changes, within `[api] reload_interval_ms` (1 s) after another
//! replica's. Routing rule sets are applied through the routing store, which already
//! reaches every replica (see `crate::route`); Postgres keeps their history.
//!
//! **config.toml stays a valid static setup, and wins.** Tenants and sources defined in the
//! file are read-only through the API (409 `config_managed`); a source id or tenant id the
//! file defines cannot be created through the API. The `[api] token` is a bootstrap key with
//! role owner and global scope.
//!
//! Nothing here logs a secret or a token: sources are built into `crate::source::Source`
//! (whose secrets print `[redacted]`), tokens are kept only as their SHA-256.

pub mod auth;
pub mod destinations;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use serde_json::Value;

use crate::config::{Config, SourceConfig};
use crate::crypto::{MasterKeys, Secret};
use crate::persist::{PersistError, Postgres};
use crate::source::Source;

pub use auth::{KeyRole, Principal};

/// A tenant created through the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantRow {
    pub id: String,
    pub name: Option<String>,
    pub disabled: bool,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    /// History kept this many days (None: until erased), as `retention_days` of a
    /// config.toml tenant.
    pub retention_days: Option<u32>,
}

/// An API key as the request path needs it (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub prefix: String,
    pub role: KeyRole,
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub requests_per_sec: Option<u32>,
    pub burst: Option<u32>,
}

/// What the request path reads, replaced whole on every reload.
#[derive(Default)]
pub struct Live {
    pub version: i64,
    pub tenants: HashMap<String, TenantRow>,
    /// Enabled API sources, ready to verify.
    pub sources: HashMap<String, Arc<Source>>,
    /// SHA-256 of the token → key (revoked keys are not here).
    pub keys: HashMap<[u8; 32], Arc<KeyRecord>>,
    /// API destinations by (tenant, id), secrets decrypted, enabled or not (see
    /// `crate::delivery`).
    pub destinations: HashMap<(String, String), Arc<crate::config::delivery::DestinationConfig>>,
}

/// A key's quota (per second, burst) and its limiter.
type KeyLimiter = (u32, u32, Arc<DefaultDirectRateLimiter>);

pub struct Admin {
    pub master: Option<MasterKeys>,
    bootstrap: Option<Secret>,
    live: RwLock<Arc<Live>>,
    /// Per key id ("" for the bootstrap token): its quota and limiter.
    limiters: Mutex<HashMap<String, KeyLimiter>>,
    pub default_requests_per_sec: u32,
    pub default_burst: u32,
    /// Limit of the `[api] token` (None: not limited).
    pub token_requests_per_sec: Option<u32>,
    pub reload_interval: Duration,
    pub include_raw: bool,
    pub max_body_bytes: usize,
    pub config_tenants: HashSet<String>,
    pub config_sources: HashSet<String>,
    loaded: AtomicI64,
    reload_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("master", &self.master)
            .field("bootstrap", &self.bootstrap.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// From a validated configuration. A master key that cannot be loaded was reported by
    /// validation; here it only disables encrypted sources (and is logged, without value).
    pub fn from_config(config: &Config) -> Admin {
        let master = match MasterKeys::load(config.api.master_key_file.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "master key not loaded: sources cannot be managed through the API");
                None
            }
        };
        Admin {
            master,
            bootstrap: config.api.token.clone(),
            live: RwLock::new(Arc::new(Live::default())),
            limiters: Mutex::new(HashMap::new()),
            default_requests_per_sec: config.api.key_requests_per_sec,
            default_burst: config.api.key_burst,
            token_requests_per_sec: config.api.token_requests_per_sec,
            reload_interval: Duration::from_millis(config.api.reload_interval_ms),
            include_raw: config.streams.include_raw,
            max_body_bytes: config.server.max_body_bytes,
            config_tenants: config.tenants.keys().cloned().collect(),
            config_sources: config.sources.keys().cloned().collect(),
            loaded: AtomicI64::new(-1),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn bootstrap(&self) -> Option<&Secret> {
        self.bootstrap.as_ref()
    }

    /// The limiter of a key, created (or replaced when its quota changed) on first use.
    pub fn limiter(&self, key_id: &str, per_sec: u32, burst: u32) -> Arc<DefaultDirectRateLimiter> {
        let mut g = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, b, l)) = g.get(key_id) {
            if *p == per_sec && *b == burst {
                return l.clone();
            }
        }
        let l = Arc::new(governor::RateLimiter::direct(auth::quota(per_sec, burst)));
        g.insert(key_id.to_string(), (per_sec, burst, l.clone()));
        l
    }

    /// Whether a tenant exists: in the file, or created through the API and not disabled.
    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.config_tenants.contains(tenant)
            || self.live().tenants.get(tenant).is_some_and(|t| !t.disabled)
    }

    /// Every known tenant (file and API), sorted.
    pub fn all_tenants(&self) -> Vec<String> {
        let live = self.live();
        let mut v: Vec<String> = self
            .config_tenants
            .iter()
            .cloned()
            .chain(
                live.tenants
                    .values()
                    .filter(|t| !t.disabled)
                    .map(|t| t.id.clone()),
            )
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Reloads from Postgres when the change counter moved (or `force`). Serialized, so that
    /// an older load never replaces a newer one.
    pub async fn reload(&self, pg: &Postgres, force: bool) -> Result<bool, PersistError> {
        let _g = self.reload_lock.lock().await;
        let client = pg.client().await?;
        let version = store::change_version(&**client).await?;
        if !force && version == self.loaded.load(Ordering::Acquire) {
            return Ok(false);
        }
        let snapshot = store::load(&**client).await?;
        // Before migration 0005 (a gateway started ahead of `switchboard migrate`): none.
        let destinations = match destinations::all(&**client).await {
            Err(PersistError::Db(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
            {
                Vec::new()
            }
            other => other?,
        };
        drop(client);
        let mut live = Live {
            version,
            ..Live::default()
        };
        for t in snapshot.tenants {
            live.tenants.insert(t.id.clone(), t);
        }
        for k in snapshot.keys {
            live.keys.insert(k.0, Arc::new(k.1));
        }
        for row in snapshot.sources {
            if row.disabled || self.config_sources.contains(&row.id) {
                continue;
            }
            match self.build_source(&row) {
                Ok(src) => {
                    live.sources.insert(row.id.clone(), Arc::new(src));
                }
                // The id and the reason (never the secret) go to the log; the source
                // answers 404 until fixed.
                Err(why) => tracing::error!(source = %row.id, why = %why, "API source not loaded"),
            }
        }
        for row in destinations {
            let Some(master) = self.master.as_ref() else {
                tracing::error!(tenant = %row.tenant, destination = %row.id, "API destination not loaded: no master key is configured");
                continue;
            };
            match row.open(master) {
                Ok(d) => {
                    live.destinations
                        .insert((row.tenant.clone(), row.id.clone()), Arc::new(d));
                }
                // The ids and the reason (never the secret) go to the log; nothing is
                // delivered to it until fixed.
                Err(why) => {
                    tracing::error!(tenant = %row.tenant, destination = %row.id, why = %why, "API destination not loaded")
                }
            }
        }
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        self.loaded.store(version, Ordering::Release);
        Ok(true)
    }

    /// Decrypts a stored source and builds it.
    pub fn build_source(&self, row: &store::SourceRow) -> Result<Source, String> {
        let master = self
            .master
            .as_ref()
            .ok_or("no master key is configured (SWITCHBOARD_MASTER_KEY or api.master_key_file)")?;
        let plain = master
            .open(&row.sealed, &store::source_aad(&row.id))
            .map_err(|e| e.to_string())?;
        let secrets: Value = serde_json::from_slice(&plain).map_err(|_| "secrets unreadable")?;
        let cfg = merge_source(&row.provider, &row.settings, &secrets)
            .map_err(|_| "stored source no longer parses".to_string())?;
        Ok(Source::from_config(&row.id, &cfg, self.include_raw))
    }
}

/// The provider tag, the non-secret settings and the secrets, as one `SourceConfig`. The
/// error says nothing of the values (serde's messages may quote them).
pub fn merge_source(
    provider: &str,
    settings: &Value,
    secrets: &Value,
) -> Result<SourceConfig, serde_json::Error> {
    let mut obj = serde_json::Map::new();
    if let Some(s) = settings.as_object() {
        obj.extend(s.clone());
    }
    if let Some(s) = secrets.as_object() {
        obj.extend(s.clone());
    }
    obj.insert("provider".into(), Value::String(provider.to_string()));
    serde_json::from_value(Value::Object(obj))
}
