//! Ingest: the HTTP edge and the order of the stages of one webhook (docs/architecture.md steps 1-6).
//!
//! [`receive`] is the one place where the order is written down:
//! source → size → per-IP limit → media type → body → verify → normalize → per-tenant
//! limit → accept → answer. Handlers ([`http`]) only extract, call and map the outcome.
//!
//! This module must never answer 2xx before the backend confirmed the accept, and never
//! pass bytes to a normalizer before their signature was checked.

pub mod edge;
pub mod http;

use std::collections::BTreeSet;
use std::time::Instant;

use actix_web::http::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;

use crate::accept::{BackendError, Batch, Item};
use crate::error::ApiError;
use crate::event::{legacy_event_id, rfc3339, short_hash};
use crate::internal_events::{
    BackendFailed, BackpressureApplied, DeadLettered, EventsAccepted, RateLimited, SignatureFailed,
};
use crate::normalize::{Context, DeadLetter, Normalized};
use crate::source::{Source, SourceKind};
use crate::state::AppState;
use crate::verify::{Headers, Method, Unverified, Verified};

/// What a webhook request produced, once durably accepted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Receipt {
    /// New events appended to the inbound stream.
    pub accepted: usize,
    /// Events already accepted earlier (redeliveries).
    pub duplicates: usize,
    /// Parts stored in the dead-letter stream.
    pub dead_lettered: usize,
}

/// The URL the provider called, as it saw it: schemes that sign the URL (Twilio, Plivo,
/// MessageBird, Bird) need it byte for byte. In order of preference: the source's configured
/// `public_base_url` + the request path and query; `X-Forwarded-Proto`/`X-Forwarded-Host`
/// when the TCP peer is one of `server.trusted_proxies`; else `http://` + `Host`.
pub fn public_url(state: &AppState, src: &Source, req: &HttpRequest) -> String {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match &src.public_base_url {
        Some(base) => format!("{}{path_and_query}", base.trim_end_matches('/')),
        None => format!(
            "{}{path_and_query}",
            crate::http::request_origin(state, req)
        ),
    }
}

