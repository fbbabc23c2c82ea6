//! Privacy operations on the history: erase one contact, export one contact, the retention
//! job, and Meta's data deletion requests. Every operation writes one `audit_log` row.
//!
//! The audit log is append-only (the database refuses UPDATE and DELETE), so it never holds
//! what an erasure must remove: contacts appear in it, and in `erasures`, only as
//! [`contact_hash`] — enough to answer "was this contact erased, when, by whom" for someone
//! who knows the id, not enough to recover it.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use super::{PersistError, Postgres};
use crate::accept::deadletter::DeadLetterRecord;
use crate::accept::{Backend, BackendError, StreamEntry, StreamName};
use crate::event::short_hash;
use crate::internal_events::PrivacyOperation;
use crate::route::Engine;

/// The stable, non-reversible name of a contact of a tenant in the audit log and
/// `erasures`.
pub fn contact_hash(tenant: &str, contact: &str) -> String {
    short_hash(format!("{tenant}\n{contact}").as_bytes())
}

/// Appends one audit row. `before`/`after` must not carry secrets or contact data.
pub async fn audit(
    client: &impl GenericClient,
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    target: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), PersistError> {
    client
        .execute(
            "INSERT INTO audit_log (actor, tenant, action, target, before, after)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&actor, &tenant, &action, &target, &before, &after],
        )
        .await?;
    Ok(())
}

/// What an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub messages: u64,
    pub statuses: u64,
    pub deliveries: u64,
    pub assignments: u64,
    pub conversations: u64,
    /// Entries of the events stream deleted (XDEL), every partition.
    pub stream_entries: u64,
    /// Entries of the inbound stream (accepted, not yet routed) deleted.
    pub inbound_entries: u64,
    /// Dead letters that mention the contact, deleted.
    pub dead_letters: u64,
    /// Routing state: conversations forgotten (open ones free their agent's slot, queued
    /// ones leave their queue) and unpublished assignment changes deleted.
    pub routing: crate::route::store::RoutingErased,
    /// Push delivery attempts recorded for the contact's conversations.
    pub delivery_attempts: u64,
    /// Events of the contact waiting in push delivery queues (set by the caller, which
    /// reaches delivery: see `conversation_ids`).
    pub delivery_queued: u64,
    /// The contact's conversations, for the layers above to erase what they keep of them.
    #[serde(skip)]
    pub conversation_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    contact: Option<ProbeParty>,
    #[serde(default)]
    conversation_id: Option<String>,
}

#[derive(Deserialize)]
struct ProbeParty {
    id: String,
}

