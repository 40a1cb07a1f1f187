//! Embargo: deliveries held until their release time.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, Db, StoreError};
use liaison_types::BodyId;
use serde::{Deserialize, Serialize};

use super::*;
use crate::HubError;

/// Deliveries held under embargo until their release time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Held {
    /// The message.
    pub message_id: String,
    /// Its originating body.
    pub origin: String,
    /// Bodies the policy delivers it to.
    pub recipients: Vec<String>,
    /// When to release it.
    pub not_before_ms: i64,
    /// Its expiry, if any: expired by release time, it is released to nobody.
    pub expires_at_ms: Option<i64>,
}

/// The release time of the earliest held delivery, if any.
pub(super) fn next_release(db: &Db) -> Result<Option<i64>, StoreError> {
    Ok(db
        .scan_prefix(HELD_PREFIX, 1)?
        .first()
        .and_then(|(k, _)| k.get(HELD_PREFIX.len()..HELD_PREFIX.len() + 8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX)))
}

/// What a release queued.
#[derive(Debug, Default)]
pub struct Released {
    /// `(recipient, queue position)` of each delivery released.
    pub queued: Vec<(BodyId, u64)>,
    /// The last audit position written (0 if none).
    pub audit_seq: u64,
}

/// Queues every held delivery whose time has come, in release-time order,
/// with a `released` audit record each; a message that expired meanwhile is
/// released to nobody, with an `expired` record per recipient.
pub(super) async fn release_due(
    db: &Db,
    now_ms: i64,
    policy_version: String,
) -> Result<Released, HubError> {
    db.write(move |txn| {
        let end = keys::seq_key(
            HELD_PREFIX,
            u64::try_from(now_ms).unwrap_or(0).saturating_add(1),
        );
        let mut released = Released::default();
        for (key, value) in txn.scan(HELD_PREFIX, &end, 256)? {
            let held: Held = parse(&key, &value)?;
            txn.delete(key);
            let expired = held.expires_at_ms.is_some_and(|e| e <= now_ms);
            for recipient in &held.recipients {
                let Ok(body) = BodyId::parse(recipient) else {
                    continue;
                };
                let mut rec = pb::AuditRecord {
                    at_ms: now_ms,
                    message_id: held.message_id.clone(),
                    origin: held.origin.clone(),
                    recipient: recipient.clone(),
                    policy_version: policy_version.clone(),
                    actor: "hub:embargo".into(),
                    ..Default::default()
                };
                if expired {
                    rec.event = AuditEvent::Expired.into();
                    rec.rule = Rule::MessageExpired.into();
                    rec.reason = "expired while held under embargo; released to nobody".into();
                } else {
                    rec.event = AuditEvent::Released.into();
                    rec.reason = format!(
                        "embargo until {} ended",
                        liaison_types::rfc3339(held.not_before_ms)
                    );
                    rec.queue_seq = enqueue(txn, &body, &held.message_id, &held.origin, now_ms)?;
                    released.queued.push((body, rec.queue_seq));
                }
                released.audit_seq = append_audit(txn, rec)?;
            }
        }
        Ok(released)
    })
    .await
}
