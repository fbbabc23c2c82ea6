//! Routing administration: presence, capacity, conversations (close, reopen, transfer,
//! history), queue depths and agent loads, and the rule sets (read, replace, reload from
//! the configuration file). Every change goes through the engine, which makes it atomic in
//! the store and publishes what it changed on the events stream.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{KeyRole, Principal};
use crate::config::routing::{Presence, RoutingConfig};
use crate::error::ApiError;
use crate::http::State;
use crate::http::{authorize, json_body};
use crate::route::engine::{OpError, RulesetError};
use crate::route::store::{Answer, AnswerRefused, Decided, TransferRefused};
use crate::route::Engine;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/routing/reload", web::post().to(reload))
        .route("/v1/tenants/{tenant}/routing", web::get().to(get_rules))
        .route("/v1/tenants/{tenant}/routing", web::put().to(put_rules))
        .route("/v1/tenants/{tenant}/agents", web::get().to(agents))
        .route(
            "/v1/tenants/{tenant}/agents/{agent}/presence",
            web::put().to(presence),
        )
        .route(
            "/v1/tenants/{tenant}/agents/{agent}/capacity",
            web::put().to(capacity),
        )
        .route(
            "/v1/tenants/{tenant}/agents/{agent}/conversations",
            web::get().to(agent_conversations),
        )
        .route("/v1/tenants/{tenant}/queues", web::get().to(queues))
        .route(
            "/v1/tenants/{tenant}/queues/{queue}/conversations",
            web::get().to(queue_conversations),
        )
        .route(
            "/v1/tenants/{tenant}/conversations/{conv}",
            web::get().to(conversation),
        )
        .route(
            "/v1/tenants/{tenant}/conversations/{conv}/close",
            web::post().to(close),
        )
        .route(
            "/v1/tenants/{tenant}/conversations/{conv}/reopen",
            web::post().to(reopen),
        )
        .route(
            "/v1/tenants/{tenant}/conversations/{conv}/transfer",
            web::post().to(transfer),
        )
        .route(
            "/v1/tenants/{tenant}/conversations/{conv}/accept",
            web::post().to(accept),
        )
        .route(
            "/v1/tenants/{tenant}/conversations/{conv}/reject",
            web::post().to(reject),
        );
}

/// The routing engine serving `tenant` (also used by the admin API's rule-set edits).
pub(super) fn engine<'a>(state: &'a State, tenant: &str) -> Result<&'a Engine, ApiError> {
    let engine = state
        .engine
        .as_deref()
        .ok_or_else(|| ApiError::RoutingNotConfigured(tenant.to_string()))?;
    if !engine.has_tenant(tenant) {
        return Err(ApiError::UnknownTenant(tenant.to_string()));
    }
    Ok(engine)
}

fn op_error(e: OpError) -> ApiError {
    match e {
        OpError::NoRouting(t) => ApiError::RoutingNotConfigured(t),
        OpError::UnknownAgent(a) => ApiError::NotFoundResource {
            code: "unknown_agent",
            message: format!("no agent {a:?} in this tenant's routing"),
        },
        OpError::UnknownTeam(t) => ApiError::NotFoundResource {
            code: "unknown_team",
            message: format!("no team {t:?} in this tenant's routing"),
        },
        OpError::UnknownConversation(c) => ApiError::NotFoundResource {
            code: "unknown_conversation",
            message: format!(
                "no conversation {c:?} is known (never routed, or closed and forgotten)"
            ),
        },
        OpError::Conflict(m) => ApiError::Conflict(m),
        e @ OpError::BadCursor(_) => ApiError::BadRequest(e.to_string()),
        OpError::Transfer(TransferRefused::NotActive) => {
            ApiError::Conflict("the conversation is not open or queued".into())
        }
        OpError::Transfer(t) => ApiError::AgentUnavailable(t.to_string()),
        OpError::Answer(AnswerRefused::NoOffer) => ApiError::Conflict(
            "the conversation has no pending offer (answered, expired or withdrawn)".into(),
        ),
        OpError::Answer(AnswerRefused::NotYours) => {
            ApiError::Forbidden("the conversation is offered to another agent".into())
        }
        OpError::Ruleset(r) => ruleset_error(r),
        OpError::Backend(e) => {
            tracing::error!(error = %e, "routing store call failed");
            ApiError::Unavailable
        }
    }
}

