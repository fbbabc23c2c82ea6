//! API keys: create (the token is shown once, only its hash is stored), list and revoke.
//! A key manages only keys of a lower role and, when it is limited to a tenant, only that
//! tenant's keys; revoking a revoked key changes nothing.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{change, db, postgres, query, read, Audit};
use crate::admin::auth::{new_token, token_hash};
use crate::admin::{store, KeyRole, Principal};
use crate::error::ApiError;
use crate::http::State;
use crate::http::{authorize, json_body};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: Option<String>,
    role: String,
    tenant: Option<String>,
    agent: Option<String>,
    requests_per_sec: Option<u32>,
    burst: Option<u32>,
}

fn invalid_key(errors: Vec<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_key",
        errors,
    }
}

pub(super) async fn create(
    state: State,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let b: NewKey = json_body(&req, &body)?;
    let role = KeyRole::parse(&b.role).ok_or_else(|| {
        invalid_key(vec![format!(
            "role {:?}: use owner, admin, agent or viewer",
            b.role
        )])
    })?;
    if !who.role.manages(role) {
        return Err(ApiError::Forbidden(format!(
            "a key with role {} may not create {} keys",
            who.role.as_str(),
            role.as_str()
        )));
    }
    let tenant = match (&who.tenant, b.tenant) {
        (Some(mine), None) => Some(mine.clone()),
        (Some(mine), Some(t)) if *mine == t => Some(t),
        (Some(_), Some(_)) => {
            return Err(ApiError::Forbidden(
                "this key is limited to another tenant".into(),
            ))
        }
        (None, t) => t,
    };
    let mut errs = Vec::new();
    if let Some(t) = &tenant {
        if !state.admin.tenant_exists(t) {
            return Err(ApiError::UnknownTenant(t.clone()));
        }
    }
    if role == KeyRole::Agent && (tenant.is_none() || b.agent.is_none()) {
        errs.push("an agent key needs a tenant and the agent id it acts as".into());
    }
    if role != KeyRole::Agent && b.agent.is_some() {
        errs.push("agent: only keys with role agent act as an agent".into());
    }
    for (k, v) in [("requests_per_sec", b.requests_per_sec), ("burst", b.burst)] {
        if v.is_some_and(|v| v == 0 || v > 100_000) {
            errs.push(format!("{k}: use 1..=100000"));
        }
    }
    if b.name.as_ref().is_some_and(|n| n.len() > 200) {
        errs.push("name: at most 200 characters".into());
    }
    if !errs.is_empty() {
        return Err(invalid_key(errs));
    }
    let (token, prefix) = new_token();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let after = change(&state, pg, &who, async |tx| {
        let info = store::insert_key(
            tx,
            &id,
            &prefix,
            &token_hash(&token),
            b.name.as_deref(),
            role,
            tenant.as_deref(),
            b.agent.as_deref(),
            b.requests_per_sec,
            b.burst,
            &who.actor(),
        )
        .await
        .map_err(db)?;
        let after = serde_json::to_value(&info).map_err(|_| ApiError::Internal)?;
        let audit = Audit {
            tenant: tenant.clone(),
            action: "api_key.create",
            target: format!("api_key:{prefix}:{id}"),
            before: None,
            after: Some(after.clone()),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({ "key": after, "token": token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    #[serde(default)]
    include_revoked: bool,
}

fn key_visible(who: &Principal, k: &store::KeyInfo) -> bool {
    match &who.tenant {
        None => true,
        Some(t) => k.tenant.as_deref() == Some(t.as_str()),
    }
}

pub(super) async fn list(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let q: KeyQuery = query(&req)?;
    let keys: Vec<store::KeyInfo> = read(pg, async |c| store::keys(c).await)
        .await?
        .into_iter()
        .filter(|k| key_visible(&who, k) && (q.include_revoked || k.revoked_at.is_none()))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

pub(super) async fn revoke(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let id = path.into_inner();
    let unknown = || ApiError::NotFoundResource {
        code: "unknown_key",
        message: "no API key has this id in this key's scope".into(),
    };
    let key = change(&state, pg, &who, async |tx| {
        let before = store::key_for_update(tx, &id)
            .await
            .map_err(db)?
            .filter(|k| key_visible(&who, k))
            .ok_or_else(unknown)?;
        if !who.role.manages(before.role) {
            return Err(ApiError::Forbidden(format!(
                "a key with role {} may not revoke {} keys",
                who.role.as_str(),
                before.role.as_str()
            )));
        }
        if before.revoked_at.is_some() {
            // Already revoked: nothing to change, nothing to audit.
            return Ok((before, None));
        }
        store::revoke_key(tx, &id, &who.actor()).await.map_err(db)?;
        let after = store::key_for_update(tx, &id)
            .await
            .map_err(db)?
            .ok_or(ApiError::Internal)?;
        let audit = Audit {
            tenant: before.tenant.clone(),
            action: "api_key.revoke",
            target: format!("api_key:{}:{id}", before.prefix),
            before: serde_json::to_value(&before).ok(),
            after: serde_json::to_value(&after).ok(),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Ok().json(key))
}
