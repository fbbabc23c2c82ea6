//! Stream partitions (`streams.partitions` > 1): the inbound, events and dead-letter
//! streams (and their dedup keys) split into N sets, each under its own hash tag
//! `{<prefix>:p<n>}`, so that on a Redis Cluster they spread over the nodes while each
//! accept/publish script still touches one slot.
//!
//! An event's partition is a hash of its conversation id, so one conversation's events stay
//! in one partition, in order (a dead letter's, of its id). A request whose events span
//! partitions is accepted by one atomic call per partition; it is answered 2xx only when
//! every call succeeded — on a failure the provider retries and the partitions that did
//! accept see duplicates. Consumers (routers, the persister, CRM backends) read each
//! partition's streams on their own; reads through this type (the read API, erasure) merge
//! the partitions in stream id (time) order, and name entries `p<n>/<id>`.

use std::sync::Arc;

use futures_util::future::join_all;

use super::{
    AcceptReport, Backend, BackendError, Batch, GroupLag, Item, StreamEntry, StreamName,
    StreamStats,
};

#[derive(Clone)]
pub struct Partitioned {
    parts: Arc<Vec<Backend>>,
}

/// FNV-1a: stable across builds and platforms (the partition of a conversation must never
/// change while its events are in flight).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stream id, ordered as Redis orders them.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// `p3/1700000000000-0` → (3, "1700000000000-0").
pub fn split_id(id: &str) -> Option<(usize, &str)> {
    let (p, rest) = id.strip_prefix('p')?.split_once('/')?;
    Some((p.parse().ok()?, rest))
}

impl Partitioned {
    pub fn new(parts: Vec<Backend>) -> Partitioned {
        assert!(parts.len() > 1, "one partition needs no Partitioned");
        Partitioned {
            parts: Arc::new(parts),
        }
    }

    pub fn parts(&self) -> &[Backend] {
        &self.parts
    }

    pub fn partition_of(&self, item: &Item) -> usize {
        (fnv1a(item.shard_key()) % self.parts.len() as u64) as usize
    }

