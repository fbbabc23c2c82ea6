//! A tenant's routing configuration (its "rule set": agents, teams, calendars, rules) as
//! written in `config.toml` or sent to `PUT /v1/tenants/{t}/routing`, and its compiled form.
//!
//! The file/API shape ([`RoutingConfig`]) is validated once into a [`Ruleset`]: regexes
//! compiled, time zones resolved, team membership indexed, every reference checked. The
//! engine only ever sees a `Ruleset`; a configuration that does not validate never replaces
//! the one in force.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::Channel;

fn default_strategy() -> String {
    "least_loaded".into()
}
fn default_sticky_window_secs() -> u64 {
    7 * 24 * 3600
}
fn default_offline_grace_secs() -> u64 {
    300
}
fn default_auto_close_after_secs() -> u64 {
    24 * 3600
}
fn default_max_queued() -> u64 {
    10_000
}
fn default_capacity() -> u32 {
    5
}

/// What happens to an agent's open conversations when they go offline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// After `offline_grace_secs`, their open conversations go back to their queues.
    #[default]
    Requeue,
    /// They keep them (new conversations still never go to an offline agent).
    Keep,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    #[default]
    Agent,
    /// Read-only: never assigned.
    Viewer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Accepts new conversations.
    Online,
    /// Keeps the open ones, takes no new ones.
    Away,
    /// Takes nothing; open ones are requeued after the grace period (or kept, by policy).
    #[default]
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }
    pub fn parse(s: &str) -> Option<Presence> {
        match s {
            "online" => Some(Presence::Online),
            "away" => Some(Presence::Away),
            "offline" => Some(Presence::Offline),
            _ => None,
        }
    }
}

/// The routing configuration of one tenant (`[tenants.<id>.routing]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Target of a conversation no rule matches: a team...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_team: Option<String>,
    /// ...or a list of agents (when neither is set: every assignable agent of the tenant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_agents: Vec<String>,
    #[serde(default = "default_strategy")]
    pub default_strategy: String,
    /// A conversation that comes back within this long after it was closed returns to its
    /// last agent while that agent is online with capacity. 0 disables it.
    #[serde(default = "default_sticky_window_secs")]
    pub sticky_window_secs: u64,
    /// How long an agent may stay offline before their open conversations are requeued.
    #[serde(default = "default_offline_grace_secs")]
    pub offline_grace_secs: u64,
    #[serde(default)]
    pub offline_policy: OfflinePolicy,
    /// A conversation without a message from the contact for this long is closed, which
    /// frees its agent's capacity (WhatsApp's customer service window is 24 h). 0 = never.
    #[serde(default = "default_auto_close_after_secs")]
    pub auto_close_after_secs: u64,
    /// Most conversations waiting in this tenant's queues; past it a new conversation is
    /// published unassigned (action `unrouted`) rather than growing the queue.
    #[serde(default = "default_max_queued")]
    pub max_queued: u64,
    /// Named contact lists (VIPs, blocked, key accounts): contact ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contact_lists: BTreeMap<String, Vec<String>>,
    /// Named opening hours, for `within_hours` / `outside_hours` and agents' working hours.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calendars: BTreeMap<String, CalendarConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, TeamConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Evaluated in order; the first whose conditions all hold decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// Skill → proficiency 1 (basic) ..= 10 (expert).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skills: BTreeMap<String, u8>,
    /// Languages spoken (ISO 639-1 codes such as "es", "en").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Most open conversations at once, over all channels.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Channel → most open conversations on that channel (within `capacity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channel_capacity: BTreeMap<String, u32>,
    /// Calendar (from `calendars`) of the agent's working hours; outside them the agent
    /// gets no new conversations even when online. None: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_hours: Option<String>,
    /// Presence before anyone sets it through the API (default offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: None,
            role: Role::Agent,
            teams: Vec::new(),
            skills: BTreeMap::new(),
            languages: Vec::new(),
            capacity: default_capacity(),
            channel_capacity: BTreeMap::new(),
            working_hours: None,
            presence: None,
        }
    }
}

