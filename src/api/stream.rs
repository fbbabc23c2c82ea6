//! `GET /v1/tenants/{t}/agents/{a}/stream`: Server-Sent Events of one agent's work, so an
//! agent's app never polls.
//!
//! Every replica publishes its assignments on the shared events stream, so whichever
//! replica holds the connection reads that stream (from where the client left off) and
//! sends the events whose assignment names the agent as its holder or previous holder:
//! assignments, messages in their open conversations, transfers in and out, requeues and
//! closes. Each SSE `id` is the event's stream id, so a client that reconnects with
//! `Last-Event-ID` resumes exactly after the last event it got; `data` is the event JSON
//! (with its `assignment`), `event` is its `kind`. A comment line keeps idle connections
//! open (`routing.stream_heartbeat_ms`). At most `routing.stream_max_per_key` streams per
//! API key are open on a replica (429 beyond); each stream buffers at most
//! [`BUFFER`] messages for a slow client, after which reading the events stream waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::accept::{Backend, StreamName};
use crate::config::Config;
use crate::error::ApiError;
use crate::http::authorize;
use crate::http::State;

/// Messages buffered per stream for a slow client.
pub const BUFFER: usize = 64;
/// Events read from the events stream per look.
const READ_BATCH: usize = 200;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/tenants/{tenant}/agents/{agent}/stream",
        web::get().to(agent_stream),
    );
}

/// The open agent streams of this replica, per API key, and their settings.
pub struct Streams {
    heartbeat: Duration,
    poll: Duration,
    max_per_key: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl Streams {
    pub fn from_config(c: &Config) -> Streams {
        Streams {
            heartbeat: Duration::from_millis(c.routing.stream_heartbeat_ms),
            poll: Duration::from_millis(c.routing.stream_poll_ms),
            max_per_key: c.routing.stream_max_per_key,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new stream of `key`, unless it has `max_per_key` open.
    fn enter(self: &Arc<Self>, key: String) -> Option<Slot> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(key.clone()).or_insert(0);
        if *n >= self.max_per_key {
            return None;
        }
        *n += 1;
        Some(Slot {
            streams: self.clone(),
            key,
        })
    }
}

/// One open stream, counted until dropped.
struct Slot {
    streams: Arc<Streams>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(&self.key);
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// End the stream after this long (the client reconnects with `Last-Event-ID`), for
    /// clients and proxies that prefer bounded responses.
    max_secs: Option<u64>,
}

/// A stream id as the read API takes it: `<ms>-<seq>`, or `p<n>/<ms>-<seq>`.
fn valid_id(id: &str) -> bool {
    let id = crate::accept::partitioned::split_id(id).map_or(id, |(_, i)| i);
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.chars().all(|c| c.is_ascii_digit())
            && seq.chars().all(|c| c.is_ascii_digit())
    })
}

/// Whether `event` (of the events stream) is `agent`'s, in `tenant`.
fn concerns(event: &Value, tenant: &str, agent: &str) -> bool {
    let a = &event["assignment"];
    event["tenant"] == tenant
        && a.is_object()
        && (a["agent"] == agent || a["previous_agent"] == agent)
}

fn frame(id: &str, kind: &str, data: &str) -> Bytes {
    // The payload is one line of JSON (no raw newlines), so one `data:` line.
    Bytes::from(format!("id: {id}\nevent: {kind}\ndata: {data}\n\n"))
}

