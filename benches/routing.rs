//! Routing benchmark: routed events per second through the router on Redis, against the
//! pass-through router in the same run, and the latency of each decision.
//!
//! `cargo bench --bench routing` accepts EVENTS unified events into the inbound streams the
//! way ingest does (one accept call per 100, like a batch webhook; PARTITIONS stream
//! partitions, events spread by conversation), then drains them twice on fresh key prefixes
//! with one router loop per partition, as the gateway runs them (lease → read_inbound →
//! route_batch → fenced publish → drain, as `Router::run` does): once pass-through, once
//! with the routing engine. Traffic: TENANTS tenants of AGENTS agents (two teams, capacity 1000 each, so
//! decisions assign rather than queue), three rules per tenant (a VIP list, a country
//! prefix with the skills strategy, a keyword regex with round robin; the rest by least
//! loaded), 70 % new conversations and 30 % follow-ups (kept).
//!
//! It prints events/s of both, the ratio, the decision latency p50/p99/p999 (every
//! decision of a store call experiences that call's duration (snapshot + ranking + the
//! atomic script), so each call is recorded once per decision it made), and the CPU time
//! per event of redis-server and of the bench process (the routers) during each run, from
//! /proc: CPU per event compares across machines and busy neighbours where rates do not.
//!
//! Knobs: EVENTS (100000), TENANTS (4), AGENTS (25), BATCH (256, the router's batch_size),
//! PARTITIONS (1, `streams.partitions`: one active router each), REDIS_URL. Without `--bench` (as `cargo test --all-targets` runs it) a 2,000-event
//! smoke run keeps the harness tested.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchboard::accept::partitioned::Partitioned;
use switchboard::accept::redis::RedisBackend;
use switchboard::accept::{Backend, Batch, Item, Limits};
use switchboard::config::routing::{
    AgentConfig, Conditions, Presence, RoutingConfig, RuleConfig, TeamConfig,
};
use switchboard::config::RedisConfig;
use switchboard::event::{Channel, Direction, Event, EventKind, Message, Party, Provider};
use switchboard::route::store::redis::RedisStore;
use switchboard::route::store::RoutingStore;
use switchboard::route::strategy::Strategies;
use switchboard::route::Engine;

/// As the `switchboard` binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn routing(agents: usize) -> RoutingConfig {
    let mut cfg = RoutingConfig {
        default_team: Some("support".into()),
        default_strategy: "least_loaded".into(),
        sticky_window_secs: 3600,
        offline_grace_secs: 300,
        auto_close_after_secs: 86_400,
        max_queued: 1_000_000,
        ..Default::default()
    };
    cfg.contact_lists.insert(
        "vip".into(),
        (0..50).map(|i| format!("1999000{i:04}")).collect(),
    );
    cfg.teams.insert("support".into(), TeamConfig::default());
    cfg.teams.insert("sales".into(), TeamConfig::default());
    for i in 0..agents {
        let team = if i % 3 == 0 { "sales" } else { "support" };
        cfg.agents.insert(
            format!("agent{i:03}"),
            AgentConfig {
                teams: vec![team.into()],
                capacity: 1000,
                skills: [("spanish".to_string(), (i % 10 + 1) as u8)].into(),
                presence: Some(Presence::Online),
                ..Default::default()
            },
        );
    }
    cfg.rules = vec![
        RuleConfig {
            id: "vip".into(),
            when: Conditions {
                contact_lists: vec!["vip".into()],
                ..Default::default()
            },
            team: Some("sales".into()),
            priority: 50,
            ..Default::default()
        },
        RuleConfig {
            id: "spanish".into(),
            when: Conditions {
                contact_prefixes: vec!["34".into()],
                ..Default::default()
            },
            team: Some("support".into()),
            strategy: Some("skills".into()),
            skills: vec!["spanish".into()],
            ..Default::default()
        },
        RuleConfig {
            id: "orders".into(),
            when: Conditions {
                text_regex: Some(r"(?i)\border\s+#?\d+".into()),
                ..Default::default()
            },
            team: Some("sales".into()),
            strategy: Some("round_robin".into()),
            ..Default::default()
        },
    ];
    cfg
}

