//! Schema migrations: the numbered SQL files of `migrations/`, compiled into the binary and
//! applied in order by `switchboard migrate` (or at start with `migrate_on_start`).
//!
//! Each migration runs in its own transaction together with its row in
//! `schema_migrations`, so it is applied entirely or not at all; a transaction-scoped
//! advisory lock makes concurrent migrators (several replicas starting at once) take turns,
//! and the second finds nothing left to do. A migration already applied whose text has
//! changed since is an error: the database would not match what this build expects.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::PersistError;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A new file in `migrations/` must be listed here (a unit test
/// checks that the two agree).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_history.sql",
        sql: include_str!("../../migrations/0001_history.sql"),
    },
    Migration {
        version: 2,
        name: "0002_privacy.sql",
        sql: include_str!("../../migrations/0002_privacy.sql"),
    },
    Migration {
        version: 3,
        name: "0003_admin.sql",
        sql: include_str!("../../migrations/0003_admin.sql"),
    },
    Migration {
        version: 4,
        name: "0004_tenant_retention.sql",
        sql: include_str!("../../migrations/0004_tenant_retention.sql"),
    },
    Migration {
        version: 5,
        name: "0005_delivery.sql",
        sql: include_str!("../../migrations/0005_delivery.sql"),
    },
];

/// First key of the advisory lock (the second is the schema's hash): "sb" in ASCII.
const LOCK_CLASS: i32 = 0x7362;

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies what is missing in `schema` (created when absent); returns the versions applied.
/// `schema` must be a validated name ([`crate::config::postgres::valid_schema`]): it is
/// written into the SQL unquoted.
pub async fn run(client: &mut Client, schema: &str) -> Result<Vec<i32>, PersistError> {
    if !crate::config::postgres::valid_schema(schema) {
        return Err(PersistError::Config(format!(
            "invalid schema name {schema:?}"
        )));
    }
    {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await?;
        // Created only when absent: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege
        // on the database even when the schema exists, and a least-privilege owner role
        // (docs/security.md) is given its schema instead.
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await?
            .get(0);
        if !exists {
            tx.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        }
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 checksum   text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await?;
        tx.commit().await?;
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .await?;
        // The migration's statements are unqualified: they land in the session's
        // search_path, pinned here to the schema whatever the connection said.
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema}"))
            .await?;
        let done = tx
            .query_opt(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?;
        let sum = checksum(m.sql);
        match done {
            Some(row) => {
                let recorded: String = row.get(0);
                if recorded != sum {
                    return Err(PersistError::Migration {
                        version: m.version,
                        name: m.name,
                        why: "it was changed after it was applied (checksum differs); add a new migration instead".into(),
                    });
                }
                tx.rollback().await?;
            }
            None => {
                tx.batch_execute(m.sql)
                    .await
                    .map_err(|e| PersistError::Migration {
                        version: m.version,
                        name: m.name,
                        why: e
                            .as_db_error()
                            .map_or_else(|| e.to_string(), |d| d.message().to_string()),
                    })?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &sum],
                )
                .await?;
                tx.commit().await?;
                applied.push(m.version);
            }
        }
    }
    Ok(applied)
}

/// Grants `role` what the gateway needs in `schema` ([`super::roles::grant_sql`]), under
/// the migrations' advisory lock, in one transaction. The connection must be the owner's.
pub async fn grant_runtime(
    client: &mut Client,
    schema: &str,
    role: &str,
) -> Result<(), PersistError> {
    let sql = super::roles::grant_sql(schema, role).map_err(PersistError::Config)?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &schema],
    )
    .await?;
    tx.batch_execute(&sql).await.map_err(|e| {
        PersistError::Config(format!(
            "granting postgres.runtime_role {role:?} its privileges: {}",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        ))
    })?;
    tx.commit().await?;
    Ok(())
}

/// The versions recorded as applied in `schema` (empty when nothing was ever migrated).
pub async fn applied(client: &Client, schema: &str) -> Result<Vec<i32>, PersistError> {
    if !crate::config::postgres::valid_schema(schema) {
        return Err(PersistError::Config(format!(
            "invalid schema name {schema:?}"
        )));
    }
    let exists = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_migrations")],
        )
        .await?;
    if !exists.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations ORDER BY version"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_migrations_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
