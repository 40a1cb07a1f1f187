//! Effects planned by pure decisions, applied by the store.
//!
//! In the manner of raft-rs's `Ready`: a decision about a message (retract
//! it, and later forward, release, expire, erase it) is a pure function of
//! plain facts the store read, returning [`Effects`]: typed writes, queue
//! appends and audit records, in order. It does no I/O and knows no key.
//! [`apply`] is the one place that turns effects into keys, inside the same
//! atomic transaction as the read of the facts, and numbers the queue
//! positions and audit records. So the rule logic is tested without a store,
//! and the store does no rule logic.

use liaison_proto::v1 as pb;
use liaison_store::{keys, to_json as json, StoreError, Txn};
use liaison_types::BodyId;

use super::*;

/// One typed write a decision asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Store a forward request as it now is; `latest` also makes it the
    /// latest request of its message to its body.
    Forward {
        /// The request.
        record: Box<ForwardRecord>,
        /// Whether it is new (the latest for its message and body).
        latest: bool,
    },
    /// Move a body's acknowledged position, and remove every stored queue
    /// value (a run, or a single entry) whose positions it all covers; a
    /// run it covers only in part stays until a later acknowledgement
    /// covers the rest (readers start after the acknowledged position).
    Acknowledge {
        /// Whose queue.
        body: BodyId,
        /// The new acknowledged position.
        acked: u64,
    },
    /// Store a routed message: its envelope (encoded) and its outcome.
    Message {
        /// The encoded envelope.
        encoded: Vec<u8>,
        /// What was decided for it.
        outcome: Box<RoutedOutcome>,
        /// The index in [`Effects::audit`] of its "received" record (its
        /// position goes into the outcome when applied).
        audit: Option<usize>,
    },
    /// Hold deliveries under embargo until their release time.
    Hold(Held),
    /// Schedule the erasure of a message's content.
    ScheduleErasure {
        /// The message.
        message_id: String,
        /// When.
        at_ms: i64,
    },
    /// Schedule the record of a message's expiry.
    ScheduleExpiry {
        /// The message.
        message_id: String,
        /// When.
        at_ms: i64,
    },
    /// Record the originator's retraction of a message.
    Retraction {
        /// The message.
        message_id: String,
        /// The retraction.
        note: Retraction,
    },
    /// Erase a message's content, keeping its labels, and record why.
    Erase {
        /// The message.
        message_id: String,
        /// Its labels, which stay.
        labels: Box<pb::Labels>,
        /// When and why.
        note: Erased,
    },
    /// Store a plan as of its latest version.
    Plan(Box<PlanRecord>),
    /// Store (or, with `None`, remove) one side of an overlap of two plans.
    Overlap {
        /// The plan whose side it is.
        plan: String,
        /// The other plan.
        other: String,
        /// The overlap, or `None` when it is gone.
        record: Option<OverlapRecord>,
    },
    /// Drop the deliveries of a message held under embargo.
    DropHeld {
        /// The message.
        message_id: String,
        /// When its embargo would have ended.
        not_before_ms: i64,
    },
}

/// A queue append a decision asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueue {
    /// Whose queue.
    pub body: BodyId,
    /// What the position carries.
    pub entry: QueueEntry,
    /// The index in [`Effects::audit`] of the record that names this
    /// position (its `queue_seq` is filled in when applied), if any.
    pub audit: Option<usize>,
}

/// Everything a decision asks the store to do, atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Typed writes, applied first.
    pub writes: Vec<Write>,
    /// Queue appends, in order.
    pub enqueue: Vec<Enqueue>,
    /// Audit records, in order (positions and hashes are assigned when
    /// applied).
    pub audit: Vec<pb::AuditRecord>,
}

/// What applying effects did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// `(body, queue position)` of each append, in order.
    pub queued: Vec<(BodyId, u64)>,
    /// The last audit position written (0 if none).
    pub audit_seq: u64,
    /// The first audit position written (0 if none).
    pub first_audit_seq: u64,
}

