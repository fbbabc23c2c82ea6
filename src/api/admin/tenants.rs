//! Tenants through the API: list, create, read, update (name, disabled, retention) and
//! delete. Tenants of the configuration file are listed and read here too, but they are
//! changed only in the file (409 `config_managed`); a tenant with sources is not deleted.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{already_exists, api_owned, change, config_managed, db, postgres, read, Audit};
use crate::admin::{store, TenantRow};
use crate::config::valid_id;
use crate::error::ApiError;
use crate::http::State;
use crate::http::{authorize, json_body};

fn config_tenant_json(id: &str, t: Option<&str>) -> Value {
    json!({ "id": id, "name": t, "origin": "config", "disabled": false })
}

fn api_tenant_json(t: &TenantRow) -> Value {
    json!({
        "id": t.id, "name": t.name, "origin": "api", "disabled": t.disabled,
        "retention_days": t.retention_days,
        "created_by": t.created_by, "created_at": t.created_at, "updated_at": t.updated_at,
    })
}

pub(super) async fn list(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let mut out: Vec<Value> = state
        .admin
        .config_tenants
        .iter()
        .filter(|t| who.sees(t))
        .map(|t| config_tenant_json(t, None))
        .collect();
    if let Some(pg) = &state.persist {
        for t in read(pg, async |c| store::tenants(c).await).await? {
            if who.sees(&t.id) && !state.admin.config_tenants.contains(&t.id) {
                out.push(api_tenant_json(&t));
            }
        }
    }
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(HttpResponse::Ok().json(json!({ "tenants": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    name: Option<String>,
    retention_days: Option<u32>,
}

fn check_retention(days: Option<u32>) -> Result<(), ApiError> {
    match days {
        Some(d) if !(1..=36_500).contains(&d) => Err(ApiError::BadRequest(format!(
            "retention_days = {d}: use 1..=36500, or null to keep history until erased"
        ))),
        _ => Ok(()),
    }
}

/// A tenant of the API, read in `tx` (404 `unknown_tenant` when there is none).
async fn api_tenant(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &str,
) -> Result<TenantRow, ApiError> {
    store::tenant(tx, tenant)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::UnknownTenant(tenant.to_string()))
}

pub(super) async fn create(
    state: State,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let b: NewTenant = json_body(&req, &body)?;
    if !valid_id(&b.id) {
        return Err(ApiError::BadRequest(
            "tenant ids use a-z, 0-9, '_' and '-' (1-64 chars)".into(),
        ));
    }
    check_retention(b.retention_days)?;
    if state.admin.config_tenants.contains(&b.id) {
        return Err(config_managed("tenant", &b.id));
    }
    let after = change(&state, pg, &who, async |tx| {
        let (id, name) = (&b.id, b.name.as_deref());
        if !store::insert_tenant(tx, id, name, b.retention_days, &who.actor())
            .await
            .map_err(db)?
        {
            return Err(already_exists("tenant", id));
        }
        let row = store::tenant(tx, id)
            .await
            .map_err(db)?
            .ok_or(ApiError::Internal)?;
        let after = api_tenant_json(&row);
        let audit = Audit {
            tenant: Some(id.clone()),
            action: "tenant.create",
            target: format!("tenant:{id}"),
            before: None,
            after: Some(after.clone()),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Created().json(after))
}

pub(super) async fn get(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    if state.admin.config_tenants.contains(&tenant) {
        return Ok(HttpResponse::Ok().json(config_tenant_json(&tenant, None)));
    }
    if let Some(pg) = &state.persist {
        if let Some(t) = read(pg, async |c| store::tenant(c, &tenant).await).await? {
            return Ok(HttpResponse::Ok().json(api_tenant_json(&t)));
        }
    }
    Err(ApiError::UnknownTenant(tenant))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default, with = "double_option")]
    name: Option<Option<String>>,
    disabled: Option<bool>,
    #[serde(default, with = "double_option_days")]
    retention_days: Option<Option<u32>>,
}

mod double_option_days {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        Option::<u32>::deserialize(d).map(Some)
    }
}

/// `null` (clear) is not the same as absent (keep).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

pub(super) async fn update(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner();
    let (who, pg) = api_owned(&state, &req, "tenant", &state.admin.config_tenants, &tenant)?;
    let b: TenantPatch = json_body(&req, &body)?;
    let after = change(&state, pg, &who, async |tx| {
        let before = api_tenant(tx, &tenant).await?;
        let name = b.name.unwrap_or_else(|| before.name.clone());
        let disabled = b.disabled.unwrap_or(before.disabled);
        let retention_days = b.retention_days.unwrap_or(before.retention_days);
        check_retention(retention_days)?;
        store::update_tenant(tx, &tenant, name.as_deref(), disabled, retention_days)
            .await
            .map_err(db)?;
        let after = store::tenant(tx, &tenant)
            .await
            .map_err(db)?
            .ok_or(ApiError::Internal)?;
        let after = api_tenant_json(&after);
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "tenant.update",
            target: format!("tenant:{tenant}"),
            before: Some(api_tenant_json(&before)),
            after: Some(after.clone()),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Ok().json(after))
}

pub(super) async fn delete(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner();
    let (who, pg) = api_owned(&state, &req, "tenant", &state.admin.config_tenants, &tenant)?;
    change(&state, pg, &who, async |tx| {
        let before = api_tenant(tx, &tenant).await?;
        if store::tenant_source_count(tx, &tenant).await.map_err(db)? > 0 {
            return Err(ApiError::Conflict(
                "the tenant still has sources: disable it instead (PATCH disabled=true)".into(),
            ));
        }
        if !crate::admin::destinations::of_tenant(tx, &tenant)
            .await
            .map_err(db)?
            .is_empty()
        {
            return Err(ApiError::Conflict(
                "the tenant still has destinations: delete them first".into(),
            ));
        }
        store::delete_tenant(tx, &tenant).await.map_err(db)?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "tenant.delete",
            target: format!("tenant:{tenant}"),
            before: Some(api_tenant_json(&before)),
            after: None,
        };
        Ok(((), Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": tenant })))
}
