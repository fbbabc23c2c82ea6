//! The `switchboard` command: run the gateway, check a configuration, sign a sample webhook,
//! replay dead letters, inspect the streams.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use switchboard::config::{Config, SourceConfig};
use switchboard::startup::{Application, Options};
use switchboard::verify::meta::{sign_sha1, sign_sha256};
use switchboard::verify::{Method, SignRequest};

/// mimalloc: the request path allocates and frees many small buffers per request (headers,
/// JSON values, event strings), and the system allocator spent about a fifth of the
/// gateway's CPU on them under load (perf, `cargo bench --bench load`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Webhook ingestion and conversation routing for omnichannel CRMs"
)]
struct Cli {
    /// Configuration file (TOML). Environment variables SWITCHBOARD__SECTION__KEY override it.
    #[arg(
        long,
        short,
        global = true,
        env = "SWITCHBOARD_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Load and validate the configuration, print a summary, exit non-zero if invalid.
    CheckConfig,
    /// Print the signature header(s) a provider would send for a body, using a configured
    /// source's current secret (for trying the gateway out with curl).
    Sign {
        /// Source id from the configuration.
        #[arg(long)]
        source: String,
        /// Body file; standard input when absent.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Meta only: signature algorithm.
        #[arg(long, value_enum, default_value_t = Algorithm::Sha256)]
        algorithm: Algorithm,
        /// The public URL the provider calls, for schemes that sign the URL (Twilio, Plivo,
        /// MessageBird, Bird); default http://<server.bind>/webhooks/<source>.
        #[arg(long)]
        url: Option<String>,
        /// Sign a GET delivery (parameters in --url's query) instead of a POST.
        #[arg(long)]
        get: bool,
        /// Print only the (first) header value, not "Name: value" lines.
        #[arg(long)]
        value_only: bool,
    },
    /// Apply the PostgreSQL migrations (migrations/) to [postgres] url and schema, whether or
    /// not [postgres] enabled is set. Idempotent: applies only what is missing.
    Migrate {
        /// Only print which migrations are applied and which are pending.
        #[arg(long)]
        status: bool,
    },
    /// Print the SQL that creates least-privilege PostgreSQL roles for [postgres] url's
    /// database and schema: an owner that runs the migrations (postgres.migrate_url) and a
    /// runtime role the gateway connects as (postgres.url, postgres.runtime_role), which can
    /// only insert into the audit log. Run it once as a superuser (docs/security.md).
    DbRoles {
        /// The owner role: owns the schema and its tables, runs `switchboard migrate`.
        #[arg(long, default_value = "switchboard_owner")]
        owner: String,
        /// The runtime role the gateway connects as.
        #[arg(long, default_value = "switchboard")]
        runtime: String,
    },
    /// Re-encrypt every source secret stored through the admin API under the first master
    /// key (SWITCHBOARD_MASTER_KEY or [api] master_key_file), with its audit row. The
    /// same as POST /v1/admin/rotate-master-key; idempotent.
    RotateMasterKey,
    /// Re-publish dead-lettered requests after a fix (a channel mapped, a normalizer fixed):
    /// each is re-verified with the source's current secrets, normalized with the current
    /// code and accepted through the same dedup + enqueue as a webhook (an event accepted
    /// before is a duplicate, never a second event); an entry is removed only once its
    /// accept succeeded. Needs backend = "redis".
    Replay {
        /// Only entries of this source.
        #[arg(long)]
        source: Option<String>,
        /// Only entries dead-lettered for this reason (unknown_channel, invalid_body,
        /// unexpected_shape, unsupported).
        #[arg(long)]
        reason: Option<String>,
        /// Only this entry: a stream id or a dead-letter id (dl_...). Repeatable.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Verify and normalize only: report what would happen, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many matching entries.
        #[arg(long)]
        limit: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where the streams stand: length and oldest entry of the inbound, events and
    /// dead-letter streams, and per consumer group its consumers, pending entries, lag and
    /// oldest unacknowledged entry. Read-only. Needs backend = "redis".
    Inspect {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Routing tools.
    Routing {
        #[command(subcommand)]
        command: RoutingCommand,
    },
}

#[derive(Subcommand)]
enum RoutingCommand {
    /// Replay traffic (JSON lines: messages, presence changes, closes; see docs/routing.md)
    /// through the configuration's rules on the in-memory engine with a virtual clock, and
    /// print assignments per agent, queue waits, fairness and rule hits.
    Simulate {
        /// The traffic file (JSON lines).
        #[arg(long)]
        traffic: PathBuf,
        /// What `t_ms` in the traffic counts from (RFC 3339). Default: 2026-01-05T09:00:00Z,
        /// a Monday morning.
        #[arg(long, default_value = "2026-01-05T09:00:00Z")]
        start: String,
        /// Close each conversation this many seconds after it is assigned (handling time).
        #[arg(long)]
        handle_secs: Option<u64>,
        /// Virtual interval of the periodic work (overflow, grace, idle close, drains).
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
        /// With offers (a rule's offer_timeout_secs): agents accept each offer this many
        /// seconds after it is made. Absent: only the traffic's accept/reject lines answer
        /// offers, the rest expire.
        #[arg(long)]
        accept_offers_after_secs: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Algorithm {
    Sha256,
    Sha1,
}

/// The signature headers `source` would carry for this request.
fn sign_headers(
    src: &SourceConfig,
    algorithm: Algorithm,
    req: &SignRequest<'_>,
) -> Result<Vec<(String, String)>, String> {
    use switchboard::verify as v;
    match src {
        SourceConfig::Meta(m) => {
            let secret = m.app_secrets[0].expose();
            Ok(vec![match algorithm {
                Algorithm::Sha256 => (
                    "X-Hub-Signature-256".to_string(),
                    sign_sha256(secret, req.body),
                ),
                Algorithm::Sha1 => ("X-Hub-Signature".to_string(), sign_sha1(secret, req.body)),
            }])
        }
        SourceConfig::Twilio(c) => v::twilio::sign(c, req),
        SourceConfig::Vonage(c) => v::vonage::sign(c, req),
        SourceConfig::Messagebird(c) => v::messagebird::sign(c, req),
        SourceConfig::Bird(c) => v::bird::sign(c, req),
        SourceConfig::Telnyx(c) => v::telnyx::sign(c, req),
        SourceConfig::Plivo(c) => v::plivo::sign(c, req),
        SourceConfig::Sinch(c) => v::sinch::sign(c, req),
        SourceConfig::Telegram(c) => v::telegram::sign(c, req),
        SourceConfig::Standard(c) => v::standard::sign(c, req),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(Some(&cli.config))?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, cli.config.clone()),
        Command::Routing {
            command:
                RoutingCommand::Simulate {
                    traffic,
                    start,
                    handle_secs,
                    tick_ms,
                    accept_offers_after_secs,
                    json,
                },
        } => simulate(
            config,
            traffic,
            start,
            SimFlags {
                handle_secs,
                tick_ms,
                accept_offers_after_secs,
            },
            json,
        ),
        Command::Migrate { status } => migrate(config, status),
        Command::DbRoles { owner, runtime } => {
            let url: tokio_postgres::Config = config
                .postgres
                .url
                .parse()
                .context("postgres.url is not a connection string")?;
            let database = url
                .get_dbname()
                .or(url.get_user())
                .unwrap_or("postgres")
                .to_string();
            let sql = switchboard::persist::roles::setup_sql(
                &database,
                &config.postgres.schema,
                &owner,
                &runtime,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            print!("{sql}");
            Ok(())
        }
        Command::RotateMasterKey => rotate_master_key(config),
        Command::Replay {
            source,
            reason,
            ids,
            dry_run,
            limit,
            json,
        } => replay(
            config,
            switchboard::ops::replay::ReplayOptions {
                source,
                reason,
                ids,
                dry_run,
                limit,
            },
            json,
        ),
        Command::Inspect { json } => inspect(config, json),
        Command::CheckConfig => {
            for (id, t) in &config.tenants {
                if let Some(r) = &t.routing {
                    println!(
                        "routing of tenant {id}: {} agent(s), {} team(s), {} rule(s)",
                        r.agents.len(),
                        r.teams.len(),
                        r.rules.len()
                    );
                }
            }
            if config.backend == switchboard::config::BackendKind::Redis {
                println!(
                    "redis: {}, {} stream partition(s), key prefix {:?}",
                    config.redis.describe(),
                    config.streams.partitions,
                    config.redis.key_prefix
                );
            }
            let exposed = switchboard::config::published::exposure_problems(&config);
            if !exposed.is_empty() {
                bail!(switchboard::config::published::refusal(&config, &exposed));
            }
            for p in switchboard::config::published::published_credentials(&config) {
                println!(
                    "note: {p} (accepted on a loopback address only: `serve` refuses it on any other)"
                );
            }
            println!(
                "configuration OK: backend {:?}, listening on {}, {} tenant(s), {} source(s): {}",
                config.backend,
                config.server.bind,
                config.tenants.len(),
                config.sources.len(),
                config
                    .sources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Sign {
            source,
            file,
            algorithm,
            url,
            get,
            value_only,
        } => {
            let Some(src) = config.sources.get(&source) else {
                bail!("no source {source:?} in {}", cli.config.display());
            };
            let mut body = Vec::new();
            match file {
                Some(path) => {
                    body = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                }
                None => {
                    std::io::stdin().read_to_end(&mut body)?;
                }
            }
            let url =
                url.unwrap_or_else(|| format!("http://{}/webhooks/{source}", config.server.bind));
            let req = SignRequest {
                method: if get { Method::Get } else { Method::Post },
                url: &url,
                body: &body,
                now: time::OffsetDateTime::now_utc(),
            };
            let headers = match sign_headers(src, algorithm, &req) {
                Ok(h) => h,
                Err(why) => bail!("cannot sign for source {source}: {why}"),
            };
            if value_only {
                if let Some((_, value)) = headers.first() {
                    println!("{value}");
                }
            } else {
                for (name, value) in &headers {
                    println!("{name}: {value}");
                }
            }
            Ok(())
        }
    }
}

fn rotate_master_key(config: Config) -> anyhow::Result<()> {
    use switchboard::crypto::MasterKeys;
    use switchboard::persist::Postgres;
    let keys = MasterKeys::load(config.api.master_key_file.as_deref())?.with_context(|| {
        "no master key: set SWITCHBOARD_MASTER_KEY or api.master_key_file".to_string()
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pg = Postgres::new(&config)?;
        let report = switchboard::api::admin::reencrypt_all(&pg, &keys, "cli:rotate-master-key")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{report}");
        Ok(())
    })
}

fn migrate(config: Config, status_only: bool) -> anyhow::Result<()> {
    use switchboard::persist::{migrate, Postgres};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pg = Postgres::new(&config)?;
        let target = format!(
            "{} (schema {})",
            switchboard::config::redact_url(&config.postgres.url),
            config.postgres.schema
        );
        let client = pg
            .client()
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {target}"))?;
        if status_only {
            let done = migrate::applied(&client, &config.postgres.schema).await?;
            for m in migrate::MIGRATIONS {
                let state = if done.contains(&m.version) {
                    "applied"
                } else {
                    "pending"
                };
                println!("{:>4}  {state:8} {}", m.version, m.name);
            }
            return Ok(());
        }
        drop(client);
        let applied = pg
            .migrate()
            .await
            .with_context(|| format!("migrating {target}"))?;
        if applied.is_empty() {
            println!(
                "{target}: up to date ({} migrations)",
                migrate::MIGRATIONS.len()
            );
        } else {
            println!("{target}: applied {applied:?}");
        }
        Ok(())
    })
}

fn replay(
    config: Config,
    opts: switchboard::ops::replay::ReplayOptions,
    json: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let backend = switchboard::ops::redis_backend(&config, "replay")?;
        backend.ping().await.with_context(|| {
            format!(
                "Redis at {} does not answer",
                switchboard::config::redact_url(&config.redis.url)
            )
        })?;
        let api_sources = match switchboard::ops::replay::api_sources(&config).await {
            Ok(s) => s,
            Err(why) => {
                eprintln!("warning: sources of the admin API not loaded ({why}); replaying with config.toml's sources only");
                Default::default()
            }
        };
        let report = switchboard::ops::replay::replay(&config, &api_sources, &backend, &opts).await;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        if let Some(why) = report.aborted {
            bail!("replay stopped early: {why}");
        }
        Ok(())
    })
}

fn inspect(config: Config, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let backend = switchboard::ops::redis_backend(&config, "inspect")?;
        let report = switchboard::ops::inspect::inspect(&backend)
            .await
            .with_context(|| {
                format!(
                    "inspecting Redis at {}",
                    switchboard::config::redact_url(&config.redis.url)
                )
            })?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        Ok(())
    })
}

fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    switchboard::telemetry::init(&config.log);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build_with(
            config,
            Options {
                config_path: Some(path),
                ..Options::default()
            },
        )
        .await?;
        app.run_until_stopped().await
    })
}

/// `routing simulate`'s timing flags.
struct SimFlags {
    handle_secs: Option<u64>,
    tick_ms: u64,
    accept_offers_after_secs: Option<u64>,
}

fn simulate(
    config: Config,
    traffic: PathBuf,
    start: String,
    flags: SimFlags,
    json: bool,
) -> anyhow::Result<()> {
    use switchboard::route::simulate::{run, SimOptions};
    let start = time::OffsetDateTime::parse(&start, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--start {start:?} is not RFC 3339"))?;
    let text = std::fs::read_to_string(&traffic)
        .with_context(|| format!("cannot read {}", traffic.display()))?;
    let opts = SimOptions {
        start_ms: (start.unix_timestamp_nanos() / 1_000_000) as u64,
        handle_ms: flags.handle_secs.map(|s| s * 1000),
        tick_ms: flags.tick_ms.max(1),
        accept_offers_ms: flags.accept_offers_after_secs.map(|s| s * 1000),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(
        &config,
        switchboard::route::strategy::Strategies::builtin(),
        &text,
        &opts,
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
