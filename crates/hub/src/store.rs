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
//! - `h/<not before>/<id>`: deliveries held under embargo, by release time;
//! - `f/<request id>`: a forward request (third-party rule, JSON);
//! - `m/<id>/fwd/<body>`: the latest forward request of the message to that
//!   body (its request id).
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
    /// Set when this position carries a forward request for the originator
    /// of the message, not the message.
    #[serde(default)]
    pub forward_request: Option<ForwardNotice>,
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
        forward_request: None,
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
                    forward_request: None,
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
                    } else if let Some(n) = &entry.forward_request {
                        format!("forward request {}", n.request_id)
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

// ---------------------------------------------------------------------------
// Forward requests (the third-party rule).
//
// A recipient asks to pass a message on to another body; the originator's
// officers consent or refuse; only then does the hub decide, under the same
// rules as a first delivery, and deliver it. A message whose originator
// waived the rule (`Labels::onward_release_allowed`) is decided at once.
//
// ```text
// request ──▶ pending ──approve──▶ forwarded | withheld (the rules decide)
//   │            └─────refuse────▶ refused
//   └── waived ──────────────────▶ forwarded | withheld
// ```

/// Where a forward request stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Awaiting the originator's consent.
    Pending,
    /// Consented to (or waived) and delivered.
    Forwarded,
    /// Consented to (or waived), but the governance rules withheld it.
    Withheld,
    /// Refused by the originator.
    Refused,
}

impl ForwardState {
    /// The name in records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Forwarded => "forwarded",
            Self::Withheld => "withheld",
            Self::Refused => "refused",
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::ForwardState {
        match self {
            Self::Pending => pb::ForwardState::Pending,
            Self::Forwarded => pb::ForwardState::Forwarded,
            Self::Withheld => pb::ForwardState::Withheld,
            Self::Refused => pb::ForwardState::Refused,
        }
    }
}

/// A forward request and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardRecord {
    /// The request's id (a UUID).
    pub id: String,
    /// The message.
    pub message_id: String,
    /// Its originating body, which decides.
    pub origin: String,
    /// The body that asks.
    pub requester: String,
    /// Who asked (SPIFFE URI of the officer, or of the requester's node).
    pub requested_by: String,
    /// The body to pass it on to.
    pub to: String,
    /// Why, in the requester's words.
    pub reason: String,
    /// Where it stands.
    pub state: ForwardState,
    /// When it was filed.
    pub requested_at_ms: i64,
    /// Who decided (an officer of the originator, or `hub:third_party_release`).
    #[serde(default)]
    pub decided_by: String,
    /// When, 0 while pending.
    #[serde(default)]
    pub decided_at_ms: i64,
    /// The decider's reason.
    #[serde(default)]
    pub decision_reason: String,
    /// The rule that decided delivery, once approved.
    #[serde(default)]
    pub rule: String,
    /// The rule's reason, once approved.
    #[serde(default)]
    pub rule_reason: String,
}

/// A forward request as the originator's delivery queue carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardNotice {
    /// The request's id.
    pub request_id: String,
    /// The body that asks.
    pub requester: String,
    /// Who asked.
    pub requested_by: String,
    /// The body to pass it on to.
    pub to: String,
    /// Why.
    pub reason: String,
    /// When it was filed.
    pub requested_at_ms: i64,
}

impl ForwardNotice {
    /// The notice as the delivery stream carries it.
    pub fn to_proto(&self, message_id: &str) -> pb::ForwardRequestNotice {
        pb::ForwardRequestNotice {
            request_id: self.request_id.clone(),
            message_id: message_id.to_owned(),
            requester: self.requester.clone(),
            requested_by: self.requested_by.clone(),
            to: self.to.clone(),
            reason: self.reason.clone(),
            requested_at_ms: self.requested_at_ms,
        }
    }
}

/// Who decided automatically when the originator waived the rule.
pub const WAIVER_ACTOR: &str = "hub:third_party_release";

fn forward_key(request_id: &str) -> Vec<u8> {
    format!("f/{request_id}").into_bytes()
}

fn forward_pair_prefix(message_id: &str) -> Vec<u8> {
    format!("m/{message_id}/fwd/").into_bytes()
}

