//! The admin API against real PostgreSQL and Redis: the role × endpoint × tenant-scope
//! matrix, secrets unreadable at rest and absent from logs, master key rotation, per-key
//! rate limits, changes reaching another replica without restart, an audit row for every
//! change (that the database refuses to alter), and the OpenAPI document covering every
//! route.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard::config::{BackendKind, Config};
use switchboard::http::endpoints::{Scope, ENDPOINTS};
use switchboard::verify::meta::sign_sha256;

use crate::helpers::*;
use crate::pg::*;

const ROUTING: &str = r#"
[routing]
sweep_interval_ms = 100
[tenants.acme.routing]
default_team = "sales"
[tenants.acme.routing.teams.sales]
[tenants.acme.routing.agents.alice]
teams = ["sales"]
presence = "online"
[tenants.acme.routing.agents.bob]
teams = ["sales"]
[tenants.globex.routing]
default_team = "sales"
[tenants.globex.routing.teams.sales]
[tenants.globex.routing.agents.alice]
teams = ["sales"]
[tenants.globex.routing.agents.bob]
teams = ["sales"]
"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh random master key spec `id:base64`.
fn master_key(id: &str) -> String {
    format!(
        "{id}:{}",
        b64(uuid::Uuid::new_v4().as_bytes().repeat(2).as_slice())
    )
}

fn key_file(spec: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sb-master-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&p, spec).unwrap();
    p
}

/// Redis backend, Postgres on a fresh schema, routing for acme and globex, a master key.
fn admin_config(master: &str) -> Config {
    let toml = format!("{BASE_CONFIG}\n{ROUTING}");
    let mut c = Config::from_toml(&toml).expect("admin test config is valid");
    c.backend = BackendKind::Redis;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let p = pg_config(BackendKind::Redis, &pg_url());
    c.postgres = p.postgres;
    c.api.master_key_file = Some(key_file(master));
    c.api.reload_interval_ms = 200;
    // These tests present revoked and wrong tokens on purpose, all from 127.0.0.1; the
    // lock-out after failed tokens has its own test (hardening.rs).
    c.api.failed_auth_per_min = 100_000;
    // Destinations on loopback (nothing listens there; no event is pushed in these tests).
    c.delivery.allow_private_networks = true;
    c
}

struct Api<'a> {
    app: &'a TestApp,
}

