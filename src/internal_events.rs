//! Things that happen, each with its log line and its metric written together.
//!
//! Metric names live here and only here (docs/metrics.md lists them). Labels are bounded:
//! provider, event kind, outcome, reason/error code, route pattern, stream name, scope.
//! Never a tenant, source id, agent, contact or message id.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "switchboard_http_requests_total";
pub const HTTP_DURATION: &str = "switchboard_http_request_duration_seconds";
pub const WEBHOOK_REQUESTS: &str = "switchboard_webhook_requests_total";
pub const SIGNATURE_FAILURES: &str = "switchboard_signature_failures_total";
pub const EVENTS: &str = "switchboard_events_total";
pub const DEADLETTERS: &str = "switchboard_deadletters_total";
pub const RATE_LIMITED: &str = "switchboard_rate_limited_total";
pub const ACCEPT_DURATION: &str = "switchboard_accept_duration_seconds";
pub const BACKEND_ERRORS: &str = "switchboard_backend_errors_total";
pub const BACKPRESSURE: &str = "switchboard_backpressure_total";
pub const EDGE_REFUSED: &str = "switchboard_http_edge_refused_total";
pub const REPLICA_ACK_MISSING: &str = "switchboard_replica_ack_missing_total";
pub const DUPLICATES_DROPPED: &str = "switchboard_inbound_duplicates_dropped_total";
pub const STREAM_LENGTH: &str = "switchboard_stream_length";
pub const STREAM_PENDING: &str = "switchboard_stream_pending";
pub const ROUTED_EVENTS: &str = "switchboard_routed_events_total";
pub const ROUTER_BATCH_DURATION: &str = "switchboard_router_batch_duration_seconds";
pub const ROUTING_ASSIGNMENTS: &str = "switchboard_routing_assignments_total";
pub const ROUTING_DECISION_DURATION: &str = "switchboard_routing_decision_duration_seconds";
pub const ROUTING_DECISIONS_PER_CALL: &str = "switchboard_routing_decisions_per_call";
pub const ROUTING_QUEUE_WAIT: &str = "switchboard_routing_queue_wait_seconds";
pub const ROUTING_QUEUE_DEPTH: &str = "switchboard_routing_queue_depth";
pub const ROUTING_QUEUE_OLDEST: &str = "switchboard_routing_queue_oldest_wait_seconds";
pub const ROUTING_AGENTS: &str = "switchboard_routing_agents";
pub const ROUTING_UTILIZATION: &str = "switchboard_routing_agent_utilization_ratio";
pub const ROUTING_RULESET_CHANGES: &str = "switchboard_routing_ruleset_changes_total";
pub const PERSISTER_ROWS: &str = "switchboard_persister_rows_total";
pub const PERSISTER_EVENTS: &str = "switchboard_persister_events_total";
pub const PERSISTER_BATCH_DURATION: &str = "switchboard_persister_batch_duration_seconds";
pub const PERSISTER_LAG: &str = "switchboard_persister_lag";
pub const PERSISTER_FAILURES: &str = "switchboard_persister_failures_total";
pub const PRIVACY_OPERATIONS: &str = "switchboard_privacy_operations_total";
pub const DELIVERIES: &str = "switchboard_deliveries_total";
pub const DELIVERY_DURATION: &str = "switchboard_delivery_attempt_duration_seconds";
pub const DELIVERY_LAG: &str = "switchboard_delivery_lag_seconds";
pub const DELIVERY_QUEUED: &str = "switchboard_delivery_queued";
pub const DELIVERY_OLDEST: &str = "switchboard_delivery_oldest_queued_seconds";
pub const DELIVERY_FANOUT_LAG: &str = "switchboard_delivery_fanout_lag";
pub const DELIVERY_DISABLED: &str = "switchboard_delivery_destinations_disabled_total";
pub const DELIVERY_FAILURES: &str = "switchboard_delivery_failures_total";
pub const DELIVERY_TRIMMED_UNREAD: &str = "switchboard_delivery_trimmed_unread_total";

/// Queue wait buckets (seconds): 1 s .. 4 h.
const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];

/// Decisions per routing store call (batch sizes).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];