fn forward_pair_key(message_id: &str, to: &str) -> Vec<u8> {
    format!("m/{message_id}/fwd/{to}").into_bytes()
}

fn forward_record(txn: &Txn<'_>, request_id: &str) -> Result<Option<ForwardRecord>, StoreError> {
    let key = forward_key(request_id);
    txn.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// The forward request filed latest for the message and body, if any.
fn latest_forward(
    txn: &Txn<'_>,
    message_id: &str,
    to: &str,
) -> Result<Option<ForwardRecord>, StoreError> {
    match txn.get(&forward_pair_key(message_id, to))? {
        Some(id) => forward_record(txn, &String::from_utf8_lossy(&id)),
        None => Ok(None),
    }
}

/// The bodies a message was passed on to.
fn forwarded_to(txn: &Txn<'_>, message_id: &str) -> Result<Vec<String>, StoreError> {
    let prefix = forward_pair_prefix(message_id);
    let mut out = Vec::new();
    for (_, id) in txn.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX)? {
        if let Some(r) = forward_record(txn, &String::from_utf8_lossy(&id))? {
            if r.state == ForwardState::Forwarded {
                out.push(r.to);
            }
        }
    }
    Ok(out)
}

/// Whether `body` received the message: the hub routed it there, or passed
/// it on there with consent.
fn received(txn: &Txn<'_>, outcome: &RoutedOutcome, body: &str) -> Result<bool, StoreError> {
    if outcome
        .decisions
        .iter()
        .any(|d| d.deliver && d.recipient == body)
    {
        return Ok(true);
    }
    Ok(latest_forward(txn, &outcome.message_id, body)?
        .is_some_and(|r| r.state == ForwardState::Forwarded))
}

