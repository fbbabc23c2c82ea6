//! Verification: the only way from an [`Unverified`] request to a [`Verified`] one.
//!
//! The normalizers take `&Verified`, and `Verified` has no public constructor, so a payload
//! that did not pass its source's signature check cannot be normalized, queued or routed.
//! Verification always runs on the raw bytes as received, never on re-serialized JSON, and
//! every comparison of secret-derived material is constant time.
//!
//! This module must never log, format or return a secret or the expected signature.

pub mod bird;
pub mod messagebird;
pub mod meta;
pub mod plivo;
pub mod signed_request;
pub mod sinch;
pub mod standard;
pub mod telegram;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

pub use crate::crypto::ct_eq;

use bytes::Bytes;
use time::OffsetDateTime;

/// Why a request failed verification. The reason goes to logs and the
/// `switchboard_signature_failures_total{reason}` metric; the caller only sees 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("signature does not match any configured secret")]
    Mismatch,
    #[error("signature algorithm not enabled for this source")]
    AlgorithmDisabled,
    #[error("timestamp outside the replay window")]
    Expired,
    #[error("signed body hash does not match the body")]
    BodyHash,
    #[error("signed URL hash does not match the URL")]
    UrlHash,
    #[error("signed token claims are missing or invalid")]
    Claims,
}

impl VerifyError {
    /// Stable, bounded label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            VerifyError::Missing => "missing",
            VerifyError::Malformed => "malformed",
            VerifyError::Mismatch => "mismatch",
            VerifyError::AlgorithmDisabled => "algorithm_disabled",
            VerifyError::Expired => "expired",
            VerifyError::BodyHash => "body_hash_mismatch",
            VerifyError::UrlHash => "url_hash_mismatch",
            VerifyError::Claims => "invalid_claims",
        }
    }
}

/// Headers a verifier may read, lower-cased names. Kept as a small vector: webhooks carry few.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }
    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request as received: the raw body, the headers, the public URL the provider called
/// (schemes that sign the URL need it exactly as the provider saw it) and the time of receipt
/// (schemes with a signed timestamp check it against a replay window).
#[derive(Debug)]
pub struct Unverified {
    method: Method,
    headers: Headers,
    body: Bytes,
    url: String,
    now: OffsetDateTime,
    /// Rebuilt from a dead letter by `switchboard replay` (never set for a network request):
    /// a header kept only as a digest (see [`telegram::kept_value`]) may then be checked by
    /// its digest.
    from_dead_letter: bool,
}

/// The HTTP method of a webhook delivery: most providers POST; some (Vonage SMS API,
/// MessageBird, Plivo, Twilio when so configured) may GET with the parameters in the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A request whose signature has been checked against its source's secrets.
#[derive(Debug)]
pub struct Verified {
    method: Method,
    headers: Headers,
    body: Bytes,
    url: String,
}

impl Unverified {
    pub fn new(headers: Headers, body: Bytes) -> Unverified {
        Unverified {
            method: Method::Post,
            headers,
            body,
            url: String::new(),
            now: OffsetDateTime::now_utc(),
            from_dead_letter: false,
        }
    }
    /// Marks a request rebuilt from a dead letter (replay only).
    pub fn from_dead_letter(mut self) -> Unverified {
        self.from_dead_letter = true;
        self
    }
    pub fn is_from_dead_letter(&self) -> bool {
        self.from_dead_letter
    }
    pub fn with_method(mut self, method: Method) -> Unverified {
        self.method = method;
        self
    }
    pub fn method(&self) -> Method {
        self.method
    }
    /// The public URL the provider called, scheme to query string.
    pub fn with_url(mut self, url: impl Into<String>) -> Unverified {
        self.url = url.into();
        self
    }
    /// The time to check signed timestamps against (tests pin it).
    pub fn with_now(mut self, now: OffsetDateTime) -> Unverified {
        self.now = now;
        self
    }
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn now(&self) -> OffsetDateTime {
        self.now
    }
    /// Called by a verifier once its check passed; private to this module tree.
    fn into_verified(self) -> Verified {
        Verified {
            method: self.method,
            headers: self.headers,
            body: self.body,
            url: self.url,
        }
    }
}

/// Whether a signed unix timestamp (seconds) is within `window` of `now`, either side.
pub fn within_window(
    timestamp_secs: i64,
    now: OffsetDateTime,
    window: std::time::Duration,
) -> bool {
    let delta = (now.unix_timestamp() - timestamp_secs).unsigned_abs();
    delta <= window.as_secs()
}

impl Verified {
    pub fn method(&self) -> Method {
        self.method
    }
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    pub fn body_bytes(&self) -> &Bytes {
        &self.body
    }
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    pub fn url(&self) -> &str {
        &self.url
    }

    /// For unit tests of normalizers only: a request that skips the signature check.
    #[cfg(test)]
    pub(crate) fn assume_verified(body: impl Into<Bytes>) -> Verified {
        Verified {
            method: Method::Post,
            headers: Headers::new(),
            body: body.into(),
            url: String::new(),
        }
    }

    /// For unit tests of normalizers only: a GET delivery to `url` (parameters in the query).
    #[cfg(test)]
    pub(crate) fn assume_verified_get(url: &str) -> Verified {
        Verified {
            method: Method::Get,
            headers: Headers::new(),
            body: Bytes::new(),
            url: url.to_string(),
        }
    }

    /// The request's parameters: the form body of a POST, else the query string of the URL.
    /// Order, repeats and empty values are kept as sent; `+` decodes to a space.
    pub fn form_params(&self) -> Vec<(String, String)> {
        match self.method {
            Method::Post => form_pairs(&self.body),
            Method::Get => query_pairs(&self.url),
        }
    }
}

/// What a signer needs to produce a provider's signature headers (`switchboard sign`, tests,
/// the load harness).
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    pub method: Method,
    /// The public URL the provider calls, with any query string.
    pub url: &'a str,
    pub body: &'a [u8],
    pub now: OffsetDateTime,
}

/// `application/x-www-form-urlencoded` pairs in order, repeats and empty values kept.
pub fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// The decoded query pairs of a URL (empty when it has no query).
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    match url.split_once('?') {
        Some((_, q)) => form_pairs(q.split('#').next().unwrap_or("").as_bytes()),
        None => Vec::new(),
    }
}
