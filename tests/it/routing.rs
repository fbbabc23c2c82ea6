//! The routing engine end to end: signed webhooks in, assignments on the events stream,
//! the routing API, two routers sharing one Redis, and reprocessing after a crash.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::accept::StreamName;
use switchboard::config::{BackendKind, Config};

use crate::helpers::*;

/// acme: team support (alice cap 2, bob cap 2, vera viewer), team vip (victor cap 1);
/// rules: VIP list → team vip (priority 50, overflow to support after 1 s); "precio" or
/// Spanish numbers → team support with skills; default → support least_loaded.
pub const ROUTING: &str = r#"
[tenants.acme.routing]
default_team = "support"
default_strategy = "least_loaded"
sticky_window_secs = 3600
offline_grace_secs = 0
contact_lists = { vip = ["15550000001", "15550000002"] }
[tenants.acme.routing.teams.support]
[tenants.acme.routing.teams.vip]
[tenants.acme.routing.agents.alice]
teams = ["support"]
capacity = 2
skills = { spanish = 8 }
presence = "online"
[tenants.acme.routing.agents.bob]
teams = ["support"]
capacity = 2
skills = { spanish = 3 }
presence = "online"
[tenants.acme.routing.agents.vera]
role = "viewer"
teams = ["support"]
presence = "online"
[tenants.acme.routing.agents.victor]
teams = ["vip"]
capacity = 1
presence = "online"
[[tenants.acme.routing.rules]]
id = "vip"
when = { contact_lists = ["vip"] }
team = "vip"
strategy = "round_robin"
priority = 50
fallback_team = "support"
overflow_after_secs = 1
[[tenants.acme.routing.rules]]
id = "spanish"
when = { contact_prefixes = ["34"], keywords = ["precio"] }
team = "support"
strategy = "skills"
skills = ["spanish"]
"#;

pub fn routing_config(backend: BackendKind) -> Config {
    let toml = format!("{BASE_CONFIG}\n[routing]\nsweep_interval_ms = 100\n{ROUTING}");
    let mut c = Config::from_toml(&toml).expect("routing test config is valid");
    c.backend = backend;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    c
}

/// acme on the Redis backend with one team `t` of `agents` online agents `a0`... of
/// `capacity` each, least loaded; the key prefix and Redis location are the caller's.
pub fn one_team_config(agents: usize, capacity: usize) -> Config {
    let mut toml = format!(
        "{BASE_CONFIG}\n[routing]\nsweep_interval_ms = 100\n\
         [tenants.acme.routing]\ndefault_strategy = \"least_loaded\"\noffline_grace_secs = 0\n\
         [tenants.acme.routing.teams.t]\n"
    );
    for i in 0..agents {
        toml.push_str(&format!(
            "[tenants.acme.routing.agents.a{i}]\nteams = [\"t\"]\ncapacity = {capacity}\npresence = \"online\"\n"
        ));
    }
    let mut config = Config::from_toml(&toml).expect("valid");
    config.backend = BackendKind::Redis;
    config
}

/// A WhatsApp webhook with one text message per (contact, text).
pub fn wa_messages(msgs: &[(&str, &str)]) -> Vec<u8> {
    let messages: Vec<Value> = msgs
        .iter()
        .map(|(from, text)| {
            json!({"from": from, "id": unique_wamid(), "timestamp": "1749416383", "type": "text",
                   "text": {"body": text}})
        })
        .collect();
    let contacts: Vec<Value> = msgs
        .iter()
        .map(|(from, _)| json!({"profile": {"name": "Contact"}, "wa_id": from}))
        .collect();
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": contacts,
            "messages": messages
        }}]}]
    }))
    .unwrap()
}

