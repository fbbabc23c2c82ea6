//! The routing rule set as the admin API sees it: the history of its versions (every
//! version set through the API or reloaded from the file is kept with its audit row) and
//! agents and teams edited one at a time, each edit a new version (optimistic: 409 when the
//! rule set changed meanwhile). The rule set itself is in force through the engine
//! (`crate::route`); this file never writes it anywhere else.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{postgres, read, tenant_exists, transaction, Audit};
use crate::admin::{store, Principal};
use crate::api::routing;
use crate::config::routing::{AgentConfig, RoutingConfig, TeamConfig};
use crate::error::ApiError;
use crate::http::State;
use crate::http::{authorize, json_body};
use crate::persist::PersistError;

pub(super) async fn versions(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    tenant_exists(&state, &tenant)?;
    let pg = postgres(&state)?;
    let versions = read(pg, async |c| store::rulesets(c, &tenant).await).await?;
    let current = state
        .engine
        .as_ref()
        .and_then(|e| e.ruleset(&tenant))
        .map(|r| r.version);
    Ok(HttpResponse::Ok().json(json!({
        "tenant": tenant, "current": current, "versions": versions,
    })))
}

pub(super) async fn version(
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
    read(pg, async |c| store::ruleset(c, &tenant, version).await)
        .await?
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
    action: &'static str,
    target: &str,
    previous: Option<u64>,
    version: u64,
    cfg: &RoutingConfig,
) {
    let Some(pg) = &state.persist else { return };
    let actor = who.actor();
    let result = transaction(pg, &actor, std::convert::identity, async |tx| {
        let body = serde_json::to_value(cfg).unwrap_or(Value::Null);
        store::insert_ruleset(tx, tenant, version as i64, &body, &actor).await?;
        let audit = Audit {
            tenant: Some(tenant.to_string()),
            action,
            target: target.to_string(),
            before: previous.map(|v| json!({ "version": v })),
            after: Some(json!({
                "version": version,
                "agents": cfg.agents.len(), "teams": cfg.teams.len(), "rules": cfg.rules.len(),
            })),
        };
        Ok::<_, PersistError>(((), Some(audit)))
    })
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
    action: &'static str,
    target: &str,
    edit: impl FnOnce(&mut RoutingConfig) -> Result<(), ApiError>,
) -> Result<HttpResponse, ApiError> {
    let engine = routing::engine(state, tenant)?;
    let (mut cfg, current) = match engine.ruleset(tenant) {
        Some(rs) => (rs.config.clone(), rs.version),
        None => (RoutingConfig::default(), 0),
    };
    edit(&mut cfg)?;
    let version = engine
        .put_ruleset(tenant, cfg.clone(), Some(current))
        .await
        .map_err(routing::ruleset_error)?;
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

/// A named part of a rule set that the API puts and deletes one at a time: agents and
/// teams. `KIND` names it in targets (`agent:{id}`), actions and error codes.
pub(super) trait Part: DeserializeOwned + 'static {
    const KIND: &'static str;
    const PUT: &'static str;
    const DELETE: &'static str;
    const UNKNOWN: &'static str;
    fn of(cfg: &mut RoutingConfig) -> &mut BTreeMap<String, Self>;
}

impl Part for AgentConfig {
    const KIND: &'static str = "agent";
    const PUT: &'static str = "routing.agent.put";
    const DELETE: &'static str = "routing.agent.delete";
    const UNKNOWN: &'static str = "unknown_agent";
    fn of(cfg: &mut RoutingConfig) -> &mut BTreeMap<String, Self> {
        &mut cfg.agents
    }
}

impl Part for TeamConfig {
    const KIND: &'static str = "team";
    const PUT: &'static str = "routing.team.put";
    const DELETE: &'static str = "routing.team.delete";
    const UNKNOWN: &'static str = "unknown_team";
    fn of(cfg: &mut RoutingConfig) -> &mut BTreeMap<String, Self> {
        &mut cfg.teams
    }
}

/// `PUT …/routing/agents/{agent}` and `…/routing/teams/{team}`: adds or replaces one.
pub(super) async fn put<P: Part>(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    let part: P = json_body(&req, &body)?;
    let target = format!("{}:{id}", P::KIND);
    edit_rules(&state, &who, &tenant, P::PUT, &target, |cfg| {
        P::of(cfg).insert(id.clone(), part);
        Ok(())
    })
    .await
}

/// `DELETE …/routing/agents/{agent}` and `…/routing/teams/{team}` (404 when absent).
pub(super) async fn delete<P: Part>(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, id) = path.into_inner();
    let target = format!("{}:{id}", P::KIND);
    edit_rules(&state, &who, &tenant, P::DELETE, &target, |cfg| {
        P::of(cfg)
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFoundResource {
                code: P::UNKNOWN,
                message: format!("no {} {id:?} in this tenant's routing", P::KIND),
            })
    })
    .await
}
