//! One batch of events → one transaction of multi-row upserts (`UNNEST` of arrays: one
//! prepared statement whatever the batch size).
//!
//! Idempotent on `event_id`: rows keyed by event id are inserted with `ON CONFLICT DO
//! NOTHING`; `deliveries` only moves to a higher status rank; `conversations` only takes the
//! routing columns of a higher `assignment.seq`, the earliest first and the latest last
//! message time. Writing a batch twice, or its events in another order, gives the same rows.

use std::collections::{HashMap, HashSet};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::Client;

use super::PersistError;
use crate::event::{Direction, Event, EventKind};
use crate::internal_events::Written;

/// An event read from the stream, with the JSON it came as (stored as is).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub event: Event,
    pub payload: String,
}

/// The order of delivery states: a state replaces the stored one only with a higher rank.
/// Failure states rank above everything: failed is final whatever arrives after it.
pub fn status_rank(state: &str) -> i16 {
    match state {
        "accepted" => 1,
        "queued" => 2,
        "sending" => 3,
        "sent" => 4,
        "delivered" => 5,
        "read" => 6,
        "played" => 7,
        "failed" | "undelivered" | "rejected" | "expired" => 100,
        _ => 0,
    }
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

fn ts(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Postgres text cannot hold NUL, and jsonb refuses the `\u0000` escape.
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s.to_string()
    }
}

fn clean_json(s: &str) -> String {
    if s.contains("\\u0000") {
        s.replace("\\u0000", "\\ufffd")
    } else {
        s.to_string()
    }
}

fn opt(s: Option<&str>) -> Option<String> {
    s.map(clean)
}

#[derive(Default)]
struct Conv {
    tenant: String,
    id: String,
    channel: String,
    source: String,
    provider: String,
    contact: Option<String>,
    business: Option<String>,
    agent: Option<String>,
    team: Option<String>,
    queue: Option<String>,
    state: Option<String>,
    seq: i64,
    has_assignment: bool,
    first: Option<OffsetDateTime>,
    last: Option<OffsetDateTime>,
}

struct Delivery {
    conversation: Option<String>,
    contact: Option<String>,
    source: String,
    state: String,
    rank: i16,
    at: OffsetDateTime,
}

