//! The optional HTTPS listener (`server.tls_cert_file` + `server.tls_key_file`): rustls,
//! TLS 1.2 and 1.3, with a certificate that is replaced while serving.
//!
//! Each handshake asks [`ReloadingCert`] for the certificate, which hands out the one loaded
//! last. [`watch`] loads the files again when they change (checked every
//! [`CHECK_EVERY`]) and on SIGHUP; a pair that does not load (a renewal half written, a key
//! that does not match) is logged and the previous certificate kept, so no handshake or
//! request ever fails because of a reload. Connections already open keep the certificate
//! they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch as stop_watch;

use crate::config::tls;

/// How often the files' modification times are compared.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The certificate handed to every new TLS connection, replaceable at any time.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

/// Loads and checks a certificate chain and its key.
fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs = tls::read_certs("server.tls_cert_file", cert_file)?;
    let key = tls::read_key("server.tls_key_file", key_file)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("server.tls_key_file = {:?}: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(format!(
            "server.tls_key_file = {:?} is not the key of server.tls_cert_file = {:?} ({e})",
            key_file.display(),
            cert_file.display()
        )),
    }
}

impl ReloadingCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ReloadingCert>, String> {
        let ck = load(cert_file, key_file)?;
        Ok(Arc::new(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
        }))
    }

    /// Loads the files again; on failure the current certificate stays.
    pub fn reload(&self, why: &str) -> Result<(), String> {
        let ck = load(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        tracing::info!(cert = %self.cert_file.display(), why, "HTTPS certificate reloaded");
        Ok(())
    }

    /// The certificate new connections get (its end-entity certificate first).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stamp(&self) -> Option<(SystemTime, u64, SystemTime, u64)> {
        let c = std::fs::metadata(&self.cert_file).ok()?;
        let k = std::fs::metadata(&self.key_file).ok()?;
        Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The listener's TLS configuration: TLS 1.2 and 1.3, ALPN set by actix-web.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, String> {
    tls::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("HTTPS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(cert))
}

/// Reloads `cert` when its files change or on SIGHUP, until `stop` turns true.
pub async fn watch(cert: Arc<ReloadingCert>, mut stop: stop_watch::Receiver<bool>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; the HTTPS certificate reloads only when its files change");
            None
        }
    };
    let mut seen = cert.stamp();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => "files changed",
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
        };
        let now = cert.stamp();
        if why == "files changed" && now == seen {
            continue;
        }
        match cert.reload(why) {
            Ok(()) => seen = now,
            // Kept: retried at the next change (a renewal may still be writing the files).
            Err(e) => {
                tracing::warn!(error = %e, why, "HTTPS certificate not reloaded; serving the previous one");
                if why == "files changed" {
                    seen = now;
                }
            }
        }
    }
}
