//! The in-process routing store (memory backend). Every operation runs under one lock, so
//! each is atomic like its Redis script counterpart; the two implement the same algorithm
//! step for step (compare `route.lua`), and the conformance suite holds them to the same
//! results.
//!
//! Bounded: closed conversations are forgotten `closed_ttl_ms` after closing (at the next
//! sweep), decisions and history are capped per conversation, the outbox is drained by the
//! relay and capped at [`OUTBOX_MAX`] (oldest dropped, with a log line: it only holds changes
//! that are also in each conversation's history).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::outcome::{render, Outcome, Why};
use super::*;
use crate::event::Assignment;

pub const OUTBOX_MAX: usize = 100_000;

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<HashMap<String, Tenant>>>,
}

#[derive(Default)]
struct Tenant {
    ruleset: Option<RulesetRecord>,
    roster: BTreeSet<String>,
    agents: HashMap<String, AgentLive>,
    convs: HashMap<String, Conv>,
    /// queue → (100 - priority, queued ms, conv)
    queues: HashMap<String, BTreeSet<(u8, u64, String)>>,
    queued_total: u64,
    /// (queue, channel) → conversations waiting: a new conversation queues behind those of
    /// its own channel only.
    queued_by_channel: HashMap<(String, String), u64>,
    /// (due ms, conv): overflow to the fallback queue.
    timers: BTreeSet<(u64, String)>,
    /// agent → due ms: requeue their open conversations.
    grace: BTreeMap<String, u64>,
    /// (expiry ms, conv): pending offers.
    offers: BTreeSet<(u64, String)>,
    /// (last contact activity ms, conv), and conv → its entry.
    idle: BTreeSet<(u64, String)>,
    idle_at: HashMap<String, u64>,
    open: HashMap<String, BTreeSet<String>>,
    outbox: VecDeque<OutboxEntry>,
    outbox_seq: u64,
    /// The agents version (see [`AgentsChange`]).
    av: u64,
    /// Agents whose loads the current call changed, and whether it changed a presence.
    touched: BTreeSet<String>,
    agents_changed: bool,
}

#[derive(Clone)]
struct Conv {
    state: Option<ConvState>,
    agent: Option<String>,
    last_agent: Option<String>,
    closed_ms: u64,
    queue: Option<String>,
    team: Option<String>,
    rule: Option<String>,
    strategy: String,
    priority: u8,
    queued_ms: u64,
    opened_ms: u64,
    channel: String,
    meta: String,
    seq: u64,
    fallback_queue: Option<String>,
    fallback_team: Option<String>,
    fallback_strategy: Option<String>,
    overflow_due: Option<u64>,
    /// The target it waits for (see `Target::key`).
    target: Option<String>,
    last_message_ms: u64,
    /// Offered: when the offer expires, and the missed offers before its agent goes away.
    offer_expires: Option<u64>,
    offer_max_missed: u32,
    /// Agents who declined it (most recent last).
    declined: Vec<String>,
    /// Its rule's overflow wait, to re-arm the overflow after a declined offer.
    overflow_ms: u64,
    history: VecDeque<String>,
    decisions: VecDeque<(String, Decided)>,
    expires_ms: Option<u64>,
}

impl Conv {
    fn new() -> Conv {
        Conv {
            state: None,
            agent: None,
            last_agent: None,
            closed_ms: 0,
            queue: None,
            team: None,
            rule: None,
            strategy: String::new(),
            priority: 0,
            queued_ms: 0,
            opened_ms: 0,
            channel: String::new(),
            meta: String::new(),
            seq: 0,
            fallback_queue: None,
            fallback_team: None,
            fallback_strategy: None,
            overflow_due: None,
            target: None,
            last_message_ms: 0,
            offer_expires: None,
            offer_max_missed: 0,
            declined: Vec::new(),
            overflow_ms: 0,
            history: VecDeque::new(),
            decisions: VecDeque::new(),
            expires_ms: None,
        }
    }

    fn live(&self) -> Option<ConvLive> {
        Some(ConvLive {
            state: self.state?,
            agent: self.agent.clone(),
            last_agent: self.last_agent.clone(),
            queue: self.queue.clone(),
            team: self.team.clone(),
            rule: self.rule.clone(),
            strategy: self.strategy.clone(),
            priority: self.priority,
            channel: self.channel.clone(),
            queued_ms: self.queued_ms,
            opened_ms: self.opened_ms,
            closed_ms: self.closed_ms,
            seq: self.seq,
            target: self.target.clone(),
            last_message_ms: self.last_message_ms,
            offer_expires_ms: self.offer_expires.unwrap_or(0),
            declined: self.declined.clone(),
        })
    }
}

use super::outcome::decided;

impl Tenant {
    fn conv_mut(&mut self, id: &str, now: u64) -> &mut Conv {
        let expired = self
            .convs
            .get(id)
            .is_some_and(|c| c.expires_ms.is_some_and(|e| e <= now));
        if expired {
            self.convs.remove(id);
        }
        self.convs.entry(id.to_string()).or_insert_with(Conv::new)
    }

    /// Online, with room in total and on the channel: (load, capacity) if so.
    fn eligible(&self, agent: &str, channel: &str) -> Option<(u32, u32)> {
        let a = self.agents.get(agent)?;
        if a.presence != Presence::Online || a.load >= a.capacity {
            return None;
        }
        if let Some(cc) = a.channel_capacity.get(channel) {
            if a.channel_load.get(channel).copied().unwrap_or(0) >= *cc {
                return None;
            }
        }
        Some((a.load, a.capacity))
    }

    /// The team to report for `agent` taking a conversation planned for `team`: that team
    /// when they are in it, else their first team.
    fn team_of(&self, agent: &str, team: Option<&str>) -> Option<String> {
        let teams = &self.agents.get(agent)?.teams;
        match team {
            Some(t) if teams.iter().any(|x| x == t) => Some(t.to_string()),
            _ => teams.first().cloned(),
        }
    }

