//! Routing state: presence, capacity and load per agent, conversation ownership, queues,
//! timers and the outbox of assignment changes — and the atomic operations on it.
//!
//! The engine computes *what it would like* (a plan and a ranked list of candidates, from a
//! snapshot); each operation here then decides *what happens* in one atomic step against
//! the current state: it re-checks presence and capacity for each candidate in order and
//! takes the first that still qualifies, or queues the conversation. So two routers working
//! from the same stale snapshot can both ask for the last free slot of an agent, but only one
//! gets it: capacity is never exceeded, whatever the number of replicas.
//!
//! Two implementations with one contract, checked by one conformance suite
//! (`tests/it/routing.rs`): [`memory`] (in-process) and [`redis`] (one Lua script call per
//! operation, every key of a tenant in one hash slot).
//!
//! Contract of every implementation:
//! - `route` with an `event_id` among the conversation's last [`DECISIONS_KEPT`] decided
//!   returns that decision unchanged and changes nothing (idempotent reprocessing after a
//!   crash);
//! - an agent's open and offered conversations never exceed their capacity, in total or per
//!   channel (an offer holds a slot until it is answered or expires);
//! - a conversation is in at most one state (open with one agent, offered to one agent,
//!   queued in one queue, or closed); every change of state increments its `seq`, is
//!   appended to its history and, when no message carries it, to the outbox;
//! - a rejected or expired offer puts the conversation back in its queue with its original
//!   time queued, and records the agent as having declined it;
//! - queues are served by priority (higher first), then by time queued (oldest first),
//!   then by conversation id.

pub mod memory;
pub mod outcome;
pub mod redis;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::accept::BackendError;
use crate::config::routing::{Offer, Presence};

/// What an operation needs to know about the tenant's policies (from its rule set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub sticky_window_ms: u64,
    pub offline_grace_ms: u64,
    /// Offline agents keep their open conversations (no requeue).
    pub keep_offline: bool,
    /// 0 = never auto-close.
    pub auto_close_after_ms: u64,
    pub max_queued: u64,
    /// How long a closed conversation's state (last agent, history) is kept.
    pub closed_ttl_ms: u64,
}

/// Decisions remembered per conversation for idempotent reprocessing (its most recent
/// ones). A crashed router's pending entries are reprocessed after `claim_idle_ms`; a
/// conversation rarely gets this many more messages in between, and if it does the older
/// ones are decided again from the current state (an open conversation keeps its owner, so
/// capacity is still counted once).
pub const DECISIONS_KEPT: usize = 8;
/// The idle index (auto-close) is updated at most this often per conversation on messages.
pub const TOUCH_EVERY_MS: u64 = 60_000;
/// Agents remembered per conversation as having declined it (the most recent).
pub const DECLINED_KEPT: usize = 20;
/// History entries kept per conversation (the most recent changes; the full record of
/// assignments is on the events stream).
pub const HISTORY_KEPT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvState {
    Open,
    /// Offered to an agent (who holds a slot for it) until they answer or the offer expires.
    Offered,
    Queued,
    Closed,
}

impl ConvState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvState::Open => "open",
            ConvState::Offered => "offered",
            ConvState::Queued => "queued",
            ConvState::Closed => "closed",
        }
    }
    pub fn parse(s: &str) -> Option<ConvState> {
        match s {
            "open" => Some(ConvState::Open),
            "offered" => Some(ConvState::Offered),
            "queued" => Some(ConvState::Queued),
            "closed" => Some(ConvState::Closed),
            _ => None,
        }
    }
}

/// An agent's live state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentLive {
    pub presence: Presence,
    /// When the presence last changed (ms).
    pub since_ms: u64,
    pub capacity: u32,
    pub channel_capacity: HashMap<String, u32>,
    pub load: u32,
    pub channel_load: HashMap<String, u32>,
    /// Last time a conversation was assigned to them (ms; 0 = never).
    pub last_ms: u64,
    /// Their teams (from the rule set), to report the team of a sticky assignment.
    #[serde(skip)]
    pub teams: Vec<String>,
    /// Offers they let expire since they last answered one.
    pub missed_offers: u32,
}

