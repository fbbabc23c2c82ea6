//! What a routing store decided, before it is put into words.
//!
//! Both stores describe each decision as an [`Outcome`]: the assignment's fields plus a
//! [`Why`] that says which explanation applies and with which figures. [`render`] turns it
//! into the `assignment` object with its human `reason` — the one place where reasons are
//! worded, whichever store decided. The Redis script sends outcomes in a compact text form
//! ([`decode`]) instead of JSON: formatting JSON in Lua was a large share of a decision's
//! cost.

use crate::event::Assignment;

use super::{candidates_text, secs_text, Decided};

/// Which explanation applies, with what it needs beyond the assignment's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The open conversation stays with its owner.
    Kept,
    /// Already queued, for `ms`.
    Waiting { ms: u64 },
    /// Back to the last agent.
    Sticky { load: u32, cap: u32 },
    /// Chosen from the ranked candidates; `text` is the plan's reason.
    Assigned { text: String, load: u32, cap: u32 },
    /// Queued behind `n` conversations of the same channel.
    Behind { text: String, n: u64 },
    /// Queued: no candidate at all.
    NoCandidate { text: String },
    /// Queued: candidates, none with room at the moment of the decision.
    Busy { text: String },
    /// Not queued: the tenant's queues hold `n`, their bound.
    Unrouted { text: String, n: u64 },
    /// Assigned from a queue.
    Dequeued { text: String, load: u32, cap: u32 },
    /// Moved to an agent by hand.
    Transferred { text: String, load: u32, cap: u32 },
    /// Its owner was offline for `ms`.
    Requeued { ms: u64 },
    /// Waited `ms` in `from`, moved to the fallback queue.
    Overflowed { from: String, ms: u64 },
    /// Closed, for `text`.
    Closed { text: String },
    /// Offered to the agent (`text`: the plan's reason), who has `ms` to answer.
    Offered {
        text: String,
        load: u32,
        cap: u32,
        ms: u64,
    },
    /// A message while the offer is pending, `ms` before it expires.
    Pending { ms: u64 },
    /// The agent accepted, `ms` after the offer.
    Accepted { ms: u64 },
    /// The agent rejected it.
    Rejected,
    /// Not answered within `ms`; the agent's `n`th miss in a row; `away`: they were set away.
    Expired { ms: u64, n: u64, away: bool },
}

/// A decision: the assignment (its `reason` empty) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub a: Assignment,
    pub why: Why,
}

/// The assignment with its reason.
pub fn render(o: &Outcome) -> Assignment {
    let a = &o.a;
    let agent = a.agent.as_deref().unwrap_or("");
    let queue = a.queue.as_deref().unwrap_or("");
    let cands = || candidates_text(a.candidates.unwrap_or(0));
    let reason = match &o.why {
        Why::Kept => format!("open conversation stays with its owner {agent}"),
        Why::Waiting { ms } => format!("already waiting in {queue} for {}", secs_text(*ms)),
        Why::Sticky { load, cap } => {
            format!("sticky: back to last agent {agent}, {load}/{cap} open")
        }
        Why::Assigned { text, load, cap } => {
            format!("{text}: {agent} {load}/{cap} open, {}", cands())
        }
        Why::Behind { text, n } => {
            format!("{text}: {n} already waiting in {queue}, queued behind them")
        }
        Why::NoCandidate { text } => {
            format!("{text}: no candidate online with capacity, waiting in {queue}")
        }
        Why::Busy { text } => {
            format!(
                "{text}: none of {} has capacity now, waiting in {queue}",
                cands()
            )
        }
        Why::Unrouted { text, n } => {
            format!("{text}: nobody eligible and the queues are full ({n} waiting)")
        }
        Why::Dequeued { text, load, cap } => format!(
            "{text}: {agent} {load}/{cap} open, {}, after waiting {}",
            cands(),
            secs_text(a.wait_ms.unwrap_or(0))
        ),
        Why::Transferred { text, load, cap } => format!("{text}, {load}/{cap} open"),
        Why::Requeued { ms } => format!(
            "{} offline for {}: back to {queue}",
            a.previous_agent.as_deref().unwrap_or(""),
            secs_text(*ms)
        ),
        Why::Overflowed { from, ms } => {
            format!("waited {} in {from}: overflow to {queue}", secs_text(*ms))
        }
        Why::Closed { text } => text.clone(),
        Why::Offered {
            text,
            load,
            cap,
            ms,
        } => {
            let waited = if a.waited {
                format!(", after waiting {}", secs_text(a.wait_ms.unwrap_or(0)))
            } else {
                String::new()
            };
            format!(
                "{text}: offered to {agent}, {load}/{cap} open, {}{waited}; answer within {}",
                cands(),
                secs_text(*ms)
            )
        }
        Why::Pending { ms } => format!(
            "offered to {agent}, waiting for an answer ({} left)",
            secs_text(*ms)
        ),
        Why::Accepted { ms } => format!("{agent} accepted the offer after {}", secs_text(*ms)),
        Why::Rejected => format!(
            "{} rejected the offer: back to {queue}",
            a.previous_agent.as_deref().unwrap_or("")
        ),
        Why::Expired { ms, n, away } => {
            let prev = a.previous_agent.as_deref().unwrap_or("");
            let mut s = format!(
                "{prev} did not answer within {}: back to {queue}",
                secs_text(*ms)
            );
            if *away {
                s.push_str(&format!("; {n} offers missed in a row, {prev} is now away"));
            }
            s
        }
    };
    Assignment {
        reason,
        ..a.clone()
    }
}

