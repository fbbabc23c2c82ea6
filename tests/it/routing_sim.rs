//! `switchboard routing simulate` equals live: random scenarios (messages, closes,
//! presence changes, transfers, answers to offers, clock steps) replayed through the simulator (memory store)
//! and through two engines on one Redis taking turns (two replicas) must make identical
//! decisions, step for step.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};
use switchboard::route::engine::Engine;
use switchboard::route::simulate::{self, SimOptions};
use switchboard::route::strategy::Strategies;
use switchboard::state::{build_backend, routing_store};

use crate::helpers::*;

/// Monday 2026-01-05 09:00 UTC.
const START_MS: u64 = 1_767_603_600_000;

const SIM: &str = r#"
[tenants.acme.routing]
default_team = "support"
default_strategy = "least_loaded"
sticky_window_secs = 600
offline_grace_secs = 60
auto_close_after_secs = 3600
contact_lists = { vip = ["34600000000"] }
[tenants.acme.routing.teams.support]
[tenants.acme.routing.teams.sales]
[tenants.acme.routing.agents.ana]
teams = ["support"]
capacity = 2
skills = { spanish = 9 }
presence = "online"
[tenants.acme.routing.agents.ben]
teams = ["support"]
capacity = 1
presence = "online"
[tenants.acme.routing.agents.cid]
teams = ["sales"]
capacity = 2
skills = { spanish = 4 }
presence = "online"
[tenants.acme.routing.agents.dora]
teams = ["sales", "support"]
capacity = 1
[[tenants.acme.routing.rules]]
id = "vip"
when = { contact_lists = ["vip"] }
team = "sales"
priority = 50
fallback_team = "support"
fallback_strategy = "round_robin"
overflow_after_secs = 30
[[tenants.acme.routing.rules]]
id = "spanish"
when = { keywords = ["hola"] }
team = "support"
strategy = "skills"
skills = ["spanish"]
offer_timeout_secs = 10
max_missed_offers = 3
[[tenants.acme.routing.rules]]
id = "buyers"
when = { keywords = ["buy"] }
team = "sales"
strategy = "round_robin"
offer_timeout_secs = 20
"#;

const AGENTS: [&str; 4] = ["ana", "ben", "cid", "dora"];
const TEXTS: [&str; 3] = ["hola", "buy", "hello"];
const PRESENCE: [&str; 3] = ["online", "away", "offline"];

#[derive(Debug, Clone)]
enum Step {
    Message(usize, usize),
    Close(usize),
    Presence(usize, usize),
    TransferAgent(usize, usize),
    TransferTeam(usize, bool),
    Answer(usize, bool),
}

fn contact(i: usize) -> String {
    format!("3460000000{i}")
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..6usize, 0..3usize).prop_map(|(c, t)| Step::Message(c, t)),
        2 => (0..6usize).prop_map(Step::Close),
        2 => (0..4usize, 0..3usize).prop_map(|(a, p)| Step::Presence(a, p)),
        1 => (0..6usize, 0..4usize).prop_map(|(c, a)| Step::TransferAgent(c, a)),
        1 => (0..6usize, any::<bool>()).prop_map(|(c, s)| Step::TransferTeam(c, s)),
        2 => (0..6usize, any::<bool>()).prop_map(|(c, a)| Step::Answer(c, a)),
    ]
}

/// Gaps between steps: mostly seconds, sometimes a clock step past grace and overflow.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..5_000u64, 1 => 30_000..200_000u64]
}

fn traffic(steps: &[(u64, Step)]) -> String {
    let mut t = 0;
    // Every scenario decides something.
    let mut lines = vec![
        json!({"t_ms": 0, "tenant": "acme", "contact": contact(1), "text": "hola"}).to_string(),
    ];
    for (gap, s) in steps {
        t += gap;
        let line = match s {
            Step::Message(c, x) => {
                json!({"t_ms": t, "tenant": "acme", "contact": contact(*c), "text": TEXTS[*x]})
            }
            Step::Close(c) => {
                json!({"t_ms": t, "action": "close", "tenant": "acme", "contact": contact(*c)})
            }
            Step::Presence(a, p) => {
                json!({"t_ms": t, "action": "presence", "tenant": "acme", "agent": AGENTS[*a], "presence": PRESENCE[*p]})
            }
            Step::TransferAgent(c, a) => {
                json!({"t_ms": t, "action": "transfer", "tenant": "acme", "contact": contact(*c), "agent": AGENTS[*a]})
            }
            Step::TransferTeam(c, s) => {
                json!({"t_ms": t, "action": "transfer", "tenant": "acme", "contact": contact(*c), "team": if *s { "sales" } else { "support" }})
            }
            Step::Answer(c, accept) => {
                json!({"t_ms": t, "action": if *accept { "accept" } else { "reject" }, "tenant": "acme", "contact": contact(*c)})
            }
        };
        lines.push(line.to_string());
    }
    // Everyone online at the end, so the queues empty and the replay ends.
    for a in AGENTS {
        lines.push(
            json!({"t_ms": t + 1000, "action": "presence", "tenant": "acme", "agent": a, "presence": "online"})
                .to_string(),
        );
    }
    lines.join("\n")
}

