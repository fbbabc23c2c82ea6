//! A tenant's push destinations (docs/delivery.md): list, create, read, replace, delete, the
//! record of their attempts and redelivery. A destination's `whsec_` secret is generated
//! when not given, shown once in the answer that set it, and otherwise only ever stored
//! sealed with the master key; no listing, audit row or error message carries it.
//! Destinations of the configuration file are listed and read here, changed only in the
//! file (409 `config_managed`), except that they can be enabled and disabled.
//!
//! A URL is refused (422 `destination_refused`) when it names or resolves to a loopback,
//! private, link-local or metadata address, unless `delivery.allow_private_networks`.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    already_exists, change, config_managed, db, master, postgres, query, read, tenant_exists, Audit,
};
use crate::admin::destinations::{self as store, destination_aad, DestinationRow};
use crate::config::delivery::{
    check_settings, default_max_in_flight, default_timeout_ms, parse_url, refused_addrs,
    refused_ip, DestinationConfig,
};
use crate::crypto::Secret;
use crate::delivery::{Delivery, DeliveryError, DestKey, Destination, Redeliver};
use crate::error::ApiError;
use crate::event::EventKind;
use crate::http::{authorize, json_body, State};

fn delivery(state: &State) -> Result<&std::sync::Arc<Delivery>, ApiError> {
    state
        .delivery
        .as_ref()
        .ok_or_else(|| ApiError::ConflictCode {
            code: "delivery_disabled",
            message: "push delivery is not running: set delivery.enabled = true (and, for destinations created through the API, [postgres] enabled)".into(),
        })
}

fn unknown(id: &str) -> ApiError {
    ApiError::NotFoundResource {
        code: "unknown_destination",
        message: format!("no destination named {id:?} in this tenant"),
    }
}

fn invalid(errors: Vec<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_destination",
        errors,
    }
}

fn key(tenant: &str, id: &str) -> DestKey {
    DestKey {
        tenant: tenant.to_string(),
        id: id.to_string(),
    }
}

/// The settings a destination is created or replaced with (the secret apart).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    id: Option<String>,
    url: String,
    #[serde(default)]
    kinds: Vec<EventKind>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: u32,
    #[serde(default)]
    requests_per_sec: Option<u32>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

const BODY_SHAPE: &str = "expected {\"url\", \"kinds\"?: [\"message\", ...], \"secret\"?: \"whsec_...\", \"timeout_ms\"?, \"max_in_flight\"?, \"requests_per_sec\"?, \"enabled\"?} (and \"id\" to create)";

/// A new `whsec_` secret: 32 random bytes.
fn generate_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD
            .encode(crate::crypto::sealed::random_bytes::<32>())
    )
}

/// Checks a body as it would be stored: the numbers, the secret's form and the URL, whose
/// name is resolved now. Returns the destination to store and its secret.
async fn check(
    d: &Delivery,
    label: &str,
    b: &Body,
) -> Result<(DestinationConfig, String), ApiError> {
    let secret = b.secret.clone().unwrap_or_else(generate_secret);
    let cfg = DestinationConfig {
        url: b.url.clone(),
        kinds: b.kinds.clone(),
        secret: Secret::new(secret.clone()),
        timeout_ms: b.timeout_ms,
        max_in_flight: b.max_in_flight,
        requests_per_sec: b.requests_per_sec,
        enabled: b.enabled,
    };
    let mut errs = Vec::new();
    check_settings(label, &cfg, &mut errs);
    if !secret.starts_with("whsec_") || crate::config::standard::decode_secret(&secret).is_err() {
        // Never quote it.
        errs.push(format!(
            "{label}.secret: use whsec_ followed by base64 of 24-64 random bytes (or leave it out to have one generated)"
        ));
    }
    let target = match parse_url(&b.url) {
        Ok(t) => t,
        Err(e) => {
            errs.push(format!("{label}.url {e}"));
            return Err(invalid(errs));
        }
    };
    if !errs.is_empty() {
        return Err(invalid(errs));
    }
    if !d.settings().allow_private_networks {
        let refused = match target.ip {
            Some(ip) => refused_ip(ip).map(|why| format!("{ip} is {why}")),
            None => {
                let host = target.host.trim_end_matches('.').to_ascii_lowercase();
                if host == "localhost" || host.ends_with(".localhost") {
                    Some(format!("{host} is loopback"))
                } else {
                    let addrs = match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        tokio::net::lookup_host((host.as_str(), target.port)),
                    )
                    .await
                    {
                        Ok(Ok(a)) => a.map(|a| a.ip()).collect::<Vec<_>>(),
                        _ => {
                            return Err(invalid(vec![format!(
                                "{label}.url: {host} does not resolve"
                            )]))
                        }
                    };
                    refused_addrs(&host, addrs)
                }
            }
        };
        if let Some(why) = refused {
            return Err(ApiError::Unprocessable {
                code: "destination_refused",
                errors: vec![format!(
                    "{label}.url: {why}: destinations may not reach private networks (delivery.allow_private_networks)"
                )],
            });
        }
    }
    Ok((cfg, secret))
}

