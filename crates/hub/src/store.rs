//! The hub's durable state on top of [`liaison_store::Db`].
//!
//! Keys:
//! - `m/<id>/env`: the envelope as received (encoded proto);
//! - `m/<id>/out`: the routing outcome (JSON);
//! - `m/<id>/retracted`: the originator's retraction, if any (JSON);
//! - `q/<body>/<seq>`: the body's delivery queue, in order;
//! - `c/<body>/next`, `c/<body>/acked`: the body's queue counters;
//! - `a/<seq>`: the audit log, one JSON record per key;
//! - `meta/audit_head`: the last audit position and hash;
//! - `h/<not before>/<id>`: deliveries held under embargo, by release time.
//!
//! A submission writes the envelope, its outcome, its queue entries and its
//! audit records in one atomic transaction, so a crash leaves all or none.

use liaison_policy::{Decision, Outcome};
use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, to_json as json};
use liaison_store::{keys, Db, StoreError, Txn};
use liaison_types::audit::{self, GENESIS_HASH};
use liaison_types::{BodyId, DecisionRecord, Envelope};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::HubError;

/// What the hub decided for a message, kept for idempotent resubmission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoutedOutcome {
    /// Message id.
    pub message_id: String,
    /// Originating body.
    pub origin: String,
    /// SHA-256 of the encoded envelope, to tell a retry from a reuse of the id.
    pub digest: String,
    /// When the hub accepted it.
    pub accepted_at_ms: i64,
    /// Policy version that decided.
    pub policy_version: String,
    /// One decision per candidate.
    pub decisions: Vec<DecisionRecord>,
}

/// One entry of a body's delivery queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueEntry {
    /// The message to deliver.
    pub message_id: String,
    /// Its originating body.
    pub origin: String,
    /// When the hub routed it.
    pub routed_at_ms: i64,
    /// Set when this position carries the message's retraction, not the
    /// message.
    #[serde(default)]
    pub retraction: Option<Retraction>,
}

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

/// The result of a submission.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Stored and routed now.
    New {
        /// What was decided.
        outcome: RoutedOutcome,
        /// `(recipient, queue position)` of each delivery.
        queued: Vec<(BodyId, u64)>,
        /// The last audit position written.
        audit_seq: u64,
        /// Whether deliveries were held under embargo.
        held: bool,
    },
    /// Already known; the original outcome.
    Duplicate(RoutedOutcome),
}

/// SHA-256 of the encoded envelope.
pub fn digest(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}

fn env_key(id: &str) -> Vec<u8> {
    format!("m/{id}/env").into_bytes()
}

fn outcome_key(id: &str) -> Vec<u8> {
    format!("m/{id}/out").into_bytes()
}

fn retracted_key(id: &str) -> Vec<u8> {
    format!("m/{id}/retracted").into_bytes()
}

fn queue_prefix(body: &str) -> Vec<u8> {
    format!("q/{body}/").into_bytes()
}

fn counter_key(body: &str, which: &str) -> Vec<u8> {
    format!("c/{body}/{which}").into_bytes()
}

const AUDIT_PREFIX: &[u8] = b"a/";
const AUDIT_HEAD: &[u8] = b"meta/audit_head";

/// Appends one audit record inside a transaction: assigns its position,
/// links it to the previous record and computes its hash.
pub fn append_audit(txn: &mut Txn<'_>, mut record: pb::AuditRecord) -> Result<u64, StoreError> {
    let (last_seq, last_hash) = match txn.get(AUDIT_HEAD)? {
        Some(bytes) => parse::<(u64, String)>(AUDIT_HEAD, &bytes)?,
        None => (0, GENESIS_HASH.to_owned()),
    };
    record.seq = last_seq + 1;
    record.prev_hash = last_hash;
    record.hash = audit::record_hash(&record);
    let text = serde_json::Value::Object(audit::to_json(&record)).to_string();
    txn.put(keys::seq_key(AUDIT_PREFIX, record.seq), text.into_bytes());
    txn.put(AUDIT_HEAD, json(&(record.seq, &record.hash)));
    Ok(record.seq)
}

