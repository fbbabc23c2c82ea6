//! The dead-letter stream's record as read back: what ingest stored of a verified request
//! it could not turn into events (the reason, the failing part and the raw request), for
//! `switchboard replay`, the read API and erasure.

use base64::Engine as _;

/// A dead-letter entry as read back from the stream (written by the ingest path: `crate::ingest`). `method` and
/// `url` are absent from entries written before they were added.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DeadLetterRecord {
    #[serde(default)]
    pub deadletter_id: String,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
    pub source: String,
    #[serde(default)]
    pub provider: String,
    pub received_at: String,
    #[serde(default)]
    pub part: Option<serde_json::Value>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_base64: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

impl DeadLetterRecord {
    /// The raw request body.
    pub fn body_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match (&self.body, &self.body_base64) {
            (Some(b), _) => Ok(b.clone().into_bytes()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64),
            (None, None) => Ok(Vec::new()),
        }
    }
}