/// Writes `events` in one transaction (see the module docs).
pub async fn write_batch(client: &mut Client, events: &[Parsed]) -> Result<Written, PersistError> {
    let mut w = Written::default();
    if events.is_empty() {
        return Ok(w);
    }
    let tx = client.transaction().await?;

    // Events of contacts erased after the event was received are left out: they were on
    // their way through the streams when the erasure ran.
    let mut hashes: Vec<String> = events
        .iter()
        .filter_map(|p| {
            let c = p.event.contact.as_ref()?;
            Some(super::privacy::contact_hash(&p.event.tenant, &c.id))
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    hashes.sort();
    let mut erased: HashMap<String, OffsetDateTime> = HashMap::new();
    if !hashes.is_empty() {
        for row in tx
            .query(
                "SELECT contact_hash, erased_at FROM erasures WHERE contact_hash = ANY($1)",
                &[&hashes],
            )
            .await?
        {
            erased.insert(row.get(0), row.get(1));
        }
    }

    let mut msgs = MessageCols::default();
    let mut stats = StatusCols::default();
    let mut asg = AssignmentCols::default();
    let mut deliveries: HashMap<(String, String, String), Delivery> = HashMap::new();
    let mut convs: HashMap<(String, String), Conv> = HashMap::new();
    let mut message_keys: HashSet<(String, String, String)> = HashSet::new();

    for p in events {
        let e = &p.event;
        let received = ts(&e.received_at).unwrap_or_else(OffsetDateTime::now_utc);
        let occurred = ts(&e.occurred_at).unwrap_or(received);
        let contact = e.contact.as_ref().map(|c| c.id.as_str());
        if let Some(c) = contact {
            let h = super::privacy::contact_hash(&e.tenant, c);
            if erased.get(&h).is_some_and(|at| received <= *at) {
                w.erased += 1;
                continue;
            }
        }
        let business = e.business.as_ref().map(|b| b.id.as_str());
        let provider = e.provider.as_str();
        let json = clean_json(&p.payload);
        match e.kind {
            EventKind::Status => {
                let Some(st) = &e.status else { continue };
                let rank = status_rank(&st.state);
                stats.push(
                    e,
                    contact,
                    st.message_id.as_deref(),
                    &st.state,
                    st.provider_state.as_deref(),
                    rank,
                    occurred,
                    received,
                    json,
                );
                // One status may be about several messages (Messenger delivery mids).
                let ids = st.message_id.iter().chain(st.message_ids.iter());
                for mid in ids {
                    let key = (e.tenant.clone(), provider.to_string(), clean(mid));
                    let d = Delivery {
                        conversation: opt(e.conversation_id.as_deref()),
                        contact: opt(contact),
                        source: clean(&e.source),
                        state: clean(&st.state),
                        rank,
                        at: occurred,
                    };
                    match deliveries.get(&key) {
                        Some(old) if old.rank >= rank => {}
                        _ => {
                            deliveries.insert(key, d);
                        }
                    }
                }
            }
            EventKind::Assignment => {}
            _ => {
                let msg = e.message.as_ref();
                msgs.push(
                    e,
                    contact,
                    business,
                    msg.map(|m| m.kind.as_str()),
                    msg.and_then(|m| m.text.as_deref()),
                    occurred,
                    received,
                    json,
                );
                if e.kind == EventKind::Message {
                    if let Some(pmid) = &e.provider_message_id {
                        message_keys.insert((e.tenant.clone(), provider.to_string(), clean(pmid)));
                    }
                }
            }
        }
        if let Some(a) = &e.assignment {
            asg.push(e, contact, a, received);
        }
        if let Some(conv) = &e.conversation_id {
            let c = convs
                .entry((e.tenant.clone(), conv.clone()))
                .or_insert_with(|| Conv {
                    tenant: e.tenant.clone(),
                    id: clean(conv),
                    channel: e.channel.as_str().to_string(),
                    source: clean(&e.source),
                    provider: provider.to_string(),
                    ..Conv::default()
                });
            if c.contact.is_none() {
                c.contact = opt(contact);
            }
            if c.business.is_none() {
                c.business = opt(business);
            }
            if e.kind == EventKind::Message {
                c.first = Some(c.first.map_or(occurred, |f| f.min(occurred)));
                c.last = Some(c.last.map_or(occurred, |l| l.max(occurred)));
            }
            if let Some(a) = &e.assignment {
                let seq = a.seq as i64;
                if !c.has_assignment || seq > c.seq {
                    c.has_assignment = true;
                    c.seq = seq;
                    c.agent = opt(a.agent.as_deref());
                    c.team = opt(a.team.as_deref());
                    c.queue = opt(a.queue.as_deref());
                    c.state = Some(clean(&a.action));
                }
            }
        }
    }

    if !msgs.event_id.is_empty() {
        w.messages = tx
            .execute(
                "INSERT INTO messages (event_id, tenant, conversation_id, source, provider, channel,
                     contact_id, business_id, provider_message_id, direction, kind, type, text,
                     occurred_at, received_at, event)
                 SELECT u.event_id, u.tenant, u.conv, u.source, u.provider, u.channel, u.contact,
                     u.business, u.pmid, u.direction, u.kind, u.type, u.text, u.occurred,
                     u.received, u.event::jsonb
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::text[], $14::timestamptz[], $15::timestamptz[], $16::text[])
                     AS u(event_id, tenant, conv, source, provider, channel, contact, business,
                          pmid, direction, kind, type, text, occurred, received, event)
                 ON CONFLICT (event_id) DO NOTHING",
                &[
                    &msgs.event_id, &msgs.tenant, &msgs.conv, &msgs.source, &msgs.provider,
                    &msgs.channel, &msgs.contact, &msgs.business, &msgs.pmid, &msgs.direction,
                    &msgs.kind, &msgs.mtype, &msgs.text, &msgs.occurred, &msgs.received,
                    &msgs.event,
                ],
            )
            .await?;
    }
    if !stats.event_id.is_empty() {
        w.statuses = tx
            .execute(
                "INSERT INTO message_statuses (event_id, tenant, conversation_id, source, provider,
                     channel, contact_id, provider_message_id, state, provider_state, status_rank,
                     occurred_at, received_at, event)
                 SELECT u.event_id, u.tenant, u.conv, u.source, u.provider, u.channel, u.contact,
                     u.pmid, u.state, u.pstate, u.rank, u.occurred, u.received, u.event::jsonb
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int2[],
                     $12::timestamptz[], $13::timestamptz[], $14::text[])
                     AS u(event_id, tenant, conv, source, provider, channel, contact, pmid, state,
                          pstate, rank, occurred, received, event)
                 ON CONFLICT (event_id) DO NOTHING",
                &[
                    &stats.event_id,
                    &stats.tenant,
                    &stats.conv,
                    &stats.source,
                    &stats.provider,
                    &stats.channel,
                    &stats.contact,
                    &stats.pmid,
                    &stats.state,
                    &stats.pstate,
                    &stats.rank,
                    &stats.occurred,
                    &stats.received,
                    &stats.event,
                ],
            )
            .await?;
    }
    let mut sync_keys: Vec<(String, String, String)> = message_keys.into_iter().collect();
    if !deliveries.is_empty() {
        let mut cols = DeliveryCols::default();
        for ((tenant, provider, pmid), d) in deliveries {
            sync_keys.push((tenant.clone(), provider.clone(), pmid.clone()));
            cols.tenant.push(tenant);
            cols.provider.push(provider);
            cols.pmid.push(pmid);
            cols.conv.push(d.conversation);
            cols.contact.push(d.contact);
            cols.source.push(d.source);
            cols.state.push(d.state);
            cols.rank.push(d.rank);
            cols.at.push(d.at);
        }
        w.deliveries = tx
            .execute(
                "INSERT INTO deliveries AS d (tenant, provider, provider_message_id, conversation_id,
                     contact_id, source, status, status_rank, status_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::int2[], $9::timestamptz[])
                 ON CONFLICT (tenant, provider, provider_message_id) DO UPDATE SET
                     status = EXCLUDED.status,
                     status_rank = EXCLUDED.status_rank,
                     status_at = EXCLUDED.status_at,
                     conversation_id = COALESCE(d.conversation_id, EXCLUDED.conversation_id),
                     contact_id = COALESCE(d.contact_id, EXCLUDED.contact_id),
                     updated_at = now()
                 WHERE d.status_rank < EXCLUDED.status_rank",
                &[
                    &cols.tenant, &cols.provider, &cols.pmid, &cols.conv, &cols.contact,
                    &cols.source, &cols.state, &cols.rank, &cols.at,
                ],
            )
            .await?;
    }
    if !sync_keys.is_empty() {
        // The messages we have carry their delivery state too (echoes of messages sent
        // from elsewhere, mostly), moved forward the same way.
        let (t, p, m): (Vec<String>, Vec<String>, Vec<String>) =
            sync_keys
                .into_iter()
                .fold(Default::default(), |mut acc, (t, p, m)| {
                    acc.0.push(t);
                    acc.1.push(p);
                    acc.2.push(m);
                    acc
                });
        tx.execute(
            "UPDATE messages m SET status = d.status, status_rank = d.status_rank,
                 status_at = d.status_at
             FROM deliveries d, UNNEST($1::text[], $2::text[], $3::text[]) AS k(tenant, provider, pmid)
             WHERE d.tenant = k.tenant AND d.provider = k.provider
               AND d.provider_message_id = k.pmid
               AND m.tenant = k.tenant AND m.provider = k.provider
               AND m.provider_message_id = k.pmid
               AND m.kind = 'message' AND m.status_rank < d.status_rank",
            &[&t, &p, &m],
        )
        .await?;
    }
    if !asg.event_id.is_empty() {
        w.assignments = tx
            .execute(
                "INSERT INTO assignments (event_id, tenant, conversation_id, source, contact_id, seq,
                     action, agent, previous_agent, team, queue, rule, strategy, reason, queued,
                     waited, wait_ms, at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::text[], $14::text[], $15::bool[], $16::bool[], $17::int8[],
                     $18::timestamptz[])
                 ON CONFLICT (event_id) DO NOTHING",
                &[
                    &asg.event_id, &asg.tenant, &asg.conv, &asg.source, &asg.contact, &asg.seq,
                    &asg.action, &asg.agent, &asg.previous, &asg.team, &asg.queue, &asg.rule,
                    &asg.strategy, &asg.reason, &asg.queued, &asg.waited, &asg.wait_ms, &asg.at,
                ],
            )
            .await?;
    }
    if !convs.is_empty() {
        let mut c = ConvCols::default();
        for conv in convs.into_values() {
            c.push(conv);
        }
        w.conversations = tx
            .execute(
                "INSERT INTO conversations AS c (tenant, conversation_id, channel, source, provider,
                     contact_id, business_id, agent, team, queue, state, assignment_seq,
                     first_message_at, last_message_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::int8[], $13::timestamptz[], $14::timestamptz[])
                 ON CONFLICT (tenant, conversation_id) DO UPDATE SET
                     contact_id = COALESCE(c.contact_id, EXCLUDED.contact_id),
                     business_id = COALESCE(c.business_id, EXCLUDED.business_id),
                     first_message_at = LEAST(c.first_message_at, EXCLUDED.first_message_at),
                     last_message_at = GREATEST(c.last_message_at, EXCLUDED.last_message_at),
                     agent = CASE WHEN EXCLUDED.assignment_seq > c.assignment_seq
                                  THEN EXCLUDED.agent ELSE c.agent END,
                     team = CASE WHEN EXCLUDED.assignment_seq > c.assignment_seq
                                 THEN EXCLUDED.team ELSE c.team END,
                     queue = CASE WHEN EXCLUDED.assignment_seq > c.assignment_seq
                                  THEN EXCLUDED.queue ELSE c.queue END,
                     state = CASE WHEN EXCLUDED.assignment_seq > c.assignment_seq
                                       OR c.state IS NULL
                                  THEN COALESCE(EXCLUDED.state, c.state) ELSE c.state END,
                     assignment_seq = GREATEST(c.assignment_seq, EXCLUDED.assignment_seq),
                     updated_at = now()",
                &[
                    &c.tenant, &c.id, &c.channel, &c.source, &c.provider, &c.contact,
                    &c.business, &c.agent, &c.team, &c.queue, &c.state, &c.seq, &c.first,
                    &c.last,
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(w)
}

#[derive(Default)]
struct MessageCols {
    event_id: Vec<String>,
    tenant: Vec<String>,
    conv: Vec<Option<String>>,
    source: Vec<String>,
    provider: Vec<String>,
    channel: Vec<String>,
    contact: Vec<Option<String>>,
    business: Vec<Option<String>>,
    pmid: Vec<Option<String>>,
    direction: Vec<String>,
    kind: Vec<String>,
    mtype: Vec<Option<String>>,
    text: Vec<Option<String>>,
    occurred: Vec<OffsetDateTime>,
    received: Vec<OffsetDateTime>,
    event: Vec<String>,
}

impl MessageCols {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        e: &Event,
        contact: Option<&str>,
        business: Option<&str>,
        mtype: Option<&str>,
        text: Option<&str>,
        occurred: OffsetDateTime,
        received: OffsetDateTime,
        json: String,
    ) {
        self.event_id.push(clean(&e.event_id));
        self.tenant.push(clean(&e.tenant));
        self.conv.push(opt(e.conversation_id.as_deref()));
        self.source.push(clean(&e.source));
        self.provider.push(e.provider.as_str().to_string());
        self.channel.push(e.channel.as_str().to_string());
        self.contact.push(opt(contact));
        self.business.push(opt(business));
        self.pmid.push(opt(e.provider_message_id.as_deref()));
        self.direction.push(direction(e.direction).to_string());
        self.kind.push(e.kind.as_str().to_string());
        self.mtype.push(opt(mtype));
        self.text.push(opt(text));
        self.occurred.push(occurred);
        self.received.push(received);
        self.event.push(json);
    }
}

