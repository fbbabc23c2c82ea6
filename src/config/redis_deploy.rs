//! Checks of `[redis]`'s deployment keys: TLS files, replica acknowledgements, Sentinel.

use super::{redact_url, tls, RedisConfig};

/// Whether `raw` is a `rediss://` URL.
pub fn is_tls_url(raw: &str) -> bool {
    url::Url::parse(raw).is_ok_and(|u| u.scheme() == "rediss")
}

impl RedisConfig {
    /// Every URL the gateway connects to for data (the server, the cluster's seed nodes, or
    /// through the sentinels the primary, which takes `url`'s scheme).
    pub fn data_urls(&self) -> Vec<&str> {
        if self.cluster_nodes.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.cluster_nodes.iter().map(String::as_str).collect()
        }
    }

    /// Whether any connection (data or sentinel) uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.data_urls().into_iter().any(is_tls_url)
            || self.sentinel_nodes.iter().any(|u| is_tls_url(u))
    }

    /// A short description of the connection mode, for `check-config` and the start log.
    pub fn describe(&self) -> String {
        let mode = if !self.sentinel_nodes.is_empty() {
            format!(
                "sentinel ({} sentinel(s), primary {:?})",
                self.sentinel_nodes.len(),
                self.sentinel_master.as_deref().unwrap_or("")
            )
        } else if !self.cluster_nodes.is_empty() {
            format!("cluster ({} seed node(s))", self.cluster_nodes.len())
        } else {
            "one server".to_string()
        };
        let tls = if !self.uses_tls() {
            "no TLS".to_string()
        } else if self.tls_insecure {
            "TLS WITHOUT certificate verification (redis.tls_insecure)".to_string()
        } else {
            format!(
                "TLS, CA {}{}",
                self.tls_ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "system roots".into()),
                if self.tls_cert_file.is_some() {
                    ", client certificate"
                } else {
                    ""
                }
            )
        };
        let acks = if self.min_replicas_acked > 0 {
            format!(
                ", accepts wait for {} replica(s) (up to {} ms)",
                self.min_replicas_acked, self.replica_ack_timeout_ms
            )
        } else {
            String::new()
        };
        format!("{mode}, {tls}{acks}")
    }

    /// The deployment checks, each naming the key. `active`: backend = "redis".
    pub fn validate_deploy(&self, active: bool, errs: &mut Vec<String>) {
        for (key, raw) in std::iter::once(("redis.url", self.url.as_str()))
            .chain(
                self.cluster_nodes
                    .iter()
                    .map(|u| ("redis.cluster_nodes", u.as_str())),
            )
            .chain(
                self.sentinel_nodes
                    .iter()
                    .map(|u| ("redis.sentinel_nodes", u.as_str())),
            )
        {
            if let Ok(u) = url::Url::parse(raw) {
                if u.fragment().is_some() {
                    errs.push(format!(
                        "{key}: {:?} has a #fragment; to skip certificate checks (testing only) set redis.tls_insecure = true instead of #insecure",
                        redact_url(raw)
                    ));
                }
            }
        }
        for node in &self.sentinel_nodes {
            if !matches!(url::Url::parse(node), Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.has_host())
            {
                errs.push(format!(
                    "redis.sentinel_nodes: {:?} is not a redis://host:port or rediss://host:port URL (a sentinel listens on 26379 by default)",
                    redact_url(node)
                ));
            }
        }
        if !self.sentinel_nodes.is_empty() {
            if self.sentinel_master.as_deref().is_none_or(str::is_empty) {
                errs.push("redis.sentinel_master: set the name the sentinels monitor the primary under (`sentinel monitor <name> ...`, often \"mymaster\")".into());
            }
            if !self.cluster_nodes.is_empty() {
                errs.push("redis.sentinel_nodes and redis.cluster_nodes are both set: use one (a Redis Cluster fails over by itself)".into());
            }
        } else if self.sentinel_master.is_some() {
            errs.push(
                "redis.sentinel_master is set without redis.sentinel_nodes: list the sentinels"
                    .into(),
            );
        }
        if self.min_replicas_acked > 16 {
            errs.push(format!(
                "redis.min_replicas_acked = {}: use 0..=16 (replicas that must hold an accept before the 2xx)",
                self.min_replicas_acked
            ));
        }
        if self.replica_ack_timeout_ms == 0 || self.replica_ack_timeout_ms > 60_000 {
            errs.push("redis.replica_ack_timeout_ms must be 1..=60000".into());
        }
        if let Some(ca) = &self.tls_ca_file {
            if let Err(e) = tls::read_certs("redis.tls_ca_file", ca) {
                errs.push(e);
            }
        }
        tls::check_pair(
            "redis.tls_cert_file",
            self.tls_cert_file.as_deref(),
            "redis.tls_key_file",
            self.tls_key_file.as_deref(),
            errs,
        );
        let files_set =
            self.tls_ca_file.is_some() || self.tls_cert_file.is_some() || self.tls_insecure;
        if active && files_set && !self.uses_tls() {
            errs.push(format!(
                "redis.tls_* is set but {:?} is not a rediss:// URL: use rediss://host:port to connect with TLS",
                redact_url(self.data_urls()[0])
            ));
        }
    }
}
