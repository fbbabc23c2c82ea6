//! The operating kit checked against the code it describes: the Prometheus rules and their
//! unit tests (promtool), the Grafana dashboard's queries, the metric names both use, the
//! docker-compose.yml against the Dockerfile and the configuration, and the consumer examples
//! run against real Redis.
//!
//! promtool and Python's redis module are outside tools: without them a check prints a notice
//! and returns, except under `CI=true`, where .ci/run installs them and their absence fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use switchboard::event::{Assignment, Channel, Direction, Event, EventKind, Party, Provider};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether an outside tool answers `probe`. When it does not: a failure under CI=true, else a
/// notice saying what did not run.
pub fn available(what: &str, probe: &mut Command, install: &str) -> bool {
    let ok = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !ci(),
            "{what} is required when CI=true ({install}; .ci/run installs it)"
        );
        // Straight to the stderr handle: the test harness captures eprintln! of passing
        // tests, and a check that did not run must not go unnoticed.
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: {what} is not available, so this check did not run ({install}). \
             Under CI=true this is a failure."
        );
    }
    ok
}

fn promtool_available() -> bool {
    available(
        "promtool",
        Command::new("promtool").arg("--version"),
        "apt-get install prometheus",
    )
}

/// Whether `python` imports redis; its redis-py version when it does.
fn redis_py_version(python: &str) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import redis; print(redis.__version__)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The Python interpreters the consumer example runs with, each importing redis:
/// `SWITCHBOARD_TEST_PYTHON`, the venv .ci/run makes with the redis-py release that
/// `pip install redis` gives today (pinned there), and `SWITCHBOARD_TEST_PYTHON_DISTRO`, the
/// distribution's python3 with its own python3-redis. A variable that is set must name an
/// interpreter that imports redis. Under CI=true `SWITCHBOARD_TEST_PYTHON` is required: the
/// example must run against the client users install, never be skipped. Without either
/// variable (a developer's machine), `python3` if it imports redis, else a notice.
fn pythons() -> Vec<String> {
    let mut out = Vec::new();
    for var in ["SWITCHBOARD_TEST_PYTHON", "SWITCHBOARD_TEST_PYTHON_DISTRO"] {
        match std::env::var(var) {
            Ok(python) if !python.is_empty() => {
                let version = redis_py_version(&python)
                    .unwrap_or_else(|| panic!("{var}={python} does not import redis"));
                let _ = writeln!(
                    std::io::stderr(),
                    "consumer example: {var}={python}, redis-py {version}"
                );
                out.push(python);
            }
            _ => assert!(
                !(ci() && var == "SWITCHBOARD_TEST_PYTHON"),
                "{var} is required when CI=true: .ci/run sets it to a venv with a pinned \
                 current redis-py release"
            ),
        }
    }
    if out.is_empty()
        && available(
            "python3 with the redis module",
            Command::new("python3").args(["-c", "import redis"]),
            "pip install redis, or set SWITCHBOARD_TEST_PYTHON to an interpreter that has it",
        )
    {
        out.push("python3".to_string());
    }
    out
}

/// Runs a command in the repository root and fails with everything it printed.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// --- Prometheus and Grafana ------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/switchboard.json"))
        .expect("deploy/grafana/switchboard.json is JSON")
}

