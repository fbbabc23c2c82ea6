//! The Redis backend: dedup keys and streams in Redis (production).
//!
//! Data structures (all keys share the hash tag `{prefix}`, so every script touches one
//! slot of a Redis Cluster):
//! - `{prefix}:inbound` — stream of accepted events not yet routed; field `event_id` and
//!   `event` (JSON). Consumer group `router`. Entries are deleted once routed (XACK + XDEL in
//!   one script), so its length *is* the backlog; it is never trimmed, and accept refuses
//!   (503) past `inbound_max_backlog` instead.
//! - `{prefix}:events` — stream the CRM backends read with XREADGROUP; fields `event_id`,
//!   `event`. Trimmed approximately to `events_max_len` and/or `events_max_age_secs`.
//! - `{prefix}:deadletter` — verified payload parts that could not become events; field
//!   `deadletter` (JSON: reason, detail, source, provider, received_at, part, body).
//!   Trimmed approximately to `deadletter_max_len`.
//! - `{prefix}:dedup:v1:<event id | dead-letter id>` — string holding the stream id the item
//!   was stored under; expires after `dedup_ttl_secs`. `v1` changes if the id derivation does.
//!
//! Two connections: one multiplexed connection for request-path commands, and one for the
//! router's blocking reads (a blocking XREADGROUP would otherwise stall every request
//! pipelined behind it). Both reconnect on their own; a call that fails or times out is
//! [`BackendError::Unavailable`], which the edge answers with 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{RedisError, Script, Value};

use super::{AcceptReport, BackendError, Batch, Limits, StreamEntry, StreamName, StreamStats};
use crate::config::RedisConfig;

/// The router's consumer group on the inbound stream.
pub const ROUTER_GROUP: &str = "router";

/// Key names under one prefix. Versioned where the value format could change.
#[derive(Debug, Clone)]
pub struct Keys {
    pub inbound: String,
    pub events: String,
    pub deadletter: String,
    dedup_prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let tag = format!("{{{prefix}}}");
        Keys {
            inbound: format!("{tag}:inbound"),
            events: format!("{tag}:events"),
            deadletter: format!("{tag}:deadletter"),
            dedup_prefix: format!("{tag}:dedup:v1:"),
        }
    }
    pub fn dedup(&self, key: &str) -> String {
        format!("{}{key}", self.dedup_prefix)
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
    conn: ConnectionManager,
    blocking: ConnectionManager,
    keys: Keys,
    limits: std::sync::Arc<Limits>,
    accept_script: Script,
    publish_script: Script,
    command_timeout: Duration,
    /// When the router last looked for abandoned entries (ms since the epoch; 0 = now due).
    last_claim: std::sync::Arc<AtomicU64>,
}

fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

