//! Guards at the HTTP edge that hold whatever route a request takes: connections per client
//! address, a deadline for the request body, and a budget of body bytes buffered at once.
//!
//! - **Connections.** [`ConnLimiter::on_connect`] runs as a connection is accepted and counts
//!   it against its client address (an IPv6 address counts against its /64); the count drops
//!   when the connection closes. A connection past `server.max_connections_per_ip` is kept
//!   only long enough to answer its first request 429 `too_many_connections` (JSON, with
//!   `Retry-After` and `Connection: close`): a provider then sees a retryable status rather
//!   than a reset. Trusted proxies are not counted (one proxy carries many clients).
//! - **Body deadline.** A body must arrive whole within `server.body_read_timeout_ms` of its
//!   headers: past it the request is answered 408 `request_timeout` and the connection closed.
//! - **Body budget.** Body bytes are reserved from a process-wide budget
//!   (`server.max_buffered_body_bytes`), of which one client address may hold at most
//!   `server.max_buffered_body_bytes_per_ip`: the declared `Content-Length` up front (capped at
//!   `server.max_body_bytes`), else each chunk as it arrives. Past either bound the answer is
//!   503 `backpressure` with `Retry-After`, before the bytes are buffered. The reservation is
//!   released when the request ends, however it ends (answered, failed, cancelled).
//!
//! [`guard`] is the middleware; the webhook path ([`super::receive`]) maps the same failures
//! with [`payload_failure`] so that its own answer and metrics agree.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use bytes::Bytes;
use futures_util::Stream;

use crate::config::Config;
use crate::error::ApiError;
use crate::internal_events::EdgeRefused;

/// Seconds a refused client is told to wait (budget or connections): both free up as soon
/// as other requests end.
const RETRY_AFTER_SECS: u64 = 2;

/// The key a client address is counted under: itself for IPv4 (and IPv4-mapped IPv6), its
/// /64 for IPv6 (one host commonly holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

// --- Body budget --------------------------------------------------------------------------

/// Bytes of request bodies buffered at once: in all, and per client address.
pub struct BodyBudget {
    cap: usize,
    per_client_cap: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

impl BodyBudget {
    pub fn new(cap: usize, per_client_cap: usize) -> BodyBudget {
        BodyBudget {
            cap,
            per_client_cap,
            held: Mutex::new(Held::default()),
        }
    }

    /// Takes `n` bytes for `client`, or nothing when either bound would be passed.
    fn try_reserve(&self, client: IpAddr, n: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.by_client.get(&client).copied().unwrap_or(0);
        if held.total + n > self.cap || mine + n > self.per_client_cap {
            return false;
        }
        held.total += n;
        *held.by_client.entry(client).or_insert(0) += n;
        true
    }

    fn release(&self, client: IpAddr, n: usize) {
        if n == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(n);
        if let Some(mine) = held.by_client.get_mut(&client) {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                held.by_client.remove(&client);
            }
        }
    }

    /// Bytes held now, in all.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// Why a body could not be read: set by the guarded stream, read by the middleware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Timeout,
    Budget,
}

/// The marker error a guarded body stream fails with when the budget is exhausted.
#[derive(Debug)]
struct BudgetExhausted;

impl std::fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the buffered request body budget is exhausted")
    }
}

impl std::error::Error for BudgetExhausted {}

/// One request's reservation, shared by the middleware and the body stream; released when
/// both are gone (the request ended, whatever way).
struct Reservation {
    budget: Arc<BodyBudget>,
    client: IpAddr,
    reserved: Cell<usize>,
    failure: Cell<Option<Failure>>,
    /// The body's receiving end when it was left unread (see [`KeepUnread`]).
    unread: RefCell<Option<Payload>>,
}

impl Reservation {
    fn grow_to(&self, n: usize) -> bool {
        let have = self.reserved.get();
        if n <= have {
            return true;
        }
        if self.budget.try_reserve(self.client, n - have) {
            self.reserved.set(n);
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.client, self.reserved.get());
    }
}

/// The request body, under the deadline and the budget.
struct GuardedBody {
    inner: Payload,
    reservation: Rc<Reservation>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    read: usize,
    /// Nothing more is returned (failed or complete).
    done: bool,
    /// The body arrived to its end.
    complete: bool,
}