/// Unified events as the normalizers produce them.
fn events(n: usize, tenants: usize) -> Vec<Item> {
    let received = time::OffsetDateTime::now_utc();
    let mut out = Vec::with_capacity(n);
    let mut contacts: Vec<String> = Vec::new();
    for i in 0..n {
        let tenant = format!("t{}", i % tenants);
        // 30 % follow-ups in a conversation already seen.
        let contact = if i % 10 < 3 && !contacts.is_empty() {
            contacts[(i * 7919) % contacts.len()].clone()
        } else {
            let c = match i % 20 {
                0 => format!("1999000{:04}", i % 50),
                1..=4 => format!("34{:09}", i),
                _ => format!("1{:010}", i),
            };
            contacts.push(c.clone());
            c
        };
        let text = if i % 9 == 0 {
            format!("where is my order #{i}?")
        } else {
            format!("hello, message number {i}, how are you today?")
        };
        let mut e = Event::new(
            EventKind::Message,
            Provider::Meta,
            Channel::Whatsapp,
            Direction::Inbound,
            &tenant,
            "meta_bench",
            format!("meta:wamid:bench{i}"),
            Some(received),
            received,
        );
        e.provider_message_id = Some(format!("wamid.bench{i}"));
        e.contact = Some(Party {
            id: contact,
            name: Some("Bench Contact".into()),
            ..Party::default()
        });
        e.business = Some(Party {
            id: "106540352242922".into(),
            display: Some("15550783881".into()),
            ..Party::default()
        });
        e.message = Some(Message {
            kind: "text".into(),
            text: Some(text),
            ..Message::default()
        });
        e.raw = Some(switchboard::event::Raw::of(
            &serde_json::json!({"from": "x", "id": format!("wamid.bench{i}"), "type": "text"}),
        ));
        e.derive_conversation_id();
        out.push(Item {
            key: e.event_id.clone(),
            payload: e.to_json(),
            shard: e.conversation_id.clone(),
            legacy_key: None,
        });
    }
    out
}

struct Run {
    events: usize,
    elapsed: Duration,
    decisions: u64,
    latency: Histogram<u64>,
    /// CPU time while the routers ran: redis-server's and this process's (the engine).
    redis_cpu_us: u64,
    self_cpu_us: u64,
}

#[path = "common/proc_cpu.rs"]
mod proc_cpu;

/// CPU used so far by redis-server (None: not on this machine) and by this process.
fn cpu_now(redis: Option<u32>, ticks: u64) -> (u64, u64) {
    (
        redis.map_or(0, |p| proc_cpu::cpu_us(p, ticks)),
        proc_cpu::cpu_us(std::process::id(), ticks),
    )
}

async fn backend(url: &str, prefix: &str, partitions: usize) -> Backend {
    let cfg = RedisConfig {
        url: url.into(),
        cluster_nodes: Vec::new(),
        key_prefix: prefix.into(),
        command_timeout_ms: 10_000,
        connect_timeout_ms: 2_000,
        ..RedisConfig::default()
    };
    let limits = Limits {
        dedup_ttl: Duration::from_secs(600),
        inbound_max_backlog: 10_000_000,
        events_max_len: 10_000_000,
        events_max_age: Duration::ZERO,
        deadletter_max_len: 1000,
        deadletter_max_age: Duration::from_secs(3600),
        persister_max_backlog: 1_000_000,
        delivery_max_lag: None,
        memory_max_dedup_keys: 1,
    };
    let first = RedisBackend::new(&cfg, limits.clone()).expect("redis backend");
    if partitions <= 1 {
        return Backend::Redis(Box::new(first));
    }
    let conn = first.connection();
    Backend::Partitioned(Partitioned::new(
        (0..partitions)
            .map(|p| {
                Backend::Redis(Box::new(
                    RedisBackend::partition(
                        &cfg,
                        limits.clone(),
                        &format!("{{{prefix}:p{p}}}"),
                        conn.clone(),
                    )
                    .expect("redis partition"),
                ))
            })
            .collect(),
    ))
}

