//! Configuration: layered file + environment, validated once into runtime [`Settings`].
//!
//! Layers, later wins: built-in defaults → the TOML file → `SWITCHBOARD__SECTION__KEY`
//! environment variables. Unknown keys are rejected so that a typo cannot silently fall back
//! to a default. [`Settings::validate`]-style checks run before anything starts and say what
//! to change, in terms of the file's keys.
//!
//! The types here describe the file. The pipeline uses the runtime state built from them
//! (`crate::state`), never these types directly.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::crypto::Secret;

pub mod bird;
pub mod delivery;
pub mod messagebird;
pub mod plivo;
pub mod postgres;
pub mod published;
pub mod redis_deploy;
pub mod routing;
pub mod sinch;
pub mod standard;
pub mod telegram;
pub mod telnyx;
pub mod tls;
pub mod twilio;
pub mod vonage;

/// Declares a non-Meta source's configuration: the provider's own keys, followed by the keys
/// every such source shares (tenant, channels, include_raw, public_base_url,
/// replay_window_secs). A macro rather than `#[serde(flatten)]`, which cannot be combined
/// with `deny_unknown_fields`.
macro_rules! source_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Tenant of every event of this source, unless `channels` maps the business
            /// address (the number or id the contact wrote to) to another one.
            #[serde(default)]
            pub tenant: Option<String>,
            /// Business address (E.164 digits without `+`, sender id, bot id...) → tenant.
            #[serde(default)]
            pub channels: std::collections::BTreeMap<String, String>,
            /// Overrides `streams.include_raw` for this source.
            #[serde(default)]
            pub include_raw: Option<bool>,
            /// Scheme, host and optional path prefix the provider calls, e.g.
            /// `https://hooks.example.com` (schemes that sign the URL need it exact).
            #[serde(default)]
            pub public_base_url: Option<String>,
            /// How far a signed timestamp may be from our clock, either side.
            #[serde(default = "crate::config::default_replay_window_secs")]
            pub replay_window_secs: u64,
        }

        impl crate::config::CommonSource for $name {
            fn common(&self) -> crate::config::Common<'_> {
                crate::config::Common {
                    tenant: self.tenant.as_deref(),
                    channels: &self.channels,
                    include_raw: self.include_raw,
                    public_base_url: self.public_base_url.as_deref(),
                    replay_window_secs: self.replay_window_secs,
                }
            }
        }
    };
}
pub(crate) use source_config;

/// The shortest `[api] token` accepted: it is an owner key of every tenant.
pub const MIN_API_TOKEN_CHARS: usize = 32;

/// Default replay window: 5 minutes, the window most providers' SDKs use.
pub fn default_replay_window_secs() -> u64 {
    300
}

/// The keys every non-Meta source shares (see `source_config!`).
#[derive(Debug, Clone, Copy)]
pub struct Common<'a> {
    pub tenant: Option<&'a str>,
    pub channels: &'a BTreeMap<String, String>,
    pub include_raw: Option<bool>,
    pub public_base_url: Option<&'a str>,
    pub replay_window_secs: u64,
}

pub trait CommonSource {
    fn common(&self) -> Common<'_>;
}

