//! Push delivery benchmark: events/s through one destination against the events stream's
//! own rate, in one run.
//!
//! `cargo bench --bench delivery` starts the delivery worker (fan-out, dispatcher, as the
//! gateway runs it) on the Redis backend with one destination: a loopback HTTP/1.1
//! receiver written here that checks every Standard Webhooks signature with its own
//! HMAC-SHA256 and answers 200. Then it appends EVENTS unified events (CONVERSATIONS
//! conversations, round robin) to the events stream, 100 per call as the router publishes,
//! as fast as it can, while delivery runs, and waits until the receiver has every event.
//!
//! It prints: the stream's rate (events appended per second while appending), the
//! delivery rate (events delivered per second, from the first append to the last
//! delivery), their ratio, delivery latency p50/p99 (append → the receiver verified it),
//! CPU microseconds per delivered event of this process (utime + stime from
//! /proc/self/stat: the fan-out, dispatcher, signing, HTTP client, and also the receiver and
//! the producer, which share the process), and checks: every event delivered, every
//! signature valid, each conversation in order.
//!
//! Knobs: EVENTS (20000), CONVERSATIONS (200), MAX_IN_FLIGHT (the destination's, default
//! 8 as shipped), RATE (events/s appended, paced per batch of 100; 0 = as fast as the
//! stream takes them, the default: then the latency is mostly queueing behind the burst),
//! REDIS_URL. Without `--bench` (as `cargo test --all-targets` runs it) a
//! 300-event smoke run keeps the harness tested.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use switchboard::accept::{Backend, Item, Limits};
use switchboard::config::{BackendKind, Config};
use switchboard::delivery::{Delivery, DELIVERY_GROUP};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[path = "support/receiver.rs"]
mod support;

/// As the `switchboard` binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "whsec_c3dpdGNoYm9hcmQtYmVuY2gtZGVzdGluYXRpb24tc2VjcmV0LTMy";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// This process's CPU time (utime + stime), in clock ticks of 100 per second (Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    n(11) + n(12)
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    delivered: AtomicU64,
    bad_signatures: AtomicU64,
    /// conversation → last sequence number delivered; out-of-order deliveries counted.
    last: Mutex<HashMap<String, u64>>,
    out_of_order: AtomicU64,
    latency_us: Mutex<Option<Histogram<u64>>>,
}

