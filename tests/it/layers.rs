//! The crate reads bottom-up: every top-level module of `src/` may use only modules of a
//! lower layer (docs/architecture.md, "Module layers"). This test reads every `crate::…`
//! path in the code (comments left out) and fails on an arrow that points up or sideways,
//! and on a top-level module that has no layer yet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom (0) to top. Modules on one layer may not use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "event", "crypto"],
    &["config", "internal_events"],
    &["telemetry", "limits", "accept", "https"],
    &["verify"],
    &["normalize"],
    &["route"],
    // persist sits above route: erasure reaches routing state through the engine.
    &["persist", "source"],
    &["admin"],
    // delivery reads the events stream (accept), records attempts and audit rows (persist)
    // and merges the API's destinations (admin); state holds it and api uses it.
    &["delivery"],
    &["state"],
    &["http"],
    &["ingest", "api"],
    &["ops"],
    &["startup"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without `//` comments (doc comments name modules freely).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string literal (a URL) is rare in paths we care about; cutting
            // there can only hide a reference after it on the same line, never invent one.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules named by `crate::x` or `crate::{x, y::…}` in the code.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each item of the group, at nesting depth 0.
            let mut depth = 0;
            let mut item_start = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        item_start = true;
                        continue;
                    }
                    _ => {}
                }
                if item_start && depth == 0 {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                        continue;
                    }
                    if !name.is_empty() {
                        found.insert(std::mem::take(&mut name));
                        item_start = false;
                    }
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

#[test]
fn dependencies_between_top_level_modules_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = top_module(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        for dep in referenced_modules(&code_of(&text)) {
            if dep != module {
                uses.entry(module.clone()).or_default().insert(dep);
            }
        }
        uses.entry(module).or_default();
    }

    let mut problems = Vec::new();
    for (module, deps) in &uses {
        let Some(mine) = layer_of(module) else {
            problems.push(format!(
                "src/{module}: not in LAYERS (tests/it/layers.rs); give it a layer"
            ));
            continue;
        };
        for dep in deps {
            match layer_of(dep) {
                Some(theirs) if theirs < mine => {}
                Some(theirs) => problems.push(format!(
                    "{module} (layer {mine}) uses {dep} (layer {theirs}): arrows must point down"
                )),
                None => problems.push(format!("{module} uses {dep}, which has no layer")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read src/lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(declared.len() > 10, "src/lib.rs declares its modules");
    for m in declared {
        assert!(layer_of(m).is_some(), "module {m} has no layer in LAYERS");
    }
}

#[test]
fn the_reader_finds_references_in_every_form() {
    let code = "use crate::config::Config;\nuse crate::{event::Event, accept::{Backend, Item}};\nlet x = crate::route::Engine::new();";
    let found = referenced_modules(code);
    let expected: BTreeSet<String> = ["config", "event", "accept", "route"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected);
    assert!(referenced_modules(&code_of("// see crate::state")).is_empty());
}
