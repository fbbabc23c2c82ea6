//! The admin API: tenants, sources with their (encrypted) secrets, API keys, the audit log,
//! the history of routing rule sets, agents and teams as parts of the rule set, and the
//! master key rotation. Who may call what is in `crate::http::endpoints`.
//!
//! Every change is one Postgres transaction that writes the change, its `audit_log` row
//! (before/after, never a secret) and bumps `admin_changes`; then this replica reloads at
//! once and the others within `[api] reload_interval_ms`. Secrets only ever leave the
//! request as AES-256-GCM ciphertext: answers show `secret_set`, `secret_count`,
//! `secret_rotated_at`; error messages that could quote a value (serde's) are replaced.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::auth::{new_token, token_hash};
use crate::admin::{self as admin_mod, store, KeyRole, Principal};
use crate::config::routing::{AgentConfig, RoutingConfig, TeamConfig};
use crate::config::{valid_id, TenantConfig};
use crate::error::ApiError;
use crate::http::State;
use crate::http::{authorize, json_body};
use crate::persist::privacy::audit;
use crate::persist::{PersistError, Postgres};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tenants", web::get().to(list_tenants))
        .route("/v1/tenants", web::post().to(create_tenant))
        .route("/v1/tenants/{tenant}", web::get().to(get_tenant))
        .route("/v1/tenants/{tenant}", web::patch().to(update_tenant))
        .route("/v1/tenants/{tenant}", web::delete().to(delete_tenant))
        .route("/v1/tenants/{tenant}/sources", web::get().to(list_sources))
        .route(
            "/v1/tenants/{tenant}/sources",
            web::post().to(create_source),
        )
        .route(
            "/v1/tenants/{tenant}/sources/{source}",
            web::get().to(get_source),
        )
        .route(
            "/v1/tenants/{tenant}/sources/{source}",
            web::patch().to(update_source),
        )
        .route(
            "/v1/tenants/{tenant}/sources/{source}/rotate-secret",
            web::post().to(rotate_secret),
        )
        .route(
            "/v1/tenants/{tenant}/routing/versions",
            web::get().to(rule_versions),
        )
        .route(
            "/v1/tenants/{tenant}/routing/versions/{version}",
            web::get().to(rule_version),
        )
        .route(
            "/v1/tenants/{tenant}/routing/agents/{agent}",
            web::put().to(put_agent),
        )
        .route(
            "/v1/tenants/{tenant}/routing/agents/{agent}",
            web::delete().to(delete_agent),
        )
        .route(
            "/v1/tenants/{tenant}/routing/teams/{team}",
            web::put().to(put_team),
        )
        .route(
            "/v1/tenants/{tenant}/routing/teams/{team}",
            web::delete().to(delete_team),
        )
        .route("/v1/api-keys", web::get().to(list_keys))
        .route("/v1/api-keys", web::post().to(create_key))
        .route("/v1/api-keys/{key}", web::delete().to(revoke_key))
        .route("/v1/audit", web::get().to(read_audit))
        .route(
            "/v1/admin/rotate-master-key",
            web::post().to(rotate_master_key),
        );
}

// --- plumbing ---

pub(crate) fn postgres(state: &State) -> Result<&Postgres, ApiError> {
    state.persist.as_ref().ok_or(ApiError::NotFoundResource {
        code: "postgres_disabled",
        message: "the admin API stores its data in PostgreSQL: set [postgres] enabled = true"
            .into(),
    })
}

/// A database failure: the cause to the log, 503 to the caller (who may retry: a change
/// that failed was rolled back whole).
pub(crate) fn db(e: impl Into<PersistError>) -> ApiError {
    let e: PersistError = e.into();
    tracing::error!(error = %e, "admin operation failed in PostgreSQL");
    ApiError::Unavailable
}

/// After a commit: this replica sees the change at once.
pub(crate) async fn reload(state: &State, pg: &Postgres) {
    if let Err(e) = state.admin.reload(pg, false).await {
        tracing::warn!(error = %e, "admin reload after a change failed; the poller retries");
    }
    crate::state::sync_engine(state);
}