/// The labels' audit fields: message id, origin, kind, classification.
pub fn audit_base(
    env: &Envelope,
    event: &str,
    policy_version: &str,
    actor: &str,
    now_ms: i64,
) -> pb::AuditRecord {
    pb::AuditRecord {
        at_ms: now_ms,
        event: event.to_owned(),
        message_id: env.labels.message_id.clone(),
        origin: env.labels.origin.to_string(),
        kind: env.labels.kind.as_str().to_owned(),
        classification: env.labels.classification.as_str().to_owned(),
        policy_version: policy_version.to_owned(),
        actor: actor.to_owned(),
        ..Default::default()
    }
}

/// Stores and routes a submission atomically, or returns the original outcome
/// of an earlier submission of the same message. `approved_by` is the
/// officer who approved its release under the node's four-eyes rule, if any;
/// the `received` record names them.
pub async fn submit(
    db: &Db,
    env: Envelope,
    decisions: Vec<Decision>,
    policy_version: String,
    actor: String,
    approved_by: Option<String>,
    now_ms: i64,
) -> Result<Submitted, HubError> {
    let encoded = pb::Envelope::from(&env).encode_to_vec();
    let digest = digest(&encoded);
    db.write(move |txn| {
        let id = env.labels.message_id.clone();
        if let Some(bytes) = txn.get(&outcome_key(&id))? {
            let original: RoutedOutcome = parse(&outcome_key(&id), &bytes)?;
            if original.digest != digest || original.origin != env.labels.origin.as_str() {
                return Err(HubError::IdReused { message_id: id });
            }
            return Ok(Submitted::Duplicate(original));
        }
        let outcome = RoutedOutcome {
            message_id: id.clone(),
            origin: env.labels.origin.to_string(),
            digest,
            accepted_at_ms: now_ms,
            policy_version: policy_version.clone(),
            decisions: decisions
                .iter()
                .map(|d| DecisionRecord::from(&pb::RoutingDecision::from(d)))
                .collect(),
        };
        txn.put(env_key(&id), encoded);
        txn.put(outcome_key(&id), json(&outcome));
        let mut received = audit_base(&env, "received", &policy_version, &actor, now_ms);
        received.labels = serde_json::to_string(&env.labels).unwrap_or_default();
        if let Some(approver) = &approved_by {
            received.reason = format!("released by {approver} after four-eyes approval");
        }
        let mut audit_seq = append_audit(txn, received)?;
        let mut queued = Vec::new();
        let mut held = Vec::new();
        let embargo = env.labels.not_before_ms.filter(|t| *t > now_ms);
        for d in &decisions {
            let mut rec = audit_base(&env, "routed", &policy_version, &actor, now_ms);
            rec.recipient = d.recipient.to_string();
            rec.decision = if d.outcome == Outcome::Deliver {
                "deliver"
            } else {
                "withhold"
            }
            .into();
            rec.rule = d.rule.as_str().to_owned();
            rec.reason = d.reason.clone();
            if d.outcome == Outcome::Deliver {
                if embargo.is_some() {
                    held.push(d.recipient.to_string());
                } else {
                    let seq = enqueue(txn, &d.recipient, &id, env.labels.origin.as_str(), now_ms)?;
                    rec.queue_seq = seq;
                    queued.push((d.recipient.clone(), seq));
                }
            }
            audit_seq = append_audit(txn, rec)?;
        }
        let any_held = !held.is_empty();
        if let Some(not_before_ms) = embargo {
            if any_held {
                let entry = Held {
                    message_id: id.clone(),
                    origin: env.labels.origin.to_string(),
                    recipients: held,
                    not_before_ms,
                    expires_at_ms: env.labels.expires_at_ms,
                };
                txn.put(held_key(not_before_ms, &id), json(&entry));
            }
        }
        Ok(Submitted::New {
            outcome,
            queued,
            audit_seq,
            held: any_held,
        })
    })
    .await
}

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

const HELD_PREFIX: &[u8] = b"h/";

