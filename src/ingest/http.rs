//! HTTP handlers of the webhook edge, the read API of the streams and the health endpoints
//! (the shared request middleware is in `crate::http`).
//! Handlers are thin: extract, call the stage function, map the outcome to a response.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::accept::StreamName;
use crate::error::ApiError;
use crate::event::Provider;
use crate::http::{method_not_allowed, State};
use crate::internal_events::WebhookAnswered;
use crate::state::AppState;
use crate::verify::Method;

/// Routes of the gateway.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/{source}")
            .route(web::post().to(webhook))
            .route(web::get().to(get_webhook))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/v1/events", web::get().to(list_events))
    .route("/v1/deadletters", web::get().to(list_deadletters))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics));
}

async fn webhook(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    deliver(state, req, path.into_inner(), payload, Method::Post).await
}

/// Empty TwiML: Twilio expects an XML document from a messaging webhook, and an empty
/// `<Response/>` tells it to send no reply.
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

async fn deliver(
    state: State,
    req: HttpRequest,
    source_id: String,
    payload: web::Payload,
    method: Method,
) -> HttpResponse {
    let known = state.source(&source_id);
    let provider = known.as_ref().map(|s| s.provider).unwrap_or(Provider::Meta);
    let provider_label = if known.is_some() {
        provider.as_str()
    } else {
        "unknown"
    };
    let result = super::receive(&state, &req, payload, &source_id, method).await;
    let (response, code) = match result {
        Ok((receipt, _)) if provider == Provider::Twilio => (
            HttpResponse::Ok()
                .content_type("text/xml; charset=utf-8")
                .insert_header(("x-switchboard-accepted", receipt.accepted.to_string()))
                .insert_header(("x-switchboard-duplicates", receipt.duplicates.to_string()))
                .insert_header((
                    "x-switchboard-dead-lettered",
                    receipt.dead_lettered.to_string(),
                ))
                .body(EMPTY_TWIML),
            "ok",
        ),
        Ok((receipt, _)) => (HttpResponse::Ok().json(receipt), "ok"),
        Err(e) => {
            let code = e.code();
            (actix_web::ResponseError::error_response(&e), code)
        }
    };
    WebhookAnswered {
        provider: provider_label,
        status: response.status().as_u16(),
        code,
    }
    .emit();
    response
}

/// GET on a webhook URL: Meta's handshake, a query-string delivery for providers that may
/// deliver with GET, else 405 (404 for an unknown source).
async fn get_webhook(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    match super::get_kind(&state, &path) {
        Ok(super::GetKind::Delivery) => {
            deliver(state, req, path.into_inner(), payload, Method::Get).await
        }
        Ok(super::GetKind::Handshake) => handshake(&state, &req, &path),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

fn handshake(state: &AppState, req: &HttpRequest, path: &str) -> HttpResponse {
    match super::handshake(state, path, req.query_string()) {
        Ok(challenge) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(challenge),
        Err(e) => actix_web::ResponseError::error_response(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    limit: Option<usize>,
    after: Option<String>,
}

async fn read_stream(
    state: &AppState,
    req: &HttpRequest,
    stream: StreamName,
    field: &'static str,
) -> Result<HttpResponse, ApiError> {
    let who = crate::http::authorize(state, req)?;
    let redact = who.role == crate::admin::KeyRole::Viewer;
    let q = web::Query::<ReadQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let limit = q.limit.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be 1..=1000".into()));
    }
    if let Some(after) = &q.after {
        check_after(after, state.backend.partitions().len())?;
    }
    let entries = state
        .backend
        .read(stream, limit, q.after.as_deref())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "stream read failed");
            ApiError::Unavailable
        })?;
    let items: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|e| {
            let mut value: serde_json::Value =
                serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null);
            if redact {
                value = match stream {
                    StreamName::DeadLetter => keep_only(&value, DEADLETTER_FIELDS_FOR_VIEWERS),
                    _ => event_for_viewer(&value),
                };
            }
            serde_json::json!({ "stream_id": e.id, field: value })
        })
        .collect();
    let next = items
        .last()
        .and_then(|v| v["stream_id"].as_str())
        .map(str::to_string);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next_after": next })))
}

/// A read cursor is a stream id (`<ms>-<seq>`, both fitting 64 bits, or `<ms>` alone) and,
/// with partitioned streams, may name its partition (`p<n>/<id>`, n below the number of
/// partitions). Anything else is the caller's mistake (400), not the backend's (503).
fn check_after(after: &str, partitions: usize) -> Result<(), ApiError> {
    let bad = || {
        ApiError::BadRequest(if partitions > 1 {
            format!("after must be a stream id such as 1700000000000-0, or p<n>/1700000000000-0 with n below {partitions}")
        } else {
            "after must be a stream id such as 1700000000000-0 (these streams are not partitioned)"
                .into()
        })
    };
    let id = match crate::accept::partitioned::split_id(after) {
        Some((p, id)) if partitions > 1 && p < partitions => id,
        Some(_) => return Err(bad()),
        None => after,
    };
    let number = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok()
    };
    let valid = match id.split_once('-') {
        Some((ms, seq)) => number(ms) && number(seq),
        None => number(id),
    };
    if valid {
        Ok(())
    } else {
        Err(bad())
    }
}

