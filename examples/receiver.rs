//! A receiver of switchboard's push delivery (docs/delivery.md) with actix-web.
//!
//! Verifies each request as Standard Webhooks specifies (HMAC-SHA256 over
//! "{webhook-id}.{webhook-timestamp}.{body}" with the base64-decoded part of the whsec_
//! secret, compared in constant time; timestamps older or newer than 5 minutes refused) and
//! deduplicates on `webhook-id`, the event's `event_id`.
//!
//! ```sh
//! SWITCHBOARD_DESTINATION_SECRET=whsec_... cargo run --example receiver -- 9000
//! ```

use std::collections::HashSet;
use std::sync::Mutex;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

struct Receiver {
    secret: Vec<u8>,
    seen: Mutex<HashSet<String>>,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn verified(secret: &[u8], req: &HttpRequest, body: &[u8]) -> bool {
    let (id, ts) = (header(req, "webhook-id"), header(req, "webhook-timestamp"));
    let Ok(t) = ts.parse::<i64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - t).abs() > 300 {
        return false;
    }
    header(req, "webhook-signature").split(' ').any(|sig| {
        let Some(b64) = sig.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = STANDARD.decode(b64) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&given).is_ok() // constant time
    })
}

async fn receive(state: web::Data<Receiver>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if !verified(&state.secret, &req, &body) {
        return HttpResponse::Unauthorized().finish();
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let id = header(&req, "webhook-id").to_string();
    // Store it (keyed by event_id) before answering 2xx; a retry is the same webhook-id.
    if state.seen.lock().unwrap().insert(id.clone()) {
        println!("{} {} {id}", event["kind"], event["conversation_id"]);
    }
    HttpResponse::NoContent().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let secret = std::env::var("SWITCHBOARD_DESTINATION_SECRET")
        .expect("set SWITCHBOARD_DESTINATION_SECRET to the destination's whsec_ secret");
    let secret = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("whsec_ followed by base64");
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let state = web::Data::new(Receiver {
        secret,
        seen: Mutex::new(HashSet::new()),
    });
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/hooks", web::post().to(receive))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
