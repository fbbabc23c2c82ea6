//! A connection to the primary that Redis Sentinel names (`redis.sentinel_nodes`,
//! `redis.sentinel_master`), following it after a failover.
//!
//! The sentinels are asked for the primary's address when the first command runs, again
//! (in the background, at most every [`REFRESH_MIN`]) whenever a command fails in a way a
//! failover causes (the connection dropped or refused, a timeout, `READONLY` from a demoted
//! primary), and every [`REFRESH_EVERY`] in any case. A new address replaces the connection;
//! commands in flight on the old one fail (503: the provider retries, dedup makes that safe).
//!
//! `redis.url` lends the primary's credentials, database and TLS (its scheme); the
//! sentinels' own URLs say whether they use TLS and carry their credentials.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    ServerErrorKind, TlsMode, Value,
};

use super::conn::{manager_config, tls_certificates};
use crate::config::{redact_url, RedisConfig};

/// Least time between two lookups of the primary.
const REFRESH_MIN: Duration = Duration::from_millis(250);
/// Longest time between two lookups while commands run (a command stuck on a dead primary
/// may be cancelled by its caller's timeout before it can report an error).
const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<Inner>,
}

struct Inner {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    primary: RwLock<Option<Primary>>,
    refreshing: AtomicBool,
    last_lookup_ms: AtomicU64,
    conf: ConnectionManagerConfig,
    lookup_timeout: Duration,
    master: String,
    db: i64,
}

#[derive(Clone)]
struct Primary {
    addr: String,
    conn: ConnectionManager,
    /// What connections of their own to it are opened with (the router's publish
    /// transactions).
    client: redis::Client,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn addr_key(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        other => format!("{other:?}"),
    }
}

/// Whether an error is what a failover looks like from a client.
fn failover_symptom(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
        )
        || e.to_string().contains("READONLY")
}