/// Which implementation holds dedup keys and streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub backend: BackendKind,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub streams: StreamsConfig,
    pub redis: RedisConfig,
    pub router: RouterConfig,
    pub routing: RoutingSection,
    pub api: ApiConfig,
    pub postgres: postgres::PostgresConfig,
    /// Signed HTTP push of the events (docs/delivery.md).
    #[serde(default)]
    pub delivery: delivery::DeliveryConfig,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub shutdown_timeout_secs: u64,
    pub max_connections_per_worker: usize,
    /// Peers whose `X-Forwarded-For` is trusted for the client IP (load balancers).
    pub trusted_proxies: Vec<IpAddr>,
    /// Longest wait for a new connection's request line and headers (408 and closed after).
    pub header_read_timeout_ms: u64,
    /// Longest time a request's whole body may take to arrive, counted from its headers
    /// (408 `request_timeout` and the connection closed after).
    pub body_read_timeout_ms: u64,
    /// Most bytes of request bodies buffered at once in the whole process (503
    /// `backpressure` + Retry-After past it, before anything is allocated).
    pub max_buffered_body_bytes: usize,
    /// Most of `max_buffered_body_bytes` one client address may hold at once.
    pub max_buffered_body_bytes_per_ip: usize,
    /// Most connections open at once from one client address (IPv6: one /64); trusted
    /// proxies are not counted.
    pub max_connections_per_ip: usize,
    /// HTTPS on `bind`: the certificate chain and private key (PEM), both or neither;
    /// reloaded when the files change and on SIGHUP. Absent: plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub ip_requests_per_sec: u32,
    pub ip_burst: u32,
    pub tenant_requests_per_sec: u32,
    pub tenant_burst: u32,
    pub max_tracked_keys: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// Stream partitions (1: `{prefix}:inbound`...; N: `{prefix:p0}:inbound` ... `p<N-1>`),
    /// for spreading the streams over a Redis Cluster's nodes.
    pub partitions: usize,
    pub dedup_ttl_secs: u64,
    pub inbound_max_backlog: usize,
    pub events_max_len: usize,
    pub events_max_age_secs: u64,
    pub deadletter_max_len: usize,
    /// Dead letters older than this are trimmed (they hold raw bodies: contacts' data).
    pub deadletter_max_age_secs: u64,
    pub include_raw: bool,
    /// Memory backend only: most dedup keys remembered (oldest forgotten first).
    pub memory_max_dedup_keys: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`); empty: the one server at `url`.
    pub cluster_nodes: Vec<String>,
    pub key_prefix: String,
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// PEM file of the CA(s) that sign the servers' certificates (`rediss://` URLs);
    /// absent: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and key, for servers that require mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Accept any server certificate, for any host name. Testing only; logged loudly.
    pub tls_insecure: bool,
    /// Replicas that must acknowledge an accept's writes (Redis `WAIT`) before the webhook is
    /// answered 2xx; fewer within `replica_ack_timeout_ms` → 503. 0: answer once the primary
    /// has it (no extra round trip).
    pub min_replicas_acked: u32,
    pub replica_ack_timeout_ms: u64,
    /// Redis Sentinel: the sentinels (`redis://host:26379` or `rediss://...`) that name the
    /// primary of `sentinel_master`. Non-empty: the primary is found (and followed after a
    /// failover) through them, and `url` only lends its user, password, db and scheme.
    pub sentinel_nodes: Vec<String>,
    pub sentinel_master: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        defaults().redis
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub batch_size: usize,
    pub block_ms: u64,
    pub claim_idle_ms: u64,
    /// Router tasks per stream partition in this process. One router (of all replicas)
    /// holds a partition's lease and routes it; the others stand by to take over.
    pub workers: usize,
    /// How long a partition's router lease lasts without renewal: the takeover time after
    /// a router dies without releasing it.
    pub lease_ms: u64,
}