fn settings_of<'a>(b: &'a Body) -> store::Settings<'a> {
    store::Settings {
        url: &b.url,
        kinds: b.kinds.iter().map(|k| k.as_str().to_string()).collect(),
        timeout_ms: b.timeout_ms as i32,
        max_in_flight: b.max_in_flight as i32,
        requests_per_sec: b.requests_per_sec.map(|r| r as i32),
        enabled: b.enabled,
    }
}

/// A file destination as listed.
fn file_view(d: &Destination) -> Value {
    let c = &d.config;
    json!({
        "id": d.key.id, "tenant": d.key.tenant, "origin": "config", "url": c.url,
        "kinds": c.kinds, "timeout_ms": c.timeout_ms, "max_in_flight": c.max_in_flight,
        "requests_per_sec": c.requests_per_sec, "enabled": c.enabled,
        "disabled_reason": null, "secret_set": true,
    })
}

/// A view with the delivery state over it: a destination the gateway (or an operator, for
/// a file one) disabled shows `enabled: false` and why.
async fn with_health(d: &Delivery, mut v: Value, key: &DestKey) -> Value {
    if let Ok(h) = d.health(key).await {
        if let Some(reason) = h.disabled {
            v["enabled"] = Value::Bool(false);
            v["disabled_reason"] = Value::String(reason);
        }
        if let Some(f) = h.failing_since_ms {
            v["failing_since"] = Value::String(ms_text(f));
        }
    }
    v
}

use crate::event::ms_rfc3339 as ms_text;

pub(super) async fn list(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let d = delivery(&state)?;
    let mut out = Vec::new();
    for f in d.file_destinations(&tenant) {
        out.push(with_health(d, file_view(&f), &f.key).await);
    }
    if let Some(pg) = &state.persist {
        let rows = read(pg, async |c| store::of_tenant(c, &tenant).await).await?;
        for r in rows {
            out.push(with_health(d, r.public(), &key(&tenant, &r.id)).await);
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "destinations": out })))
}

pub(super) async fn create(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let tenant = path.into_inner();
    let d = delivery(&state)?;
    let pg = postgres(&state)?;
    tenant_exists(&state, &tenant)?;
    // serde's message could quote the secret: say only what is expected.
    let b: Body = json_body(&req, &body).map_err(|_| ApiError::BadRequest(BODY_SHAPE.into()))?;
    let Some(id) = b.id.clone() else {
        return Err(ApiError::BadRequest(BODY_SHAPE.into()));
    };
    if !crate::config::valid_id(&id) {
        return Err(invalid(vec![
            "id: use a-z, 0-9, '_' and '-' (1-64 chars)".into()
        ]));
    }
    if d.in_file(&tenant, &id) {
        return Err(config_managed("destination", &id));
    }
    let keys = master(&state)?;
    let (_, secret) = check(d, "destination", &b).await?;
    let sealed = keys.seal(secret.as_bytes(), &destination_aad(&tenant, &id));
    let settings = settings_of(&b);
    let row = change(&state, pg, &who, async |tx| {
        if !store::insert(tx, &tenant, &id, &settings, &sealed, &who.actor())
            .await
            .map_err(db)?
        {
            return Err(already_exists("destination", &id));
        }
        let row = store::get(tx, &tenant, &id, false)
            .await
            .map_err(db)?
            .ok_or(ApiError::Internal)?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "destination.create",
            target: format!("destination:{id}"),
            before: None,
            after: Some(row.public()),
        };
        Ok((row, Some(audit)))
    })
    .await?;
    // A destination of the same id deleted earlier left nothing behind (purged); its
    // state starts clean.
    let k = key(&tenant, &id);
    let _ = d.set_enabled(&k, b.enabled).await;
    let mut v = row.public();
    // Shown once: from now on only its ciphertext exists.
    v["secret"] = Value::String(secret);
    Ok(HttpResponse::Created().json(v))
}

