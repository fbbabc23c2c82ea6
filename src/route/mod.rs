//! Routing (docs/architecture.md steps 7-9): the router worker moves each accepted event from the
//! inbound stream to the events stream, with its assignment added by the [`engine`] when the
//! event's tenant has routing configured (pass-through otherwise, or with
//! `routing.enabled = false`).
//!
//! Guarantees: one router at a time routes a stream partition (it holds the partition's
//! lease), so each conversation's events keep their order; at least once from inbound (a
//! crashed router's entries are claimed by the next lease holder before anything newer),
//! exactly once onto the events stream (the publish script
//! acknowledges and appends in one step and skips entries someone else already moved), and
//! reprocessing an entry yields the decision made the first time (the store remembers
//! decisions by event id), so capacity is never counted twice.
//!
//! Layout: [`model`] (rule sets: configuration and compiled form), [`rules`] (pure rule
//! evaluation), [`strategy`] (ranking agents; a trait users can implement), [`store`]
//! (atomic state operations: memory and Redis), [`engine`] (puts them together),
//! [`simulate`] (offline replay of traffic through the rules).

pub mod engine;
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
    lease: Duration,
}

/// Why a batch was not published.
enum Failed {
    /// Retry the same batch (the backend or routing store failed).
    Retry,
    /// Another router holds the partition now: drop the batch, it routes those entries.
    LostLease,
}

impl Router {
    /// `engine`: None for the pass-through router. `backend`: one stream partition.
    pub fn new(backend: Backend, engine: Option<Arc<Engine>>, cfg: &RouterConfig) -> Router {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Router {
            backend,
            engine,
            // Unique per process: a restarted process must not inherit a dead one's pending
            // list by name; it claims it when it takes the lease.
            consumer: format!(
                "{host}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            batch_size: cfg.batch_size,
            block: Duration::from_millis(cfg.block_ms),
            claim_idle: Duration::from_millis(cfg.claim_idle_ms),
            lease: Duration::from_millis(cfg.lease_ms),
        }
    }

    /// Runs until `stop` turns true. One router at a time (across replicas) holds a
    /// partition's lease and moves its inbound stream, batch after batch, each batch retried
    /// until published: so every conversation's events reach the events stream in the order
    /// they were accepted. A new holder first routes what its predecessor left pending. A
    /// batch in flight is finished first at shutdown (its publish is one atomic script), and
    /// the lease is released so a standby takes over at once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut holding = false;
        // Entries left by a previous holder are routed before anything newer.
        let mut catching_up = false;
        let mut renewed = Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if !holding || renewed.elapsed() >= self.lease / 3 {
                match self.backend.lease(&self.consumer, self.lease).await {
                    Ok(true) => {
                        if !holding {
                            tracing::info!(consumer = %self.consumer, "router took its partition's lease");
                            catching_up = true;
                        }
                        holding = true;
                        renewed = Instant::now();
                    }
                    Ok(false) => {
                        holding = false;
                        // A standby: look again before the holder's lease could run out.
                        tokio::select! {
                            _ = stop.changed() => {}
                            _ = tokio::time::sleep(self.lease / 3) => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        holding = false;
                        BackendFailed {
                            backend: self.backend.name(),
                            op: "lease",
                            error: &e,
                        }
                        .emit();
                        self.pause(&mut backoff, &mut stop).await;
                        continue;
                    }
                }
            }
            let read = if catching_up {
                self.backend
                    .claim_pending(&self.consumer, self.batch_size)
                    .await
            } else {
                // Blocking at most a third of the lease, so it is renewed in time.
                let block = self.block.min(self.lease / 3);
                tokio::select! {
                    _ = stop.changed() => break,
                    r = self.backend.read_inbound(&self.consumer, self.batch_size, block, self.claim_idle) => r,
                }
            };
            let entries = match read {
                Ok(entries) if entries.is_empty() => {
                    catching_up = false;
                    continue;
                }
                Ok(entries) => entries,
                Err(e) => {
                    BackendFailed {
                        backend: self.backend.name(),
                        op: "read_inbound",
                        error: &e,
                    }
                    .emit();
                    self.pause(&mut backoff, &mut stop).await;
                    continue;
                }
            };
            // The same batch until it is published (routing is idempotent by event id), or
            // until the lease is gone; never a newer batch before it.
            loop {
                match self.route_and_publish(entries.clone()).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(Failed::LostLease) => {
                        holding = false;
                        break;
                    }
                    Err(Failed::Retry) => {
                        self.pause(&mut backoff, &mut stop).await;
                        if *stop.borrow() {
                            break;
                        }
                        match self.backend.lease(&self.consumer, self.lease).await {
                            Ok(true) => renewed = Instant::now(),
                            Ok(false) => {
                                holding = false;
                                break;
                            }
                            // Still unreachable: keep the batch and try again.
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        if holding {
            if let Err(e) = self.backend.release_lease(&self.consumer).await {
                tracing::debug!(error = %e, "router lease not released (it expires)");
            }
        }
        if let Err(e) = self.backend.retire_consumer(&self.consumer).await {
            tracing::debug!(error = %e, "router consumer not retired");
        }
        tracing::info!(consumer = %self.consumer, "router stopped");
    }

    async fn route_and_publish(
        &self,
        mut entries: Vec<crate::accept::StreamEntry>,
    ) -> Result<(), Failed> {
        let started = Instant::now();
        let mut outcome = engine::BatchOutcome::default();
        if let Some(engine) = &self.engine {
            match engine.route_batch(&mut entries, engine.now()).await {
                Ok(o) => outcome = o,
                Err(e) => {
                    // Nothing was published: routed again (with the decisions already made).
                    BackendFailed {
                        backend: engine.store().name(),
                        op: "route",
                        error: &e,
                    }
                    .emit();
                    return Err(Failed::Retry);
                }
            }
        }
        match self.backend.publish_fenced(&self.consumer, &entries).await {
            Ok(moved) => {
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
                Ok(())
            }
            Err(crate::accept::BackendError::Fenced) => {
                tracing::warn!(consumer = %self.consumer, "router lost its partition's lease mid-batch; the new holder routes the batch");
                Err(Failed::LostLease)
            }
            Err(e) => {
                BackendFailed {
                    backend: self.backend.name(),
                    op: "publish",
                    error: &e,
                }
                .emit();
                Err(Failed::Retry)
            }
        }
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