/// Erases a contact of a tenant, every copy the gateway holds (docs/architecture.md,
/// invariant 7): its messages, statuses, deliveries, assignments and conversations in
/// Postgres; its entries of the inbound and events streams and the dead letters that
/// mention it (every partition), including the copies that router batches in flight
/// publish ([`wait_for_routers`]); its conversations' routing state (through `engine`: an
/// open conversation frees its agent's slot). Idempotent: erasing again removes what
/// arrived since (and nothing else). Events of the contact already on their way (accepted
/// before the erasure, not yet stored) are not stored afterwards: the `erasures` row makes
/// the persister drop them.
pub async fn erase_contact(
    pg: &Postgres,
    backend: &Backend,
    engine: Option<&Engine>,
    actor: &str,
    tenant: &str,
    contact: &str,
) -> Result<Erased, PersistError> {
    let hash = contact_hash(tenant, contact);
    let mut out = Erased::default();
    let mut convs: Vec<String>;
    {
        let mut client = pg.client().await?;
        let tx = client.transaction().await?;
        convs = tx
            .query(
                "SELECT conversation_id FROM conversations WHERE tenant = $1 AND contact_id = $2
                 UNION SELECT conversation_id FROM messages WHERE tenant = $1 AND contact_id = $2
                 UNION SELECT conversation_id FROM message_statuses
                       WHERE tenant = $1 AND contact_id = $2",
                &[&tenant, &contact],
            )
            .await?
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .collect();
        tx.execute(
            "INSERT INTO erasures (tenant, contact_hash) VALUES ($1, $2)
             ON CONFLICT (tenant, contact_hash) DO UPDATE SET erased_at = now()",
            &[&tenant, &hash],
        )
        .await?;
        out.assignments = tx
            .execute(
                "DELETE FROM assignments WHERE tenant = $1 AND (contact_id = $2 OR conversation_id IN
                     (SELECT conversation_id FROM conversations WHERE tenant = $1 AND contact_id = $2))",
                &[&tenant, &contact],
            )
            .await?;
        out.messages = tx
            .execute(
                "DELETE FROM messages WHERE tenant = $1 AND contact_id = $2",
                &[&tenant, &contact],
            )
            .await?;
        out.statuses = tx
            .execute(
                "DELETE FROM message_statuses WHERE tenant = $1 AND contact_id = $2",
                &[&tenant, &contact],
            )
            .await?;
        out.deliveries = tx
            .execute(
                "DELETE FROM deliveries WHERE tenant = $1 AND contact_id = $2",
                &[&tenant, &contact],
            )
            .await?;
        out.conversations = tx
            .execute(
                "DELETE FROM conversations WHERE tenant = $1 AND contact_id = $2",
                &[&tenant, &contact],
            )
            .await?;
        tx.commit().await?;
    }
    let (inbound, n, c) = erase_from_stream(backend, StreamName::Inbound, tenant, contact).await?;
    out.inbound_entries = n as u64;
    convs.extend(c);
    wait_for_routers(backend, &inbound).await?;
    let (_, n, c) = erase_from_stream(backend, StreamName::Events, tenant, contact).await?;
    out.stream_entries = n as u64;
    convs.extend(c);
    let dead: Vec<String> = contact_dead_letters(backend, contact)
        .await?
        .into_iter()
        .map(|(e, _)| e.id)
        .collect();
    out.dead_letters = backend
        .delete_entries(StreamName::DeadLetter, &dead)
        .await? as u64;
    convs.sort();
    convs.dedup();
    if let Some(engine) = engine {
        out.routing = engine.erase(tenant, &convs).await?;
    }
    let client = pg.client().await?;
    out.delivery_attempts = client
        .execute(
            "DELETE FROM delivery_attempts WHERE tenant = $1 AND conversation_id = ANY($2)",
            &[&tenant, &convs],
        )
        .await?;
    out.conversation_ids = convs;
    audit(
        &**client,
        actor,
        Some(tenant),
        "contact.erase",
        &format!("contact:{hash}"),
        None,
        Some(serde_json::to_value(&out).unwrap_or(Value::Null)),
    )
    .await?;
    PrivacyOperation {
        op: "erase",
        outcome: "ok",
    }
    .emit();
    Ok(out)
}

/// Every entry of a stream (all partitions), oldest first, page by page.
async fn for_each_entry(
    backend: &Backend,
    stream: StreamName,
    mut f: impl FnMut(&StreamEntry),
) -> Result<(), PersistError> {
    let mut after = "0-0".to_string();
    loop {
        let page = backend.read(stream, 1000, Some(&after)).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id.clone();
        page.iter().for_each(&mut f);
        if page.len() < 1000 {
            break;
        }
    }
    Ok(())
}

