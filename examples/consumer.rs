//! A CRM backend reading switchboard's events stream, in Rust (docs/consumers.md).
//!
//! ```sh
//! cargo run --example consumer -- --redis-url redis://127.0.0.1:6379 --prefix switchboard
//! ```
//!
//! The same consumer as `examples/consumer.py`, with the same options and the same JSON line
//! per handled entry: a consumer group created idempotently, its own unacknowledged entries
//! read again first, entries idle at other consumers taken over with XAUTOCLAIM (and parked
//! after too many deliveries), deduplication on `event_id`, and assignment changes applied
//! only when their `seq` is above the last one applied for the conversation.
//!
//! It uses the synchronous `redis` API on purpose: one blocking XREADGROUP on a connection of
//! its own is all a consumer needs, and a blocking read must not share a multiplexed
//! connection with other commands (they would wait behind it).

use std::time::{Duration, Instant};

use clap::Parser;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply,
    StreamPendingReply, StreamReadOptions, StreamReadReply,
};
use redis::{Commands, Connection, RedisResult, Script, Value};
use serde_json::{json, Map, Value as Json};

/// Compare-and-set on the conversation's last applied seq (see examples/consumer.py).
const APPLY_ASSIGNMENT: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local seq = tonumber(ARGV[1])
if seq <= current then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'assignment', ARGV[2])
return {1, current}
"#;

#[derive(Parser, Debug)]
#[command(about = "Consume switchboard's events stream")]
struct Args {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// switchboard's redis.key_prefix; the stream is {PREFIX}:events.
    #[arg(long, env = "SWITCHBOARD_PREFIX", default_value = "switchboard")]
    prefix: String,
    /// The stream key, overriding --prefix.
    #[arg(long)]
    stream: Option<String>,
    /// Consumer group: one per application.
    #[arg(long, default_value = "crm")]
    group: String,
    /// Consumer name: keep it stable per worker to recover its own entries after a crash.
    #[arg(long)]
    consumer: Option<String>,
    /// Prefix of this consumer's own keys (seen ids, conversations, parked entries).
    #[arg(long, default_value = "crm")]
    state_prefix: String,
    /// Where a new group starts: 0 = everything retained, $ = new events only.
    #[arg(long, default_value = "0")]
    start_id: String,
    #[arg(long, default_value_t = 100)]
    count: usize,
    #[arg(long, default_value_t = 5000)]
    block_ms: usize,
    /// Take over entries pending this long at another consumer.
    #[arg(long, default_value_t = 60_000)]
    claim_idle_ms: usize,
    #[arg(long, default_value_t = 30_000)]
    claim_every_ms: u64,
    /// Park an entry delivered more often than this.
    #[arg(long, default_value_t = 5)]
    max_deliveries: usize,
    /// How long an event_id is remembered (at least the stream's retention).
    #[arg(long, default_value_t = 8 * 24 * 3600)]
    seen_ttl_secs: u64,
    /// Stop once the group has nothing new and nothing pending (tests, drains).
    #[arg(long)]
    exit_when_idle: bool,
}

#[derive(Default)]
struct Stats {
    processed: u64,
    duplicates: u64,
    applied: u64,
    stale: u64,
    claimed: u64,
    parked: u64,
    failed: u64,
}

struct Consumer {
    con: Connection,
    args: Args,
    stream: String,
    name: String,
    apply_assignment: Script,
    last_claim: Option<Instant>,
    stats: Stats,
}

fn emit(line: Json) {
    println!("{line}");
}

impl Consumer {
    fn seen_key(&self, event_id: &str) -> String {
        format!("{}:seen:{event_id}", self.args.state_prefix)
    }

    fn conversation_key(&self, conversation_id: &str) -> String {
        format!("{}:conversation:{conversation_id}", self.args.state_prefix)
    }