/// `[routing]`: the routing engine as a whole (each tenant's rules are in
/// `[tenants.<id>.routing]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// false: the router only moves events to the events stream, unassigned.
    pub enabled: bool,
    /// How often offline grace periods, overflow timeouts and idle conversations are
    /// checked, queues drained and rule set changes from other replicas picked up.
    pub sweep_interval_ms: u64,
    /// Agents' event streams (`GET /v1/tenants/{t}/agents/{a}/stream`): a heartbeat
    /// comment this often...
    pub stream_heartbeat_ms: u64,
    /// ...new events looked for this often...
    pub stream_poll_ms: u64,
    /// ...and at most this many open at once per API key (per replica).
    pub stream_max_per_key: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bootstrap bearer token for `/v1/*`: an owner key of global scope. Without one (and
    /// without `[postgres]` for API keys), the API answers 403 `api_disabled`.
    pub token: Option<Secret>,
    /// File holding the master key(s) that encrypt source secrets at rest
    /// (`SWITCHBOARD_MASTER_KEY` wins when set; see `crate::crypto`).
    #[serde(default)]
    pub master_key_file: Option<std::path::PathBuf>,
    /// Per API key (and for `token`), per replica, unless the key sets its own.
    #[serde(default = "default_key_requests_per_sec")]
    pub key_requests_per_sec: u32,
    #[serde(default = "default_key_burst")]
    pub key_burst: u32,
    /// Limit of the `token` itself (burst = twice this); absent: not limited, as before
    /// API keys existed.
    #[serde(default)]
    pub token_requests_per_sec: Option<u32>,
    /// How often each replica checks PostgreSQL for admin changes made elsewhere.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// Failed bearer-token attempts allowed per client address and minute (per replica).
    /// Past them every `/v1/` call from that address answers 429 with Retry-After, valid
    /// token or not, until the allowance refills: guessing a token costs minutes per try.
    #[serde(default = "default_failed_auth_per_min")]
    pub failed_auth_per_min: u32,
}

fn default_key_requests_per_sec() -> u32 {
    20
}
fn default_key_burst() -> u32 {
    40
}
fn default_reload_interval_ms() -> u64 {
    1000
}
fn default_failed_auth_per_min() -> u32 {
    10
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: Option<String>,
    pub requests_per_sec: Option<u32>,
    pub burst: Option<u32>,
    /// Agents, teams and rules of this tenant (see docs/routing.md). Absent: its events are
    /// published unassigned.
    pub routing: Option<crate::config::routing::RoutingConfig>,
    /// Days of this tenant's history kept in PostgreSQL (absent: kept until erased).
    pub retention_days: Option<u32>,
    /// Where this tenant's events are pushed, signed (docs/delivery.md).
    #[serde(default)]
    pub destinations: BTreeMap<String, delivery::DestinationConfig>,
}

/// One webhook endpoint, `/webhooks/{id}`, tagged by provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum SourceConfig {
    Meta(MetaSourceConfig),
    Twilio(twilio::TwilioSourceConfig),
    Vonage(vonage::VonageSourceConfig),
    Messagebird(messagebird::MessagebirdSourceConfig),
    Bird(bird::BirdSourceConfig),
    Telnyx(telnyx::TelnyxSourceConfig),
    Plivo(plivo::PlivoSourceConfig),
    Sinch(sinch::SinchSourceConfig),
    Telegram(telegram::TelegramSourceConfig),
    Standard(standard::StandardSourceConfig),
}

impl SourceConfig {
    /// The shared keys of a non-Meta source; `None` for Meta (its tenants come only from
    /// its channel map, and it signs no URL or timestamp).
    pub fn common(&self) -> Option<Common<'_>> {
        Some(match self {
            SourceConfig::Meta(_) => return None,
            SourceConfig::Twilio(c) => c.common(),
            SourceConfig::Vonage(c) => c.common(),
            SourceConfig::Messagebird(c) => c.common(),
            SourceConfig::Bird(c) => c.common(),
            SourceConfig::Telnyx(c) => c.common(),
            SourceConfig::Plivo(c) => c.common(),
            SourceConfig::Sinch(c) => c.common(),
            SourceConfig::Telegram(c) => c.common(),
            SourceConfig::Standard(c) => c.common(),
        })
    }

    /// Provider-specific checks (secrets present and well-formed...), each message naming
    /// the key as `sources.<id>.<key>`.
    fn validate_provider(&self, id: &str, errs: &mut Vec<String>) {
        match self {
            SourceConfig::Meta(_) => {}
            SourceConfig::Twilio(c) => c.validate(id, errs),
            SourceConfig::Vonage(c) => c.validate(id, errs),
            SourceConfig::Messagebird(c) => c.validate(id, errs),
            SourceConfig::Bird(c) => c.validate(id, errs),
            SourceConfig::Telnyx(c) => c.validate(id, errs),
            SourceConfig::Plivo(c) => c.validate(id, errs),
            SourceConfig::Sinch(c) => c.validate(id, errs),
            SourceConfig::Telegram(c) => c.validate(id, errs),
            SourceConfig::Standard(c) => c.validate(id, errs),
        }
    }
}