async fn api_row(state: &State, tenant: &str, id: &str) -> Result<DestinationRow, ApiError> {
    let pg = state.persist.as_ref().ok_or_else(|| unknown(id))?;
    read(pg, async |c| store::get(c, tenant, id, false).await)
        .await?
        .ok_or_else(|| unknown(id))
}

pub(super) async fn get(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let d = delivery(&state)?;
    let k = key(&tenant, &id);
    let view = if d.in_file(&tenant, &id) {
        let f = d.destination(&tenant, &id).ok_or_else(|| unknown(&id))?;
        file_view(&f)
    } else {
        api_row(&state, &tenant, &id).await?.public()
    };
    let mut v = with_health(d, view, &k).await;
    if let Ok((queued, oldest)) = d.backlog(&k).await {
        v["queued"] = json!(queued);
        v["oldest_queued_at"] = json!(oldest.map(ms_text));
    }
    Ok(HttpResponse::Ok().json(v))
}

pub(super) async fn update(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let d = delivery(&state)?;
    let k = key(&tenant, &id);
    if d.in_file(&tenant, &id) {
        return enable_file(&state, d, &who, &req, &body, &tenant, &id).await;
    }
    let pg = postgres(&state)?;
    let b: Body = json_body(&req, &body).map_err(|_| ApiError::BadRequest(BODY_SHAPE.into()))?;
    if b.id.as_deref().is_some_and(|i| i != id) {
        return Err(ApiError::BadRequest(
            "id: a destination's id cannot change (create another one)".into(),
        ));
    }
    let keys = master(&state)?;
    let new_secret = b.secret.is_some();
    let (_, secret) = check(d, "destination", &b).await?;
    let sealed = new_secret.then(|| keys.seal(secret.as_bytes(), &destination_aad(&tenant, &id)));
    let settings = settings_of(&b);
    let after = change(&state, pg, &who, async |tx| {
        let before = store::get(tx, &tenant, &id, true)
            .await
            .map_err(db)?
            .ok_or_else(|| unknown(&id))?;
        store::update(tx, &tenant, &id, &settings)
            .await
            .map_err(db)?;
        if let Some(s) = &sealed {
            store::update_secret(tx, &tenant, &id, s, true)
                .await
                .map_err(db)?;
        }
        let after = store::get(tx, &tenant, &id, false)
            .await
            .map_err(db)?
            .ok_or(ApiError::Internal)?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "destination.update",
            target: format!("destination:{id}"),
            before: Some(before.public()),
            after: Some(after.public()),
        };
        Ok((after, Some(audit)))
    })
    .await?;
    d.set_enabled(&k, b.enabled)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let mut v = after.public();
    if new_secret {
        v["secret"] = Value::String(secret);
    }
    Ok(HttpResponse::Ok().json(v))
}

/// PUT on a file destination: only `{"enabled": true|false}` (the rest is the file's).
/// Enabling clears a disable by the gateway (410, failing) or an operator. Audited when
/// PostgreSQL is enabled.
#[allow(clippy::too_many_arguments)]
async fn enable_file(
    state: &State,
    d: &Delivery,
    who: &crate::admin::Principal,
    req: &HttpRequest,
    body: &[u8],
    tenant: &str,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Enabled {
        enabled: bool,
    }
    let b: Enabled = json_body(req, body).map_err(|_| config_managed("destination", id))?;
    let k = key(tenant, id);
    let before = d.health(&k).await.map_err(|_| ApiError::Unavailable)?;
    d.set_enabled(&k, b.enabled)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    if let Some(pg) = &state.persist {
        super::transaction(pg, &who.actor(), db, async |_tx| {
            Ok((
                (),
                Some(Audit {
                    tenant: Some(tenant.to_string()),
                    action: if b.enabled {
                        "destination.enable"
                    } else {
                        "destination.disable"
                    },
                    target: format!("destination:{id}"),
                    before: Some(json!({ "disabled": before.disabled })),
                    after: Some(json!({ "enabled": b.enabled, "origin": "config" })),
                }),
            ))
        })
        .await?;
    }
    let f = d.destination(tenant, id).ok_or_else(|| unknown(id))?;
    Ok(HttpResponse::Ok().json(with_health(d, file_view(&f), &k).await))
}