#[derive(Default)]
struct StatusCols {
    event_id: Vec<String>,
    tenant: Vec<String>,
    conv: Vec<Option<String>>,
    source: Vec<String>,
    provider: Vec<String>,
    channel: Vec<String>,
    contact: Vec<Option<String>>,
    pmid: Vec<Option<String>>,
    state: Vec<String>,
    pstate: Vec<Option<String>>,
    rank: Vec<i16>,
    occurred: Vec<OffsetDateTime>,
    received: Vec<OffsetDateTime>,
    event: Vec<String>,
}

impl StatusCols {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        e: &Event,
        contact: Option<&str>,
        pmid: Option<&str>,
        state: &str,
        pstate: Option<&str>,
        rank: i16,
        occurred: OffsetDateTime,
        received: OffsetDateTime,
        json: String,
    ) {
        self.event_id.push(clean(&e.event_id));
        self.tenant.push(clean(&e.tenant));
        self.conv.push(opt(e.conversation_id.as_deref()));
        self.source.push(clean(&e.source));
        self.provider.push(e.provider.as_str().to_string());
        self.channel.push(e.channel.as_str().to_string());
        self.contact.push(opt(contact));
        self.pmid.push(opt(pmid));
        self.state.push(clean(state));
        self.pstate.push(opt(pstate));
        self.rank.push(rank);
        self.occurred.push(occurred);
        self.received.push(received);
        self.event.push(json);
    }
}

