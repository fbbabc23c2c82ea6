//! The audit log, read back: newest first, filtered by tenant and action, paged with
//! `before` (the `next_before` of the previous page). A tenant's key reads only its own
//! tenant's rows. The rows are written by every change (see [`super::change`]).

use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{postgres, query, read};
use crate::admin::store;
use crate::error::ApiError;
use crate::http::authorize;
use crate::http::State;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    tenant: Option<String>,
    action: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn read_log(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let q: AuditQuery = query(&req)?;
    let tenant = match (&who.tenant, q.tenant) {
        (Some(mine), Some(t)) if *mine != t => {
            return Err(ApiError::Forbidden(
                "this key is limited to another tenant".into(),
            ))
        }
        (Some(mine), _) => Some(mine.clone()),
        (None, t) => t,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = read(pg, async |c| {
        store::audit_rows(c, tenant.as_deref(), q.action.as_deref(), q.before, limit).await
    })
    .await?;
    let next_before = if rows.len() as i64 == limit {
        rows.last().and_then(|r| r["id"].as_i64())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_before": next_before })))
}
