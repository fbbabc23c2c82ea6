//! The Redis backend: dedup keys and streams in Redis (production).
//!
//! Data structures (all keys share the hash tag `{prefix}`, so every script touches one
//! slot of a Redis Cluster):
//! - `{prefix}:inbound` — stream of accepted events not yet routed; field `event_id` and
//!   `event` (JSON); written by an accept transaction, also `tok` (the token its dedup key
//!   was set to, or that it tried to set: a duplicate's entry, which the router drops).
//!   Consumer group `router`. Entries are deleted once routed (XACK + XDEL in one
//!   transaction), so its length *is* the backlog; it is never trimmed, and accept refuses
//!   (503) past `inbound_max_backlog` instead (exactly with one gateway process; see
//!   `TRANSACTION_MARGIN`).
//! - `{prefix}:events` — stream the CRM backends read with XREADGROUP; fields `event_id`,
//!   `event`. Trimmed approximately to `events_max_len` and/or `events_max_age_secs`, but
//!   while the consumer group `persister` exists never past its oldest unacknowledged entry
//!   (`trim.lua`; the persister's acknowledgements do the trimming then).
//! - `{prefix}:deadletter` — verified payload parts that could not become events; fields
//!   `deadletter_id` and `deadletter` (JSON: reason, detail, source, provider, received_at,
//!   part, body).
//!   Trimmed approximately to `deadletter_max_len`, and exactly to `deadletter_max_age_secs`
//!   (on every dead letter stored, and by [`RedisBackend::trim_deadletters`]).
//! - `{prefix}:dedup:v2:<event id | dead-letter id>` — string holding the stream id the item
//!   was stored under (by the script), the token of its entry (by a transaction) or a copy
//!   of its `v1` key (by a transaction that found one); expires after `dedup_ttl_secs`.
//!   The version changes with the id derivation: `v1` keys were written by versions whose
//!   event ids were not scoped to the source. They are still checked (an item is a
//!   duplicate when its `v2` key or the `v1` key of its [legacy identity](super::Item::legacy)
//!   exists), never written; they expire within `dedup_ttl_secs` of the upgrade, after
//!   which the check costs one lookup of an absent key.
//!
//! Two connections: one multiplexed connection for request-path commands, and one for the
//! router's blocking reads (a blocking XREADGROUP would otherwise stall every request
//! pipelined behind it). Both reconnect on their own; a call that fails or times out is
//! [`BackendError::Unavailable`], which the edge answers with 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{RedisError, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::conn::{client_for, connect, with_hint, RedisConn};
use super::{
    AcceptReport, BackendError, Batch, GroupLag, Limits, StreamEntry, StreamName, StreamStats,
    DELIVERY_GROUP, PERSISTER_GROUP,
};
use crate::config::RedisConfig;
use crate::internal_events::ReplicaAckMissing;

/// The router's consumer group on the inbound stream.
pub const ROUTER_GROUP: &str = "router";

/// Key names under one prefix. Versioned where the value format could change.
#[derive(Debug, Clone)]
pub struct Keys {
    pub inbound: String,
    pub events: String,
    pub deadletter: String,
    /// Who routes this partition (one router at a time keeps each conversation's order).
    pub lease: String,
    /// Written before `WAIT` when an accept found only duplicates (see `accept_group`).
    ack_fence: String,
    /// `<publish_fence>:<router>`: bumped when a router's publish check refuses, so that
    /// the transaction behind it does nothing (see `publish_transaction`).
    publish_fence: String,
    dedup_prefix: String,
    legacy_dedup_prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys::tagged(&format!("{{{prefix}}}"))
    }

    /// Keys under a hash tag such as `{switchboard}` or `{switchboard:p3}` (partition 3).
    pub fn tagged(tag: &str) -> Keys {
        Keys {
            inbound: format!("{tag}:inbound"),
            events: format!("{tag}:events"),
            deadletter: format!("{tag}:deadletter"),
            lease: format!("{tag}:router-lease"),
            ack_fence: format!("{tag}:ack-fence"),
            publish_fence: format!("{tag}:publish-fence"),
            dedup_prefix: format!("{tag}:dedup:v2:"),
            legacy_dedup_prefix: format!("{tag}:dedup:v1:"),
        }
    }
    pub fn dedup(&self, key: &str) -> String {
        format!("{}{key}", self.dedup_prefix)
    }
    /// Where an earlier version kept the dedup key of an item (see the module docs).
    pub fn legacy_dedup(&self, item: &super::Item) -> String {
        format!("{}{}", self.legacy_dedup_prefix, item.legacy())
    }
    fn stream(&self, s: StreamName) -> &str {
        match s {
            StreamName::Inbound => &self.inbound,
            StreamName::Events => &self.events,
            StreamName::DeadLetter => &self.deadletter,
        }
    }
}

#[derive(Clone)]
pub struct RedisBackend {
    conn: RedisConn,
    blocking: RedisConn,
    /// With `redis.min_replicas_acked` > 0: the connection accepts run on, each followed by
    /// `WAIT` (which blocks the connection it runs on, so not the shared one).
    replicated: Option<Replicated>,
    keys: Keys,
    limits: std::sync::Arc<Limits>,
    accept_script: Script,
    publish_script: Script,
    append_script: Script,
    lease_script: Script,
    release_script: Script,
    ack_events_script: Script,
    group_lag_script: Script,
    command_timeout: Duration,
    /// The connection settings (a failed cluster ping asks a seed node directly why).
    config: std::sync::Arc<RedisConfig>,
    /// When the router last looked for abandoned entries (ms since the epoch; 0 = now due).
    last_claim: std::sync::Arc<AtomicU64>,
    /// The client the router's publish transactions connect with, for a single server
    /// (through Sentinel the current primary's client is asked for at each publish; a
    /// cluster publishes with the script), and their connection with the address it was
    /// opened to (see `publish_transaction`).
    publish_client: Option<redis::Client>,
    publish_conn:
        std::sync::Arc<tokio::sync::Mutex<Option<(String, redis::aio::MultiplexedConnection)>>>,
    /// Queue of the group-commit task; `None` when created outside a runtime (each accept
    /// is then its own script call) and in the task's own copy.
    combiner: Option<mpsc::Sender<Pending>>,
    /// The inbound stream's length as accepts saw it: far enough below the bound, accepts
    /// run as a transaction of plain commands instead of the script (see
    /// `accept_transaction`).
    backlog_seen: std::sync::Arc<std::sync::Mutex<BacklogSeen>>,
    /// Tokens marking which of an event's entries holds its dedup key (`tok` field):
    /// this process's random prefix and a counter.
    token_prefix: std::sync::Arc<str>,
    token_seq: std::sync::Arc<AtomicU64>,
}

/// The inbound backlog as the accepts of this process saw it, in the order Redis ran them:
/// the id of the last entry a call appended orders its figure, so that a call whose answer
/// is handled late cannot put back an older, lower one.
#[derive(Debug, Clone, Copy, Default)]
struct BacklogSeen {
    /// The last entry appended by the call that saw `backlog`.
    after: (u64, u64),
    /// None before the first accept.
    backlog: Option<u64>,
}