impl Api<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.app.client.request(method, self.app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v, headers)
    }

    async fn ok(&self, method: Method, path: &str, token: &str, body: Option<&Value>) -> Value {
        let (s, v, _) = self.call(method.clone(), path, Some(token), body).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// A new key; returns (id, token).
    async fn key(&self, by: &str, body: Value) -> (String, String) {
        let v = self.ok(Method::POST, "/v1/api-keys", by, Some(&body)).await;
        (
            v["key"]["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }
}

fn meta_source(id: &str, tenant: &str, phone: &str, secret: &str, verify: &str) -> Value {
    json!({
        "id": id, "provider": "meta",
        "settings": {"channels": {phone: tenant}},
        "secrets": {"app_secrets": [secret], "verify_token": verify},
    })
}

fn wa_text_to(phone: &str, id: &str) -> Vec<u8> {
    wa_text_batch(phone, &[id.to_string()])
}

async fn post_signed_to(app: &TestApp, source: &str, body: &[u8], secret: &str) -> u16 {
    app.client
        .post(app.url(&format!("/webhooks/{source}")))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign_sha256(secret, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

// ---------------------------------------------------------------------------------------
// The matrix.

/// Who may call what, written out here independently of the gateway's table: method,
/// pattern, roles (O owner, A admin, G agent, V viewer), scope (g global only, t the
/// path's tenant, s any scope, limited by the handler), the status of an allowed call.
const MATRIX: &[(&str, &str, &str, char, u16)] = &[
    ("GET", "/v1/events", "OAV", 'g', 200),
    ("GET", "/v1/deadletters", "OAV", 'g', 200),
    ("GET", "/v1/tenants", "OAV", 's', 200),
    ("POST", "/v1/tenants", "OA", 'g', 201),
    ("GET", "/v1/tenants/{tenant}", "OAV", 't', 200),
    // acme and globex are config.toml tenants: read-only through the API.
    ("PATCH", "/v1/tenants/{tenant}", "OA", 't', 409),
    ("DELETE", "/v1/tenants/{tenant}", "O", 'g', 200),
    ("GET", "/v1/tenants/{tenant}/destinations", "OAV", 't', 200),
    ("POST", "/v1/tenants/{tenant}/destinations", "OA", 't', 201),
    (
        "GET",
        "/v1/tenants/{tenant}/destinations/{destination}",
        "OAV",
        't',
        200,
    ),
    (
        "PUT",
        "/v1/tenants/{tenant}/destinations/{destination}",
        "OA",
        't',
        200,
    ),
    (
        "DELETE",
        "/v1/tenants/{tenant}/destinations/{destination}",
        "OA",
        't',
        200,
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/destinations/{destination}/attempts",
        "OAV",
        't',
        200,
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/destinations/{destination}/redeliver",
        "OA",
        't',
        404,
    ),
    ("GET", "/v1/tenants/{tenant}/sources", "OAV", 't', 200),
    ("POST", "/v1/tenants/{tenant}/sources", "OA", 't', 201),
    (
        "GET",
        "/v1/tenants/{tenant}/sources/{source}",
        "OAV",
        't',
        200,
    ),
    (
        "PATCH",
        "/v1/tenants/{tenant}/sources/{source}",
        "OA",
        't',
        200,
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/sources/{source}/rotate-secret",
        "OA",
        't',
        200,
    ),
    // Not started from a file in tests: the reload itself is refused after authorization.
    ("POST", "/v1/routing/reload", "OA", 'g', 409),
    ("GET", "/v1/tenants/{tenant}/routing", "OAV", 't', 200),
    ("PUT", "/v1/tenants/{tenant}/routing", "OA", 't', 200),
    (
        "GET",
        "/v1/tenants/{tenant}/routing/versions",
        "OAV",
        't',
        200,
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/routing/versions/{version}",
        "OAV",
        't',
        200,
    ),
    (
        "PUT",
        "/v1/tenants/{tenant}/routing/agents/{agent}",
        "OA",
        't',
        200,
    ),
    (
        "DELETE",
        "/v1/tenants/{tenant}/routing/agents/{agent}",
        "OA",
        't',
        200,
    ),
    (
        "PUT",
        "/v1/tenants/{tenant}/routing/teams/{team}",
        "OA",
        't',
        200,
    ),
    (
        "DELETE",
        "/v1/tenants/{tenant}/routing/teams/{team}",
        "OA",
        't',
        200,
    ),
    ("GET", "/v1/tenants/{tenant}/agents", "OAGV", 't', 200),
    (
        "PUT",
        "/v1/tenants/{tenant}/agents/{agent}/presence",
        "OAG",
        't',
        200,
    ),
    (
        "PUT",
        "/v1/tenants/{tenant}/agents/{agent}/capacity",
        "OA",
        't',
        200,
    ),
    ("GET", "/v1/tenants/{tenant}/queues", "OAGV", 't', 200),
    (
        "GET",
        "/v1/tenants/{tenant}/queues/{queue}/conversations",
        "OAGV",
        't',
        200,
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/agents/{agent}/stream",
        "OAG",
        't',
        200,
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/agents/{agent}/conversations",
        "OAGV",
        't',
        200,
    ),
    // No such conversation: 404 to read or reopen, 409 to close or transfer.
    (
        "GET",
        "/v1/tenants/{tenant}/conversations/{conv}",
        "OAGV",
        't',
        404,
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/close",
        "OA",
        't',
        409,
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/reopen",
        "OA",
        't',
        404,
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/transfer",
        "OA",
        't',
        409,
    ),
    // No pending offer: 409 to whoever may answer offers.
    (
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/accept",
        "OAG",
        't',
        409,
    ),
    (
        "POST",
        "/v1/tenants/{tenant}/conversations/{conv}/reject",
        "OAG",
        't',
        409,
    ),
    (
        "DELETE",
        "/v1/tenants/{tenant}/contacts/{contact}",
        "OA",
        't',
        200,
    ),
    (
        "GET",
        "/v1/tenants/{tenant}/contacts/{contact}/export",
        "OA",
        't',
        200,
    ),
    ("GET", "/v1/api-keys", "OA", 's', 200),
    ("POST", "/v1/api-keys", "OA", 's', 201),
    ("DELETE", "/v1/api-keys/{key}", "OA", 's', 200),
    ("GET", "/v1/audit", "OA", 's', 200),
    ("POST", "/v1/admin/rotate-master-key", "O", 'g', 200),
];

struct Principal {
    name: &'static str,
    role: char,
    tenant: Option<&'static str>,
    token: String,
}

fn role_letter(role: &str) -> char {
    match role {
        "owner" => 'O',
        "admin" => 'A',
        "agent" => 'G',
        _ => 'V',
    }
}

#[tokio::test]
async fn role_endpoint_scope_matrix() {
    let mut config = admin_config(&master_key("k1"));
    config.api.key_requests_per_sec = 100_000;
    config.api.key_burst = 100_000;
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config).await;
    let api = Api { app: &app };

    // The table above covers exactly the gateway's non-public endpoints.
    let ours: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, ..)| (m.to_string(), p.to_string()))
        .collect();
    let theirs: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .filter(|e| e.scope != Scope::Public)
        .map(|e| (e.method.to_string(), e.path.to_string()))
        .collect();
    assert_eq!(
        ours, theirs,
        "the matrix must list every protected endpoint"
    );

    // One source per tenant for the source endpoints; a rule set version for the history.
    for t in ["acme", "globex"] {
        api.ok(
            Method::POST,
            &format!("/v1/tenants/{t}/sources"),
            API_TOKEN,
            Some(&meta_source(
                &format!("src_{t}"),
                t,
                &format!("9{t}"),
                "s",
                "v",
            )),
        )
        .await;
    }
    // One destination per tenant for the destination endpoints.
    for t in ["acme", "globex"] {
        api.ok(
            Method::POST,
            &format!("/v1/tenants/{t}/destinations"),
            API_TOKEN,
            Some(&json!({"id": format!("dst_{t}"), "url": "http://127.0.0.1:9/hook"})),
        )
        .await;
    }
    let mut versions = HashMap::new();
    for t in ["acme", "globex"] {
        let cur = api
            .ok(
                Method::GET,
                &format!("/v1/tenants/{t}/routing"),
                API_TOKEN,
                None,
            )
            .await;
        let v = api
            .ok(
                Method::PUT,
                &format!("/v1/tenants/{t}/routing"),
                API_TOKEN,
                Some(&cur["routing"]),
            )
            .await;
        versions.insert(t, v["version"].as_u64().unwrap());
    }

    let mut principals = vec![Principal {
        name: "config token",
        role: 'O',
        tenant: None,
        token: API_TOKEN.to_string(),
    }];
    for (name, role, tenant) in [
        ("owner global", "owner", None),
        ("admin global", "admin", None),
        ("viewer global", "viewer", None),
        ("owner acme", "owner", Some("acme")),
        ("admin acme", "admin", Some("acme")),
        ("agent acme (alice)", "agent", Some("acme")),
        ("viewer acme", "viewer", Some("acme")),
    ] {
        let mut body = json!({"role": role, "tenant": tenant, "name": name});
        if role == "agent" {
            body["agent"] = json!("alice");
        }
        let (_, token) = api.key(API_TOKEN, body).await;
        principals.push(Principal {
            name,
            role: role_letter(role),
            tenant,
            token,
        });
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for &(method, pattern, roles, scope, ok) in MATRIX {
        // Tenant-scoped endpoints: the key's own tenant, and another. Scoped ones: a
        // target inside and outside the key's tenant. Global: once.
        let targets: &[&str] = match scope {
            'g' => &["acme"],
            _ => &["acme", "globex"],
        };
        for p in &principals {
            for &target in targets {
                let in_scope = p.tenant.is_none_or(|t| t == target);
                let allowed_role = roles.contains(p.role);
                let expected = if !allowed_role {
                    403
                } else {
                    match scope {
                        'g' if p.tenant.is_some() => 403,
                        't' if !in_scope => 403,
                        // An agent key acts only as its own agent (alice): the matrix
                        // asks for alice; bob is checked below.
                        's' if !in_scope => match (method, pattern) {
                            ("POST", "/v1/api-keys") | ("GET", "/v1/audit") => 403,
                            ("DELETE", "/v1/api-keys/{key}") => 404,
                            _ => ok,
                        },
                        _ => ok,
                    }
                };
                let (path, body) =
                    request_for(&api, method, pattern, target, &versions, p.role).await;
                let (status, v, _) = api
                    .call(
                        Method::from_bytes(method.as_bytes()).unwrap(),
                        &path,
                        Some(&p.token),
                        body.as_ref(),
                    )
                    .await;
                checked += 1;
                if status != expected {
                    failures.push(format!(
                        "{method} {path} as {}: expected {expected}, got {status} {v}",
                        p.name
                    ));
                }
                if status == 403 && v["code"] != "forbidden" {
                    failures.push(format!("{method} {path} as {}: 403 code {v}", p.name));
                }
                // Without a key, or with a wrong one: 401, whoever asks.
                if p.name == "config token" {
                    for token in [None, Some("sbk_not-a-key")] {
                        let (s, v, h) = api
                            .call(
                                Method::from_bytes(method.as_bytes()).unwrap(),
                                &path,
                                token,
                                body.as_ref(),
                            )
                            .await;
                        if s != 401
                            || v["code"] != "unauthorized"
                            || h.get("www-authenticate").is_none()
                        {
                            failures.push(format!("{method} {path} with {token:?}: {s} {v}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 400, "{checked}");

    // An agent key changes only its own agent's presence.
    let agent = &principals.iter().find(|p| p.role == 'G').unwrap().token;
    let (s, v, _) = api
        .call(
            Method::PUT,
            "/v1/tenants/acme/agents/bob/presence",
            Some(agent),
            Some(&json!({"presence": "online"})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    // Admins may not create owner or admin keys; owners may.
    let admin = &principals[2].token;
    for role in ["owner", "admin"] {
        let (s, _, _) = api
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(admin),
                Some(&json!({"role": role})),
            )
            .await;
        assert_eq!(s, 403, "admin creating {role}");
    }
    // Lists are limited to the key's tenant.
    let acme_viewer = &principals
        .iter()
        .find(|p| p.name == "viewer acme")
        .unwrap()
        .token;
    let list = api.ok(Method::GET, "/v1/tenants", acme_viewer, None).await;
    let ids: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme"]);
    let acme_admin = &principals
        .iter()
        .find(|p| p.name == "admin acme")
        .unwrap()
        .token;
    let keys = api.ok(Method::GET, "/v1/api-keys", acme_admin, None).await;
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["tenant"] == "acme"));
    let audit = api
        .ok(Method::GET, "/v1/audit?limit=1000", acme_admin, None)
        .await;
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["tenant"] == "acme"));
    app.stop().await;
    drop_schema(&c, &schema).await;
}

/// A concrete request for a matrix cell, after whatever setup it needs (done with the
/// config token so that the cell's key only makes the call under test).
async fn request_for(
    api: &Api<'_>,
    method: &str,
    pattern: &str,
    tenant: &str,
    versions: &HashMap<&str, u64>,
    role: char,
) -> (String, Option<Value>) {
    let uniq = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut path = pattern
        .replace("{tenant}", tenant)
        .replace("{source}", &format!("src_{tenant}"))
        .replace("{destination}", &format!("dst_{tenant}"))
        .replace("{agent}", "alice")
        .replace("{conv}", "conv_nope")
        .replace("{queue}", "team:sales")
        .replace("{contact}", "34600000009")
        .replace("{version}", &versions[tenant].to_string());
    if pattern.ends_with("/stream") {
        // An endless event stream otherwise.
        path.push_str("?max_secs=0");
    }
    let body = match (method, pattern) {
        ("POST", "/v1/tenants") => Some(json!({"id": format!("t{uniq}")})),
        ("DELETE", "/v1/tenants/{tenant}") => {
            let id = format!("t{uniq}");
            api.ok(
                Method::POST,
                "/v1/tenants",
                API_TOKEN,
                Some(&json!({"id": id})),
            )
            .await;
            path = format!("/v1/tenants/{id}");
            None
        }
        ("PATCH", "/v1/tenants/{tenant}") => Some(json!({"name": "x"})),
        ("POST", "/v1/tenants/{tenant}/sources") => Some(meta_source(
            &format!("s{uniq}"),
            tenant,
            &format!("8{uniq}"),
            "secret",
            "verify",
        )),
        ("PATCH", "/v1/tenants/{tenant}/sources/{source}") => Some(json!({"disabled": false})),
        ("POST", "/v1/tenants/{tenant}/destinations") => {
            Some(json!({"id": format!("d{uniq}"), "url": "http://127.0.0.1:9/hook"}))
        }
        ("PUT", "/v1/tenants/{tenant}/destinations/{destination}") => {
            Some(json!({"url": "http://127.0.0.1:9/hook", "kinds": ["message"]}))
        }
        ("DELETE", "/v1/tenants/{tenant}/destinations/{destination}") => {
            let id = format!("d{uniq}");
            api.ok(
                Method::POST,
                &format!("/v1/tenants/{tenant}/destinations"),
                API_TOKEN,
                Some(&json!({"id": id, "url": "http://127.0.0.1:9/hook"})),
            )
            .await;
            path = format!("/v1/tenants/{tenant}/destinations/{id}");
            None
        }
        ("POST", "/v1/tenants/{tenant}/destinations/{destination}/redeliver") => {
            Some(json!({"event_id": "evt_00000000000000000000000000000000"}))
        }
        ("POST", "/v1/tenants/{tenant}/sources/{source}/rotate-secret") => {
            Some(json!({"secrets": {"app_secrets": ["s"], "verify_token": "v"}}))
        }
        ("PUT", "/v1/tenants/{tenant}/routing") => {
            let cur = api
                .ok(
                    Method::GET,
                    &format!("/v1/tenants/{tenant}/routing"),
                    API_TOKEN,
                    None,
                )
                .await;
            Some(cur["routing"].clone())
        }
        ("PUT", "/v1/tenants/{tenant}/routing/agents/{agent}") => {
            Some(json!({"teams": ["sales"], "capacity": 3}))
        }
        ("DELETE", "/v1/tenants/{tenant}/routing/agents/{agent}") => {
            let a = format!("a{uniq}");
            api.ok(
                Method::PUT,
                &format!("/v1/tenants/{tenant}/routing/agents/{a}"),
                API_TOKEN,
                Some(&json!({"teams": ["sales"]})),
            )
            .await;
            path = format!("/v1/tenants/{tenant}/routing/agents/{a}");
            None
        }
        ("PUT", "/v1/tenants/{tenant}/routing/teams/{team}") => {
            path = path.replace("{team}", "sales");
            Some(json!({}))
        }
        ("DELETE", "/v1/tenants/{tenant}/routing/teams/{team}") => {
            let team = format!("t{uniq}");
            api.ok(
                Method::PUT,
                &format!("/v1/tenants/{tenant}/routing/teams/{team}"),
                API_TOKEN,
                Some(&json!({})),
            )
            .await;
            path = format!("/v1/tenants/{tenant}/routing/teams/{team}");
            None
        }
        ("PUT", "/v1/tenants/{tenant}/agents/{agent}/presence") => {
            Some(json!({"presence": "online"}))
        }
        ("PUT", "/v1/tenants/{tenant}/agents/{agent}/capacity") => Some(json!({"capacity": 4})),
        ("POST", "/v1/tenants/{tenant}/conversations/{conv}/transfer") => {
            Some(json!({"agent": "bob"}))
        }
        (
            "POST",
            "/v1/tenants/{tenant}/conversations/{conv}/close"
            | "/v1/tenants/{tenant}/conversations/{conv}/reopen",
        ) => None,
        // Scoped: "acme" targets the key's tenant, "globex" another one.
        ("POST", "/v1/api-keys") => Some(json!({"role": "viewer", "tenant": tenant})),
        ("DELETE", "/v1/api-keys/{key}") => {
            // The target's role is one every manager may revoke.
            let _ = role;
            let (id, _) = api
                .key(API_TOKEN, json!({"role": "viewer", "tenant": tenant}))
                .await;
            path = format!("/v1/api-keys/{id}");
            None
        }
        ("GET", "/v1/audit") => {
            path = format!("/v1/audit?tenant={tenant}");
            None
        }
        _ => None,
    };
    (path, body)
}

// ---------------------------------------------------------------------------------------

/// Sources created on one replica verify webhooks on another without restart; a key
/// revoked on one is refused by the other; a tenant created on one can be routed on the
/// other.
#[tokio::test]
async fn changes_reach_another_replica_without_restart() {
    let master = master_key("k1");
    let config = admin_config(&master);
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let a = spawn_with(config.clone()).await;
    let b = spawn_with(config).await;
    let (api_a, api_b) = (Api { app: &a }, Api { app: &b });

    let secret = format!("app-secret-{}", uuid::Uuid::new_v4().simple());
    let body = wa_text_to("5550001", &unique_wamid());
    assert_eq!(post_signed_to(&b, "dyn_meta", &body, &secret).await, 404);
    api_a
        .ok(
            Method::POST,
            "/v1/tenants/acme/sources",
            API_TOKEN,
            Some(&meta_source("dyn_meta", "acme", "5550001", &secret, "vt")),
        )
        .await;
    // Replica A at once; replica B within its reload interval.
    assert_eq!(post_signed_to(&a, "dyn_meta", &body, &secret).await, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let body2 = wa_text_to("5550001", &unique_wamid());
    loop {
        let s = post_signed_to(&b, "dyn_meta", &body2, &secret).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 404);
        assert!(Instant::now() < deadline, "replica B never saw the source");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post_signed_to(&b, "dyn_meta", &body2, "wrong").await, 401);
    let events = b.wait_for_events(2).await;
    assert!(
        events
            .iter()
            .any(|e| e["event"]["source"] == "dyn_meta" && e["event"]["tenant"] == "acme"),
        "{events:?}"
    );

    // A rotated secret: the old one stops verifying on both.
    let new_secret = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    api_a
        .ok(
            Method::POST,
            "/v1/tenants/acme/sources/dyn_meta/rotate-secret",
            API_TOKEN,
            Some(&json!({"secrets": {"app_secrets": [new_secret], "verify_token": "vt"}})),
        )
        .await;
    let body3 = wa_text_to("5550001", &unique_wamid());
    wait_status(&b, "dyn_meta", &body3, &new_secret, 200).await;
    assert_eq!(post_signed_to(&b, "dyn_meta", &body3, &secret).await, 401);

    // Disabled: gone on both.
    api_a
        .ok(
            Method::PATCH,
            "/v1/tenants/acme/sources/dyn_meta",
            API_TOKEN,
            Some(&json!({"disabled": true})),
        )
        .await;
    wait_status(&b, "dyn_meta", &body3, &new_secret, 404).await;

    // A key made on A works on B; revoked on A, refused by B.
    let (id, token) = api_a.key(API_TOKEN, json!({"role": "viewer"})).await;
    wait_get(&api_b, "/v1/tenants", &token, 200).await;
    api_a
        .ok(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            API_TOKEN,
            None,
        )
        .await;
    wait_get(&api_b, "/v1/tenants", &token, 401).await;

    // A tenant made on A gets rules on B.
    api_a
        .ok(
            Method::POST,
            "/v1/tenants",
            API_TOKEN,
            Some(&json!({"id": "newco"})),
        )
        .await;
    let rules =
        json!({"teams": {"t": {}}, "agents": {"ann": {"teams": ["t"]}}, "default_team": "t"});
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, v, _) = api_b
            .call(
                Method::PUT,
                "/v1/tenants/newco/routing",
                Some(API_TOKEN),
                Some(&rules),
            )
            .await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never knew tenant newco: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and A applies them without restart (the routing store is shared).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = api_a
            .call(
                Method::GET,
                "/v1/tenants/newco/routing",
                Some(API_TOKEN),
                None,
            )
            .await;
        if v.0 == 200 && v.1["routing"]["agents"]["ann"].is_object() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never applied newco's rules: {:?}",
            v.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hist = api_a
        .ok(
            Method::GET,
            "/v1/tenants/newco/routing/versions",
            API_TOKEN,
            None,
        )
        .await;
    assert_eq!(hist["versions"].as_array().unwrap().len(), 1, "{hist}");
    a.stop().await;
    b.stop().await;
    drop_schema(&c, &schema).await;
}

async fn wait_status(app: &TestApp, source: &str, body: &[u8], secret: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = post_signed_to(app, source, body, secret).await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{source}: still {s}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_get(api: &Api<'_>, path: &str, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _, _) = api.call(Method::GET, path, Some(token), None).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: still {s}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Old key encrypts; a replica with (new, old) decrypts and re-encrypts everything under
/// the new one; a replica with only the new key then verifies.
#[tokio::test]
async fn master_key_rotation_reencrypts_every_source() {
    let old = master_key("k1");
    let new = master_key("k2");
    let config = admin_config(&old);
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let a = spawn_with(config.clone()).await;
    let secret = format!("rot-{}", uuid::Uuid::new_v4().simple());
    for (id, phone) in [("rot_a", "5551001"), ("rot_b", "5551002")] {
        Api { app: &a }
            .ok(
                Method::POST,
                "/v1/tenants/acme/sources",
                API_TOKEN,
                Some(&meta_source(id, "acme", phone, &secret, "vt")),
            )
            .await;
    }
    a.stop().await;
    assert_eq!(key_ids(&c).await, ["k1"]);

    // Only the new key: the rows do not decrypt, the sources are not served.
    let mut only_new = config.clone();
    only_new.api.master_key_file = Some(key_file(&new));
    let n = spawn_with(only_new.clone()).await;
    let body = wa_text_to("5551001", &unique_wamid());
    assert_eq!(post_signed_to(&n, "rot_a", &body, &secret).await, 404);
    let (s, v, _) = Api { app: &n }
        .call(
            Method::POST,
            "/v1/admin/rotate-master-key",
            Some(API_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("master_key_unknown")),
        "{v}"
    );
    n.stop().await;

    // New first, old kept: serves, then re-encrypts.
    let mut both = config.clone();
    both.api.master_key_file = Some(key_file(&format!("{new},{old}")));
    let b = spawn_with(both).await;
    assert_eq!(post_signed_to(&b, "rot_a", &body, &secret).await, 200);
    let v = Api { app: &b }
        .ok(Method::POST, "/v1/admin/rotate-master-key", API_TOKEN, None)
        .await;
    assert_eq!(v["reencrypted"], 2, "{v}");
    assert_eq!(v["key_id"], "k2");
    assert_eq!(key_ids(&c).await, ["k2"]);
    // Idempotent.
    let v = Api { app: &b }
        .ok(Method::POST, "/v1/admin/rotate-master-key", API_TOKEN, None)
        .await;
    assert_eq!(v["reencrypted"], 0);
    b.stop().await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM audit_log WHERE action = 'master_key.rotate'"
        )
        .await,
        2
    );

    let n = spawn_with(only_new).await;
    let body = wa_text_to("5551002", &unique_wamid());
    assert_eq!(post_signed_to(&n, "rot_b", &body, &secret).await, 200);
    n.stop().await;
    drop_schema(&c, &schema).await;
}

async fn key_ids(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT DISTINCT secret_key_id FROM admin_sources", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test]
async fn per_key_rate_limit_answers_429_with_retry_after() {
    let config = admin_config(&master_key("k1"));
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config).await;
    let api = Api { app: &app };
    let (_, slow) = api
        .key(
            API_TOKEN,
            json!({"role": "viewer", "requests_per_sec": 1, "burst": 2}),
        )
        .await;
    let (_, other) = api.key(API_TOKEN, json!({"role": "viewer"})).await;
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let (s, v, h) = api
            .call(Method::GET, "/v1/tenants", Some(&slow), None)
            .await;
        statuses.push(s);
        if s == 429 {
            refused = Some((v, h));
        }
    }
    assert_eq!(&statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let (v, h) = refused.unwrap();
    assert_eq!(v["code"], "rate_limited");
    assert!(v["message"].as_str().unwrap().contains("API key"));
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another key is not affected.
    let (s, _, _) = api
        .call(Method::GET, "/v1/tenants", Some(&other), None)
        .await;
    assert_eq!(s, 200);
    // And the limit refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _, _) = api
        .call(Method::GET, "/v1/tenants", Some(&slow), None)
        .await;
    assert_eq!(s, 200);
    app.stop().await;
    drop_schema(&c, &schema).await;
}

/// Every kind of change writes its audit row (actor = the key, before/after without
/// secrets); owners and admins read them; the database refuses to alter them.
#[tokio::test]
async fn every_change_is_audited_and_the_audit_log_cannot_be_altered() {
    let config = admin_config(&master_key("k1"));
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config).await;
    let api = Api { app: &app };
    let (owner_id, owner) = api.key(API_TOKEN, json!({"role": "owner"})).await;
    let secret = format!("audit-secret-{}", uuid::Uuid::new_v4().simple());
    let new_secret = format!("audit-new-{}", uuid::Uuid::new_v4().simple());

    api.ok(
        Method::POST,
        "/v1/tenants",
        &owner,
        Some(&json!({"id": "initech", "name": "Initech"})),
    )
    .await;
    api.ok(
        Method::PATCH,
        "/v1/tenants/initech",
        &owner,
        Some(&json!({"name": "Initech Ltd"})),
    )
    .await;
    api.ok(
        Method::POST,
        "/v1/tenants/initech/sources",
        &owner,
        Some(&meta_source(
            "audited", "initech", "5552001", &secret, "vt-audit",
        )),
    )
    .await;
    api.ok(
        Method::PATCH,
        "/v1/tenants/initech/sources/audited",
        &owner,
        Some(&json!({"settings": {"channels": {"5552001": "initech", "5552002": "initech"}}})),
    )
    .await;
    api.ok(
        Method::POST,
        "/v1/tenants/initech/sources/audited/rotate-secret",
        &owner,
        Some(&json!({"secrets": {"app_secrets": [new_secret], "verify_token": "vt-audit"}})),
    )
    .await;
    api.ok(
        Method::PUT,
        "/v1/tenants/initech/routing",
        &owner,
        Some(&json!({"teams": {"t": {}}, "agents": {"a": {"teams": ["t"]}}, "default_team": "t"})),
    )
    .await;
    api.ok(
        Method::PUT,
        "/v1/tenants/initech/routing/agents/b",
        &owner,
        Some(&json!({"teams": ["t"]})),
    )
    .await;
    api.ok(
        Method::DELETE,
        "/v1/tenants/initech/routing/agents/b",
        &owner,
        None,
    )
    .await;
    api.ok(
        Method::PUT,
        "/v1/tenants/initech/routing/teams/u",
        &owner,
        Some(&json!({})),
    )
    .await;
    api.ok(
        Method::DELETE,
        "/v1/tenants/initech/routing/teams/u",
        &owner,
        None,
    )
    .await;
    let (kid, _) = api
        .key(&owner, json!({"role": "viewer", "tenant": "initech"}))
        .await;
    api.ok(Method::DELETE, &format!("/v1/api-keys/{kid}"), &owner, None)
        .await;
    api.ok(
        Method::POST,
        "/v1/tenants",
        &owner,
        Some(&json!({"id": "gone"})),
    )
    .await;
    api.ok(Method::DELETE, "/v1/tenants/gone", &owner, None)
        .await;
    api.ok(Method::POST, "/v1/admin/rotate-master-key", &owner, None)
        .await;

    let rows = api
        .ok(Method::GET, "/v1/audit?limit=1000", &owner, None)
        .await;
    let rows = rows["items"].as_array().unwrap().clone();
    let actor = rows
        .iter()
        .find(|r| r["action"] == "tenant.create" && r["target"] == "tenant:initech")
        .expect("tenant.create row")["actor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        actor.starts_with("key:sbk_") && actor.ends_with(&owner_id),
        "{actor}"
    );
    for action in [
        "tenant.create",
        "tenant.update",
        "tenant.delete",
        "source.create",
        "source.update",
        "source.rotate_secret",
        "routing.put",
        "routing.agent.put",
        "routing.agent.delete",
        "routing.team.put",
        "routing.team.delete",
        "api_key.create",
        "api_key.revoke",
        "master_key.rotate",
    ] {
        let by_owner: Vec<&Value> = rows
            .iter()
            .filter(|r| r["action"] == action && r["actor"] == actor.as_str())
            .collect();
        assert!(!by_owner.is_empty(), "no {action} row by the owner key");
        assert!(by_owner[0]["at"].is_string());
    }
    let update = rows
        .iter()
        .find(|r| r["action"] == "tenant.update")
        .unwrap();
    assert_eq!(update["before"]["name"], "Initech");
    assert_eq!(update["after"]["name"], "Initech Ltd");
    let rot = rows
        .iter()
        .find(|r| r["action"] == "source.rotate_secret")
        .unwrap();
    assert_eq!(rot["after"]["secret_set"], true);
    let all = serde_json::to_string(&rows).unwrap();
    for s in [secret.as_str(), new_secret.as_str(), "vt-audit"] {
        assert!(!all.contains(s), "audit log carries a secret");
    }

    let total = count(&c, "SELECT count(*) FROM audit_log").await;
    assert_eq!(total, rows.len() as i64);
    // Viewers do not read it.
    let (_, viewer) = api.key(API_TOKEN, json!({"role": "viewer"})).await;
    let (s, _, _) = api
        .call(Method::GET, "/v1/audit", Some(&viewer), None)
        .await;
    assert_eq!(s, 403);

    // The database refuses to alter the rows, whoever asks.
    for sql in [
        "UPDATE audit_log SET actor = 'someone else' WHERE action = 'source.create'",
        "DELETE FROM audit_log WHERE action = 'api_key.revoke'",
        "TRUNCATE audit_log",
    ] {
        let err = c.execute(sql, &[]).await.unwrap_err();
        let msg = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("append-only"), "{sql}: {err}");
    }
    // Nothing was changed or removed (the viewer key's creation added one).
    assert_eq!(count(&c, "SELECT count(*) FROM audit_log").await, total + 1);
    app.stop().await;
    drop_schema(&c, &schema).await;
}

// ---------------------------------------------------------------------------------------
// Secrets at rest and in logs: the real binary, debug logging.

#[tokio::test]
async fn secrets_are_unreadable_in_the_database_and_absent_from_logs() {
    let master = master_key("k1");
    let master_b64 = master.split_once(':').unwrap().1.to_string();
    let mut config = admin_config("unused:AAAA");
    config.api.master_key_file = None;
    let (_pg, c) = migrated(&config).await;
    require_redis(&config.redis.url).await;
    let schema = config.postgres.schema.clone();
    let port = free_port();

    let dir = std::env::temp_dir().join(format!("sb-admin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, format!("{BASE_CONFIG}\n[postgres]\nenabled = true\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD__BACKEND", "redis")
        .env("SWITCHBOARD__REDIS__URL", &config.redis.url)
        .env("SWITCHBOARD__REDIS__KEY_PREFIX", &config.redis.key_prefix)
        .env("SWITCHBOARD__POSTGRES__URL", &config.postgres.url)
        .env("SWITCHBOARD__POSTGRES__SCHEMA", &schema)
        .env("SWITCHBOARD__LOG__LEVEL", "debug")
        .env("SWITCHBOARD_MASTER_KEY", &master)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        }));
    }
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = TestApp::at(&base);
    let api = Api { app: &app };

    let secret = format!("AppSecret{}", uuid::Uuid::new_v4().simple());
    let verify = format!("VerifyTok{}", uuid::Uuid::new_v4().simple());
    let rotated = format!("Rotated{}", uuid::Uuid::new_v4().simple());
    let twilio_token = format!("TwilioAuth{}", uuid::Uuid::new_v4().simple());
    let created = api
        .ok(
            Method::POST,
            "/v1/tenants/acme/sources",
            API_TOKEN,
            Some(&meta_source("hidden", "acme", "5553001", &secret, &verify)),
        )
        .await;
    assert_eq!(created["secret_set"], true);
    assert_eq!(created["secret_count"], 2);
    api.ok(
        Method::POST,
        "/v1/tenants/acme/sources",
        API_TOKEN,
        Some(
            &json!({"id": "tw", "provider": "twilio", "secrets": {"auth_tokens": [twilio_token]}}),
        ),
    )
    .await;
    // A malformed secret is refused without being quoted back.
    let (s, v, _) = api
        .call(
            Method::POST,
            "/v1/tenants/acme/sources",
            Some(API_TOKEN),
            Some(
                &json!({"id": "bad", "provider": "meta", "settings": {"channels": {"1": "acme"}},
                         "secrets": {"app_secrets": secret, "verify_token": verify}}),
            ),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("invalid_source")),
        "{v}"
    );
    assert!(!v.to_string().contains(&secret), "{v}");

    // It verifies, handshakes, refuses a wrong signature.
    let body = wa_text_to("5553001", &unique_wamid());
    assert_eq!(post_signed_to(&app, "hidden", &body, &secret).await, 200);
    assert_eq!(post_signed_to(&app, "hidden", &body, "nope").await, 401);
    let hs = client
        .get(format!(
            "{base}/webhooks/hidden?hub.mode=subscribe&hub.verify_token={verify}&hub.challenge=42"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(hs.text().await.unwrap(), "42");
    api.ok(
        Method::POST,
        "/v1/tenants/acme/sources/hidden/rotate-secret",
        API_TOKEN,
        Some(&json!({"secrets": {"app_secrets": [rotated], "verify_token": verify}})),
    )
    .await;
    let body = wa_text_to("5553001", &unique_wamid());
    assert_eq!(post_signed_to(&app, "hidden", &body, &rotated).await, 200);
    let (_, token) = api
        .key(API_TOKEN, json!({"role": "viewer", "name": "ops"}))
        .await;
    api.ok(Method::GET, "/v1/tenants/acme/sources", &token, None)
        .await;

    // The API never returns them.
    let listed = api
        .ok(Method::GET, "/v1/tenants/acme/sources", API_TOKEN, None)
        .await
        .to_string();
    let one = api
        .ok(
            Method::GET,
            "/v1/tenants/acme/sources/hidden",
            API_TOKEN,
            None,
        )
        .await
        .to_string();
    let keys = api
        .ok(Method::GET, "/v1/api-keys", API_TOKEN, None)
        .await
        .to_string();
    let audit = api
        .ok(Method::GET, "/v1/audit?limit=1000", API_TOKEN, None)
        .await
        .to_string();
    let secrets = [
        secret.as_str(),
        verify.as_str(),
        rotated.as_str(),
        twilio_token.as_str(),
        token.as_str(),
        master_b64.as_str(),
    ];
    for (what, text) in [
        ("list", &listed),
        ("get", &one),
        ("keys", &keys),
        ("audit", &audit),
    ] {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows a secret: {text}");
        }
    }
    assert!(one.contains("\"secret_set\":true"), "{one}");

    // The database: pg_dump of the schema's data, and every column of every row as text.
    let dump = Command::new("pg_dump")
        .args(["--data-only", "--schema", &schema, "--dbname", &pg_url()])
        .output()
        .expect("pg_dump is installed (postgresql-client)");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(
        dump.contains("hidden") && dump.contains("admin_sources"),
        "dump has the rows"
    );
    let mut text = dump.clone();
    for table in [
        "admin_sources",
        "api_keys",
        "audit_log",
        "tenants",
        "routing_rule_sets",
    ] {
        for r in c
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            text.push_str(&r.get::<_, String>(0));
        }
    }
    for s in secrets {
        assert!(!text.contains(s), "the database holds a secret in clear");
        // Nor hex-encoded (bytea columns print as hex).
        assert!(
            !text.contains(&hex::encode(s)),
            "the database holds a secret as hex"
        );
    }

    // Stop; the logs (debug level) never carried any of them.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains("switchboard listening"), "{logs}");
    for s in secrets {
        assert!(!logs.contains(s), "a secret is in the logs:\n{logs}");
    }
    drop_schema(&c, &schema).await;
}

// ---------------------------------------------------------------------------------------
// OpenAPI.

/// Every route registered in the code (method and pattern, read from the source) is in
/// the document, and every documented operation is served.
#[tokio::test]
async fn openapi_document_lists_every_route_the_gateway_serves() {
    let config = admin_config(&master_key("k1"));
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config).await;
    let res = app
        .client
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| matches!(k.as_str(), "get" | "post" | "put" | "patch" | "delete"))
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();

    let registered = registered_routes();
    assert!(registered.len() > 40, "{registered:?}");
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");

    // Every documented operation answers (not the catch-all 404/405).
    for (method, path) in &documented {
        let concrete = path
            .split('/')
            .map(|p| if p.starts_with('{') { "x" } else { p })
            .collect::<Vec<_>>()
            .join("/");
        let res = app
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                app.url(&concrete),
            )
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert!(
            status != 405 && v["code"] != "not_found" && v["code"] != "method_not_allowed",
            "{method} {path} is documented but not served: {status} {v}"
        );
    }
    app.stop().await;
    drop_schema(&c, &schema).await;
}

