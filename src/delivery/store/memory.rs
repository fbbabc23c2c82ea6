//! The delivery state in this process (the memory backend): the same structures and steps
//! as `delivery.lua`, each call one step under a lock. Not durable — a restart forgets the
//! queues, like the memory backend's streams — and bounded like the Redis store: queued
//! events by `delivery.max_queued_per_destination`, delivered ids by [`RECENT_KEPT`],
//! attempts by `delivery.attempts_kept`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{DestKey, Fence, Finish, Finished, Health, Job, Queued, RECENT_KEPT};
use crate::accept::BackendError;

/// A sorted set as Redis keeps one: member → score, ordered by (score, member).
#[derive(Default)]
struct ZSet {
    score: HashMap<String, u64>,
    order: BTreeSet<(u64, String)>,
}

impl ZSet {
    fn add(&mut self, member: &str, score: u64) {
        if let Some(old) = self.score.insert(member.to_string(), score) {
            self.order.remove(&(old, member.to_string()));
        }
        self.order.insert((score, member.to_string()));
    }

    fn rem(&mut self, member: &str) {
        if let Some(old) = self.score.remove(member) {
            self.order.remove(&(old, member.to_string()));
        }
    }

    fn get(&self, member: &str) -> Option<u64> {
        self.score.get(member).copied()
    }

    fn len(&self) -> usize {
        self.score.len()
    }

    /// Members scored at most `max`, lowest first, up to `limit`.
    fn up_to(&self, max: u64, limit: usize) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(s, _)| *s <= max)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn pop_lowest(&mut self) {
        if let Some((s, m)) = self.order.pop_first() {
            let _ = s;
            self.score.remove(&m);
        }
    }
}

/// One destination's state (`delivery.lua` names each part).
#[derive(Default)]
struct Dest {
    queues: HashMap<String, VecDeque<String>>,
    body: HashMap<String, String>,
    age: ZSet,
    ready: ZSet,
    inflight: ZSet,
    owner: HashMap<String, String>,
    /// conversation → (head event id, failed attempts).
    head: HashMap<String, (String, u32)>,
    recent: ZSet,
    failing_since: Option<u64>,
    disabled: Option<(String, u64)>,
    /// Newest first.
    attempts: VecDeque<serde_json::Value>,
    attempt_seq: u64,
    fence: HashMap<usize, u64>,
}

impl Dest {
    fn queue_len(&self, conv: &str) -> usize {
        self.queues.get(conv).map_or(0, VecDeque::len)
    }

