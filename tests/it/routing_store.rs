//! Routing store conformance: the same scenarios against the memory store and the Redis
//! store (real Redis), with a virtual clock. Every decision must be identical between the
//! two (compared as parsed JSON), and each must be what the contract in
//! src/route/store/mod.rs says.

use std::time::Duration;

use serde_json::Value;
use switchboard::config::routing::{Offer, Presence};
use switchboard::route::store::memory::MemoryStore;
use switchboard::route::store::redis::RedisStore;
use switchboard::route::store::{
    AgentSpec, Answer, AnswerRefused, ConvState, Decided, DequeueItem, RouteItem, RouteMode,
    Routed, RoutingStore, RulesetRecord, Settings, SnapshotRequest, TransferRefused,
    VersionConflict,
};

use crate::helpers::*;

const T0: u64 = 1_780_000_000_000;

fn settings() -> Settings {
    Settings {
        sticky_window_ms: 3_600_000,
        offline_grace_ms: 60_000,
        keep_offline: false,
        auto_close_after_ms: 86_400_000,
        max_queued: 100,
        closed_ttl_ms: 86_400_000,
    }
}

async fn stores() -> Vec<RoutingStore> {
    let url = redis_url();
    require_redis(&url).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    vec![
        RoutingStore::Memory(MemoryStore::new()),
        RoutingStore::Redis(Box::new(RedisStore::new(
            switchboard::accept::conn::RedisConn::Single(conn),
            &format!("rt-{}", uuid::Uuid::new_v4().simple()),
            Duration::from_secs(5),
        ))),
    ]
}

fn spec(id: &str, capacity: u32, channel: &[(&str, u32)]) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        capacity,
        channel_capacity: channel.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
        initial_presence: Presence::Online,
        teams: vec!["support".into()],
    }
}

fn record(version: u64) -> RulesetRecord {
    RulesetRecord {
        version,
        json: "{}".into(),
        origin: "api".into(),
        file_digest: String::new(),
        updated_ms: 0,
    }
}

async fn setup(s: &RoutingStore, agents: &[AgentSpec]) {
    s.apply_ruleset("acme", &record(1), agents, Some(0), T0)
        .await
        .unwrap()
        .unwrap();
}

fn item(event: &str, conv: &str, candidates: &[&str]) -> RouteItem {
    RouteItem {
        event_id: event.into(),
        conv: conv.into(),
        channel: "whatsapp".into(),
        meta: r#"{"source":"meta_test","provider":"meta","channel":"whatsapp","contact":{"id":"c"},"business":{"id":"b"}}"#.into(),
        mode: RouteMode::Message,
        rule: Some("r1".into()),
        target: "rule:r1".into(),
        queue: "team:support".into(),
        team: Some("support".into()),
        strategy: "least_loaded".into(),
        priority: 0,
        fallback_queue: None,
        fallback_team: None,
        fallback_strategy: String::new(),
        overflow_ms: 0,
        reason: "rule r1 → team support, least_loaded".into(),
        candidates: candidates.iter().map(|c| c.to_string()).collect(),
        considered: candidates.len() as u32,
        sticky: false,
        offer: None,
    }
}

/// A queued conversation of team:support to assign to one of `candidates`.
fn deq(conv: &str, candidates: &[&str]) -> DequeueItem {
    DequeueItem {
        conv: conv.into(),
        queue: "team:support".into(),
        team: Some("support".into()),
        strategy: "least_loaded".into(),
        reason: "capacity freed".into(),
        candidates: candidates.iter().map(|c| c.to_string()).collect(),
        considered: candidates.len() as u32,
        offer: None,
    }
}

/// The heads of every queue, in service order.
async fn heads(s: &RoutingStore) -> Vec<switchboard::route::store::QueuedConv> {
    s.snapshot(
        "acme",
        &SnapshotRequest {
            queue_heads: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .queued
}

fn v(d: &Decided) -> Value {
    serde_json::from_str(&d.assignment).unwrap()
}

/// Runs `scenario` on every store and checks they all produced the same transcript.
macro_rules! conform {
    ($name:ident, |$s:ident| $body:block) => {
        #[tokio::test]
        async fn $name() {
            let mut transcripts: Vec<(String, Vec<Value>)> = Vec::new();
            for $s in stores().await {
                let name = $s.name().to_string();
                let t: Vec<Value> = async { $body }.await;
                transcripts.push((name, t));
            }
            let (first_name, first) = &transcripts[0];
            for (name, t) in &transcripts[1..] {
                assert_eq!(
                    t.len(),
                    first.len(),
                    "{name} vs {first_name}: transcript length"
                );
                for (i, (a, b)) in first.iter().zip(t).enumerate() {
                    assert_eq!(a, b, "step {i}: {first_name} and {name} differ");
                }
            }
        }
    };
}

async fn load(s: &RoutingStore, agent: &str) -> u32 {
    agent_live(s, agent).await.load
}

conform!(assigns_in_rank_order_within_capacity_then_queues, |s| {
    setup(&s, &[spec("a", 1, &[]), spec("b", 2, &[])]).await;
    let st = settings();
    let d = s
        .route(
            "acme",
            &st,
            T0,
            &[],
            &[
                item("e1", "c1", &["a", "b"]),
                item("e2", "c2", &["a", "b"]),
                item("e3", "c3", &["a", "b"]),
                item("e4", "c4", &["a", "b"]),
            ],
        )
        .await
        .unwrap();
    let agents: Vec<Value> = d.iter().map(|d| v(d)["agent"].clone()).collect();
    assert_eq!(
        agents,
        [Value::from("a"), "b".into(), "b".into(), Value::Null]
    );
    assert_eq!(
        v(&d[0])["reason"],
        "rule r1 → team support, least_loaded: a 1/1 open, 2 candidates"
    );
    assert_eq!(d[3].action, "queued");
    assert_eq!(v(&d[3])["queued"], true);
    assert_eq!(load(&s, "a").await, 1);
    assert_eq!(load(&s, "b").await, 2);
    let q = s.queues("acme").await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].queue.as_str(), q[0].depth, q[0].oldest_ms),
        ("team:support", 1, T0)
    );
    d.iter().map(v).collect()
});