/// The decision as the engine uses it: the rendered assignment JSON and what metrics need.
pub fn decided(o: &Outcome, freed: bool) -> Decided {
    let a = render(o);
    Decided {
        assignment: serde_json::to_string(&a).unwrap_or_default(),
        action: a.action,
        strategy: a.strategy,
        freed,
        wait_ms: a.wait_ms,
        candidates: a.candidates.unwrap_or(0),
    }
}

/// Field separator of the compact form (never in ids, queue names, numbers or reasons).
pub const SEP: char = '\u{1d}';

/// Reads the compact form `route.lua` writes: fields separated by [`SEP`] — why, action,
/// agent, previous agent, team, queue, rule, strategy, queued (1 or empty), waited,
/// wait ms, priority, candidates, seq, load, cap, n, ms, from, text, offer expiry ms (absent
/// in entries written before offers). Empty means absent.
pub fn decode(s: &str) -> Option<Outcome> {
    let f: Vec<&str> = s.split(SEP).collect();
    if f.len() != 20 && f.len() != 21 {
        return None;
    }
    let opt = |i: usize| (!f[i].is_empty()).then(|| f[i].to_string());
    let num = |i: usize| f[i].parse::<u64>().ok();
    let n32 = |i: usize| num(i).unwrap_or(0) as u32;
    let text = f[19].to_string();
    let why = match f[0] {
        "kept" => Why::Kept,
        "waiting" => Why::Waiting { ms: num(17)? },
        "sticky" => Why::Sticky {
            load: n32(14),
            cap: n32(15),
        },
        "assigned" => Why::Assigned {
            text,
            load: n32(14),
            cap: n32(15),
        },
        "behind" => Why::Behind { text, n: num(16)? },
        "nocand" => Why::NoCandidate { text },
        "busy" => Why::Busy { text },
        "unrouted" => Why::Unrouted { text, n: num(16)? },
        "dequeued" => Why::Dequeued {
            text,
            load: n32(14),
            cap: n32(15),
        },
        "transferred" => Why::Transferred {
            text,
            load: n32(14),
            cap: n32(15),
        },
        "requeued" => Why::Requeued { ms: num(17)? },
        "overflowed" => Why::Overflowed {
            from: f[18].to_string(),
            ms: num(17)?,
        },
        "closed" => Why::Closed { text },
        "offered" => Why::Offered {
            text,
            load: n32(14),
            cap: n32(15),
            ms: num(17)?,
        },
        "pending" => Why::Pending { ms: num(17)? },
        "accepted" => Why::Accepted { ms: num(17)? },
        "rejected" => Why::Rejected,
        "expired" => Why::Expired {
            ms: num(17)?,
            n: num(16).unwrap_or(0),
            away: f[18] == "away",
        },
        _ => return None,
    };
    Some(Outcome {
        a: Assignment {
            action: f[1].to_string(),
            agent: opt(2),
            previous_agent: opt(3),
            team: opt(4),
            queue: opt(5),
            rule: opt(6),
            strategy: f[7].to_string(),
            reason: String::new(),
            queued: f[8] == "1",
            waited: f[9] == "1",
            wait_ms: num(10),
            priority: num(11).map(|p| p.min(100) as u8),
            candidates: num(12).map(|c| c as u32),
            seq: num(13).unwrap_or(0),
            offer_expires_at: f
                .get(20)
                .and_then(|v| v.parse::<u64>().ok())
                .map(crate::event::ms_rfc3339),
        },
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_form_renders_every_reason() {
        let join = |parts: &[&str]| parts.join(&SEP.to_string());
        let o = decode(&join(&[
            "assigned",
            "assigned",
            "alice",
            "",
            "support",
            "team:support",
            "",
            "least_loaded",
            "",
            "",
            "",
            "0",
            "3",
            "7",
            "2",
            "5",
            "",
            "",
            "",
            "default → team support, least_loaded",
        ]))
        .unwrap();
        let a = render(&o);
        assert_eq!(
            a.reason,
            "default → team support, least_loaded: alice 2/5 open, 3 candidates"
        );
        assert_eq!((a.seq, a.candidates, a.priority), (7, Some(3), Some(0)));
        assert_eq!(a.rule, None);
        let o = decode(&join(&[
            "overflowed",
            "overflowed",
            "",
            "",
            "",
            "team:b",
            "vip",
            "round_robin",
            "1",
            "",
            "",
            "50",
            "",
            "3",
            "",
            "",
            "",
            "120000",
            "team:a",
            "",
        ]))
        .unwrap();
        assert_eq!(
            render(&o).reason,
            "waited 120 s in team:a: overflow to team:b"
        );
        assert!(render(&o).queued);
        assert!(decode("nonsense").is_none());
    }
}
