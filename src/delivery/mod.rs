//! Push delivery (docs/delivery.md): every event of a tenant POSTed to its destinations,
//! signed like Standard Webhooks, at least once, each conversation in order.
//!
//! **Fan-out.** One worker per events stream partition at a time (a lease, as the
//! router's) reads the partition with the consumer group [`DELIVERY_GROUP`] (created at the
//! stream's end: a new gateway does not push the retained history), puts each event at the
//! tail of its conversation's queue of every enabled destination of its tenant that wants
//! its kind, and only then acknowledges the entries. A worker that dies leaves them pending;
//! the next lease holder takes them first (claimed at once, in stream order), and queuing an
//! event twice is a no-op (`store`), so the fan-out is at least once and keeps the order.
//! The lease is fenced like the router's `publish_fenced`: each taking of it has a newer
//! epoch, and a destination refuses what an older epoch queues once a newer one queued
//! there, so a holder that stalled past its lease never queues after its successor.
//!
//! **Attempts.** Each replica's dispatcher leases due conversations from the store (at most
//! `max_in_flight` of a destination over every replica, at most
//! `delivery.max_in_flight_total` in this one) and POSTs each one's head. The next event of
//! a conversation is due only once the head got a 2xx or was given up; a failed head is due
//! again after an exponential, jittered delay (or the receiver's `Retry-After`) and blocks
//! only its own conversation. A worker that dies holding a conversation loses its lease
//! (timeout + margin) and another replica retries it: the only way a receiver sees an event
//! twice without having failed it is such a takeover, and then with the same `webhook-id`.
//! With the Redis backend all of it is in Redis, so a restart loses nothing; with the
//! memory backend it is in this process ([`store::memory`]), as the streams are, and a
//! restart forgets it.
//!
//! **Safety and record.** See [`send`]: checked addresses at every attempt, no redirects, a
//! capped answer. Every attempt is recorded (status, latency, error; never a body): in
//! PostgreSQL when enabled (`delivery_attempts`), else the newest ones per destination in
//! the store (Redis, or this process). 410 Gone disables the destination; so does failing without a 2xx for
//! `delivery.disable_after_failing_secs` (an audit row when PostgreSQL is enabled).

pub mod send;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::accept::{Backend, BackendError, StreamEntry, StreamName};
use crate::admin::Admin;
use crate::config::delivery::{DeliveryConfig, DestinationConfig};
use crate::config::Config;
use crate::event::EventKind;
use crate::internal_events::{
    DeliveryAttempted, DeliveryFailed, DeliverySampled, DeliveryTrimmedUnread, DestinationDisabled,
};
use crate::persist::{PersistError, Postgres};
pub use store::DestKey;
use store::{Fence, Finish, Job, Queued, Store};

/// The fan-out's consumer group on the events stream(s).
pub use crate::accept::DELIVERY_GROUP;

/// How long a fan-out lease lasts without renewal (renewed between reads, every ≤ 1 s).
const FANOUT_LEASE: Duration = Duration::from_secs(10);

/// Where a destination is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[tenants.<t>.destinations.<id>]`: changed only in the file (except enabling).
    File,
    /// Created through the API (PostgreSQL).
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "config",
            Origin::Api => "api",
        }
    }
}

/// A destination as the worker sees it.
#[derive(Debug, Clone)]
pub struct Destination {
    pub key: DestKey,
    pub config: Arc<DestinationConfig>,
    pub origin: Origin,
}

fn redis_store(r: &crate::accept::redis::RedisBackend, config: &Config) -> Store {
    Store::Redis(store::redis::RedisStore::new(
        r.connection(),
        &config.redis.key_prefix,
        r.command_timeout(),
    ))
}

/// The part of an event the fan-out reads.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    tenant: String,
    kind: EventKind,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    received_at: Option<String>,
}

