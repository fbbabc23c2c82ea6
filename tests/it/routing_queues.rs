//! Waiting conversations keep what their rule asked for, on two replicas sharing one Redis:
//! served with their own rule's skills and strategy when capacity frees, requeued at their
//! original place, overflowed into their rule's fallback queue, and sticky assignments
//! reported under the agent's own team.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};

use crate::helpers::*;
use crate::routing::wa_messages;

/// acme: team support (ana: spanish 9, vip 7; ben: no skills; both capacity 1), team sales
/// (sam, capacity 2), team vip (victor: vip 5, capacity 1). Everyone starts offline.
/// Rules: "hola" → support by skills (spanish); "buy" → support round robin; VIP list →
/// team vip (skill vip), after 1 s to the fallback team support, round robin; "deal" → sales.
/// Default: support, least loaded.
const QUEUES: &str = r#"
[tenants.acme.routing]
default_team = "support"
default_strategy = "least_loaded"
sticky_window_secs = 3600
offline_grace_secs = 0
contact_lists = { vip = ["15550009001"] }
[tenants.acme.routing.teams.support]
[tenants.acme.routing.teams.sales]
[tenants.acme.routing.teams.vip]
[tenants.acme.routing.agents.ana]
teams = ["support"]
capacity = 1
skills = { spanish = 9, vip = 7 }
[tenants.acme.routing.agents.ben]
teams = ["support"]
capacity = 1
[tenants.acme.routing.agents.sam]
teams = ["sales"]
capacity = 2
[tenants.acme.routing.agents.victor]
teams = ["vip"]
capacity = 1
skills = { vip = 5 }
[[tenants.acme.routing.rules]]
id = "vip"
when = { contact_lists = ["vip"] }
team = "vip"
strategy = "least_loaded"
skills = ["vip"]
priority = 50
fallback_team = "support"
fallback_strategy = "round_robin"
overflow_after_secs = 1
[[tenants.acme.routing.rules]]
id = "spanish"
when = { keywords = ["hola"] }
team = "support"
strategy = "skills"
skills = ["spanish"]
[[tenants.acme.routing.rules]]
id = "buyers"
when = { keywords = ["buy"] }
team = "support"
strategy = "round_robin"
[[tenants.acme.routing.rules]]
id = "deals"
when = { keywords = ["deal"] }
team = "sales"
[[tenants.acme.routing.rules]]
id = "offers"
when = { keywords = ["take"] }
team = "support"
strategy = "round_robin"
offer_timeout_secs = 1
max_missed_offers = 2
"#;

fn config() -> Config {
    let toml = format!("{BASE_CONFIG}\n[routing]\nsweep_interval_ms = 100\n{QUEUES}");
    let mut c = Config::from_toml(&toml).expect("valid");
    c.backend = BackendKind::Redis;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    c
}

/// Two replicas on one Redis prefix.
async fn replicas() -> (TestApp, TestApp) {
    let c = config();
    (spawn_with(c.clone()).await, spawn_with(c).await)
}