conform!(
    reprocessing_an_event_returns_the_same_decision_and_counts_nothing,
    |s| {
        setup(&s, &[spec("a", 3, &[])]).await;
        let st = settings();
        let first = s
            .route("acme", &st, T0, &[], &[item("e1", "c1", &["a"])])
            .await
            .unwrap();
        let again = s
            .route("acme", &st, T0 + 5000, &[], &[item("e1", "c1", &["a"])])
            .await
            .unwrap();
        assert_eq!(v(&first[0]), v(&again[0]));
        assert_eq!(load(&s, "a").await, 1, "capacity counted once");
        // A later message of the open conversation keeps its owner.
        let kept = s
            .route("acme", &st, T0 + 6000, &[], &[item("e2", "c1", &["a"])])
            .await
            .unwrap();
        assert_eq!(kept[0].action, "kept");
        assert_eq!(load(&s, "a").await, 1);
        vec![v(&first[0]), v(&again[0]), v(&kept[0])]
    }
);

conform!(
    close_frees_capacity_and_a_drain_serves_the_queue_in_order,
    |s| {
        setup(&s, &[spec("a", 1, &[])]).await;
        let st = settings();
        let mut out = Vec::new();
        s.route("acme", &st, T0, &[], &[item("e1", "c1", &["a"])])
            .await
            .unwrap();
        // Three wait: normal at T0+1, VIP (priority 50) at T0+2, normal at T0+3.
        let mut vip = item("e3", "c3", &["a"]);
        vip.priority = 50;
        for (t, it) in [
            (T0 + 1, item("e2", "c2", &["a"])),
            (T0 + 2, vip),
            (T0 + 3, item("e4", "c4", &["a"])),
        ] {
            let d = s.route("acme", &st, t, &[], &[it]).await.unwrap();
            assert_eq!(d[0].action, "queued");
            out.push(v(&d[0]));
        }
        let queued = heads(&s).await;
        let order: Vec<&str> = queued.iter().map(|q| q.conv.as_str()).collect();
        assert_eq!(order, ["c3", "c2", "c4"], "priority first, then oldest");
        assert_eq!(queued[0].priority, 50);
        assert_eq!(queued[1].queued_ms, T0 + 1);

        let closed = s
            .close("acme", &st, T0 + 10_000, "c1", "done")
            .await
            .unwrap()
            .unwrap();
        assert!(closed.freed);
        assert_eq!(v(&closed)["previous_agent"], "a");
        out.push(v(&closed));
        assert!(s
            .close("acme", &st, T0 + 10_001, "c1", "again")
            .await
            .unwrap()
            .is_none());
        let r = s
            .dequeue(
                "acme",
                &st,
                T0 + 12_000,
                &[deq("c3", &["a"]), deq("c2", &["a"])],
            )
            .await
            .unwrap();
        let got = r[0].as_ref().expect("VIP assigned");
        assert!(r[1].is_none(), "a is full again");
        assert_eq!(v(got)["agent"], "a");
        assert_eq!(v(got)["waited"], true);
        assert_eq!(got.wait_ms, Some(12_000 - 2));
        out.push(v(got));
        // The outbox holds the close and the assignment, with stable ids.
        let ob = s.outbox("acme", 10).await.unwrap();
        assert_eq!(ob.len(), 2);
        assert_eq!(
            ob[0].event_id,
            switchboard::route::store::outbox_event_id("c1", 2)
        );
        assert_eq!(
            ob[1].event_id,
            switchboard::route::store::outbox_event_id("c3", 2)
        );
        s.outbox_ack("acme", &[ob[0].id.clone()]).await.unwrap();
        assert_eq!(s.outbox("acme", 10).await.unwrap().len(), 1);
        let (live, history) = s.conversation("acme", "c3").await.unwrap().unwrap();
        assert_eq!(live.state, ConvState::Open);
        assert_eq!(history.len(), 2, "queued, then assigned");
        out
    }
);

conform!(
    a_returning_contact_goes_back_to_the_last_agent_within_the_window,
    |s| {
        let mut b = spec("b", 5, &[]);
        b.teams = vec!["sales".into()];
        setup(&s, &[spec("a", 5, &[]), b]).await;
        let st = settings();
        let mut out = Vec::new();
        let d = s
            .route("acme", &st, T0, &[], &[item("e1", "c1", &["b", "a"])])
            .await
            .unwrap();
        assert_eq!(v(&d[0])["agent"], "b");
        s.close("acme", &st, T0 + 1000, "c1", "done").await.unwrap();
        let mut again = item("e2", "c1", &["a", "b"]);
        again.sticky = true;
        let d = s
            .route("acme", &st, T0 + 60_000, &[], &[again])
            .await
            .unwrap();
        assert_eq!(v(&d[0])["agent"], "b");
        assert_eq!(d[0].strategy, "sticky_owner");
        // The agent's own team, not the rule's.
        assert_eq!(v(&d[0])["team"], "sales");
        assert!(v(&d[0])["reason"].as_str().unwrap().contains("sticky"));
        out.push(v(&d[0]));
        // Past the window: the ranking decides.
        s.close("acme", &st, T0 + 61_000, "c1", "done")
            .await
            .unwrap();
        let mut late = item("e3", "c1", &["a", "b"]);
        late.sticky = true;
        let d = s
            .route("acme", &st, T0 + 61_000 + 3_600_001, &[], &[late])
            .await
            .unwrap();
        assert_eq!(v(&d[0])["agent"], "a");
        out.push(v(&d[0]));
        out
    }
);

