//! Building and running the application: HTTP server, router worker, periodic samplers,
//! and an orderly shutdown.
//!
//! Shutdown (SIGTERM/SIGINT): the server stops accepting connections and lets in-flight
//! requests finish (up to `shutdown_timeout_secs`); then the router finishes its batch and
//! stops. Accepts and publishes are single atomic backend calls, so nothing is left
//! half-done: an interrupted request was either accepted (and answered) or not (and the
//! provider retries).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{not_found, observe};
use crate::ingest::edge::{guard, Edge};
use crate::internal_events::{install_recorder, RoutingSampled, StreamSampled};
use crate::route::strategy::Strategies;
use crate::route::{Engine, Router};
use crate::state::{routing_store, AppState};

/// What an embedding program (or `main`) can add to a configuration.
#[derive(Clone, Default)]
pub struct Options {
    /// The file the configuration came from (`POST /v1/routing/reload` re-reads it).
    pub config_path: Option<std::path::PathBuf>,
    /// Routing strategies rules may name (default: the built-in ones).
    pub strategies: Strategies,
}

pub struct Application {
    port: u16,
    /// The HTTPS listener's certificate (`server.tls_cert_file`), reloaded while serving.
    cert: Option<Arc<crate::https::ReloadingCert>>,
    server: Server,
    state: web::Data<AppState>,
    config: Arc<Config>,
}