/// Checks of the shared keys of a non-Meta source.
fn validate_common(
    id: &str,
    c: &Common<'_>,
    tenants: &BTreeMap<String, TenantConfig>,
    errs: &mut Vec<String>,
) {
    match c.tenant {
        Some(t) if !tenants.contains_key(t) => errs.push(format!(
            "sources.{id}.tenant = {t:?}: no [tenants.{t}] is defined"
        )),
        None if c.channels.is_empty() => errs.push(format!(
            "sources.{id}: set `tenant` (the tenant of every event of this source) or map business numbers to tenants in `channels`"
        )),
        _ => {}
    }
    for (business, tenant) in c.channels {
        if !tenants.contains_key(tenant) {
            errs.push(format!(
                "sources.{id}.channels.{business} = {tenant:?}: no [tenants.{tenant}] is defined"
            ));
        }
    }
    if let Some(base) = c.public_base_url {
        match url::Url::parse(base) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() => {}
            _ => errs.push(format!(
                "sources.{id}.public_base_url = {base:?}: expected scheme://host[:port][/prefix] as the provider calls it, e.g. \"https://hooks.example.com\", without query or fragment"
            )),
        }
    }
    if c.replay_window_secs == 0 || c.replay_window_secs > 86_400 {
        errs.push(format!(
            "sources.{id}.replay_window_secs = {}: use 1..=86400 (default 300)",
            c.replay_window_secs
        ));
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSourceConfig {
    pub app_secrets: Vec<Secret>,
    pub verify_token: Secret,
    #[serde(default)]
    pub allow_sha1: bool,
    #[serde(default)]
    pub channels: BTreeMap<String, String>,
    /// Overrides `[streams] include_raw` for this source.
    #[serde(default)]
    pub include_raw: Option<bool>,
}

/// The defaults every layer starts from. The shipped config.toml repeats them with comments.
#[derive(Serialize)]
struct Defaults {
    backend: BackendKind,
    server: ServerConfig,
    log: LogConfig,
    limits: LimitsConfig,
    streams: StreamsConfig,
    redis: RedisConfig,
    router: RouterConfig,
    routing: RoutingSection,
    api: BTreeMap<String, String>,
    postgres: postgres::PostgresConfig,
}

fn defaults() -> Defaults {
    Defaults {
        backend: BackendKind::Memory,
        server: ServerConfig {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_timeout_secs: 30,
            max_connections_per_worker: 2048,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            max_buffered_body_bytes_per_ip: 16 * 1024 * 1024,
            max_connections_per_ip: 64,
            tls_cert_file: None,
            tls_key_file: None,
        },
        log: LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        },
        limits: LimitsConfig {
            ip_requests_per_sec: 500,
            ip_burst: 1000,
            tenant_requests_per_sec: 1000,
            tenant_burst: 2000,
            max_tracked_keys: 100_000,
        },
        streams: StreamsConfig {
            partitions: 1,
            dedup_ttl_secs: 8 * 24 * 3600,
            inbound_max_backlog: 100_000,
            events_max_len: 1_000_000,
            events_max_age_secs: 0,
            deadletter_max_len: 100_000,
            deadletter_max_age_secs: 30 * 24 * 3600,
            include_raw: true,
            memory_max_dedup_keys: 1_000_000,
        },
        redis: RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            key_prefix: "switchboard".into(),
            command_timeout_ms: 2000,
            connect_timeout_ms: 2000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_insecure: false,
            min_replicas_acked: 0,
            replica_ack_timeout_ms: 1000,
            sentinel_nodes: Vec::new(),
            sentinel_master: None,
        },
        router: RouterConfig {
            batch_size: 256,
            block_ms: 1000,
            claim_idle_ms: 30_000,
            workers: 1,
            lease_ms: 5000,
        },
        routing: RoutingSection {
            enabled: true,
            sweep_interval_ms: 1000,
            stream_heartbeat_ms: 15_000,
            stream_poll_ms: 250,
            stream_max_per_key: 4,
        },
        api: BTreeMap::new(),
        postgres: postgres::defaults(),
    }
}

