//! Privacy: the audit log refuses changes, erase/export through the API, erased contacts'
//! in-flight events are not stored, retention by tenant and by disconnected source, and
//! Meta's data deletion callback with valid, tampered, expired and malformed requests.

use serde_json::{json, Value};
use switchboard::config::BackendKind;
use switchboard::persist::privacy::run_retention;
use switchboard::persist::write::write_batch;
use switchboard::verify::signed_request::sign;

use crate::helpers::*;
use crate::pg::*;

#[tokio::test]
async fn audit_log_refuses_update_delete_and_truncate() {
    let config = pg_config(BackendKind::Memory, &pg_url());
    let (_pg, c) = migrated(&config).await;
    c.execute(
        "INSERT INTO audit_log (actor, action, target, after) VALUES ('test', 'x', 'y', '{}')",
        &[],
    )
    .await
    .unwrap();
    for sql in [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = c.execute(sql, &[]).await.unwrap_err();
        let msg = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(
        count(&c, "SELECT count(*) FROM audit_log WHERE actor = 'test'").await,
        1
    );
    drop_schema(&c, &config.postgres.schema).await;
}

fn wa_text_from(contact: &str, id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": "Someone"}, "wa_id": contact}],
            "messages": [{"from": contact, "id": id, "timestamp": "1749416383", "type": "text",
                          "text": {"body": format!("private words of {contact}")}}]
        }}]}]
    }))
    .unwrap()
}

