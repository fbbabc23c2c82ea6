//! One signed POST to a destination, and what came of it.
//!
//! Safety (docs/delivery.md, "Safety"): no proxy from the environment, redirects never
//! followed (a 3xx is a failed attempt), the connection made only to addresses checked at
//! this moment — our resolver refuses a name when any of its addresses is loopback, private,
//! link-local or otherwise refused (`crate::config::delivery::refused_ip`), and an address
//! literal is checked before the request — so a name that re-binds to an internal address
//! after the destination was accepted is refused too. At most [`MAX_RESPONSE_BYTES`] of the
//! answer are read (and dropped: attempts record the status, never a body).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use time::OffsetDateTime;

use crate::config::delivery::{parse_url, refused_addrs, refused_ip};
use crate::verify::standard::{sign_v1, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// Bytes of a receiver's answer read at most.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// `Retry-After` of a 429 or 503 answer.
    pub retry_after: Option<Duration>,
    /// Why it failed (short, never a secret, a body or the URL's query), None on 2xx.
    pub error: Option<String>,
    /// The destination's address was refused (private network) at delivery time.
    pub refused: bool,
    pub latency: Duration,
}

impl Outcome {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Refuses names resolving to refused addresses (unless private networks are allowed).
struct CheckedResolver {
    allow_private: bool,
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow {
                if let Some(why) = refused_addrs(&host, addrs.iter().map(SocketAddr::ip)) {
                    return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(connect_timeout: Duration, allow_private: bool) -> Result<Sender, String> {
        crate::config::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| format!("cannot build the delivery HTTP client: {e}"))?;
        Ok(Sender {
            client,
            allow_private,
        })
    }

    /// POSTs `body` to `url`, signed with `secret` as Standard Webhooks asks, `event_id` as
    /// `webhook-id`, within `timeout`.
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        event_id: &str,
        body: &str,
        timeout: Duration,
    ) -> Outcome {
        let started = Instant::now();
        let fail = |error: String, refused: bool| Outcome {
            status: None,
            retry_after: None,
            error: Some(error),
            refused,
            latency: started.elapsed(),
        };
        if !self.allow_private {
            match parse_url(url) {
                Ok(t) => {
                    if let Some(why) = t.ip.and_then(refused_ip) {
                        return fail(format!("refused: the address is {why}"), true);
                    }
                }
                Err(e) => return fail(format!("the url {e}"), false),
            }
        }
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let signature = match sign_v1(secret, event_id, ts, body.as_bytes()) {
            Ok(s) => s,
            Err(e) => return fail(format!("cannot sign: {e}"), false),
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in [
            (HEADER_ID, event_id.to_string()),
            (HEADER_TIMESTAMP, ts.to_string()),
            (HEADER_SIGNATURE, signature),
        ] {
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    headers.insert(name, v);
                }
                Err(_) => return fail(format!("{name} is not a valid header value"), false),
            }
        }
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .timeout(timeout)
            .body(body.to_string())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let refused = source_is::<Refused>(&e);
                return fail(describe(e, refused), refused);
            }
        };
        let status = resp.status().as_u16();
        let retry_after = if status == 429 || status == 503 {
            resp.headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()))
        } else {
            None
        };
        // Read a little of the answer (so a small one leaves the connection reusable), keep
        // none of it.
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match tokio::time::timeout(timeout, resp.chunk()).await {
                Ok(Ok(Some(c))) => read += c.len(),
                _ => break,
            }
        }
        let error = if (200..300).contains(&status) {
            None
        } else if (300..400).contains(&status) {
            Some(format!("HTTP {status} (redirects are not followed)"))
        } else {
            Some(format!("HTTP {status}"))
        };
        Outcome {
            status: Some(status),
            retry_after,
            error,
            refused: false,
            latency: started.elapsed(),
        }
    }
}

fn source_is<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A short description of a failed request, without the URL (its query may hold a token).
fn describe(e: reqwest::Error, refused: bool) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_request() {
        "request"
    } else {
        "error"
    };
    let e = e.without_url();
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(err) = cur {
        chain.push(err.to_string());
        cur = err.source();
    }
    let detail = chain.last().cloned().unwrap_or_else(|| e.to_string());
    let mut text = if refused {
        format!("refused: {detail}")
    } else {
        format!("{kind}: {detail}")
    };
    text.truncate(300);
    text
}

/// `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3); a date in the past is
/// zero.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let d = at - now;
    Some(if d.is_negative() {
        Duration::ZERO
    } else {
        Duration::from_secs(d.whole_seconds() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap(); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
