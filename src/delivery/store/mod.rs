//! The delivery state: per destination, one queue per conversation, the due and leased
//! conversations, the health record and, without PostgreSQL, the newest attempts; per
//! events stream partition, the fan-out's lease. Two implementations held to one contract
//! (tests/it/delivery.rs, `store_conformance`): [`redis::RedisStore`] (the Redis backend:
//! shared by every replica, durable as Redis is) and [`memory::MemoryStore`] (the memory
//! backend: in this process, gone at a restart like the memory backend's streams). The
//! dispatcher and fan-out in `delivery` are the same over both.

pub mod memory;
pub mod redis;

use std::time::Duration;

use crate::accept::BackendError;

/// A destination's identity: its tenant and its id (unique within the tenant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub tenant: String,
    pub id: String,
}

/// One event leased for delivery: the head of its conversation's queue.
#[derive(Debug, Clone)]
pub struct Job {
    pub conversation: String,
    pub event_id: String,
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it was queued (ms since the epoch): the horizon counts from here.
    pub queued_ms: u64,
}

/// What one enqueued event became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Queued,
    /// Already queued, or delivered recently (a repeated fan-out).
    Duplicate,
    /// `delivery.max_queued_per_destination` reached.
    Full,
    /// The destination is disabled (410 Gone, failing too long, or by an operator).
    Disabled,
}

/// How an attempt ends for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Delivered or given up: the conversation's next event is due.
    Done { delivered: bool },
    /// Failed: try again at `due_ms`.
    Retry { due_ms: u64, attempts: u32 },
    /// Not an attempt (disabled meanwhile, stopping): due again at `due_ms`.
    Release { due_ms: u64 },
}

/// The answer of [`Store::finish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    /// False: the lease had ended and another worker holds the conversation.
    pub held: bool,
    /// Since when every attempt failed (ms), 0 when the last one reached the receiver.
    pub failing_since_ms: u64,
    /// Some conversation of the destination is waiting.
    pub more: bool,
}

/// A destination's health record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Why it is disabled (`gone`, `failing`, `operator`), None when it is not.
    pub disabled: Option<String>,
    pub disabled_at_ms: Option<u64>,
    pub failing_since_ms: Option<u64>,
}

/// The fence of a fan-out's enqueue: the stream partition it reads and the epoch of its
/// lease on it. A destination refuses an epoch older than one that already queued there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub partition: usize,
    pub epoch: u64,
}

/// How many delivered (or given up) event ids a destination remembers, so that a fan-out
/// running twice does not queue them again.
pub const RECENT_KEPT: usize = 10_000;

#[derive(Clone)]
pub enum Store {
    Redis(redis::RedisStore),
    Memory(memory::MemoryStore),
}

impl Store {
    /// Queues events (id, conversation, body) for a destination, each at the tail of its
    /// conversation's queue. `force`: a redelivery (queued even if delivered recently).
    /// `fence`: the fan-out's lease epoch, refused ([`BackendError::Fenced`], nothing
    /// queued) when a newer holder of that partition's lease already queued here.
    pub async fn enqueue(
        &self,
        d: &DestKey,
        now_ms: u64,
        max_queued: u64,
        force: bool,
        fence: Option<Fence>,
        events: &[(&str, &str, &str)],
    ) -> Result<Vec<Queued>, BackendError> {
        match self {
            Store::Redis(s) => s.enqueue(d, now_ms, max_queued, force, fence, events).await,
            Store::Memory(s) => s.enqueue(d, now_ms, max_queued, force, fence, events),
        }
    }

