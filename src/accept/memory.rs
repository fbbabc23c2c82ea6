//! The embedded backend: dedup keys and streams in process memory.
//!
//! Not durable — a restart forgets everything — so it is for trying switchboard out, for
//! development and for tests. It keeps the same contract as Redis (atomic batch, duplicates,
//! backpressure, retention) so that behaviour does not change when the backend does.
//!
//! Every structure is bounded: dedup keys by `memory_max_dedup_keys` (oldest forgotten
//! first) and their TTL, the inbound stream by `inbound_max_backlog`, the events stream by
//! its retention, dead letters by `deadletter_max_len` and `deadletter_max_age`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::{
    AcceptReport, BackendError, Batch, GroupLag, Limits, StreamEntry, StreamName, StreamStats,
};

#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Inner>>,
    inbound_ready: Arc<Notify>,
    events_ready: Arc<Notify>,
    limits: Arc<Limits>,
}

/// A consumer group of the events stream (the persister's): like a Redis group, the last
/// id delivered and the entries delivered but not acknowledged, with who has them since when.
#[derive(Default)]
struct Group {
    last_delivered: StreamId,
    pending: BTreeMap<StreamId, Instant>,
}

struct Inner {
    /// key → expiry; `order` holds keys by insertion, which is also expiry order (one TTL).
    dedup: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
    inbound: VecDeque<(StreamId, String, String)>,
    /// How many of the front inbound entries have been handed to the router.
    delivered: usize,
    events: VecDeque<(StreamId, String, String)>,
    deadletter: VecDeque<(StreamId, String, String)>,
    last_id: StreamId,
    /// Consumer groups of the events stream (the persister's, the delivery fan-out's; the
    /// memory backend has no outside consumers), protected from trimming (`trim_events`).
    groups: HashMap<String, Group>,
    /// The router lease: holder and expiry.
    lease: Option<(String, Instant)>,
    /// Events stream entries trimmed before the delivery fan-out read them.
    trimmed_unread: u64,
}

/// Redis-compatible stream id: milliseconds and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Inner {
    fn next_id(&mut self) -> StreamId {
        let ms = now_ms();
        self.last_id = if ms > self.last_id.0 {
            StreamId(ms, 0)
        } else {
            StreamId(self.last_id.0, self.last_id.1 + 1)
        };
        self.last_id
    }

    fn expire(&mut self, now: Instant, max_keys: usize) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now && self.order.len() <= max_keys {
                break;
            }
            if let Some((expiry, key)) = self.order.pop_front() {
                // Only remove the map entry if it is this insertion's (not re-added since).
                if self.dedup.get(&key) == Some(&expiry) {
                    self.dedup.remove(&key);
                }
            }
        }
    }

    fn seen(&self, key: &str, now: Instant) -> bool {
        self.dedup.get(key).is_some_and(|exp| *exp > now)
    }

    fn remember(&mut self, key: &str, expiry: Instant) {
        self.dedup.insert(key.to_string(), expiry);
        self.order.push_back((expiry, key.to_string()));
    }
}

