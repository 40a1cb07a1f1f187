//! Retraction: the originator withdraws a message from its recipients.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, to_json as json, Db, StoreError};
use liaison_types::BodyId;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::*;
use crate::HubError;

/// An originator's retraction of a message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retraction {
    /// Why (from the originator; no body content).
    pub reason: String,
    /// When.
    pub retracted_at_ms: i64,
}

impl Retraction {
    /// The retraction as the delivery stream carries it.
    pub fn to_proto(&self, message_id: &str, origin: &str) -> pb::Withdrawal {
        pb::Withdrawal {
            message_id: message_id.to_owned(),
            origin: origin.to_owned(),
            cause: pb::WithdrawalCause::Retracted as i32,
            reason: self.reason.clone(),
            withdrawn_at_ms: self.retracted_at_ms,
        }
    }
}

/// The outcome of a retraction.
#[derive(Debug, Clone, Default)]
pub struct Retracted {
    /// The message had already been retracted.
    pub duplicate: bool,
    /// Recipients that will be told.
    pub recipients: Vec<String>,
    /// `(recipient, queue position)` of each retraction queued.
    pub queued: Vec<(BodyId, u64)>,
    /// The last audit position written.
    pub audit_seq: u64,
}

/// The retraction of a message, if its originator withdrew it.
pub(super) fn retraction(db: &Db, message_id: &str) -> Result<Option<Retraction>, StoreError> {
    let key = retracted_key(message_id);
    db.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// Withdraws a message for its originator `caller`: deliveries still held
/// under embargo are dropped, and every other recipient the message was
/// routed to gets a retraction in its queue. Atomic; a second retraction
/// changes nothing.
pub(super) async fn retract(
    db: &Db,
    caller: BodyId,
    message_id: String,
    reason: String,
    actor: String,
    now_ms: i64,
) -> Result<Retracted, HubError> {
    db.write(move |txn| {
        let out_key = outcome_key(&message_id);
        let Some(out) = txn.get(&out_key)? else {
            return Err(HubError::UnknownMessage(message_id));
        };
        let outcome: RoutedOutcome = parse(&out_key, &out)?;
        if outcome.origin != caller.as_str() {
            return Err(HubError::NotOrigin {
                caller: caller.to_string(),
                message_id,
            });
        }
        let mut recipients: Vec<String> = outcome
            .decisions
            .iter()
            .filter(|d| d.deliver)
            .map(|d| d.recipient.clone())
            .collect();
        // Bodies it was passed on to with the originator's consent are told
        // too.
        recipients.extend(forwarded_to(txn, &message_id)?);
        if txn.get(&retracted_key(&message_id))?.is_some() {
            return Ok(Retracted {
                duplicate: true,
                recipients,
                ..Retracted::default()
            });
        }
        let note = Retraction {
            reason,
            retracted_at_ms: now_ms,
        };
        txn.put(retracted_key(&message_id), json(&note));
        let base = pb::AuditRecord {
            at_ms: now_ms,
            message_id: message_id.clone(),
            origin: outcome.origin.clone(),
            policy_version: outcome.policy_version.clone(),
            actor: actor.clone(),
            reason: note.reason.clone(),
            ..Default::default()
        };
        let mut retracted = Retracted {
            recipients: recipients.clone(),
            audit_seq: append_audit(
                txn,
                pb::AuditRecord {
                    event: AuditEvent::Retraction.into(),
                    ..base.clone()
                },
            )?,
            ..Retracted::default()
        };
        // Deliveries still held under embargo are simply dropped.
        let env_bytes = txn.get(&env_key(&message_id))?.unwrap_or_default();
        let not_before = pb::Envelope::decode(env_bytes.as_slice())
            .ok()
            .and_then(|e| e.labels)
            .map_or(0, |l| l.not_before_ms);
        let held = held_key(not_before, &message_id);
        let was_held = not_before > 0 && txn.get(&held)?.is_some();
        if was_held {
            txn.delete(held);
        }
        for recipient in recipients {
            let Ok(body) = BodyId::parse(&recipient) else {
                continue;
            };
            let mut rec = pb::AuditRecord {
                event: AuditEvent::Retracted.into(),
                recipient: recipient.clone(),
                ..base.clone()
            };
            if was_held {
                rec.reason = format!("withdrawn under embargo, never delivered: {}", note.reason);
            } else {
                let entry = QueueEntry {
                    retraction: Some(note.clone()),
                    ..QueueEntry::message(&message_id, &outcome.origin, now_ms)
                };
                let seq = append_to_queue(txn, &body, &entry)?;
                rec.queue_seq = seq;
                retracted.queued.push((body, seq));
            }
            retracted.audit_seq = append_audit(txn, rec)?;
        }
        Ok(retracted)
    })
    .await
}
