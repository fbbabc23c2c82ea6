//! Rate limits (governor): per client IP before any work, per tenant after verification,
//! and failed API-token attempts per client IP ([`AuthFailures`]).
//!
//! Memory is bounded: the per-IP tables forget idle IPs on every sweep (once a minute, and
//! at once when they hold more than `max_tracked_keys`); tenants are a fixed set from the
//! configuration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

pub struct Limiters {
    ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Failed bearer-token attempts per client address.
    pub auth: AuthFailures,
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
            auth: AuthFailures::new(c.api.failed_auth_per_min, l.max_tracked_keys),
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
        self.auth.sweep();
    }

    pub fn tracked_ips(&self) -> usize {
        self.ip.len()
    }
}

/// Failed bearer-token attempts per client address: `per_min` of them (as a burst, refilled
/// at `per_min` a minute); the one that finds the allowance empty locks the address out
/// until a new attempt is allowed, and while it is locked out no token is even looked at
/// (so a right guess during the lock-out gains nothing).
pub struct AuthFailures {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    locked: Mutex<HashMap<IpAddr, Instant>>,
    max_tracked_keys: usize,
    clock: DefaultClock,
}

impl AuthFailures {
    pub fn new(per_min: u32, max_tracked_keys: usize) -> AuthFailures {
        let per_min = NonZeroU32::new(per_min.max(1)).unwrap_or(NonZeroU32::MIN);
        AuthFailures {
            failures: RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(per_min)),
            locked: Mutex::new(HashMap::new()),
            max_tracked_keys,
            clock: DefaultClock::default(),
        }
    }

    /// `Err(retry_after_secs)` while `ip` is locked out.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        match locked.get(&ip) {
            Some(until) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Err(ceil_secs(left)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Counts a failed attempt; `Err(retry_after_secs)` when it used up the allowance (the
    /// address is locked out from now on).
    pub fn failed(&self, ip: IpAddr) -> Result<(), u64> {
        if self.failures.len() >= self.max_tracked_keys {
            self.sweep();
        }
        match self.failures.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let mut locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
                if locked.len() >= self.max_tracked_keys {
                    let now = Instant::now();
                    locked.retain(|_, until| *until > now);
                }
                if locked.len() < self.max_tracked_keys {
                    locked.insert(ip, Instant::now() + wait.max(Duration::from_millis(1)));
                }
                Err(ceil_secs(wait))
            }
        }
    }

    /// Forgets addresses whose allowance is whole again and lock-outs that ended.
    pub fn sweep(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.locked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
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

    #[test]
    fn failed_tokens_lock_an_address_out() {
        let a = AuthFailures::new(3, 100);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert!(a.check(ip).is_ok());
            assert!(a.failed(ip).is_ok());
        }
        // The fourth failure finds the allowance empty: locked out for about 20 s.
        let wait = a.failed(ip).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(a.check(ip).is_err());
        // Another address is not affected.
        assert!(a.check("192.0.2.8".parse().unwrap()).is_ok());
    }
}
