//! `[postgres]`: PostgreSQL as the system of record for history (the persister), privacy
//! operations and retention. Off by default, so that the gateway runs without a database.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Run the persister, the retention job and the privacy endpoints.
    pub enabled: bool,
    /// libpq-style URL, e.g. `postgres://switchboard:pw@db:5432/switchboard`: the gateway's
    /// everyday connection. In production, a role that is not the tables' owner and not a
    /// superuser (docs/security.md, "Database roles").
    pub url: String,
    /// The connection `switchboard migrate` and `migrate_on_start` use: the role that owns
    /// the schema and its tables. Absent: `url` (one role for everything: development).
    pub migrate_url: Option<String>,
    /// The role `url` logs in as, when it is not the owner: every migration run ends by
    /// granting it exactly what the gateway needs (no UPDATE, DELETE or TRUNCATE on the
    /// audit log, nothing that alters a table), so a migration that adds a table keeps the
    /// grants right.
    pub runtime_role: Option<String>,
    /// Schema of every table (created by `switchboard migrate` when absent).
    pub schema: String,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Longest a statement may run before Postgres cancels it.
    pub statement_timeout_ms: u64,
    /// Apply pending migrations when the gateway starts (else run `switchboard migrate`).
    pub migrate_on_start: bool,
    /// Events stream entries read and written per batch.
    pub batch_size: usize,
    /// How long one read of the events stream waits for new entries.
    pub block_ms: u64,
    /// Entries a stopped or crashed persister left unacknowledged are taken over after this.
    pub claim_idle_ms: u64,
    /// Most events stream entries the persister may leave unstored; at the bound the router
    /// stops publishing (backpressure reaches the webhooks as 503 once the inbound backlog
    /// is full), so nothing is ever trimmed before it is stored.
    pub max_backlog: u64,
    /// How often the retention job runs.
    pub retention_interval_secs: u64,
    /// History of a source removed from the configuration is deleted this long after it
    /// disappeared.
    pub disconnected_source_retention_days: u32,
    /// Scheme and host the data deletion status URL is given with (Meta shows it to the
    /// user), e.g. `https://hooks.example.com`. Absent: taken from the request's Host.
    pub public_base_url: Option<String>,
}

pub fn defaults() -> PostgresConfig {
    PostgresConfig {
        enabled: false,
        url: "postgres://postgres@127.0.0.1:5432/switchboard".into(),
        migrate_url: None,
        runtime_role: None,
        schema: "public".into(),
        pool_size: 8,
        connect_timeout_ms: 2000,
        statement_timeout_ms: 30_000,
        migrate_on_start: false,
        batch_size: 500,
        block_ms: 1000,
        claim_idle_ms: 30_000,
        max_backlog: 1_000_000,
        retention_interval_secs: 3600,
        disconnected_source_retention_days: 30,
        public_base_url: None,
    }
}

/// A schema name used unquoted in SQL (`search_path`, `CREATE SCHEMA`): lower case letters,
/// digits and '_', not starting with a digit, at most 63 bytes.
pub fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// libpq's `sslmode`, with libpq's meaning (the default is `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is not checked, unless `sslrootcert` is given (then
    /// as `VerifyCa`, as libpq does).
    Require,
    /// TLS, the certificate signed by a trusted CA; any host name.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and naming the host connected to.
    VerifyFull,
}

/// Where the CA certificates of `verify-ca` / `verify-full` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// `sslrootcert` absent or `sslrootcert=system`: the operating system's roots.
    System,
    File(PathBuf),
}

/// The TLS parameters of `postgres.url` (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`),
/// which tokio-postgres does not read itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// Whether `sslrootcert` was given (libpq's `require` then verifies the CA).
    pub root_given: bool,
    pub root: RootCerts,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl PgTls {
    /// What is checked of the server's certificate: (CA, host name).
    pub fn verifies(&self) -> (bool, bool) {
        match self.mode {
            SslMode::Disable | SslMode::Prefer => (false, false),
            SslMode::Require => (self.root_given, false),
            SslMode::VerifyCa => (true, false),
            SslMode::VerifyFull => (true, true),
        }
    }
}

const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits `postgres.url` into the URL tokio-postgres reads (the TLS parameters removed, the
/// rest untouched) and its TLS parameters; an error names the parameter to fix.
pub fn split_tls(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut tls = PgTls {
        mode: SslMode::Prefer,
        root_given: false,
        root: RootCerts::System,
        cert: None,
        key: None,
    };
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let name = part.split_once('=').map_or(part, |(k, _)| k);
        if !TLS_PARAMS.contains(&name) {
            kept.push(part);
            continue;
        }
        let value = url::form_urlencoded::parse(part.as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        match name {
            "sslmode" => {
                tls.mode = match value.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "postgres.url: sslmode={other:?} is not supported: use disable, prefer, require, verify-ca or verify-full"
                        ))
                    }
                }
            }
            "sslrootcert" => {
                tls.root_given = true;
                tls.root = if value == "system" {
                    RootCerts::System
                } else {
                    RootCerts::File(PathBuf::from(value))
                };
            }
            "sslcert" => tls.cert = Some(PathBuf::from(value)),
            _ => tls.key = Some(PathBuf::from(value)),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

