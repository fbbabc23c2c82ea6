//! Load harness: the whole gateway against a no-op actix endpoint, in the same run.
//!
//! `cargo bench --bench load` sends unique, correctly signed ~2 KB WhatsApp webhooks from 1,000 senders over
//! N keep-alive connections for T seconds, first to a no-op actix server (its own process,
//! same worker count, reads the body, answers 200), then to the real `switchboard` binary
//! with the shipped `config.toml` on the Redis backend — routing on, as shipped; only the
//! per-address and per-tenant rate limits are raised, so that one load generator is not
//! throttled — and prints, beside the no-op: accepted/s, routed/s (events published to the
//! events stream during the window), the inbound backlog at the end, latency percentiles,
//! CPU microseconds per webhook of the gateway and of redis-server (utime + stime from /proc),
//! peak RSS, and a correctness check (every 2xx is on the events stream exactly once).
//!
//! Two floors are measured in the same run, so that CPU figures compare across machines: the
//! no-op server's CPU per request, and redis-server's CPU for a plain `SET NX` + `XADD` of the
//! same body per request (pipelined, 64 at a time over one connection: what a minimal
//! dedup-and-enqueue service costs Redis at best). For context it also measures the same
//! requests sent one at a time on each of 64 connections, as a service that sends each
//! webhook's commands on a pooled connection would (Redis then pays its per-call overhead
//! on every request).
//!
//! Knobs (environment): CONNECTIONS (64), DURATION_SECS (10), WARMUP_SECS (2),
//! REDIS_URL (redis://127.0.0.1:6379), WORKERS (2), ROUTING (1: the shipped demo tenant's
//! routing rules decide every conversation; 0: the pass-through router, the ingest path
//! alone). Run by `cargo test --all-targets` (no `--bench` argument) it does a 1-second smoke
//! run with 4 connections, so the harness itself stays tested.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use switchboard::config::{Config, SourceConfig};
use switchboard::verify::meta::sign_sha256;

#[path = "common/proc_cpu.rs"]
mod proc_cpu;
use proc_cpu::{clock_ticks, cpu_us, redis_pid};

struct Params {
    connections: usize,
    duration: Duration,
    warmup: Duration,
    redis_url: String,
    workers: usize,
    /// Route events (the shipped demo tenant's rules) rather than pass them through.
    routing: bool,
    smoke: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Params {
    fn from_env() -> Params {
        let smoke = !std::env::args().any(|a| a == "--bench");
        Params {
            connections: if smoke { 4 } else { env_or("CONNECTIONS", 64) },
            duration: Duration::from_secs(if smoke {
                1
            } else {
                env_or("DURATION_SECS", 10)
            }),
            warmup: Duration::from_secs(if smoke { 0 } else { env_or("WARMUP_SECS", 2) }),
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            workers: env_or("WORKERS", 2),
            routing: env_or("ROUTING", 1) == 1,
            smoke,
        }
    }
}

/// What one target produced.
struct Outcome {
    /// 2xx during the measured window.
    ok: u64,
    /// 2xx including the warm-up (what must be on the events stream).
    all_ok: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Contacts the webhooks come from, in turn: each is its own conversation for routing.
const SENDERS: u64 = 1_000;

/// Builds a realistic WhatsApp Cloud API text webhook of about 2 KB with a unique wamid, from
/// one of [`SENDERS`] contacts.
struct BodyMaker {
    head: String,
    middle: String,
    tail: String,
}

impl BodyMaker {
    fn new(phone_number_id: &str) -> BodyMaker {
        // Padding text so the whole body is ~2 KB, like a real message with a long text.
        let text =
            "Hello, I would like to know more about the order I placed last week. ".repeat(22);
        BodyMaker {
            head: format!(
                r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{phone_number_id}"}},"contacts":[{{"profile":{{"name":"Sheena Nelson"}},"wa_id":""#
            ),
            middle: r#""}],"messages":[{"from":""#.to_string(),
            tail: format!(
                r#"","timestamp":"1749416383","type":"text","text":{{"body":"{text}"}}}}]}},"field":"messages"}}]}}]}}"#
            ),
        }
    }