#[derive(Default)]
struct DeliveryCols {
    tenant: Vec<String>,
    provider: Vec<String>,
    pmid: Vec<String>,
    conv: Vec<Option<String>>,
    contact: Vec<Option<String>>,
    source: Vec<String>,
    state: Vec<String>,
    rank: Vec<i16>,
    at: Vec<OffsetDateTime>,
}

#[derive(Default)]
struct AssignmentCols {
    event_id: Vec<String>,
    tenant: Vec<String>,
    conv: Vec<Option<String>>,
    source: Vec<String>,
    contact: Vec<Option<String>>,
    seq: Vec<i64>,
    action: Vec<String>,
    agent: Vec<Option<String>>,
    previous: Vec<Option<String>>,
    team: Vec<Option<String>>,
    queue: Vec<Option<String>>,
    rule: Vec<Option<String>>,
    strategy: Vec<String>,
    reason: Vec<String>,
    queued: Vec<bool>,
    waited: Vec<bool>,
    wait_ms: Vec<Option<i64>>,
    at: Vec<OffsetDateTime>,
}

impl AssignmentCols {
    fn push(
        &mut self,
        e: &Event,
        contact: Option<&str>,
        a: &crate::event::Assignment,
        at: OffsetDateTime,
    ) {
        self.event_id.push(clean(&e.event_id));
        self.tenant.push(clean(&e.tenant));
        self.conv.push(opt(e.conversation_id.as_deref()));
        self.source.push(clean(&e.source));
        self.contact.push(opt(contact));
        self.seq.push(a.seq as i64);
        self.action.push(clean(&a.action));
        self.agent.push(opt(a.agent.as_deref()));
        self.previous.push(opt(a.previous_agent.as_deref()));
        self.team.push(opt(a.team.as_deref()));
        self.queue.push(opt(a.queue.as_deref()));
        self.rule.push(opt(a.rule.as_deref()));
        self.strategy.push(clean(&a.strategy));
        self.reason.push(clean(&a.reason));
        self.queued.push(a.queued);
        self.waited.push(a.waited);
        self.wait_ms
            .push(a.wait_ms.map(|w| w.min(i64::MAX as u64) as i64));
        self.at.push(at);
    }
}

