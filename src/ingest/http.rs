//! HTTP handlers and the per-request middleware (request id, span, access metrics).
//! Handlers are thin: extract, call the stage function, map the outcome to a response.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tracing::Instrument;

use crate::accept::StreamName;
use crate::error::ApiError;
use crate::event::Provider;
use crate::internal_events::{HttpRequestDone, WebhookAnswered};
use crate::state::AppState;
use crate::verify::Method;

pub type State = web::Data<AppState>;

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
    .configure(crate::api::configure)
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
    crate::api::authorize(state, req)?;
    let q = web::Query::<ReadQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let limit = q.limit.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be 1..=1000".into()));
    }
    if let Some(after) = &q.after {
        // With partitioned streams an id names its partition: `p<n>/<stream id>`.
        let after = match crate::accept::partitioned::split_id(after) {
            Some((_, id)) => id,
            None => after.as_str(),
        };
        let valid = after.split_once('-').map_or(after, |(ms, seq)| {
            if seq.chars().all(|c| c.is_ascii_digit()) && !seq.is_empty() {
                ms
            } else {
                ""
            }
        });
        if valid.is_empty() || !valid.chars().all(|c| c.is_ascii_digit()) {
            return Err(ApiError::BadRequest(
                "after must be a stream id such as 1700000000000-0 (p<n>/1700000000000-0 with partitioned streams)".into(),
            ));
        }
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
            let value: serde_json::Value =
                serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "stream_id": e.id, field: value })
        })
        .collect();
    let next = items
        .last()
        .and_then(|v| v["stream_id"].as_str())
        .map(str::to_string);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next_after": next })))
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

async fn readyz(state: State) -> HttpResponse {
    let backend = state.backend.name();
    match state.backend.ping().await {
        Ok(()) => {
            let streams = state.backend.stats().await.ok();
            let mut body = serde_json::json!({
                "status": "ready", "backend": backend, "streams": streams
            });
            // Postgres being down does not make the gateway unready (ingestion does not
            // wait for it); the lag says how far behind the history is.
            if let Some(pg) = &state.persist {
                body["persister"] =
                    serde_json::json!(crate::persist::status(pg, &state.backend).await);
            }
            HttpResponse::Ok().json(body)
        }
        Err(e) => {
            tracing::warn!(backend, error = %e, "readiness check failed");
            // What to change, when the error says (TLS, credentials); never the raw error,
            // which can name internal hosts.
            let message = match crate::accept::conn::hint(&e.to_string()) {
                Some(hint) => format!("the {backend} backend does not answer: {hint}"),
                None => format!("the {backend} backend does not answer"),
            };
            HttpResponse::ServiceUnavailable().json(serde_json::json!({
                "code": "dependency_unavailable",
                "message": message,
            }))
        }
    }
}

async fn metrics(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Request id (from a sane incoming `x-request-id`, else new), a tracing span carrying it,
/// the access metric and the access log line. The span records the route pattern, never
/// the query string (Meta's handshake carries the verify token there).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = route_label(req.path());
    let method = req.method().to_string();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    // Handler errors arrive here already rendered as responses (the catalogue's JSON);
    // an Err is a framework failure that actix renders itself.
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    HttpRequestDone {
        route,
        method: &method,
        status,
        elapsed,
    }
    .emit();
    if status >= 500 {
        tracing::warn!(parent: &span, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request done");
    } else if status >= 400 {
        tracing::info!(parent: &span, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request done");
    } else {
        tracing::debug!(parent: &span, status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request done");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), v);
    }
    Ok(res)
}

/// The route pattern of a path, as a bounded metric label. Written out rather than asked of
/// the router (`match_pattern` matches the path against every route a second time).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/events" => "/v1/events",
        "/v1/deadletters" => "/v1/deadletters",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/") => crate::api::route_label(p),
        p if p.ends_with("/data-deletion") => "/webhooks/{source}/data-deletion",
        p if p.contains("/data-deletion/") => "/webhooks/{source}/data-deletion/{code}",
        p if p
            .strip_prefix("/webhooks/")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')) =>
        {
            "/webhooks/{source}"
        }
        _ => "unmatched",
    }
}

/// JSON body for requests no route matched.
pub async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::NotFound)
}

/// JSON body for a known path with an unsupported method.
pub async fn method_not_allowed() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed)
}
