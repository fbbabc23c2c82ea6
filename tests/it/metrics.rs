//! Metrics move as the webhook path runs. Counters are process-wide and tests run in
//! parallel, so each check is on the increase this test caused (at least what it did).

use switchboard::config::BackendKind;

use crate::helpers::*;

#[tokio::test]
async fn metrics_move_for_accepts_duplicates_failures_and_dead_letters() {
    let app = spawn_app(BackendKind::Redis).await;
    let before = app.metrics().await;
    let body = wa_text(&unique_wamid());
    assert_eq!(app.post(&body).await.status(), 200);
    assert_eq!(app.post(&body).await.status(), 200);
    assert_eq!(
        app.post_signed("meta_test", &body, Some("wrong"))
            .await
            .status(),
        401
    );
    assert_eq!(
        app.post_signed("meta_test", &body, None).await.status(),
        401
    );
    assert_eq!(app.post(b"not json").await.status(), 200);
    app.wait_for_events(1).await;
    let after = app.metrics().await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        counter(&after, name, labels) - counter(&before, name, labels)
    };
    let events = "switchboard_events_total";
    assert!(
        delta(
            events,
            &[
                ("provider", "meta"),
                ("kind", "message"),
                ("outcome", "accepted")
            ]
        ) >= 1.0
    );
    assert!(
        delta(
            events,
            &[
                ("provider", "meta"),
                ("kind", "message"),
                ("outcome", "duplicate")
            ]
        ) >= 1.0
    );
    assert!(
        delta(
            events,
            &[("kind", "deadletter"), ("outcome", "dead_lettered")]
        ) >= 1.0
    );
    assert!(
        delta(
            "switchboard_deadletters_total",
            &[("reason", "invalid_body")]
        ) >= 1.0
    );
    let sig = "switchboard_signature_failures_total";
    assert!(delta(sig, &[("provider", "meta"), ("reason", "mismatch")]) >= 1.0);
    assert!(delta(sig, &[("provider", "meta"), ("reason", "missing")]) >= 1.0);
    let req = "switchboard_webhook_requests_total";
    assert!(delta(req, &[("provider", "meta"), ("status", "200")]) >= 3.0);
    assert!(delta(req, &[("provider", "meta"), ("status", "401")]) >= 2.0);
    assert!(delta("switchboard_routed_events_total", &[]) >= 1.0);
    assert!(after
        .contains("switchboard_accept_duration_seconds_bucket{backend=\"redis\",le=\"0.001\"}"));
    assert!(after.contains("# TYPE switchboard_http_request_duration_seconds histogram"));
    // Bounded labels only: no tenant, source or message ids.
    for forbidden in ["meta_test", "acme", "wamid."] {
        assert!(
            !after.contains(forbidden),
            "metrics must not carry {forbidden}"
        );
    }
    app.stop().await;
}
