//! The HTTP edge under hostile clients: stalled bodies, many connections from one address,
//! slow headers (crate::ingest::edge). Attack connections come from 127.0.0.1; the
//! well-behaved provider from 127.0.0.2 (the whole 127/8 is loopback on Linux).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::gateway_bin::Gateway;
use crate::helpers::*;

const ATTACKER: &str = "127.0.0.1";
const PROVIDER: &str = "127.0.0.2";

async fn connect_from(local: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Reads one HTTP/1.1 response (status, headers and body as text) or whatever arrived
/// before the connection ended or `within` passed.
async fn read_response(stream: &mut TcpStream, within: Duration) -> (Option<u16>, String) {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    (status, text)
}

/// Whether the server closed the connection (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn json_body(text: &str) -> Value {
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Issue 12, item 1: 60 connections from one address each declare a 4 MiB body with a wrong
/// signature, send all of it but the last byte, and wait. The gateway (the binary, at the
/// default budget and connection limits) holds at most its per-address share of body bytes:
/// its resident memory grows by less than 64 MiB; every stalled body is answered 408
/// `request_timeout` after `server.body_read_timeout_ms` (3 s here) and its connection
/// closed; the connections past the share get 503 `backpressure` at once; and a provider on
/// another address keeps getting 200 for signed webhooks throughout.
#[tokio::test]
async fn stalled_bodies_cannot_pin_memory_or_starve_other_clients() {
    const CONNECTIONS: usize = 60;
    const DECLARED: usize = 4 * 1024 * 1024;
    const TIMEOUT_MS: u64 = 3000;
    require_redis(&redis_url()).await;
    let gw = Gateway::start(
        BASE_CONFIG,
        &[
            ("SWITCHBOARD__BACKEND", "redis".into()),
            ("SWITCHBOARD__REDIS__URL", redis_url()),
            (
                "SWITCHBOARD__REDIS__KEY_PREFIX",
                format!("test-{}", uuid::Uuid::new_v4().simple()),
            ),
            (
                "SWITCHBOARD__SERVER__BODY_READ_TIMEOUT_MS",
                TIMEOUT_MS.to_string(),
            ),
        ],
    );
    let port = gw.port;
    let provider = reqwest::Client::builder()
        .local_address(PROVIDER.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let signed = |body: Vec<u8>| {
        provider
            .post(format!("{}/webhooks/meta_test", gw.base()))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                switchboard::verify::meta::sign_sha256(SECRET, &body),
            )
            .body(body)
            .send()
    };
    // Warm up (lazy allocations, connection pools) before the baseline.
    for _ in 0..20 {
        let res = signed(wa_text(&unique_wamid())).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = gw.rss();

    let started = Instant::now();
    let body = vec![b'x'; DECLARED - 1];
    let attack: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let stream = connect_from(ATTACKER, port).await;
                let (rd, mut wr) = stream.into_split();
                let head = format!(
                    "POST /webhooks/meta_test HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
                     x-hub-signature-256: sha256={}\r\ncontent-length: {DECLARED}\r\n\r\n",
                    "0".repeat(64)
                );
                let writer = tokio::spawn(async move {
                    if wr.write_all(head.as_bytes()).await.is_ok() {
                        let _ = wr.write_all(&body).await;
                    }
                    // Stall: keep the write half open, never send the last byte.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    drop(wr);
                });
                let mut stream = rd;
                let mut buf = Vec::new();
                let deadline =
                    tokio::time::Instant::now() + Duration::from_millis(TIMEOUT_MS + 10_000);
                let mut chunk = [0u8; 4096];
                let ended = loop {
                    match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => break false,
                    }
                };
                writer.abort();
                let text = String::from_utf8_lossy(&buf).to_string();
                (ended, started.elapsed(), text)
            })
        })
        .collect();

    // Meanwhile: the provider's webhooks, and the gateway's memory.
    let mut peak = baseline;
    let mut provider_statuses = Vec::new();
    while attack.iter().any(|t| !t.is_finished()) {
        peak = peak.max(gw.rss());
        let res = signed(wa_text(&unique_wamid())).await;
        provider_statuses.push(res.map(|r| r.status().as_u16()).unwrap_or(0));
        peak = peak.max(gw.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_millis(TIMEOUT_MS + 20_000),
            "the attack connections are still open"
        );
    }
    let mut timeouts = 0;
    let mut refused = 0;
    for t in attack {
        let (ended, elapsed, text) = t.await.unwrap();
        assert!(
            ended,
            "a stalled connection was still open after {elapsed:?}: {text:?}"
        );
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .map(str::to_string);
        match status.as_deref() {
            Some("408") => {
                timeouts += 1;
                assert_eq!(json_body(&text)["code"], "request_timeout", "{text}");
                assert!(
                    elapsed >= Duration::from_millis(TIMEOUT_MS - 200)
                        && elapsed < Duration::from_millis(TIMEOUT_MS + 5000),
                    "408 after {elapsed:?}"
                );
            }
            Some("503") => {
                refused += 1;
                assert_eq!(json_body(&text)["code"], "backpressure", "{text}");
                assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
            }
            // Refused while the client was still writing: the close may arrive as a reset
            // that discards the answer.
            None if text.is_empty() => refused += 1,
            other => panic!("unexpected answer {other:?}: {text}"),
        }
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "stalled-body attack: {timeouts} x 408, {refused} refused, RSS {} MiB -> peak {} MiB (+{} MiB), provider: {} webhooks",
        baseline >> 20,
        peak >> 20,
        growth >> 20,
        provider_statuses.len()
    );
    assert!(
        growth < 64 * 1024 * 1024,
        "the gateway grew by {} MiB under the attack",
        growth >> 20
    );
    // The default per-address share (16 MiB) holds four 4 MiB bodies; the rest are refused.
    assert!((1..=4).contains(&timeouts), "{timeouts} bodies timed out");
    assert_eq!(timeouts + refused, CONNECTIONS);
    assert!(
        !provider_statuses.is_empty() && provider_statuses.iter().all(|s| *s == 200),
        "the provider's webhooks during the attack: {provider_statuses:?}"
    );
    // Everything is released: the attacker's address is served again.
    let body = wa_text(&unique_wamid());
    let res = reqwest::Client::new()
        .post(format!("{}/webhooks/meta_test", gw.base()))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            switchboard::verify::meta::sign_sha256(SECRET, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

fn edge_config() -> switchboard::config::Config {
    let mut c = test_config(switchboard::config::BackendKind::Redis);
    c.server.max_connections_per_ip = 3;
    c.server.header_read_timeout_ms = 1000;
    c.server.body_read_timeout_ms = 1000;
    c.server.trusted_proxies = vec!["127.0.0.3".parse().unwrap()];
    c
}

async fn get_healthz(stream: &mut TcpStream) -> (Option<u16>, String) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    read_response(stream, Duration::from_secs(5)).await
}

