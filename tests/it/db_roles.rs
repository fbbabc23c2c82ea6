//! Least privilege in PostgreSQL (docs/security.md, "Database roles"): with the roles
//! `switchboard db-roles` creates, the gateway works as the runtime role — migrations as the
//! owner, then webhooks persisted, a contact erased and exported, retention — while that
//! role cannot remove or change an audit row by any means a SQL session has.

use serde_json::Value;
use switchboard::config::{BackendKind, Config};
use switchboard::persist::privacy::audit;
use switchboard::persist::roles::setup_sql;
use switchboard::persist::Postgres;

use crate::helpers::*;
use crate::pg::*;

fn as_role(base: &str, role: &str) -> String {
    let mut u = url::Url::parse(base).unwrap();
    u.set_username(role).unwrap();
    u.set_password(None).unwrap();
    u.to_string()
}

/// Roles with names of their own (roles are cluster-wide), created as the roles SQL says.
struct Roles {
    owner: String,
    runtime: String,
    schema: String,
}

impl Roles {
    async fn create(su: &tokio_postgres::Client) -> Roles {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let r = Roles {
            owner: format!("sb_own_{id}"),
            runtime: format!("sb_rt_{id}"),
            schema: fresh_schema(),
        };
        // The SQL `switchboard db-roles` prints for the database of postgres.url.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["db-roles", "--config"])
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
            .args(["--owner", &r.owner, "--runtime", &r.runtime])
            .env("SWITCHBOARD__POSTGRES__URL", pg_url())
            .env("SWITCHBOARD__POSTGRES__SCHEMA", &r.schema)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sql = String::from_utf8(out.stdout).unwrap();
        let database = url::Url::parse(&pg_url()).unwrap().path()[1..].to_string();
        assert_eq!(
            sql,
            setup_sql(&database, &r.schema, &r.owner, &r.runtime).unwrap()
        );
        su.batch_execute(&sql).await.unwrap();
        r
    }

    fn config(&self) -> Config {
        let mut c = pg_config(BackendKind::Memory, &pg_url());
        c.postgres.schema = self.schema.clone();
        c.postgres.url = as_role(&pg_url(), &self.runtime);
        c.postgres.migrate_url = Some(as_role(&pg_url(), &self.owner));
        c.postgres.runtime_role = Some(self.runtime.clone());
        c
    }

    async fn drop(self, su: &tokio_postgres::Client) {
        drop_schema(su, &self.schema).await;
        for r in [&self.owner, &self.runtime] {
            su.batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE {r}"))
                .await
                .unwrap();
        }
    }
}

async fn audit_rows(su: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    su.query(
        &format!("SELECT to_jsonb(a)::text FROM {schema}.audit_log a ORDER BY id"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn the_runtime_role_runs_the_gateway_and_cannot_touch_the_audit_log() {
    let su = require_postgres(&pg_url()).await;
    let roles = Roles::create(&su).await;
    let config = roles.config();
    let schema = roles.schema.clone();

    // Migrations as the owner; the runtime role gets its grants from the same run.
    let pg = Postgres::new(&config).unwrap();
    assert_eq!(pg.migrate().await.unwrap().len(), 5);
    assert!(pg.migrate().await.unwrap().is_empty(), "idempotent");
    let owner: String = su
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = 'audit_log'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, roles.owner);
    assert!(!pg.can_bypass_audit_log().await.unwrap());
    let superuser = Postgres::new(&pg_config(BackendKind::Memory, &pg_url())).unwrap();
    assert!(superuser.can_bypass_audit_log().await.unwrap());

    // The gateway works under the runtime role: webhooks persisted, export, erasure (each
    // writes its audit row), retention.
    let app = spawn_with(config.clone()).await;
    let contact = "34600000077";
    let body = serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": "R"}, "wa_id": contact}],
            "messages": [{"from": contact, "id": unique_wamid(), "timestamp": "1749416383",
                          "type": "text", "text": {"body": "hello"}}]
        }}]}]
    }))
    .unwrap();
    assert_eq!(app.post(&body).await.status(), 200);
    let messages = format!("SELECT count(*) FROM {schema}.messages");
    assert_eq!(wait_count(&su, &messages, 1, 20).await, 1);
    let url = app.url(&format!("/v1/tenants/acme/contacts/{contact}"));
    let export = app
        .client
        .get(format!("{url}/export"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let erased: Value = app
        .client
        .delete(&url)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(erased["erased"]["messages"], 1, "{erased}");
    app.stop().await;
    switchboard::persist::privacy::run_retention(&pg, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let client = pg.client().await.unwrap();
    audit(&**client, "test", Some("acme"), "test.row", "x", None, None)
        .await
        .unwrap();
    let before = audit_rows(&su, &schema).await;
    assert!(before.len() >= 3, "{before:?}");

    // Every way a session has to remove or change an audit row is refused.
    let rt = &roles.runtime;
    let attempts = [
        "DELETE FROM audit_log WHERE true".to_string(),
        "UPDATE audit_log SET actor = 'someone else'".into(),
        "TRUNCATE audit_log".into(),
        "SET session_replication_role = replica".into(),
        "BEGIN; SET LOCAL session_replication_role = replica; DELETE FROM audit_log; COMMIT".into(),
        "ALTER TABLE audit_log DISABLE TRIGGER ALL".into(),
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete".into(),
        "DROP TRIGGER audit_log_no_update_delete ON audit_log".into(),
        "DROP TABLE audit_log".into(),
        "ALTER TABLE audit_log RENAME TO audit_log_old".into(),
        "CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$"
            .into(),
        "CREATE TABLE audit_log_copy (id bigint)".into(),
        format!("ALTER ROLE {rt} SUPERUSER"),
        format!("ALTER ROLE {rt} SET session_replication_role = replica"),
        format!("SET ROLE {}", roles.owner),
    ];
    // A GRANT by a role without the grant option grants nothing (Postgres only warns):
    // the DELETE after it is still refused.
    let _ = client
        .batch_execute(&format!("GRANT DELETE, TRUNCATE ON audit_log TO {rt}"))
        .await;
    for sql in &attempts {
        let err = client
            .batch_execute(sql)
            .await
            .expect_err(&format!("the runtime role ran {sql:?}"));
        let msg = err.as_db_error().map(|d| d.message().to_string());
        assert!(msg.is_some(), "{sql}: {err}");
        let _ = client.batch_execute("ROLLBACK").await;
    }
    assert_eq!(
        audit_rows(&su, &schema).await,
        before,
        "not one audit row changed"
    );
    // Still working after all that.
    audit(
        &**client,
        "test",
        Some("acme"),
        "test.after",
        "x",
        None,
        None,
    )
    .await
    .unwrap();
    drop(client);
    drop(pg);
    roles.drop(&su).await;
}
