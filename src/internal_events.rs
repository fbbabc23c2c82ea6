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
pub const STREAM_LENGTH: &str = "switchboard_stream_length";
pub const STREAM_PENDING: &str = "switchboard_stream_pending";
pub const ROUTED_EVENTS: &str = "switchboard_routed_events_total";
pub const ROUTER_BATCH_DURATION: &str = "switchboard_router_batch_duration_seconds";

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
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is non-empty");
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