impl SentinelConn {
    pub fn new(cfg: &RedisConfig, response_timeout: Duration) -> Result<SentinelConn, RedisError> {
        let master = cfg.sentinel_master.clone().unwrap_or_default();
        let mut addrs = Vec::new();
        let mut sentinel_auth: Option<(Option<String>, Option<String>)> = None;
        let mut sentinels_tls = false;
        for url in &cfg.sentinel_nodes {
            let info = url.as_str().into_connection_info().map_err(|e| {
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "redis.sentinel_nodes",
                    format!("{}: {e}", redact_url(url)),
                ))
            })?;
            sentinels_tls |= matches!(info.addr(), ConnectionAddr::TcpTls { .. });
            let rs = info.redis_settings();
            if sentinel_auth.is_none() && (rs.username().is_some() || rs.password().is_some()) {
                sentinel_auth = Some((
                    rs.username().map(str::to_string),
                    rs.password().map(str::to_string),
                ));
            }
            addrs.push(info.addr().clone());
        }
        let mut b = SentinelClientBuilder::new(addrs, &master, SentinelServerType::Master)?;
        if let Some((user, password)) = sentinel_auth {
            if let Some(u) = user {
                b = b.set_client_to_sentinel_username(u);
            }
            if let Some(p) = password {
                b = b.set_client_to_sentinel_password(p);
            }
        }
        let certs = tls_certificates(cfg)?;
        if sentinels_tls {
            if cfg.tls_insecure {
                b = b.set_client_to_sentinel_tls_mode(TlsMode::Insecure);
            }
            if let Some(c) = &certs {
                b = b.set_client_to_sentinel_certificates(c.clone());
            }
        }
        let data = cfg.url.as_str().into_connection_info()?;
        let rs = data.redis_settings();
        if let Some(u) = rs.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = rs.password() {
            b = b.set_client_to_redis_password(p);
        }
        b = b.set_client_to_redis_db(rs.db());
        if matches!(data.addr(), ConnectionAddr::TcpTls { .. }) {
            b = b.set_client_to_redis_tls_mode(if cfg.tls_insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            });
            if let Some(c) = certs {
                b = b.set_client_to_redis_certificates(c);
            }
        }
        Ok(SentinelConn {
            inner: Arc::new(Inner {
                sentinel: tokio::sync::Mutex::new(b.build()?),
                primary: RwLock::new(None),
                refreshing: AtomicBool::new(false),
                last_lookup_ms: AtomicU64::new(0),
                conf: manager_config(cfg, response_timeout),
                lookup_timeout: Duration::from_millis(cfg.connect_timeout_ms) * 2,
                master,
                db: rs.db(),
            }),
        })
    }

    fn current(&self) -> Option<Primary> {
        self.inner
            .primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the sentinels where the primary is; replaces the connection when it moved.
    async fn lookup(&self) -> Result<Primary, RedisError> {
        let inner = &self.inner;
        inner.last_lookup_ms.store(now_ms(), Ordering::Relaxed);
        let client = {
            let mut sentinel = inner.sentinel.lock().await;
            match tokio::time::timeout(inner.lookup_timeout, sentinel.async_get_client()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(RedisError::from((
                        ErrorKind::Io,
                        "no sentinel answered in time",
                        format!("primary {:?}", inner.master),
                    )))
                }
            }
        };
        let addr = addr_key(client.get_connection_info().addr());
        if let Some(p) = self.current() {
            if p.addr == addr {
                return Ok(p);
            }
        }
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), inner.conf.clone())?;
        let fresh = Primary {
            addr: addr.clone(),
            conn,
            client,
        };
        let previous = inner
            .primary
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(fresh.clone());
        match previous {
            Some(p) => tracing::warn!(
                master = %inner.master, from = %p.addr, to = %addr,
                "redis primary moved (sentinel failover); following it"
            ),
            None => {
                tracing::info!(master = %inner.master, primary = %addr, "redis primary found through sentinel")
            }
        }
        Ok(fresh)
    }

    /// The primary's address and a client to open a connection of one's own to it (one
    /// that a `WATCH` can rely on): the known primary, else a lookup now. Whoever uses it
    /// calls [`Self::refresh_soon`] after an error, as commands sent through this
    /// connection do themselves.
    pub async fn primary_client(&self) -> Result<(String, redis::Client), RedisError> {
        let p = self.known_or_lookup().await?;
        Ok((p.addr, p.client))
    }

    /// A background lookup, unless one runs or ran less than [`REFRESH_MIN`] ago.
    pub fn refresh_soon(&self) {
        let last = self.inner.last_lookup_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(last) < REFRESH_MIN.as_millis() as u64 {
            return;
        }
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.lookup().await {
                tracing::warn!(master = %me.inner.master, error = %super::conn::with_hint(e.to_string()), "sentinel lookup of the redis primary failed");
            }
            me.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// The primary's connection: the known one (looking again in the background when due),
    /// else a lookup now.
    async fn primary(&self) -> Result<ConnectionManager, RedisError> {
        Ok(self.known_or_lookup().await?.conn)
    }

    /// The known primary (looking again in the background when due), else a lookup now.
    async fn known_or_lookup(&self) -> Result<Primary, RedisError> {
        if let Some(p) = self.current() {
            let last = self.inner.last_lookup_ms.load(Ordering::Relaxed);
            if now_ms().saturating_sub(last) >= REFRESH_EVERY.as_millis() as u64 {
                self.refresh_soon();
            }
            return Ok(p);
        }
        self.lookup().await
    }

    fn after(&self, r: &Result<impl Sized, RedisError>) {
        if let Err(e) = r {
            if failover_symptom(e) {
                self.refresh_soon();
            }
        }
    }
}

/// Looks the primary up again when a command is abandoned before it finished (its caller
/// timed out: the primary may be gone without the connection noticing yet).
struct Unfinished<'a>(Option<&'a SentinelConn>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.refresh_soon();
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.primary().await?;
            let mut guard = Unfinished(Some(&*self));
            let r = conn.req_packed_command(cmd).await;
            guard.0 = None;
            self.after(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.primary().await?;
            let mut guard = Unfinished(Some(&*self));
            let r = conn.req_packed_commands(pipeline, offset, count).await;
            guard.0 = None;
            self.after(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}
