//! Fixture-driven tests shared by every provider's normalizer (test builds only).
//!
//! For each body file in `fixtures/<provider>/` (any name not ending in `.expected.json`, nor
//! `README.md`/`*.headers.json`), the normalizer's output must equal `<stem>.expected.json`:
//! `{"events": [...], "dead_letters": [{"reason", "detail", "part"}]}`. A body file ending in
//! `.url` is a GET delivery: it holds the URL, with the parameters in the query string. A body without an
//! expected file fails. `SWITCHBOARD_BLESS=1` writes the expected files instead; each written
//! file must then be read and checked by hand — it becomes the test's truth.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Context, Normalized};
use crate::verify::Verified;

/// The directory of a provider's fixtures.
pub fn dir(provider: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(provider)
}

/// Body files of a provider, sorted.
pub fn bodies(provider: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir(provider))
        .unwrap_or_else(|e| panic!("fixtures/{provider}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file()
                && !name.ends_with(".expected.json")
                && !name.ends_with(".headers.json")
                && !name.ends_with(".md")
                && !name.starts_with('.')
        })
        .collect();
    out.sort();
    out
}

/// The comparable form of a normalizer's output.
pub fn to_value(n: &Normalized) -> Value {
    json!({
        "events": n.events.iter().map(|e| serde_json::to_value(e).unwrap()).collect::<Vec<_>>(),
        "dead_letters": n.dead_letters.iter().map(|d| json!({
            "reason": d.reason.as_str(),
            "detail": d.detail,
            "part": d.part,
        })).collect::<Vec<_>>(),
    })
}

fn expected_path(body: &Path) -> PathBuf {
    let name = body.file_name().unwrap().to_str().unwrap();
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    body.with_file_name(format!("{stem}.expected.json"))
}

/// Normalizes every fixture of `provider` and compares with its expected file.
pub fn check_all(
    provider: &str,
    ctx: &Context<'_>,
    normalize: impl Fn(&Verified, &Context<'_>) -> Normalized,
) {
    let bless = std::env::var("SWITCHBOARD_BLESS").is_ok_and(|v| v == "1");
    let bodies = bodies(provider);
    assert!(!bodies.is_empty(), "no fixtures in fixtures/{provider}");
    let mut failures = Vec::new();
    for body_path in &bodies {
        let body = std::fs::read(body_path).unwrap();
        let verified = if body_path.extension().is_some_and(|e| e == "url") {
            // A GET delivery: the file holds the URL, parameters in its query string.
            Verified::assume_verified_get(String::from_utf8_lossy(&body).trim())
        } else {
            Verified::assume_verified(body)
        };
        let got = to_value(&normalize(&verified, ctx));
        let exp_path = expected_path(body_path);
        if bless {
            let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
            std::fs::write(&exp_path, text).unwrap();
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&exp_path) else {
            failures.push(format!(
                "{}: no expected file {}",
                body_path.display(),
                exp_path.display()
            ));
            continue;
        };
        let want: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", exp_path.display()));
        if got != want {
            failures.push(format!(
                "{}: output differs from {}\n--- got ---\n{}\n--- want ---\n{}",
                body_path.display(),
                exp_path.display(),
                serde_json::to_string_pretty(&got).unwrap(),
                serde_json::to_string_pretty(&want).unwrap()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
