//! A contact's erasure reaches every copy the gateway holds (docs/architecture.md,
//! invariant 7): PostgreSQL, every stream, routing state (closing the open conversation and
//! freeing its agent's slot, which goes to the next waiting conversation), and dead letters
//! — through the API and through Meta's data deletion callback, on both backends. The
//! checks read everything: every key under the test's prefix (every entry of every stream,
//! every member of every set) and every row of every table of the test's schema. Also the
//! copy a router publishes from a batch it read before the erasure.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};

use crate::helpers::*;
use crate::pg::*;
use crate::routing::one_team_config;

/// One agent `a0` of capacity 1, Postgres on a fresh schema.
fn config(backend: BackendKind) -> Config {
    let mut c = one_team_config(1, 1);
    c.backend = backend;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    c.postgres.enabled = true;
    c.postgres.url = pg_url();
    c.postgres.schema = fresh_schema();
    c.postgres.block_ms = 100;
    c.postgres.connect_timeout_ms = 1000;
    c.postgres.claim_idle_ms = 2000;
    c
}

/// A WhatsApp text from `phone` (profile `name`) to `phone_number_id`.
fn message(phone_number_id: &str, phone: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": name}, "wa_id": phone}],
            "messages": [{"from": phone, "id": unique_wamid(), "timestamp": "1749416383",
                          "type": "text", "text": {"body": format!("secret words of {name}")}}]
        }}]}]
    }))
    .unwrap()
}