/// What `POST .../redeliver` asks for.
#[derive(Debug, Clone)]
pub enum Redeliver {
    Event(String),
    /// Events published from `since_ms` to `until_ms` (both included), of the destination's
    /// kinds.
    Range {
        since_ms: u64,
        until_ms: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("no event {0:?} of this tenant is in the events stream")]
    UnknownEvent(String),
    #[error("the range holds more than delivery.redeliver_max_events = {0} events of this destination; narrow it")]
    TooMany(usize),
    #[error("the destination is disabled; enable it first")]
    Disabled,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

pub struct Delivery {
    store: Store,
    settings: DeliveryConfig,
    /// The configuration file's destinations.
    file: BTreeMap<DestKey, Arc<DestinationConfig>>,
    admin: Arc<Admin>,
    pg: Option<Postgres>,
    backend: Backend,
    sender: send::Sender,
    /// This replica's name in leases and consumer groups.
    owner: String,
    wake: Notify,
    limiters: Mutex<HashMap<DestKey, (u32, Arc<DefaultDirectRateLimiter>)>>,
    slots: Arc<Semaphore>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random number in 0..n (jitter), from the operating system's generator.
fn random_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    u64::from_le_bytes(crate::crypto::sealed::random_bytes::<8>()) % n
}

/// The delay before retry number `failed` (1 = after the first failure): `initial`
/// doubled per failure up to `max`, jittered between half and all of it; a receiver's
/// `Retry-After` (429/503) instead, as it asks (the caller still never waits past the
/// horizon).
pub fn retry_delay(s: &DeliveryConfig, failed: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(ra) = retry_after {
        return ra;
    }
    let exp = failed.saturating_sub(1).min(40);
    let base = s
        .retry_initial_ms
        .saturating_mul(1u64 << exp)
        .min(s.retry_max_ms);
    Duration::from_millis(base / 2 + random_below(base / 2 + 1))
}

impl Delivery {
    /// The delivery worker of a configuration, or None when it does not run: disabled, or
    /// no destination can exist (none in the file and no PostgreSQL for API ones): then no
    /// consumer group is created and nothing runs. Its state is in Redis with the Redis
    /// backend, in this process with the memory backend.
    pub fn new(
        config: &Config,
        backend: &Backend,
        admin: Arc<Admin>,
        pg: Option<Postgres>,
    ) -> Result<Option<Delivery>, String> {
        if !crate::config::delivery::runs(config) {
            return Ok(None);
        }
        // The memory backend's state lives in this process, as its streams do.
        let store = match backend {
            Backend::Redis(r) => redis_store(r, config),
            Backend::Partitioned(p) => match &p.parts()[0] {
                Backend::Redis(r) => redis_store(r, config),
                _ => Store::Memory(store::memory::MemoryStore::new()),
            },
            Backend::Memory(_) => Store::Memory(store::memory::MemoryStore::new()),
        };
        let file = config
            .tenants
            .iter()
            .flat_map(|(t, tc)| {
                tc.destinations.iter().map(move |(id, d)| {
                    (
                        DestKey {
                            tenant: t.clone(),
                            id: id.clone(),
                        },
                        Arc::new(d.clone()),
                    )
                })
            })
            .collect();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Ok(Some(Delivery {
            store,
            settings: config.delivery.clone(),
            file,
            admin,
            pg,
            backend: backend.clone(),
            sender: send::Sender::new(
                Duration::from_millis(config.delivery.connect_timeout_ms),
                config.delivery.allow_private_networks,
            )?,
            owner: format!(
                "{host}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            wake: Notify::new(),
            limiters: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(config.delivery.max_in_flight_total)),
        }))
    }

    pub fn settings(&self) -> &DeliveryConfig {
        &self.settings
    }

