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

/// `scheme://host` of the URL the client called: `X-Forwarded-Proto`/`X-Forwarded-Host`
/// count only when the TCP peer is one of `server.trusted_proxies` (anyone else could name
/// any host); else `http://` + `Host`. A configured public base URL, where there is one,
/// wins over this (callers check it first).
pub fn request_origin(state: &AppState, req: &HttpRequest) -> String {
    let headers = req.headers();
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let host = first("host").unwrap_or_else(|| "localhost".into());
    let via_trusted_proxy = req
        .peer_addr()
        .is_some_and(|a| state.trusted_proxies.contains(&a.ip()));
    let (scheme, host) = if via_trusted_proxy {
        (
            first("x-forwarded-proto").unwrap_or_else(|| "http".into()),
            first("x-forwarded-host").unwrap_or(host),
        )
    } else {
        ("http".into(), host)
    };
    format!("{scheme}://{host}")
}

/// Authenticates the caller of a `/v1/` endpoint and checks its role and tenant scope
/// against the endpoint's row of [`endpoints::ENDPOINTS`] (found by method and route
/// pattern; a route not in the table is refused). Order: 403 `api_disabled` when no key can
/// exist; 429 `rate_limited` while the client address is locked out after too many failed
/// tokens ([`crate::limits::AuthFailures`]); 401 `unauthorized` without a valid key; 429
/// `rate_limited` over the key's limit; 400 `bad_request` for a path parameter no id can
/// be (control characters, over 256 bytes); 403 `forbidden` for a role or scope that does
/// not allow the operation.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let ip = client_ip(state, req);
    if let Some(ip) = ip {
        if let Err(retry_after_secs) = state.limiters.auth.check(ip) {
            return Err(failed_auth_limited(retry_after_secs));
        }
    }
    let presented = bearer_token(req);
    let who = match state.admin.authenticate(presented, state.persist.is_some()) {
        // Only a presented token is a guess; a missing header costs nothing.
        Err(ApiError::Unauthorized) if presented.is_some() => {
            return Err(match ip.map(|ip| state.limiters.auth.failed(ip)) {
                Some(Err(retry_after_secs)) => failed_auth_limited(retry_after_secs),
                _ => ApiError::Unauthorized,
            })
        }
        other => other?,
    };
    check_path_params(req)?;
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

fn failed_auth_limited(retry_after_secs: u64) -> ApiError {
    crate::internal_events::RateLimited {
        scope: "failed_auth",
    }
    .emit();
    ApiError::RateLimited {
        scope: "client address (too many invalid API tokens)",
        retry_after_secs,
    }
}

/// The credentials of an `Authorization: Bearer <token>` header. The scheme is matched
/// without regard to case (RFC 9110 §11.1), white space around the token is ignored.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Path parameters (tenant, source, key, contact ids...) reach stores and logs: refuse
/// what no id can be before any of them sees it (a NUL byte is an error in PostgreSQL).
fn check_path_params(req: &HttpRequest) -> Result<(), ApiError> {
    for (name, value) in req.match_info().iter() {
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "path parameter {name} is not a valid id (control characters, or longer than 256 bytes)"
            )));
        }
    }
    Ok(())
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
    let method = method_label(req.method());
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    // Handler errors arrive here already rendered as responses (the catalogue's JSON);
    // the framework's own refusals (extractors, payload limits) are rendered as JSON here.
    let res = next.call(req).instrument(span.clone()).await?;
    let mut res = res.map_into_boxed_body();
    if let Some(json) = framework_error_as_json(&res) {
        res = res.into_response(json);
    }
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    HttpRequestDone {
        route,
        method,
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

/// A request method as a bounded label: the standard ones, every other token `_OTHER`
/// (the method is whatever the client sent).
pub fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// An error response the framework rendered itself (an extractor's or the payload limit's,
/// `text/plain`) as the catalogue's `{code, message}`; `None` for anything else.
fn framework_error_as_json(
    res: &ServiceResponse<actix_web::body::BoxBody>,
) -> Option<HttpResponse> {
    let err = res.response().error()?;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return None;
    }
    let status = res.status();
    let code = match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        s if s >= 500 => "internal",
        _ => "bad_request",
    };
    let message = if status.is_server_error() {
        tracing::error!(error = %err, "request failed in the framework");
        "internal error".to_string()
    } else {
        // The framework's explanation (e.g. "payload reached size limit"), bounded.
        err.to_string().chars().take(300).collect()
    };
    Some(HttpResponse::build(status).json(serde_json::json!({ "code": code, "message": message })))
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
