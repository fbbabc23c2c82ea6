//! The README's demo credentials never face a network (issue 12, item 2): `serve` refuses
//! them beyond loopback, `check-config` says so, the API token has a minimum length, and
//! real secrets can come from the environment or from files.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::gateway_bin::{Gateway, BIN};
use crate::helpers::*;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The binary on the shipped demo config.toml with `env`, nothing inherited.
fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(repo("config.toml"))
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn demo_credentials_are_refused_beyond_loopback() {
    let port = free_port();
    let exposed = [("SWITCHBOARD__SERVER__BIND", format!("0.0.0.0:{port}"))];
    for args in [&["serve"][..], &["check-config"][..]] {
        let out = run(args, &exposed);
        let said = text(&out);
        assert!(!out.status.success(), "{args:?} accepted: {said}");
        for key in [
            "api.token",
            "sources.meta_demo.app_secrets",
            "sources.meta_demo.verify_token",
            "SWITCHBOARD__API__TOKEN",
            "loopback",
        ] {
            assert!(said.contains(key), "{args:?} does not name {key}: {said}");
        }
        for value in switchboard::config::published::PUBLISHED {
            assert!(!said.contains(value), "{args:?} prints {value}: {said}");
        }
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the refused gateway listens"
    );
    // On loopback the demo runs, and check-config notes the published credentials.
    let out = run(
        &["check-config"],
        &[("SWITCHBOARD__SERVER__BIND", "127.0.0.1:8080".into())],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("note: api.token"), "{said}");
    assert!(said.contains("configuration OK"), "{said}");
}

#[test]
fn api_token_shorter_than_32_characters_is_refused() {
    let out = run(
        &["check-config"],
        &[(
            "SWITCHBOARD__API__TOKEN",
            "0123456789abcdef0123456789abcde".into(),
        )],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("api.token is shorter than 32"), "{said}");
    assert!(!said.contains("0123456789abcdef"), "{said}");
}

/// Real credentials from the environment and from files (`SWITCHBOARD_FILE__...`): the
/// gateway serves on 0.0.0.0, the file's token is the owner key and the demo one is not.
#[tokio::test]
async fn real_credentials_from_env_and_files_serve_beyond_loopback() {
    let dir = std::env::temp_dir().join(format!("sb-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), "-from-a-file");
    std::fs::write(dir.join("api-token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.join("app-secrets"), "[\"a-real-app-secret\"]\n").unwrap();
    let port = free_port();
    let gw = Gateway::start(
        &std::fs::read_to_string(repo("config.toml")).unwrap(),
        &[
            ("SWITCHBOARD__SERVER__BIND", format!("0.0.0.0:{port}")),
            (
                "SWITCHBOARD_FILE__API__TOKEN",
                dir.join("api-token").display().to_string(),
            ),
            (
                "SWITCHBOARD_FILE__SOURCES__META_DEMO__APP_SECRETS",
                dir.join("app-secrets").display().to_string(),
            ),
            (
                "SWITCHBOARD__SOURCES__META_DEMO__VERIFY_TOKEN",
                "a-real-verify-token".into(),
            ),
        ],
    );
    let base = gw.base();
    let client = reqwest::Client::new();
    let get = |bearer: &str| {
        client
            .get(format!("{base}/v1/tenants/demo/agents"))
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(get(&token).await.unwrap().status(), 200);
    assert_eq!(
        get("demo-api-token-published-in-the-readme")
            .await
            .unwrap()
            .status(),
        401
    );
    let body = wa_text_batch("106540352242922", &[unique_wamid()]);
    let signed = |secret: &str| {
        client
            .post(format!("{base}/webhooks/meta_demo"))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                switchboard::verify::meta::sign_sha256(secret, &body),
            )
            .body(body.clone())
            .send()
    };
    assert_eq!(signed("a-real-app-secret").await.unwrap().status(), 200);
    assert_eq!(
        signed("demo-app-secret-do-not-use-in-production")
            .await
            .unwrap()
            .status(),
        401
    );
    let _ = std::fs::remove_dir_all(dir);
}
