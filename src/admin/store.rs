//! The admin tables (`migrations/0003_admin.sql`): reads and writes. Every write runs in a
//! transaction that also bumps `admin_changes` and appends its `audit_log` row, so a change
//! without its audit row (or the reverse) cannot be committed.

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use super::{KeyRecord, KeyRole, TenantRow};
use crate::crypto::Sealed;
use crate::persist::PersistError;

pub fn source_aad(id: &str) -> String {
    format!("switchboard:source:{id}")
}

fn ts(t: OffsetDateTime) -> String {
    crate::event::rfc3339(t)
}

pub async fn change_version(c: &impl GenericClient) -> Result<i64, PersistError> {
    Ok(
        c.query_one("SELECT version FROM admin_changes WHERE id = 1", &[])
            .await?
            .get(0),
    )
}

/// Bumps the change counter (inside the change's transaction).
pub async fn bump(c: &impl GenericClient) -> Result<i64, PersistError> {
    Ok(c.query_one(
        "UPDATE admin_changes SET version = version + 1 WHERE id = 1 RETURNING version",
        &[],
    )
    .await?
    .get(0))
}

/// A stored API source (secrets still sealed).
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub id: String,
    pub tenant: String,
    pub provider: String,
    pub settings: Value,
    pub sealed: Sealed,
    pub secret_count: i32,
    pub secret_rotated_at: String,
    pub disabled: bool,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl SourceRow {
    /// What the API shows: never the secrets, only that they are set, how many values,
    /// when they last changed and which master key protects them.
    pub fn public(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "tenant": self.tenant,
            "provider": self.provider,
            "origin": "api",
            "settings": self.settings,
            "disabled": self.disabled,
            "secret_set": true,
            "secret_count": self.secret_count,
            "secret_rotated_at": self.secret_rotated_at,
            "secret_key_id": self.sealed.key_id,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

const SOURCE_COLS: &str = "id, tenant, provider, settings, secret_key_id, secret_nonce, secret_ciphertext, secret_count, secret_rotated_at, disabled, created_by, created_at, updated_at";

fn source_row(r: &tokio_postgres::Row) -> SourceRow {
    SourceRow {
        id: r.get(0),
        tenant: r.get(1),
        provider: r.get(2),
        settings: r.get(3),
        sealed: Sealed {
            key_id: r.get(4),
            nonce: r.get(5),
            ciphertext: r.get(6),
        },
        secret_count: r.get(7),
        secret_rotated_at: ts(r.get(8)),
        disabled: r.get(9),
        created_by: r.get(10),
        created_at: ts(r.get(11)),
        updated_at: ts(r.get(12)),
    }
}

const TENANT_COLS: &str = "id, name, disabled, created_by, created_at, updated_at, retention_days";

fn tenant_row(r: &tokio_postgres::Row) -> TenantRow {
    TenantRow {
        id: r.get(0),
        name: r.get(1),
        disabled: r.get(2),
        created_by: r.get(3),
        created_at: ts(r.get(4)),
        updated_at: ts(r.get(5)),
        retention_days: r.get::<_, Option<i32>>(6).map(|d| d as u32),
    }
}

/// An API key as listed (never its hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub prefix: String,
    pub name: Option<String>,
    pub role: KeyRole,
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub requests_per_sec: Option<u32>,
    pub burst: Option<u32>,
    pub created_by: String,
    pub created_at: String,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<String>,
}

const KEY_COLS: &str = "id, prefix, name, role, tenant, agent, requests_per_sec, burst, created_by, created_at, revoked_by, revoked_at, token_hash";

fn key_info(r: &tokio_postgres::Row) -> KeyInfo {
    KeyInfo {
        id: r.get(0),
        prefix: r.get(1),
        name: r.get(2),
        role: KeyRole::parse(r.get::<_, &str>(3)).unwrap_or(KeyRole::Viewer),
        tenant: r.get(4),
        agent: r.get(5),
        requests_per_sec: r.get::<_, Option<i32>>(6).map(|v| v as u32),
        burst: r.get::<_, Option<i32>>(7).map(|v| v as u32),
        created_by: r.get(8),
        created_at: ts(r.get(9)),
        revoked_by: r.get(10),
        revoked_at: r.get::<_, Option<OffsetDateTime>>(11).map(ts),
    }
}

pub struct Snapshot {
    pub tenants: Vec<TenantRow>,
    pub sources: Vec<SourceRow>,
    pub keys: Vec<([u8; 32], KeyRecord)>,
}

/// Everything the request path needs (active keys only).
pub async fn load(c: &impl GenericClient) -> Result<Snapshot, PersistError> {
    let tenants = c
        .query(&format!("SELECT {TENANT_COLS} FROM tenants"), &[])
        .await?
        .iter()
        .map(tenant_row)
        .collect();
    let sources = c
        .query(&format!("SELECT {SOURCE_COLS} FROM admin_sources"), &[])
        .await?
        .iter()
        .map(source_row)
        .collect();
    let keys = c
        .query(
            &format!("SELECT {KEY_COLS} FROM api_keys WHERE revoked_at IS NULL"),
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let hash: Vec<u8> = r.get(12);
            let hash: [u8; 32] = hash.try_into().ok()?;
            let k = key_info(r);
            Some((
                hash,
                KeyRecord {
                    id: k.id,
                    prefix: k.prefix,
                    role: k.role,
                    tenant: k.tenant,
                    agent: k.agent,
                    requests_per_sec: k.requests_per_sec,
                    burst: k.burst,
                },
            ))
        })
        .collect();
    Ok(Snapshot {
        tenants,
        sources,
        keys,
    })
}

