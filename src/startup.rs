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
use crate::ingest::http::{configure, not_found, observe};
use crate::internal_events::{install_recorder, StreamSampled};
use crate::route::Router;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    config: Arc<Config>,
}

impl Application {
    /// Binds the listener and builds the state; nothing runs until [`Self::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let metrics = install_recorder();
        let state =
            web::Data::new(AppState::build(&config, metrics).context("cannot set up the backend")?);
        let listener = TcpListener::bind(&config.server.bind)
            .with_context(|| format!("cannot listen on server.bind = {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
        let data = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap(from_fn(observe))
                .configure(configure)
                .default_service(web::to(not_found))
        })
        .listen(listener)?
        .max_connections(config.server.max_connections_per_worker)
        .shutdown_timeout(config.server.shutdown_timeout_secs)
        .client_request_timeout(Duration::from_secs(30));
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        Ok(Application {
            port,
            server: server.run(),
            state,
            config: Arc::new(config),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
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
        let router = Router::new(self.state.backend.clone(), &self.config.router);
        let router_task = tokio::spawn(router.run(stop_rx.clone()));
        let sampler_task = tokio::spawn(sample(self.state.clone(), stop_rx));
        tracing::info!(
            port = self.port,
            backend = self.state.backend.name(),
            sources = self.state.sources.len(),
            "switchboard listening"
        );
        let served = self.server.await;
        tracing::info!("HTTP server stopped; stopping workers");
        let _ = stop_tx.send(true);
        let _ = router_task.await;
        let _ = sampler_task.await;
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
    }
}
