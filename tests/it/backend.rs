//! Backend conformance: the same checks against every implementation of the accept
//! contract (src/accept/mod.rs), on a real Redis and on the memory backend.

use std::time::Duration;

use switchboard::accept::memory::MemoryBackend;
use switchboard::accept::redis::RedisBackend;
use switchboard::accept::{Backend, BackendError, Batch, Item, Limits, StreamName};
use switchboard::config::RedisConfig;

use crate::helpers::*;

fn limits(max_backlog: u64) -> Limits {
    Limits {
        dedup_ttl: Duration::from_secs(60),
        inbound_max_backlog: max_backlog,
        events_max_len: 5,
        events_max_age: Duration::ZERO,
        deadletter_max_len: 100,
        deadletter_max_age: Duration::from_secs(3600),
        persister_max_backlog: 1_000_000,
        delivery_max_lag: None,
        memory_max_dedup_keys: 10_000,
    }
}

async fn backends(max_backlog: u64) -> Vec<Backend> {
    backends_with(|| limits(max_backlog)).await
}

async fn backends_with(limits: impl Fn() -> Limits) -> Vec<Backend> {
    let url = redis_url();
    require_redis(&url).await;
    let cfg = conf_config(url, format!("conf-{}", uuid::Uuid::new_v4().simple()));
    vec![
        Backend::Memory(MemoryBackend::new(limits())),
        Backend::Redis(Box::new(RedisBackend::new(&cfg, limits()).unwrap())),
    ]
}

/// The configuration of a Redis backend under its own key prefix.
fn conf_config(url: String, key_prefix: String) -> RedisConfig {
    RedisConfig {
        url,
        cluster_nodes: Vec::new(),
        key_prefix,
        command_timeout_ms: 2000,
        connect_timeout_ms: 1000,
        ..RedisConfig::default()
    }
}

fn item(key: &str) -> Item {
    Item::new(key, format!("{{\"event_id\":\"{key}\"}}"))
}

fn batch(events: &[&str], dead: &[&str]) -> Batch {
    Batch {
        events: events.iter().map(|k| item(k)).collect(),
        dead_letters: dead.iter().map(|k| item(k)).collect(),
    }
}

#[tokio::test]
async fn accept_reports_fresh_and_duplicates_including_within_a_batch() {
    for b in backends(100).await {
        let r = b
            .accept(batch(&["evt_a", "evt_b", "evt_a"], &["dl_x"]))
            .await
            .unwrap();
        assert_eq!(r.events, [true, true, false], "{}", b.name());
        assert_eq!(r.dead_letters, [true]);
        let r = b
            .accept(batch(&["evt_b", "evt_c"], &["dl_x"]))
            .await
            .unwrap();
        assert_eq!(r.events, [false, true], "{}", b.name());
        assert_eq!(r.dead_letters, [false]);
        let inbound = b.read(StreamName::Inbound, 100, None).await.unwrap();
        let keys: Vec<&str> = inbound.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["evt_a", "evt_b", "evt_c"], "{}", b.name());
        assert_eq!(
            b.read(StreamName::DeadLetter, 100, None)
                .await
                .unwrap()
                .len(),
            1
        );
        let stats = b.stats().await.unwrap();
        assert_eq!((stats.inbound, stats.deadletter), (3, 1), "{}", b.name());
    }
}

#[tokio::test]
async fn backpressure_stores_nothing_and_duplicates_still_pass() {
    for b in backends(3).await {
        b.accept(batch(&["evt_1", "evt_2"], &[])).await.unwrap();
        // Two fresh events would make 4 > 3: refused whole, nothing appended.
        match b.accept(batch(&["evt_3", "evt_4"], &["dl_1"])).await {
            Err(BackendError::Backpressure { backlog }) => assert_eq!(backlog, 2, "{}", b.name()),
            other => panic!("{}: expected backpressure, got {other:?}", b.name()),
        }
        assert_eq!(b.stats().await.unwrap().inbound, 2);
        assert_eq!(b.stats().await.unwrap().deadletter, 0);
        // Pure duplicates need no room and are answered.
        let r = b.accept(batch(&["evt_1"], &[])).await.unwrap();
        assert_eq!(r.events, [false]);
        // One fresh fits exactly.
        assert_eq!(
            b.accept(batch(&["evt_3"], &[])).await.unwrap().events,
            [true]
        );
        // evt_4 was not remembered by the refused call: it is fresh later.
        b.publish(
            &b.read_inbound("c1", 10, Duration::from_millis(10), Duration::from_secs(60))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            b.accept(batch(&["evt_4"], &[])).await.unwrap().events,
            [true],
            "{}",
            b.name()
        );
    }
}