impl Application {
    /// Binds the listener and builds the state; nothing runs until [`Self::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with(config, Options::default()).await
    }

    pub async fn build_with(config: Config, options: Options) -> anyhow::Result<Application> {
        let exposed = crate::config::published::exposure_problems(&config);
        if !exposed.is_empty() {
            anyhow::bail!(crate::config::published::refusal(&config, &exposed));
        }
        let metrics = install_recorder();
        let mut state = AppState::build(&config, metrics).context("cannot set up the backend")?;
        state.config_path = options.config_path.clone();
        if config.routing.enabled {
            let file = config
                .tenants
                .iter()
                .filter_map(|(id, t)| t.routing.clone().map(|r| (id.clone(), r)))
                .collect();
            let engine = Engine::start(
                routing_store(&state.backend, &config),
                state.backend.clone(),
                options.strategies.clone(),
                config.tenants.keys().cloned().collect(),
                file,
            )
            .await
            .context("cannot start the routing engine")?;
            state.engine = Some(Arc::new(engine));
        }
        if config.postgres.enabled {
            state.persist =
                Some(crate::persist::Postgres::new(&config).context("cannot set up PostgreSQL")?);
            // Before any router publishes: retention spares only what the persister's group
            // has not acknowledged, so the group must exist first. Best effort (the backend
            // may be down now; the persister creates it on its first read).
            if let Err(e) = state
                .backend
                .ensure_events_group(crate::accept::PERSISTER_GROUP)
                .await
            {
                tracing::warn!(error = %e, "persister group not created yet; the persister will");
            }
        }
        state.delivery = crate::delivery::Delivery::new(
            &config,
            &state.backend,
            state.admin.clone(),
            state.persist.clone(),
        )
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
        let state = web::Data::new(state);
        crate::state::start_admin_sync(&state.clone().into_inner()).await;
        let listener = TcpListener::bind(&config.server.bind)
            .with_context(|| format!("cannot listen on server.bind = {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
        let data = state.clone();
        let edge = web::Data::new(Edge::from_config(&config));
        let connections = edge.connections.clone();
        // Agents' open event streams, counted per key on this replica.
        let agent_streams = web::Data::new(crate::api::stream::Streams::from_config(&config));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(edge.clone())
                .app_data(agent_streams.clone())
                .wrap(from_fn(guard))
                .wrap(from_fn(observe))
                .configure(crate::ingest::http::configure)
                .configure(crate::api::configure)
                .default_service(web::to(not_found))
        })
        .on_connect(move |conn, ext| connections.on_connect(conn, ext));
        let (server, cert) = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (Some(c), Some(k)) => {
                let cert = crate::https::ReloadingCert::load(c, k).map_err(anyhow::Error::msg)?;
                let tls = crate::https::server_config(cert.clone()).map_err(anyhow::Error::msg)?;
                (server.listen_rustls_0_23(listener, tls)?, Some(cert))
            }
            _ => (server.listen(listener)?, None),
        };
        let mut server = server
            .max_connections(config.server.max_connections_per_worker)
            .shutdown_timeout(config.server.shutdown_timeout_secs)
            .client_request_timeout(Duration::from_millis(config.server.header_read_timeout_ms));
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        Ok(Application {
            port,
            cert,
            server: server.run(),
            state,
            config: Arc::new(config),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the listener speaks HTTPS (`server.tls_cert_file`).
    pub fn is_https(&self) -> bool {
        self.cert.is_some()
    }

    /// A handle that stops the server gracefully (tests, embedding programs).
    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub fn state(&self) -> &web::Data<AppState> {
        &self.state
    }

    /// Serves until SIGTERM/SIGINT (or the server handle stops it), then shuts down in order.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // `router.workers` routers per stream partition, each on its partition's streams.
        let partitions = self.state.backend.partitions();
        let router_tasks: Vec<_> = partitions
            .iter()
            .flat_map(|part| (0..self.config.router.workers).map(move |_| part.clone()))
            .map(|part| {
                let router = Router::new(part, self.state.engine.clone(), &self.config.router);
                tokio::spawn(router.run(stop_rx.clone()))
            })
            .collect();
        let maintain_task = self.state.engine.clone().map(|engine| {
            tokio::spawn(crate::route::maintain(
                engine,
                Duration::from_millis(self.config.routing.sweep_interval_ms),
                stop_rx.clone(),
            ))
        });
        // History in PostgreSQL: its own worker and the retention job (never in the way of
        // ingestion; see crate::persist).
        let persist_tasks = self.state.persist.clone().map(|pg| {
            let persisters: Vec<_> = partitions
                .iter()
                .enumerate()
                .map(|(i, part)| {
                    let p = crate::persist::Persister::for_partition(
                        part.clone(),
                        &self.state.backend,
                        pg.clone(),
                        i == 0,
                    );
                    tokio::spawn(p.run(stop_rx.clone()))
                })
                .collect();
            (
                persisters,
                tokio::spawn(crate::persist::retain(pg, stop_rx.clone())),
            )
        });
        let cert_task = self
            .cert
            .clone()
            .map(|cert| tokio::spawn(crate::https::watch(cert, stop_rx.clone())));
        // Push delivery: fan-out, attempts, sampler (see crate::delivery).
        let delivery_task = self
            .state
            .delivery
            .clone()
            .map(|d| tokio::spawn(d.run(stop_rx.clone())));
        let sampler_task = tokio::spawn(sample(self.state.clone(), stop_rx));
        tracing::info!(
            port = self.port,
            https = self.cert.is_some(),
            backend = self.state.backend.name(),
            sources = self.state.sources.len(),
            "switchboard listening"
        );
        let served = self.server.await;
        tracing::info!("HTTP server stopped; stopping workers");
        let _ = stop_tx.send(true);
        for t in router_tasks {
            let _ = t.await;
        }
        if let Some(t) = maintain_task {
            let _ = t.await;
        }
        if let Some((persisters, retention)) = persist_tasks {
            for p in persisters {
                let _ = p.await;
            }
            let _ = retention.await;
        }
        if let Some(t) = delivery_task {
            let _ = t.await;
        }
        let _ = sampler_task.await;
        if let Some(t) = cert_task {
            let _ = t.await;
        }
        served.context("HTTP server failed")
    }
}

/// Stream gauges every 5 s, and the rate limiter's sweep every minute.
async fn sample(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        if n % 12 == 0 {
            state.limiters.sweep();
        }
        if let Ok(s) = state.backend.stats().await {
            StreamSampled {
                stream: "inbound",
                length: s.inbound,
                pending: Some(s.inbound_pending),
            }
            .emit();
            StreamSampled {
                stream: "events",
                length: s.events,
                pending: None,
            }
            .emit();
            StreamSampled {
                stream: "deadletter",
                length: s.deadletter,
                pending: None,
            }
            .emit();
        }
        if let Some(engine) = &state.engine {
            if let Ok(l) = engine.load_summary().await {
                RoutingSampled {
                    queued: l.queued,
                    oldest_wait_ms: l.oldest_wait_ms,
                    online: l.online,
                    away: l.away,
                    offline: l.offline,
                    utilization_min: l.utilization_min,
                    utilization_mean: l.utilization_mean,
                    utilization_max: l.utilization_max,
                }
                .emit();
            }
        }
    }
}
