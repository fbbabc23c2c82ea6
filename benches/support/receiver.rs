//! What the delivery bench's and the delivery tests' loopback receivers share: reading one
//! HTTP/1.1 request off a keep-alive connection, and the Standard Webhooks signature check
//! done independently of the gateway's signing code. (Included with `#[path]` by
//! benches/delivery.rs and tests/it/delivery.rs.)

use std::collections::HashMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One request's headers (names lowercased) and body; `buf` keeps what was read past it.
/// None when the connection ends.
pub async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some((headers, body))
}

/// `v1,<base64 HMAC-SHA256>` of "{id}.{timestamp}.{body}" under the base64-decoded part of
/// a `whsec_` secret, as Standard Webhooks specifies.
pub fn signature(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("whsec_ followed by base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Whether a request's `webhook-signature` header carries the right signature.
pub fn verified(secret: &str, headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let h = |k: &str| headers.get(k).map(String::as_str).unwrap_or("");
    let want = signature(secret, h("webhook-id"), h("webhook-timestamp"), body);
    h("webhook-signature").split(' ').any(|s| s == want)
}