/// A conversation's live state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvLive {
    pub state: ConvState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub strategy: String,
    pub priority: u8,
    pub channel: String,
    /// When it began waiting for an agent (queued, or routed and assigned at once; a
    /// requeue keeps it) / was assigned / closed (ms; 0 = not applicable).
    pub queued_ms: u64,
    pub opened_ms: u64,
    pub closed_ms: u64,
    pub seq: u64,
    /// The target it waits for or was last routed to (`rule:<id>`, `rule:<id>:fallback`,
    /// `default`, `team:<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The contact's last message (ms; 0 = none).
    pub last_message_ms: u64,
    /// Offered: when the offer expires (ms; 0 = not offered).
    pub offer_expires_ms: u64,
    /// Agents who rejected it or let its offer expire (most recent last): offered again
    /// only when no one else qualifies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub declined: Vec<String>,
}

/// A queued conversation, as seen by a drain.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedConv {
    pub conv: String,
    pub queue: String,
    pub priority: u8,
    pub queued_ms: u64,
    pub channel: String,
    pub last_agent: Option<String>,
    /// The target it waits for ([`crate::config::routing::Target::key`]); None for a
    /// conversation queued before targets were recorded.
    pub target: Option<String>,
    pub rule: Option<String>,
    /// Agents who rejected it or let its offer expire.
    pub declined: Vec<String>,
}

/// A conversation in a listing (an agent's open ones, a queue's waiting ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub conv: String,
    pub live: ConvLive,
    /// Its parties: JSON `{source, provider, channel, contact, business}`.
    pub meta: String,
    /// In a queue: its position in service order, from 1.
    pub position: Option<u64>,
    /// In a queue: its sort key ([`queue_score`]), the paging cursor.
    pub score: Option<u64>,
}

/// What a snapshot should contain.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest {
    pub agents: Vec<String>,
    pub convs: Vec<String>,
    /// Include the first `n` conversations of every non-empty queue (0: none).
    pub queue_heads: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The agents version when it was read (see [`AgentsChange`]).
    pub av: u64,
    pub agents: HashMap<String, AgentLive>,
    pub convs: HashMap<String, ConvLive>,
    /// Heads of every non-empty queue, merged in service order.
    pub queued: Vec<QueuedConv>,
}

/// Why the engine asks for a routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// A message from the contact: the decision rides on the event.
    Message,
    /// The API reopens a closed conversation.
    Reopen,
    /// The API moves a conversation to another team (releasing its owner).
    Transfer,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Message => "message",
            RouteMode::Reopen => "reopen",
            RouteMode::Transfer => "transfer",
        }
    }
}

/// One routing decision to make.
#[derive(Debug, Clone)]
pub struct RouteItem {
    /// The event the decision is for (empty for API operations).
    pub event_id: String,
    pub conv: String,
    pub channel: String,
    /// JSON `{source, provider, channel, contact, business}`, kept with the conversation for
    /// the assignment events it will produce.
    pub meta: String,
    pub mode: RouteMode,
    pub rule: Option<String>,
    /// The target's key ([`crate::config::routing::Target::key`]), kept with the conversation
    /// while it waits so that it is served with that target's requirements.
    pub target: String,
    pub queue: String,
    pub team: Option<String>,
    pub strategy: String,
    pub priority: u8,
    /// The fallback's queue (which is also its target key), team and strategy.
    pub fallback_queue: Option<String>,
    pub fallback_team: Option<String>,
    pub fallback_strategy: String,
    pub overflow_ms: u64,
    /// "rule vip-es → team es-sales, least_loaded"
    pub reason: String,
    /// Ranked, best first.
    pub candidates: Vec<String>,
    pub considered: u32,
    /// Prefer the conversation's last agent when it comes back within the sticky window
    /// (the store checks the window, presence, capacity and the `excluded` list).
    pub sticky: bool,
    /// Offer rather than assign (the target's rule has `offer_timeout_secs`).
    pub offer: Option<Offer>,
}