/// Applies `effects` inside a transaction: the one place their keys are
/// built.
pub(super) fn apply(txn: &mut Txn<'_>, effects: Effects) -> Result<Applied, StoreError> {
    let Effects {
        writes,
        enqueue,
        mut audit,
    } = effects;
    // The records are appended last, in order, so the i-th takes the
    // position after the `base` already written, plus i + 1: the writes and
    // queue entries that name their record can carry its position.
    let base = super::log::read_head(txn)?.frontier.size();
    for w in writes {
        match w {
            Write::Forward { record, latest } => {
                if latest {
                    txn.put(
                        forward_pair_key(&record.message_id, &record.to),
                        record.id.clone().into_bytes(),
                    );
                }
                txn.put(forward_key(&record.id), json(&*record));
            }
            Write::Acknowledge { body, acked } => {
                let prefix = queue_prefix(body.as_str());
                let covered = keys::seq_key(&prefix, acked.saturating_add(1));
                let acked_key = counter_key(body.as_str(), "acked");
                let before = keys::u64_value(txn.get(&acked_key)?);
                // The bytes of the positions this acknowledgement covers
                // leave the body's queued bytes.
                let mut freed = 0u64;
                for (key, value) in txn.scan(&prefix, &covered, usize::MAX)? {
                    let start = keys::seq_of(&key).unwrap_or_default();
                    let n = QueueEntry::count_value(&key, &value)? as u64;
                    freed = freed.saturating_add(QueueEntry::bytes_between(
                        &key, &value, start, before, acked,
                    )?);
                    if start.saturating_add(n).saturating_sub(1) <= acked {
                        txn.delete(key);
                    }
                }
                if freed > 0 {
                    let bytes_key = counter_key(body.as_str(), "bytes");
                    let queued = keys::u64_value(txn.get(&bytes_key)?);
                    txn.put(
                        bytes_key,
                        queued.saturating_sub(freed).to_be_bytes().to_vec(),
                    );
                }
                txn.put(
                    counter_key(body.as_str(), "acked"),
                    acked.to_be_bytes().to_vec(),
                );
            }
            Write::Message {
                encoded,
                mut outcome,
                audit,
            } => {
                if let Some(i) = audit {
                    outcome.audit_seq = base + 1 + i as u64;
                }
                txn.put(env_key(&outcome.message_id), encoded);
                txn.put(outcome_key(&outcome.message_id), outcome.encode());
            }
            Write::Hold(held) => {
                txn.put(held_key(held.not_before_ms, &held.message_id), json(&held));
            }
            Write::ScheduleErasure { message_id, at_ms } => {
                retention::schedule(txn, at_ms, &message_id)?;
            }
            Write::ScheduleExpiry { message_id, at_ms } => {
                retention::schedule_expiry(txn, at_ms, &message_id)?;
            }
            Write::Retraction { message_id, note } => {
                txn.put(retracted_key(&message_id), json(&note));
            }
            Write::DropHeld {
                message_id,
                not_before_ms,
            } => txn.delete(held_key(not_before_ms, &message_id)),
            Write::Plan(rec) => deconflict::write_plan(txn, &rec),
            Write::Overlap {
                plan,
                other,
                record,
            } => deconflict::write_overlap(txn, &plan, &other, record.as_ref()),
            Write::Erase {
                message_id,
                labels,
                note,
            } => {
                // A plan keeps the title of its latest version for full
                // notices: that is content, and goes with it.
                if let Some(plan) = &labels.plan {
                    deconflict::forget_title(txn, &plan.plan_id, &message_id)?;
                }
                txn.put(erased_key(&message_id), json(&note));
                let kept = pb::Envelope {
                    labels: Some(*labels),
                    body: Vec::new(),
                };
                txn.put(env_key(&message_id), prost::Message::encode_to_vec(&kept));
            }
        }
    }
    let mut applied = Applied::default();
    for mut e in enqueue {
        if let Some(i) = e.audit {
            e.entry.audit_seq = base + 1 + i as u64;
        }
        let seq = append_to_queue(txn, &e.body, &e.entry)?;
        if let Some(rec) = e.audit.and_then(|i| audit.get_mut(i)) {
            rec.queue_seq = seq;
        }
        applied.queued.push((e.body, seq));
    }
    for rec in audit {
        applied.audit_seq = append_audit(txn, rec)?;
        if applied.first_audit_seq == 0 {
            applied.first_audit_seq = applied.audit_seq;
        }
    }
    Ok(applied)
}