/// Latency buckets (seconds) for request and accept histograms: 0.5 ms .. 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle (later calls,
/// e.g. several apps in one test process, share it).
pub fn install_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Full-name matchers are consulted before suffix matchers.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(ROUTING_QUEUE_WAIT.into()), WAIT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(DELIVERY_LAG.into()), WAIT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(ROUTING_DECISIONS_PER_CALL.into()),
                        COUNT_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's); then ours
            // still renders what is recorded through it for /metrics of this process only.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// An HTTP request finished (any route).
pub struct HttpRequestDone<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub elapsed: Duration,
}

/// A status code as a label without allocating for the codes the gateway answers.
fn status_label(status: u16) -> metrics::SharedString {
    let known = match status {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => return status.to_string().into(),
    };
    known.into()
}

impl HttpRequestDone<'_> {
    pub fn emit(self) {
        counter!(HTTP_REQUESTS, "route" => self.route.to_string(), "method" => self.method.to_string(), "status" => status_label(self.status))
            .increment(1);
        histogram!(HTTP_DURATION, "route" => self.route.to_string())
            .record(self.elapsed.as_secs_f64());
    }
}

/// A webhook request got its answer.
pub struct WebhookAnswered {
    pub provider: &'static str,
    pub status: u16,
    pub code: &'static str,
}

impl WebhookAnswered {
    pub fn emit(self) {
        counter!(WEBHOOK_REQUESTS, "provider" => self.provider, "status" => status_label(self.status), "code" => self.code)
            .increment(1);
    }
}

/// A request failed signature verification.
pub struct SignatureFailed<'a> {
    pub provider: &'static str,
    pub source: &'a str,
    pub reason: &'static str,
}

impl SignatureFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(
            provider = self.provider,
            source = self.source,
            reason = self.reason,
            "signature verification failed"
        );
        counter!(SIGNATURE_FAILURES, "provider" => self.provider, "reason" => self.reason)
            .increment(1);
    }
}

/// Events of one request were accepted (or found to be duplicates).
pub struct EventsAccepted<'a> {
    pub provider: &'static str,
    pub kinds: &'a [(&'static str, bool)],
    pub elapsed: Duration,
    pub backend: &'static str,
}

impl EventsAccepted<'_> {
    pub fn emit(self) {
        for (kind, fresh) in self.kinds {
            let outcome = if *fresh { "accepted" } else { "duplicate" };
            counter!(EVENTS, "provider" => self.provider, "kind" => *kind, "outcome" => outcome)
                .increment(1);
        }
        histogram!(ACCEPT_DURATION, "backend" => self.backend).record(self.elapsed.as_secs_f64());
    }
}

/// A verified part of a payload went to the dead-letter stream.
pub struct DeadLettered<'a> {
    pub provider: &'static str,
    pub source: &'a str,
    pub reason: &'static str,
    pub detail: &'a str,
    pub fresh: bool,
}

impl DeadLettered<'_> {
    pub fn emit(self) {
        if self.fresh {
            tracing::warn!(
                provider = self.provider,
                source = self.source,
                reason = self.reason,
                detail = self.detail,
                "dead-lettered"
            );
        }
        let outcome = if self.fresh {
            "dead_lettered"
        } else {
            "duplicate"
        };
        counter!(EVENTS, "provider" => self.provider, "kind" => "deadletter", "outcome" => outcome)
            .increment(1);
        if self.fresh {
            counter!(DEADLETTERS, "provider" => self.provider, "reason" => self.reason)
                .increment(1);
        }
    }
}

/// A request was refused by a rate limiter.
pub struct RateLimited {
    pub scope: &'static str,
}

impl RateLimited {
    pub fn emit(self) {
        tracing::debug!(scope = self.scope, "rate limited");
        counter!(RATE_LIMITED, "scope" => self.scope).increment(1);
    }
}

/// A backend call failed.
pub struct BackendFailed<'a> {
    pub backend: &'static str,
    pub op: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl BackendFailed<'_> {
    pub fn emit(self) {
        tracing::error!(backend = self.backend, op = self.op, error = %self.error, "backend call failed");
        counter!(BACKEND_ERRORS, "backend" => self.backend, "op" => self.op).increment(1);
    }
}

/// Fewer replicas than `redis.min_replicas_acked` acknowledged an accept in time: the
/// request was refused with 503.
pub struct ReplicaAckMissing {
    pub wanted: u32,
    pub acked: u64,
}