impl BacklogSeen {
    /// A call saw `backlog` after its appends, the last being `after` (None: it appended
    /// nothing, so its figure is not ordered and may only raise the one kept).
    fn note(&mut self, after: Option<(u64, u64)>, backlog: u64) {
        match after {
            Some(id) if id > self.after => {
                self.after = id;
                self.backlog = Some(backlog);
            }
            Some(_) => {}
            None => self.backlog = Some(self.backlog.map_or(backlog, |b| b.max(backlog))),
        }
    }
}

/// A stream id `<ms>-<seq>` as a pair that orders like the id.
fn id_pair(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Accepts that replicas must acknowledge before the 2xx.
#[derive(Clone)]
struct Replicated {
    conn: RedisConn,
    replicas: u32,
    timeout: Duration,
}

/// A script with the events stream's retention functions (`trim.lua`) in front.
fn with_trim(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("trim.lua")))
}

/// A publish/append reply: the count, or `-1 - n` when the persister has `n` unacknowledged
/// entries, at its bound.
/// Take the lease when free, renew it when ours.
pub const LEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// The publish transaction's check and retention (see `publish_transaction`), sent whole
/// with `EVAL` (they run once per batch): inside the transaction, an `EVALSHA` refused with
/// `NOSCRIPT` (after a restart of Redis) would fail only after the appends.
static PUBLISH_CHECK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}\n{}",
        include_str!("trim.lua"),
        include_str!("publish_check.lua")
    )
});
static PUBLISH_TRIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}\n{}",
        include_str!("trim.lua"),
        include_str!("publish_trim.lua")
    )
});

/// Delete the lease only when ours.
pub const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn appended(reply: i64) -> Result<usize, BackendError> {
    if reply < 0 {
        Err(BackendError::Backpressure {
            backlog: (-1 - reply).max(0) as u64,
        })
    } else {
        Ok(reply as usize)
    }
}

fn invalid(e: RedisError) -> BackendError {
    BackendError::Unavailable(format!("invalid redis configuration: {e}"))
}

/// A failed call, with what to change when the error is about the configuration (TLS,
/// credentials).
fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(with_hint(e.to_string()))
}

impl RedisBackend {
    /// Connects lazily: the gateway starts even when Redis is down (and answers 503 until it
    /// is back), so that an orchestrator's restart order does not matter.
    pub fn new(cfg: &RedisConfig, limits: Limits) -> Result<RedisBackend, BackendError> {
        let command_timeout = Duration::from_millis(cfg.command_timeout_ms);
        let conn = connect(cfg, command_timeout).map_err(invalid)?;
        Self::partition(cfg, limits, &format!("{{{}}}", cfg.key_prefix), conn)
    }

    /// The backend of one stream partition (hash tag `tag`), sharing the request-path
    /// connection `conn` with the other partitions. It has a connection of its own for
    /// blocking reads: a blocking XREADGROUP holds the connection it runs on.
    pub fn partition(
        cfg: &RedisConfig,
        limits: Limits,
        tag: &str,
        conn: RedisConn,
    ) -> Result<RedisBackend, BackendError> {
        let command_timeout = Duration::from_millis(cfg.command_timeout_ms);
        // Blocking reads wait up to router.block_ms; the timeout must outlast them.
        let blocking = connect(cfg, command_timeout + Duration::from_secs(60)).map_err(invalid)?;
        let replicated = if cfg.min_replicas_acked > 0 {
            let timeout = Duration::from_millis(cfg.replica_ack_timeout_ms);
            Some(Replicated {
                conn: connect(cfg, command_timeout + timeout).map_err(invalid)?,
                replicas: cfg.min_replicas_acked,
                timeout,
            })
        } else {
            None
        };
        let mut backend = RedisBackend {
            conn,
            blocking,
            replicated,
            keys: Keys::tagged(tag),
            limits: std::sync::Arc::new(limits),
            accept_script: Script::new(include_str!("accept.lua")),
            publish_script: with_trim(include_str!("publish.lua")),
            append_script: with_trim(include_str!("append.lua")),
            lease_script: Script::new(LEASE_LUA),
            release_script: Script::new(RELEASE_LUA),
            ack_events_script: with_trim(include_str!("ack_events.lua")),
            group_lag_script: with_trim(include_str!("group_lag.lua")),
            command_timeout,
            last_claim: std::sync::Arc::new(AtomicU64::new(0)),
            config: std::sync::Arc::new(cfg.clone()),
            publish_client: if cfg.sentinel_nodes.is_empty() && cfg.cluster_nodes.is_empty() {
                Some(client_for(cfg, &cfg.url).map_err(invalid)?)
            } else {
                None
            },
            publish_conn: Default::default(),
            combiner: None,
            backlog_seen: Default::default(),
            token_prefix: uuid::Uuid::new_v4().simple().to_string()[..16].into(),
            token_seq: std::sync::Arc::new(AtomicU64::new(0)),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (tx, rx) = mpsc::channel(COMBINER_QUEUE);
            runtime.spawn(combine(backend.clone(), rx));
            backend.combiner = Some(tx);
        }
        Ok(backend)
    }

    fn claim_due(&self, claim_idle: Duration) -> bool {
        let now = now_ms();
        let last = self.last_claim.load(Ordering::Relaxed);
        let every = (claim_idle.as_millis() as u64 / 4).max(1);
        if now.saturating_sub(last) >= every {
            self.last_claim.store(now, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The request-path connection (shared by the routing store).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Runs a request-path future under the command timeout (the connection's own timeout
    /// does not cover reconnect attempts).
    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.command_timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(BackendError::Unavailable("redis call timed out".into())),
        }
    }

    /// Dedup and enqueue one request's items. Concurrent requests are combined into one
    /// script call (see [`combine`]); each still gets its own all-or-nothing outcome.
    pub async fn accept(&self, batch: Batch) -> Result<AcceptReport, BackendError> {
        if batch.events.is_empty() && batch.dead_letters.is_empty() {
            return Ok(AcceptReport::default());
        }
        let Some(queue) = &self.combiner else {
            return self.accept_group(&[&batch]).await?.remove(0);
        };
        let (done, outcome) = oneshot::channel();
        let stopped = || BackendError::Unavailable("the accept combiner has stopped".into());
        let wait = async {
            queue
                .send(Pending { batch, done })
                .await
                .map_err(|_| stopped())?;
            outcome.await.map_err(|_| stopped())?
        };
        // Queued behind at most a few calls in flight, each bounded by the command timeout
        // (and the replicas' acknowledgement).
        let bound = self.command_timeout * 2
            + self
                .replicated
                .as_ref()
                .map_or(Duration::ZERO, |r| r.timeout * 2);
        match tokio::time::timeout(bound, wait).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Unavailable("redis accept timed out".into())),
        }
    }

    /// Several requests' batches in one call; per batch its report, or backpressure.
    async fn accept_group(
        &self,
        batches: &[&Batch],
    ) -> Result<Vec<Result<AcceptReport, BackendError>>, BackendError> {
        if self.transaction_fits(batches) {
            return self.accept_transaction(batches).await;
        }
        self.accept_script(batches).await
    }