conform!(nobody_jumps_a_waiting_queue, |s| {
    setup(&s, &[spec("a", 1, &[])]).await;
    let st = settings();
    s.route("acme", &st, T0, &[], &[item("e1", "c1", &["a"])])
        .await
        .unwrap();
    s.route("acme", &st, T0 + 1, &[], &[item("e2", "c2", &["a"])])
        .await
        .unwrap();
    s.close("acme", &st, T0 + 2, "c1", "done").await.unwrap();
    // a has room, but c2 was waiting first: c3 queues behind it.
    let d = s
        .route("acme", &st, T0 + 3, &[], &[item("e3", "c3", &["a"])])
        .await
        .unwrap();
    assert_eq!(d[0].action, "queued");
    assert!(v(&d[0])["reason"]
        .as_str()
        .unwrap()
        .contains("1 already waiting"));
    vec![v(&d[0])]
});

conform!(
    offline_owner_is_requeued_after_grace_and_reassigned_on_message,
    |s| {
        setup(&s, &[spec("a", 2, &[]), spec("b", 2, &[])]).await;
        let st = settings();
        let mut out = Vec::new();
        s.route(
            "acme",
            &st,
            T0,
            &[],
            &[item("e1", "c1", &["a"]), item("e2", "c2", &["a"])],
        )
        .await
        .unwrap();
        let prev = s
            .set_presence("acme", &st, T0 + 1000, "a", Presence::Offline)
            .await
            .unwrap();
        assert_eq!(prev, Presence::Online);
        // Within the grace period, a message keeps the owner.
        let d = s
            .route("acme", &st, T0 + 2000, &[], &[item("e3", "c1", &["b"])])
            .await
            .unwrap();
        assert_eq!(d[0].action, "kept");
        out.push(v(&d[0]));
        // Nothing is due yet.
        let r = s.sweep("acme", &st, T0 + 30_000).await.unwrap();
        assert_eq!(r.requeued, 0);
        // Past the grace: both conversations go back to their queue.
        let r = s.sweep("acme", &st, T0 + 61_000).await.unwrap();
        assert_eq!(r.requeued, 2);
        assert_eq!(load(&s, "a").await, 0);
        let q = s.queues("acme").await.unwrap();
        assert_eq!(q[0].depth, 2);
        // They keep their place: the time they first began waiting, not the requeue's.
        assert_eq!(
            q[0].oldest_ms, T0,
            "a requeue keeps the original enqueue time"
        );
        let ob = s.outbox("acme", 10).await.unwrap();
        assert_eq!(ob.len(), 2);
        for e in &ob {
            let a: Value = serde_json::from_str(&e.assignment).unwrap();
            assert_eq!(a["action"], "requeued");
            assert_eq!(a["previous_agent"], "a");
            out.push(a);
        }
        // A message of a queued conversation waits (no double queueing).
        let d = s
            .route("acme", &st, T0 + 62_000, &[], &[item("e4", "c1", &["b"])])
            .await
            .unwrap();
        assert_eq!(d[0].action, "waiting");
        out.push(v(&d[0]));
        out
    }
);

conform!(
    offline_owner_past_grace_loses_the_conversation_to_the_next_message,
    |s| {
        setup(&s, &[spec("a", 2, &[]), spec("b", 2, &[])]).await;
        let st = settings();
        s.route("acme", &st, T0, &[], &[item("e1", "c1", &["a"])])
            .await
            .unwrap();
        s.set_presence("acme", &st, T0, "a", Presence::Offline)
            .await
            .unwrap();
        // The sweep has not run yet, but the grace is over: the message reassigns.
        let d = s
            .route("acme", &st, T0 + 61_000, &[], &[item("e2", "c1", &["b"])])
            .await
            .unwrap();
        assert_eq!(d[0].action, "assigned");
        assert_eq!(v(&d[0])["previous_agent"], "a");
        assert!(d[0].freed);
        assert_eq!(load(&s, "a").await, 0);
        assert_eq!(load(&s, "b").await, 1);
        vec![v(&d[0])]
    }
);

conform!(waiting_too_long_overflows_to_the_fallback_queue, |s| {
    setup(&s, &[spec("a", 0, &[])]).await;
    let st = settings();
    let mut it = item("e1", "c1", &[]);
    it.fallback_queue = Some("rule:r1:fallback".into());
    it.fallback_team = Some("overflow".into());
    it.fallback_strategy = "round_robin".into();
    it.overflow_ms = 30_000;
    let d = s.route("acme", &st, T0, &[], &[it]).await.unwrap();
    assert_eq!(d[0].action, "queued");
    assert_eq!(
        s.sweep("acme", &st, T0 + 29_999).await.unwrap().overflowed,
        0
    );
    assert_eq!(
        s.sweep("acme", &st, T0 + 30_000).await.unwrap().overflowed,
        1
    );
    let q = s.queues("acme").await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].queue, "rule:r1:fallback");
    assert_eq!(q[0].oldest_ms, T0, "keeps its age");
    let ob = s.outbox("acme", 10).await.unwrap();
    let a: Value = serde_json::from_str(&ob[0].assignment).unwrap();
    assert_eq!(a["action"], "overflowed");
    assert_eq!(a["team"], "overflow");
    assert_eq!(a["strategy"], "round_robin");
    // It now waits for the fallback target, which the engine serves with its requirements.
    let queued = heads(&s).await;
    assert_eq!(queued[0].target.as_deref(), Some("rule:r1:fallback"));
    assert_eq!(queued[0].rule.as_deref(), Some("r1"));
    vec![v(&d[0]), a]
});

