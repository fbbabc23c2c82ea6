//! `switchboard replay`: dead letters back through the webhook path after a fix.
//!
//! A dead-letter entry keeps the raw request (body, signature headers, method, public URL;
//! see `ingest::DeadLetterEntry`). Replaying one:
//! 1. re-verifies it with the source's *current* secrets (a secret removed since no longer
//!    verifies it), at the time it was first received (`received_at`), so that schemes with
//!    a replay window accept a request that was in time then;
//! 2. normalizes it with the current code and configuration (a channel added to the map,
//!    a normalizer fixed);
//! 3. when the entry's failing part no longer fails, accepts the request's events (and any
//!    other dead letters it still produces) through [`Backend::accept`], the same atomic
//!    dedup + enqueue as a webhook: an event already accepted, by the original request, an
//!    earlier replay or a provider's redelivery, is a duplicate, never a second event;
//! 4. removes the dead-letter entry only after the accept succeeded. A crash in between
//!    leaves the entry; replaying it again then finds its events as duplicates.
//!
//! An entry whose part still fails (with the same or another reason), that no longer
//! verifies, whose source is gone, or that now produces no event at all is left in place
//! and reported. Rate limits are not applied (an operator's action, not a provider's).

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::accept::{Backend, BackendError, StreamEntry, StreamName};
use crate::config::Config;
use crate::ingest::{to_batch, DeadLetterRecord};
use crate::normalize::{Context, DeadLetter};
use crate::source::Source;
use crate::verify::{Headers, Method, Unverified};

/// Which entries to replay, and whether to change anything.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only entries of this source.
    pub source: Option<String>,
    /// Only entries dead-lettered for this reason (`unknown_channel`, `invalid_body`, ...).
    pub reason: Option<String>,
    /// Only these entries: stream ids or dead-letter ids (`dl_...`). Empty: all.
    pub ids: Vec<String>,
    /// Verify and normalize, report what would happen, accept and remove nothing.
    pub dry_run: bool,
    /// At most this many matching entries.
    pub limit: Option<usize>,
}

/// What happened to one dead-letter entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Accepted, with at least one new event; the entry was removed.
    Replayed { events: usize, duplicates: usize },
    /// Every event it produced had been accepted before; the entry was removed.
    Duplicate { events: usize },
    /// `--dry-run`: it would be accepted with this many events.
    WouldReplay { events: usize },
    /// Left in the dead-letter stream, with why.
    StillFailing { reason: String, detail: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryReport {
    /// Stream id of the dead-letter entry.
    pub id: String,
    pub deadletter_id: String,
    pub source: String,
    /// Why it had been dead-lettered.
    pub reason: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Matching entries looked at.
    pub examined: usize,
    pub replayed: usize,
    pub duplicates: usize,
    pub would_replay: usize,
    pub still_failing: usize,
    /// New events appended to the inbound stream.
    pub events_accepted: usize,
    /// Events that had been accepted before.
    pub events_duplicate: usize,
    /// Set when the run stopped early (Redis unavailable, backpressure): entries not yet
    /// looked at are untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    pub entries: Vec<EntryReport>,
}

impl ReplayReport {
    fn add(&mut self, e: EntryReport) {
        match &e.outcome {
            Outcome::Replayed { events, duplicates } => {
                self.replayed += 1;
                self.events_accepted += events;
                self.events_duplicate += duplicates;
            }
            Outcome::Duplicate { events } => {
                self.duplicates += 1;
                self.events_duplicate += events;
            }
            Outcome::WouldReplay { .. } => self.would_replay += 1,
            Outcome::StillFailing { .. } => self.still_failing += 1,
        }
        self.entries.push(e);
    }

    /// The summary an operator reads.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}{} dead letter(s) examined: {} replayed ({} new event(s)), {} duplicate(s) ({} event(s) already accepted), {} still failing{}",
            if self.dry_run { "dry run: " } else { "" },
            self.examined,
            self.replayed,
            self.events_accepted,
            self.duplicates,
            self.events_duplicate,
            self.still_failing,
            if self.dry_run {
                format!(", {} would be replayed", self.would_replay)
            } else {
                String::new()
            }
        );
        let mut by_reason: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in &self.entries {
            if let Outcome::StillFailing { reason, .. } = &e.outcome {
                *by_reason.entry(reason).or_default() += 1;
            }
        }
        for (reason, n) in by_reason {
            let _ = writeln!(out, "  still failing, {reason}: {n}");
        }
        for e in &self.entries {
            let what = match &e.outcome {
                Outcome::Replayed { events, duplicates } => {
                    format!("replayed: {events} new event(s), {duplicates} duplicate(s)")
                }
                Outcome::Duplicate { events } => {
                    format!("duplicate: its {events} event(s) were already accepted")
                }
                Outcome::WouldReplay { events } => format!("would replay {events} event(s)"),
                Outcome::StillFailing { reason, detail } => {
                    format!("still failing: {reason}: {detail}")
                }
            };
            let _ = writeln!(
                out,
                "  {} {} source={} was={} {what}",
                e.id, e.deadletter_id, e.source, e.reason
            );
        }
        if let Some(why) = &self.aborted {
            let _ = writeln!(out, "stopped early: {why}");
        }
        out
    }
}