fn held_key(not_before_ms: i64, id: &str) -> Vec<u8> {
    let mut k = keys::seq_key(HELD_PREFIX, u64::try_from(not_before_ms).unwrap_or(0));
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

/// Appends the next entry of a body's queue; returns its position.
fn enqueue(
    txn: &mut Txn<'_>,
    body: &BodyId,
    id: &str,
    origin: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let next_key = counter_key(body.as_str(), "next");
    let seq = keys::u64_value(txn.get(&next_key)?) + 1;
    txn.put(next_key, seq.to_be_bytes().to_vec());
    let entry = QueueEntry {
        message_id: id.to_owned(),
        origin: origin.to_owned(),
        routed_at_ms: now_ms,
        retraction: None,
    };
    txn.put(
        keys::seq_key(&queue_prefix(body.as_str()), seq),
        json(&entry),
    );
    Ok(seq)
}

/// The release time of the earliest held delivery, if any.
pub fn next_release(db: &Db) -> Result<Option<i64>, StoreError> {
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
pub async fn release_due(
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
                    rec.event = "expired".into();
                    rec.rule = "message.expired".into();
                    rec.reason = "expired while held under embargo; released to nobody".into();
                } else {
                    rec.event = "released".into();
                    rec.reason = format!("embargo until {} ms ended", held.not_before_ms);
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

/// The retraction of a message, if its originator withdrew it.
pub fn retraction(db: &Db, message_id: &str) -> Result<Option<Retraction>, StoreError> {
    let key = retracted_key(message_id);
    db.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// Withdraws a message for its originator `caller`: deliveries still held
/// under embargo are dropped, and every other recipient the message was
/// routed to gets a retraction in its queue. Atomic; a second retraction
/// changes nothing.
pub async fn retract(
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
        let recipients: Vec<String> = outcome
            .decisions
            .iter()
            .filter(|d| d.deliver)
            .map(|d| d.recipient.clone())
            .collect();
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
                    event: "retraction".into(),
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
                event: "retracted".into(),
                recipient: recipient.clone(),
                ..base.clone()
            };
            if was_held {
                rec.reason = format!("withdrawn under embargo, never delivered: {}", note.reason);
            } else {
                let next_key = counter_key(body.as_str(), "next");
                let seq = keys::u64_value(txn.get(&next_key)?) + 1;
                txn.put(next_key, seq.to_be_bytes().to_vec());
                let entry = QueueEntry {
                    message_id: message_id.clone(),
                    origin: outcome.origin.clone(),
                    routed_at_ms: now_ms,
                    retraction: Some(note.clone()),
                };
                txn.put(
                    keys::seq_key(&queue_prefix(body.as_str()), seq),
                    json(&entry),
                );
                rec.queue_seq = seq;
                retracted.queued.push((body, seq));
            }
            retracted.audit_seq = append_audit(txn, rec)?;
        }
        Ok(retracted)
    })
    .await
}

/// Appends a refusal record (for example a node claiming another origin);
/// returns its audit position.
pub async fn audit_refusal(db: &Db, record: pb::AuditRecord) -> Result<u64, HubError> {
    db.write(move |txn| append_audit(txn, record).map_err(HubError::from))
        .await
}

/// Appends several records in one transaction (delivery records); returns
/// the last audit position written.
pub async fn audit_many(db: &Db, records: Vec<pb::AuditRecord>) -> Result<u64, HubError> {
    db.write(move |txn| {
        let mut last = 0;
        for r in records {
            last = append_audit(txn, r)?;
        }
        Ok::<_, HubError>(last)
    })
    .await
}

/// The last position of the body's queue, durable or not (read at start-up,
/// when everything on disk is durable).
pub fn queue_end(db: &Db, body: &BodyId) -> Result<u64, StoreError> {
    Ok(keys::u64_value(
        db.get(&counter_key(body.as_str(), "next"))?,
    ))
}

/// The last audit position, durable or not (read at start-up).
pub fn audit_end(db: &Db) -> Result<u64, StoreError> {
    Ok(match db.get(AUDIT_HEAD)? {
        Some(bytes) => parse::<(u64, String)>(AUDIT_HEAD, &bytes)?.0,
        None => 0,
    })
}