conform!(idle_conversations_close_and_free_capacity, |s| {
    setup(&s, &[spec("a", 1, &[])]).await;
    let mut st = settings();
    st.auto_close_after_ms = 600_000;
    s.route("acme", &st, T0, &[], &[item("e1", "c1", &["a"])])
        .await
        .unwrap();
    s.route("acme", &st, T0 + 300_000, &[], &[item("e2", "c1", &["a"])])
        .await
        .unwrap();
    assert_eq!(
        s.sweep("acme", &st, T0 + 600_000).await.unwrap().closed,
        0,
        "activity renewed"
    );
    assert_eq!(s.sweep("acme", &st, T0 + 900_000).await.unwrap().closed, 1);
    assert_eq!(load(&s, "a").await, 0);
    let ob = s.outbox("acme", 10).await.unwrap();
    let a: Value = serde_json::from_str(&ob[0].assignment).unwrap();
    assert_eq!(a["action"], "closed");
    vec![a]
});

conform!(manual_transfer_respects_presence_and_capacity, |s| {
    setup(
        &s,
        &[spec("a", 2, &[]), spec("b", 1, &[]), spec("c", 1, &[])],
    )
    .await;
    let st = settings();
    let mut out = Vec::new();
    s.route(
        "acme",
        &st,
        T0,
        &[],
        &[item("e1", "c1", &["a"]), item("e2", "c2", &["b"])],
    )
    .await
    .unwrap();
    let r = s
        .transfer_agent("acme", &st, T0, "c1", "b", "transfer to b")
        .await
        .unwrap();
    assert_eq!(r, Err(TransferRefused::Full("b".into(), 1, 1)));
    s.set_presence("acme", &st, T0, "c", Presence::Offline)
        .await
        .unwrap();
    let r = s
        .transfer_agent("acme", &st, T0, "c1", "c", "transfer to c")
        .await
        .unwrap();
    assert_eq!(r, Err(TransferRefused::Offline("c".into())));
    s.set_presence("acme", &st, T0, "c", Presence::Away)
        .await
        .unwrap();
    let d = s
        .transfer_agent("acme", &st, T0 + 5, "c1", "c", "transfer to c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v(&d)["agent"], "c");
    assert_eq!(v(&d)["previous_agent"], "a");
    assert!(d.freed);
    assert_eq!(load(&s, "a").await, 0);
    assert_eq!(load(&s, "c").await, 1);
    out.push(v(&d));
    let r = s
        .transfer_agent("acme", &st, T0, "nope", "a", "x")
        .await
        .unwrap();
    assert_eq!(r, Err(TransferRefused::NotActive));
    out
});

conform!(channel_capacity_is_enforced_separately, |s| {
    setup(&s, &[spec("a", 3, &[("whatsapp", 1)])]).await;
    let st = settings();
    let mut sms = item("e2", "c2", &["a"]);
    sms.channel = "sms".into();
    let d = s
        .route(
            "acme",
            &st,
            T0,
            &[],
            &[item("e1", "c1", &["a"]), item("e3", "c3", &["a"]), sms],
        )
        .await
        .unwrap();
    let actions: Vec<&str> = d.iter().map(|d| d.action.as_str()).collect();
    assert_eq!(actions, ["assigned", "queued", "assigned"]);
    d.iter().map(v).collect()
});

conform!(full_queues_leave_new_conversations_unrouted, |s| {
    setup(&s, &[spec("a", 0, &[])]).await;
    let mut st = settings();
    st.max_queued = 1;
    let d = s
        .route(
            "acme",
            &st,
            T0,
            &[],
            &[item("e1", "c1", &[]), item("e2", "c2", &[])],
        )
        .await
        .unwrap();
    assert_eq!(d[0].action, "queued");
    assert_eq!(
        d[1].action, "unrouted",
        "the cap holds even behind a waiting queue"
    );
    let d2 = s
        .route("acme", &st, T0, &[], &[item("e3", "c3", &[])])
        .await
        .unwrap();
    let mut other = item("e4", "c4", &[]);
    other.queue = "team:other".into();
    let d3 = s.route("acme", &st, T0, &[], &[other]).await.unwrap();
    assert_eq!(d2[0].action, "unrouted");
    assert_eq!(d3[0].action, "unrouted");
    assert_eq!(s.queues("acme").await.unwrap()[0].depth, 1);
    vec![v(&d[0]), v(&d[1]), v(&d2[0]), v(&d3[0])]
});

conform!(
    rule_set_writes_are_compare_and_set_and_set_capacities,
    |s| {
        setup(&s, &[spec("a", 2, &[("sms", 1)]), spec("b", 1, &[])]).await;
        let stale = s
            .apply_ruleset("acme", &record(2), &[spec("a", 1, &[])], Some(0), T0)
            .await
            .unwrap();
        assert_eq!(stale, Err(VersionConflict(1)));
        s.apply_ruleset("acme", &record(2), &[spec("a", 4, &[])], Some(1), T0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.ruleset_versions(&["acme".into(), "nobody".into()])
                .await
                .unwrap(),
            [2, 0]
        );
        assert_eq!(s.ruleset("acme").await.unwrap().unwrap().version, 2);
        let snap = s
            .snapshot(
                "acme",
                &SnapshotRequest {
                    agents: vec!["a".into(), "b".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(snap.agents["a"].capacity, 4);
        assert!(snap.agents["a"].channel_capacity.is_empty());
        assert_eq!(
            snap.agents["b"].capacity, 0,
            "removed agents take nothing new"
        );
        assert_eq!(snap.agents["a"].presence, Presence::Online);
        vec![]
    }
);

// Privacy erasure: an open conversation frees its agent's slot, a queued one leaves its
// queue, both are forgotten (state, history, decisions) with their unpublished outbox
// entries, other conversations are untouched, and erasing again changes nothing.
conform!(erase_forgets_conversations_and_frees_their_slots, |s| {
    setup(&s, &[spec("a", 1, &[])]).await;
    let st = settings();
    let mut t = Vec::new();
    for (ev, conv) in [("e1", "c1"), ("e2", "c2"), ("e3", "c3")] {
        let d = s
            .route("acme", &st, T0, &[], &[item(ev, conv, &["a"])])
            .await
            .unwrap();
        t.push(v(&d[0]));
    }
    // c1 open with a, c2 and c3 queued; closing c3 leaves an outbox entry.
    s.close("acme", &st, T0 + 1, "c3", "test").await.unwrap();
    assert_eq!(load(&s, "a").await, 1);
    let erased = s
        .erase(
            "acme",
            T0 + 2,
            &["c1".into(), "c2".into(), "c3".into(), "nope".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        (erased.conversations, erased.released, erased.unqueued),
        (3, 1, 1),
        "{}",
        s.name()
    );
    assert!(erased.outbox >= 1, "{}: {erased:?}", s.name());
    assert_eq!(load(&s, "a").await, 0, "{}: a's slot is free", s.name());
    for conv in ["c1", "c2", "c3"] {
        assert!(s.conversation("acme", conv).await.unwrap().is_none());
    }
    assert!(s.queues("acme").await.unwrap().iter().all(|q| q.depth == 0));
    let outbox = s.outbox("acme", 100).await.unwrap();
    assert!(outbox
        .iter()
        .all(|e| !["c1", "c2", "c3"].contains(&e.conv.as_str())));
    let again = s
        .erase("acme", T0 + 3, &["c1".into(), "c2".into()])
        .await
        .unwrap();
    assert_eq!(again.conversations, 0);
    // A new conversation gets a's slot.
    let d = s
        .route("acme", &st, T0 + 4, &[], &[item("e4", "c4", &["a"])])
        .await
        .unwrap();
    t.push(v(&d[0]));
    t
});

fn offering(event: &str, conv: &str, candidates: &[&str], max_missed: u32) -> RouteItem {
    RouteItem {
        offer: Some(Offer {
            timeout_ms: 30_000,
            max_missed,
        }),
        ..item(event, conv, candidates)
    }
}

fn offer_deq(conv: &str, candidates: &[&str]) -> DequeueItem {
    DequeueItem {
        reason: "capacity freed; rule r1 → team support, least_loaded".into(),
        offer: Some(Offer {
            timeout_ms: 30_000,
            max_missed: 3,
        }),
        ..deq(conv, candidates)
    }
}

/// Routes one message of `conv`, offered to a.
async fn offer_at(s: &RoutingStore, event: &str, conv: &str, at: u64) -> Vec<Decided> {
    s.route(
        "acme",
        &settings(),
        at,
        &[],
        &[offering(event, conv, &["a"], 3)],
    )
    .await
    .unwrap()
}

async fn live(s: &RoutingStore, conv: &str) -> switchboard::route::store::ConvLive {
    s.conversation("acme", conv).await.unwrap().unwrap().0
}

async fn agent_live(s: &RoutingStore, agent: &str) -> switchboard::route::store::AgentLive {
    s.snapshot(
        "acme",
        &SnapshotRequest {
            agents: vec![agent.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .agents[agent]
        .clone()
}

conform!(an_offer_holds_a_slot_until_it_is_answered_or_expires, |s| {
    setup(&s, &[spec("a", 1, &[]), spec("b", 1, &[])]).await;
    let st = settings();
    let mut t = Vec::new();
    let d = s
        .route(
            "acme",
            &st,
            T0,
            &[],
            &[offering("e1", "c1", &["a", "b"], 3)],
        )
        .await
        .unwrap();
    let offered = v(&d[0]);
    assert_eq!(offered["action"], "offered", "{offered}");
    assert_eq!(offered["agent"], "a");
    assert_eq!(
        offered["reason"],
        "rule r1 → team support, least_loaded: offered to a, 1/1 open, 2 candidates; answer within 30 s"
    );
    assert_eq!(offered["offer_expires_at"], "2026-05-28T20:27:10Z");
    assert_eq!(load(&s, "a").await, 1, "the offer holds a's slot");
    assert_eq!(live(&s, "c1").await.state, ConvState::Offered);
    assert_eq!(live(&s, "c1").await.offer_expires_ms, T0 + 30_000);
    t.push(offered.clone());
    // A message meanwhile: still offered, same seq, no change.
    let d = s
        .route(
            "acme",
            &st,
            T0 + 5_000,
            &[],
            &[offering("e2", "c1", &["b"], 3)],
        )
        .await
        .unwrap();
    let pending = v(&d[0]);
    assert_eq!(pending["action"], "offered");
    assert_eq!(pending["agent"], "a");
    assert_eq!(pending["seq"], offered["seq"]);
    assert_eq!(
        pending["reason"],
        "offered to a, waiting for an answer (25 s left)"
    );
    t.push(pending);
    // The listing of a's work shows it as offered.
    let open = s.open_of("acme", "a").await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].live.state, ConvState::Offered);
    // Not yet expired one millisecond before; expired at the deadline.
    assert_eq!(s.sweep("acme", &st, T0 + 29_999).await.unwrap().expired, 0);
    let r = s.sweep("acme", &st, T0 + 30_000).await.unwrap();
    assert_eq!(r.expired, 1);
    assert_eq!(load(&s, "a").await, 0, "the slot is free again");
    let c = live(&s, "c1").await;
    assert_eq!(c.state, ConvState::Queued);
    assert_eq!(c.queued_ms, T0, "back in the queue at its original place");
    assert_eq!(c.declined, ["a"]);
    assert_eq!(
        c.last_agent, None,
        "declining does not make a its last agent"
    );
    assert_eq!(agent_live(&s, "a").await.missed_offers, 1);
    let ob = s.outbox("acme", 10).await.unwrap();
    let expired: Value = serde_json::from_str(&ob.last().unwrap().assignment).unwrap();
    assert_eq!(expired["action"], "expired");
    assert_eq!(expired["previous_agent"], "a");
    assert_eq!(expired["queue"], "team:support");
    assert_eq!(expired["queued"], true);
    assert_eq!(
        expired["reason"],
        "a did not answer within 30 s: back to team:support"
    );
    t.push(expired);
    let queued = heads(&s).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].declined, ["a"]);
    // Offered to the next candidate from the queue, with how long it waited.
    let r = s
        .dequeue("acme", &st, T0 + 31_000, &[offer_deq("c1", &["b", "a"])])
        .await
        .unwrap();
    let next = v(r[0].as_ref().expect("offered to b"));
    assert_eq!(next["action"], "offered");
    assert_eq!(next["agent"], "b");
    assert_eq!(next["wait_ms"], 31_000);
    assert!(
        next["reason"].as_str().unwrap().ends_with(
            "offered to b, 1/1 open, 2 candidates, after waiting 31 s; answer within 30 s"
        ),
        "{next}"
    );
    t.push(next);
    // Only the agent holding the offer may answer it.
    let no = s
        .answer("acme", &st, T0 + 32_000, "c1", Some("a"), Answer::Accept)
        .await
        .unwrap();
    assert_eq!(no, Err(AnswerRefused::NotYours));
    let yes = s
        .answer("acme", &st, T0 + 33_000, "c1", Some("b"), Answer::Accept)
        .await
        .unwrap()
        .unwrap();
    let accepted = v(&yes);
    assert_eq!(accepted["action"], "accepted");
    assert_eq!(accepted["agent"], "b");
    assert_eq!(accepted["reason"], "b accepted the offer after 2 s");
    assert!(!yes.freed);
    let c = live(&s, "c1").await;
    assert_eq!((c.state, c.opened_ms), (ConvState::Open, T0 + 33_000));
    assert!(c.declined.is_empty());
    assert_eq!(load(&s, "b").await, 1);
    t.push(accepted);
    // Answered once: a second answer, and the old deadline, change nothing.
    let again = s
        .answer("acme", &st, T0 + 34_000, "c1", None, Answer::Reject)
        .await
        .unwrap();
    assert_eq!(again, Err(AnswerRefused::NoOffer));
    assert_eq!(s.sweep("acme", &st, T0 + 90_000).await.unwrap().expired, 0);
    assert_eq!(live(&s, "c1").await.state, ConvState::Open);
    let ob = s.outbox("acme", 10).await.unwrap();
    let actions: Vec<String> = ob
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.assignment).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(actions, ["expired", "offered", "accepted"]);
    t
});

conform!(
    rejections_requeue_in_place_and_missed_offers_in_a_row_set_an_agent_away,
    |s| {
        setup(&s, &[spec("a", 4, &[])]).await;
        let st = settings();
        let mut t = Vec::new();
        let offer = |e: &str, c: &str, at: u64| {
            let s = &s;
            let st = &st;
            let it = offering(e, c, &["a"], 2);
            async move { v(&s.route("acme", st, at, &[], &[it]).await.unwrap()[0]) }
        };
        // c1: missed (1 in a row).
        t.push(offer("e1", "c1", T0).await);
        assert_eq!(s.sweep("acme", &st, T0 + 30_000).await.unwrap().expired, 1);
        assert_eq!(agent_live(&s, "a").await.missed_offers, 1);
        // (Closed while it waits, so the next ones do not queue behind it.)
        s.close("acme", &st, T0 + 30_500, "c1", "done")
            .await
            .unwrap();
        // c2: rejected, which is an answer: the run of misses ends.
        t.push(offer("e2", "c2", T0 + 31_000).await);
        let rej = s
            .answer("acme", &st, T0 + 32_000, "c2", Some("a"), Answer::Reject)
            .await
            .unwrap()
            .unwrap();
        assert!(rej.freed, "a rejection frees the slot");
        let r = v(&rej);
        assert_eq!(r["action"], "rejected");
        assert_eq!(r["previous_agent"], "a");
        assert_eq!(r["reason"], "a rejected the offer: back to team:support");
        t.push(r);
        let c = live(&s, "c2").await;
        assert_eq!((c.state, c.queued_ms), (ConvState::Queued, T0 + 31_000));
        assert_eq!(c.declined, ["a"]);
        assert_eq!(agent_live(&s, "a").await.missed_offers, 0);
        assert_eq!(load(&s, "a").await, 0);
        s.close("acme", &st, T0 + 32_500, "c2", "done")
            .await
            .unwrap();
        // c3 and c4 missed in a row: a goes away with the second.
        t.push(offer("e3", "c3", T0 + 40_000).await);
        t.push(offer("e4", "c4", T0 + 41_000).await);
        assert_eq!(load(&s, "a").await, 2);
        let r = s.sweep("acme", &st, T0 + 71_000).await.unwrap();
        assert_eq!(r.expired, 2);
        let a = agent_live(&s, "a").await;
        assert_eq!((a.presence, a.missed_offers), (Presence::Away, 2));
        assert_eq!(a.since_ms, T0 + 71_000);
        let ob = s.outbox("acme", 20).await.unwrap();
        let last: Value = serde_json::from_str(&ob.last().unwrap().assignment).unwrap();
        assert_eq!(
        last["reason"],
        "a did not answer within 30 s: back to team:support; 2 offers missed in a row, a is now away"
    );
        t.push(last);
        // Away agents get no offers; back online, the count starts again.
        t.push(offer("e5", "c5", T0 + 72_000).await);
        assert_eq!(t.last().unwrap()["action"], "queued");
        s.set_presence("acme", &st, T0 + 73_000, "a", Presence::Online)
            .await
            .unwrap();
        assert_eq!(agent_live(&s, "a").await.missed_offers, 0);
        t
    }
);

conform!(
    an_offered_conversation_can_be_closed_transferred_or_erased,
    |s| {
        setup(&s, &[spec("a", 1, &[]), spec("b", 1, &[])]).await;
        let st = settings();
        let mut t = Vec::new();
        let d = offer_at(&s, "e1", "c1", T0).await;
        t.push(v(&d[0]));
        // Closing withdraws the offer and frees the slot; its deadline then does nothing.
        let closed = s
            .close("acme", &st, T0 + 1_000, "c1", "closed through the API")
            .await
            .unwrap()
            .unwrap();
        assert!(closed.freed);
        assert_eq!(v(&closed)["previous_agent"], "a");
        t.push(v(&closed));
        assert_eq!(load(&s, "a").await, 0);
        assert_eq!(s.sweep("acme", &st, T0 + 40_000).await.unwrap().expired, 0);
        // Transferred by hand to another agent: theirs at once, a's slot freed.
        let d = offer_at(&s, "e2", "c2", T0 + 41_000).await;
        assert_eq!(v(&d[0])["agent"], "a");
        let tr = s
            .transfer_agent("acme", &st, T0 + 42_000, "c2", "b", "transfer to b")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v(&tr)["action"], "transferred");
        assert_eq!(v(&tr)["previous_agent"], "a");
        assert_eq!(live(&s, "c2").await.state, ConvState::Open);
        assert_eq!((load(&s, "a").await, load(&s, "b").await), (0, 1));
        t.push(v(&tr));
        // Transferred to the agent it is offered to: accepted on their behalf.
        let d = offer_at(&s, "e3", "c3", T0 + 43_000).await;
        assert_eq!(v(&d[0])["action"], "offered");
        let tr = s
            .transfer_agent("acme", &st, T0 + 44_000, "c3", "a", "transfer to a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(live(&s, "c3").await.state, ConvState::Open);
        assert_eq!(load(&s, "a").await, 1);
        t.push(v(&tr));
        assert_eq!(s.sweep("acme", &st, T0 + 80_000).await.unwrap().expired, 0);
        // Erasure of an offered conversation frees its slot.
        s.close("acme", &st, T0 + 81_000, "c3", "done")
            .await
            .unwrap();
        let d = offer_at(&s, "e4", "c4", T0 + 82_000).await;
        assert_eq!(v(&d[0])["action"], "offered");
        let erased = s.erase("acme", T0 + 83_000, &["c4".into()]).await.unwrap();
        assert_eq!(erased.released, 1);
        assert_eq!(load(&s, "a").await, 0);
        assert_eq!(s.sweep("acme", &st, T0 + 200_000).await.unwrap().expired, 0);
        t
    }
);

async fn av(s: &RoutingStore) -> u64 {
    s.snapshot("acme", &SnapshotRequest::default())
        .await
        .unwrap()
        .av
}

conform!(
    the_agents_version_moves_with_every_change_to_an_agent,
    |s| {
        setup(&s, &[spec("a", 2, &[("whatsapp", 2)]), spec("b", 2, &[])]).await;
        let st = settings();
        let mut t = Vec::new();
        let v0 = av(&s).await;
        assert!(v0 > 0, "writing the rule set moved it");
        // Decided against the current version: the call reports what it changed.
        let Routed::Done { decisions, change } = s
            .route_at("acme", &st, T0, &[], &[item("e1", "c1", &["a"])], Some(v0))
            .await
            .unwrap()
        else {
            panic!("{}: stale at the current version", s.name());
        };
        t.push(v(&decisions[0]));
        assert_eq!((change.before, change.after), (v0, v0 + 1));
        assert_eq!(change.loads.len(), 1);
        assert_eq!(change.loads[0].id, "a");
        assert_eq!(change.loads[0].load, 1);
        assert_eq!(change.loads[0].last_ms, Some(T0));
        assert_eq!(change.loads[0].channel_load, [("whatsapp".to_string(), 1)]);
        // Against the old version: nothing is decided.
        match s
            .route_at(
                "acme",
                &st,
                T0 + 1,
                &[],
                &[item("e2", "c2", &["a"])],
                Some(v0),
            )
            .await
            .unwrap()
        {
            Routed::Stale { current } => assert_eq!(current, v0 + 1),
            Routed::Done { .. } => panic!("{}: decided against a stale version", s.name()),
        }
        assert!(s.conversation("acme", "c2").await.unwrap().is_none());
        // A follow-up changes no agent: the version stays.
        let Routed::Done { decisions, change } = s
            .route_at(
                "acme",
                &st,
                T0 + 2,
                &[],
                &[item("e3", "c1", &["a"])],
                Some(v0 + 1),
            )
            .await
            .unwrap()
        else {
            panic!("stale");
        };
        assert_eq!(decisions[0].action, "kept");
        assert_eq!((change.before, change.after), (v0 + 1, v0 + 1));
        assert!(change.loads.is_empty());
        // Presence, closes and rule sets move it too.
        s.set_presence("acme", &st, T0 + 3, "b", Presence::Away)
            .await
            .unwrap();
        assert_eq!(av(&s).await, v0 + 2);
        s.set_presence("acme", &st, T0 + 4, "b", Presence::Away)
            .await
            .unwrap();
        assert_eq!(av(&s).await, v0 + 2, "no change, no new version");
        s.close("acme", &st, T0 + 5, "c1", "done").await.unwrap();
        assert_eq!(av(&s).await, v0 + 3);
        s.apply_ruleset("acme", &record(2), &[spec("a", 3, &[])], Some(1), T0 + 6)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(av(&s).await, v0 + 4);
        // A dequeue reports its change like a route.
        s.set_presence("acme", &st, T0 + 7, "a", Presence::Offline)
            .await
            .unwrap();
        let d = s
            .route("acme", &st, T0 + 8, &[], &[item("e4", "c4", &["a"])])
            .await
            .unwrap();
        assert_eq!(d[0].action, "queued");
        s.set_presence("acme", &st, T0 + 9, "a", Presence::Online)
            .await
            .unwrap();
        let before = av(&s).await;
        let (r, change) = s
            .dequeue_tracked("acme", &st, T0 + 10, &[deq("c4", &["a"])])
            .await
            .unwrap();
        t.push(v(r[0].as_ref().unwrap()));
        assert_eq!((change.before, change.after), (before, before + 1));
        assert_eq!(change.loads[0].load, 1);
        t
    }
);

/// Routes `items` for tenant acme at `at` with the default settings.
async fn route_at(s: &RoutingStore, at: u64, items: &[RouteItem]) -> Vec<Decided> {
    s.route("acme", &settings(), at, &[], items).await.unwrap()
}

// A message that changes nothing (kept, waiting) moves only the conversation's last message
// time, and is not remembered: the same event routed again is decided again, from the
// state at that time, while a decision that changed something still comes back as made.
conform!(unchanged_decisions_move_only_the_last_message_time, |s| {
    setup(&s, &[spec("a", 1, &[])]).await;
    let st = settings();
    let mut out = Vec::new();
    let first = route_at(
        &s,
        T0,
        &[item("e1", "c1", &["a"]), item("e2", "c2", &["a"])],
    )
    .await;
    assert_eq!(
        (first[0].action.as_str(), first[1].action.as_str()),
        ("assigned", "queued")
    );
    let later = route_at(
        &s,
        T0 + 5_000,
        &[item("e3", "c1", &["a"]), item("e4", "c2", &["a"])],
    )
    .await;
    assert_eq!(
        (later[0].action.as_str(), later[1].action.as_str()),
        ("kept", "waiting")
    );
    assert_eq!(live(&s, "c1").await.last_message_ms, T0 + 5_000);
    assert_eq!(live(&s, "c2").await.last_message_ms, T0 + 5_000);
    // c1 closes, which frees its agent; then the batch of e1..e4 is routed again.
    s.close("acme", &st, T0 + 6_000, "c1", "resolved")
        .await
        .unwrap();
    let again = route_at(
        &s,
        T0 + 7_000,
        &[
            item("e1", "c1", &["a"]),
            item("e2", "c2", &["a"]),
            item("e3", "c1", &["a"]),
            item("e4", "c2", &["a"]),
        ],
    )
    .await;
    let actions: Vec<&str> = again.iter().map(|d| d.action.as_str()).collect();
    // e1 and e2 as they were made; e3 and e4 decided again: c1, closed since, is routed
    // afresh and queues behind c2, which still waits for the same agent.
    assert_eq!(actions, ["assigned", "queued", "queued", "waiting"]);
    assert_eq!(v(&again[0]), v(&first[0]));
    assert_eq!(v(&again[1]), v(&first[1]));
    out.extend(first.iter().chain(&later).chain(&again).map(v));
    out.push(Value::from(live(&s, "c1").await.last_message_ms));
    out
});

/// A key's bytes as Redis holds them.
async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<u8> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// Conversations stored by earlier versions (no last message header: the time in the state
/// JSON) are read as before, and written in the current form at their next change.
#[tokio::test]
async fn redis_reads_conversations_stored_without_the_last_message_header() {
    let url = redis_url();
    let mut conn = require_redis(&url).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("rt-{}", uuid::Uuid::new_v4().simple());
    let s = RoutingStore::Redis(Box::new(RedisStore::new(
        switchboard::accept::conn::RedisConn::Single(manager),
        &prefix,
        Duration::from_secs(5),
    )));
    setup(&s, &[spec("a", 1, &[])]).await;
    let d = route_at(&s, T0, &[item("e1", "c1", &["a"])]).await;
    assert_eq!(d[0].action, "assigned");
    let key = format!("{{{prefix}:rt:acme}}:c:c1");
    let raw = get(&mut conn, &key).await;
    assert_eq!(raw[0], b'#');
    assert_eq!(&raw[1..14], format!("{T0:013}").as_bytes());
    // As an earlier version wrote it.
    let body = String::from_utf8(raw[14..].to_vec()).unwrap();
    assert!(body.starts_with('{') && !body.contains("\"lm\""), "{body}");
    let old = format!("{{\"lm\":\"{}\",{}", T0 - 1_000, &body[1..]);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&old)
        .query_async(&mut conn)
        .await
        .unwrap();
    let c = live(&s, "c1").await;
    assert_eq!(
        (c.last_message_ms, c.agent.as_deref()),
        (T0 - 1_000, Some("a"))
    );
    // A message that changes nothing else writes it in the current form.
    let d = route_at(&s, T0 + 2_000, &[item("e2", "c1", &["a"])]).await;
    assert_eq!(
        (d[0].action.as_str(), v(&d[0])["agent"].as_str()),
        ("kept", Some("a"))
    );
    assert_eq!(live(&s, "c1").await.last_message_ms, T0 + 2_000);
    let raw = get(&mut conn, &key).await;
    assert_eq!(&raw[..14], format!("#{:013}", T0 + 2_000).as_bytes());
    // The next one rewrites only the header.
    route_at(&s, T0 + 3_000, &[item("e3", "c1", &["a"])]).await;
    let now = get(&mut conn, &key).await;
    assert_eq!(&now[..14], format!("#{:013}", T0 + 3_000).as_bytes());
    assert_eq!(now[14..], raw[14..]);
}
