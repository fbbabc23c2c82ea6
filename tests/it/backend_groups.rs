//! Conformance of the events stream's consumer group operations (the persister's) and of
//! the retention that waits for it, on both backends.

use std::collections::HashMap;
use std::time::Duration;

use switchboard::accept::memory::MemoryBackend;
use switchboard::accept::redis::RedisBackend;
use switchboard::accept::{
    Backend, BackendError, Item, Limits, StreamName, DELIVERY_GROUP, PERSISTER_GROUP,
};
use switchboard::config::RedisConfig;

use crate::helpers::*;

fn limits() -> Limits {
    Limits {
        dedup_ttl: Duration::from_secs(60),
        inbound_max_backlog: 1000,
        events_max_len: 5,
        events_max_age: Duration::ZERO,
        deadletter_max_len: 100,
        deadletter_max_age: Duration::from_secs(3600),
        memory_max_dedup_keys: 10_000,
        persister_max_backlog: 40,
        delivery_max_lag: None,
    }
}

async fn backends() -> Vec<Backend> {
    backends_with(limits).await
}

async fn backends_with(limits: impl Fn() -> Limits) -> Vec<Backend> {
    let url = redis_url();
    require_redis(&url).await;
    let cfg = RedisConfig {
        url,
        cluster_nodes: Vec::new(),
        key_prefix: format!("grp-{}", uuid::Uuid::new_v4().simple()),
        command_timeout_ms: 2000,
        connect_timeout_ms: 1000,
        ..RedisConfig::default()
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

/// Redis 7.0 restarted from an AOF rewritten since the persister last read brings back the
/// group's position but not all of its entries-read counter, and XINFO GROUPS then reports
/// a lag of every entry read between the rewrite and the restart — for good. Found by
/// scripts/failure-proof (a persister lag of 2,881 with nothing left to store after three
/// Redis restarts). Counted as unstored, that phantom lag made the backlog bound refuse
/// events with Postgres fully caught up (and the lag metric and /readyz overstated it).
#[tokio::test]
async fn a_redis_restart_after_an_aof_rewrite_does_not_inflate_the_persister_backlog() {
    let mut redis = PrivateRedis::start();
    let cfg = RedisConfig {
        url: redis.url(),
        cluster_nodes: Vec::new(),
        key_prefix: format!("lag-{}", uuid::Uuid::new_v4().simple()),
        command_timeout_ms: 2000,
        connect_timeout_ms: 1000,
        ..RedisConfig::default()
    };
    let mut lim = limits();
    lim.events_max_len = 0;
    let b = Backend::Redis(Box::new(RedisBackend::new(&cfg, lim).unwrap()));
    let drain = |b: &Backend| {
        let b = b.clone();
        async move {
            let mut n = 0;
            // After the restart, each connection finds out on its first call that it must
            // reconnect: retried, as the persister does.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let batch = match b
                    .read_events_group(PERSISTER_GROUP, "c1", 7, BLOCK, IDLE)
                    .await
                {
                    Ok(batch) => batch,
                    Err(e) => {
                        assert!(std::time::Instant::now() < deadline, "{e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    return n;
                }
                n += batch.len();
                let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
                b.ack_events(PERSISTER_GROUP, &ids).await.unwrap();
            }
        }
    };
    b.read_events_group(PERSISTER_GROUP, "c1", 1, BLOCK, IDLE)
        .await
        .unwrap();
    b.append_events(&items(0, 10)).await.unwrap();
    assert_eq!(drain(&b).await, 10);

    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("BGREWRITEAOF")
        .query_async(&mut raw)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut raw)
            .await
            .unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "AOF rewrite did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.append_events(&items(10, 30)).await.unwrap();
    assert_eq!(drain(&b).await, 30);
    assert_eq!(
        b.events_group_lag(PERSISTER_GROUP)
            .await
            .unwrap()
            .unwrap()
            .total(),
        0
    );

    redis.kill();
    redis.restart();
    // Nothing is unstored: the lag says so (Redis alone would say 30), before any write.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lag = loop {
        match b.events_group_lag(PERSISTER_GROUP).await {
            Ok(lag) => break lag.unwrap(),
            // Reconnecting, or Redis still loading its AOF.
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("Redis did not come back: {e}"),
        }
    };
    assert_eq!((lag.pending, lag.undelivered), (0, 0));
    // The bound of 40 counts the real backlog only: 40 more events fit, the 41st does not.
    assert_eq!(b.append_events(&items(40, 25)).await.unwrap(), 25);
    let lag = b.events_group_lag(PERSISTER_GROUP).await.unwrap().unwrap();
    assert_eq!((lag.pending, lag.undelivered), (0, 25));
    assert_eq!(b.append_events(&items(65, 15)).await.unwrap(), 15);
    match b.append_events(&items(80, 1)).await {
        Err(BackendError::Backpressure { backlog }) => assert_eq!(backlog, 40),
        other => panic!("expected backpressure at the real bound, got {other:?}"),
    }
    assert_eq!(drain(&b).await, 40);
    assert_eq!(
        b.events_group_lag(PERSISTER_GROUP)
            .await
            .unwrap()
            .unwrap()
            .total(),
        0
    );
}

/// Reads and acknowledges everything the delivery group has not read, as its fan-out does.
async fn fan_out_all(b: &Backend) -> Vec<switchboard::accept::StreamEntry> {
    let mut all = Vec::new();
    loop {
        let got = b
            .read_events_group(DELIVERY_GROUP, "fan", 100, BLOCK, IDLE)
            .await
            .unwrap();
        if got.is_empty() {
            return all;
        }
        let ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
        b.ack_events(DELIVERY_GROUP, &ids).await.unwrap();
        all.extend(got);
    }
}

/// While push delivery runs, retention waits for its fan-out group too (nothing it has not
/// read is trimmed, also without the persister), up to `delivery.max_fanout_lag`: past it,
/// retention trims anyway and counts every entry it removed unread — exactly: what the
/// group can still read plus what was counted is everything appended.
#[tokio::test]
async fn retention_waits_for_the_delivery_fan_out_up_to_its_bound() {
    let bounded = || Limits {
        events_max_len: 100,
        delivery_max_lag: Some(300),
        ..limits()
    };
    for b in backends_with(bounded).await {
        let name = b.name();
        b.ensure_events_group_at_end(DELIVERY_GROUP).await.unwrap();
        for i in 0..5 {
            assert_eq!(b.append_events(&items(i * 50, 50)).await.unwrap(), 50);
        }
        // Past events_max_len (100), and nothing was trimmed: the fan-out read none of it.
        assert_eq!(stream_keys(&b).await.len(), 250, "{name}");
        // Read and acknowledged: retention applies again (down towards 100; Redis trims
        // whole nodes).
        assert_eq!(fan_out_all(&b).await.len(), 250, "{name}");
        let left = stream_keys(&b).await.len();
        assert!((100..250).contains(&left), "{name}: {left}");
        assert_eq!(b.events_trimmed_unread().await.unwrap(), 0, "{name}");
        // 400 more, unread: past 300 behind, retention trims unread entries and counts them.
        for i in 0..8 {
            b.append_events(&items(1000 + i * 50, 50)).await.unwrap();
        }
        let lost = b.events_trimmed_unread().await.unwrap();
        assert!(lost > 0, "{name}: the bound applies");
        let len = stream_keys(&b).await.len();
        assert!(len <= 400, "{name}: {len}");
        let readable = fan_out_all(&b)
            .await
            .iter()
            .filter(|e| !e.payload.is_empty())
            .count() as u64;
        assert_eq!(
            readable + lost,
            400,
            "{name}: read {readable}, counted {lost}"
        );
    }
    // A left-over delivery group protects nothing while delivery does not run.
    for b in backends().await {
        let name = b.name();
        b.ensure_events_group_at_end(DELIVERY_GROUP).await.unwrap();
        b.append_events(&items(0, 300)).await.unwrap();
        let len = stream_keys(&b).await.len();
        assert!(len < 300, "{name}: {len}");
    }
}
