//! The error catalogue at the HTTP edge: every error a caller can see, with its status and a
//! stable snake_case `code`. Bodies are `{"code": ..., "message": ...}`; messages never carry
//! secrets, expected signatures or internal causes (those go to the log).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no source named {0:?} is configured")]
    UnknownSource(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type {got:?} is not accepted here; send {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    #[error("signature verification failed")]
    InvalidSignature,
    #[error("verification handshake rejected")]
    HandshakeRejected,
    #[error("rate limit exceeded for this {scope}; retry after {retry_after_secs} s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    #[error("the inbound queue is full; retry after {retry_after_secs} s")]
    Backpressure { retry_after_secs: u64 },
    #[error("a dependency of the gateway is unavailable; retry later")]
    Unavailable,
    #[error("missing or invalid API token")]
    Unauthorized,
    #[error("the API is disabled: set [api] token in the configuration")]
    ApiDisabled,
    #[error("{0}")]
    BadRequest(String),
    #[error("no route for this method and path")]
    NotFound,
    #[error("no tenant named {0:?} is configured")]
    UnknownTenant(String),
    #[error("{message}")]
    NotFoundResource { code: &'static str, message: String },
    #[error("tenant {0:?} has no routing configured (set [tenants.{0}.routing] or PUT its rules)")]
    RoutingNotConfigured(String),
    #[error("invalid routing rules: {}", .0.join("; "))]
    InvalidRules(Vec<String>),
    #[error("the rule set changed meanwhile: version {current} is current")]
    VersionConflict { current: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    AgentUnavailable(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Authenticated, but this key's role or tenant scope does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    /// 409 with its own stable code (`config_managed`, `already_exists`,
    /// `master_key_missing`...).
    #[error("{message}")]
    ConflictCode { code: &'static str, message: String },
    /// 422 with its own stable code (`invalid_source`, `invalid_key`...): every problem.
    #[error("{}", .errors.join("; "))]
    Unprocessable {
        code: &'static str,
        errors: Vec<String>,
    },
    /// The request body did not arrive within `server.body_read_timeout_ms`.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    RequestTimeout { timeout_ms: u64 },
    /// This client address already has `server.max_connections_per_ip` connections open.
    #[error("too many connections from this client address (at most {limit}); retry after {retry_after_secs} s")]
    TooManyConnections { limit: usize, retry_after_secs: u64 },
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownSource(_) => "unknown_source",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::InvalidSignature => "invalid_signature",
            ApiError::HandshakeRejected => "handshake_rejected",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Backpressure { .. } => "backpressure",
            ApiError::Unavailable => "dependency_unavailable",
            ApiError::Unauthorized => "unauthorized",
            ApiError::ApiDisabled => "api_disabled",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound => "not_found",
            ApiError::UnknownTenant(_) => "unknown_tenant",
            ApiError::NotFoundResource { code, .. } => code,
            ApiError::RoutingNotConfigured(_) => "routing_not_configured",
            ApiError::InvalidRules(_) => "invalid_rules",
            ApiError::VersionConflict { .. } => "version_conflict",
            ApiError::Conflict(_) => "conflict",
            ApiError::AgentUnavailable(_) => "agent_unavailable",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::ConflictCode { code, .. } => code,
            ApiError::Unprocessable { code, .. } => code,
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::TooManyConnections { .. } => "too_many_connections",
            ApiError::Internal => "internal",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::Backpressure { retry_after_secs }
            | ApiError::TooManyConnections {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Unavailable => Some(1),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::UnknownSource(_)
            | ApiError::NotFound
            | ApiError::UnknownTenant(_)
            | ApiError::NotFoundResource { .. }
            | ApiError::RoutingNotConfigured(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidRules(_) | ApiError::Unprocessable { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::VersionConflict { .. }
            | ApiError::ConflictCode { .. }
            | ApiError::Conflict(_)
            | ApiError::AgentUnavailable(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidSignature | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::HandshakeRejected | ApiError::ApiDisabled | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::RateLimited { .. } | ApiError::TooManyConnections { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Backpressure { .. } | ApiError::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs.max(1))));
        }
        if matches!(self, ApiError::Unauthorized) {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(Body {
            code: self.code(),
            message: self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn body_is_code_and_message_with_retry_after() {
        let e = ApiError::RateLimited {
            scope: "ip",
            retry_after_secs: 3,
        };
        let res = e.error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get("retry-after").unwrap(), "3");
        let body = to_bytes(res.into_body()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "rate_limited");
        assert!(v["message"].as_str().unwrap().contains("ip"));
    }
}
