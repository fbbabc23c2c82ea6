//! Strategies: how to order the eligible agents of a target, best first.
//!
//! A strategy is a pure ordering over a snapshot of candidates. It never reserves anything:
//! the store then walks the ranked list inside one atomic step and takes the first agent who
//! is *still* online with capacity at that moment, so a strategy working from a slightly
//! stale snapshot can make a less-than-ideal choice but never an over-assignment.
//!
//! Strategies are an open set: implement [`Strategy`] and register it with
//! [`Strategies::with`] (see docs/routing.md for a worked example); rules then name it in
//! `strategy = "..."`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::routing::{Agent, Target};

/// One eligible agent as the strategy sees it: already online, within working hours, with
/// capacity left (total and on the channel), with the target's skills and languages.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub agent: &'a Agent,
    /// Open conversations now, and the most allowed.
    pub load: u32,
    pub capacity: u32,
    /// Open conversations on the conversation's channel, and that channel's limit if any.
    pub channel_load: u32,
    pub channel_capacity: Option<u32>,
    /// When the agent was last given a conversation (ms since the epoch; 0 = never).
    pub last_assigned_ms: u64,
    /// Sum of the agent's proficiency over the target's required skills.
    pub proficiency: u32,
}

impl Candidate<'_> {
    /// `load / capacity` compared exactly (no floats): -1, 0, 1.
    fn cmp_ratio(&self, other: &Candidate<'_>) -> Ordering {
        let a = self.load as u64 * other.capacity.max(1) as u64;
        let b = other.load as u64 * self.capacity.max(1) as u64;
        a.cmp(&b)
    }
}

/// What a strategy knows about the decision besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct RankContext<'a> {
    pub target: &'a Target,
    pub conversation: &'a str,
    /// The agent who last held this conversation, if any.
    pub last_agent: Option<&'a str>,
    pub now_ms: u64,
}

pub trait Strategy: Send + Sync {
    /// The name rules use (`strategy = "..."`); letters, digits and '_'.
    fn name(&self) -> &str;
    /// Orders `candidates` best first. Removing candidates is allowed (an empty list means
    /// the conversation waits in the queue); adding is not.
    fn rank(&self, ctx: &RankContext<'_>, candidates: &mut Vec<Candidate<'_>>);
}

/// Ties are broken by who waited longest since their last assignment, then by id, so every
/// ranking is deterministic.
fn idle_then_id(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    a.last_assigned_ms
        .cmp(&b.last_assigned_ms)
        .then_with(|| a.agent.id.cmp(&b.agent.id))
}

fn least_loaded_order(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    a.cmp_ratio(b)
        .then(a.load.cmp(&b.load))
        .then_with(|| idle_then_id(a, b))
}

/// Fair rotation: the agent who has gone longest without a new conversation goes first.
/// The rotation state is each agent's last-assignment time, kept in the store, so it
/// survives agents joining or leaving a team (nobody's turn is reset) and is shared by every
/// replica.
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn name(&self) -> &str {
        "round_robin"
    }
    fn rank(&self, _: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
        c.sort_by(idle_then_id);
    }
}

/// Lowest open conversations relative to capacity first (so an agent with 2 of 10 goes
/// before one with 1 of 2), then fewest open, then longest idle.
pub struct LeastLoaded;

impl Strategy for LeastLoaded {
    fn name(&self) -> &str {
        "least_loaded"
    }
    fn rank(&self, _: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
        c.sort_by(least_loaded_order);
    }
}

/// Best proficiency in the target's skills first, then least loaded.
pub struct Skills;

impl Strategy for Skills {
    fn name(&self) -> &str {
        "skills"
    }
    fn rank(&self, _: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
        c.sort_by(|a, b| {
            b.proficiency
                .cmp(&a.proficiency)
                .then_with(|| least_loaded_order(a, b))
        });
    }
}

/// The conversation's last agent first (whatever the sticky window), then least loaded.
pub struct StickyOwner;

impl Strategy for StickyOwner {
    fn name(&self) -> &str {
        "sticky_owner"
    }
    fn rank(&self, ctx: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
        c.sort_by(|a, b| {
            let a_last = Some(a.agent.id.as_str()) == ctx.last_agent;
            let b_last = Some(b.agent.id.as_str()) == ctx.last_agent;
            b_last.cmp(&a_last).then_with(|| least_loaded_order(a, b))
        });
    }
}

