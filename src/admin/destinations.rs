//! Destinations created through the API (`admin_destinations`, migrations/0005_delivery.sql):
//! reads and writes, each inside the caller's transaction (which appends the audit row and
//! bumps the change counter). The signing secret is stored sealed; [`DestinationRow::public`]
//! never shows it.

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use crate::config::delivery::DestinationConfig;
use crate::crypto::{MasterKeys, Sealed, Secret};
use crate::persist::PersistError;

/// Associated data of a destination's sealed secret: a ciphertext copied to another row
/// does not decrypt.
pub fn destination_aad(tenant: &str, id: &str) -> String {
    format!("switchboard:destination:{tenant}:{id}")
}

/// A stored API destination (secret still sealed).
#[derive(Debug, Clone)]
pub struct DestinationRow {
    pub tenant: String,
    pub id: String,
    pub url: String,
    pub kinds: Vec<String>,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub requests_per_sec: Option<i32>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub sealed: Sealed,
    pub secret_rotated_at: String,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl DestinationRow {
    /// What the API and the audit log show: never the secret, only that it is set, when it
    /// last changed and which master key protects it.
    pub fn public(&self) -> Value {
        json!({
            "id": self.id,
            "tenant": self.tenant,
            "origin": "api",
            "url": self.url,
            "kinds": self.kinds,
            "timeout_ms": self.timeout_ms,
            "max_in_flight": self.max_in_flight,
            "requests_per_sec": self.requests_per_sec,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "secret_set": true,
            "secret_rotated_at": self.secret_rotated_at,
            "secret_key_id": self.sealed.key_id,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// The destination as the worker delivers to it, its secret decrypted.
    pub fn open(&self, keys: &MasterKeys) -> Result<DestinationConfig, String> {
        let plain = keys
            .open(&self.sealed, &destination_aad(&self.tenant, &self.id))
            .map_err(|e| e.to_string())?;
        let secret = String::from_utf8(plain).map_err(|_| "secret unreadable".to_string())?;
        let kinds = self
            .kinds
            .iter()
            .map(|k| serde_json::from_value(Value::String(k.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "stored kinds no longer parse".to_string())?;
        Ok(DestinationConfig {
            url: self.url.clone(),
            kinds,
            secret: Secret::new(secret),
            timeout_ms: self.timeout_ms.max(1) as u64,
            max_in_flight: self.max_in_flight.max(1) as u32,
            requests_per_sec: self.requests_per_sec.map(|r| r.max(1) as u32),
            enabled: self.enabled,
        })
    }
}

const COLS: &str = "tenant, id, url, kinds, timeout_ms, max_in_flight, requests_per_sec, enabled, disabled_reason, secret_key_id, secret_nonce, secret_ciphertext, secret_rotated_at, created_by, created_at, updated_at";

fn ts(t: OffsetDateTime) -> String {
    crate::event::rfc3339(t)
}

fn row(r: &tokio_postgres::Row) -> DestinationRow {
    DestinationRow {
        tenant: r.get(0),
        id: r.get(1),
        url: r.get(2),
        kinds: r.get(3),
        timeout_ms: r.get(4),
        max_in_flight: r.get(5),
        requests_per_sec: r.get(6),
        enabled: r.get(7),
        disabled_reason: r.get(8),
        sealed: Sealed {
            key_id: r.get(9),
            nonce: r.get(10),
            ciphertext: r.get(11),
        },
        secret_rotated_at: ts(r.get(12)),
        created_by: r.get(13),
        created_at: ts(r.get(14)),
        updated_at: ts(r.get(15)),
    }
}

/// Every API destination (the reload, the master key rotation).
pub async fn all(c: &impl GenericClient) -> Result<Vec<DestinationRow>, PersistError> {
    Ok(c.query(
        &format!("SELECT {COLS} FROM admin_destinations ORDER BY tenant, id"),
        &[],
    )
    .await?
    .iter()
    .map(row)
    .collect())
}

pub async fn of_tenant(
    c: &impl GenericClient,
    tenant: &str,
) -> Result<Vec<DestinationRow>, PersistError> {
    Ok(c.query(
        &format!("SELECT {COLS} FROM admin_destinations WHERE tenant = $1 ORDER BY id"),
        &[&tenant],
    )
    .await?
    .iter()
    .map(row)
    .collect())
}

/// One destination (`lock`: FOR UPDATE, inside a change).
pub async fn get(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<Option<DestinationRow>, PersistError> {
    let sql = format!(
        "SELECT {COLS} FROM admin_destinations WHERE tenant = $1 AND id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(c.query_opt(&sql, &[&tenant, &id]).await?.as_ref().map(row))
}

/// The settings of a destination as stored (everything but the secret).
pub struct Settings<'a> {
    pub url: &'a str,
    pub kinds: Vec<String>,
    pub timeout_ms: i32,
    pub max_in_flight: i32,
    pub requests_per_sec: Option<i32>,
    pub enabled: bool,
}

/// Inserts a destination; false when (tenant, id) exists.
pub async fn insert(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
    s: &Settings<'_>,
    sealed: &Sealed,
    actor: &str,
) -> Result<bool, PersistError> {
    Ok(c.execute(
        "INSERT INTO admin_destinations (tenant, id, url, kinds, timeout_ms, max_in_flight,
             requests_per_sec, enabled, secret_key_id, secret_nonce, secret_ciphertext, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (tenant, id) DO NOTHING",
        &[
            &tenant,
            &id,
            &s.url,
            &s.kinds,
            &s.timeout_ms,
            &s.max_in_flight,
            &s.requests_per_sec,
            &s.enabled,
            &sealed.key_id,
            &sealed.nonce,
            &sealed.ciphertext,
            &actor,
        ],
    )
    .await?
        == 1)
}

/// New settings (an operator's change clears the gateway's disabled reason).
pub async fn update(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
    s: &Settings<'_>,
) -> Result<(), PersistError> {
    c.execute(
        "UPDATE admin_destinations SET url = $3, kinds = $4, timeout_ms = $5, max_in_flight = $6,
             requests_per_sec = $7, enabled = $8, disabled_reason = NULL, updated_at = now()
         WHERE tenant = $1 AND id = $2",
        &[
            &tenant,
            &id,
            &s.url,
            &s.kinds,
            &s.timeout_ms,
            &s.max_in_flight,
            &s.requests_per_sec,
            &s.enabled,
        ],
    )
    .await?;
    Ok(())
}

/// A new sealed secret (`rotated`: the secret changed, not only its encryption).
pub async fn update_secret(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
    sealed: &Sealed,
    rotated: bool,
) -> Result<(), PersistError> {
    c.execute(
        "UPDATE admin_destinations SET secret_key_id = $3, secret_nonce = $4,
             secret_ciphertext = $5,
             secret_rotated_at = CASE WHEN $6 THEN now() ELSE secret_rotated_at END,
             updated_at = now()
         WHERE tenant = $1 AND id = $2",
        &[
            &tenant,
            &id,
            &sealed.key_id,
            &sealed.nonce,
            &sealed.ciphertext,
            &rotated,
        ],
    )
    .await?;
    Ok(())
}

/// Disabled by the gateway (410 Gone, failing too long), with the reason.
pub async fn disable(
    c: &impl GenericClient,
    tenant: &str,
    id: &str,
    reason: &str,
) -> Result<bool, PersistError> {
    Ok(c.execute(
        "UPDATE admin_destinations SET enabled = false, disabled_reason = $3, updated_at = now()
         WHERE tenant = $1 AND id = $2 AND enabled",
        &[&tenant, &id, &reason],
    )
    .await?
        == 1)
}

/// Deletes a destination and every attempt recorded for it.
pub async fn delete(c: &impl GenericClient, tenant: &str, id: &str) -> Result<u64, PersistError> {
    c.execute(
        "DELETE FROM delivery_attempts WHERE tenant = $1 AND destination = $2",
        &[&tenant, &id],
    )
    .await?;
    Ok(c.execute(
        "DELETE FROM admin_destinations WHERE tenant = $1 AND id = $2",
        &[&tenant, &id],
    )
    .await?)
}