fn config(backend: BackendKind) -> Config {
    let toml = format!("{BASE_CONFIG}\n{SIM}");
    let mut c = Config::from_toml(&toml).expect("valid");
    c.backend = backend;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    c
}

fn opts() -> SimOptions {
    SimOptions {
        start_ms: START_MS,
        handle_ms: Some(120_000),
        tick_ms: 5_000,
        // Spanish offers (10 s) expire unless the traffic answers them; buyers' (20 s) are
        // accepted after 12 s.
        accept_offers_ms: Some(12_000),
    }
}

/// Two engines (replicas) on one fresh Redis prefix, on one virtual clock.
async fn live(traffic: &str) -> simulate::Trace {
    let config = config(BackendKind::Redis);
    let clock = Arc::new(AtomicU64::new(START_MS));
    let file: std::collections::HashMap<_, _> = config
        .tenants
        .iter()
        .filter_map(|(id, t)| t.routing.clone().map(|r| (id.clone(), r)))
        .collect();
    let mut engines = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..2 {
        let backend = build_backend(&config).expect("redis backend");
        let c = clock.clone();
        let engine = Engine::start_with_clock(
            routing_store(&backend, &config),
            backend.clone(),
            Strategies::builtin(),
            config.tenants.keys().cloned().collect(),
            file.clone(),
            Arc::new(move || c.load(std::sync::atomic::Ordering::SeqCst)),
        )
        .await
        .expect("engine starts");
        engines.push(Arc::new(engine));
        backends.push(backend);
    }
    simulate::run_on(&engines, &backends[0], &clock, traffic, &opts())
        .await
        .expect("live replay")
        .1
}

fn first_difference(sim: &[(String, Value)], live: &[(String, Value)]) -> String {
    for (i, (s, l)) in sim.iter().zip(live).enumerate() {
        if s != l {
            return format!(
                "decision {i} differs:\n  simulate: {} {}\n  live:     {} {}",
                s.0, s.1, l.0, l.1
            );
        }
    }
    format!("{} decisions simulated, {} live", sim.len(), live.len())
}

#[test]
fn simulate_and_two_live_replicas_on_redis_decide_the_same() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { require_redis(&redis_url()).await });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec((gap(), step()), 5..40);
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    // A fixed scenario first, so that every kind of decision is compared on every run
    // (ana is the only Spanish speaker on support: offered, rejected, offered again,
    // expired; cid takes the buyer's offer, accepted after 12 s).
    let fixed = [
        json!({"t_ms": 0, "tenant": "acme", "contact": contact(1), "text": "hola"}),
        json!({"t_ms": 1000, "action": "reject", "tenant": "acme", "contact": contact(1)}),
        json!({"t_ms": 2000, "tenant": "acme", "contact": contact(2), "text": "buy"}),
        json!({"t_ms": 60000, "action": "close", "tenant": "acme", "contact": contact(2)}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let (sim, on_redis) = rt.block_on(async {
        let (_, sim) = simulate::run_traced(
            &config(BackendKind::Memory),
            Strategies::builtin(),
            &fixed,
            &opts(),
        )
        .await
        .expect("simulation");
        (sim, live(&fixed).await)
    });
    assert!(sim == on_redis, "{}", first_difference(&sim, &on_redis));
    seen.lock().unwrap().extend(
        sim.iter()
            .filter_map(|(_, a)| a["action"].as_str().map(str::to_string)),
    );
    runner
        .run(&strategy, |steps| {
            let traffic = traffic(&steps);
            let (sim, live) = rt.block_on(async {
                let (_, sim) = simulate::run_traced(
                    &config(BackendKind::Memory),
                    Strategies::builtin(),
                    &traffic,
                    &opts(),
                )
                .await
                .expect("simulation");
                (sim, live(&traffic).await)
            });
            prop_assert!(!sim.is_empty(), "the first message is decided");
            seen.lock().unwrap().extend(
                sim.iter()
                    .filter_map(|(_, a)| a["action"].as_str().map(str::to_string)),
            );
            prop_assert!(
                sim == live,
                "{}\ntraffic:\n{traffic}",
                first_difference(&sim, &live)
            );
            Ok(())
        })
        .unwrap();
    // The scenarios exercised what they are meant to compare.
    let seen = seen.into_inner().unwrap();
    for action in [
        "assigned",
        "queued",
        "closed",
        "transferred",
        "offered",
        "accepted",
        "rejected",
        "expired",
    ] {
        assert!(
            seen.contains(action),
            "no scenario made {action:?}: {seen:?}"
        );
    }
}
