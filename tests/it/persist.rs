//! The persister: batches written idempotently, statuses in any order, conversations by
//! assignment seq, and the whole path webhook → Redis → Postgres with its metrics.

use serde_json::json;
use switchboard::config::{BackendKind, Config};
use switchboard::persist::write::write_batch;

use crate::helpers::*;
use crate::pg::*;

async fn counts(c: &tokio_postgres::Client) -> [i64; 5] {
    [
        count(c, "SELECT count(*) FROM messages").await,
        count(c, "SELECT count(*) FROM message_statuses").await,
        count(c, "SELECT count(*) FROM deliveries").await,
        count(c, "SELECT count(*) FROM assignments").await,
        count(c, "SELECT count(*) FROM conversations").await,
    ]
}

#[tokio::test]
async fn writing_the_same_batch_twice_changes_nothing() {
    let config = pg_config(BackendKind::Memory, &pg_url());
    let (pg, c) = migrated(&config).await;
    let batch = vec![
        event(
            json!({"provider_message_id": "wamid.A", "message": {"type": "text", "text": "hi"},
                     "assignment": {"action": "assigned", "agent": "alice", "team": "support",
                                    "strategy": "least_loaded", "reason": "r", "seq": 1}}),
        ),
        event(
            json!({"provider_message_id": "wamid.B", "message": {"type": "text", "text": "again"}}),
        ),
        event(json!({"kind": "status", "direction": "outbound",
                     "status": {"state": "delivered", "message_id": "wamid.OUT"}})),
        event(json!({"kind": "assignment",
                     "assignment": {"action": "closed", "strategy": "manual", "reason": "closed by agent", "seq": 2}})),
    ];
    let mut client = pg.client().await.unwrap();
    let first = write_batch(&mut client, &batch).await.unwrap();
    assert_eq!(
        (
            first.messages,
            first.statuses,
            first.deliveries,
            first.assignments,
            first.conversations
        ),
        (2, 1, 1, 2, 1)
    );
    let after_first = counts(&c).await;
    assert_eq!(after_first, [2, 1, 1, 2, 1]);
    let conv = c
        .query_one("SELECT agent, state, assignment_seq, first_message_at <= last_message_at FROM conversations", &[])
        .await
        .unwrap();
    assert_eq!(
        conv.get::<_, Option<String>>(0),
        None,
        "closed at seq 2 clears the owner"
    );
    assert_eq!(conv.get::<_, String>(1), "closed");
    assert_eq!(conv.get::<_, i64>(2), 2);
    assert!(conv.get::<_, bool>(3));

    // Again, and again in reverse order: the same rows.
    let second = write_batch(&mut client, &batch).await.unwrap();
    assert_eq!(
        (second.messages, second.statuses, second.assignments),
        (0, 0, 0)
    );
    let mut reversed = batch.clone();
    reversed.reverse();
    write_batch(&mut client, &reversed).await.unwrap();
    assert_eq!(counts(&c).await, after_first);
    let conv = c
        .query_one("SELECT state, assignment_seq FROM conversations", &[])
        .await
        .unwrap();
    assert_eq!(
        (conv.get::<_, String>(0), conv.get::<_, i64>(1)),
        ("closed".into(), 2)
    );
    drop(client);
    drop_schema(&c, &config.postgres.schema).await;
}

#[tokio::test]
async fn statuses_in_any_order_end_at_the_highest_and_failed_is_final() {
    let config = pg_config(BackendKind::Memory, &pg_url());
    let (pg, c) = migrated(&config).await;
    let mut client = pg.client().await.unwrap();
    let status = |mid: &str, state: &str| {
        event(json!({"kind": "status", "direction": "outbound",
                     "status": {"state": state, "message_id": mid}}))
    };
    // An echo of a message the business sent elsewhere: we have it, so it carries the state.
    let echo = event(
        json!({"direction": "outbound", "provider_message_id": "wamid.R",
                            "message": {"type": "text", "text": "sent from the phone"}}),
    );
    write_batch(&mut client, &[echo]).await.unwrap();
    // read before delivered before sent, each in its own batch.
    for state in ["read", "delivered", "sent"] {
        write_batch(&mut client, &[status("wamid.R", state)])
            .await
            .unwrap();
    }
    // In one batch too, and for a message we never saw.
    write_batch(
        &mut client,
        &[
            status("wamid.S", "read"),
            status("wamid.S", "sent"),
            status("wamid.S", "delivered"),
        ],
    )
    .await
    .unwrap();
    // failed, then read: stays failed; read, then failed: becomes failed.
    for state in ["failed", "read"] {
        write_batch(&mut client, &[status("wamid.F1", state)])
            .await
            .unwrap();
    }
    for state in ["read", "failed", "delivered"] {
        write_batch(&mut client, &[status("wamid.F2", state)])
            .await
            .unwrap();
    }
    let state = |mid: &'static str| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT status FROM deliveries WHERE provider_message_id = $1",
                &[&mid],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    assert_eq!(state("wamid.R").await, "read");
    assert_eq!(state("wamid.S").await, "read");
    assert_eq!(state("wamid.F1").await, "failed");
    assert_eq!(state("wamid.F2").await, "failed");
    let m = c
        .query_one(
            "SELECT status, status_rank FROM messages WHERE provider_message_id = 'wamid.R'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(m.get::<_, Option<String>>(0).as_deref(), Some("read"));
    // Every status event is kept.
    assert_eq!(
        count(&c, "SELECT count(*) FROM message_statuses").await,
        3 + 3 + 2 + 3
    );
    drop(client);
    drop_schema(&c, &config.postgres.schema).await;
}

#[tokio::test]
async fn conversation_follows_the_highest_assignment_seq_whatever_the_arrival_order() {
    let config = pg_config(BackendKind::Memory, &pg_url());
    let (pg, c) = migrated(&config).await;
    let mut client = pg.client().await.unwrap();
    let change = |seq: u64, action: &str, agent: Option<&str>| {
        event(json!({"kind": "assignment", "conversation_id": "conv_seq",
                     "assignment": {"action": action, "agent": agent, "strategy": "round_robin",
                                    "reason": "test", "seq": seq}}))
    };
    write_batch(&mut client, &[change(3, "transferred", Some("carol"))])
        .await
        .unwrap();
    write_batch(&mut client, &[change(1, "assigned", Some("alice"))])
        .await
        .unwrap();
    write_batch(
        &mut client,
        &[
            change(2, "transferred", Some("bob")),
            change(3, "kept", Some("carol")),
        ],
    )
    .await
    .unwrap();
    let row = c
        .query_one("SELECT agent, state, assignment_seq FROM conversations WHERE conversation_id = 'conv_seq'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("carol"));
    assert_eq!(row.get::<_, String>(1), "transferred");
    assert_eq!(row.get::<_, i64>(2), 3);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM assignments WHERE conversation_id = 'conv_seq'"
        )
        .await,
        4
    );
    drop(client);
    drop_schema(&c, &config.postgres.schema).await;
}