    /// Whether `batches` may be accepted by [`Self::accept_transaction`]: events only (dead
    /// letters are rare, and their stream is trimmed by the script), not on a cluster, and
    /// the backlog last seen far enough below `inbound_max_backlog` that this process's
    /// groups in flight, all full, cannot cross it before one of them sees the backlog
    /// again. Near the bound (or before the first accept) the script decides, refusing
    /// exactly at the bound.
    fn transaction_fits(&self, batches: &[&Batch]) -> bool {
        // A cluster connection routes each command of a pipeline on its own.
        if matches!(self.conn, RedisConn::Cluster(_))
            || batches.iter().any(|b| !b.dead_letters.is_empty())
        {
            return false;
        }
        let Some(seen) = self.seen().backlog else {
            return false;
        };
        let events: u64 = batches.iter().map(|b| b.events.len() as u64).sum();
        seen.saturating_add(events)
            .saturating_add(TRANSACTION_MARGIN)
            <= self.limits.inbound_max_backlog
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, BacklogSeen> {
        self.backlog_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Dedup and enqueue as one `MULTI`/`EXEC` of plain commands, so that the events' bytes
    /// never enter Lua (which copies and hashes every byte of every string it is given:
    /// the script cost about twice the Redis CPU of this, per event). Per event: `COPY` of
    /// its legacy dedup key to its dedup key (done only when the legacy key exists and the
    /// dedup key does not: a redelivery across the upgrade then finds its dedup key set),
    /// `SET` of its dedup key `NX` to a token unique to this entry, and `XADD` of the entry
    /// with that token (`tok`). A transaction cannot make the `XADD` depend on the `SET`,
    /// so a duplicate's entry is written too; the answer counts it as a duplicate (its
    /// `SET` found the key) and the router drops it unpublished: it publishes an entry with
    /// a token only while the dedup key holds that token (`drop_duplicates`). Dedup and
    /// enqueue stay one atomic step: the entry that set the key is in the stream, whatever
    /// happens next.
    async fn accept_transaction(
        &self,
        batches: &[&Batch],
    ) -> Result<Vec<Result<AcceptReport, BackendError>>, BackendError> {
        let ttl = self.limits.dedup_ttl.as_secs().max(1);
        let mut tx = redis::pipe();
        tx.atomic();
        tx.cmd("XLEN").arg(&self.keys.inbound);
        let mut n = 0usize;
        for item in batches.iter().flat_map(|b| &b.events) {
            let token = format!(
                "{}.{}",
                self.token_prefix,
                self.token_seq.fetch_add(1, Ordering::Relaxed)
            );
            let key = self.keys.dedup(&item.key);
            tx.cmd("COPY").arg(self.keys.legacy_dedup(item)).arg(&key);
            tx.cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("EX")
                .arg(ttl);
            tx.cmd("XADD")
                .arg(&self.keys.inbound)
                .arg("*")
                .arg("event_id")
                .arg(&item.key)
                .arg("tok")
                .arg(&token)
                .arg("event")
                .arg(&item.payload);
            n += 1;
        }
        let mut conn = match &self.replicated {
            Some(rep) => rep.conn.clone(),
            None => self.conn.clone(),
        };
        let replies: Vec<Value> = self.timed(tx.query_async(&mut conn)).await?;
        if replies.len() != 1 + 3 * n {
            return Err(BackendError::Protocol(format!(
                "accept transaction returned {} replies for {n} events",
                replies.len()
            )));
        }
        if let Some(Value::ServerError(e)) =
            replies.iter().find(|r| matches!(r, Value::ServerError(_)))
        {
            return Err(BackendError::Unavailable(format!(
                "accept transaction: {e:?}"
            )));
        }
        let backlog = match &replies[0] {
            Value::Int(len) => (*len).max(0) as u64,
            other => {
                return Err(BackendError::Protocol(format!(
                    "accept transaction: XLEN answered {other:?}"
                )))
            }
        };
        let last = match replies.last() {
            Some(Value::BulkString(id)) => std::str::from_utf8(id).ok().and_then(id_pair),
            Some(Value::SimpleString(id)) => id_pair(id),
            _ => None,
        };
        if last.is_none() {
            return Err(BackendError::Protocol(format!(
                "accept transaction: XADD answered {:?}",
                replies.last()
            )));
        }
        self.seen().note(last, backlog + n as u64);
        let mut fresh = replies[1..].chunks(3).map(|r| !matches!(r[1], Value::Nil));
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            out.push(Ok(AcceptReport {
                events: fresh.by_ref().take(b.events.len()).collect(),
                dead_letters: Vec::new(),
            }));
        }
        if let Some(rep) = &self.replicated {
            // Every event wrote (its entry, at least) on this connection, after any original
            // a duplicate has: WAIT covers those too.
            self.wait_for_replicas(rep).await?;
        }
        Ok(out)
    }

    /// [`Self::accept_group`] through `accept.lua`: exact at the inbound bound, and for dead
    /// letters.
    async fn accept_script(
        &self,
        batches: &[&Batch],
    ) -> Result<Vec<Result<AcceptReport, BackendError>>, BackendError> {
        let mut inv = self.accept_script.prepare_invoke();
        inv.key(&self.keys.inbound).key(&self.keys.deadletter);
        for b in batches {
            for item in b.events.iter().chain(&b.dead_letters) {
                inv.key(self.keys.dedup(&item.key));
            }
        }
        for b in batches {
            for item in b.events.iter().chain(&b.dead_letters) {
                inv.key(self.keys.legacy_dedup(item));
            }
        }
        inv.arg(self.limits.dedup_ttl.as_secs().max(1))
            .arg(self.limits.inbound_max_backlog)
            .arg(self.limits.deadletter_max_len)
            .arg(batches.len())
            .arg(self.deadletters_min_id());
        for b in batches {
            inv.arg(b.events.len()).arg(b.dead_letters.len());
        }
        for b in batches {
            for item in b.events.iter().chain(&b.dead_letters) {
                inv.arg(&item.payload);
            }
        }
        for b in batches {
            for item in &b.events {
                inv.arg(&item.key);
            }
        }
        let Some(rep) = &self.replicated else {
            let mut conn = self.conn.clone();
            let reply: Vec<i64> = self.timed(inv.invoke_async(&mut conn)).await?;
            return self.parse_group_reply(batches, &reply);
        };
        let mut conn = rep.conn.clone();
        let reply: Vec<i64> = self.timed(inv.invoke_async(&mut conn)).await?;
        let outcomes = self.parse_group_reply(batches, &reply)?;
        if outcomes.iter().any(Result::is_ok) {
            // A duplicate's original was written earlier, maybe on a connection that has
            // since been replaced: WAIT covers only this connection's writes, so a write
            // here first moves its offset past the original.
            let duplicate = outcomes
                .iter()
                .flatten()
                .any(|r| r.events.iter().chain(&r.dead_letters).any(|fresh| !fresh));
            if duplicate {
                let mut fence = redis::cmd("SET");
                fence
                    .arg(&self.keys.ack_fence)
                    .arg(now_ms())
                    .arg("PX")
                    .arg(60_000);
                self.timed(fence.query_async::<()>(&mut conn)).await?;
            }
            self.wait_for_replicas(rep).await?;
        }
        Ok(outcomes)
    }

    /// The script's reply, noting the backlog it saw.
    fn parse_group_reply(
        &self,
        batches: &[&Batch],
        reply: &[i64],
    ) -> Result<Vec<Result<AcceptReport, BackendError>>, BackendError> {
        let r = parse_group_reply(batches, reply)?;
        self.seen().note(r.last, r.backlog);
        Ok(r.outcomes)
    }

    /// `WAIT`: until `rep.replicas` replicas hold every write made so far on `rep.conn`
    /// (the accept just run among them), or the timeout. Too few → unavailable: the
    /// webhook is answered 503 and retried by the provider (dedup makes the retry safe,
    /// whether or not these writes survive).
    async fn wait_for_replicas(&self, rep: &Replicated) -> Result<(), BackendError> {
        let mut conn = rep.conn.clone();
        let mut wait = redis::cmd("WAIT");
        wait.arg(rep.replicas).arg(rep.timeout.as_millis() as u64);
        let fut = wait.query_async::<i64>(&mut conn);
        let acked = match tokio::time::timeout(self.command_timeout + rep.timeout, fut).await {
            Ok(r) => r.map_err(unavailable)?,
            Err(_) => return Err(BackendError::Unavailable("redis WAIT timed out".into())),
        };
        if acked < rep.replicas as i64 {
            ReplicaAckMissing {
                wanted: rep.replicas,
                acked: acked.max(0) as u64,
            }
            .emit();
            return Err(BackendError::Unavailable(format!(
                "{acked} of redis.min_replicas_acked = {} replicas acknowledged the accept within redis.replica_ack_timeout_ms = {} ms (a replica is missing or lagging)",
                rep.replicas,
                rep.timeout.as_millis()
            )));
        }
        Ok(())
    }
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let pong: String = match self.timed(redis::cmd("PING").query_async(&mut conn)).await {
            Ok(p) => p,
            // The cluster client only says that no node answered: ask a seed node directly
            // why (a TLS or credentials error names the setting to change).
            Err(BackendError::Unavailable(msg))
                if self.conn.is_cluster() && super::conn::hint(&msg).is_none() =>
            {
                let why = super::conn::probe(&self.config, self.command_timeout).await;
                return Err(BackendError::Unavailable(match why {
                    Some(why) => format!("{msg}; a seed node says: {}", with_hint(why)),
                    None => msg,
                }));
            }
            Err(e) => return Err(e),
        };
        if pong == "PONG" {
            Ok(())
        } else {
            Err(BackendError::Protocol(format!("PING answered {pong:?}")))
        }
    }

