//! `[delivery]` and `[tenants.<t>.destinations.<id>]`: signed HTTP push of the events to
//! the tenants' own endpoints (docs/delivery.md). The worker is `crate::delivery`; this file
//! holds the data, its validation and the address rules that keep a destination from
//! reaching a private network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::crypto::Secret;
use crate::event::EventKind;

/// `[delivery]`: how every destination is delivered to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Run the delivery workers (when a destination can exist; state in Redis with the
    /// Redis backend, in process with the memory backend).
    pub enabled: bool,
    /// Allow destinations on loopback, private, link-local, shared and metadata addresses
    /// (tests, or a gateway deliberately inside the receivers' network).
    pub allow_private_networks: bool,
    /// First retry after this long; each later one waits twice as long...
    pub retry_initial_ms: u64,
    /// ...up to this long (each delay is jittered between half and all of it)...
    pub retry_max_ms: u64,
    /// ...until the event has been tried for this long: then it is given up (recorded).
    pub retry_horizon_secs: u64,
    /// A destination whose every attempt failed for this long is disabled (audited).
    pub disable_after_failing_secs: u64,
    /// Connection setup (DNS, TCP, TLS) must finish within this long.
    pub connect_timeout_ms: u64,
    /// Most events waiting for one destination; past it new events for it are given up
    /// (recorded as `queue_full`; redeliver them later).
    pub max_queued_per_destination: u64,
    /// Requests in flight at once in this replica, every destination together.
    pub max_in_flight_total: usize,
    /// Without PostgreSQL: attempts kept in Redis per destination (the newest ones).
    pub attempts_kept: u64,
    /// With PostgreSQL: attempts older than this are deleted.
    pub attempts_retention_days: u32,
    /// How often each replica looks for conversations due (also woken by new events).
    pub poll_ms: u64,
    /// Events stream entries read per batch by the fan-out.
    pub batch_size: usize,
    /// Most events one `POST .../redeliver` may queue.
    pub redeliver_max_events: usize,
    /// Events stream entries the fan-out may be behind (read but not acknowledged, or not
    /// read yet) while the stream's retention waits for it. Past this many, retention
    /// trims them anyway (its hard bound: the stream holds at most `streams.events_max_len`
    /// plus this many), counted in `switchboard_delivery_trimmed_unread_total` and logged.
    pub max_fanout_lag: u64,
}

/// Whether the delivery workers run for this configuration: enabled, and a destination can
/// exist (one in the file, or PostgreSQL for the API's).
pub fn runs(c: &super::Config) -> bool {
    c.delivery.enabled
        && (c.postgres.enabled || c.tenants.values().any(|t| !t.destinations.is_empty()))
}

pub fn defaults() -> DeliveryConfig {
    DeliveryConfig {
        enabled: true,
        allow_private_networks: false,
        retry_initial_ms: 1000,
        retry_max_ms: 3_600_000,
        retry_horizon_secs: 3 * 24 * 3600,
        disable_after_failing_secs: 5 * 24 * 3600,
        connect_timeout_ms: 5000,
        max_queued_per_destination: 100_000,
        max_in_flight_total: 256,
        attempts_kept: 1000,
        attempts_retention_days: 30,
        poll_ms: 200,
        batch_size: 256,
        redeliver_max_events: 10_000,
        max_fanout_lag: 1_000_000,
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        defaults()
    }
}

/// One destination: where a tenant's events are POSTed, signed like Standard Webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// `https://` (or `http://`) URL the events are POSTed to.
    pub url: String,
    /// Event kinds delivered (`message`, `status`...); empty: every kind.
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    /// `whsec_<base64>`: the receiver verifies `webhook-signature` with it.
    pub secret: Secret,
    /// One attempt (connect, send, answer) must finish within this long.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once to this destination (every replica together).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Most requests per second to this destination, per replica (absent: no limit).
    #[serde(default)]
    pub requests_per_sec: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

pub fn default_timeout_ms() -> u64 {
    10_000
}
pub fn default_max_in_flight() -> u32 {
    8
}
fn yes() -> bool {
    true
}