/// Concurrent requests are combined into one Redis call (group commit); each must still get
/// its own outcome: its own duplicates, its own backpressure refusal, nothing of a refused
/// request stored, and one copy of a key two requests share.
#[tokio::test]
async fn concurrent_accepts_keep_their_own_outcomes() {
    for b in backends(6).await {
        b.accept(batch(&["evt_0"], &[])).await.unwrap();
        let requests = vec![
            batch(&["evt_1", "evt_2"], &["dl_a"]),
            batch(&["evt_2", "evt_3"], &[]),
            batch(&["evt_0"], &["dl_a"]),
            // Would push the backlog past 6 on its own: refused whole.
            batch(
                &["evt_10", "evt_11", "evt_12", "evt_13", "evt_14", "evt_15"],
                &["dl_b"],
            ),
            batch(&[], &["dl_c"]),
        ];
        let outcomes =
            futures_util::future::join_all(requests.into_iter().map(|r| b.accept(r))).await;
        let name = b.name();
        let ok: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(ok.len(), 4, "{name}: {outcomes:?}");
        assert!(
            matches!(outcomes[3], Err(BackendError::Backpressure { .. })),
            "{name}: {outcomes:?}"
        );
        assert_eq!(outcomes[2].as_ref().unwrap().events, [false], "{name}");
        // evt_2 is in two requests: stored once, whichever ran first.
        let fresh_2 = [&outcomes[0], &outcomes[1]]
            .iter()
            .filter(|o| o.as_ref().unwrap().events.iter().filter(|f| **f).count() == 2)
            .count();
        assert_eq!(fresh_2, 1, "{name}: {outcomes:?}");
        let inbound = b.read(StreamName::Inbound, 100, None).await.unwrap();
        let mut keys: Vec<&str> = inbound.iter().map(|e| e.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["evt_0", "evt_1", "evt_2", "evt_3"], "{name}");
        let dead = b.read(StreamName::DeadLetter, 100, None).await.unwrap();
        let mut dl: Vec<&str> = dead.iter().map(|e| e.key.as_str()).collect();
        dl.sort();
        assert_eq!(dl, ["dl_a", "dl_c"], "{name}");
    }
}

#[tokio::test]
async fn router_moves_each_entry_once_and_events_retention_applies() {
    for b in backends(100).await {
        let keys: Vec<String> = (0..8).map(|i| format!("evt_{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        b.accept(batch(&refs, &[])).await.unwrap();
        let got = b
            .read_inbound(
                "c1",
                100,
                Duration::from_millis(50),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 8, "{}", b.name());
        // Nothing more to hand out until new entries arrive.
        assert!(b
            .read_inbound(
                "c1",
                100,
                Duration::from_millis(50),
                Duration::from_secs(60)
            )
            .await
            .unwrap()
            .is_empty());
        assert_eq!(b.publish(&got).await.unwrap(), 8);
        // Publishing the same entries again moves nothing.
        assert_eq!(b.publish(&got).await.unwrap(), 0, "{}", b.name());
        let stats = b.stats().await.unwrap();
        assert_eq!(stats.inbound, 0, "{}", b.name());
        // events_max_len = 5 (approximate trimming in Redis keeps at least 5).
        let events = b.read(StreamName::Events, 100, None).await.unwrap();
        assert!(
            events.len() >= 5 && events.len() <= 8,
            "{}: {}",
            b.name(),
            events.len()
        );
        let last: Vec<&str> = events
            .iter()
            .rev()
            .take(5)
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(
            last,
            ["evt_7", "evt_6", "evt_5", "evt_4", "evt_3"],
            "{}",
            b.name()
        );
        // Paging with `after`.
        let first = &events[0].id;
        let page = b.read(StreamName::Events, 2, Some(first)).await.unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].id, events[1].id);
    }
}

#[tokio::test]
async fn a_crashed_consumers_entries_are_claimed_again() {
    let url = redis_url();
    require_redis(&url).await;
    let cfg = conf_config(url, format!("conf-{}", uuid::Uuid::new_v4().simple()));
    let b = Backend::Redis(Box::new(RedisBackend::new(&cfg, limits(100)).unwrap()));
    b.accept(batch(&["evt_a", "evt_b"], &[])).await.unwrap();
    let claim = Duration::from_millis(200);
    let taken = b
        .read_inbound("dead", 10, Duration::from_millis(10), claim)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    // "dead" never publishes. Before the idle time another consumer gets nothing...
    assert!(b
        .read_inbound("alive", 10, Duration::from_millis(10), claim)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...after it, the entries are handed to the live consumer, which moves them once.
    let again = b
        .read_inbound("alive", 10, Duration::from_millis(10), claim)
        .await
        .unwrap();
    assert_eq!(again.len(), 2);
    // The live consumer has moved only the first when the dead one wakes up...
    assert_eq!(b.publish(&again[..1]).await.unwrap(), 1);
    // ...which publishes the one nobody moved, and not the other a second time.
    assert_eq!(b.publish(&taken).await.unwrap(), 1);
    assert_eq!(b.publish(&again).await.unwrap(), 0);
    let events = b.read(StreamName::Events, 10, None).await.unwrap();
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["evt_a", "evt_b"]);
    assert_eq!(b.stats().await.unwrap().inbound, 0);
}

