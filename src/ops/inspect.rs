//! `switchboard inspect`: where the streams stand, for ops.
//!
//! For each stream (inbound, events, deadletter; of every partition with
//! `streams.partitions` > 1): its length, its oldest entry and that
//! entry's age, and per consumer group (the `router` on inbound; the `persister` and the
//! CRM backends' groups on events) its consumers, pending entries (delivered, not
//! acknowledged), lag (entries not yet delivered to the group) and its oldest unacknowledged
//! entry: age (from its stream id, against the Redis server's clock), idle time and
//! delivery count. Read-only: it sends XLEN, XRANGE, XINFO GROUPS, XPENDING and TIME.

use std::fmt::Write as _;
use std::time::Duration;

use crate::accept::conn::RedisConn;
use redis::Value;
use serde::Serialize;

use crate::accept::redis::RedisBackend;
use crate::accept::{Backend, BackendError};

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The Redis server's clock (ms since the epoch) the ages are computed against.
    pub server_time_ms: u64,
    pub streams: Vec<StreamReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// `inbound`, `events` or `deadletter`.
    pub stream: &'static str,
    /// The Redis key.
    pub key: String,
    pub length: u64,
    pub oldest_entry_id: Option<String>,
    pub oldest_entry_age_ms: Option<u64>,
    pub groups: Vec<GroupReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub name: String,
    pub consumers: u64,
    /// Delivered to a consumer, not yet acknowledged.
    pub pending: u64,
    /// Not yet delivered to any consumer of the group; `None` when Redis cannot tell
    /// (entries deleted or trimmed between the group's position and the stream's end).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
    pub oldest_pending: Option<PendingEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingEntry {
    pub id: String,
    pub consumer: String,
    /// Since the entry was added to the stream.
    pub age_ms: u64,
    /// Since it was last delivered.
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// Inspects the streams of the backend (see the module docs).
pub async fn inspect(backend: &Backend) -> Result<InspectReport, BackendError> {
    // One set of streams per partition (`streams.partitions`), each under its own tag.
    let partitions = backend.partitions();
    let mut parts: Vec<&RedisBackend> = Vec::new();
    for p in &partitions {
        match p {
            Backend::Redis(r) => parts.push(r),
            _ => {
                return Err(BackendError::Protocol(
                    "inspect needs the Redis backend".into(),
                ))
            }
        }
    }
    let mut conn = parts[0].connection();
    let timeout = parts[0].command_timeout();
    let (secs, micros): (u64, u64) = timed(timeout, redis::cmd("TIME").query_async(&mut conn))
        .await
        .map(|(s, us): (String, String)| (s.parse().unwrap_or(0), us.parse().unwrap_or(0)))?;
    let now_ms = secs * 1000 + micros / 1000;
    let mut streams = Vec::new();
    for part in parts {
        let keys = part.keys();
        for (name, key) in [
            ("inbound", &keys.inbound),
            ("events", &keys.events),
            ("deadletter", &keys.deadletter),
        ] {
            streams.push(stream_report(&mut conn, timeout, name, key, now_ms).await?);
        }
    }
    Ok(InspectReport {
        server_time_ms: now_ms,
        streams,
    })
}

async fn timed<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| BackendError::Unavailable(e.to_string())),
        Err(_) => Err(BackendError::Unavailable("redis call timed out".into())),
    }
}

/// The milliseconds part of a stream id.
fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => Some((*n).max(0) as u64),
        other => text(other)?.parse().ok(),
    }
}

/// A flat `[k, v, k, v...]` array (RESP2) or a map (RESP3) as pairs.
fn pairs(v: Value) -> Vec<(String, Value)> {
    let flat: Vec<Value> = match v {
        Value::Array(f) => f,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = text(&k) {
            out.push((k, v));
        }
    }
    out
}