pub(super) async fn delete(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let d = delivery(&state)?;
    if d.in_file(&tenant, &id) {
        return Err(config_managed("destination", &id));
    }
    let pg = postgres(&state)?;
    change(&state, pg, &who, async |tx| {
        let before = store::get(tx, &tenant, &id, true)
            .await
            .map_err(db)?
            .ok_or_else(|| unknown(&id))?;
        store::delete(tx, &tenant, &id).await.map_err(db)?;
        let audit = Audit {
            tenant: Some(tenant.clone()),
            action: "destination.delete",
            target: format!("destination:{id}"),
            before: Some(before.public()),
            after: None,
        };
        Ok(((), Some(audit)))
    })
    .await?;
    // Its queues, health and Redis attempts: every copy goes with it.
    let dropped = d
        .purge(&key(&tenant, &id))
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": id, "queued_dropped": dropped })))
}

/// The destination of the path (file, or API as loaded on this replica).
fn known(d: &Delivery, tenant: &str, id: &str) -> Result<Destination, ApiError> {
    d.destination(tenant, id).ok_or_else(|| unknown(id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

pub(super) async fn attempts(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let d = delivery(&state)?;
    known(d, &tenant, &id)?;
    let q: Page = query(&req)?;
    let limit = q.limit.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be 1..=1000".into()));
    }
    let after =
        match q.after {
            Some(a) => Some(a.parse::<u64>().map_err(|_| {
                ApiError::BadRequest("after: use a previous page's next_after".into())
            })?),
            None => None,
        };
    let (items, next_after) = d
        .attempts(&key(&tenant, &id), limit, after)
        .await
        .map_err(failed)?;
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_after": next_after })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeliverBody {
    event_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn rfc3339_ms(label: &str, v: &str) -> Result<u64, ApiError> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        .map_err(|_| ApiError::BadRequest(format!("{label}: an RFC 3339 time")))
}

pub(super) async fn redeliver(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let d = delivery(&state)?;
    let dest = known(d, &tenant, &id)?;
    let b: RedeliverBody = json_body(&req, &body)?;
    let what = match (b.event_id, b.since, b.until) {
        (Some(e), None, None) => Redeliver::Event(e),
        (None, Some(s), Some(u)) => {
            let (since_ms, until_ms) = (rfc3339_ms("since", &s)?, rfc3339_ms("until", &u)?);
            if since_ms > until_ms {
                return Err(ApiError::BadRequest("since is after until".into()));
            }
            Redeliver::Range { since_ms, until_ms }
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give {\"event_id\": ...} or {\"since\": ..., \"until\": ...} (RFC 3339)".into(),
            ))
        }
    };
    let (queued, already) = d.redeliver(&dest, &what).await.map_err(failed)?;
    let report = json!({ "queued": queued, "already_queued": already });
    if let Some(pg) = &state.persist {
        let detail = match &what {
            Redeliver::Event(e) => json!({ "event_id": e }),
            Redeliver::Range { since_ms, until_ms } => {
                json!({ "since": ms_text(*since_ms), "until": ms_text(*until_ms) })
            }
        };
        super::transaction(pg, &who.actor(), db, async |_tx| {
            Ok((
                (),
                Some(Audit {
                    tenant: Some(tenant.clone()),
                    action: "destination.redeliver",
                    target: format!("destination:{id}"),
                    before: None,
                    after: Some(json!({ "request": detail, "report": report })),
                }),
            ))
        })
        .await?;
    }
    Ok(HttpResponse::Ok().json(report))
}

fn failed(e: DeliveryError) -> ApiError {
    match e {
        DeliveryError::UnknownEvent(_) => ApiError::NotFoundResource {
            code: "unknown_event",
            message: e.to_string(),
        },
        DeliveryError::TooMany(_) => ApiError::Unprocessable {
            code: "too_many_events",
            errors: vec![e.to_string()],
        },
        DeliveryError::Disabled => ApiError::ConflictCode {
            code: "destination_disabled",
            message: e.to_string(),
        },
        DeliveryError::Backend(e) => {
            tracing::error!(error = %e, "delivery operation failed in Redis");
            ApiError::Unavailable
        }
        DeliveryError::Persist(e) => db(e),
    }
}
