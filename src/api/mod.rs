//! The operator API under `/v1/` (token-authenticated JSON): routing administration
//! ([`routing`]). The read API of the streams (`/v1/events`, `/v1/deadletters`) lives with
//! the ingest handlers.
//!
//! Handlers stay thin: authenticate, parse, call the engine, map its errors to the catalogue
//! in `crate::error`. Bodies are parsed here (not with actix's extractors) so that every
//! refusal is a `{code, message}` body.

pub mod admin;
pub mod endpoints;
pub mod openapi;
pub mod privacy;
pub mod routing;
pub mod stream;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use serde::de::DeserializeOwned;

use crate::admin::{KeyRole, Principal};
use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    routing::configure(cfg);
    stream::configure(cfg);
    privacy::configure(cfg);
    admin::configure(cfg);
    openapi::configure(cfg);
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
pub fn route_label(path: &str) -> &'static str {
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