/// Entries read from the dead-letter stream per call.
const PAGE: usize = 100;

/// Replays the matching dead-letter entries (see the module docs).
///
/// `api_sources`: the sources created through the admin API (see [`api_sources`]); a
/// config.toml source of the same id wins, as in the gateway.
pub async fn replay(
    config: &Config,
    api_sources: &HashMap<String, std::sync::Arc<Source>>,
    backend: &Backend,
    opts: &ReplayOptions,
) -> ReplayReport {
    let mut sources: HashMap<&str, std::sync::Arc<Source>> = api_sources
        .iter()
        .map(|(id, s)| (id.as_str(), s.clone()))
        .collect();
    for (id, c) in &config.sources {
        sources.insert(
            id.as_str(),
            std::sync::Arc::new(Source::from_config(id, c, config.streams.include_raw)),
        );
    }
    let mut report = ReplayReport {
        dry_run: opts.dry_run,
        ..ReplayReport::default()
    };
    let mut after = "0-0".to_string();
    'pages: loop {
        let page = match backend
            .read(StreamName::DeadLetter, PAGE, Some(&after))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                report.aborted = Some(format!("reading the dead-letter stream: {e}"));
                break;
            }
        };
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        for entry in page {
            if opts.limit.is_some_and(|l| report.examined >= l) {
                break 'pages;
            }
            let record: Option<DeadLetterRecord> = serde_json::from_str(&entry.payload).ok();
            if !matches(opts, &entry, record.as_ref()) {
                continue;
            }
            report.examined += 1;
            match replay_one(backend, &sources, &entry, record.as_ref(), opts.dry_run).await {
                Ok(e) => report.add(e),
                Err(e) => {
                    report.aborted = Some(format!("at entry {}: {e}", entry.id));
                    break 'pages;
                }
            }
        }
    }
    report
}

fn matches(opts: &ReplayOptions, entry: &StreamEntry, record: Option<&DeadLetterRecord>) -> bool {
    if !opts.ids.is_empty() && !opts.ids.iter().any(|i| *i == entry.id || *i == entry.key) {
        return false;
    }
    if let Some(s) = &opts.source {
        if record.is_none_or(|r| &r.source != s) {
            return false;
        }
    }
    if let Some(reason) = &opts.reason {
        if record.is_none_or(|r| &r.reason != reason) {
            return false;
        }
    }
    true
}

/// Whether a dead letter of the re-normalized request is the entry's own part failing
/// again: the same part, or the whole body failing now.
fn same_part(dl: &DeadLetter, record: &DeadLetterRecord) -> bool {
    dl.part.is_none() || dl.part == record.part
}