impl PostgresConfig {
    /// Checks, each naming the key. The URL and schema are checked even when disabled, so
    /// that `switchboard migrate` and a later enable do not fail on them.
    pub fn validate(&self, errs: &mut Vec<String>) {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.has_host() => {}
            _ => errs.push(format!(
                "postgres.url = {:?}: expected postgres://user[:password]@host[:port]/database",
                super::redact_url(&self.url)
            )),
        }
        match split_tls(&self.url) {
            Ok((rest, tls)) => {
                if rest.parse::<tokio_postgres::Config>().is_err() {
                    errs.push(format!(
                        "postgres.url = {:?}: not a connection string PostgreSQL accepts",
                        super::redact_url(&self.url)
                    ));
                }
                if let RootCerts::File(p) = &tls.root {
                    if let Err(e) = super::tls::read_certs("postgres.url sslrootcert", p) {
                        errs.push(e);
                    }
                }
                super::tls::check_pair(
                    "postgres.url sslcert",
                    tls.cert.as_deref(),
                    "postgres.url sslkey",
                    tls.key.as_deref(),
                    errs,
                );
                if tls.mode == SslMode::Disable && (tls.root_given || tls.cert.is_some()) {
                    errs.push("postgres.url: sslmode=disable with sslrootcert/sslcert: the certificates would not be used; remove them or use sslmode=verify-full".into());
                }
            }
            Err(e) => errs.push(e),
        }
        if let Some(m) = &self.migrate_url {
            let ok = url::Url::parse(m)
                .is_ok_and(|u| matches!(u.scheme(), "postgres" | "postgresql") && u.has_host())
                && m.parse::<tokio_postgres::Config>().is_ok();
            if !ok {
                errs.push(format!(
                    "postgres.migrate_url = {:?}: expected postgres://user[:password]@host[:port]/database",
                    super::redact_url(m)
                ));
            }
        }
        if let Some(r) = &self.runtime_role {
            if !valid_schema(r) {
                errs.push(format!(
                    "postgres.runtime_role = {r:?}: use lower case letters, digits and '_' (not starting with a digit, at most 63)"
                ));
            }
        }
        if !valid_schema(&self.schema) {
            errs.push(format!(
                "postgres.schema = {:?}: use lower case letters, digits and '_' (not starting with a digit, at most 63)",
                self.schema
            ));
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            errs.push("postgres.pool_size must be 1..=256".into());
        }
        if self.connect_timeout_ms == 0 || self.statement_timeout_ms == 0 {
            errs.push(
                "postgres.connect_timeout_ms and postgres.statement_timeout_ms must be at least 1"
                    .into(),
            );
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            errs.push("postgres.batch_size must be 1..=10000".into());
        }
        if self.block_ms > 60_000 {
            errs.push("postgres.block_ms must be at most 60000".into());
        }
        if self.claim_idle_ms < 1000 {
            errs.push("postgres.claim_idle_ms must be at least 1000".into());
        }
        if self.max_backlog < self.batch_size as u64 {
            errs.push(format!(
                "postgres.max_backlog = {}: use at least postgres.batch_size ({})",
                self.max_backlog, self.batch_size
            ));
        }
        if self.retention_interval_secs < 1 {
            errs.push("postgres.retention_interval_secs must be at least 1".into());
        }
        if self.disconnected_source_retention_days == 0 {
            errs.push("postgres.disconnected_source_retention_days must be at least 1".into());
        }
        if let Some(base) = &self.public_base_url {
            match url::Url::parse(base) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => errs.push(format!(
                    "postgres.public_base_url = {base:?}: expected scheme://host[:port], e.g. \"https://hooks.example.com\""
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_and_the_rest_left_as_written() {
        let (rest, tls) = split_tls(
            "postgres://u:p@db:5432/app?options=-c%20search_path%3Dx&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a+b",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db:5432/app?options=-c%20search_path%3Dx&application_name=a+b"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root, RootCerts::File(PathBuf::from("/etc/ca.pem")));
        assert_eq!(tls.verifies(), (true, true));

        let (rest, tls) = split_tls("postgres://db/app").unwrap();
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(tls.mode, SslMode::Prefer, "libpq's default");
        assert_eq!(tls.verifies(), (false, false));

        // libpq: require with a root certificate verifies the CA, not the name.
        let (_, tls) = split_tls("postgres://db/app?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.verifies(), (true, false));
        let (_, tls) = split_tls("postgres://db/app?sslmode=require").unwrap();
        assert_eq!(tls.verifies(), (false, false));
        let (_, tls) = split_tls("postgres://db/app?sslmode=verify-ca&sslrootcert=system").unwrap();
        assert_eq!(
            (tls.root.clone(), tls.verifies()),
            (RootCerts::System, (true, false))
        );

        let err = split_tls("postgres://db/app?sslmode=allow").unwrap_err();
        assert!(err.contains("sslmode"), "{err}");
    }
}