async fn end_to_end(backend: BackendKind) {
    let config = pg_config(backend, &pg_url());
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let ids: Vec<String> = (0..30).map(|_| unique_wamid()).collect();
    for chunk in ids.chunks(10) {
        assert_eq!(
            app.post(&wa_text_batch(PHONE_ID, chunk)).await.status(),
            200
        );
    }
    let out = unique_wamid();
    let statuses = wa_statuses(&[
        (&out, "read", 1749416390),
        (&out, "delivered", 1749416385),
        (&out, "sent", 1749416383),
    ]);
    assert_eq!(app.post(&statuses).await.status(), 200);
    // A redelivery changes nothing.
    assert_eq!(
        app.post(&wa_text_batch(PHONE_ID, &ids[..10]))
            .await
            .status(),
        200
    );

    let n = wait_count(&c, "SELECT count(*) FROM messages", 30, 20).await;
    assert_eq!(n, 30, "{backend:?}: every message stored");
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM message_statuses", 3, 20).await,
        3
    );
    let d = c
        .query_one(
            "SELECT status FROM deliveries WHERE provider_message_id = $1",
            &[&out],
        )
        .await
        .unwrap();
    assert_eq!(d.get::<_, String>(0), "read");
    let conv = c
        .query_one("SELECT count(*), min(contact_id), bool_and(first_message_at IS NOT NULL) FROM conversations", &[])
        .await
        .unwrap();
    assert_eq!(conv.get::<_, i64>(0), 1, "one contact, one conversation");
    assert_eq!(
        conv.get::<_, Option<String>>(1).as_deref(),
        Some("16505551234")
    );
    let stored: serde_json::Value = c
        .query_one(
            "SELECT event FROM messages WHERE provider_message_id = $1",
            &[&ids[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["message"]["text"], format!("hello {}", ids[0]));

    // /readyz shows the persister; the lag drains to 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ready: serde_json::Value = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["persister"]["postgres"], "up", "{ready}");
        if ready["persister"]["lag"]["pending"] == 0
            && ready["persister"]["lag"]["undelivered"] == 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never drained: {ready}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let m = app.metrics().await;
    assert!(
        counter(
            &m,
            "switchboard_persister_rows_total",
            &[("table", "messages")]
        ) >= 30.0
    );
    assert!(
        counter(
            &m,
            "switchboard_persister_events_total",
            &[("outcome", "stored")]
        ) >= 33.0
    );
    assert!(
        counter(
            &m,
            "switchboard_persister_batch_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        m.contains("switchboard_persister_lag"),
        "lag gauge exported"
    );
    app.stop().await;
    drop_schema(&c, &schema).await;
}

#[tokio::test]
async fn webhooks_end_in_postgres_on_redis() {
    end_to_end(BackendKind::Redis).await;
}

#[tokio::test]
async fn webhooks_end_in_postgres_on_memory() {
    end_to_end(BackendKind::Memory).await;
}

#[tokio::test]
async fn migrations_are_tracked_and_idempotent_and_config_names_bad_keys() {
    let config = pg_config(BackendKind::Memory, &pg_url());
    let (pg, c) = migrated(&config).await;
    assert!(
        pg.migrate().await.unwrap().is_empty(),
        "nothing left to apply"
    );
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    // Two migrators at once on a fresh schema: both succeed, each migration applied once.
    let mut twin = config.clone();
    twin.postgres.schema = fresh_schema();
    let (a, b) = (
        switchboard::persist::Postgres::new(&twin).unwrap(),
        switchboard::persist::Postgres::new(&twin).unwrap(),
    );
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let mut all = ra.unwrap();
    all.extend(rb.unwrap());
    all.sort();
    assert_eq!(all, [1, 2, 3, 4, 5]);
    drop_schema(&c, &twin.postgres.schema).await;
    drop_schema(&c, &config.postgres.schema).await;

    let err = Config::from_toml(&format!(
        "{BASE_CONFIG}\n[postgres]\nschema = \"Bad-Name\"\nurl = \"mysql://x\"\npool_size = 0\n"
    ))
    .unwrap_err()
    .to_string();
    for key in ["postgres.schema", "postgres.url", "postgres.pool_size"] {
        assert!(err.contains(key), "{key} named in: {err}");
    }
    let err = Config::from_toml(&format!(
        "{BASE_CONFIG}\n[tenants.extra]\nretention_days = 0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("tenants.extra.retention_days"), "{err}");
}