/// What one call changed in the agents, so that an engine's copy of them stays exact.
///
/// The store keeps an *agents version* per tenant, increased by every call that changes
/// any agent's presence, capacity, load or last assignment. A copy read at version `v` is
/// exact while the version is `v`; a call that started at `before` and changed only loads
/// reports them here, so the copy can follow it to `after`. Any other change (presence,
/// capacity, a rule set) only moves the version: the copy is then read again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentsChange {
    pub before: u64,
    pub after: u64,
    pub loads: Vec<AgentLoad>,
}

/// An agent's loads after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLoad {
    pub id: String,
    pub load: u32,
    /// Their last assignment, when this call made one.
    pub last_ms: Option<u64>,
    pub channel_load: Vec<(String, u32)>,
}

impl AgentsChange {
    /// Applies the loads to `agents` (which must be the state at `before`).
    pub fn apply(&self, agents: &mut HashMap<String, AgentLive>) {
        for l in &self.loads {
            if let Some(a) = agents.get_mut(&l.id) {
                a.load = l.load;
                if let Some(ms) = l.last_ms {
                    a.last_ms = ms;
                }
                a.channel_load = l.channel_load.iter().cloned().collect();
            }
        }
    }
}

/// The outcome of a route call made against a version of the agents.
#[derive(Debug, Clone)]
pub enum Routed {
    /// The agents changed since that version: nothing was decided.
    Stale { current: u64 },
    Done {
        decisions: Vec<Decided>,
        change: AgentsChange,
    },
}

/// One queued conversation to try to assign.
#[derive(Debug, Clone)]
pub struct DequeueItem {
    pub conv: String,
    /// The queue the engine saw it in (skipped if it has moved since).
    pub queue: String,
    pub team: Option<String>,
    pub strategy: String,
    pub reason: String,
    pub candidates: Vec<String>,
    pub considered: u32,
    /// Offer rather than assign.
    pub offer: Option<Offer>,
}

/// An agent's answer to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Reject,
}

/// Why an answer to an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerRefused {
    #[error("the conversation has no pending offer")]
    NoOffer,
    #[error("the conversation is offered to another agent")]
    NotYours,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The `assignment` object (JSON).
    pub assignment: String,
    pub action: String,
    pub strategy: String,
    /// Capacity was released (a drain may assign a waiting conversation).
    pub freed: bool,
    /// How long it waited before this assignment.
    pub wait_ms: Option<u64>,
    /// Eligible candidates the engine ranked for it.
    pub candidates: u32,
}

/// A refused manual transfer to an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefused {
    #[error("the conversation is not open or queued")]
    NotActive,
    #[error("agent {0} is offline")]
    Offline(String),
    #[error("agent {0} has no capacity left ({1}/{2} open)")]
    Full(String, u32, u32),
    #[error("agent {0} has no capacity left on this channel")]
    ChannelFull(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub requeued: u32,
    pub overflowed: u32,
    pub closed: u32,
    /// Offers that expired unanswered (their conversations wait for the next candidate).
    pub expired: u32,
}

impl SweepReport {
    pub fn changed(&self) -> bool {
        self.requeued + self.overflowed + self.closed + self.expired > 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub depth: u64,
    /// When its oldest conversation was queued (ms).
    pub oldest_ms: u64,
}

/// An assignment change waiting to be published on the events stream.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Position in the outbox (for acknowledging).
    pub id: String,
    pub event_id: String,
    pub conv: String,
    pub meta: String,
    pub assignment: String,
    pub at_ms: u64,
}

/// The stored rule set of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulesetRecord {
    pub version: u64,
    /// The `RoutingConfig` as JSON.
    pub json: String,
    /// Where the last change came from: `file` or `api`.
    pub origin: String,
    /// SHA-256 (hex) of the configuration file's routing section when it was last applied,
    /// so that an edited file wins over an older API change at the next start.
    pub file_digest: String,
    pub updated_ms: u64,
}

