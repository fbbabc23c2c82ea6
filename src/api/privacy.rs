//! Privacy endpoints: erase and export one contact (`/v1/tenants/{tenant}/contacts/...`,
//! API token), and Meta's data deletion callback with its status URL
//! (`/webhooks/{source}/data-deletion`, authenticated by the `signed_request` itself).
//! The work is in `crate::persist::privacy`; every operation writes an audit row there.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use crate::error::ApiError;
use crate::http::authorize;
use crate::http::State;
use crate::internal_events::{PrivacyOperation, RateLimited, SignatureFailed};
use crate::persist::{privacy, PersistError, Postgres};
use crate::source::SourceKind;
use crate::verify::signed_request;

/// Largest data deletion callback body read (a signed request is a few hundred bytes).
const MAX_CALLBACK_BYTES: usize = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/tenants/{tenant}/contacts/{contact}",
        web::delete().to(erase),
    )
    .route(
        "/v1/tenants/{tenant}/contacts/{contact}/export",
        web::get().to(export),
    )
    .route(
        "/webhooks/{source}/data-deletion",
        web::post().to(data_deletion),
    )
    .route(
        "/webhooks/{source}/data-deletion/{code}",
        web::get().to(data_deletion_status),
    );
}

fn postgres(state: &State) -> Result<&Postgres, ApiError> {
    state.persist.as_ref().ok_or(ApiError::NotFoundResource {
        code: "postgres_disabled",
        message: "history is not stored: set [postgres] enabled = true".into(),
    })
}

fn failed(op: &'static str, e: PersistError) -> ApiError {
    PrivacyOperation {
        op,
        outcome: "error",
    }
    .emit();
    if e.is_bad_value() {
        return ApiError::BadRequest(super::admin::BAD_VALUE.into());
    }
    // The cause goes to the log; the caller retries (every operation is idempotent).
    tracing::error!(op, error = %e, "privacy operation failed");
    ApiError::Unavailable
}

fn tenant_known(state: &State, tenant: &str) -> Result<(), ApiError> {
    if state.admin.tenant_exists(tenant) {
        Ok(())
    } else {
        Err(ApiError::UnknownTenant(tenant.to_string()))
    }
}

/// A contact's erasure, the one every path takes (`DELETE .../contacts/{c}`, Meta's data
/// deletion callback): what persist keeps (PostgreSQL, the streams, routing state, push
/// delivery attempts) and the contact's events still waiting in push delivery queues.
async fn erase_everywhere(
    state: &State,
    pg: &Postgres,
    actor: &str,
    tenant: &str,
    contact: &str,
) -> Result<privacy::Erased, PersistError> {
    let mut erased = privacy::erase_contact(
        pg,
        &state.backend,
        state.engine.as_deref(),
        actor,
        tenant,
        contact,
    )
    .await?;
    if let Some(d) = &state.delivery {
        erased.delivery_queued = d.forget(tenant, &erased.conversation_ids).await?;
    }
    Ok(erased)
}

async fn erase(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let (tenant, contact) = path.into_inner();
    tenant_known(&state, &tenant)?;
    let erased = erase_everywhere(&state, pg, &who.actor(), &tenant, &contact)
        .await
        .map_err(|e| failed("erase", e))?;
    Ok(HttpResponse::Ok().json(json!({ "erased": erased })))
}

async fn export(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let (tenant, contact) = path.into_inner();
    tenant_known(&state, &tenant)?;
    let doc = privacy::export_contact(pg, &state.backend, &who.actor(), &tenant, &contact)
        .await
        .map_err(|e| failed("export", e))?;
    Ok(HttpResponse::Ok().json(doc))
}

/// The Meta source named in the path, with its app secrets and the tenants it serves.
fn meta_source(
    state: &State,
    source: &str,
) -> Result<(Vec<crate::crypto::Secret>, Vec<String>), ApiError> {
    let src = state
        .source(source)
        .ok_or_else(|| ApiError::UnknownSource(source.to_string()))?;
    let SourceKind::Meta { keys, .. } = &src.kind else {
        // Only Meta sends data deletion callbacks.
        return Err(ApiError::NotFound);
    };
    let mut tenants: Vec<String> = src.channels.values().cloned().collect();
    tenants.sort();
    tenants.dedup();
    Ok((keys.app_secrets.clone(), tenants))
}

async fn data_deletion(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let source = path.into_inner();
    let (secrets, tenants) = meta_source(&state, &source)?;
    if let Some(ip) = crate::http::client_ip(&state, &req) {
        if let Err(retry_after_secs) = state.limiters.check_ip(ip) {
            RateLimited { scope: "ip" }.emit();
            return Err(ApiError::RateLimited {
                scope: "ip",
                retry_after_secs,
            });
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > MAX_CALLBACK_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_CALLBACK_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let signed = crate::verify::form_pairs(&body)
        .into_iter()
        .find(|(k, _)| k == "signed_request")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let verified = signed_request::verify(&signed, &secrets, time::OffsetDateTime::now_utc())
        .map_err(|e| {
            SignatureFailed {
                provider: "meta",
                source: &source,
                reason: e.reason(),
            }
            .emit();
            ApiError::InvalidSignature
        })?;
    let pg = postgres(&state)?;
    let code = privacy::deletion_request(
        pg,
        &source,
        &tenants,
        &verified.user_id,
        async |actor: &str, tenant: &str, contact: &str| {
            erase_everywhere(&state, pg, actor, tenant, contact).await
        },
    )
    .await
    .map_err(|e| failed("data_deletion", e))?;
    let base = match &pg.settings().public_base_url {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => crate::http::request_origin(&state, &req),
    };
    Ok(HttpResponse::Ok().json(json!({
        "url": format!("{base}/webhooks/{source}/data-deletion/{code}"),
        "confirmation_code": code,
    })))
}

async fn data_deletion_status(
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (source, code) = path.into_inner();
    meta_source(&state, &source)?;
    let pg = postgres(&state)?;
    if code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::BadRequest(
            "a confirmation code is alphanumeric".into(),
        ));
    }
    match privacy::deletion_status(pg, &source, &code).await {
        Ok(Some(s)) => Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(s)),
        Ok(None) => Err(ApiError::NotFoundResource {
            code: "unknown_confirmation_code",
            message: "no data deletion request has this confirmation code".into(),
        }),
        Err(e) => Err(failed("data_deletion_status", e)),
    }
}
