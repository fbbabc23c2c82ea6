//! A tenant's sources through the API: list, create, read, update (settings, disabled) and
//! rotate their secrets. Secrets are checked with the same validation as the configuration
//! file's sources, then sealed with the master key before they reach PostgreSQL; no answer,
//! audit row or error message carries one. Sources of the configuration file are listed and
//! read here, but changed only in the file (409 `config_managed`).

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    already_exists, api_owned, change, config_managed, db, master, postgres, read, tenant_exists,
    Audit,
};
use crate::admin::{self as admin_mod, store};
use crate::config::TenantConfig;
use crate::error::ApiError;
use crate::http::State;
use crate::http::{authorize, json_body};

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

pub(super) async fn list(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let mut out = config_sources_of(&state, &tenant);
    if let Some(pg) = &state.persist {
        let rows = read(pg, async |c| store::sources_of(c, &tenant).await).await?;
        out.extend(rows.iter().map(store::SourceRow::public));
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

pub(super) async fn create(
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
    let row = change(&state, pg, &who, async |tx| {
        let id = &b.id;
        if !store::insert_source(
            tx,
            id,
            &tenant,
            &b.provider,
            &settings,
            &sealed,
            count,
            &who.actor(),
        )
        .await
        .map_err(db)?
        {
            return Err(already_exists("source", id));
        }
        let row = store::source(tx, id)
            .await
            .map_err(db)?
            .ok_or(ApiError::Internal)?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "source.create",
            target: format!("source:{id}"),
            before: None,
            after: Some(row.public()),
        };
        Ok((row, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Created().json(row.public()))
}

/// An API source of `tenant` (another tenant's is "unknown" too).
fn of_tenant(
    row: Option<store::SourceRow>,
    tenant: &str,
    id: &str,
) -> Result<store::SourceRow, ApiError> {
    row.filter(|r| r.tenant == tenant)
        .ok_or_else(|| ApiError::UnknownSource(id.to_string()))
}

/// An API source of `tenant`, read in a change (`lock`: for update).
async fn api_source(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<store::SourceRow, ApiError> {
    let row = if lock {
        store::source_for_update(tx, id).await
    } else {
        store::source(tx, id).await
    }
    .map_err(db)?;
    of_tenant(row, tenant, id)
}

pub(super) async fn get(
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
    let row = read(pg, async |c| store::source(c, &id).await).await?;
    let row = of_tenant(row, &tenant, &id)?;
    Ok(HttpResponse::Ok().json(row.public()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcePatch {
    settings: Option<Value>,
    disabled: Option<bool>,
}

pub(super) async fn update(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = path.into_inner();
    let (who, pg) = api_owned(&state, &req, "source", &state.admin.config_sources, &id)?;
    let b: SourcePatch = json_body(&req, &body)?;
    let keys = master(&state)?;
    let after = change(&state, pg, &who, async |tx| {
        let before = api_source(tx, &tenant, &id, true).await?;
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
                let secrets: Value =
                    serde_json::from_slice(&plain).map_err(|_| ApiError::Internal)?;
                check_source(&state, &id, &tenant, &before.provider, &new, &secrets)?.0
            }
            None => before.settings.clone(),
        };
        let disabled = b.disabled.unwrap_or(before.disabled);
        store::update_source_settings(tx, &id, &settings, disabled)
            .await
            .map_err(db)?;
        let after = api_source(tx, &tenant, &id, false).await?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "source.update",
            target: format!("source:{id}"),
            before: Some(before.public()),
            after: Some(after.public()),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Ok().json(after.public()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSecrets {
    secrets: Value,
}

/// What the audit log says of a source's secrets: that they are set, how many, when and
/// under which master key (never a value).
fn secret_view(r: &store::SourceRow) -> Value {
    json!({
        "secret_set": true, "secret_count": r.secret_count,
        "secret_rotated_at": r.secret_rotated_at, "secret_key_id": r.sealed.key_id,
    })
}

pub(super) async fn rotate_secret(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (tenant, id) = path.into_inner();
    let (who, pg) = api_owned(&state, &req, "source", &state.admin.config_sources, &id)?;
    let b: NewSecrets = json_body(&req, &body)
        .map_err(|_| ApiError::BadRequest("expected {\"secrets\": {...}}".into()))?;
    let keys = master(&state)?;
    let after = change(&state, pg, &who, async |tx| {
        let before = api_source(tx, &tenant, &id, true).await?;
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
        store::update_source_secret(tx, &id, &sealed, count, true)
            .await
            .map_err(db)?;
        let after = api_source(tx, &tenant, &id, false).await?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "source.rotate_secret",
            target: format!("source:{id}"),
            before: Some(secret_view(&before)),
            after: Some(secret_view(&after)),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    Ok(HttpResponse::Ok().json(after.public()))
}
