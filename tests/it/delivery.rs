//! Push delivery (docs/delivery.md) against a real receiver on loopback and real Redis
//! (and PostgreSQL where the API needs it). The receiver is a small HTTP/1.1 server written
//! here that checks every Standard Webhooks signature with its own HMAC (not the gateway's
//! signing code), and can fail at random, answer what a test asks, or go down and come back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::helpers::*;
use crate::pg::*;

#[path = "../../benches/support/receiver.rs"]
mod support;

/// A secret as receivers get it (32 bytes, base64).
const DEST_SECRET: &str = "whsec_c3dpdGNoYm9hcmQtdGVzdC1kZXN0aW5hdGlvbi1zZWNyZXQ=";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    webhook_id: String,
    body: Value,
    status: u16,
    signature_ok: bool,
    at: Instant,
}

/// What the receiver answers: a status and extra headers, given the request number.
type Script = Arc<dyn Fn(&str, usize) -> (u16, Vec<(String, String)>) + Send + Sync>;

struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<Script>>,
    task: Option<JoinHandle<()>>,
}

/// Verifies a request's Standard Webhooks signature independently of the gateway's
/// signing code, and that its timestamp is fresh.
fn verify(headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let fresh = headers
        .get("webhook-timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| (time::OffsetDateTime::now_utc().unix_timestamp() - t).abs() < 300);
    fresh && support::verified(DEST_SECRET, headers, body)
}

impl Receiver {
    async fn start(script: Script) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            got: Arc::new(Mutex::new(Vec::new())),
            script: Arc::new(Mutex::new(script)),
            task: None,
        };
        r.task = Some(r.serve(listener));
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Stops listening and drops every open connection (connections refused from now on).
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(self.serve(listener));
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let got = self.got.clone();
        let script = self.script.clone();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let got = got.clone();
                let script = script.clone();
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    while let Some((headers, body)) =
                        support::read_request(&mut sock, &mut buf).await
                    {
                        let id = headers.get("webhook-id").cloned().unwrap_or_default();
                        let signature_ok = verify(&headers, &body);
                        let n = got.lock().unwrap().len();
                        let (status, extra) = if signature_ok {
                            (script.lock().unwrap())(&id, n)
                        } else {
                            (401, Vec::new())
                        };
                        got.lock().unwrap().push(Got {
                            webhook_id: id,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            status,
                            signature_ok,
                            at: Instant::now(),
                        });
                        let mut resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n"
                        );
                        for (k, v) in extra {
                            resp.push_str(&format!("{k}: {v}\r\n"));
                        }
                        resp.push_str("\r\nok");
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

fn always(status: u16) -> Script {
    Arc::new(move |_, _| (status, Vec::new()))
}

/// Redis backend, private networks allowed (the receiver is on loopback), fast retries,
/// one destination `crm` of tenant acme at `url`.
fn delivery_config(url: &str) -> Config {
    delivery_config_on(BackendKind::Redis, url)
}

/// [`delivery_config`] on `backend`.
fn delivery_config_on(backend: BackendKind, url: &str) -> Config {
    with_destination(test_config(backend), url)
}

/// `c` with private networks allowed, fast retries and the destination `crm` of acme.
fn with_destination(mut c: Config, url: &str) -> Config {
    c.delivery.allow_private_networks = true;
    c.delivery.retry_initial_ms = 50;
    c.delivery.retry_max_ms = 400;
    c.delivery.poll_ms = 20;
    let d: switchboard::config::delivery::DestinationConfig = serde_json::from_value(json!({
        "url": url, "secret": DEST_SECRET, "max_in_flight": 4, "timeout_ms": 2000,
    }))
    .unwrap();
    c.tenants
        .get_mut("acme")
        .unwrap()
        .destinations
        .insert("crm".into(), d);
    c
}

/// A WhatsApp text message from `contact` (one conversation per contact) to acme.
fn wa_from(contact: &str, id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": "C"}, "wa_id": contact}],
            "messages": [{"from": contact, "id": id, "timestamp": "1749416383", "type": "text",
                          "text": {"body": "hi"}}]
        }}]}]
    }))
    .unwrap()
}

/// The events themselves, from the read API's items.
fn bodies(items: Vec<Value>) -> Vec<Value> {
    items.into_iter().map(|i| i["event"].clone()).collect()
}

