//! The documentation stands on its own and stays navigable:
//! - every relative link of every tracked Markdown file leads to a file (or directory) that
//!   exists, and a `#fragment` to a heading of the target;
//! - no tracked file points outside the repository (to the team's notes beside it);
//! - README.md is the front door: at most 250 lines, and every page under docs/ is reachable
//!   from it by following links.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use regex::Regex;

const README_MAX_LINES: usize = 250;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Tracked files, relative to the repository root (`git ls-files`).
fn tracked() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

fn markdown_files() -> Vec<PathBuf> {
    tracked()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect()
}

/// The text with fenced code blocks and inline code spans blanked out (links there are
/// examples, not links). Line structure is kept.
fn prose(text: &str) -> String {
    let inline = Regex::new(r"`[^`\n]*`").unwrap();
    let mut out = String::with_capacity(text.len());
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            out.push_str(&inline.replace_all(line, "``"));
        }
        out.push('\n');
    }
    out
}

/// Link targets of a Markdown text: inline links and reference definitions.
fn links(text: &str) -> Vec<String> {
    let inline = Regex::new(r#"\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)"#).unwrap();
    let reference = Regex::new(r"(?m)^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)").unwrap();
    let p = prose(text);
    inline
        .captures_iter(&p)
        .chain(reference.captures_iter(&p))
        .map(|c| c[1].to_string())
        .collect()
}

/// GitHub's anchor for a heading text: inline markup dropped, lower case, letters, digits,
/// `-` and `_` kept, spaces as `-`, everything else removed.
fn slug(heading: &str) -> String {
    let link = Regex::new(r"\[([^\]]*)\]\([^)]*\)").unwrap();
    let text = link.replace_all(heading, "$1");
    let mut s = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '-' || c == '_' {
            s.extend(c.to_lowercase());
        } else if c == ' ' {
            s.push('-');
        }
    }
    s
}

/// The anchors a Markdown file offers: one per heading, repeats numbered as GitHub does.
fn anchors(text: &str) -> BTreeSet<String> {
    let heading = Regex::new(r"^#{1,6}\s+(.*?)\s*#*\s*$").unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(c) = heading.captures(line) {
            let base = slug(&c[1]);
            let n = seen.entry(base.clone()).or_insert(0);
            out.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
    }
    out
}

/// `base/../x` → `x`, without touching the file system; None when it leaves the repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            _ => return None,
        }
    }
    Some(out)
}

fn is_external(target: &str) -> bool {
    let scheme = Regex::new(r"^[A-Za-z][A-Za-z0-9+.-]*:").unwrap();
    scheme.is_match(target) || target.starts_with("//")
}

/// Where a relative link of `from` leads: (file relative to the root, fragment).
fn resolve(from: &Path, target: &str) -> Result<(PathBuf, Option<String>), String> {
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f.to_string())),
        None => (target, None),
    };
    if path.is_empty() {
        return Ok((from.to_path_buf(), fragment));
    }
    let path = path.split('?').next().unwrap_or(path);
    let joined = from.parent().unwrap_or(Path::new("")).join(path);
    normalize(&joined)
        .map(|p| (p, fragment))
        .ok_or_else(|| format!("{target} leaves the repository"))
}

