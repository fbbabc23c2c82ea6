//! PostgreSQL stopped mid-run (a private server; the shared one is never touched), for
//! longer than the events stream's retention would allow: webhooks keep getting 200, the
//! events stream keeps every unstored entry past `events_max_len`, and once Postgres is
//! back every event is stored exactly once.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use switchboard::config::BackendKind;

use crate::helpers::*;
use crate::pg::*;

/// A webhook with `n` new messages, remembered in `ids`.
fn post(ids: &mut Vec<String>, n: usize) -> Vec<u8> {
    let batch: Vec<String> = (0..n).map(|_| unique_wamid()).collect();
    ids.extend(batch.iter().cloned());
    wa_text_batch(PHONE_ID, &batch)
}

async fn outage(backend: BackendKind) {
    let mut server = PrivatePostgres::start();
    let mut config = pg_config(backend, &server.url());
    // A retention far below what the outage accumulates.
    config.streams.events_max_len = 10;
    config.postgres.batch_size = 50;
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    drop(c);
    let app = spawn_with(config).await;

    let mut ids: Vec<String> = Vec::new();
    for _ in 0..2 {
        assert_eq!(app.post(&post(&mut ids, 25)).await.status(), 200);
    }
    let c = require_postgres(&server.url()).await;
    c.batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .unwrap();
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM messages", 50, 20).await,
        50
    );
    drop(c);

    server.stop();
    // 400 more while Postgres is down: ingestion does not wait for it.
    for _ in 0..8 {
        let res = app.post(&post(&mut ids, 50)).await;
        assert_eq!(
            res.status(),
            200,
            "{backend:?}: ingestion never waits for Postgres"
        );
    }
    assert!(app.wait_for_events(400).await.len() >= 400);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = app.events().await;
    assert!(
        events.len() >= 400,
        "{backend:?}: unstored entries are not trimmed (events_max_len = 10): {} left",
        events.len()
    );
    if backend == BackendKind::Redis {
        let mut r = app.redis().await;
        let len: u64 = r.xlen(app.key("events")).await.unwrap();
        assert!(len >= 400, "XLEN {len}");
    }
    let ready: serde_json::Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "the gateway stays ready: {ready}");
    assert_eq!(ready["persister"]["postgres"], "down", "{ready}");
    let lag = ready["persister"]["lag"]["pending"].as_u64().unwrap_or(0)
        + ready["persister"]["lag"]["undelivered"]
            .as_u64()
            .unwrap_or(0);
    assert!(lag >= 400, "lag counts the unstored events: {ready}");
    let m = app.metrics().await;
    assert!(
        counter(
            &m,
            "switchboard_persister_failures_total",
            &[("op", "write")]
        ) >= 1.0
    );

    server.restart();
    let c = require_postgres(&server.url()).await;
    c.batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let n = count(&c, "SELECT count(*) FROM messages").await;
        if n >= ids.len() as i64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = c
        .query("SELECT provider_message_id FROM messages", &[])
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(rows.len(), ids.len(), "{backend:?}: nothing doubled");
    for id in &ids {
        assert!(stored.contains(id), "{backend:?}: {id} lost");
    }
    // Stored: the retention applies again (memory trims exactly; Redis by whole nodes).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = app.events().await.len();
        let bound = if backend == BackendKind::Memory {
            10
        } else {
            400
        };
        if left <= bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{backend:?}: stream not trimmed: {left}"
        );
        // Trimming runs when the persister acknowledges: give it something to store.
        assert_eq!(app.post(&post(&mut ids, 1)).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn postgres_down_longer_than_retention_loses_nothing_on_redis() {
    outage(BackendKind::Redis).await;
}

#[tokio::test]
async fn postgres_down_longer_than_retention_loses_nothing_on_memory() {
    outage(BackendKind::Memory).await;
}
