//! Scale-out: two gateway replicas on a local three-master Redis Cluster with partitioned
//! streams. Every webhook is delivered to both replicas at once (a provider retrying on
//! another replica behind the load balancer); the checks are dedup (one event per
//! message), per-conversation order, routing capacity across the replicas' routers, and
//! that every key is hash-tagged so each script touches one slot.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::config::{BackendKind, Config};

use crate::helpers::*;
use crate::routing::{one_team_config, wa_messages};

const AGENTS: usize = 6;
const CAPACITY: usize = 20;
const CONTACTS: usize = 150;
const MESSAGES_PER_CONTACT: usize = 3;
const PARTITIONS: usize = 6;
/// Fixed (the cluster is private to the test), so the slots the keys land on are too.
const PREFIX: &str = "sbc";

fn cluster_config(cluster: &LocalCluster) -> Config {
    let mut config = one_team_config(AGENTS, CAPACITY);
    config.redis.cluster_nodes = cluster.nodes();
    config.redis.key_prefix = PREFIX.into();
    config.streams.partitions = PARTITIONS;
    config.validate().expect("cluster config validates");
    config
}

async fn inbound_backlog(app: &TestApp) -> u64 {
    let v: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["streams"]["inbound"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_dedup_keep_order_and_respect_capacity() {
    let cluster = LocalCluster::start(3);
    let config = cluster_config(&cluster);
    let a = spawn_unchecked(config.clone()).await;
    let b = spawn_unchecked(config).await;

    // Each contact sends its messages one after the other; each webhook goes to both
    // replicas concurrently. 15 contacts at a time.
    let contacts: Vec<String> = (0..CONTACTS).map(|i| format!("3460{i:07}")).collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for group in contacts.chunks(15) {
        let runs = group.iter().map(|contact| {
            let (a, b) = (&a, &b);
            async move {
                let mut got = Vec::new();
                for m in 0..MESSAGES_PER_CONTACT {
                    let body = wa_messages(&[(contact.as_str(), &format!("m{m}"))]);
                    let (ra, rb) = tokio::join!(
                        a.post_signed("meta_test", &body, Some(SECRET)),
                        b.post_signed("meta_test", &body, Some(SECRET)),
                    );
                    got.push(ra.status().as_u16());
                    got.push(rb.status().as_u16());
                }
                got
            }
        });
        for got in futures_util::future::join_all(runs).await {
            for s in got {
                *statuses.entry(s).or_default() += 1;
            }
        }
    }
    assert_eq!(
        statuses,
        HashMap::from([(200, CONTACTS * MESSAGES_PER_CONTACT * 2)]),
        "every delivery to either replica answered 200"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    while inbound_backlog(&a).await > 0 {
        assert!(Instant::now() < deadline, "inbound streams not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Dedup: exactly one event per message although each was delivered twice.
    let events: Vec<Value> = a
        .events()
        .await
        .into_iter()
        .map(|e| e["event"].clone())
        .collect();
    let messages: Vec<&Value> = events.iter().filter(|e| e["kind"] == "message").collect();
    let ids: HashSet<&str> = messages
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages.len(),
        CONTACTS * MESSAGES_PER_CONTACT,
        "one event per message"
    );
    assert_eq!(ids.len(), messages.len(), "no event twice");

    // Order: each conversation's messages in the order they were sent.
    let mut per_conv: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &messages {
        per_conv
            .entry(e["conversation_id"].as_str().unwrap())
            .or_default()
            .push(e["message"]["text"].as_str().unwrap());
    }
    assert_eq!(per_conv.len(), CONTACTS);
    for (conv, texts) in &per_conv {
        assert_eq!(texts, &["m0", "m1", "m2"], "order of {conv}");
    }

    // Capacity across both replicas' routers: every slot used, none exceeded, the rest
    // waiting in the queue.
    let loads = a.agent_loads().await;
    assert_eq!(loads.len(), AGENTS);
    for (agent, (load, cap)) in &loads {
        assert!(load <= cap, "{agent} holds {load} > {cap}");
    }
    let total: u64 = loads.values().map(|l| l.0).sum();
    assert_eq!(total as usize, AGENTS * CAPACITY);
    let (_, q) = a
        .api(reqwest::Method::GET, "/v1/tenants/acme/queues", None)
        .await;
    assert_eq!(
        q["total"].as_u64().unwrap() as usize,
        CONTACTS - AGENTS * CAPACITY,
        "{q}"
    );
    // The stream agrees: one first assignment per assigned conversation.
    let assigned: HashSet<&str> = events
        .iter()
        .filter(|e| e["assignment"]["action"] == "assigned")
        .map(|e| e["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(assigned.len(), AGENTS * CAPACITY);

    // Every key carries a hash tag of this deployment, and the partitions spread over the
    // masters.
    let mut nodes_with_streams = 0;
    let mut partitions_seen = HashSet::new();
    for port in &cluster.ports {
        let keys = cluster.keys_on(*port);
        for k in &keys {
            assert!(k.starts_with(&format!("{{{PREFIX}:")), "untagged key {k}");
            if let Some(p) = k
                .strip_prefix(&format!("{{{PREFIX}:p"))
                .and_then(|r| r.split_once('}'))
                .filter(|(_, rest)| *rest == ":events")
            {
                partitions_seen.insert(p.0.to_string());
            }
        }
        if keys.iter().any(|k| k.ends_with(":events")) {
            nodes_with_streams += 1;
        }
    }
    assert_eq!(
        partitions_seen.len(),
        PARTITIONS,
        "every partition got events"
    );
    assert!(
        nodes_with_streams >= 2,
        "the partitions spread over the masters ({nodes_with_streams} node(s))"
    );

    a.stop().await;
    b.stop().await;
}

/// A gateway configured with cluster nodes that are down starts, answers 503 (never 200)
/// and reports not ready; the same webhook is accepted once the cluster is up.
#[tokio::test]
async fn cluster_down_means_503_not_a_lost_webhook() {
    let mut config = Config::from_toml(BASE_CONFIG).unwrap();
    config.backend = BackendKind::Redis;
    config.redis.cluster_nodes = vec![format!("redis://127.0.0.1:{}", free_port())];
    config.redis.key_prefix = PREFIX.into();
    config.streams.partitions = 2;
    let app = spawn_unchecked(config).await;
    let body = wa_text(&unique_wamid());
    let res = app.post_signed("meta_test", &body, Some(SECRET)).await;
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "dependency_unavailable");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    app.stop().await;
}

/// The memory backend partitions the same way: every event once, each conversation in
/// order, the read API pages across partitions without gaps or repeats.
#[tokio::test]
async fn partitioned_memory_backend_keeps_the_contract() {
    let mut config = test_config(BackendKind::Memory);
    config.streams.partitions = 3;
    let app = spawn_with(config).await;
    let contacts: Vec<String> = (0..12).map(|i| format!("4470{i:07}")).collect();
    for m in 0..4 {
        let msgs: Vec<(&str, String)> = contacts
            .iter()
            .map(|c| (c.as_str(), format!("m{m}")))
            .collect();
        let refs: Vec<(&str, &str)> = msgs.iter().map(|(c, t)| (*c, t.as_str())).collect();
        let res = app
            .post_signed("meta_test", &wa_messages(&refs), Some(SECRET))
            .await;
        assert_eq!(res.status(), 200);
    }
    let events = app.wait_for_events(48).await;
    assert_eq!(events.len(), 48);
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 48, "paging returned each entry once");
    assert!(ids.iter().all(|id| id.starts_with('p')), "{ids:?}");
    let mut per_conv: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &events {
        let e = &e["event"];
        per_conv
            .entry(e["conversation_id"].as_str().unwrap())
            .or_default()
            .push(e["message"]["text"].as_str().unwrap());
    }
    assert_eq!(per_conv.len(), 12);
    for (conv, texts) in per_conv {
        assert_eq!(texts, ["m0", "m1", "m2", "m3"], "{conv}");
    }
    // Small pages walk the partitions without gaps or repeats.
    let seen: Vec<String> = app
        .read_pages("/v1/events", 5)
        .await
        .iter()
        .map(|i| i["stream_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen.len(), 48);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 48);
    app.stop().await;
}