/// Every problem with the relative links of the given Markdown files.
fn dead_links(files: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for target in links(&text) {
            if is_external(&target) {
                continue;
            }
            let (path, fragment) = match resolve(file, &target) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    continue;
                }
            };
            let full = root().join(&path);
            if !full.exists() {
                problems.push(format!(
                    "{}: link {target} → {} does not exist",
                    file.display(),
                    path.display()
                ));
                continue;
            }
            let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
                continue;
            };
            if full.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let offered = anchor_cache
                .entry(path.clone())
                .or_insert_with(|| anchors(&std::fs::read_to_string(&full).unwrap_or_default()));
            if !offered.contains(&fragment.to_lowercase()) {
                problems.push(format!(
                    "{}: link {target}: {} has no heading #{fragment}",
                    file.display(),
                    path.display()
                ));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_of_every_markdown_file_resolves() {
    let files = markdown_files();
    assert!(files.iter().any(|f| f == Path::new("README.md")));
    let problems = dead_links(&files);
    assert!(problems.is_empty(), "dead links:\n{}", problems.join("\n"));
}

#[test]
fn the_link_checker_finds_dead_links_and_anchors() {
    // The checker itself, on a page written here: a missing file, a missing heading, a link
    // out of the repository, and links that are fine (including in code, which is skipped).
    let dir = root().join("target").join("docs-link-check");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/ok.md"),
        "# A page\n\n## Second `part`: done\n\n## Second part done\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("page.md"),
        "[fine](sub/ok.md) [anchor](sub/ok.md#second-part-done) [again](sub/ok.md#second-part-done-1)\n\
         [self](#title) `[code](nowhere.md)`\n\n# Title\n\n\
         [dead](sub/missing.md) [bad anchor](sub/ok.md#third) [out](../../../../outside.md)\n\
         ```\n[in a block](also-nowhere.md)\n```\n\
         [ref]: sub/gone.md\n",
    )
    .unwrap();
    let page = PathBuf::from("target/docs-link-check/page.md");
    let problems = dead_links(std::slice::from_ref(&page));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("sub/missing.md"), "{problems:#?}");
    assert!(problems[1].contains("#third"), "{problems:#?}");
    assert!(
        problems[2].contains("leaves the repository"),
        "{problems:#?}"
    );
    assert!(problems[3].contains("sub/gone.md"), "{problems:#?}");
}

/// Occurrences of a path to the notes that live beside the repository, not in it.
fn outside_references(text: &str) -> Vec<String> {
    // Spelled in pieces so that this file does not match itself.
    let dir = ["sha", "red"].concat();
    let pattern = format!(
        r"(?:^|[^A-Za-z0-9_.-])(?:\.\./)+{dir}\b|(?:^|[^A-Za-z0-9_./-]){dir}/|/work/{dir}\b"
    );
    let re = Regex::new(&pattern).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| re.is_match(l))
        .map(|(i, l)| format!("{}: {}", i + 1, l.trim()))
        .collect()
}

#[test]
fn no_tracked_file_refers_outside_the_repository() {
    let mut problems = Vec::new();
    for file in tracked() {
        let Ok(bytes) = std::fs::read(root().join(&file)) else {
            continue; // deleted in the work tree
        };
        let text = String::from_utf8_lossy(&bytes);
        for hit in outside_references(&text) {
            problems.push(format!("{}:{hit}", file.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "references to files outside the repository (write what readers need into docs/):\n{}",
        problems.join("\n")
    );
    // And the check can fail.
    let dir = ["sha", "red"].concat();
    for bad in [
        format!("see ../{dir}/DESIGN.md"),
        format!("`{dir}/protocols/meta.md`"),
        format!("/work/{dir}/x"),
    ] {
        assert_eq!(outside_references(&bad).len(), 1, "{bad}");
    }
    assert!(outside_references(&format!("src/{dir}_state.rs and a {dir} key")).is_empty());
}

#[test]
fn readme_is_short_and_reaches_every_docs_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES}: move reference material into docs/"
    );

    // Every Markdown page reachable from README.md through relative links.
    let mut reached = BTreeSet::new();
    let mut queue = VecDeque::from([PathBuf::from("README.md")]);
    while let Some(page) = queue.pop_front() {
        if !reached.insert(page.clone()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root().join(&page)) else {
            continue;
        };
        for target in links(&text) {
            if is_external(&target) {
                continue;
            }
            if let Ok((path, _)) = resolve(&page, &target) {
                if path.extension().is_some_and(|e| e == "md") && !reached.contains(&path) {
                    queue.push_back(path);
                }
            }
        }
    }
    let unreached: Vec<String> = markdown_files()
        .into_iter()
        .filter(|p| p.starts_with("docs"))
        .filter(|p| !reached.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        unreached.is_empty(),
        "docs pages no link chain from README.md reaches:\n{}",
        unreached.join("\n")
    );
}