impl ReplicaAckMissing {
    pub fn emit(self) {
        tracing::warn!(
            wanted = self.wanted,
            acked = self.acked,
            "too few redis replicas acknowledged an accept (redis.min_replicas_acked); answering 503"
        );
        counter!(REPLICA_ACK_MISSING).increment(1);
    }
}

/// The router dropped inbound entries that an accept transaction wrote for duplicates (the
/// answer already counted them as duplicates).
pub struct DuplicatesDropped {
    pub count: usize,
}

impl DuplicatesDropped {
    pub fn emit(self) {
        tracing::debug!(
            count = self.count,
            "dropped inbound entries written for duplicates"
        );
        counter!(DUPLICATES_DROPPED).increment(self.count as u64);
    }
}

/// The inbound backlog was full: the request was refused with 503.
pub struct BackpressureApplied {
    pub backlog: u64,
}

impl BackpressureApplied {
    pub fn emit(self) {
        tracing::warn!(
            backlog = self.backlog,
            "inbound backlog full, answering 503"
        );
        counter!(BACKPRESSURE).increment(1);
    }
}

/// A request refused at the HTTP edge (crate::ingest::edge): `reason` is `body_budget`,
/// `body_timeout` or `connections`.
pub struct EdgeRefused {
    pub reason: &'static str,
}

impl EdgeRefused {
    pub fn emit(self) {
        match self.reason {
            "body_budget" => {
                tracing::warn!(
                    reason = self.reason,
                    "request body budget exhausted, answering 503"
                )
            }
            _ => tracing::info!(reason = self.reason, "request refused at the edge"),
        }
        counter!(EDGE_REFUSED, "reason" => self.reason).increment(1);
    }
}

/// Stream sizes, sampled periodically.
pub struct StreamSampled {
    pub stream: &'static str,
    pub length: u64,
    pub pending: Option<u64>,
}

impl StreamSampled {
    pub fn emit(self) {
        gauge!(STREAM_LENGTH, "stream" => self.stream).set(self.length as f64);
        if let Some(p) = self.pending {
            gauge!(STREAM_PENDING, "stream" => self.stream).set(p as f64);
        }
    }
}

/// The router moved a batch from the inbound stream to the events stream.
pub struct BatchRouted {
    pub count: usize,
    pub elapsed: Duration,
    pub router: &'static str,
}

impl BatchRouted {
    pub fn emit(self) {
        counter!(ROUTED_EVENTS, "router" => self.router).increment(self.count as u64);
        histogram!(ROUTER_BATCH_DURATION, "router" => self.router)
            .record(self.elapsed.as_secs_f64());
    }
}

/// A routing decision was made (for a message, a drain or an API operation).
pub struct RoutingDecided<'a> {
    pub strategy: &'a str,
    pub action: &'a str,
}

impl RoutingDecided<'_> {
    pub fn emit(self) {
        // Strategy names come from code (built-ins and registered ones), actions from a
        // fixed vocabulary: both bounded.
        counter!(ROUTING_ASSIGNMENTS, "strategy" => self.strategy.to_string(), "action" => self.action.to_string())
            .increment(1);
    }
}

/// One routing store call decided a tenant's part of a batch.
pub struct RoutingDecisionTimed {
    pub decisions: usize,
    pub elapsed: Duration,
}

impl RoutingDecisionTimed {
    pub fn emit(self) {
        histogram!(ROUTING_DECISION_DURATION).record(self.elapsed.as_secs_f64());
        histogram!(ROUTING_DECISIONS_PER_CALL).record(self.decisions as f64);
    }
}

/// A queued conversation was assigned after waiting.
pub struct RoutingDrained {
    pub wait_ms: u64,
}

impl RoutingDrained {
    pub fn emit(self) {
        histogram!(ROUTING_QUEUE_WAIT).record(self.wait_ms as f64 / 1000.0);
    }
}

/// A tenant's rule set was replaced.
pub struct RulesetApplied<'a> {
    pub tenant: &'a str,
    pub version: u64,
    pub origin: &'a str,
}

