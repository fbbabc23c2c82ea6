//! Offline replay of traffic through the routing rules (`switchboard routing simulate`).
//!
//! The real engine on the memory store, driven by a virtual clock: every message goes
//! through the same rule evaluation, strategies and atomic store operations as in
//! production, and the periodic work (overflow, offline grace, idle close, queue drains)
//! runs on virtual ticks. So ops can try a rule change on last week's traffic, or on a
//! synthetic burst, and see who would have got what and how long people would have waited.
//!
//! Traffic is JSON lines (`#` starts a comment line). Each line has a time — `at` (RFC 3339)
//! or `t_ms` (milliseconds after `--start`) — and is one of:
//! - a synthetic message: `{"t_ms": 0, "tenant": "demo", "contact": "34600000001",
//!   "text": "hola", "channel": "whatsapp", "business": "106540352242922",
//!   "provider": "meta", "source": "meta_demo", "language": "es",
//!   "referral": {"source_id": "120208"}}` (only `tenant` and `contact` are required);
//! - a recorded unified event (a line with `"schema": "switchboard.event.v1"`, or
//!   `{"event": {...}}` as `GET /v1/events` returns them); its time defaults to its
//!   `received_at`; an `assignment` it carries is ignored and decided again;
//! - an agent's presence: `{"t_ms": 60000, "action": "presence", "tenant": "demo",
//!   "agent": "alice", "presence": "offline"}`;
//! - a close: `{"t_ms": 90000, "action": "close", "tenant": "demo", "contact": "...",
//!   "channel": "whatsapp", "business": "..."}` (or `"conversation": "conv_..."`);
//! - a transfer: `{"t_ms": 95000, "action": "transfer", "tenant": "demo", "contact": "...",
//!   "agent": "bob"}` (or `"team": "sales"`), as `POST .../transfer` does it;
//! - an answer to an offer (rules with `offer_timeout_secs`): `{"t_ms": 96000, "action":
//!   "accept", "tenant": "demo", "contact": "..."}` (or `"reject"`; `"agent"` to answer as
//!   that agent only), as `POST .../accept` and `.../reject` do it.
//!
//! Offers nobody answers expire on the virtual clock like in production; with
//! [`SimOptions::accept_offers_ms`] every offer is accepted that long after it is made.
//!
//! [`run_on`] replays the same traffic on engines the caller built (the live Redis store,
//! several replicas taking turns): decisions depend only on the store's state and the
//! clock, so they are the same as the simulation's (a property test holds them to it).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::engine::Engine;
use super::store::memory::MemoryStore;
use super::store::{Answer, RoutingStore};
use super::strategy::Strategies;
use crate::accept::memory::MemoryBackend;
use crate::accept::{Backend, Limits, StreamEntry, StreamName};
use crate::config::routing::Presence;
use crate::config::Config;
use crate::event::{
    conversation_id, dedup_key, Channel, Direction, Event, EventKind, Message, Party, Provider,
};

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// What `t_ms` counts from (ms since the epoch).
    pub start_ms: u64,
    /// Close every conversation this long after it is assigned (agents' handling time).
    pub handle_ms: Option<u64>,
    /// Virtual interval of the periodic work.
    pub tick_ms: u64,
    /// Agents accept every offer this long after it is made (None: only the traffic's
    /// `accept`/`reject` lines answer offers; the rest expire).
    pub accept_offers_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("traffic line {0}: {1}")]
    Line(usize, String),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Default, Serialize)]