fn source(state: &AppState, id: &str) -> Result<std::sync::Arc<Source>, ApiError> {
    state
        .source(id)
        .ok_or_else(|| ApiError::UnknownSource(truncate(id, 64)))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The webhook path: every stage, in order.
pub async fn receive(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
    source_id: &str,
    method: Method,
) -> Result<(Receipt, &'static str), ApiError> {
    // 1. Source, size, per-IP limit, media type: cheap refusals before reading the body.
    let src = source(state, source_id)?;
    let provider = src.provider.as_str();
    let limit = state.max_body_bytes;
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if let Some(ip) = crate::http::client_ip(state, req) {
        if let Err(retry_after_secs) = state.limiters.check_ip(ip) {
            RateLimited { scope: "ip" }.emit();
            return Err(ApiError::RateLimited {
                scope: "client address",
                retry_after_secs,
            });
        }
    }
    if method == Method::Post {
        check_media_type(req.headers(), src.accepted_media_types())?;
    }
    let edge = req.app_data::<web::Data<edge::Edge>>().cloned();
    let body = read_body(
        &mut payload,
        limit,
        declared,
        edge.as_ref().map(|e| e.get_ref()),
    )
    .await?;

    // 2. Verify the raw bytes.
    let unverified = Unverified::new(verifier_headers(req.headers()), body)
        .with_method(method)
        .with_url(public_url(state, &src, req));
    let verified = src.verify(unverified).map_err(|e| {
        SignatureFailed {
            provider,
            source: &src.id,
            reason: e.reason(),
        }
        .emit();
        ApiError::InvalidSignature
    })?;

    // 3. Normalize.
    let received_at = OffsetDateTime::now_utc();
    let ctx = Context {
        source: &src.id,
        received_at,
        include_raw: src.include_raw,
        channels: &src.channels,
        default_tenant: src.default_tenant.as_deref(),
    };
    let normalized = src.normalize(&verified, &ctx);

    // 4. Per-tenant limit, once per tenant present in the request.
    let tenants: BTreeSet<&str> = normalized
        .events
        .iter()
        .map(|e| e.tenant.as_str())
        .collect();
    for tenant in tenants {
        if let Err(retry_after_secs) = state.limiters.check_tenant(tenant) {
            RateLimited { scope: "tenant" }.emit();
            return Err(ApiError::RateLimited {
                scope: "tenant",
                retry_after_secs,
            });
        }
    }

    // 5. Accept: dedup + enqueue atomically.
    let kept = signature_headers(&src, req.headers());
    let kept_headers: Vec<(&str, &str)> = kept.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let batch = to_batch(&src, &normalized, &verified, &kept_headers, received_at);
    let started = Instant::now();
    let report = match state.backend.accept(batch).await {
        Ok(r) => r,
        Err(BackendError::Backpressure { backlog }) => {
            BackpressureApplied { backlog }.emit();
            return Err(ApiError::Backpressure {
                retry_after_secs: 5,
            });
        }
        Err(e) => {
            BackendFailed {
                backend: state.backend.name(),
                op: "accept",
                error: &e,
            }
            .emit();
            return Err(ApiError::Unavailable);
        }
    };
    let kinds: Vec<(&'static str, bool)> = normalized
        .events
        .iter()
        .zip(&report.events)
        .map(|(e, fresh)| (e.kind.as_str(), *fresh))
        .collect();
    EventsAccepted {
        provider,
        kinds: &kinds,
        elapsed: started.elapsed(),
        backend: state.backend.name(),
    }
    .emit();
    for (dl, fresh) in normalized.dead_letters.iter().zip(&report.dead_letters) {
        DeadLettered {
            provider,
            source: &src.id,
            reason: dl.reason.as_str(),
            detail: &dl.detail,
            fresh: *fresh,
        }
        .emit();
    }

    // 6. Only now: the answer.
    let fresh = report.events.iter().filter(|f| **f).count();
    Ok((
        Receipt {
            accepted: fresh,
            duplicates: report.events.len() - fresh,
            dead_lettered: report.dead_letters.iter().filter(|f| **f).count(),
        },
        provider,
    ))
}

/// What a GET on a webhook URL is for this source.
pub enum GetKind {
    /// Meta's subscription handshake ([`handshake`]).
    Handshake,
    /// A webhook delivered with its parameters in the query string ([`receive`] with GET).
    Delivery,
}

/// Whether a GET on `/webhooks/{source_id}` is a handshake, a delivery, or not allowed.
pub fn get_kind(state: &AppState, source_id: &str) -> Result<GetKind, ApiError> {
    let src = source(state, source_id)?;
    match src.kind {
        SourceKind::Meta { .. } => Ok(GetKind::Handshake),
        _ if src.accepts_get_delivery() => Ok(GetKind::Delivery),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The GET verification handshake (Meta): `hub.mode=subscribe` and the right
/// `hub.verify_token` → the `hub.challenge`, verbatim.
pub fn handshake(state: &AppState, source_id: &str, query: &str) -> Result<String, ApiError> {
    let src = source(state, source_id)?;
    let SourceKind::Meta { verify_token, .. } = &src.kind else {
        return Err(ApiError::MethodNotAllowed);
    };
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "hub.mode" => mode = Some(v.into_owned()),
            "hub.verify_token" => token = Some(v.into_owned()),
            "hub.challenge" => challenge = Some(v.into_owned()),
            _ => {}
        }
    }
    match (mode.as_deref(), token, challenge) {
        (Some("subscribe"), Some(token), Some(challenge))
            if verify_token.matches(token.as_bytes()) && challenge.len() <= 1024 =>
        {
            tracing::info!(source = %src.id, "verification handshake accepted");
            Ok(challenge)
        }
        _ => {
            SignatureFailed {
                provider: src.provider.as_str(),
                source: &src.id,
                reason: "handshake_rejected",
            }
            .emit();
            Err(ApiError::HandshakeRejected)
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn check_media_type(
    headers: &HeaderMap,
    accepted: &'static [&'static str],
) -> Result<(), ApiError> {
    let got = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = got.split(';').next().unwrap_or("").trim();
    if accepted.iter().any(|a| essence.eq_ignore_ascii_case(a)) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            got: truncate(got, 100),
            expected: accepted.first().copied().unwrap_or("application/json"),
        })
    }
}

/// Reads the body, refusing past `limit` without buffering more than `limit` bytes. A body
/// that arrives in one chunk (most webhooks) is used as is, without a copy. The edge's
/// deadline and budget ([`edge`]) end the read with 408 or 503.
async fn read_body(
    payload: &mut web::Payload,
    limit: usize,
    declared: Option<usize>,
    edge: Option<&edge::Edge>,
) -> Result<Bytes, ApiError> {
    let read_failed = |e: actix_web::error::PayloadError| {
        if let Some(known) = edge.and_then(|edge| edge::payload_failure(&e, edge)) {
            return known;
        }
        tracing::debug!(error = %e, "request body read failed");
        ApiError::BadRequest("the request body could not be read".into())
    };
    let Some(first) = payload.next().await else {
        return Ok(Bytes::new());
    };
    let first = first.map_err(read_failed)?;
    if first.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let Some(second) = payload.next().await else {
        return Ok(first);
    };
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).clamp(first.len(), limit));
    buf.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        let chunk = chunk.map_err(read_failed)?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
        next = payload.next().await;
    }
    Ok(buf.freeze())
}