/// Prefix of the variables that name a file holding a key's value:
/// `SWITCHBOARD_FILE__API__TOKEN=/run/secrets/api-token` sets `api.token` to the file's
/// content (without its trailing newline), parsed like an environment value (so a list is
/// written `["s1", "s2"]`). For secrets mounted as files (Docker and Kubernetes secrets);
/// they win over `SWITCHBOARD__` variables and the file.
pub const FILE_ENV_PREFIX: &str = "SWITCHBOARD_FILE__";

/// `(dotted key, value)` of every `SWITCHBOARD_FILE__` variable.
fn secret_files() -> Result<Vec<(String, figment::value::Value)>, ConfigError> {
    let mut out = Vec::new();
    for (var, path) in std::env::vars_os() {
        let Some(var) = var.to_str() else { continue };
        let Some(rest) = var.strip_prefix(FILE_ENV_PREFIX) else {
            continue;
        };
        let key = rest
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(ConfigError::Load(format!(
                "{var}: name a key as {FILE_ENV_PREFIX}<SECTION>__<KEY>"
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::Load(format!(
                "{var}: cannot read {}: {e}",
                std::path::Path::new(&path).display()
            ))
        })?;
        let text = text.trim_end_matches(['\n', '\r']);
        let value: figment::value::Value = text.parse().expect("infallible");
        out.push((key, value));
    }
    Ok(out)
}

/// A configuration that failed to load or validate; each line names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Defaults → `path` (when given) → environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(defaults()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "{} does not exist (pass --config FILE or run from the repository root)",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("SWITCHBOARD__").split("__"));
        for (key, value) in secret_files()? {
            fig = fig.merge(Serialized::default(&key, value));
        }
        Self::from_figment(fig)
    }

    /// Defaults → a TOML string (tests and tools).
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(defaults())).merge(Toml::string(toml)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| {
            ConfigError::Load(
                e.into_iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once, each phrased as what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if self.server.bind.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "server.bind = {:?}: expected an address like \"0.0.0.0:8080\"",
                self.server.bind
            ));
        }
        if self.server.max_body_bytes < 1024 || self.server.max_body_bytes > 64 * 1024 * 1024 {
            errs.push(format!(
                "server.max_body_bytes = {}: use 1024..=67108864 (Meta sends up to 3 MB, keep ≥ 3145728 for Meta sources)",
                self.server.max_body_bytes
            ));
        }
        tls::check_pair(
            "server.tls_cert_file",
            self.server.tls_cert_file.as_deref(),
            "server.tls_key_file",
            self.server.tls_key_file.as_deref(),
            &mut errs,
        );
        if self.server.max_connections_per_worker == 0 {
            errs.push("server.max_connections_per_worker must be at least 1".into());
        }
        for (key, ms) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
        ] {
            if !(100..=600_000).contains(&ms) {
                errs.push(format!("{key} = {ms}: use 100..=600000 (default 10000)"));
            }
        }
        if self.server.max_buffered_body_bytes_per_ip < self.server.max_body_bytes {
            errs.push(format!(
                "server.max_buffered_body_bytes_per_ip = {}: must be at least server.max_body_bytes ({}), or no largest body could ever be read",
                self.server.max_buffered_body_bytes_per_ip, self.server.max_body_bytes
            ));
        }
        if self.server.max_buffered_body_bytes < self.server.max_buffered_body_bytes_per_ip {
            errs.push(format!(
                "server.max_buffered_body_bytes = {}: must be at least server.max_buffered_body_bytes_per_ip ({})",
                self.server.max_buffered_body_bytes, self.server.max_buffered_body_bytes_per_ip
            ));
        }
        if self.server.max_connections_per_ip == 0 {
            errs.push("server.max_connections_per_ip must be at least 1".into());
        }
        for (key, v) in [
            (
                "limits.ip_requests_per_sec",
                self.limits.ip_requests_per_sec,
            ),
            ("limits.ip_burst", self.limits.ip_burst),
            (
                "limits.tenant_requests_per_sec",
                self.limits.tenant_requests_per_sec,
            ),
            ("limits.tenant_burst", self.limits.tenant_burst),
        ] {
            if v == 0 {
                errs.push(format!("{key} must be at least 1"));
            }
        }
        if self.limits.max_tracked_keys == 0 {
            errs.push("limits.max_tracked_keys must be at least 1".into());
        }
        if self.streams.dedup_ttl_secs < 60 {
            errs.push(format!(
                "streams.dedup_ttl_secs = {}: use at least 60; Meta retries for 7 days, so 691200 (8 days) is recommended",
                self.streams.dedup_ttl_secs
            ));
        }
        if self.streams.partitions == 0 || self.streams.partitions > 256 {
            errs.push(format!(
                "streams.partitions = {}: use 1..=256 (partitions spread the streams over Redis Cluster nodes)",
                self.streams.partitions
            ));
        }
        for node in &self.redis.cluster_nodes {
            if !matches!(url::Url::parse(node), Ok(u) if matches!(u.scheme(), "redis" | "rediss")) {
                errs.push(format!(
                    "redis.cluster_nodes: {:?} is not a redis:// or rediss:// URL",
                    redact_url(node)
                ));
            }
        }
        if self.streams.inbound_max_backlog == 0 {
            errs.push("streams.inbound_max_backlog must be at least 1".into());
        }
        if self.streams.deadletter_max_len == 0 {
            errs.push("streams.deadletter_max_len must be at least 1".into());
        }
        if self.streams.deadletter_max_age_secs == 0 {
            errs.push("streams.deadletter_max_age_secs must be at least 1: dead letters keep raw bodies, so they need an age limit".into());
        }
        if self.streams.events_max_len == 0 && self.streams.events_max_age_secs == 0 {
            errs.push("streams: set events_max_len or events_max_age_secs (or both): the events stream needs a retention bound".into());
        }
        if self.streams.memory_max_dedup_keys == 0 {
            errs.push("streams.memory_max_dedup_keys must be at least 1".into());
        }
        if self.backend == BackendKind::Redis {
            match url::Url::parse(&self.redis.url) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "unix" | "redis+unix") => {}
                _ => errs.push(format!(
                    "redis.url = {:?}: expected redis://host:port[/db] or rediss://...",
                    redact_url(&self.redis.url)
                )),
            }
        }
        if self.redis.key_prefix.is_empty()
            || !self
                .redis
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            errs.push(format!(
                "redis.key_prefix = {:?}: use letters, digits, '_', '-', '.', ':' (no braces: the prefix becomes the hash tag)",
                self.redis.key_prefix
            ));
        }
        self.redis
            .validate_deploy(self.backend == BackendKind::Redis, &mut errs);
        if self.redis.command_timeout_ms == 0 || self.redis.connect_timeout_ms == 0 {
            errs.push(
                "redis.command_timeout_ms and redis.connect_timeout_ms must be at least 1".into(),
            );
        }
        if self.router.batch_size == 0 || self.router.batch_size > 10_000 {
            errs.push("router.batch_size must be 1..=10000".into());
        }
        if self.router.workers == 0 || self.router.workers > 64 {
            errs.push("router.workers must be 1..=64".into());
        }
        if self.router.lease_ms < 3 * self.router.block_ms.max(100) {
            errs.push(format!(
                "router.lease_ms = {} must be at least 3 x router.block_ms ({}): the lease is renewed between reads",
                self.router.lease_ms,
                3 * self.router.block_ms.max(100)
            ));
        }
        if self.router.claim_idle_ms < 1000 {
            errs.push("router.claim_idle_ms must be at least 1000".into());
        }
        if self.routing.sweep_interval_ms < 50 || self.routing.sweep_interval_ms > 60_000 {
            errs.push("routing.sweep_interval_ms must be 50..=60000".into());
        }
        if self.routing.stream_heartbeat_ms < 10 || self.routing.stream_heartbeat_ms > 300_000 {
            errs.push("routing.stream_heartbeat_ms must be 10..=300000".into());
        }
        if self.routing.stream_poll_ms < 10 || self.routing.stream_poll_ms > 10_000 {
            errs.push("routing.stream_poll_ms must be 10..=10000".into());
        }
        if self.routing.stream_max_per_key == 0 || self.routing.stream_max_per_key > 1000 {
            errs.push("routing.stream_max_per_key must be 1..=1000".into());
        }
        for (id, t) in &self.tenants {
            if !valid_id(id) {
                errs.push(format!(
                    "tenants.{id}: ids use a-z, 0-9, '_' and '-' (1-64 chars)"
                ));
            }
            if t.retention_days == Some(0) {
                errs.push(format!(
                    "tenants.{id}.retention_days must be at least 1 (remove it to keep history until erased)"
                ));
            }
            if t.requests_per_sec == Some(0) || t.burst == Some(0) {
                errs.push(format!(
                    "tenants.{id}: requests_per_sec and burst must be at least 1"
                ));
            }
            if let Some(r) = &t.routing {
                // Strategy names are checked against the running build's registry when
                // the engine starts; here only their shape.
                let shape = |s: &str| {
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                if let Err(e) = crate::config::routing::Ruleset::compile(
                    id,
                    0,
                    r.clone(),
                    &format!("tenants.{id}.routing"),
                    &shape,
                ) {
                    errs.extend(e);
                }
            }
        }
        self.postgres.validate(&mut errs);
        delivery::validate(&self.delivery, &mut errs);
        for (tenant, t) in &self.tenants {
            for (id, d) in &t.destinations {
                delivery::validate_destination(
                    &format!("tenants.{tenant}.destinations.{id}"),
                    id,
                    d,
                    self.delivery.allow_private_networks,
                    &mut errs,
                );
            }
        }
        if self.sources.is_empty() {
            errs.push("no [sources.<id>] defined: add at least one webhook source".into());
        }
        for (id, source) in &self.sources {
            validate_source(
                id,
                source,
                &self.tenants,
                self.server.max_body_bytes,
                &mut errs,
            );
        }
        if self.api.key_requests_per_sec == 0
            || self.api.key_burst == 0
            || self.api.token_requests_per_sec == Some(0)
        {
            errs.push(
                "api.key_requests_per_sec, api.key_burst and api.token_requests_per_sec must be at least 1"
                    .into(),
            );
        }
        if let Some(token) = &self.api.token {
            if token.expose().chars().count() < MIN_API_TOKEN_CHARS {
                errs.push(format!(
                    "api.token is shorter than {MIN_API_TOKEN_CHARS} characters: use a random one, e.g. `openssl rand -hex 32`, in SWITCHBOARD__API__TOKEN (or {FILE_ENV_PREFIX}API__TOKEN=<file>)"
                ));
            }
        }
        if self.api.reload_interval_ms < 50 || self.api.reload_interval_ms > 60_000 {
            errs.push("api.reload_interval_ms must be 50..=60000".into());
        }
        if let Err(e) = crate::crypto::MasterKeys::load(self.api.master_key_file.as_deref()) {
            errs.push(format!(
                "{e} (from {} or api.master_key_file)",
                crate::crypto::ENV_VAR
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

/// Checks of one source (its id, shared keys, provider keys), each message naming the key
/// as `sources.<id>.<key>`: for the file and for sources created through the API.
pub fn validate_source(
    id: &str,
    source: &SourceConfig,
    tenants: &BTreeMap<String, TenantConfig>,
    max_body_bytes: usize,
    errs: &mut Vec<String>,
) {
    if !valid_id(id) {
        errs.push(format!(
            "sources.{id}: ids use a-z, 0-9, '_' and '-' (1-64 chars); prefer '_' so the source can be set from the environment"
        ));
    }
    if let Some(common) = source.common() {
        validate_common(id, &common, tenants, errs);
    }
    source.validate_provider(id, errs);
    if let SourceConfig::Meta(m) = source {
        if m.app_secrets.is_empty() || m.app_secrets.iter().any(|s| s.expose().is_empty()) {
            errs.push(format!(
                "sources.{id}.app_secrets: give at least one non-empty App Secret (Meta App Dashboard → App settings → Basic)"
            ));
        }
        if m.verify_token.expose().is_empty() {
            errs.push(format!(
                "sources.{id}.verify_token: must not be empty (it is the Verify Token typed in the App Dashboard)"
            ));
        }
        if m.channels.is_empty() {
            errs.push(format!(
                "sources.{id}.channels: map at least one business id (phone_number_id, WABA id, Page id or Instagram account id) to a tenant"
            ));
        }
        if max_body_bytes < 3 * 1024 * 1024 {
            errs.push(format!(
                "sources.{id}: server.max_body_bytes = {max_body_bytes} is below Meta's 3 MB payloads; raise it to at least 3145728"
            ));
        }
        for (business, tenant) in &m.channels {
            if !tenants.contains_key(tenant) {
                errs.push(format!(
                    "sources.{id}.channels.{business} = {tenant:?}: no [tenants.{tenant}] is defined"
                ));
            }
        }
    }
}

/// Whether `id` is a valid tenant or source id: a-z, 0-9, '_' and '-' (1-64 chars).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A Redis URL with its password replaced, for messages and logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "[unparseable url]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [tenants.acme]
        [sources.meta_main]
        provider = "meta"
        app_secrets = ["s"]
        verify_token = "v"
        channels = { "123" = "acme" }
    "#;

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let c = Config::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(c.backend, BackendKind::Memory);
        assert!(c.sources.contains_key("meta_demo"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.streams.dedup_ttl_secs, 8 * 24 * 3600);
        assert_eq!(c.redis.key_prefix, "switchboard");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml(&format!("{MINIMAL}\n[server]\nbindd = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
        let err = Config::from_toml(&format!("{MINIMAL}\nsecret_sauce = 1")).unwrap_err();
        assert!(err.to_string().contains("secret_sauce"), "{err}");
    }

    #[test]
    fn validation_names_keys_and_never_prints_secrets() {
        let toml = r#"
            [server]
            bind = "nope"
            [sources.meta_main]
            provider = "meta"
            app_secrets = ["topsecretvalue"]
            verify_token = "v"
            channels = { "123" = "ghost" }
        "#;
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains("server.bind"), "{err}");
        assert!(err.contains("sources.meta_main.channels.123"), "{err}");
        assert!(!err.contains("topsecretvalue"), "{err}");
        let c = Config::from_toml(MINIMAL).unwrap();
        assert!(!format!("{c:?}").contains("\"s\""));
    }

    #[test]
    fn redis_url_password_is_redacted() {
        assert_eq!(
            redact_url("redis://user:pw@host:6379/0"),
            "redis://user:REDACTED@host:6379/0"
        );
    }
}
