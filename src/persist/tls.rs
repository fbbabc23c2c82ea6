//! TLS to PostgreSQL (rustls), with libpq's `sslmode` / `sslrootcert` / `sslcert` /
//! `sslkey` read from `postgres.url` (see [`crate::config::postgres::split_tls`]).
//!
//! | sslmode      | TLS                | certificate checked          |
//! |--------------|--------------------|------------------------------|
//! | disable      | never              | —                            |
//! | prefer       | when offered       | no                           |
//! | require      | always             | no; CA when `sslrootcert` set |
//! | verify-ca    | always             | CA                           |
//! | verify-full  | always             | CA and host name             |
//!
//! Roots: `sslrootcert=<file>`, or the system's (`sslrootcert` absent or `system`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::postgres::{PgTls, RootCerts, SslMode};
use crate::config::tls;

/// tokio-postgres's mode and the connector for `params`; an error names the parameter.
pub fn connector(
    params: &PgTls,
) -> Result<(tokio_postgres::config::SslMode, MakeRustlsConnect), String> {
    tls::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mode = match params.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    };
    let (check_ca, check_host) = params.verifies();
    let verifier: Arc<dyn ServerCertVerifier> = if check_ca {
        let roots = match &params.root {
            RootCerts::File(p) => tls::root_store("postgres.url sslrootcert", p)?,
            RootCerts::System => tls::system_roots(),
        };
        if roots.is_empty() {
            return Err("postgres.url: no CA to verify the server with (the system has no root certificates): set sslrootcert to the CA file your provider publishes".into());
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("postgres.url sslrootcert: {e}"))?;
        if check_host {
            webpki
        } else {
            Arc::new(AnyHostName(webpki))
        }
    } else {
        Arc::new(NoCheck(provider.clone()))
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("postgres TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&params.cert, &params.key) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(
                tls::read_certs("postgres.url sslcert", c)?,
                tls::read_key("postgres.url sslkey", k)?,
            )
            .map_err(|e| format!("postgres.url sslcert/sslkey: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
    Ok((mode, MakeRustlsConnect::new(config)))
}

/// verify-ca: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer / require without a root: encrypted, the certificate not checked (libpq's
/// meaning of these modes). The handshake's signatures are still verified.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What to change in `postgres.url` when a connection error says something about TLS or
/// authentication; `None` for an ordinary outage.
pub fn hint(error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    Some(
        if has(&["unknownissuer", "unknown issuer", "badsignature"]) {
            "PostgreSQL's certificate is not signed by a trusted CA: set sslrootcert=<CA file> in postgres.url (e.g. the RDS or Supabase CA bundle)"
        } else if has(&["notvalidforname", "not valid for name"]) {
            "PostgreSQL's certificate does not name the host in postgres.url: connect with the name it was issued for (sslmode=verify-full checks it; verify-ca does not)"
        } else if has(&["server does not support tls", "server does not support ssl"]) {
            "the PostgreSQL server does not offer TLS: enable ssl on the server, or set sslmode=prefer (or disable) in postgres.url"
        } else if has(&[
            "no encryption",
            "hostnossl",
            "ssl off",
            "ssl required",
            "sslmode",
        ]) {
            "the PostgreSQL server requires TLS: set sslmode=verify-full (with sslrootcert=<CA file>) or sslmode=require in postgres.url"
        } else if has(&[
            "certificaterequired",
            "certificate required",
            "certificate authentication failed",
            "connection requires a valid client certificate",
        ]) {
            "the PostgreSQL server wants a client certificate: set sslcert=<file>&sslkey=<file> in postgres.url"
        } else if has(&[
            "password authentication failed",
            "no password",
            "password missing",
        ]) {
            "PostgreSQL refused the credentials: put user:password in postgres.url (or set SWITCHBOARD__POSTGRES__URL)"
        } else if has(&["error performing tls handshake"]) {
            "the TLS handshake with PostgreSQL failed: check sslmode and sslrootcert in postgres.url"
        } else {
            return None;
        },
    )
}

/// An error with its causes ("error performing TLS handshake" alone does not say which
/// check failed), each once.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// `error`, with what to change when it says something about the configuration.
pub fn with_hint(error: String) -> String {
    match hint(&error) {
        Some(h) => format!("{error} ({h})"),
        None => error,
    }
}