/// Connections past `server.max_connections_per_ip` from one address are answered 429
/// `too_many_connections` and closed; other addresses and trusted proxies are not affected;
/// a slot frees when a connection closes.
#[tokio::test]
async fn connections_per_client_address_are_capped() {
    let app = spawn_with(edge_config()).await;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(ATTACKER, port).await;
        assert_eq!(get_healthz(&mut s).await.0, Some(200));
        held.push(s);
    }
    let mut over = connect_from(ATTACKER, port).await;
    let (status, text) = get_healthz(&mut over).await;
    assert_eq!(status, Some(429), "{text}");
    assert_eq!(json_body(&text)["code"], "too_many_connections", "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
    assert!(
        closed_within(&mut over, Duration::from_secs(3)).await,
        "the refused connection is closed"
    );
    // Another address, and a trusted proxy with many connections, are served.
    let mut other = connect_from(PROVIDER, port).await;
    assert_eq!(get_healthz(&mut other).await.0, Some(200));
    let mut proxied = Vec::new();
    for _ in 0..6 {
        let mut s = connect_from("127.0.0.3", port).await;
        assert_eq!(get_healthz(&mut s).await.0, Some(200));
        proxied.push(s);
    }
    // One of the three closes: its slot is free again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut s = connect_from(ATTACKER, port).await;
        let (status, _) = get_healthz(&mut s).await;
        if status == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot stays taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (From the other address: this one's slots are still taken.)
    let metrics = reqwest::Client::builder()
        .local_address(PROVIDER.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        counter(
            &metrics,
            "switchboard_http_edge_refused_total",
            &[("reason", "connections")]
        ) >= 1.0,
        "{metrics}"
    );
}

/// Headers that never finish, a chunked webhook body and an admin body that stall: each
/// is ended after its deadline (the bodies with 408 `request_timeout` JSON) and its
/// connection closed.
#[tokio::test]
async fn slow_headers_and_stalled_bodies_on_any_route_time_out() {
    let app = spawn_with(edge_config()).await;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();

    // (actix measures the header deadline on a clock updated every 500 ms.)
    let t = Instant::now();
    let mut slow = connect_from(PROVIDER, port).await;
    slow.write_all(b"POST /webhooks/meta_test HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(4)).await,
        "unfinished headers keep the connection"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    for head in [
        "POST /webhooks/meta_test HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         x-hub-signature-256: sha256=00\r\ntransfer-encoding: chunked\r\n\r\nf\r\n{\"object\":\"what\r\n"
            .to_string(),
        format!(
            "POST /v1/tenants HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             authorization: Bearer {API_TOKEN}\r\ncontent-length: 100\r\n\r\n{{\"id\":"
        ),
    ] {
        let mut s = connect_from(PROVIDER, port).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let t = Instant::now();
        let (status, text) = read_response(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status, Some(408), "{head}: {text}");
        assert_eq!(json_body(&text)["code"], "request_timeout", "{text}");
        assert!(t.elapsed() >= Duration::from_millis(800), "{:?}", t.elapsed());
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "the timed-out connection is closed: {head} {text}"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "switchboard_http_edge_refused_total",
            &[("reason", "body_timeout")]
        ) >= 2.0,
        "{metrics}"
    );
}
