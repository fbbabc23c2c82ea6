//! Test harness: a real gateway on port 0 against real Redis (or the memory backend), plus
//! the payload builders and the Redis plumbing the tests need.
//!
//! Each app gets its own Redis key prefix, so tests run in parallel without seeing each
//! other's streams. When Redis is not reachable the tests fail with a message that says so:
//! they never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};
use switchboard::startup::Application;
use switchboard::verify::meta::sign_sha256;

pub const SECRET: &str = "test-app-secret";
pub const OLD_SECRET: &str = "old-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const API_TOKEN: &str = "test-api-token-0123456789abcdef-0123";
/// phone_number_id mapped to tenant `acme` (and 222 to `globex`).
pub const PHONE_ID: &str = "111";

pub const BASE_CONFIG: &str = r#"
[server]
bind = "127.0.0.1:0"
workers = 2
shutdown_timeout_secs = 5
[log]
level = "warn"
[streams]
dedup_ttl_secs = 3600
[redis]
command_timeout_ms = 1000
connect_timeout_ms = 500
[router]
block_ms = 200
claim_idle_ms = 5000
[api]
token = "test-api-token-0123456789abcdef-0123"
[tenants.acme]
[tenants.globex]
[sources.meta_test]
provider = "meta"
app_secrets = ["old-secret", "test-app-secret"]
verify_token = "test-verify-token"
channels = { "111" = "acme", "222" = "globex", "1234567890" = "acme" }
[sources.meta_sha1]
provider = "meta"
app_secrets = ["test-app-secret"]
verify_token = "v"
allow_sha1 = true
channels = { "111" = "acme" }
"#;

pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Fails the test (never skips) when Redis does not answer.
pub async fn require_redis(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("valid redis url");
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(c)) => c,
        other => panic!(
            "Redis is required for this test and does not answer at {url} ({other:?}). \
             Start it (redis-server --daemonize yes; docs/testing.md) or set SWITCHBOARD_TEST_REDIS_URL."
        ),
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub prefix: String,
    pub redis_url: String,
    stop: Option<actix_web::dev::ServerHandle>,
}

pub fn test_config(backend: BackendKind) -> Config {
    let mut c = Config::from_toml(BASE_CONFIG).expect("test config is valid");
    c.backend = backend;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    c
}

pub async fn spawn_app(backend: BackendKind) -> TestApp {
    spawn_with(test_config(backend)).await
}

pub async fn spawn_with(config: Config) -> TestApp {
    if config.backend == BackendKind::Redis {
        require_redis(&config.redis.url).await;
    }
    spawn_unchecked(config).await
}

/// Like [`spawn_with`] without first checking that Redis answers (for outage tests).
pub async fn spawn_unchecked(config: Config) -> TestApp {
    let prefix = config.redis.key_prefix.clone();
    let url = config.redis.url.clone();
    let app = Application::build(config).await.expect("app builds");
    let port = app.port();
    let handle = app.server_handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        // Idle connections are dropped well before the server's keep-alive (5 s) closes them:
        // a request sent on a connection the server is closing fails with IncompleteMessage
        // (seen under load in the two-router capacity test).
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
        prefix,
        redis_url: url,
        stop: Some(handle),
    }
}