pub(crate) fn ruleset_error(e: RulesetError) -> ApiError {
    match e {
        RulesetError::Invalid(errs) => ApiError::InvalidRules(errs),
        RulesetError::Conflict(c) => ApiError::VersionConflict { current: c.0 },
        RulesetError::UnknownTenant(t) => ApiError::UnknownTenant(t),
        RulesetError::Backend(e) => {
            tracing::error!(error = %e, "routing store call failed");
            ApiError::Unavailable
        }
    }
}

fn decision(d: &Decided) -> Value {
    json!({ "assignment": serde_json::from_str::<Value>(&d.assignment).unwrap_or(Value::Null) })
}

async fn get_rules(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    let engine = engine(&state, &tenant)?;
    let rs = engine
        .ruleset(&tenant)
        .ok_or_else(|| ApiError::RoutingNotConfigured(tenant.clone()))?;
    let stored = engine.store().ruleset(&tenant).await.ok().flatten();
    Ok(HttpResponse::Ok().json(json!({
        "tenant": tenant,
        "version": rs.version,
        "origin": stored.as_ref().map(|r| r.origin.clone()),
        "updated_ms": stored.as_ref().map(|r| r.updated_ms),
        "routing": rs.config,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    /// Optimistic concurrency: refuse (409) unless this is the current version.
    if_version: Option<u64>,
}

async fn put_rules(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let tenant = path.into_inner();
    let engine = engine(&state, &tenant)?;
    let q = web::Query::<VersionQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let cfg: RoutingConfig = json_body(&req, &body)?;
    let previous = engine.ruleset(&tenant).map(|r| r.version);
    let version = engine
        .put_ruleset(&tenant, cfg.clone(), q.if_version)
        .await
        .map_err(ruleset_error)?;
    super::admin::record_ruleset(
        &state,
        &who,
        &tenant,
        "routing.put",
        &format!("routing:{tenant}"),
        previous,
        version,
        &cfg,
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({ "tenant": tenant, "version": version })))
}

/// Re-reads the configuration file's `[tenants.*.routing]` sections. Everything is
/// validated first; on any error nothing changes.
async fn reload(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let engine = state.engine.as_deref().ok_or_else(|| {
        ApiError::Conflict("routing is disabled (routing.enabled = false)".into())
    })?;
    let Some(path) = &state.config_path else {
        return Err(ApiError::Conflict(
            "this gateway was not started from a configuration file".into(),
        ));
    };
    let config = crate::config::Config::load(Some(path)).map_err(|e| match e {
        crate::config::ConfigError::Invalid(errs) => ApiError::InvalidRules(errs),
        other => ApiError::InvalidRules(vec![other.to_string()]),
    })?;
    let file: std::collections::HashMap<String, RoutingConfig> = config
        .tenants
        .iter()
        .filter_map(|(id, t)| t.routing.clone().map(|r| (id.clone(), r)))
        .collect();
    let changed = engine
        .reload_file(file.clone())
        .await
        .map_err(ruleset_error)?;
    for (t, v) in &changed {
        if let Some(cfg) = file.get(t) {
            super::admin::record_ruleset(
                &state,
                &who,
                t,
                "routing.reload",
                &format!("routing:{t}"),
                None,
                *v,
                cfg,
            )
            .await;
        }
    }
    let changed: Vec<Value> = changed
        .into_iter()
        .map(|(t, v)| json!({ "tenant": t, "version": v }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "changed": changed })))
}

async fn agents(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    let agents = engine(&state, &tenant)?
        .agents(&tenant)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(json!({ "agents": agents })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    presence: Presence,
}

async fn presence(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, agent) = path.into_inner();
    let b: PresenceBody = json_body(&req, &body)?;
    let previous = engine(&state, &tenant)?
        .set_presence(&tenant, &agent, b.presence)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "agent": agent, "presence": b.presence, "previous": previous
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapacityBody {
    capacity: u32,
    channel_capacity: Option<BTreeMap<String, u32>>,
}

async fn capacity(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, agent) = path.into_inner();
    let b: CapacityBody = json_body(&req, &body)?;
    let version = engine(&state, &tenant)?
        .set_capacity(&tenant, &agent, b.capacity, b.channel_capacity)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "agent": agent, "capacity": b.capacity, "version": version
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `limit` (1..=1000, default 10) and `after`, as `/v1/events` takes them.
fn page(req: &HttpRequest) -> Result<(usize, Option<String>), ApiError> {
    let q = web::Query::<PageQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?
        .into_inner();
    let limit = q.limit.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be 1..=1000".into()));
    }
    Ok((limit, q.after))
}

fn ms_text(ms: u64) -> Option<String> {
    (ms > 0).then(|| crate::event::ms_rfc3339(ms))
}

/// The parties of a listed conversation: the contact (id, name, phone...) only for keys
/// that may see contact content (not viewers).
fn parties(item: &mut serde_json::Map<String, Value>, meta: &str, who: &Principal) {
    let meta: Value = serde_json::from_str(meta).unwrap_or(Value::Null);
    if let Some(b) = meta.get("business").and_then(|b| b.get("id")) {
        item.insert("business".into(), b.clone());
    }
    if let Some(p) = meta.get("provider") {
        item.insert("provider".into(), p.clone());
    }
    if who.role != KeyRole::Viewer {
        if let Some(c) = meta.get("contact").filter(|c| c.is_object()) {
            item.insert("contact".into(), c.clone());
        }
    }
}

fn listing(items: Vec<Value>, last: Option<String>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "items": items, "next_after": last }))
}