#[tokio::test]
async fn erase_and_export_one_contact_through_the_api() {
    let config = pg_config(BackendKind::Redis, &pg_url());
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let (alice, bob) = ("34600000001", "34600000002");
    for contact in [alice, alice, alice, bob] {
        assert_eq!(
            app.post(&wa_text_from(contact, &unique_wamid()))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM messages", 4, 20).await,
        4
    );

    let url = |path: &str| app.url(&format!("/v1/tenants/acme/contacts/{alice}{path}"));
    // Token required.
    assert_eq!(
        app.client
            .get(url("/export"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let export: Value = app
        .client
        .get(url("/export"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(export["contact_id"], alice);
    assert_eq!(export["messages"].as_array().unwrap().len(), 3);
    assert_eq!(export["conversations"].as_array().unwrap().len(), 1);
    assert!(export["messages"][0]["event"]["message"]["text"]
        .as_str()
        .unwrap()
        .contains(alice));
    let unknown = app
        .client
        .get(app.url("/v1/tenants/nope/contacts/1/export"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let res = app
        .client
        .delete(url(""))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let erased: Value = res.json().await.unwrap();
    assert_eq!(erased["erased"]["messages"], 3, "{erased}");
    assert_eq!(erased["erased"]["conversations"], 1, "{erased}");
    assert_eq!(erased["erased"]["stream_entries"], 3, "{erased}");

    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM messages WHERE contact_id = '{alice}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM conversations WHERE contact_id = '{alice}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM messages WHERE contact_id = '{bob}'")
        )
        .await,
        1,
        "others untouched"
    );
    let events = app.events().await;
    assert_eq!(events.len(), 1, "the contact's stream entries are gone");
    assert_eq!(events[0]["event"]["contact"]["id"], bob);
    // The audit log names the operation, not the contact.
    let audit = c
        .query(
            "SELECT action, target, after::text FROM audit_log ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<String> = audit.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["contact.export", "contact.erase"]);
    for r in &audit {
        let target: String = r.get(1);
        let after: String = r.get(2);
        assert!(
            target.starts_with("contact:") && !target.contains(alice) && !after.contains(alice)
        );
    }
    // Erasing again is fine and finds nothing.
    let again: Value = app
        .client
        .delete(url(""))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["erased"]["messages"], 0);
    app.stop().await;
    drop_schema(&c, &schema).await;
}

#[tokio::test]
async fn events_of_an_erased_contact_received_before_the_erasure_are_not_stored() {
    let config = pg_config(BackendKind::Memory, &pg_url());
    let (pg, c) = migrated(&config).await;
    let backend =
        switchboard::accept::Backend::Memory(switchboard::accept::memory::MemoryBackend::new(
            switchboard::accept::Limits::from_config(&config),
        ));
    let before =
        switchboard::event::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    let late = event(
        json!({"contact": {"id": "erased-1"}, "received_at": before, "occurred_at": before,
                            "message": {"type": "text", "text": "in flight"}}),
    );
    switchboard::persist::privacy::erase_contact(&pg, &backend, "test", "acme", "erased-1")
        .await
        .unwrap();
    let after = event(
        json!({"contact": {"id": "erased-1"}, "message": {"type": "text", "text": "wrote again"}}),
    );
    let mut client = pg.client().await.unwrap();
    let w = write_batch(&mut client, &[late, after]).await.unwrap();
    assert_eq!((w.erased, w.messages), (1, 1));
    let text: String = c
        .query_one("SELECT text FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(text, "wrote again");
    drop(client);
    drop_schema(&c, &config.postgres.schema).await;
}

#[tokio::test]
async fn retention_by_tenant_and_by_disconnected_source() {
    let mut config = pg_config(BackendKind::Memory, &pg_url());
    config.tenants.get_mut("acme").unwrap().retention_days = Some(30);
    let (pg, c) = migrated(&config).await;
    let now = time::OffsetDateTime::now_utc();
    let at = |days: i64| switchboard::event::rfc3339(now - time::Duration::days(days));
    let msg = |tenant: &str, source: &str, conv: &str, days: i64| {
        event(
            json!({"tenant": tenant, "source": source, "conversation_id": conv,
                     "received_at": at(days), "occurred_at": at(days),
                     "message": {"type": "text", "text": "x"}}),
        )
    };
    let mut client = pg.client().await.unwrap();
    write_batch(
        &mut client,
        &[
            msg("acme", "meta_test", "conv_old", 40),
            msg("acme", "meta_test", "conv_new", 1),
            msg("globex", "meta_test", "conv_g", 40),
            msg("globex", "gone_source", "conv_gone", 2),
        ],
    )
    .await
    .unwrap();
    drop(client);

    let report = run_retention(&pg, now).await.unwrap();
    assert_eq!(
        report.tenants,
        [("acme".to_string(), 2)],
        "a message and its conversation"
    );
    assert!(report.sources.is_empty(), "just disconnected: kept for now");
    let texts = |sql: &'static str| {
        let c = &c;
        async move {
            let mut v: Vec<String> = c
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(
        texts("SELECT conversation_id FROM messages").await,
        ["conv_g", "conv_gone", "conv_new"],
        "acme's old history is gone; globex has no retention"
    );
    let disconnected = c
        .query_one(
            "SELECT disconnected_at IS NOT NULL FROM sources WHERE source = 'gone_source'",
            &[],
        )
        .await
        .unwrap();
    assert!(disconnected.get::<_, bool>(0));

    // 31 days later the disconnected source's history goes (30 days by default).
    let report = run_retention(&pg, now + time::Duration::days(31))
        .await
        .unwrap();
    assert_eq!(report.sources, [("gone_source".to_string(), 2)]);
    assert_eq!(
        texts("SELECT conversation_id FROM conversations WHERE tenant = 'globex'").await,
        ["conv_g"]
    );
    let actions = texts("SELECT action FROM audit_log").await;
    assert!(
        actions.contains(&"retention.tenant".to_string()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"retention.disconnected_source".to_string()),
        "{actions:?}"
    );
    drop_schema(&c, &config.postgres.schema).await;
}

#[tokio::test]
async fn meta_data_deletion_callback() {
    let config = pg_config(BackendKind::Redis, &pg_url());
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let user = "34600000099";
    assert_eq!(
        app.post(&wa_text_from(user, &unique_wamid()))
            .await
            .status(),
        200
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM messages", 1, 20).await,
        1
    );

    let callback = |signed: String| {
        app.client
            .post(app.url("/webhooks/meta_test/data-deletion"))
            .header("content-type", "application/x-www-form-urlencoded")
            // Not from a trusted proxy (there are none): must not name the status URL's host.
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .body(format!(
                "signed_request={}",
                url::form_urlencoded::byte_serialize(signed.as_bytes()).collect::<String>()
            ))
            .send()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let payload = json!({"algorithm": "HMAC-SHA256", "issued_at": now, "user_id": user});

    // Tampered: the signature of another payload.
    let good = sign(SECRET, &payload);
    let other = sign(
        SECRET,
        &json!({"algorithm": "HMAC-SHA256", "issued_at": now, "user_id": "someone-else"}),
    );
    let tampered = format!(
        "{}.{}",
        good.split_once('.').unwrap().0,
        other.split_once('.').unwrap().1
    );
    let expired = sign(
        SECRET,
        &json!({"algorithm": "HMAC-SHA256", "issued_at": now - 200_000, "user_id": user}),
    );
    for (what, signed) in [
        ("tampered", tampered),
        ("wrong secret", sign("not-the-secret", &payload)),
        ("expired", expired),
        ("malformed", "not-a-signed-request".to_string()),
        ("missing", String::new()),
    ] {
        let res = callback(signed).await.unwrap();
        assert_eq!(res.status(), 401, "{what}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_signature", "{what}");
    }
    assert_eq!(count(&c, "SELECT count(*) FROM deletion_requests").await, 0);
    assert_eq!(
        count(&c, "SELECT count(*) FROM messages").await,
        1,
        "nothing erased yet"
    );

    // Valid, signed with the older of the two configured secrets.
    let res = callback(sign(OLD_SECRET, &payload)).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let code = body["confirmation_code"].as_str().unwrap().to_string();
    assert!(code.chars().all(|c| c.is_ascii_alphanumeric()) && !code.is_empty());
    let status_url = body["url"].as_str().unwrap();
    assert!(
        status_url.starts_with(&format!("{}/", app.base)),
        "forwarded headers from an untrusted peer named the host: {status_url}"
    );
    assert!(
        status_url.ends_with(&format!("/webhooks/meta_test/data-deletion/{code}")),
        "{status_url}"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM messages").await,
        0,
        "the contact was erased"
    );

    let status: Value = app
        .client
        .get(status_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["confirmation_code"], code.as_str());
    assert_eq!(status["status"], "completed");
    let missing = app
        .client
        .get(app.url("/webhooks/meta_test/data-deletion/nosuchcode"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let actions: Vec<String> = c
        .query("SELECT action FROM audit_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        actions.contains(&"meta.data_deletion".to_string()),
        "{actions:?}"
    );
    let m = app.metrics().await;
    assert!(
        counter(
            &m,
            "switchboard_signature_failures_total",
            &[("provider", "meta"), ("reason", "mismatch")]
        ) >= 2.0
    );
    assert!(
        counter(
            &m,
            "switchboard_privacy_operations_total",
            &[("op", "data_deletion"), ("outcome", "ok")]
        ) >= 1.0
    );
    app.stop().await;
    drop_schema(&c, &schema).await;
}
