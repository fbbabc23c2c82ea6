//! TLS to Redis and PostgreSQL, against real servers started here with a CA and certificates
//! made for the test (rcgen): the right CA works end to end; a wrong CA, a wrong host name
//! and a plain client to a TLS-only server fail with an error that names the setting to
//! change, and no webhook is acknowledged. redis-server and the PostgreSQL binaries are
//! required: a missing one fails the test, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use switchboard::config::BackendKind;

use crate::helpers::*;
use crate::pg::*;

/// A CA, a server certificate for `server_names`, a client certificate, and another CA that
/// signed nothing here, as PEM files in a temporary directory.
pub struct Pki {
    pub dir: PathBuf,
}

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    (Issuer::new(p, key), cert.pem())
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new(server_names: &[&str]) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("switchboard-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, ca_pem) = new_ca("switchboard test CA");
        let (_, other_pem) = new_ca("some other CA");
        let (server, server_key) = leaf(&ca, server_names, server_names[0]);
        let (client, client_key) = leaf(&ca, &["switchboard-client"], "switchboard");
        for (name, pem) in [
            ("ca.pem", ca_pem),
            ("other-ca.pem", other_pem),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server that only speaks TLS (`--port 0 --tls-port <free>`), with an ACL user
/// `sb` / `s3cret` (the default user off).
pub struct TlsRedis {
    pub port: u16,
    child: Child,
}

impl TlsRedis {
    /// `client_certs`: "no", "optional" or "yes" (redis' tls-auth-clients).
    pub fn start(pki: &Pki, client_certs: &str) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "-::1"])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args(["--tls-auth-clients", client_certs])
            .args(["--user", "default", "off"])
            .args(["--user", "sb", "on", ">s3cret", "~*", "&*", "+@all"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&pki.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is installed (apt-get install redis-server; Debian's supports TLS)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start (is it built with TLS?)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_tls_config(url: String) -> switchboard::config::Config {
    let mut c = test_config(BackendKind::Redis);
    c.redis.url = url;
    c
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A webhook through a gateway whose Redis connection is misconfigured: 503 (nothing
/// acknowledged), and /readyz says which setting to change.
async fn refused(config: switchboard::config::Config, setting: &str) {
    let app = spawn_unchecked(config).await;
    let res = app.post(&wa_text(&unique_wamid())).await;
    assert_eq!(res.status(), 503, "a webhook is not acknowledged");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "dependency_unavailable");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(setting),
        "/readyz names {setting}: {message}"
    );
    app.stop().await;
}

#[tokio::test]
async fn redis_over_tls_with_the_right_ca_and_acl_user_accepts_webhooks() {
    let pki = Pki::new(&["localhost"]);
    let server = TlsRedis::start(&pki, "optional");
    let mut config = redis_tls_config(format!("rediss://sb:s3cret@localhost:{}", server.port));
    config.redis.tls_ca_file = Some(pki.path("ca.pem"));
    let app = spawn_unchecked(config).await;
    let wamid = unique_wamid();
    let res = app.post(&wa_text(&wamid)).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    // Through the router (its own TLS connection) onto the events stream.
    let events = app.wait_for_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["provider_message_id"], wamid.as_str());
    // The same webhook again is a duplicate, over the same connection.
    assert_eq!(app.post(&wa_text(&wamid)).await.status(), 200);
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn redis_mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let server = TlsRedis::start(&pki, "yes");
    let url = format!("rediss://sb:s3cret@localhost:{}", server.port);

    let mut with_cert = redis_tls_config(url.clone());
    with_cert.redis.tls_ca_file = Some(pki.path("ca.pem"));
    with_cert.redis.tls_cert_file = Some(pki.path("client.pem"));
    with_cert.redis.tls_key_file = Some(pki.path("client.key"));
    let app = spawn_unchecked(with_cert).await;
    assert_eq!(app.post(&wa_text(&unique_wamid())).await.status(), 200);
    assert_eq!(app.wait_for_events(1).await.len(), 1);
    app.stop().await;

    let mut without = redis_tls_config(url);
    without.redis.tls_ca_file = Some(pki.path("ca.pem"));
    refused(without, "redis.tls_cert_file").await;
}

#[tokio::test]
async fn redis_tls_misconfigurations_answer_503_and_name_the_setting() {
    // The server's certificate names only "localhost".
    let pki = Pki::new(&["localhost"]);
    let server = TlsRedis::start(&pki, "optional");
    let port = server.port;

    // A CA that did not sign the server's certificate.
    let mut wrong_ca = redis_tls_config(format!("rediss://sb:s3cret@localhost:{port}"));
    wrong_ca.redis.tls_ca_file = Some(pki.path("other-ca.pem"));
    refused(wrong_ca, "redis.tls_ca_file").await;

    // The right CA, but a host name the certificate does not carry.
    let mut wrong_host = redis_tls_config(format!("rediss://sb:s3cret@127.0.0.1:{port}"));
    wrong_host.redis.tls_ca_file = Some(pki.path("ca.pem"));
    refused(wrong_host, "does not name the host in redis.url").await;

    // A plain client to the TLS-only port.
    refused(
        redis_tls_config(format!("redis://sb:s3cret@localhost:{port}")),
        "rediss://",
    )
    .await;

    // Wrong password over good TLS.
    let mut wrong_pass = redis_tls_config(format!("rediss://sb:nope@localhost:{port}"));
    wrong_pass.redis.tls_ca_file = Some(pki.path("ca.pem"));
    refused(wrong_pass, "redis.url").await;

    // Only when set explicitly, the insecure mode talks to the server whatever its name.
    let mut insecure = redis_tls_config(format!("rediss://sb:s3cret@127.0.0.1:{port}"));
    insecure.redis.tls_insecure = true;
    let app = spawn_unchecked(insecure).await;
    assert_eq!(app.post(&wa_text(&unique_wamid())).await.status(), 200);
    app.stop().await;
}

#[test]
fn redis_tls_settings_are_checked_before_anything_starts() {
    let pki = Pki::new(&["localhost"]);
    let base = format!(
        "backend = \"redis\"\n{}",
        BASE_CONFIG.replace(
            "[redis]\n",
            "[redis]\nurl = \"redis://localhost:6379\"\ntls_insecure = true\n"
        )
    );
    let err = switchboard::config::Config::from_toml(&base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rediss://"), "{err}");

    let fragment = BASE_CONFIG.replace(
        "[redis]\n",
        "[redis]\ncluster_nodes = [\"rediss://localhost:6379/#insecure\"]\n",
    );
    let err = switchboard::config::Config::from_toml(&fragment)
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis.tls_insecure"), "{err}");

    let missing_key = BASE_CONFIG.replace(
        "[redis]\n",
        &format!(
            "[redis]\ntls_cert_file = {:?}\n",
            pki.path("client.pem").display().to_string()
        ),
    );
    let err = switchboard::config::Config::from_toml(&missing_key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis.tls_key_file"), "{err}");

    let not_pem = BASE_CONFIG.replace(
        "[redis]\n",
        &format!(
            "[redis]\ntls_ca_file = {:?}\n",
            pki.path("server.key").display().to_string()
        ),
    );
    let err = switchboard::config::Config::from_toml(&not_pem)
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis.tls_ca_file"), "{err}");
}

/// A PostgreSQL that only accepts TLS connections (pg_hba: hostssl only), with the test
/// PKI's server certificate.
fn tls_postgres(pki: &Pki) -> PrivatePostgres {
    let cert = std::fs::read(pki.path("server.pem")).unwrap();
    let key = std::fs::read(pki.path("server.key")).unwrap();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    PrivatePostgres::start_with(move |data: &Path| {
        std::fs::write(data.join("server.crt"), &cert).unwrap();
        std::fs::write(data.join("server.key"), &key).unwrap();
        std::fs::write(data.join("root.crt"), &ca).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
        );
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
    })
}

fn pg_url_with(port: u16, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{port}/postgres?{params}")
}

/// Connects through the gateway's own pool with `url`; the error text when it fails.
async fn pg_ping(url: &str) -> Result<(), String> {
    let mut config = test_config(BackendKind::Memory);
    config.postgres.url = url.to_string();
    config.postgres.connect_timeout_ms = 3000;
    config.validate().map_err(|e| e.to_string())?;
    let pg = switchboard::persist::Postgres::new(&config).map_err(|e| e.to_string())?;
    pg.ping().await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn postgres_over_tls_follows_libpq_sslmodes() {
    let pki = Pki::new(&["localhost"]);
    let server = tls_postgres(&pki);
    let port = server.port;
    let ca = pki.path("ca.pem").display().to_string();
    let other = pki.path("other-ca.pem").display().to_string();

    // Works: verify-full with the right CA and name; verify-ca whatever the name; require
    // without a root checks nothing (libpq's meaning); prefer takes TLS when offered.
    for url in [
        pg_url_with(
            port,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        pg_url_with(
            port,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        pg_url_with(port, "127.0.0.1", "sslmode=require"),
        pg_url_with(port, "127.0.0.1", "sslmode=prefer"),
        pg_url_with(port, "127.0.0.1", ""),
        pg_url_with(
            port,
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}&application_name=x",
                pki.path("client.pem").display(),
                pki.path("client.key").display()
            ),
        ),
    ] {
        pg_ping(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    // Fails, naming what to change.
    for (url, setting) in [
        (
            pg_url_with(
                port,
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            "sslrootcert",
        ),
        // libpq: require with a root file verifies the CA.
        (
            pg_url_with(
                port,
                "localhost",
                &format!("sslmode=require&sslrootcert={other}"),
            ),
            "sslrootcert",
        ),
        (
            pg_url_with(
                port,
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "does not name the host in postgres.url",
        ),
        (
            pg_url_with(port, "127.0.0.1", "sslmode=disable"),
            "sslmode=",
        ),
        (pg_url_with(port, "127.0.0.1", "sslmode=allow"), "sslmode"),
    ] {
        let err = pg_ping(&url).await.expect_err(&url);
        assert!(err.contains(setting), "{url}: {err}");
    }
}

#[tokio::test]
async fn webhook_history_reaches_postgres_over_verified_tls() {
    let pki = Pki::new(&["localhost"]);
    let server = tls_postgres(&pki);
    let ca = pki.path("ca.pem").display().to_string();
    let url = pg_url_with(
        server.port,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let mut config = pg_config(BackendKind::Memory, &url);
    config.postgres.migrate_on_start = true;
    let schema = config.postgres.schema.clone();
    let app = spawn_unchecked(config.clone()).await;
    let wamid = unique_wamid();
    assert_eq!(app.post(&wa_text(&wamid)).await.status(), 200);
    let pg = switchboard::persist::Postgres::new(&config).unwrap();
    let client = pg.client().await.expect("verified TLS connection");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM messages WHERE provider_message_id = $1",
                &[&wamid],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the message reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = readyz(&app).await;
    assert_eq!(body["persister"]["postgres"], "up", "{body}");
    app.stop().await;

    // The same gateway with a CA that did not sign the server's certificate: not ready
    // (its schema was never seen migrated), and /readyz says what to change.
    let mut wrong = pg_config(
        BackendKind::Memory,
        &pg_url_with(
            server.port,
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                pki.path("other-ca.pem").display()
            ),
        ),
    );
    wrong.postgres.schema = schema;
    let app = spawn_unchecked(wrong).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "dependency_unavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sslrootcert"),
        "{body}"
    );
    app.stop().await;
}

/// A port whose +10000 (the cluster bus) is free too.
fn bus_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let p = free_port();
        if p > 55_000 || taken.contains(&p) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// Three cluster masters speaking only TLS, to clients and on the cluster bus.
struct TlsCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
}

impl TlsCluster {
    fn start(pki: &Pki) -> TlsCluster {
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push(bus_port(&ports));
        }
        let children = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--bind", "127.0.0.1"])
                    .args(["--tls-cluster", "yes", "--tls-auth-clients", "optional"])
                    .arg("--tls-cert-file")
                    .arg(pki.path("server.pem"))
                    .arg("--tls-key-file")
                    .arg(pki.path("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(pki.path("ca.pem"))
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&pki.dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed (apt-get install redis-server)")
            })
            .collect();
        let c = TlsCluster { ports, children };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &c.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "TLS cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let cli = |args: &[&str]| {
            Command::new("redis-cli")
                .arg("--tls")
                .arg("--cacert")
                .arg(pki.path("ca.pem"))
                .args(args)
                .output()
                .expect("redis-cli is installed (it comes with redis-server)")
        };
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = cli(&args);
        assert!(
            out.status.success(),
            "redis-cli --tls --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &c.ports {
            loop {
                let info = cli(&["-p", &port.to_string(), "cluster", "info"]);
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "TLS cluster not ok on {port}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn redis_cluster_over_tls_accepts_webhooks_on_every_partition() {
    // Cluster nodes announce their IP addresses: the certificate names 127.0.0.1.
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let cluster = TlsCluster::start(&pki);
    let mut config = test_config(BackendKind::Redis);
    config.redis.cluster_nodes = cluster
        .ports
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}"))
        .collect();
    config.redis.tls_ca_file = Some(pki.path("ca.pem"));
    config.streams.partitions = 6;
    // A cluster client's first connection makes a TLS handshake with every node (slow in
    // a debug build on a busy machine): more than the test default of 500 ms.
    config.redis.connect_timeout_ms = 5000;
    config.redis.command_timeout_ms = 5000;
    let app = spawn_unchecked(config.clone()).await;
    let ids: Vec<String> = (0..12).map(|_| unique_wamid()).collect();
    for id in &ids {
        let res = app.post(&wa_text(id)).await;
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
    }
    let events = app.wait_for_events(ids.len()).await;
    assert_eq!(events.len(), ids.len());
    app.stop().await;

    // The same cluster with a CA that did not sign the nodes' certificates.
    config.redis.tls_ca_file = Some(pki.path("other-ca.pem"));
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    refused(config, "redis.tls_ca_file").await;
}

/// The end-entity certificate (DER) of a PEM file.
fn der_of(pem_file: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(pem_file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// One HTTPS request to `/healthz` trusting `cas`, over TLS 1.2 or 1.3: the certificate the
/// server presented, or why the request failed.
async fn https_healthz(
    port: u16,
    cas: &[PathBuf],
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(der_of(ca).into()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let head = String::from_utf8_lossy(&response);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {head:?}"));
    }
    Ok(cert)
}

#[tokio::test]
async fn https_listener_serves_tls_and_reloads_its_certificate_without_failing_a_request() {
    let first = Pki::new(&["localhost"]);
    let second = Pki::new(&["localhost"]);
    let dir = first.dir.join("live");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(first.path("server.pem"), &cert).unwrap();
    std::fs::copy(first.path("server.key"), &key).unwrap();

    let mut config = test_config(BackendKind::Memory);
    config.server.tls_cert_file = Some(cert.clone());
    config.server.tls_key_file = Some(key.clone());
    let app = switchboard::startup::Application::build(config)
        .await
        .expect("app builds");
    assert!(app.is_https());
    let port = app.port();
    let handle = app.server_handle();
    tokio::spawn(app.run_until_stopped());

    let cas = vec![first.path("ca.pem"), second.path("ca.pem")];
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let served = https_healthz(port, &cas, version).await.unwrap();
        assert_eq!(served, der_of(&first.path("server.pem")));
    }
    // A client that does not trust the CA is refused at the handshake.
    let err = https_healthz(port, &[second.path("ca.pem")], &rustls::version::TLS13)
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");

    // Requests all along while the files are replaced (not atomically: the key first, so
    // for a moment the pair does not match and the previous certificate must stay).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, cas) = (stop.clone(), cas.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match https_healthz(port, &cas, &rustls::version::TLS13).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::copy(second.path("server.key"), &key).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::copy(second.path("server.pem"), &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let served = https_healthz(port, &cas, &rustls::version::TLS13)
            .await
            .unwrap();
        if served == der_of(&second.path("server.pem")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "requests failed during the reload: {failed:?}"
    );
    handle.stop(true).await;
}

#[tokio::test]
async fn sighup_reloads_the_https_certificate_of_the_running_binary() {
    let first = Pki::new(&["localhost"]);
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    // A second certificate whose files have the same sizes, so that once its modification
    // times are set back the file watch cannot tell: only SIGHUP reloads it.
    let second = (0..500)
        .map(|_| Pki::new(&["localhost"]))
        .find(|p| {
            len(&p.path("server.pem")) == len(&first.path("server.pem"))
                && len(&p.path("server.key")) == len(&first.path("server.key"))
        })
        .expect("a same-size certificate");
    let dir = first.dir.join("live");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(first.path("server.pem"), &cert).unwrap();
    std::fs::copy(first.path("server.key"), &key).unwrap();

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD__SERVER__WORKERS", "1")
        .env("SWITCHBOARD__SERVER__TLS_CERT_FILE", &cert)
        .env("SWITCHBOARD__SERVER__TLS_KEY_FILE", &key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cas = vec![first.path("ca.pem"), second.path("ca.pem")];
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        match https_healthz(port, &cas, &rustls::version::TLS13).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "HTTPS never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(served, der_of(&first.path("server.pem")));

    let times: Vec<std::time::SystemTime> = [&cert, &key]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    std::fs::copy(second.path("server.pem"), &cert).unwrap();
    std::fs::copy(second.path("server.key"), &key).unwrap();
    for (p, t) in [&cert, &key].iter().zip(&times) {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(*t)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let served = https_healthz(port, &cas, &rustls::version::TLS13)
        .await
        .unwrap();
    assert_eq!(
        served,
        der_of(&first.path("server.pem")),
        "unchanged stamps: no reload without the signal"
    );

    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = https_healthz(port, &cas, &rustls::version::TLS13)
            .await
            .unwrap();
        if served == der_of(&second.path("server.pem")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the gateway"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A TLS-only redis-server (or sentinel, with `conf`) of the Sentinel test.
fn tls_node(pki: &Pki, port: u16, extra: &[String]) -> Child {
    let child = Command::new("redis-server")
        .args(extra)
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--tls-replication", "yes"])
        .args(["--tls-auth-clients", "optional"])
        .arg("--tls-cert-file")
        .arg(pki.path("server.pem"))
        .arg("--tls-key-file")
        .arg(pki.path("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(pki.path("ca.pem"))
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dbfilename", &format!("dump-{port}.rdb")])
        .arg("--dir")
        .arg(&pki.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn sentinel_mode_over_tls_finds_the_primary_and_accepts_webhooks() {
    // Sentinels report the primary by IP address: the certificate names 127.0.0.1.
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let (primary, replica, sentinel) = (free_port(), free_port(), free_port());
    let mut nodes = Children(vec![tls_node(&pki, primary, &[])]);
    nodes.0.push(tls_node(
        &pki,
        replica,
        &[
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ],
    ));
    let conf = pki.dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor mymaster 127.0.0.1 {primary} 1\nsentinel down-after-milliseconds mymaster 2000\n"
        ),
    )
    .unwrap();
    nodes.0.push(tls_node(
        &pki,
        sentinel,
        &[conf.display().to_string(), "--sentinel".into()],
    ));

    let mut config = test_config(BackendKind::Redis);
    config.redis.url = "rediss://unused-with-sentinels:6379".into();
    config.redis.sentinel_nodes = vec![format!("rediss://127.0.0.1:{sentinel}")];
    config.redis.sentinel_master = Some("mymaster".into());
    config.redis.tls_ca_file = Some(pki.path("ca.pem"));
    config.redis.connect_timeout_ms = 3000;
    config.redis.command_timeout_ms = 3000;
    let app = spawn_unchecked(config.clone()).await;
    let wamid = unique_wamid();
    let res = app.post(&wa_text(&wamid)).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let events = app.wait_for_events(1).await;
    assert_eq!(events[0]["event"]["provider_message_id"], wamid.as_str());
    app.stop().await;

    config.redis.tls_ca_file = Some(pki.path("other-ca.pem"));
    config.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    refused(config, "redis.tls_ca_file").await;
}
