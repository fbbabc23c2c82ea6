//! The `switchboard` command: run the gateway, check a configuration, sign a sample webhook.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use switchboard::config::{Config, SourceConfig};
use switchboard::startup::Application;
use switchboard::verify::meta::{sign_sha1, sign_sha256, HEADER_SHA1, HEADER_SHA256};

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
    /// Print the signature header a provider would send for a body, using a configured
    /// source's secret (for trying the gateway out with curl).
    Sign {
        /// Source id from the configuration.
        #[arg(long)]
        source: String,
        /// Body file; standard input when absent.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Signature algorithm.
        #[arg(long, value_enum, default_value_t = Algorithm::Sha256)]
        algorithm: Algorithm,
        /// Print only the header value, not "Name: value".
        #[arg(long)]
        value_only: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Algorithm {
    Sha256,
    Sha1,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(Some(&cli.config))?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::CheckConfig => {
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
            let (name, value) = match src {
                SourceConfig::Meta(m) => {
                    let secret = m.app_secrets[0].expose();
                    match algorithm {
                        Algorithm::Sha256 => ("X-Hub-Signature-256", sign_sha256(secret, &body)),
                        Algorithm::Sha1 => ("X-Hub-Signature", sign_sha1(secret, &body)),
                    }
                }
            };
            debug_assert!(
                name.eq_ignore_ascii_case(HEADER_SHA256) || name.eq_ignore_ascii_case(HEADER_SHA1)
            );
            if value_only {
                println!("{value}");
            } else {
                println!("{name}: {value}");
            }
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    switchboard::telemetry::init(&config.log);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped().await
    })
}
