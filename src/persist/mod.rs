//! Persist (docs/architecture.md step 10): PostgreSQL as the system of record for history.
//!
//! The [`Persister`] is a worker in the same binary with its own consumer group
//! ([`crate::accept::PERSISTER_GROUP`]) on the events stream. It reads a batch, writes it in
//! one transaction ([`write`]: multi-row upserts keyed by `event_id`, so a batch written
//! twice changes nothing), and only then acknowledges it. Postgres down → the batch is
//! retried with backoff and the entries stay pending in Redis (another replica takes them
//! over after `claim_idle_ms`); the events stream is never trimmed past them (see
//! `crate::accept` on trimming). Ingestion never waits for Postgres: nothing on the request
//! path touches it, except the privacy endpoints.
//!
//! [`migrate`] owns the schema (the SQL files in `migrations/`), [`privacy`] the erasure,
//! export, retention and Meta data-deletion operations, each with its audit log row.
//!
//! This module must never acknowledge an entry before its transaction committed, and never
//! log message content or contact ids (only counts and event ids).

pub mod migrate;
pub mod privacy;
pub mod roles;
pub mod tls;
pub mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;

use crate::accept::{Backend, BackendError, GroupLag, StreamEntry, PERSISTER_GROUP};
use crate::config::postgres::PostgresConfig;
use crate::config::Config;
use crate::event::Event;
use crate::internal_events::{PersisterBatchWritten, PersisterFailed, PersisterLagSampled};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("postgres unavailable: {}", tls::with_hint(tls::describe(.0)))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", tls::with_hint(tls::describe(.0)))]
    Db(#[from] tokio_postgres::Error),
    #[error("invalid postgres configuration: {0}")]
    Config(String),
    #[error("migration {version} ({name}): {why}")]
    Migration {
        version: i32,
        name: &'static str,
        why: String,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PersistError {
    /// Whether the error says something about the data (retrying the same rows cannot
    /// help) rather than about reaching Postgres.
    pub fn is_data_error(&self) -> bool {
        let PersistError::Db(e) = self else {
            return false;
        };
        // Only data exceptions (22: bad value, e.g. an invalid escape in JSON), integrity
        // violations (23) and program limits (54: a row too large) are the rows' fault.
        // Anything else (connection, missing table before `migrate`, permissions,
        // shutdown) is retried: treating it as bad data would drop good events.
        match e.code() {
            Some(code) => matches!(&code.code()[..2], "22" | "23" | "54"),
            None => false,
        }
    }
}

impl PersistError {
    /// Whether PostgreSQL refused a value the caller supplied (a data exception such as a
    /// NUL character in text, or a value over a limit): the caller's mistake, not an outage.
    pub fn is_bad_value(&self) -> bool {
        match self {
            PersistError::Db(e) => e
                .code()
                .is_some_and(|c| matches!(&c.code()[..2], "22" | "54")),
            _ => false,
        }
    }
}

/// Runtime settings built from a validated `[postgres]` (and the tenants' retention).
#[derive(Debug, Clone)]
pub struct Settings {
    pub schema: String,
    pub batch_size: usize,
    pub block: Duration,
    pub claim_idle: Duration,
    pub migrate_on_start: bool,
    pub retention_interval: Duration,
    pub disconnected_source_retention_days: u32,
    pub public_base_url: Option<String>,
    /// `postgres.runtime_role`: granted its privileges after each migration run.
    pub runtime_role: Option<String>,
    /// tenant → days of history kept.
    pub tenant_retention_days: HashMap<String, u32>,
    /// Configured source id → provider name (retention of disconnected sources).
    pub sources: HashMap<String, &'static str>,
    pub tenants: std::collections::HashSet<String>,
}

/// The pool and settings: what the persister, the retention job and the privacy endpoints
/// share. Connections are made lazily: the gateway starts with Postgres down.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    settings: Arc<Settings>,
    /// `postgres.migrate_url` (the owner's connection), with the same session options.
    migrate_with: Option<(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    )>,
    /// Set once every migration of this build was seen applied in the schema.
    migrated: Arc<std::sync::atomic::AtomicBool>,
}

impl Postgres {
    pub fn new(config: &Config) -> Result<Postgres, PersistError> {
        Self::with(&config.postgres, config)
    }

    /// From a `[postgres]` section (which may differ from `config.postgres`, e.g. in
    /// `switchboard migrate --url`).
    pub fn with(pg: &PostgresConfig, config: &Config) -> Result<Postgres, PersistError> {
        let session = |url: &str, key: &str| {
            let (url, tls_params) =
                crate::config::postgres::split_tls(url).map_err(PersistError::Config)?;
            let mut c: tokio_postgres::Config = url
                .parse()
                .map_err(|_| PersistError::Config(format!("{key} is not a connection string")))?;
            let (ssl_mode, tls) = tls::connector(&tls_params).map_err(PersistError::Config)?;
            c.ssl_mode(ssl_mode);
            // Every session uses the configured schema; tests give each test its own.
            c.options(format!(
                "-c search_path={} -c statement_timeout={}",
                pg.schema, pg.statement_timeout_ms
            ));
            c.connect_timeout(Duration::from_millis(pg.connect_timeout_ms));
            c.application_name("switchboard");
            c.keepalives(true);
            Ok::<_, PersistError>((c, tls))
        };
        let (c, tls) = session(&pg.url, "postgres.url")?;
        let migrate_with = match &pg.migrate_url {
            Some(m) => Some(session(m, "postgres.migrate_url")?),
            None => None,
        };
        let manager = Manager::from_config(
            c,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Duration::from_millis(pg.connect_timeout_ms);
        let pool = Pool::builder(manager)
            .max_size(pg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| PersistError::Config(e.to_string()))?;
        let settings = Settings {
            schema: pg.schema.clone(),
            batch_size: pg.batch_size,
            block: Duration::from_millis(pg.block_ms),
            claim_idle: Duration::from_millis(pg.claim_idle_ms),
            migrate_on_start: pg.migrate_on_start,
            retention_interval: Duration::from_secs(pg.retention_interval_secs),
            disconnected_source_retention_days: pg.disconnected_source_retention_days,
            public_base_url: pg.public_base_url.clone(),
            runtime_role: pg.runtime_role.clone(),
            tenant_retention_days: config
                .tenants
                .iter()
                .filter_map(|(id, t)| t.retention_days.map(|d| (id.clone(), d)))
                .collect(),
            sources: config
                .sources
                .iter()
                .map(|(id, s)| (id.clone(), source_provider(s)))
                .collect(),
            tenants: config.tenants.keys().cloned().collect(),
        };
        Ok(Postgres {
            pool,
            settings: Arc::new(settings),
            migrate_with,
            migrated: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, PersistError> {
        Ok(self.pool.get().await?)
    }

    /// Applies pending migrations (see [`migrate`]) over `postgres.migrate_url` when set (the
    /// owner's connection, else the pool's), then grants `postgres.runtime_role` its
    /// privileges; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, PersistError> {
        let schema = &self.settings.schema;
        let role = self.settings.runtime_role.as_deref();
        match &self.migrate_with {
            Some((cfg, tls)) => {
                let (mut client, conn) = cfg.connect(tls.clone()).await?;
                let task = tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "migration connection closed");
                    }
                });
                let out = migrate::run(&mut client, schema).await;
                let out = match (out, role) {
                    (Ok(v), Some(r)) => migrate::grant_runtime(&mut client, schema, r)
                        .await
                        .map(|_| v),
                    (out, _) => out,
                };
                drop(client);
                let _ = task.await;
                out
            }
            None => {
                let mut client = self.client().await?;
                let v = migrate::run(&mut client, schema).await?;
                if let Some(r) = role {
                    migrate::grant_runtime(&mut client, schema, r).await?;
                }
                Ok(v)
            }
        }
    }

    /// Whether the everyday connection is a superuser or owns the audit log: then the audit
    /// log's append-only rule can be bypassed from it (docs/security.md, "Database roles").
    pub async fn can_bypass_audit_log(&self) -> Result<bool, PersistError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT r.rolsuper OR COALESCE(pg_has_role(current_user, t.tableowner, 'USAGE'), false)
                 FROM pg_roles r
                 LEFT JOIN pg_tables t ON t.schemaname = current_schema() AND t.tablename = 'audit_log'
                 WHERE r.rolname = current_user",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Whether every migration of this build is applied in the schema. Remembered once
    /// true (migrations are never undone), so later calls cost nothing.
    pub async fn migrated(&self) -> Result<bool, PersistError> {
        use std::sync::atomic::Ordering;
        if self.migrated.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let client = self.client().await?;
        let done = migrate::applied(&client, &self.settings.schema).await?;
        let all = migrate::MIGRATIONS
            .iter()
            .all(|m| done.contains(&m.version));
        if all {
            self.migrated.store(true, Ordering::Relaxed);
        }
        Ok(all)
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> Result<(), PersistError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

fn source_provider(s: &crate::config::SourceConfig) -> &'static str {
    use crate::config::SourceConfig as S;
    match s {
        S::Meta(_) => "meta",
        S::Twilio(_) => "twilio",
        S::Vonage(_) => "vonage",
        S::Messagebird(_) => "messagebird",
        S::Bird(_) => "bird",
        S::Telnyx(_) => "telnyx",
        S::Plivo(_) => "plivo",
        S::Sinch(_) => "sinch",
        S::Telegram(_) => "telegram",
        S::Standard(_) => "standard",
    }
}

/// The persister worker (see the module docs).
pub struct Persister {
    backend: Backend,
    pg: Postgres,
    consumer: String,
    /// Whose lag this worker reports (every partition's, on one worker per process).
    lag_of: Option<Backend>,
    /// Whether this worker applies migrations at start (one per process).
    migrates: bool,
}

impl Persister {
    pub fn new(backend: Backend, pg: Postgres) -> Persister {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Persister {
            backend,
            pg,
            // Unique per process, as the router's: a restarted process takes a dead one's
            // entries over by idle time, not by name.
            consumer: format!(
                "{host}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            lag_of: None,
            migrates: true,
        }
    }

    /// One worker per stream partition: only the first migrates and reports the lag (of
    /// all of them, read from `all`).
    pub fn for_partition(backend: Backend, all: &Backend, pg: Postgres, first: bool) -> Persister {
        let mut p = Persister::new(backend, pg);
        p.migrates = first;
        p.lag_of = first.then(|| all.clone());
        p
    }

    /// Runs until `stop` turns true. A batch being written is finished or abandoned
    /// unacknowledged (then taken over later): never acknowledged unwritten.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let settings = self.pg.settings().clone();
        let mut backoff = Backoff::default();
        if settings.migrate_on_start && self.migrates {
            loop {
                match self.pg.migrate().await {
                    Ok(applied) => {
                        if !applied.is_empty() {
                            tracing::info!(?applied, "postgres migrations applied");
                        }
                        break;
                    }
                    Err(e) => {
                        PersisterFailed {
                            op: "migrate",
                            error: &e,
                        }
                        .emit();
                        if backoff.pause(&mut stop).await {
                            return;
                        }
                    }
                }
            }
            backoff.reset();
        }
        if self.migrates {
            // Once, best effort: a deployment that runs as a superuser or as the tables'
            // owner works, but its audit log is only as append-only as that role allows.
            if let Ok(true) = self.pg.can_bypass_audit_log().await {
                tracing::warn!(
                    "postgres.url connects as a superuser or as the owner of audit_log: the audit log's append-only rule can be bypassed from it; use a runtime role (docs/security.md, \"Database roles\")"
                );
            }
        }
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        loop {
            if *stop.borrow() {
                break;
            }
            if last_lag.elapsed() >= Duration::from_secs(5) {
                self.sample_lag().await;
                last_lag = Instant::now();
            }
            let read = tokio::select! {
                _ = stop.changed() => break,
                r = self.backend.read_events_group(PERSISTER_GROUP, &self.consumer, settings.batch_size, settings.block, settings.claim_idle) => r,
            };
            if self.migrates {
                // Readiness (`/readyz`) needs to have seen the schema migrated once: checked
                // here too (one query until it is true), so that it is known before an
                // outage, not only when /readyz happens to be asked while Postgres answers.
                // After the first read, which creates the group: nothing delays that.
                let _ = self.pg.migrated().await;
            }
            let entries = match read {
                Ok(e) => e,
                Err(e) => {
                    PersisterFailed {
                        op: "read",
                        error: &e,
                    }
                    .emit();
                    if backoff.pause(&mut stop).await {
                        break;
                    }
                    continue;
                }
            };
            if entries.is_empty() {
                continue;
            }
            // Retry the same batch until it is written (or we are told to stop): its
            // entries stay pending meanwhile.
            loop {
                match self.persist(&entries).await {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        PersisterFailed {
                            op: "write",
                            error: &e,
                        }
                        .emit();
                        if backoff.pause(&mut stop).await {
                            break;
                        }
                    }
                }
            }
            if *stop.borrow() {
                break;
            }
            self.sample_lag().await;
            last_lag = Instant::now();
        }
        if let Err(e) = self
            .backend
            .retire_events_consumer(PERSISTER_GROUP, &self.consumer)
            .await
        {
            tracing::debug!(error = %e, "persister consumer not retired");
        }
        tracing::info!(consumer = %self.consumer, "persister stopped");
    }

    /// Writes one batch and acknowledges it.
    async fn persist(&self, entries: &[StreamEntry]) -> Result<(), PersistError> {
        let started = Instant::now();
        let mut events = Vec::with_capacity(entries.len());
        let mut unreadable = 0u64;
        for e in entries {
            match serde_json::from_str::<Event>(&e.payload) {
                Ok(ev) => events.push(write::Parsed {
                    event: ev,
                    payload: e.payload.clone(),
                }),
                // Deleted meanwhile (erased) or not an event this version reads: nothing to
                // store; acknowledged so that it does not block the stream's retention.
                Err(_) => {
                    if !e.payload.is_empty() {
                        tracing::warn!(stream_id = %e.id, event_id = %e.key, "events stream entry is not an event; not stored");
                    }
                    unreadable += 1;
                }
            }
        }
        let mut client = self.pg.client().await?;
        let written = match write::write_batch(&mut client, &events).await {
            Ok(w) => w,
            Err(e) if e.is_data_error() => {
                // One bad row fails the whole transaction: write them one by one, so that
                // only an event Postgres refuses is left out (and logged).
                tracing::warn!(error = %e, "batch refused by postgres; writing events one by one");
                let mut total = crate::internal_events::Written::default();
                for ev in &events {
                    match write::write_batch(&mut client, std::slice::from_ref(ev)).await {
                        Ok(w) => total.add(&w),
                        Err(e) if e.is_data_error() => {
                            PersisterFailed {
                                op: "refused_event",
                                error: &e,
                            }
                            .emit();
                            tracing::error!(event_id = %ev.event.event_id, "event refused by postgres; not stored");
                            total.refused += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                total
            }
            Err(e) => return Err(e),
        };
        drop(client);
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        self.backend.ack_events(PERSISTER_GROUP, &ids).await?;
        PersisterBatchWritten {
            entries: entries.len(),
            unreadable,
            written: &written,
            elapsed: started.elapsed(),
        }
        .emit();
        Ok(())
    }

    async fn sample_lag(&self) {
        let Some(all) = self.lag_of.as_ref() else {
            return;
        };
        if let Ok(Some(lag)) = all.events_group_lag(PERSISTER_GROUP).await {
            PersisterLagSampled { lag: lag.total() }.emit();
        }
    }
}

/// What `/readyz` shows about the persister.
#[derive(Debug, serde::Serialize)]
pub struct PersisterStatus {
    pub postgres: &'static str,
    /// Every migration of this build applied in the schema (seen at least once).
    pub migrated: bool,
    /// When down for a reason the configuration can fix (TLS, credentials): what to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    /// Events not yet stored (None before the group exists or with Redis down).
    pub lag: Option<GroupLag>,
}

pub async fn status(pg: &Postgres, backend: &Backend) -> PersisterStatus {
    let up = tokio::time::timeout(Duration::from_secs(2), pg.ping()).await;
    let migrated = tokio::time::timeout(Duration::from_secs(2), pg.migrated()).await;
    let hint = match &up {
        Ok(Err(e)) => tls::hint(&e.to_string()),
        _ => None,
    };
    PersisterStatus {
        postgres: if matches!(up, Ok(Ok(()))) {
            "up"
        } else {
            "down"
        },
        migrated: matches!(migrated, Ok(Ok(true))),
        hint,
        lag: backend
            .events_group_lag(PERSISTER_GROUP)
            .await
            .ok()
            .flatten(),
    }
}

/// Exponential pause between retries, 100 ms to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// Sleeps; true when told to stop meanwhile.
    async fn pause(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let stopped = tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(self.0) => false,
        };
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        stopped || *stop.borrow()
    }
}

/// The retention job: every `retention_interval`, until `stop` turns true.
pub async fn retain(pg: Postgres, mut stop: watch::Receiver<bool>) {
    // The first run one interval after start, not at once: the persister may still be
    // applying migrations.
    let every = pg.settings().retention_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = privacy::run_retention(&pg, time::OffsetDateTime::now_utc()).await {
            PersisterFailed {
                op: "retention",
                error: &e,
            }
            .emit();
        }
    }
}