/// Every PromQL query of the dashboard: panel targets and query variables.
fn dashboard_queries(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(
                t["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_string(),
            );
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

#[test]
fn promtool_checks_rules_rule_tests_config_and_dashboard_queries() {
    if !promtool_available() {
        return;
    }
    let out =
        run_ok(Command::new("promtool").args(["check", "rules", "deploy/prometheus/alerts.yml"]));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(Command::new("promtool").args([
        "test",
        "rules",
        "deploy/prometheus/alerts_test.yml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(Command::new("promtool").args([
        "check",
        "config",
        "deploy/prometheus/prometheus.yml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");

    // promtool has no query linter, but it parses every rule's expression: the dashboard's
    // queries, with Grafana's variables replaced, become recording rules of a scratch file.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries(&dashboard()).iter().enumerate() {
        let mut q = q
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        // label_values(<selector>, <label>) is Grafana's; its selector is PromQL.
        if let Some(inner) = q.strip_prefix("label_values(") {
            q = inner[..inner.rfind(',').expect("label_values has a label")].to_string();
        }
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    let dir = temp_dir("dashboard");
    let file = dir.join("queries.yml");
    std::fs::write(&file, rules).unwrap();
    run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&file),
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The metric names `src/internal_events.rs` defines.
fn defined_metrics() -> BTreeSet<String> {
    let re = Regex::new(r#"pub const [A-Z_]+: &str = "(switchboard_[a-z0-9_]+)";"#).unwrap();
    let names: BTreeSet<String> = re
        .captures_iter(&read("src/internal_events.rs"))
        .map(|c| c[1].to_string())
        .collect();
    assert!(names.len() > 10, "metric constants not found: {names:?}");
    names
}

/// `switchboard_*` tokens of a text, with the series suffixes of histograms removed.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\bswitchboard_[a-z0-9_]*[a-z0-9]").unwrap();
    re.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_gateway_defines() {
    let defined = defined_metrics();
    let d = dashboard();
    let queries = dashboard_queries(&d).join("\n");
    for (file, text) in [
        (
            "deploy/grafana/switchboard.json",
            read("deploy/grafana/switchboard.json"),
        ),
        (
            "deploy/prometheus/alerts.yml",
            read("deploy/prometheus/alerts.yml"),
        ),
        (
            "deploy/prometheus/alerts_test.yml",
            read("deploy/prometheus/alerts_test.yml"),
        ),
    ] {
        let used = referenced_metrics(&text);
        assert!(used.len() >= 5, "{file}: no metrics found");
        let unknown: Vec<_> = used.difference(&defined).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics that src/internal_events.rs does not define: {unknown:?}"
        );
    }

    // What an operator needs to see, whatever else the dashboard shows.
    let on_dashboard = referenced_metrics(&queries);
    for m in [
        "switchboard_webhook_requests_total",
        "switchboard_signature_failures_total",
        "switchboard_events_total",
        "switchboard_deadletters_total",
        "switchboard_accept_duration_seconds",
        "switchboard_stream_length",
        "switchboard_stream_pending",
        "switchboard_routing_assignments_total",
        "switchboard_routing_decision_duration_seconds",
        "switchboard_routing_queue_depth",
        "switchboard_routing_queue_oldest_wait_seconds",
        "switchboard_routing_agents",
        "switchboard_routing_agent_utilization_ratio",
        "switchboard_http_requests_total",
        "switchboard_backend_errors_total",
    ] {
        assert!(on_dashboard.contains(m), "no dashboard panel queries {m}");
    }
    let missing: Vec<_> = defined.difference(&on_dashboard).collect();
    if !missing.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: metrics without a dashboard panel yet: {missing:?}"
        );
    }
    // Histograms are read through their buckets: a quantile of the bare name is empty.
    for q in dashboard_queries(&d) {
        if q.contains("histogram_quantile") {
            assert!(q.contains("_bucket"), "quantile without buckets: {q}");
        }
    }

    // The data source is a variable, so the file works provisioned and imported alike.
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no DS_PROMETHEUS data source variable"
    );
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id in {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
    let provisioning = read("deploy/grafana/provisioning/dashboards/switchboard.yml");
    assert!(provisioning.contains("path: /var/lib/grafana/dashboards/switchboard"));
    let ds = read("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert!(ds.contains("type: prometheus") && ds.contains("url: http://prometheus:9090"));
}

/// `- alert: Name` blocks of alerts.yml, by name.
fn alert_blocks(rules: &str) -> BTreeMap<String, String> {
    let re = Regex::new(r"(?m)^\s*- alert: (\w+)\s*$").unwrap();
    let starts: Vec<_> = re.captures_iter(rules).collect();
    let mut out = BTreeMap::new();
    for (i, c) in starts.iter().enumerate() {
        let from = c.get(0).unwrap().start();
        let to = starts
            .get(i + 1)
            .map(|n| n.get(0).unwrap().start())
            .unwrap_or(rules.len());
        let block = &rules[from..to];
        // A group header ends the last rule of the group before it.
        let block = block.split("\n  - name:").next().unwrap();
        assert!(
            out.insert(c[1].to_string(), block.to_string()).is_none(),
            "alert {} is defined twice",
            &c[1]
        );
    }
    out
}

#[test]
fn every_alert_tells_an_operator_what_to_check_and_is_tested_both_ways() {
    let rules = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts_test.yml");
    let alerts = alert_blocks(&rules);
    for name in [
        "SwitchboardSignatureFailureSpike",
        "SwitchboardDeadLettersGrowing",
        "SwitchboardInboundBacklogHigh",
        "SwitchboardRouterPendingHigh",
        "SwitchboardHttp5xxHigh",
        "SwitchboardBackendErrors",
        "SwitchboardRoutingQueueWaitOverTarget",
        "SwitchboardBackpressure",
    ] {
        assert!(alerts.contains_key(name), "alerts.yml has no {name}");
    }
    assert!(
        rules.contains("- name: switchboard-persister"),
        "the persister placeholder group is gone"
    );

    // Where each alert is evaluated in the tests: firing (exp_alerts with items) or quiet.
    let lines: Vec<&str> = tests.lines().collect();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let name_re = Regex::new(r"alertname: (\w+)").unwrap();
    for (i, line) in lines.iter().enumerate() {
        let Some(c) = name_re.captures(line) else {
            continue;
        };
        let name = c[1].to_string();
        let rest = format!("{line}\n{}", lines.get(i + 1).unwrap_or(&""));
        if rest.contains("exp_alerts: []") {
            quiet.insert(name);
        } else if rest.contains("exp_alerts:") {
            firing.insert(name);
        }
    }

    let docs = read("docs/metrics.md");
    let severity = Regex::new(r"severity: (critical|warning)\b").unwrap();
    for (name, block) in &alerts {
        assert!(
            docs.contains(&format!("| `{name}` |")),
            "docs/metrics.md does not list alert {name}"
        );
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no {key}\n{block}");
        }
        assert!(
            severity.is_match(block),
            "alert {name}: severity is critical or warning"
        );
        assert!(
            firing.contains(name),
            "alerts_test.yml never makes {name} fire"
        );
        assert!(
            quiet.contains(name),
            "alerts_test.yml never checks {name} stays quiet"
        );
    }
    let unknown: Vec<_> = firing
        .union(&quiet)
        .filter(|n| !alerts.contains_key(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts_test.yml tests unknown alerts {unknown:?}"
    );
}

// --- docker-compose.yml ------------------------------------------------------------------------

/// The lines of one top-level service of a compose file (two-space indented names).
fn compose_service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = compose.lines().skip_while(|l| l.trim_end() != header);
    assert!(
        lines.next().is_some(),
        "docker-compose.yml has no service {name}"
    );
    lines
        .take_while(|l| l.is_empty() || l.starts_with("   ") || l.trim_start().starts_with('#'))
        .collect()
}

/// `environment:` of a service as written in a map (`KEY: value`), comments skipped.
fn compose_env(service: &[&str]) -> Vec<(String, String)> {
    let mut lines = service
        .iter()
        .skip_while(|l| l.trim() != "environment:")
        .skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if !l.starts_with("      ") {
            break;
        }
        let (k, v) = t.split_once(':').expect("KEY: value");
        out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
    }
    out
}

#[test]
fn compose_runs_the_dockerfile_image_with_keys_the_config_accepts() {
    let compose = read("docker-compose.yml");
    let dockerfile = read("Dockerfile");
    let config = read("config.toml");

    let sb = compose_service(&compose, "switchboard");
    let sb_text = sb.join("\n");
    assert!(sb_text.contains("dockerfile: Dockerfile"), "{sb_text}");
    assert!(repo("Dockerfile").exists());
    // The image's entry point and health check are used as they are.
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/switchboard"]"#));
    assert!(
        !sb_text.contains("entrypoint:"),
        "compose overrides the image's entry point"
    );
    assert!(
        !sb_text.contains("healthcheck:") || sb_text.contains("/healthz"),
        "a compose health check must probe /healthz like the image's"
    );
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(dockerfile.contains("http://127.0.0.1:8080/healthz"));
    assert!(
        sb_text.contains(r#""8080:8080""#),
        "port 8080 is not published"
    );

    let env = compose_env(&sb);
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("switchboard's environment has no {k}"))
    };
    assert_eq!(get("SWITCHBOARD__BACKEND"), "redis");
    assert_eq!(get("SWITCHBOARD__REDIS__URL"), "redis://redis:6379");
    assert_eq!(get("SWITCHBOARD__SERVER__BIND"), "0.0.0.0:8080");
    compose_service(&compose, "redis");
    let redis_text = compose_service(&compose, "redis").join("\n");
    assert!(redis_text.contains("--appendonly"), "Redis without AOF");

    // The image carries the production template, not the demo config.toml.
    assert!(
        dockerfile.contains("COPY deploy/config.production.toml /etc/switchboard/config.toml"),
        "the image must carry the production template"
    );
    let template = read("deploy/config.production.toml");
    for published in switchboard::config::published::PUBLISHED {
        assert!(
            !template.contains(published) && !dockerfile.contains(published),
            "the image carries a published credential: {published}"
        );
    }
    // The environment, applied to the template the image carries, is a valid
    // configuration: names are real keys (unknown keys are rejected) and values parse.
    // `${NAME:?...}` takes what an operator sets in the shell; here, test values.
    let operator: BTreeMap<&str, String> = [
        ("SWITCHBOARD_API_TOKEN", "f".repeat(40)),
        (
            "SWITCHBOARD_META_APP_SECRETS",
            r#"["an-app-secret"]"#.to_string(),
        ),
        (
            "SWITCHBOARD_META_VERIFY_TOKEN",
            "a-verify-token".to_string(),
        ),
        (
            "SWITCHBOARD_META_CHANNELS",
            r#"{"106540352242922" = "main"}"#.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let subst = Regex::new(r"\$\{(\w+)(:[?-][^}]*)?\}").unwrap();
    let mut check = Command::new(BIN);
    check
        .args(["check-config", "--config"])
        .arg(repo("deploy/config.production.toml"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD")) {
        check.env_remove(k);
    }
    for (k, v) in &env {
        let v = subst.replace_all(v, |c: &regex::Captures| {
            operator
                .get(&c[1])
                .unwrap_or_else(|| panic!("compose uses ${{{}}}, unknown to this test", &c[1]))
                .clone()
        });
        check.env(k, v.as_ref());
    }
    let out = run_ok(&mut check);
    assert!(
        out.contains("configuration OK") && out.contains("0.0.0.0:8080"),
        "{out}"
    );
    assert!(out.contains("backend Redis"), "{out}");
    // Names that only appear in comments must be real keys too (two-level ones; a source's
    // keys are checked by check-config above).
    let key_re = Regex::new(r"SWITCHBOARD__([A-Z0-9_]+?)__([A-Z0-9_]+)\b").unwrap();
    for c in key_re.captures_iter(&compose) {
        let (section, key) = (c[1].to_lowercase(), c[2].to_lowercase());
        if section == "sources" {
            continue;
        }
        let in_section = config
            .split(&format!("[{section}]\n"))
            .nth(1)
            .map(|rest| rest.split("\n[").next().unwrap_or(""))
            .unwrap_or_else(|| panic!("config.toml has no [{section}] for {}", &c[0]));
        assert!(
            in_section.contains(&format!("\n{key} ="))
                || in_section.starts_with(&format!("{key} =")),
            "config.toml has no {section}.{key} for {}",
            &c[0]
        );
    }

    // Docker's stop timeout must outlast the drain the gateway does on SIGTERM.
    let drain: u64 = Regex::new(r"(?m)^shutdown_timeout_secs = (\d+)")
        .unwrap()
        .captures(&config)
        .expect("config.toml sets server.shutdown_timeout_secs")[1]
        .parse()
        .unwrap();
    let grace: u64 = Regex::new(r"stop_grace_period: (\d+)s")
        .unwrap()
        .captures(&sb_text)
        .expect("switchboard sets stop_grace_period")[1]
        .parse()
        .unwrap();
    assert!(
        grace > drain,
        "stop_grace_period {grace}s <= drain {drain}s"
    );

    // Prometheus and Grafana see the files of deploy/ where their configurations look.
    let prom = compose_service(&compose, "prometheus").join("\n");
    assert!(
        prom.contains("./deploy/prometheus:/etc/prometheus"),
        "{prom}"
    );
    assert!(
        prom.contains("--config.file=/etc/prometheus/prometheus.yml"),
        "{prom}"
    );
    assert!(read("deploy/prometheus/prometheus.yml").contains(r#"targets: ["switchboard:8080"]"#));
    let grafana = compose_service(&compose, "grafana").join("\n");
    assert!(grafana.contains("./deploy/grafana/provisioning:/etc/grafana/provisioning"));
    assert!(grafana.contains(
        "./deploy/grafana/switchboard.json:/var/lib/grafana/dashboards/switchboard/switchboard.json"
    ));
    let pg = compose_service(&compose, "postgres").join("\n");
    assert!(pg.contains("POSTGRES_DB: switchboard"), "{pg}");

    // The Dockerfile's dependency layer stubs every target Cargo.toml declares; a missing
    // one makes that layer fail (silently, `|| true`) and cache nothing.
    let bench_re = Regex::new(r#"\[\[bench\]\]\s*name = "(\w+)""#).unwrap();
    for c in bench_re.captures_iter(&read("Cargo.toml")) {
        let stub_line = dockerfile
            .lines()
            .find(|l| l.contains("for b in"))
            .expect("the Dockerfile stubs the benches");
        assert!(
            stub_line.contains(&c[1]),
            "Dockerfile does not stub bench {}",
            &c[1]
        );
    }
    assert!(
        !read("Cargo.toml").contains("[[example]]"),
        "an [[example]] target would break the Docker build, which copies no examples/"
    );
}

// --- The consumer examples -------------------------------------------------------------------

#[test]
fn python_consumer_compiles() {
    if !available(
        "python3",
        Command::new("python3").arg("--version"),
        "apt-get install python3",
    ) {
        return;
    }
    let cache = temp_dir("pycache");
    // The cache prefix keeps __pycache__ out of the checkout.
    run_ok(
        Command::new("python3")
            .args(["-m", "py_compile", "examples/consumer.py"])
            .env("PYTHONPYCACHEPREFIX", &cache),
    );
    let _ = std::fs::remove_dir_all(cache);
}

/// An event as the router publishes it, with an assignment when given.
fn event(kind: EventKind, dedup: &str, conv: &str, assignment: Option<(&str, &str, u64)>) -> Event {
    let now = time::OffsetDateTime::now_utc();
    let mut e = Event::new(
        kind,
        Provider::Meta,
        Channel::Whatsapp,
        Direction::Inbound,
        "acme",
        "meta_test",
        dedup.to_string(),
        None,
        now,
    );
    e.contact = Some(Party {
        id: "16505551234".into(),
        ..Party::default()
    });
    e.business = Some(Party {
        id: PHONE_ID.into(),
        ..Party::default()
    });
    e.conversation_id = Some(conv.to_string());
    e.assignment = assignment.map(|(action, agent, seq)| Assignment {
        action: action.into(),
        agent: Some(agent.into()),
        team: Some("support".into()),
        strategy: "least_loaded".into(),
        reason: format!("test: {action} {agent}"),
        seq,
        ..Assignment::default()
    });
    e
}

/// A command from its words.
fn cmd(words: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(words[0]);
    for w in &words[1..] {
        c.arg(*w);
    }
    c
}

async fn xadd(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    fields: &[(&str, &str)],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query_async(con).await.unwrap()
}

async fn xadd_event(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    e: &Event,
) -> String {
    xadd(
        con,
        stream,
        &[("event_id", &e.event_id), ("event", &e.to_json())],
    )
    .await
}

async fn run_python_consumer(python: &str, prefix: &str, state: &str) -> Vec<Value> {
    let cache = temp_dir("pycache");
    let child = tokio::process::Command::new(python)
        .arg(repo("examples/consumer.py"))
        .args(["--redis-url", &redis_url(), "--prefix", prefix])
        .args(["--state-prefix", state, "--consumer", "worker-1"])
        .args([
            "--claim-idle-ms",
            "50",
            "--claim-every-ms",
            "0",
            "--block-ms",
            "200",
        ])
        .args(["--max-deliveries", "5", "--exit-when-idle"])
        .env("PYTHONPYCACHEPREFIX", &cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{python} starts: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the consumer exits once the stream is drained")
        .unwrap();
    let _ = std::fs::remove_dir_all(cache);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "consumer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The lines about one event id, in order.
fn about<'a>(lines: &'a [Value], event_id: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event_id"] == event_id).collect()
}

#[tokio::test]
async fn python_consumer_claims_deduplicates_and_applies_assignments_in_seq_order() {
    for python in pythons() {
        consumer_claims_deduplicates_and_applies_assignments(&python).await;
    }
}

async fn consumer_claims_deduplicates_and_applies_assignments(python: &str) {
    let mut con = require_redis(&redis_url()).await;
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let stream = format!("{{{prefix}}}:events");
    let state = format!("{prefix}:crm");
    let _: () = cmd(&["XGROUP", "CREATE", &stream, "crm", "0", "MKSTREAM"])
        .query_async(&mut con)
        .await
        .unwrap();

    // A consumer that read two entries and died: one is fine, one has failed many times.
    let conv1 = "conv_00000000000000000000000000000001";
    let conv2 = "conv_00000000000000000000000000000002";
    let claimed = event(
        EventKind::Message,
        "t:claimed",
        conv1,
        Some(("assigned", "alice", 1)),
    );
    let poison = event(EventKind::Message, "t:poison", conv2, None);
    xadd_event(&mut con, &stream, &claimed).await;
    let poison_id = xadd_event(&mut con, &stream, &poison).await;
    let _: redis::Value = cmd(&[
        "XREADGROUP",
        "GROUP",
        "crm",
        "crashed",
        "COUNT",
        "2",
        "STREAMS",
        &stream,
        ">",
    ])
    .query_async(&mut con)
    .await
    .unwrap();
    let _: redis::Value = cmd(&[
        "XCLAIM",
        &stream,
        "crm",
        "crashed",
        "0",
        &poison_id,
        "RETRYCOUNT",
        "9",
    ])
    .query_async(&mut con)
    .await
    .unwrap();
    // One that this consumer (worker-1) read itself before it died, and that can never be
    // processed (its seq is no number): retried, then parked once delivered too often.
    let failing = event(
        EventKind::Message,
        "t:failing",
        conv2,
        Some(("assigned", "erin", 1)),
    );
    let mut failing_json: Value = serde_json::from_str(&failing.to_json()).unwrap();
    failing_json["assignment"]["seq"] = "soon".into();
    xadd(
        &mut con,
        &stream,
        &[
            ("event_id", &failing.event_id),
            ("event", &failing_json.to_string()),
        ],
    )
    .await;
    let _: redis::Value = cmd(&[
        "XREADGROUP",
        "GROUP",
        "crm",
        "worker-1",
        "COUNT",
        "1",
        "STREAMS",
        &stream,
        ">",
    ])
    .query_async(&mut con)
    .await
    .unwrap();

    // New entries: a message, the same event again (at-least-once), a transfer (seq 3),
    // then an older change (seq 2) that a slower router published late, a status, and an
    // entry that is not an event.
    let first = event(
        EventKind::Message,
        "t:first",
        conv2,
        Some(("assigned", "bob", 1)),
    );
    let transfer = event(
        EventKind::Assignment,
        "t:transfer",
        conv1,
        Some(("transferred", "carol", 3)),
    );
    let late = event(
        EventKind::Assignment,
        "t:late",
        conv1,
        Some(("assigned", "dave", 2)),
    );
    let status = event(EventKind::Status, "t:status", conv2, None);
    for e in [&first, &first, &transfer, &late, &status] {
        xadd_event(&mut con, &stream, e).await;
    }
    xadd(
        &mut con,
        &stream,
        &[("event_id", "evt_broken"), ("event", "not json")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(120)).await; // past --claim-idle-ms

    let lines = run_python_consumer(python, &prefix, &state).await;
    let one = |e: &Event| -> Value {
        let l = about(&lines, &e.event_id);
        assert_eq!(l.len(), 1, "{}: {l:?}\nall: {lines:#?}", e.event_id);
        l[0].clone()
    };
    let c = one(&claimed);
    assert_eq!(
        (&c["outcome"], &c["redelivered"], &c["assignment"]),
        (&"processed".into(), &true.into(), &"applied".into()),
        "{c}"
    );
    let p = one(&poison);
    assert_eq!(
        (&p["outcome"], &p["reason"]),
        (&"parked".into(), &"too many deliveries".into())
    );
    let f = about(&lines, &first.event_id);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(
        (&f[0]["outcome"], &f[0]["assignment"]),
        (&"processed".into(), &"applied".into())
    );
    assert_eq!(f[1]["outcome"], "duplicate");
    let t = one(&transfer);
    assert_eq!(
        (&t["kind"], &t["assignment"], &t["seq"]),
        (&"assignment".into(), &"applied".into(), &3.into())
    );
    let l = one(&late);
    assert_eq!(
        (&l["assignment"], &l["last_seq"]),
        (&"stale".into(), &3.into()),
        "{l}"
    );
    let s = one(&status);
    assert_eq!(
        (&s["outcome"], &s["kind"]),
        (&"processed".into(), &"status".into())
    );
    assert!(s.get("assignment").is_none(), "{s}");
    let f = one(&failing);
    assert_eq!(
        (&f["outcome"], &f["reason"]),
        (&"parked".into(), &"too many deliveries".into())
    );
    let b = about(&lines, "evt_broken");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["outcome"], "parked");
    let summary = lines.last().unwrap();
    assert_eq!(summary["outcome"], "summary");
    for (k, v) in [
        ("processed", 5),
        ("duplicates", 1),
        ("applied", 3),
        ("stale", 1),
        ("parked", 3),
    ] {
        assert_eq!(summary[k], v, "{k} in {summary}");
    }
    // The failing entry: tried from our own pending list, then at each claim until parked.
    assert!(summary["failed"].as_u64().unwrap() >= 2, "{summary}");
    assert!(summary["claimed"].as_u64().unwrap() >= 3, "{summary}");

    // The conversation holds the newest change, nothing is left pending, and what could not
    // be processed is kept.
    let owner: Vec<String> = cmd(&[
        "HMGET",
        &format!("{state}:conversation:{conv1}"),
        "seq",
        "assignment",
    ])
    .query_async(&mut con)
    .await
    .unwrap();
    assert_eq!(owner[0], "3");
    let a: Value = serde_json::from_str(&owner[1]).unwrap();
    assert_eq!(a["agent"], "carol");
    let pending: (u64, redis::Value, redis::Value, redis::Value) =
        cmd(&["XPENDING", &stream, "crm"])
            .query_async(&mut con)
            .await
            .unwrap();
    assert_eq!(pending.0, 0, "entries left pending");
    let parked: u64 = redis::cmd("XLEN")
        .arg(format!("{state}:parked"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(parked, 3);

    // A restarted consumer remembers what it processed: a replay is a duplicate.
    xadd_event(&mut con, &stream, &claimed).await;
    let again = run_python_consumer(python, &prefix, &state).await;
    let r = about(&again, &claimed.event_id);
    assert_eq!(r.len(), 1, "{again:?}");
    assert_eq!(r[0]["outcome"], "duplicate");
    assert_eq!(again.last().unwrap()["processed"], 0);

    // Leave nothing behind in the shared Redis.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

/// An idle stream is not an error. redis-py 6 and later give a connection a 5-second socket
/// read timeout by default; a blocking XREADGROUP waits on the server for up to `--block-ms`,
/// so with the client's defaults a consumer blocking 5 s or more died with "Timeout reading
/// from socket" at its first quiet moment. The consumer here blocks 6 s per read and the
/// stream stays empty for 7 s; it must still be running, then handle the event that comes,
/// then stop cleanly on SIGTERM.
#[tokio::test]
async fn python_consumer_survives_idle_periods_longer_than_the_client_read_timeout() {
    for python in pythons() {
        consumer_survives_idle_periods(&python).await;
    }
}

async fn consumer_survives_idle_periods(python: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let mut con = require_redis(&redis_url()).await;
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let stream = format!("{{{prefix}}}:events");
    let state = format!("{prefix}:crm");
    // The group exists before the consumer starts, so the idle period starts at once.
    let _: () = cmd(&["XGROUP", "CREATE", &stream, "crm", "0", "MKSTREAM"])
        .query_async(&mut con)
        .await
        .unwrap();
    let cache = temp_dir("pycache");
    let mut child = tokio::process::Command::new(python)
        .arg(repo("examples/consumer.py"))
        .args(["--redis-url", &redis_url(), "--prefix", &prefix])
        .args(["--state-prefix", &state, "--consumer", "idle-1"])
        .args(["--block-ms", "6000"])
        .env("PYTHONPYCACHEPREFIX", &cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{python} starts: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    tokio::time::sleep(Duration::from_secs(7)).await;
    if let Some(status) = child.try_wait().unwrap() {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        panic!("{python}: the consumer exited ({status}) while the stream was idle:\n{err}");
    }

    let e = event(EventKind::Message, "t:after-idle", "conv_idle", None);
    xadd_event(&mut con, &stream, &e).await;
    let processed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            if v["event_id"] == e.event_id.as_str() {
                return v;
            }
        }
        panic!("the consumer closed its output before handling the event");
    })
    .await
    .expect("the event published after the idle period is handled");
    assert_eq!(processed["outcome"], "processed", "{processed}");

    // SIGTERM: the consumer finishes the read in progress and prints its summary.
    let pid = child.id().expect("still running").to_string();
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the consumer stops within one blocking read of SIGTERM")
        .unwrap();
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err).await;
    assert!(status.success(), "{python}: {status}\n{err}");
    let summary: Value = serde_json::from_str(rest.last().expect("a summary line")).unwrap();
    assert_eq!(summary["outcome"], "summary", "{summary}");
    assert_eq!(summary["processed"], 1, "{summary}");
    let _ = std::fs::remove_dir_all(cache);

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}