impl RedisBackend {
    /// Connects lazily: the gateway starts even when Redis is down (and answers 503 until it
    /// is back), so that an orchestrator's restart order does not matter.
    pub fn new(cfg: &RedisConfig, limits: Limits) -> Result<RedisBackend, BackendError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| BackendError::Unavailable(format!("invalid redis.url: {:?}", e.kind())))?;
        let command_timeout = Duration::from_millis(cfg.command_timeout_ms);
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_pipeline_buffer_size(1024);
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            base.clone().set_response_timeout(Some(command_timeout)),
        )
        .map_err(unavailable)?;
        // Blocking reads wait up to router.block_ms; the timeout must outlast them.
        let blocking = ConnectionManager::new_lazy_with_config(
            client,
            base.set_response_timeout(Some(command_timeout + Duration::from_secs(60))),
        )
        .map_err(unavailable)?;
        Ok(RedisBackend {
            conn,
            blocking,
            keys: Keys::new(&cfg.key_prefix),
            limits: std::sync::Arc::new(limits),
            accept_script: Script::new(include_str!("accept.lua")),
            publish_script: Script::new(include_str!("publish.lua")),
            command_timeout,
            last_claim: std::sync::Arc::new(AtomicU64::new(0)),
        })
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

    pub async fn accept(&self, batch: &Batch) -> Result<AcceptReport, BackendError> {
        let n_events = batch.events.len();
        let n = n_events + batch.dead_letters.len();
        if n == 0 {
            return Ok(AcceptReport::default());
        }
        let mut inv = self.accept_script.prepare_invoke();
        inv.key(&self.keys.inbound).key(&self.keys.deadletter);
        for item in batch.events.iter().chain(&batch.dead_letters) {
            inv.key(self.keys.dedup(&item.key));
        }
        inv.arg(self.limits.dedup_ttl.as_secs().max(1))
            .arg(self.limits.inbound_max_backlog)
            .arg(n_events)
            .arg(self.limits.deadletter_max_len);
        for item in batch.events.iter().chain(&batch.dead_letters) {
            inv.arg(&item.payload);
        }
        for item in &batch.events {
            inv.arg(&item.key);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = self.timed(inv.invoke_async(&mut conn)).await?;
        match reply.first() {
            Some(-1) => Err(BackendError::Backpressure {
                backlog: reply.get(1).copied().unwrap_or(0).max(0) as u64,
            }),
            Some(0) if reply.len() == n + 1 => {
                let flags: Vec<bool> = reply[1..].iter().map(|f| *f == 1).collect();
                let (events, dead) = flags.split_at(n_events);
                Ok(AcceptReport {
                    events: events.to_vec(),
                    dead_letters: dead.to_vec(),
                })
            }
            _ => Err(BackendError::Protocol(format!(
                "accept script returned {} values for {n} items",
                reply.len()
            ))),
        }
    }

    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .timed(redis::cmd("PING").query_async(&mut conn))
            .await?;
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
        let reply: StreamRangeReply = match after {
            Some(after) => {
                self.timed(
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg(format!("({after}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?
            }
            None => {
                let mut r: StreamRangeReply = self
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
                r.ids.reverse();
                r
            }
        };
        Ok(reply.ids.iter().map(entry).collect())
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
            let mut conn = self.conn.clone();
            let claimed: Result<StreamAutoClaimReply, BackendError> = self
                .timed(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&self.keys.inbound)
                        .arg(ROUTER_GROUP)
                        .arg(consumer)
                        .arg(claim_idle.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut conn),
                )
                .await;
            match claimed {
                Ok(reply) if !reply.claimed.is_empty() => {
                    // More may be waiting: look again on the next call.
                    self.last_claim.store(0, Ordering::Relaxed);
                    return Ok(reply.claimed.iter().map(entry).collect());
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
            .query_async::<Option<StreamReadReply>>(&mut blocking)
            .await;
        match read {
            Ok(Some(reply)) => Ok(reply
                .keys
                .iter()
                .flat_map(|k| k.ids.iter().map(entry))
                .collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Removes a stopped router consumer from the group, but only when it holds no pending
    /// entries (deleting a consumer drops its pending list, which would lose those entries).
    pub async fn retire_consumer(&self, consumer: &str) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        let pending: Value = self
            .timed(
                redis::cmd("XPENDING")
                    .arg(&self.keys.inbound)
                    .arg(ROUTER_GROUP)
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
                    .arg(&self.keys.inbound)
                    .arg(ROUTER_GROUP)
                    .arg(consumer)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(true)
    }

    pub async fn publish(&self, moves: &[StreamEntry]) -> Result<usize, BackendError> {
        if moves.is_empty() {
            return Ok(0);
        }
        let min_id = if self.limits.events_max_age.is_zero() {
            "0".to_string()
        } else {
            let now = now_ms();
            format!(
                "{}-0",
                now.saturating_sub(self.limits.events_max_age.as_millis() as u64)
            )
        };
        let mut inv = self.publish_script.prepare_invoke();
        inv.key(&self.keys.inbound)
            .key(&self.keys.events)
            .arg(ROUTER_GROUP)
            .arg(self.limits.events_max_len)
            .arg(min_id);
        for m in moves {
            inv.arg(&m.id).arg(&m.key).arg(&m.payload);
        }
        let mut conn = self.conn.clone();
        let moved: usize = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(moved)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn field(id: &StreamId, name: &str) -> String {
    match id.map.get(name) {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn entry(id: &StreamId) -> StreamEntry {
    let payload = if id.map.contains_key("event") {
        field(id, "event")
    } else {
        field(id, "deadletter")
    };
    StreamEntry {
        id: id.id.clone(),
        key: field(id, "event_id"),
        payload,
    }
}
