//! Rate limits (governor): per client IP before any work, per tenant after verification.
//!
//! Memory is bounded: the per-IP table forgets idle IPs on every sweep (once a minute, and
//! at once when it holds more than `max_tracked_keys`); tenants are a fixed set from the
//! configuration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

pub struct Limiters {
    ip: DefaultKeyedRateLimiter<IpAddr>,
    tenants: HashMap<String, DefaultDirectRateLimiter>,
    max_tracked_keys: usize,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let nz = |v: u32| NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(nz(per_sec)).allow_burst(nz(burst))
}

/// Seconds to wait, rounded up, at least 1 (Retry-After has second granularity).
fn ceil_secs(d: std::time::Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

impl Limiters {
    pub fn from_config(c: &Config) -> Limiters {
        let l = &c.limits;
        let tenants = c
            .tenants
            .iter()
            .map(|(id, t)| {
                let q = quota(
                    t.requests_per_sec.unwrap_or(l.tenant_requests_per_sec),
                    t.burst.unwrap_or(l.tenant_burst),
                );
                (id.clone(), RateLimiter::direct(q))
            })
            .collect();
        Limiters {
            ip: RateLimiter::keyed(quota(l.ip_requests_per_sec, l.ip_burst)),
            tenants,
            max_tracked_keys: l.max_tracked_keys,
            clock: DefaultClock::default(),
        }
    }

    /// `Err(retry_after_secs)` when this IP is over its quota.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), u64> {
        if self.ip.len() >= self.max_tracked_keys {
            self.sweep();
        }
        self.ip
            .check_key(&ip)
            .map_err(|not_until| ceil_secs(not_until.wait_time_from(self.clock.now())))
    }

    /// `Err(retry_after_secs)` when this tenant is over its quota. Unknown tenants (none
    /// exist after validation) are not limited.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), u64> {
        match self.tenants.get(tenant) {
            Some(l) => l
                .check()
                .map_err(|not_until| ceil_secs(not_until.wait_time_from(self.clock.now()))),
            None => Ok(()),
        }
    }

    /// Forgets IPs whose bucket is full again (idle long enough to have no effect).
    pub fn sweep(&self) {
        self.ip.retain_recent();
        self.ip.shrink_to_fit();
    }

    pub fn tracked_ips(&self) -> usize {
        self.ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_burst_then_retry_after() {
        let c = Config::from_toml(
            r#"
            [limits]
            ip_requests_per_sec = 1
            ip_burst = 2
            [tenants.t]
            requests_per_sec = 1
            burst = 1
            [sources.s]
            provider = "meta"
            app_secrets = ["x"]
            verify_token = "v"
            channels = { "1" = "t" }
        "#,
        )
        .unwrap();
        let l = Limiters::from_config(&c);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check_ip(ip).is_ok());
        assert!(l.check_ip(ip).is_ok());
        assert_eq!(l.check_ip(ip), Err(1));
        // Another IP has its own bucket.
        assert!(l.check_ip("192.0.2.2".parse().unwrap()).is_ok());
        assert!(l.check_tenant("t").is_ok());
        assert!(l.check_tenant("t").is_err());
    }
}