async fn replay_one(
    backend: &Backend,
    sources: &HashMap<&str, std::sync::Arc<Source>>,
    entry: &StreamEntry,
    record: Option<&DeadLetterRecord>,
    dry_run: bool,
) -> Result<EntryReport, BackendError> {
    let failing = |reason: &str, detail: String| Outcome::StillFailing {
        reason: reason.to_string(),
        detail,
    };
    let mut report = EntryReport {
        id: entry.id.clone(),
        deadletter_id: entry.key.clone(),
        source: String::new(),
        reason: String::new(),
        outcome: failing("unreadable_record", String::new()),
    };
    let Some(record) = record else {
        report.outcome = failing(
            "unreadable_record",
            "the entry is not a switchboard.deadletter.v1 record".into(),
        );
        return Ok(report);
    };
    report.source = record.source.clone();
    report.reason = record.reason.clone();
    let Some(src) = sources.get(record.source.as_str()) else {
        report.outcome = failing(
            "unknown_source",
            format!("source {:?} is not in the configuration", record.source),
        );
        return Ok(report);
    };
    let body = match record.body_bytes() {
        Ok(b) => b,
        Err(_) => {
            report.outcome = failing("unreadable_record", "body_base64 is not base64".into());
            return Ok(report);
        }
    };
    let Ok(received_at) = OffsetDateTime::parse(&record.received_at, &Rfc3339) else {
        report.outcome = failing(
            "unreadable_record",
            format!("received_at {:?} is not RFC 3339", record.received_at),
        );
        return Ok(report);
    };
    let method = match record.method.as_deref() {
        Some(m) if m.eq_ignore_ascii_case("GET") => Method::Get,
        _ => Method::Post,
    };
    // Entries written before the URL was kept: the configured public URL of the source is
    // the best guess (right unless the provider called a query string).
    let url = record
        .url
        .clone()
        .or_else(|| {
            src.public_base_url
                .as_ref()
                .map(|b| format!("{}/webhooks/{}", b.trim_end_matches('/'), src.id))
        })
        .unwrap_or_default();
    let mut headers = Headers::new();
    for (name, value) in &record.headers {
        headers.insert(name, value);
    }
    let unverified = Unverified::new(headers, Bytes::from(body))
        .with_method(method)
        .with_url(url)
        .with_now(received_at)
        .from_dead_letter();
    let verified = match src.verify(unverified) {
        Ok(v) => v,
        Err(e) => {
            report.outcome = failing(
                "verification_failed",
                format!("{e} ({}) with the source's current secrets", e.reason()),
            );
            return Ok(report);
        }
    };
    let ctx = Context {
        source: &src.id,
        received_at,
        include_raw: src.include_raw,
        channels: &src.channels,
        default_tenant: src.default_tenant.as_deref(),
    };
    let normalized = src.normalize(&verified, &ctx);
    if let Some(dl) = normalized
        .dead_letters
        .iter()
        .find(|dl| same_part(dl, record))
    {
        report.outcome = failing(dl.reason.as_str(), dl.detail.clone());
        return Ok(report);
    }
    let events = normalized.events.len();
    if events == 0 {
        report.outcome = failing(
            "no_events",
            "the request now produces no event; the entry is kept".into(),
        );
        return Ok(report);
    }
    if dry_run {
        report.outcome = Outcome::WouldReplay { events };
        return Ok(report);
    }
    let kept: Vec<(&str, &str)> = record
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let batch = to_batch(src, &normalized, &verified, &kept, received_at);
    let accepted = backend.accept(batch).await?;
    // Only now, with the events durably accepted (or known duplicates), the entry goes.
    backend
        .delete_entries(StreamName::DeadLetter, std::slice::from_ref(&entry.id))
        .await?;
    let fresh = accepted.events.iter().filter(|f| **f).count();
    report.outcome = if fresh > 0 {
        Outcome::Replayed {
            events: fresh,
            duplicates: events - fresh,
        }
    } else {
        Outcome::Duplicate { events }
    };
    Ok(report)
}

/// The sources created through the admin API, decrypted with the configured master key
/// (none without `[postgres] enabled`). A failure says why; replay then knows only the
/// configuration's sources.
pub async fn api_sources(
    config: &Config,
) -> Result<HashMap<String, std::sync::Arc<Source>>, String> {
    if !config.postgres.enabled {
        return Ok(HashMap::new());
    }
    let pg = crate::persist::Postgres::new(config).map_err(|e| e.to_string())?;
    let admin = crate::admin::Admin::from_config(config);
    admin.reload(&pg, true).await.map_err(|e| e.to_string())?;
    Ok(admin.live().sources.clone())
}
