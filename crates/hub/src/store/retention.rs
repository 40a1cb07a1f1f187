//! Retention: the content of a message is erased once its level's retention
//! period (from the governance in force when it was routed) has passed. Its
//! labels, outcome and audit records stay; recipients not yet streamed it get
//! a withdrawal instead.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, Db, StoreError, Txn};
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

/// The pure decision of a message's expiry: one `expired` record (its
/// recipients' nodes erase it from their inboxes at that time, and any queue
/// position still carrying it becomes a withdrawal).
pub fn plan_expiry(
    message_id: &str,
    outcome: &RoutedOutcome,
    now_ms: i64,
    policy_version: &str,
) -> Effects {
    let recipients: Vec<&str> = outcome
        .decisions
        .iter()
        .filter(|d| d.deliver)
        .map(|d| d.recipient.as_str())
        .collect();
    let whom = if recipients.is_empty() {
        "nobody".to_owned()
    } else {
        recipients.join(", ")
    };
    Effects {
        audit: vec![pb::AuditRecord {
            at_ms: now_ms,
            event: AuditEvent::Expired.into(),
            message_id: message_id.to_owned(),
            origin: outcome.origin.clone(),
            rule: Rule::MessageExpired.into(),
            reason: format!(
                "expired; its content leaves the inboxes of {whom} and any queue it is still in"
            ),
            policy_version: policy_version.to_owned(),
            actor: "hub:expiry".into(),
            ..Default::default()
        }],
        ..Effects::default()
    }
}

/// The pure decision of the end of a message's retention period: its
/// content is erased, its labels stay, with one `erased` record naming the
/// classification whose period ended.
pub fn plan_erasure(
    message_id: &str,
    labels: pb::Labels,
    now_ms: i64,
    policy_version: &str,
) -> Effects {
    let level = liaison_types::Classification::from_proto(labels.classification)
        .map_or("?", |c| c.as_str());
    let note = Erased {
        erased_at_ms: now_ms,
        reason: format!("content erased: the retention period for {level} ended"),
    };
    let record = pb::AuditRecord {
        at_ms: now_ms,
        event: AuditEvent::Erased.into(),
        message_id: message_id.to_owned(),
        origin: labels.origin.clone(),
        classification: level.to_owned(),
        rule: Rule::Retention.into(),
        reason: note.reason.clone(),
        policy_version: policy_version.to_owned(),
        actor: "hub:retention".into(),
        ..Default::default()
    };
    Effects {
        writes: vec![Write::Erase {
            message_id: message_id.to_owned(),
            labels: Box::new(labels),
            note,
        }],
        audit: vec![record],
        ..Effects::default()
    }
}

/// Records every expiry due by `now_ms` ([`plan_expiry`]) and erases the
/// content of every message whose retention ended ([`plan_erasure`]),
/// atomically. Returns the last audit position written (0 if none).
pub(super) async fn erase_due(
    db: &Db,
    now_ms: i64,
    policy_version: String,
) -> Result<u64, HubError> {
    db.write(move |txn| {
        let mut audit_seq = 0;
        let due = u64::try_from(now_ms).unwrap_or(0).saturating_add(1);
        for (key, value) in txn.scan(EXPIRY_PREFIX, &keys::seq_key(EXPIRY_PREFIX, due), 256)? {
            // The schedule's own index entry is consumed either way.
            txn.delete(key);
            let id = String::from_utf8_lossy(&value).into_owned();
            let okey = outcome_key(&id);
            let Some(out) = txn.get(&okey)? else { continue };
            let outcome = RoutedOutcome::decode(&okey, &out)?;
            let applied = apply(txn, plan_expiry(&id, &outcome, now_ms, &policy_version))?;
            audit_seq = audit_seq.max(applied.audit_seq);
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
            let applied = apply(txn, plan_erasure(&id, labels, now_ms, &policy_version))?;
            audit_seq = audit_seq.max(applied.audit_seq);
        }
        Ok(audit_seq)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_erasure_keeps_the_labels_and_names_the_level() {
        let labels = pb::Labels {
            origin: "alpha".into(),
            classification: pb::Classification::Restricted as i32,
            ..Default::default()
        };
        let e = plan_erasure("m", labels.clone(), 5, "v1");
        assert!(matches!(&e.writes[..], [Write::Erase { labels: kept, .. }] if **kept == labels));
        assert_eq!(e.audit[0].event, "erased");
        assert_eq!(e.audit[0].rule, "retention");
        assert!(e.audit[0].reason.contains("RESTRICTED"));
        assert!(e.enqueue.is_empty());
    }

    #[test]
    fn an_expiry_is_one_record_naming_who_erases_it() {
        let outcome = RoutedOutcome {
            message_id: "m".into(),
            origin: "alpha".into(),
            digest: String::new(),
            accepted_at_ms: 0,
            policy_version: "v0".into(),
            decisions: vec![DecisionRecord {
                recipient: "bravo".into(),
                deliver: true,
                rule: String::new(),
                reason: String::new(),
            }],
            unaddressed: Vec::new(),
            audit_seq: 0,
        };
        let e = plan_expiry("m", &outcome, 5, "v1");
        assert_eq!(e.audit.len(), 1);
        assert!(e.audit[0].reason.contains("inboxes of bravo"));
        assert!(e.writes.is_empty() && e.enqueue.is_empty());
    }
}
