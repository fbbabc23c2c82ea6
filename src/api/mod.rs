//! The operator API under `/v1/` (token-authenticated JSON): routing administration
//! ([`routing`]). The read API of the streams (`/v1/events`, `/v1/deadletters`) lives with
//! the ingest handlers.
//!
//! Handlers stay thin: authenticate, parse, call the engine, map its errors to the catalogue
//! in `crate::error`. Bodies are parsed here (not with actix's extractors) so that every
//! refusal is a `{code, message}` body.

pub mod privacy;
pub mod routing;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    routing::configure(cfg);
    privacy::configure(cfg);
}

/// The bearer token check shared by every `/v1/` endpoint.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = &state.api_token else {
        return Err(ApiError::ApiDisabled);
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if token.matches(presented.trim().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
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

/// Route pattern of a `/v1/` path, as a bounded metric label.
pub fn route_label(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "routing", "reload"] => "/v1/routing/reload",
        ["v1", "tenants", _, "routing"] => "/v1/tenants/{tenant}/routing",
        ["v1", "tenants", _, "agents"] => "/v1/tenants/{tenant}/agents",
        ["v1", "tenants", _, "agents", _, "presence"] => {
            "/v1/tenants/{tenant}/agents/{agent}/presence"
        }
        ["v1", "tenants", _, "agents", _, "capacity"] => {
            "/v1/tenants/{tenant}/agents/{agent}/capacity"
        }
        ["v1", "tenants", _, "queues"] => "/v1/tenants/{tenant}/queues",
        ["v1", "tenants", _, "contacts", _] => "/v1/tenants/{tenant}/contacts/{contact}",
        ["v1", "tenants", _, "contacts", _, "export"] => {
            "/v1/tenants/{tenant}/contacts/{contact}/export"
        }
        ["v1", "tenants", _, "conversations", _] => "/v1/tenants/{tenant}/conversations/{conv}",
        ["v1", "tenants", _, "conversations", _, "close"] => {
            "/v1/tenants/{tenant}/conversations/{conv}/close"
        }
        ["v1", "tenants", _, "conversations", _, "reopen"] => {
            "/v1/tenants/{tenant}/conversations/{conv}/reopen"
        }
        ["v1", "tenants", _, "conversations", _, "transfer"] => {
            "/v1/tenants/{tenant}/conversations/{conv}/transfer"
        }
        _ => "unmatched",
    }
}
