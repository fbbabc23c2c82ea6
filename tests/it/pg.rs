//! PostgreSQL plumbing for the tests: the shared server (127.0.0.1:5432, trust, database
//! `test`, or `SWITCHBOARD_TEST_POSTGRES_URL`) with a fresh schema per test, and a private
//! server a test may stop and start. Tests that need Postgres fail, never skip, when it does
//! not answer.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};
use switchboard::event::Event;
use switchboard::persist::write::Parsed;
use switchboard::persist::Postgres;

use crate::helpers::*;

pub fn pg_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A direct connection (not through the gateway's pool), failing the test when Postgres
/// does not answer.
pub async fn require_postgres(url: &str) -> tokio_postgres::Client {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
        }
        other => panic!(
            "PostgreSQL is required for this test and does not answer at {url} ({:?}). \
             Start it (see docs/testing.md) or set SWITCHBOARD_TEST_POSTGRES_URL.",
            other.map(|r| r.map(|_| ()))
        ),
    }
}

pub fn fresh_schema() -> String {
    format!("test_{}", uuid::Uuid::new_v4().simple())
}

/// The test configuration with Postgres enabled on a fresh schema of `url`.
pub fn pg_config(backend: BackendKind, url: &str) -> Config {
    let mut c = test_config(backend);
    c.postgres.enabled = true;
    c.postgres.url = url.to_string();
    c.postgres.schema = fresh_schema();
    c.postgres.block_ms = 100;
    c.postgres.connect_timeout_ms = 1000;
    c.postgres.claim_idle_ms = 2000;
    c
}

/// Checks Postgres answers, applies the migrations to the config's schema, and returns
/// the pool and a direct client whose search_path is that schema.
pub async fn migrated(config: &Config) -> (Postgres, tokio_postgres::Client) {
    let client = require_postgres(&config.postgres.url).await;
    let pg = Postgres::new(config).expect("postgres settings");
    pg.migrate().await.expect("migrations apply");
    client
        .batch_execute(&format!("SET search_path TO {}", config.postgres.schema))
        .await
        .unwrap();
    (pg, client)
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
}

/// Waits until `sql` (a count) reaches `n`; returns the last value.
pub async fn wait_count(client: &tokio_postgres::Client, sql: &str, n: i64, secs: u64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = count(client, sql).await;
        if c >= n || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn drop_schema(client: &tokio_postgres::Client, schema: &str) {
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
}

/// An event as the gateway publishes it, for writing straight to Postgres.
pub fn event(fields: Value) -> Parsed {
    let now = switchboard::event::rfc3339(time::OffsetDateTime::now_utc());
    let mut base = json!({
        "schema": "switchboard.event.v1",
        "event_id": format!("evt_{}", uuid::Uuid::new_v4().simple()),
        "kind": "message",
        "tenant": "acme",
        "source": "meta_test",
        "provider": "meta",
        "channel": "whatsapp",
        "direction": "inbound",
        "conversation_id": "conv_1",
        "contact": {"id": "16505551234"},
        "business": {"id": "111"},
        "occurred_at": now,
        "received_at": now,
    });
    for (k, v) in fields.as_object().unwrap() {
        base[k] = v.clone();
    }
    let payload = base.to_string();
    let event: Event = serde_json::from_str(&payload).expect("a valid event");
    Parsed { event, payload }
}

/// A WhatsApp statuses webhook: one status per (wamid, state, timestamp).
pub fn wa_statuses(statuses: &[(&str, &str, i64)]) -> Vec<u8> {
    let statuses: Vec<Value> = statuses
        .iter()
        .map(|(id, state, ts)| {
            json!({"id": id, "status": state, "timestamp": ts.to_string(),
                   "recipient_id": "16505551234"})
        })
        .collect();
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "statuses": statuses
        }}]}]
    }))
    .unwrap()
}

/// A private PostgreSQL server (its own data directory and port) that a test may stop
/// with an immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start)
/// and start again. As root, the server runs as the `postgres` user (it refuses root).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_server_user(program: &std::path::Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        Self::start_with(|_| {})
    }

    /// Like [`Self::start`], with `setup` run on the data directory (as this process's
    /// user) between initdb and the first start: certificates, postgresql.conf, pg_hba.conf.
    pub fn start_with(setup: impl FnOnce(&std::path::Path)) -> PrivatePostgres {
        let bin = pg_bin();
        let dir =
            std::env::temp_dir().join(format!("switchboard-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the private Postgres directory failed");
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        setup(&dir.join("data"));
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.join("data"))
                .status();
        }
        let mut pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
            child: None,
        };
        pg.restart();
        pg
    }

    /// The database `postgres` of this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn restart(&mut self) {
        let child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "private postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Immediate shutdown of this server only (the server's own pid, never by name).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = self.postmaster_pid().unwrap_or_else(|| c.id().to_string());
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The postmaster's pid (under runuser, the child is runuser itself).
    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        Some(text.lines().next()?.trim().to_string())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