    fn owner_available(&self, agent: &str, now: u64, s: &Settings) -> bool {
        match self.agents.get(agent) {
            Some(a) if a.presence != Presence::Offline => true,
            Some(a) => s.keep_offline || now < a.since_ms + s.offline_grace_ms,
            None => false,
        }
    }

    fn assign(&mut self, conv_id: &str, agent: &str, now: u64) -> (u32, u32) {
        let channel = self.convs[conv_id].channel.clone();
        self.touched.insert(agent.to_string());
        let a = self.agents.entry(agent.to_string()).or_default();
        a.load += 1;
        *a.channel_load.entry(channel).or_insert(0) += 1;
        a.last_ms = now;
        let out = (a.load, a.capacity);
        self.open
            .entry(agent.to_string())
            .or_default()
            .insert(conv_id.to_string());
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        c.state = Some(ConvState::Open);
        c.agent = Some(agent.to_string());
        c.opened_ms = now;
        c.expires_ms = None;
        out
    }

    /// Releases the owner of an open (or offered) conversation; returns who it was.
    fn release(&mut self, conv_id: &str) -> Option<String> {
        let c = self.convs.get_mut(conv_id)?;
        let agent = c.agent.take()?;
        if let Some(due) = c.offer_expires.take() {
            self.offers.remove(&(due, conv_id.to_string()));
        }
        let channel = c.channel.clone();
        c.last_agent = Some(agent.clone());
        if let Some(a) = self.agents.get_mut(&agent) {
            self.touched.insert(agent.clone());
            a.load = a.load.saturating_sub(1);
            if let Some(l) = a.channel_load.get_mut(&channel) {
                *l = l.saturating_sub(1);
            }
        }
        if let Some(set) = self.open.get_mut(&agent) {
            set.remove(conv_id);
        }
        Some(agent)
    }

    /// Turns the assignment just made ([`Tenant::assign`]) into an offer that expires
    /// after `offer.timeout_ms`; fills the decision.
    fn make_offer(&mut self, conv_id: &str, o: &mut Outcome, offer: Offer, now: u64) {
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        let due = now + offer.timeout_ms;
        c.state = Some(ConvState::Offered);
        c.offer_expires = Some(due);
        c.offer_max_missed = offer.max_missed;
        self.offers.insert((due, conv_id.to_string()));
        o.a.action = "offered".into();
        o.a.offer_expires_at = Some(crate::event::ms_rfc3339(due));
        let (load, cap) = match &o.why {
            Why::Assigned { load, cap, .. }
            | Why::Sticky { load, cap }
            | Why::Dequeued { load, cap, .. } => (*load, *cap),
            _ => (0, 0),
        };
        let text = match &o.why {
            Why::Assigned { text, .. } | Why::Dequeued { text, .. } => text.clone(),
            _ => format!(
                "sticky: back to last agent {}",
                o.a.agent.as_deref().unwrap_or("")
            ),
        };
        o.why = Why::Offered {
            text,
            load,
            cap,
            ms: offer.timeout_ms,
        };
    }

    /// Back in its queue, keeping its place: the time it first began waiting for an agent.
    /// Returns the queue, the priority and that time.
    fn back_in_place(&mut self, conv_id: &str, now: u64) -> (String, u8, u64) {
        let c = &self.convs[conv_id];
        let queue = c.queue.clone().unwrap_or_else(|| "default".into());
        let priority = c.priority;
        let at = if c.queued_ms > 0 { c.queued_ms } else { now };
        self.enqueue(conv_id, &queue, priority, at);
        (queue, priority, at)
    }

    /// A rejected or expired offer: the agent's slot is freed and the conversation goes
    /// back to its queue with its place, its overflow re-armed, remembering who declined
    /// it. Returns the agent, the queue and the priority.
    fn decline(&mut self, conv_id: &str, now: u64) -> (String, String, u8) {
        let la = self.convs[conv_id].last_agent.clone();
        let agent = self.release(conv_id).unwrap_or_default();
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        // The last agent stays whoever last served it (for sticky routing after a close).
        c.last_agent = la;
        c.declined.retain(|a| *a != agent);
        c.declined.push(agent.clone());
        if c.declined.len() > DECLINED_KEPT {
            let extra = c.declined.len() - DECLINED_KEPT;
            c.declined.drain(..extra);
        }
        let (queue, priority, at) = self.back_in_place(conv_id, now);
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        if c.fallback_queue.is_some() && c.overflow_ms > 0 {
            let due = (at + c.overflow_ms).max(now);
            c.overflow_due = Some(due);
            self.timers.insert((due, conv_id.to_string()));
        }
        (agent, queue, priority)
    }