/// A keep-alive HTTP/1.1 receiver: verifies, records, answers 200.
async fn receive(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
            while let Some((headers, body)) = support::read_request(&mut sock, &mut buf).await {
                let status = if support::verified(SECRET, &headers, &body) {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let conv = v["conversation_id"].as_str().unwrap_or("").to_string();
                    let seq = v["bench_seq"].as_u64().unwrap_or(0);
                    let sent = v["bench_sent_us"].as_u64().unwrap_or(0);
                    {
                        let mut last = seen.last.lock().unwrap_or_else(|p| p.into_inner());
                        let prev = last.insert(conv, seq);
                        if prev.is_some_and(|p| p >= seq) {
                            seen.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(hist) = seen
                        .latency_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_mut()
                    {
                        let _ = hist.record(now_us().saturating_sub(sent).max(1));
                    }
                    seen.delivered.fetch_add(1, Ordering::Relaxed);
                    200
                } else {
                    seen.bad_signatures.fetch_add(1, Ordering::Relaxed);
                    401
                };
                let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                if sock.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn config(url: &str, redis_url: &str, max_in_flight: u32) -> Config {
    let toml = format!(
        r#"
backend = "redis"
[redis]
url = "{redis_url}"
key_prefix = "bench-dlv-{prefix}"
[delivery]
allow_private_networks = true
[tenants.acme.destinations.crm]
url = "{url}"
secret = "{SECRET}"
max_in_flight = {max_in_flight}
[sources.meta_bench]
provider = "meta"
app_secrets = ["bench-app-secret"]
verify_token = "bench"
channels = {{ "111" = "acme" }}
"#,
        prefix = uuid::Uuid::new_v4().simple()
    );
    let mut c = Config::from_toml(&toml).expect("bench config is valid");
    c.backend = BackendKind::Redis;
    c
}

fn event(seq: u64, conv: usize) -> Item {
    let id = format!("evt_bench_{seq:08}");
    let body = serde_json::json!({
        "event_id": id,
        "tenant": "acme",
        "kind": "message",
        "conversation_id": format!("conv_{conv:05}"),
        "received_at": switchboard::event::rfc3339(time::OffsetDateTime::now_utc()),
        "message": {"type": "text", "text": "hello from the delivery bench"},
        "bench_seq": seq,
        "bench_sent_us": now_us(),
    });
    Item::new(id, body.to_string())
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let events: u64 = if smoke { 300 } else { env_or("EVENTS", 20_000) };
    let convs: usize = env_or("CONVERSATIONS", 200);
    let max_in_flight: u32 = env_or("MAX_IN_FLIGHT", 8);
    let rate: u64 = env_or("RATE", 0);
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379".to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        let seen = Arc::new(Seen {
            latency_us: Mutex::new(Some(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
            )),
            ..Default::default()
        });
        tokio::spawn(receive(listener, seen.clone()));
        let cfg = config(&url, &redis_url, max_in_flight);
        let backend = Backend::Redis(Box::new(
            switchboard::accept::redis::RedisBackend::new(&cfg.redis, Limits::from_config(&cfg))
                .expect("redis backend"),
        ));
        let admin = Arc::new(switchboard::admin::Admin::from_config(&cfg));
        let delivery = Arc::new(
            Delivery::new(&cfg, &backend, admin, None)
                .expect("delivery starts")
                .expect("a destination is configured"),
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(delivery.clone().run(stop_rx));
        // The fan-out's group exists before the first event (it starts at the stream's end).
        let deadline = Instant::now() + Duration::from_secs(10);
        while backend
            .events_group_lag(DELIVERY_GROUP)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            assert!(Instant::now() < deadline, "the delivery group was not created");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu0 = cpu_ticks();
        let t0 = Instant::now();
        let mut seq = 0u64;
        while seq < events {
            if rate > 0 {
                // Paced: batch k leaves at k * 100 / rate seconds.
                let due = t0 + Duration::from_secs_f64(seq as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let n = (events - seq).min(100);
            let batch: Vec<Item> = (0..n)
                .map(|i| event(seq + i, ((seq + i) as usize) % convs))
                .collect();
            let appended = backend.append_events(&batch).await.expect("append");
            assert_eq!(appended as u64, n, "every event appended once");
            seq += n;
        }
        let appended_in = t0.elapsed();
        let deadline = Instant::now() + Duration::from_secs(if smoke { 60 } else { 1800 });
        while seen.delivered.load(Ordering::Relaxed) < events {
            assert!(
                Instant::now() < deadline,
                "only {} of {events} delivered",
                seen.delivered.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delivered_in = t0.elapsed();
        let cpu = cpu_ticks() - cpu0;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), worker).await;
        let delivered = seen.delivered.load(Ordering::Relaxed);
        let stream_rate = events as f64 / appended_in.as_secs_f64();
        let delivery_rate = delivered as f64 / delivered_in.as_secs_f64();
        let hist = seen
            .latency_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("histogram");
        let cpu_us = cpu as f64 * 10_000.0 / delivered.max(1) as f64;
        println!(
            "delivery bench{}: {events} events, {convs} conversations, one destination (max_in_flight {max_in_flight}), Redis backend, appended {}",
            if smoke { " (smoke)" } else { "" },
            if rate > 0 { format!("at {rate}/s") } else { "as fast as possible".to_string() }
        );
        println!(
            "  events stream: {stream_rate:.0} events/s appended ({:.2} s)",
            appended_in.as_secs_f64()
        );
        println!(
            "  delivered:     {delivery_rate:.0} events/s ({:.2} s from the first append to the last delivery)",
            delivered_in.as_secs_f64()
        );
        println!("  ratio:         {:.3}", delivery_rate / stream_rate);
        println!(
            "  latency (append → verified by the receiver): p50 {:.1} ms, p99 {:.1} ms",
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0
        );
        println!("  CPU: {cpu_us:.0} µs per delivered event (this process: fan-out, dispatcher, sender, receiver, producer)");
        let bad = seen.bad_signatures.load(Ordering::Relaxed);
        let disorder = seen.out_of_order.load(Ordering::Relaxed);
        println!("  checks: {delivered} delivered, {bad} bad signatures, {disorder} out of order");
        assert_eq!(delivered, events, "every event delivered once");
        assert_eq!(bad, 0, "every signature verified");
        assert_eq!(disorder, 0, "each conversation in order");
        // Leave nothing behind in Redis.
        if let Some(d) = delivery.destination("acme", "crm") {
            let _ = delivery.purge(&d.key).await;
        }
        if let Ok(client) = redis::Client::open(redis_url.as_str()) {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", cfg.redis.key_prefix))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                let tagged: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{}*", cfg.redis.key_prefix))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                for k in keys.into_iter().chain(tagged) {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(k).query_async(&mut c).await;
                }
            }
        }
    });
}