    /// Leases up to `limit` due conversations of a destination to `owner` until
    /// `lease_until_ms`, never more than `max_in_flight` at once over every replica.
    /// Conversations whose lease ended (a worker died) are due again first.
    pub async fn take(
        &self,
        d: &DestKey,
        now_ms: u64,
        lease_until_ms: u64,
        owner: &str,
        max_in_flight: u32,
        limit: usize,
    ) -> Result<Vec<Job>, BackendError> {
        match self {
            Store::Redis(s) => {
                s.take(d, now_ms, lease_until_ms, owner, max_in_flight, limit)
                    .await
            }
            Store::Memory(s) => Ok(s.take(d, now_ms, lease_until_ms, owner, max_in_flight, limit)),
        }
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
        match self {
            Store::Redis(s) => s.finish(d, now_ms, owner, job, how, reached).await,
            Store::Memory(s) => Ok(s.finish(d, now_ms, owner, job, how, reached)),
        }
    }

    /// Deletes the queued events of these conversations (a contact's erasure).
    pub async fn forget(
        &self,
        d: &DestKey,
        now_ms: u64,
        conversations: &[String],
    ) -> Result<u64, BackendError> {
        match self {
            Store::Redis(s) => s.forget(d, now_ms, conversations).await,
            Store::Memory(s) => Ok(s.forget(d, conversations)),
        }
    }

    /// Deletes everything of a destination; returns how many events were queued.
    pub async fn purge(&self, d: &DestKey, now_ms: u64) -> Result<u64, BackendError> {
        match self {
            Store::Redis(s) => s.purge(d, now_ms).await,
            Store::Memory(s) => Ok(s.purge(d)),
        }
    }

    pub async fn health(&self, d: &DestKey) -> Result<Health, BackendError> {
        match self {
            Store::Redis(s) => s.health(d).await,
            Store::Memory(s) => Ok(s.health(d)),
        }
    }

    /// Disables a destination (`reason`); false when it already was.
    pub async fn disable(
        &self,
        d: &DestKey,
        now_ms: u64,
        reason: &str,
    ) -> Result<bool, BackendError> {
        match self {
            Store::Redis(s) => s.disable(d, now_ms, reason).await,
            Store::Memory(s) => Ok(s.disable(d, now_ms, reason)),
        }
    }

    /// Enables a destination again: its queue is delivered, failures count afresh.
    pub async fn enable(&self, d: &DestKey) -> Result<(), BackendError> {
        match self {
            Store::Redis(s) => s.enable(d).await,
            Store::Memory(s) => {
                s.enable(d);
                Ok(())
            }
        }
    }

    /// Events queued for a destination and when the oldest was queued (ms).
    pub async fn backlog(&self, d: &DestKey) -> Result<(u64, Option<u64>), BackendError> {
        match self {
            Store::Redis(s) => s.backlog(d).await,
            Store::Memory(s) => Ok(s.backlog(d)),
        }
    }

    /// Without PostgreSQL: appends an attempt record (JSON, its `id` set here) and keeps
    /// the newest `kept`.
    pub async fn record_attempt(
        &self,
        d: &DestKey,
        record: serde_json::Value,
        kept: u64,
    ) -> Result<(), BackendError> {
        match self {
            Store::Redis(s) => s.record_attempt(d, record, kept).await,
            Store::Memory(s) => {
                s.record_attempt(d, record, kept);
                Ok(())
            }
        }
    }

    /// Without PostgreSQL: the kept attempt records, oldest first.
    pub async fn attempts(&self, d: &DestKey) -> Result<Vec<serde_json::Value>, BackendError> {
        match self {
            Store::Redis(s) => s.attempts(d).await,
            Store::Memory(s) => Ok(s.attempts(d)),
        }
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
        match self {
            Store::Redis(s) => s.lease(partition, owner, ttl).await,
            Store::Memory(s) => Ok(s.lease(partition, owner, ttl)),
        }
    }

    /// Gives the fan-out lease up (at shutdown) when `owner` holds it.
    pub async fn release(&self, partition: usize, owner: &str) -> Result<(), BackendError> {
        match self {
            Store::Redis(s) => s.release(partition, owner).await,
            Store::Memory(s) => {
                s.release(partition, owner);
                Ok(())
            }
        }
    }
}