impl TestApp {
    /// Meta's data deletion callback for `user`, signed with `secret` as Meta does.
    pub async fn meta_data_deletion(&self, secret: &str, user: &str) -> reqwest::Response {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = switchboard::verify::signed_request::sign(
            secret,
            &json!({"algorithm": "HMAC-SHA256", "issued_at": now, "user_id": user}),
        );
        self.client
            .post(self.url("/webhooks/meta_test/data-deletion"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "signed_request={}",
                url::form_urlencoded::byte_serialize(signed.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .unwrap()
    }

    /// A gateway already running elsewhere (e.g. the binary), at `base`.
    pub fn at(base: &str) -> TestApp {
        TestApp {
            base: base.to_string(),
            client: reqwest::Client::new(),
            prefix: String::new(),
            redis_url: redis_url(),
            stop: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST a body to `/webhooks/{source}` signed with `secret` (None: unsigned).
    pub async fn post_signed(
        &self,
        source: &str,
        body: &[u8],
        secret: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url(&format!("/webhooks/{source}")))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = secret {
            req = req.header("x-hub-signature-256", sign_sha256(s, body));
        }
        req.send().await.expect("request sent")
    }

    pub async fn post(&self, body: &[u8]) -> reqwest::Response {
        self.post_signed("meta_test", body, Some(SECRET)).await
    }

    /// Up to 1000 events from the events stream, through the read API.
    pub async fn events(&self) -> Vec<Value> {
        self.read_api("/v1/events").await
    }

    pub async fn deadletters(&self) -> Vec<Value> {
        self.read_api("/v1/deadletters").await
    }

    async fn read_api(&self, path: &str) -> Vec<Value> {
        self.read_pages(path, 1000).await
    }

    /// Every item of a read API (`/v1/events`, `/v1/deadletters`), `limit` per page,
    /// following `next_after` from the start.
    pub async fn read_pages(&self, path: &str, limit: usize) -> Vec<Value> {
        match self.try_read_pages(path, limit).await {
            Ok(items) => items,
            Err(status) => panic!("{path} answers {status}"),
        }
    }

    /// [`TestApp::read_pages`], or the first status other than 200.
    pub async fn try_read_pages(
        &self,
        path: &str,
        limit: usize,
    ) -> Result<Vec<Value>, reqwest::StatusCode> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}?limit={limit}", self.url(path));
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            } else {
                url.push_str("&after=0-0");
            }
            let res = self
                .client
                .get(url)
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            if res.status() != 200 {
                return Err(res.status());
            }
            let v: Value = res.json().await.unwrap();
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return Ok(out);
            }
            after = v["next_after"].as_str().map(str::to_string);
            out.extend(items);
        }
    }

    /// Waits until the events stream holds at least `n` events (the router is asynchronous).
    pub async fn wait_for_events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ev = self.events().await;
            if ev.len() >= n || Instant::now() > deadline {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        require_redis(&self.redis_url).await
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{{{}}}:{suffix}", self.prefix)
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.stop.take() {
            h.stop(true).await;
        }
    }
}

/// Sums a counter over the label sets that contain every given `label="value"` pair.
pub fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A WhatsApp Cloud API webhook with one text message per id, for `phone_number_id`.
/// The shape follows Meta's messages webhook reference (text example).
pub fn wa_text_batch(phone_number_id: &str, ids: &[String]) -> Vec<u8> {
    let messages: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"from": "16505551234", "id": id, "timestamp": "1749416383", "type": "text",
                   "text": {"body": format!("hello {id}")}})
        })
        .collect();
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "messages": messages
        }}]}]
    }))
    .unwrap()
}

pub fn wa_text(id: &str) -> Vec<u8> {
    wa_text_batch(PHONE_ID, &[id.to_string()])
}

pub fn unique_wamid() -> String {
    format!("wamid.TEST{}", uuid::Uuid::new_v4().simple())
}

pub fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on its own port and directory with AOF fsync on every write, so
/// that a test can stop and restart it without losing what it acknowledged.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            port,
            dir,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (the tests need it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL: the harshest case; AOF with fsync always keeps what was
    /// acknowledged).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local Redis Cluster of three masters (no replicas) on loopback, each redis-server in
/// cluster mode in its own directory, slots assigned by `redis-cli --cluster create`.
pub struct LocalCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let p = free_port();
        if p > 55_000 || taken.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl LocalCluster {
    pub fn start(masters: usize) -> LocalCluster {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        for _ in 0..masters {
            ports.push(cluster_port(&ports));
        }
        let children = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed (apt-get install redis-server)")
            })
            .collect();
        let c = LocalCluster {
            ports,
            dir,
            children,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &c.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(c.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must agree the cluster is up before clients use it.
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &c.ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok on {port}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }

    pub fn nodes(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The keys one node holds (each master owns a third of the slots).
    pub fn keys_on(&self, port: u16) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--scan"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
