//! Retention: the content of a message is erased once its level's retention
//! period (from the governance in force when it was routed) has passed. Its
//! labels, outcome and audit records stay; recipients not yet streamed it get
//! a withdrawal instead.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, to_json as json, Db, StoreError, Txn};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::*;
use crate::HubError;

/// Records when a message expires, so that its expiry is on record when it
/// comes (recipients' nodes erase it from their inboxes then).
pub(super) fn schedule_expiry(
    txn: &mut Txn<'_>,
    expires_at_ms: i64,
    id: &str,
) -> Result<(), StoreError> {
    txn.put(expiry_key(expires_at_ms, id), id.as_bytes().to_vec());
    Ok(())
}

fn first_due(db: &Db, prefix: &[u8]) -> Result<Option<i64>, StoreError> {
    Ok(db
        .scan_prefix(prefix, 1)?
        .first()
        .and_then(|(k, _)| k.get(prefix.len()..prefix.len() + 8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX)))
}

/// A message whose content the retention rule erased.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Erased {
    /// When.
    pub erased_at_ms: i64,
    /// Why, in words.
    pub reason: String,
}

/// Records when a message's content is to be erased.
pub(super) fn schedule(txn: &mut Txn<'_>, erase_at_ms: i64, id: &str) -> Result<(), StoreError> {
    txn.put(retention_key(erase_at_ms, id), id.as_bytes().to_vec());
    txn.put(erase_at_key(id), erase_at_ms.to_be_bytes().to_vec());
    Ok(())
}

/// When a message's content is (or was) to be erased, if its level has a
/// retention period.
pub(super) fn erase_at(db: &Db, message_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(db
        .get(&erase_at_key(message_id))?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(i64::from_be_bytes))
}

/// When the next erasure or expiry is due, if any.
pub(super) fn next_erasure(db: &Db) -> Result<Option<i64>, StoreError> {
    Ok(first_due(db, RETENTION_PREFIX)?
        .into_iter()
        .chain(first_due(db, EXPIRY_PREFIX)?)
        .min())
}

/// Whether (and why) a message's content was erased.
pub(super) fn erased(db: &Db, message_id: &str) -> Result<Option<Erased>, StoreError> {
    let key = erased_key(message_id);
    db.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// Records every expiry due by `now_ms` (one `expired` audit record per
/// message: its recipients' nodes erase it from their inboxes at that time),
/// and erases the content of every message whose retention ended, keeping
/// its labels, with one `erased` audit record each. Returns the last audit
/// position written (0 if none).
pub(super) async fn erase_due(
    db: &Db,
    now_ms: i64,
    policy_version: String,
) -> Result<u64, HubError> {
    db.write(move |txn| {
        let mut audit_seq = 0;
        let due = u64::try_from(now_ms).unwrap_or(0).saturating_add(1);
        for (key, value) in txn.scan(EXPIRY_PREFIX, &keys::seq_key(EXPIRY_PREFIX, due), 256)? {
            txn.delete(key);
            let id = String::from_utf8_lossy(&value).into_owned();
            let okey = outcome_key(&id);
            let Some(out) = txn.get(&okey)? else { continue };
            let outcome: RoutedOutcome = parse(&okey, &out)?;
            let recipients: Vec<&str> = outcome
                .decisions
                .iter()
                .filter(|d| d.deliver)
                .map(|d| d.recipient.as_str())
                .collect();
            let whom = if recipients.is_empty() { "nobody".to_owned() } else { recipients.join(", ") };
            audit_seq = append_audit(
                txn,
                pb::AuditRecord {
                    at_ms: now_ms,
                    event: AuditEvent::Expired.into(),
                    message_id: id,
                    origin: outcome.origin.clone(),
                    rule: Rule::MessageExpired.into(),
                    reason: format!("expired; its content leaves the inboxes of {whom} and any queue it is still in"),
                    policy_version: policy_version.clone(),
                    actor: "hub:expiry".into(),
                    ..Default::default()
                },
            )?;
        }
        let end = keys::seq_key(RETENTION_PREFIX, due);
        for (key, value) in txn.scan(RETENTION_PREFIX, &end, 256)? {
            txn.delete(key);
            let id = String::from_utf8_lossy(&value).into_owned();
            let ekey = env_key(&id);
            let Some(bytes) = txn.get(&ekey)? else {
                continue;
            };
            let env = pb::Envelope::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&ekey).into_owned(),
                problem: e.to_string(),
            })?;
            let labels = env.labels.unwrap_or_default();
            let level = liaison_types::Classification::from_proto(labels.classification)
                .map_or("?", |c| c.as_str());
            let note = Erased {
                erased_at_ms: now_ms,
                reason: format!("content erased: the retention period for {level} ended"),
            };
            txn.put(erased_key(&id), json(&note));
            txn.put(
                ekey,
                pb::Envelope {
                    labels: Some(labels.clone()),
                    body: Vec::new(),
                }
                .encode_to_vec(),
            );
            audit_seq = append_audit(
                txn,
                pb::AuditRecord {
                    at_ms: now_ms,
                    event: AuditEvent::Erased.into(),
                    message_id: id,
                    origin: labels.origin,
                    classification: level.to_owned(),
                    rule: Rule::Retention.into(),
                    reason: note.reason,
                    policy_version: policy_version.clone(),
                    actor: "hub:retention".into(),
                    ..Default::default()
                },
            )?;
        }
        Ok(audit_seq)
    })
    .await
}