/// A forward request, read outside a write (committed data).
pub fn forward(db: &Db, request_id: &str) -> Result<Option<ForwardRecord>, StoreError> {
    let key = forward_key(request_id);
    db.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// A recipient's request to pass a message on.
#[derive(Debug, Clone)]
pub struct ForwardAsk {
    /// The stored message.
    pub env: Envelope,
    /// A fresh request id.
    pub request_id: String,
    /// The body that asks.
    pub requester: BodyId,
    /// Who asks (SPIFFE URI), the audit record's actor.
    pub requested_by: String,
    /// The body to pass it on to.
    pub to: BodyId,
    /// Why.
    pub reason: String,
    /// The policy's decision for `to`, used only if the originator waived
    /// the third-party rule.
    pub decision: Decision,
    /// The policy version in force.
    pub policy_version: String,
    /// Now.
    pub now_ms: i64,
}

/// The result of a forward request or decision.
#[derive(Debug)]
pub enum Forward {
    /// Refused; the refusal is audited up to `audit_seq`.
    Refused {
        /// What to answer.
        error: HubError,
        /// The refusal's audit position.
        audit_seq: u64,
    },
    /// Filed or decided.
    Done {
        /// The request now.
        record: Box<ForwardRecord>,
        /// True if nothing changed (a pending request asked for again, a
        /// decision repeated).
        duplicate: bool,
        /// `(body, queue position)` of each queue entry written.
        queued: Vec<(BodyId, u64)>,
        /// The last audit position written (0 if none).
        audit_seq: u64,
    },
}

fn not_allowed(message_id: &str, problem: impl Into<String>) -> HubError {
    HubError::ForwardNotAllowed {
        message_id: message_id.to_owned(),
        problem: problem.into(),
    }
}

fn body_of(value: &str, key: &str) -> Result<BodyId, StoreError> {
    BodyId::parse(value).map_err(|problem| StoreError::Corrupt {
        key: key.to_owned(),
        problem,
    })
}

/// Approves a forward: records the policy's decision, queues the message
/// for `record.to` if it delivers, and audits `forwarded` or
/// `forward_withheld`. Returns the audit position.
#[allow(clippy::too_many_arguments)]
fn settle_approved(
    txn: &mut Txn<'_>,
    env: &Envelope,
    record: &mut ForwardRecord,
    decision: &Decision,
    decided_by: &str,
    why: &str,
    policy_version: &str,
    now_ms: i64,
    queued: &mut Vec<(BodyId, u64)>,
) -> Result<u64, StoreError> {
    record.decided_by = decided_by.to_owned();
    record.decided_at_ms = now_ms;
    record.rule = decision.rule.as_str().to_owned();
    record.rule_reason = decision.reason.clone();
    let mut rec = audit_base(env, "forwarded", policy_version, decided_by, now_ms);
    rec.recipient = record.to.clone();
    rec.rule = record.rule.clone();
    if decision.outcome == Outcome::Deliver {
        let to = body_of(
            &record.to,
            &String::from_utf8_lossy(&forward_key(&record.id)),
        )?;
        rec.decision = "deliver".into();
        rec.queue_seq = enqueue(txn, &to, &record.message_id, &record.origin, now_ms)?;
        queued.push((to, rec.queue_seq));
        rec.reason = format!(
            "request {} from {}: {why}; {}",
            record.id, record.requester, decision.reason
        );
        record.state = ForwardState::Forwarded;
    } else {
        rec.event = "forward_withheld".into();
        rec.decision = "withhold".into();
        rec.reason = format!(
            "request {} from {}: {why}, but the rules withhold it: {}",
            record.id, record.requester, decision.reason
        );
        record.state = ForwardState::Withheld;
    }
    append_audit(txn, rec)
}

/// Files a recipient's forward request, atomically: refuses (and audits) a
/// requester that never received the message and a message whose TLP
/// marking forbids passing it on; refuses a retracted message, one under
/// embargo and a body that already received it. Otherwise records the
/// request and audits `forward_requested`; then, if the originator waived
/// the third-party rule, decides at once with `ask.decision`, else queues a
/// notice for the originator. Asking again while a request for the same
/// message and body is pending returns that request.
pub async fn request_forward(db: &Db, ask: ForwardAsk) -> Result<Forward, HubError> {
    db.write(move |txn| {
        let id = ask.env.labels.message_id.clone();
        let out_key = outcome_key(&id);
        let Some(out) = txn.get(&out_key)? else {
            return Err(HubError::UnknownMessage(id));
        };
        let outcome: RoutedOutcome = parse(&out_key, &out)?;
        let (to, requester) = (ask.to.as_str(), ask.requester.as_str());
        let mut refusal = audit_base(
            &ask.env,
            "refused",
            &ask.policy_version,
            &ask.requested_by,
            ask.now_ms,
        );
        refusal.recipient = to.to_owned();
        if !received(txn, &outcome, requester)? {
            refusal.rule = "forward.not_a_recipient".into();
            refusal.reason =
                format!("{requester} asked to pass on to {to} a message it never received");
            return Ok(Forward::Refused {
                error: HubError::NotARecipient {
                    caller: requester.to_owned(),
                    message_id: id,
                },
                audit_seq: append_audit(txn, refusal)?,
            });
        }
        if txn.get(&retracted_key(&id))?.is_some() {
            return Err(not_allowed(&id, "its originator retracted it"));
        }
        if let Some(t) = ask.env.labels.not_before_ms.filter(|t| *t > ask.now_ms) {
            return Err(not_allowed(
                &id,
                format!("it is under embargo until {t} ms; ask again once the embargo ends"),
            ));
        }
        if to == outcome.origin || received(txn, &outcome, to)? {
            return Err(not_allowed(&id, format!("{to} already received it")));
        }
        if let Some(tlp @ (liaison_types::Tlp::AmberStrict | liaison_types::Tlp::Red)) =
            ask.env.labels.tlp
        {
            refusal.rule = "forward.tlp".into();
            refusal.reason = format!(
                "{requester} asked to pass on to {to} a message marked TLP:{tlp}, which never goes beyond the bodies the originator sent it to"
            );
            return Ok(Forward::Refused {
                error: not_allowed(
                    &id,
                    format!("it is marked TLP:{tlp}, which never goes beyond the bodies the originator sent it to"),
                ),
                audit_seq: append_audit(txn, refusal)?,
            });
        }
        if let Some(existing) = latest_forward(txn, &id, to)? {
            if existing.state == ForwardState::Pending {
                return Ok(Forward::Done {
                    record: Box::new(existing),
                    duplicate: true,
                    queued: Vec::new(),
                    audit_seq: 0,
                });
            }
        }
        let mut record = ForwardRecord {
            id: ask.request_id.clone(),
            message_id: id.clone(),
            origin: outcome.origin.clone(),
            requester: requester.to_owned(),
            requested_by: ask.requested_by.clone(),
            to: to.to_owned(),
            reason: ask.reason.clone(),
            state: ForwardState::Pending,
            requested_at_ms: ask.now_ms,
            decided_by: String::new(),
            decided_at_ms: 0,
            decision_reason: String::new(),
            rule: String::new(),
            rule_reason: String::new(),
        };
        let mut requested = audit_base(
            &ask.env,
            "forward_requested",
            &ask.policy_version,
            &ask.requested_by,
            ask.now_ms,
        );
        requested.recipient = to.to_owned();
        requested.reason = format!(
            "request {}: {requester} asks to pass it on to {to}: {}",
            record.id, record.reason
        );
        let mut audit_seq = append_audit(txn, requested)?;
        let mut queued = Vec::new();
        if ask.env.labels.onward_release_allowed() {
            record.decision_reason = "the originator allowed onward release".into();
            audit_seq = settle_approved(
                txn,
                &ask.env,
                &mut record,
                &ask.decision,
                WAIVER_ACTOR,
                "the originator allowed onward release without consent (third_party_release)",
                &ask.policy_version,
                ask.now_ms,
                &mut queued,
            )?;
        } else {
            let origin = body_of(&outcome.origin, &String::from_utf8_lossy(&out_key))?;
            let next_key = counter_key(origin.as_str(), "next");
            let seq = keys::u64_value(txn.get(&next_key)?) + 1;
            txn.put(next_key, seq.to_be_bytes().to_vec());
            let entry = QueueEntry {
                message_id: id.clone(),
                origin: outcome.origin.clone(),
                routed_at_ms: ask.now_ms,
                retraction: None,
                forward_request: Some(ForwardNotice {
                    request_id: record.id.clone(),
                    requester: record.requester.clone(),
                    requested_by: record.requested_by.clone(),
                    to: record.to.clone(),
                    reason: record.reason.clone(),
                    requested_at_ms: record.requested_at_ms,
                }),
            };
            txn.put(
                keys::seq_key(&queue_prefix(origin.as_str()), seq),
                json(&entry),
            );
            queued.push((origin, seq));
        }
        txn.put(forward_pair_key(&id, to), record.id.clone().into_bytes());
        txn.put(forward_key(&record.id), json(&record));
        Ok(Forward::Done {
            record: Box::new(record),
            duplicate: false,
            queued,
            audit_seq,
        })
    })
    .await
}

/// The originator's decision on a forward request.
#[derive(Debug, Clone)]
pub struct ForwardVerdict {
    /// The request.
    pub request_id: String,
    /// The deciding node's body; must be the message's origin.
    pub caller: BodyId,
    /// The stored message.
    pub env: Envelope,
    /// Consent (with the policy's decision for the request's body), or
    /// refusal (`None`).
    pub approve: Option<Decision>,
    /// Why.
    pub reason: String,
    /// Who decided (SPIFFE URI), the audit record's actor.
    pub decided_by: String,
    /// The policy version in force.
    pub policy_version: String,
    /// Now.
    pub now_ms: i64,
}

/// Applies the originator's decision to a pending forward request,
/// atomically: a consent is decided by the rules (`forwarded`, queued for
/// the body, or `forward_withheld`), a refusal is audited
/// (`forward_refused`). Deciding again the same way returns the request
/// unchanged; the other way is refused.
pub async fn decide_forward(db: &Db, v: ForwardVerdict) -> Result<Forward, HubError> {
    db.write(move |txn| {
        let Some(mut record) = forward_record(txn, &v.request_id)? else {
            return Err(HubError::UnknownForward(v.request_id));
        };
        if record.origin != v.caller.as_str() {
            return Err(HubError::NotForwardOrigin {
                caller: v.caller.to_string(),
                message_id: record.message_id,
                request_id: record.id,
            });
        }
        let approve = v.approve.is_some();
        match (record.state, approve) {
            (ForwardState::Pending, _) => {}
            (ForwardState::Forwarded | ForwardState::Withheld, true)
            | (ForwardState::Refused, false) => {
                return Ok(Forward::Done {
                    record: Box::new(record),
                    duplicate: true,
                    queued: Vec::new(),
                    audit_seq: 0,
                })
            }
            (state, _) => {
                return Err(HubError::ForwardDecided {
                    request_id: record.id,
                    state: state.as_str(),
                    by: record.decided_by,
                })
            }
        }
        record.decision_reason = v.reason.clone();
        let mut queued = Vec::new();
        let audit_seq = match &v.approve {
            Some(decision) => {
                if txn.get(&retracted_key(&record.message_id))?.is_some() {
                    return Err(not_allowed(
                        &record.message_id,
                        "its originator retracted it; refuse the request instead",
                    ));
                }
                let why = if v.reason.is_empty() {
                    format!("approved by {}", v.decided_by)
                } else {
                    format!("approved by {}: {}", v.decided_by, v.reason)
                };
                settle_approved(
                    txn,
                    &v.env,
                    &mut record,
                    decision,
                    &v.decided_by,
                    &why,
                    &v.policy_version,
                    v.now_ms,
                    &mut queued,
                )?
            }
            None => {
                record.state = ForwardState::Refused;
                record.decided_by = v.decided_by.clone();
                record.decided_at_ms = v.now_ms;
                let mut rec = audit_base(
                    &v.env,
                    "forward_refused",
                    &v.policy_version,
                    &v.decided_by,
                    v.now_ms,
                );
                rec.recipient = record.to.clone();
                rec.reason = format!(
                    "request {} from {}: refused by {}: {}",
                    record.id, record.requester, v.decided_by, v.reason
                );
                append_audit(txn, rec)?
            }
        };
        txn.put(forward_key(&record.id), json(&record));
        Ok(Forward::Done {
            record: Box::new(record),
            duplicate: false,
            queued,
            audit_seq,
        })
    })
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

    mod forwarding {
        use liaison_policy::{decide, Decision, Governance};
        use liaison_types::Classification::Secret;
        use prost::Message;

        use super::super::*;
        use super::NOW;

        const ALICE: &str = "spiffe://t/org/alpha/officer/alice";
        const BOB: &str = "spiffe://t/org/bravo/officer/bob";

        fn gov() -> Governance {
            Governance::for_test()
                .member("interpol", Secret, &["drugs"])
                .member("alpha", Secret, &["drugs"])
                .member("bravo", Secret, &["drugs"])
                .member("charlie", Secret, &["drugs"])
                .build()
                .unwrap()
        }

        fn body(id: &str) -> BodyId {
            BodyId::parse(id).unwrap()
        }

        /// A RESTRICTED alert from alpha, releasable to bravo only.
        fn message(third_party_release: bool, tlp: pb::Tlp) -> Envelope {
            let body = pb::Body {
                title: "fwd".into(),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: "x".into(),
                    ..Default::default()
                })),
            };
            Envelope::try_from(pb::Envelope {
                labels: Some(pb::Labels {
                    message_id: uuid::Uuid::new_v4().to_string(),
                    origin: "alpha".into(),
                    kind: pb::Kind::Alert as i32,
                    classification: pb::Classification::Restricted as i32,
                    crime_areas: vec!["drugs".into()],
                    priority: pb::Priority::Routine as i32,
                    created_at_ms: NOW,
                    releasable_to: vec!["bravo".into()],
                    third_party_release,
                    tlp: tlp as i32,
                    ..Default::default()
                }),
                body: body.encode_to_vec(),
            })
            .unwrap()
        }

        async fn routed(db: &Db, gov: &Governance, env: &Envelope) {
            let decisions = decide(gov, &env.labels, NOW);
            submit(
                db,
                env.clone(),
                decisions,
                "v1".into(),
                "t".into(),
                None,
                NOW,
            )
            .await
            .unwrap();
        }

        /// The decision for `to` with `to` named, as the service computes it.
        fn decision(gov: &Governance, env: &Envelope, to: &str) -> Decision {
            let mut l = env.labels.clone();
            l.releasable_to.insert(body(to));
            decide(gov, &l, NOW)
                .into_iter()
                .find(|d| d.recipient.as_str() == to)
                .unwrap()
        }

        fn ask(gov: &Governance, env: &Envelope, from: &str, to: &str) -> ForwardAsk {
            ForwardAsk {
                env: env.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                requester: body(from),
                requested_by: BOB.into(),
                to: body(to),
                reason: "joint operation".into(),
                decision: decision(gov, env, to),
                policy_version: "v1".into(),
                now_ms: NOW,
            }
        }

        fn verdict(
            gov: &Governance,
            env: &Envelope,
            id: &str,
            caller: &str,
            approve: bool,
        ) -> ForwardVerdict {
            ForwardVerdict {
                request_id: id.to_owned(),
                caller: body(caller),
                env: env.clone(),
                approve: approve.then(|| decision(gov, env, "charlie")),
                reason: if approve { String::new() } else { "no".into() },
                decided_by: ALICE.into(),
                policy_version: "v1".into(),
                now_ms: NOW,
            }
        }

        fn done(f: Forward) -> (ForwardRecord, bool, Vec<(BodyId, u64)>) {
            match f {
                Forward::Done {
                    record,
                    duplicate,
                    queued,
                    ..
                } => (*record, duplicate, queued),
                Forward::Refused { error, .. } => panic!("refused: {error}"),
            }
        }

        fn queue(db: &Db, b: &str) -> Vec<QueueEntry> {
            queue_after(db, &body(b), 0, 100)
                .unwrap()
                .into_iter()
                .map(|(_, e)| e)
                .collect()
        }

        fn events(db: &Db) -> Vec<(String, String)> {
            audit_after(db, 0, u64::MAX, 1000)
                .unwrap()
                .into_iter()
                .filter(|r| r.event.starts_with("forward") || r.event == "refused")
                .map(|r| (r.event, r.rule))
                .collect()
        }

        #[tokio::test]
        async fn nothing_is_forwarded_without_consent_and_consent_is_final() {
            let db = Db::in_memory();
            let gov = gov();
            let env = message(false, pb::Tlp::Unspecified);
            routed(&db, &gov, &env).await;
            assert!(queue(&db, "charlie").is_empty(), "releasable to bravo only");

            let (req, dup, queued) = done(
                request_forward(&db, ask(&gov, &env, "bravo", "charlie"))
                    .await
                    .unwrap(),
            );
            assert!(!dup);
            assert_eq!(req.state, ForwardState::Pending);
            // The originator is told; the named body gets nothing yet.
            assert_eq!(queued, vec![(body("alpha"), 1)]);
            let notice = queue(&db, "alpha").pop().unwrap();
            assert_eq!(notice.forward_request.unwrap().request_id, req.id);
            assert!(queue(&db, "charlie").is_empty());

            // Asking again returns the pending request.
            let (again, dup, _) = done(
                request_forward(&db, ask(&gov, &env, "bravo", "charlie"))
                    .await
                    .unwrap(),
            );
            assert!(dup);
            assert_eq!(again.id, req.id);
            assert_eq!(queue(&db, "alpha").len(), 1);

            // Only the originator decides.
            let err = decide_forward(&db, verdict(&gov, &env, &req.id, "bravo", true))
                .await
                .unwrap_err();
            assert!(matches!(err, HubError::NotForwardOrigin { .. }), "{err}");
            assert!(queue(&db, "charlie").is_empty());

            let (fwd, dup, queued) = done(
                decide_forward(&db, verdict(&gov, &env, &req.id, "alpha", true))
                    .await
                    .unwrap(),
            );
            assert!(!dup);
            assert_eq!(fwd.state, ForwardState::Forwarded);
            assert_eq!(fwd.rule, "deliver.all_rules_passed");
            assert_eq!(queued, vec![(body("charlie"), 1)]);
            assert_eq!(queue(&db, "charlie")[0].message_id, env.labels.message_id);

            // Approving again changes nothing; refusing now is refused.
            let (_, dup, queued) = done(
                decide_forward(&db, verdict(&gov, &env, &req.id, "alpha", true))
                    .await
                    .unwrap(),
            );
            assert!(dup && queued.is_empty());
            let err = decide_forward(&db, verdict(&gov, &env, &req.id, "alpha", false))
                .await
                .unwrap_err();
            assert!(matches!(err, HubError::ForwardDecided { .. }), "{err}");
            assert_eq!(queue(&db, "charlie").len(), 1);

            // charlie has it now: nobody may forward it there again, and a
            // retraction reaches charlie too.
            let err = request_forward(&db, ask(&gov, &env, "bravo", "charlie"))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("already received it"), "{err}");
            let r = retract(
                &db,
                body("alpha"),
                env.labels.message_id.clone(),
                "wrong".into(),
                ALICE.into(),
                NOW,
            )
            .await
            .unwrap();
            assert_eq!(r.recipients, ["bravo", "charlie"]);
            assert_eq!(
                events(&db),
                [
                    ("forward_requested".to_owned(), String::new()),
                    (
                        "forwarded".to_owned(),
                        "deliver.all_rules_passed".to_owned()
                    ),
                ]
            );
        }

        #[tokio::test]
        async fn a_refused_forward_is_never_delivered() {
            let db = Db::in_memory();
            let gov = gov();
            let env = message(false, pb::Tlp::Amber);
            routed(&db, &gov, &env).await;
            let (req, _, _) = done(
                request_forward(&db, ask(&gov, &env, "bravo", "charlie"))
                    .await
                    .unwrap(),
            );
            let (rec, dup, queued) = done(
                decide_forward(&db, verdict(&gov, &env, &req.id, "alpha", false))
                    .await
                    .unwrap(),
            );
            assert!(!dup && queued.is_empty());
            assert_eq!(rec.state, ForwardState::Refused);
            let (_, dup, _) = done(
                decide_forward(&db, verdict(&gov, &env, &req.id, "alpha", false))
                    .await
                    .unwrap(),
            );
            assert!(dup);
            let err = decide_forward(&db, verdict(&gov, &env, &req.id, "alpha", true))
                .await
                .unwrap_err();
            assert!(matches!(err, HubError::ForwardDecided { .. }), "{err}");
            assert!(queue(&db, "charlie").is_empty());
            assert_eq!(events(&db).last().unwrap().0, "forward_refused");
        }

        #[tokio::test]
        async fn refusals_are_audited_and_a_waiver_needs_no_consent() {
            let db = Db::in_memory();
            let gov = gov();
            // charlie never received it.
            let env = message(false, pb::Tlp::Unspecified);
            routed(&db, &gov, &env).await;
            match request_forward(&db, ask(&gov, &env, "charlie", "bravo"))
                .await
                .unwrap()
            {
                Forward::Refused { error, audit_seq } => {
                    assert!(matches!(error, HubError::NotARecipient { .. }), "{error}");
                    assert!(audit_seq > 0);
                }
                other => panic!("{other:?}"),
            }
            // AMBER+STRICT never goes further.
            let strict = message(false, pb::Tlp::AmberStrict);
            routed(&db, &gov, &strict).await;
            match request_forward(&db, ask(&gov, &strict, "bravo", "charlie"))
                .await
                .unwrap()
            {
                Forward::Refused { error, .. } => {
                    assert!(error.to_string().contains("AMBER+STRICT"), "{error}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                events(&db),
                [
                    ("refused".to_owned(), "forward.not_a_recipient".to_owned()),
                    ("refused".to_owned(), "forward.tlp".to_owned()),
                ]
            );
            // The originator waived the rule: decided at once, no notice.
            let open = message(true, pb::Tlp::Green);
            routed(&db, &gov, &open).await;
            let before = queue(&db, "alpha").len();
            let (rec, _, queued) = done(
                request_forward(&db, ask(&gov, &open, "bravo", "charlie"))
                    .await
                    .unwrap(),
            );
            assert_eq!(rec.state, ForwardState::Forwarded);
            assert_eq!(rec.decided_by, WAIVER_ACTOR);
            assert_eq!(queued, vec![(body("charlie"), 1)]);
            assert_eq!(queue(&db, "alpha").len(), before);
        }
    }
}