/// What a viewer key sees of an event: what happened, where and to whom it was routed —
/// never who the contact is or what they wrote (docs/admin.md, roles).
const EVENT_FIELDS_FOR_VIEWERS: &[&str] = &[
    "schema",
    "event_id",
    "kind",
    "tenant",
    "source",
    "provider",
    "channel",
    "direction",
    "provider_message_id",
    "conversation_id",
    "business",
    "occurred_at",
    "received_at",
    "assignment",
];
const MESSAGE_FIELDS_FOR_VIEWERS: &[&str] = &["type", "content_type"];
const STATUS_FIELDS_FOR_VIEWERS: &[&str] =
    &["state", "provider_state", "message_id", "message_ids"];
const NOTIFICATION_FIELDS_FOR_VIEWERS: &[&str] = &["topic", "event"];
/// Of a dead letter: which source refused what and why, never the body, headers or URL.
const DEADLETTER_FIELDS_FOR_VIEWERS: &[&str] = &[
    "deadletter_id",
    "reason",
    "source",
    "provider",
    "received_at",
    "method",
];

fn keep_only(v: &serde_json::Value, fields: &[&str]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(obj) = v.as_object() {
        for f in fields {
            if let Some(x) = obj.get(*f) {
                out.insert((*f).to_string(), x.clone());
            }
        }
    }
    out.insert("redacted".into(), serde_json::Value::Bool(true));
    serde_json::Value::Object(out)
}

/// An event as a viewer sees it: a whitelist, so that a field added later stays hidden
/// until someone decides it is not contact data.
fn event_for_viewer(v: &serde_json::Value) -> serde_json::Value {
    let mut out = keep_only(v, EVENT_FIELDS_FOR_VIEWERS);
    for (field, keep) in [
        ("message", MESSAGE_FIELDS_FOR_VIEWERS),
        ("status", STATUS_FIELDS_FOR_VIEWERS),
        ("notification", NOTIFICATION_FIELDS_FOR_VIEWERS),
    ] {
        if let Some(inner) = v.get(field).filter(|x| x.is_object()) {
            let mut inner = keep_only(inner, keep);
            if let Some(o) = inner.as_object_mut() {
                o.remove("redacted");
            }
            out[field] = inner;
        }
    }
    if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
        out["errors"] = errors
            .iter()
            .map(|e| serde_json::json!({ "code": e.get("code") }))
            .collect();
    }
    out
}

async fn list_events(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    read_stream(&state, &req, StreamName::Events, "event").await
}

async fn list_deadletters(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    read_stream(&state, &req, StreamName::DeadLetter, "deadletter").await
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

/// Ready: the backend answers and, with `[postgres]` enabled, this build's migrations were
/// seen applied (until then, e.g. while `migrate_on_start` applies them, the admin API and
/// the persister cannot work: 503). Once migrated, a PostgreSQL outage does not make the
/// gateway unready: ingestion does not wait for it (the history catches up afterwards),
/// and taking every replica out of the load balancer would refuse every webhook; the body
/// shows `"postgres": "down"` and the lag.
async fn readyz(state: State) -> HttpResponse {
    let backend = state.backend.name();
    if let Err(e) = state.backend.ping().await {
        tracing::warn!(backend, error = %e, "readiness check failed");
        // What to change, when the error says (TLS, credentials); never the raw error,
        // which can name internal hosts.
        let message = match crate::accept::conn::hint(&e.to_string()) {
            Some(hint) => format!("the {backend} backend does not answer: {hint}"),
            None => format!("the {backend} backend does not answer"),
        };
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "code": "dependency_unavailable",
            "message": message,
        }));
    }
    let streams = state.backend.stats().await.ok();
    let mut body = serde_json::json!({
        "status": "ready", "backend": backend, "streams": streams
    });
    if let Some(pg) = &state.persist {
        let status = crate::persist::status(pg, &state.backend).await;
        if !status.migrated {
            let message = if status.postgres == "up" {
                "PostgreSQL migrations are pending: migrate_on_start is applying them, or run `switchboard migrate`".to_string()
            } else {
                match status.hint {
                    Some(hint) => format!("PostgreSQL does not answer, and its schema has not been seen migrated yet: {hint}"),
                    None => "PostgreSQL does not answer, and its schema has not been seen migrated yet".to_string(),
                }
            };
            tracing::warn!(postgres = status.postgres, "not ready: {message}");
            return HttpResponse::ServiceUnavailable()
                .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
                .json(serde_json::json!({
                    "code": "dependency_unavailable",
                    "message": message,
                }));
        }
        body["persister"] = serde_json::json!(status);
    }
    HttpResponse::Ok().json(body)
}

async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
