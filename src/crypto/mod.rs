//! Secrets in memory and at rest: the [`Secret`] wrapper that never prints, constant-time
//! comparison, and AES-256-GCM sealing under master keys ([`sealed`]).
//!
//! It sits below everything else (configuration holds [`Secret`]s and loads the master
//! keys; the verifiers and the admin API use both) and depends on nothing in the crate.

pub mod sealed;

use std::fmt;

use subtle::ConstantTimeEq;

pub use sealed::{CryptoError, MasterKeys, Sealed, ENV_VAR};

/// A secret from configuration (app secret, auth token, verify token...).
/// `Debug` and `Display` print `[redacted]`; the value is reachable only through
/// [`Secret::expose`], whose callers are the verifiers.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time equality against a presented value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        ct_eq(self.0.as_bytes(), presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Constant-time comparison; a length mismatch returns early (lengths are not secret here:
/// every compared value has a public, fixed length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
    }
}