impl RulesetApplied<'_> {
    pub fn emit(self) {
        tracing::info!(
            tenant = self.tenant,
            version = self.version,
            origin = self.origin,
            "routing rules applied"
        );
        let origin = if self.origin == "api" { "api" } else { "file" };
        counter!(ROUTING_RULESET_CHANGES, "origin" => origin).increment(1);
    }
}

/// Queue and agent gauges, sampled periodically over every tenant.
pub struct RoutingSampled {
    pub queued: u64,
    pub oldest_wait_ms: u64,
    pub online: u64,
    pub away: u64,
    pub offline: u64,
    pub utilization_min: f64,
    pub utilization_mean: f64,
    pub utilization_max: f64,
}

impl RoutingSampled {
    pub fn emit(self) {
        gauge!(ROUTING_QUEUE_DEPTH).set(self.queued as f64);
        gauge!(ROUTING_QUEUE_OLDEST).set(self.oldest_wait_ms as f64 / 1000.0);
        gauge!(ROUTING_AGENTS, "presence" => "online").set(self.online as f64);
        gauge!(ROUTING_AGENTS, "presence" => "away").set(self.away as f64);
        gauge!(ROUTING_AGENTS, "presence" => "offline").set(self.offline as f64);
        gauge!(ROUTING_UTILIZATION, "stat" => "min").set(self.utilization_min);
        gauge!(ROUTING_UTILIZATION, "stat" => "mean").set(self.utilization_mean);
        gauge!(ROUTING_UTILIZATION, "stat" => "max").set(self.utilization_max);
    }
}

/// Rows written per table (new rows or rows changed), as the persister reports them (metrics and log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub messages: u64,
    pub statuses: u64,
    pub deliveries: u64,
    pub assignments: u64,
    pub conversations: u64,
    /// Events of a contact erased after they were received: not stored.
    pub erased: u64,
    /// Events Postgres refused on their own (logged).
    pub refused: u64,
}

impl Written {
    pub fn add(&mut self, o: &Written) {
        self.messages += o.messages;
        self.statuses += o.statuses;
        self.deliveries += o.deliveries;
        self.assignments += o.assignments;
        self.conversations += o.conversations;
        self.erased += o.erased;
        self.refused += o.refused;
    }
}

/// The persister wrote a batch to PostgreSQL and acknowledged it.
pub struct PersisterBatchWritten<'a> {
    pub entries: usize,
    /// Entries that were not events (deleted meanwhile, or unreadable): acknowledged only.
    pub unreadable: u64,
    pub written: &'a Written,
    pub elapsed: Duration,
}

impl PersisterBatchWritten<'_> {
    pub fn emit(self) {
        let w = self.written;
        tracing::debug!(
            entries = self.entries,
            messages = w.messages,
            statuses = w.statuses,
            assignments = w.assignments,
            conversations = w.conversations,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "persister batch written"
        );
        for (table, n) in [
            ("messages", w.messages),
            ("message_statuses", w.statuses),
            ("deliveries", w.deliveries),
            ("assignments", w.assignments),
            ("conversations", w.conversations),
        ] {
            counter!(PERSISTER_ROWS, "table" => table).increment(n);
        }
        let stored = (self.entries as u64).saturating_sub(self.unreadable + w.erased + w.refused);
        counter!(PERSISTER_EVENTS, "outcome" => "stored").increment(stored);
        counter!(PERSISTER_EVENTS, "outcome" => "unreadable").increment(self.unreadable);
        counter!(PERSISTER_EVENTS, "outcome" => "erased").increment(w.erased);
        counter!(PERSISTER_EVENTS, "outcome" => "refused").increment(w.refused);
        histogram!(PERSISTER_BATCH_DURATION).record(self.elapsed.as_secs_f64());
    }
}

/// A persister step failed (it is retried; nothing was acknowledged).
pub struct PersisterFailed<'a> {
    /// `migrate`, `read`, `write`, `refused_event`, `retention`.
    pub op: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl PersisterFailed<'_> {
    pub fn emit(self) {
        tracing::error!(op = self.op, error = %self.error, "persister step failed");
        counter!(PERSISTER_FAILURES, "op" => self.op).increment(1);
    }
}

/// Events stream entries the persister has not stored yet (pending + undelivered).
pub struct PersisterLagSampled {
    pub lag: u64,
}

impl PersisterLagSampled {
    pub fn emit(self) {
        gauge!(PERSISTER_LAG).set(self.lag as f64);
    }
}