#[tokio::test]
async fn redis_dedup_keys_expire_with_the_configured_ttl() {
    let url = redis_url();
    let mut conn = require_redis(&url).await;
    let prefix = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let cfg = conf_config(url, prefix.clone());
    let b = RedisBackend::new(&cfg, limits(100)).unwrap();
    b.accept(batch(&["evt_ttl"], &[])).await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{{{prefix}}}:dedup:v2:evt_ttl"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 50 && ttl <= 60, "ttl {ttl}");
}

/// One router at a time per partition: the lease is exclusive until it expires, a publish by
/// a router that lost it moves nothing, and the next holder gets what was left pending, in
/// stream order, before anything newer.
#[tokio::test]
async fn the_router_lease_is_exclusive_fences_publishes_and_hands_over_pending_entries() {
    for b in backends(100).await {
        let name = b.name();
        let ttl = Duration::from_millis(300);
        assert!(b.lease("r1", ttl).await.unwrap(), "{name}");
        assert!(!b.lease("r2", ttl).await.unwrap(), "{name}: held by r1");
        assert!(b.lease("r1", ttl).await.unwrap(), "{name}: renewed");
        b.accept(batch(&["evt_1", "evt_2", "evt_3"], &[]))
            .await
            .unwrap();
        let got = b
            .read_inbound("r1", 2, Duration::from_millis(10), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        // r1 stalls past its lease; r2 takes over.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.lease("r2", ttl).await.unwrap(), "{name}: expired, taken");
        assert!(matches!(
            b.publish_fenced("r1", &got).await,
            Err(BackendError::Fenced)
        ));
        assert_eq!(b.stats().await.unwrap().events, 0, "{name}: nothing moved");
        // r2 first routes what r1 left, oldest first, then the rest.
        let pending = b.claim_pending("r2", 10).await.unwrap();
        let keys: Vec<&str> = pending.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["evt_1", "evt_2"], "{name}");
        assert_eq!(b.publish_fenced("r2", &pending).await.unwrap(), 2);
        assert!(
            b.claim_pending("r2", 10).await.unwrap().is_empty(),
            "{name}"
        );
        let rest = b
            .read_inbound("r2", 10, Duration::from_millis(10), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].key, "evt_3");
        assert_eq!(b.publish_fenced("r2", &rest).await.unwrap(), 1);
        // The same batch again (a retry after a reply that was lost) moves nothing more.
        assert_eq!(b.publish_fenced("r2", &rest).await.unwrap(), 0, "{name}");
        assert_eq!(b.publish_fenced("r2", &pending).await.unwrap(), 0, "{name}");
        let events = b.read(StreamName::Events, 10, None).await.unwrap();
        let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["evt_1", "evt_2", "evt_3"], "{name}");
        // Released at shutdown: a standby takes it at once.
        b.release_lease("r2").await.unwrap();
        assert!(b.lease("r3", ttl).await.unwrap(), "{name}");
    }
}

/// Upgrade path of the dedup keys (src/accept/redis.rs): keys an earlier version wrote
/// (`dedup:v1:<its id>`) still make an item a duplicate — an event by its legacy id, a dead
/// letter and an appended event by their unchanged id — and nothing new is written under v1.
#[tokio::test]
async fn redis_dedup_keys_of_the_previous_version_still_catch_redeliveries() {
    let url = redis_url();
    let mut conn = require_redis(&url).await;
    let prefix = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let cfg = conf_config(url, prefix.clone());
    let b = Backend::Redis(Box::new(RedisBackend::new(&cfg, limits(100)).unwrap()));
    for old in ["evt_old", "dl_old", "evt_relayed"] {
        write_legacy_dedup_key(&mut conn, &prefix, old).await;
    }
    let mut scoped = item("evt_new");
    scoped.legacy_key = Some("evt_old".into());
    let mut unrelated = item("evt_other");
    unrelated.legacy_key = Some("evt_never_seen".into());
    let r = b
        .accept(Batch {
            events: vec![scoped, unrelated],
            dead_letters: vec![item("dl_old"), item("dl_new")],
        })
        .await
        .unwrap();
    assert_eq!(r.events, [false, true]);
    assert_eq!(r.dead_letters, [false, true]);
    assert_eq!(
        b.append_events(&[item("evt_relayed"), item("evt_fresh")])
            .await
            .unwrap(),
        1
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:dedup:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut keys: Vec<&str> = keys
        .iter()
        .map(|k| k.split_once("}:dedup:").unwrap().1)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "v1:dl_old",
            "v1:evt_old",
            "v1:evt_relayed",
            "v2:dl_new",
            "v2:evt_fresh",
            "v2:evt_other"
        ]
    );
    let dead = b.read(StreamName::DeadLetter, 10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].key, "dl_new",
        "the dead-letter id, without the key prefix"
    );
}