// --- tenants ---

pub async fn tenant(c: &impl GenericClient, id: &str) -> Result<Option<TenantRow>, PersistError> {
    Ok(c.query_opt(
        &format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(tenant_row))
}

pub async fn tenants(c: &impl GenericClient) -> Result<Vec<TenantRow>, PersistError> {
    Ok(c.query(
        &format!("SELECT {TENANT_COLS} FROM tenants ORDER BY id"),
        &[],
    )
    .await?
    .iter()
    .map(tenant_row)
    .collect())
}

/// Inserts; `false` when the id is taken.
pub async fn insert_tenant(
    c: &impl GenericClient,
    id: &str,
    name: Option<&str>,
    retention_days: Option<u32>,
    actor: &str,
) -> Result<bool, PersistError> {
    let days = retention_days.map(|d| d as i32);
    Ok(c.execute(
        "INSERT INTO tenants (id, name, retention_days, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
        &[&id, &name, &days, &actor],
    )
    .await?
        == 1)
}

pub async fn update_tenant(
    c: &impl GenericClient,
    id: &str,
    name: Option<&str>,
    disabled: bool,
    retention_days: Option<u32>,
) -> Result<(), PersistError> {
    let days = retention_days.map(|d| d as i32);
    c.execute(
        "UPDATE tenants SET name = $2, disabled = $3, retention_days = $4, updated_at = now()
         WHERE id = $1",
        &[&id, &name, &disabled, &days],
    )
    .await?;
    Ok(())
}

pub async fn delete_tenant(c: &impl GenericClient, id: &str) -> Result<(), PersistError> {
    c.execute("DELETE FROM tenants WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

pub async fn tenant_source_count(c: &impl GenericClient, id: &str) -> Result<i64, PersistError> {
    Ok(c.query_one(
        "SELECT count(*) FROM admin_sources WHERE tenant = $1",
        &[&id],
    )
    .await?
    .get(0))
}

// --- sources ---

pub async fn source(c: &impl GenericClient, id: &str) -> Result<Option<SourceRow>, PersistError> {
    Ok(c.query_opt(
        &format!("SELECT {SOURCE_COLS} FROM admin_sources WHERE id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(source_row))
}

/// Locks the row for the rest of the transaction.
pub async fn source_for_update(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<SourceRow>, PersistError> {
    Ok(c.query_opt(
        &format!("SELECT {SOURCE_COLS} FROM admin_sources WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(source_row))
}

pub async fn sources_of(
    c: &impl GenericClient,
    tenant: &str,
) -> Result<Vec<SourceRow>, PersistError> {
    Ok(c.query(
        &format!("SELECT {SOURCE_COLS} FROM admin_sources WHERE tenant = $1 ORDER BY id"),
        &[&tenant],
    )
    .await?
    .iter()
    .map(source_row)
    .collect())
}

pub async fn all_sources(c: &impl GenericClient) -> Result<Vec<SourceRow>, PersistError> {
    Ok(c.query(
        &format!("SELECT {SOURCE_COLS} FROM admin_sources ORDER BY id FOR UPDATE"),
        &[],
    )
    .await?
    .iter()
    .map(source_row)
    .collect())
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_source(
    c: &impl GenericClient,
    id: &str,
    tenant: &str,
    provider: &str,
    settings: &Value,
    sealed: &Sealed,
    secret_count: i32,
    actor: &str,
) -> Result<bool, PersistError> {
    Ok(c.execute(
        "INSERT INTO admin_sources (id, tenant, provider, settings, secret_key_id, secret_nonce,
                 secret_ciphertext, secret_count, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        &[
            &id,
            &tenant,
            &provider,
            settings,
            &sealed.key_id,
            &sealed.nonce,
            &sealed.ciphertext,
            &secret_count,
            &actor,
        ],
    )
    .await?
        == 1)
}

pub async fn update_source_settings(
    c: &impl GenericClient,
    id: &str,
    settings: &Value,
    disabled: bool,
) -> Result<(), PersistError> {
    c.execute(
        "UPDATE admin_sources SET settings = $2, disabled = $3, updated_at = now() WHERE id = $1",
        &[&id, settings, &disabled],
    )
    .await?;
    Ok(())
}

/// New secrets (`rotated`: they changed, not only their encryption).
pub async fn update_source_secret(
    c: &impl GenericClient,
    id: &str,
    sealed: &Sealed,
    secret_count: i32,
    rotated: bool,
) -> Result<(), PersistError> {
    c.execute(
        "UPDATE admin_sources SET secret_key_id = $2, secret_nonce = $3, secret_ciphertext = $4,
             secret_count = $5,
             secret_rotated_at = CASE WHEN $6 THEN now() ELSE secret_rotated_at END,
             updated_at = now()
         WHERE id = $1",
        &[
            &id,
            &sealed.key_id,
            &sealed.nonce,
            &sealed.ciphertext,
            &secret_count,
            &rotated,
        ],
    )
    .await?;
    Ok(())
}

// --- API keys ---

#[allow(clippy::too_many_arguments)]
pub async fn insert_key(
    c: &impl GenericClient,
    id: &str,
    prefix: &str,
    hash: &[u8; 32],
    name: Option<&str>,
    role: KeyRole,
    tenant: Option<&str>,
    agent: Option<&str>,
    requests_per_sec: Option<u32>,
    burst: Option<u32>,
    actor: &str,
) -> Result<KeyInfo, PersistError> {
    let row = c
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, prefix, token_hash, name, role, tenant, agent,
                     requests_per_sec, burst, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {KEY_COLS}"
            ),
            &[
                &id,
                &prefix,
                &hash.as_slice(),
                &name,
                &role.as_str(),
                &tenant,
                &agent,
                &requests_per_sec.map(|v| v as i32),
                &burst.map(|v| v as i32),
                &actor,
            ],
        )
        .await?;
    Ok(key_info(&row))
}

pub async fn keys(c: &impl GenericClient) -> Result<Vec<KeyInfo>, PersistError> {
    Ok(c.query(
        &format!("SELECT {KEY_COLS} FROM api_keys ORDER BY created_at, id"),
        &[],
    )
    .await?
    .iter()
    .map(key_info)
    .collect())
}

pub async fn key_for_update(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<KeyInfo>, PersistError> {
    Ok(c.query_opt(
        &format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(key_info))
}

pub async fn revoke_key(c: &impl GenericClient, id: &str, actor: &str) -> Result<(), PersistError> {
    c.execute(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $2 WHERE id = $1 AND revoked_at IS NULL",
        &[&id, &actor],
    )
    .await?;
    Ok(())
}

// --- routing rule set history ---

pub async fn insert_ruleset(
    c: &impl GenericClient,
    tenant: &str,
    version: i64,
    body: &Value,
    actor: &str,
) -> Result<(), PersistError> {
    c.execute(
        "INSERT INTO routing_rule_sets (tenant, version, body, created_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, version) DO NOTHING",
        &[&tenant, &version, body, &actor],
    )
    .await?;
    Ok(())
}

pub async fn rulesets(c: &impl GenericClient, tenant: &str) -> Result<Vec<Value>, PersistError> {
    Ok(c.query(
        "SELECT version, created_by, created_at FROM routing_rule_sets WHERE tenant = $1
             ORDER BY version DESC",
        &[&tenant],
    )
    .await?
    .iter()
    .map(|r| {
        serde_json::json!({
            "version": r.get::<_, i64>(0),
            "created_by": r.get::<_, String>(1),
            "created_at": ts(r.get(2)),
        })
    })
    .collect())
}

pub async fn ruleset(
    c: &impl GenericClient,
    tenant: &str,
    version: i64,
) -> Result<Option<Value>, PersistError> {
    Ok(c.query_opt(
        "SELECT version, created_by, created_at, body FROM routing_rule_sets
             WHERE tenant = $1 AND version = $2",
        &[&tenant, &version],
    )
    .await?
    .map(|r| {
        serde_json::json!({
            "tenant": tenant,
            "version": r.get::<_, i64>(0),
            "created_by": r.get::<_, String>(1),
            "created_at": ts(r.get(2)),
            "routing": r.get::<_, Value>(3),
        })
    }))
}

// --- audit log ---

/// Rows newest first, optionally of one tenant, below id `before`.
pub async fn audit_rows(
    c: &impl GenericClient,
    tenant: Option<&str>,
    action_prefix: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, PersistError> {
    let prefix = action_prefix.map(|p| format!("{p}%"));
    Ok(c.query(
        "SELECT id, at, actor, tenant, action, target, before, after FROM audit_log
             WHERE ($1::text IS NULL OR tenant = $1)
               AND ($2::text IS NULL OR action LIKE $2)
               AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4",
        &[&tenant, &prefix, &before, &limit],
    )
    .await?
    .iter()
    .map(|r| {
        serde_json::json!({
            "id": r.get::<_, i64>(0),
            "at": ts(r.get(1)),
            "actor": r.get::<_, String>(2),
            "tenant": r.get::<_, Option<String>>(3),
            "action": r.get::<_, String>(4),
            "target": r.get::<_, String>(5),
            "before": r.get::<_, Option<Value>>(6),
            "after": r.get::<_, Option<Value>>(7),
        })
    })
    .collect())
}