impl MemoryBackend {
    pub fn new(limits: Limits) -> MemoryBackend {
        MemoryBackend {
            inner: Arc::new(Mutex::new(Inner {
                dedup: HashMap::new(),
                order: VecDeque::new(),
                inbound: VecDeque::new(),
                delivered: 0,
                events: VecDeque::new(),
                deadletter: VecDeque::new(),
                last_id: StreamId::default(),
                groups: HashMap::new(),
                lease: None,
                trimmed_unread: 0,
            })),
            inbound_ready: Arc::new(Notify::new()),
            events_ready: Arc::new(Notify::new()),
            limits: Arc::new(limits),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the structures half-updated in a way
        // that matters more than stopping would: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn accept(&self, batch: &Batch) -> Result<AcceptReport, BackendError> {
        let now = Instant::now();
        let expiry = now + self.limits.dedup_ttl;
        let mut g = self.lock();
        g.expire(now, self.limits.memory_max_dedup_keys);

        let fresh_events = batch
            .events
            .iter()
            .filter(|item| !g.seen(&item.key, now))
            .count() as u64;
        let backlog = g.inbound.len() as u64;
        if fresh_events > 0 && backlog + fresh_events > self.limits.inbound_max_backlog {
            return Err(BackendError::Backpressure { backlog });
        }

        let mut report = AcceptReport::default();
        for item in &batch.events {
            let fresh = !g.seen(&item.key, now);
            if fresh {
                g.remember(&item.key, expiry);
                let id = g.next_id();
                g.inbound
                    .push_back((id, item.key.clone(), item.payload.clone()));
            }
            report.events.push(fresh);
        }
        for item in &batch.dead_letters {
            let fresh = !g.seen(&item.key, now);
            if fresh {
                g.remember(&item.key, expiry);
                let id = g.next_id();
                g.deadletter
                    .push_back((id, item.key.clone(), item.payload.clone()));
                while g.deadletter.len() as u64 > self.limits.deadletter_max_len {
                    g.deadletter.pop_front();
                }
                self.trim_deadletters_locked(&mut g);
            }
            report.dead_letters.push(fresh);
        }
        g.expire(now, self.limits.memory_max_dedup_keys);
        drop(g);
        if report.events.iter().any(|f| *f) {
            self.inbound_ready.notify_one();
        }
        Ok(report)
    }

    /// Dead letters older than `deadletter_max_age` go; returns how many.
    pub fn trim_deadletters(&self) -> u64 {
        let mut g = self.lock();
        self.trim_deadletters_locked(&mut g)
    }

    fn trim_deadletters_locked(&self, g: &mut Inner) -> u64 {
        let min_ms = now_ms().saturating_sub(self.limits.deadletter_max_age.as_millis() as u64);
        let mut n = 0;
        while g.deadletter.front().is_some_and(|(id, _, _)| id.0 < min_ms) {
            g.deadletter.pop_front();
            n += 1;
        }
        n
    }

    pub fn stats(&self) -> StreamStats {
        let g = self.lock();
        StreamStats {
            inbound: g.inbound.len() as u64,
            inbound_pending: g.delivered as u64,
            events: g.events.len() as u64,
            deadletter: g.deadletter.len() as u64,
        }
    }

    pub fn read(&self, stream: StreamName, limit: usize, after: Option<&str>) -> Vec<StreamEntry> {
        let g = self.lock();
        let entries = match stream {
            StreamName::Inbound => &g.inbound,
            StreamName::Events => &g.events,
            StreamName::DeadLetter => &g.deadletter,
        };
        let pick = |(id, key, payload): &(StreamId, String, String)| StreamEntry {
            id: id.to_string(),
            key: key.clone(),
            payload: payload.clone(),
        };
        match after.and_then(StreamId::parse) {
            Some(after) => entries
                .iter()
                .filter(|(id, _, _)| *id > after)
                .take(limit)
                .map(pick)
                .collect(),
            None => entries
                .iter()
                .skip(entries.len().saturating_sub(limit))
                .map(pick)
                .collect(),
        }
    }

    pub async fn read_inbound(&self, count: usize, block: Duration) -> Vec<StreamEntry> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Register interest before looking, so a notify between the look and the wait
            // is not lost.
            let notified = self.inbound_ready.notified();
            {
                let mut g = self.lock();
                let start = g.delivered;
                let out: Vec<StreamEntry> = g
                    .inbound
                    .iter()
                    .skip(start)
                    .take(count)
                    .map(|(id, key, p)| StreamEntry {
                        id: id.to_string(),
                        key: key.clone(),
                        payload: p.clone(),
                    })
                    .collect();
                if !out.is_empty() {
                    g.delivered += out.len();
                    return out;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Appends events to the events stream unless their key was seen (see the Redis
    /// backend's `append_events`).
    pub fn append_events(&self, items: &[super::Item]) -> Result<usize, BackendError> {
        let now = Instant::now();
        let expiry = now + self.limits.dedup_ttl;
        let mut g = self.lock();
        self.check_persister_backlog(&g)?;
        g.expire(now, self.limits.memory_max_dedup_keys);
        let mut appended = 0;
        for item in items {
            if g.seen(&item.key, now) {
                continue;
            }
            g.remember(&item.key, expiry);
            let id = g.next_id();
            g.events
                .push_back((id, item.key.clone(), item.payload.clone()));
            appended += 1;
        }
        self.trim_events(&mut g);
        drop(g);
        if appended > 0 {
            self.events_ready.notify_waiters();
        }
        Ok(appended)
    }

    /// Retention of the events stream; never removes an entry at or above a group's floor
    /// (its oldest unacknowledged entry, else its last delivered one) — the delivery
    /// fan-out's only while delivery runs and it is at most `delivery_max_lag` behind; past
    /// that, what is removed before it read it is counted in `trimmed_unread`.
    fn trim_events(&self, g: &mut Inner) {
        let mut floor: Option<StreamId> = None;
        // The delivery group when it is too far behind to protect anything: an entry is
        // unread when pending (handed out, not acknowledged) or past its last delivered.
        let mut forced: Option<(StreamId, std::collections::BTreeSet<StreamId>)> = None;
        for (name, gr) in &g.groups {
            let f = gr
                .pending
                .keys()
                .next()
                .copied()
                .unwrap_or(gr.last_delivered);
            if name == super::DELIVERY_GROUP {
                let Some(max) = self.limits.delivery_max_lag else {
                    continue;
                };
                if Self::lag_of(g, name).is_some_and(|l| l.total() > max) {
                    forced = Some((gr.last_delivered, gr.pending.keys().copied().collect()));
                    continue;
                }
            }
            floor = Some(floor.map_or(f, |x| x.min(f)));
        }
        let below_floor = |id: &StreamId| floor.is_none_or(|f| *id < f);
        let max_len = self.limits.events_max_len;
        let min_ms = (!self.limits.events_max_age.is_zero())
            .then(|| now_ms().saturating_sub(self.limits.events_max_age.as_millis() as u64));
        let mut unread = 0u64;
        while let Some((id, _, _)) = g.events.front() {
            let over_len = max_len > 0 && g.events.len() as u64 > max_len;
            let too_old = min_ms.is_some_and(|m| id.0 < m);
            if !(over_len || too_old) || !below_floor(id) {
                break;
            }
            if let Some((last, pending)) = &forced {
                if id > last || pending.contains(id) {
                    unread += 1;
                }
            }
            g.events.pop_front();
        }
        g.trimmed_unread += unread;
    }

    /// Entries retention removed before the delivery fan-out read them.
    pub fn events_trimmed_unread(&self) -> u64 {
        self.lock().trimmed_unread
    }

    /// Refuses to add to the events stream while the persister group has
    /// `persister_max_backlog` entries or more unacknowledged.
    fn check_persister_backlog(&self, g: &Inner) -> Result<(), BackendError> {
        if let Some(lag) = Self::lag_of(g, super::PERSISTER_GROUP) {
            if lag.total() >= self.limits.persister_max_backlog {
                return Err(BackendError::Backpressure {
                    backlog: lag.total(),
                });
            }
        }
        Ok(())
    }

    fn lag_of(g: &Inner, group: &str) -> Option<GroupLag> {
        let gr = g.groups.get(group)?;
        let undelivered = g
            .events
            .iter()
            .rev()
            .take_while(|(id, _, _)| *id > gr.last_delivered)
            .count() as u64;
        Some(GroupLag {
            pending: gr.pending.len() as u64,
            undelivered,
        })
    }

    pub fn events_group_lag(&self, group: &str) -> Option<GroupLag> {
        Self::lag_of(&self.lock(), group)
    }

    pub fn ensure_events_group(&self, group: &str) {
        self.lock().groups.entry(group.to_string()).or_default();
    }

    /// A group positioned at the stream's end (it reads what is published from now on),
    /// unless it exists.
    pub fn ensure_events_group_at_end(&self, group: &str) {
        let mut g = self.lock();
        let last = g.events.back().map(|(id, _, _)| *id).unwrap_or_default();
        g.groups.entry(group.to_string()).or_insert(Group {
            last_delivered: last,
            pending: BTreeMap::new(),
        });
    }

    pub async fn read_events_group(
        &self,
        group: &str,
        _consumer: &str,
        count: usize,
        block: Duration,
        claim_idle: Duration,
    ) -> Vec<StreamEntry> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.events_ready.notified();
            {
                let mut guard = self.lock();
                let g = &mut *guard;
                let gr = g.groups.entry(group.to_string()).or_default();
                let now = Instant::now();
                // Abandoned entries first (one process: only a consumer that gave up on a
                // batch leaves them), then new ones.
                let stale: Vec<StreamId> = gr
                    .pending
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) >= claim_idle)
                    .map(|(id, _)| *id)
                    .take(count)
                    .collect();
                let mut out = Vec::new();
                for id in stale {
                    gr.pending.insert(id, now);
                    let found = g.events.iter().find(|(i, _, _)| *i == id);
                    out.push(match found {
                        Some((i, k, p)) => StreamEntry {
                            id: i.to_string(),
                            key: k.clone(),
                            payload: p.clone(),
                        },
                        None => StreamEntry {
                            id: id.to_string(),
                            key: String::new(),
                            payload: String::new(),
                        },
                    });
                }
                if out.is_empty() {
                    let after = gr.last_delivered;
                    for (i, k, p) in g.events.iter().filter(|(i, _, _)| *i > after).take(count) {
                        gr.pending.insert(*i, now);
                        gr.last_delivered = *i;
                        out.push(StreamEntry {
                            id: i.to_string(),
                            key: k.clone(),
                            payload: p.clone(),
                        });
                    }
                }
                if !out.is_empty() {
                    return out;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    pub fn ack_events(&self, group: &str, ids: &[String]) -> usize {
        let mut g = self.lock();
        let Some(gr) = g.groups.get_mut(group) else {
            return 0;
        };
        let acked = ids
            .iter()
            .filter_map(|id| StreamId::parse(id))
            .filter(|id| gr.pending.remove(id).is_some())
            .count();
        self.trim_events(&mut g);
        acked
    }

    pub fn delete_entries(&self, stream: StreamName, ids: &[String]) -> usize {
        let ids: std::collections::HashSet<StreamId> =
            ids.iter().filter_map(|i| StreamId::parse(i)).collect();
        let mut guard = self.lock();
        let g = &mut *guard;
        if stream == StreamName::Inbound {
            // Keep the count of entries handed to the router right.
            let gone = g
                .inbound
                .iter()
                .take(g.delivered)
                .filter(|(id, _, _)| ids.contains(id))
                .count();
            g.delivered -= gone;
        }
        let entries = match stream {
            StreamName::Inbound => &mut g.inbound,
            StreamName::Events => &mut g.events,
            StreamName::DeadLetter => &mut g.deadletter,
        };
        let before = entries.len();
        entries.retain(|(id, _, _)| !ids.contains(id));
        before - entries.len()
    }

    /// Takes the lease when free or expired, renews it when `owner`'s.
    pub fn lease(&self, owner: &str, ttl: Duration) -> bool {
        let mut g = self.lock();
        let now = Instant::now();
        match &g.lease {
            Some((holder, until)) if holder != owner && *until > now => false,
            _ => {
                g.lease = Some((owner.to_string(), now + ttl));
                true
            }
        }
    }

    pub fn release_lease(&self, owner: &str) {
        let mut g = self.lock();
        if matches!(&g.lease, Some((holder, _)) if holder == owner) {
            g.lease = None;
        }
    }

    /// Hands out again, from the oldest, the entries handed out and not yet published.
    pub fn claim_pending(&self, count: usize) -> Vec<StreamEntry> {
        let mut g = self.lock();
        let pending = g.delivered;
        g.delivered = 0;
        let out: Vec<StreamEntry> = g
            .inbound
            .iter()
            .take(pending.min(count))
            .map(|(id, key, p)| StreamEntry {
                id: id.to_string(),
                key: key.clone(),
                payload: p.clone(),
            })
            .collect();
        // The rest of what was pending is handed out by the next reads, in order.
        g.delivered = out.len();
        out
    }

    pub fn publish(
        &self,
        moves: &[StreamEntry],
        fence: Option<&str>,
    ) -> Result<usize, BackendError> {
        let mut g = self.lock();
        if let Some(owner) = fence {
            let held = matches!(&g.lease, Some((holder, until)) if holder == owner && *until > Instant::now());
            if !held {
                return Err(BackendError::Fenced);
            }
        }
        self.check_persister_backlog(&g)?;
        let mut moved = 0;
        for entry in moves {
            let Some(id) = StreamId::parse(&entry.id) else {
                continue;
            };
            let Some(pos) = g.inbound.iter().position(|(i, _, _)| *i == id) else {
                continue;
            };
            g.inbound.remove(pos);
            if pos < g.delivered {
                g.delivered -= 1;
            }
            let new_id = g.next_id();
            g.events
                .push_back((new_id, entry.key.clone(), entry.payload.clone()));
            moved += 1;
        }
        self.trim_events(&mut g);
        drop(g);
        if moved > 0 {
            self.events_ready.notify_waiters();
        }
        Ok(moved)
    }
}