/// Capacity and initial presence of one agent, written with a rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub id: String,
    pub capacity: u32,
    pub channel_capacity: Vec<(String, u32)>,
    pub initial_presence: Presence,
    pub teams: Vec<String>,
}

/// What [`RoutingStore::erase`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RoutingErased {
    /// Conversation states deleted (with their parties, decisions and history).
    pub conversations: u64,
    /// Of those, open ones: their agent's slot was freed.
    pub released: u64,
    /// Of those, queued ones: taken out of their queue.
    pub unqueued: u64,
    /// Outbox entries (assignment changes not yet published) deleted.
    pub outbox: u64,
}

/// A rule set write lost a race: the version in the store is now this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rule set changed meanwhile (version {0} is current)")]
pub struct VersionConflict(pub u64);

/// The configured routing store (follows the backend).
#[derive(Clone)]
pub enum RoutingStore {
    Memory(memory::MemoryStore),
    Redis(Box<redis::RedisStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            RoutingStore::Memory($s) => Ok($e),
            RoutingStore::Redis($s) => $e.await,
        }
    };
}

impl RoutingStore {
    pub fn name(&self) -> &'static str {
        match self {
            RoutingStore::Memory(_) => "memory",
            RoutingStore::Redis(_) => "redis",
        }
    }

    pub async fn apply_ruleset(
        &self,
        tenant: &str,
        record: &RulesetRecord,
        agents: &[AgentSpec],
        expected_version: Option<u64>,
        now_ms: u64,
    ) -> Result<Result<(), VersionConflict>, BackendError> {
        dispatch!(self, s => s.apply_ruleset(tenant, record, agents, expected_version, now_ms))
    }

    pub async fn ruleset(&self, tenant: &str) -> Result<Option<RulesetRecord>, BackendError> {
        dispatch!(self, s => s.ruleset(tenant))
    }

    /// Current version per tenant (0 = none stored).
    pub async fn ruleset_versions(&self, tenants: &[String]) -> Result<Vec<u64>, BackendError> {
        dispatch!(self, s => s.ruleset_versions(tenants))
    }

    pub async fn snapshot(
        &self,
        tenant: &str,
        req: &SnapshotRequest,
    ) -> Result<Snapshot, BackendError> {
        dispatch!(self, s => s.snapshot(tenant, req))
    }

    /// `excluded`: agents that must not get a conversation now even as its last agent
    /// (outside working hours, viewers, removed from the rule set).
    pub async fn route(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        excluded: &[String],
        items: &[RouteItem],
    ) -> Result<Vec<Decided>, BackendError> {
        match self
            .route_at(tenant, settings, now_ms, excluded, items, None)
            .await?
        {
            Routed::Done { decisions, .. } => Ok(decisions),
            Routed::Stale { .. } => Err(BackendError::Protocol(
                "route without a version came back stale".into(),
            )),
        }
    }

    /// [`RoutingStore::route`], only if the agents version is still `expected` (the one the
    /// candidates were ranked against; None: whatever it is).
    pub async fn route_at(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        excluded: &[String],
        items: &[RouteItem],
        expected: Option<u64>,
    ) -> Result<Routed, BackendError> {
        dispatch!(self, s => s.route(tenant, settings, now_ms, excluded, items, expected))
    }

    pub async fn dequeue(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        items: &[DequeueItem],
    ) -> Result<Vec<Option<Decided>>, BackendError> {
        Ok(self
            .dequeue_tracked(tenant, settings, now_ms, items)
            .await?
            .0)
    }

    /// [`RoutingStore::dequeue`], with what it changed in the agents.
    pub async fn dequeue_tracked(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        items: &[DequeueItem],
    ) -> Result<(Vec<Option<Decided>>, AgentsChange), BackendError> {
        dispatch!(self, s => s.dequeue(tenant, settings, now_ms, items))
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
        dispatch!(self, s => s.transfer_agent(tenant, settings, now_ms, conv, agent, reason))
    }

    /// An agent's answer to the conversation's pending offer. `agent`: the answering
    /// agent (None: whoever holds the offer, for owners and admins).
    pub async fn answer(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        conv: &str,
        agent: Option<&str>,
        answer: Answer,
    ) -> Result<Result<Decided, AnswerRefused>, BackendError> {
        dispatch!(self, s => s.answer(tenant, settings, now_ms, conv, agent, answer))
    }

    pub async fn close(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        conv: &str,
        reason: &str,
    ) -> Result<Option<Decided>, BackendError> {
        dispatch!(self, s => s.close(tenant, settings, now_ms, conv, reason))
    }

    /// Returns the previous presence.
    pub async fn set_presence(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
        agent: &str,
        presence: Presence,
    ) -> Result<Presence, BackendError> {
        dispatch!(self, s => s.set_presence(tenant, settings, now_ms, agent, presence))
    }

    pub async fn sweep(
        &self,
        tenant: &str,
        settings: &Settings,
        now_ms: u64,
    ) -> Result<SweepReport, BackendError> {
        dispatch!(self, s => s.sweep(tenant, settings, now_ms))
    }

    pub async fn queues(&self, tenant: &str) -> Result<Vec<QueueDepth>, BackendError> {
        dispatch!(self, s => s.queues(tenant))
    }

    /// A conversation's state and its history (oldest first, JSON entries).
    pub async fn conversation(
        &self,
        tenant: &str,
        conv: &str,
    ) -> Result<Option<(ConvLive, Vec<String>)>, BackendError> {
        dispatch!(self, s => s.conversation(tenant, conv))
    }

    /// Privacy erasure: forgets conversations, atomically — an open one frees its agent's
    /// slot, a queued one leaves its queue, and its state (parties, decisions, history),
    /// idle entry and unpublished outbox entries are deleted. No assignment event is made
    /// (it would carry the contact).
    pub async fn erase(
        &self,
        tenant: &str,
        now_ms: u64,
        convs: &[String],
    ) -> Result<RoutingErased, BackendError> {
        dispatch!(self, s => s.erase(tenant, now_ms, convs))
    }

    /// An agent's open conversations (any order).
    pub async fn open_of(&self, tenant: &str, agent: &str) -> Result<Vec<Listed>, BackendError> {
        dispatch!(self, s => s.open_of(tenant, agent))
    }

    /// Up to `limit` conversations waiting in `queue`, in service order, after the cursor
    /// `(score, conv)` when given.
    pub async fn queued_in(
        &self,
        tenant: &str,
        queue: &str,
        after: Option<(u64, String)>,
        limit: usize,
    ) -> Result<Vec<Listed>, BackendError> {
        dispatch!(self, s => s.queued_in(tenant, queue, after, limit))
    }

    pub async fn outbox(&self, tenant: &str, max: usize) -> Result<Vec<OutboxEntry>, BackendError> {
        dispatch!(self, s => s.outbox(tenant, max))
    }

    pub async fn outbox_ack(&self, tenant: &str, ids: &[String]) -> Result<(), BackendError> {
        dispatch!(self, s => s.outbox_ack(tenant, ids))
    }
}

/// The id of the assignment event of change `seq` of a conversation: the same on every
/// relay of that change (SHA-1, the hash Redis scripts have, truncated like event ids).
pub fn outbox_event_id(conv: &str, seq: u64) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("switchboard:assignment:v1:{conv}:{seq}").as_bytes());
    format!("evt_{}", &hex::encode(digest)[..32])
}

/// Sort key of a queued conversation: priority (higher first), then time queued.
pub fn queue_score(priority: u8, queued_ms: u64) -> f64 {
    (100u64.saturating_sub(priority as u64) * 10_000_000_000_000 + queued_ms) as f64
}

/// `1 candidate` / `3 candidates`.
pub fn candidates_text(n: u32) -> String {
    if n == 1 {
        "1 candidate".into()
    } else {
        format!("{n} candidates")
    }
}

/// Whole seconds, for reasons.
pub fn secs_text(ms: u64) -> String {
    format!("{} s", ms / 1000)
}