    /// Request `seq` of connection `conn`: the sender moves on with every request, so the
    /// connections together cycle through all the senders.
    fn make(&self, conn: usize, seq: u64, run: &str) -> Bytes {
        let sender = format!("1650555{:04}", (seq * 7919 + conn as u64) % SENDERS);
        let mut s = String::with_capacity(self.head.len() + self.tail.len() + 96);
        s.push_str(&self.head);
        s.push_str(&sender);
        s.push_str(&self.middle);
        s.push_str(&sender);
        s.push_str(r#"","id":"wamid."#);
        s.push_str(&format!("LOAD{run}C{conn}S{seq}"));
        s.push_str(&self.tail);
        Bytes::from(s)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The baseline: actix-web with the same worker count, reading the body and answering 200,
/// in a process of its own (this binary again, `LOAD_NOOP_PORT` set) so that its CPU can
/// be read from /proc apart from the load generator's.
fn start_noop(workers: usize) -> (Child, SocketAddr) {
    let port = free_port();
    let child = Command::new(std::env::current_exe().expect("the bench binary"))
        .env("LOAD_NOOP_PORT", port.to_string())
        .env("LOAD_NOOP_WORKERS", workers.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the no-op server starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the no-op server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// The no-op server's own process: serves until killed.
fn serve_noop(port: u16, workers: usize) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("no-op port");
    {
        actix_web::rt::System::new().block_on(async move {
            actix_web::HttpServer::new(|| {
                actix_web::App::new().default_service(actix_web::web::to(
                    |body: Bytes| async move {
                        actix_web::HttpResponse::Ok()
                            .content_type("application/json")
                            .body(format!("{{\"accepted\":1,\"bytes\":{}}}", body.len()))
                    },
                ))
            })
            .workers(workers)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap()
        })
    }
}

async fn drive(
    addr: SocketAddr,
    path: &str,
    secret: &str,
    maker: Arc<BodyMaker>,
    p: &Params,
    run: &str,
    start: Instant,
) -> Outcome {
    let measure_from = start + p.warmup;
    let end = measure_from + p.duration;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let all_ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for conn in 0..p.connections {
        let (maker, ok, errors, all_ok) =
            (maker.clone(), ok.clone(), errors.clone(), all_ok.clone());
        let (path, secret, run) = (path.to_string(), secret.to_string(), run.to_string());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let mut seq = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                seq += 1;
                let body = maker.make(conn, seq, &run);
                let sig = sign_sha256(&secret, &body);
                let req = Request::post(path.as_str())
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig)
                    .body(Full::new(body))
                    .unwrap();
                let sent = Instant::now();
                let res = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                let status = res.status();
                let _ = res.into_body().collect().await;
                let took = sent.elapsed();
                if status.is_success() {
                    all_ok.fetch_add(1, Ordering::Relaxed);
                }
                if sent >= measure_from {
                    if status.is_success() {
                        ok.fetch_add(1, Ordering::Relaxed);
                        hist.record(took.as_micros().max(1) as u64).ok();
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                } else if !status.is_success() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            (hist, seq)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        let (h, _) = t.await.unwrap();
        hist.add(h).unwrap();
    }
    Outcome {
        ok: ok.load(Ordering::Relaxed),
        all_ok: all_ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: p.duration,
        hist,
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
}

fn start_gateway(p: &Params, prefix: &str) -> Gateway {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .arg("--config")
        .arg(repo.join("config.toml"))
        .env("SWITCHBOARD__BACKEND", "redis")
        .env("SWITCHBOARD__REDIS__URL", &p.redis_url)
        .env("SWITCHBOARD__REDIS__KEY_PREFIX", prefix)
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD__SERVER__WORKERS", p.workers.to_string())
        .env("SWITCHBOARD__LOG__LEVEL", "warn")
        .env("SWITCHBOARD__LIMITS__IP_REQUESTS_PER_SEC", "10000000")
        .env("SWITCHBOARD__LIMITS__IP_BURST", "10000000")
        .env("SWITCHBOARD__LIMITS__TENANT_REQUESTS_PER_SEC", "10000000")
        .env("SWITCHBOARD__LIMITS__TENANT_BURST", "10000000")
        // Every load connection comes from 127.0.0.1: one client address.
        .env(
            "SWITCHBOARD__SERVER__MAX_CONNECTIONS_PER_IP",
            (p.connections + 16).to_string(),
        )
        .env(
            "SWITCHBOARD__ROUTING__ENABLED",
            if p.routing { "true" } else { "false" },
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the switchboard binary starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the gateway exited during start-up: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the gateway was not ready within 30 s (is Redis at {} up?)",
            p.redis_url
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Gateway { child, addr }
}

fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap_or(0)
}

fn cleanup(conn: &mut redis::Connection, prefix: &str) {
    // `{prefix}:...` and the routing keys `{prefix:rt:<tenant>}:...`.
    let pattern = format!("{{{prefix}[}}:]*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5000)
            .query(conn)
            .unwrap_or((0, Vec::new()));
        if !keys.is_empty() {
            let _: Result<u64, _> = redis::cmd("UNLINK").arg(&keys).query(conn);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

fn row(name: &str, o: &Outcome) {
    println!(
        "{name:<10} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7}",
        o.ok,
        o.rps(),
        o.ms(0.50),
        o.ms(0.99),
        o.ms(0.999),
        o.errors
    );
}

/// What the sampler reads at one instant.
#[derive(Clone, Copy, Default)]
struct Sample {
    server_cpu_us: u64,
    redis_cpu_us: u64,
    events: u64,
    inbound: u64,
}

struct Probe {
    server_pid: u32,
    redis_pid: Option<u32>,
    ticks: u64,
    redis_url: String,
    events_key: Option<String>,
    inbound_key: Option<String>,
}

impl Probe {
    fn sample(&self, conn: &mut redis::Connection) -> Sample {
        Sample {
            server_cpu_us: cpu_us(self.server_pid, self.ticks),
            redis_cpu_us: self.redis_pid.map_or(0, |p| cpu_us(p, self.ticks)),
            events: self.events_key.as_ref().map_or(0, |k| xlen(conn, k)),
            inbound: self.inbound_key.as_ref().map_or(0, |k| xlen(conn, k)),
        }
    }

    /// Samples at the start and at the end of the measured window, on a thread of its own.
    fn window(self, start: Instant, p: &Params) -> std::thread::JoinHandle<(Sample, Sample)> {
        let (from, to) = (start + p.warmup, start + p.warmup + p.duration);
        std::thread::spawn(move || {
            let mut conn = redis::Client::open(self.redis_url.as_str())
                .and_then(|c| c.get_connection())
                .expect("Redis for the sampler");
            std::thread::sleep(from.saturating_duration_since(Instant::now()));
            let a = self.sample(&mut conn);
            std::thread::sleep(to.saturating_duration_since(Instant::now()));
            let b = self.sample(&mut conn);
            (a, b)
        })
    }
}

/// How the floor's requests reach Redis.
#[derive(Clone, Copy)]
enum FloorMode {
    /// All on one multiplexed connection: concurrent requests share its writes and reads
    /// (the strict floor the goal is judged against).
    Shared,
    /// Each of the connections on its own, one request at a time: what a service that
    /// sends each webhook's two commands on a pooled connection costs Redis (context).
    PerConnection,
}

/// redis-server's CPU per request for the floor: `SET <id> 1 NX EX <ttl>` + `XADD` of the
/// body (MAXLEN ~) as one pipeline per request, `p.connections` requests in flight over the
/// connections `mode` says, `n` requests in all.
#[allow(clippy::too_many_arguments)]
fn redis_floor_us(
    rt: &tokio::runtime::Runtime,
    p: &Params,
    body: Bytes,
    prefix: &str,
    n: u64,
    redis_pid: u32,
    ticks: u64,
    mode: FloorMode,
) -> f64 {
    let client = redis::Client::open(p.redis_url.as_str()).expect("redis url");
    let connect = || {
        rt.block_on(client.get_multiplexed_async_connection())
            .expect("Redis for the floor")
    };
    let shared = connect();
    let conns: Vec<_> = (0..p.connections)
        .map(|_| match mode {
            FloorMode::Shared => shared.clone(),
            FloorMode::PerConnection => connect(),
        })
        .collect();
    let before = cpu_us(redis_pid, ticks);
    let next = Arc::new(AtomicU64::new(0));
    let stream = format!("{{{prefix}}}:floor");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for conn in conns {
            let (mut conn, next, body, stream) = (conn, next.clone(), body.clone(), stream.clone());
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let _: Result<(Option<String>, String), _> = redis::pipe()
                        .cmd("SET")
                        .arg(format!("{{{prefix}}}:floor:{i}"))
                        .arg(1)
                        .arg("NX")
                        .arg("EX")
                        .arg(691_200)
                        .cmd("XADD")
                        .arg(&stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(1_000_000)
                        .arg("*")
                        .arg("event")
                        .arg(body.as_ref())
                        .query_async(&mut conn)
                        .await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    cpu_us(redis_pid, ticks).saturating_sub(before) as f64 / n.max(1) as f64
}

fn per(us: u64, n: u64) -> f64 {
    us as f64 / n.max(1) as f64
}

fn main() {
    if let Ok(port) = std::env::var("LOAD_NOOP_PORT") {
        serve_noop(
            port.parse().expect("LOAD_NOOP_PORT"),
            env_or("LOAD_NOOP_WORKERS", 2),
        );
        return;
    }
    let p = Params::from_env();
    let config = Config::load(Some(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config.toml"),
    ))
    .expect("the shipped config.toml loads");
    let Some(SourceConfig::Meta(demo)) = config.sources.get("meta_demo").cloned() else {
        panic!("the shipped config.toml has the meta_demo Meta source");
    };
    let secret = demo.app_secrets[0].expose().to_string();
    let phone = demo
        .channels
        .keys()
        .next()
        .expect("a mapped business id")
        .clone();
    let maker = Arc::new(BodyMaker::new(&phone));
    let run = format!("{:x}", std::process::id());
    let ticks = clock_ticks();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!(
        "load: {} connections, {:?} measured after {:?} warm-up, ~{} B bodies, {} server workers{}",
        p.connections,
        p.duration,
        p.warmup,
        maker.make(0, 0, &run).len(),
        p.workers,
        if p.smoke {
            " (smoke run: pass --bench via `cargo bench --bench load` for the real one)"
        } else {
            ""
        }
    );
    println!(
        "gateway: the shipped config.toml, backend redis, routing {} — only the per-address limits (limits.ip_*, server.max_connections_per_ip: one load generator is one address) and limits.tenant_* raised",
        if p.routing {
            "on (the demo tenant's rules decide every conversation)"
        } else {
            "OFF (ROUTING=0: pass-through router)"
        }
    );

    let mut redis_conn = redis::Client::open(p.redis_url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("Redis is required at {}: {e}", p.redis_url));
    let redis_pid = redis_pid(&mut redis_conn)
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}/stat")).exists());

    // 1. The no-op baseline.
    let (mut noop_child, noop_addr) = start_noop(p.workers);
    let start = Instant::now();
    let sampler = Probe {
        server_pid: noop_child.id(),
        redis_pid: None,
        ticks,
        redis_url: p.redis_url.clone(),
        events_key: None,
        inbound_key: None,
    }
    .window(start, &p);
    let noop = rt.block_on(drive(
        noop_addr,
        "/webhooks/meta_demo",
        &secret,
        maker.clone(),
        &p,
        &format!("{run}n"),
        start,
    ));
    let (na, nb) = sampler.join().unwrap();
    let _ = noop_child.kill();
    let _ = noop_child.wait();
    let noop_cpu = per(nb.server_cpu_us.saturating_sub(na.server_cpu_us), noop.ok);

    // 2. The gateway, as shipped.
    let prefix = format!("bench-{run}");
    let events_key = format!("{{{prefix}}}:events");
    let inbound_key = format!("{{{prefix}}}:inbound");
    let mut gw = start_gateway(&p, &prefix);
    let probe = |server_pid| Probe {
        server_pid,
        redis_pid,
        ticks,
        redis_url: p.redis_url.clone(),
        events_key: Some(events_key.clone()),
        inbound_key: Some(inbound_key.clone()),
    };
    let at_start = probe(gw.child.id()).sample(&mut redis_conn);
    let start = Instant::now();
    let sampler = probe(gw.child.id()).window(start, &p);
    let gateway = rt.block_on(drive(
        gw.addr,
        "/webhooks/meta_demo",
        &secret,
        maker.clone(),
        &p,
        &format!("{run}g"),
        start,
    ));
    let (ga, gb) = sampler.join().unwrap();
    let peak_kib = status_kib(gw.child.id(), "VmHWM:").unwrap_or(0);
    let rss_kib = status_kib(gw.child.id(), "VmRSS:").unwrap_or(0);

    // Correctness: every 2xx (warm-up included, which `drive` does not count) is on the
    // events stream once the router has drained the inbound stream.
    let deadline = Instant::now() + Duration::from_secs(120);
    while xlen(&mut redis_conn, &inbound_key) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = probe(gw.child.id()).sample(&mut redis_conn);
    let on_stream = xlen(&mut redis_conn, &events_key);
    let left_inbound = xlen(&mut redis_conn, &inbound_key);

    let _ = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status();
    let _ = gw.child.wait();
    cleanup(&mut redis_conn, &prefix);

    // 3. The Redis floor: a plain SET NX + XADD of the same body, as many as the gateway
    //    accepted in its window (at least 1,000).
    let floor_n = gateway.ok.clamp(1_000, 200_000);
    let mut floor = |mode| {
        redis_pid.map(|pid| {
            let us = redis_floor_us(
                &rt,
                &p,
                maker.make(0, 0, &run),
                &format!("{prefix}f"),
                floor_n,
                pid,
                ticks,
                mode,
            );
            cleanup(&mut redis_conn, &format!("{prefix}f"));
            us
        })
    };
    let redis_floor = floor(FloorMode::Shared);
    let redis_floor_per_conn = floor(FloorMode::PerConnection);

    let secs = p.duration.as_secs_f64();
    let accepted = gateway.rps();
    let routed = (gb.events.saturating_sub(ga.events)) as f64 / secs;
    let backlog = gb.inbound;
    let backlog_secs = backlog as f64 / accepted.max(1.0);
    let gw_cpu = per(
        gb.server_cpu_us.saturating_sub(ga.server_cpu_us),
        gateway.ok,
    );
    let redis_cpu = per(gb.redis_cpu_us.saturating_sub(ga.redis_cpu_us), gateway.ok);
    // The whole run, the router's catch-up after the window included, per event routed.
    let routed_all = drained.events.saturating_sub(at_start.events);
    let gw_cpu_all = per(
        drained.server_cpu_us.saturating_sub(at_start.server_cpu_us),
        routed_all,
    );
    let redis_cpu_all = per(
        drained.redis_cpu_us.saturating_sub(at_start.redis_cpu_us),
        routed_all,
    );

    println!();
    println!(
        "{:<10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7}",
        "target", "2xx", "req/s", "p50 ms", "p99 ms", "p999 ms", "non-2xx"
    );
    row("no-op", &noop);
    row("gateway", &gateway);
    let ratio = routed / noop.rps().max(1.0);
    println!();
    println!("accepted/s {accepted:.0}, routed/s {routed:.0} (published to the events stream in the window)");
    println!(
        "inbound backlog at the end of the window: {backlog} ({backlog_secs:.2} s of traffic)"
    );
    println!(
        "ratio routed/no-op = {ratio:.2} (accepted/no-op = {:.2})",
        accepted / noop.rps().max(1.0)
    );
    println!(
        "CPU µs per webhook in the window: gateway {gw_cpu:.1}, redis-server {redis_cpu:.1}; whole run with the router's catch-up: gateway {gw_cpu_all:.1}, redis-server {redis_cpu_all:.1}"
    );
    println!(
        "floors in this run: no-op server {noop_cpu:.1} µs/request; redis-server SET NX + XADD {} µs/request (one shared connection: the goal's floor; {} with each of the {} connections sending one request at a time)",
        redis_floor.map_or("n/a (redis-server not on this machine)".into(), |f| format!("{f:.1}")),
        redis_floor_per_conn.map_or("n/a".into(), |f| format!("{f:.1}")),
        p.connections,
    );
    println!(
        "gateway RSS: peak {:.1} MiB, at end {:.1} MiB",
        peak_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0
    );
    println!(
        "events stream: {on_stream} entries for {} 2xx answers (warm-up included), inbound left {left_inbound}: {}",
        gateway.all_ok,
        if on_stream == gateway.all_ok && left_inbound == 0 { "OK" } else { "MISMATCH" }
    );
    if gateway.errors > 0 {
        println!(
            "!!! the gateway answered {} non-2xx responses",
            gateway.errors
        );
    }
    let goal = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!(
        "goal routed/no-op >= 0.30:            {}",
        goal(ratio >= 0.30)
    );
    println!(
        "goal backlog <= 1 s of traffic:       {}",
        goal(backlog_secs <= 1.0)
    );
    println!(
        "goal p99 < 10 ms:                     {}",
        goal(gateway.ms(0.99) < 10.0)
    );
    println!(
        "goal RSS < 64 MiB:                    {}",
        goal(peak_kib < 64 * 1024)
    );
    if let Some(f) = redis_floor {
        println!(
            "goal redis CPU <= 1.0x floor:         {} ({:.2}x)",
            goal(redis_cpu <= f),
            redis_cpu / f.max(0.001)
        );
    }
    println!(
        "goal gateway CPU <= 2.5x no-op:       {} ({:.2}x)",
        goal(gw_cpu <= 2.5 * noop_cpu),
        gw_cpu / noop_cpu.max(0.001)
    );
    assert!(gateway.ok > 0, "the gateway accepted nothing");
    assert!(
        on_stream == gateway.all_ok && left_inbound == 0,
        "every 2xx must be on the events stream exactly once"
    );
}