pub struct AgentReport {
    pub assigned: u64,
    pub capacity: u32,
    pub peak_open: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct TenantReport {
    /// Conversations routed by each rule (`(default)`: no rule matched).
    pub rule_hits: BTreeMap<String, u64>,
    pub agents: BTreeMap<String, AgentReport>,
    /// Assignments per unit of capacity, most over least, among agents with capacity.
    /// None when some agent got nothing.
    pub fairness_max_min: Option<f64>,
    pub conversations: u64,
    pub assigned_conversations: u64,
    pub waited: u64,
    pub wait_p50_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    pub still_waiting: u64,
    pub unrouted: u64,
    /// Offers made, and how they ended.
    pub offers: u64,
    pub offers_accepted: u64,
    pub offers_rejected: u64,
    pub offers_expired: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub messages: u64,
    pub from: String,
    pub to: String,
    pub tenants: BTreeMap<String, TenantReport>,
}

enum Action {
    Message(String),
    Presence {
        agent: String,
        presence: Presence,
    },
    Close {
        conv: String,
    },
    Transfer {
        conv: String,
        agent: Option<String>,
        team: Option<String>,
    },
    Answer {
        conv: String,
        agent: Option<String>,
        answer: Answer,
    },
}

/// Every decision of a replay, in order: the conversation and its `assignment` object
/// (message decisions, then the assignment events each step published).
pub type Trace = Vec<(String, Value)>;

struct Item {
    at: u64,
    tenant: String,
    action: Action,
}

fn time_of(v: &Value, opts: &SimOptions, fallback: Option<&str>) -> Result<u64, String> {
    if let Some(t) = v.get("t_ms") {
        return t
            .as_u64()
            .map(|t| opts.start_ms + t)
            .ok_or_else(|| "t_ms must be a non-negative integer".into());
    }
    let at = v
        .get("at")
        .and_then(Value::as_str)
        .or(fallback)
        .ok_or("give `at` (RFC 3339) or `t_ms`")?;
    let t = OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("at = {at:?}: {e}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as u64)
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn parse_line(n: usize, line: &str, opts: &SimOptions) -> Result<Item, SimError> {
    let err = |m: String| SimError::Line(n, m);
    let v: Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
    let event = if v.get("schema").is_some() {
        Some(v.clone())
    } else {
        v.get("event").filter(|e| e.is_object()).cloned()
    };
    if let Some(mut ev) = event {
        let at = time_of(&v, opts, str_field(&ev, "received_at")).map_err(err)?;
        if let Some(o) = ev.as_object_mut() {
            o.remove("assignment");
        }
        let tenant = str_field(&ev, "tenant")
            .ok_or_else(|| err("event without tenant".into()))?
            .to_string();
        return Ok(Item {
            at,
            tenant,
            action: Action::Message(ev.to_string()),
        });
    }
    let at = time_of(&v, opts, None).map_err(err)?;
    let tenant = str_field(&v, "tenant")
        .ok_or_else(|| err("`tenant` is required".into()))?
        .to_string();
    let channel_name = str_field(&v, "channel").unwrap_or("whatsapp");
    let channel: Channel = crate::config::routing::parse_channel(channel_name)
        .ok_or_else(|| err(format!("unknown channel {channel_name:?}")))?;
    let business = str_field(&v, "business").unwrap_or("simulated").to_string();
    match str_field(&v, "action") {
        Some("presence") => {
            let agent = str_field(&v, "agent")
                .ok_or_else(|| err("presence needs `agent`".into()))?
                .to_string();
            let presence = str_field(&v, "presence")
                .and_then(Presence::parse)
                .ok_or_else(|| err("presence must be online, away or offline".into()))?;
            Ok(Item {
                at,
                tenant,
                action: Action::Presence { agent, presence },
            })
        }
        Some(what @ ("close" | "transfer" | "accept" | "reject")) => {
            let conv = match (str_field(&v, "conversation"), str_field(&v, "contact")) {
                (Some(c), _) => c.to_string(),
                (None, Some(contact)) => conversation_id(&tenant, channel, &business, contact),
                _ => return Err(err(format!("{what} needs `conversation` or `contact`"))),
            };
            let action = if what == "close" {
                Action::Close { conv }
            } else if what == "accept" || what == "reject" {
                Action::Answer {
                    conv,
                    agent: str_field(&v, "agent").map(str::to_string),
                    answer: if what == "accept" {
                        Answer::Accept
                    } else {
                        Answer::Reject
                    },
                }
            } else {
                let agent = str_field(&v, "agent").map(str::to_string);
                let team = str_field(&v, "team").map(str::to_string);
                if agent.is_some() == team.is_some() {
                    return Err(err("transfer needs one of `agent` and `team`".into()));
                }
                Action::Transfer { conv, agent, team }
            };
            Ok(Item { at, tenant, action })
        }
        Some(other) => Err(err(format!(
            "unknown action {other:?} (presence, close, transfer, accept, reject, or none for a message)"
        ))),
        None => {
            let contact =
                str_field(&v, "contact").ok_or_else(|| err("a message needs `contact`".into()))?;
            let provider_name = str_field(&v, "provider").unwrap_or("standard");
            let provider: Provider = serde_json::from_value(Value::String(provider_name.into()))
                .map_err(|_| err(format!("unknown provider {provider_name:?}")))?;
            let t = OffsetDateTime::from_unix_timestamp_nanos(at as i128 * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let mut e = Event::new(
                EventKind::Message,
                provider,
                channel,
                Direction::Inbound,
                &tenant,
                str_field(&v, "source").unwrap_or("simulated"),
                dedup_key(provider, "simulated", &format!("line-{n}"), None),
                Some(t),
                t,
            );
            e.contact = Some(Party {
                id: contact.to_string(),
                language: str_field(&v, "language").map(str::to_string),
                ..Party::default()
            });
            e.business = Some(Party {
                id: business,
                ..Party::default()
            });
            e.message = Some(Message {
                kind: str_field(&v, "type").unwrap_or("text").to_string(),
                text: str_field(&v, "text").map(str::to_string),
                referral: v.get("referral").cloned(),
                ..Message::default()
            });
            e.derive_conversation_id();
            Ok(Item {
                at,
                tenant,
                action: Action::Message(e.to_json()),
            })
        }
    }
}

#[derive(Default)]
struct Tally {
    rule_hits: BTreeMap<String, u64>,
    assigned: HashMap<String, u64>,
    open: HashMap<String, HashSet<String>>,
    peak: HashMap<String, usize>,
    conversations: HashSet<String>,
    assigned_convs: HashSet<String>,
    waits: Vec<u64>,
    unrouted: u64,
    offers: u64,
    accepted: u64,
    rejected: u64,
    expired: u64,
    /// The wait before each conversation's pending offer.
    offer_wait: HashMap<String, u64>,
}

fn parse_traffic(traffic: &str, opts: &SimOptions) -> Result<Vec<Item>, SimError> {
    let mut items = Vec::new();
    for (i, line) in traffic.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        items.push(parse_line(i + 1, line, opts)?);
    }
    items.sort_by_key(|it| it.at);
    Ok(items)
}

/// Replays `traffic` (JSON lines) through the tenants' rules of `config`.
pub async fn run(
    config: &Config,
    strategies: Strategies,
    traffic: &str,
    opts: &SimOptions,
) -> Result<Report, SimError> {
    Ok(run_traced(config, strategies, traffic, opts).await?.0)
}

/// [`run`], with every decision it made.
pub async fn run_traced(
    config: &Config,
    strategies: Strategies,
    traffic: &str,
    opts: &SimOptions,
) -> Result<(Report, Trace), SimError> {
    let items = parse_traffic(traffic, opts)?;
    let first = items.first().map_or(opts.start_ms, |it| it.at);
    let clock = Arc::new(AtomicU64::new(first));
    let c2 = clock.clone();
    let mut limits = Limits::from_config(config);
    limits.events_max_len = u64::MAX / 2;
    limits.inbound_max_backlog = u64::MAX / 2;
    let backend = Backend::Memory(MemoryBackend::new(limits));
    let file = config
        .tenants
        .iter()
        .filter_map(|(id, t)| t.routing.clone().map(|r| (id.clone(), r)))
        .collect();
    let engine = Engine::start_with_clock(
        RoutingStore::Memory(MemoryStore::new()),
        backend.clone(),
        strategies,
        config.tenants.keys().cloned().collect(),
        file,
        Arc::new(move || c2.load(Ordering::SeqCst)),
    )
    .await
    .map_err(|e| SimError::Setup(e.to_string()))?;
    replay(&[Arc::new(engine)], &backend, &clock, items, opts).await
}

/// Replays `traffic` on `engines` (built by the caller on any store, all reading `clock`,
/// publishing to `backend`), which take turns: step `i` (a line, a close, a tick) runs on
/// engine `i % n`. The clock is set to each step's time.
pub async fn run_on(
    engines: &[Arc<Engine>],
    backend: &Backend,
    clock: &Arc<AtomicU64>,
    traffic: &str,
    opts: &SimOptions,
) -> Result<(Report, Trace), SimError> {
    if engines.is_empty() {
        return Err(SimError::Setup("no engine to replay on".into()));
    }
    let items = parse_traffic(traffic, opts)?;
    replay(engines, backend, clock, items, opts).await
}

async fn replay(
    engines: &[Arc<Engine>],
    backend: &Backend,
    clock: &Arc<AtomicU64>,
    items: Vec<Item>,
    opts: &SimOptions,
) -> Result<(Report, Trace), SimError> {
    let first = items.first().map_or(opts.start_ms, |it| it.at);
    let mut turn = 0usize;
    let mut trace: Trace = Vec::new();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut closes: BinaryHeap<Reverse<(u64, String, String)>> = BinaryHeap::new();
    // Offers to accept (accept_offers_ms): (when, tenant, conversation, agent).
    let mut answers: BinaryHeap<Reverse<(u64, String, String, String)>> = BinaryHeap::new();
    let mut cursor: Option<String> = None;
    let mut next_tick = first + opts.tick_ms;
    let mut messages = 0;
    let backend_err = |e: crate::accept::BackendError| SimError::Setup(e.to_string());

    let collect = |engine: &Engine,
                   tallies: &mut BTreeMap<String, Tally>,
                   closes: &mut BinaryHeap<Reverse<(u64, String, String)>>,
                   answers: &mut BinaryHeap<Reverse<(u64, String, String, String)>>,
                   trace: &mut Trace,
                   tenant: &str,
                   conv: &str,
                   a: &Value,
                   from_message: bool| {
        trace.push((conv.to_string(), a.clone()));
        let t = tallies.entry(tenant.to_string()).or_default();
        let action = a["action"].as_str().unwrap_or("");
        // A message while an offer is pending repeats `offered` ("offered to ..., waiting").
        let new_offer = action == "offered"
            && !a["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("offered to ");
        if from_message {
            t.conversations.insert(conv.to_string());
            if matches!(action, "assigned" | "queued" | "unrouted") || new_offer {
                let rule = a["rule"].as_str().unwrap_or("(default)").to_string();
                *t.rule_hits.entry(rule).or_default() += 1;
            }
        }
        if let Some(prev) = a["previous_agent"].as_str() {
            if let Some(set) = t.open.get_mut(prev) {
                set.remove(conv);
            }
        }
        match action {
            "offered" if new_offer => {
                t.offers += 1;
                t.offer_wait
                    .insert(conv.to_string(), a["wait_ms"].as_u64().unwrap_or(0));
                if let (Some(ms), Some(agent)) = (opts.accept_offers_ms, a["agent"].as_str()) {
                    answers.push(Reverse((
                        engine.now() + ms,
                        tenant.to_string(),
                        conv.to_string(),
                        agent.to_string(),
                    )));
                }
            }
            "rejected" => t.rejected += 1,
            "expired" => t.expired += 1,
            "assigned" | "transferred" | "accepted" => {
                if action == "accepted" {
                    t.accepted += 1;
                }
                if let Some(agent) = a["agent"].as_str() {
                    *t.assigned.entry(agent.to_string()).or_default() += 1;
                    let set = t.open.entry(agent.to_string()).or_default();
                    set.insert(conv.to_string());
                    let peak = t.peak.entry(agent.to_string()).or_default();
                    *peak = (*peak).max(set.len());
                    let wait = match action {
                        "accepted" => t.offer_wait.remove(conv),
                        _ => a["wait_ms"].as_u64(),
                    };
                    if t.assigned_convs.insert(conv.to_string()) || a["waited"] == true {
                        t.waits.push(wait.unwrap_or(0));
                    }
                    if let Some(h) = opts.handle_ms {
                        closes.push(Reverse((
                            engine.now() + h,
                            tenant.to_string(),
                            conv.to_string(),
                        )));
                    }
                }
            }
            "unrouted" => t.unrouted += 1,
            _ => {}
        }
    };

    // Assignment events the engine published (drains, closes, requeues...).
    async fn relayed(
        backend: &Backend,
        cursor: &mut Option<String>,
    ) -> Result<Vec<Value>, crate::accept::BackendError> {
        let mut out = Vec::new();
        loop {
            let after = cursor.clone().unwrap_or_else(|| "0-0".into());
            let batch = backend.read(StreamName::Events, 1000, Some(&after)).await?;
            if batch.is_empty() {
                return Ok(out);
            }
            *cursor = batch.last().map(|e| e.id.clone());
            out.extend(
                batch
                    .iter()
                    .filter_map(|e| serde_json::from_str::<Value>(&e.payload).ok())
                    .filter(|e| e["kind"] == "assignment"),
            );
        }
    }

    let horizon =
        items.last().map_or(first, |it| it.at) + opts.handle_ms.unwrap_or(0) * 4 + 3_600_000;
    let mut queue = items.into_iter().peekable();
    loop {
        let next_item = queue.peek().map(|it| it.at);
        let next_close = closes.peek().map(|Reverse((at, _, _))| *at);
        let next_answer = answers.peek().map(|Reverse((at, _, _, _))| *at);
        let engine: &Engine = &engines[turn % engines.len()];
        turn += 1;
        let candidates = [next_item, next_close, next_answer, Some(next_tick)];
        let now = candidates
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(next_tick);
        if next_item.is_none() && next_close.is_none() && next_answer.is_none() {
            // After the traffic: run ticks until nobody waits, bounded.
            let waiting: u64 = {
                let mut total = 0;
                for t in engine.tenants() {
                    if let Ok(q) = engine.queues(&t).await {
                        total += q.iter().map(|q| q.depth).sum::<u64>();
                    }
                }
                total
            };
            if waiting == 0 || now > horizon {
                break;
            }
        }
        clock.store(now, Ordering::SeqCst);
        if next_item == Some(now) {
            let it = queue.next().expect("peeked");
            match it.action {
                Action::Message(payload) => {
                    messages += 1;
                    let mut entries = vec![StreamEntry {
                        id: format!("{now}-0"),
                        key: String::new(),
                        payload,
                    }];
                    let outcome = engine
                        .route_batch(&mut entries, now)
                        .await
                        .map_err(backend_err)?;
                    let ev: Value = serde_json::from_str(&entries[0].payload).unwrap_or_default();
                    if let (Some(conv), true) =
                        (ev["conversation_id"].as_str(), ev["assignment"].is_object())
                    {
                        collect(
                            engine,
                            &mut tallies,
                            &mut closes,
                            &mut answers,
                            &mut trace,
                            &it.tenant,
                            conv,
                            &ev["assignment"],
                            true,
                        );
                    }
                    for t in outcome.drain {
                        engine.drain(&t, now).await.map_err(backend_err)?;
                    }
                }
                Action::Presence { agent, presence } => {
                    if let Err(e) = engine.set_presence(&it.tenant, &agent, presence).await {
                        tracing::warn!(agent, error = %e, "simulated presence change refused");
                    }
                }
                Action::Close { conv } => {
                    let _ = engine.close(&it.tenant, &conv).await;
                }
                Action::Answer {
                    conv,
                    agent,
                    answer,
                } => {
                    if let Err(e) = engine
                        .answer(&it.tenant, &conv, agent.as_deref(), answer)
                        .await
                    {
                        tracing::debug!(conv, error = %e, "simulated answer refused");
                    }
                }
                Action::Transfer { conv, agent, team } => {
                    if let Err(e) = engine
                        .transfer(&it.tenant, &conv, agent.as_deref(), team.as_deref())
                        .await
                    {
                        tracing::debug!(conv, error = %e, "simulated transfer refused");
                    }
                }
            }
        } else if next_close == Some(now) {
            let Reverse((_, tenant, conv)) = closes.pop().expect("peeked");
            let _ = engine.close(&tenant, &conv).await;
        } else if next_answer == Some(now) {
            let Reverse((_, tenant, conv, agent)) = answers.pop().expect("peeked");
            // Refused when the offer was withdrawn or expired meanwhile.
            let _ = engine
                .answer(&tenant, &conv, Some(&agent), Answer::Accept)
                .await;
        } else {
            engine.maintain(now).await.map_err(backend_err)?;
            next_tick = now + opts.tick_ms;
        }
        for e in relayed(backend, &mut cursor).await.map_err(backend_err)? {
            let (Some(tenant), Some(conv)) = (e["tenant"].as_str(), e["conversation_id"].as_str())
            else {
                continue;
            };
            collect(
                engine,
                &mut tallies,
                &mut closes,
                &mut answers,
                &mut trace,
                tenant,
                conv,
                &e["assignment"],
                false,
            );
        }
    }

    let mut report = Report {
        messages,
        from: crate::event::ms_rfc3339(first),
        to: crate::event::ms_rfc3339(clock.load(Ordering::SeqCst)),
        tenants: BTreeMap::new(),
    };
    for (tenant, mut t) in tallies {
        let mut tr = TenantReport {
            rule_hits: t.rule_hits,
            conversations: t.conversations.len() as u64,
            assigned_conversations: t.assigned_convs.len() as u64,
            unrouted: t.unrouted,
            offers: t.offers,
            offers_accepted: t.accepted,
            offers_rejected: t.rejected,
            offers_expired: t.expired,
            ..Default::default()
        };
        if let Some(rs) = engines[0].ruleset(&tenant) {
            for a in rs.agents.iter().filter(|a| a.assignable()) {
                tr.agents.insert(
                    a.id.clone(),
                    AgentReport {
                        assigned: t.assigned.get(&a.id).copied().unwrap_or(0),
                        capacity: a.capacity,
                        peak_open: t.peak.get(&a.id).copied().unwrap_or(0),
                    },
                );
            }
        }
        let per_cap: Vec<f64> = tr
            .agents
            .values()
            .filter(|a| a.capacity > 0)
            .map(|a| a.assigned as f64 / a.capacity as f64)
            .collect();
        let max = per_cap.iter().cloned().fold(0.0, f64::max);
        let min = per_cap.iter().cloned().fold(f64::INFINITY, f64::min);
        tr.fairness_max_min =
            (min > 0.0 && min.is_finite()).then(|| (max / min * 100.0).round() / 100.0);
        t.waits.sort_unstable();
        let pct = |p: f64| -> u64 {
            if t.waits.is_empty() {
                return 0;
            }
            let i = ((t.waits.len() as f64 * p).ceil() as usize).clamp(1, t.waits.len()) - 1;
            t.waits[i]
        };
        tr.wait_p50_ms = pct(0.50);
        tr.wait_p99_ms = pct(0.99);
        tr.wait_max_ms = t.waits.last().copied().unwrap_or(0);
        tr.waited = t.waits.iter().filter(|w| **w > 0).count() as u64;
        tr.still_waiting = engines[0]
            .queues(&tenant)
            .await
            .map(|q| q.iter().map(|q| q.depth).sum())
            .unwrap_or(0);
        report.tenants.insert(tenant, tr);
    }
    Ok((report, trace))
}

impl Report {
    /// The report for people.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "simulated {} messages from {} to {} (virtual time)",
            self.messages, self.from, self.to
        );
        for (tenant, t) in &self.tenants {
            let _ = writeln!(
                s,
                "\ntenant {tenant}: {} conversations, {} assigned, {} still waiting, {} unrouted",
                t.conversations, t.assigned_conversations, t.still_waiting, t.unrouted
            );
            let _ = writeln!(s, "  rule hits:");
            for (rule, n) in &t.rule_hits {
                let _ = writeln!(s, "    {rule:<24} {n:>8}");
            }
            let _ = writeln!(s, "  assignments per agent (peak open / capacity):");
            for (agent, a) in &t.agents {
                let _ = writeln!(
                    s,
                    "    {agent:<24} {:>8}   {}/{}",
                    a.assigned, a.peak_open, a.capacity
                );
            }
            let _ = writeln!(
                s,
                "  queue wait: p50 {:.1} s, p99 {:.1} s, max {:.1} s ({} of {} waited)",
                t.wait_p50_ms as f64 / 1000.0,
                t.wait_p99_ms as f64 / 1000.0,
                t.wait_max_ms as f64 / 1000.0,
                t.waited,
                t.assigned_conversations
            );
            if t.offers > 0 {
                let _ = writeln!(
                    s,
                    "  offers: {} made, {} accepted, {} rejected, {} expired",
                    t.offers, t.offers_accepted, t.offers_rejected, t.offers_expired
                );
            }
            match t.fairness_max_min {
                Some(f) => {
                    let _ = writeln!(s, "  fairness (max/min assignments per capacity): {f:.2}");
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  fairness (max/min assignments per capacity): n/a (an agent got none)"
                    );
                }
            }
        }
        s
    }
}
