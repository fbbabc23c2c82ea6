//! PEM files named by the configuration (`redis.tls_*`, `sslrootcert`..., `server.tls_*`):
//! read and parsed once, every failure phrased with the key that names the file.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The process-wide rustls crypto provider (ring). Idempotent; called before any TLS
/// configuration is built (the Redis client builds its own with rustls' default).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The file's bytes, or why not, naming `key`.
pub fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} = {:?}: cannot read it ({e})", path.display()))
}

/// Every certificate of a PEM file (at least one).
pub fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(key, path)?;
    parse_certs(key, path, &pem)
}

pub fn parse_certs(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{key} = {:?}: not a PEM certificate file ({e})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{key} = {:?}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(key, path)?;
    parse_key(key, path, &pem)
}

pub fn parse_key(key: &str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!(
            "{key} = {:?}: holds no PEM private key ({e})",
            path.display()
        )
    })
}

/// A root store from a PEM file of CA certificates.
pub fn root_store(key: &str, path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(key, path)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{key} = {:?}: a certificate is not a usable CA ({e})",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The operating system's root certificates (what `rustls-native-certs` finds; empty when
/// none are installed, in which case only an explicit CA file can verify a server).
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    roots
}

/// Checks a certificate file and its key file given together: both present or both absent,
/// both readable, the key matching the certificate.
pub fn check_pair(
    cert_key: &str,
    cert: Option<&Path>,
    key_key: &str,
    key: Option<&Path>,
    errs: &mut Vec<String>,
) {
    match (cert, key) {
        (None, None) => {}
        (Some(_), None) => errs.push(format!(
            "{cert_key} is set without {key_key}: give both (the certificate and its private key)"
        )),
        (None, Some(_)) => errs.push(format!(
            "{key_key} is set without {cert_key}: give both (the certificate and its private key)"
        )),
        (Some(c), Some(k)) => {
            let certs = read_certs(cert_key, c);
            let pk = read_key(key_key, k);
            match (certs, pk) {
                (Ok(certs), Ok(pk)) => {
                    install_crypto_provider();
                    let provider = rustls::crypto::ring::default_provider();
                    match provider.key_provider.load_private_key(pk) {
                        Ok(signing) => {
                            let ck = rustls::sign::CertifiedKey::new(certs, signing);
                            if let Err(e) = ck.keys_match() {
                                if !matches!(
                                    e,
                                    rustls::Error::InconsistentKeys(
                                        rustls::InconsistentKeys::Unknown
                                    )
                                ) {
                                    errs.push(format!(
                                        "{key_key} = {:?} is not the key of {cert_key} = {:?} ({e})",
                                        k.display(),
                                        c.display()
                                    ));
                                }
                            }
                        }
                        Err(e) => errs.push(format!(
                            "{key_key} = {:?}: unsupported private key ({e})",
                            k.display()
                        )),
                    }
                }
                (a, b) => {
                    errs.extend(a.err());
                    errs.extend(b.err());
                }
            }
        }
    }
}
