//! Accept: deduplicate and enqueue, as one atomic step (docs/architecture.md step 5), plus the stream
//! operations the router and the read API need.
//!
//! Backends are a closed set, so they are an enum: [`memory`] (embedded, not durable) and
//! [`redis`] (production). Both pass the same conformance suite (`tests/it/backend.rs`).
//!
//! Contract of [`Backend::accept`], for every implementation:
//! - for each item, "was this key seen within the TTL?" and "append to its stream" happen
//!   together for the whole batch, or not at all (an error means nothing was appended);
//! - an item whose key was seen is reported as a duplicate and appended nowhere;
//! - when the inbound backlog (entries not yet routed) would exceed its bound, nothing is
//!   appended and [`BackendError::Backpressure`] is returned;
//! - it returns only once the appends are as durable as the backend can make them.
//!
//! The events stream is trimmed to its retention (`streams.events_max_len`,
//! `events_max_age_secs`), except that while the [`PERSISTER_GROUP`] consumer group exists no
//! entry it has not acknowledged is ever trimmed: retention then waits for the persister,
//! and past `postgres.max_backlog` unpersisted entries publishing is refused
//! ([`BackendError::Backpressure`]), so the router stops, the inbound backlog fills and the
//! edge answers 503 — the providers keep the rest until Postgres is back.
//!
//! While push delivery runs ([`Limits::delivery_max_lag`]), retention waits for its fan-out
//! group ([`DELIVERY_GROUP`]) the same way, but without refusing anything (one slow
//! destination must not stop ingestion): once the group is more than
//! `delivery.max_fanout_lag` entries behind, retention trims as if it did not exist, and
//! the entries it removes before the fan-out read them are counted (a counter next to the
//! stream, read by [`Backend::events_trimmed_unread`]) for the delivery metric and log.

pub mod conn;
pub mod deadletter;
pub mod memory;
pub mod partitioned;
pub mod redis;
pub mod sentinel;

use std::time::Duration;

use crate::config::Config;

/// The persister's consumer group on the events stream (see the module docs on trimming).
pub const PERSISTER_GROUP: &str = "persister";

/// The push delivery fan-out's consumer group on the events stream: while delivery runs,
/// retention waits for it too, up to `delivery.max_fanout_lag` entries behind.
pub const DELIVERY_GROUP: &str = "delivery";

/// Where a consumer group of the events stream stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupLag {
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to any consumer of the group.
    pub undelivered: u64,
}

impl GroupLag {
    /// Entries the group has not acknowledged yet.
    pub fn total(&self) -> u64 {
        self.pending + self.undelivered
    }
}

/// One thing to store: its dedup identity and its JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Dedup identity: an event id (`evt_...`) or a dead-letter id (`dl_...`).
    pub key: String,
    pub payload: String,
    /// What picks the stream partition: the conversation id, so that a conversation's
    /// events stay in order in one partition. None: the key.
    pub shard: Option<String>,
    /// The identity earlier versions gave the same item, when it differs from `key` (event
    /// ids before they were scoped to the source). A backend that may hold dedup keys an
    /// earlier version wrote (Redis) treats an item as a duplicate when either was seen, so
    /// a redelivery across an upgrade is still caught; nothing is stored under it.
    pub legacy_key: Option<String>,
}

impl Item {
    pub fn new(key: impl Into<String>, payload: impl Into<String>) -> Item {
        Item {
            key: key.into(),
            payload: payload.into(),
            shard: None,
            legacy_key: None,
        }
    }

    /// The identity an earlier version would have stored this item under.
    pub fn legacy(&self) -> &str {
        self.legacy_key.as_deref().unwrap_or(&self.key)
    }

    pub fn shard_key(&self) -> &str {
        self.shard.as_deref().unwrap_or(&self.key)
    }
}

/// Everything one webhook request produced.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Go to the inbound stream.
    pub events: Vec<Item>,
    /// Go to the dead-letter stream.
    pub dead_letters: Vec<Item>,
}

/// Per item of the batch, in order: `true` when newly stored, `false` for a duplicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptReport {
    pub events: Vec<bool>,
    pub dead_letters: Vec<bool>,
}

/// An entry of a stream: its stream id, the item's key (event id or dead-letter id) and its
/// JSON payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamEntry {
    pub id: String,
    pub key: String,
    pub payload: String,
}

