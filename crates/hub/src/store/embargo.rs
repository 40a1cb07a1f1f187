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

/// The pure decision of an embargo's end: each recipient of `held` gets the
/// message in its queue with a `released` record naming the position,
/// unless the message expired meanwhile (`now_ms` at or past its expiry):
/// then it is released to nobody, with an `expired` record per recipient.
/// The held entry goes either way.
pub fn plan_release(held: &Held, now_ms: i64, policy_version: &str) -> Effects {
    let expired = held.expires_at_ms.is_some_and(|e| e <= now_ms);
    let mut effects = Effects {
        writes: vec![Write::DropHeld {
            message_id: held.message_id.clone(),
            not_before_ms: held.not_before_ms,
        }],
        ..Effects::default()
    };
    for recipient in &held.recipients {
        let Ok(body) = BodyId::parse(recipient) else {
            continue;
        };
        let mut rec = pb::AuditRecord {
            at_ms: now_ms,
            message_id: held.message_id.clone(),
            origin: held.origin.clone(),
            recipient: recipient.clone(),
            policy_version: policy_version.to_owned(),
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
            effects.enqueue.push(Enqueue {
                body,
                entry: QueueEntry::message(&held.message_id, &held.origin, now_ms),
                audit: Some(effects.audit.len()),
            });
        }
        effects.audit.push(rec);
    }
    effects
}

/// Queues every held delivery whose time has come, in release-time order
/// ([`plan_release`] decides each), atomically.
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
            let applied = apply(txn, plan_release(&held, now_ms, &policy_version))?;
            released.queued.extend(applied.queued);
            released.audit_seq = released.audit_seq.max(applied.audit_seq);
        }
        Ok(released)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(expires: Option<i64>) -> Held {
        Held {
            message_id: "m".into(),
            origin: "alpha".into(),
            recipients: vec!["bravo".into(), "charlie".into()],
            not_before_ms: 100,
            expires_at_ms: expires,
        }
    }

    #[test]
    fn an_ended_embargo_queues_the_message_for_each_recipient() {
        let e = plan_release(&held(None), 100, "v1");
        let queued: Vec<(&str, Option<usize>)> = e
            .enqueue
            .iter()
            .map(|q| (q.body.as_str(), q.audit))
            .collect();
        assert_eq!(queued, [("bravo", Some(0)), ("charlie", Some(1))]);
        assert!(e.audit.iter().all(|r| r.event == "released"));
        assert!(e.audit[0].reason.contains("1970-01-01T00:00:00.100Z"));
        assert_eq!(e.writes.len(), 1, "the held entry goes");
    }

    #[test]
    fn a_message_that_expired_under_embargo_is_released_to_nobody() {
        for now in [150, 151] {
            let e = plan_release(&held(Some(150)), now, "v1");
            assert!(e.enqueue.is_empty());
            assert!(e
                .audit
                .iter()
                .all(|r| r.event == "expired" && r.rule == "message.expired"));
            assert_eq!(e.audit.len(), 2);
        }
        // Not yet expired: released.
        assert_eq!(plan_release(&held(Some(150)), 149, "v1").enqueue.len(), 2);
    }
}
