//! The admin API: tenants, sources with their (encrypted) secrets, API keys, the audit log,
//! the history of routing rule sets, agents and teams as parts of the rule set, and the
//! master key rotation, one file per resource. Who may call what is in
//! `crate::http::endpoints`.
//!
//! Every change is one Postgres transaction that writes the change, its `audit_log` row
//! (before/after, never a secret) and bumps `admin_changes`; then this replica reloads at
//! once and the others within `[api] reload_interval_ms`. That sequence is written once,
//! here: a handler authorizes, parses and validates, hands the change itself to [`change`]
//! (which owns the transaction, the audit row, the counter, the commit and the reload) and
//! answers. Secrets only ever leave the request as AES-256-GCM ciphertext: answers show
//! `secret_set`, `secret_count`, `secret_rotated_at`; error messages that could quote a
//! value (serde's) are replaced.
//!
//! This file owns the routes and the steps every resource shares; the resource files hold
//! only their handlers and their own checks.

mod audit;
mod destinations;
mod keys;
mod master_key;
mod rules;
mod sources;
mod tenants;

pub use master_key::reencrypt_all;
pub(crate) use rules::record_ruleset;
pub use sources::SETTINGS_KEYS;

use std::collections::HashSet;

use actix_web::{web, HttpRequest};
use serde_json::Value;
use tokio_postgres::{Client, Transaction};

use crate::admin::{store, Principal};
use crate::config::routing::{AgentConfig, TeamConfig};
use crate::error::ApiError;
use crate::http::{authorize, State};
use crate::persist::{privacy, PersistError, Postgres};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tenants", web::get().to(tenants::list))
        .route("/v1/tenants", web::post().to(tenants::create))
        .route("/v1/tenants/{tenant}", web::get().to(tenants::get))
        .route("/v1/tenants/{tenant}", web::patch().to(tenants::update))
        .route("/v1/tenants/{tenant}", web::delete().to(tenants::delete))
        .route("/v1/tenants/{tenant}/sources", web::get().to(sources::list))
        .route(
            "/v1/tenants/{tenant}/sources",
            web::post().to(sources::create),
        )
        .route(
            "/v1/tenants/{tenant}/sources/{source}",
            web::get().to(sources::get),
        )
        .route(
            "/v1/tenants/{tenant}/sources/{source}",
            web::patch().to(sources::update),
        )
        .route(
            "/v1/tenants/{tenant}/sources/{source}/rotate-secret",
            web::post().to(sources::rotate_secret),
        )
        .route(
            "/v1/tenants/{tenant}/routing/versions",
            web::get().to(rules::versions),
        )
        .route(
            "/v1/tenants/{tenant}/routing/versions/{version}",
            web::get().to(rules::version),
        )
        .route(
            "/v1/tenants/{tenant}/routing/agents/{agent}",
            web::put().to(rules::put::<AgentConfig>),
        )
        .route(
            "/v1/tenants/{tenant}/routing/agents/{agent}",
            web::delete().to(rules::delete::<AgentConfig>),
        )
        .route(
            "/v1/tenants/{tenant}/routing/teams/{team}",
            web::put().to(rules::put::<TeamConfig>),
        )
        .route(
            "/v1/tenants/{tenant}/routing/teams/{team}",
            web::delete().to(rules::delete::<TeamConfig>),
        )
        .route(
            "/v1/tenants/{tenant}/destinations",
            web::get().to(destinations::list),
        )
        .route(
            "/v1/tenants/{tenant}/destinations",
            web::post().to(destinations::create),
        )
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}",
            web::get().to(destinations::get),
        )
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}",
            web::put().to(destinations::update),
        )
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}",
            web::delete().to(destinations::delete),
        )
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}/attempts",
            web::get().to(destinations::attempts),
        )
        .route(
            "/v1/tenants/{tenant}/destinations/{destination}/redeliver",
            web::post().to(destinations::redeliver),
        )
        .route("/v1/api-keys", web::get().to(keys::list))
        .route("/v1/api-keys", web::post().to(keys::create))
        .route("/v1/api-keys/{key}", web::delete().to(keys::revoke))
        .route("/v1/audit", web::get().to(audit::read_log))
        .route(
            "/v1/admin/rotate-master-key",
            web::post().to(master_key::rotate),
        );
}

// --- plumbing ---

fn postgres(state: &State) -> Result<&Postgres, ApiError> {
    state.persist.as_ref().ok_or(ApiError::NotFoundResource {
        code: "postgres_disabled",
        message: "the admin API stores its data in PostgreSQL: set [postgres] enabled = true"
            .into(),
    })
}