/// The streams a caller can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamName {
    Inbound,
    Events,
    DeadLetter,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Inbound => "inbound",
            StreamName::Events => "events",
            StreamName::DeadLetter => "deadletter",
        }
    }
}

/// Sizes of the streams, for gauges and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub inbound: u64,
    /// Inbound entries delivered to a router but not yet moved to the events stream.
    pub inbound_pending: u64,
    pub events: u64,
    pub deadletter: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached or did not answer in time: nothing was stored.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The inbound backlog is at its bound: nothing was stored.
    #[error("inbound backlog full ({backlog} entries)")]
    Backpressure { backlog: u64 },
    /// The backend answered something this version does not understand.
    #[error("unexpected backend reply: {0}")]
    Protocol(String),
    /// A fenced publish by a router that no longer holds its partition's lease: nothing
    /// moved (the new holder routes those entries).
    #[error("another router holds this stream partition's lease")]
    Fenced,
}

/// Bounds and retention every backend applies; from `[streams]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub dedup_ttl: Duration,
    pub inbound_max_backlog: u64,
    pub events_max_len: u64,
    pub events_max_age: Duration,
    pub deadletter_max_len: u64,
    /// Dead letters older than this are trimmed ([`Backend::trim_deadletters`]).
    pub deadletter_max_age: Duration,
    pub memory_max_dedup_keys: usize,
    /// Most events stream entries the persister group may leave unacknowledged before
    /// publishing is refused (`postgres.max_backlog`).
    pub persister_max_backlog: u64,
    /// While push delivery runs: how far behind its fan-out group ([`DELIVERY_GROUP`]) may
    /// be with retention waiting for it (`delivery.max_fanout_lag`); None: it does not run
    /// and its group (if left over) protects nothing.
    pub delivery_max_lag: Option<u64>,
}

impl Limits {
    pub fn from_config(c: &Config) -> Limits {
        Limits {
            dedup_ttl: Duration::from_secs(c.streams.dedup_ttl_secs),
            inbound_max_backlog: c.streams.inbound_max_backlog as u64,
            events_max_len: c.streams.events_max_len as u64,
            events_max_age: Duration::from_secs(c.streams.events_max_age_secs),
            deadletter_max_len: c.streams.deadletter_max_len as u64,
            deadletter_max_age: Duration::from_secs(c.streams.deadletter_max_age_secs),
            memory_max_dedup_keys: c.streams.memory_max_dedup_keys,
            persister_max_backlog: c.postgres.max_backlog,
            delivery_max_lag: crate::config::delivery::runs(c).then_some(c.delivery.max_fanout_lag),
        }
    }
}

