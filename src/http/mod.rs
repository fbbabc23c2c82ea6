//! The HTTP layer shared by the webhook edge ([`crate::ingest`]) and the operator API
//! ([`crate::api`]): the state type handlers extract, who the caller is (client address,
//! API key, role and tenant scope against the [`endpoints`] table), JSON bodies, the
//! per-request middleware (request id, span, access metric) and the catch-all answers.
//!
//! It knows no route handler: `crate::startup` assembles the app from both modules.

pub mod endpoints;

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::admin::{KeyRole, Principal};
use crate::error::ApiError;
use crate::internal_events::HttpRequestDone;
use crate::state::AppState;

/// What every handler extracts: the shared runtime state.
pub type State = web::Data<AppState>;

/// The client address for rate limiting: the TCP peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` address that is not itself a trusted proxy.
pub fn client_ip(state: &AppState, req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    if !state.trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !state.trusted_proxies.contains(ip))
            .unwrap_or(peer),
    )
}

/// Authenticates the caller of a `/v1/` endpoint and checks its role and tenant scope
/// against the endpoint's row of [`endpoints::ENDPOINTS`] (found by method and route
/// pattern; a route not in the table is refused). Order: 403 `api_disabled` when no key can
/// exist; 401 `unauthorized` without a valid key; 429 `rate_limited` over the key's limit;
/// 403 `forbidden` for a role or scope that does not allow the operation.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let who = state
        .admin
        .authenticate(presented, state.persist.is_some())?;
    let pattern = req.match_pattern().unwrap_or_default();
    let Some(ep) = endpoints::find(req.method().as_str(), &pattern) else {
        tracing::error!(method = %req.method(), %pattern, "route without an access rule; refused");
        return Err(ApiError::Forbidden(
            "this operation has no access rule".into(),
        ));
    };
    permit(ep, &who, |name| {
        req.match_info().get(name).map(str::to_string)
    })?;
    Ok(who)
}

/// The decision of [`authorize`] once the caller is known.
pub fn permit(
    ep: &endpoints::Endpoint,
    who: &Principal,
    param: impl Fn(&str) -> Option<String>,
) -> Result<(), ApiError> {
    if !ep.roles.contains(&who.role) {
        return Err(ApiError::Forbidden(format!(
            "a key with role {} may not do this",
            who.role.as_str()
        )));
    }
    match ep.scope {
        endpoints::Scope::Global if who.tenant.is_some() => {
            return Err(ApiError::Forbidden(
                "this operation needs a key of global scope (this one is limited to a tenant)"
                    .into(),
            ))
        }
        endpoints::Scope::Tenant => {
            let tenant = param("tenant").unwrap_or_default();
            if !who.sees(&tenant) {
                return Err(ApiError::Forbidden(
                    "this key is limited to another tenant".into(),
                ));
            }
        }
        _ => {}
    }
    if ep.own_agent && who.role == KeyRole::Agent && param("agent") != who.agent {
        return Err(ApiError::Forbidden(
            "an agent key may only change its own agent".into(),
        ));
    }
    Ok(())
}

/// A JSON body: 415 unless the content type is JSON, 400 (with serde's explanation) unless
/// it parses into `T`.
pub fn json_body<T: DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(ApiError::UnsupportedMediaType {
            got: essence,
            expected: "application/json",
        });
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Route pattern of a `/v1/` path, as a bounded metric label (from the endpoint table).
fn api_route_label(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    endpoints::ENDPOINTS
        .iter()
        .map(|e| e.path)
        .find(|pattern| {
            let pat: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
            pat.len() == parts.len()
                && pat
                    .iter()
                    .zip(&parts)
                    .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
        })
        .unwrap_or("unmatched")
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
        p if p.starts_with("/v1/") => api_route_label(p),
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