/// A privacy operation (erase, export, retention, data_deletion) finished.
pub struct PrivacyOperation {
    pub op: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

impl PrivacyOperation {
    pub fn emit(self) {
        tracing::info!(op = self.op, outcome = self.outcome, "privacy operation");
        counter!(PRIVACY_OPERATIONS, "op" => self.op, "outcome" => self.outcome).increment(1);
    }
}

/// One delivery attempt to a destination ended (or an event was given up without one).
/// Labels: the outcome and the event kind, both bounded sets; never the tenant, the
/// destination or the URL (docs/metrics.md).
pub struct DeliveryAttempted {
    /// `delivered`, `failed` (retried later), `gave_up` (past the horizon), `gone` (410:
    /// the destination is disabled), `refused` (a private address at delivery time),
    /// `queue_full` (not queued: the destination's queue is at its bound).
    pub outcome: &'static str,
    /// The event's kind (`EventKind::as_str`), `unknown` when it could not be read.
    pub kind: &'static str,
    /// How long the request took (None: no request was made).
    pub latency: Option<Duration>,
    /// From the gateway's receipt of the event to its delivery (delivered only).
    pub lag: Option<Duration>,
}

impl DeliveryAttempted {
    pub fn emit(self) {
        let kind = self.kind;
        counter!(DELIVERIES, "outcome" => self.outcome, "kind" => kind).increment(1);
        if let Some(l) = self.latency {
            histogram!(DELIVERY_DURATION).record(l.as_secs_f64());
        }
        if let Some(l) = self.lag {
            histogram!(DELIVERY_LAG, "kind" => kind).record(l.as_secs_f64());
        }
    }
}

/// Push delivery's backlog, sampled every 5 s by one replica's worker.
pub struct DeliverySampled {
    /// Events waiting in every destination's queues.
    pub queued: u64,
    /// Age of the oldest of them (0 when none).
    pub oldest: Duration,
    /// Events stream entries not yet fanned out to the destinations.
    pub fanout_lag: u64,
}

impl DeliverySampled {
    pub fn emit(self) {
        gauge!(DELIVERY_QUEUED).set(self.queued as f64);
        gauge!(DELIVERY_OLDEST).set(self.oldest.as_secs_f64());
        gauge!(DELIVERY_FANOUT_LAG).set(self.fanout_lag as f64);
    }
}

/// The events stream's retention removed entries the delivery fan-out had not read: it was
/// more than `delivery.max_fanout_lag` entries behind. Those events are not delivered
/// (redeliver cannot bring them back: they left the stream). `total` is the count kept
/// next to the stream (every replica reads the same), `new` what this sample added.
pub struct DeliveryTrimmedUnread {
    pub total: u64,
    pub new: u64,
}

impl DeliveryTrimmedUnread {
    pub fn emit(self) {
        if self.new > 0 {
            tracing::error!(
                trimmed = self.new,
                total = self.total,
                "the events stream's retention removed events push delivery had not fanned out (more than delivery.max_fanout_lag behind): they are not delivered"
            );
        }
        counter!(DELIVERY_TRIMMED_UNREAD).absolute(self.total);
    }
}

/// The gateway disabled a destination: `gone` (it answered 410) or `failing` (every attempt
/// failed for `delivery.disable_after_failing_secs`).
pub struct DestinationDisabled<'a> {
    pub tenant: &'a str,
    pub destination: &'a str,
    pub reason: &'static str,
}

impl DestinationDisabled<'_> {
    pub fn emit(self) {
        tracing::warn!(
            tenant = self.tenant,
            destination = self.destination,
            reason = self.reason,
            "delivery destination disabled"
        );
        counter!(DELIVERY_DISABLED, "reason" => self.reason).increment(1);
    }
}

/// A delivery worker step failed (Redis or PostgreSQL unreachable); retried.
pub struct DeliveryFailed<'a> {
    /// `fanout`, `take`, `finish`, `record`, `disable`, `sample`.
    pub op: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl DeliveryFailed<'_> {
    pub fn emit(self) {
        tracing::warn!(op = self.op, error = %self.error, "delivery step failed; retrying");
        counter!(DELIVERY_FAILURES, "op" => self.op).increment(1);
    }
}