async fn agent_stream(
    state: State,
    streams: web::Data<Streams>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let (tenant, agent) = path.into_inner();
    let engine = state
        .engine
        .as_deref()
        .ok_or_else(|| ApiError::RoutingNotConfigured(tenant.clone()))?;
    if !engine.has_tenant(&tenant) {
        return Err(ApiError::UnknownTenant(tenant));
    }
    let rs = engine
        .ruleset(&tenant)
        .ok_or_else(|| ApiError::RoutingNotConfigured(tenant.clone()))?;
    if rs.agent(&agent).is_none() {
        return Err(ApiError::NotFoundResource {
            code: "unknown_agent",
            message: format!("no agent {agent:?} in this tenant's routing"),
        });
    }
    let q = web::Query::<StreamQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    if let Some(id) = &resume {
        if !valid_id(id) {
            return Err(ApiError::BadRequest(
                "Last-Event-ID must be an id this stream sent (such as 1700000000000-0)".into(),
            ));
        }
    }
    let key = format!(
        "{}:{}",
        who.prefix,
        who.key_id.as_deref().unwrap_or("config")
    );
    let streams = streams.into_inner();
    let slot = streams.enter(key).ok_or(ApiError::RateLimited {
        scope: "API key (open agent streams)",
        retry_after_secs: 5,
    })?;
    // Where to start: after the client's last event, else after the newest event now.
    let cursor = match resume {
        Some(id) => id,
        None => state
            .backend
            .read(StreamName::Events, 1, None)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "events stream read failed");
                ApiError::Unavailable
            })?
            .pop()
            .map_or_else(|| "0-0".to_string(), |e| e.id),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    let until = q.max_secs.map(|s| Instant::now() + Duration::from_secs(s));
    tokio::spawn(follow(
        state.backend.clone(),
        streams,
        slot,
        tenant,
        agent,
        cursor,
        until,
        tx,
    ));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// Reads the events stream from `cursor` and sends the agent's events until the client
/// goes away (a send fails) or `until`.
#[allow(clippy::too_many_arguments)]
async fn follow(
    backend: Backend,
    streams: Arc<Streams>,
    slot: Slot,
    tenant: String,
    agent: String,
    mut cursor: String,
    until: Option<Instant>,
    tx: mpsc::Sender<Bytes>,
) {
    let _slot = slot;
    // The response starts at once (headers and a first comment), so clients know they
    // are connected.
    if tx
        .send(Bytes::from_static(b": connected\n\n"))
        .await
        .is_err()
    {
        return;
    }
    let mut last_sent = Instant::now();
    loop {
        if until.is_some_and(|u| Instant::now() >= u) {
            return;
        }
        let entries = match backend
            .read(StreamName::Events, READ_BATCH, Some(&cursor))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "agent stream: events read failed; retrying");
                Vec::new()
            }
        };
        let full = entries.len() == READ_BATCH;
        for e in entries {
            cursor = e.id.clone();
            let Ok(ev) = serde_json::from_str::<Value>(&e.payload) else {
                continue;
            };
            if !concerns(&ev, &tenant, &agent) {
                continue;
            }
            let kind = ev["kind"].as_str().unwrap_or("event");
            if tx.send(frame(&e.id, kind, &e.payload)).await.is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        if last_sent.elapsed() >= streams.heartbeat {
            if tx
                .send(Bytes::from_static(b": heartbeat\n\n"))
                .await
                .is_err()
            {
                return;
            }
            last_sent = Instant::now();
        }
        if full {
            continue;
        }
        let mut wait = streams.poll.min(streams.heartbeat);
        if let Some(u) = until {
            wait = wait.min(u.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_the_agents_when_they_hold_or_held_it() {
        let ev = |agent: &str, prev: Option<&str>| json!({"tenant": "acme", "assignment": {"agent": agent, "previous_agent": prev}});
        assert!(concerns(&ev("bob", None), "acme", "bob"));
        assert!(concerns(&ev("ana", Some("bob")), "acme", "bob"));
        assert!(!concerns(&ev("ana", None), "acme", "bob"));
        assert!(!concerns(&ev("bob", None), "globex", "bob"));
        assert!(!concerns(&json!({"tenant": "acme"}), "acme", "bob"));
        assert!(valid_id("1700000000000-0") && valid_id("p2/1700000000000-12"));
        assert!(!valid_id("abc") && !valid_id("1-") && !valid_id("-1"));
    }

    #[test]
    fn streams_per_key_are_bounded_and_released() {
        let s = Arc::new(Streams {
            heartbeat: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            max_per_key: 2,
            open: Mutex::new(HashMap::new()),
        });
        let a = s.enter("k".into()).unwrap();
        let _b = s.enter("k".into()).unwrap();
        assert!(s.enter("k".into()).is_none());
        assert!(s.enter("other".into()).is_some());
        drop(a);
        assert!(s.enter("k".into()).is_some());
    }
}
