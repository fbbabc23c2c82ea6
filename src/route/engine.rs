//! The routing engine: turns events into assignments (docs/architecture.md steps 7-9).
//!
//! For a batch of events it (1) evaluates each tenant's rules into a plan (pure,
//! [`super::rules`]), (2) reads one snapshot of the agents and conversations involved,
//! (3) ranks the eligible agents of each plan with its strategy, simulating the batch's own
//! assignments so that one batch spreads its conversations like single decisions would, and
//! (4) hands the ranked lists to the store, which decides atomically. Two round trips per
//! tenant per batch, whatever the batch size.
//!
//! It also owns the other triggers of a decision: draining queues when capacity frees,
//! the periodic sweep (offline grace, overflow, idle close), the API operations, rule set
//! reloads, and relaying the store's outbox of assignment changes to the events stream.
//!
//! The engine never holds state a decision depends on: presence, loads, ownership and
//! queues live in the store. Its only state is the compiled rule sets, which it refreshes
//! from the store so that every replica converges on the same version.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::rules::{self, EventView};
use super::store::{
    AgentLive, AgentSpec, AgentsChange, Answer, AnswerRefused, ConvState, Decided, DequeueItem,
    Listed, QueueDepth, RouteItem, RouteMode, Routed, RoutingStore, RulesetRecord, Settings,
    SnapshotRequest, SweepReport, TransferRefused, VersionConflict,
};
use super::strategy::{Candidate, RankContext, Strategies};
use crate::accept::{Backend, BackendError, Item, StreamEntry};
use crate::config::routing::{Agent, Presence, RoutingConfig, Ruleset, Target};
use crate::event::{ms_rfc3339, Channel, SCHEMA_V1};
use crate::internal_events::{RoutingDecided, RoutingDrained, RulesetApplied};

/// Queue heads looked at per queue in one drain round.
const DRAIN_HEADS: usize = 64;
/// Drain rounds per trigger (each assigns what it can from the heads).
const DRAIN_ROUNDS: usize = 8;
/// Outbox entries relayed per call.
const RELAY_BATCH: usize = 256;
/// Ranked candidates passed to the store per decision: it takes the first still eligible,
/// so the tail only matters when the snapshot is very stale (the conversation then waits
/// and the next drain assigns it).
const MAX_CANDIDATES: usize = 4;
/// Decisions per store call: a call is atomic, so others wait for it; this bounds each
/// decision's latency (about 20 µs of Redis time for a message to a conversation that has
/// its agent or its place in a queue, 30-40 µs for one routed afresh), about 1-2 ms a call.
const MAX_DECISIONS_PER_CALL: usize = 64;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A listing cursor `<number>/<conversation>`.
fn parse_cursor(s: &str) -> Result<(u64, String), OpError> {
    s.split_once('/')
        .and_then(|(n, c)| Some((n.parse().ok()?, c.to_string())))
        .filter(|(_, c)| !c.is_empty())
        .ok_or_else(|| OpError::BadCursor(s.to_string()))
}

