//! Hardening of the HTTP edge (issue: adversarial review): what a caller without a valid
//! key, or with a hostile request, can make the gateway do. Real HTTP on port 0.

use reqwest::Method;
use serde_json::Value;
use switchboard::config::BackendKind;

use crate::helpers::*;

fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let app = spawn_app(BackendKind::Memory).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = app
            .client
            .get(app.url("/v1/events"))
            .header("authorization", format!("{scheme} {API_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "scheme {scheme}");
    }
    let res = app
        .client
        .get(app.url("/v1/events"))
        .header("authorization", format!("Basic {API_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "another scheme is no bearer token");
    app.stop().await;
}

#[tokio::test]
async fn failed_tokens_lock_the_client_address_out() {
    let mut config = test_config(BackendKind::Memory);
    config.api.failed_auth_per_min = 3;
    let app = spawn_with(config).await;
    let get = |client: &reqwest::Client, token: &str| {
        client.get(app.url("/v1/events")).bearer_auth(token).send()
    };
    // A missing header is no guess: it never counts.
    for _ in 0..5 {
        let res = app.client.get(app.url("/v1/events")).send().await.unwrap();
        assert_eq!(res.status(), 401);
    }
    for i in 0..3 {
        let res = get(&app.client, &format!("guess-{i}")).await.unwrap();
        assert_eq!(res.status(), 401, "guess {i} is within the allowance");
    }
    let res = get(&app.client, "guess-3").await.unwrap();
    assert_eq!(res.status(), 429, "the allowance is used up");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Locked out: even the right token is not looked at from this address...
    let res = get(&app.client, API_TOKEN).await.unwrap();
    assert_eq!(res.status(), 429);
    // ...while another address is not affected.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let res = get(&other, API_TOKEN).await.unwrap();
    assert_eq!(res.status(), 200);
    let m = app.metrics().await;
    assert!(
        counter(
            &m,
            "switchboard_rate_limited_total",
            &[("scope", "failed_auth")]
        ) >= 2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn junk_methods_paths_and_sources_add_no_metric_series() {
    let owned = spawn_app(BackendKind::Memory).await;
    let app = &owned;
    let junk = |i: usize| async move {
        let method = Method::from_bytes(format!("M{i:05}X").as_bytes()).unwrap();
        let _ = app
            .client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
        let _ = app
            .client
            .get(app.url(&format!("/no/such/path/{i}")))
            .send()
            .await
            .unwrap();
        let _ = app
            .client
            .post(app.url(&format!("/webhooks/nosuchsource{i}")))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let _ = app
            .client
            .get(app.url(&format!("/v1/tenants/t{i}/no/such/thing")))
            .send()
            .await
            .unwrap();
    };
    // One round makes every series these requests can create exist.
    junk(0).await;
    let before = series(&app.metrics().await);
    for i in 1..=200 {
        junk(i).await;
    }
    let m = app.metrics().await;
    assert_eq!(series(&m), before, "junk requests created series");
    assert!(
        m.contains("method=\"_OTHER\""),
        "unknown methods share one label"
    );
    assert!(!m.contains("M00001X"));
    owned.stop().await;
}

#[tokio::test]
async fn bad_ids_and_cursors_are_the_callers_mistake() {
    let app = spawn_app(BackendKind::Redis).await;
    for (method, path) in [
        (Method::GET, "/v1/tenants/acme/contacts/x%00/export"),
        (Method::DELETE, "/v1/tenants/acme/contacts/x%00"),
        (Method::GET, "/v1/tenants/acme/sources/x%00"),
        (Method::DELETE, "/v1/api-keys/x%00"),
        (Method::GET, "/v1/events?after=99999999999999999999999-0"),
        (Method::GET, "/v1/events?after=1-99999999999999999999999"),
        (Method::GET, "/v1/events?after=p0/1-0"),
        (Method::GET, "/v1/deadletters?after=p1/1-0"),
        (Method::GET, "/v1/events?after=-1"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{method} {path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "bad_request", "{method} {path}");
    }
    for ok in ["/v1/events?after=0-0", "/v1/events?after=1700000000000"] {
        let res = app
            .client
            .get(app.url(ok))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{ok}");
    }
    app.stop().await;
}

#[tokio::test]
async fn partition_cursors_are_checked_against_the_partitions() {
    let mut config = test_config(BackendKind::Redis);
    config.streams.partitions = 2;
    let app = spawn_with(config).await;
    for (path, want) in [
        ("/v1/events?after=p1/1-0", 200),
        ("/v1/events?after=p2/1-0", 400),
        ("/v1/events?after=p0/x-0", 400),
    ] {
        let res = app
            .client
            .get(app.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn framework_refusals_are_json_too() {
    let app = spawn_app(BackendKind::Memory).await;
    // Over the framework's 256 KB payload limit of the admin API's body extractor.
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(300 * 1024));
    let res = app
        .client
        .post(app.url("/v1/tenants"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        res.headers()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    app.stop().await;
}