/// Weekly opening hours in a time zone, with closed days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// IANA name, e.g. "Europe/Madrid", "America/Sao_Paulo", "UTC".
    pub timezone: String,
    /// Day → ranges "HH:MM-HH:MM" in local time; "22:00-06:00" runs past midnight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hours: BTreeMap<String, Vec<String>>,
    /// Local dates (YYYY-MM-DD) closed all day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Stable id, recorded on every assignment the rule makes.
    pub id: String,
    #[serde(default)]
    pub when: Conditions,
    /// Target: a team...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// ...or named agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Default: the tenant's `default_strategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// 0..=100; higher is served first from a queue.
    #[serde(default)]
    pub priority: u8,
    /// Skills every candidate must have (the `skills` strategy ranks by proficiency in them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
    /// Candidates must speak one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Where the conversation goes after waiting `overflow_after_secs` in the target's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_team: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_agents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow_after_secs: Option<u64>,
    /// Offer each conversation this rule (or its fallback) routes to the chosen agent, who
    /// has this long to accept or reject it (a slot of theirs is held meanwhile); without an
    /// answer it goes to the next candidate. Absent: assigned at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_timeout_secs: Option<u64>,
    /// With offers: after this many offers missed in a row an agent is set `away`
    /// (default 3; 0 never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_missed_offers: Option<u32>,
}

/// Conditions of a rule. All that are set must hold; within a list, any value matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Business ids (phone_number_id, page id, business number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub businesses: Vec<String>,
    /// Contact id prefixes, e.g. country codes "34", "55".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact_prefixes: Vec<String>,
    /// Names of `contact_lists` the contact must be on (any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact_lists: Vec<String>,
    /// Words or phrases in the message text (case-insensitive, whole words).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// A regular expression the message text must match (Rust `regex` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_regex: Option<String>,
    /// The contact's language, when the provider tells it (e.g. Telegram).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Message types (text, image, interactive, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_types: Vec<String>,
    /// true: the message came through a referral (ad, link); false: it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<bool>,
    /// Referral/ad ids (WhatsApp `referral.source_id`, Messenger `ref`/`ad_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referral_ids: Vec<String>,
    /// Name of a calendar that must be open now...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_hours: Option<String>,
    /// ...or closed now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_hours: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// Per weekday (Monday = 0), open minute ranges [start, end) within the local day.
    days: [Vec<(u16, u16)>; 7],
    holidays: HashSet<Date>,
}

impl Calendar {
    pub fn is_open(&self, now_ms: u64) -> bool {
        let Ok(ts) = Timestamp::from_millisecond(now_ms as i64) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone());
        if self.holidays.contains(&local.date()) {
            return false;
        }
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.days[day]
            .iter()
            .any(|(s, e)| *s <= minute && minute < *e)
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    pub teams: Vec<String>,
    pub skills: HashMap<String, u8>,
    pub languages: Vec<String>,
    pub capacity: u32,
    pub channel_capacity: HashMap<String, u32>,
    pub working_hours: Option<usize>,
    pub initial_presence: Presence,
}

impl Agent {
    pub fn assignable(&self) -> bool {
        self.role != Role::Viewer
    }
}

/// Who a conversation may go to, and how the choice is made.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which target this is, recorded with a waiting conversation so that whoever serves
    /// the queue matches it against this target's requirements: `default`, `rule:<id>`,
    /// `rule:<id>:fallback`, or `team:<id>` (a transfer to a team).
    pub key: String,
    /// The queue conversations wait in when nobody is eligible: `team:<id>` (a rule or the
    /// default naming a team), `rule:<id>` / `default` for lists of agents, and
    /// `rule:<id>:fallback` for every fallback.
    pub queue: String,
    pub team: Option<String>,
    /// Indexes into [`Ruleset::agents`].
    pub members: Vec<usize>,
    pub strategy: String,
    pub skills: Vec<String>,
    pub languages: Vec<String>,
    /// Conversations for this target are offered rather than assigned (its rule's
    /// `offer_timeout_secs`).
    pub offer: Option<Offer>,
}

/// How a rule offers conversations (see [`RuleConfig::offer_timeout_secs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub timeout_ms: u64,
    /// Missed in a row before the agent goes `away` (0: never).
    pub max_missed: u32,
}