/// (METHOD, pattern) of every `.route("...", web::method()...)` and
/// `web::resource("...").route(web::method()...)` in src/.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let re_route =
        regex::Regex::new(r#"\.route\(\s*"([^"]+)",\s*web::(get|post|put|patch|delete)\(\)"#)
            .unwrap();
    let re_resource = regex::Regex::new(
        r#"web::resource\(\s*"([^"]+)"\s*\)((?:\s*\.route\(web::\w+\(\)[^)]*\)\))+)"#,
    )
    .unwrap();
    let re_method = regex::Regex::new(r"web::(get|post|put|patch|delete)\(\)").unwrap();
    let mut stack = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for c in re_route.captures_iter(&text) {
                    out.insert((c[2].to_ascii_uppercase(), c[1].to_string()));
                }
                for c in re_resource.captures_iter(&text) {
                    for m in re_method.captures_iter(&c[2]) {
                        out.insert((m[1].to_ascii_uppercase(), c[1].to_string()));
                    }
                }
            }
        }
    }
    out
}

/// A tenant created through the API has its own history retention, like a config.toml
/// tenant: validated, changed without restart, applied by the retention job.
#[tokio::test]
async fn api_tenants_have_their_own_retention() {
    let config = admin_config(&master_key("k1"));
    let (pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config).await;
    let api = Api { app: &app };
    let (s, v, _) = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(API_TOKEN),
            Some(&json!({"id": "hooli", "retention_days": 0})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    let t = api
        .ok(
            Method::POST,
            "/v1/tenants",
            API_TOKEN,
            Some(&json!({"id": "hooli", "retention_days": 10})),
        )
        .await;
    assert_eq!(t["retention_days"], 10);
    // Kept when a PATCH does not mention it, cleared by null, set again by a number.
    let t = api
        .ok(
            Method::PATCH,
            "/v1/tenants/hooli",
            API_TOKEN,
            Some(&json!({"name": "Hooli"})),
        )
        .await;
    assert_eq!(t["retention_days"], 10);
    let t = api
        .ok(
            Method::PATCH,
            "/v1/tenants/hooli",
            API_TOKEN,
            Some(&json!({"retention_days": null})),
        )
        .await;
    assert!(t["retention_days"].is_null(), "{t}");
    let t = api
        .ok(
            Method::PATCH,
            "/v1/tenants/hooli",
            API_TOKEN,
            Some(&json!({"retention_days": 5})),
        )
        .await;
    assert_eq!(t["retention_days"], 5);

    let now = time::OffsetDateTime::now_utc();
    let at = |days: i64| switchboard::event::rfc3339(now - time::Duration::days(days));
    let ev = |conv: &str, days: i64| {
        crate::pg::event(json!({"tenant": "hooli", "conversation_id": conv,
                                "received_at": at(days), "occurred_at": at(days)}))
    };
    let mut client = pg.client().await.unwrap();
    switchboard::persist::write::write_batch(&mut client, &[ev("conv_old", 8), ev("conv_new", 1)])
        .await
        .unwrap();
    drop(client);
    let report = switchboard::persist::privacy::run_retention(&pg, now)
        .await
        .unwrap();
    assert_eq!(report.tenants, [("hooli".to_string(), 2)]);
    let left: Vec<String> = c
        .query(
            "SELECT conversation_id FROM messages WHERE tenant = 'hooli'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["conv_new"]);
    app.stop().await;
    drop_schema(&c, &schema).await;
}

/// `switchboard replay` knows the sources created through the admin API: a dead letter of
/// such a source is re-verified with its (decrypted) secret once its channel map is fixed.
#[tokio::test]
async fn replay_reverifies_dead_letters_of_api_sources() {
    let config = admin_config(&master_key("k1"));
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config.clone()).await;
    let api = Api { app: &app };
    let secret = format!("replay-secret-{}", uuid::Uuid::new_v4().simple());
    api.ok(
        Method::POST,
        "/v1/tenants/acme/sources",
        API_TOKEN,
        Some(&meta_source("dyn_replay", "acme", "5550100", &secret, "vt")),
    )
    .await;
    // A phone number the source does not map yet: dead-lettered.
    let body = wa_text_to("5550199", &unique_wamid());
    assert_eq!(
        post_signed_to(&app, "dyn_replay", &body, &secret).await,
        200
    );
    assert_eq!(app.deadletters().await.len(), 1);
    api.ok(
        Method::PATCH,
        "/v1/tenants/acme/sources/dyn_replay",
        API_TOKEN,
        Some(&json!({"settings": {"channels": {"5550100": "acme", "5550199": "acme"}}})),
    )
    .await;

    let backend = switchboard::state::build_backend(&config).unwrap();
    let sources = switchboard::ops::replay::api_sources(&config)
        .await
        .unwrap();
    assert!(sources.contains_key("dyn_replay"));
    let report = switchboard::ops::replay::replay(
        &config,
        &sources,
        &backend,
        &switchboard::ops::replay::ReplayOptions::default(),
    )
    .await;
    let report = serde_json::to_value(&report).unwrap();
    assert_eq!(report["replayed"], 1, "{report}");
    let events = app.wait_for_events(1).await;
    assert_eq!(events[0]["event"]["source"], "dyn_replay");
    // Replayed entries leave the dead-letter stream.
    assert!(app.deadletters().await.is_empty());
    app.stop().await;
    drop_schema(&c, &schema).await;
}

#[tokio::test]
async fn viewers_read_the_streams_without_contact_data() {
    let config = admin_config(&master_key("k1"));
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let api = Api { app: &app };
    let (_, viewer) = api.key(API_TOKEN, json!({"role": "viewer"})).await;
    let contact = "34699911122";
    let text = "my secret order number 4242";
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
        "contacts": [{"profile": {"name": "Ana Contact"}, "wa_id": contact}],
        "messages": [{"from": contact, "id": unique_wamid(), "timestamp": "1700000000", "type": "text", "text": {"body": text}}]
    }}]}]});
    assert_eq!(app.post(body.to_string().as_bytes()).await.status(), 200);
    // A dead letter of the same contact (a verified body that is not a Meta envelope).
    let dead = format!("{{\"from\":\"{contact}\",\"text\":\"{text}\"}}");
    assert_eq!(app.post(dead.as_bytes()).await.status(), 200);
    app.wait_for_events(1).await;

    let owner_view = api.ok(Method::GET, "/v1/events", API_TOKEN, None).await;
    assert!(
        owner_view.to_string().contains(contact),
        "owners see the contact"
    );
    let seen = api.ok(Method::GET, "/v1/events", &viewer, None).await;
    let dead_seen = api.ok(Method::GET, "/v1/deadletters", &viewer, None).await;
    for (what, v) in [("events", &seen), ("dead letters", &dead_seen)] {
        let s = v.to_string();
        assert!(!v["items"].as_array().unwrap().is_empty(), "{what}: {s}");
        for needle in [contact, text, "Ana Contact", "4242"] {
            assert!(
                !s.contains(needle),
                "a viewer sees {needle:?} in {what}: {s}"
            );
        }
    }
    let e = &seen["items"][0]["event"];
    assert_eq!(e["redacted"], true);
    assert_eq!(e["kind"], "message");
    assert_eq!(e["message"]["type"], "text");
    assert!(e["conversation_id"].is_string() && e["event_id"].is_string());
    assert!(e.get("contact").is_none() && e.get("raw").is_none());
    let d = &dead_seen["items"][0]["deadletter"];
    assert_eq!(d["redacted"], true);
    assert!(d["reason"].is_string() && d.get("body").is_none());
    app.stop().await;
    drop_schema(&c, &schema).await;
}

