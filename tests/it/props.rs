//! Property test over real HTTP: random and mutated bodies, signed or not, never make the
//! gateway panic or answer 5xx, and every error body is the JSON catalogue shape.

use proptest::prelude::*;
use switchboard::config::BackendKind;
use switchboard::verify::meta::sign_sha256;

use crate::helpers::*;

fn mutate(mut body: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    for (pos, byte) in edits {
        if !body.is_empty() {
            let i = pos % body.len();
            body[i] = *byte;
        }
    }
    body
}

#[test]
fn random_and_mutated_bodies_never_panic_or_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(async {
        let mut config = test_config(BackendKind::Memory);
        config.limits.ip_requests_per_sec = 100_000;
        config.limits.ip_burst = 100_000;
        config.limits.tenant_requests_per_sec = 100_000;
        config.limits.tenant_burst = 100_000;
        spawn_with(config).await
    });
    let seed = wa_text(&unique_wamid());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 192,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16)
                .prop_map(move |edits| mutate(seed.clone(), &edits)),
            "[ -~]{0,512}".prop_map(|s| s.into_bytes()),
        ],
        any::<bool>(),
    );
    runner
        .run(&strategy, |(body, signed)| {
            let (status, text) = rt.block_on(async {
                let mut req = app
                    .client
                    .post(app.url("/webhooks/meta_test"))
                    .header("content-type", "application/json")
                    .body(body.clone());
                if signed {
                    req = req.header("x-hub-signature-256", sign_sha256(SECRET, &body));
                }
                let res = req.send().await.expect("server answers");
                (res.status().as_u16(), res.text().await.unwrap())
            });
            prop_assert!(
                status < 500,
                "status {} for {:?}",
                status,
                String::from_utf8_lossy(&body)
            );
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON body");
            if signed {
                prop_assert_eq!(status, 200, "a verified body is always accepted: {}", text);
            } else {
                prop_assert_eq!(status, 401);
                prop_assert_eq!(&v["code"], "invalid_signature");
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(app.stop());
}
