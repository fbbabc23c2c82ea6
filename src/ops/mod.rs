//! Operator tools run as commands against a running deployment's Redis: `switchboard
//! replay` ([`replay`]: dead letters back through verify → normalize → accept after a fix)
//! and `switchboard inspect` ([`inspect`]: stream lengths, consumer groups, pending, lag,
//! oldest unacknowledged entry).
//!
//! Both need the Redis backend: the memory backend lives inside the gateway's process, so a
//! separate command has nothing to look at. They use the same [`Backend`] API as the gateway
//! (accepts go through the same dedup + enqueue script).

pub mod inspect;
pub mod replay;

use crate::accept::Backend;
use crate::config::{BackendKind, Config};

/// Why an operator command cannot run against this configuration.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(
        "`switchboard {command}` needs backend = \"redis\": the memory backend keeps its streams \
         inside the gateway's own process, where no other command can reach them \
         (set backend = \"redis\" or SWITCHBOARD__BACKEND=redis)"
    )]
    MemoryBackend { command: &'static str },
    #[error(transparent)]
    Backend(#[from] crate::accept::BackendError),
}

/// The configured Redis backend for an operator command; refuses the memory backend.
/// Call it inside a Tokio runtime (the backend starts its group-commit task there).
pub fn redis_backend(config: &Config, command: &'static str) -> Result<Backend, OpsError> {
    match config.backend {
        BackendKind::Memory => Err(OpsError::MemoryBackend { command }),
        // The gateway's own construction: one stream partition, or `streams.partitions`.
        BackendKind::Redis => Ok(crate::state::build_backend(config)?),
    }
}
