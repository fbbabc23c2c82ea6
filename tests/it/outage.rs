//! Redis stopped mid-run: the gateway answers 503 (nothing acknowledged), and once Redis is
//! back every event that got a 200 is on the events stream exactly once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use switchboard::config::BackendKind;

use crate::helpers::*;

#[tokio::test]
async fn redis_outage_gives_503_then_recovers_without_loss_or_duplicates() {
    let mut redis = PrivateRedis::start();
    let mut config = test_config(BackendKind::Redis);
    config.redis.url = redis.url();
    config.redis.command_timeout_ms = 500;
    let app = spawn_with(config).await;

    // Every message the "provider" has to deliver, and which ones got a 200.
    let bodies: Vec<(String, Vec<u8>)> = (0..60)
        .map(|_| {
            let id = unique_wamid();
            let body = wa_text(&id);
            (id, body)
        })
        .collect();
    let mut acked: HashSet<String> = HashSet::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();

    for (i, (id, body)) in bodies.iter().enumerate() {
        if i == 20 {
            redis.kill();
        }
        if i == 40 {
            redis.restart();
        }
        let res = app.post(body).await;
        let status = res.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        match status {
            200 => {
                acked.insert(id.clone());
            }
            503 => assert!(res.headers().contains_key("retry-after")),
            other => panic!("unexpected status {other} during the outage"),
        }
    }
    assert!(
        statuses.get(&503).copied().unwrap_or(0) >= 15,
        "the outage was seen: {statuses:?}"
    );
    assert!(acked.len() >= 20, "{statuses:?}");

    // The provider retries everything that was not acknowledged (and, being a provider,
    // some that were): all end with 200 once Redis is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (id, body) in &bodies {
        loop {
            let res = app.post(body).await;
            if res.status() == 200 {
                acked.insert(id.clone());
                break;
            }
            assert!(Instant::now() < deadline, "no recovery: {}", res.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let events = app.wait_for_events(bodies.len()).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *seen
            .entry(
                e["event"]["provider_message_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(seen.get(id), Some(&1), "{id} is present exactly once");
    }
    assert_eq!(events.len(), bodies.len(), "no extra events");
    app.stop().await;
}
