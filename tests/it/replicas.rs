//! Replicated Redis: accepts acknowledged by replicas (`redis.min_replicas_acked`, Redis
//! WAIT) and the Sentinel connection mode following a failover, against a primary, a
//! replica and a sentinel started here on free ports (never the shared Redis).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::config::{BackendKind, Config};

use crate::helpers::*;

/// One redis-server (or sentinel) of this test, killed with SIGKILL on drop.
pub struct Node {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(args: Vec<String>, port: u16) -> Node {
        let mut n = Node {
            port,
            args,
            child: None,
        };
        n.start();
        n
    }

    /// Starts a redis-server node again as a replica of the one on `primary` (what a
    /// sentinel-aware orchestrator does with a dead node that has no persistence: it must
    /// never come back as an empty primary that a sentinel could pick in a later failover).
    pub fn restart_as_replica_of(&mut self, primary: u16) {
        if let Some(i) = self.args.iter().position(|a| a == "--replicaof") {
            self.args.drain(i..i + 3);
        }
        self.args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        self.start();
    }

    pub fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A primary (`replica_of` None) or a replica of the primary on that port.
    pub fn redis(dir: &std::path::Path, replica_of: Option<u16>) -> Node {
        let port = free_port();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            &format!("dump-{port}.rdb"),
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--dir".into());
        args.push(dir.display().to_string());
        // Kept with the directory when a test fails (it is removed only on success).
        args.push("--logfile".into());
        args.push(dir.join(format!("redis-{port}.log")).display().to_string());
        if let Some(p) = replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        Node::spawn(args, port)
    }