    fn waiting(&self, queue: &str, channel: &str) -> u64 {
        self.queued_by_channel
            .get(&(queue.to_string(), channel.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn enqueue(&mut self, conv_id: &str, queue: &str, priority: u8, at: u64) {
        self.queues.entry(queue.to_string()).or_default().insert((
            100 - priority.min(100),
            at,
            conv_id.to_string(),
        ));
        self.queued_total += 1;
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        *self
            .queued_by_channel
            .entry((queue.to_string(), c.channel.clone()))
            .or_insert(0) += 1;
        c.state = Some(ConvState::Queued);
        c.queue = Some(queue.to_string());
        c.priority = priority;
        c.queued_ms = at;
        c.agent = None;
        c.expires_ms = None;
    }

    /// Takes a queued conversation out of its queue and timers.
    fn unqueue(&mut self, conv_id: &str) {
        let Some(c) = self.convs.get_mut(conv_id) else {
            return;
        };
        if c.state != Some(ConvState::Queued) {
            return;
        }
        let key = (100 - c.priority.min(100), c.queued_ms, conv_id.to_string());
        if let Some(due) = c.overflow_due.take() {
            self.timers.remove(&(due, conv_id.to_string()));
        }
        if let Some(q) = c.queue.clone() {
            if let Some(set) = self.queues.get_mut(&q) {
                if set.remove(&key) {
                    self.queued_total = self.queued_total.saturating_sub(1);
                    let k = (q.clone(), c.channel.clone());
                    if let Some(n) = self.queued_by_channel.get_mut(&k) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.queued_by_channel.remove(&k);
                        }
                    }
                }
                if set.is_empty() {
                    self.queues.remove(&q);
                }
            }
        }
    }

    /// `throttle`: a message, which updates the idle index only once a minute.
    fn touch(&mut self, conv_id: &str, now: u64, throttle: bool) {
        if throttle
            && self
                .idle_at
                .get(conv_id)
                .is_some_and(|old| now.saturating_sub(*old) < TOUCH_EVERY_MS)
        {
            return;
        }
        if let Some(old) = self.idle_at.insert(conv_id.to_string(), now) {
            self.idle.remove(&(old, conv_id.to_string()));
        }
        self.idle.insert((now, conv_id.to_string()));
    }

    fn untouch(&mut self, conv_id: &str) {
        if let Some(old) = self.idle_at.remove(conv_id) {
            self.idle.remove(&(old, conv_id.to_string()));
        }
    }

    /// Records a change: seq, history, and (when no message carries it) the outbox.
    fn record(&mut self, conv_id: &str, event_id: &str, o: &mut Outcome, now: u64, outbox: bool) {
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        c.seq += 1;
        o.a.seq = c.seq;
        let a = render(o);
        let event_id = if outbox {
            outbox_event_id(conv_id, c.seq)
        } else {
            event_id.to_string()
        };
        let entry = serde_json::json!({ "at_ms": now, "event_id": event_id, "assignment": &a });
        c.history.push_back(entry.to_string());
        while c.history.len() > HISTORY_KEPT {
            c.history.pop_front();
        }
        if outbox {
            let meta = c.meta.clone();
            self.outbox_seq += 1;
            self.outbox.push_back(OutboxEntry {
                id: format!("{}-0", self.outbox_seq),
                event_id,
                conv: conv_id.to_string(),
                meta,
                assignment: serde_json::to_string(&a).unwrap_or_default(),
                at_ms: now,
            });
            if self.outbox.len() > OUTBOX_MAX {
                self.outbox.pop_front();
                tracing::warn!("routing outbox full: oldest assignment event dropped");
            }
        }
    }

    /// The conversation's last DECISIONS_KEPT decisions, by event id.
    fn remember(&mut self, conv_id: &str, event_id: &str, d: &Decided, _now: u64) {
        if event_id.is_empty() {
            return;
        }
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        c.decisions.push_back((event_id.to_string(), d.clone()));
        while c.decisions.len() > DECISIONS_KEPT {
            c.decisions.pop_front();
        }
    }

    fn stored(&self, conv_id: &str, event_id: &str, now: u64) -> Option<&Decided> {
        let c = self.convs.get(conv_id)?;
        if c.expires_ms.is_some_and(|e| e <= now) {
            return None;
        }
        c.decisions
            .iter()
            .find(|(e, _)| e == event_id)
            .map(|(_, d)| d)
    }

    fn close_conv(&mut self, conv_id: &str, s: &Settings, now: u64) {
        self.untouch(conv_id);
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        c.state = Some(ConvState::Closed);
        c.closed_ms = now;
        c.queue = None;
        c.agent = None;
        c.expires_ms = Some(now + s.closed_ttl_ms);
    }

    /// Decisions that change nothing (kept, waiting, an offer pending) are neither recorded
    /// nor remembered, as `unchanged` in route.lua.
    fn route_one(
        &mut self,
        s: &Settings,
        now: u64,
        excluded: &[String],
        it: &RouteItem,
    ) -> Decided {
        if let Some(d) = self.stored(&it.conv, &it.event_id, now) {
            return d.clone();
        }
        let c = self.conv_mut(&it.conv, now);
        if c.meta.is_empty() {
            c.meta = it.meta.clone();
        }
        c.channel = it.channel.clone();
        if it.mode == RouteMode::Message {
            c.last_message_ms = now;
        }
        let state = c.state;
        let owner = c.agent.clone();
        let queue_now = c.queue.clone();
        let queued_ms = c.queued_ms;
        let mut freed = false;
        let mut previous = None;
        let message = it.mode == RouteMode::Message;
        self.touch(&it.conv, now, message);
        match state {
            Some(ConvState::Offered) if it.mode != RouteMode::Transfer => {
                let c = &self.convs[&it.conv];
                let due = c.offer_expires.unwrap_or(now);
                let o = Outcome {
                    a: Assignment {
                        action: "offered".into(),
                        agent: owner.clone(),
                        team: c.team.clone(),
                        queue: c.queue.clone(),
                        rule: c.rule.clone(),
                        strategy: c.strategy.clone(),
                        priority: Some(c.priority),
                        seq: c.seq,
                        offer_expires_at: Some(crate::event::ms_rfc3339(due)),
                        ..Default::default()
                    },
                    why: Why::Pending {
                        ms: due.saturating_sub(now),
                    },
                };
                return decided(&o, false);
            }
            Some(ConvState::Open) | Some(ConvState::Offered) => {
                let owner = owner.unwrap_or_default();
                let keep = match it.mode {
                    RouteMode::Message => self.owner_available(&owner, now, s),
                    RouteMode::Reopen => true,
                    RouteMode::Transfer => false,
                };
                if keep {
                    let c = &self.convs[&it.conv];
                    let o = Outcome {
                        a: Assignment {
                            action: "kept".into(),
                            agent: Some(owner.clone()),
                            team: c.team.clone(),
                            queue: c.queue.clone(),
                            rule: c.rule.clone(),
                            strategy: c.strategy.clone(),
                            priority: Some(c.priority),
                            seq: c.seq,
                            ..Default::default()
                        },
                        why: Why::Kept,
                    };
                    return decided(&o, false);
                }
                self.release(&it.conv);
                freed = true;
                previous = Some(owner);
            }
            Some(ConvState::Queued) if it.mode != RouteMode::Transfer => {
                let c = &self.convs[&it.conv];
                let q = queue_now.unwrap_or_default();
                let o = Outcome {
                    a: Assignment {
                        action: "waiting".into(),
                        team: c.team.clone(),
                        queue: Some(q.clone()),
                        rule: c.rule.clone(),
                        strategy: c.strategy.clone(),
                        queued: true,
                        priority: Some(c.priority),
                        seq: c.seq,
                        ..Default::default()
                    },
                    why: Why::Waiting {
                        ms: now.saturating_sub(queued_ms),
                    },
                };
                return decided(&o, false);
            }
            Some(ConvState::Queued) => self.unqueue(&it.conv),
            _ => {}
        }

        // Routed afresh: it begins waiting for an agent now.
        self.convs
            .get_mut(&it.conv)
            .expect("conversation exists")
            .queued_ms = now;
        let prefix = match &previous {
            Some(p) if message => format!("owner {p} is offline; {}", it.reason),
            _ => it.reason.clone(),
        };
        let seq_now = self.convs[&it.conv].seq;
        let mut o = Outcome {
            why: Why::Closed {
                text: String::new(),
            },
            a: Assignment {
                seq: seq_now,
                previous_agent: previous.clone(),
                team: it.team.clone(),
                queue: Some(it.queue.clone()),
                rule: it.rule.clone(),
                strategy: it.strategy.clone(),
                priority: Some(it.priority),
                candidates: Some(it.considered),
                ..Default::default()
            },
        };
        let a = &mut o.a;
        let assigned_action = if it.mode == RouteMode::Transfer {
            "transferred"
        } else {
            "assigned"
        };

        // Sticky: back to the last agent within the window.
        let c = &self.convs[&it.conv];
        if let Some(sticky) = c
            .last_agent
            .clone()
            .filter(|a| it.sticky && !excluded.contains(a))
        {
            let sticky = &sticky;
            let within = s.sticky_window_ms > 0
                && c.closed_ms > 0
                && now.saturating_sub(c.closed_ms) <= s.sticky_window_ms;
            if within
                && it.mode != RouteMode::Transfer
                && self.eligible(sticky, &it.channel).is_some()
            {
                let (load, cap) = self.assign(&it.conv, sticky, now);
                a.action = assigned_action.into();
                a.agent = Some(sticky.clone());
                a.team = self.team_of(sticky, it.team.as_deref());
                a.strategy = "sticky_owner".into();
                o.why = Why::Sticky { load, cap };
                if let Some(offer) = it.offer {
                    self.make_offer(&it.conv, &mut o, offer, now);
                }
                return self.finish(s, now, it, o, freed);
            }
        }

        // Fairness: nobody jumps a queue that is already waiting for this target.
        let waiting = self.waiting(&it.queue, &it.channel);
        if waiting == 0 {
            for cand in &it.candidates {
                if self.eligible(cand, &it.channel).is_some() {
                    let (load, cap) = self.assign(&it.conv, cand, now);
                    a.action = assigned_action.into();
                    a.agent = Some(cand.clone());
                    o.why = Why::Assigned {
                        text: prefix,
                        load,
                        cap,
                    };
                    if let Some(offer) = it.offer {
                        self.make_offer(&it.conv, &mut o, offer, now);
                    }
                    return self.finish(s, now, it, o, freed);
                }
            }
        }

        if self.queued_total >= s.max_queued {
            a.action = "unrouted".into();
            a.queue = None;
            o.why = Why::Unrouted {
                text: prefix,
                n: self.queued_total,
            };
            if previous.is_some() {
                // The released conversation has nowhere to wait: it is closed, not lost.
                self.close_conv(&it.conv, s, now);
            }
            if previous.is_some() || it.mode != RouteMode::Message {
                self.record(&it.conv, &it.event_id, &mut o, now, !message);
            }
            let c = self.convs.get_mut(&it.conv).expect("conversation exists");
            if c.state.is_none() {
                // Never routed: forgotten like a closed one.
                c.expires_ms = Some(now + s.closed_ttl_ms);
            }
            let d = decided(&o, freed);
            self.remember(&it.conv, &it.event_id, &d, now);
            return d;
        }
        self.enqueue(&it.conv, &it.queue, it.priority, now);
        self.set_overflow(&it.conv, it, now);
        let a = &mut o.a;
        a.action = "queued".into();
        a.queued = true;
        o.why = if waiting > 0 {
            Why::Behind {
                text: prefix,
                n: waiting,
            }
        } else if it.considered == 0 {
            Why::NoCandidate { text: prefix }
        } else {
            Why::Busy { text: prefix }
        };
        self.finish(s, now, it, o, freed)
    }

    fn set_overflow(&mut self, conv_id: &str, it: &RouteItem, now: u64) {
        let c = self.convs.get_mut(conv_id).expect("conversation exists");
        c.team = it.team.clone();
        c.rule = it.rule.clone();
        c.target = Some(it.target.clone()).filter(|t| !t.is_empty());
        c.strategy = it.strategy.clone();
        c.fallback_queue = None;
        c.fallback_team = None;
        c.fallback_strategy = None;
        c.overflow_ms = 0;
        c.declined.clear();
        if let Some(fb) = &it.fallback_queue {
            if it.overflow_ms > 0 {
                let due = now + it.overflow_ms;
                c.overflow_ms = it.overflow_ms;
                c.fallback_queue = Some(fb.clone());
                c.fallback_team = it.fallback_team.clone();
                c.fallback_strategy = Some(it.fallback_strategy.clone()).filter(|s| !s.is_empty());
                c.overflow_due = Some(due);
                self.timers.insert((due, conv_id.to_string()));
            }
        }
    }

    fn finish(
        &mut self,
        _s: &Settings,
        now: u64,
        it: &RouteItem,
        mut o: Outcome,
        freed: bool,
    ) -> Decided {
        let a = &o.a;
        let c = self.convs.get_mut(&it.conv).expect("conversation exists");
        if a.agent.is_some() {
            c.team = a.team.clone();
            c.rule = it.rule.clone();
            c.target = Some(it.target.clone()).filter(|t| !t.is_empty());
            c.strategy = a.strategy.clone();
            c.queue = Some(it.queue.clone());
            c.priority = it.priority;
            c.declined.clear();
        }
        if a.action == "offered" {
            // Declined, it waits in the queue: with the fallback the rule states.
            c.fallback_queue = None;
            c.fallback_team = None;
            c.fallback_strategy = None;
            c.overflow_ms = 0;
            if let Some(fb) = it.fallback_queue.as_ref().filter(|_| it.overflow_ms > 0) {
                c.fallback_queue = Some(fb.clone());
                c.fallback_team = it.fallback_team.clone();
                c.fallback_strategy = Some(it.fallback_strategy.clone()).filter(|s| !s.is_empty());
                c.overflow_ms = it.overflow_ms;
            }
        }
        self.record(
            &it.conv,
            &it.event_id,
            &mut o,
            now,
            it.mode != RouteMode::Message,
        );
        let d = decided(&o, freed);
        self.remember(&it.conv, &it.event_id, &d, now);
        d
    }

    fn dequeue_one(&mut self, now: u64, it: &DequeueItem) -> Option<Decided> {
        let c = self.convs.get(&it.conv)?;
        if c.state != Some(ConvState::Queued) || c.queue.as_deref() != Some(it.queue.as_str()) {
            return None;
        }
        let channel = c.channel.clone();
        let cand = it
            .candidates
            .iter()
            .find(|a| self.eligible(a, &channel).is_some())?
            .clone();
        let queued_ms = c.queued_ms;
        let priority = c.priority;
        let rule = c.rule.clone();
        self.unqueue(&it.conv);
        let (load, cap) = self.assign(&it.conv, &cand, now);
        let wait = now.saturating_sub(queued_ms);
        let c = self.convs.get_mut(&it.conv).expect("conversation exists");
        c.team = it.team.clone();
        c.strategy = it.strategy.clone();
        let mut o = Outcome {
            a: Assignment {
                action: "assigned".into(),
                agent: Some(cand.clone()),
                team: it.team.clone(),
                queue: Some(it.queue.clone()),
                rule,
                strategy: it.strategy.clone(),
                waited: true,
                wait_ms: Some(wait),
                priority: Some(priority),
                candidates: Some(it.considered),
                ..Default::default()
            },
            why: Why::Dequeued {
                text: it.reason.clone(),
                load,
                cap,
            },
        };
        if let Some(offer) = it.offer {
            self.make_offer(&it.conv, &mut o, offer, now);
        }
        self.record(&it.conv, "", &mut o, now, true);
        Some(decided(&o, false))
    }

    fn requeue(&mut self, conv_id: &str, agent: &str, s: &Settings, now: u64) {
        let since = self.agents.get(agent).map_or(now, |a| a.since_ms);
        if self.release(conv_id).is_none() {
            return;
        }
        let (queue, priority, _) = self.back_in_place(conv_id, now);
        let c = &self.convs[conv_id];
        let mut o = Outcome {
            a: Assignment {
                action: "requeued".into(),
                previous_agent: Some(agent.to_string()),
                team: c.team.clone(),
                queue: Some(queue.clone()),
                rule: c.rule.clone(),
                strategy: c.strategy.clone(),
                queued: true,
                priority: Some(priority),
                ..Default::default()
            },
            why: Why::Requeued {
                ms: now.saturating_sub(since),
            },
        };
        let _ = s;
        self.record(conv_id, "", &mut o, now, true);
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Tenant>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, tenant: &str, f: impl FnOnce(&mut Tenant) -> T) -> T {
        self.with_change(tenant, f).0
    }

    /// Runs one operation; the agents version moves when it changed any agent.
    fn with_change<T>(&self, tenant: &str, f: impl FnOnce(&mut Tenant) -> T) -> (T, AgentsChange) {
        let mut g = self.lock();
        let t = g.entry(tenant.to_string()).or_default();
        t.touched.clear();
        t.agents_changed = false;
        let out = f(t);
        let before = t.av;
        let touched = std::mem::take(&mut t.touched);
        if !touched.is_empty() || t.agents_changed {
            t.av += 1;
        }
        let loads = touched
            .into_iter()
            .filter_map(|id| {
                let a = t.agents.get(&id)?;
                Some(AgentLoad {
                    load: a.load,
                    last_ms: Some(a.last_ms),
                    channel_load: a
                        .channel_load
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect(),
                    id,
                })
            })
            .collect();
        (
            out,
            AgentsChange {
                before,
                after: t.av,
                loads,
            },
        )
    }

    pub fn apply_ruleset(
        &self,
        tenant: &str,
        record: &RulesetRecord,
        agents: &[AgentSpec],
        expected_version: Option<u64>,
        now_ms: u64,
    ) -> Result<(), VersionConflict> {
        self.with(tenant, |t| {
            let current = t.ruleset.as_ref().map_or(0, |r| r.version);
            if let Some(v) = expected_version {
                if v != current {
                    return Err(VersionConflict(current));
                }
            }
            let roster: BTreeSet<String> = agents.iter().map(|a| a.id.clone()).collect();
            for gone in t.roster.difference(&roster) {
                if let Some(a) = t.agents.get_mut(gone) {
                    a.capacity = 0;
                    a.channel_capacity.clear();
                }
            }
            for spec in agents {
                let a = t
                    .agents
                    .entry(spec.id.clone())
                    .or_insert_with(|| AgentLive {
                        presence: spec.initial_presence,
                        since_ms: now_ms,
                        ..Default::default()
                    });
                a.capacity = spec.capacity;
                a.channel_capacity = spec.channel_capacity.iter().cloned().collect();
                a.teams = spec.teams.clone();
            }
            t.roster = roster;
            t.ruleset = Some(record.clone());
            t.agents_changed = true;
            Ok(())
        })
    }

    pub fn ruleset(&self, tenant: &str) -> Option<RulesetRecord> {
        self.lock().get(tenant).and_then(|t| t.ruleset.clone())
    }

    pub fn ruleset_versions(&self, tenants: &[String]) -> Vec<u64> {
        let g = self.lock();
        tenants
            .iter()
            .map(|t| {
                g.get(t)
                    .and_then(|t| t.ruleset.as_ref())
                    .map_or(0, |r| r.version)
            })
            .collect()
    }

    pub fn snapshot(&self, tenant: &str, req: &SnapshotRequest) -> Snapshot {
        self.with(tenant, |t| {
            let mut snap = Snapshot {
                av: t.av,
                ..Snapshot::default()
            };
            for a in &req.agents {
                snap.agents
                    .insert(a.clone(), t.agents.get(a).cloned().unwrap_or_default());
            }
            for c in &req.convs {
                if let Some(live) = t.convs.get(c).and_then(Conv::live) {
                    snap.convs.insert(c.clone(), live);
                }
            }
            if req.queue_heads > 0 {
                let mut heads = Vec::new();
                for (q, set) in &t.queues {
                    for (inv, at, conv) in set.iter().take(req.queue_heads) {
                        let c = &t.convs[conv];
                        heads.push((
                            *inv,
                            *at,
                            conv.clone(),
                            QueuedConv {
                                conv: conv.clone(),
                                queue: q.clone(),
                                priority: 100 - inv,
                                queued_ms: *at,
                                channel: c.channel.clone(),
                                last_agent: c.last_agent.clone(),
                                target: c.target.clone(),
                                rule: c.rule.clone(),
                                declined: c.declined.clone(),
                            },
                        ));
                    }
                }
                heads.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
                snap.queued = heads.into_iter().map(|h| h.3).collect();
            }
            snap
        })
    }

    pub fn route(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        excluded: &[String],
        items: &[RouteItem],
        expected: Option<u64>,
    ) -> Routed {
        let (decisions, change) = self.with_change(tenant, |t| {
            if expected.is_some_and(|v| v != t.av) {
                return None;
            }
            Some(
                items
                    .iter()
                    .map(|it| t.route_one(settings, now_ms, excluded, it))
                    .collect(),
            )
        });
        match decisions {
            Some(decisions) => Routed::Done { decisions, change },
            None => Routed::Stale {
                current: change.after,
            },
        }
    }

    pub fn dequeue(
        &self,
        tenant: &str,
        _settings: &Settings,
        now_ms: u64,
        items: &[DequeueItem],
    ) -> (Vec<Option<Decided>>, AgentsChange) {
        self.with_change(tenant, |t| {
            items.iter().map(|it| t.dequeue_one(now_ms, it)).collect()
        })
    }

    pub fn transfer_agent(
        &self,
        tenant: &str,
        _settings: &Settings,
        now_ms: u64,
        conv: &str,
        agent: &str,
        reason: &str,
    ) -> Result<Decided, TransferRefused> {
        self.with(tenant, |t| {
            let Some(c) = t.convs.get(conv) else {
                return Err(TransferRefused::NotActive);
            };
            let state = c.state;
            if !matches!(
                state,
                Some(ConvState::Open) | Some(ConvState::Queued) | Some(ConvState::Offered)
            ) {
                return Err(TransferRefused::NotActive);
            }
            let channel = c.channel.clone();
            let same = c.agent.as_deref() == Some(agent);
            if !same {
                let Some(a) = t.agents.get(agent) else {
                    return Err(TransferRefused::Offline(agent.to_string()));
                };
                if a.presence == Presence::Offline {
                    return Err(TransferRefused::Offline(agent.to_string()));
                }
                if a.load >= a.capacity {
                    return Err(TransferRefused::Full(agent.to_string(), a.load, a.capacity));
                }
                if let Some(cc) = a.channel_capacity.get(&channel) {
                    if a.channel_load.get(&channel).copied().unwrap_or(0) >= *cc {
                        return Err(TransferRefused::ChannelFull(agent.to_string()));
                    }
                }
            }
            let mut freed = false;
            let mut previous = None;
            let mut wait = None;
            if same {
                previous = Some(agent.to_string());
                if state == Some(ConvState::Offered) {
                    // Given by hand to the agent it was offered to: theirs now.
                    let c = t.convs.get_mut(conv).expect("conversation exists");
                    if let Some(due) = c.offer_expires.take() {
                        t.offers.remove(&(due, conv.to_string()));
                    }
                    c.state = Some(ConvState::Open);
                }
            } else if matches!(state, Some(ConvState::Open) | Some(ConvState::Offered)) {
                previous = t.release(conv);
                freed = true;
            } else {
                wait = Some(now_ms.saturating_sub(t.convs[conv].queued_ms));
                t.unqueue(conv);
            }
            let (load, cap) = if same {
                let a = &t.agents[agent];
                (a.load, a.capacity)
            } else {
                t.assign(conv, agent, now_ms)
            };
            let c = t.convs.get_mut(conv).expect("conversation exists");
            c.strategy = "manual".into();
            let mut o = Outcome {
                a: Assignment {
                    action: "transferred".into(),
                    agent: Some(agent.to_string()),
                    previous_agent: previous,
                    team: c.team.clone(),
                    queue: c.queue.clone(),
                    rule: c.rule.clone(),
                    strategy: "manual".into(),
                    waited: wait.is_some(),
                    wait_ms: wait,
                    priority: Some(c.priority),
                    ..Default::default()
                },
                why: Why::Transferred {
                    text: reason.to_string(),
                    load,
                    cap,
                },
            };
            t.record(conv, "", &mut o, now_ms, true);
            Ok(decided(&o, freed))
        })
    }

    pub fn answer(
        &self,
        tenant: &str,
        _settings: &Settings,
        now_ms: u64,
        conv: &str,
        agent: Option<&str>,
        answer: Answer,
    ) -> Result<Decided, AnswerRefused> {
        self.with(tenant, |t| {
            let c = t.convs.get(conv).ok_or(AnswerRefused::NoOffer)?;
            let holder = match (&c.state, &c.agent) {
                (Some(ConvState::Offered), Some(a)) => a.clone(),
                _ => return Err(AnswerRefused::NoOffer),
            };
            if agent.is_some_and(|a| a != holder) {
                return Err(AnswerRefused::NotYours);
            }
            // An answer, either way, ends a run of missed offers.
            if let Some(a) = t.agents.get_mut(&holder) {
                a.missed_offers = 0;
            }
            match answer {
                Answer::Accept => {
                    let c = t.convs.get_mut(conv).expect("conversation exists");
                    let after = now_ms.saturating_sub(c.opened_ms);
                    if let Some(due) = c.offer_expires.take() {
                        t.offers.remove(&(due, conv.to_string()));
                    }
                    c.state = Some(ConvState::Open);
                    c.opened_ms = now_ms;
                    c.declined.clear();
                    let mut o = Outcome {
                        a: Assignment {
                            action: "accepted".into(),
                            agent: Some(holder),
                            team: c.team.clone(),
                            queue: c.queue.clone(),
                            rule: c.rule.clone(),
                            strategy: c.strategy.clone(),
                            priority: Some(c.priority),
                            ..Default::default()
                        },
                        why: Why::Accepted { ms: after },
                    };
                    t.record(conv, "", &mut o, now_ms, true);
                    Ok(decided(&o, false))
                }
                Answer::Reject => {
                    let (agent, queue, priority) = t.decline(conv, now_ms);
                    let c = &t.convs[conv];
                    let mut o = Outcome {
                        a: Assignment {
                            action: "rejected".into(),
                            previous_agent: Some(agent),
                            team: c.team.clone(),
                            queue: Some(queue),
                            rule: c.rule.clone(),
                            strategy: c.strategy.clone(),
                            queued: true,
                            priority: Some(priority),
                            ..Default::default()
                        },
                        why: Why::Rejected,
                    };
                    t.record(conv, "", &mut o, now_ms, true);
                    Ok(decided(&o, true))
                }
            }
        })
    }

    pub fn close(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        conv: &str,
        reason: &str,
    ) -> Option<Decided> {
        self.with(tenant, |t| close_in(t, settings, now_ms, conv, reason))
    }

    pub fn set_presence(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        agent: &str,
        presence: Presence,
    ) -> Presence {
        self.with(tenant, |t| {
            let a = t.agents.entry(agent.to_string()).or_default();
            let previous = a.presence;
            if previous != presence {
                a.presence = presence;
                a.since_ms = now_ms;
                t.agents_changed = true;
            }
            if presence == Presence::Online {
                // Back: missed offers count again from zero.
                a.missed_offers = 0;
            }
            if presence == Presence::Offline && !settings.keep_offline {
                if previous != Presence::Offline || !t.grace.contains_key(agent) {
                    t.grace
                        .insert(agent.to_string(), now_ms + settings.offline_grace_ms);
                }
            } else {
                t.grace.remove(agent);
            }
            previous
        })
    }

    pub fn sweep(&self, tenant: &str, settings: &Settings, now_ms: u64) -> SweepReport {
        self.with(tenant, |t| {
            let mut report = SweepReport::default();
            // Offline agents past their grace period, earliest due first (as the script's
            // ZRANGEBYSCORE: due time, then id).
            let mut due: Vec<(u64, String)> = t
                .grace
                .iter()
                .filter(|(_, d)| **d <= now_ms)
                .map(|(a, d)| (*d, a.clone()))
                .collect();
            due.sort();
            for (_, agent) in due {
                t.grace.remove(&agent);
                let offline = t
                    .agents
                    .get(&agent)
                    .is_some_and(|a| a.presence == Presence::Offline);
                if !offline || settings.keep_offline {
                    continue;
                }
                let convs: Vec<String> = t
                    .open
                    .get(&agent)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for conv in convs {
                    t.requeue(&conv, &agent, settings, now_ms);
                    report.requeued += 1;
                }
            }
            // Offers not answered in time.
            let due: Vec<(u64, String)> = t
                .offers
                .iter()
                .take_while(|(d, _)| *d <= now_ms)
                .cloned()
                .collect();
            for (d, conv) in due {
                let offered = t.convs.get(&conv).and_then(|c| {
                    (c.state == Some(ConvState::Offered) && c.agent.is_some())
                        .then_some((c.offer_max_missed, d.saturating_sub(c.opened_ms)))
                });
                let Some((max_missed, timeout)) = offered else {
                    t.offers.remove(&(d, conv));
                    continue;
                };
                let (agent, queue, priority) = t.decline(&conv, now_ms);
                let a = t.agents.entry(agent.clone()).or_default();
                a.missed_offers += 1;
                let n = a.missed_offers;
                let away = max_missed > 0 && n >= max_missed && a.presence == Presence::Online;
                if away {
                    a.presence = Presence::Away;
                    a.since_ms = now_ms;
                    t.agents_changed = true;
                }
                let c = &t.convs[&conv];
                let mut o = Outcome {
                    a: Assignment {
                        action: "expired".into(),
                        previous_agent: Some(agent),
                        team: c.team.clone(),
                        queue: Some(queue),
                        rule: c.rule.clone(),
                        strategy: c.strategy.clone(),
                        queued: true,
                        priority: Some(priority),
                        ..Default::default()
                    },
                    why: Why::Expired {
                        ms: timeout,
                        n: n as u64,
                        away,
                    },
                };
                t.record(&conv, "", &mut o, now_ms, true);
                report.expired += 1;
            }
            // Overflow to fallback queues.
            let due: Vec<(u64, String)> = t
                .timers
                .iter()
                .take_while(|(d, _)| *d <= now_ms)
                .cloned()
                .collect();
            for (d, conv) in due {
                t.timers.remove(&(d, conv.clone()));
                let Some(c) = t.convs.get_mut(&conv) else {
                    continue;
                };
                c.overflow_due = None;
                let (Some(ConvState::Queued), Some(fb)) = (c.state, c.fallback_queue.take()) else {
                    continue;
                };
                let from = c.queue.clone().unwrap_or_default();
                let (priority, queued_ms) = (c.priority, c.queued_ms);
                t.unqueue(&conv);
                t.enqueue(&conv, &fb, priority, queued_ms);
                // It now waits for the fallback target (its key is its queue's name).
                let c = t.convs.get_mut(&conv).expect("conversation exists");
                c.target = Some(fb.clone());
                c.team = c.fallback_team.take();
                if let Some(s) = c.fallback_strategy.take() {
                    c.strategy = s;
                }
                let c = &t.convs[&conv];
                let mut o = Outcome {
                    a: Assignment {
                        action: "overflowed".into(),
                        team: c.team.clone(),
                        queue: Some(fb.clone()),
                        rule: c.rule.clone(),
                        strategy: c.strategy.clone(),
                        queued: true,
                        priority: Some(priority),
                        ..Default::default()
                    },
                    why: Why::Overflowed {
                        from,
                        ms: now_ms.saturating_sub(queued_ms),
                    },
                };
                t.record(&conv, "", &mut o, now_ms, true);
                report.overflowed += 1;
            }
            // Conversations the contact left idle.
            if settings.auto_close_after_ms > 0 {
                let limit = now_ms.saturating_sub(settings.auto_close_after_ms);
                let idle: Vec<String> = t
                    .idle
                    .iter()
                    .take_while(|(at, _)| *at <= limit)
                    .map(|(_, c)| c.clone())
                    .collect();
                for conv in idle {
                    let reason = format!(
                        "no message from the contact for {}",
                        secs_text(settings.auto_close_after_ms)
                    );
                    if close_in(t, settings, now_ms, &conv, &reason).is_some() {
                        report.closed += 1;
                    } else {
                        t.untouch(&conv);
                    }
                }
            }
            // Forget closed conversations past their retention.
            t.convs
                .retain(|_, c| c.expires_ms.is_none_or(|e| e > now_ms));
            report
        })
    }

    pub fn queues(&self, tenant: &str) -> Vec<QueueDepth> {
        self.with(tenant, |t| {
            let mut v: Vec<QueueDepth> = t
                .queues
                .iter()
                .map(|(q, set)| QueueDepth {
                    queue: q.clone(),
                    depth: set.len() as u64,
                    oldest_ms: set.iter().map(|(_, at, _)| *at).min().unwrap_or(0),
                })
                .collect();
            v.sort_by(|a, b| a.queue.cmp(&b.queue));
            v
        })
    }

    pub fn conversation(&self, tenant: &str, conv: &str) -> Option<(ConvLive, Vec<String>)> {
        let g = self.lock();
        let c = g.get(tenant)?.convs.get(conv)?;
        Some((c.live()?, c.history.iter().cloned().collect()))
    }

    pub fn erase(&self, tenant: &str, now_ms: u64, convs: &[String]) -> RoutingErased {
        self.with(tenant, |t| {
            let mut out = RoutingErased::default();
            for conv in convs {
                let Some(state) = t.convs.get(conv).map(|c| c.state) else {
                    continue;
                };
                match state {
                    Some(ConvState::Open) | Some(ConvState::Offered)
                        if t.release(conv).is_some() =>
                    {
                        out.released += 1;
                    }
                    Some(ConvState::Queued) => {
                        t.unqueue(conv);
                        out.unqueued += 1;
                    }
                    _ => {}
                }
                t.untouch(conv);
                let expired = t.convs[conv].expires_ms.is_some_and(|e| e <= now_ms);
                t.convs.remove(conv);
                if !expired {
                    out.conversations += 1;
                }
            }
            let before = t.outbox.len();
            t.outbox.retain(|e| !convs.contains(&e.conv));
            out.outbox = (before - t.outbox.len()) as u64;
            out
        })
    }

    pub fn open_of(&self, tenant: &str, agent: &str) -> Vec<Listed> {
        let g = self.lock();
        let Some(t) = g.get(tenant) else {
            return Vec::new();
        };
        t.open
            .get(agent)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let c = t.convs.get(id)?;
                (c.agent.as_deref() == Some(agent)).then_some(())?;
                Some(Listed {
                    conv: id.clone(),
                    live: c.live()?,
                    meta: c.meta.clone(),
                    position: None,
                    score: None,
                })
            })
            .collect()
    }

    pub fn queued_in(
        &self,
        tenant: &str,
        queue: &str,
        after: Option<(u64, String)>,
        limit: usize,
    ) -> Vec<Listed> {
        let g = self.lock();
        let Some(set) = g
            .get(tenant)
            .and_then(|t| t.queues.get(queue).map(|q| (t, q)))
        else {
            return Vec::new();
        };
        let (t, set) = set;
        set.iter()
            .enumerate()
            .map(|(i, (inv, at, conv))| (i, queue_score(100 - inv, *at) as u64, conv))
            .filter(|(_, score, conv)| {
                after
                    .as_ref()
                    .is_none_or(|(s, c)| (*score, conv.as_str()) > (*s, c.as_str()))
            })
            .take(limit.max(1))
            .filter_map(|(i, score, conv)| {
                let c = t.convs.get(conv)?;
                Some(Listed {
                    conv: conv.clone(),
                    live: c.live()?,
                    meta: c.meta.clone(),
                    position: Some(i as u64 + 1),
                    score: Some(score),
                })
            })
            .collect()
    }

    pub fn outbox(&self, tenant: &str, max: usize) -> Vec<OutboxEntry> {
        let g = self.lock();
        g.get(tenant)
            .map(|t| t.outbox.iter().take(max).cloned().collect())
            .unwrap_or_default()
    }

    pub fn outbox_ack(&self, tenant: &str, ids: &[String]) {
        self.with(tenant, |t| {
            t.outbox.retain(|e| !ids.contains(&e.id));
        })
    }
}

fn close_in(
    t: &mut Tenant,
    settings: &Settings,
    now_ms: u64,
    conv: &str,
    reason: &str,
) -> Option<Decided> {
    let c = t.convs.get(conv)?;
    let state = c.state?;
    let mut freed = false;
    let previous = match state {
        ConvState::Open | ConvState::Offered => {
            freed = true;
            t.release(conv)
        }
        ConvState::Queued => {
            t.unqueue(conv);
            None
        }
        ConvState::Closed => return None,
    };
    t.close_conv(conv, settings, now_ms);
    let c = &t.convs[conv];
    let mut o = Outcome {
        a: Assignment {
            action: "closed".into(),
            previous_agent: previous,
            team: c.team.clone(),
            rule: c.rule.clone(),
            strategy: c.strategy.clone(),
            ..Default::default()
        },
        why: Why::Closed {
            text: reason.to_string(),
        },
    };
    t.record(conv, "", &mut o, now_ms, true);
    Some(decided(&o, freed))
}