async fn agent_conversations(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, agent) = path.into_inner();
    let engine = engine(&state, &tenant)?;
    let (limit, after) = page(&req)?;
    let listed = engine
        .agent_conversations(&tenant, &agent, after.as_deref(), limit)
        .await
        .map_err(op_error)?;
    let last = listed.last().map(|(c, _)| c.clone());
    let items = listed
        .into_iter()
        .map(|(_, l)| {
            let mut item = serde_json::Map::new();
            item.insert("conversation_id".into(), l.conv.into());
            // `open`, or `offered` (a slot held until the agent answers).
            item.insert("state".into(), l.live.state.as_str().into());
            if l.live.offer_expires_ms > 0 {
                item.insert(
                    "offer_expires_at".into(),
                    json!(ms_text(l.live.offer_expires_ms)),
                );
            }
            item.insert("channel".into(), l.live.channel.into());
            item.insert("since".into(), json!(ms_text(l.live.opened_ms)));
            item.insert(
                "last_activity".into(),
                json!(ms_text(l.live.last_message_ms.max(l.live.opened_ms))),
            );
            item.insert("rule".into(), json!(l.live.rule));
            item.insert("team".into(), json!(l.live.team));
            item.insert("strategy".into(), l.live.strategy.into());
            item.insert("priority".into(), l.live.priority.into());
            item.insert("seq".into(), l.live.seq.into());
            parties(&mut item, &l.meta, &who);
            Value::Object(item)
        })
        .collect();
    Ok(listing(items, last))
}

