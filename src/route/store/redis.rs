//! The Redis routing store: every operation that changes state is one call of
//! `route.lua`, so each decision (capacity check, reservation, queueing, history, outbox) is
//! atomic, and every key of a tenant shares the hash tag `{<prefix>:rt:<tenant>}` so the
//! script touches one Redis Cluster slot. See the script's header for the data structures.

use std::collections::HashMap;
use std::time::Duration;

use crate::accept::conn::RedisConn;
use ::redis::{RedisError, Script, Value};

use super::outcome;
use super::{
    AgentLive, AgentLoad, AgentSpec, AgentsChange, Answer, AnswerRefused, ConvLive, ConvState,
    Decided, DequeueItem, Listed, OutboxEntry, QueueDepth, QueuedConv, RouteItem, Routed,
    RoutingErased, RulesetRecord, Settings, Snapshot, SnapshotRequest, SweepReport,
    TransferRefused, VersionConflict,
};
use crate::accept::BackendError;
use crate::config::routing::Presence;

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    script: Script,
    timeout: Duration,
}

fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

fn protocol(what: &str) -> BackendError {
    BackendError::Protocol(format!("routing script: unexpected {what}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

fn flat_map(v: &Value) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if let Some(items) = array(v) {
        for pair in items.chunks(2) {
            if let [k, v] = pair {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    m.insert(k, v);
                }
            }
        }
    }
    m
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

fn none_if_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn agent_live(m: HashMap<String, String>) -> AgentLive {
    let num = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut a = AgentLive {
        presence: m
            .get("p")
            .and_then(|p| Presence::parse(p))
            .unwrap_or_default(),
        since_ms: num("ps"),
        capacity: num("cap") as u32,
        load: num("l") as u32,
        last_ms: num("last"),
        missed_offers: num("mo") as u32,
        teams: m
            .get("tms")
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    for (k, v) in &m {
        let n = v.parse::<u32>().unwrap_or(0);
        if let Some(ch) = k.strip_prefix("cc:") {
            a.channel_capacity.insert(ch.to_string(), n);
        } else if let Some(ch) = k.strip_prefix("l:") {
            a.channel_load.insert(ch.to_string(), n);
        }
    }
    a
}

/// A conversation's packed state (`route.lua`, STATE): '|'-separated fields in the order
/// st, ag, la, cl, q, tm, ru, sg, pr, qt, seq, ch, fbq, od, tch, op, dn, hn, tk, fbt, fbs, lm,
/// ox, om, dc, ov.
/// None without a state.
fn unpack_state(s: &str) -> Option<ConvLive> {
    let f: Vec<&str> = s.split('|').collect();
    let get = |i: usize| f.get(i).filter(|v| !v.is_empty()).map(|v| v.to_string());
    let num = |i: usize| get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(ConvLive {
        state: ConvState::parse(f.first()?)?,
        agent: get(1),
        last_agent: get(2),
        closed_ms: num(3),
        queue: get(4),
        team: get(5),
        rule: get(6),
        strategy: get(7).unwrap_or_default(),
        priority: num(8) as u8,
        queued_ms: num(9),
        seq: num(10),
        channel: get(11).unwrap_or_default(),
        opened_ms: num(15),
        target: get(18),
        last_message_ms: num(21),
        offer_expires_ms: num(22),
        declined: split_list(get(24)),
    })
}

/// A comma-separated list of ids.
fn split_list(s: Option<String>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// The agents version before and after a call and the loads it changed (`flush` in
/// route.lua: per agent id, load, last ('' = unchanged), n, n pairs channel/load).
fn agents_change(
    before: &Value,
    after: &Value,
    loads: &Value,
) -> Result<AgentsChange, BackendError> {
    let num = |v: &Value| int(v).map(|n| n.max(0) as u64);
    let mut change = AgentsChange {
        before: num(before).ok_or_else(|| protocol("agents version"))?,
        after: num(after).ok_or_else(|| protocol("agents version"))?,
        loads: Vec::new(),
    };
    let mut rest = array(loads).unwrap_or(&[]);
    while let [id, load, last, n, tail @ ..] = rest {
        let n = num(n).unwrap_or(0) as usize;
        if tail.len() < 2 * n {
            return Err(protocol("agent loads"));
        }
        change.loads.push(AgentLoad {
            id: text(id).ok_or_else(|| protocol("agent id"))?,
            load: num(load).unwrap_or(0) as u32,
            last_ms: num(last),
            channel_load: tail[..2 * n]
                .chunks(2)
                .filter_map(|p| Some((text(&p[0])?, num(&p[1])? as u32)))
                .collect(),
        });
        rest = &tail[2 * n..];
    }
    if !rest.is_empty() {
        return Err(protocol("agent loads"));
    }
    Ok(change)
}

/// Parses one decision from the script's reply: the compact outcome and the freed flag.
fn decided(v: &[Value]) -> Option<Decided> {
    let o = outcome::decode(&text(v.first()?)?)?;
    Some(outcome::decided(&o, int(v.get(1)?)? == 1))
}

/// A history entry as the script stores it (`at_ms event_id compact`), as the JSON the API
/// shows.
fn history_entry(raw: &str) -> Option<String> {
    let mut parts = raw.splitn(3, ' ');
    let at: u64 = parts.next()?.parse().ok()?;
    let event_id = parts.next()?;
    let a = outcome::render(&outcome::decode(parts.next()?)?);
    Some(serde_json::json!({ "at_ms": at, "event_id": event_id, "assignment": a }).to_string())
}

impl RedisStore {
    pub fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> RedisStore {
        RedisStore {
            conn,
            prefix: prefix.to_string(),
            script: Script::new(include_str!("route.lua")),
            timeout,
        }
    }

    /// `{<prefix>:rt:<tenant>}:` — every key of the tenant starts with it.
    pub fn base(&self, tenant: &str) -> String {
        format!("{{{}:rt:{tenant}}}:", self.prefix)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(BackendError::Unavailable("redis call timed out".into())),
        }
    }

    async fn call(
        &self,
        tenant: &str,
        op: &str,
        s: Option<&Settings>,
        now_ms: u64,
        args: impl FnOnce(&mut ::redis::ScriptInvocation<'_>),
    ) -> Result<Value, BackendError> {
        let base = self.base(tenant);
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("{base}ruleset"))
            .arg(op)
            .arg(&base)
            .arg(now_ms);
        let s = s.copied().unwrap_or(Settings {
            sticky_window_ms: 0,
            offline_grace_ms: 0,
            keep_offline: false,
            auto_close_after_ms: 0,
            max_queued: 0,
            closed_ttl_ms: 1,
        });
        inv.arg(s.sticky_window_ms)
            .arg(s.offline_grace_ms)
            .arg(if s.keep_offline { 1 } else { 0 })
            .arg(s.auto_close_after_ms)
            .arg(s.max_queued)
            .arg(s.closed_ttl_ms.max(1));
        args(&mut inv);
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async(&mut conn)).await
    }

    pub async fn apply_ruleset(
        &self,
        tenant: &str,
        record: &RulesetRecord,
        agents: &[AgentSpec],
        expected_version: Option<u64>,
        now_ms: u64,
    ) -> Result<Result<(), VersionConflict>, BackendError> {
        let reply = self
            .call(tenant, "apply_ruleset", None, now_ms, |inv| {
                inv.arg(expected_version.map_or(-1, |v| v as i64))
                    .arg(record.version)
                    .arg(&record.json)
                    .arg(&record.origin)
                    .arg(&record.file_digest)
                    .arg(agents.len());
                for a in agents {
                    inv.arg(&a.id)
                        .arg(a.capacity)
                        .arg(a.initial_presence.as_str())
                        .arg(a.teams.join(","))
                        .arg(a.channel_capacity.len());
                    for (ch, n) in &a.channel_capacity {
                        inv.arg(ch).arg(*n);
                    }
                }
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("apply_ruleset reply"))?;
        match v {
            [first] if int(first) == Some(0) => Ok(Ok(())),
            [first, current] if int(first) == Some(-1) => {
                Ok(Err(VersionConflict(int(current).unwrap_or(0) as u64)))
            }
            _ => Err(protocol("apply_ruleset reply")),
        }
    }

    pub async fn ruleset(&self, tenant: &str) -> Result<Option<RulesetRecord>, BackendError> {
        let mut conn = self.conn.clone();
        let m: HashMap<String, String> = self
            .timed(
                ::redis::cmd("HGETALL")
                    .arg(format!("{}ruleset", self.base(tenant)))
                    .query_async(&mut conn),
            )
            .await?;
        let Some(version) = m.get("version").and_then(|v| v.parse().ok()) else {
            return Ok(None);
        };
        Ok(Some(RulesetRecord {
            version,
            json: m.get("json").cloned().unwrap_or_default(),
            origin: m.get("origin").cloned().unwrap_or_default(),
            file_digest: m.get("file_digest").cloned().unwrap_or_default(),
            updated_ms: m
                .get("updated_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }))
    }

    pub async fn ruleset_versions(&self, tenants: &[String]) -> Result<Vec<u64>, BackendError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for t in tenants {
            pipe.cmd("HGET")
                .arg(format!("{}ruleset", self.base(t)))
                .arg("version");
        }
        let mut conn = self.conn.clone();
        let v: Vec<Option<u64>> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(v.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    pub async fn snapshot(
        &self,
        tenant: &str,
        req: &SnapshotRequest,
    ) -> Result<Snapshot, BackendError> {
        let reply = self
            .call(tenant, "snapshot", None, 0, |inv| {
                inv.arg(req.queue_heads).arg(req.agents.len());
                for a in &req.agents {
                    inv.arg(a);
                }
                inv.arg(req.convs.len());
                for c in &req.convs {
                    inv.arg(c);
                }
            })
            .await?;
        let parts = array(&reply).ok_or_else(|| protocol("snapshot reply"))?;
        let [agents, convs, heads, av] = parts else {
            return Err(protocol("snapshot reply"));
        };
        let mut snap = Snapshot {
            av: int(av).unwrap_or(0).max(0) as u64,
            ..Snapshot::default()
        };
        for (id, v) in req.agents.iter().zip(array(agents).unwrap_or(&[])) {
            snap.agents.insert(id.clone(), agent_live(flat_map(v)));
        }
        for (id, v) in req.convs.iter().zip(array(convs).unwrap_or(&[])) {
            if let Some(live) = text(v).as_deref().and_then(unpack_state) {
                snap.convs.insert(id.clone(), live);
            }
        }
        let heads = array(heads).unwrap_or(&[]);
        let mut queued: Vec<(f64, QueuedConv)> = heads
            .chunks(8)
            .filter_map(|h| {
                let score: f64 = text(&h[2])?.parse().ok()?;
                let inv = (score / 10_000_000_000_000.0).floor();
                let queued_ms = (score - inv * 10_000_000_000_000.0) as u64;
                Some((
                    score,
                    QueuedConv {
                        queue: text(&h[0])?,
                        conv: text(&h[1])?,
                        priority: (100.0 - inv).clamp(0.0, 100.0) as u8,
                        queued_ms,
                        channel: text(&h[3]).unwrap_or_default(),
                        last_agent: none_if_empty(text(&h[4])),
                        target: none_if_empty(text(&h[5])),
                        rule: none_if_empty(text(&h[6])),
                        declined: split_list(text(&h[7])),
                    },
                ))
            })
            .collect();
        queued.sort_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.1.conv.cmp(&b.1.conv))
        });
        snap.queued = queued.into_iter().map(|(_, q)| q).collect();
        Ok(snap)
    }

    pub async fn route(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        excluded: &[String],
        items: &[RouteItem],
        expected: Option<u64>,
    ) -> Result<Routed, BackendError> {
        if items.is_empty() {
            return Ok(Routed::Done {
                decisions: Vec::new(),
                change: AgentsChange::default(),
            });
        }
        // The plans the items share (a batch has a handful), sent once.
        let mut plan_of: Vec<usize> = Vec::with_capacity(items.len());
        let mut plans: Vec<&RouteItem> = Vec::new();
        for it in items {
            let same = |p: &&RouteItem| {
                p.mode == it.mode
                    && p.rule == it.rule
                    && p.queue == it.queue
                    && p.team == it.team
                    && p.strategy == it.strategy
                    && p.priority == it.priority
                    && p.fallback_queue == it.fallback_queue
                    && p.overflow_ms == it.overflow_ms
                    && p.reason == it.reason
                    && p.target == it.target
                    && p.fallback_team == it.fallback_team
                    && p.fallback_strategy == it.fallback_strategy
                    && p.offer == it.offer
            };
            match plans.iter().position(same) {
                Some(i) => plan_of.push(i + 1),
                None => {
                    plans.push(it);
                    plan_of.push(plans.len());
                }
            }
        }
        let reply = self
            .call(tenant, "route", Some(settings), now_ms, |inv| {
                match expected {
                    Some(v) => inv.arg(v),
                    None => inv.arg(""),
                };
                inv.arg(excluded.len());
                for a in excluded {
                    inv.arg(a);
                }
                inv.arg(plans.len());
                for p in &plans {
                    inv.arg(p.mode.as_str())
                        .arg(opt(&p.rule))
                        .arg(&p.queue)
                        .arg(opt(&p.team))
                        .arg(&p.strategy)
                        .arg(p.priority)
                        .arg(opt(&p.fallback_queue))
                        .arg(p.overflow_ms)
                        .arg(&p.reason)
                        .arg(&p.target)
                        .arg(opt(&p.fallback_team))
                        .arg(&p.fallback_strategy)
                        .arg(p.offer.map_or(0, |o| o.timeout_ms))
                        .arg(p.offer.map_or(0, |o| o.max_missed));
                }
                inv.arg(items.len());
                for (it, plan) in items.iter().zip(&plan_of) {
                    inv.arg(&it.event_id)
                        .arg(&it.conv)
                        .arg(&it.channel)
                        .arg(&it.meta)
                        .arg(*plan)
                        .arg(it.considered)
                        .arg(if it.sticky { 1 } else { 0 })
                        .arg(it.candidates.len());
                    for c in &it.candidates {
                        inv.arg(c);
                    }
                }
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("route reply"))?;
        match v {
            [flag, current] if int(flag) == Some(1) => Ok(Routed::Stale {
                current: int(current).unwrap_or(0).max(0) as u64,
            }),
            [flag, before, after, loads, res] if int(flag) == Some(0) => {
                let res = array(res).ok_or_else(|| protocol("route decisions"))?;
                if res.len() != items.len() * 2 {
                    return Err(protocol("route reply length"));
                }
                let decisions = res
                    .chunks(2)
                    .map(|c| decided(c).ok_or_else(|| protocol("route decision")))
                    .collect::<Result<_, _>>()?;
                Ok(Routed::Done {
                    decisions,
                    change: agents_change(before, after, loads)?,
                })
            }
            _ => Err(protocol("route reply")),
        }
    }

    pub async fn dequeue(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        items: &[DequeueItem],
    ) -> Result<(Vec<Option<Decided>>, AgentsChange), BackendError> {
        if items.is_empty() {
            return Ok((Vec::new(), AgentsChange::default()));
        }
        let reply = self
            .call(tenant, "dequeue", Some(settings), now_ms, |inv| {
                inv.arg(items.len());
                for it in items {
                    inv.arg(&it.conv)
                        .arg(&it.queue)
                        .arg(opt(&it.team))
                        .arg(&it.strategy)
                        .arg(&it.reason)
                        .arg(it.considered)
                        .arg(it.offer.map_or(0, |o| o.timeout_ms))
                        .arg(it.offer.map_or(0, |o| o.max_missed))
                        .arg(it.candidates.len());
                    for c in &it.candidates {
                        inv.arg(c);
                    }
                }
            })
            .await?;
        let [before, after, loads, v] = array(&reply).ok_or_else(|| protocol("dequeue reply"))?
        else {
            return Err(protocol("dequeue reply"));
        };
        let change = agents_change(before, after, loads)?;
        let v = array(v).ok_or_else(|| protocol("dequeue reply"))?;
        let mut out = Vec::with_capacity(items.len());
        let mut rest = v;
        while let [flag, tail @ ..] = rest {
            if int(flag) == Some(1) {
                if tail.len() < 2 {
                    return Err(protocol("dequeue decision"));
                }
                out.push(Some(
                    decided(&tail[..2]).ok_or_else(|| protocol("dequeue decision"))?,
                ));
                rest = &tail[2..];
            } else {
                out.push(None);
                rest = tail;
            }
        }
        if out.len() != items.len() {
            return Err(protocol("dequeue reply length"));
        }
        Ok((out, change))
    }

    pub async fn transfer_agent(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        conv: &str,
        agent: &str,
        reason: &str,
    ) -> Result<Result<Decided, TransferRefused>, BackendError> {
        let reply = self
            .call(tenant, "transfer_agent", Some(settings), now_ms, |inv| {
                inv.arg(conv).arg(agent).arg(reason);
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("transfer reply"))?;
        match v {
            [flag, rest @ ..] if int(flag) == Some(0) => Ok(Ok(
                decided(rest).ok_or_else(|| protocol("transfer decision"))?
            )),
            [flag, why, load, cap] if int(flag) == Some(-1) => {
                let a = agent.to_string();
                Ok(Err(match text(why).as_deref() {
                    Some("not_active") => TransferRefused::NotActive,
                    Some("full") => TransferRefused::Full(
                        a,
                        int(load).unwrap_or(0) as u32,
                        int(cap).unwrap_or(0) as u32,
                    ),
                    Some("channel_full") => TransferRefused::ChannelFull(a),
                    _ => TransferRefused::Offline(a),
                }))
            }
            _ => Err(protocol("transfer reply")),
        }
    }

    pub async fn answer(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        conv: &str,
        agent: Option<&str>,
        answer: Answer,
    ) -> Result<Result<Decided, AnswerRefused>, BackendError> {
        let reply = self
            .call(tenant, "answer", Some(settings), now_ms, |inv| {
                inv.arg(conv).arg(agent.unwrap_or("")).arg(match answer {
                    Answer::Accept => "accept",
                    Answer::Reject => "reject",
                });
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("answer reply"))?;
        match v {
            [flag, rest @ ..] if int(flag) == Some(0) => {
                Ok(Ok(decided(rest).ok_or_else(|| protocol("answer decision"))?))
            }
            [flag, why] if int(flag) == Some(-1) => Ok(Err(match text(why).as_deref() {
                Some("not_yours") => AnswerRefused::NotYours,
                _ => AnswerRefused::NoOffer,
            })),
            _ => Err(protocol("answer reply")),
        }
    }

    pub async fn close(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        conv: &str,
        reason: &str,
    ) -> Result<Option<Decided>, BackendError> {
        let reply = self
            .call(tenant, "close", Some(settings), now_ms, |inv| {
                inv.arg(conv).arg(reason);
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("close reply"))?;
        if v.is_empty() {
            return Ok(None);
        }
        Ok(Some(decided(v).ok_or_else(|| protocol("close decision"))?))
    }

    pub async fn erase(
        &self,
        tenant: &str,
        now_ms: u64,
        convs: &[String],
    ) -> Result<RoutingErased, BackendError> {
        let mut out = RoutingErased::default();
        // Bounded calls: a contact has few conversations, but the script runs alone.
        for chunk in convs.chunks(500) {
            let reply = self
                .call(tenant, "erase", None, now_ms, |inv| {
                    for c in chunk {
                        inv.arg(c);
                    }
                })
                .await?;
            let v = array(&reply).ok_or_else(|| protocol("erase reply"))?;
            let n = |i: usize| v.get(i).and_then(int).map(|n| n.max(0) as u64);
            out.conversations += n(0).ok_or_else(|| protocol("erase reply"))?;
            out.released += n(1).unwrap_or(0);
            out.unqueued += n(2).unwrap_or(0);
            out.outbox += n(3).unwrap_or(0);
        }
        Ok(out)
    }

    pub async fn set_presence(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        agent: &str,
        presence: Presence,
    ) -> Result<Presence, BackendError> {
        let reply = self
            .call(tenant, "presence", Some(settings), now_ms, |inv| {
                inv.arg(agent).arg(presence.as_str());
            })
            .await?;
        Ok(text(&reply)
            .and_then(|p| Presence::parse(&p))
            .unwrap_or_default())
    }

    pub async fn sweep(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
    ) -> Result<SweepReport, BackendError> {
        let reply = self
            .call(tenant, "sweep", Some(settings), now_ms, |_| {})
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("sweep reply"))?;
        let n = |i: usize| v.get(i).and_then(int).unwrap_or(0) as u32;
        Ok(SweepReport {
            requeued: n(0),
            overflowed: n(1),
            closed: n(2),
            expired: n(3),
        })
    }

    pub async fn queues(&self, tenant: &str) -> Result<Vec<QueueDepth>, BackendError> {
        let reply = self.call(tenant, "queues", None, 0, |_| {}).await?;
        let v = array(&reply).ok_or_else(|| protocol("queues reply"))?;
        let mut out: Vec<QueueDepth> = v
            .chunks(3)
            .filter_map(|c| {
                Some(QueueDepth {
                    queue: text(c.first()?)?,
                    depth: int(c.get(1)?)? as u64,
                    oldest_ms: int(c.get(2)?)? as u64,
                })
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(out)
    }

    pub async fn conversation(
        &self,
        tenant: &str,
        conv: &str,
    ) -> Result<Option<(ConvLive, Vec<String>)>, BackendError> {
        let reply = self
            .call(tenant, "conversation", None, 0, |inv| {
                inv.arg(conv);
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("conversation reply"))?;
        let (Some(state), Some(history)) = (v.first().and_then(text), v.get(1).and_then(array))
        else {
            return Err(protocol("conversation reply"));
        };
        Ok(unpack_state(&state).map(|live| {
            let entries = history
                .iter()
                .filter_map(text)
                .filter_map(|h| history_entry(&h))
                .collect();
            (live, entries)
        }))
    }

    pub async fn open_of(&self, tenant: &str, agent: &str) -> Result<Vec<Listed>, BackendError> {
        let reply = self
            .call(tenant, "open_of", None, 0, |inv| {
                inv.arg(agent);
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("open_of reply"))?;
        Ok(v.chunks(3)
            .filter_map(|c| {
                Some(Listed {
                    conv: text(c.first()?)?,
                    live: unpack_state(&text(c.get(1)?)?)?,
                    meta: text(c.get(2)?).unwrap_or_default(),
                    position: None,
                    score: None,
                })
            })
            .collect())
    }

    pub async fn queued_in(
        &self,
        tenant: &str,
        queue: &str,
        after: Option<(u64, String)>,
        limit: usize,
    ) -> Result<Vec<Listed>, BackendError> {
        let reply = self
            .call(tenant, "queued_in", None, 0, |inv| {
                inv.arg(queue);
                match &after {
                    Some((score, conv)) => inv.arg(score.to_string()).arg(conv),
                    None => inv.arg("").arg(""),
                };
                inv.arg(limit.max(1));
            })
            .await?;
        let v = array(&reply).ok_or_else(|| protocol("queued_in reply"))?;
        Ok(v.chunks(5)
            .filter_map(|c| {
                let score: f64 = text(c.get(1)?)?.parse().ok()?;
                Some(Listed {
                    conv: text(c.first()?)?,
                    score: Some(score as u64),
                    position: Some(int(c.get(2)?)? as u64 + 1),
                    live: unpack_state(&text(c.get(3)?)?)?,
                    meta: text(c.get(4)?).unwrap_or_default(),
                })
            })
            .collect())
    }

    pub async fn outbox(&self, tenant: &str, max: usize) -> Result<Vec<OutboxEntry>, BackendError> {
        let mut conn = self.conn.clone();
        let reply: ::redis::streams::StreamRangeReply = self
            .timed(
                ::redis::cmd("XRANGE")
                    .arg(format!("{}outbox", self.base(tenant)))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| {
                let f = |k: &str| e.map.get(k).and_then(text).unwrap_or_default();
                OutboxEntry {
                    event_id: f("event_id"),
                    conv: f("conv"),
                    meta: f("meta"),
                    assignment: outcome::decode(&f("assignment"))
                        .map(|o| serde_json::to_string(&outcome::render(&o)).unwrap_or_default())
                        .unwrap_or_default(),
                    at_ms: f("at_ms").parse().unwrap_or(0),
                    id: e.id.clone(),
                }
            })
            .collect())
    }

    pub async fn outbox_ack(&self, tenant: &str, ids: &[String]) -> Result<(), BackendError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = self
            .timed(
                ::redis::cmd("XDEL")
                    .arg(format!("{}outbox", self.base(tenant)))
                    .arg(ids)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}