impl DestinationConfig {
    /// Whether events of `kind` go to this destination.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// Checks of `[delivery]`.
pub fn validate(d: &DeliveryConfig, errs: &mut Vec<String>) {
    if d.retry_initial_ms < 10 || d.retry_initial_ms > d.retry_max_ms {
        errs.push(format!(
            "delivery.retry_initial_ms = {}: use at least 10 and at most delivery.retry_max_ms ({})",
            d.retry_initial_ms, d.retry_max_ms
        ));
    }
    if d.retry_horizon_secs == 0 || d.retry_horizon_secs > 30 * 24 * 3600 {
        errs.push("delivery.retry_horizon_secs must be 1..=2592000 (30 days)".into());
    }
    if d.disable_after_failing_secs == 0 {
        errs.push("delivery.disable_after_failing_secs must be at least 1".into());
    }
    if d.max_fanout_lag == 0 {
        errs.push("delivery.max_fanout_lag must be at least 1".into());
    }
    if !(100..=60_000).contains(&d.connect_timeout_ms) {
        errs.push("delivery.connect_timeout_ms must be 100..=60000".into());
    }
    if d.max_queued_per_destination == 0 {
        errs.push("delivery.max_queued_per_destination must be at least 1".into());
    }
    if d.max_in_flight_total == 0 || d.max_in_flight_total > 10_000 {
        errs.push("delivery.max_in_flight_total must be 1..=10000".into());
    }
    if d.attempts_kept == 0 || d.attempts_kept > 100_000 {
        errs.push("delivery.attempts_kept must be 1..=100000".into());
    }
    if d.attempts_retention_days == 0 {
        errs.push("delivery.attempts_retention_days must be at least 1".into());
    }
    if !(10..=10_000).contains(&d.poll_ms) {
        errs.push("delivery.poll_ms must be 10..=10000".into());
    }
    if d.batch_size == 0 || d.batch_size > 10_000 {
        errs.push("delivery.batch_size must be 1..=10000".into());
    }
    if d.redeliver_max_events == 0 || d.redeliver_max_events > 1_000_000 {
        errs.push("delivery.redeliver_max_events must be 1..=1000000".into());
    }
}

/// Checks of one destination, each message naming `key` (`tenants.<t>.destinations.<id>`),
/// never quoting the secret. Names are resolved (blocking) to check their addresses; a name
/// that does not resolve now is not refused here (it is checked again at every delivery).
pub fn validate_destination(
    key: &str,
    id: &str,
    d: &DestinationConfig,
    allow_private: bool,
    errs: &mut Vec<String>,
) {
    if !super::valid_id(id) {
        errs.push(format!("{key}: ids use a-z, 0-9, '_' and '-' (1-64 chars)"));
    }
    check_settings(key, d, errs);
    if let Err(e) = crate::config::standard::decode_secret(d.secret.expose()) {
        errs.push(format!(
            "{key}.secret {e} (use whsec_ followed by base64 of 24-64 random bytes)"
        ));
    } else if !d.secret.expose().starts_with("whsec_") {
        errs.push(format!(
            "{key}.secret: write it as whsec_<base64>, the form receivers' libraries take"
        ));
    }
    match parse_url(&d.url) {
        Err(e) => errs.push(format!("{key}.url {e}")),
        Ok(target) if !allow_private => {
            if let Some(why) = refused_target(&target) {
                errs.push(format!(
                    "{key}.url: {why} (set delivery.allow_private_networks = true to allow it)"
                ));
            }
        }
        Ok(_) => {}
    }
}

/// The checks of a destination's numbers (file and API).
pub fn check_settings(key: &str, d: &DestinationConfig, errs: &mut Vec<String>) {
    if !(100..=120_000).contains(&d.timeout_ms) {
        errs.push(format!(
            "{key}.timeout_ms = {}: use 100..=120000",
            d.timeout_ms
        ));
    }
    if d.max_in_flight == 0 || d.max_in_flight > 1000 {
        errs.push(format!(
            "{key}.max_in_flight = {}: use 1..=1000",
            d.max_in_flight
        ));
    }
    if d.requests_per_sec == Some(0) {
        errs.push(format!(
            "{key}.requests_per_sec must be at least 1 (remove it for no limit)"
        ));
    }
}

/// A destination URL taken apart: what is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The host when it is an address literal.
    pub ip: Option<IpAddr>,
}

