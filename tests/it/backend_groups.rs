//! Conformance of the events stream's consumer group operations (the persister's) and of
//! the retention that waits for it, on both backends.

use std::collections::HashMap;
use std::time::Duration;

use switchboard::accept::memory::MemoryBackend;
use switchboard::accept::redis::RedisBackend;
use switchboard::accept::{Backend, BackendError, Item, Limits, StreamName, PERSISTER_GROUP};
use switchboard::config::RedisConfig;

use crate::helpers::*;

fn limits() -> Limits {
    Limits {
        dedup_ttl: Duration::from_secs(60),
        inbound_max_backlog: 1000,
        events_max_len: 5,
        events_max_age: Duration::ZERO,
        deadletter_max_len: 100,
        memory_max_dedup_keys: 10_000,
        persister_max_backlog: 40,
    }
}

async fn backends() -> Vec<Backend> {
    let url = redis_url();
    require_redis(&url).await;
    let cfg = RedisConfig {
        url,
        cluster_nodes: Vec::new(),
        key_prefix: format!("grp-{}", uuid::Uuid::new_v4().simple()),
        command_timeout_ms: 2000,
        connect_timeout_ms: 1000,
    };
    vec![
        Backend::Memory(MemoryBackend::new(limits())),
        Backend::Redis(Box::new(RedisBackend::new(&cfg, limits()).unwrap())),
    ]
}

fn items(from: usize, n: usize) -> Vec<Item> {
    (from..from + n)
        .map(|i| {
            Item::new(
                format!("evt_{i:04}"),
                format!("{{\"event_id\":\"evt_{i:04}\"}}"),
            )
        })
        .collect()
}

const BLOCK: Duration = Duration::from_millis(20);
const IDLE: Duration = Duration::from_secs(60);

async fn stream_keys(b: &Backend) -> Vec<String> {
    b.read(StreamName::Events, 1000, Some("0-0"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect()
}

#[tokio::test]
async fn unacknowledged_entries_survive_retention_and_the_backlog_is_bounded() {
    for b in backends().await {
        let name = b.name();
        assert_eq!(b.events_group_lag(PERSISTER_GROUP).await.unwrap(), None);
        // The first read creates the group.
        let first = b
            .read_events_group(PERSISTER_GROUP, "c1", 10, BLOCK, IDLE)
            .await
            .unwrap();
        assert!(first.is_empty(), "{name}");
        assert_eq!(
            b.events_group_lag(PERSISTER_GROUP)
                .await
                .unwrap()
                .unwrap()
                .total(),
            0
        );

        assert_eq!(b.append_events(&items(0, 30)).await.unwrap(), 30);
        // events_max_len is 5, but nothing was stored yet: nothing is trimmed.
        assert_eq!(stream_keys(&b).await.len(), 30, "{name}");

        let mut delivered: HashMap<String, usize> = HashMap::new();
        let batch = b
            .read_events_group(PERSISTER_GROUP, "c1", 10, BLOCK, IDLE)
            .await
            .unwrap();
        assert_eq!(batch.len(), 10, "{name}");
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        for e in &batch {
            *delivered.entry(e.key.clone()).or_default() += 1;
        }
        assert_eq!(b.ack_events(PERSISTER_GROUP, &ids).await.unwrap(), 10);
        let lag = b.events_group_lag(PERSISTER_GROUP).await.unwrap().unwrap();
        assert_eq!((lag.pending, lag.undelivered), (0, 20), "{name}");
        // The acknowledged ones may go; the 20 others must all still be there.
        let keys = stream_keys(&b).await;
        for i in items(10, 20) {
            assert!(
                keys.contains(&i.key),
                "{name}: {} was trimmed unstored",
                i.key
            );
        }

        // Up to the bound of 40 unacknowledged, then refused (nothing appended).
        assert_eq!(b.append_events(&items(30, 20)).await.unwrap(), 20);
        match b.append_events(&items(50, 1)).await {
            Err(BackendError::Backpressure { backlog }) => assert_eq!(backlog, 40, "{name}"),
            other => panic!("{name}: expected backpressure, got {other:?}"),
        }

        // Draining delivers every entry exactly once; the stream then shrinks.
        loop {
            let batch = b
                .read_events_group(PERSISTER_GROUP, "c1", 7, BLOCK, IDLE)
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for e in &batch {
                *delivered.entry(e.key.clone()).or_default() += 1;
            }
            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            b.ack_events(PERSISTER_GROUP, &ids).await.unwrap();
        }
        assert_eq!(delivered.len(), 50, "{name}");
        assert!(delivered.values().all(|n| *n == 1), "{name}: {delivered:?}");
        assert_eq!(
            b.events_group_lag(PERSISTER_GROUP)
                .await
                .unwrap()
                .unwrap()
                .total(),
            0
        );
        assert!(stream_keys(&b).await.len() <= 50, "{name}");
        assert_eq!(b.append_events(&items(50, 1)).await.unwrap(), 1, "{name}");
        if name == "memory" {
            // Exact trimming: back to events_max_len once everything is stored.
            let batch = b
                .read_events_group(PERSISTER_GROUP, "c1", 10, BLOCK, IDLE)
                .await
                .unwrap();
            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            b.ack_events(PERSISTER_GROUP, &ids).await.unwrap();
            assert_eq!(stream_keys(&b).await.len(), 5);
        }
    }
}

#[tokio::test]
async fn abandoned_entries_are_taken_over_and_deleted_entries_go_away() {
    for b in backends().await {
        let name = b.name();
        b.read_events_group(PERSISTER_GROUP, "a", 1, BLOCK, IDLE)
            .await
            .unwrap();
        b.append_events(&items(0, 3)).await.unwrap();
        let got = b
            .read_events_group(PERSISTER_GROUP, "a", 1, BLOCK, IDLE)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        // Consumer "a" never acknowledges; "b" takes it over once it is idle long enough.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let taken = b
            .read_events_group(PERSISTER_GROUP, "b", 1, BLOCK, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "{name}");
        assert_eq!(taken[0].id, got[0].id, "{name}");
        assert_eq!(taken[0].key, got[0].key, "{name}");

        let all = b.read(StreamName::Events, 10, Some("0-0")).await.unwrap();
        let last = all.last().unwrap().id.clone();
        assert_eq!(
            b.delete_entries(StreamName::Events, std::slice::from_ref(&last))
                .await
                .unwrap(),
            1
        );
        assert_eq!(stream_keys(&b).await.len(), 2, "{name}");
        b.retire_events_consumer(PERSISTER_GROUP, "a")
            .await
            .unwrap();
    }
}