/// A change that changes nothing, or that is refused, leaves no trace: no audit row, no
/// bump of the change counter the other replicas poll, nothing half-written. Revoking a
/// revoked key answers the key as it is.
#[tokio::test]
async fn refused_and_empty_changes_leave_no_audit_row() {
    let config = admin_config(&master_key("k1"));
    let (_pg, c) = migrated(&config).await;
    let schema = config.postgres.schema.clone();
    let app = spawn_with(config).await;
    let api = Api { app: &app };
    let (kid, _) = api.key(API_TOKEN, json!({"role": "viewer"})).await;
    let revoked = api
        .ok(
            Method::DELETE,
            &format!("/v1/api-keys/{kid}"),
            API_TOKEN,
            None,
        )
        .await;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    api.ok(
        Method::POST,
        "/v1/tenants",
        API_TOKEN,
        Some(&json!({"id": "initech"})),
    )
    .await;
    api.ok(
        Method::POST,
        "/v1/tenants/initech/sources",
        API_TOKEN,
        Some(&meta_source(
            "kept",
            "initech",
            "5553001",
            "kept-secret",
            "vt-kept",
        )),
    )
    .await;
    let audit_rows = || count(&c, "SELECT count(*) FROM audit_log");
    let changes = || count(&c, "SELECT version FROM admin_changes WHERE id = 1");
    let (rows_before, version_before) = (audit_rows().await, changes().await);

    // Already revoked: 200 with the same key, nothing written.
    let again = api
        .ok(
            Method::DELETE,
            &format!("/v1/api-keys/{kid}"),
            API_TOKEN,
            None,
        )
        .await;
    assert_eq!(again, revoked);
    // Refused inside the transaction: each with its code, nothing written.
    for (method, path, body, status, code) in [
        (
            Method::POST,
            "/v1/tenants",
            Some(json!({"id": "initech"})),
            409,
            "already_exists",
        ),
        (Method::DELETE, "/v1/tenants/initech", None, 409, "conflict"),
        (
            Method::POST,
            "/v1/tenants/initech/sources",
            Some(meta_source(
                "kept", "initech", "5553001", "other", "vt-kept",
            )),
            409,
            "already_exists",
        ),
        (
            Method::PATCH,
            "/v1/tenants/initech/sources/absent",
            Some(json!({"disabled": true})),
            404,
            "unknown_source",
        ),
        (
            Method::DELETE,
            "/v1/tenants/acme/routing/agents/nobody",
            None,
            404,
            "unknown_agent",
        ),
        (
            Method::DELETE,
            "/v1/tenants/acme/routing/teams/none",
            None,
            404,
            "unknown_team",
        ),
        (
            Method::PATCH,
            "/v1/tenants/initech",
            Some(json!({"retention_days": 0})),
            400,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/api-keys/00000000000000000000000000000000",
            None,
            404,
            "unknown_key",
        ),
    ] {
        let (s, v, _) = api
            .call(method.clone(), path, Some(API_TOKEN), body.as_ref())
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
    }
    assert_eq!(audit_rows().await, rows_before);
    assert_eq!(changes().await, version_before);
    app.stop().await;
    drop_schema(&c, &schema).await;
}

#[tokio::test]
async fn values_postgres_cannot_store_are_400_not_503() {
    let config = admin_config(&master_key("k1"));
    let schema = config.postgres.schema.clone();
    let (_pg, c) = migrated(&config).await;
    let app = spawn_with(config).await;
    let api = Api { app: &app };
    // A NUL character inside a JSON string parses, but no PostgreSQL text can hold it.
    let (s, v, _) = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(API_TOKEN),
            Some(&json!({"id": "nulname", "name": "a\u{0}b"})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    let (s, v, _) = api
        .call(Method::GET, "/v1/audit?tenant=x%00", Some(API_TOKEN), None)
        .await;
    assert!(s == 400, "{s} {v}");
    app.stop().await;
    drop_schema(&c, &schema).await;
}
