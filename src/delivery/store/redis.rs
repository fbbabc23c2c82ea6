//! The delivery state in Redis (`delivery.lua`): per destination, one queue per
//! conversation, the due and leased conversations, the health record and, without
//! PostgreSQL, the newest attempts. Every key of a destination shares its hash tag
//! `{<prefix>:dlv:<tenant>:<destination>}`, so each script call is one atomic step on one
//! Redis Cluster slot; the fan-out's lease per stream partition is `{<prefix>:dlv}:fanout-lease:<n>`,
//! its epoch `{<prefix>:dlv}:fanout-epoch:<n>`.

use std::time::Duration;

use redis::{Script, Value};

use crate::accept::conn::RedisConn;
use crate::accept::redis::RELEASE_LUA;
use crate::accept::BackendError;

use super::{DestKey, Fence, Finish, Finished, Health, Job, Queued};

/// The fan-out lease with an epoch (KEYS[2]) counted up whenever a worker takes it (not
/// when it renews it): the fence of what that holder queues. Returns the epoch, 0 when
/// another worker holds the lease.
const FANOUT_LEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local e = redis.call('GET', KEYS[2])
  if e then
    return tonumber(e)
  end
  return redis.call('INCR', KEYS[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
";

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    script: Script,
    timeout: Duration,
}

fn unavailable(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

impl RedisStore {
    pub fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> RedisStore {
        RedisStore {
            conn,
            prefix: prefix.to_string(),
            script: Script::new(include_str!("delivery.lua")),
            timeout,
        }
    }

    /// `{<prefix>:dlv:<tenant>:<id>}:`, the start of every key of the destination.
    pub fn base(&self, d: &DestKey) -> String {
        format!("{{{}:dlv:{}:{}}}:", self.prefix, d.tenant, d.id)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(BackendError::Unavailable("redis call timed out".into())),
        }
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        d: &DestKey,
        op: &str,
        now_ms: u64,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, BackendError> {
        let base = self.base(d);
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("{base}ready"))
            .arg(op)
            .arg(&base)
            .arg(now_ms);
        args(&mut inv);
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async(&mut conn)).await
    }

    /// Queues events (id, conversation, body) for a destination, each at the tail of its
    /// conversation's queue. `force`: a redelivery (queued even if delivered recently).
    /// `fence`: the fan-out's lease epoch, refused ([`BackendError::Fenced`], nothing
    /// queued by that call) when a newer holder already queued for this destination.
    pub async fn enqueue(
        &self,
        d: &DestKey,
        now_ms: u64,
        max_queued: u64,
        force: bool,
        fence: Option<Fence>,
        events: &[(&str, &str, &str)],
    ) -> Result<Vec<Queued>, BackendError> {
        let mut out = Vec::with_capacity(events.len());
        // Bounded script calls: each runs alone in Redis.
        for chunk in events.chunks(200) {
            let reply: Result<Vec<i64>, BackendError> = self
                .call(d, "enqueue", now_ms, |inv| {
                    inv.arg(max_queued).arg(if force { "1" } else { "0" });
                    match fence {
                        Some(f) => inv.arg(f.partition).arg(f.epoch),
                        None => inv.arg("").arg(0),
                    };
                    for (id, conv, body) in chunk {
                        inv.arg(*id).arg(*conv).arg(*body);
                    }
                })
                .await;
            let reply = match reply {
                Err(BackendError::Unavailable(e)) if e.contains("FENCED") => {
                    return Err(BackendError::Fenced)
                }
                r => r?,
            };
            out.extend(reply.into_iter().map(|r| match r {
                1 => Queued::Queued,
                0 => Queued::Duplicate,
                -1 => Queued::Full,
                _ => Queued::Disabled,
            }));
        }
        Ok(out)
    }

    /// Leases up to `limit` due conversations of a destination to `owner` until
    /// `lease_until_ms`, never more than `max_in_flight` at once over every replica.
    pub async fn take(
        &self,
        d: &DestKey,
        now_ms: u64,
        lease_until_ms: u64,
        owner: &str,
        max_in_flight: u32,
        limit: usize,
    ) -> Result<Vec<Job>, BackendError> {
        let reply: Vec<Value> = self
            .call(d, "take", now_ms, |inv| {
                inv.arg(lease_until_ms)
                    .arg(owner)
                    .arg(max_in_flight)
                    .arg(limit);
            })
            .await?;
        let text = |v: &Value| -> String {
            match v {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => String::new(),
            }
        };
        Ok(reply
            .chunks_exact(5)
            .map(|c| Job {
                conversation: text(&c[0]),
                event_id: text(&c[1]),
                body: text(&c[2]),
                attempts: text(&c[3]).parse().unwrap_or(0),
                queued_ms: text(&c[4])
                    .parse::<f64>()
                    .map(|f| f as u64)
                    .unwrap_or(now_ms),
            })
            .collect())
    }

    /// Ends a lease (see [`Finish`]); `reached`: whether the attempt got a 2xx (Some(true)),
    /// failed (Some(false)) or was none (None), for the destination's health.
    pub async fn finish(
        &self,
        d: &DestKey,
        now_ms: u64,
        owner: &str,
        job: &Job,
        how: Finish,
        reached: Option<bool>,
    ) -> Result<Finished, BackendError> {
        let reply: Vec<i64> = self
            .call(d, "finish", now_ms, |inv| {
                inv.arg(owner).arg(&job.conversation).arg(&job.event_id);
                match how {
                    Finish::Done { .. } => inv.arg("done").arg(0).arg(0),
                    Finish::Retry { due_ms, attempts } => {
                        inv.arg("retry").arg(due_ms).arg(attempts)
                    }
                    Finish::Release { due_ms } => inv.arg("release").arg(due_ms).arg(0),
                };
                inv.arg(match reached {
                    Some(true) => "1",
                    Some(false) => "0",
                    None => "",
                });
            })
            .await?;
        Ok(Finished {
            held: reply.first() == Some(&1),
            failing_since_ms: reply.get(1).copied().unwrap_or(0).max(0) as u64,
            more: reply.get(2) == Some(&1),
        })
    }

    /// Deletes the queued events of these conversations (a contact's erasure).
    pub async fn forget(
        &self,
        d: &DestKey,
        now_ms: u64,
        conversations: &[String],
    ) -> Result<u64, BackendError> {
        let mut n = 0;
        for chunk in conversations.chunks(200) {
            let erased: i64 = self
                .call(d, "forget", now_ms, |inv| {
                    for c in chunk {
                        inv.arg(c);
                    }
                })
                .await?;
            n += erased.max(0) as u64;
        }
        Ok(n)
    }

    /// Deletes every key of a destination; returns how many events were queued.
    pub async fn purge(&self, d: &DestKey, now_ms: u64) -> Result<u64, BackendError> {
        let n: i64 = self.call(d, "purge", now_ms, |_| {}).await?;
        Ok(n.max(0) as u64)
    }

    pub async fn health(&self, d: &DestKey) -> Result<Health, BackendError> {
        let mut conn = self.conn.clone();
        let map: std::collections::HashMap<String, String> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(format!("{}health", self.base(d)))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(Health {
            disabled: map.get("disabled").cloned(),
            disabled_at_ms: map.get("disabled_at").and_then(|v| v.parse().ok()),
            failing_since_ms: map.get("failing_since").and_then(|v| v.parse().ok()),
        })
    }

    /// Disables a destination (`reason`); false when it already was.
    pub async fn disable(
        &self,
        d: &DestKey,
        now_ms: u64,
        reason: &str,
    ) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        let key = format!("{}health", self.base(d));
        let set: bool = self
            .timed(
                redis::cmd("HSETNX")
                    .arg(&key)
                    .arg("disabled")
                    .arg(reason)
                    .query_async(&mut conn),
            )
            .await?;
        if set {
            let _: () = self
                .timed(
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg("disabled_at")
                        .arg(now_ms)
                        .query_async(&mut conn),
                )
                .await?;
        }
        Ok(set)
    }

    /// Enables a destination again: its queue is delivered, failures count afresh.
    pub async fn enable(&self, d: &DestKey) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .timed(
                redis::cmd("HDEL")
                    .arg(format!("{}health", self.base(d)))
                    .arg("disabled")
                    .arg("disabled_at")
                    .arg("failing_since")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Events queued for a destination and when the oldest was queued (ms).
    pub async fn backlog(&self, d: &DestKey) -> Result<(u64, Option<u64>), BackendError> {
        let key = format!("{}age", self.base(d));
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD")
            .arg(&key)
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        let (n, oldest): (u64, Vec<(String, f64)>) =
            self.timed(pipe.query_async(&mut conn)).await?;
        Ok((n, oldest.first().map(|(_, s)| *s as u64)))
    }

    /// Without PostgreSQL: appends an attempt record (JSON, its `id` set here) and keeps
    /// the newest `kept`.
    pub async fn record_attempt(
        &self,
        d: &DestKey,
        mut record: serde_json::Value,
        kept: u64,
    ) -> Result<(), BackendError> {
        let base = self.base(d);
        let mut conn = self.conn.clone();
        let id: u64 = self
            .timed(
                redis::cmd("INCR")
                    .arg(format!("{base}attempt-seq"))
                    .query_async(&mut conn),
            )
            .await?;
        record["id"] = serde_json::Value::String(id.to_string());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("LPUSH")
            .arg(format!("{base}attempts"))
            .arg(record.to_string())
            .ignore()
            .cmd("LTRIM")
            .arg(format!("{base}attempts"))
            .arg(0)
            .arg(kept.saturating_sub(1))
            .ignore();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Without PostgreSQL: the kept attempt records, oldest first.
    pub async fn attempts(&self, d: &DestKey) -> Result<Vec<serde_json::Value>, BackendError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .timed(
                redis::cmd("LRANGE")
                    .arg(format!("{}attempts", self.base(d)))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        let mut v: Vec<serde_json::Value> = raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        v.reverse();
        Ok(v)
    }

    /// The fan-out lease of stream partition `partition`: take or renew it for `ttl`.
    /// Returns its epoch while held (a new one each time a worker takes it), None when
    /// another worker holds it.
    pub async fn lease(
        &self,
        partition: usize,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BackendError> {
        let script = Script::new(FANOUT_LEASE_LUA);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{{{}:dlv}}:fanout-lease:{partition}", self.prefix))
            .key(format!("{{{}:dlv}}:fanout-epoch:{partition}", self.prefix))
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64);
        let mut conn = self.conn.clone();
        let epoch: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok((epoch > 0).then_some(epoch as u64))
    }

    /// Gives the fan-out lease up (at shutdown) when `owner` holds it.
    pub async fn release(&self, partition: usize, owner: &str) -> Result<(), BackendError> {
        let script = Script::new(RELEASE_LUA);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{{{}:dlv}}:fanout-lease:{partition}", self.prefix))
            .arg(owner);
        let mut conn = self.conn.clone();
        let _: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}