/// How long an erasure waits for routers to publish the batches that hold inbound entries
/// it deleted ([`wait_for_routers`]). A router publishes a batch within milliseconds; one
/// that cannot (Redis refusing, the persister's backlog full) makes the erasure fail, to be
/// called again.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// Waits until no router holds any of `deleted` (the contact's inbound entries this erasure
/// deleted) in a batch it read and has not published yet. Such a batch still publishes its
/// copy of them to the events stream, and the pass over that stream that follows must find
/// that copy; routing state is erased after it too, so that the batch's routing call cannot
/// bring the conversation back.
async fn wait_for_routers(backend: &Backend, deleted: &[String]) -> Result<(), PersistError> {
    if deleted.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + IN_FLIGHT_WAIT;
    loop {
        let n = backend.inbound_in_flight(deleted).await?;
        if n == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PersistError::Backend(BackendError::Unavailable(format!(
                "{n} of the contact's events are still being routed after {} s; erase again",
                IN_FLIGHT_WAIT.as_secs()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes the contact's events from the inbound or events stream; returns their ids, how
/// many existed, and the conversations they belong to.
async fn erase_from_stream(
    backend: &Backend,
    stream: StreamName,
    tenant: &str,
    contact: &str,
) -> Result<(Vec<String>, usize, Vec<String>), PersistError> {
    let mut ids = Vec::new();
    let mut convs = Vec::new();
    for_each_entry(backend, stream, |e| {
        if let Ok(p) = serde_json::from_str::<Probe>(&e.payload) {
            if p.tenant == tenant && p.contact.is_some_and(|c| c.id == contact) {
                ids.push(e.id.clone());
                convs.extend(p.conversation_id);
            }
        }
    })
    .await?;
    let n = backend.delete_entries(stream, &ids).await?;
    Ok((ids, n, convs))
}

/// The dead letters that mention `contact`, with their records. A dead letter is a payload
/// that could not become events, so it names no contact: it is the contact's when the id
/// appears in it as a whole token (not inside a longer id or number) — in the raw body (also
/// form-decoded and base64-decoded), the failing part or the URL of a GET delivery. Dead
/// letters are not attributed to tenants either (an unknown channel has no tenant), so an
/// erasure removes every dead letter that names the contact.
async fn contact_dead_letters(
    backend: &Backend,
    contact: &str,
) -> Result<Vec<(StreamEntry, DeadLetterRecord)>, PersistError> {
    let mut out = Vec::new();
    if contact.is_empty() {
        return Ok(out);
    }
    for_each_entry(backend, StreamName::DeadLetter, |e| {
        if let Ok(r) = serde_json::from_str::<DeadLetterRecord>(&e.payload) {
            if dead_letter_mentions(&r, contact) {
                out.push((e.clone(), r));
            }
        }
    })
    .await?;
    Ok(out)
}

fn dead_letter_mentions(r: &DeadLetterRecord, contact: &str) -> bool {
    let body = r.body_bytes().unwrap_or_default();
    let decoded = |bytes: &[u8]| -> String {
        url::form_urlencoded::parse(bytes)
            .flat_map(|(k, v)| [k.into_owned(), v.into_owned()])
            .collect::<Vec<_>>()
            .join("\n")
    };
    let url = r.url.as_deref().unwrap_or("");
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let texts = [
        String::from_utf8_lossy(&body).into_owned(),
        decoded(&body),
        r.part.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        url.to_string(),
        decoded(query.as_bytes()),
    ];
    texts.iter().any(|t| mentions(t, contact))
}

/// Whether `id` occurs in `text` with no letter or digit right before or after it.
fn mentions(text: &str, id: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    let mut from = 0;
    while let Some(at) = text[from..].find(id) {
        let start = from + at;
        let end = start + id.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        // Unicode escapes in JSON (`\u0041`) are rare in ids; a `+` before a phone is fine.
        if !alnum(before) && !alnum(after) {
            return true;
        }
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Everything stored about a contact of a tenant, as one JSON document: the history in
/// Postgres and the dead letters that mention the contact (see [`contact_dead_letters`]).
pub async fn export_contact(
    pg: &Postgres,
    backend: &Backend,
    actor: &str,
    tenant: &str,
    contact: &str,
) -> Result<Value, PersistError> {
    let client = pg.client().await?;
    let rows = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[&tenant, &contact]).await?;
            Ok::<Vec<Value>, PersistError>(rows.iter().map(|r| r.get::<_, Value>(0)).collect())
        }
    };
    let conversations = rows(
        "SELECT to_jsonb(c) FROM conversations c WHERE tenant = $1 AND contact_id = $2
         ORDER BY first_message_at NULLS LAST, conversation_id",
    )
    .await?;
    let messages = rows(
        "SELECT to_jsonb(m) FROM messages m WHERE tenant = $1 AND contact_id = $2
         ORDER BY occurred_at, event_id",
    )
    .await?;
    let statuses = rows(
        "SELECT to_jsonb(s) FROM message_statuses s WHERE tenant = $1 AND contact_id = $2
         ORDER BY occurred_at, event_id",
    )
    .await?;
    let deliveries = rows(
        "SELECT to_jsonb(d) FROM deliveries d WHERE tenant = $1 AND contact_id = $2
         ORDER BY status_at, provider_message_id",
    )
    .await?;
    let assignments = rows(
        "SELECT to_jsonb(a) FROM assignments a WHERE tenant = $1 AND (contact_id = $2 OR
             conversation_id IN (SELECT conversation_id FROM conversations
                                 WHERE tenant = $1 AND contact_id = $2))
         ORDER BY at, seq, event_id",
    )
    .await?;
    let dead_letters: Vec<Value> = contact_dead_letters(backend, contact)
        .await?
        .into_iter()
        .map(|(e, _)| {
            let mut v: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("stream_id".into(), e.id.into());
            }
            v
        })
        .collect();
    let counts = json!({
        "conversations": conversations.len(), "messages": messages.len(),
        "statuses": statuses.len(), "deliveries": deliveries.len(),
        "assignments": assignments.len(), "dead_letters": dead_letters.len(),
    });
    audit(
        &**client,
        actor,
        Some(tenant),
        "contact.export",
        &format!("contact:{}", contact_hash(tenant, contact)),
        None,
        Some(counts),
    )
    .await?;
    PrivacyOperation {
        op: "export",
        outcome: "ok",
    }
    .emit();
    Ok(json!({
        "tenant": tenant,
        "contact_id": contact,
        "exported_at": crate::event::rfc3339(OffsetDateTime::now_utc()),
        "conversations": conversations,
        "messages": messages,
        "statuses": statuses,
        "deliveries": deliveries,
        "assignments": assignments,
        "dead_letters": dead_letters,
    }))
}

/// What one retention run deleted, per tenant (age) and per disconnected source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetentionReport {
    pub tenants: Vec<(String, u64)>,
    pub sources: Vec<(String, u64)>,
}

/// Tables with history, and the column their age is measured by.
const AGED: &[(&str, &str)] = &[
    ("messages", "received_at"),
    ("message_statuses", "received_at"),
    ("deliveries", "updated_at"),
    ("assignments", "at"),
    ("conversations", "COALESCE(last_message_at, updated_at)"),
];

/// One run of the retention job at `now` (a parameter so tests can run it in the future):
/// each tenant's history older than its `retention_days`, and everything of a source that
/// has not been in the configuration for `disconnected_source_retention_days`.
pub async fn run_retention(
    pg: &Postgres,
    now: OffsetDateTime,
) -> Result<RetentionReport, PersistError> {
    let s = pg.settings();
    let mut report = RetentionReport::default();
    let mut client = pg.client().await?;
    // config.toml tenants' retention, then that of tenants created through the admin API
    // (read each run, so a change applies without restart; ids never overlap: the API
    // refuses config tenants).
    let mut tenants: Vec<(String, u32)> = s
        .tenant_retention_days
        .iter()
        .map(|(t, d)| (t.clone(), *d))
        .collect();
    for row in client
        .query(
            "SELECT id, retention_days FROM tenants WHERE retention_days IS NOT NULL",
            &[],
        )
        .await?
    {
        let id: String = row.get(0);
        if !s.tenant_retention_days.contains_key(&id) {
            tenants.push((id, row.get::<_, i32>(1) as u32));
        }
    }
    tenants.sort();
    for (tenant, days) in &tenants {
        let cutoff = now - time::Duration::days(i64::from(*days));
        let tx = client.transaction().await?;
        let mut total = 0;
        let mut per_table = serde_json::Map::new();
        for (table, col) in AGED {
            let n = tx
                .execute(
                    &format!("DELETE FROM {table} WHERE tenant = $1 AND {col} < $2"),
                    &[tenant, &cutoff],
                )
                .await?;
            per_table.insert((*table).into(), n.into());
            total += n;
        }
        if total > 0 {
            audit(
                &*tx,
                "retention",
                Some(tenant),
                "retention.tenant",
                &format!("tenant:{tenant}"),
                None,
                Some(json!({"retention_days": days, "older_than": crate::event::rfc3339(cutoff), "deleted": per_table})),
            )
            .await?;
        }
        tx.commit().await?;
        report.tenants.push((tenant.clone(), total));
    }

    // Sources: configured ones are connected; ones seen in the history but no longer
    // configured are disconnected from the first run that notices.
    let mut configured: Vec<String> = s.sources.keys().cloned().collect();
    let mut providers: Vec<String> = configured
        .iter()
        .map(|id| s.sources[id].to_string())
        .collect();
    // Sources created through the admin API are connected too, unless disabled.
    for row in client
        .query(
            "SELECT id, provider FROM admin_sources WHERE NOT disabled",
            &[],
        )
        .await?
    {
        let id: String = row.get(0);
        if !configured.contains(&id) {
            configured.push(id);
            providers.push(row.get(1));
        }
    }
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO sources (source, provider, first_seen_at, last_seen_at)
         SELECT u.source, u.provider, $3, $3 FROM UNNEST($1::text[], $2::text[]) AS u(source, provider)
         ON CONFLICT (source) DO UPDATE SET provider = EXCLUDED.provider,
             last_seen_at = EXCLUDED.last_seen_at, disconnected_at = NULL",
        &[&configured, &providers, &now],
    )
    .await?;
    tx.execute(
        "INSERT INTO sources (source, provider, first_seen_at, last_seen_at, disconnected_at)
         SELECT DISTINCT source, provider, $2::timestamptz, $2::timestamptz, $2::timestamptz
         FROM conversations WHERE source <> ALL($1)
         ON CONFLICT (source) DO NOTHING",
        &[&configured, &now],
    )
    .await?;
    tx.execute(
        "UPDATE sources SET disconnected_at = $2
         WHERE disconnected_at IS NULL AND source <> ALL($1)",
        &[&configured, &now],
    )
    .await?;
    let cutoff = now - time::Duration::days(i64::from(s.disconnected_source_retention_days));
    let gone: Vec<String> = tx
        .query(
            "SELECT source FROM sources WHERE disconnected_at IS NOT NULL AND disconnected_at < $1
             ORDER BY source",
            &[&cutoff],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await?;
    for source in gone {
        let tx = client.transaction().await?;
        let mut total = 0;
        let mut per_table = serde_json::Map::new();
        for (table, _) in AGED {
            let n = tx
                .execute(
                    &format!("DELETE FROM {table} WHERE source = $1"),
                    &[&source],
                )
                .await?;
            per_table.insert((*table).into(), n.into());
            total += n;
        }
        if total > 0 {
            audit(
                &*tx,
                "retention",
                None,
                "retention.disconnected_source",
                &format!("source:{source}"),
                None,
                Some(json!({"retention_days": s.disconnected_source_retention_days, "deleted": per_table})),
            )
            .await?;
        }
        tx.commit().await?;
        report.sources.push((source, total));
    }
    PrivacyOperation {
        op: "retention",
        outcome: "ok",
    }
    .emit();
    Ok(report)
}

/// A Meta data deletion request, as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeletionStatus {
    pub confirmation_code: String,
    pub status: String,
    pub requested_at: String,
    pub completed_at: Option<String>,
}