impl TestApp {
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(API_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Events of kind message/assignment in stream order, waiting until `n` are there.
    pub async fn routed(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ev: Vec<Value> = self
                .events()
                .await
                .into_iter()
                .map(|e| e["event"].clone())
                .filter(|e| e["assignment"].is_object())
                .collect();
            if ev.len() >= n || Instant::now() > deadline {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn agent_loads(&self) -> HashMap<String, (u64, u64)> {
        let (status, v) = self
            .api(reqwest::Method::GET, "/v1/tenants/acme/agents", None)
            .await;
        assert_eq!(status, 200, "{v}");
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap().to_string(),
                    (a["load"].as_u64().unwrap(), a["capacity"].as_u64().unwrap()),
                )
            })
            .collect()
    }
}

fn assignment(ev: &Value) -> &Value {
    &ev["assignment"]
}

#[tokio::test]
async fn messages_get_an_explained_assignment_on_both_backends() {
    for backend in [BackendKind::Memory, BackendKind::Redis] {
        let app = spawn_with(routing_config(backend)).await;
        let body = wa_messages(&[
            ("16505550001", "hello"),
            ("16505550002", "hi"),
            ("15550000001", "I am a VIP"),
            ("34600111222", "¿Cuál es el precio?"),
        ]);
        assert_eq!(app.post(&body).await.status(), 200);
        let ev = app.routed(4).await;
        assert_eq!(ev.len(), 4, "{backend:?}: {ev:#?}");
        let by_contact: HashMap<&str, &Value> = ev
            .iter()
            .map(|e| (e["contact"]["id"].as_str().unwrap(), assignment(e)))
            .collect();
        let a = by_contact["16505550001"];
        assert_eq!(a["action"], "assigned");
        assert_eq!(a["team"], "support");
        assert_eq!(a["strategy"], "least_loaded");
        assert!(a.get("rule").is_none(), "the default applied: {a}");
        assert_eq!(a["candidates"], 2, "viewer vera is never a candidate: {a}");
        let b = by_contact["16505550002"];
        assert_ne!(a["agent"], b["agent"], "least loaded spreads them");
        let vip = by_contact["15550000001"];
        assert_eq!(vip["agent"], "victor");
        assert_eq!(vip["rule"], "vip");
        assert_eq!(vip["priority"], 50);
        let es = by_contact["34600111222"];
        assert_eq!(es["rule"], "spanish");
        assert_eq!(es["strategy"], "skills");
        let reason = es["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("rule spanish → team support, skills: "),
            "{reason}"
        );
        for e in &ev {
            let agent = assignment(e)["agent"].as_str().unwrap_or("");
            assert_ne!(agent, "vera");
        }
        // Statuses never carry or change assignments.
        // A delivered status of a message sent to the first contact (Meta's statuses shape).
        let status = serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
                "statuses": [{"id": unique_wamid(), "status": "delivered",
                              "timestamp": "1749416400", "recipient_id": "16505550001"}]
            }}]}]
        }))
        .unwrap();
        assert_eq!(app.post(&status).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = app.events().await;
        let statuses: Vec<&Value> = all
            .iter()
            .map(|e| &e["event"])
            .filter(|e| e["kind"] == "status")
            .collect();
        assert!(!statuses.is_empty());
        assert!(statuses.iter().all(|s| s.get("assignment").is_none()));
        let loads = app.agent_loads().await;
        assert_eq!(loads["victor"], (1, 1));
        assert_eq!(loads["alice"].0 + loads["bob"].0, 3);
        app.stop().await;
    }
}