    pub async fn accept(&self, batch: Batch) -> Result<AcceptReport, BackendError> {
        let n = self.parts.len();
        let mut sub: Vec<Batch> = vec![Batch::default(); n];
        let mut ev_at = Vec::with_capacity(batch.events.len());
        let mut dl_at = Vec::with_capacity(batch.dead_letters.len());
        for it in batch.events {
            let p = self.partition_of(&it);
            ev_at.push((p, sub[p].events.len()));
            sub[p].events.push(it);
        }
        for it in batch.dead_letters {
            let p = self.partition_of(&it);
            dl_at.push((p, sub[p].dead_letters.len()));
            sub[p].dead_letters.push(it);
        }
        let calls = sub.into_iter().enumerate().map(|(p, b)| async move {
            if b.events.is_empty() && b.dead_letters.is_empty() {
                Ok(AcceptReport::default())
            } else {
                Box::pin(self.parts[p].accept(b)).await
            }
        });
        let mut reports = Vec::with_capacity(n);
        let mut first_err = None;
        for r in join_all(calls).await {
            match r {
                Ok(rep) => reports.push(rep),
                Err(e) => {
                    // Unavailability matters more to the caller than backpressure.
                    if first_err.is_none() || matches!(e, BackendError::Unavailable(_)) {
                        first_err = Some(e);
                    }
                    reports.push(AcceptReport::default());
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(AcceptReport {
            events: ev_at.iter().map(|(p, i)| reports[*p].events[*i]).collect(),
            dead_letters: dl_at
                .iter()
                .map(|(p, i)| reports[*p].dead_letters[*i])
                .collect(),
        })
    }

    pub async fn ping(&self) -> Result<(), BackendError> {
        for r in join_all(self.parts.iter().map(|p| Box::pin(p.ping()))).await {
            r?;
        }
        Ok(())
    }

    pub async fn stats(&self) -> Result<StreamStats, BackendError> {
        let mut total = StreamStats::default();
        for r in join_all(self.parts.iter().map(|p| Box::pin(p.stats()))).await {
            let s = r?;
            total.inbound += s.inbound;
            total.inbound_pending += s.inbound_pending;
            total.events += s.events;
            total.deadletter += s.deadletter;
        }
        Ok(total)
    }

    /// The partitions merged in stream id order (ties by partition), ids `p<n>/<id>`.
    /// `after` (such an id, or a plain stream id meaning "after this time") continues a
    /// previous read.
    pub async fn read(
        &self,
        stream: StreamName,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<StreamEntry>, BackendError> {
        let cursor = after.map(|a| match split_id(a) {
            Some((p, id)) => (id_key(id), p),
            None => (id_key(a), usize::MAX),
        });
        let reads = self.parts.iter().enumerate().map(|(p, b)| {
            // Partitions up to the cursor's one already returned the cursor's id; later
            // ones may hold the same id and must still return it.
            let from = cursor.map(|((ms, seq), cp)| {
                if p <= cp {
                    format!("{ms}-{seq}")
                } else if seq > 0 {
                    format!("{ms}-{}", seq - 1)
                } else if ms > 0 {
                    format!("{}-{}", ms - 1, u64::MAX)
                } else {
                    "0-0".to_string()
                }
            });
            async move { Box::pin(b.read(stream, limit, from.as_deref())).await }
        });
        let mut all: Vec<(usize, StreamEntry)> = Vec::new();
        for (p, r) in join_all(reads).await.into_iter().enumerate() {
            all.extend(r?.into_iter().map(|e| (p, e)));
        }
        all.sort_by_key(|(p, e)| (id_key(&e.id), *p));
        if after.is_none() {
            // The newest `limit`, oldest first.
            let skip = all.len().saturating_sub(limit);
            all.drain(..skip);
        } else {
            all.truncate(limit);
        }
        Ok(all
            .into_iter()
            .map(|(p, mut e)| {
                e.id = format!("p{p}/{}", e.id);
                e
            })
            .collect())
    }

    pub async fn append_events(&self, items: &[Item]) -> Result<usize, BackendError> {
        let mut sub: Vec<Vec<Item>> = vec![Vec::new(); self.parts.len()];
        for it in items {
            sub[self.partition_of(it)].push(it.clone());
        }
        let mut total = 0;
        for (p, items) in sub.iter().enumerate() {
            if !items.is_empty() {
                total += Box::pin(self.parts[p].append_events(items)).await?;
            }
        }
        Ok(total)
    }

    pub async fn events_group_lag(&self, group: &str) -> Result<Option<GroupLag>, BackendError> {
        let mut total: Option<GroupLag> = None;
        for r in join_all(
            self.parts
                .iter()
                .map(|p| Box::pin(p.events_group_lag(group))),
        )
        .await
        {
            if let Some(l) = r? {
                let t = total.get_or_insert(GroupLag::default());
                t.pending += l.pending;
                t.undelivered += l.undelivered;
            }
        }
        Ok(total)
    }

    /// Deletes entries named `p<n>/<id>` (as [`Self::read`] returns them).
    pub async fn delete_entries(
        &self,
        stream: StreamName,
        ids: &[String],
    ) -> Result<usize, BackendError> {
        let mut total = 0;
        for (p, ids) in self.by_partition(ids).iter().enumerate() {
            if !ids.is_empty() {
                total += Box::pin(self.parts[p].delete_entries(stream, ids)).await?;
            }
        }
        Ok(total)
    }

    pub async fn inbound_in_flight(&self, ids: &[String]) -> Result<usize, BackendError> {
        let mut total = 0;
        for (p, ids) in self.by_partition(ids).iter().enumerate() {
            if !ids.is_empty() {
                total += Box::pin(self.parts[p].inbound_in_flight(ids)).await?;
            }
        }
        Ok(total)
    }

    /// `ids` (as this backend hands them out, `p<n>/<id>`) by partition, as each
    /// partition knows them.
    fn by_partition(&self, ids: &[String]) -> Vec<Vec<String>> {
        let mut sub: Vec<Vec<String>> = vec![Vec::new(); self.parts.len()];
        for id in ids {
            if let Some((p, raw)) = split_id(id).filter(|(p, _)| *p < self.parts.len()) {
                sub[p].push(raw.to_string());
            }
        }
        sub
    }
}

/// Consumers read one partition at a time: these operations are not defined over several.
pub fn per_partition(op: &str) -> BackendError {
    BackendError::Protocol(format!(
        "{op} reads one stream partition: call it on Backend::partitions()"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ids_round_trip_and_hash_is_stable() {
        assert_eq!(split_id("p3/1700-2"), Some((3, "1700-2")));
        assert_eq!(split_id("1700-2"), None);
        // Fixed values: a change would move conversations between partitions.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("conv_1"), 0x0403_ce76_1657_835b);
    }
}