#[derive(Default)]
struct ConvCols {
    tenant: Vec<String>,
    id: Vec<String>,
    channel: Vec<String>,
    source: Vec<String>,
    provider: Vec<String>,
    contact: Vec<Option<String>>,
    business: Vec<Option<String>>,
    agent: Vec<Option<String>>,
    team: Vec<Option<String>>,
    queue: Vec<Option<String>>,
    state: Vec<Option<String>>,
    seq: Vec<i64>,
    first: Vec<Option<OffsetDateTime>>,
    last: Vec<Option<OffsetDateTime>>,
}

impl ConvCols {
    fn push(&mut self, c: Conv) {
        self.tenant.push(clean(&c.tenant));
        self.id.push(c.id);
        self.channel.push(c.channel);
        self.source.push(c.source);
        self.provider.push(c.provider);
        self.contact.push(c.contact);
        self.business.push(c.business);
        self.agent.push(c.agent);
        self.team.push(c.team);
        self.queue.push(c.queue);
        self.state.push(c.state);
        self.seq.push(c.seq);
        self.first.push(c.first);
        self.last.push(c.last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_move_forward_and_failure_is_final() {
        assert!(status_rank("sent") < status_rank("delivered"));
        assert!(status_rank("delivered") < status_rank("read"));
        for s in ["sent", "delivered", "read", "played"] {
            assert!(status_rank("failed") > status_rank(s));
        }
        assert_eq!(status_rank("something-new"), 0);
    }

    #[test]
    fn nul_is_replaced_for_postgres() {
        assert_eq!(clean("a\0b"), "a\u{fffd}b");
        assert_eq!(clean_json(r#"{"t":"a\u0000"}"#), r#"{"t":"a\ufffd"}"#);
    }
}