/// The configured backend.
#[derive(Clone)]
pub enum Backend {
    Memory(memory::MemoryBackend),
    // Boxed: the Redis backend holds two connection managers and scripts; the enum is
    // cloned per request path and should stay small.
    Redis(Box<redis::RedisBackend>),
    /// Several stream partitions (`streams.partitions` > 1), each a backend of its own.
    Partitioned(partitioned::Partitioned),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
            Backend::Partitioned(p) => p.parts()[0].name(),
        }
    }

    /// The stream partitions, each read by its own routers and persister (one: itself).
    pub fn partitions(&self) -> Vec<Backend> {
        match self {
            Backend::Partitioned(p) => p.parts().to_vec(),
            other => vec![other.clone()],
        }
    }

    /// Dedup and enqueue a batch atomically (see the module docs).
    pub async fn accept(&self, batch: Batch) -> Result<AcceptReport, BackendError> {
        match self {
            Backend::Memory(b) => b.accept(&batch),
            Backend::Redis(b) => b.accept(batch).await,
            Backend::Partitioned(p) => p.accept(batch).await,
        }
    }

    /// Whether the backend answers.
    pub async fn ping(&self) -> Result<(), BackendError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(b) => b.ping().await,
            Backend::Partitioned(p) => p.ping().await,
        }
    }

    pub async fn stats(&self) -> Result<StreamStats, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.stats()),
            Backend::Redis(b) => b.stats().await,
            Backend::Partitioned(p) => p.stats().await,
        }
    }

    /// Up to `limit` entries of a stream: the newest ones in order when `after` is `None`,
    /// else the ones after that id.
    pub async fn read(
        &self,
        stream: StreamName,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.read(stream, limit, after)),
            Backend::Redis(b) => b.read(stream, limit, after).await,
            Backend::Partitioned(p) => p.read(stream, limit, after).await,
        }
    }

    /// For the router: up to `count` inbound entries not yet routed by anyone, waiting up
    /// to `block` for some to arrive. Entries a crashed consumer left unrouted for longer
    /// than `claim_idle` are handed out again.
    pub async fn read_inbound(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.read_inbound(count, block).await),
            Backend::Redis(b) => b.read_inbound(consumer, count, block, claim_idle).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("read_inbound")),
        }
    }

    /// For the router, on shutdown: forget this consumer if it holds nothing pending.
    pub async fn retire_consumer(&self, consumer: &str) -> Result<(), BackendError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(b) => b.retire_consumer(consumer).await.map(|_| ()),
            Backend::Partitioned(_) => Err(partitioned::per_partition("retire_consumer")),
        }
    }

    /// Appends events straight to the events stream, each unless its key (event id) was
    /// appended or accepted before: assignment changes made without a message.
    pub async fn append_events(&self, items: &[Item]) -> Result<usize, BackendError> {
        match self {
            Backend::Memory(b) => b.append_events(items),
            Backend::Redis(b) => b.append_events(items).await,
            Backend::Partitioned(p) => p.append_events(items).await,
        }
    }

    /// For the router: append each payload to the events stream and remove its inbound
    /// entry, atomically per batch. An inbound id already moved (by another consumer after a
    /// claim) is skipped, so an entry is published once. Returns how many were moved.
    pub async fn publish(&self, moves: &[StreamEntry]) -> Result<usize, BackendError> {
        match self {
            Backend::Memory(b) => b.publish(moves, None),
            Backend::Redis(b) => b.publish(moves, None).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("publish")),
        }
    }

    /// [`Self::publish`] only while `owner` holds the partition's router lease
    /// ([`BackendError::Fenced`] otherwise, nothing moved).
    pub async fn publish_fenced(
        &self,
        owner: &str,
        moves: &[StreamEntry],
    ) -> Result<usize, BackendError> {
        match self {
            Backend::Memory(b) => b.publish(moves, Some(owner)),
            Backend::Redis(b) => b.publish(moves, Some(owner)).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("publish_fenced")),
        }
    }

    /// Takes or renews this partition's router lease: one router at a time moves a
    /// partition's inbound stream, so each conversation's events are published in the order
    /// they were accepted. False: another router holds it.
    pub async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.lease(owner, ttl)),
            Backend::Redis(b) => b.lease(owner, ttl).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("lease")),
        }
    }

    /// Gives the lease up when `owner` holds it.
    pub async fn release_lease(&self, owner: &str) -> Result<(), BackendError> {
        match self {
            Backend::Memory(b) => {
                b.release_lease(owner);
                Ok(())
            }
            Backend::Redis(b) => b.release_lease(owner).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("release_lease")),
        }
    }

    /// For a new lease holder: every inbound entry handed out but not routed (by a router
    /// that crashed or lost the lease), oldest first, up to `count`; empty when none is left.
    pub async fn claim_pending(
        &self,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.claim_pending(count)),
            Backend::Redis(b) => b.claim_pending(consumer, count).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("claim_pending")),
        }
    }

    /// For a consumer group of the events stream (the persister): up to `count` entries not
    /// yet delivered to the group, waiting up to `block`; entries another consumer of the
    /// group left unacknowledged for longer than `claim_idle` come first. Creates the group
    /// (from the start of the stream) when it does not exist. An entry deleted meanwhile
    /// (erased) comes back with an empty payload, to be acknowledged.
    pub async fn read_events_group(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b
                .read_events_group(group, consumer, count, block, claim_idle)
                .await),
            Backend::Redis(b) => {
                b.read_events_group(group, consumer, count, block, claim_idle)
                    .await
            }
            Backend::Partitioned(_) => Err(partitioned::per_partition("read_events_group")),
        }
    }

    /// Creates a consumer group of the events stream (every partition) from its start, if
    /// it does not exist. The persister's group must exist before the first event is
    /// published: retention never trims past its unacknowledged entries, but only once it
    /// exists.
    pub async fn ensure_events_group(&self, group: &str) -> Result<(), BackendError> {
        match self {
            Backend::Memory(b) => {
                b.ensure_events_group(group);
                Ok(())
            }
            Backend::Redis(b) => b.ensure_events_group(group).await,
            Backend::Partitioned(p) => {
                for part in p.parts() {
                    Box::pin(part.ensure_events_group(group)).await?;
                }
                Ok(())
            }
        }
    }

    /// Creates a consumer group of the events stream (every partition) positioned at its
    /// end, if it does not exist: it reads only what is published afterwards (push
    /// delivery, which must not send the retained history to a new destination).
    pub async fn ensure_events_group_at_end(&self, group: &str) -> Result<(), BackendError> {
        match self {
            Backend::Memory(b) => {
                b.ensure_events_group_at_end(group);
                Ok(())
            }
            Backend::Redis(b) => b.ensure_events_group_at_end(group).await,
            Backend::Partitioned(p) => {
                for part in p.parts() {
                    Box::pin(part.ensure_events_group_at_end(group)).await?;
                }
                Ok(())
            }
        }
    }

    /// Acknowledges entries of the events stream for a group, then applies the stream's
    /// retention (which never passes the persister group's unacknowledged entries).
    pub async fn ack_events(&self, group: &str, ids: &[String]) -> Result<usize, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.ack_events(group, ids)),
            Backend::Redis(b) => b.ack_events(group, ids).await,
            Backend::Partitioned(_) => Err(partitioned::per_partition("ack_events")),
        }
    }

    /// Where a group of the events stream stands; `None` when it does not exist.
    pub async fn events_group_lag(&self, group: &str) -> Result<Option<GroupLag>, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.events_group_lag(group)),
            Backend::Redis(b) => b.events_group_lag(group).await,
            Backend::Partitioned(p) => p.events_group_lag(group).await,
        }
    }

    /// How many events stream entries retention removed before the delivery fan-out read
    /// them (it was more than `delivery.max_fanout_lag` behind), every partition together.
    pub async fn events_trimmed_unread(&self) -> Result<u64, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.events_trimmed_unread()),
            Backend::Redis(b) => b.events_trimmed_unread().await,
            Backend::Partitioned(p) => {
                let mut n = 0;
                for part in p.parts() {
                    n += Box::pin(part.events_trimmed_unread()).await?;
                }
                Ok(n)
            }
        }
    }

    /// Forgets a stopped consumer of an events stream group if it holds nothing pending.
    pub async fn retire_events_consumer(
        &self,
        group: &str,
        consumer: &str,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(b) => b.retire_events_consumer(group, consumer).await.map(|_| ()),
            Backend::Partitioned(_) => Err(partitioned::per_partition("retire_events_consumer")),
        }
    }

    /// Removes dead letters older than `streams.deadletter_max_age_secs`; returns how many.
    /// Storing a dead letter applies the limit too; the router calls this between reads so
    /// that the limit holds when no new dead letter arrives.
    pub async fn trim_deadletters(&self) -> Result<u64, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.trim_deadletters()),
            Backend::Redis(b) => b.trim_deadletters().await,
            Backend::Partitioned(p) => {
                let mut n = 0;
                for part in p.parts() {
                    n += Box::pin(part.trim_deadletters()).await?;
                }
                Ok(n)
            }
        }
    }

    /// How many of `ids`, inbound entries deleted by a privacy erasure, a router still
    /// holds in a batch it read and has not published yet: that batch still publishes its
    /// copy of them. Always 0 in memory, whose publish moves only entries still in the
    /// inbound stream.
    pub async fn inbound_in_flight(&self, ids: &[String]) -> Result<usize, BackendError> {
        match self {
            Backend::Memory(_) => Ok(0),
            Backend::Redis(b) => b.inbound_in_flight(ids).await,
            Backend::Partitioned(p) => p.inbound_in_flight(ids).await,
        }
    }

    /// Deletes entries from a stream by id (privacy erasure); returns how many existed.
    pub async fn delete_entries(
        &self,
        stream: StreamName,
        ids: &[String],
    ) -> Result<usize, BackendError> {
        match self {
            Backend::Memory(b) => Ok(b.delete_entries(stream, ids)),
            Backend::Redis(b) => b.delete_entries(stream, ids).await,
            Backend::Partitioned(p) => p.delete_entries(stream, ids).await,
        }
    }
}