impl Drop for GuardedBody {
    /// A body dropped before its end: its receiving end is kept with the reservation until
    /// the answer is written (see [`KeepUnread`]).
    fn drop(&mut self) {
        if !self.complete {
            *self.reservation.unread.borrow_mut() = Some(self.inner.take());
        }
    }
}

/// The body of an answer to a request whose body was not read to its end: it keeps the
/// request body's receiving end alive until the answer is written, so that the HTTP layer
/// closes the connection after the answer. (Dropped earlier, a chunked request body would
/// be drained instead, for as long as the client cares to trickle it, with no deadline.)
struct KeepUnread {
    body: BoxBody,
    _reservation: Rc<Reservation>,
}

impl MessageBody for KeepUnread {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

impl Stream for GuardedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            this.reservation.failure.set(Some(Failure::Timeout));
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body read timed out",
            )))));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.read += chunk.len();
                if !this.reservation.grow_to(this.read) {
                    this.done = true;
                    this.reservation.failure.set(Some(Failure::Budget));
                    return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::other(
                        BudgetExhausted,
                    )))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.complete = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// The error a body read failure stands for, when it is one of the edge's: 408 for the
/// deadline, 503 for the budget.
pub fn payload_failure(e: &PayloadError, edge: &Edge) -> Option<ApiError> {
    let PayloadError::Io(io) = e else {
        return None;
    };
    if io.kind() == std::io::ErrorKind::TimedOut {
        return Some(ApiError::RequestTimeout {
            timeout_ms: edge.body_timeout.as_millis() as u64,
        });
    }
    io.get_ref()
        .is_some_and(|inner| inner.is::<BudgetExhausted>())
        .then_some(ApiError::Backpressure {
            retry_after_secs: RETRY_AFTER_SECS,
        })
}

// --- Connections per client address ---------------------------------------------------------