async fn run(
    url: &str,
    items: &[Item],
    tenants: usize,
    agents: usize,
    batch: usize,
    partitions: usize,
    routed: bool,
) -> Run {
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let backend = backend(url, &prefix, partitions).await;
    for chunk in items.chunks(100) {
        backend
            .accept(Batch {
                events: chunk.to_vec(),
                dead_letters: Vec::new(),
            })
            .await
            .expect("accept");
    }
    let engine = if routed {
        let Backend::Redis(r) = &backend.partitions()[0] else {
            unreachable!()
        };
        let store = RoutingStore::Redis(Box::new(RedisStore::new(
            r.connection(),
            &prefix,
            Duration::from_secs(10),
        )));
        let names: Vec<String> = (0..tenants).map(|t| format!("t{t}")).collect();
        let file: HashMap<String, RoutingConfig> =
            names.iter().map(|t| (t.clone(), routing(agents))).collect();
        Some(Arc::new(
            Engine::start(store, backend.clone(), Strategies::builtin(), names, file)
                .await
                .expect("engine"),
        ))
    } else {
        None
    };
    // One router loop per partition, each holding its partition's lease.
    let total = items.len();
    let moved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ticks = proc_cpu::clock_ticks();
    let redis = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .ok()
        .and_then(|mut c| proc_cpu::redis_pid(&mut c))
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}/stat")).exists());
    let cpu_before = cpu_now(redis, ticks);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, backend) in backend.partitions().into_iter().enumerate() {
        let engine = engine.clone();
        let moved = moved.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut decisions = 0u64;
            let consumer = format!("bench-router-{w}");
            let lease = Duration::from_secs(30);
            assert!(backend.lease(&consumer, lease).await.expect("lease"));
            let mut renewed = Instant::now();
            while moved.load(std::sync::atomic::Ordering::SeqCst) < total {
                if renewed.elapsed() > lease / 3 {
                    assert!(backend.lease(&consumer, lease).await.expect("lease"));
                    renewed = Instant::now();
                }
                let mut entries = backend
                    .read_inbound(
                        &consumer,
                        batch,
                        Duration::from_millis(100),
                        Duration::from_secs(60),
                    )
                    .await
                    .expect("read");
                if entries.is_empty() {
                    continue;
                }
                let mut drain = Vec::new();
                if let Some(engine) = &engine {
                    let out = engine
                        .route_batch(&mut entries, engine.now())
                        .await
                        .expect("route");
                    for (n, took) in &out.calls {
                        latency
                            .record_n(took.as_micros().max(1) as u64, *n as u64)
                            .ok();
                    }
                    decisions += out.decisions as u64;
                    drain = out.drain;
                }
                let n = backend
                    .publish_fenced(&consumer, &entries)
                    .await
                    .expect("publish");
                moved.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                if let Some(engine) = &engine {
                    drain.sort();
                    drain.dedup();
                    for t in drain {
                        engine.drain(&t, engine.now()).await.expect("drain");
                    }
                }
            }
            (latency, decisions)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut decisions = 0u64;
    for t in tasks {
        let (h, d) = t.await.expect("router task");
        latency.add(&h).ok();
        decisions += d;
    }
    let moved = moved.load(std::sync::atomic::Ordering::SeqCst);
    let elapsed = started.elapsed();
    let cpu_after = cpu_now(redis, ticks);
    cleanup(url, &prefix).await;
    Run {
        events: moved,
        elapsed,
        decisions,
        latency,
        redis_cpu_us: cpu_after.0 - cpu_before.0,
        self_cpu_us: cpu_after.1 - cpu_before.1,
    }
}

/// Deletes every key of a run (`{prefix}...` and `{prefix:rt:<tenant>}...`), so that
/// repeated runs do not fill the shared Redis (and slow each other down).
async fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("unlink");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke {
        2000
    } else {
        env_or("EVENTS", 100_000)
    };
    let tenants = env_or("TENANTS", 4);
    let agents = env_or("AGENTS", 25);
    let batch = env_or("BATCH", 256);
    let partitions = env_or("PARTITIONS", 1);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let items = events(n, tenants);
    println!(
        "routing bench: {n} events, {tenants} tenants x {agents} agents, batch {batch}, {partitions} partitions (one router each){}",
        if smoke {
            " (smoke run; use --bench for figures)"
        } else {
            ""
        }
    );
    let pass = run(&url, &items, tenants, agents, batch, partitions, false).await;
    let routed = run(&url, &items, tenants, agents, batch, partitions, true).await;
    let eps = |r: &Run| r.events as f64 / r.elapsed.as_secs_f64();
    println!(
        "pass-through router: {:>9.0} events/s ({} events in {:.2} s)",
        eps(&pass),
        pass.events,
        pass.elapsed.as_secs_f64()
    );
    println!(
        "routing router:      {:>9.0} events/s ({} events in {:.2} s), {:.0} decisions/s",
        eps(&routed),
        routed.events,
        routed.elapsed.as_secs_f64(),
        routed.decisions as f64 / routed.elapsed.as_secs_f64()
    );
    println!(
        "ratio routing/pass-through: {:.2}",
        eps(&routed) / eps(&pass)
    );
    let ms = |q: f64| routed.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "decision latency: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        routed.latency.max() as f64 / 1000.0
    );
    let per = |us: u64, r: &Run| us as f64 / r.events.max(1) as f64;
    println!(
        "CPU per event: redis-server {:.1} µs routing vs {:.1} µs pass-through ({:.1} µs of routing); router process {:.1} µs vs {:.1} µs",
        per(routed.redis_cpu_us, &routed),
        per(pass.redis_cpu_us, &pass),
        per(routed.redis_cpu_us, &routed) - per(pass.redis_cpu_us, &pass),
        per(routed.self_cpu_us, &routed),
        per(pass.self_cpu_us, &pass),
    );
    assert_eq!(pass.events, n, "every event published once (pass-through)");
    assert_eq!(routed.events, n, "every event published once (routing)");
    assert_eq!(routed.decisions as usize, n, "every event decided once");
}
