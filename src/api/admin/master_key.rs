//! Master key rotation: re-encrypts every source secret under the first configured master
//! key, through the API (`POST /v1/admin/rotate-master-key`) or the command line
//! (`switchboard rotate-master-key`, which has no HTTP state and calls [`reencrypt_all`]).
//! All or nothing: one transaction, refused while a secret is sealed under a key that is
//! no longer configured.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{db, master, postgres, reload, transaction, Audit};
use crate::admin::store;
use crate::crypto::MasterKeys;
use crate::error::ApiError;
use crate::http::authorize;
use crate::http::State;
use crate::persist::Postgres;

pub(super) async fn rotate(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authorize(&state, &req)?;
    let pg = postgres(&state)?;
    let keys = master(&state)?;
    let report = reencrypt_all(pg, keys, &who.actor()).await?;
    reload(&state, pg).await;
    Ok(HttpResponse::Ok().json(report))
}

/// Re-encrypts every source secret not under the first master key (one transaction, with
/// its audit row). Refuses (409 `master_key_unknown`, nothing changed) when a row was
/// encrypted under a key that is no longer configured.
pub async fn reencrypt_all(
    pg: &Postgres,
    keys: &MasterKeys,
    actor: &str,
) -> Result<Value, ApiError> {
    let (report, _) = transaction(pg, actor, db, async |tx| {
        let rows = store::all_sources(tx).await.map_err(db)?;
        let current = keys.current_id().to_string();
        let mut moved = Vec::new();
        let mut from: BTreeMap<String, u64> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for r in &rows {
            if r.sealed.key_id == current {
                continue;
            }
            match keys.open(&r.sealed, &store::source_aad(&r.id)) {
                Ok(plain) => {
                    let sealed = keys.seal(&plain, &store::source_aad(&r.id));
                    store::update_source_secret(tx, &r.id, &sealed, r.secret_count, false)
                        .await
                        .map_err(db)?;
                    *from.entry(r.sealed.key_id.clone()).or_default() += 1;
                    moved.push(r.id.clone());
                }
                Err(_) => unreadable.push(format!("source {}", r.id)),
            }
        }
        let dests = crate::admin::destinations::all(tx).await.map_err(db)?;
        let mut moved_destinations = 0u64;
        for r in &dests {
            if r.sealed.key_id == current {
                continue;
            }
            let aad = crate::admin::destinations::destination_aad(&r.tenant, &r.id);
            match keys.open(&r.sealed, &aad) {
                Ok(plain) => {
                    let sealed = keys.seal(&plain, &aad);
                    crate::admin::destinations::update_secret(tx, &r.tenant, &r.id, &sealed, false)
                        .await
                        .map_err(db)?;
                    *from.entry(r.sealed.key_id.clone()).or_default() += 1;
                    moved_destinations += 1;
                }
                Err(_) => unreadable.push(format!("destination {}/{}", r.tenant, r.id)),
            }
        }
        if !unreadable.is_empty() {
            return Err(ApiError::ConflictCode {
                code: "master_key_unknown",
                message: format!(
                    "{} are encrypted under a key that is not configured; nothing was changed",
                    unreadable.join(", ")
                ),
            });
        }
        let report = json!({
            "key_id": current, "reencrypted": moved.len() as u64 + moved_destinations, "from": from, "sources": moved,
            "destinations": moved_destinations,
        });
        let audit = Audit {
            tenant: None,
            action: "master_key.rotate",
            target: format!("master_key:{current}"),
            before: None,
            after: Some(report.clone()),
        };
        Ok((report, Some(audit)))
    })
    .await?;
    Ok(report)
}
