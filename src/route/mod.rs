//! Routing (DESIGN.md steps 7-9). Until the routing engine lands this is the pass-through
//! router: it moves each accepted event from the inbound stream to the events stream
//! unchanged and unassigned, with the same guarantees the real router will keep —
//! at-least-once from inbound (a crashed consumer's entries are claimed again after
//! `claim_idle_ms`), exactly-once onto the events stream (the publish script acknowledges
//! and appends in one step and skips entries someone else already moved).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::accept::Backend;
use crate::config::RouterConfig;
use crate::internal_events::{BackendFailed, BatchRouted};

pub struct Router {
    backend: Backend,
    consumer: String,
    batch_size: usize,
    block: Duration,
    claim_idle: Duration,
}

impl Router {
    pub fn new(backend: Backend, cfg: &RouterConfig) -> Router {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Router {
            backend,
            // Unique per process: a restarted process must not inherit a dead one's pending
            // list by name; it claims it by idle time instead.
            consumer: format!(
                "{host}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            batch_size: cfg.batch_size,
            block: Duration::from_millis(cfg.block_ms),
            claim_idle: Duration::from_millis(cfg.claim_idle_ms),
        }
    }

    /// Runs until `stop` turns true. A batch in flight is finished first: its publish is one
    /// atomic script, so stopping never leaves an entry half-moved.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                break;
            }
            let read = tokio::select! {
                _ = stop.changed() => break,
                r = self.backend.read_inbound(&self.consumer, self.batch_size, self.block, self.claim_idle) => r,
            };
            match read {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => {
                    let started = Instant::now();
                    // Pass-through: the payload is published as accepted.
                    match self.backend.publish(&entries).await {
                        Ok(moved) => {
                            backoff = Duration::from_millis(100);
                            BatchRouted {
                                count: moved,
                                elapsed: started.elapsed(),
                                router: "passthrough",
                            }
                            .emit();
                        }
                        Err(e) => {
                            // The entries stay pending and are claimed again later.
                            BackendFailed {
                                backend: self.backend.name(),
                                op: "publish",
                                error: &e,
                            }
                            .emit();
                            self.pause(&mut backoff, &mut stop).await;
                        }
                    }
                }
                Err(e) => {
                    BackendFailed {
                        backend: self.backend.name(),
                        op: "read_inbound",
                        error: &e,
                    }
                    .emit();
                    self.pause(&mut backoff, &mut stop).await;
                }
            }
        }
        if let Err(e) = self.backend.retire_consumer(&self.consumer).await {
            tracing::debug!(error = %e, "router consumer not retired");
        }
        tracing::info!(consumer = %self.consumer, "router stopped");
    }

    async fn pause(&self, backoff: &mut Duration, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}
