//! Routing (DESIGN.md steps 7-9): the router worker moves each accepted event from the
//! inbound stream to the events stream, with its assignment added by the [`engine`] when the
//! event's tenant has routing configured (pass-through otherwise, or with
//! `routing.enabled = false`).
//!
//! Guarantees: at least once from inbound (a crashed consumer's entries are claimed again
//! after `claim_idle_ms`), exactly once onto the events stream (the publish script
//! acknowledges and appends in one step and skips entries someone else already moved), and
//! reprocessing an entry yields the decision made the first time (the store remembers
//! decisions by event id), so capacity is never counted twice.
//!
//! Layout: [`model`] (rule sets: configuration and compiled form), [`rules`] (pure rule
//! evaluation), [`strategy`] (ranking agents; a trait users can implement), [`store`]
//! (atomic state operations: memory and Redis), [`engine`] (puts them together),
//! [`simulate`] (offline replay of traffic through the rules).

pub mod engine;
pub mod model;
pub mod rules;
pub mod simulate;
pub mod store;
pub mod strategy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::accept::Backend;
use crate::config::RouterConfig;
use crate::internal_events::{BackendFailed, BatchRouted};

pub use engine::Engine;

pub struct Router {
    backend: Backend,
    engine: Option<Arc<Engine>>,
    consumer: String,
    batch_size: usize,
    block: Duration,
    claim_idle: Duration,
}

impl Router {
    /// `engine`: None for the pass-through router.
    pub fn new(backend: Backend, engine: Option<Arc<Engine>>, cfg: &RouterConfig) -> Router {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Router {
            backend,
            engine,
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
                Ok(mut entries) => {
                    let started = Instant::now();
                    let mut outcome = engine::BatchOutcome::default();
                    if let Some(engine) = &self.engine {
                        match engine.route_batch(&mut entries, engine.now()).await {
                            Ok(o) => outcome = o,
                            Err(e) => {
                                // Nothing was published: the entries stay pending and are
                                // routed again (with the decisions already made, if any).
                                BackendFailed {
                                    backend: engine.store().name(),
                                    op: "route",
                                    error: &e,
                                }
                                .emit();
                                self.pause(&mut backoff, &mut stop).await;
                                continue;
                            }
                        }
                    }
                    match self.backend.publish(&entries).await {
                        Ok(moved) => {
                            backoff = Duration::from_millis(100);
                            BatchRouted {
                                count: moved,
                                elapsed: started.elapsed(),
                                router: if self.engine.is_some() {
                                    "rules"
                                } else {
                                    "passthrough"
                                },
                            }
                            .emit();
                            if let Some(engine) = &self.engine {
                                for tenant in outcome.drain {
                                    if let Err(e) = engine.drain(&tenant, engine.now()).await {
                                        // The periodic maintenance drains it later.
                                        tracing::debug!(tenant, error = %e, "drain after publish failed");
                                    }
                                }
                            }
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

/// Periodic routing work (sweep, drain, relay, rule set refresh) until `stop` turns true.
pub async fn maintain(engine: Arc<Engine>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = engine.maintain(engine.now()).await {
            BackendFailed {
                backend: engine.store().name(),
                op: "routing_maintenance",
                error: &e,
            }
            .emit();
        }
    }
}