/// A dedup key as the previous version wrote it (`dedup:v1:`), holding stream id 1-0.
async fn write_legacy_dedup_key(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    old: &str,
) {
    let _: () = redis::cmd("SET")
        .arg(format!("{{{prefix}}}:dedup:v1:{old}"))
        .arg("1-0")
        .arg("EX")
        .arg(60)
        .query_async(conn)
        .await
        .unwrap();
}

/// Dead letters keep raw bodies (contacts' data): they age out after
/// `deadletter_max_age`, when a new one is stored and when the router trims between reads.
#[tokio::test]
async fn dead_letters_age_out() {
    let short = || Limits {
        deadletter_max_age: Duration::from_millis(1000),
        ..limits(100)
    };
    for b in backends_with(short).await {
        let name = b.name();
        b.accept(batch(&[], &["dl_old"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        b.accept(batch(&[], &["dl_new"])).await.unwrap();
        let keys = |entries: Vec<switchboard::accept::StreamEntry>| {
            entries.into_iter().map(|e| e.key).collect::<Vec<_>>()
        };
        let dead = b.read(StreamName::DeadLetter, 10, None).await.unwrap();
        assert_eq!(keys(dead), ["dl_new"], "{name}: trimmed when one is stored");
        assert_eq!(b.trim_deadletters().await.unwrap(), 0, "{name}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(b.trim_deadletters().await.unwrap(), 1, "{name}");
        let dead = b.read(StreamName::DeadLetter, 10, None).await.unwrap();
        assert!(dead.is_empty(), "{name}: trimmed with none arriving");
    }
}

/// A Redis backend with this inbound bound, its prefix, and a plain connection to look at
/// the keys.
async fn redis_bounded(max_backlog: u64) -> (Backend, String, redis::aio::MultiplexedConnection) {
    let url = redis_url();
    let conn = require_redis(&url).await;
    let prefix = format!("conf-{}", uuid::Uuid::new_v4().simple());
    let cfg = conf_config(url, prefix.clone());
    let b = Backend::Redis(Box::new(
        RedisBackend::new(&cfg, limits(max_backlog)).unwrap(),
    ));
    (b, prefix, conn)
}

/// A bound that leaves room for accepts as a transaction.
async fn redis_with_room() -> (Backend, String, redis::aio::MultiplexedConnection) {
    redis_bounded(100_000).await
}

/// The keys of the entries the router is handed (the duplicates' entries dropped), sorted.
async fn routable_keys(b: &Backend) -> Vec<String> {
    let read = b
        .read_inbound("r", 100, Duration::from_millis(10), Duration::from_secs(30))
        .await
        .unwrap();
    let mut keys: Vec<String> = read.into_iter().map(|e| e.key).collect();
    keys.sort();
    keys
}

/// The inbound entries' `event_id` and `tok` fields, oldest first.
async fn inbound_tokens(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Vec<(String, Option<String>)> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{{{prefix}}}:inbound"))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            (get("event_id").unwrap(), get("tok"))
        })
        .collect()
}

/// Past the first accept (which learns the backlog), accepts run as a transaction of plain
/// commands: a duplicate's entry is written too, answered as a duplicate, and dropped by the
/// router unpublished, whether it raced its original in the same call, in concurrent calls
/// or came later.
#[tokio::test]
async fn redis_accepts_as_a_transaction_publish_each_event_once() {
    let (b, prefix, mut conn) = redis_with_room().await;
    assert_eq!(
        b.accept(batch(&["evt_first"], &[])).await.unwrap().events,
        [true]
    );
    let r = b
        .accept(batch(&["evt_a", "evt_a", "evt_first"], &[]))
        .await
        .unwrap();
    assert_eq!(r.events, [true, false, false]);
    let racing = (0..8).map(|_| b.accept(batch(&["evt_b", "evt_c"], &[])));
    let mut fresh = [0, 0];
    for r in futures_util::future::join_all(racing).await {
        let r = r.unwrap();
        for (n, f) in fresh.iter_mut().zip(r.events) {
            *n += f as u32;
        }
    }
    assert_eq!(fresh, [1, 1], "one accept stored each event");
    let written = inbound_tokens(&mut conn, &prefix).await;
    assert!(
        written.iter().skip(1).all(|(_, tok)| tok.is_some()),
        "the accepts after the first ran as transactions: {written:?}"
    );
    assert_eq!(written.len(), 1 + 3 + 16, "duplicates' entries too");
    let read = b
        .read_inbound("r", 100, Duration::from_millis(10), Duration::from_secs(30))
        .await
        .unwrap();
    let mut keys: Vec<&str> = read.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["evt_a", "evt_b", "evt_c", "evt_first"]);
    assert_eq!(
        b.stats().await.unwrap().inbound,
        4,
        "the duplicates' entries are deleted"
    );
    assert_eq!(b.publish(&read).await.unwrap(), 4);
    assert_eq!(b.stats().await.unwrap().inbound, 0);
    // A redelivery later: answered as a duplicate, its entry dropped too.
    assert_eq!(
        b.accept(batch(&["evt_b"], &[])).await.unwrap().events,
        [false]
    );
    assert!(routable_keys(&b).await.is_empty());
    assert_eq!(b.stats().await.unwrap().inbound, 0);
    let events = b.read(StreamName::Events, 10, None).await.unwrap();
    assert_eq!(events.len(), 4);
}

/// In a transaction, the legacy dedup key is copied to the current one when only it exists:
/// a redelivery across the upgrade is a duplicate, and the router drops its entry.
#[tokio::test]
async fn redis_transaction_accepts_respect_legacy_dedup_keys() {
    let (b, prefix, mut conn) = redis_with_room().await;
    b.accept(batch(&["evt_first"], &[])).await.unwrap();
    write_legacy_dedup_key(&mut conn, &prefix, "evt_old").await;
    let mut scoped = item("evt_new");
    scoped.legacy_key = Some("evt_old".into());
    let r = b
        .accept(Batch {
            events: vec![scoped, item("evt_other")],
            dead_letters: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(r.events, [false, true]);
    assert!(inbound_tokens(&mut conn, &prefix).await[1].1.is_some());
    let held: String = redis::cmd("GET")
        .arg(format!("{{{prefix}}}:dedup:v2:evt_new"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, "1-0", "the legacy key's value, copied");
    assert_eq!(routable_keys(&b).await, ["evt_first", "evt_other"]);
}

/// An entry that waited longer than the dedup window (its key expired) is still published:
/// a verified webhook is never dropped.
#[tokio::test]
async fn redis_an_entry_whose_dedup_key_expired_is_published() {
    let (b, prefix, mut conn) = redis_with_room().await;
    b.accept(batch(&["evt_first"], &[])).await.unwrap();
    assert_eq!(
        b.accept(batch(&["evt_late"], &[])).await.unwrap().events,
        [true]
    );
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{prefix}}}:dedup:v2:evt_late"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(routable_keys(&b).await, ["evt_first", "evt_late"]);
}

/// Transactions keep `TRANSACTION_MARGIN` (2,048 entries) below the inbound bound; closer
/// to it the script decides, so the bound is still exact for one gateway.
#[tokio::test]
async fn redis_the_inbound_bound_stays_exact_when_transactions_run() {
    let bound = 2048 + 50;
    let (b, prefix, mut conn) = redis_bounded(bound).await;
    let keys: Vec<String> = (0..bound + 1).map(|i| format!("evt_{i}")).collect();
    for chunk in keys[..bound as usize].chunks(10) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let r = b.accept(batch(&chunk, &[])).await.unwrap();
        assert!(r.events.iter().all(|f| *f));
    }
    match b.accept(batch(&[keys[bound as usize].as_str()], &[])).await {
        Err(BackendError::Backpressure { backlog }) => assert_eq!(backlog, bound),
        other => panic!("expected backpressure at the bound, got {other:?}"),
    }
    let written = inbound_tokens(&mut conn, &prefix).await;
    assert_eq!(written.len() as u64, bound);
    let by_transaction = written.iter().filter(|(_, t)| t.is_some()).count();
    assert!(
        by_transaction > 0 && by_transaction < written.len(),
        "transactions far from the bound, the script near it: {by_transaction}"
    );
}
