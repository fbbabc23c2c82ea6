//! Tenant isolation of delivery identities (docs/architecture.md, invariant 3): what one
//! source receives can never mark what another source receives as a duplicate. The non-Meta
//! providers are covered in `providers::source_scoped_identity`.

use serde_json::Value;
use switchboard::config::{BackendKind, Config};
use switchboard::event::{dedup_key, legacy_event_id, Provider};

use crate::helpers::*;

/// `meta_test` (phone 111 → acme) plus a source of another tenant, `meta_globex`, whose
/// admin controls its secret and so can post any wamid to it.
fn two_tenants(backend: BackendKind) -> Config {
    let toml = format!(
        "{BASE_CONFIG}\n[sources.meta_globex]\nprovider = \"meta\"\napp_secrets = [\"globex-secret\"]\n\
         verify_token = \"globex-verify\"\nchannels = {{ \"222\" = \"globex\" }}\n"
    );
    let mut c = Config::from_toml(&toml).unwrap();
    c.backend = backend;
    c.redis.url = redis_url();
    c.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    c
}

async fn receipt(res: reqwest::Response) -> (u64, u64) {
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    (
        v["accepted"].as_u64().unwrap(),
        v["duplicates"].as_u64().unwrap(),
    )
}

/// The attack of issue 12 item 3: globex posts acme's coming wamid through its own source
/// first; acme's genuine delivery must still be accepted (not dropped with a 200).
#[tokio::test]
async fn a_wamid_posted_to_another_tenants_source_does_not_swallow_the_genuine_delivery() {
    for backend in [BackendKind::Memory, BackendKind::Redis] {
        let app = spawn_with(two_tenants(backend)).await;
        let wamid = unique_wamid();
        let planted = wa_text_batch("222", std::slice::from_ref(&wamid));
        let genuine = wa_text_batch(PHONE_ID, std::slice::from_ref(&wamid));
        let post_globex = || app.post_signed("meta_globex", &planted, Some("globex-secret"));
        assert_eq!(receipt(post_globex().await).await, (1, 0), "{backend:?}");
        assert_eq!(
            receipt(app.post(&genuine).await).await,
            (1, 0),
            "{backend:?}: acme's genuine delivery is accepted"
        );
        // Redeliveries to the same source are still duplicates.
        assert_eq!(
            receipt(app.post(&genuine).await).await,
            (0, 1),
            "{backend:?}"
        );
        assert_eq!(receipt(post_globex().await).await, (0, 1), "{backend:?}");
        let events = app.wait_for_events(2).await;
        assert_eq!(events.len(), 2, "{backend:?}: each delivery once");
        let mut tenants: Vec<&str> = events
            .iter()
            .map(|e| e["event"]["tenant"].as_str().unwrap())
            .collect();
        tenants.sort();
        assert_eq!(tenants, ["acme", "globex"]);
        assert_ne!(
            events[0]["event"]["event_id"], events[1]["event"]["event_id"],
            "{backend:?}: one provider id, two delivery identities"
        );
        app.stop().await;
    }
}

/// Upgrade: a webhook the previous version accepted (its dedup key `dedup:v1:<unscoped
/// event id>` still within its TTL) is a duplicate when the provider retries it against
/// this version, instead of being delivered a second time under its new id.
#[tokio::test]
async fn a_retry_of_a_webhook_accepted_before_the_upgrade_is_a_duplicate() {
    let app = spawn_app(BackendKind::Redis).await;
    let mut conn = app.redis().await;
    let wamid = unique_wamid();
    let old_id = legacy_event_id(&dedup_key(Provider::Meta, "wamid", &wamid, None));
    let _: () = redis::cmd("SET")
        .arg(app.key(&format!("dedup:v1:{old_id}")))
        .arg("1700000000000-0")
        .arg("EX")
        .arg(3600)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receipt(app.post(&wa_text(&wamid)).await).await, (0, 1));
    // A message the previous version never saw is accepted.
    assert_eq!(
        receipt(app.post(&wa_text(&unique_wamid())).await).await,
        (1, 0)
    );
    app.stop().await;
}