/// A contact: a phone number no other test uses, and a name.
fn contact() -> (String, String) {
    let n = uuid::Uuid::new_v4().as_u128();
    (
        format!("3491{:09}", n % 1_000_000_000),
        format!("Zed{:x}", (n >> 64) as u32),
    )
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn load_of_a0(app: &TestApp) -> u64 {
    let (_, agents) = get(app, "/v1/tenants/acme/agents").await;
    agents
        .as_array()
        .or_else(|| agents["agents"].as_array())
        .and_then(|a| a.iter().find(|a| a["id"] == "a0"))
        .map(|a| a["load"].as_u64().unwrap())
        .expect("agent a0 listed")
}

/// The conversation id of `phone`'s first event on the events stream, once routed.
async fn conversation_of(app: &TestApp, phone: &str, action: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = app.events().await.into_iter().find(|e| {
            e["event"]["contact"]["id"] == phone && e["event"]["assignment"]["action"] == action
        });
        if let Some(e) = found {
            return e["event"]["conversation_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{phone}: no {action} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything Redis holds under the app's prefix, as text: every key's name and value
/// (every entry of a stream, member of a set or sorted set, field of a hash).
async fn everything_in_redis(app: &TestApp) -> String {
    let mut conn = app.redis().await;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{}*", app.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(keys.len() > 5, "the scan sees the app's keys: {keys:?}");
    let mut out = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut cmd = match kind.as_str() {
            "string" => redis::cmd("GET"),
            "hash" => redis::cmd("HGETALL"),
            "set" => redis::cmd("SMEMBERS"),
            "zset" => redis::cmd("ZRANGE"),
            "list" => redis::cmd("LRANGE"),
            "stream" => redis::cmd("XRANGE"),
            other => panic!("{key}: a {other} key"),
        };
        cmd.arg(&key);
        match kind.as_str() {
            "zset" => {
                cmd.arg(0).arg(-1).arg("WITHSCORES");
            }
            "list" => {
                cmd.arg(0).arg(-1);
            }
            "stream" => {
                cmd.arg("-").arg("+");
            }
            _ => {}
        }
        let value: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        out.push_str(&format!("{key} = {value:?}\n"));
    }
    out
}

/// Every row of every table of the app's schema, as text.
async fn everything_in_postgres(c: &tokio_postgres::Client, schema: &str) -> String {
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 10, "{tables:?}");
    let mut out = String::new();
    for t in tables {
        for row in c
            .query(
                &format!("SELECT to_jsonb(t)::text FROM {schema}.{t} t"),
                &[],
            )
            .await
            .unwrap()
        {
            out.push_str(&format!("{t}: {}\n", row.get::<_, String>(0)));
        }
    }
    out
}

/// Everything the read API shows of the streams (the memory backend's only window).
async fn everything_in_streams(app: &TestApp) -> String {
    format!("{:?}\n{:?}", app.events().await, app.deadletters().await)
}

async fn assert_gone(
    app: &TestApp,
    backend: BackendKind,
    c: &tokio_postgres::Client,
    schema: &str,
    who: &[&str],
) {
    let mut all = everything_in_postgres(c, schema).await + &everything_in_streams(app).await;
    if backend == BackendKind::Redis {
        all.push_str(&everything_in_redis(app).await);
    }
    for w in who {
        assert!(!all.contains(w), "{backend:?}: {w} is still held:\n{all}");
    }
}

async fn erase_every_copy(backend: BackendKind, partitions: usize) {
    let mut config = config(backend);
    config.streams.partitions = partitions;
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let (x, x_name) = contact();
    let (y, y_name) = contact();

    // x gets a0's only slot; y waits in the queue; a webhook of x for a number no tenant
    // owns is dead-lettered with x's id, name and words.
    assert_eq!(
        app.post(&message(PHONE_ID, &x, &x_name)).await.status(),
        200
    );
    let x_conv = conversation_of(&app, &x, "assigned").await;
    assert_eq!(
        app.post(&message(PHONE_ID, &y, &y_name)).await.status(),
        200
    );
    let y_conv = conversation_of(&app, &y, "queued").await;
    assert_eq!(
        app.post(&message("999999", &x, &x_name)).await.status(),
        200
    );
    assert_eq!(load_of_a0(&app).await, 1);
    wait_count(&c, "SELECT count(*) FROM messages", 2, 20).await;
    let everything = everything_in_postgres(&c, &schema).await + &everything_in_streams(&app).await;
    for w in [&x, &x_name, &y, &y_name] {
        assert!(
            everything.contains(w.as_str()),
            "{backend:?}: {w} was stored"
        );
    }
    if backend == BackendKind::Redis {
        // The scan sees the copies it must not find later: the routing state holds the
        // contact's id and name, the dead-letter stream its raw body.
        let redis = everything_in_redis(&app).await;
        assert!(redis.contains(&format!(":c:{x_conv}")), "{redis}");
        assert!(redis.contains(&x) && redis.contains(&x_name));
    }

    // The export includes x's dead letter.
    let (status, export) = get(&app, &format!("/v1/tenants/acme/contacts/{x}/export")).await;
    assert_eq!(status, 200);
    let dead = export["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{backend:?}: {export}");
    assert!(dead[0]["body"].as_str().unwrap().contains(&x_name));

    let res = app
        .client
        .delete(app.url(&format!("/v1/tenants/acme/contacts/{x}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let erased: Value = res.json().await.unwrap();
    let erased = &erased["erased"];
    assert_eq!(erased["dead_letters"], 1, "{backend:?}: {erased}");
    assert_eq!(erased["routing"]["conversations"], 1, "{erased}");
    assert_eq!(erased["routing"]["released"], 1, "{erased}");

    // The freed slot went to y at once; x's conversation is unknown to routing.
    let y_assigned = conversation_of(&app, &y, "assigned").await;
    assert_eq!(y_assigned, y_conv);
    assert_eq!(load_of_a0(&app).await, 1);
    assert_gone(&app, backend, &c, &schema, &[&x, &x_name, &x_conv]).await;
    let (status, _) = get(&app, &format!("/v1/tenants/acme/conversations/{x_conv}")).await;
    assert_eq!(status, 404, "{backend:?}: x's conversation is forgotten");

    // Meta's data deletion callback for y: the same reach, and a0 is free.
    let res = app.meta_data_deletion(SECRET, &y).await;
    assert_eq!(res.status(), 200);
    assert_eq!(load_of_a0(&app).await, 0, "{backend:?}: y's slot freed");
    assert_gone(
        &app,
        backend,
        &c,
        &schema,
        &[&x, &x_name, &y, &y_name, &y_conv],
    )
    .await;

    app.stop().await;
    drop_schema(&c, &schema).await;
}

#[tokio::test]
async fn erasure_reaches_every_copy_on_redis() {
    erase_every_copy(BackendKind::Redis, 1).await;
}

/// With stream partitions: every partition's inbound, events and dead-letter streams.
#[tokio::test]
async fn erasure_reaches_every_copy_on_redis_with_partitions() {
    erase_every_copy(BackendKind::Redis, 3).await;
}

#[tokio::test]
async fn erasure_reaches_every_copy_in_memory() {
    erase_every_copy(BackendKind::Memory, 1).await;
}

/// A router read the contact's message before the erasure and publishes its batch only
/// after the erasure deleted the message from the inbound stream (the batch still holds
/// its copy, and publishing moves it to the events stream). The erasure waits for that
/// batch before it goes over the events stream, so the copy is found and deleted there.
#[tokio::test]
async fn an_erasure_waits_for_the_batch_a_router_is_publishing() {
    use switchboard::accept::{Batch, Item, StreamName};
    use switchboard::event::{Channel, Direction, Event, EventKind, Party, Provider};

    let config = config(BackendKind::Redis);
    let (pg, c) = migrated(&config).await;
    require_redis(&config.redis.url).await;
    let backend = switchboard::state::build_backend(&config).unwrap();
    let (x, x_name) = contact();
    let mut e = Event::new(
        EventKind::Message,
        Provider::Meta,
        Channel::Whatsapp,
        Direction::Inbound,
        "acme",
        "meta_test",
        format!("meta:wamid:{}", unique_wamid()),
        None,
        time::OffsetDateTime::now_utc(),
    );
    e.contact = Some(Party {
        id: x.clone(),
        name: Some(x_name.clone()),
        ..Party::default()
    });
    e.business = Some(Party {
        id: PHONE_ID.into(),
        ..Party::default()
    });
    e.derive_conversation_id();
    let item = Item {
        key: e.event_id.clone(),
        payload: e.to_json(),
        shard: e.conversation_id.clone(),
        legacy_key: None,
    };
    backend
        .accept(Batch {
            events: vec![item],
            dead_letters: Vec::new(),
        })
        .await
        .unwrap();

    // The router takes the message into a batch (its first read creates the group).
    assert!(backend.lease("r1", Duration::from_secs(30)).await.unwrap());
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch = backend
            .read_inbound(
                "r1",
                10,
                Duration::from_millis(100),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        if !batch.is_empty() {
            break;
        }
    }
    assert_eq!(batch.len(), 1);

    let started = Instant::now();
    let erase =
        switchboard::persist::privacy::erase_contact(&pg, &backend, None, "test", "acme", &x);
    let router = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        backend.publish_fenced("r1", &batch).await
    };
    let (erased, published) = tokio::join!(erase, router);
    let erased = erased.unwrap();
    assert_eq!(published.unwrap(), 1, "the batch moved its copy");
    assert_eq!(erased.inbound_entries, 1);
    assert_eq!(erased.stream_entries, 1, "the erasure deleted the copy");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let events = backend.read(StreamName::Events, 100, None).await.unwrap();
    assert!(
        events
            .iter()
            .all(|e| !e.payload.contains(&x) && !e.payload.contains(&x_name)),
        "{events:?}"
    );
    drop_schema(&c, &config.postgres.schema).await;
}