async fn presence(app: &TestApp, agent: &str, p: &str) {
    let (status, v) = app
        .api(
            reqwest::Method::PUT,
            &format!("/v1/tenants/acme/agents/{agent}/presence"),
            Some(json!({ "presence": p })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

/// Routed events (message or assignment) until `done` holds for them, or 15 s.
async fn until(app: &TestApp, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ev: Vec<Value> = app
            .events()
            .await
            .into_iter()
            .map(|e| e["event"].clone())
            .filter(|e| e["assignment"].is_object())
            .collect();
        if done(&ev) || Instant::now() > deadline {
            return ev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of<'a>(ev: &'a [Value], contact: &str) -> Vec<&'a Value> {
    ev.iter()
        .filter(|e| e["contact"]["id"] == contact)
        .map(|e| &e["assignment"])
        .collect()
}

/// How many of `contact`'s decisions are `action`.
fn count(ev: &[Value], contact: &str, action: &str) -> usize {
    of(ev, contact)
        .iter()
        .filter(|a| a["action"] == action)
        .count()
}

fn assigned<'a>(ev: &'a [Value], contact: &str) -> Option<&'a Value> {
    of(ev, contact)
        .into_iter()
        .find(|a| a["action"] == "assigned")
}

#[tokio::test]
async fn freed_capacity_serves_each_waiting_conversation_with_its_own_rule() {
    let (a, b) = replicas().await;
    // Everyone is offline: all four wait in team:support, the Spanish ones oldest.
    for (app, (contact, text)) in [
        (&a, ("34600000001", "hola")),
        (&b, ("34600000002", "hola")),
        (&a, ("15550001001", "buy")),
        (&b, ("15550001002", "buy")),
    ] {
        assert_eq!(
            app.post(&wa_messages(&[(contact, text)])).await.status(),
            200
        );
        // One at a time, so their ages are in this order.
        until(&a, |ev| of(ev, contact).len() == 1).await;
    }
    // ben (no Spanish) comes online: he gets the oldest *buyer*, not a Spanish contact.
    presence(&b, "ben", "online").await;
    let ev = until(&a, |ev| assigned(ev, "15550001001").is_some()).await;
    let served = assigned(&ev, "15550001001").unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(served["agent"], "ben", "{served}");
    assert_eq!(served["rule"], "buyers");
    assert_eq!(served["strategy"], "round_robin", "{served}");
    for c in ["34600000001", "34600000002"] {
        assert!(assigned(&ev, c).is_none(), "{c} went to ben: {ev:#?}");
    }
    // ana (Spanish) comes online: the oldest Spanish contact, by skills.
    presence(&a, "ana", "online").await;
    let ev = until(&b, |ev| assigned(ev, "34600000001").is_some()).await;
    let served = assigned(&ev, "34600000001").unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(served["agent"], "ana");
    assert_eq!(served["rule"], "spanish");
    assert_eq!(served["strategy"], "skills");
    assert!(
        served["reason"].as_str().unwrap().contains("rule spanish"),
        "{served}"
    );
    // ben's conversation closes: the next buyer is his, never a Spanish one.
    let conv = ev
        .iter()
        .find(|e| e["contact"]["id"] == "15550001001")
        .and_then(|e| e["conversation_id"].as_str())
        .unwrap()
        .to_string();
    let (status, v) = b
        .api(
            reqwest::Method::POST,
            &format!("/v1/tenants/acme/conversations/{conv}/close"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let ev = until(&a, |ev| assigned(ev, "15550001002").is_some()).await;
    let served = assigned(&ev, "15550001002").unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(
        (served["agent"].as_str(), served["strategy"].as_str()),
        (Some("ben"), Some("round_robin"))
    );
    assert!(assigned(&ev, "34600000002").is_none(), "{ev:#?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_requeued_conversation_keeps_its_place_in_the_queue() {
    let (a, b) = replicas().await;
    presence(&a, "ben", "online").await;
    // The first goes to ben at once; the second waits (ben is full, ana offline).
    assert_eq!(
        a.post(&wa_messages(&[("15550002001", "first")]))
            .await
            .status(),
        200
    );
    until(&a, |ev| assigned(ev, "15550002001").is_some()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        b.post(&wa_messages(&[("15550002002", "second")]))
            .await
            .status(),
        200
    );
    until(&a, |ev| count(ev, "15550002002", "queued") > 0).await;
    // ben goes offline (grace 0): the first is requeued ahead of the second, which has
    // waited less.
    presence(&b, "ben", "offline").await;
    until(&a, |ev| count(ev, "15550002001", "requeued") > 0).await;
    presence(&a, "ana", "online").await;
    let ev = until(&b, |ev| {
        count(ev, "15550002001", "assigned") == 2 || assigned(ev, "15550002002").is_some()
    })
    .await;
    assert!(assigned(&ev, "15550002002").is_none(), "{ev:#?}");
    let again = of(&ev, "15550002001");
    assert_eq!(again.last().unwrap()["agent"], "ana", "{ev:#?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn overflowed_conversations_wait_in_the_rules_fallback_queue_with_its_requirements() {
    let (a, b) = replicas().await;
    // victor is offline: the VIP waits 1 s in team:vip, then overflows to the fallback.
    presence(&a, "ben", "online").await;
    assert_eq!(
        b.post(&wa_messages(&[("15550009001", "help")]))
            .await
            .status(),
        200
    );
    let ev = until(&a, |ev| count(ev, "15550009001", "overflowed") > 0).await;
    let over = of(&ev, "15550009001")
        .into_iter()
        .find(|a| a["action"] == "overflowed")
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(over["queue"], "rule:vip:fallback", "{over}");
    assert_eq!(over["team"], "support", "{over}");
    assert_eq!(over["strategy"], "round_robin", "{over}");
    // ben is free but lacks the rule's skill: it keeps waiting, reported under its queue.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, q) = b
        .api(reqwest::Method::GET, "/v1/tenants/acme/queues", None)
        .await;
    assert_eq!(status, 200, "{q}");
    let queues = q["queues"].as_array().unwrap();
    assert!(
        queues
            .iter()
            .any(|q| q["queue"] == "rule:vip:fallback" && q["depth"] == 1),
        "{q}"
    );
    assert!(assigned(&a.routed(0).await, "15550009001").is_none());
    // ana has it: she takes it, with the fallback's strategy.
    presence(&b, "ana", "online").await;
    let ev = until(&a, |ev| assigned(ev, "15550009001").is_some()).await;
    let served = assigned(&ev, "15550009001").unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(served["agent"], "ana");
    assert_eq!(served["queue"], "rule:vip:fallback");
    assert_eq!(served["team"], "support");
    assert_eq!(served["strategy"], "round_robin");
    assert_eq!(served["rule"], "vip");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_sticky_assignment_reports_the_agents_own_team() {
    let (a, b) = replicas().await;
    presence(&a, "sam", "online").await;
    presence(&a, "ben", "online").await;
    assert_eq!(
        a.post(&wa_messages(&[("15550003001", "deal")]))
            .await
            .status(),
        200
    );
    let ev = until(&b, |ev| assigned(ev, "15550003001").is_some()).await;
    let first = assigned(&ev, "15550003001").unwrap();
    assert_eq!(
        (first["agent"].as_str(), first["team"].as_str()),
        (Some("sam"), Some("sales"))
    );
    let conv = ev[0]["conversation_id"].as_str().unwrap().to_string();
    let (status, _) = b
        .api(
            reqwest::Method::POST,
            &format!("/v1/tenants/acme/conversations/{conv}/close"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // The contact comes back with a message the default (team support) would route: it
    // goes back to sam, reported under sam's team.
    assert_eq!(
        b.post(&wa_messages(&[("15550003001", "thanks")]))
            .await
            .status(),
        200
    );
    let ev = until(&a, |ev| count(ev, "15550003001", "assigned") == 2).await;
    let back = of(&ev, "15550003001")
        .into_iter()
        .rfind(|a| a["action"] == "assigned")
        .unwrap();
    assert_eq!(back["agent"], "sam", "{back}");
    assert_eq!(back["strategy"], "sticky_owner");
    assert_eq!(back["team"], "sales", "{back}");
    assert!(
        back["reason"].as_str().unwrap().contains("sticky"),
        "{back}"
    );
    a.stop().await;
    b.stop().await;
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Every item of a listing, `limit` per page, following `next_after`.
async fn pages(app: &TestApp, token: &str, path: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{path}?limit={limit}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", urlencode(a)));
        }
        let (status, v) = get_as(app, token, &url).await;
        assert_eq!(status, 200, "{url}: {v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return out;
        }
        after = v["next_after"].as_str().map(str::to_string);
        out.push(items);
        assert!(out.len() < 50, "paging does not end");
    }
}

fn urlencode(s: &str) -> String {
    s.replace('/', "%2F").replace(':', "%3A")
}

/// The configuration with API keys (they live in PostgreSQL), and the migrated database.
async fn keyed_config() -> (
    Config,
    (switchboard::persist::Postgres, tokio_postgres::Client),
) {
    let mut c = config();
    let pg = crate::pg::pg_config(BackendKind::Redis, &crate::pg::pg_url());
    c.postgres = pg.postgres;
    let master = std::env::temp_dir().join(format!("sb-master-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &master,
        format!(
            "k1:{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                uuid::Uuid::new_v4().as_bytes().repeat(2)
            )
        ),
    )
    .unwrap();
    c.api.master_key_file = Some(master);
    c.api.reload_interval_ms = 200;
    c.api.key_requests_per_sec = 100_000;
    c.api.key_burst = 100_000;
    let pg = crate::pg::migrated(&c).await;
    (c, pg)
}

/// A new API key's token.
async fn new_key(app: &TestApp, body: Value) -> String {
    let res = app
        .client
        .post(app.url("/v1/api-keys"))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// `GET path` with `token` until it is no longer 401 (keys reach every replica by reload).
async fn get_once_known(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_as(app, token, path).await;
        if r.0 != 401 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operators_list_an_agents_open_conversations_and_a_queue_in_service_order() {
    let (c, _pg) = keyed_config().await;
    let a = spawn_with(c.clone()).await;
    let b = spawn_with(c).await;
    presence(&a, "ben", "online").await;
    // ben takes the first; three wait in team:support, the VIP-less default queue.
    for (i, contact) in ["15550004001", "15550004002", "15550004003", "15550004004"]
        .into_iter()
        .enumerate()
    {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            app.post(&wa_messages(&[(contact, "hi")])).await.status(),
            200
        );
        until(&a, |ev| of(ev, contact).len() == 1).await;
    }
    // ben's open conversations, on the other replica.
    let (status, v) = get_as(&b, API_TOKEN, "/v1/tenants/acme/agents/ben/conversations").await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["contact"]["id"], "15550004001");
    assert_eq!(items[0]["channel"], "whatsapp");
    assert!(
        items[0]["since"].is_string() && items[0]["last_activity"].is_string(),
        "{v}"
    );
    assert_eq!(items[0]["team"], "support");
    // The queue in service order, one per page: positions 1, 2, 3, oldest first.
    let q = "/v1/tenants/acme/queues/team:support/conversations";
    let got = pages(&a, API_TOKEN, q, 1).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let order: Vec<(u64, &str)> = got
        .iter()
        .map(|p| {
            (
                p[0]["position"].as_u64().unwrap(),
                p[0]["contact"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [(1, "15550004002"), (2, "15550004003"), (3, "15550004004")]
    );
    assert_eq!(got[0][0]["priority"], 0);
    assert!(got[0][0]["waited_secs"].is_u64());
    assert_eq!(got[0][0]["target"], "default");
    let all = pages(&b, API_TOKEN, q, 10).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].len(), 3);
    // Unknown queues and agents, and bad cursors, are refused with catalogue codes.
    let (status, v) = get_as(
        &a,
        API_TOKEN,
        "/v1/tenants/acme/queues/team:nope/conversations",
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_queue")));
    let (status, v) = get_as(
        &a,
        API_TOKEN,
        "/v1/tenants/acme/agents/nobody/conversations",
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_agent")));
    let (status, v) = get_as(&a, API_TOKEN, &format!("{q}?after=zzz")).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));

    // Role scope: a viewer sees no contact; an agent key sees its own conversations and
    // the queues it serves, nobody else's.
    let viewer = new_key(&a, json!({"role": "viewer", "tenant": "acme"})).await;
    let ben = new_key(
        &a,
        json!({"role": "agent", "tenant": "acme", "agent": "ben"}),
    )
    .await;
    let sam = new_key(
        &a,
        json!({"role": "agent", "tenant": "acme", "agent": "sam"}),
    )
    .await;
    // Keys are read by every replica (b reloads them).
    let (status, v) = get_once_known(&b, &viewer, q).await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for it in items {
        assert!(it.get("contact").is_none(), "a viewer sees a contact: {it}");
        assert!(!it.to_string().contains("1555000400"), "{it}");
    }
    let (status, v) = get_as(&a, &viewer, "/v1/tenants/acme/agents/ben/conversations").await;
    assert_eq!(status, 200);
    assert!(v["items"][0].get("contact").is_none(), "{v}");
    let (status, _) = get_as(&a, &ben, "/v1/tenants/acme/agents/ben/conversations").await;
    assert_eq!(status, 200);
    let (status, _) = get_as(&a, &ben, q).await;
    assert_eq!(status, 200, "ben serves team:support");
    let (status, v) = get_as(&a, &sam, "/v1/tenants/acme/agents/ben/conversations").await;
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")));
    let (status, v) = get_as(&a, &sam, q).await;
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")));
    a.stop().await;
    b.stop().await;
}

/// An open SSE connection: frames (`id`, `event`, `data`) and comments as they arrive.
struct Sse {
    res: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(app: &TestApp, path: &str, last_id: Option<&str>) -> Result<Sse, (u16, Value)> {
        Sse::open_as(app, API_TOKEN, path, last_id).await
    }

    async fn open_as(
        app: &TestApp,
        token: &str,
        path: &str,
        last_id: Option<&str>,
    ) -> Result<Sse, (u16, Value)> {
        let mut req = app.client.get(app.url(path)).bearer_auth(token);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.unwrap();
        if res.status() != 200 {
            let s = res.status().as_u16();
            return Err((s, res.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Ok(Sse {
            res,
            buf: String::new(),
        })
    }

    /// The next block (frame or comment), within 10 s.
    async fn next(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = self.buf.find("\n\n") {
                let block = self.buf[..p].to_string();
                self.buf.drain(..p + 2);
                return block;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.res.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                other => panic!("stream ended or stalled: {other:?} (buffer {:?})", self.buf),
            }
        }
    }

    /// The next event frame: (id, event, data), skipping comments.
    async fn event(&mut self) -> (String, String, Value) {
        loop {
            let block = self.next().await;
            if block.starts_with(':') {
                continue;
            }
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_default()
                    .to_string()
            };
            let data = serde_json::from_str(&field("data")).unwrap();
            return (field("id"), field("event"), data);
        }
    }
}

#[tokio::test]
async fn an_agents_app_follows_its_work_over_server_sent_events_on_any_replica() {
    let mut c = config();
    c.routing.stream_heartbeat_ms = 100;
    c.routing.stream_poll_ms = 20;
    c.routing.stream_max_per_key = 2;
    let a = spawn_with(c.clone()).await;
    let b = spawn_with(c).await;
    presence(&a, "ben", "online").await;
    let path = "/v1/tenants/acme/agents/ben/stream";
    let mut s = Sse::open(&b, path, None).await.unwrap();
    assert_eq!(s.next().await, ": connected");
    // A conversation for ben, posted to the other replica; sam's is not sent.
    presence(&a, "sam", "online").await;
    assert_eq!(
        a.post(&wa_messages(&[
            ("15550005001", "hi"),
            ("15550005002", "deal")
        ]))
        .await
        .status(),
        200
    );
    let (id1, kind, ev) = s.event().await;
    assert_eq!(kind, "message");
    assert_eq!(ev["assignment"]["action"], "assigned");
    assert_eq!(ev["assignment"]["agent"], "ben");
    assert_eq!(ev["contact"]["id"], "15550005001");
    // Idle: heartbeats keep the connection open.
    let block = s.next().await;
    assert_eq!(block, ": heartbeat");
    // Closed through the API on replica a: ben's stream on b says so.
    let conv = ev["conversation_id"].as_str().unwrap().to_string();
    let (status, _) = a
        .api(
            reqwest::Method::POST,
            &format!("/v1/tenants/acme/conversations/{conv}/close"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (id2, kind, ev) = s.event().await;
    assert_eq!(kind, "assignment");
    assert_eq!(ev["assignment"]["action"], "closed");
    assert_eq!(ev["assignment"]["previous_agent"], "ben");
    drop(s);
    // Reconnecting with Last-Event-ID resumes after that event: the close again only when
    // resuming from before it.
    let mut again = Sse::open(&a, path, Some(&id1)).await.unwrap();
    let (id, _, ev) = again.event().await;
    assert_eq!(
        (id.as_str(), ev["assignment"]["action"].as_str()),
        (id2.as_str(), Some("closed"))
    );
    // At most two streams per key on a replica.
    let second = Sse::open(&a, path, Some(&id2)).await.unwrap();
    let (status, v) = Sse::open(&a, path, None).await.err().unwrap();
    assert_eq!((status, v["code"].as_str()), (429, Some("rate_limited")));
    drop(again);
    // Released when a client goes away.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Sse::open(&a, path, None).await {
            Ok(_) => break,
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let (status, v) = get_as(&a, API_TOKEN, "/v1/tenants/acme/agents/nobody/stream").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_agent")));
    drop(second);
    a.stop().await;
    b.stop().await;
}

async fn post_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let res = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn agents_take_offers_over_their_stream_and_answer_on_either_replica() {
    let (mut c, _pg) = keyed_config().await;
    c.routing.stream_heartbeat_ms = 200;
    c.routing.stream_poll_ms = 20;
    let a = spawn_with(c.clone()).await;
    let b = spawn_with(c).await;
    let ana = new_key(
        &a,
        json!({"role": "agent", "tenant": "acme", "agent": "ana"}),
    )
    .await;
    let ben = new_key(
        &a,
        json!({"role": "agent", "tenant": "acme", "agent": "ben"}),
    )
    .await;
    let viewer = new_key(&a, json!({"role": "viewer", "tenant": "acme"})).await;
    assert_eq!(
        get_once_known(&b, &ben, "/v1/tenants/acme/agents/ben/conversations")
            .await
            .0,
        200
    );
    assert_eq!(
        get_once_known(&b, &ana, "/v1/tenants/acme/agents/ana/conversations")
            .await
            .0,
        200
    );
    presence(&a, "ana", "online").await;
    presence(&b, "ben", "online").await;
    // Both agents' apps follow their work on replica b, with their own keys.
    let mut streams = std::collections::HashMap::new();
    for (agent, token) in [("ana", &ana), ("ben", &ben)] {
        let path = format!("/v1/tenants/acme/agents/{agent}/stream");
        let mut s = Sse::open_as(&b, token, &path, None).await.unwrap();
        assert_eq!(s.next().await, ": connected");
        streams.insert(agent, s);
    }

    // The "offers" rule offers the conversation to one of them, who holds a slot for it.
    assert_eq!(
        a.post(&wa_messages(&[("15550006001", "take this")]))
            .await
            .status(),
        200
    );
    let ev = until(&a, |ev| !of(ev, "15550006001").is_empty()).await;
    let first = of(&ev, "15550006001")[0].clone();
    assert_eq!(first["action"], "offered", "{first}");
    assert_eq!(first["rule"], "offers");
    assert!(first["offer_expires_at"].is_string(), "{first}");
    let holder = first["agent"].as_str().unwrap().to_string();
    let (other, holder_key, other_key) = if holder == "ana" {
        ("ben", &ana, &ben)
    } else {
        ("ana", &ben, &ana)
    };
    let conv = ev
        .iter()
        .find(|e| e["contact"]["id"] == "15550006001")
        .unwrap()["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The holder's app sees the offer: the same JSON as the event.
    let (_, kind, got) = streams.get_mut(holder.as_str()).unwrap().event().await;
    assert_eq!(kind, "message");
    assert_eq!(got["assignment"], first);
    let (_, v) = get_as(
        &b,
        API_TOKEN,
        &format!("/v1/tenants/acme/agents/{holder}/conversations"),
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["state"], "offered", "{v}");
    let accept = format!("/v1/tenants/acme/conversations/{conv}/accept");
    let reject = format!("/v1/tenants/acme/conversations/{conv}/reject");
    // Only the agent holding the offer answers it; viewers never do.
    let (status, v) = post_as(&b, other_key, &accept).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (status, v) = post_as(&a, &viewer, &accept).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    // The holder rejects it on replica b: it is offered to the other agent at once.
    let (status, v) = post_as(&b, holder_key, &reject).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["assignment"]["action"], "rejected");
    assert_eq!(v["assignment"]["previous_agent"], holder.as_str());
    let (_, kind, got) = streams.get_mut(holder.as_str()).unwrap().event().await;
    assert_eq!(
        (kind.as_str(), got["assignment"]["action"].as_str()),
        ("assignment", Some("rejected"))
    );
    let (_, kind, got) = streams.get_mut(other).unwrap().event().await;
    assert_eq!(kind, "assignment");
    assert_eq!(got["assignment"]["action"], "offered", "{got}");
    assert_eq!(got["assignment"]["agent"], other);
    // The other accepts it on replica a: theirs now.
    let (status, v) = post_as(&a, other_key, &accept).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["assignment"]["action"], "accepted");
    assert_eq!(v["assignment"]["agent"], other);
    let (_, _, got) = streams.get_mut(other).unwrap().event().await;
    assert_eq!(got["assignment"]["action"], "accepted");
    // Answered: another answer is a conflict.
    let (status, v) = post_as(&b, other_key, &accept).await;
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")), "{v}");

    // A second conversation: only the holder has room. Unanswered, its offer expires
    // after a second and comes back to them (nobody else qualifies); two missed in a row
    // set them away, and the conversation waits.
    assert_eq!(
        b.post(&wa_messages(&[("15550006002", "take that")]))
            .await
            .status(),
        200
    );
    let ev = until(&a, |ev| count(ev, "15550006002", "expired") >= 2).await;
    let actions: Vec<&str> = of(&ev, "15550006002")
        .iter()
        .map(|x| x["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["offered", "expired", "offered", "expired"],
        "{ev:#?}"
    );
    let last = of(&ev, "15550006002")[3].clone();
    assert_eq!(last["previous_agent"], holder.as_str());
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .ends_with(&format!("2 offers missed in a row, {holder} is now away")),
        "{last}"
    );
    let (_, agents) = get_as(&b, API_TOKEN, "/v1/tenants/acme/agents").await;
    let h = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == holder.as_str())
        .unwrap();
    assert_eq!(
        (h["presence"].as_str(), h["missed_offers"].as_u64()),
        (Some("away"), Some(2))
    );
    let (_, q) = get_as(
        &a,
        API_TOKEN,
        "/v1/tenants/acme/queues/team:support/conversations",
    )
    .await;
    assert_eq!(q["items"].as_array().unwrap().len(), 1, "{q}");
    // Back online, they get it offered again.
    presence(&a, &holder, "online").await;
    let ev = until(&a, |ev| of(ev, "15550006002").len() >= 5).await;
    let again = of(&ev, "15550006002")[4].clone();
    assert_eq!(again["action"], "offered");
    assert_eq!(again["agent"], holder.as_str());
    a.stop().await;
    b.stop().await;
}

/// The Python interpreter for the examples (standard library only): `python3` on PATH.
fn python3() -> std::process::Command {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "python3 is needed to run examples/agent_app.py");
    std::process::Command::new("python3")
}

#[tokio::test]
async fn the_example_agent_app_takes_offers_from_its_stream() {
    let mut c = config();
    // Time enough to answer on a busy machine.
    for r in &mut c
        .tenants
        .get_mut("acme")
        .unwrap()
        .routing
        .as_mut()
        .unwrap()
        .rules
    {
        if r.id == "offers" {
            r.offer_timeout_secs = Some(30);
        }
    }
    c.routing.stream_heartbeat_ms = 200;
    c.routing.stream_poll_ms = 20;
    let app = spawn_with(c).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent_app.py");
    let mut child = python3()
        .arg(&script)
        .args(["--url", &app.url(""), "--token", API_TOKEN])
        .args(["--tenant", "acme", "--agent", "ana", "--offers", "accept"])
        .args(["--answer-after-secs", "0.1", "--heartbeat-secs", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the example");
    // The app puts ana online itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = get_as(&app, API_TOKEN, "/v1/tenants/acme/agents").await;
        let online = v["agents"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["id"] == "ana" && x["presence"] == "online")
        });
        if online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the example never went online: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.post(&wa_messages(&[("15550007001", "take it")]))
            .await
            .status(),
        200
    );
    let ev = until(&app, |ev| count(ev, "15550007001", "accepted") > 0).await;
    // The app's own log: the offer, then the conversation as its own once the accepted
    // event reaches it over the stream.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    // Generous: the loop ends as soon as the app took the offer; a machine busy compiling
    // can take seconds to start a Python process. It waits without blocking the thread:
    // this test's runtime also drives the gateway's Redis connections, and the app's
    // stream stalls while it is blocked (the accepted event then never reaches the app).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.contains("\"took\": \"conv_") && Instant::now() < deadline {
        match rx.try_recv() {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let actions: Vec<&str> = of(&ev, "15550007001")
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["offered", "accepted"], "app log:\n{log}");
    assert_eq!(of(&ev, "15550007001")[1]["agent"], "ana");
    assert!(log.contains("\"offered\": \"conv_"), "{log}");
    assert!(log.contains("\"took\": \"conv_"), "{log}");
    app.stop().await;
}