    fn ensure_group(&mut self) -> RedisResult<()> {
        let created: RedisResult<()> =
            self.con
                .xgroup_create_mkstream(&self.stream, &self.args.group, &self.args.start_id);
        match created {
            // Another worker (or an earlier run) created it: the normal case.
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    fn run(&mut self) -> RedisResult<()> {
        self.ensure_group()?;
        // Our own unacknowledged entries first; advance past each batch so that one that
        // fails again does not spin here (reclaim() brings it back once idle).
        let mut after = "0".to_string();
        loop {
            let entries = self.read(&after)?;
            let Some(last) = entries.last() else { break };
            after = last.id.clone();
            self.handle_all(entries, true, false)?;
        }
        loop {
            let claimed = self.reclaim()?;
            let entries = self.read(">")?;
            let nothing_new = entries.is_empty() && claimed == 0;
            self.handle_all(entries, false, false)?;
            // Idle means nothing new and nothing pending anywhere in the group: an entry that
            // failed here is still ours to retry once it has been idle long enough.
            if self.args.exit_when_idle && nothing_new && self.pending()? == 0 {
                break;
            }
        }
        let s = &self.stats;
        emit(
            json!({"outcome": "summary", "processed": s.processed, "duplicates": s.duplicates,
            "applied": s.applied, "stale": s.stale, "claimed": s.claimed, "parked": s.parked,
            "failed": s.failed}),
        );
        Ok(())
    }

    fn read(&mut self, from_id: &str) -> RedisResult<Vec<StreamId>> {
        let mut opts = StreamReadOptions::default()
            .group(&self.args.group, &self.name)
            .count(self.args.count);
        // Block only for new entries: re-reading our pending list must return at once.
        if from_id == ">" {
            opts = opts.block(self.args.block_ms);
        }
        let reply: Option<StreamReadReply> =
            self.con.xread_options(&[&self.stream], &[from_id], &opts)?;
        Ok(reply
            .and_then(|r| r.keys.into_iter().next())
            .map(|k| k.ids)
            .unwrap_or_default())
    }

    fn pending(&mut self) -> RedisResult<usize> {
        let reply: StreamPendingReply = self.con.xpending(&self.stream, &self.args.group)?;
        Ok(reply.count())
    }

    fn reclaim(&mut self) -> RedisResult<usize> {
        let every = Duration::from_millis(self.args.claim_every_ms);
        if self.last_claim.is_some_and(|t| t.elapsed() < every) {
            return Ok(0);
        }
        self.last_claim = Some(Instant::now());
        let (mut start, mut total) = ("0-0".to_string(), 0);
        loop {
            // Trimmed ids come back in `deleted_ids`, already dropped from the pending list.
            let reply: StreamAutoClaimReply = self.con.xautoclaim_options(
                &self.stream,
                &self.args.group,
                &self.name,
                self.args.claim_idle_ms,
                &start,
                StreamAutoClaimOptions::default().count(self.args.count),
            )?;
            total += reply.claimed.len();
            self.stats.claimed += reply.claimed.len() as u64;
            self.handle_all(reply.claimed, true, true)?;
            start = reply.next_stream_id;
            if start == "0-0" {
                break;
            }
        }
        Ok(total)
    }

    fn handle_all(
        &mut self,
        entries: Vec<StreamId>,
        redelivered: bool,
        check_deliveries: bool,
    ) -> RedisResult<()> {
        for entry in entries {
            if entry.map.is_empty() {
                // Trimmed while pending: the pending list keeps the id, the fields are gone.
                self.ack(&entry.id)?;
                continue;
            }
            if check_deliveries && self.deliveries(&entry.id)? > self.args.max_deliveries {
                self.park(&entry, "too many deliveries")?;
                continue;
            }
            self.handle(&entry, redelivered)?;
        }
        Ok(())
    }

    fn deliveries(&mut self, id: &str) -> RedisResult<usize> {
        let reply: StreamPendingCountReply =
            self.con
                .xpending_count(&self.stream, &self.args.group, id, id, 1)?;
        Ok(reply.ids.first().map(|p| p.times_delivered).unwrap_or(0))
    }

    fn handle(&mut self, entry: &StreamId, redelivered: bool) -> RedisResult<()> {
        let (Some(event_id), Some(payload)) = (
            entry.get::<String>("event_id"),
            entry.get::<String>("event"),
        ) else {
            return self.park(entry, "entry without event_id or event field");
        };
        let mut out = Map::new();
        out.insert("stream_id".into(), entry.id.clone().into());
        out.insert("event_id".into(), event_id.clone().into());
        out.insert("redelivered".into(), redelivered.into());
        if self.con.exists(self.seen_key(&event_id))? {
            self.ack(&entry.id)?;
            self.stats.duplicates += 1;
            out.insert("outcome".into(), "duplicate".into());
            emit(Json::Object(out));
            return Ok(());
        }
        let event: Json = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => return self.park(entry, &format!("event is not JSON: {e}")),
        };
        match self.process(&event) {
            Ok(report) => out.extend(report),
            Err(e) => {
                // Not acknowledged: it stays pending and is claimed again once idle.
                eprintln!("processing {event_id} failed, it will be redelivered: {e}");
                self.stats.failed += 1;
                return Ok(());
            }
        }
        // Recorded only after processing succeeded: a crash in between means processing the
        // event again on redelivery (keep processing idempotent), never losing it.
        redis::pipe()
            .set_ex(self.seen_key(&event_id), &entry.id, self.args.seen_ttl_secs)
            .ignore()
            .xack(&self.stream, &self.args.group, &[&entry.id])
            .ignore()
            .exec(&mut self.con)?;
        self.stats.processed += 1;
        out.insert("outcome".into(), "processed".into());
        emit(Json::Object(out));
        Ok(())
    }

    /// Your CRM's work goes here; returns what to report about it. An error leaves the
    /// entry pending, to be retried.
    fn process(&mut self, event: &Json) -> Result<Map<String, Json>, Box<dyn std::error::Error>> {
        let mut report = Map::new();
        report.insert("kind".into(), event["kind"].clone());
        if let (Some(assignment), Some(conv)) = (
            event.get("assignment").filter(|a| a.is_object()),
            event["conversation_id"].as_str(),
        ) {
            report.extend(self.assign(conv, assignment)?);
        }
        // kind "status": update the message's delivery state; "message" and the other
        // contact kinds: upsert keyed by event_id; any other kind (notification, error, kinds
        // added later within v1): nothing to do here, but keep going.
        Ok(report)
    }

    fn assign(
        &mut self,
        conv: &str,
        assignment: &Json,
    ) -> Result<Map<String, Json>, Box<dyn std::error::Error>> {
        // Absent means 0 (the field's default); anything but a number breaks the contract
        // and must not be mistaken for an old change.
        let seq = match &assignment["seq"] {
            Json::Null => 0,
            v => v
                .as_u64()
                .ok_or_else(|| format!("assignment.seq is not a number: {v}"))?,
        };
        let (applied, last): (i64, i64) = self
            .apply_assignment
            .key(self.conversation_key(conv))
            .arg(seq)
            .arg(assignment.to_string())
            .invoke(&mut self.con)?;
        let mut r = Map::new();
        r.insert("conversation_id".into(), conv.into());
        r.insert("seq".into(), seq.into());
        r.insert("action".into(), assignment["action"].clone());
        r.insert("agent".into(), assignment["agent"].clone());
        if applied == 1 {
            self.stats.applied += 1;
            r.insert("assignment".into(), "applied".into());
        } else {
            // An older change arriving after a newer one (or the same one again): skip it.
            self.stats.stale += 1;
            r.insert("assignment".into(), "stale".into());
            r.insert("last_seq".into(), last.into());
        }
        Ok(r)
    }

    fn ack(&mut self, id: &str) -> RedisResult<()> {
        let _: usize = self.con.xack(&self.stream, &self.args.group, &[id])?;
        Ok(())
    }

    /// Moves an entry that cannot be processed out of the way, keeping it for a person.
    fn park(&mut self, entry: &StreamId, reason: &str) -> RedisResult<()> {
        let mut fields: Vec<(String, String)> = entry
            .map
            .iter()
            .map(|(k, v)| (k.clone(), value_text(v)))
            .collect();
        fields.push(("stream_id".into(), entry.id.clone()));
        fields.push(("reason".into(), reason.into()));
        redis::pipe()
            .cmd("XADD")
            .arg(format!("{}:parked", self.args.state_prefix))
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg(&fields)
            .ignore()
            .xack(&self.stream, &self.args.group, &[&entry.id])
            .ignore()
            .exec(&mut self.con)?;
        self.stats.parked += 1;
        eprintln!("parked {}: {reason}", entry.id);
        emit(
            json!({"stream_id": entry.id, "event_id": entry.get::<String>("event_id"),
            "outcome": "parked", "reason": reason}),
        );
        Ok(())
    }
}

fn value_text(v: &Value) -> String {
    redis::from_redis_value_ref::<String>(v).unwrap_or_else(|_| format!("{v:?}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let con = redis::Client::open(args.redis_url.as_str())?.get_connection()?;
    // No signal handling: Ctrl-C or SIGTERM ends the process at once, which is safe, since
    // whatever was not acknowledged is read again at the next start (or claimed by a peer).
    let stream = args
        .stream
        .clone()
        .unwrap_or_else(|| format!("{{{}}}:events", args.prefix));
    let name = args.consumer.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "consumer".into());
        format!("{host}-{}", std::process::id())
    });
    let mut consumer = Consumer {
        con,
        stream,
        name,
        apply_assignment: Script::new(APPLY_ASSIGNMENT),
        last_claim: None,
        stats: Stats::default(),
        args,
    };
    consumer.run()?;
    Ok(())
}