/// Records a data deletion request for a Meta app-scoped user id and carries it out:
/// the contact with that id is erased in every tenant the source serves, by `erase`
/// (actor, tenant, contact): the caller's whole erasure, [`erase_contact`] and what the
/// layers above keep (push delivery queues), the same as for `DELETE .../contacts/{c}`.
/// Returns the confirmation code.
///
/// Meta's `user_id` here is app-scoped (the id the app sees through Facebook Login); the
/// ids on messaging webhooks (PSID, IGSID, WhatsApp numbers) are different namespaces, so
/// this finds the contact only where both are the same. The request and its outcome are
/// kept either way, for the status URL and the audit log.
pub async fn deletion_request(
    pg: &Postgres,
    source: &str,
    tenants: &[String],
    user_id: &str,
    erase: impl AsyncFn(&str, &str, &str) -> Result<Erased, PersistError>,
) -> Result<String, PersistError> {
    let code = uuid::Uuid::new_v4().simple().to_string();
    let user_hash = short_hash(format!("{source}\n{user_id}").as_bytes());
    {
        let client = pg.client().await?;
        client
            .execute(
                "INSERT INTO deletion_requests (confirmation_code, source, user_hash, status)
                 VALUES ($1, $2, $3, 'received')",
                &[&code, &source, &user_hash],
            )
            .await?;
    }
    let mut erased = serde_json::Map::new();
    let actor = format!("meta:{source}");
    for tenant in tenants {
        let e = erase(&actor, tenant, user_id).await?;
        erased.insert(
            tenant.clone(),
            serde_json::to_value(e).unwrap_or(Value::Null),
        );
    }
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE deletion_requests SET status = 'completed', completed_at = now(), detail = $2
         WHERE confirmation_code = $1",
        &[&code, &Value::Object(erased.clone())],
    )
    .await?;
    audit(
        &*tx,
        &actor,
        None,
        "meta.data_deletion",
        &format!("deletion_request:{code}"),
        None,
        Some(json!({"status": "completed", "user": user_hash, "erased": erased})),
    )
    .await?;
    tx.commit().await?;
    PrivacyOperation {
        op: "data_deletion",
        outcome: "ok",
    }
    .emit();
    Ok(code)
}