/// Default of [`RuleConfig::max_missed_offers`].
pub const DEFAULT_MAX_MISSED_OFFERS: u32 = 3;
/// Longest offer timeout a rule may set.
pub const MAX_OFFER_TIMEOUT_SECS: u64 = 3600;

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub when: CompiledConditions,
    pub target: Target,
    pub priority: u8,
    pub fallback: Option<Target>,
    pub overflow_after_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct CompiledConditions {
    pub channels: Vec<Channel>,
    pub providers: Vec<String>,
    pub sources: Vec<String>,
    pub businesses: Vec<String>,
    pub contact_prefixes: Vec<String>,
    /// Union of the named lists.
    pub contacts: Option<HashSet<String>>,
    /// Lower-cased.
    pub keywords: Vec<String>,
    pub text_regex: Option<regex::Regex>,
    pub languages: Vec<String>,
    pub message_types: Vec<String>,
    pub referral: Option<bool>,
    pub referral_ids: Vec<String>,
    pub within_hours: Option<usize>,
    pub outside_hours: Option<usize>,
}

/// A validated, compiled rule set of one tenant.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub tenant: String,
    /// Increases with every change; recorded in Redis so that every replica converges.
    pub version: u64,
    pub config: RoutingConfig,
    /// Sorted by id.
    pub agents: Vec<Agent>,
    pub agent_index: HashMap<String, usize>,
    pub calendars: Vec<Calendar>,
    pub rules: Vec<Rule>,
    pub default: Target,
    pub sticky_window_ms: u64,
    pub offline_grace_ms: u64,
    pub offline_policy: OfflinePolicy,
    pub auto_close_after_ms: u64,
    pub max_queued: u64,
}

impl Ruleset {
    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agent_index.get(id).map(|i| &self.agents[*i])
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    pub fn is_working(&self, agent: &Agent, now_ms: u64) -> bool {
        agent
            .working_hours
            .is_none_or(|c| self.calendars[c].is_open(now_ms))
    }