fn config_managed(what: &str, id: &str) -> ApiError {
    ApiError::ConflictCode {
        code: "config_managed",
        message: format!(
            "{what} {id:?} is defined in the configuration file, which wins: change it there"
        ),
    }
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
}

// --- tenants ---

fn config_tenant_json(id: &str, t: Option<&str>) -> Value {
    json!({ "id": id, "name": t, "origin": "config", "disabled": false })
}

fn api_tenant_json(t: &admin_mod::TenantRow) -> Value {
    json!({
        "id": t.id, "name": t.name, "origin": "api", "disabled": t.disabled,
        "retention_days": t.retention_days,
        "created_by": t.created_by, "created_at": t.created_at, "updated_at": t.updated_at,
    })
}

async fn list_tenants(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let mut out: Vec<Value> = state
        .admin
        .config_tenants
        .iter()
        .filter(|t| who.sees(t))
        .map(|t| config_tenant_json(t, None))
        .collect();
    if let Some(pg) = &state.persist {
        let client = pg.client().await.map_err(db)?;
        for t in store::tenants(&**client).await.map_err(db)? {
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

async fn create_tenant(
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
    let actor = who.actor();
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    if !store::insert_tenant(&*tx, &b.id, b.name.as_deref(), b.retention_days, &actor)
        .await
        .map_err(db)?
    {
        return Err(ApiError::ConflictCode {
            code: "already_exists",
            message: format!("tenant {:?} exists", b.id),
        });
    }
    let row = store::tenant(&*tx, &b.id)
        .await
        .map_err(db)?
        .ok_or(ApiError::Internal)?;
    let after = api_tenant_json(&row);
    audit(
        &*tx,
        &actor,
        Some(&b.id),
        "tenant.create",
        &format!("tenant:{}", b.id),
        None,
        Some(after.clone()),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Created().json(after))
}

async fn get_tenant(
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
        let client = pg.client().await.map_err(db)?;
        if let Some(t) = store::tenant(&**client, &tenant).await.map_err(db)? {
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

async fn update_tenant(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let tenant = path.into_inner();
    if state.admin.config_tenants.contains(&tenant) {
        return Err(config_managed("tenant", &tenant));
    }
    let pg = postgres(&state)?;
    let b: TenantPatch = json_body(&req, &body)?;
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let before = store::tenant(&*tx, &tenant)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::UnknownTenant(tenant.clone()))?;
    let name = b.name.unwrap_or_else(|| before.name.clone());
    let disabled = b.disabled.unwrap_or(before.disabled);
    let retention_days = b.retention_days.unwrap_or(before.retention_days);
    check_retention(retention_days)?;
    store::update_tenant(&*tx, &tenant, name.as_deref(), disabled, retention_days)
        .await
        .map_err(db)?;
    let after = store::tenant(&*tx, &tenant)
        .await
        .map_err(db)?
        .ok_or(ApiError::Internal)?;
    let after = api_tenant_json(&after);
    audit(
        &*tx,
        &who.actor(),
        Some(&tenant),
        "tenant.update",
        &format!("tenant:{tenant}"),
        Some(api_tenant_json(&before)),
        Some(after.clone()),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(after))
}

async fn delete_tenant(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let tenant = path.into_inner();
    if state.admin.config_tenants.contains(&tenant) {
        return Err(config_managed("tenant", &tenant));
    }
    let pg = postgres(&state)?;
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let before = store::tenant(&*tx, &tenant)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::UnknownTenant(tenant.clone()))?;
    if store::tenant_source_count(&*tx, &tenant)
        .await
        .map_err(db)?
        > 0
    {
        return Err(ApiError::Conflict(
            "the tenant still has sources: disable it instead (PATCH disabled=true)".into(),
        ));
    }
    store::delete_tenant(&*tx, &tenant).await.map_err(db)?;
    audit(
        &*tx,
        &who.actor(),
        Some(&tenant),
        "tenant.delete",
        &format!("tenant:{tenant}"),
        Some(api_tenant_json(&before)),
        None,
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(json!({ "deleted": tenant })))
}

// --- sources ---

/// Keys of a source that are not secret and are stored in clear (`settings`). Every other
/// key goes in `secrets`, encrypted.
pub const SETTINGS_KEYS: &[&str] = &[
    "tenant",
    "channels",
    "include_raw",
    "public_base_url",
    "replay_window_secs",
    "allow_sha1",
    "api_key",
    "sms_signature_method",
    "allow_unsigned_sms",
    "allow_legacy_signature",
    "public_keys",
];

const PROVIDERS: &[&str] = &[
    "meta",
    "twilio",
    "vonage",
    "messagebird",
    "bird",
    "telnyx",
    "plivo",
    "sinch",
    "telegram",
    "standard",
];

/// Every string inside a JSON value (the secrets, to scrub messages and count them).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// A message about a source, unless it quotes a secret (then a generic one).
fn scrub(msg: String, secrets: &[String], generic: &str) -> String {
    if secrets
        .iter()
        .any(|s| !s.is_empty() && msg.contains(s.as_str()))
    {
        generic.to_string()
    } else {
        msg
    }
}

fn invalid_source(errors: Vec<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_source",
        errors,
    }
}

/// Checks a source as it would be stored: settings keys, tenant, provider schema and the
/// same validation as the configuration file's sources. Returns the settings to store (the
/// tenant filled in) and the number of secret values.
fn check_source(
    state: &State,
    id: &str,
    tenant: &str,
    provider: &str,
    settings: &Value,
    secrets: &Value,
) -> Result<(Value, i32), ApiError> {
    let mut errs = Vec::new();
    if !PROVIDERS.contains(&provider) {
        errs.push(format!(
            "provider {provider:?}: use one of {}",
            PROVIDERS.join(", ")
        ));
        return Err(invalid_source(errs));
    }
    let (Some(set), Some(sec)) = (settings.as_object(), secrets.as_object()) else {
        return Err(invalid_source(vec![
            "settings and secrets must be JSON objects".into(),
        ]));
    };
    let mut set = set.clone();
    for k in set.keys() {
        if !SETTINGS_KEYS.contains(&k.as_str()) {
            errs.push(format!(
                "settings.{k}: not a setting (secrets go under \"secrets\", where they are encrypted)"
            ));
        }
    }
    for k in sec.keys() {
        if SETTINGS_KEYS.contains(&k.as_str()) {
            errs.push(format!(
                "secrets.{k}: not a secret; put it under \"settings\""
            ));
        }
    }
    if sec.is_empty() {
        errs.push("secrets: give the provider's secrets (see docs/providers.md)".into());
    }
    // A source belongs to one tenant: every channel maps to it.
    if provider == "meta" {
        if set.contains_key("tenant") {
            errs.push("settings.tenant: Meta sources take their tenant from channels".into());
        }
    } else {
        match set.get("tenant") {
            None => {
                set.insert("tenant".into(), Value::String(tenant.to_string()));
            }
            Some(Value::String(t)) if t == tenant => {}
            Some(_) => errs.push(format!(
                "settings.tenant: must be {tenant:?} (the tenant of the path)"
            )),
        }
    }
    if let Some(ch) = set.get("channels").and_then(Value::as_object) {
        for (business, t) in ch {
            if t.as_str() != Some(tenant) {
                errs.push(format!(
                    "settings.channels.{business}: must map to {tenant:?} (the tenant of the path)"
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(invalid_source(errs));
    }
    let settings = Value::Object(set);
    let mut secret_values = Vec::new();
    strings(secrets, &mut secret_values);
    let generic = "the source does not have the shape its provider expects (see docs/providers.md); the detail is withheld because it would quote a secret";
    let cfg = admin_mod::merge_source(provider, &settings, secrets)
        .map_err(|e| invalid_source(vec![scrub(e.to_string(), &secret_values, generic)]))?;
    let tenants: BTreeMap<String, TenantConfig> =
        [(tenant.to_string(), TenantConfig::default())].into();
    crate::config::validate_source(id, &cfg, &tenants, state.admin.max_body_bytes, &mut errs);
    if !errs.is_empty() {
        return Err(invalid_source(
            errs.into_iter()
                .map(|m| scrub(m, &secret_values, generic))
                .collect(),
        ));
    }
    Ok((settings, secret_values.len() as i32))
}

fn master(state: &State) -> Result<&crate::crypto::MasterKeys, ApiError> {
    state
        .admin
        .master
        .as_ref()
        .ok_or_else(|| ApiError::ConflictCode {
            code: "master_key_missing",
            message: format!(
                "no master key is configured: set {} or api.master_key_file to store source secrets",
                crate::crypto::ENV_VAR
            ),
        })
}

fn tenant_exists(state: &State, tenant: &str) -> Result<(), ApiError> {
    if state.admin.tenant_exists(tenant) {
        Ok(())
    } else {
        Err(ApiError::UnknownTenant(tenant.to_string()))
    }
}

/// The configuration's sources serving `tenant`, as listed (never their secrets).
fn config_sources_of(state: &State, tenant: &str) -> Vec<Value> {
    let mut v: Vec<Value> = state
        .sources
        .values()
        .filter(|s| {
            s.default_tenant.as_deref() == Some(tenant) || s.channels.values().any(|t| t == tenant)
        })
        .map(|s| {
            json!({
                "id": s.id, "provider": s.provider.as_str(), "origin": "config",
                "secret_set": true, "disabled": false,
            })
        })
        .collect();
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    v
}

async fn list_sources(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let mut out = config_sources_of(&state, &tenant);
    if let Some(pg) = &state.persist {
        let client = pg.client().await.map_err(db)?;
        out.extend(
            store::sources_of(&**client, &tenant)
                .await
                .map_err(db)?
                .iter()
                .map(store::SourceRow::public),
        );
    }
    Ok(HttpResponse::Ok().json(json!({ "sources": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSource {
    id: String,
    provider: String,
    #[serde(default = "empty_object")]
    settings: Value,
    secrets: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

async fn create_source(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let tenant = path.into_inner();
    let pg = postgres(&state)?;
    tenant_exists(&state, &tenant)?;
    let b: NewSource = json_body(&req, &body).map_err(|_| {
        // serde's message could quote a secret: say only what is expected.
        ApiError::BadRequest(
            "expected {\"id\", \"provider\", \"settings\": {...}, \"secrets\": {...}}".into(),
        )
    })?;
    if state.admin.config_sources.contains(&b.id) {
        return Err(config_managed("source", &b.id));
    }
    let keys = master(&state)?;
    let (settings, count) =
        check_source(&state, &b.id, &tenant, &b.provider, &b.settings, &b.secrets)?;
    let plain = serde_json::to_vec(&b.secrets).map_err(|_| ApiError::Internal)?;
    let sealed = keys.seal(&plain, &store::source_aad(&b.id));
    let actor = who.actor();
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    if !store::insert_source(
        &*tx,
        &b.id,
        &tenant,
        &b.provider,
        &settings,
        &sealed,
        count,
        &actor,
    )
    .await
    .map_err(db)?
    {
        return Err(ApiError::ConflictCode {
            code: "already_exists",
            message: format!("source {:?} exists", b.id),
        });
    }
    let row = store::source(&*tx, &b.id)
        .await
        .map_err(db)?
        .ok_or(ApiError::Internal)?;
    audit(
        &*tx,
        &actor,
        Some(&tenant),
        "source.create",
        &format!("source:{}", b.id),
        None,
        Some(row.public()),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Created().json(row.public()))
}

/// An API source of `tenant` (another tenant's is "unknown" too).
async fn api_source(
    c: &impl tokio_postgres::GenericClient,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<store::SourceRow, ApiError> {
    let row = if lock {
        store::source_for_update(c, id).await
    } else {
        store::source(c, id).await
    }
    .map_err(db)?;
    row.filter(|r| r.tenant == tenant)
        .ok_or_else(|| ApiError::UnknownSource(id.to_string()))
}

async fn get_source(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    if let Some(s) = config_sources_of(&state, &tenant)
        .into_iter()
        .find(|s| s["id"] == id.as_str())
    {
        return Ok(HttpResponse::Ok().json(s));
    }
    let pg = postgres(&state)?;
    let client = pg.client().await.map_err(db)?;
    let row = api_source(&**client, &tenant, &id, false).await?;
    Ok(HttpResponse::Ok().json(row.public()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcePatch {
    settings: Option<Value>,
    disabled: Option<bool>,
}

async fn update_source(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    if state.admin.config_sources.contains(&id) {
        return Err(config_managed("source", &id));
    }
    let pg = postgres(&state)?;
    let b: SourcePatch = json_body(&req, &body)?;
    let keys = master(&state)?;
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let before = api_source(&*tx, &tenant, &id, true).await?;
    let settings = match b.settings {
        Some(new) => {
            let plain = keys
                .open(&before.sealed, &store::source_aad(&id))
                .map_err(|e| {
                    tracing::error!(source = %id, error = %e, "source secrets do not decrypt");
                    ApiError::ConflictCode {
                        code: "master_key_unknown",
                        message: format!("this source's secrets do not decrypt: {e}"),
                    }
                })?;
            let secrets: Value = serde_json::from_slice(&plain).map_err(|_| ApiError::Internal)?;
            check_source(&state, &id, &tenant, &before.provider, &new, &secrets)?.0
        }
        None => before.settings.clone(),
    };
    let disabled = b.disabled.unwrap_or(before.disabled);
    store::update_source_settings(&*tx, &id, &settings, disabled)
        .await
        .map_err(db)?;
    let after = api_source(&*tx, &tenant, &id, false).await?;
    audit(
        &*tx,
        &who.actor(),
        Some(&tenant),
        "source.update",
        &format!("source:{id}"),
        Some(before.public()),
        Some(after.public()),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(after.public()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSecrets {
    secrets: Value,
}

async fn rotate_secret(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    if state.admin.config_sources.contains(&id) {
        return Err(config_managed("source", &id));
    }
    let pg = postgres(&state)?;
    let b: NewSecrets = json_body(&req, &body)
        .map_err(|_| ApiError::BadRequest("expected {\"secrets\": {...}}".into()))?;
    let keys = master(&state)?;
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let before = api_source(&*tx, &tenant, &id, true).await?;
    let (_, count) = check_source(
        &state,
        &id,
        &tenant,
        &before.provider,
        &before.settings,
        &b.secrets,
    )?;
    let plain = serde_json::to_vec(&b.secrets).map_err(|_| ApiError::Internal)?;
    let sealed = keys.seal(&plain, &store::source_aad(&id));
    store::update_source_secret(&*tx, &id, &sealed, count, true)
        .await
        .map_err(db)?;
    let after = api_source(&*tx, &tenant, &id, false).await?;
    let secret_view = |r: &store::SourceRow| {
        json!({
            "secret_set": true, "secret_count": r.secret_count,
            "secret_rotated_at": r.secret_rotated_at, "secret_key_id": r.sealed.key_id,
        })
    };
    audit(
        &*tx,
        &who.actor(),
        Some(&tenant),
        "source.rotate_secret",
        &format!("source:{id}"),
        Some(secret_view(&before)),
        Some(secret_view(&after)),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(after.public()))
}

async fn rotate_master_key(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let keys = master(&state)?;
    let report = reencrypt_all(pg, keys, &who.actor()).await?;
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(report))
}

/// Re-encrypts every source secret not under the first master key (one transaction, with
/// its audit row). Refuses (409 `master_key_unknown`, nothing changed) when a row was
/// encrypted under a key that is no longer configured.
pub async fn reencrypt_all(
    pg: &Postgres,
    keys: &crate::crypto::MasterKeys,
    actor: &str,
) -> Result<Value, ApiError> {
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let rows = store::all_sources(&*tx).await.map_err(db)?;
    let current = keys.current_id().to_string();
    let mut moved = Vec::new();
    let mut from: BTreeMap<String, u64> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for r in &rows {
        if r.sealed.key_id == current {
            continue;
        }
        match keys.open(&r.sealed, &store::source_aad(&r.id)) {
            Ok(plain) => {
                let sealed = keys.seal(&plain, &store::source_aad(&r.id));
                store::update_source_secret(&*tx, &r.id, &sealed, r.secret_count, false)
                    .await
                    .map_err(db)?;
                *from.entry(r.sealed.key_id.clone()).or_default() += 1;
                moved.push(r.id.clone());
            }
            Err(_) => unreadable.push(r.id.clone()),
        }
    }
    if !unreadable.is_empty() {
        return Err(ApiError::ConflictCode {
            code: "master_key_unknown",
            message: format!(
                "sources {} are encrypted under a key that is not configured; nothing was changed",
                unreadable.join(", ")
            ),
        });
    }
    let report = json!({
        "key_id": current, "reencrypted": moved.len(), "from": from, "sources": moved,
    });
    audit(
        &*tx,
        actor,
        None,
        "master_key.rotate",
        &format!("master_key:{current}"),
        None,
        Some(report.clone()),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(report)
}

// --- API keys ---

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

async fn create_key(
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
    let actor = who.actor();
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let info = store::insert_key(
        &*tx,
        &id,
        &prefix,
        &token_hash(&token),
        b.name.as_deref(),
        role,
        tenant.as_deref(),
        b.agent.as_deref(),
        b.requests_per_sec,
        b.burst,
        &actor,
    )
    .await
    .map_err(db)?;
    let after = serde_json::to_value(&info).map_err(|_| ApiError::Internal)?;
    audit(
        &*tx,
        &actor,
        tenant.as_deref(),
        "api_key.create",
        &format!("api_key:{prefix}:{id}"),
        None,
        Some(after.clone()),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
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

async fn list_keys(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let q: KeyQuery = query(&req)?;
    let client = pg.client().await.map_err(db)?;
    let keys: Vec<store::KeyInfo> = store::keys(&**client)
        .await
        .map_err(db)?
        .into_iter()
        .filter(|k| key_visible(&who, k) && (q.include_revoked || k.revoked_at.is_none()))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "keys": keys })))
}

async fn revoke_key(
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
    let mut client = pg.client().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let before = store::key_for_update(&*tx, &id)
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
        return Ok(HttpResponse::Ok().json(before));
    }
    store::revoke_key(&*tx, &id, &who.actor())
        .await
        .map_err(db)?;
    let after = store::key_for_update(&*tx, &id)
        .await
        .map_err(db)?
        .ok_or(ApiError::Internal)?;
    audit(
        &*tx,
        &who.actor(),
        before.tenant.as_deref(),
        "api_key.revoke",
        &format!("api_key:{}:{id}", before.prefix),
        serde_json::to_value(&before).ok(),
        serde_json::to_value(&after).ok(),
    )
    .await
    .map_err(db)?;
    store::bump(&*tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(after))
}

// --- audit log ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    tenant: Option<String>,
    action: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn read_audit(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
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
    let client = pg.client().await.map_err(db)?;
    let rows = store::audit_rows(
        &**client,
        tenant.as_deref(),
        q.action.as_deref(),
        q.before,
        limit,
    )
    .await
    .map_err(db)?;
    let next_before = if rows.len() as i64 == limit {
        rows.last().and_then(|r| r["id"].as_i64())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_before": next_before })))
}

// --- routing: history, agents and teams ---

async fn rule_versions(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let pg = postgres(&state)?;
    let client = pg.client().await.map_err(db)?;
    let versions = store::rulesets(&**client, &tenant).await.map_err(db)?;
    let current = state
        .engine
        .as_ref()
        .and_then(|e| e.ruleset(&tenant))
        .map(|r| r.version);
    Ok(HttpResponse::Ok().json(json!({
        "tenant": tenant, "current": current, "versions": versions,
    })))
}

async fn rule_version(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, version) = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError::BadRequest("a version is a positive integer".into()))?;
    let pg = postgres(&state)?;
    let client = pg.client().await.map_err(db)?;
    store::ruleset(&**client, &tenant, version)
        .await
        .map_err(db)?
        .map(|v| HttpResponse::Ok().json(v))
        .ok_or(ApiError::NotFoundResource {
            code: "unknown_version",
            message: format!("tenant {tenant:?} has no rule set version {version} in the history"),
        })
}

/// Records a rule set version set through the API: its body in the history and its
/// audit row (best effort: the rule set is already in force on every replica, so a
/// Postgres failure here is logged rather than undoing it).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_ruleset(
    state: &State,
    who: &Principal,
    tenant: &str,
    action: &str,
    target: &str,
    previous: Option<u64>,
    version: u64,
    cfg: &RoutingConfig,
) {
    let Some(pg) = &state.persist else { return };
    let result: Result<(), PersistError> = async {
        let body = serde_json::to_value(cfg).unwrap_or(Value::Null);
        let mut client = pg.client().await?;
        let tx = client.transaction().await?;
        store::insert_ruleset(&*tx, tenant, version as i64, &body, &who.actor()).await?;
        audit(
            &*tx,
            &who.actor(),
            Some(tenant),
            action,
            target,
            previous.map(|v| json!({ "version": v })),
            Some(json!({
                "version": version,
                "agents": cfg.agents.len(), "teams": cfg.teams.len(), "rules": cfg.rules.len(),
            })),
        )
        .await?;
        store::bump(&*tx).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(tenant, version, error = %e, "rule set in force, but its history and audit row were not written");
    }
}

/// Changes one part of a tenant's rule set as a new version (optimistic: 409 when it
/// changed meanwhile).
async fn edit_rules(
    state: &State,
    who: &Principal,
    tenant: &str,
    action: &str,
    target: &str,
    edit: impl FnOnce(&mut RoutingConfig) -> Result<(), ApiError>,
) -> Result<HttpResponse, ApiError> {
    let engine = state
        .engine
        .as_deref()
        .ok_or_else(|| ApiError::RoutingNotConfigured(tenant.to_string()))?;
    if !engine.has_tenant(tenant) {
        return Err(ApiError::UnknownTenant(tenant.to_string()));
    }
    let (mut cfg, current) = match engine.ruleset(tenant) {
        Some(rs) => (rs.config.clone(), rs.version),
        None => (RoutingConfig::default(), 0),
    };
    edit(&mut cfg)?;
    let version = engine
        .put_ruleset(tenant, cfg.clone(), Some(current))
        .await
        .map_err(super::routing::ruleset_error)?;
    record_ruleset(
        state,
        who,
        tenant,
        action,
        target,
        Some(current),
        version,
        &cfg,
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({ "tenant": tenant, "version": version })))
}

async fn put_agent(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, agent) = path.into_inner();
    let a: AgentConfig = json_body(&req, &body)?;
    let target = format!("agent:{agent}");
    edit_rules(&state, &who, &tenant, "routing.agent.put", &target, |cfg| {
        cfg.agents.insert(agent.clone(), a);
        Ok(())
    })
    .await
}

async fn delete_agent(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, agent) = path.into_inner();
    let target = format!("agent:{agent}");
    edit_rules(
        &state,
        &who,
        &tenant,
        "routing.agent.delete",
        &target,
        |cfg| {
            cfg.agents
                .remove(&agent)
                .map(|_| ())
                .ok_or_else(|| ApiError::NotFoundResource {
                    code: "unknown_agent",
                    message: format!("no agent {agent:?} in this tenant's routing"),
                })
        },
    )
    .await
}

async fn put_team(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, team) = path.into_inner();
    let t: TeamConfig = json_body(&req, &body)?;
    let target = format!("team:{team}");
    edit_rules(&state, &who, &tenant, "routing.team.put", &target, |cfg| {
        cfg.teams.insert(team.clone(), t);
        Ok(())
    })
    .await
}

async fn delete_team(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, team) = path.into_inner();
    let target = format!("team:{team}");
    edit_rules(
        &state,
        &who,
        &tenant,
        "routing.team.delete",
        &target,
        |cfg| {
            cfg.teams
                .remove(&team)
                .map(|_| ())
                .ok_or_else(|| ApiError::NotFoundResource {
                    code: "unknown_team",
                    message: format!("no team {team:?} in this tenant's routing"),
                })
        },
    )
    .await
}