/// The body's acknowledged position.
pub fn acked(db: &Db, body: &BodyId) -> Result<u64, StoreError> {
    Ok(keys::u64_value(
        db.get(&counter_key(body.as_str(), "acked"))?,
    ))
}

/// Up to `limit` queue entries with positions after `after`.
pub fn queue_after(
    db: &Db,
    body: &BodyId,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
    let prefix = queue_prefix(body.as_str());
    let start = keys::seq_key(&prefix, after.saturating_add(1));
    db.scan(&start, &keys::prefix_end(&prefix), limit)?
        .into_iter()
        .map(|(k, v)| Ok((keys::seq_of(&k).unwrap_or_default(), parse(&k, &v)?)))
        .collect()
}

/// The stored envelope of a message.
pub fn envelope(db: &Db, message_id: &str) -> Result<Option<pb::Envelope>, StoreError> {
    let key = env_key(message_id);
    db.get(&key)?
        .map(|b| {
            pb::Envelope::decode(b.as_slice()).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                problem: e.to_string(),
            })
        })
        .transpose()
}

/// Acknowledges the body's queue up to `seq`: removes the entries and writes
/// one audit record per acknowledged message. Returns the new position and
/// the last audit position written (0 if none).
pub async fn acknowledge(
    db: &Db,
    body: BodyId,
    seq: u64,
    actor: String,
    now_ms: i64,
    policy_version: String,
) -> Result<(u64, u64), HubError> {
    db.write(move |txn| {
        let next = keys::u64_value(txn.get(&counter_key(body.as_str(), "next"))?);
        if seq > next {
            return Err(HubError::AckBeyondQueue { seq, last: next });
        }
        let acked_key = counter_key(body.as_str(), "acked");
        let acked = keys::u64_value(txn.get(&acked_key)?);
        if seq <= acked {
            return Ok((acked, 0));
        }
        let prefix = queue_prefix(body.as_str());
        let entries = txn.scan(
            &keys::seq_key(&prefix, acked + 1),
            &keys::seq_key(&prefix, seq.saturating_add(1)),
            usize::MAX,
        )?;
        let mut audit_seq = 0;
        for (k, v) in entries {
            let entry: QueueEntry = parse(&k, &v)?;
            let qseq = keys::seq_of(&k).unwrap_or_default();
            txn.delete(k);
            audit_seq = append_audit(
                txn,
                pb::AuditRecord {
                    at_ms: now_ms,
                    event: "acknowledged".into(),
                    message_id: entry.message_id,
                    origin: entry.origin,
                    recipient: body.to_string(),
                    actor: actor.clone(),
                    queue_seq: qseq,
                    policy_version: policy_version.clone(),
                    reason: if entry.retraction.is_some() {
                        "retraction".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                },
            )?;
        }
        txn.put(acked_key, seq.to_be_bytes().to_vec());
        Ok((seq, audit_seq))
    })
    .await
}

/// Up to `limit` audit records with positions in `(after, upto]`.
pub fn audit_after(
    db: &Db,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<pb::AuditRecord>, StoreError> {
    let start = keys::seq_key(AUDIT_PREFIX, after.saturating_add(1));
    let end = keys::seq_key(AUDIT_PREFIX, upto.saturating_add(1));
    db.scan(&start, &end, limit)?
        .into_iter()
        .map(|(k, v)| {
            audit::from_json(&v).map_err(|problem| StoreError::Corrupt {
                key: format!("a/{}", keys::seq_of(&k).unwrap_or_default()),
                problem,
            })
        })
        .collect()
}

/// Appends the record of a governance change (event `policy`): `rule` is
/// `policy.reload` for a new version put in force, `policy.reload_refused`
/// for a refused one; `policy_version` is the version in force after it.
/// Returns its audit position.
pub async fn audit_policy_change(
    db: &Db,
    rule: &str,
    reason: String,
    policy_version: String,
    actor: String,
    now_ms: i64,
) -> Result<u64, HubError> {
    let record = pb::AuditRecord {
        at_ms: now_ms,
        event: "policy".into(),
        rule: rule.to_owned(),
        reason,
        policy_version,
        actor,
        ..Default::default()
    };
    db.write(move |txn| append_audit(txn, record).map_err(HubError::from))
        .await
}

#[cfg(test)]
mod tests {
    use liaison_policy::{decide, Governance};
    use liaison_types::Classification::Secret;
    use prost::Message;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn held_alert(not_before: i64, expires: i64) -> Envelope {
        let body = pb::Body {
            title: "held".into(),
            content: Some(pb::body::Content::Alert(pb::Alert {
                text: "x".into(),
                ..Default::default()
            })),
        };
        Envelope::try_from(pb::Envelope {
            labels: Some(pb::Labels {
                message_id: uuid_for(not_before),
                origin: "europol".into(),
                kind: pb::Kind::Alert as i32,
                classification: pb::Classification::Restricted as i32,
                crime_areas: vec!["drugs".into()],
                priority: pb::Priority::Routine as i32,
                created_at_ms: NOW,
                not_before_ms: not_before,
                expires_at_ms: expires,
                ..Default::default()
            }),
            body: body.encode_to_vec(),
        })
        .unwrap()
    }

    fn uuid_for(n: i64) -> String {
        format!("00000000-0000-4000-8000-{:012x}", n % 0x1_0000_0000_0000)
    }

    async fn submit_held(db: &Db, gov: &Governance, env: Envelope) {
        let decisions = decide(gov, &env.labels, NOW);
        match submit(db, env, decisions, "v1".into(), "test".into(), None, NOW)
            .await
            .unwrap()
        {
            Submitted::New { queued, held, .. } => {
                assert!(
                    queued.is_empty(),
                    "nothing is queued before the embargo ends"
                );
                assert!(held);
            }
            Submitted::Duplicate(_) => panic!("new message"),
        }
    }

    fn governance() -> Governance {
        Governance::for_test()
            .member("interpol", Secret, &["drugs"])
            .member("europol", Secret, &["drugs"])
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn held_deliveries_are_released_in_time_order_and_not_before() {
        let db = Db::in_memory();
        let gov = governance();
        submit_held(&db, &gov, held_alert(NOW + 2_000, 0)).await;
        submit_held(&db, &gov, held_alert(NOW + 1_000, 0)).await;
        assert_eq!(next_release(&db).unwrap(), Some(NOW + 1_000));

        let early = release_due(&db, NOW + 999, "v1".into()).await.unwrap();
        assert!(early.queued.is_empty());
        let interpol = BodyId::parse("interpol").unwrap();
        let first = release_due(&db, NOW + 1_000, "v1".into()).await.unwrap();
        assert_eq!(first.queued, vec![(interpol.clone(), 1)]);
        assert_eq!(next_release(&db).unwrap(), Some(NOW + 2_000));
        let second = release_due(&db, NOW + 5_000, "v1".into()).await.unwrap();
        assert_eq!(second.queued, vec![(interpol.clone(), 2)]);
        assert_eq!(next_release(&db).unwrap(), None);
        let queue = queue_after(&db, &interpol, 0, 10).unwrap();
        assert_eq!(
            queue[0].1.message_id,
            uuid_for(NOW + 1_000),
            "released in time order"
        );
        let released = audit_after(&db, 0, u64::MAX, 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "released")
            .count();
        assert_eq!(released, 2);
    }

    #[tokio::test]
    async fn a_delivery_held_past_its_expiry_is_released_to_nobody() {
        let db = Db::in_memory();
        let gov = governance();
        submit_held(&db, &gov, held_alert(NOW + 1_000, NOW + 2_000)).await;
        // The hub was down until after the expiry.
        let late = release_due(&db, NOW + 3_000, "v1".into()).await.unwrap();
        assert!(late.queued.is_empty());
        assert_eq!(next_release(&db).unwrap(), None);
        assert_eq!(
            queue_end(&db, &BodyId::parse("interpol").unwrap()).unwrap(),
            0
        );
        let expired: Vec<_> = audit_after(&db, 0, u64::MAX, 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "expired")
            .collect();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].recipient, "interpol");
        assert_eq!(expired[0].rule, "message.expired");
    }
}