async fn stream_report(
    conn: &mut RedisConn,
    timeout: Duration,
    stream: &'static str,
    key: &str,
    now_ms: u64,
) -> Result<StreamReport, BackendError> {
    let length: u64 = timed(timeout, redis::cmd("XLEN").arg(key).query_async(conn)).await?;
    let first: Value = timed(
        timeout,
        redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn),
    )
    .await?;
    let oldest_entry_id = match &first {
        Value::Array(entries) => entries.first().and_then(|e| match e {
            Value::Array(pair) => pair.first().and_then(text),
            _ => None,
        }),
        _ => None,
    };
    let oldest_entry_age_ms = oldest_entry_id
        .as_deref()
        .and_then(id_ms)
        .map(|ms| now_ms.saturating_sub(ms));
    let mut report = StreamReport {
        stream,
        key: key.to_string(),
        length,
        oldest_entry_id,
        oldest_entry_age_ms,
        groups: Vec::new(),
    };
    if length == 0 {
        // XINFO GROUPS fails on a missing key; an existing empty stream may still have
        // groups, so only a missing key is skipped.
        let exists: u64 = timed(timeout, redis::cmd("EXISTS").arg(key).query_async(conn)).await?;
        if exists == 0 {
            return Ok(report);
        }
    }
    let groups: Value = timed(
        timeout,
        redis::cmd("XINFO").arg("GROUPS").arg(key).query_async(conn),
    )
    .await?;
    let Value::Array(groups) = groups else {
        return Ok(report);
    };
    for g in groups {
        let mut group = GroupReport {
            name: String::new(),
            consumers: 0,
            pending: 0,
            lag: None,
            last_delivered_id: String::new(),
            oldest_pending: None,
        };
        for (k, v) in pairs(g) {
            match k.as_str() {
                "name" => group.name = text(&v).unwrap_or_default(),
                "consumers" => group.consumers = int(&v).unwrap_or(0),
                "pending" => group.pending = int(&v).unwrap_or(0),
                "lag" => group.lag = int(&v),
                "last-delivered-id" => group.last_delivered_id = text(&v).unwrap_or_default(),
                _ => {}
            }
        }
        if group.pending > 0 {
            // Extended form: [[id, consumer, idle ms, deliveries]] for the smallest id.
            let oldest: Value = timed(
                timeout,
                redis::cmd("XPENDING")
                    .arg(key)
                    .arg(&group.name)
                    .arg("-")
                    .arg("+")
                    .arg(1)
                    .query_async(conn),
            )
            .await?;
            if let Value::Array(items) = oldest {
                if let Some(Value::Array(f)) = items.first() {
                    if let [id, consumer, idle, deliveries, ..] = f.as_slice() {
                        let id = text(id).unwrap_or_default();
                        group.oldest_pending = Some(PendingEntry {
                            age_ms: id_ms(&id).map_or(0, |ms| now_ms.saturating_sub(ms)),
                            id,
                            consumer: text(consumer).unwrap_or_default(),
                            idle_ms: int(idle).unwrap_or(0),
                            deliveries: int(deliveries).unwrap_or(0),
                        });
                    }
                }
            }
        }
        report.groups.push(group);
    }
    Ok(report)
}

/// `1234` ms → `1.2s`, `95000` → `1m35s`, `7200000` → `2h0m`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
    }
}

impl InspectReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<11} {:<34} {:>9}  oldest entry",
            "stream", "key", "length"
        );
        for s in &self.streams {
            let oldest = match (&s.oldest_entry_id, s.oldest_entry_age_ms) {
                (Some(id), Some(age)) => format!("{id} ({} old)", human_ms(age)),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<11} {:<34} {:>9}  {oldest}",
                s.stream, s.key, s.length
            );
            for g in &s.groups {
                let lag = g.lag.map_or("unknown".to_string(), |l| l.to_string());
                let oldest = match &g.oldest_pending {
                    Some(p) => format!(
                        "oldest unacked {} ({} old, idle {}, {} deliveries, consumer {})",
                        p.id,
                        human_ms(p.age_ms),
                        human_ms(p.idle_ms),
                        p.deliveries,
                        p.consumer
                    ),
                    None => "nothing unacked".into(),
                };
                let _ = writeln!(
                    out,
                    "  group {:<16} consumers {:<3} pending {:<7} lag {:<7} {oldest}",
                    g.name, g.consumers, g.pending, lag
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_an_operator_would_say_them() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(1234), "1.2s");
        assert_eq!(human_ms(95_000), "1m35s");
        assert_eq!(human_ms(7_200_000), "2h0m");
        assert_eq!(human_ms(90_000_000), "1d1h");
    }

    #[test]
    fn stream_ids_carry_their_time() {
        assert_eq!(id_ms("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(id_ms("nonsense"), None);
    }
}