/// Parses a destination URL: http or https, a host, no credentials, no fragment.
pub fn parse_url(raw: &str) -> Result<Target, String> {
    let u = url::Url::parse(raw).map_err(|_| "is not an absolute URL".to_string())?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("uses {:?}: use https:// (or http://)", u.scheme()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("carries credentials: receivers verify the signature instead".into());
    }
    if u.fragment().is_some() {
        return Err("has a #fragment, which is never sent".into());
    }
    if raw.len() > 2048 {
        return Err("is longer than 2048 characters".into());
    }
    let port = u.port_or_known_default().ok_or("has no port")?;
    let (host, ip) = match u.host() {
        Some(url::Host::Domain(d)) => (d.to_string(), None),
        Some(url::Host::Ipv4(a)) => (a.to_string(), Some(IpAddr::V4(a))),
        Some(url::Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a))),
        None => return Err("has no host".into()),
    };
    Ok(Target { host, port, ip })
}

/// Why a target may not be delivered to without `allow_private_networks`: an address
/// literal in a refused range, a name that is obviously local, or a name resolving to a
/// refused address. None: allowed (or the name does not resolve now).
pub fn refused_target(t: &Target) -> Option<String> {
    if let Some(ip) = t.ip {
        return refused_ip(ip).map(|why| format!("{ip} is {why}"));
    }
    let host = t.host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Some(format!("{host} is loopback"));
    }
    let addrs: Vec<SocketAddr> = (host.as_str(), t.port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    refused_addrs(&host, addrs.iter().map(SocketAddr::ip))
}

/// The refusal of a name from its resolved addresses: any address in a refused range
/// refuses the name (a name that resolves both ways is a rebinding attempt or a mistake).
pub fn refused_addrs(host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Option<String> {
    addrs
        .into_iter()
        .find_map(|ip| refused_ip(ip).map(|why| format!("{host} resolves to {ip}, {why}")))
}

/// Why an address may not be delivered to: loopback, private, link-local (which holds the
/// cloud metadata endpoints 169.254.169.254 and fd00:ec2::254), shared, documentation,
/// multicast, reserved or unspecified ranges. Mapped and translated IPv4 addresses inside
/// IPv6 ones are judged as the IPv4 address they carry.
pub fn refused_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => refused_v4(a),
        IpAddr::V6(a) => refused_v6(a),
    }
}

fn refused_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    let why = match o {
        [0, ..] => "in 0.0.0.0/8 (this host)",
        [10, ..] => "private (10.0.0.0/8)",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        [127, ..] => "loopback",
        [169, 254, ..] => "link-local (169.254.0.0/16, cloud metadata)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation range",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking range (198.18.0.0/15)",
        [a0, ..] if a0 >= 224 => "multicast or reserved",
        _ => return None,
    };
    Some(why)
}

fn refused_v6(a: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let s = a.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0) {
        return refused_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    let why = if a.is_unspecified() {
        "unspecified"
    } else if a.is_loopback() {
        "loopback"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique local (fc00::/7, cloud metadata)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation range (2001:db8::/32)"
    } else if s[0] == 0x0100 && s[1..4].iter().all(|x| *x == 0) {
        "discard-only (100::/64)"
    } else if s[..6].iter().all(|x| *x == 0) {
        // ::a.b.c.d, the deprecated IPv4-compatible form.
        "IPv4-compatible (deprecated)"
    } else {
        return None;
    };
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_ranges() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(refused_ip(ip).is_some(), "{bad} should be refused");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = good.parse().unwrap();
            assert!(refused_ip(ip).is_none(), "{good} should be allowed");
        }
    }

    #[test]
    fn urls() {
        assert!(parse_url("ftp://x.example/").is_err());
        assert!(parse_url("https://u:p@x.example/").is_err());
        assert!(parse_url("https://x.example/#f").is_err());
        assert!(parse_url("not a url").is_err());
        let t = parse_url("https://hooks.example.com/in").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.ip),
            ("hooks.example.com", 443, None)
        );
        let t = parse_url("http://[::1]:8080/").unwrap();
        assert!(refused_target(&t).unwrap().contains("loopback"));
        let t = parse_url("http://localhost:9/").unwrap();
        assert!(refused_target(&t).unwrap().contains("loopback"));
        let t = parse_url("http://169.254.169.254/latest/meta-data").unwrap();
        assert!(refused_target(&t).unwrap().contains("metadata"));
    }
}