    /// The target behind a queue name, for a waiting conversation whose target
    /// ([`Ruleset::target_by_key`]) is gone (its rule was removed since it was queued): a
    /// team queue then still serves the team, anything else falls back to the default.
    pub fn target_for_queue(&self, queue: &str) -> std::borrow::Cow<'_, Target> {
        use std::borrow::Cow;
        if self.default.queue == queue {
            return Cow::Borrowed(&self.default);
        }
        for r in &self.rules {
            if r.target.queue == queue {
                return Cow::Borrowed(&r.target);
            }
            if let Some(fb) = r.fallback.as_ref().filter(|fb| fb.queue == queue) {
                return Cow::Borrowed(fb);
            }
        }
        match queue
            .strip_prefix("team:")
            .and_then(|t| self.team_target(t))
        {
            Some(t) => Cow::Owned(t),
            None => Cow::Borrowed(&self.default),
        }
    }

    /// The target a waiting conversation was queued for (its key, see [`Target::key`]),
    /// with this rule set's requirements; None when that rule is gone.
    pub fn target_by_key(&self, key: &str) -> Option<std::borrow::Cow<'_, Target>> {
        use std::borrow::Cow;
        if key == self.default.key {
            return Some(Cow::Borrowed(&self.default));
        }
        if let Some(t) = key.strip_prefix("team:") {
            return self.team_target(t).map(Cow::Owned);
        }
        for r in &self.rules {
            if r.target.key == key {
                return Some(Cow::Borrowed(&r.target));
            }
            if let Some(fb) = r.fallback.as_ref().filter(|fb| fb.key == key) {
                return Some(Cow::Borrowed(fb));
            }
        }
        None
    }

    /// Whether conversations can wait in `queue` under this rule set.
    pub fn has_queue(&self, queue: &str) -> bool {
        self.default.queue == queue
            || queue
                .strip_prefix("team:")
                .is_some_and(|t| self.config.teams.contains_key(t))
            || self.rules.iter().any(|r| {
                r.target.queue == queue || r.fallback.as_ref().is_some_and(|f| f.queue == queue)
            })
    }

    /// A target for a transfer to a team (any team of the tenant).
    pub fn team_target(&self, team: &str) -> Option<Target> {
        if !self.config.teams.contains_key(team) {
            return None;
        }
        Some(Target {
            key: format!("team:{team}"),
            queue: format!("team:{team}"),
            team: Some(team.to_string()),
            members: self.team_members(team),
            strategy: self.config.default_strategy.clone(),
            skills: Vec::new(),
            languages: Vec::new(),
            offer: None,
        })
    }

    fn team_members(&self, team: &str) -> Vec<usize> {
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.teams.iter().any(|t| t == team))
            .map(|(i, _)| i)
            .collect()
    }

    /// Compiles and validates `config`; each error names the key as `<at>.<key>`.
    pub fn compile(
        tenant: &str,
        version: u64,
        config: RoutingConfig,
        at: &str,
        strategies: &dyn Fn(&str) -> bool,
    ) -> Result<Ruleset, Vec<String>> {
        let mut errs = Vec::new();
        let c = &config;

        // Calendars.
        let mut calendar_index = HashMap::new();
        let mut calendars = Vec::new();
        for (name, cal) in &c.calendars {
            match compile_calendar(cal) {
                Ok(compiled) => {
                    calendar_index.insert(name.clone(), calendars.len());
                    calendars.push(compiled);
                }
                Err(why) => errs.push(format!("{at}.calendars.{name}: {why}")),
            }
        }
        let calendar_ref = |key: String, name: &str, errs: &mut Vec<String>| -> Option<usize> {
            match calendar_index.get(name) {
                Some(i) => Some(*i),
                None => {
                    errs.push(format!(
                        "{key} = {name:?}: no calendar {name:?} in {at}.calendars ({})",
                        known(c.calendars.keys())
                    ));
                    None
                }
            }
        };

        for id in c.teams.keys() {
            if !valid_ref_id(id) {
                errs.push(format!(
                    "{at}.teams.{id}: ids use letters, digits, '_', '-', '.' (1-64 chars)"
                ));
            }
        }

        // Agents.
        let mut agents = Vec::new();
        for (id, a) in &c.agents {
            let key = format!("{at}.agents.{id}");
            if !valid_ref_id(id) {
                errs.push(format!(
                    "{key}: ids use letters, digits, '_', '-', '.' (1-64 chars)"
                ));
            }
            for t in &a.teams {
                if !c.teams.contains_key(t) {
                    errs.push(format!(
                        "{key}.teams: no team {t:?} in {at}.teams ({})",
                        known(c.teams.keys())
                    ));
                }
            }
            for (skill, level) in &a.skills {
                if !(1..=10).contains(level) {
                    errs.push(format!(
                        "{key}.skills.{skill} = {level}: proficiency is 1 (basic) ..= 10 (expert)"
                    ));
                }
            }
            if a.capacity > 10_000 {
                errs.push(format!("{key}.capacity = {}: use 0..=10000", a.capacity));
            }
            for (ch, n) in &a.channel_capacity {
                if parse_channel(ch).is_none() {
                    errs.push(format!(
                        "{key}.channel_capacity.{ch}: unknown channel (use {})",
                        CHANNELS.join(", ")
                    ));
                }
                if *n > a.capacity {
                    errs.push(format!(
                        "{key}.channel_capacity.{ch} = {n}: above the agent's capacity ({})",
                        a.capacity
                    ));
                }
            }
            let working_hours = a
                .working_hours
                .as_deref()
                .and_then(|n| calendar_ref(format!("{key}.working_hours"), n, &mut errs));
            agents.push(Agent {
                id: id.clone(),
                name: a.name.clone(),
                role: a.role,
                teams: a.teams.clone(),
                skills: a.skills.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                languages: a.languages.iter().map(|l| l.to_ascii_lowercase()).collect(),
                capacity: a.capacity,
                channel_capacity: a
                    .channel_capacity
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                working_hours,
                initial_presence: a.presence.unwrap_or_default(),
            });
        }
        let agent_index: HashMap<String, usize> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();

        let strategy_ok = |key: String, s: &str, errs: &mut Vec<String>| {
            if !strategies(s) {
                errs.push(format!(
                    "{key} = {s:?}: unknown strategy (built in: round_robin, least_loaded, skills, sticky_owner, manual)"
                ));
            }
        };
        strategy_ok(
            format!("{at}.default_strategy"),
            &c.default_strategy,
            &mut errs,
        );

        let build_target = |key: &str,
                            target_key: String,
                            queue: String,
                            team: &Option<String>,
                            list: &[String],
                            strategy: &str,
                            skills: &[String],
                            languages: &[String],
                            errs: &mut Vec<String>|
         -> Target {
            let members = match (team, list.is_empty()) {
                (Some(_), false) => {
                    errs.push(format!("{key}: set a team or a list of agents, not both"));
                    Vec::new()
                }
                (Some(t), true) => {
                    if !c.teams.contains_key(t) {
                        errs.push(format!(
                            "{key} team {t:?}: no such team in {at}.teams ({})",
                            known(c.teams.keys())
                        ));
                    }
                    agents
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.teams.iter().any(|x| x == t))
                        .map(|(i, _)| i)
                        .collect()
                }
                (None, false) => {
                    let mut m = Vec::new();
                    for a in list {
                        match agent_index.get(a) {
                            Some(i) => m.push(*i),
                            None => errs
                                .push(format!("{key} agent {a:?}: no such agent in {at}.agents")),
                        }
                    }
                    m
                }
                (None, true) => (0..agents.len()).collect(),
            };
            Target {
                queue: match team {
                    Some(t) if !target_key.ends_with(":fallback") => format!("team:{t}"),
                    _ => queue,
                },
                key: target_key,
                team: team.clone(),
                members,
                strategy: strategy.to_string(),
                skills: skills.to_vec(),
                languages: languages.iter().map(|l| l.to_ascii_lowercase()).collect(),
                offer: None,
            }
        };

        let default = build_target(
            &format!("{at}.default_team/default_agents"),
            "default".into(),
            "default".into(),
            &c.default_team,
            &c.default_agents,
            &c.default_strategy,
            &[],
            &[],
            &mut errs,
        );

        // Rules.
        let mut rules = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in c.rules.iter().enumerate() {
            let key = format!("{at}.rules[{i}]");
            if !valid_ref_id(&r.id) {
                errs.push(format!(
                    "{key}.id = {:?}: ids use letters, digits, '_', '-', '.' (1-64 chars)",
                    r.id
                ));
            }
            if !seen.insert(r.id.clone()) {
                errs.push(format!("{key}.id = {:?}: used by an earlier rule", r.id));
            }
            if r.priority > 100 {
                errs.push(format!("{key}.priority = {}: use 0..=100", r.priority));
            }
            let strategy = r.strategy.clone().unwrap_or(c.default_strategy.clone());
            strategy_ok(format!("{key}.strategy"), &strategy, &mut errs);
            if r.team.is_none() && r.agents.is_empty() {
                errs.push(format!(
                    "{key} ({}): name a target, `team` or `agents`",
                    r.id
                ));
            }
            let offer = match (r.offer_timeout_secs, r.max_missed_offers) {
                (Some(s), _) if s == 0 || s > MAX_OFFER_TIMEOUT_SECS => {
                    errs.push(format!(
                        "{key}.offer_timeout_secs = {s}: use 1..={MAX_OFFER_TIMEOUT_SECS}"
                    ));
                    None
                }
                (Some(s), m) => Some(Offer {
                    timeout_ms: s * 1000,
                    max_missed: m.unwrap_or(DEFAULT_MAX_MISSED_OFFERS),
                }),
                (None, Some(_)) => {
                    errs.push(format!(
                        "{key}.max_missed_offers: only with offer_timeout_secs (offers are off)"
                    ));
                    None
                }
                (None, None) => None,
            };
            if r.max_missed_offers.is_some_and(|m| m > 1000) {
                errs.push(format!("{key}.max_missed_offers: use 0..=1000"));
            }
            let mut target = build_target(
                &key,
                format!("rule:{}", r.id),
                format!("rule:{}", r.id),
                &r.team,
                &r.agents,
                &strategy,
                &r.skills,
                &r.languages,
                &mut errs,
            );
            let has_fallback = r.fallback_team.is_some() || !r.fallback_agents.is_empty();
            target.offer = offer;
            let fallback = if has_fallback {
                let fs = r.fallback_strategy.clone().unwrap_or(strategy.clone());
                strategy_ok(format!("{key}.fallback_strategy"), &fs, &mut errs);
                // Its own queue (`rule:<id>:fallback`, even for a team), served with the
                // fallback strategy and the rule's skills and languages.
                let mut fb = build_target(
                    &format!("{key} fallback"),
                    format!("rule:{}:fallback", r.id),
                    format!("rule:{}:fallback", r.id),
                    &r.fallback_team,
                    &r.fallback_agents,
                    &fs,
                    &r.skills,
                    &r.languages,
                    &mut errs,
                );
                fb.offer = offer;
                Some(fb)
            } else {
                None
            };
            let overflow_after_ms = match (r.overflow_after_secs, has_fallback) {
                (Some(0), _) => {
                    errs.push(format!("{key}.overflow_after_secs: use at least 1"));
                    0
                }
                (Some(s), true) => s * 1000,
                (Some(_), false) => {
                    errs.push(format!(
                        "{key}.overflow_after_secs: set fallback_team or fallback_agents, the target to overflow to"
                    ));
                    0
                }
                (None, true) => {
                    errs.push(format!(
                        "{key}: a fallback needs overflow_after_secs (how long to wait in the first queue)"
                    ));
                    0
                }
                (None, false) => 0,
            };
            if let Some(fb) = &fallback {
                if fb.queue == target.queue {
                    errs.push(format!(
                        "{key}: the fallback is the same queue as the target"
                    ));
                }
            }
            let when = compile_conditions(&key, &r.when, c, &calendar_ref, &mut errs);
            rules.push(Rule {
                id: r.id.clone(),
                when,
                target,
                priority: r.priority,
                fallback,
                overflow_after_ms,
            });
        }
        if c.max_queued == 0 {
            errs.push(format!("{at}.max_queued: use at least 1"));
        }
        if c.sticky_window_secs > 90 * 24 * 3600 {
            errs.push(format!(
                "{at}.sticky_window_secs = {}: use at most 7776000 (90 days)",
                c.sticky_window_secs
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Ruleset {
            tenant: tenant.to_string(),
            version,
            sticky_window_ms: c.sticky_window_secs * 1000,
            offline_grace_ms: c.offline_grace_secs * 1000,
            offline_policy: c.offline_policy,
            auto_close_after_ms: c.auto_close_after_secs * 1000,
            max_queued: c.max_queued,
            agents,
            agent_index,
            calendars,
            rules,
            default,
            config,
        })
    }
}

