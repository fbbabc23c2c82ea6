//! A Redis connection that is either one server (through a reconnecting
//! `ConnectionManager`) or a Redis Cluster (through the cluster client, which routes each
//! command and script call to the node owning its keys' slot).
//!
//! Everything switchboard sends is single-slot by construction — every key of a stream
//! partition shares the hash tag `{<prefix>}` / `{<prefix>:p<n>}`, every key of a tenant's
//! routing state `{<prefix>:rt:<tenant>}` — so the same commands and scripts run on both.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::config::RedisConfig;

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

/// Connects lazily (the gateway starts when Redis is down, and answers 503 until it is
/// back): to `redis.url`, or to the cluster whose seed nodes are `redis.cluster_nodes`.
/// `response_timeout` bounds each call (blocking reads need a longer one).
pub fn connect(cfg: &RedisConfig, response_timeout: Duration) -> Result<RedisConn, RedisError> {
    let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
    if cfg.cluster_nodes.is_empty() {
        let client = redis::Client::open(cfg.url.as_str())?;
        let conf = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_pipeline_buffer_size(1024)
            .set_response_timeout(Some(response_timeout));
        Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
            client, conf,
        )?))
    } else {
        let client = ClusterClientBuilder::new(cfg.cluster_nodes.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(2)
            .build()?;
        Ok(RedisConn::Cluster(
            client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new()),
        ))
    }
}
