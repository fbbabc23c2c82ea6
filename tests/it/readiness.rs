//! `/readyz` says ready only when every enabled dependency is usable (issue 12, item 9).

use std::time::{Duration, Instant};

use reqwest::Method;
use switchboard::config::BackendKind;

use crate::helpers::*;
use crate::pg::*;

/// The advisory lock `switchboard migrate` and `migrate_on_start` take ("sb").
const MIGRATE_LOCK_CLASS: i32 = 0x7362;

async fn ready_status(app: &TestApp) -> (u16, serde_json::Value) {
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

/// With `migrate_on_start`, while the migrations cannot run yet (another migrator holds the
/// lock), `/readyz` answers 503 `dependency_unavailable` — as the admin API does meanwhile —
/// and 200 once they are applied.
#[tokio::test]
async fn not_ready_until_postgres_is_migrated() {
    let mut config = pg_config(BackendKind::Redis, &pg_url());
    config.postgres.migrate_on_start = true;
    let schema = config.postgres.schema.clone();
    let locker = require_postgres(&config.postgres.url).await;
    locker
        .query_one(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&MIGRATE_LOCK_CLASS, &schema],
        )
        .await
        .unwrap();
    let app = spawn_with(config).await;

    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let (status, body) = ready_status(&app).await;
        assert_eq!(status, 503, "ready before the migrations ran: {body}");
        assert_eq!(body["code"], "dependency_unavailable", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("migrat"),
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = app
        .client
        .request(Method::GET, app.url("/v1/tenants"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 503, "the admin API cannot work yet either");

    locker
        .query_one(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&MIGRATE_LOCK_CLASS, &schema],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ready_status(&app).await;
        if status == 200 {
            assert_eq!(body["persister"]["migrated"], true, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admin = app
            .client
            .get(app.url("/v1/tenants"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        if admin.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "admin API: {}", admin.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop_schema(&locker, &schema).await;
}
