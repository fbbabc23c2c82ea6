//! No message content or contact identifier in the logs, at any level (issue 12, item 10).

use std::time::Duration;

use serde_json::json;

use crate::gateway_bin::Gateway;
use crate::helpers::*;
use crate::pg::*;

/// The binary at `RUST_LOG=trace` (and `[log] level = "debug"`), with Redis and PostgreSQL
/// persistence: a webhook with a distinctive text, contact id and contact name goes all the
/// way to PostgreSQL, and none of the three appears in anything the process printed.
/// (tokio_postgres logs each statement with its parameters at DEBUG.)
#[tokio::test]
async fn logs_carry_no_message_text_or_contact_at_trace_level() {
    let url = pg_url();
    let client = require_postgres(&url).await;
    require_redis(&redis_url()).await;
    let schema = fresh_schema();
    let gw = Gateway::start(
        BASE_CONFIG,
        &[
            ("SWITCHBOARD__BACKEND", "redis".into()),
            ("SWITCHBOARD__REDIS__URL", redis_url()),
            (
                "SWITCHBOARD__REDIS__KEY_PREFIX",
                format!("test-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("SWITCHBOARD__POSTGRES__ENABLED", "true".into()),
            ("SWITCHBOARD__POSTGRES__URL", url.clone()),
            ("SWITCHBOARD__POSTGRES__SCHEMA", schema.clone()),
            ("SWITCHBOARD__POSTGRES__MIGRATE_ON_START", "true".into()),
            ("SWITCHBOARD__POSTGRES__BLOCK_MS", "100".into()),
            ("SWITCHBOARD__LOG__LEVEL", "debug".into()),
            ("SWITCHBOARD__LOG__FORMAT", "json".into()),
            ("RUST_LOG", "trace".into()),
        ],
    );
    let contact = format!("1999{}", &uuid::Uuid::new_v4().as_u128().to_string()[..10]);
    let text = format!("PRIVATE-TEXT-{}", uuid::Uuid::new_v4().simple());
    let name = format!("Zebulon{}", uuid::Uuid::new_v4().simple());
    let wamid = unique_wamid();
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": name}, "wa_id": contact}],
            "messages": [{"from": contact, "id": wamid, "timestamp": "1749416383",
                          "type": "text", "text": {"body": text}}]
        }}]}]
    }))
    .unwrap();
    let app = TestApp::at(&gw.base());
    assert_eq!(app.post(&body).await.status(), 200);
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = client
            .query_opt(
                "SELECT count(*) FROM messages WHERE provider_message_id = $1",
                &[&wamid],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if stored == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message did not reach PostgreSQL: {}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was logged while the persister wrote it (and a moment more).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = gw.logs();
    drop(gw);
    drop_schema(&client, &schema).await;
    assert!(
        logs.contains("request done"),
        "debug logging is on (the access line at DEBUG): {logs}"
    );
    for (what, needle) in [("text", &text), ("contact id", &contact), ("name", &name)] {
        let hit = logs.lines().find(|l| l.contains(needle.as_str()));
        assert!(hit.is_none(), "the logs carry the {what}: {hit:?}");
    }
}