    fn pop_head(&mut self, conv: &str) {
        if let Some(q) = self.queues.get_mut(conv) {
            q.pop_front();
            if q.is_empty() {
                self.queues.remove(conv);
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    dests: HashMap<DestKey, Dest>,
    /// Per stream partition: (holder, lease end, epoch).
    leases: HashMap<usize, (String, Instant, u64)>,
    /// Per stream partition: the last epoch handed out.
    epochs: HashMap<usize, u64>,
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every step below leaves the structures consistent before it could panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enqueue(
        &self,
        d: &DestKey,
        now_ms: u64,
        max_queued: u64,
        force: bool,
        fence: Option<Fence>,
        events: &[(&str, &str, &str)],
    ) -> Result<Vec<Queued>, BackendError> {
        let mut g = self.lock();
        let s = g.dests.entry(d.clone()).or_default();
        if let Some(f) = fence {
            let seen = s.fence.entry(f.partition).or_insert(0);
            if *seen > f.epoch {
                return Err(BackendError::Fenced);
            }
            *seen = f.epoch;
        }
        let mut out = Vec::with_capacity(events.len());
        for (id, conv, body) in events {
            let q = if s.disabled.is_some() {
                Queued::Disabled
            } else if s.body.contains_key(*id) || (!force && s.recent.get(id).is_some()) {
                Queued::Duplicate
            } else if s.age.len() as u64 >= max_queued {
                Queued::Full
            } else {
                s.body.insert(id.to_string(), body.to_string());
                s.age.add(id, now_ms);
                s.queues
                    .entry(conv.to_string())
                    .or_default()
                    .push_back(id.to_string());
                if s.inflight.get(conv).is_none() && s.ready.get(conv).is_none() {
                    s.ready.add(conv, now_ms);
                }
                Queued::Queued
            };
            out.push(q);
        }
        Ok(out)
    }

    pub fn take(
        &self,
        d: &DestKey,
        now_ms: u64,
        lease_until_ms: u64,
        owner: &str,
        max_in_flight: u32,
        limit: usize,
    ) -> Vec<Job> {
        let mut g = self.lock();
        let Some(s) = g.dests.get_mut(d) else {
            return Vec::new();
        };
        for conv in s.inflight.up_to(now_ms, usize::MAX) {
            s.inflight.rem(&conv);
            s.owner.remove(&conv);
            if s.queue_len(&conv) > 0 {
                s.ready.add(&conv, now_ms);
            }
        }
        if s.disabled.is_some() {
            return Vec::new();
        }
        let free = (max_in_flight as usize).saturating_sub(s.inflight.len());
        let n = free.min(limit);
        let mut out = Vec::new();
        for conv in s.ready.up_to(now_ms, n) {
            s.ready.rem(&conv);
            loop {
                let Some(id) = s.queues.get(&conv).and_then(|q| q.front()).cloned() else {
                    s.head.remove(&conv);
                    break;
                };
                if let Some(body) = s.body.get(&id).cloned() {
                    s.inflight.add(&conv, lease_until_ms);
                    s.owner.insert(conv.clone(), owner.to_string());
                    let attempts = match s.head.get(&conv) {
                        Some((hid, a)) if *hid == id => *a,
                        _ => 0,
                    };
                    let queued_ms = s.age.get(&id).unwrap_or(now_ms);
                    out.push(Job {
                        conversation: conv.clone(),
                        event_id: id,
                        body,
                        attempts,
                        queued_ms,
                    });
                    break;
                }
                // Erased meanwhile: skip it.
                s.pop_head(&conv);
                s.age.rem(&id);
            }
        }
        out
    }

    pub fn finish(
        &self,
        d: &DestKey,
        now_ms: u64,
        owner: &str,
        job: &Job,
        how: Finish,
        reached: Option<bool>,
    ) -> Finished {
        let mut g = self.lock();
        let Some(s) = g.dests.get_mut(d) else {
            return Finished::default();
        };
        let conv = job.conversation.as_str();
        let id = job.event_id.as_str();
        if s.owner.get(conv).map(String::as_str) != Some(owner) {
            return Finished::default();
        }
        s.inflight.rem(conv);
        s.owner.remove(conv);
        match how {
            Finish::Done { .. } => {
                if s.queues
                    .get(conv)
                    .and_then(|q| q.front())
                    .map(String::as_str)
                    == Some(id)
                {
                    s.pop_head(conv);
                }
                s.body.remove(id);
                s.age.rem(id);
                s.head.remove(conv);
                s.recent.add(id, now_ms);
                while s.recent.len() > RECENT_KEPT {
                    s.recent.pop_lowest();
                }
                if s.queue_len(conv) > 0 {
                    s.ready.add(conv, now_ms);
                }
            }
            Finish::Retry { due_ms, attempts } => {
                s.head.insert(conv.to_string(), (id.to_string(), attempts));
                s.ready.add(conv, due_ms);
            }
            Finish::Release { due_ms } => {
                if s.queue_len(conv) > 0 {
                    s.ready.add(conv, due_ms);
                }
            }
        }
        let failing = match reached {
            Some(true) => {
                s.failing_since = None;
                0
            }
            Some(false) => *s.failing_since.get_or_insert(now_ms),
            None => 0,
        };
        Finished {
            held: true,
            failing_since_ms: failing,
            more: s.ready.len() > 0,
        }
    }

    pub fn forget(&self, d: &DestKey, conversations: &[String]) -> u64 {
        let mut g = self.lock();
        let Some(s) = g.dests.get_mut(d) else {
            return 0;
        };
        let mut n = 0;
        for conv in conversations {
            for id in s.queues.remove(conv).unwrap_or_default() {
                if s.body.remove(&id).is_some() {
                    n += 1;
                }
                s.age.rem(&id);
            }
            s.ready.rem(conv);
            s.head.remove(conv);
        }
        n
    }

    pub fn purge(&self, d: &DestKey) -> u64 {
        self.lock()
            .dests
            .remove(d)
            .map_or(0, |s| s.age.len() as u64)
    }

    pub fn health(&self, d: &DestKey) -> Health {
        let g = self.lock();
        let Some(s) = g.dests.get(d) else {
            return Health::default();
        };
        Health {
            disabled: s.disabled.as_ref().map(|(r, _)| r.clone()),
            disabled_at_ms: s.disabled.as_ref().map(|(_, at)| *at),
            failing_since_ms: s.failing_since,
        }
    }

    pub fn disable(&self, d: &DestKey, now_ms: u64, reason: &str) -> bool {
        let mut g = self.lock();
        let s = g.dests.entry(d.clone()).or_default();
        if s.disabled.is_some() {
            return false;
        }
        s.disabled = Some((reason.to_string(), now_ms));
        true
    }

    pub fn enable(&self, d: &DestKey) {
        if let Some(s) = self.lock().dests.get_mut(d) {
            s.disabled = None;
            s.failing_since = None;
        }
    }

    pub fn backlog(&self, d: &DestKey) -> (u64, Option<u64>) {
        let g = self.lock();
        let Some(s) = g.dests.get(d) else {
            return (0, None);
        };
        (
            s.age.len() as u64,
            s.age.order.first().map(|(score, _)| *score),
        )
    }

    pub fn record_attempt(&self, d: &DestKey, mut record: serde_json::Value, kept: u64) {
        let mut g = self.lock();
        let s = g.dests.entry(d.clone()).or_default();
        s.attempt_seq += 1;
        record["id"] = serde_json::Value::String(s.attempt_seq.to_string());
        s.attempts.push_front(record);
        s.attempts.truncate(kept.max(1) as usize);
    }

    pub fn attempts(&self, d: &DestKey) -> Vec<serde_json::Value> {
        let g = self.lock();
        g.dests
            .get(d)
            .map(|s| s.attempts.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    pub fn lease(&self, partition: usize, owner: &str, ttl: Duration) -> Option<u64> {
        let mut g = self.lock();
        let now = Instant::now();
        let g = &mut *g;
        match g.leases.get_mut(&partition) {
            Some((holder, until, epoch)) if holder == owner && *until > now => {
                *until = now + ttl;
                Some(*epoch)
            }
            Some((_, until, _)) if *until > now => None,
            _ => {
                let e = g.epochs.entry(partition).or_insert(0);
                *e += 1;
                g.leases
                    .insert(partition, (owner.to_string(), now + ttl, *e));
                Some(*e)
            }
        }
    }

    pub fn release(&self, partition: usize, owner: &str) {
        let mut g = self.lock();
        if g.leases
            .get(&partition)
            .is_some_and(|(holder, _, _)| holder == owner)
        {
            g.leases.remove(&partition);
        }
    }
}