/// Why a rule set was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RulesetError {
    #[error("invalid routing rules:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    #[error(transparent)]
    Conflict(#[from] VersionConflict),
    #[error("no tenant {0:?} is configured")]
    UnknownTenant(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why an API operation on a conversation or agent was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("tenant {0:?} has no routing configured")]
    NoRouting(String),
    #[error("no agent {0:?} in this tenant's routing")]
    UnknownAgent(String),
    #[error("no team {0:?} in this tenant's routing")]
    UnknownTeam(String),
    #[error("no conversation {0:?} is known")]
    UnknownConversation(String),
    #[error("{0}")]
    Conflict(String),
    #[error("after = {0:?} is not a cursor from a previous page's next_after")]
    BadCursor(String),
    #[error(transparent)]
    Transfer(#[from] TransferRefused),
    #[error(transparent)]
    Answer(#[from] AnswerRefused),
    #[error(transparent)]
    Ruleset(#[from] RulesetError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What one routed batch did.
#[derive(Debug, Default, Clone)]
pub struct BatchOutcome {
    pub decisions: usize,
    /// Tenants whose queues may now be served (a decision freed capacity, or queued while
    /// someone eligible had room): the router drains them *after* publishing the batch, so
    /// that a conversation's `queued` event reaches the stream before its `assigned` one.
    pub drain: Vec<String>,
    /// Each store call: how many decisions it made and how long it took (what each of
    /// those decisions waited for).
    pub calls: Vec<(usize, std::time::Duration)>,
}

/// Milliseconds since the epoch: the real clock, or a simulation's.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Engine {
    clock: Clock,
    store: RoutingStore,
    backend: Backend,
    strategies: Strategies,
    /// The configuration's tenants, and those created through the API since
    /// ([`Engine::add_tenant`]).
    tenants: RwLock<Vec<String>>,
    /// The configuration file's routing per tenant (what `reload` re-reads is passed in).
    file: RwLock<HashMap<String, RoutingConfig>>,
    rulesets: RwLock<HashMap<String, Arc<Ruleset>>>,
    /// Per tenant, an exact copy of the agents routing last read or changed (see
    /// [`AgentsChange`]): a batch is ranked against it and decided only if the store's
    /// agents version is still the copy's, so decisions never depend on how old a copy is.
    agents: Mutex<HashMap<String, AgentsCopy>>,
}

/// Agents of one tenant at one agents version.
struct AgentsCopy {
    av: u64,
    agents: HashMap<String, AgentLive>,
    /// Batches to rank from a fresh read rather than from this copy, after the copy was
    /// found stale (another replica's router, an API change): one round trip saved per
    /// batch only pays while the copy stays current.
    skip: u32,
}

/// Batches read afresh after a stale copy.
const SKIP_AFTER_STALE: u32 = 4;

fn digest(cfg: &RoutingConfig) -> String {
    let json = serde_json::to_vec(cfg).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

fn settings(rs: &Ruleset) -> Settings {
    Settings {
        sticky_window_ms: rs.sticky_window_ms,
        offline_grace_ms: rs.offline_grace_ms,
        keep_offline: rs.offline_policy == crate::config::routing::OfflinePolicy::Keep,
        auto_close_after_ms: rs.auto_close_after_ms,
        max_queued: rs.max_queued,
        closed_ttl_ms: rs.sticky_window_ms.max(24 * 3600 * 1000),
    }
}

fn agent_specs(rs: &Ruleset) -> Vec<AgentSpec> {
    rs.agents
        .iter()
        .map(|a| AgentSpec {
            id: a.id.clone(),
            capacity: if a.assignable() { a.capacity } else { 0 },
            channel_capacity: {
                let mut v: Vec<(String, u32)> = a
                    .channel_capacity
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                v.sort();
                v
            },
            initial_presence: a.initial_presence,
            teams: a.teams.clone(),
        })
        .collect()
}

/// "rule vip-es → team es-sales, least_loaded"
fn reason_prefix(rule: Option<&str>, target: &Target, rs: &Ruleset) -> String {
    let who = match &target.team {
        Some(t) => format!("team {t}"),
        None if target.members.len() == rs.agents.len() && rule.is_none() => {
            "all agents".to_string()
        }
        None if target.members.len() <= 3 => {
            let names: Vec<&str> = target
                .members
                .iter()
                .map(|i| rs.agents[*i].id.as_str())
                .collect();
            format!("agents {}", names.join(", "))
        }
        None => format!("{} agents", target.members.len()),
    };
    match rule {
        Some(r) => format!("rule {r} → {who}, {}", target.strategy),
        None => format!("default → {who}, {}", target.strategy),
    }
}

/// The eligible members of `target` for a conversation on `channel`, against the (simulated)
/// live state, ranked by the target's strategy.
#[allow(clippy::too_many_arguments)]
fn rank<'a>(
    rs: &'a Ruleset,
    strategies: &Strategies,
    target: &'a Target,
    channel: &str,
    live: &HashMap<String, AgentLive>,
    conv: &str,
    last_agent: Option<&str>,
    now: u64,
) -> Vec<Candidate<'a>> {
    let mut out = Vec::new();
    for &i in &target.members {
        let a: &Agent = &rs.agents[i];
        if !a.assignable() || !rs.is_working(a, now) {
            continue;
        }
        let Some(l) = live.get(&a.id) else { continue };
        if l.presence != Presence::Online || l.load >= l.capacity {
            continue;
        }
        let channel_load = l.channel_load.get(channel).copied().unwrap_or(0);
        let channel_capacity = l.channel_capacity.get(channel).copied();
        if channel_capacity.is_some_and(|c| channel_load >= c) {
            continue;
        }
        if !target.skills.iter().all(|s| a.skills.contains_key(s)) {
            continue;
        }
        if !target.languages.is_empty() && !a.languages.iter().any(|l| target.languages.contains(l))
        {
            continue;
        }
        out.push(Candidate {
            agent: a,
            load: l.load,
            capacity: l.capacity,
            channel_load,
            channel_capacity,
            last_assigned_ms: l.last_ms,
            proficiency: target
                .skills
                .iter()
                .map(|s| a.skills.get(s).copied().unwrap_or(0) as u32)
                .sum(),
        });
    }
    let ctx = RankContext {
        target,
        conversation: conv,
        last_agent,
        now_ms: now,
    };
    match strategies.get(&target.strategy) {
        Some(s) => s.rank(&ctx, &mut out),
        // A rule set only compiles with known strategies; a strategy unregistered since
        // (a different build) queues rather than guesses.
        None => out.clear(),
    }
    out
}

/// The first candidate, as if it had been assigned (so the rest of the batch sees it).
fn simulate_assign(live: &mut HashMap<String, AgentLive>, agent: &str, channel: &str, now: u64) {
    if let Some(l) = live.get_mut(agent) {
        l.load += 1;
        *l.channel_load.entry(channel.to_string()).or_insert(0) += 1;
        l.last_ms = now;
    }
}

fn conv_meta(v: &EventView) -> String {
    json!({
        "source": v.source,
        "provider": v.provider,
        "channel": v.channel,
        "contact": v.contact,
        "business": v.business,
    })
    .to_string()
}

/// Adds `"assignment": {...}` to an event's JSON (which never has one yet: only the router
/// sets it), without re-serializing the rest.
pub fn splice_assignment(payload: &mut String, assignment: &str) {
    let trimmed = payload.trim_end().len();
    payload.truncate(trimmed);
    if payload.ends_with('}') {
        payload.pop();
        let empty = payload.trim_end().ends_with('{');
        if !empty {
            payload.push(',');
        }
        payload.push_str("\"assignment\":");
        payload.push_str(assignment);
        payload.push('}');
    }
}

impl Engine {
    /// Loads each tenant's rule set: from the store when it holds one that is newer than
    /// the file's, else from the configuration file (which is then written to the store).
    /// When the store does not answer, the file's rule sets apply until it does.
    pub async fn start(
        store: RoutingStore,
        backend: Backend,
        strategies: Strategies,
        tenants: Vec<String>,
        file: HashMap<String, RoutingConfig>,
    ) -> Result<Engine, RulesetError> {
        Self::start_with_clock(store, backend, strategies, tenants, file, Arc::new(now_ms)).await
    }

    /// Like [`Engine::start`], on another clock (`switchboard routing simulate`).
    pub async fn start_with_clock(
        store: RoutingStore,
        backend: Backend,
        strategies: Strategies,
        tenants: Vec<String>,
        file: HashMap<String, RoutingConfig>,
        clock: Clock,
    ) -> Result<Engine, RulesetError> {
        let engine = Engine {
            clock,
            store,
            backend,
            strategies,
            tenants: RwLock::new(tenants),
            file: RwLock::new(HashMap::new()),
            rulesets: RwLock::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
        };
        // Validate the file first: a bad file is a configuration error at start.
        let mut errs = Vec::new();
        for (t, cfg) in &file {
            if let Err(e) = engine.compile(t, 0, cfg.clone()) {
                errs.extend(e);
            }
        }
        if !errs.is_empty() {
            return Err(RulesetError::Invalid(errs));
        }
        *engine.file.write().unwrap_or_else(|p| p.into_inner()) = file;
        if let Err(e) = engine.sync_file(engine.now()).await {
            tracing::warn!(error = %e, "routing rules not synchronized with the store yet; using the configuration file's");
            let file = engine.file_configs();
            for (t, cfg) in file {
                if let Ok(rs) = engine.compile(&t, 0, cfg) {
                    engine.install(rs);
                }
            }
        }
        Ok(engine)
    }

    /// The engine's clock (ms since the epoch).
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn store(&self) -> &RoutingStore {
        &self.store
    }

    pub fn strategies(&self) -> &Strategies {
        &self.strategies
    }

    fn file_configs(&self) -> HashMap<String, RoutingConfig> {
        self.file.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn compile(
        &self,
        tenant: &str,
        version: u64,
        cfg: RoutingConfig,
    ) -> Result<Ruleset, Vec<String>> {
        let strategies = self.strategies.clone();
        Ruleset::compile(
            tenant,
            version,
            cfg,
            &format!("tenants.{tenant}.routing"),
            &move |s| strategies.contains(s),
        )
    }

    fn install(&self, rs: Ruleset) {
        let mut g = self.rulesets.write().unwrap_or_else(|p| p.into_inner());
        let newer = g
            .get(&rs.tenant)
            .is_none_or(|cur| cur.version <= rs.version);
        if newer {
            g.insert(rs.tenant.clone(), Arc::new(rs));
        }
    }

    pub fn ruleset(&self, tenant: &str) -> Option<Arc<Ruleset>> {
        self.rulesets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    pub fn tenants(&self) -> Vec<String> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `tenant` is one of the engine's tenants.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|t| t == tenant)
    }

    /// Adds a tenant created through the admin API (its rule set then comes from the
    /// store, as for any tenant: `PUT /v1/tenants/{t}/routing`). Idempotent.
    pub fn add_tenant(&self, tenant: &str) {
        let mut g = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if !g.iter().any(|t| t == tenant) {
            g.push(tenant.to_string());
        }
    }

    /// Writes the file's rule sets where the store has none, or has an older one: the
    /// latest change wins, whether it was made in the file or through the API.
    async fn sync_file(&self, now: u64) -> Result<(), BackendError> {
        let file = self.file_configs();
        for tenant in &self.tenants() {
            let stored = self.store.ruleset(tenant).await?;
            let from_file = file.get(tenant);
            let file_digest = from_file.map(digest).unwrap_or_default();
            let use_file = match (&stored, from_file) {
                (None, Some(_)) => true,
                (Some(rec), Some(_)) => rec.file_digest != file_digest,
                (_, None) => false,
            };
            if use_file {
                let cfg = from_file.cloned().unwrap_or_default();
                let version = stored.as_ref().map_or(0, |r| r.version) + 1;
                match self
                    .store_ruleset(
                        tenant,
                        cfg,
                        "file",
                        &file_digest,
                        stored.as_ref().map(|r| r.version),
                        now,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(RulesetError::Backend(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(tenant, version, error = %e, "file rule set not stored")
                    }
                }
            } else if let Some(rec) = stored {
                self.load_record(tenant, &rec);
            }
        }
        Ok(())
    }

    fn load_record(&self, tenant: &str, rec: &RulesetRecord) {
        let cfg: RoutingConfig = match serde_json::from_str(&rec.json) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(tenant, version = rec.version, error = %e, "stored rule set unreadable; keeping the current one");
                return;
            }
        };
        match self.compile(tenant, rec.version, cfg) {
            Ok(rs) => {
                RulesetApplied {
                    tenant,
                    version: rec.version,
                    origin: &rec.origin,
                }
                .emit();
                self.install(rs);
            }
            Err(errs) => {
                tracing::error!(tenant, version = rec.version, errors = %errs.join("; "), "stored rule set does not compile here; keeping the current one")
            }
        }
    }

    async fn store_ruleset(
        &self,
        tenant: &str,
        cfg: RoutingConfig,
        origin: &str,
        file_digest: &str,
        expected: Option<u64>,
        now: u64,
    ) -> Result<u64, RulesetError> {
        let version = expected.unwrap_or(0) + 1;
        let rs = self
            .compile(tenant, version, cfg.clone())
            .map_err(RulesetError::Invalid)?;
        let record = RulesetRecord {
            version,
            json: serde_json::to_string(&cfg).unwrap_or_default(),
            origin: origin.to_string(),
            file_digest: file_digest.to_string(),
            updated_ms: now,
        };
        self.store
            .apply_ruleset(
                tenant,
                &record,
                &agent_specs(&rs),
                Some(expected.unwrap_or(0)),
                now,
            )
            .await??;
        RulesetApplied {
            tenant,
            version,
            origin,
        }
        .emit();
        self.install(rs);
        Ok(version)
    }

    /// Replaces a tenant's rule set (API). `expected_version`, when given, must be the
    /// current one (optimistic concurrency). Invalid sets are refused; the old one stays.
    pub async fn put_ruleset(
        &self,
        tenant: &str,
        cfg: RoutingConfig,
        expected_version: Option<u64>,
    ) -> Result<u64, RulesetError> {
        if !self.has_tenant(tenant) {
            return Err(RulesetError::UnknownTenant(tenant.to_string()));
        }
        self.compile(tenant, 0, cfg.clone())
            .map_err(RulesetError::Invalid)?;
        let now = self.now();
        let stored = self.store.ruleset(tenant).await?;
        let current = stored.as_ref().map_or(0, |r| r.version);
        if let Some(v) = expected_version {
            if v != current {
                return Err(VersionConflict(current).into());
            }
        }
        let file_digest = self
            .file_configs()
            .get(tenant)
            .map(digest)
            .unwrap_or_default();
        let v = self
            .store_ruleset(tenant, cfg, "api", &file_digest, Some(current), now)
            .await?;
        self.drain(tenant, now).await?;
        Ok(v)
    }

    /// Re-reads the configuration file's routing (after validating all of it): tenants
    /// whose file section changed get it as a new version.
    pub async fn reload_file(
        &self,
        file: HashMap<String, RoutingConfig>,
    ) -> Result<Vec<(String, u64)>, RulesetError> {
        let mut errs = Vec::new();
        for (t, cfg) in &file {
            if !self.has_tenant(t) {
                errs.push(format!("tenants.{t}: not a tenant of the running configuration (tenants are not reloaded)"));
                continue;
            }
            if let Err(e) = self.compile(t, 0, cfg.clone()) {
                errs.extend(e);
            }
        }
        if !errs.is_empty() {
            return Err(RulesetError::Invalid(errs));
        }
        let before = self.file_configs();
        *self.file.write().unwrap_or_else(|p| p.into_inner()) = file.clone();
        let mut changed = Vec::new();
        let now = self.now();
        for (t, cfg) in file {
            if before.get(&t) == Some(&cfg) {
                continue;
            }
            let stored = self.store.ruleset(&t).await?;
            let v = self
                .store_ruleset(
                    &t,
                    cfg.clone(),
                    "file",
                    &digest(&cfg),
                    stored.map(|r| r.version),
                    now,
                )
                .await?;
            changed.push((t.clone(), v));
            self.drain(&t, now).await?;
        }
        Ok(changed)
    }

    /// Picks up rule sets changed by other replicas.
    pub async fn refresh(&self) -> Result<(), BackendError> {
        let tenants = self.tenants();
        let versions = self.store.ruleset_versions(&tenants).await?;
        for (tenant, v) in tenants.iter().zip(versions) {
            let local = self.ruleset(tenant).map_or(0, |r| r.version);
            if v > local {
                if let Some(rec) = self.store.ruleset(tenant).await? {
                    self.load_record(tenant, &rec);
                }
            }
        }
        Ok(())
    }

    /// Routes a batch read from the inbound stream: adds the decision to each routable
    /// event's payload. Entries that are not routable (statuses, notifications, tenants
    /// without routing, unreadable JSON) are left as they are.
    pub async fn route_batch(
        &self,
        entries: &mut [StreamEntry],
        now: u64,
    ) -> Result<BatchOutcome, BackendError> {
        let mut by_tenant: BTreeMap<String, Vec<(usize, EventView)>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let Ok(view) = serde_json::from_str::<EventView>(&e.payload) else {
                continue;
            };
            if !view.routable() || view.assignment.is_some() {
                continue;
            }
            if self.ruleset(&view.tenant).is_none() {
                continue;
            }
            by_tenant
                .entry(view.tenant.clone())
                .or_default()
                .push((i, view));
        }
        let mut outcome = BatchOutcome::default();
        for (tenant, views) in by_tenant {
            let Some(rs) = self.ruleset(&tenant) else {
                continue;
            };
            let decided = self.decide(&rs, &views, now, &mut outcome.calls).await?;
            let mut drain = false;
            for ((i, _), d) in views.iter().zip(&decided) {
                splice_assignment(&mut entries[*i].payload, &d.assignment);
                // Worth serving the queues at once when capacity was freed, or when a
                // conversation queued behind others though someone eligible had room;
                // queued because nobody had room, there is nothing to serve (the periodic
                // maintenance drains anyway).
                drain |= d.freed || (d.action == "queued" && d.candidates > 0);
                RoutingDecided {
                    strategy: &d.strategy,
                    action: &d.action,
                }
                .emit();
            }
            outcome.decisions += decided.len();
            if drain {
                outcome.drain.push(tenant);
            }
        }
        Ok(outcome)
    }

    /// Agents who must not get a conversation now, even as its last agent.
    fn excluded(rs: &Ruleset, now: u64) -> Vec<String> {
        rs.agents
            .iter()
            .filter(|a| !a.assignable() || !rs.is_working(a, now))
            .map(|a| a.id.clone())
            .collect()
    }

    /// The copy of `wanted` agents to rank against, and its version: this engine's copy when
    /// it holds them all (and was not found stale lately), else read from the store.
    async fn agents_for(
        &self,
        tenant: &str,
        wanted: &[String],
        fresh: bool,
    ) -> Result<(HashMap<String, AgentLive>, u64), BackendError> {
        if !fresh {
            let mut g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = g.get_mut(tenant) {
                if c.skip > 0 {
                    c.skip -= 1;
                } else if wanted.iter().all(|a| c.agents.contains_key(a)) {
                    return Ok((c.agents.clone(), c.av));
                }
            }
        }
        let snap = self
            .store
            .snapshot(
                tenant,
                &SnapshotRequest {
                    agents: wanted.to_vec(),
                    convs: Vec::new(),
                    queue_heads: 0,
                },
            )
            .await?;
        self.keep_agents(tenant, snap.av, &snap.agents);
        Ok((snap.agents, snap.av))
    }

    /// Keeps `agents`, read at version `av`, in the tenant's copy.
    fn keep_agents(&self, tenant: &str, av: u64, agents: &HashMap<String, AgentLive>) {
        let mut g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let c = g.entry(tenant.to_string()).or_insert_with(|| AgentsCopy {
            av,
            agents: HashMap::new(),
            skip: 0,
        });
        if c.av != av {
            c.agents.clear();
            c.av = av;
        }
        for (id, a) in agents {
            c.agents.insert(id.clone(), a.clone());
        }
    }

    /// Follows a call's change in the tenant's copy (when the copy was at its start).
    fn follow_change(&self, tenant: &str, change: &AgentsChange) {
        let mut g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.get_mut(tenant) {
            if c.av == change.before {
                change.apply(&mut c.agents);
                c.av = change.after;
            }
        }
    }

    fn copy_was_stale(&self, tenant: &str) {
        let mut g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.get_mut(tenant) {
            c.skip = SKIP_AFTER_STALE;
        }
    }

    async fn decide(
        &self,
        rs: &Ruleset,
        views: &[(usize, EventView)],
        now: u64,
        calls: &mut Vec<(usize, std::time::Duration)>,
    ) -> Result<Vec<Decided>, BackendError> {
        let plans: Vec<rules::Plan<'_>> =
            views.iter().map(|(_, v)| rules::plan(rs, v, now)).collect();
        // Every agent these plans may rank.
        let mut wanted = vec![false; rs.agents.len()];
        for p in &plans {
            for &i in &p.target.members {
                wanted[i] = true;
            }
        }
        let wanted: Vec<String> = rs
            .agents
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(a, _)| a.id.clone())
            .collect();
        let excluded = Self::excluded(rs, now);
        let (mut live, mut av) = self.agents_for(&rs.tenant, &wanted, false).await?;
        let mut out = Vec::with_capacity(views.len());
        let mut next = 0;
        let mut stale = 0;
        while next < views.len() {
            let end = (next + MAX_DECISIONS_PER_CALL).min(views.len());
            let items = self.route_items(rs, &views[next..end], &plans[next..end], &live, now);
            // Decided only against the agents the candidates were ranked from; after two
            // stale attempts (a busy tenant on several routers) decided anyway: the store
            // still checks every candidate's capacity.
            let expected = (stale < 2).then_some(av);
            let started = Instant::now();
            match self
                .store
                .route_at(&rs.tenant, &settings(rs), now, &excluded, &items, expected)
                .await?
            {
                Routed::Stale { .. } => {
                    stale += 1;
                    self.copy_was_stale(&rs.tenant);
                    (live, av) = self.agents_for(&rs.tenant, &wanted, true).await?;
                }
                Routed::Done { decisions, change } => {
                    let elapsed = started.elapsed();
                    crate::internal_events::RoutingDecisionTimed {
                        decisions: decisions.len(),
                        elapsed,
                    }
                    .emit();
                    calls.push((decisions.len(), elapsed));
                    self.follow_change(&rs.tenant, &change);
                    if change.before == av {
                        change.apply(&mut live);
                        av = change.after;
                    } else {
                        (live, av) = self.agents_for(&rs.tenant, &wanted, true).await?;
                    }
                    out.extend(decisions);
                    next = end;
                    stale = 0;
                }
            }
        }
        Ok(out)
    }

    /// The store's items for `views`, ranked against `live` (not changed: each item is
    /// ranked as if the ones before it took their first candidate, on a copy).
    fn route_items(
        &self,
        rs: &Ruleset,
        views: &[(usize, EventView)],
        plans: &[rules::Plan<'_>],
        live: &HashMap<String, AgentLive>,
        now: u64,
    ) -> Vec<RouteItem> {
        let mut live = live.clone();
        let mut items = Vec::with_capacity(views.len());
        for ((_, v), plan) in views.iter().zip(plans) {
            let conv = v.conversation_id.clone().unwrap_or_default();
            let channel = v.channel.as_str();
            let ranked = rank(
                rs,
                &self.strategies,
                plan.target,
                channel,
                &live,
                &conv,
                None,
                now,
            );
            let candidates: Vec<String> = ranked
                .iter()
                .take(MAX_CANDIDATES)
                .map(|c| c.agent.id.clone())
                .collect();
            let considered = ranked.len() as u32;
            drop(ranked);
            // As if the first candidate takes it, so that the rest of the call spreads
            // (a follow-up in an open conversation over-counts here; the store decides).
            if let Some(a) = candidates.first() {
                simulate_assign(&mut live, a, channel, now);
            }
            let fallback = plan.fallback();
            items.push(RouteItem {
                event_id: v.event_id.clone(),
                conv,
                channel: channel.to_string(),
                meta: conv_meta(v),
                mode: RouteMode::Message,
                rule: plan.rule_id().map(str::to_string),
                target: plan.target.key.clone(),
                queue: plan.target.queue.clone(),
                team: plan.target.team.clone(),
                strategy: plan.target.strategy.clone(),
                priority: plan.priority,
                fallback_queue: fallback.map(|(t, _)| t.queue.clone()),
                fallback_team: fallback.and_then(|(t, _)| t.team.clone()),
                fallback_strategy: fallback
                    .map(|(t, _)| t.strategy.clone())
                    .unwrap_or_default(),
                overflow_ms: fallback.map_or(0, |(_, ms)| ms),
                reason: reason_prefix(plan.rule_id(), plan.target, rs),
                candidates,
                considered,
                sticky: true,
                offer: plan.target.offer,
            });
        }
        items
    }

    /// Assigns waiting conversations while anyone eligible has capacity, in service order
    /// (priority, then oldest). Returns how many were assigned.
    pub async fn drain(&self, tenant: &str, now: u64) -> Result<usize, BackendError> {
        let Some(rs) = self.ruleset(tenant) else {
            return Ok(0);
        };
        let all: Vec<String> = rs.agents.iter().map(|a| a.id.clone()).collect();
        let mut total = 0;
        for _ in 0..DRAIN_ROUNDS {
            let snap = self
                .store
                .snapshot(
                    tenant,
                    &SnapshotRequest {
                        agents: all.clone(),
                        convs: Vec::new(),
                        queue_heads: DRAIN_HEADS,
                    },
                )
                .await?;
            self.keep_agents(tenant, snap.av, &snap.agents);
            if snap.queued.is_empty() {
                break;
            }
            let mut live = snap.agents;
            let mut items = Vec::new();
            for q in &snap.queued {
                // Served with the requirements of the target it waits for (its rule's
                // skills and strategy, or its fallback's), whoever shares its queue.
                let target = q
                    .target
                    .as_deref()
                    .and_then(|k| rs.target_by_key(k))
                    .unwrap_or_else(|| rs.target_for_queue(&q.queue));
                let rule = q
                    .rule
                    .as_deref()
                    .filter(|_| target.key.starts_with("rule:"));
                let ranked = rank(
                    &rs,
                    &self.strategies,
                    &target,
                    &q.channel,
                    &live,
                    &q.conv,
                    q.last_agent.as_deref(),
                    now,
                );
                if ranked.is_empty() {
                    continue;
                }
                // Who declined it (rejected, or let its offer expire) comes last: offered
                // again only when no one else qualifies.
                let (mut candidates, declined): (Vec<String>, Vec<String>) = ranked
                    .iter()
                    .map(|c| c.agent.id.clone())
                    .partition(|a| !q.declined.contains(a));
                candidates.extend(declined);
                let considered = ranked.len() as u32;
                drop(ranked);
                simulate_assign(&mut live, &candidates[0], &q.channel, now);
                items.push(DequeueItem {
                    conv: q.conv.clone(),
                    queue: q.queue.clone(),
                    team: target.team.clone(),
                    strategy: target.strategy.clone(),
                    reason: format!(
                        "capacity freed; {}",
                        match rule {
                            Some(_) if target.key.ends_with(":fallback") => {
                                reason_prefix(rule, &target, &rs).replacen(" → ", " fallback → ", 1)
                            }
                            Some(_) => reason_prefix(rule, &target, &rs),
                            None => reason_prefix(None, &target, &rs).replacen(
                                "default → ",
                                "queue → ",
                                1
                            ),
                        }
                    ),
                    candidates,
                    considered,
                    offer: target.offer,
                });
            }
            if items.is_empty() {
                break;
            }
            let (results, change) = self
                .store
                .dequeue_tracked(tenant, &settings(&rs), now, &items)
                .await?;
            self.follow_change(tenant, &change);
            let assigned: Vec<&Decided> = results.iter().flatten().collect();
            for d in &assigned {
                RoutingDecided {
                    strategy: &d.strategy,
                    action: &d.action,
                }
                .emit();
                RoutingDrained {
                    wait_ms: d.wait_ms.unwrap_or(0),
                }
                .emit();
            }
            total += assigned.len();
            if assigned.is_empty() {
                break;
            }
        }
        if total > 0 {
            self.relay(tenant).await?;
        }
        Ok(total)
    }

    /// Periodic work for every tenant with routing: requeue the conversations of agents
    /// offline past their grace, overflow long waits, close idle conversations, drain the
    /// queues, and publish the resulting assignment events.
    pub async fn maintain(&self, now: u64) -> Result<(), BackendError> {
        if let Err(e) = self.refresh().await {
            tracing::debug!(error = %e, "rule set refresh failed");
        }
        for tenant in self.tenants() {
            let Some(rs) = self.ruleset(&tenant) else {
                continue;
            };
            let report: SweepReport = self.store.sweep(&tenant, &settings(&rs), now).await?;
            if report.changed() {
                tracing::info!(
                    tenant,
                    requeued = report.requeued,
                    overflowed = report.overflowed,
                    closed = report.closed,
                    expired_offers = report.expired,
                    "routing sweep"
                );
            }
            self.drain(&tenant, now).await?;
            self.relay(&tenant).await?;
        }
        Ok(())
    }

    /// Publishes the outbox's assignment changes on the events stream (deduplicated by
    /// event id, so a relay interrupted between publishing and acknowledging does not
    /// publish twice).
    pub async fn relay(&self, tenant: &str) -> Result<usize, BackendError> {
        let mut total = 0;
        loop {
            let entries = self.store.outbox(tenant, RELAY_BATCH).await?;
            if entries.is_empty() {
                return Ok(total);
            }
            let items: Vec<Item> = entries
                .iter()
                .map(|e| Item {
                    key: e.event_id.clone(),
                    payload: assignment_event(tenant, e),
                    shard: Some(e.conv.clone()),
                    legacy_key: None,
                })
                .collect();
            self.backend.append_events(&items).await?;
            let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
            self.store.outbox_ack(tenant, &ids).await?;
            total += entries.len();
            if entries.len() < RELAY_BATCH {
                return Ok(total);
            }
        }
    }

    fn require(&self, tenant: &str) -> Result<Arc<Ruleset>, OpError> {
        self.ruleset(tenant)
            .ok_or_else(|| OpError::NoRouting(tenant.to_string()))
    }

    /// Sets an agent's presence; returns the previous one. Going online assigns waiting
    /// conversations at once; going offline starts the grace period.
    pub async fn set_presence(
        &self,
        tenant: &str,
        agent: &str,
        presence: Presence,
    ) -> Result<Presence, OpError> {
        let rs = self.require(tenant)?;
        if rs.agent(agent).is_none() {
            return Err(OpError::UnknownAgent(agent.to_string()));
        }
        let now = self.now();
        let previous = self
            .store
            .set_presence(tenant, &settings(&rs), now, agent, presence)
            .await?;
        if presence == Presence::Offline && rs.offline_grace_ms == 0 {
            self.store.sweep(tenant, &settings(&rs), now).await?;
        }
        self.drain(tenant, now).await?;
        self.relay(tenant).await?;
        Ok(previous)
    }

    /// Changes an agent's capacity: a new rule set version (so every replica and the
    /// store agree), then waiting conversations are assigned if it rose.
    pub async fn set_capacity(
        &self,
        tenant: &str,
        agent: &str,
        capacity: u32,
        channel_capacity: Option<BTreeMap<String, u32>>,
    ) -> Result<u64, OpError> {
        for _ in 0..5 {
            let rs = self.require(tenant)?;
            let mut cfg = rs.config.clone();
            let Some(a) = cfg.agents.get_mut(agent) else {
                return Err(OpError::UnknownAgent(agent.to_string()));
            };
            a.capacity = capacity;
            if let Some(cc) = &channel_capacity {
                a.channel_capacity = cc.clone();
            }
            match self.put_ruleset(tenant, cfg, Some(rs.version)).await {
                Ok(v) => return Ok(v),
                Err(RulesetError::Conflict(_)) => {
                    self.refresh().await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(OpError::Conflict(
            "the rule set kept changing; try again".into(),
        ))
    }

    /// An agent's answer to a conversation's pending offer (`agent`: the answering agent,
    /// who must hold the offer; None: whoever holds it). A rejected conversation goes to
    /// the next candidate at once.
    pub async fn answer(
        &self,
        tenant: &str,
        conv: &str,
        agent: Option<&str>,
        answer: Answer,
    ) -> Result<Decided, OpError> {
        let rs = self.require(tenant)?;
        let now = self.now();
        let d = self
            .store
            .answer(tenant, &settings(&rs), now, conv, agent, answer)
            .await??;
        RoutingDecided {
            strategy: &d.strategy,
            action: &d.action,
        }
        .emit();
        if d.freed {
            self.drain(tenant, now).await?;
        }
        self.relay(tenant).await?;
        Ok(d)
    }

    pub async fn close(&self, tenant: &str, conv: &str) -> Result<Decided, OpError> {
        let rs = self.require(tenant)?;
        let now = self.now();
        let d = self
            .store
            .close(tenant, &settings(&rs), now, conv, "closed through the API")
            .await?
            .ok_or_else(|| {
                OpError::Conflict(format!("conversation {conv} is not open or queued"))
            })?;
        self.drain(tenant, now).await?;
        self.relay(tenant).await?;
        Ok(d)
    }

    /// Privacy erasure of conversations (see [`RoutingStore::erase`]); the slots it frees
    /// go to waiting conversations at once.
    pub async fn erase(
        &self,
        tenant: &str,
        convs: &[String],
    ) -> Result<super::store::RoutingErased, BackendError> {
        let now = self.now();
        let erased = self.store.erase(tenant, now, convs).await?;
        if erased.released > 0 {
            self.drain(tenant, now).await?;
            self.relay(tenant).await?;
        }
        Ok(erased)
    }

    /// Reopens a closed conversation: routed like a new message (sticky to its last agent
    /// within the window), through the rule that last served it.
    pub async fn reopen(&self, tenant: &str, conv: &str) -> Result<Decided, OpError> {
        let rs = self.require(tenant)?;
        let now = self.now();
        let (live, _) = self
            .store
            .conversation(tenant, conv)
            .await?
            .ok_or_else(|| OpError::UnknownConversation(conv.to_string()))?;
        if live.state != ConvState::Closed {
            return Err(OpError::Conflict(format!(
                "conversation {conv} is {}, not closed",
                live.state.as_str()
            )));
        }
        let rule = live.rule.as_deref().and_then(|r| rs.rule(r));
        let (target, priority, fallback) = match rule {
            Some(r) => (
                &r.target,
                r.priority,
                r.fallback.as_ref().map(|f| (f, r.overflow_after_ms)),
            ),
            None => (&rs.default, 0, None),
        };
        let d = self
            .route_api(
                &rs,
                conv,
                &live.channel,
                RouteMode::Reopen,
                rule.map(|r| r.id.as_str()),
                target,
                priority,
                fallback,
                live.last_agent.clone(),
                now,
            )
            .await?;
        self.relay(tenant).await?;
        Ok(d)
    }

    /// Moves a conversation to an agent (manual; refused if they are offline or full) or
    /// to a team (routed with the team's strategy; queued there if nobody can take it).
    pub async fn transfer(
        &self,
        tenant: &str,
        conv: &str,
        agent: Option<&str>,
        team: Option<&str>,
    ) -> Result<Decided, OpError> {
        let rs = self.require(tenant)?;
        let now = self.now();
        let d = match (agent, team) {
            (Some(a), None) => {
                let ag = rs
                    .agent(a)
                    .ok_or_else(|| OpError::UnknownAgent(a.to_string()))?;
                if !ag.assignable() {
                    return Err(OpError::Conflict(format!(
                        "agent {a} is a viewer and cannot be assigned"
                    )));
                }
                self.store
                    .transfer_agent(
                        tenant,
                        &settings(&rs),
                        now,
                        conv,
                        a,
                        &format!("transfer to {a}"),
                    )
                    .await??
            }
            (None, Some(t)) => {
                let target = rs
                    .team_target(t)
                    .ok_or_else(|| OpError::UnknownTeam(t.to_string()))?;
                let (live, _) = self
                    .store
                    .conversation(tenant, conv)
                    .await?
                    .ok_or_else(|| OpError::UnknownConversation(conv.to_string()))?;
                if !matches!(live.state, ConvState::Open | ConvState::Queued) {
                    return Err(TransferRefused::NotActive.into());
                }
                self.route_api(
                    &rs,
                    conv,
                    &live.channel,
                    RouteMode::Transfer,
                    live.rule.as_deref(),
                    &target,
                    live.priority,
                    None,
                    None,
                    now,
                )
                .await?
            }
            _ => {
                return Err(OpError::Conflict(
                    "give exactly one of `agent` and `team`".into(),
                ))
            }
        };
        if d.freed {
            self.drain(tenant, now).await?;
        }
        self.relay(tenant).await?;
        Ok(d)
    }

    #[allow(clippy::too_many_arguments)]
    async fn route_api(
        &self,
        rs: &Ruleset,
        conv: &str,
        channel: &str,
        mode: RouteMode,
        rule: Option<&str>,
        target: &Target,
        priority: u8,
        fallback: Option<(&Target, u64)>,
        last_agent: Option<String>,
        now: u64,
    ) -> Result<Decided, BackendError> {
        let agents: Vec<String> = target
            .members
            .iter()
            .map(|i| rs.agents[*i].id.clone())
            .chain(last_agent.clone())
            .collect();
        let snap = self
            .store
            .snapshot(
                &rs.tenant,
                &SnapshotRequest {
                    agents,
                    convs: Vec::new(),
                    queue_heads: 0,
                },
            )
            .await?;
        let ranked = rank(
            rs,
            &self.strategies,
            target,
            channel,
            &snap.agents,
            conv,
            last_agent.as_deref(),
            now,
        );
        let candidates: Vec<String> = ranked.iter().map(|c| c.agent.id.clone()).collect();
        let considered = ranked.len() as u32;
        drop(ranked);
        let item = RouteItem {
            event_id: String::new(),
            conv: conv.to_string(),
            channel: channel.to_string(),
            meta: String::new(),
            mode,
            rule: rule.map(str::to_string),
            target: target.key.clone(),
            queue: target.queue.clone(),
            team: target.team.clone(),
            strategy: target.strategy.clone(),
            priority,
            fallback_queue: fallback.map(|f| f.0.queue.clone()),
            fallback_team: fallback.and_then(|f| f.0.team.clone()),
            fallback_strategy: fallback.map(|f| f.0.strategy.clone()).unwrap_or_default(),
            overflow_ms: fallback.map_or(0, |f| f.1),
            reason: match mode {
                RouteMode::Transfer => format!(
                    "transfer → {}",
                    reason_prefix(None, target, rs).trim_start_matches("default → ")
                ),
                _ => format!("reopened; {}", reason_prefix(rule, target, rs)),
            },
            candidates,
            considered,
            sticky: true,
            offer: target.offer,
        };
        let excluded = Self::excluded(rs, now);
        let mut d = self
            .store
            .route(&rs.tenant, &settings(rs), now, &excluded, &[item])
            .await?;
        let d = d
            .pop()
            .ok_or_else(|| BackendError::Protocol("route returned nothing".into()))?;
        RoutingDecided {
            strategy: &d.strategy,
            action: &d.action,
        }
        .emit();
        Ok(d)
    }

    /// An agent's open conversations, oldest assignment first, `limit` after the cursor
    /// `after` (`<since ms>/<conversation>`, as the previous page's `next_after`).
    pub async fn agent_conversations(
        &self,
        tenant: &str,
        agent: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Listed)>, OpError> {
        let rs = self.require(tenant)?;
        if rs.agent(agent).is_none() {
            return Err(OpError::UnknownAgent(agent.to_string()));
        }
        let after = after.map(parse_cursor).transpose()?;
        let mut open = self.store.open_of(tenant, agent).await?;
        open.sort_by(|a, b| (a.live.opened_ms, &a.conv).cmp(&(b.live.opened_ms, &b.conv)));
        Ok(open
            .into_iter()
            .filter(|l| {
                after
                    .as_ref()
                    .is_none_or(|(ms, c)| (l.live.opened_ms, &l.conv) > (*ms, c))
            })
            .take(limit)
            .map(|l| (format!("{}/{}", l.live.opened_ms, l.conv), l))
            .collect())
    }

    /// The conversations waiting in `queue`, in service order, `limit` after the cursor
    /// `after` (`<sort key>/<conversation>`, as the previous page's `next_after`).
    pub async fn queue_conversations(
        &self,
        tenant: &str,
        queue: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Listed)>, OpError> {
        self.require(tenant)?;
        let after = after.map(parse_cursor).transpose()?;
        let listed = self.store.queued_in(tenant, queue, after, limit).await?;
        Ok(listed
            .into_iter()
            .map(|l| (format!("{}/{}", l.score.unwrap_or(0), l.conv), l))
            .collect())
    }

    pub async fn queues(&self, tenant: &str) -> Result<Vec<QueueDepth>, OpError> {
        self.require(tenant)?;
        Ok(self.store.queues(tenant).await?)
    }

    /// Every agent of the tenant with their live state.
    pub async fn agents(&self, tenant: &str) -> Result<Vec<Value>, OpError> {
        let rs = self.require(tenant)?;
        let ids: Vec<String> = rs.agents.iter().map(|a| a.id.clone()).collect();
        let snap = self
            .store
            .snapshot(
                tenant,
                &SnapshotRequest {
                    agents: ids,
                    convs: Vec::new(),
                    queue_heads: 0,
                },
            )
            .await?;
        let now = self.now();
        Ok(rs
            .agents
            .iter()
            .map(|a| {
                let l = snap.agents.get(&a.id).cloned().unwrap_or_default();
                json!({
                    "id": a.id,
                    "name": a.name,
                    "role": a.role,
                    "teams": a.teams,
                    "presence": l.presence,
                    "presence_since": l.since_ms,
                    "working": rs.is_working(a, now),
                    "load": l.load,
                    "capacity": l.capacity,
                    "channel_load": l.channel_load,
                    "channel_capacity": l.channel_capacity,
                    "last_assigned_ms": l.last_ms,
                    "missed_offers": l.missed_offers,
                })
            })
            .collect())
    }

    pub async fn conversation(&self, tenant: &str, conv: &str) -> Result<Value, OpError> {
        self.require(tenant)?;
        let (live, history) = self
            .store
            .conversation(tenant, conv)
            .await?
            .ok_or_else(|| OpError::UnknownConversation(conv.to_string()))?;
        let history: Vec<Value> = history
            .iter()
            .filter_map(|h| serde_json::from_str(h).ok())
            .collect();
        Ok(json!({ "conversation_id": conv, "state": live, "history": history }))
    }

    /// Agents by presence and the utilization of online agents, over every tenant (for
    /// gauges: no per-agent labels).
    pub async fn load_summary(&self) -> Result<LoadSummary, BackendError> {
        let mut s = LoadSummary::default();
        let mut ratios = Vec::new();
        for tenant in &self.tenants() {
            let Some(rs) = self.ruleset(tenant) else {
                continue;
            };
            let ids: Vec<String> = rs.agents.iter().map(|a| a.id.clone()).collect();
            let snap = self
                .store
                .snapshot(
                    tenant,
                    &SnapshotRequest {
                        agents: ids,
                        convs: Vec::new(),
                        queue_heads: 0,
                    },
                )
                .await?;
            for l in snap.agents.values() {
                match l.presence {
                    Presence::Online => {
                        s.online += 1;
                        if l.capacity > 0 {
                            ratios.push(l.load as f64 / l.capacity as f64);
                        }
                    }
                    Presence::Away => s.away += 1,
                    Presence::Offline => s.offline += 1,
                }
            }
            for q in self.store.queues(tenant).await? {
                s.queued += q.depth;
                if q.oldest_ms > 0 {
                    s.oldest_wait_ms = s.oldest_wait_ms.max(self.now().saturating_sub(q.oldest_ms));
                }
            }
        }
        if !ratios.is_empty() {
            s.utilization_min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
            s.utilization_max = ratios.iter().cloned().fold(0.0, f64::max);
            s.utilization_mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        }
        Ok(s)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct LoadSummary {
    pub online: u64,
    pub away: u64,
    pub offline: u64,
    pub utilization_min: f64,
    pub utilization_mean: f64,
    pub utilization_max: f64,
    pub queued: u64,
    pub oldest_wait_ms: u64,
}

/// The `kind = assignment` event for an outbox entry.
pub fn assignment_event(tenant: &str, e: &super::store::OutboxEntry) -> String {
    let meta: Value = serde_json::from_str(&e.meta).unwrap_or(Value::Null);
    let assignment: Value = serde_json::from_str(&e.assignment).unwrap_or(Value::Null);
    let at = ms_rfc3339(e.at_ms);
    let mut ev = serde_json::Map::new();
    ev.insert("schema".into(), SCHEMA_V1.into());
    ev.insert("event_id".into(), e.event_id.clone().into());
    ev.insert("kind".into(), "assignment".into());
    ev.insert("tenant".into(), tenant.into());
    ev.insert(
        "source".into(),
        meta.get("source").cloned().unwrap_or_else(|| "".into()),
    );
    ev.insert(
        "provider".into(),
        meta.get("provider")
            .cloned()
            .unwrap_or_else(|| "standard".into()),
    );
    ev.insert(
        "channel".into(),
        meta.get("channel")
            .cloned()
            .unwrap_or_else(|| Channel::Other.as_str().into()),
    );
    ev.insert("direction".into(), "inbound".into());
    ev.insert("conversation_id".into(), e.conv.clone().into());
    for k in ["contact", "business"] {
        if let Some(p) = meta.get(k).filter(|p| p.is_object()) {
            ev.insert(k.into(), p.clone());
        }
    }
    ev.insert("occurred_at".into(), at.clone().into());
    ev.insert("received_at".into(), at.into());
    ev.insert("assignment".into(), assignment);
    Value::Object(ev).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_adds_the_assignment_as_a_last_field() {
        let mut p = String::from("{\"a\":1}\n");
        splice_assignment(&mut p, "{\"agent\":\"x\"}");
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["assignment"]["agent"], "x");
        let mut p = String::from("{}");
        splice_assignment(&mut p, "{}");
        assert!(serde_json::from_str::<Value>(&p).is_ok(), "{p}");
    }
}