    /// Every destination (file and API), enabled or not, by tenant then id.
    pub fn destinations(&self) -> Vec<Destination> {
        let live = self.admin.live();
        let mut out: Vec<Destination> = self
            .file
            .iter()
            .map(|(k, c)| Destination {
                key: k.clone(),
                config: c.clone(),
                origin: Origin::File,
            })
            .collect();
        for ((t, id), c) in &live.destinations {
            let key = DestKey {
                tenant: t.clone(),
                id: id.clone(),
            };
            // The file wins (the API refuses such ids anyway).
            if !self.file.contains_key(&key) {
                out.push(Destination {
                    key,
                    config: c.clone(),
                    origin: Origin::Api,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// A destination of `tenant` (another tenant's is unknown).
    pub fn destination(&self, tenant: &str, id: &str) -> Option<Destination> {
        let key = DestKey {
            tenant: tenant.to_string(),
            id: id.to_string(),
        };
        if let Some(c) = self.file.get(&key) {
            return Some(Destination {
                key,
                config: c.clone(),
                origin: Origin::File,
            });
        }
        let c = self
            .admin
            .live()
            .destinations
            .get(&(key.tenant.clone(), key.id.clone()))
            .cloned()?;
        Some(Destination {
            key,
            config: c,
            origin: Origin::Api,
        })
    }

    /// Whether the configuration file defines this destination.
    pub fn in_file(&self, tenant: &str, id: &str) -> bool {
        self.file.contains_key(&DestKey {
            tenant: tenant.to_string(),
            id: id.to_string(),
        })
    }

    /// The file's destinations of a tenant.
    pub fn file_destinations(&self, tenant: &str) -> Vec<Destination> {
        self.destinations()
            .into_iter()
            .filter(|d| d.origin == Origin::File && d.key.tenant == tenant)
            .collect()
    }

    /// Events queued for a destination and when the oldest was queued (ms).
    pub async fn backlog(&self, key: &DestKey) -> Result<(u64, Option<u64>), BackendError> {
        self.store.backlog(key).await
    }

    pub async fn health(&self, key: &DestKey) -> Result<store::Health, BackendError> {
        self.store.health(key).await
    }

    /// Runs the fan-out (one per stream partition), the dispatcher and the sampler until
    /// `stop`; attempts in flight get up to 10 s to finish.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        // The group first, at the stream's end (retried: Redis may be down now).
        let mut pause = Duration::from_millis(100);
        loop {
            match self
                .backend
                .ensure_events_group_at_end(DELIVERY_GROUP)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    DeliveryFailed {
                        op: "fanout",
                        error: &e,
                    }
                    .emit();
                    if sleep_or_stop(pause, &mut stop.clone()).await {
                        return;
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        let mut tasks = Vec::new();
        for (i, part) in self.backend.partitions().into_iter().enumerate() {
            tasks.push(tokio::spawn(self.clone().fan_out(part, i, stop.clone())));
        }
        tasks.push(tokio::spawn(self.clone().dispatch(stop.clone())));
        tasks.push(tokio::spawn(self.clone().sample(stop.clone())));
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!(owner = %self.owner, "delivery stopped");
    }

    async fn fan_out(
        self: Arc<Self>,
        part: Backend,
        index: usize,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut pause = Duration::from_millis(100);
        let mut held = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let done = match self.fanout_lease(index, FANOUT_LEASE).await {
                Ok(None) => {
                    held = false;
                    if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                        break;
                    }
                    continue;
                }
                Ok(Some(fence)) => {
                    held = true;
                    // Claim idle 0: as the only holder, whatever is pending was left by a
                    // previous holder (or by this one's failed batch) and goes first, in
                    // stream order.
                    let read = tokio::select! {
                        _ = stop.changed() => break,
                        r = part.read_events_group(DELIVERY_GROUP, &self.owner, self.settings.batch_size, Duration::from_secs(1), Duration::ZERO) => r,
                    };
                    match read {
                        Ok(entries) if entries.is_empty() => Ok(()),
                        Ok(entries) => match self.fan_entries(&entries, Some(fence)).await {
                            Ok(()) => {
                                let ids: Vec<String> =
                                    entries.iter().map(|e| e.id.clone()).collect();
                                part.ack_events(DELIVERY_GROUP, &ids).await.map(|_| ())
                            }
                            Err(BackendError::Fenced) => {
                                // Stalled past the lease: a successor holds it and queued
                                // already. Leave the entries to it (not acknowledged).
                                held = false;
                                tracing::warn!(owner = %self.owner, partition = index, "delivery fan-out lease lost while fanning out; the newer holder delivers the batch");
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) => {
                    DeliveryFailed {
                        op: "fanout",
                        error: &e,
                    }
                    .emit();
                    if sleep_or_stop(pause, &mut stop).await {
                        break;
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        if held {
            let _ = self.store.release(index, &self.owner).await;
        }
        let _ = part
            .retire_events_consumer(DELIVERY_GROUP, &self.owner)
            .await;
    }

    /// Takes or renews the fan-out lease of stream partition `partition` for `ttl`, as
    /// `run` does between reads: the fence of what it queues while held, None when another
    /// worker holds it.
    pub async fn fanout_lease(
        &self,
        partition: usize,
        ttl: Duration,
    ) -> Result<Option<Fence>, BackendError> {
        Ok(self
            .store
            .lease(partition, &self.owner, ttl)
            .await?
            .map(|epoch| Fence { partition, epoch }))
    }

    /// Queues a batch of events stream entries for every destination that wants them, as
    /// the holder of the fan-out lease `fence` ([`BackendError::Fenced`] when a newer holder
    /// queued already: then the rest is not queued).
    pub async fn fan_entries(
        &self,
        entries: &[StreamEntry],
        fence: Option<Fence>,
    ) -> Result<(), BackendError> {
        let dests: Vec<Destination> = self
            .destinations()
            .into_iter()
            .filter(|d| d.config.enabled)
            .collect();
        if dests.is_empty() {
            return Ok(());
        }
        let mut per: BTreeMap<usize, Vec<(&str, String, &str, EventKind)>> = BTreeMap::new();
        for e in entries {
            if e.payload.is_empty() {
                continue;
            }
            let Ok(head) = serde_json::from_str::<Head>(&e.payload) else {
                continue;
            };
            let conv = conversation_of(&head, &e.key);
            for (i, d) in dests.iter().enumerate() {
                if d.key.tenant == head.tenant && d.config.wants(head.kind) {
                    per.entry(i)
                        .or_default()
                        .push((&e.key, conv.clone(), &e.payload, head.kind));
                }
            }
        }
        let now = now_ms();
        for (i, events) in per {
            let d = &dests[i];
            let args: Vec<(&str, &str, &str)> = events
                .iter()
                .map(|(id, conv, body, _)| (*id, conv.as_str(), *body))
                .collect();
            let results = self
                .store
                .enqueue(
                    &d.key,
                    now,
                    self.settings.max_queued_per_destination,
                    false,
                    fence,
                    &args,
                )
                .await?;
            for ((id, conv, _, kind), r) in events.iter().zip(results) {
                if r == Queued::Full {
                    DeliveryAttempted {
                        outcome: "queue_full",
                        kind: kind.as_str(),
                        latency: None,
                        lag: None,
                    }
                    .emit();
                    self.record(
                        d,
                        id,
                        conv,
                        0,
                        "queue_full",
                        None,
                        Duration::ZERO,
                        Some(
                            "the destination's queue is full (delivery.max_queued_per_destination)",
                        ),
                    )
                    .await;
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// How long a conversation stays leased to one attempt: its timeout, the connection's,
    /// the rate limit's wait and a margin.
    fn lease_for(&self, c: &DestinationConfig) -> u64 {
        let wait = c
            .requests_per_sec
            .map_or(0, |r| (c.max_in_flight as u64 * 1000) / r.max(1) as u64);
        c.timeout_ms + self.settings.connect_timeout_ms + wait + 10_000
    }

    fn limiter(&self, key: &DestKey, rps: u32) -> Arc<DefaultDirectRateLimiter> {
        let mut g = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, l)) = g.get(key) {
            if *r == rps {
                return l.clone();
            }
        }
        let n = NonZeroU32::new(rps.max(1)).expect("at least 1");
        let l = Arc::new(RateLimiter::direct(Quota::per_second(n)));
        g.insert(key.clone(), (rps, l.clone()));
        l
    }

    async fn dispatch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let poll = Duration::from_millis(self.settings.poll_ms);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            if *stop.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            for d in self.destinations() {
                if !d.config.enabled {
                    continue;
                }
                let free = self.slots.available_permits();
                if free == 0 {
                    break;
                }
                let limit = free.min(d.config.max_in_flight as usize);
                let now = now_ms();
                let jobs = match self
                    .store
                    .take(
                        &d.key,
                        now,
                        now + self.lease_for(&d.config),
                        &self.owner,
                        d.config.max_in_flight,
                        limit,
                    )
                    .await
                {
                    Ok(j) => j,
                    Err(e) => {
                        DeliveryFailed {
                            op: "take",
                            error: &e,
                        }
                        .emit();
                        continue;
                    }
                };
                for job in jobs {
                    // Only this loop takes permits, and it took no more jobs than were free.
                    let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                        break;
                    };
                    tasks.spawn(self.clone().attempt(d.clone(), job, permit));
                }
            }
        }
        // Attempts in flight may finish; past 10 s they are abandoned (their leases end and
        // another worker tries them again).
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }

    /// One attempt of a leased event, and what follows from it.
    async fn attempt(self: Arc<Self>, d: Destination, job: Job, _slot: OwnedSemaphorePermit) {
        if let Some(rps) = d.config.requests_per_sec {
            self.limiter(&d.key, rps).until_ready().await;
        }
        let head: Option<Head> = serde_json::from_str(&job.body).ok();
        let kind = head.as_ref().map_or("unknown", |h| h.kind.as_str());
        let out = self
            .sender
            .send(
                &d.config.url,
                d.config.secret.expose(),
                &job.event_id,
                &job.body,
                Duration::from_millis(d.config.timeout_ms),
            )
            .await;
        let now = now_ms();
        let horizon = self.settings.retry_horizon_secs * 1000;
        let (how, outcome) = if out.delivered() {
            (Finish::Done { delivered: true }, "delivered")
        } else if out.status == Some(410) {
            (Finish::Release { due_ms: now }, "gone")
        } else {
            let failed = job.attempts + 1;
            let age = now.saturating_sub(job.queued_ms);
            if age >= horizon {
                (Finish::Done { delivered: false }, "gave_up")
            } else {
                let delay = retry_delay(&self.settings, failed, out.retry_after).as_millis() as u64;
                // The last retry happens at the horizon.
                let due = (now + delay).min(job.queued_ms + horizon);
                let outcome = if out.refused { "refused" } else { "failed" };
                (
                    Finish::Retry {
                        due_ms: due,
                        attempts: failed,
                    },
                    outcome,
                )
            }
        };
        let finished = self.finish(&d, &job, how, Some(out.delivered())).await;
        let lag = if out.delivered() {
            head.as_ref()
                .and_then(|h| h.received_at.as_deref())
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|t| {
                    let d = time::OffsetDateTime::now_utc() - t;
                    Duration::from_secs_f64(d.as_seconds_f64().max(0.0))
                })
        } else {
            None
        };
        DeliveryAttempted {
            outcome,
            kind,
            latency: Some(out.latency),
            lag,
        }
        .emit();
        let conv = job.conversation.as_str();
        self.record(
            &d,
            &job.event_id,
            conv,
            job.attempts + 1,
            outcome,
            out.status,
            out.latency,
            out.error.as_deref(),
        )
        .await;
        if outcome == "gone" {
            self.disable(&d, "gone").await;
        } else if let Some(f) = finished {
            let limit = self.settings.disable_after_failing_secs * 1000;
            if f.failing_since_ms > 0 && now.saturating_sub(f.failing_since_ms) >= limit {
                self.disable(&d, "failing").await;
            }
        }
        if finished.is_none_or(|f| f.more) {
            self.wake.notify_one();
        }
    }

    /// Ends a lease, retried a few times (Redis may blink); None when it could not be: the
    /// lease then ends by itself and the event is tried again.
    async fn finish(
        &self,
        d: &Destination,
        job: &Job,
        how: Finish,
        reached: Option<bool>,
    ) -> Option<store::Finished> {
        let mut pause = Duration::from_millis(50);
        for _ in 0..6 {
            match self
                .store
                .finish(&d.key, now_ms(), &self.owner, job, how, reached)
                .await
            {
                Ok(f) => {
                    if !f.held {
                        tracing::warn!(tenant = %d.key.tenant, destination = %d.key.id, event_id = %job.event_id, "delivery lease ended before the attempt did; another worker has the conversation");
                    }
                    return Some(f);
                }
                Err(e) => {
                    DeliveryFailed {
                        op: "finish",
                        error: &e,
                    }
                    .emit();
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        None
    }

    /// Records an attempt: PostgreSQL when enabled, else the destination's list in Redis.
    /// Best effort (the queue, not the record, decides what is delivered).
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        d: &Destination,
        event_id: &str,
        conversation: &str,
        attempt: u32,
        outcome: &str,
        status: Option<u16>,
        latency: Duration,
        error: Option<&str>,
    ) {
        let latency_ms = latency.as_millis().min(i32::MAX as u128) as i32;
        let result: Result<(), String> = match &self.pg {
            Some(pg) => async {
                let c = pg.client().await?;
                c.execute(
                    "INSERT INTO delivery_attempts (tenant, destination, event_id, conversation_id,
                         attempt, outcome, status, latency_ms, error)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &d.key.tenant,
                        &d.key.id,
                        &event_id,
                        &conversation,
                        &(attempt as i32),
                        &outcome,
                        &status.map(i32::from),
                        &latency_ms,
                        &error,
                    ],
                )
                .await?;
                Ok::<_, PersistError>(())
            }
            .await
            .map_err(|e| e.to_string()),
            None => {
                let rec = json!({
                    "event_id": event_id, "attempt": attempt,
                    "at": crate::event::rfc3339(time::OffsetDateTime::now_utc()),
                    "outcome": outcome, "status": status, "latency_ms": latency_ms,
                    "error": error,
                });
                self.store
                    .record_attempt(&d.key, rec, self.settings.attempts_kept)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            DeliveryFailed {
                op: "record",
                error: &e,
            }
            .emit();
        }
    }

    /// Disables a destination for `reason` (`gone`, `failing`): in Redis at once (every
    /// replica stops taking from it), and with PostgreSQL its row and an audit row.
    async fn disable(&self, d: &Destination, reason: &'static str) {
        match self.store.disable(&d.key, now_ms(), reason).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                DeliveryFailed {
                    op: "disable",
                    error: &e,
                }
                .emit();
                return;
            }
        }
        DestinationDisabled {
            tenant: &d.key.tenant,
            destination: &d.key.id,
            reason,
        }
        .emit();
        let Some(pg) = &self.pg else { return };
        let r: Result<(), PersistError> = async {
            let mut client = pg.client().await?;
            let tx = client.transaction().await?;
            if d.origin == Origin::Api {
                crate::admin::destinations::disable(&*tx, &d.key.tenant, &d.key.id, reason).await?;
            }
            crate::persist::privacy::audit(
                &*tx,
                "switchboard",
                Some(&d.key.tenant),
                "destination.disable",
                &format!("destination:{}", d.key.id),
                Some(json!({ "enabled": true })),
                Some(json!({ "enabled": false, "reason": reason, "origin": d.origin.as_str() })),
            )
            .await?;
            crate::admin::store::bump(&*tx).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            DeliveryFailed {
                op: "disable",
                error: &e,
            }
            .emit();
        }
    }

    /// Enables a destination in Redis (an operator's change): its queue is delivered again.
    pub async fn enable(&self, key: &DestKey) -> Result<(), BackendError> {
        self.store.enable(key).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// An operator's choice: enabled (see [`Self::enable`]) or disabled (queued events
    /// stay, new ones are not queued).
    pub async fn set_enabled(&self, key: &DestKey, enabled: bool) -> Result<(), BackendError> {
        if enabled {
            self.enable(key).await
        } else {
            self.store
                .disable(key, now_ms(), "operator")
                .await
                .map(|_| ())
        }
    }

    /// Deletes everything delivery keeps of a destination (its queues, health and, without
    /// PostgreSQL, its attempts); the caller deletes its rows. Returns how many events were
    /// queued.
    pub async fn purge(&self, key: &DestKey) -> Result<u64, BackendError> {
        self.store.purge(key, now_ms()).await
    }

    /// A contact's erasure: the queued events of these conversations, for every destination
    /// of the tenant, are deleted. Returns how many.
    pub async fn forget(
        &self,
        tenant: &str,
        conversations: &[String],
    ) -> Result<u64, BackendError> {
        let mut n = 0;
        if conversations.is_empty() {
            return Ok(0);
        }
        for d in self
            .destinations()
            .iter()
            .filter(|d| d.key.tenant == tenant)
        {
            n += self.store.forget(&d.key, now_ms(), conversations).await?;
        }
        Ok(n)
    }

    /// A page of a destination's attempts, oldest first: the newest `limit` without
    /// `after`, else those after that id. Returns the items and the last id.
    pub async fn attempts(
        &self,
        key: &DestKey,
        limit: usize,
        after: Option<u64>,
    ) -> Result<(Vec<Value>, Option<String>), DeliveryError> {
        let mut items: Vec<Value> = match &self.pg {
            Some(pg) => {
                let c = pg.client().await?;
                let after_id = after.map(|a| a.min(i64::MAX as u64) as i64);
                let sql = if after_id.is_some() {
                    "SELECT id, event_id, attempt, at, outcome, status, latency_ms, error
                     FROM delivery_attempts
                     WHERE tenant = $1 AND destination = $2 AND id > $3
                     ORDER BY id LIMIT $4"
                } else {
                    "SELECT id, event_id, attempt, at, outcome, status, latency_ms, error
                     FROM delivery_attempts
                     WHERE tenant = $1 AND destination = $2 AND ($3::bigint IS NULL)
                     ORDER BY id DESC LIMIT $4"
                };
                let rows = c
                    .query(sql, &[&key.tenant, &key.id, &after_id, &(limit as i64)])
                    .await
                    .map_err(PersistError::from)?;
                let mut v: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.get::<_, i64>(0).to_string(),
                            "event_id": r.get::<_, String>(1),
                            "attempt": r.get::<_, i32>(2),
                            "at": crate::event::rfc3339(r.get::<_, time::OffsetDateTime>(3)),
                            "outcome": r.get::<_, String>(4),
                            "status": r.get::<_, Option<i32>>(5),
                            "latency_ms": r.get::<_, i32>(6),
                            "error": r.get::<_, Option<String>>(7),
                        })
                    })
                    .collect();
                if after_id.is_none() {
                    v.reverse();
                }
                v
            }
            None => {
                let all = self.store.attempts(key).await?;
                let id_of = |v: &Value| {
                    v["id"]
                        .as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                match after {
                    Some(a) => all
                        .into_iter()
                        .filter(|v| id_of(v) > a)
                        .take(limit)
                        .collect(),
                    None => {
                        let skip = all.len().saturating_sub(limit);
                        all.into_iter().skip(skip).collect()
                    }
                }
            }
        };
        items.truncate(limit);
        let last = items
            .last()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .or_else(|| after.map(|a| a.to_string()));
        Ok((items, last))
    }

    /// Queues events again for one destination (`POST .../redeliver`): one event, or the
    /// events of a time range, from the events stream (what it still retains), only the
    /// destination's tenant's and kinds'. Returns (queued, already queued).
    pub async fn redeliver(
        &self,
        d: &Destination,
        what: &Redeliver,
    ) -> Result<(usize, usize), DeliveryError> {
        let max = self.settings.redeliver_max_events;
        let mut found: Vec<(String, String, String)> = Vec::new();
        for part in self.backend.partitions() {
            let mut after = match what {
                Redeliver::Event(_) => "0-0".to_string(),
                Redeliver::Range { since_ms, .. } => {
                    if *since_ms == 0 {
                        "0-0".to_string()
                    } else {
                        format!("{}-{}", since_ms - 1, u64::MAX)
                    }
                }
            };
            'pages: loop {
                let page = part.read(StreamName::Events, 1000, Some(&after)).await?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                for e in &page {
                    if let Redeliver::Range { until_ms, .. } = what {
                        let ms: u64 =
                            e.id.split('-')
                                .next()
                                .and_then(|m| m.parse().ok())
                                .unwrap_or(0);
                        if ms > *until_ms {
                            break 'pages;
                        }
                    }
                    if let Redeliver::Event(id) = what {
                        if &e.key != id {
                            continue;
                        }
                    }
                    let Ok(head) = serde_json::from_str::<Head>(&e.payload) else {
                        continue;
                    };
                    if head.tenant != d.key.tenant {
                        continue;
                    }
                    if matches!(what, Redeliver::Range { .. }) && !d.config.wants(head.kind) {
                        continue;
                    }
                    found.push((
                        e.key.clone(),
                        conversation_of(&head, &e.key),
                        e.payload.clone(),
                    ));
                    if found.len() > max {
                        return Err(DeliveryError::TooMany(max));
                    }
                    if matches!(what, Redeliver::Event(_)) {
                        break 'pages;
                    }
                }
                if page.len() < 1000 {
                    break;
                }
            }
            if matches!(what, Redeliver::Event(_)) && !found.is_empty() {
                break;
            }
        }
        if let Redeliver::Event(id) = what {
            if found.is_empty() {
                return Err(DeliveryError::UnknownEvent(id.clone()));
            }
        }
        let args: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        let results = self
            .store
            .enqueue(
                &d.key,
                now_ms(),
                self.settings.max_queued_per_destination,
                true,
                None,
                &args,
            )
            .await?;
        if results.contains(&Queued::Disabled) {
            return Err(DeliveryError::Disabled);
        }
        if results.contains(&Queued::Full) {
            return Err(DeliveryError::TooMany(
                self.settings.max_queued_per_destination as usize,
            ));
        }
        let queued = results.iter().filter(|r| **r == Queued::Queued).count();
        self.wake.notify_one();
        Ok((queued, results.len() - queued))
    }

    /// Gauges every 5 s; with PostgreSQL, attempts past `attempts_retention_days` deleted
    /// every hour.
    async fn sample(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut n: u64 = 0;
        let mut trimmed: Option<u64> = None;
        loop {
            if sleep_or_stop(Duration::from_secs(5), &mut stop).await {
                break;
            }
            n += 1;
            if let Ok(total) = self.backend.events_trimmed_unread().await {
                // The first sample only learns where the count stands.
                let new = trimmed.map_or(0, |t| total.saturating_sub(t));
                if trimmed != Some(total) {
                    DeliveryTrimmedUnread { total, new }.emit();
                }
                trimmed = Some(total);
            }
            let now = now_ms();
            let mut queued = 0;
            let mut oldest: Option<u64> = None;
            let mut failed = false;
            let dests = self.destinations();
            if dests.is_empty() {
                // No series before there is something to show.
                continue;
            }
            for d in dests {
                match self.store.backlog(&d.key).await {
                    Ok((q, o)) => {
                        queued += q;
                        oldest = match (oldest, o) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(e) => {
                        if !failed {
                            DeliveryFailed {
                                op: "sample",
                                error: &e,
                            }
                            .emit();
                        }
                        failed = true;
                    }
                }
            }
            let fanout_lag = self
                .backend
                .events_group_lag(DELIVERY_GROUP)
                .await
                .ok()
                .flatten()
                .map_or(0, |l| l.total());
            if !failed {
                DeliverySampled {
                    queued,
                    oldest: Duration::from_millis(oldest.map_or(0, |o| now.saturating_sub(o))),
                    fanout_lag,
                }
                .emit();
            }
            if n % 720 == 1 {
                if let Some(pg) = &self.pg {
                    let days = self.settings.attempts_retention_days as f64;
                    let r: Result<u64, PersistError> = async {
                        let c = pg.client().await?;
                        Ok(c.execute(
                            "DELETE FROM delivery_attempts WHERE at < now() - make_interval(days => $1::float8::int)",
                            &[&days],
                        )
                        .await?)
                    }
                    .await;
                    if let Err(e) = r {
                        DeliveryFailed {
                            op: "record",
                            error: &e,
                        }
                        .emit();
                    }
                }
            }
        }
    }
}

/// The queue an event waits in: its conversation, or its own when it has none (it then
/// waits for nothing).
fn conversation_of(head: &Head, event_id: &str) -> String {
    match &head.conversation_id {
        Some(c) if !c.is_empty() => c.clone(),
        _ => format!("event:{event_id}"),
    }
}

/// Sleeps `d`; true when told to stop meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(d) => false,
    };
    stopped || *stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_max() {
        let s = crate::config::delivery::defaults();
        for failed in 1..30 {
            let base = (1000u64 << (failed - 1).min(40)).min(3_600_000);
            let d = retry_delay(&s, failed, None).as_millis() as u64;
            assert!(
                d >= base / 2 && d <= base,
                "{failed}: {d} not in {}..={base}",
                base / 2
            );
        }
        assert_eq!(
            retry_delay(&s, 3, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(&s, 3, Some(Duration::from_secs(86_400))),
            Duration::from_secs(86_400)
        );
    }
}