    /// A sentinel watching the primary on `primary` as `mymaster` (quorum 1), declaring it
    /// down after 1 s.
    pub fn sentinel(dir: &std::path::Path, primary: u16) -> Node {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsentinel monitor mymaster 127.0.0.1 {primary} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\nsentinel parallel-syncs mymaster 1\n",
                dir.display(),
                dir.join(format!("sentinel-{port}.log")).display()
            ),
        )
        .unwrap();
        Node::spawn(vec![conf.display().to_string(), "--sentinel".into()], port)
    }

    /// A node that runs nothing (to move a real one out of a variable).
    fn placeholder() -> Node {
        Node {
            port: 0,
            args: Vec::new(),
            child: None,
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed (it comes with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the replica's link to its primary is up.
pub fn wait_linked(replica: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .cli(&["info", "replication"])
        .contains("master_link_status:up")
    {
        assert!(
            Instant::now() < deadline,
            "replica {} never linked",
            replica.port
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dedup_keys(node: &Node, prefix: &str) -> usize {
    node.cli(&["--scan", "--pattern", &format!("{{{prefix}}}:dedup:v2:*")])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

#[tokio::test]
async fn accepts_wait_for_a_replica_and_answer_503_without_one() {
    let dir = temp_dir("replicas");
    let primary = Node::redis(&dir, None);
    let mut replica = Node::redis(&dir, Some(primary.port));
    wait_linked(&replica);

    let mut config = test_config(BackendKind::Redis);
    config.redis.url = format!("redis://127.0.0.1:{}", primary.port);
    config.redis.min_replicas_acked = 1;
    // Long enough for a linked replica to acknowledge while the whole suite runs on two
    // cores (300 ms gave a 503 there), short enough to bound the wait below.
    config.redis.replica_ack_timeout_ms = 1500;
    let prefix = config.redis.key_prefix.clone();
    let app = spawn_with(config.clone()).await;
    for i in 1..=5 {
        let res = app.post(&wa_text(&unique_wamid())).await;
        assert_eq!(res.status(), 200);
        // Acknowledged means on the replica already, not only on the primary.
        assert_eq!(
            dedup_keys(&replica, &prefix),
            i,
            "on the replica at the 2xx"
        );
    }

    // The replica gone: nothing is acknowledged that only the primary holds.
    replica.kill();
    let started = Instant::now();
    let res = app.post(&wa_text(&unique_wamid())).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "dependency_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by replica_ack_timeout_ms"
    );
    let metrics = app.metrics().await;
    assert!(
        counter(&metrics, "switchboard_replica_ack_missing_total", &[]) >= 1.0,
        "{metrics}"
    );
    // The provider's retry once the replica is back: accepted (the first try's writes are
    // on the primary already, so this is a duplicate, answered only once replicated).
    let wamid = unique_wamid();
    assert_eq!(app.post(&wa_text(&wamid)).await.status(), 503);
    replica.start();
    wait_linked(&replica);
    assert_eq!(app.post(&wa_text(&wamid)).await.status(), 200);
    app.stop().await;

    // Without the option, the same primary answers 2xx with no replica at all.
    replica.kill();
    config.redis.min_replicas_acked = 0;
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_with(config).await;
    assert_eq!(app.post(&wa_text(&unique_wamid())).await.status(), 200);
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Posts `wamid` until it is answered 2xx (a provider's retries); false after `within`.
async fn deliver(app: &TestApp, wamid: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let res = app
            .client
            .post(app.url("/webhooks/meta_test"))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                switchboard::verify::meta::sign_sha256(SECRET, &wa_text(wamid)),
            )
            .body(wa_text(wamid))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if matches!(&res, Ok(r) if r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn sentinel_config(sentinel: &Node) -> Config {
    let mut config = test_config(BackendKind::Redis);
    config.redis.url = "redis://ignored-in-sentinel-mode:6379".into();
    config.redis.sentinel_nodes = vec![format!("redis://127.0.0.1:{}", sentinel.port)];
    config.redis.sentinel_master = Some("mymaster".into());
    config.redis.min_replicas_acked = 1;
    config.redis.replica_ack_timeout_ms = 500;
    config.redis.command_timeout_ms = 1000;
    config
}

/// The short form of scripts/failure-proof's failover scenario: a primary with one replica
/// and a sentinel, webhooks sent one after another (each retried until 2xx, as providers
/// do), kill -9 of the primary mid-way, the replica promoted, the old primary restarted
/// (it rejoins as a replica of the new one). With `min_replicas_acked = 1` every webhook
/// answered 2xx is on the events stream afterwards, once.
#[tokio::test]
async fn sentinel_failover_loses_no_acknowledged_webhook() {
    let dir = temp_dir("sentinel");
    let mut primary = Node::redis(&dir, None);
    let replica = Node::redis(&dir, Some(primary.port));
    wait_linked(&replica);
    let sentinel = Node::sentinel(&dir, primary.port);
    // The sentinel has found the replica (it needs one to fail over to).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sentinel
        .cli(&["sentinel", "replicas", "mymaster"])
        .contains(&replica.port.to_string())
    {
        assert!(Instant::now() < deadline, "sentinel never saw the replica");
        std::thread::sleep(Duration::from_millis(100));
    }

    let primary_port = primary.port;
    let config = sentinel_config(&sentinel);
    let app = spawn_unchecked(config).await;
    let mut acknowledged = Vec::new();
    let mut restarted = None;
    for i in 0..40 {
        if i == 15 {
            // kill -9 of the primary; an orchestrator restarts it once the replica is
            // promoted, as the new primary's replica (which min_replicas_acked = 1 needs:
            // until then every accept is answered 503). Restarted as a plain primary, it is
            // an empty node the sentinel may promote if it wrongly takes the new primary
            // for down (one sentinel, quorum 1, on a loaded machine): its replicas then
            // resynchronise from it and lose everything (docs/managed-services.md).
            primary.kill();
            let (sentinel_port, replica_port) = (sentinel.port, replica.port);
            let mut old = std::mem::replace(&mut primary, Node::placeholder());
            restarted = Some(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let out = Command::new("redis-cli")
                        .args(["-p", &sentinel_port.to_string()])
                        .args(["sentinel", "get-master-addr-by-name", "mymaster"])
                        .output()
                        .unwrap();
                    if String::from_utf8_lossy(&out.stdout).contains(&replica_port.to_string()) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "the replica was never promoted");
                    std::thread::sleep(Duration::from_millis(100));
                }
                old.restart_as_replica_of(replica_port);
                old
            }));
        }
        let wamid = unique_wamid();
        assert!(
            deliver(&app, &wamid, Duration::from_secs(60)).await,
            "webhook {i} was never accepted after the failover"
        );
        acknowledged.push(wamid);
    }
    let _old_primary = restarted.map(|t| t.join().unwrap());
    // Read as a consumer does: a 503 while the sentinel is still settling (one sentinel on
    // a loaded machine may fail over once more) is retried.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        match app.try_read_pages("/v1/events", 1000).await {
            Ok(events) if events.len() >= acknowledged.len() || Instant::now() > deadline => {
                break events
            }
            Ok(_) => {}
            Err(status) => assert!(
                status == 503 && Instant::now() < deadline,
                "/v1/events answers {status}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let on_stream: Vec<String> = events
        .iter()
        .filter_map(|e| {
            e["event"]["provider_message_id"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let distinct: HashSet<&String> = on_stream.iter().collect();
    assert_eq!(distinct.len(), on_stream.len(), "no event twice");
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|w| !distinct.contains(w))
        .collect();
    assert!(
        missing.is_empty(),
        "{} webhook(s) answered 2xx are not on the events stream: {missing:?} (primary {}, replica {}, sentinel {}; logs in {})",
        missing.len(),
        primary_port,
        replica.port,
        sentinel.port,
        dir.display()
    );
    app.stop().await;
    drop(sentinel);
    let _ = std::fs::remove_dir_all(&dir);
}
