//! Secrets at rest: AES-256-GCM under a master key, with key rotation.
//!
//! The master keys come from the environment variable `SWITCHBOARD_MASTER_KEY` or, when it
//! is not set, from the file named by `[api] master_key_file`. Either holds one key, the
//! base64 of 32 bytes (its id is then `default`), or several `id:base64` pairs separated by
//! commas or newlines: the **first** encrypts, every one decrypts (by the key id stored with
//! each ciphertext). To rotate: put the new key first, keep the old ones after it, restart
//! (or roll) the replicas, then `POST /v1/admin/rotate-master-key` (or
//! `switchboard rotate-master-key`) re-encrypts every row under the first key; the old ones
//! can then be removed.
//!
//! Each ciphertext is bound to its row by associated data (e.g. `source:<id>`), so a
//! ciphertext copied to another row does not decrypt. Key material never prints: `Debug`
//! shows the key ids only.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine as _;

pub const ENV_VAR: &str = "SWITCHBOARD_MASTER_KEY";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("invalid master key: {0}")]
    Invalid(String),
    #[error("no master key with id {0:?} is configured (it encrypted this row)")]
    UnknownKey(String),
    #[error("decryption failed (wrong key, or the row was altered)")]
    Decrypt,
}

/// One encrypted value as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// The configured master keys, the first being the one that encrypts.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MasterKeys").field("ids", &ids).finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl MasterKeys {
    /// Parses `base64` or `id:base64[,id:base64...]` (commas or newlines between keys).
    /// Messages never contain key material.
    pub fn parse(spec: &str) -> Result<MasterKeys, CryptoError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        let parts: Vec<&str> = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.starts_with('#'))
            .collect();
        if parts.is_empty() {
            return Err(CryptoError::Invalid("no key given".into()));
        }
        for (i, part) in parts.iter().enumerate() {
            let (id, b64) = match part.split_once(':') {
                Some((id, k)) => (id.trim().to_string(), k.trim()),
                None if parts.len() == 1 => ("default".to_string(), *part),
                None => {
                    return Err(CryptoError::Invalid(format!(
                        "key {} has no id: with several keys write id:base64 for each",
                        i + 1
                    )))
                }
            };
            if !valid_key_id(&id) {
                return Err(CryptoError::Invalid(format!(
                    "key {}: ids use letters, digits, '_', '-', '.' (1-64 chars)",
                    i + 1
                )));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| {
                    CryptoError::Invalid(format!("key {id:?} is not valid base64 (standard)"))
                })?;
            if raw.len() != 32 {
                return Err(CryptoError::Invalid(format!(
                    "key {id:?} is {} bytes; AES-256 needs 32 (openssl rand -base64 32)",
                    raw.len()
                )));
            }
            if keys.iter().any(|(k, _)| *k == id) {
                return Err(CryptoError::Invalid(format!("key id {id:?} appears twice")));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&raw));
            keys.push((id, cipher));
        }
        Ok(MasterKeys { keys })
    }

    /// From `SWITCHBOARD_MASTER_KEY` when set, else from `file` when given; `Ok(None)` when
    /// neither is (encrypted sources are then unavailable).
    pub fn load(file: Option<&std::path::Path>) -> Result<Option<MasterKeys>, CryptoError> {
        if let Ok(v) = std::env::var(ENV_VAR) {
            if !v.trim().is_empty() {
                return Self::parse(&v).map(Some);
            }
        }
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CryptoError::Invalid(format!(
                        "api.master_key_file = {}: cannot read it ({})",
                        path.display(),
                        e.kind()
                    ))
                })?;
                Self::parse(&text).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Id of the key that encrypts.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Encrypts under the first key with a fresh random nonce; `aad` binds it to its row.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Sealed {
        let (id, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a bounded buffer does not fail");
        Sealed {
            key_id: id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<Vec<u8>, CryptoError> {
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.nonce.len() != 12 {
            return Err(CryptoError::Decrypt);
        }
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// `n` random bytes from the operating system (API key tokens).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use aes_gcm::aead::rand_core::RngCore;
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn seal_open_round_trip_bound_to_its_row() {
        let k = MasterKeys::parse(&b64(&[7u8; 32])).unwrap();
        assert_eq!(k.current_id(), "default");
        let s = k.seal(b"hunter2", "source:a");
        assert!(!s.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(&s, "source:a").unwrap(), b"hunter2");
        assert_eq!(k.open(&s, "source:b"), Err(CryptoError::Decrypt));
        let mut tampered = s.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(k.open(&tampered, "source:a"), Err(CryptoError::Decrypt));
        // A fresh nonce each time.
        assert_ne!(k.seal(b"hunter2", "source:a").nonce, s.nonce);
    }

    #[test]
    fn rotation_first_key_encrypts_all_decrypt() {
        let old = MasterKeys::parse(&format!("k1:{}", b64(&[1u8; 32]))).unwrap();
        let sealed = old.seal(b"x", "r");
        let both =
            MasterKeys::parse(&format!("k2:{},\nk1:{}", b64(&[2u8; 32]), b64(&[1u8; 32]))).unwrap();
        assert_eq!(both.current_id(), "k2");
        assert_eq!(both.open(&sealed, "r").unwrap(), b"x");
        assert_eq!(both.seal(b"x", "r").key_id, "k2");
        let only_new = MasterKeys::parse(&format!("k2:{}", b64(&[2u8; 32]))).unwrap();
        assert_eq!(
            only_new.open(&sealed, "r"),
            Err(CryptoError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn bad_keys_are_explained_without_their_value() {
        let short = b64(&[9u8; 16]);
        let e = MasterKeys::parse(&short).unwrap_err().to_string();
        assert!(e.contains("16 bytes") && !e.contains(&short), "{e}");
        let e = MasterKeys::parse("a:!!notbase64!!")
            .unwrap_err()
            .to_string();
        assert!(e.contains("base64") && !e.contains("notbase64"), "{e}");
        let k = b64(&[1u8; 32]);
        assert!(MasterKeys::parse(&format!("{k},{k}")).is_err());
        assert!(MasterKeys::parse(&format!("a:{k},a:{k}")).is_err());
        let dbg = format!("{:?}", MasterKeys::parse(&k).unwrap());
        assert!(!dbg.contains(&k) && dbg.contains("default"), "{dbg}");
    }
}
