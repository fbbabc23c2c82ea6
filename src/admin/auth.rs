//! Who is calling: API keys (`Authorization: Bearer <token>`), their role and tenant scope,
//! and the per-key rate limit. The rules of each endpoint (which roles, which scope) are in
//! `crate::http::endpoints::ENDPOINTS`, the same table the OpenAPI document is made from.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::Quota;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Admin, KeyRecord};
use crate::error::ApiError;

/// What a key may do (see docs/admin.md for the whole matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Everything in its scope, API keys of every role and the audit log included.
    Owner,
    /// Everything in its scope except owner and admin keys; reads the audit log.
    Admin,
    /// Sets its own agent's presence; reads its tenant's agents, queues and conversations.
    Agent,
    /// Reads everything but API keys, the audit log and contacts' data.
    Viewer,
}

impl KeyRole {
    pub const ALL: [KeyRole; 4] = [
        KeyRole::Owner,
        KeyRole::Admin,
        KeyRole::Agent,
        KeyRole::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Owner => "owner",
            KeyRole::Admin => "admin",
            KeyRole::Agent => "agent",
            KeyRole::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<KeyRole> {
        KeyRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a key of this role may create or revoke keys of role `other`.
    pub fn manages(self, other: KeyRole) -> bool {
        match self {
            KeyRole::Owner => true,
            KeyRole::Admin => matches!(other, KeyRole::Agent | KeyRole::Viewer),
            _ => false,
        }
    }
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// None for the `[api] token` of the configuration.
    pub key_id: Option<String>,
    pub prefix: String,
    pub role: KeyRole,
    /// None: every tenant.
    pub tenant: Option<String>,
    pub agent: Option<String>,
}

impl Principal {
    /// How the audit log names this caller (never the token).
    pub fn actor(&self) -> String {
        match &self.key_id {
            Some(id) => format!("key:{}:{id}", self.prefix),
            None => "config:api.token".into(),
        }
    }

    /// Whether this caller's scope includes `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

pub fn quota(per_sec: u32, burst: u32) -> Quota {
    let nz = |v: u32| NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(nz(per_sec)).allow_burst(nz(burst))
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Prefix every generated token starts with (so that secret scanners recognise them).
pub const TOKEN_PREFIX: &str = "sbk_";

/// A new token and the prefix shown for it (`sbk_` and 8 characters).
pub fn new_token() -> (String, String) {
    use base64::Engine as _;
    let raw = crate::crypto::sealed::random_bytes::<32>();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let prefix = token[..TOKEN_PREFIX.len() + 8].to_string();
    (token, prefix)
}

impl Admin {
    /// Finds the key a bearer token belongs to, and charges its rate limit.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        pg_enabled: bool,
    ) -> Result<Principal, ApiError> {
        if self.bootstrap.is_none() && !pg_enabled {
            return Err(ApiError::ApiDisabled);
        }
        let presented = presented.ok_or(ApiError::Unauthorized)?.trim();
        if presented.is_empty() {
            return Err(ApiError::Unauthorized);
        }
        let presented_hash = token_hash(presented);
        // Digests are compared, not the tokens: equal lengths whatever was presented, so
        // the time taken says nothing of the configured token's length either.
        let (principal, per_sec, burst) = match &self.bootstrap {
            Some(t) if crate::crypto::ct_eq(&token_hash(t.expose()), &presented_hash) => (
                Principal {
                    key_id: None,
                    prefix: "config".into(),
                    role: KeyRole::Owner,
                    tenant: None,
                    agent: None,
                },
                self.token_requests_per_sec.unwrap_or(0),
                self.token_requests_per_sec.unwrap_or(0).saturating_mul(2),
            ),
            _ => {
                let live = self.live();
                // A hash map lookup by the token's SHA-256: the time it takes does not
                // depend on how much of a valid token was guessed.
                let k: &KeyRecord = live
                    .keys
                    .get(&presented_hash)
                    .ok_or(ApiError::Unauthorized)?;
                (
                    Principal {
                        key_id: Some(k.id.clone()),
                        prefix: k.prefix.clone(),
                        role: k.role,
                        tenant: k.tenant.clone(),
                        agent: k.agent.clone(),
                    },
                    k.requests_per_sec.unwrap_or(self.default_requests_per_sec),
                    k.burst.unwrap_or(self.default_burst),
                )
            }
        };
        // per_sec 0: the `[api] token` without `token_requests_per_sec`, not limited.
        if per_sec == 0 {
            return Ok(principal);
        }
        let limiter = self.limiter(principal.key_id.as_deref().unwrap_or(""), per_sec, burst);
        if let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            crate::internal_events::RateLimited { scope: "api_key" }.emit();
            return Err(ApiError::RateLimited {
                scope: "API key",
                retry_after_secs: (wait.as_millis().div_ceil(1000) as u64).max(1),
            });
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let (a, pa) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(&pa) && pa.starts_with("sbk_") && pa.len() == 12);
        assert_eq!(a.len(), 4 + 43);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn who_manages_whom() {
        use KeyRole::*;
        assert!(Owner.manages(Owner) && Owner.manages(Admin));
        assert!(!Admin.manages(Owner) && !Admin.manages(Admin));
        assert!(Admin.manages(Agent) && Admin.manages(Viewer));
        assert!(!Agent.manages(Viewer) && !Viewer.manages(Viewer));
    }
}