/// Resolves a calendar name (key for the message, name, errors) to its index.
type CalendarRef<'a> = dyn Fn(String, &str, &mut Vec<String>) -> Option<usize> + 'a;

fn compile_conditions(
    key: &str,
    w: &Conditions,
    c: &RoutingConfig,
    calendar_ref: &CalendarRef<'_>,
    errs: &mut Vec<String>,
) -> CompiledConditions {
    let mut channels = Vec::new();
    for ch in &w.channels {
        match parse_channel(ch) {
            Some(c) => channels.push(c),
            None => errs.push(format!(
                "{key}.when.channels: unknown channel {ch:?} (use {})",
                CHANNELS.join(", ")
            )),
        }
    }
    for p in &w.providers {
        if !PROVIDERS.contains(&p.as_str()) {
            errs.push(format!(
                "{key}.when.providers: unknown provider {p:?} (use {})",
                PROVIDERS.join(", ")
            ));
        }
    }
    let contacts = if w.contact_lists.is_empty() {
        None
    } else {
        let mut set = HashSet::new();
        for name in &w.contact_lists {
            match c.contact_lists.get(name) {
                Some(list) => set.extend(list.iter().cloned()),
                None => errs.push(format!(
                    "{key}.when.contact_lists: no list {name:?} in contact_lists ({})",
                    known(c.contact_lists.keys())
                )),
            }
        }
        Some(set)
    };
    let text_regex = w.text_regex.as_deref().and_then(|re| {
        match regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
            Ok(r) => Some(r),
            Err(e) => {
                errs.push(format!(
                    "{key}.when.text_regex: {}",
                    e.to_string().lines().last().unwrap_or("invalid")
                ));
                None
            }
        }
    });
    if w.within_hours.is_some() && w.outside_hours.is_some() {
        errs.push(format!(
            "{key}.when: within_hours and outside_hours together can never hold"
        ));
    }
    CompiledConditions {
        channels,
        providers: w.providers.clone(),
        sources: w.sources.clone(),
        businesses: w.businesses.clone(),
        contact_prefixes: w.contact_prefixes.clone(),
        contacts,
        keywords: w
            .keywords
            .iter()
            .map(|k| k.trim().to_lowercase())
            .filter(|k| !k.is_empty())
            .collect(),
        text_regex,
        languages: w.languages.iter().map(|l| l.to_ascii_lowercase()).collect(),
        message_types: w.message_types.clone(),
        referral: w.referral,
        referral_ids: w.referral_ids.clone(),
        within_hours: w
            .within_hours
            .as_deref()
            .and_then(|n| calendar_ref(format!("{key}.when.within_hours"), n, errs)),
        outside_hours: w
            .outside_hours
            .as_deref()
            .and_then(|n| calendar_ref(format!("{key}.when.outside_hours"), n, errs)),
    }
}

