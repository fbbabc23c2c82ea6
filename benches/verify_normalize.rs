//! Criterion benchmarks of the pure stages: Meta signature verification and normalization.
//! `cargo bench --bench verify_normalize`

use std::collections::HashMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use switchboard::crypto::Secret;
use switchboard::normalize::{meta, Context};
use switchboard::verify::meta::{sign_sha256, verify, MetaKeys, HEADER_SHA256};
use switchboard::verify::{Headers, Unverified};
use time::OffsetDateTime;

const SECRET: &str = "bench-app-secret";
const PHONE_ID: &str = "106540352242922";

/// A WhatsApp webhook with `n` text messages whose bodies pad it to about `pad` bytes each.
fn wa_messages(n: usize, pad: usize) -> Vec<u8> {
    let text = "x".repeat(pad);
    let messages: Vec<_> = (0..n)
        .map(|i| json!({"from": "16505551234", "id": format!("wamid.BENCH{i:08}"), "timestamp": "1749416383",
                        "type": "text", "text": {"body": text}}))
        .collect();
    serde_json::to_vec(
        &json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
        "messages": messages}}]}]}),
    )
    .unwrap()
}

fn wa_statuses(n: usize) -> Vec<u8> {
    let statuses: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("wamid.OUT{i:08}"), "status": "delivered", "timestamp": "1749416390",
                        "recipient_id": "16505551234",
                        "pricing": {"billable": true, "pricing_model": "PMP", "type": "regular", "category": "marketing"}}))
        .collect();
    serde_json::to_vec(
        &json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
        "statuses": statuses}}]}]}),
    )
    .unwrap()
}

fn request(body: &[u8], secret: &str) -> Unverified {
    let mut h = Headers::new();
    h.insert(HEADER_SHA256, &sign_sha256(secret, body));
    Unverified::new(h, Bytes::copy_from_slice(body))
}

fn keys(n: usize) -> MetaKeys {
    // The matching secret is last: rotation costs one HMAC per configured secret.
    let mut secrets: Vec<Secret> = (1..n)
        .map(|i| Secret::new(format!("old-secret-{i}")))
        .collect();
    secrets.push(Secret::new(SECRET));
    MetaKeys {
        app_secrets: secrets,
        allow_sha1: false,
    }
}

fn bench_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_meta");
    for (name, body) in [
        ("2KB", wa_messages(1, 1700)),
        ("1MB", wa_messages(1, 1024 * 1024)),
    ] {
        for n_secrets in [1, 3] {
            let k = keys(n_secrets);
            g.throughput(Throughput::Bytes(body.len() as u64));
            g.bench_function(format!("{name}/{n_secrets}_secrets"), |b| {
                b.iter_batched(
                    || request(&body, SECRET),
                    |req| black_box(verify(req, &k).is_ok()),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let channels: HashMap<String, String> = [(PHONE_ID.to_string(), "acme".to_string())].into();
    let ctx = Context {
        source: "bench",
        received_at: OffsetDateTime::now_utc(),
        include_raw: true,
        channels: &channels,
        default_tenant: None,
    };
    let k = keys(1);
    let mut g = c.benchmark_group("normalize_meta");
    for (name, body, n) in [
        ("1_message_2KB", wa_messages(1, 1700), 1u64),
        ("100_messages", wa_messages(100, 200), 100),
        ("100_statuses", wa_statuses(100), 100),
    ] {
        let verified = verify(request(&body, SECRET), &k).expect("signed body verifies");
        g.throughput(Throughput::Elements(n));
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = meta::normalize(black_box(&verified), &ctx);
                assert_eq!(out.events.len() as u64, n);
                out
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_verify, bench_normalize);
criterion_main!(benches);