    pub async fn stats(&self) -> Result<StreamStats, BackendError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.keys.inbound)
            .cmd("XLEN")
            .arg(&self.keys.events)
            .cmd("XLEN")
            .arg(&self.keys.deadletter);
        let (inbound, events, deadletter): (u64, u64, u64) =
            self.timed(pipe.query_async(&mut conn)).await?;
        // XPENDING fails with NOGROUP before the router has created its group.
        let pending: Result<Value, _> = self
            .timed(
                redis::cmd("XPENDING")
                    .arg(&self.keys.inbound)
                    .arg(ROUTER_GROUP)
                    .query_async(&mut conn),
            )
            .await;
        let inbound_pending = match pending {
            Ok(Value::Array(items)) => match items.first() {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        Ok(StreamStats {
            inbound,
            inbound_pending,
            events,
            deadletter,
        })
    }

    pub async fn read(
        &self,
        stream: StreamName,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        let key = self.keys.stream(stream);
        let mut conn = self.conn.clone();
        match after {
            Some(after) => {
                let reply: Vec<Value> = self
                    .timed(
                        redis::cmd("XRANGE")
                            .arg(key)
                            .arg(format!("({after}"))
                            .arg("+")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn),
                    )
                    .await?;
                Ok(reply.into_iter().filter_map(stream_entry).collect())
            }
            None => {
                let reply: Vec<Value> = self
                    .timed(
                        redis::cmd("XREVRANGE")
                            .arg(key)
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn),
                    )
                    .await?;
                Ok(reply.into_iter().rev().filter_map(stream_entry).collect())
            }
        }
    }

    async fn ensure_group(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let r: Result<(), BackendError> = self
            .timed(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.keys.inbound)
                    .arg(ROUTER_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn),
            )
            .await;
        match r {
            Err(BackendError::Unavailable(e)) if e.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    pub async fn read_inbound(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        // Entries another consumer took and never routed (it crashed) come first. Looking for
        // them costs a scan of the pending list, so it is done at most every claim_idle / 4.
        if self.claim_due(claim_idle) {
            match self.autoclaim_inbound(consumer, claim_idle, count).await {
                Ok(claimed) if !claimed.is_empty() => {
                    // More may be waiting: look again on the next call.
                    self.last_claim.store(0, Ordering::Relaxed);
                    return Ok(claimed);
                }
                Ok(_) => {}
                Err(BackendError::Unavailable(e)) if e.contains("NOGROUP") => {
                    self.ensure_group().await?
                }
                Err(e) => {
                    self.last_claim.store(0, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        let mut blocking = self.blocking.clone();
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(ROUTER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.keys.inbound)
            .arg(">")
            .query_async::<Value>(&mut blocking)
            .await;
        match read {
            Ok(reply) => {
                self.drop_duplicates(group_read_with(reply, inbound_entry)?)
                    .await
            }
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The entries the router may publish among `read`: those an accept transaction wrote
    /// for a duplicate (see `accept_transaction`) are acknowledged and deleted here. An
    /// entry with a token is its event's original while the dedup key holds that token;
    /// when the dedup key has expired (the entry waited longer than `dedup_ttl_secs`), it
    /// is published: dedup holds within that window only. Should this fail, the entries
    /// stay pending to this consumer and are claimed again after `claim_idle_ms`.
    async fn drop_duplicates(
        &self,
        read: Vec<InboundEntry>,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        let tokened: Vec<&InboundEntry> = read.iter().filter(|e| e.token.is_some()).collect();
        if tokened.is_empty() {
            return Ok(read.into_iter().map(|e| e.entry).collect());
        }
        let mut get = redis::cmd("MGET");
        for e in &tokened {
            get.arg(self.keys.dedup(&e.entry.key));
        }
        let mut conn = self.conn.clone();
        let held: Vec<Option<String>> = self.timed(get.query_async(&mut conn)).await?;
        if held.len() != tokened.len() {
            return Err(BackendError::Protocol(format!(
                "MGET returned {} values for {} keys",
                held.len(),
                tokened.len()
            )));
        }
        // In stream order, each tokened entry meets its key's holder.
        let mut held = held.into_iter();
        let (keep, dropped): (Vec<InboundEntry>, Vec<InboundEntry>) =
            read.into_iter().partition(|e| match &e.token {
                None => true,
                Some(token) => held.next().flatten().is_none_or(|h| &h == token),
            });
        if !dropped.is_empty() {
            let ids: Vec<&str> = dropped.iter().map(|e| e.entry.id.as_str()).collect();
            let mut tx = redis::pipe();
            tx.atomic();
            tx.cmd("XACK")
                .arg(&self.keys.inbound)
                .arg(ROUTER_GROUP)
                .arg(&ids)
                .ignore();
            tx.cmd("XDEL").arg(&self.keys.inbound).arg(&ids).ignore();
            let _: () = self.timed(tx.query_async(&mut conn)).await?;
            crate::internal_events::DuplicatesDropped { count: ids.len() }.emit();
        }
        Ok(keep.into_iter().map(|e| e.entry).collect())
    }

    /// Removes a stopped router consumer from the group, but only when it holds no pending
    /// entries (deleting a consumer drops its pending list, which would lose those entries).
    pub async fn retire_consumer(&self, consumer: &str) -> Result<bool, BackendError> {
        self.retire(&self.keys.inbound, ROUTER_GROUP, consumer)
            .await
    }

    /// Deletes `consumer` from `group` on `stream` unless it still holds pending entries.
    async fn retire(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        let pending: Value = self
            .timed(
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(group)
                    .arg("-")
                    .arg("+")
                    .arg(1)
                    .arg(consumer)
                    .query_async(&mut conn),
            )
            .await?;
        if matches!(&pending, Value::Array(items) if !items.is_empty()) {
            return Ok(false);
        }
        let _: i64 = self
            .timed(
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(true)
    }

    /// Moves routed entries to the events stream; with `fence`, only while that consumer
    /// holds the partition's lease ([`BackendError::Fenced`] otherwise, nothing moved).
    pub async fn publish(
        &self,
        moves: &[StreamEntry],
        fence: Option<&str>,
    ) -> Result<usize, BackendError> {
        if moves.is_empty() {
            return Ok(0);
        }
        match (fence, &self.publish_client, &self.conn) {
            (Some(owner), Some(client), _) => {
                self.publish_transaction(client, "", moves, owner).await
            }
            (Some(owner), None, RedisConn::Sentinel(sentinel)) => {
                let (addr, client) = sentinel.primary_client().await.map_err(unavailable)?;
                let result = self.publish_transaction(&client, &addr, moves, owner).await;
                if matches!(result, Err(BackendError::Unavailable(_))) {
                    // The primary may have moved (a demoted one answers READONLY).
                    sentinel.refresh_soon();
                }
                result
            }
            _ => self.publish_script(moves, fence).await,
        }
    }

    /// [`Self::publish`] by the lease holder, as a transaction of plain commands on the
    /// router's own connection: `WATCH` of the lease and of the router's fence key and the
    /// check of publish_check.lua; then, when the check passed, `MULTI`, `XACK`, one `XADD`
    /// per entry, `XDEL`, the retention of publish_trim.lua and `EXEC`. The events' bytes
    /// reach Redis as plain command arguments: a script would copy them and hash every byte
    /// once more (Lua interns each string it is given), about a third of the publish step's
    /// cost. The lease expiring or changing hands between the check and the `EXEC` makes the
    /// `EXEC` do nothing. The connection is the router's alone and is never silently
    /// replaced (a reconnect would drop the `WATCH`): after any error it is dropped, and the
    /// next publish opens a new one and checks again. Through Sentinel it goes to the
    /// primary the sentinels name (`addr`), and is opened again when they name another.
    async fn publish_transaction(
        &self,
        client: &redis::Client,
        addr: &str,
        moves: &[StreamEntry],
        owner: &str,
    ) -> Result<usize, BackendError> {
        let mut slot = self.publish_conn.lock().await;
        let result = self.publish_on(client, addr, &mut slot, moves, owner).await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// The transaction on the connection in `slot`, opened first when there is none or it
    /// was opened to another address than `addr` (Sentinel named a new primary).
    async fn publish_on(
        &self,
        client: &redis::Client,
        addr: &str,
        slot: &mut Option<(String, redis::aio::MultiplexedConnection)>,
        moves: &[StreamEntry],
        owner: &str,
    ) -> Result<usize, BackendError> {
        if slot.as_ref().is_none_or(|(opened_to, _)| opened_to != addr) {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(self.config.connect_timeout_ms)))
                .set_response_timeout(Some(self.command_timeout));
            let conn = self
                .timed(client.get_multiplexed_async_connection_with_config(&config))
                .await?;
            *slot = Some((addr.to_string(), conn));
        }
        let (_, conn) = slot
            .as_mut()
            .ok_or_else(|| BackendError::Unavailable("no publish connection".into()))?;
        let keys = &self.keys;
        let fence = format!("{}:{owner}", keys.publish_fence);
        let mut check = redis::pipe();
        check.cmd("WATCH").arg(&keys.lease).arg(&fence).ignore();
        check
            .cmd("EVAL")
            .arg(PUBLISH_CHECK.as_str())
            .arg(4)
            .arg(&keys.lease)
            .arg(&fence)
            .arg(&keys.inbound)
            .arg(&keys.events)
            .arg(owner)
            .arg(ROUTER_GROUP)
            .arg(&moves[0].id)
            .arg(PERSISTER_GROUP)
            .arg(self.limits.persister_max_backlog);
        let (answer,): (Vec<i64>,) = self.timed(check.query_async(conn)).await?;
        match answer.as_slice() {
            [0] => {}
            other => {
                let _: () = self.timed(redis::cmd("UNWATCH").query_async(conn)).await?;
                return match other {
                    [1] => Err(BackendError::Fenced),
                    [2, n] => appended(-1 - n),
                    // An earlier attempt, whose reply was lost, published the batch.
                    [3] => Ok(0),
                    _ => Err(BackendError::Unavailable(format!(
                        "publish check: unexpected answer {other:?}"
                    ))),
                };
            }
        }
        let mut tx = redis::pipe();
        tx.cmd("MULTI").ignore();
        tx.cmd("XACK").arg(&keys.inbound).arg(ROUTER_GROUP).ignore();
        for m in moves {
            tx.arg(&m.id);
        }
        for m in moves {
            tx.cmd("XADD")
                .arg(&keys.events)
                .arg("*")
                .arg("event_id")
                .arg(&m.key)
                .arg("event")
                .arg(&m.payload)
                .ignore();
        }
        tx.cmd("XDEL").arg(&keys.inbound).ignore();
        for m in moves {
            tx.arg(&m.id);
        }
        let (dgroup, dmax) = self.delivery_group();
        tx.cmd("EVAL")
            .arg(PUBLISH_TRIM.as_str())
            .arg(1)
            .arg(&keys.events)
            .arg(self.limits.events_max_len)
            .arg(self.events_min_id())
            .arg(PERSISTER_GROUP)
            .arg(dgroup)
            .arg(dmax)
            .ignore();
        tx.cmd("EXEC");
        // EXEC's reply: nil when a watched key changed (nothing done), else one reply per
        // command, where an error (a missing group, say) fails the call: the batch is then
        // retried, and the check finds whether it was published.
        let (done,): (Option<Vec<Value>>,) = self.timed(tx.query_async(conn)).await?;
        match done {
            Some(replies) => {
                if let Some(Value::ServerError(e)) =
                    replies.iter().find(|r| matches!(r, Value::ServerError(_)))
                {
                    return Err(BackendError::Unavailable(format!(
                        "publish transaction: {e:?}"
                    )));
                }
                Ok(moves.len())
            }
            None => Err(BackendError::Unavailable(
                "publish transaction not run: the lease or the fence changed during it".into(),
            )),
        }
    }

    /// [`Self::publish`] as one script: unfenced, and on a Redis Cluster.
    async fn publish_script(
        &self,
        moves: &[StreamEntry],
        fence: Option<&str>,
    ) -> Result<usize, BackendError> {
        let min_id = self.events_min_id();
        let mut inv = self.publish_script.prepare_invoke();
        inv.key(&self.keys.inbound)
            .key(&self.keys.events)
            .key(&self.keys.lease)
            .arg(ROUTER_GROUP)
            .arg(self.limits.events_max_len)
            .arg(min_id)
            .arg(PERSISTER_GROUP)
            .arg(self.limits.persister_max_backlog)
            .arg(fence.unwrap_or(""));
        self.delivery_args(&mut inv);
        for m in moves {
            inv.arg(&m.id).arg(&m.key).arg(&m.payload);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.command_timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(moved)) => appended(moved),
            Ok(Err(e)) if e.code() == Some("LEASE") => Err(BackendError::Fenced),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(BackendError::Unavailable("redis call timed out".into())),
        }
    }

    /// Takes or renews the partition's router lease for `ttl`; false: another holds it.
    pub async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut inv = self.lease_script.prepare_invoke();
        inv.key(&self.keys.lease)
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64);
        let mut conn = self.conn.clone();
        let held: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    /// Gives the lease up (at shutdown), so a standby takes over at once.
    pub async fn release_lease(&self, owner: &str) -> Result<(), BackendError> {
        let mut inv = self.release_script.prepare_invoke();
        inv.key(&self.keys.lease).arg(owner);
        let mut conn = self.conn.clone();
        let _: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Router entries pending for at least `min_idle`, from the oldest, given to `consumer`.
    async fn autoclaim_inbound(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        let claimed = self
            .autoclaim(
                &self.keys.inbound,
                ROUTER_GROUP,
                consumer,
                min_idle,
                count,
                inbound_entry,
            )
            .await?;
        self.drop_duplicates(claimed).await
    }

    /// Entries of `group` on `stream` pending for at least `min_idle`, from the oldest,
    /// given to `consumer`.
    async fn autoclaim<T>(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
        parse: fn(Value) -> Option<T>,
    ) -> Result<Vec<T>, BackendError> {
        let mut conn = self.conn.clone();
        let reply = self
            .timed(
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        autoclaimed(reply, parse)
    }

    /// Every entry read but not yet routed, by anyone, handed to `consumer` in stream
    /// order (the new lease holder routes these before anything newer).
    pub async fn claim_pending(
        &self,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        match self
            .autoclaim_inbound(consumer, Duration::ZERO, count)
            .await
        {
            Ok(claimed) => Ok(claimed),
            Err(BackendError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

impl RedisBackend {
    /// Appends events to the events stream, skipping those whose id was appended before.
    pub async fn append_events(&self, items: &[super::Item]) -> Result<usize, BackendError> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut inv = self.append_script.prepare_invoke();
        inv.key(&self.keys.events);
        for it in items {
            inv.key(self.keys.dedup(&it.key));
        }
        for it in items {
            inv.key(self.keys.legacy_dedup(it));
        }
        inv.arg(self.limits.dedup_ttl.as_secs().max(1))
            .arg(self.limits.events_max_len)
            .arg(self.events_min_id())
            .arg(PERSISTER_GROUP)
            .arg(self.limits.persister_max_backlog);
        self.delivery_args(&mut inv);
        for it in items {
            inv.arg(&it.key).arg(&it.payload);
        }
        let mut conn = self.conn.clone();
        let reply: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        appended(reply)
    }

    pub async fn ensure_events_group(&self, group: &str) -> Result<(), BackendError> {
        // From the start of the stream: enabling the persister stores the retained history.
        self.create_events_group(group, "0").await
    }

    /// Creates a group of the events stream positioned at its end (`$`): it reads only
    /// what is published from now on. Nothing when the group exists.
    pub async fn ensure_events_group_at_end(&self, group: &str) -> Result<(), BackendError> {
        self.create_events_group(group, "$").await
    }

    async fn create_events_group(&self, group: &str, from: &str) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let r: Result<(), BackendError> = self
            .timed(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.keys.events)
                    .arg(group)
                    .arg(from)
                    .arg("MKSTREAM")
                    .query_async(&mut conn),
            )
            .await;
        match r {
            Err(BackendError::Unavailable(e)) if e.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    pub async fn read_events_group(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        // Abandoned entries first. Unlike the router's, this group's reads are rare (one
        // batch per persister write), so it looks every time.
        match self
            .autoclaim(
                &self.keys.events,
                group,
                consumer,
                claim_idle,
                count,
                stream_entry,
            )
            .await
        {
            Ok(entries) if !entries.is_empty() => return Ok(entries),
            Ok(_) => {}
            Err(BackendError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_events_group(group).await?
            }
            Err(e) => return Err(e),
        }
        let mut blocking = self.blocking.clone();
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.keys.events)
            .arg(">")
            .query_async::<Value>(&mut blocking)
            .await;
        match read {
            Ok(reply) => group_read(reply),
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.ensure_events_group(group).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The delivery fan-out's group and bound, for the retention in `trim.lua` ('' and 0
    /// when delivery does not run).
    fn delivery_group(&self) -> (&'static str, u64) {
        match self.limits.delivery_max_lag {
            Some(max) => (DELIVERY_GROUP, max),
            None => ("", 0),
        }
    }

    /// [`Self::delivery_group`] as a script's next two arguments.
    fn delivery_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        let (group, max) = self.delivery_group();
        inv.arg(group).arg(max);
    }

    /// How many events stream entries retention removed before the delivery fan-out read
    /// them (it was more than `delivery.max_fanout_lag` behind), since the stream began.
    pub async fn events_trimmed_unread(&self) -> Result<u64, BackendError> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = self
            .timed(
                redis::cmd("GET")
                    .arg(format!("{}:trimmed-unread", self.keys.events))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    pub async fn ack_events(&self, group: &str, ids: &[String]) -> Result<usize, BackendError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut inv = self.ack_events_script.prepare_invoke();
        inv.key(&self.keys.events)
            .arg(group)
            .arg(self.limits.events_max_len)
            .arg(self.events_min_id())
            .arg(PERSISTER_GROUP);
        self.delivery_args(&mut inv);
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async(&mut conn)).await
    }

    /// A group's pending and undelivered counts (None without the stream or the group).
    /// Through a script sharing `trim.lua`'s lag correction, so that what /readyz and the
    /// lag metric show is what the backlog bound counts, also right after a Redis restart.
    pub async fn events_group_lag(&self, group: &str) -> Result<Option<GroupLag>, BackendError> {
        let mut inv = self.group_lag_script.prepare_invoke();
        inv.key(&self.keys.events).arg(group);
        let mut conn = self.conn.clone();
        let counts: Vec<i64> = self.timed(inv.invoke_async(&mut conn)).await?;
        let [pending, lag] = counts[..] else {
            return Ok(None);
        };
        let pending = pending.max(0) as u64;
        let undelivered = if lag >= 0 {
            lag as u64
        } else {
            // Redis cannot count it (deleted entries in the way): the stream's length
            // bounds it.
            let len: u64 = self
                .timed(
                    redis::cmd("XLEN")
                        .arg(&self.keys.events)
                        .query_async(&mut conn),
                )
                .await?;
            len.saturating_sub(pending)
        };
        Ok(Some(GroupLag {
            pending,
            undelivered,
        }))
    }

    /// Like [`Self::retire_consumer`], for a group of the events stream.
    pub async fn retire_events_consumer(
        &self,
        group: &str,
        consumer: &str,
    ) -> Result<bool, BackendError> {
        self.retire(&self.keys.events, group, consumer).await
    }

    /// How many of `ids` (inbound entries) a router has read and not yet published: the
    /// router group's pending list still holds them (deleting an entry leaves it there).
    pub async fn inbound_in_flight(&self, ids: &[String]) -> Result<usize, BackendError> {
        let mut conn = self.conn.clone();
        let mut n = 0;
        for chunk in ids.chunks(500) {
            let mut p = redis::pipe();
            for id in chunk {
                p.cmd("XPENDING")
                    .arg(&self.keys.inbound)
                    .arg(ROUTER_GROUP)
                    .arg(id)
                    .arg(id)
                    .arg(1);
            }
            let replies: Vec<Value> = match self.timed(p.query_async(&mut conn)).await {
                Ok(r) => r,
                // No router ever read this stream: nothing is in flight.
                Err(BackendError::Unavailable(e)) if e.contains("NOGROUP") => return Ok(0),
                Err(e) => return Err(e),
            };
            n += replies
                .iter()
                .filter(|r| matches!(r, Value::Array(a) if !a.is_empty()))
                .count();
        }
        Ok(n)
    }

    pub async fn delete_entries(
        &self,
        stream: StreamName,
        ids: &[String],
    ) -> Result<usize, BackendError> {
        let mut deleted = 0;
        let mut conn = self.conn.clone();
        for chunk in ids.chunks(1000) {
            let n: usize = self
                .timed(
                    redis::cmd("XDEL")
                        .arg(self.keys.stream(stream))
                        .arg(chunk)
                        .query_async(&mut conn),
                )
                .await?;
            deleted += n;
        }
        Ok(deleted)
    }

    /// The oldest dead-letter id `deadletter_max_age` keeps.
    fn deadletters_min_id(&self) -> String {
        format!(
            "{}-0",
            now_ms().saturating_sub(self.limits.deadletter_max_age.as_millis() as u64)
        )
    }

    /// Removes dead letters older than `deadletter_max_age` (exact: the stream is small and
    /// an approximate trim would keep whole old nodes).
    pub async fn trim_deadletters(&self) -> Result<u64, BackendError> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("XTRIM")
                .arg(&self.keys.deadletter)
                .arg("MINID")
                .arg(self.deadletters_min_id())
                .query_async(&mut conn),
        )
        .await
    }

    fn events_min_id(&self) -> String {
        if self.limits.events_max_age.is_zero() {
            "0".to_string()
        } else {
            format!(
                "{}-0",
                now_ms().saturating_sub(self.limits.events_max_age.as_millis() as u64)
            )
        }
    }
}

/// The accept script's flat reply, taken apart.
#[derive(Debug)]
struct ScriptReply {
    /// Per batch its report, or backpressure.
    outcomes: Vec<Result<AcceptReport, BackendError>>,
    /// The inbound stream's length after the call.
    backlog: u64,
    /// The last entry the call appended there.
    last: Option<(u64, u64)>,
}

fn parse_group_reply(batches: &[&Batch], reply: &[i64]) -> Result<ScriptReply, BackendError> {
    let mut out = Vec::with_capacity(batches.len());
    let [ref rest @ .., backlog, ms, seq] = *reply else {
        return Err(BackendError::Protocol(format!(
            "accept script returned {} values",
            reply.len()
        )));
    };
    let mut rest = rest;
    let last = (ms > 0).then_some((ms as u64, seq.max(0) as u64));
    for b in batches {
        let n_events = b.events.len();
        let n = n_events + b.dead_letters.len();
        match rest {
            [-1, backlog, tail @ ..] => {
                out.push(Err(BackendError::Backpressure {
                    backlog: (*backlog).max(0) as u64,
                }));
                rest = tail;
            }
            [0, tail @ ..] if tail.len() >= n => {
                let (flags, tail) = tail.split_at(n);
                let (events, dead) = flags.split_at(n_events);
                out.push(Ok(AcceptReport {
                    events: events.iter().map(|f| *f == 1).collect(),
                    dead_letters: dead.iter().map(|f| *f == 1).collect(),
                }));
                rest = tail;
            }
            _ => {
                return Err(BackendError::Protocol(format!(
                    "accept script returned {} values for {} requests",
                    reply.len(),
                    batches.len()
                )))
            }
        }
    }
    if rest.is_empty() {
        Ok(ScriptReply {
            outcomes: out,
            backlog: backlog.max(0) as u64,
            last,
        })
    } else {
        Err(BackendError::Protocol(format!(
            "accept script returned {} values more than expected",
            rest.len()
        )))
    }
}

/// Room kept below `inbound_max_backlog` by accepts that run as a transaction: more than
/// this process's other calls in flight, all full, can append beyond the latest figure it
/// has (`BacklogSeen`). So one process keeps the bound exactly (within this distance of it
/// the script decides, and refuses at the bound); each further process may cross it by at
/// most this many entries, appended before it sees the others' figure.
const TRANSACTION_MARGIN: u64 = (GROUP_MAX_ITEMS * GROUPS_IN_FLIGHT) as u64;

/// A request waiting for its accept.
struct Pending {
    batch: Batch,
    done: oneshot::Sender<Result<AcceptReport, BackendError>>,
}

/// Most requests waiting for the combiner (a bounded queue: past it, callers wait).
const COMBINER_QUEUE: usize = 1024;
/// Most items and payload bytes combined into one script call (a single larger request
/// still goes alone).
const GROUP_MAX_ITEMS: usize = 512;
const GROUP_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Script calls in flight at once.
const GROUPS_IN_FLIGHT: usize = 4;

/// Group commit: takes whatever requests are waiting, up to the group bounds, and accepts
/// them with one script call, with a few calls in flight at once. Under load this turns
/// hundreds of round trips and script invocations per second into a few, which is most of
/// Redis's cost per event; idle, a request goes alone at once. Ends when every sender (every
/// clone of the backend that accepts) is gone, after finishing what is in flight.
async fn combine(backend: RedisBackend, mut queue: mpsc::Receiver<Pending>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            first = queue.recv(), if open && in_flight.len() < GROUPS_IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut items = first.batch.events.len() + first.batch.dead_letters.len();
                let mut bytes = batch_bytes(&first.batch);
                let mut group = vec![first];
                while items < GROUP_MAX_ITEMS && bytes < GROUP_MAX_BYTES {
                    match queue.try_recv() {
                        Ok(p) => {
                            items += p.batch.events.len() + p.batch.dead_letters.len();
                            bytes += batch_bytes(&p.batch);
                            group.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let backend = backend.clone();
                in_flight.push(async move {
                    let batches: Vec<&Batch> = group.iter().map(|p| &p.batch).collect();
                    let outcome = backend.accept_group(&batches).await;
                    match outcome {
                        Ok(reports) => {
                            for (p, r) in group.into_iter().zip(reports) {
                                let _ = p.done.send(r);
                            }
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            for p in group {
                                let _ = p.done.send(Err(match &e {
                                    BackendError::Protocol(_) => BackendError::Protocol(msg.clone()),
                                    _ => BackendError::Unavailable(msg.clone()),
                                }));
                            }
                        }
                    }
                });
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            else => break,
        }
    }
}

fn batch_bytes(b: &Batch) -> usize {
    b.events
        .iter()
        .chain(&b.dead_letters)
        .map(|i| i.payload.len() + i.key.len())
        .sum()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// XAUTOCLAIM's reply: [next start, claimed entries, deleted ids (Redis 7)]. Claimed
/// entries deleted meanwhile come back as ids without fields, with an empty payload.
fn autoclaimed<T>(reply: Value, parse: fn(Value) -> Option<T>) -> Result<Vec<T>, BackendError> {
    let Value::Array(parts) = reply else {
        return Err(BackendError::Protocol(
            "XAUTOCLAIM reply is not an array".into(),
        ));
    };
    let Some(Value::Array(claimed)) = parts.into_iter().nth(1) else {
        return Err(BackendError::Protocol(
            "XAUTOCLAIM reply has no entries".into(),
        ));
    };
    Ok(claimed.into_iter().filter_map(parse).collect())
}

/// XREADGROUP's reply, taken apart without copying the entries' bytes: nil (the block
/// timed out), or per stream [name, entries] (an array of pairs in RESP2, a map in RESP3).
fn group_read(reply: Value) -> Result<Vec<StreamEntry>, BackendError> {
    group_read_with(reply, stream_entry)
}

/// [`group_read`], each entry taken apart by `parse`.
fn group_read_with<T>(reply: Value, parse: fn(Value) -> Option<T>) -> Result<Vec<T>, BackendError> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => {
            return Err(BackendError::Protocol(format!(
                "XREADGROUP reply is not an array: {other:?}"
            )))
        }
    };
    let mut out = Vec::new();
    for entries in streams {
        if let Value::Array(entries) = entries {
            out.extend(entries.into_iter().filter_map(parse));
        }
    }
    Ok(out)
}

/// One stream entry as XRANGE, XREADGROUP and XAUTOCLAIM return it: [id, [field, value,
/// ...]] (the fields nil or absent when it was deleted meanwhile: an empty payload), its
/// strings moved, not copied.
fn stream_entry(item: Value) -> Option<StreamEntry> {
    inbound_entry(item).map(|e| e.entry)
}

/// A stream entry with the field an accept transaction adds to an inbound entry (see
/// `accept_transaction`).
struct InboundEntry {
    entry: StreamEntry,
    /// `tok`: the token its accept set the dedup key to, or tried to.
    token: Option<String>,
}

/// [`stream_entry`], keeping `tok`.
fn inbound_entry(item: Value) -> Option<InboundEntry> {
    let Value::Array(pair) = item else {
        return None;
    };
    let mut pair = pair.into_iter();
    let id = into_string(pair.next()?)?;
    let (mut payload, mut key) = (None, None);
    let (mut dl_payload, mut dl_key) = (None, None);
    let mut token = None;
    if let Some(Value::Array(kv)) = pair.next() {
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let slot = match &k {
                Value::BulkString(k) => match k.as_slice() {
                    b"event" => &mut payload,
                    b"event_id" => &mut key,
                    b"deadletter" => &mut dl_payload,
                    b"deadletter_id" => &mut dl_key,
                    b"tok" => &mut token,
                    _ => continue,
                },
                _ => continue,
            };
            *slot = into_string(v);
        }
    }
    Some(InboundEntry {
        entry: StreamEntry {
            id,
            key: key.or(dl_key).unwrap_or_default(),
            payload: payload.or(dl_payload).unwrap_or_default(),
        },
        token,
    })
}

/// A bulk or simple string reply as a `String` (invalid UTF-8, which the gateway never
/// writes, is replaced rather than failing the batch).
fn into_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_seen_follows_the_order_redis_ran_the_calls_in() {
        let mut seen = BacklogSeen::default();
        assert_eq!(seen.backlog, None);
        seen.note(Some((5, 1)), 40);
        // A call that ran earlier, answered later, does not put back its lower figure...
        seen.note(Some((5, 0)), 10);
        assert_eq!(seen.backlog, Some(40));
        // ...a later one does, lower too (the router drained meanwhile)...
        seen.note(Some((6, 0)), 7);
        assert_eq!(seen.backlog, Some(7));
        // ...and one that appended nothing can only raise it.
        seen.note(None, 3);
        assert_eq!(seen.backlog, Some(7));
        seen.note(None, 90);
        assert_eq!(seen.backlog, Some(90));
        assert_eq!(id_pair("1700000000000-12"), Some((1_700_000_000_000, 12)));
        assert_eq!(id_pair("12"), None);
        assert!(id_pair("2-0") > id_pair("1-9"));
    }

    #[test]
    fn the_script_reply_ends_with_the_backlog_and_the_last_entry() {
        let one = Batch {
            events: vec![super::super::Item::new("evt_a", "{}")],
            dead_letters: Vec::new(),
        };
        let r = parse_group_reply(&[&one, &one], &[0, 1, -1, 9, 9, 17, 3]).unwrap();
        assert_eq!(r.outcomes[0].as_ref().unwrap().events, [true]);
        assert!(matches!(
            r.outcomes[1],
            Err(BackendError::Backpressure { backlog: 9 })
        ));
        assert_eq!((r.backlog, r.last), (9, Some((17, 3))));
        let r = parse_group_reply(&[&one], &[0, 0, 4, 0, 0]).unwrap();
        assert_eq!(r.last, None);
        assert!(parse_group_reply(&[&one], &[0, 1]).is_err());
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry_value(id: &str, fields: &[(&str, &str)]) -> Value {
        let kv = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(kv)])
    }

    fn ids_keys_payloads(entries: &[StreamEntry]) -> Vec<(&str, &str, &str)> {
        entries
            .iter()
            .map(|e| (e.id.as_str(), e.key.as_str(), e.payload.as_str()))
            .collect()
    }

    #[test]
    fn group_reads_in_resp2_and_resp3_give_the_same_entries() {
        let entries = Value::Array(vec![
            entry_value("1-0", &[("event_id", "evt_a"), ("event", "{\"a\":1}")]),
            entry_value(
                "2-0",
                &[("deadletter", "{\"d\":1}"), ("deadletter_id", "dl_b")],
            ),
            // Deleted after it was delivered: no fields.
            Value::Array(vec![bulk("3-0"), Value::Nil]),
            // Not an entry: skipped.
            Value::Nil,
        ]);
        let want = vec![
            ("1-0", "evt_a", "{\"a\":1}"),
            ("2-0", "dl_b", "{\"d\":1}"),
            ("3-0", "", ""),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("{p}:inbound"),
            entries.clone(),
        ])]);
        let resp3 = Value::Map(vec![(bulk("{p}:inbound"), entries)]);
        assert_eq!(ids_keys_payloads(&group_read(resp2).unwrap()), want);
        assert_eq!(ids_keys_payloads(&group_read(resp3).unwrap()), want);
        assert!(group_read(Value::Nil).unwrap().is_empty());
        assert!(group_read(Value::Int(1)).is_err());
    }

    #[test]
    fn an_entry_with_both_kinds_of_field_is_read_as_an_event() {
        let e = stream_entry(entry_value(
            "1-0",
            &[
                ("deadletter", "d"),
                ("event", "e"),
                ("deadletter_id", "dl"),
                ("event_id", "evt"),
            ],
        ))
        .unwrap();
        assert_eq!((e.key.as_str(), e.payload.as_str()), ("evt", "e"));
        // Invalid UTF-8 is replaced, not dropped.
        let e = stream_entry(Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("event"), Value::BulkString(vec![0xff, b'x'])]),
        ]))
        .unwrap();
        assert_eq!(e.payload, "\u{fffd}x");
    }
}