/// The stored request of `code` for `source`, if any.
pub async fn deletion_status(
    pg: &Postgres,
    source: &str,
    code: &str,
) -> Result<Option<DeletionStatus>, PersistError> {
    let client = pg.client().await?;
    let row = client
        .query_opt(
            "SELECT confirmation_code, status, requested_at, completed_at FROM deletion_requests
             WHERE confirmation_code = $1 AND source = $2",
            &[&code, &source],
        )
        .await?;
    Ok(row.map(|r| DeletionStatus {
        confirmation_code: r.get(0),
        status: r.get(1),
        requested_at: crate::event::rfc3339(r.get(2)),
        completed_at: r
            .get::<_, Option<OffsetDateTime>>(3)
            .map(crate::event::rfc3339),
    }))
}

#[cfg(test)]
mod tests {
    use super::mentions;

    #[test]
    fn an_id_is_mentioned_only_as_a_whole_token() {
        assert!(mentions(r#"{"wa_id":"16505551234"}"#, "16505551234"));
        assert!(mentions("From=+16505551234&Body=hi", "16505551234"));
        assert!(!mentions(r#"{"wa_id":"116505551234"}"#, "16505551234"));
        assert!(!mentions(r#"{"ts":"165055512345"}"#, "16505551234"));
        assert!(!mentions("é16505551234 ", "16505551234"));
        assert!(mentions("x 16505551234", "16505551234"));
        assert!(!mentions("", "1"));
    }
}