/// Open connections per client address (see the module docs).
pub struct ConnLimiter {
    cap: usize,
    trusted: HashSet<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// What a connection carries in its extensions: whether it is past the cap, and (when it is
/// counted) the guard that uncounts it when the connection closes.
pub struct ConnSlot {
    over: bool,
    _counted: Option<Counted>,
}

struct Counted {
    limiter: Arc<ConnLimiter>,
    key: IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl ConnLimiter {
    pub fn new(cap: usize, trusted: &[IpAddr]) -> ConnLimiter {
        ConnLimiter {
            cap,
            trusted: trusted
                .iter()
                .flat_map(|ip| [*ip, ip.to_canonical()])
                .collect(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// For `HttpServer::on_connect`: counts the connection against its client address.
    pub fn on_connect(self: &Arc<Self>, conn: &dyn Any, ext: &mut Extensions) {
        // Plain HTTP, or HTTPS (`server.tls_cert_file`): the TCP stream under the TLS one.
        let tcp = conn
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .or_else(|| {
                conn.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>>()
                    .map(|s| s.get_ref().0)
            });
        let Some(peer) = tcp.and_then(|s| s.peer_addr().ok()) else {
            return;
        };
        if self.trusted.contains(&peer.ip()) || self.trusted.contains(&peer.ip().to_canonical()) {
            return;
        }
        let key = client_key(peer.ip());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.cap {
            ext.insert(ConnSlot {
                over: true,
                _counted: None,
            });
            return;
        }
        *n += 1;
        ext.insert(ConnSlot {
            over: false,
            _counted: Some(Counted {
                limiter: self.clone(),
                key,
            }),
        });
    }

    /// Connections counted now for `ip`'s client key.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }
}

// --- The middleware -------------------------------------------------------------------------

/// The edge's settings and shared state, registered as app data.
pub struct Edge {
    pub budget: Arc<BodyBudget>,
    pub connections: Arc<ConnLimiter>,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_connections_per_ip: usize,
}

impl Edge {
    pub fn from_config(config: &Config) -> Edge {
        let s = &config.server;
        Edge {
            budget: Arc::new(BodyBudget::new(
                s.max_buffered_body_bytes,
                s.max_buffered_body_bytes_per_ip,
            )),
            connections: Arc::new(ConnLimiter::new(
                s.max_connections_per_ip,
                &s.trusted_proxies,
            )),
            body_timeout: Duration::from_millis(s.body_read_timeout_ms),
            max_body_bytes: s.max_body_bytes,
            max_connections_per_ip: s.max_connections_per_ip,
        }
    }
}

/// An error answer that also closes the connection (its body, if any, stays unread).
fn refuse(req: ServiceRequest, e: ApiError) -> ServiceResponse<BoxBody> {
    let mut res = e.error_response();
    res.head_mut().set_connection_type(ConnectionType::Close);
    req.into_response(res)
}

/// The middleware (see the module docs). Registered inside `observe`, so that its refusals
/// are counted and logged like any answer.
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(edge) = req.app_data::<web::Data<Edge>>().cloned() else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    if req.conn_data::<ConnSlot>().is_some_and(|slot| slot.over) {
        EdgeRefused {
            reason: "connections",
        }
        .emit();
        return Ok(refuse(
            req,
            ApiError::TooManyConnections {
                limit: edge.max_connections_per_ip,
                retry_after_secs: RETRY_AFTER_SECS,
            },
        ));
    }
    let payload = req.take_payload();
    if matches!(payload, Payload::None) {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    }
    let client = req
        .app_data::<web::Data<crate::state::AppState>>()
        .and_then(|state| crate::http::client_ip(state, req.request()))
        .or_else(|| req.peer_addr().map(|a| a.ip()))
        .map(client_key)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let reservation = Rc::new(Reservation {
        budget: edge.budget.clone(),
        client,
        reserved: Cell::new(0),
        failure: Cell::new(None),
        unread: RefCell::new(None),
    });
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = declared {
        if !reservation.grow_to(n.min(edge.max_body_bytes)) {
            EdgeRefused {
                reason: "body_budget",
            }
            .emit();
            return Ok(refuse(
                req,
                ApiError::Backpressure {
                    retry_after_secs: RETRY_AFTER_SECS,
                },
            ));
        }
    }
    req.set_payload(Payload::Stream {
        payload: Box::pin(GuardedBody {
            inner: payload,
            reservation: reservation.clone(),
            deadline: Box::pin(tokio::time::sleep(edge.body_timeout)),
            read: 0,
            done: false,
            complete: false,
        }),
    });
    let res = next.call(req).await?;
    let failure = reservation.failure.get();
    let mut res = match failure {
        None => res.map_into_boxed_body(),
        Some(f) => {
            let (req, _) = res.into_parts();
            let e = match f {
                Failure::Timeout => ApiError::RequestTimeout {
                    timeout_ms: edge.body_timeout.as_millis() as u64,
                },
                Failure::Budget => ApiError::Backpressure {
                    retry_after_secs: RETRY_AFTER_SECS,
                },
            };
            EdgeRefused {
                reason: match f {
                    Failure::Timeout => "body_timeout",
                    Failure::Budget => "body_budget",
                },
            }
            .emit();
            let mut res = e.error_response();
            res.head_mut().set_connection_type(ConnectionType::Close);
            ServiceResponse::new(req, res)
        }
    };
    if reservation.unread.borrow().is_some() {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        res = res.map_body(|_, body| {
            BoxBody::new(KeepUnread {
                body,
                _reservation: reservation,
            })
        });
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_the_total_and_each_client_and_releases() {
        let b = Arc::new(BodyBudget::new(100, 60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(b.try_reserve(a, 60));
        assert!(!b.try_reserve(a, 1), "a client's share is bounded");
        assert!(b.try_reserve(c, 40));
        assert!(!b.try_reserve(c, 1), "the total is bounded");
        let r = Reservation {
            budget: b.clone(),
            client: a,
            reserved: Cell::new(0),
            failure: Cell::new(None),
            unread: RefCell::new(None),
        };
        b.release(a, 60);
        assert!(r.grow_to(30));
        assert!(r.grow_to(50));
        assert_eq!(b.held(), 90);
        drop(r);
        assert_eq!(b.held(), 40, "a reservation is released when dropped");
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
