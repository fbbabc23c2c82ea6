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
        assert_eq!(app.post(&wa_messages(&[(contact, text)])).await.status(), 200);
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
    until(&a, |ev| {
        of(ev, "15550002002")
            .iter()
            .any(|a| a["action"] == "queued")
    })
    .await;
    // ben goes offline (grace 0): the first is requeued ahead of the second, which has
    // waited less.
    presence(&b, "ben", "offline").await;
    until(&a, |ev| {
        of(ev, "15550002001")
            .iter()
            .any(|a| a["action"] == "requeued")
    })
    .await;
    presence(&a, "ana", "online").await;
    let ev = until(&b, |ev| {
        of(ev, "15550002001")
            .iter()
            .filter(|a| a["action"] == "assigned")
            .count()
            == 2
            || assigned(ev, "15550002002").is_some()
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
    let ev = until(&a, |ev| {
        of(ev, "15550009001")
            .iter()
            .any(|a| a["action"] == "overflowed")
    })
    .await;
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
    assert_eq!((first["agent"].as_str(), first["team"].as_str()), (Some("sam"), Some("sales")));
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
    let ev = until(&a, |ev| {
        of(ev, "15550003001")
            .iter()
            .filter(|a| a["action"] == "assigned")
            .count()
            == 2
    })
    .await;
    let back = of(&ev, "15550003001")
        .into_iter()
        .rfind(|a| a["action"] == "assigned")
        .unwrap();
    assert_eq!(back["agent"], "sam", "{back}");
    assert_eq!(back["strategy"], "sticky_owner");
    assert_eq!(back["team"], "sales", "{back}");
    assert!(back["reason"].as_str().unwrap().contains("sticky"), "{back}");
    a.stop().await;
    b.stop().await;
}