fn verifier_headers(headers: &HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.insert(name.as_str(), v);
        }
    }
    out
}

/// The dead-letter entry: enough to understand the failure and to replay the request
/// through verification later (`switchboard replay`): the body, the signature headers, the
/// method and the public URL that was verified (URL-signing schemes sign it; GET deliveries
/// carry their parameters in it), never a secret. Read back as [`DeadLetterRecord`].
#[derive(Serialize)]
struct DeadLetterEntry<'a> {
    schema: &'static str,
    deadletter_id: &'a str,
    reason: &'static str,
    detail: &'a str,
    source: &'a str,
    provider: &'static str,
    received_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<&'a serde_json::Value>,
    /// The request body when it is UTF-8 (every JSON body), else `body_base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    headers: Vec<(&'a str, &'a str)>,
    /// `GET` or `POST`.
    method: &'static str,
    /// The public URL as verified (see [`public_url`]).
    url: &'a str,
}

/// The signature headers of `src` present on a request, kept with its dead letters. A
/// header that carries a secret itself (Telegram's token) is kept as its digest only.
pub fn signature_headers<'h>(
    src: &Source,
    headers: &'h HeaderMap,
) -> Vec<(&'static str, std::borrow::Cow<'h, str>)> {
    src.signature_headers()
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (*name, src.kept_header_value(name, v)))
        })
        .collect()
}

/// What a verified, normalized request stores: its events for the inbound stream and its
/// dead letters (with the raw request, for replay). Used by [`receive`] and by
/// `switchboard replay`, so that both accept exactly the same items.
pub fn to_batch(
    src: &Source,
    normalized: &Normalized,
    verified: &Verified,
    kept_headers: &[(&str, &str)],
    received_at: OffsetDateTime,
) -> Batch {
    let events = normalized
        .events
        .iter()
        .map(|e| Item {
            key: e.event_id.clone(),
            payload: e.to_json(),
            shard: e.conversation_id.clone(),
            legacy_key: Some(legacy_event_id(&e.dedup_key)),
        })
        .collect();
    let received = rfc3339(received_at);
    let dead_letters = normalized
        .dead_letters
        .iter()
        .map(|dl| dead_letter_item(src, dl, verified, kept_headers, &received))
        .collect();
    Batch {
        events,
        dead_letters,
    }
}

fn dead_letter_item(
    src: &Source,
    dl: &DeadLetter,
    verified: &Verified,
    headers: &[(&str, &str)],
    received_at: &str,
) -> Item {
    let body = verified.body();
    // Stable across redeliveries of the same body: the same failure is stored once.
    let mut basis = Vec::with_capacity(body.len() + 64);
    basis.extend_from_slice(src.id.as_bytes());
    basis.push(0);
    basis.extend_from_slice(dl.reason.as_str().as_bytes());
    basis.push(0);
    match &dl.part {
        Some(part) => basis.extend_from_slice(part.to_string().as_bytes()),
        None => basis.extend_from_slice(body),
    }
    let id = format!("dl_{}", short_hash(&basis));
    let entry = DeadLetterEntry {
        schema: "switchboard.deadletter.v1",
        deadletter_id: &id,
        reason: dl.reason.as_str(),
        detail: &dl.detail,
        source: &src.id,
        provider: src.provider.as_str(),
        received_at,
        part: dl.part.as_ref(),
        body: std::str::from_utf8(body).ok(),
        body_base64: std::str::from_utf8(body)
            .is_err()
            .then(|| base64::engine::general_purpose::STANDARD.encode(body)),
        headers: headers.to_vec(),
        method: match verified.method() {
            Method::Get => "GET",
            Method::Post => "POST",
        },
        url: verified.url(),
    };
    Item {
        payload: serde_json::to_string(&entry).unwrap_or_default(),
        key: id,
        shard: None,
        legacy_key: None,
    }
}
