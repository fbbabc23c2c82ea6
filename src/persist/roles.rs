//! Least privilege in PostgreSQL (docs/security.md, "Database roles"): an owner role that
//! runs the migrations and owns the schema and its tables, and a runtime role the gateway
//! connects as, which can read and write the history and admin tables but only INSERT into
//! (and read) the audit log, and can change no table, trigger or function.
//!
//! Why two roles: the audit log refuses UPDATE, DELETE and TRUNCATE with triggers, but a
//! table's owner can disable its triggers and drop it, and a superuser can also skip
//! triggers for a session (`SET session_replication_role = replica`). The runtime role is
//! neither, so from the gateway's connection no audit row can be removed or changed.
//!
//! [`setup_sql`] is what a superuser runs once (`switchboard db-roles` prints it);
//! [`grant_sql`] is what every migration run applies for `postgres.runtime_role`.

use crate::config::postgres::valid_schema;

/// The SQL that creates the two roles (without passwords: set them with `\password` or
/// `ALTER ROLE ... PASSWORD`), gives the schema to the owner and lets both connect to
/// `database`. Names must be valid identifiers ([`valid_schema`] rules; checked).
pub fn setup_sql(
    database: &str,
    schema: &str,
    owner: &str,
    runtime: &str,
) -> Result<String, String> {
    for (what, name) in [("schema", schema), ("owner", owner), ("runtime", runtime)] {
        if !valid_schema(name) {
            return Err(format!(
                "{what} {name:?}: use lower case letters, digits and '_' (not starting with a digit, at most 63)"
            ));
        }
    }
    if owner == runtime {
        return Err("the owner and the runtime role must differ".into());
    }
    let db = quote_ident(database);
    let schema_sql = if schema == "public" {
        // The public schema exists and belongs to the database owner: let the owner role
        // create in it, and nobody else.
        format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n\
             GRANT USAGE, CREATE ON SCHEMA public TO {owner};"
        )
    } else {
        format!("CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner};")
    };
    Ok(format!(
        "-- switchboard: least-privilege roles for database {database}, schema {schema}.
-- Run once as a superuser (psql -d {database} -f roles.sql), then set the passwords:
--   ALTER ROLE {owner} PASSWORD '...';  ALTER ROLE {runtime} PASSWORD '...';
-- and configure: postgres.migrate_url = postgres://{owner}:...@host/{database}
--                postgres.url         = postgres://{runtime}:...@host/{database}
--                postgres.runtime_role = \"{runtime}\"
-- The owner runs the migrations and owns every table; the runtime role gets its grants
-- from each migration run (switchboard migrate, or migrate_on_start).
CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE {runtime} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
GRANT CONNECT ON DATABASE {db} TO {owner}, {runtime};
{schema_sql}
"
    ))
}

/// What the runtime role may do in `schema`, applied (as the owner) after the migrations:
/// use the schema; read and write every table; on the audit log only read and insert; on
/// `schema_migrations` only read; use the sequences (the audit log's id). It owns nothing,
/// so it cannot ALTER, DROP or TRUNCATE a table, nor disable or drop a trigger.
pub fn grant_sql(schema: &str, role: &str) -> Result<String, String> {
    if !valid_schema(schema) || !valid_schema(role) {
        return Err(format!("invalid schema {schema:?} or role {role:?}"));
    }
    Ok(format!(
        "GRANT USAGE ON SCHEMA {schema} TO {role};
         REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};
         REVOKE INSERT, UPDATE, DELETE ON {schema}.schema_migrations FROM {role};
         REVOKE UPDATE, DELETE ON {schema}.audit_log FROM {role};
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};"
    ))
}

/// A database name as a quoted identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(setup_sql("db", "sb", "own", "run").is_ok());
        assert!(setup_sql("db", "sb", "own; DROP", "run").is_err());
        assert!(setup_sql("db", "sb", "same", "same").is_err());
        assert!(grant_sql("sb", "x y").is_err());
        assert!(setup_sql("we\"ird", "public", "own", "run")
            .unwrap()
            .contains("\"we\"\"ird\""));
    }
}