async fn queue_conversations(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, queue) = path.into_inner();
    let engine = engine(&state, &tenant)?;
    let rs = engine
        .ruleset(&tenant)
        .ok_or_else(|| ApiError::RoutingNotConfigured(tenant.clone()))?;
    if !rs.has_queue(&queue) {
        return Err(ApiError::NotFoundResource {
            code: "unknown_queue",
            message: format!("no queue {queue:?} in this tenant's routing (`default`, `team:<id>`, `rule:<id>`, `rule:<id>:fallback`)"),
        });
    }
    // An agent key sees the queues it serves.
    if who.role == KeyRole::Agent {
        let serves = who.agent.as_deref().is_some_and(|a| {
            rs.agent_index
                .get(a)
                .is_some_and(|i| rs.target_for_queue(&queue).members.contains(i))
        });
        if !serves {
            return Err(ApiError::Forbidden(
                "an agent key may only list the queues it serves".into(),
            ));
        }
    }
    let (limit, after) = page(&req)?;
    let listed = engine
        .queue_conversations(&tenant, &queue, after.as_deref(), limit)
        .await
        .map_err(op_error)?;
    let now = engine.now();
    let last = listed.last().map(|(c, _)| c.clone());
    let items = listed
        .into_iter()
        .map(|(_, l)| {
            let mut item = serde_json::Map::new();
            item.insert("position".into(), json!(l.position));
            item.insert("conversation_id".into(), l.conv.into());
            item.insert("channel".into(), l.live.channel.into());
            item.insert("priority".into(), l.live.priority.into());
            item.insert(
                "waited_secs".into(),
                (now.saturating_sub(l.live.queued_ms) / 1000).into(),
            );
            item.insert("queued_at".into(), json!(ms_text(l.live.queued_ms)));
            item.insert("rule".into(), json!(l.live.rule));
            item.insert("target".into(), json!(l.live.target));
            item.insert("last_agent".into(), json!(l.live.last_agent));
            parties(&mut item, &l.meta, &who);
            Value::Object(item)
        })
        .collect();
    Ok(listing(items, last))
}

async fn queues(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let tenant = path.into_inner();
    let engine = engine(&state, &tenant)?;
    let queues = engine.queues(&tenant).await.map_err(op_error)?;
    let now = engine.now();
    let total: u64 = queues.iter().map(|q| q.depth).sum();
    let queues: Vec<Value> = queues
        .into_iter()
        .map(|q| {
            json!({
                "queue": q.queue,
                "depth": q.depth,
                "oldest_wait_ms": now.saturating_sub(q.oldest_ms),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "queues": queues, "total": total })))
}

async fn conversation(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, conv) = path.into_inner();
    let v = engine(&state, &tenant)?
        .conversation(&tenant, &conv)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(v))
}

async fn close(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, conv) = path.into_inner();
    let d = engine(&state, &tenant)?
        .close(&tenant, &conv)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(decision(&d)))
}

async fn reopen(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, conv) = path.into_inner();
    let d = engine(&state, &tenant)?
        .reopen(&tenant, &conv)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(decision(&d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    agent: Option<String>,
    team: Option<String>,
}

async fn transfer(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (tenant, conv) = path.into_inner();
    let b: TransferBody = json_body(&req, &body)?;
    let d = engine(&state, &tenant)?
        .transfer(&tenant, &conv, b.agent.as_deref(), b.team.as_deref())
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(decision(&d)))
}

/// `POST .../accept` and `.../reject`: an agent key answers its own offers; owner and admin
/// keys answer for whichever agent holds the offer.
async fn answer(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    answer: Answer,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, conv) = path.into_inner();
    let agent = match who.role {
        KeyRole::Agent => Some(
            who.agent
                .clone()
                .ok_or_else(|| ApiError::Forbidden("this agent key names no agent".into()))?,
        ),
        _ => None,
    };
    let d = engine(&state, &tenant)?
        .answer(&tenant, &conv, agent.as_deref(), answer)
        .await
        .map_err(op_error)?;
    Ok(HttpResponse::Ok().json(decision(&d)))
}

async fn accept(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    answer(state, req, path, Answer::Accept).await
}

async fn reject(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    answer(state, req, path, Answer::Reject).await
}