/// Nobody is picked: conversations wait in the queue until someone takes one through the
/// API (transfer).
pub struct Manual;

impl Strategy for Manual {
    fn name(&self) -> &str {
        "manual"
    }
    fn rank(&self, _: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
        c.clear();
    }
}

/// The strategies rules can name.
#[derive(Clone)]
pub struct Strategies(Arc<HashMap<String, Arc<dyn Strategy>>>);

impl Default for Strategies {
    fn default() -> Self {
        Strategies::builtin()
    }
}

impl Strategies {
    pub fn builtin() -> Strategies {
        let list: [Arc<dyn Strategy>; 5] = [
            Arc::new(RoundRobin),
            Arc::new(LeastLoaded),
            Arc::new(Skills),
            Arc::new(StickyOwner),
            Arc::new(Manual),
        ];
        Strategies(Arc::new(
            list.into_iter()
                .map(|s| (s.name().to_string(), s))
                .collect(),
        ))
    }

    /// Adds (or replaces) a strategy.
    pub fn with(self, s: impl Strategy + 'static) -> Strategies {
        let mut map: HashMap<String, Arc<dyn Strategy>> = (*self.0).clone();
        map.insert(s.name().to_string(), Arc::new(s));
        Strategies(Arc::new(map))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Strategy>> {
        self.0.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routing::Agent;

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            name: None,
            role: Default::default(),
            teams: vec![],
            skills: Default::default(),
            languages: vec![],
            capacity: 5,
            channel_capacity: Default::default(),
            working_hours: None,
            initial_presence: Default::default(),
        }
    }

    fn cand(a: &Agent, load: u32, capacity: u32, last: u64, prof: u32) -> Candidate<'_> {
        Candidate {
            agent: a,
            load,
            capacity,
            channel_load: 0,
            channel_capacity: None,
            last_assigned_ms: last,
            proficiency: prof,
        }
    }

    fn ids(c: &[Candidate<'_>]) -> Vec<String> {
        c.iter().map(|c| c.agent.id.clone()).collect()
    }

    fn ctx(target: &Target) -> RankContext<'_> {
        RankContext {
            target,
            conversation: "conv_x",
            last_agent: Some("c"),
            now_ms: 0,
        }
    }

    fn target() -> Target {
        Target {
            key: "default".into(),
            queue: "default".into(),
            team: None,
            members: vec![],
            strategy: "x".into(),
            skills: vec![],
            languages: vec![],
            offer: None,
        }
    }

    #[test]
    fn builtins_order_as_documented() {
        let (a, b, c) = (agent("a"), agent("b"), agent("c"));
        let t = target();
        let make = || {
            vec![
                cand(&a, 2, 10, 300, 1), // 20 %
                cand(&b, 1, 2, 100, 9),  // 50 %
                cand(&c, 0, 5, 200, 5),  // 0 %
            ]
        };
        let mut v = make();
        RoundRobin.rank(&ctx(&t), &mut v);
        assert_eq!(ids(&v), ["b", "c", "a"]);
        let mut v = make();
        LeastLoaded.rank(&ctx(&t), &mut v);
        assert_eq!(ids(&v), ["c", "a", "b"]);
        let mut v = make();
        Skills.rank(&ctx(&t), &mut v);
        assert_eq!(ids(&v), ["b", "c", "a"]);
        let mut v = make();
        StickyOwner.rank(&ctx(&t), &mut v);
        assert_eq!(ids(&v)[0], "c");
        let mut v = make();
        Manual.rank(&ctx(&t), &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn user_strategies_can_be_added() {
        struct Alphabetical;
        impl Strategy for Alphabetical {
            fn name(&self) -> &str {
                "alphabetical"
            }
            fn rank(&self, _: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
                c.sort_by(|a, b| a.agent.id.cmp(&b.agent.id));
            }
        }
        let s = Strategies::builtin().with(Alphabetical);
        assert!(s.contains("alphabetical") && s.contains("least_loaded"));
    }
}