const CHANNELS: &[&str] = &[
    "whatsapp",
    "messenger",
    "instagram",
    "sms",
    "mms",
    "rcs",
    "viber",
    "telegram",
    "other",
];

const PROVIDERS: &[&str] = &[
    "meta",
    "twilio",
    "vonage",
    "messagebird",
    "bird",
    "telnyx",
    "plivo",
    "sinch",
    "telegram",
    "standard",
];

pub fn parse_channel(s: &str) -> Option<Channel> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none defined".into()
    } else {
        v.join(", ")
    }
}

/// Agent, team and rule ids: they appear in keys, queue names and URLs.
pub fn valid_ref_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn compile_calendar(c: &CalendarConfig) -> Result<Calendar, String> {
    let tz = TimeZone::get(&c.timezone).map_err(|_| {
        format!(
            "timezone {:?} is not an IANA time zone name (e.g. \"Europe/Madrid\", \"UTC\")",
            c.timezone
        )
    })?;
    let mut days: [Vec<(u16, u16)>; 7] = Default::default();
    for (day, ranges) in &c.hours {
        let d = match day.to_ascii_lowercase().as_str() {
            "mon" | "monday" => Weekday::Monday,
            "tue" | "tuesday" => Weekday::Tuesday,
            "wed" | "wednesday" => Weekday::Wednesday,
            "thu" | "thursday" => Weekday::Thursday,
            "fri" | "friday" => Weekday::Friday,
            "sat" | "saturday" => Weekday::Saturday,
            "sun" | "sunday" => Weekday::Sunday,
            _ => {
                return Err(format!(
                    "hours.{day}: days are mon, tue, wed, thu, fri, sat, sun"
                ))
            }
        };
        let i = d.to_monday_zero_offset() as usize;
        for r in ranges {
            let (s, e) = parse_range(r).ok_or_else(|| {
                format!("hours.{day}: {r:?} is not a range \"HH:MM-HH:MM\" (24 h clock)")
            })?;
            if s < e {
                days[i].push((s, e));
            } else if s > e {
                // Past midnight: the rest of this day and the start of the next.
                days[i].push((s, 24 * 60));
                days[(i + 1) % 7].push((0, e));
            } else {
                return Err(format!("hours.{day}: {r:?} is empty"));
            }
        }
    }
    let mut holidays = HashSet::new();
    for h in &c.holidays {
        let d: Date = h
            .parse()
            .map_err(|_| format!("holidays: {h:?} is not a date YYYY-MM-DD"))?;
        holidays.insert(d);
    }
    Ok(Calendar { tz, days, holidays })
}

