//! The `switchboard` binary as an operator runs it: check-config, sign, serve with logs that
//! never carry secrets, and a SIGTERM that lets an in-flight request finish.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn repo_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

#[test]
fn check_config_accepts_the_shipped_file_and_explains_errors() {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo_config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    // An environment override with a bad value is reported by key, and secrets are not echoed.
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo_config())
        .env("SWITCHBOARD__SERVER__BIND", "not-an-address")
        .env(
            "SWITCHBOARD__SOURCES__META_DEMO__CHANNELS",
            "{\"42\"=\"nobody\"}",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.bind"), "{err}");
    assert!(err.contains("sources.meta_demo.channels.42"), "{err}");
    assert!(!err.contains("demo-app-secret"), "{err}");

    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/switchboard.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn sign_prints_the_header_meta_would_send() {
    let dir = std::env::temp_dir().join(format!("sb-sign-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The whatsapp-api-js published vector (see src/verify/meta.rs): same secret, same bytes.
    let body = dir.join("body");
    std::fs::write(&body, "Let's pretend this body is equal to the message object and can handle unicode characters like \\u307f\\u3069\\u308a\\u3044\\u308d and J'ai mang\\u00e9 des p\\u00e2tes").unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[tenants.t]\n[sources.s]\nprovider = \"meta\"\napp_secrets = [\"YOUR_APP_SECRET\"]\nverify_token = \"v\"\nchannels = { \"1\" = \"t\" }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["sign", "--source", "s", "--config"])
        .arg(&cfg)
        .arg("--file")
        .arg(&body)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "X-Hub-Signature-256: sha256=0363007aabdf1ab579f35936651a460fb5fa1aaf40df98b1264446b72cc96688"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sign_signs_the_url_for_url_signing_providers() {
    let dir = std::env::temp_dir().join(format!("sb-sign-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // twilio/twilio-python @ 306691e7, tests/unit/test_request_validator.py: token 12345,
    // this URL and these form parameters sign to RSOYDt4T1cUTdK1PDd93/VVr8B8=.
    let body = dir.join("body");
    std::fs::write(
        &body,
        "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212",
    )
    .unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[tenants.t]\n[sources.tw]\nprovider = \"twilio\"\nauth_tokens = [\"12345\"]\ntenant = \"t\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["sign", "--source", "tw", "--config"])
        .arg(&cfg)
        .arg("--file")
        .arg(&body)
        .args(["--url", "https://mycompany.com/myapp.php?foo=1&bar=2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "X-Twilio-Signature: RSOYDt4T1cUTdK1PDd93/VVr8B8="
    );
    // A provider that signs with a private key says why it cannot.
    std::fs::write(
        &cfg,
        "[tenants.t]\n[sources.tx]\nprovider = \"telnyx\"\npublic_keys = [\"O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=\"]\ntenant = \"t\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["sign", "--source", "tx", "--config"])
        .arg(&cfg)
        .arg("--file")
        .arg(&body)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("private key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

struct Served {
    child: Child,
    port: u16,
    logs: Arc<Mutex<String>>,
}

fn serve(extra_env: &[(&str, &str)]) -> Served {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(repo_config())
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD__SERVER__WORKERS", "1")
        .env("SWITCHBOARD__LOG__FORMAT", "json")
        .env("SWITCHBOARD__LOG__LEVEL", "debug")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                logs.lock().unwrap().push_str(&line);
                logs.lock().unwrap().push('\n');
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not start: {}",
            logs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Served { child, port, logs }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn logs_never_carry_secrets_and_sigterm_finishes_in_flight_requests() {
    let Served {
        mut child,
        port,
        logs,
    } = serve(&[]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let secret = "demo-app-secret-do-not-use-in-production";
    let token = "demo-verify-token";

    // Handshake (token in the query string), a bad signature, a good one.
    let res = client
        .get(format!(
            "{base}/webhooks/meta_demo?hub.mode=subscribe&hub.challenge=7&hub.verify_token={token}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = wa_text_batch("106540352242922", &[unique_wamid()]);
    let res = client
        .post(format!("{base}/webhooks/meta_demo"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            switchboard::verify::meta::sign_sha256("nope", &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A request whose body is still arriving when SIGTERM comes: it completes with 200.
    let body = wa_text_batch("106540352242922", &[unique_wamid()]);
    let sig = switchboard::verify::meta::sign_sha256(secret, &body);
    let (first, rest) = body.split_at(body.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/webhooks/meta_demo");
        let len = body.len();
        async move {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let res = client
                .post(url)
                .header("content-type", "application/json")
                .header("content-length", len)
                .header("x-hub-signature-256", sig)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
                .expect("the in-flight request gets an answer");
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        }
    });
    tx.send(Ok(first.to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused while draining...
    assert!(
        client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err(),
        "no new requests are accepted after SIGTERM"
    );
    // ...while the one in flight completes.
    tx.send(Ok(rest.to_vec())).await.unwrap();
    drop(tx);
    let (status, text) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"accepted\":1"), "{text}");

    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("SIGTERM") || logs.contains("graceful"),
        "{logs}"
    );
    for secret_text in [secret, token, "demo-api-token"] {
        assert!(
            !logs.contains(secret_text),
            "the logs carry a secret: {secret_text}"
        );
    }
    assert!(logs.contains("signature verification failed"), "{logs}");
    assert!(
        logs.contains("request_id"),
        "request ids are logged: {logs}"
    );
}

/// `switchboard routing simulate` on the shipped config and the fixed traffic file: the
/// same figures every run (virtual clock, deterministic strategies).
#[test]
fn routing_simulate_reports_a_fixed_traffic_file() {
    let traffic =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/routing/demo_traffic.jsonl");
    let run = || {
        let out = Command::new(BIN)
            .args([
                "routing",
                "simulate",
                "--json",
                "--handle-secs",
                "240",
                "--config",
            ])
            .arg(repo_config())
            .arg("--traffic")
            .arg(&traffic)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = run();
    assert_eq!(report, run(), "deterministic");
    assert_eq!(report["messages"], 45);
    let demo = &report["tenants"]["demo"];
    assert_eq!(demo["conversations"], 36);
    assert_eq!(demo["assigned_conversations"], 36);
    assert_eq!(demo["still_waiting"], 0);
    assert_eq!(demo["rule_hits"]["vip"], 1);
    assert_eq!(demo["rule_hits"]["ads"], 2);
    assert_eq!(demo["rule_hits"]["spanish"], 11);
    assert_eq!(demo["rule_hits"]["(default)"], 22);
    let agents = demo["agents"].as_object().unwrap();
    assert!(agents.get("dan").is_none(), "viewers are not assignable");
    let mut total = 0;
    for (id, a) in agents {
        assert!(
            a["peak_open"].as_u64().unwrap() <= a["capacity"].as_u64().unwrap(),
            "{id}: {a}"
        );
        total += a["assigned"].as_u64().unwrap();
    }
    assert!(
        total >= 36,
        "every conversation assigned at least once ({total})"
    );
    assert!(demo["wait_p99_ms"].as_u64().unwrap() >= demo["wait_p50_ms"].as_u64().unwrap());
    assert!(
        demo["waited"].as_u64().unwrap() > 0,
        "the burst is over capacity: some wait"
    );

    // The text report names every section.
    let out = Command::new(BIN)
        .args(["routing", "simulate", "--config"])
        .arg(repo_config())
        .arg("--traffic")
        .arg(&traffic)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "rule hits",
        "assignments per agent",
        "queue wait: p50",
        "fairness",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    // A bad line is reported with its number.
    let bad = std::env::temp_dir().join(format!(
        "sb-traffic-{}.jsonl",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&bad, "{\"t_ms\": 0, \"tenant\": \"demo\"}\n").unwrap();
    let out = Command::new(BIN)
        .args(["routing", "simulate", "--config"])
        .arg(repo_config())
        .arg("--traffic")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("traffic line 1"));
}
