//! A Redis connection that is either one server (through a reconnecting
//! `ConnectionManager`) or a Redis Cluster (through the cluster client, which routes each
//! command and script call to the node owning its keys' slot).
//!
//! A third mode follows the primary named by Redis Sentinel ([`super::sentinel`]).
//!
//! `rediss://` URLs connect over TLS (rustls): the server's certificate is checked against
//! `redis.tls_ca_file` (system roots when absent) and its host name, and
//! `redis.tls_cert_file` + `redis.tls_key_file` present a client certificate. Only
//! `redis.tls_insecure = true` skips the checks.
//!
//! Everything switchboard sends is single-slot by construction — every key of a stream
//! partition shares the hash tag `{<prefix>}` / `{<prefix>:p<n>}`, every key of a tenant's
//! routing state `{<prefix>:rt:<tenant>}` — so the same commands and scripts run on both.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, TlsCertificates, TlsMode, Value,
};

use super::sentinel::SentinelConn;
use crate::config::{tls, RedisConfig};

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

/// The reconnecting single-server connection's settings.
pub(crate) fn manager_config(
    cfg: &RedisConfig,
    response_timeout: Duration,
) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
        .set_pipeline_buffer_size(1024)
        .set_response_timeout(Some(response_timeout))
}

fn config_error(key: &'static str, why: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, key, why))
}

/// The CA and client certificate files, when any is configured.
pub(crate) fn tls_certificates(cfg: &RedisConfig) -> Result<Option<TlsCertificates>, RedisError> {
    let root_cert = match &cfg.tls_ca_file {
        Some(p) => Some(
            tls::read_file("redis.tls_ca_file", p)
                .map_err(|e| config_error("redis.tls_ca_file", e))?,
        ),
        None => None,
    };
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => Some(ClientTlsConfig {
            client_cert: tls::read_file("redis.tls_cert_file", c)
                .map_err(|e| config_error("redis.tls_cert_file", e))?,
            client_key: tls::read_file("redis.tls_key_file", k)
                .map_err(|e| config_error("redis.tls_key_file", e))?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn warn_insecure(cfg: &RedisConfig) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if cfg.tls_insecure && cfg.uses_tls() {
        WARNED.call_once(|| {
            tracing::warn!(
                "redis.tls_insecure = true: the Redis servers' certificates and host names are NOT verified; anyone on the path can read and change what the gateway stores. Use it for testing only; set redis.tls_ca_file instead"
            )
        });
    }
}

/// A client for one server at `url` with the configured TLS files and mode.
pub(crate) fn client_for(cfg: &RedisConfig, url: &str) -> Result<redis::Client, RedisError> {
    let info = url.into_connection_info()?;
    let ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() else {
        return redis::Client::open(info);
    };
    let info = info.set_addr(ConnectionAddr::TcpTls {
        host,
        port,
        insecure: cfg.tls_insecure,
        tls_params: None,
    });
    // With tls_insecure the server is not checked, but a client certificate is still sent.
    match tls_certificates(cfg)? {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
}

/// Connects to the first server of the configuration on its own (no cluster client) and
/// pings it: `Some(error)` when that fails, with the cause the cluster client does not pass
/// on (a TLS handshake or authentication error).
pub async fn probe(cfg: &RedisConfig, timeout: Duration) -> Option<String> {
    let url = cfg.data_urls().into_iter().next()?;
    let client = match client_for(cfg, url) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let attempt = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".into()),
    }
}

/// What to change when a Redis error says something about the configuration (TLS,
/// authentication), naming the key; `None` for an ordinary outage.
pub fn hint(error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    Some(
        if has(&[
            "unknownissuer",
            "unknown issuer",
            "badsignature",
            "unknown ca",
        ]) {
            "the Redis server's certificate is not signed by a trusted CA: set redis.tls_ca_file to the PEM file of the CA that signed it (system roots are used when unset)"
        } else if has(&["notvalidforname", "not valid for name"]) {
            "the Redis server's certificate does not name the host in redis.url: connect with the host name the certificate was issued for"
        } else if has(&["expired", "notvalidyet"]) {
            "the Redis server's certificate is expired or not yet valid: renew it on the server (or check this host's clock)"
        } else if has(&[
            "certificaterequired",
            "certificate required",
            "handshake failure",
            "handshakefailure",
        ]) {
            "the Redis server refused the TLS handshake (it may require a client certificate): set redis.tls_cert_file and redis.tls_key_file"
        } else if has(&[
            "corrupt message",
            "invalidcontenttype",
            "invalid content type",
            "invalidmessage",
        ]) {
            "the Redis server does not speak TLS on this port: use a redis:// URL (or the server's TLS port) in redis.url"
        } else if has(&[
            "wrongpass",
            "noauth",
            "invalid username-password",
            "authentication required",
            "authentication failed",
        ]) {
            "Redis refused the credentials: put user:password in redis.url (rediss://user:password@host:port)"
        } else if has(&["noperm"]) {
            "the Redis ACL user lacks a permission the gateway needs (it runs scripts, transactions, streams and keys under redis.key_prefix)"
        } else if has(&[
            "connection reset",
            "broken pipe",
            "unexpected end of file",
            "unexpectedeof",
            "connection closed",
        ]) {
            "the Redis server closed the connection; if it only accepts TLS, use a rediss:// URL in redis.url"
        } else if has(&["readonly", "read-only"]) {
            "the Redis server is a read-only replica: point redis.url at the primary, or use redis.sentinel_nodes to follow it"
        } else {
            return None;
        },
    )
}

/// `error`, with what to change when it says something about the configuration.
pub fn with_hint(error: String) -> String {
    match hint(&error) {
        Some(h) => format!("{error} ({h})"),
        None => error,
    }
}

/// Connects lazily (the gateway starts when Redis is down, and answers 503 until it is
/// back): to `redis.url`, or to the cluster whose seed nodes are `redis.cluster_nodes`.
/// `response_timeout` bounds each call (blocking reads need a longer one).
pub fn connect(cfg: &RedisConfig, response_timeout: Duration) -> Result<RedisConn, RedisError> {
    tls::install_crypto_provider();
    warn_insecure(cfg);
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    if !cfg.sentinel_nodes.is_empty() {
        Ok(RedisConn::Sentinel(SentinelConn::new(
            cfg,
            response_timeout,
        )?))
    } else if cfg.cluster_nodes.is_empty() {
        let client = client_for(cfg, &cfg.url)?;
        Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
            client,
            manager_config(cfg, response_timeout),
        )?))
    } else {
        let mut builder = ClusterClientBuilder::new(cfg.cluster_nodes.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(2);
        if cfg.uses_tls() {
            if cfg.tls_insecure {
                builder = builder.tls(TlsMode::Insecure);
            }
            if let Some(certs) = tls_certificates(cfg)? {
                builder = builder.certs(certs);
            }
        }
        let client = builder.build()?;
        Ok(RedisConn::Cluster(
            client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new()),
        ))
    }
}