#[tokio::test]
async fn waiting_conversations_are_served_by_priority_then_age_when_capacity_frees() {
    let app = spawn_with(routing_config(BackendKind::Redis)).await;
    // Fill support (alice 2 + bob 2), then three more wait.
    let fill: Vec<String> = (0..4).map(|i| format!("1650555100{i}")).collect();
    let fill_refs: Vec<(&str, &str)> = fill.iter().map(|c| (c.as_str(), "hi")).collect();
    assert_eq!(app.post(&wa_messages(&fill_refs)).await.status(), 200);
    app.routed(4).await;
    for c in ["16505552001", "16505552002"] {
        assert_eq!(
            app.post(&wa_messages(&[(c, "waiting")])).await.status(),
            200
        );
        app.routed(0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ev = app.routed(6).await;
    let waiting: Vec<&Value> = ev
        .iter()
        .filter(|e| assignment(e)["action"] == "queued")
        .collect();
    assert_eq!(waiting.len(), 2, "{ev:#?}");
    let (status, q) = app
        .api(reqwest::Method::GET, "/v1/tenants/acme/queues", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(q["total"], 2, "{q}");
    assert_eq!(q["queues"][0]["queue"], "team:support");

    // Close one of the first conversations: the oldest waiting one is assigned at once.
    let first_conv = ev[0]["conversation_id"].as_str().unwrap().to_string();
    let freed_agent = assignment(&ev[0])["agent"].as_str().unwrap().to_string();
    let (status, closed) = app
        .api(
            reqwest::Method::POST,
            &format!("/v1/tenants/acme/conversations/{first_conv}/close"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["assignment"]["action"], "closed");
    let ev = app.routed(8).await;
    let changes: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "assignment").collect();
    assert_eq!(changes.len(), 2, "a close and an assignment: {changes:#?}");
    let served = changes
        .iter()
        .find(|e| assignment(e)["action"] == "assigned")
        .expect("the queue head was assigned");
    assert_eq!(served["contact"]["id"], "16505552001", "oldest first");
    assert_eq!(assignment(served)["agent"], freed_agent.as_str());
    assert_eq!(assignment(served)["waited"], true);
    assert!(assignment(served)["wait_ms"].as_u64().is_some());
    assert_eq!(served["schema"], "switchboard.event.v1");
    assert!(served["event_id"].as_str().unwrap().starts_with("evt_"));

    // History of the served conversation: queued, then assigned.
    let conv = served["conversation_id"].as_str().unwrap();
    let (status, h) = app
        .api(
            reqwest::Method::GET,
            &format!("/v1/tenants/acme/conversations/{conv}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["assignment"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["queued", "assigned"]);
    assert_eq!(h["state"]["state"], "open");
    app.stop().await;
}

#[tokio::test]
async fn a_vip_waiting_past_its_timeout_overflows_to_the_fallback_team() {
    let app = spawn_with(routing_config(BackendKind::Redis)).await;
    // victor (cap 1) takes the first VIP; the second waits, then overflows to support.
    let body = wa_messages(&[("15550000001", "first"), ("15550000002", "second")]);
    assert_eq!(app.post(&body).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let overflowed = loop {
        let ev = app.routed(1).await;
        let assigned_after = ev.iter().find(|e| {
            e["kind"] == "assignment"
                && assignment(e)["action"] == "assigned"
                && e["contact"]["id"] == "15550000002"
        });
        if let Some(e) = assigned_after {
            break (ev.clone(), e.clone());
        }
        assert!(Instant::now() < deadline, "no overflow: {ev:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ev, served) = overflowed;
    assert!(
        ev.iter().any(|e| assignment(e)["action"] == "overflowed"
            && assignment(e)["queue"] == "rule:vip:fallback"
            && assignment(e)["team"] == "support"),
        "{ev:#?}"
    );
    let agent = assignment(&served)["agent"].as_str().unwrap();
    assert!(["alice", "bob"].contains(&agent), "{served}");
    assert_eq!(assignment(&served)["queue"], "rule:vip:fallback");
    assert_eq!(assignment(&served)["rule"], "vip");
    app.stop().await;
}

#[tokio::test]
async fn an_agent_going_offline_has_their_conversations_requeued_and_reassigned() {
    let app = spawn_with(routing_config(BackendKind::Redis)).await;
    let body = wa_messages(&[("16505553001", "a"), ("16505553002", "b")]);
    assert_eq!(app.post(&body).await.status(), 200);
    let ev = app.routed(2).await;
    let agents: HashSet<&str> = ev
        .iter()
        .map(|e| assignment(e)["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 2, "one each: {ev:#?}");
    // alice goes offline (grace 0): her conversation goes to bob, who has room.
    let (status, v) = app
        .api(
            reqwest::Method::PUT,
            "/v1/tenants/acme/agents/alice/presence",
            Some(json!({"presence": "offline"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["previous"], "online");
    let ev = app.routed(4).await;
    let changes: Vec<&str> = ev
        .iter()
        .filter(|e| e["kind"] == "assignment")
        .map(|e| assignment(e)["action"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["requeued", "assigned"], "{ev:#?}");
    let last = assignment(ev.last().unwrap());
    assert_eq!(last["agent"], "bob");
    let loads = app.agent_loads().await;
    assert_eq!(loads["alice"].0, 0);
    assert_eq!(loads["bob"].0, 2);
    // Unknown agents and bad bodies are refused with catalogue errors.
    let (status, v) = app
        .api(
            reqwest::Method::PUT,
            "/v1/tenants/acme/agents/nobody/presence",
            Some(json!({"presence": "online"})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_agent")));
    let (status, v) = app
        .api(
            reqwest::Method::PUT,
            "/v1/tenants/acme/agents/bob/presence",
            Some(json!({"presence": "sleeping"})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));
    app.stop().await;
}

#[tokio::test]
async fn transfer_reopen_and_sticky_through_the_api() {
    let app = spawn_with(routing_config(BackendKind::Memory)).await;
    assert_eq!(
        app.post(&wa_messages(&[("16505554001", "hi")]))
            .await
            .status(),
        200
    );
    let ev = app.routed(1).await;
    let conv = ev[0]["conversation_id"].as_str().unwrap().to_string();
    let owner = assignment(&ev[0])["agent"].as_str().unwrap().to_string();
    let other = if owner == "alice" { "bob" } else { "alice" };
    let path = |op: &str| format!("/v1/tenants/acme/conversations/{conv}/{op}");
    let (status, t) = app
        .api(
            reqwest::Method::POST,
            &path("transfer"),
            Some(json!({"agent": other})),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["assignment"]["agent"], other);
    assert_eq!(t["assignment"]["previous_agent"], owner.as_str());
    assert_eq!(t["assignment"]["strategy"], "manual");
    // A viewer cannot take it; neither can a full or unknown agent.
    let (status, v) = app
        .api(
            reqwest::Method::POST,
            &path("transfer"),
            Some(json!({"agent": "vera"})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")));
    let (status, v) = app
        .api(
            reqwest::Method::POST,
            &path("transfer"),
            Some(json!({"team": "ghosts"})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("unknown_team")));
    // Close, then the contact writes again: back to the last agent (sticky).
    let (status, _) = app.api(reqwest::Method::POST, &path("close"), None).await;
    assert_eq!(status, 200);
    let (status, v) = app.api(reqwest::Method::POST, &path("close"), None).await;
    assert_eq!((status, v["code"].as_str()), (409, Some("conflict")));
    assert_eq!(
        app.post(&wa_messages(&[("16505554001", "me again")]))
            .await
            .status(),
        200
    );
    let ev = app.routed(4).await;
    let back = ev.last().unwrap();
    assert_eq!(assignment(back)["agent"], other, "{ev:#?}");
    assert_eq!(assignment(back)["strategy"], "sticky_owner");
    // Close and reopen through the API: sticky again.
    app.api(reqwest::Method::POST, &path("close"), None).await;
    let (status, r) = app.api(reqwest::Method::POST, &path("reopen"), None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["assignment"]["agent"], other);
    let (status, v) = app
        .api(
            reqwest::Method::POST,
            "/v1/tenants/acme/conversations/conv_nope/reopen",
            None,
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("unknown_conversation"))
    );
    let (status, h) = app
        .api(
            reqwest::Method::GET,
            &format!("/v1/tenants/acme/conversations/{conv}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["assignment"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "assigned",
            "transferred",
            "closed",
            "assigned",
            "closed",
            "assigned"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn rule_sets_reload_without_restart_and_bad_ones_are_refused() {
    let config = routing_config(BackendKind::Redis);
    let a = spawn_with(config.clone()).await;
    let b = spawn_with(config).await; // a second replica on the same Redis
    let (status, cur) = a
        .api(reqwest::Method::GET, "/v1/tenants/acme/routing", None)
        .await;
    assert_eq!(status, 200, "{cur}");
    let version = cur["version"].as_u64().unwrap();
    assert_eq!(cur["origin"], "file");
    // A broken rule set: refused with every problem named; nothing changes.
    let mut bad = cur["routing"].clone();
    bad["rules"][0]["team"] = json!("nope");
    bad["rules"][1]["when"]["text_regex"] = json!("(unclosed");
    let (status, v) = a
        .api(reqwest::Method::PUT, "/v1/tenants/acme/routing", Some(bad))
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["code"], "invalid_rules");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("rules[0]") && msg.contains("text_regex"),
        "{msg}"
    );
    let (_, after) = a
        .api(reqwest::Method::GET, "/v1/tenants/acme/routing", None)
        .await;
    assert_eq!(after["version"], version);
    // A good one: everyone on round robin to bob only.
    let mut good = cur["routing"].clone();
    good["rules"] = json!([{"id": "all-to-bob", "agents": ["bob"], "strategy": "round_robin"}]);
    let (status, v) = a
        .api(
            reqwest::Method::PUT,
            &format!("/v1/tenants/acme/routing?if_version={version}"),
            Some(good.clone()),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], version + 1);
    // A stale writer loses.
    let (status, v) = a
        .api(
            reqwest::Method::PUT,
            &format!("/v1/tenants/acme/routing?if_version={version}"),
            Some(good),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("version_conflict"))
    );
    // The other replica converges within its sweep interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = b
            .api(reqwest::Method::GET, "/v1/tenants/acme/routing", None)
            .await;
        if v["version"] == version + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "replica b kept {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.post(&wa_messages(&[("16505555001", "x")])).await.status(),
        200
    );
    let ev = b.routed(1).await;
    assert_eq!(assignment(&ev[0])["rule"], "all-to-bob", "{ev:#?}");
    assert_eq!(assignment(&ev[0])["agent"], "bob");
    // Capacity through the API is a new version too.
    let (status, v) = a
        .api(
            reqwest::Method::PUT,
            "/v1/tenants/acme/agents/bob/capacity",
            Some(json!({"capacity": 7})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], version + 2);
    assert_eq!(a.agent_loads().await["bob"].1, 7);
    a.stop().await;
    b.stop().await;
}

/// Two routers (two gateways on one Redis) and thousands of conversations: no agent ever
/// holds more than their capacity, checked by sampling every agent's count while the load
/// runs and by recounting every open conversation from the events stream at the end.
#[tokio::test]
async fn capacity_is_never_exceeded_with_two_routers_and_thousands_of_conversations() {
    const AGENTS: usize = 8;
    const CAPACITY: usize = 40;
    const CONVERSATIONS: usize = 2400;
    let mut config = one_team_config(AGENTS, CAPACITY);
    config.redis.url = redis_url();
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let a = spawn_with(config.clone()).await;
    let b = spawn_with(config).await;

    // Sample every agent's load while the load runs.
    let sampler_app_url = a.url("/v1/tenants/acme/agents");
    let client = a.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut max_seen = 0u64;
        let mut samples = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let v: Value = client
                .get(&sampler_app_url)
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for ag in v["agents"].as_array().unwrap() {
                max_seen = max_seen.max(ag["load"].as_u64().unwrap());
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (max_seen, samples)
    });

    // 2400 distinct contacts in POSTs of 50, alternating between the two gateways, 8 at
    // a time; meanwhile conversations are closed through both gateways.
    let contacts: Vec<String> = (0..CONVERSATIONS).map(|i| format!("1777{i:07}")).collect();
    let bodies: Vec<Vec<u8>> = contacts
        .chunks(50)
        .map(|chunk| {
            let msgs: Vec<(&str, &str)> = chunk.iter().map(|c| (c.as_str(), "hello")).collect();
            wa_messages(&msgs)
        })
        .collect();
    let mut ok = 0;
    for round in bodies.chunks(8) {
        let res = futures_util::future::join_all(round.iter().enumerate().map(|(n, body)| {
            let app = if n % 2 == 0 { &a } else { &b };
            app.post_signed("meta_test", body, Some(SECRET))
        }))
        .await;
        ok += res.iter().filter(|r| r.status() == 200).count();
        // Close a few open conversations on each round, through both gateways.
        for (i, app) in [&a, &b].into_iter().enumerate() {
            let ev = app.events().await;
            let open: Vec<String> = ev
                .iter()
                .map(|e| &e["event"])
                .filter(|e| e["assignment"]["action"] == "assigned")
                .filter_map(|e| e["conversation_id"].as_str().map(str::to_string))
                .skip(i * 3)
                .take(3)
                .collect();
            for conv in open {
                app.api(
                    reqwest::Method::POST,
                    &format!("/v1/tenants/acme/conversations/{conv}/close"),
                    None,
                )
                .await;
            }
        }
    }
    assert_eq!(ok, bodies.len());
    // Wait for the inbound stream to drain.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut r = a.redis().await;
    loop {
        let inbound: usize = redis::cmd("XLEN")
            .arg(a.key("inbound"))
            .query_async(&mut r)
            .await
            .unwrap();
        if inbound == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "inbound not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_seen, samples) = sampler.await.unwrap();
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(
        max_seen <= CAPACITY as u64,
        "an agent held {max_seen} > {CAPACITY}"
    );

    // Recount from the stream: the change with the highest `seq` of each conversation says
    // who holds it (two routers publish concurrently, so stream order is not change order).
    let events = a.events().await;
    let mut latest: HashMap<String, (u64, Option<String>)> = HashMap::new();
    let mut seen_messages = HashSet::new();
    for e in &events {
        let e = &e["event"];
        let Some(conv) = e["conversation_id"].as_str() else {
            continue;
        };
        if e["kind"] == "message" {
            seen_messages.insert(e["event_id"].as_str().unwrap().to_string());
        }
        let act = &e["assignment"];
        let seq = act["seq"].as_u64().unwrap_or(0);
        let holds = match act["action"].as_str() {
            Some("assigned") | Some("transferred") | Some("kept") => {
                act["agent"].as_str().map(str::to_string)
            }
            _ => None,
        };
        let entry = latest.entry(conv.to_string()).or_insert((0, None));
        if seq >= entry.0 {
            *entry = (seq, holds);
        }
    }
    let holder: HashMap<String, Option<String>> =
        latest.into_iter().map(|(c, (_, h))| (c, h)).collect();
    assert_eq!(
        seen_messages.len(),
        CONVERSATIONS,
        "every message routed once"
    );
    let mut count: HashMap<String, usize> = HashMap::new();
    for h in holder.values().flatten() {
        *count.entry(h.clone()).or_default() += 1;
    }
    let loads = a.agent_loads().await;
    for (agent, (load, cap)) in &loads {
        assert!(load <= cap, "{agent} holds {load} > {cap}");
        assert_eq!(
            count.get(agent).copied().unwrap_or(0) as u64,
            *load,
            "{agent}: the stream and the store agree"
        );
    }
    let total: u64 = loads.values().map(|l| l.0).sum();
    assert_eq!(
        total as usize,
        AGENTS * CAPACITY,
        "every slot in use while conversations wait"
    );
    let (_, q) = a
        .api(reqwest::Method::GET, "/v1/tenants/acme/queues", None)
        .await;
    let open_or_waiting =
        holder.values().filter(|h| h.is_some()).count() + q["total"].as_u64().unwrap() as usize;
    let closed = CONVERSATIONS - open_or_waiting;
    assert!(closed > 0, "some were closed along the way");
    a.stop().await;
    b.stop().await;
}

/// A router that crashed after deciding but before publishing: the entries are routed
/// again and get the same decisions, and capacity is counted once.
#[tokio::test]
async fn reprocessing_after_a_router_crash_yields_the_same_assignments() {
    use switchboard::route::store::redis::RedisStore;
    use switchboard::route::store::RoutingStore;
    use switchboard::route::strategy::Strategies;
    use switchboard::route::Engine;

    // A gateway without routing turns the webhook into unassigned events: exactly what the
    // router reads from the inbound stream.
    let mut plain = routing_config(BackendKind::Redis);
    plain.routing.enabled = false;
    let app = spawn_with(plain.clone()).await;
    let body = wa_messages(&[
        ("16505556001", "a"),
        ("16505556002", "b"),
        ("16505556003", "c"),
    ]);
    assert_eq!(app.post(&body).await.status(), 200);
    let events = app.wait_for_events(3).await;
    let entries: Vec<switchboard::accept::StreamEntry> = events
        .iter()
        .map(|e| switchboard::accept::StreamEntry {
            id: e["stream_id"].as_str().unwrap().to_string(),
            key: e["event"]["event_id"].as_str().unwrap().to_string(),
            payload: e["event"].to_string(),
        })
        .collect();
    assert!(entries
        .iter()
        .all(|e| !e.payload.contains("\"assignment\"")));

    let config = routing_config(BackendKind::Redis);
    let limits = switchboard::accept::Limits::from_config(&config);
    let backend = switchboard::accept::Backend::Redis(Box::new(
        switchboard::accept::redis::RedisBackend::new(&config.redis, limits).unwrap(),
    ));
    let client = redis::Client::open(config.redis.url.as_str()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let store = RoutingStore::Redis(Box::new(RedisStore::new(
        switchboard::accept::conn::RedisConn::Single(conn),
        &config.redis.key_prefix,
        Duration::from_secs(2),
    )));
    let file = config
        .tenants
        .iter()
        .filter_map(|(id, t)| t.routing.clone().map(|r| (id.clone(), r)))
        .collect();
    let engine = Engine::start(
        store,
        backend,
        Strategies::builtin(),
        config.tenants.keys().cloned().collect(),
        file,
    )
    .await
    .unwrap();
    let now = switchboard::route::engine::now_ms();
    let mut first = entries.clone();
    let out = engine.route_batch(&mut first, now).await.unwrap();
    assert_eq!(out.decisions, 3);
    let loads_after_first = engine.agents("acme").await.unwrap();
    // "Crash": nothing was published. The same entries come back from the pending list,
    // later, and are decided again.
    let mut again = entries.clone();
    engine.route_batch(&mut again, now + 40_000).await.unwrap();
    for (x, y) in first.iter().zip(&again) {
        let x: Value = serde_json::from_str(&x.payload).unwrap();
        let y: Value = serde_json::from_str(&y.payload).unwrap();
        assert!(x["assignment"]["agent"].is_string(), "{x}");
        assert_eq!(x["assignment"], y["assignment"]);
        assert_eq!(
            x["message"], y["message"],
            "the rest of the event is untouched"
        );
    }
    assert_eq!(
        engine.agents("acme").await.unwrap(),
        loads_after_first,
        "no capacity counted twice"
    );
    let _ = StreamName::Events;
    app.stop().await;
}

/// A strategy registered by the embedding program can be named by rules (docs/routing.md
/// "Writing your own"); a rule naming an unknown one stops the gateway at start.
#[tokio::test]
async fn a_registered_strategy_is_used_by_rules_and_unknown_ones_are_refused() {
    use switchboard::route::strategy::{Candidate, RankContext, Strategies, Strategy};
    use switchboard::startup::{Application, Options};

    /// Reverse alphabetical: bob before alice, whatever their loads.
    struct Reverse;
    impl Strategy for Reverse {
        fn name(&self) -> &str {
            "reverse"
        }
        fn rank(&self, _: &RankContext<'_>, c: &mut Vec<Candidate<'_>>) {
            c.sort_by(|a, b| b.agent.id.cmp(&a.agent.id));
        }
    }
    let mut config = routing_config(BackendKind::Memory);
    let routing = config
        .tenants
        .get_mut("acme")
        .unwrap()
        .routing
        .as_mut()
        .unwrap();
    routing.default_strategy = "reverse".into();
    routing.rules.clear();
    let refused = Application::build(config.clone()).await;
    let err = format!("{:#}", refused.err().expect("unknown strategy refused"));
    assert!(err.contains("\"reverse\": unknown strategy"), "{err}");

    let app = Application::build_with(
        config,
        Options {
            strategies: Strategies::builtin().with(Reverse),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let port = app.port();
    let handle = app.server_handle();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let body = wa_messages(&[("16505557001", "a"), ("16505557002", "b")]);
    let res = client
        .post(format!("http://127.0.0.1:{port}/webhooks/meta_test"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            switchboard::verify::meta::sign_sha256(SECRET, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let agents = loop {
        let v: Value = client
            .get(format!("http://127.0.0.1:{port}/v1/events?limit=10"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let agents: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| {
                i["event"]["assignment"]["agent"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        if agents.len() == 2 || Instant::now() > deadline {
            break agents;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // victor is in team vip only; support = alice, bob: reverse puts bob first, then bob
    // again (capacity 2).
    assert_eq!(agents, ["bob", "bob"]);
    handle.stop(true).await;
}

#[tokio::test]
async fn routing_metrics_move() {
    let app = spawn_with(routing_config(BackendKind::Memory)).await;
    assert_eq!(
        app.post(&wa_messages(&[("16505558001", "x")]))
            .await
            .status(),
        200
    );
    app.routed(1).await;
    let m = app.metrics().await;
    assert!(
        counter(
            &m,
            "switchboard_routing_assignments_total",
            &[("action", "assigned")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        counter(
            &m,
            "switchboard_routing_decision_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        counter(
            &m,
            "switchboard_routed_events_total",
            &[("router", "rules")]
        ) >= 1.0
    );
    app.stop().await;
}

/// `POST /v1/routing/reload` re-reads the configuration file: a changed routing section
/// becomes a new version; a broken file is refused and changes nothing.
#[tokio::test]
async fn routing_reloads_from_the_configuration_file() {
    use switchboard::startup::{Application, Options};
    let dir = std::env::temp_dir().join(format!("sb-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchboard.toml");
    let base = format!("{BASE_CONFIG}\n[routing]\nsweep_interval_ms = 100\n{ROUTING}");
    std::fs::write(&path, &base).unwrap();
    let config = Config::load(Some(&path)).unwrap();
    let app = Application::build_with(
        config,
        Options {
            config_path: Some(path.clone()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let port = app.port();
    let handle = app.server_handle();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let get_version = || async {
        let v: Value = client
            .get(url("/v1/tenants/acme/routing"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    let before = get_version().await;
    let reload = || async {
        let res = client
            .post(url("/v1/routing/reload"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    // Unchanged file: nothing to do.
    let (status, v) = reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], json!([]));
    // A broken edit: refused, old rules stay.
    std::fs::write(
        &path,
        base.replace(
            "strategy = \"skills\"",
            "strategy = \"skills\"\nteam = \"vip\"",
        ),
    )
    .unwrap();
    let (status, v) = reload().await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("invalid_rules")),
        "{v}"
    );
    assert_eq!(get_version().await["version"], before["version"]);
    // A good edit: a new version, from the file.
    std::fs::write(
        &path,
        base.replace("sticky_window_secs = 3600", "sticky_window_secs = 60"),
    )
    .unwrap();
    let (status, v) = reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"][0]["tenant"], "acme");
    let after = get_version().await;
    assert_eq!(after["version"], before["version"].as_u64().unwrap() + 1);
    assert_eq!(after["routing"]["sticky_window_secs"], 60);
    assert_eq!(after["origin"], "file");
    handle.stop(true).await;
    let _ = std::fs::remove_dir_all(&dir);
}