/// Waits until `f` holds (polling), or fails with `what`.
async fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn api_get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app
        .client
        .get(app.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn api_send(app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .request(method, app.url(path))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Checks the receiver's log against the events stream: every event delivered (a 2xx),
/// every signature valid, each conversation's requests in stream order, and a request
/// repeated only after its previous attempt failed (the same webhook-id).
fn check_delivery_log(events: &[Value], got: &[Got]) {
    assert!(
        got.iter().all(|g| g.signature_ok),
        "a signature did not verify"
    );
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        order
            .entry(e["conversation_id"].as_str().unwrap().to_string())
            .or_default()
            .push(e["event_id"].as_str().unwrap().to_string());
    }
    let conv_of: HashMap<String, String> = events
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_string(),
                e["conversation_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut seen: BTreeMap<String, Vec<&Got>> = BTreeMap::new();
    for g in got {
        assert_eq!(
            g.body["event_id"], g.webhook_id,
            "webhook-id is the event id"
        );
        let conv = conv_of
            .get(&g.webhook_id)
            .unwrap_or_else(|| panic!("{} was never published", g.webhook_id));
        seen.entry(conv.clone()).or_default().push(g);
    }
    for (conv, want) in &order {
        let reqs = seen.get(conv).cloned().unwrap_or_default();
        // Collapse consecutive requests of one event: they must be retries after failures.
        let mut delivered: Vec<String> = Vec::new();
        let mut i = 0;
        while i < reqs.len() {
            let id = &reqs[i].webhook_id;
            let mut j = i;
            while j + 1 < reqs.len() && &reqs[j + 1].webhook_id == id {
                assert!(
                    !(200..300).contains(&reqs[j].status),
                    "{id} sent again after a 2xx"
                );
                j += 1;
            }
            assert!(
                (200..300).contains(&reqs[j].status),
                "{conv}: the next event was sent before {id} got a 2xx"
            );
            delivered.push(id.clone());
            i = j + 1;
        }
        assert_eq!(
            &delivered, want,
            "conversation {conv}: every event, in order, once"
        );
    }
}

/// The proof: 8 conversations of 12 messages, a receiver that fails a quarter of the
/// requests at random and is down for 2 s in the middle; every event arrives, signed, each
/// conversation in order, duplicates only as retries of a failed attempt.
#[tokio::test]
async fn every_event_arrives_signed_and_in_order_through_failures_and_an_outage() {
    proof(BackendKind::Redis).await;
}

/// The same proof on the memory backend (the shipped config.toml's): the queues live in
/// the process, the semantics are the same.
#[tokio::test]
async fn memory_backend_delivers_every_event_in_order_through_failures_and_an_outage() {
    proof(BackendKind::Memory).await;
}

async fn proof(backend: BackendKind) {
    let failing: Script = Arc::new(|_, _| {
        if u64::from_le_bytes(switchboard::crypto::sealed::random_bytes::<8>()) % 4 == 0 {
            (500, Vec::new())
        } else {
            (200, Vec::new())
        }
    });
    let mut rx = Receiver::start(failing).await;
    let app = spawn_with(delivery_config_on(backend, &rx.url())).await;
    let contacts: Vec<String> = (0..8).map(|i| format!("3460000{i:04}")).collect();
    let mut sent = 0;
    for round in 0..12 {
        for c in &contacts {
            let res = app.post(&wa_from(c, &unique_wamid())).await;
            assert_eq!(res.status(), 200);
            sent += 1;
        }
        if round == 5 {
            rx.down();
            tokio::time::sleep(Duration::from_secs(2)).await;
            rx.up().await;
        }
    }
    let events = bodies(app.wait_for_events(sent).await);
    assert_eq!(events.len(), sent);
    let ids: HashSet<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    until(60, "every event delivered", || {
        let ok: HashSet<String> = rx
            .got()
            .iter()
            .filter(|g| g.status == 200)
            .map(|g| g.webhook_id.clone())
            .collect();
        ok.len() == ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rx.got();
    check_delivery_log(&events, &got);
    let failures = got.iter().filter(|g| g.status != 200).count();
    assert!(failures > 0, "the receiver failed some requests");
    // The attempts listing (no PostgreSQL: the newest ones kept in Redis or in memory)
    // pages forward.
    let (s, page) = api_get(&app, "/v1/tenants/acme/destinations/crm/attempts?limit=5").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    let last = page["items"][4].clone();
    assert_eq!(page["next_after"], last["id"]);
    assert!(["delivered", "failed", "refused"].contains(&last["outcome"].as_str().unwrap()));
    let m = app.metrics().await;
    assert!(
        counter(
            &m,
            "switchboard_deliveries_total",
            &[("outcome", "delivered")]
        ) >= sent as f64
    );
    app.stop().await;
}

/// Two replicas on one Redis with one destination: each event is delivered once.
#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    let rx = Receiver::start(always(200)).await;
    let config = delivery_config(&rx.url());
    let mut second = config.clone();
    second.server.bind = "127.0.0.1:0".into();
    let a = spawn_with(config).await;
    let b = spawn_with(second).await;
    let mut sent = 0;
    for i in 0..40 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app
            .post(&wa_from(&format!("3461000{:04}", i % 10), &unique_wamid()))
            .await;
        assert_eq!(res.status(), 200);
        sent += 1;
    }
    let events = bodies(a.wait_for_events(sent).await);
    until(30, "40 deliveries", || rx.got().len() >= sent).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rx.got();
    assert_eq!(got.len(), sent, "no event delivered twice");
    check_delivery_log(&events, &got);
    a.stop().await;
    b.stop().await;
}

/// 410 Gone disables the destination: nothing more is sent, the API shows why (both
/// backends).
#[tokio::test]
async fn gone_disables_the_destination() {
    for backend in [BackendKind::Redis, BackendKind::Memory] {
        gone_disables_the_destination_on(backend).await;
    }
}

async fn gone_disables_the_destination_on(backend: BackendKind) {
    // 503 first, so that all three are queued (retrying) before the receiver says 410: a
    // disabled destination queues nothing new, and the memory backend is fast enough to
    // disable it between two posts otherwise.
    let rx = Receiver::start(always(503)).await;
    let app = spawn_with(delivery_config_on(backend, &rx.url())).await;
    for i in 0..3 {
        app.post(&wa_from(&format!("3462000{i:04}"), &unique_wamid()))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while api_get(&app, "/v1/tenants/acme/destinations/crm").await.1["queued"] != 3 {
        assert!(
            Instant::now() < deadline,
            "{backend:?}: three events queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *rx.script.lock().unwrap() = always(410);
    until(15, "a 410", || rx.got().iter().any(|g| g.status == 410)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n = rx.got().len();
    let gone = rx.got().iter().filter(|g| g.status == 410).count();
    assert!(gone <= 3, "at most the attempts in flight ({gone})");
    let (s, v) = api_get(&app, "/v1/tenants/acme/destinations/crm").await;
    assert_eq!(s, 200);
    assert_eq!(v["enabled"], false, "{v}");
    assert_eq!(v["disabled_reason"], "gone");
    assert_eq!(v["queued"], 3, "the events wait: {v}");
    // Later events are not queued; nothing more is sent.
    app.post(&wa_from("34620009999", &unique_wamid())).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.got().len(), n);
    let (_, page) = api_get(&app, "/v1/tenants/acme/destinations/crm/attempts").await;
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["outcome"] == "gone" && a["status"] == 410));
    // Enabling it (the file's destination: only `enabled` may change) delivers the rest.
    *rx.script.lock().unwrap() = always(200);
    let (s, v) = api_send(
        &app,
        reqwest::Method::PUT,
        "/v1/tenants/acme/destinations/crm",
        json!({"enabled": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api_send(
        &app,
        reqwest::Method::PUT,
        "/v1/tenants/acme/destinations/crm",
        json!({"url": "http://127.0.0.1:1/"}),
    )
    .await;
    assert_eq!(s, 409, "the file's settings change only in the file");
    until(15, &format!("{backend:?}: the queued events"), || {
        rx.got().iter().filter(|g| g.status == 200).count() >= 3
    })
    .await;
    app.stop().await;
}

/// A 429 with Retry-After: 2 delays the retry by 2 s (the backoff alone would be 50 ms).
#[tokio::test]
async fn retry_after_is_honoured() {
    for backend in [BackendKind::Redis, BackendKind::Memory] {
        retry_after_is_honoured_on(backend).await;
    }
}

async fn retry_after_is_honoured_on(backend: BackendKind) {
    let rx = Receiver::start(Arc::new(|_, n| {
        if n == 0 {
            (429, vec![("retry-after".into(), "2".into())])
        } else {
            (200, Vec::new())
        }
    }))
    .await;
    let app = spawn_with(delivery_config_on(backend, &rx.url())).await;
    app.post(&wa_from("34630000001", &unique_wamid())).await;
    until(20, "the retry", || rx.got().len() >= 2).await;
    let got = rx.got();
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert_eq!(got[0].webhook_id, got[1].webhook_id);
    app.stop().await;
}

/// Redelivery of one event (same webhook-id again), refused for another tenant's event and
/// an unknown one.
#[tokio::test]
async fn redeliver_one_event_and_a_range() {
    for backend in [BackendKind::Redis, BackendKind::Memory] {
        redeliver_one_event_and_a_range_on(backend).await;
    }
}

async fn redeliver_one_event_and_a_range_on(backend: BackendKind) {
    let rx = Receiver::start(always(200)).await;
    let app = spawn_with(delivery_config_on(backend, &rx.url())).await;
    app.post(&wa_from("34640000001", &unique_wamid())).await;
    // globex's event: never delivered to acme's destination.
    let other = wa_text_batch("222", &[unique_wamid()]);
    app.post(&other).await;
    let events = bodies(app.wait_for_events(2).await);
    until(15, "the delivery", || !rx.got().is_empty()).await;
    let acme = events.iter().find(|e| e["tenant"] == "acme").unwrap();
    let globex = events.iter().find(|e| e["tenant"] == "globex").unwrap();
    let path = "/v1/tenants/acme/destinations/crm/redeliver";
    let (s, v) = api_send(
        &app,
        reqwest::Method::POST,
        path,
        json!({"event_id": acme["event_id"]}),
    )
    .await;
    assert_eq!((s, v["queued"].as_u64()), (200, Some(1)), "{v}");
    until(15, "the redelivery", || rx.got().len() >= 2).await;
    assert_eq!(rx.got()[1].webhook_id, acme["event_id"].as_str().unwrap());
    let (s, v) = api_send(
        &app,
        reqwest::Method::POST,
        path,
        json!({"event_id": globex["event_id"]}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("unknown_event")),
        "another tenant's event"
    );
    let (s, _) = api_send(
        &app,
        reqwest::Method::POST,
        path,
        json!({"event_id": "evt_nope"}),
    )
    .await;
    assert_eq!(s, 404);
    let since = "2000-01-01T00:00:00Z";
    let until_t = "2100-01-01T00:00:00Z";
    let (s, v) = api_send(
        &app,
        reqwest::Method::POST,
        path,
        json!({"since": since, "until": until_t}),
    )
    .await;
    assert_eq!(
        (s, v["queued"].as_u64()),
        (200, Some(1)),
        "only acme's one event: {v}"
    );
    until(15, "the range redelivery", || rx.got().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.got().iter().all(|g| g.body["tenant"] == "acme"),
        "no other tenant's event"
    );
    let (s, _) = api_send(
        &app,
        reqwest::Method::POST,
        path,
        json!({"since": until_t, "until": since}),
    )
    .await;
    assert_eq!(s, 400);
    app.stop().await;
}

/// A destination on a private address is refused: by the configuration check, and at
/// delivery time for literals and for names resolving there.
#[tokio::test]
async fn private_destinations_are_refused_by_config_and_at_delivery() {
    for url in [
        "http://127.0.0.1:8080/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://localhost:9/x",
    ] {
        // `backend` is a top-level key: before the tables.
        let toml = format!(
            "backend = \"redis\"\n{BASE_CONFIG}\n[tenants.acme.destinations.crm]\nurl = \"{url}\"\nsecret = \"{DEST_SECRET}\"\n"
        );
        let err = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(
            err.contains("tenants.acme.destinations.crm.url")
                && err.contains("allow_private_networks"),
            "{url}: {err}"
        );
        assert!(!err.contains(DEST_SECRET), "the secret is never quoted");
    }
    // The memory backend keeps destinations too (in process).
    let toml = format!(
        "{BASE_CONFIG}\n[tenants.acme.destinations.crm]\nurl = \"https://93.184.215.14/x\"\nsecret = \"{DEST_SECRET}\"\n"
    );
    let c = Config::from_toml(&toml).unwrap();
    assert_eq!(c.backend, BackendKind::Memory);
    // At delivery time (the sender alone, with private networks refused).
    let rx = Receiver::start(always(200)).await;
    let sender = switchboard::delivery::send::Sender::new(Duration::from_secs(1), false).unwrap();
    for url in [
        rx.url(),
        format!("http://localhost:{}/hooks", rx.addr.port()),
    ] {
        let out = sender
            .send(&url, DEST_SECRET, "evt_1", "{}", Duration::from_secs(2))
            .await;
        assert!(out.refused, "{url}: {out:?}");
        assert_eq!(out.status, None);
    }
    assert!(rx.got().is_empty(), "nothing reached the private address");
    // Allowed, the same sender signs and the receiver verifies; redirects are not followed.
    let open = switchboard::delivery::send::Sender::new(Duration::from_secs(1), true).unwrap();
    let out = open
        .send(
            &rx.url(),
            DEST_SECRET,
            "evt_1",
            "{\"a\":1}",
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(out.status, Some(200));
    *rx.script.lock().unwrap() = Arc::new(|_, _| {
        (
            302,
            vec![("location".into(), "http://169.254.169.254/".into())],
        )
    });
    let out = open
        .send(
            &rx.url(),
            DEST_SECRET,
            "evt_2",
            "{}",
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(out.status, Some(302));
    assert!(out.error.unwrap().contains("redirects are not followed"));
    assert_eq!(rx.got().len(), 2);
    assert!(rx.got().iter().all(|g| g.signature_ok));
}

/// Through the API with PostgreSQL: 422 for a private address, the secret generated and
/// shown once, stored sealed, audited; attempts recorded in PostgreSQL and listed; the
/// delete removes its attempts; erasure of a contact removes its attempts.
#[tokio::test]
async fn api_destinations_with_postgres() {
    let rx = Receiver::start(always(200)).await;
    let mut config = pg_config(BackendKind::Redis, &pg_url());
    config.api.master_key_file = None;
    // A master key (seals the destination secrets), in a file.
    let dir = std::env::temp_dir().join(format!("sbk-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &dir,
        format!(
            "k1:{}\n",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        ),
    )
    .unwrap();
    config.api.master_key_file = Some(dir.clone());
    config.api.reload_interval_ms = 200;
    config.delivery.poll_ms = 20;
    let (_pg, c) = migrated(&config).await;
    // Refused first (private networks not allowed), then allowed for the receiver.
    let strict = spawn_with(config.clone()).await;
    let (s, v) = api_send(
        &strict,
        reqwest::Method::POST,
        "/v1/tenants/acme/destinations",
        json!({"id": "crm", "url": "http://10.0.0.7/hook"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("destination_refused")),
        "{v}"
    );
    let (s, v) = api_send(
        &strict,
        reqwest::Method::POST,
        "/v1/tenants/acme/destinations",
        json!({"id": "crm", "url": "http://localhost:8080/hook"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("destination_refused")),
        "{v}"
    );
    strict.stop().await;
    config.delivery.allow_private_networks = true;
    let app = spawn_with(config.clone()).await;
    let (s, v) = api_send(
        &app,
        reqwest::Method::POST,
        "/v1/tenants/acme/destinations",
        json!({"id": "crm", "url": rx.url(), "secret": DEST_SECRET, "kinds": ["message"]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["secret"], DEST_SECRET, "shown once");
    let (s, v) = api_send(
        &app,
        reqwest::Method::POST,
        "/v1/tenants/acme/destinations",
        json!({"id": "gen", "url": rx.url()}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let generated = v["secret"].as_str().unwrap().to_string();
    assert!(generated.starts_with("whsec_"));
    assert!(switchboard::config::standard::decode_secret(&generated).is_ok());
    for path in [
        "/v1/tenants/acme/destinations",
        "/v1/tenants/acme/destinations/crm",
        "/v1/tenants/acme/destinations/gen",
    ] {
        let (s, v) = api_get(&app, path).await;
        assert_eq!(s, 200);
        let text = v.to_string();
        assert!(
            !text.contains(&generated) && !text.contains(DEST_SECRET),
            "{path}: {text}"
        );
    }
    let sealed: Vec<u8> = c
        .query_one(
            "SELECT secret_ciphertext FROM admin_destinations WHERE id = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!sealed
        .windows(10)
        .any(|w| DEST_SECRET.as_bytes().windows(10).any(|x| x == w)));
    let audit = count(
        &c,
        "SELECT count(*) FROM audit_log WHERE action = 'destination.create'",
    )
    .await;
    assert_eq!(audit, 2);
    let leaked = count(
        &c,
        &format!(
            "SELECT count(*) FROM audit_log WHERE after::text LIKE '%{}%'",
            &generated[6..20]
        ),
    )
    .await;
    assert_eq!(leaked, 0);
    // Another tenant does not see it.
    let (s, _) = api_get(&app, "/v1/tenants/globex/destinations/crm").await;
    assert_eq!(s, 404);
    // Delivered (the receiver checks the secret it was given), attempts in PostgreSQL.
    app.post(&wa_from("34650000001", &unique_wamid())).await;
    until(20, "delivery", || rx.got().iter().any(|g| g.status == 200)).await;
    wait_count(&c, "SELECT count(*) FROM delivery_attempts WHERE destination = 'crm' AND outcome = 'delivered'", 1, 10).await;
    let (s, page) = api_get(&app, "/v1/tenants/acme/destinations/crm/attempts?limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(page["items"][0]["outcome"], "delivered", "{page}");
    assert_eq!(page["items"][0]["status"], 200);
    let next = page["next_after"].as_str().unwrap().to_string();
    let (_, empty) = api_get(
        &app,
        &format!("/v1/tenants/acme/destinations/crm/attempts?after={next}"),
    )
    .await;
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);
    // Erasing the contact erases its attempt rows.
    let r = app
        .client
        .delete(app.url("/v1/tenants/acme/contacts/34650000001"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["erased"]["delivery_attempts"].as_u64().unwrap() >= 1,
        "{v}"
    );
    // Deleting removes it with its attempts and queues.
    let (s, v) = api_send(
        &app,
        reqwest::Method::DELETE,
        "/v1/tenants/acme/destinations/gen",
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM delivery_attempts WHERE destination = 'gen'"
        )
        .await,
        0
    );
    let mut r = app.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}:dlv:acme:gen}}*", app.prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    app.stop().await;
    let _ = std::fs::remove_file(dir);
}

/// The delivery store's contract (src/delivery/store): the same steps against the memory
/// store and the Redis store (real Redis) give the same answers, and each answer is the
/// one the contract says.
#[tokio::test]
async fn store_conformance() {
    use switchboard::delivery::store::{
        memory::MemoryStore, redis::RedisStore, DestKey, Fence, Finish, Queued, Store,
    };
    let url = redis_url();
    require_redis(&url).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let stores = [
        Store::Memory(MemoryStore::new()),
        Store::Redis(RedisStore::new(
            switchboard::accept::conn::RedisConn::Single(conn),
            &format!("dc-{}", uuid::Uuid::new_v4().simple()),
            Duration::from_secs(5),
        )),
    ];
    let mut logs: Vec<Vec<String>> = Vec::new();
    for s in &stores {
        let mut log: Vec<String> = Vec::new();
        let d = DestKey {
            tenant: "acme".into(),
            id: "crm".into(),
        };
        let t0: u64 = 1_780_000_000_000;
        // Two conversations; c1 holds e1, e2; c2 holds e3. Max 3 queued.
        let q = s
            .enqueue(
                &d,
                t0,
                3,
                false,
                None,
                &[("e1", "c1", "b1"), ("e2", "c1", "b2"), ("e3", "c2", "b3")],
            )
            .await
            .unwrap();
        assert_eq!(q, vec![Queued::Queued; 3]);
        let q = s
            .enqueue(
                &d,
                t0,
                3,
                false,
                None,
                &[("e1", "c1", "b1"), ("e4", "c2", "b4")],
            )
            .await
            .unwrap();
        assert_eq!(q, vec![Queued::Duplicate, Queued::Full]);
        assert_eq!(s.backlog(&d).await.unwrap(), (3, Some(t0)));
        // One in flight at most: only c1's head; then nothing more.
        let jobs = s.take(&d, t0, t0 + 1000, "w1", 1, 10).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].conversation.as_str(),
                jobs[0].event_id.as_str(),
                jobs[0].body.as_str()
            ),
            ("c1", "e1", "b1")
        );
        assert!(s
            .take(&d, t0, t0 + 1000, "w1", 1, 10)
            .await
            .unwrap()
            .is_empty());
        // Another worker cannot finish w1's lease.
        let f = s
            .finish(
                &d,
                t0 + 1,
                "w2",
                &jobs[0],
                Finish::Done { delivered: true },
                Some(true),
            )
            .await
            .unwrap();
        assert!(!f.held);
        // w1's attempt fails: retried at t0+500, failing since t0+2; c2 is due meanwhile.
        let f = s
            .finish(
                &d,
                t0 + 2,
                "w1",
                &jobs[0],
                Finish::Retry {
                    due_ms: t0 + 500,
                    attempts: 1,
                },
                Some(false),
            )
            .await
            .unwrap();
        assert!(f.held && f.more);
        assert_eq!(f.failing_since_ms, t0 + 2);
        let jobs2 = s.take(&d, t0 + 10, t0 + 600, "w1", 4, 10).await.unwrap();
        assert_eq!(
            jobs2
                .iter()
                .map(|j| j.event_id.as_str())
                .collect::<Vec<_>>(),
            vec!["e3"]
        );
        // The lease of c2 ends without a finish (the worker died): due again, to w2.
        let jobs3 = s.take(&d, t0 + 600, t0 + 2000, "w2", 4, 10).await.unwrap();
        let mut got: Vec<(String, String, u32)> = jobs3
            .iter()
            .map(|j| (j.conversation.clone(), j.event_id.clone(), j.attempts))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("c1".into(), "e1".into(), 1), ("c2".into(), "e3".into(), 0)]
        );
        for j in &jobs3 {
            let f = s
                .finish(
                    &d,
                    t0 + 700,
                    "w2",
                    j,
                    Finish::Done { delivered: true },
                    Some(true),
                )
                .await
                .unwrap();
            log.push(format!("{f:?}"));
        }
        assert_eq!(s.health(&d).await.unwrap().failing_since_ms, None);
        // e1 delivered: not queued again by a repeated fan-out, but by a redelivery.
        let q = s
            .enqueue(&d, t0 + 800, 3, false, None, &[("e1", "c1", "b1")])
            .await
            .unwrap();
        assert_eq!(q, vec![Queued::Duplicate]);
        let q = s
            .enqueue(&d, t0 + 800, 3, true, None, &[("e1", "c1", "b1")])
            .await
            .unwrap();
        assert_eq!(q, vec![Queued::Queued]);
        // c1 is e2 then e1 again, in that order.
        for want in ["e2", "e1"] {
            let j = s.take(&d, t0 + 900, t0 + 2000, "w1", 4, 10).await.unwrap();
            assert_eq!(j.len(), 1);
            assert_eq!(j[0].event_id, want);
            s.finish(
                &d,
                t0 + 900,
                "w1",
                &j[0],
                Finish::Done { delivered: true },
                Some(true),
            )
            .await
            .unwrap();
        }
        // Erasure of a conversation; disable / enable.
        s.enqueue(
            &d,
            t0 + 1000,
            10,
            false,
            None,
            &[("e5", "c3", "b5"), ("e6", "c3", "b6"), ("e7", "c4", "b7")],
        )
        .await
        .unwrap();
        assert_eq!(
            s.forget(&d, t0 + 1000, &["c3".to_string()]).await.unwrap(),
            2
        );
        assert_eq!(s.backlog(&d).await.unwrap().0, 1);
        assert!(s.disable(&d, t0 + 1100, "failing").await.unwrap());
        assert!(!s.disable(&d, t0 + 1100, "gone").await.unwrap());
        let h = s.health(&d).await.unwrap();
        assert_eq!(
            (h.disabled.as_deref(), h.disabled_at_ms),
            (Some("failing"), Some(t0 + 1100))
        );
        assert!(s
            .take(&d, t0 + 1200, t0 + 2000, "w1", 4, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.enqueue(&d, t0 + 1200, 10, false, None, &[("e8", "c4", "b8")])
                .await
                .unwrap(),
            vec![Queued::Disabled]
        );
        s.enable(&d).await.unwrap();
        let j = s.take(&d, t0 + 1300, t0 + 2000, "w1", 4, 10).await.unwrap();
        assert_eq!(
            j.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>(),
            vec!["e7"]
        );
        // Attempts (without PostgreSQL): newest `kept`, ids counting up, oldest first.
        for i in 0..5 {
            s.record_attempt(&d, json!({"n": i}), 3).await.unwrap();
        }
        let a = s.attempts(&d).await.unwrap();
        assert_eq!(
            a,
            vec![
                json!({"n": 2, "id": "3"}),
                json!({"n": 3, "id": "4"}),
                json!({"n": 4, "id": "5"})
            ]
        );
        // Fan-out leases: one holder at a time; a new holder gets a newer epoch, and the
        // old one, stalled past its lease, may no longer queue where the new one did.
        let e1 = s
            .lease(0, "a", Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.lease(0, "b", Duration::from_millis(300)).await.unwrap(),
            None
        );
        assert_eq!(
            s.lease(0, "a", Duration::from_millis(300)).await.unwrap(),
            Some(e1)
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let e2 = s
            .lease(0, "b", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(e2 > e1);
        let old = Fence {
            partition: 0,
            epoch: e1,
        };
        let new = Fence {
            partition: 0,
            epoch: e2,
        };
        // The old holder before the new one queued here: allowed (it comes first anyway).
        let other = DestKey {
            tenant: "acme".into(),
            id: "other".into(),
        };
        assert_eq!(
            s.enqueue(&other, t0, 10, false, Some(old), &[("x1", "c9", "b")])
                .await
                .unwrap(),
            vec![Queued::Queued]
        );
        assert_eq!(
            s.enqueue(&d, t0 + 1400, 10, false, Some(new), &[("e9", "c5", "b9")])
                .await
                .unwrap(),
            vec![Queued::Queued]
        );
        let stale = s
            .enqueue(&d, t0 + 1400, 10, false, Some(old), &[("e10", "c5", "b10")])
            .await;
        assert!(
            matches!(stale, Err(switchboard::accept::BackendError::Fenced)),
            "{stale:?}"
        );
        // Another partition's epochs are its own.
        assert_eq!(
            s.enqueue(
                &d,
                t0 + 1400,
                10,
                false,
                Some(Fence {
                    partition: 1,
                    epoch: 1
                }),
                &[("e11", "c6", "b11")]
            )
            .await
            .unwrap(),
            vec![Queued::Queued]
        );
        s.release(0, "b").await.unwrap();
        assert!(
            s.lease(0, "a", Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap()
                > e2
        );
        log.push(format!("{:?}", s.backlog(&d).await.unwrap()));
        assert_eq!(s.purge(&d, t0 + 1500).await.unwrap(), 3);
        assert_eq!(s.backlog(&d).await.unwrap(), (0, None));
        assert_eq!(s.health(&d).await.unwrap(), Default::default());
        s.purge(&other, t0).await.unwrap();
        logs.push(log);
    }
    assert_eq!(logs[0], logs[1], "memory and Redis answer alike");
}

/// A destination whose every attempt fails for `delivery.disable_after_failing_secs` is
/// disabled: nothing more is sent, the API says why, and with PostgreSQL an audit row
/// records it.
#[tokio::test]
async fn a_destination_failing_too_long_is_disabled_and_audited() {
    for backend in [BackendKind::Redis, BackendKind::Memory] {
        failing_too_long_on(backend).await;
    }
}

async fn failing_too_long_on(backend: BackendKind) {
    let rx = Receiver::start(always(500)).await;
    let mut config = with_destination(pg_config(backend, &pg_url()), &rx.url());
    config.delivery.disable_after_failing_secs = 1;
    config.delivery.retry_max_ms = 200;
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    app.post(&wa_from("34670000001", &unique_wamid())).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (s, v) = api_get(&app, "/v1/tenants/acme/destinations/crm").await;
        assert_eq!(s, 200, "{v}");
        if v["enabled"] == false {
            break v;
        }
        assert!(Instant::now() < deadline, "{backend:?}: not disabled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["disabled_reason"], "failing", "{v}");
    let failed = rx.got();
    assert!(
        failed.len() >= 2,
        "retried before giving up on the destination"
    );
    assert!(failed.iter().all(|g| g.status == 500));
    // Failing for at least the configured second before it was disabled.
    assert!(failed.last().unwrap().at - failed[0].at >= Duration::from_millis(900));
    assert_eq!(
        wait_count(
            &c,
            "SELECT count(*) FROM audit_log WHERE action = 'destination.disable'
             AND after->>'reason' = 'failing' AND target = 'destination:crm'",
            1,
            10
        )
        .await,
        1
    );
    // Nothing more is sent, the event waits (an attempt in flight may still land).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = rx.got().len();
    app.post(&wa_from("34670000002", &unique_wamid())).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.got().len(), n, "a disabled destination gets nothing");
    let (_, v) = api_get(&app, "/v1/tenants/acme/destinations/crm").await;
    assert!(v["queued"].as_u64().unwrap() >= 1, "{v}");
    let (_, page) = api_get(&app, "/v1/tenants/acme/destinations/crm/attempts").await;
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["outcome"] == "failed" && a["status"] == 500),
        "{page}"
    );
    app.stop().await;
}

/// Meta's data deletion callback erases the contact's events waiting for push delivery,
/// as `DELETE .../contacts/{c}` does (one erasure for every path); other contacts' stay.
#[tokio::test]
async fn data_deletion_callback_erases_queued_deliveries() {
    let rx = Receiver::start(always(503)).await;
    let config = with_destination(pg_config(BackendKind::Redis, &pg_url()), &rx.url());
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let user = "34680000001";
    let other = "34680000002";
    app.post(&wa_from(user, &unique_wamid())).await;
    app.post(&wa_from(other, &unique_wamid())).await;
    let events = bodies(app.wait_for_events(2).await);
    let id_of = |contact: &str| {
        events
            .iter()
            .find(|e| e["contact"]["id"] == contact)
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (user_event, other_event) = (id_of(user), id_of(other));
    until(15, "both events attempted", || {
        let got = rx.got();
        got.iter().any(|g| g.webhook_id == user_event)
            && got.iter().any(|g| g.webhook_id == other_event)
    })
    .await;
    let (_, v) = api_get(&app, "/v1/tenants/acme/destinations/crm").await;
    assert_eq!(v["queued"], 2, "{v}");
    let res = app.meta_data_deletion(SECRET, user).await;
    assert_eq!(res.status(), 200);
    let (_, v) = api_get(&app, "/v1/tenants/acme/destinations/crm").await;
    assert_eq!(v["queued"], 1, "only the other contact's event waits: {v}");
    let detail: Value = c
        .query_one("SELECT detail FROM deletion_requests", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(detail["acme"]["delivery_queued"], 1, "{detail}");
    // The receiver recovers: the other contact's event arrives, the erased one never does.
    *rx.script.lock().unwrap() = always(200);
    until(20, "the other contact's event", || {
        rx.got()
            .iter()
            .any(|g| g.webhook_id == other_event && g.status == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !rx.got()
            .iter()
            .any(|g| g.webhook_id == user_event && g.status == 200),
        "the erased contact's event was delivered"
    );
    app.stop().await;
}

/// Runs a receiver example on `port` until dropped; its stdout lines collected.
struct ExampleReceiver {
    /// Killed when dropped (kill_on_drop).
    _child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ExampleReceiver {
    async fn start(mut cmd: tokio::process::Command, port: u16) -> ExampleReceiver {
        use tokio::io::AsyncBufReadExt;
        let mut child = cmd
            .env("SWITCHBOARD_DESTINATION_SECRET", DEST_SECRET)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the example starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the example does not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ExampleReceiver {
            _child: child,
            lines,
        }
    }

    /// The event ids it printed (the last word of each line), in order.
    fn ids(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A receiver example against real signed deliveries from the gateway: every event is
/// verified and printed once, in each conversation's order; a forged signature and a stale
/// timestamp are refused.
async fn example_receives(cmd: impl Fn(u16) -> tokio::process::Command, what: &str) {
    let port = free_port();
    let rx = ExampleReceiver::start(cmd(port), port).await;
    let url = format!("http://127.0.0.1:{port}/hooks");
    let app = spawn_with(delivery_config_on(BackendKind::Memory, &url)).await;
    for i in 0..6 {
        let res = app
            .post(&wa_from(&format!("3469000{:04}", i % 2), &unique_wamid()))
            .await;
        assert_eq!(res.status(), 200);
    }
    let events = bodies(app.wait_for_events(6).await);
    until(30, &format!("{what}: six events printed"), || {
        rx.ids().len() >= 6
    })
    .await;
    let printed = rx.ids();
    let mut want: Vec<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let mut got = printed.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{what}: each event verified and printed once");
    for conv in events
        .iter()
        .map(|e| e["conversation_id"].as_str().unwrap())
    {
        let order: Vec<&str> = events
            .iter()
            .filter(|e| e["conversation_id"] == conv)
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        let seen: Vec<&str> = printed
            .iter()
            .map(String::as_str)
            .filter(|id| order.contains(id))
            .collect();
        assert_eq!(seen, order, "{what}: conversation {conv} in order");
    }
    let (_, page) = api_get(&app, "/v1/tenants/acme/destinations/crm/attempts?limit=100").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 6, "{what}: {page}");
    assert!(items
        .iter()
        .all(|a| a["outcome"] == "delivered" && a["status"] == 204));
    // Forged: a wrong signature, and a right one on a stale timestamp.
    let client = reqwest::Client::new();
    let body = events[0].to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign =
        |ts: i64| support::signature(DEST_SECRET, "evt_forged", &ts.to_string(), body.as_bytes());
    for (ts, sig) in [
        (
            now,
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ),
        (now - 3600, sign(now - 3600)),
    ] {
        let r = client
            .post(&url)
            .header("webhook-id", "evt_forged")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{what}");
    }
    // And the right signature now is accepted (the check is not refusing everything).
    let r = client
        .post(&url)
        .header("webhook-id", "evt_forged")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sign(now))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{what}");
    app.stop().await;
    drop(rx);
}

/// examples/receiver.py (python3, standard library) against real deliveries.
#[tokio::test]
async fn python_receiver_example_verifies_real_deliveries() {
    if !crate::deploy::available(
        "python3",
        std::process::Command::new("python3").arg("--version"),
        "apt-get install python3",
    ) {
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/receiver.py");
    let cache = std::env::temp_dir().join(format!("pyc-{}", uuid::Uuid::new_v4().simple()));
    example_receives(
        |port| {
            let mut c = tokio::process::Command::new("python3");
            c.arg("-u").arg(&script).arg(port.to_string());
            c.env("PYTHONPYCACHEPREFIX", &cache);
            c
        },
        "receiver.py",
    )
    .await;
    let _ = std::fs::remove_dir_all(cache);
}

/// examples/receiver.rs, as `cargo test --all-targets` builds it (next to the gateway's
/// binary, in examples/), against real deliveries. Built only by --all-targets (or `cargo
/// build --examples`): otherwise a notice, and under CI=true a failure.
#[tokio::test]
async fn rust_receiver_example_verifies_real_deliveries() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
        .parent()
        .unwrap()
        .join("examples/receiver");
    if !crate::deploy::available(
        "the receiver example's binary (cargo test --all-targets builds it)",
        std::process::Command::new("test").arg("-x").arg(&bin),
        "cargo build --examples",
    ) {
        return;
    }
    example_receives(
        |port| {
            let mut c = tokio::process::Command::new(&bin);
            c.arg(port.to_string());
            c
        },
        "receiver.rs",
    )
    .await;
}

/// The fan-out lease is fenced: a replica that stalled past its lease (another took it and
/// queued) cannot queue its stale batch after its successor, and no longer holds the lease.
#[tokio::test]
async fn a_stalled_fan_out_cannot_queue_after_its_successor() {
    use switchboard::accept::{Backend, BackendError, Limits, StreamEntry};
    use switchboard::delivery::Delivery;
    let config = delivery_config("http://127.0.0.1:9/hooks");
    require_redis(&config.redis.url).await;
    let replica = || {
        let backend = Backend::Redis(Box::new(
            switchboard::accept::redis::RedisBackend::new(
                &config.redis,
                Limits::from_config(&config),
            )
            .unwrap(),
        ));
        let admin = Arc::new(switchboard::admin::Admin::from_config(&config));
        Delivery::new(&config, &backend, admin, None)
            .unwrap()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    let entry = |n: u32| StreamEntry {
        id: format!("1-{n}"),
        key: format!("evt_fence_{n}"),
        payload: json!({"event_id": format!("evt_fence_{n}"), "tenant": "acme",
                        "kind": "message", "conversation_id": "conv_fence"})
        .to_string(),
    };
    let stale = a
        .fanout_lease(0, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(
        b.fanout_lease(0, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "one holder"
    );
    // a stalls past its lease; b takes over and queues the newer event.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = b
        .fanout_lease(0, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    b.fan_entries(&[entry(2)], Some(fresh)).await.unwrap();
    // a wakes up with its older batch: refused, nothing queued after b's event.
    let r = a.fan_entries(&[entry(1)], Some(stale)).await;
    assert!(matches!(r, Err(BackendError::Fenced)), "{r:?}");
    assert!(a
        .fanout_lease(0, Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
    let crm = b.destination("acme", "crm").unwrap();
    assert_eq!(
        b.backlog(&crm.key).await.unwrap().0,
        1,
        "only the successor's event"
    );
    // The successor itself goes on.
    b.fan_entries(&[entry(3)], Some(fresh)).await.unwrap();
    assert_eq!(b.backlog(&crm.key).await.unwrap().0, 2);
    b.purge(&crm.key).await.unwrap();
}