/// A database failure: the cause to the log, 503 to the caller (who may retry: a change
/// that failed was rolled back whole) — unless PostgreSQL refused a value the caller sent,
/// which no retry fixes: 400.
fn db(e: impl Into<PersistError>) -> ApiError {
    let e: PersistError = e.into();
    if e.is_bad_value() {
        tracing::info!(error = %e, "admin request refused by PostgreSQL as invalid data");
        return ApiError::BadRequest(BAD_VALUE.into());
    }
    tracing::error!(error = %e, "admin operation failed in PostgreSQL");
    ApiError::Unavailable
}

pub(crate) const BAD_VALUE: &str =
    "a value in the request cannot be stored (a NUL or control character, or too large)";

/// After a commit: this replica sees the change at once.
async fn reload(state: &State, pg: &Postgres) {
    if let Err(e) = state.admin.reload(pg, false).await {
        tracing::warn!(error = %e, "admin reload after a change failed; the poller retries");
    }
    crate::state::sync_engine(state);
}

/// The `audit_log` row of a change: what it did to which target, as JSON views of the
/// target before and after (never a secret). The actor is the caller of the change.
struct Audit {
    tenant: Option<String>,
    action: &'static str,
    target: String,
    before: Option<Value>,
    after: Option<Value>,
}

/// Runs `f` in one transaction on behalf of `actor`. When `f` returns an [`Audit`], writes
/// it, bumps the change counter (the other replicas' cue to reload) and commits; when it
/// returns none (the change turned out to change nothing) or fails, everything it did is
/// rolled back. Answers `f`'s value and whether a change was committed. The connection is
/// back in the pool on return. `fail` turns a database error into the caller's error.
async fn transaction<T, E>(
    pg: &Postgres,
    actor: &str,
    fail: impl Fn(PersistError) -> E,
    f: impl AsyncFnOnce(&Transaction<'_>) -> Result<(T, Option<Audit>), E>,
) -> Result<(T, bool), E> {
    let mut client = pg.client().await.map_err(&fail)?;
    let tx = client.transaction().await.map_err(|e| fail(e.into()))?;
    let (value, audit) = f(&tx).await?;
    let Some(a) = audit else {
        return Ok((value, false));
    };
    privacy::audit(
        &*tx,
        actor,
        a.tenant.as_deref(),
        a.action,
        &a.target,
        a.before,
        a.after,
    )
    .await
    .map_err(&fail)?;
    store::bump(&*tx).await.map_err(&fail)?;
    tx.commit().await.map_err(|e| fail(e.into()))?;
    Ok((value, true))
}

/// One admin change by `who`: [`transaction`], then this replica reloads when something
/// was committed. Database failures answer 503 (see [`db`]).
async fn change<T>(
    state: &State,
    pg: &Postgres,
    who: &Principal,
    f: impl AsyncFnOnce(&Transaction<'_>) -> Result<(T, Option<Audit>), ApiError>,
) -> Result<T, ApiError> {
    let (value, changed) = transaction(pg, &who.actor(), db, f).await?;
    if changed {
        reload(state, pg).await;
    }
    Ok(value)
}

/// One read on a pooled connection; database failures answer 503 (see [`db`]).
async fn read<T>(
    pg: &Postgres,
    f: impl AsyncFnOnce(&Client) -> Result<T, PersistError>,
) -> Result<T, ApiError> {
    let client = pg.client().await.map_err(db)?;
    f(&client).await.map_err(db)
}

/// The start of a change to a tenant or a source the API owns: who asks, then 409
/// `config_managed` when the configuration file defines `id` (it is in `file`, the file's
/// ids of its kind), then the database.
fn api_owned<'a>(
    state: &'a State,
    req: &HttpRequest,
    what: &str,
    file: &HashSet<String>,
    id: &str,
) -> Result<(Principal, &'a Postgres), ApiError> {
    let who = authorize(state, req)?;
    if file.contains(id) {
        return Err(config_managed(what, id));
    }
    Ok((who, postgres(state)?))
}

fn already_exists(what: &str, id: &str) -> ApiError {
    ApiError::ConflictCode {
        code: "already_exists",
        message: format!("{what} {id:?} exists"),
    }
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

fn tenant_exists(state: &State, tenant: &str) -> Result<(), ApiError> {
    if state.admin.tenant_exists(tenant) {
        Ok(())
    } else {
        Err(ApiError::UnknownTenant(tenant.to_string()))
    }
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