fn parse_range(r: &str) -> Option<(u16, u16)> {
    let (a, b) = r.trim().split_once('-')?;
    Some((parse_hhmm(a.trim())?, parse_hhmm(b.trim())?))
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    fn ms(rfc3339: &str) -> u64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn calendar_hours_zones_overnight_and_holidays() {
        let cal = compile_calendar(&CalendarConfig {
            timezone: "Europe/Madrid".into(),
            hours: [
                ("mon".to_string(), vec!["09:00-18:00".to_string()]),
                ("fri".to_string(), vec!["22:00-02:00".to_string()]),
            ]
            .into_iter()
            .collect(),
            holidays: vec!["2026-12-07".into()],
        })
        .unwrap();
        // Monday 2026-11-30 08:30 UTC = 09:30 in Madrid (CET, UTC+1).
        assert!(cal.is_open(ms("2026-11-30T08:30:00Z")));
        assert!(!cal.is_open(ms("2026-11-30T07:30:00Z")));
        assert!(!cal.is_open(ms("2026-11-30T17:00:00Z"))); // 18:00 local: closed
                                                           // Friday 23:00 local and Saturday 01:00 local are open (overnight range).
        assert!(cal.is_open(ms("2026-12-04T22:00:00Z")));
        assert!(cal.is_open(ms("2026-12-05T00:30:00Z")));
        assert!(!cal.is_open(ms("2026-12-05T01:30:00Z")));
        // A Monday holiday is closed all day.
        assert!(!cal.is_open(ms("2026-12-07T10:00:00Z")));
    }

    #[test]
    fn compile_reports_every_broken_reference() {
        let cfg = RoutingConfig {
            default_strategy: "least_loaded".into(),
            teams: [("sales".to_string(), TeamConfig::default())].into(),
            agents: [(
                "alice".to_string(),
                AgentConfig {
                    teams: vec!["ghost-team".into()],
                    working_hours: Some("nope".into()),
                    ..Default::default()
                },
            )]
            .into(),
            rules: vec![
                RuleConfig {
                    id: "r1".into(),
                    team: Some("missing".into()),
                    when: Conditions {
                        text_regex: Some("(unclosed".into()),
                        channels: vec!["carrier-pigeon".into()],
                        ..Default::default()
                    },
                    ..Default::default()
                },
                RuleConfig {
                    id: "r1".into(),
                    agents: vec!["bob".into()],
                    overflow_after_secs: Some(30),
                    ..Default::default()
                },
            ],
            max_queued: 10,
            ..Default::default()
        };
        let errs = Ruleset::compile("t", 1, cfg, "routing", &all).unwrap_err();
        let text = errs.join("\n");
        for needle in [
            "routing.agents.alice.teams",
            "routing.agents.alice.working_hours",
            "routing.rules[0] team \"missing\"",
            "routing.rules[0].when.text_regex",
            "routing.rules[0].when.channels",
            "routing.rules[1].id = \"r1\": used by an earlier rule",
            "routing.rules[1] agent \"bob\"",
            "routing.rules[1].overflow_after_secs",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn offers_compile_onto_the_rule_and_its_fallback_and_bad_values_are_refused() {
        let all = |_: &str| true;
        let rule = |id: &str, timeout: Option<u64>, missed: Option<u32>| RuleConfig {
            id: id.into(),
            agents: vec!["ana".into()],
            fallback_agents: vec!["bo".into()],
            overflow_after_secs: Some(30),
            offer_timeout_secs: timeout,
            max_missed_offers: missed,
            ..Default::default()
        };
        let mut cfg = RoutingConfig {
            default_strategy: "least_loaded".into(),
            max_queued: 10,
            ..Default::default()
        };
        for a in ["ana", "bo"] {
            cfg.agents.insert(a.into(), AgentConfig::default());
        }
        cfg.rules = vec![rule("o", Some(20), None), rule("p", None, None)];
        let rs = Ruleset::compile("t", 1, cfg.clone(), "routing", &all).unwrap();
        let want = Some(Offer {
            timeout_ms: 20_000,
            max_missed: DEFAULT_MAX_MISSED_OFFERS,
        });
        assert_eq!(rs.rules[0].target.offer, want);
        assert_eq!(rs.rules[0].fallback.as_ref().unwrap().offer, want);
        assert_eq!(rs.rules[1].target.offer, None);
        assert_eq!(rs.default.offer, None);
        cfg.rules = vec![
            rule("a", Some(0), None),
            rule("b", Some(3601), None),
            rule("c", None, Some(2)),
            rule("d", Some(5), Some(1001)),
        ];
        let text = Ruleset::compile("t", 1, cfg, "routing", &all)
            .unwrap_err()
            .join("\n");
        for needle in [
            "routing.rules[0].offer_timeout_secs = 0: use 1..=3600",
            "routing.rules[1].offer_timeout_secs = 3601",
            "routing.rules[2].max_missed_offers: only with offer_timeout_secs",
            "routing.rules[3].max_missed_offers: use 0..=1000",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_strategy_is_refused() {
        let cfg = RoutingConfig {
            default_strategy: "coin_flip".into(),
            max_queued: 1,
            ..Default::default()
        };
        let errs =
            Ruleset::compile("t", 1, cfg, "routing", &|s: &str| s != "coin_flip").unwrap_err();
        assert!(errs[0].contains("routing.default_strategy = \"coin_flip\""));
    }
}
