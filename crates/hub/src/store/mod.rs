//! The hub's durable state on top of [`liaison_store::Db`].
//!
//! The key schema, every key family in one table, is [`schema`]'s.
//!
//! A submission writes the envelope, its outcome, its queue entries and its
//! audit records in one atomic transaction, so a crash leaves all or none.

use liaison_policy::{Decision, Outcome, Rule, Unaddressed};
use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, to_json as json};
use liaison_store::{keys, Db, StoreError, Txn};
use liaison_types::audit::Event as AuditEvent;
use liaison_types::{BodyId, DecisionRecord, Envelope, UnaddressedRecord};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::HubError;

mod deconflict;
mod embargo;
mod forward;
pub(crate) mod log;
mod owner;
mod plan;
mod quota;
mod retention;
mod retraction;
mod schema;

pub use log::append_audit;
use log::audit_after;
pub(crate) use log::convert_chain;
pub use owner::HubStore;
use plan::apply;
pub use plan::{Applied, Effects, Enqueue, Write};
pub use quota::{QueueQuota, Queued};
use schema::*;
pub use schema::{env_key_name, forward_key_name};

pub use deconflict::{
    check_lifecycle, parse_targets, plan_deconfliction, Deconfliction, IndexOp, OverlapRecord,
    PlanContext, PlanRecord, StoredNotice,
};
pub use embargo::*;
pub use forward::*;
pub use retention::*;
pub use retraction::*;

/// A message to store and route, with what the hub decided for it.
#[derive(Debug)]
pub struct Submission {
    /// The validated message.
    pub env: Envelope,
    /// A decision per candidate recipient the message addressed (see
    /// [`liaison_policy::route`]).
    pub decisions: Vec<Decision>,
    /// The other candidates, counted per rule.
    pub unaddressed: Vec<Unaddressed>,
    /// Version of the governance that decided.
    pub policy_version: String,
    /// The submitting node's identity.
    pub actor: String,
    /// The officer who approved its release (four-eyes), if any.
    pub approved_by: Option<String>,
    /// When the hub accepted it.
    pub now_ms: i64,
    /// How long to keep its content (the retention for its level), if
    /// limited.
    pub retain_ms: Option<i64>,
    /// The trace context of the hub's span for it (empty if untraced).
    pub traceparent: String,
    /// For a version of a plan: the plan as it would now stand, to check
    /// and deconflict in the transaction, and the governance to decide its
    /// notices.
    pub plan: Option<PlanSubmission>,
}

/// What a plan submission brings to the store.
#[derive(Debug, Clone)]
pub struct PlanSubmission {
    /// The plan as this version makes it.
    pub record: PlanRecord,
    /// The governance that decides full or blind notices.
    pub gov: std::sync::Arc<liaison_policy::Governance>,
    /// The hub's body (its deconfliction desk).
    pub hub_body: BodyId,
}

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
    /// A decision per candidate the message addressed.
    pub decisions: Vec<DecisionRecord>,
    /// The other candidates, counted per rule (none in stores of earlier
    /// versions, which listed a decision for every candidate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unaddressed: Vec<UnaddressedRecord>,
    /// The audit position of its "received" record (0 in stores of earlier
    /// versions).
    #[serde(default)]
    pub audit_seq: u64,
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
    /// Set when this position carries, for the originator of the message, a
    /// recipient node's receipt of it, not the message (written by earlier
    /// versions; receipts now travel in `receipts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// When non-empty, this position carries, for their originator, one
    /// recipient node's receipts of many messages (one acknowledgement),
    /// not a message; each names its message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<Receipt>,
    /// The W3C trace context of the hub's routing span, when the hub
    /// traces: the delivery carries it to the recipient's node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    /// The audit position of the record that decided this position (the
    /// routing decision for its recipient); 0 if none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audit_seq: u64,
    /// Set when this position carries, for the originator of the message
    /// (a plan's version), a deconfliction notice, not the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<StoredNotice>,
    /// The size of the encoded envelope this position delivers, counted
    /// against the recipient's queue quota (0 for receipts, notices and
    /// the positions of earlier versions; a message position queued with 0
    /// is sized from the stored envelope when it is appended).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RoutedOutcome {
    /// The stored form: an encoded [`pb::StoredOutcome`].
    pub fn encode(&self) -> Vec<u8> {
        pb::StoredOutcome {
            message_id: self.message_id.clone(),
            origin: self.origin.clone(),
            digest: self.digest.clone(),
            accepted_at_ms: self.accepted_at_ms,
            policy_version: self.policy_version.clone(),
            decisions: self
                .decisions
                .iter()
                .map(pb::RoutingDecision::from)
                .collect(),
            unaddressed: self.unaddressed.iter().map(pb::Unaddressed::from).collect(),
            audit_seq: self.audit_seq,
        }
        .encode_to_vec()
    }

    /// Reads the stored form under `key`: the encoded proto, or the JSON
    /// of earlier versions (a proto encoding never begins with `{`).
    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.first() == Some(&b'{') {
            return parse(key, bytes);
        }
        let o = pb::StoredOutcome::decode(bytes).map_err(|e| StoreError::corrupt(key, e))?;
        Ok(Self {
            message_id: o.message_id,
            origin: o.origin,
            digest: o.digest,
            accepted_at_ms: o.accepted_at_ms,
            policy_version: o.policy_version,
            decisions: o.decisions.iter().map(DecisionRecord::from).collect(),
            unaddressed: o.unaddressed.iter().map(UnaddressedRecord::from).collect(),
            audit_seq: o.audit_seq,
        })
    }
}

impl QueueEntry {
    /// The stored form: an encoded [`pb::StoredQueueEntry`] for a message or
    /// receipts (the hot path), JSON for the rare retraction and forward
    /// request positions (and an old single receipt).
    pub fn encode(&self) -> Vec<u8> {
        match self.stored() {
            Some(p) => p.encode_to_vec(),
            None => json(self),
        }
    }

    /// The binary form, for a message or receipts; `None` for the kinds
    /// stored as JSON.
    fn stored(&self) -> Option<pb::StoredQueueEntry> {
        if self.retraction.is_some()
            || self.forward_request.is_some()
            || self.receipt.is_some()
            || self.notice.is_some()
        {
            return None;
        }
        Some(pb::StoredQueueEntry {
            message_id: self.message_id.clone(),
            origin: self.origin.clone(),
            routed_at_ms: self.routed_at_ms,
            receipts: self
                .receipts
                .iter()
                .map(|r| pb::StoredReceipt {
                    message_id: r.message_id.clone(),
                    recipient: r.recipient.clone(),
                    at_ms: r.at_ms,
                    quarantined: r.quarantined.clone(),
                })
                .collect(),
            traceparent: self.traceparent.clone(),
            audit_seq: self.audit_seq,
            bytes: self.bytes,
        })
    }

    /// Reads the stored form under `key` (see [`QueueEntry::encode`]).
    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.first() == Some(&b'{') {
            return parse(key, bytes);
        }
        let e = pb::StoredQueueEntry::decode(bytes).map_err(|e| StoreError::corrupt(key, e))?;
        Ok(Self::from_stored(e))
    }

    /// A stored queue value, a run ([`pb::StoredQueueRun`]: the entries of
    /// consecutive positions from the key's) or a single entry as
    /// [`QueueEntry::encode`] writes it: how many positions it holds, and
    /// up to `limit` of its entries from its `skip`-th on (the entries of a
    /// run before it are skipped undecoded).
    fn decode_from(
        key: &[u8],
        bytes: &[u8],
        skip: usize,
        limit: usize,
    ) -> Result<(usize, Vec<Self>), StoreError> {
        if bytes.first() != Some(&QUEUE_RUN_TAG) {
            let one = (skip == 0 && limit > 0).then(|| Self::decode(key, bytes));
            return Ok((1, one.into_iter().collect::<Result<_, _>>()?));
        }
        let elements = run_elements(key, bytes)?;
        let entries = elements
            .iter()
            .skip(skip)
            .take(limit)
            .map(|e| {
                pb::StoredQueueEntry::decode(*e)
                    .map(Self::from_stored)
                    .map_err(|e| StoreError::corrupt(key, e))
            })
            .collect::<Result<_, _>>()?;
        Ok((elements.len(), entries))
    }

    /// The bytes counted by the positions after `after` up to `through`
    /// of a stored queue value whose first position is `start`.
    fn bytes_between(
        key: &[u8],
        bytes: &[u8],
        start: u64,
        after: u64,
        through: u64,
    ) -> Result<u64, StoreError> {
        let counted = |pos: u64| pos > after && pos <= through;
        if bytes.first() != Some(&QUEUE_RUN_TAG) {
            if !counted(start) {
                return Ok(0);
            }
            return Ok(Self::decode(key, bytes)?.bytes);
        }
        let mut sum = 0u64;
        for (i, e) in run_elements(key, bytes)?.into_iter().enumerate() {
            if counted(start.saturating_add(i as u64)) {
                let entry =
                    pb::StoredQueueEntry::decode(e).map_err(|e| StoreError::corrupt(key, e))?;
                sum = sum.saturating_add(entry.bytes);
            }
        }
        Ok(sum)
    }

    /// How many positions a stored queue value holds, without decoding them.
    fn count_value(key: &[u8], bytes: &[u8]) -> Result<usize, StoreError> {
        if bytes.first() != Some(&QUEUE_RUN_TAG) {
            return Ok(1);
        }
        Ok(run_elements(key, bytes)?.len())
    }

    fn from_stored(e: pb::StoredQueueEntry) -> Self {
        Self {
            message_id: e.message_id,
            origin: e.origin,
            routed_at_ms: e.routed_at_ms,
            retraction: None,
            forward_request: None,
            receipt: None,
            notice: None,
            receipts: e
                .receipts
                .into_iter()
                .map(|r| Receipt {
                    message_id: r.message_id,
                    recipient: r.recipient,
                    at_ms: r.at_ms,
                    quarantined: r.quarantined,
                })
                .collect(),
            traceparent: e.traceparent,
            audit_seq: e.audit_seq,
            bytes: e.bytes,
        }
    }
}

/// The first byte of a run of queue entries: field 15 of
/// [`pb::StoredQueueRun`], length-delimited.
const QUEUE_RUN_TAG: u8 = (15 << 3) | 2;

/// A run of queue entries stops growing at this many bytes (about fifty
/// messages), so that a reader that starts inside a run skips little.
const QUEUE_RUN_BYTES: usize = 4 * 1024;

/// At most this many stored queue values are read at a time.
const QUEUE_VALUES_PER_READ: usize = 64;

/// The encoded entries of a run ([`pb::StoredQueueRun`]), undecoded.
fn run_elements<'a>(key: &[u8], mut bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, StoreError> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (field, wire) = decode_key(&mut bytes).map_err(|e| StoreError::corrupt(key, e))?;
        let len = decode_varint(&mut bytes).map_err(|e| StoreError::corrupt(key, e))?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if field != 15 || wire != WireType::LengthDelimited || len > bytes.len() {
            return Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                problem: format!("not a run of queue entries: field {field}, {len} bytes"),
            });
        }
        let (element, rest) = bytes.split_at(len);
        out.push(element);
        bytes = rest;
    }
    Ok(out)
}

/// A recipient node's receipt of a message, queued for its originator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The message; empty in a single `receipt` (the entry names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    /// The body whose node took the message.
    pub recipient: String,
    /// When the hub learnt of it.
    pub at_ms: i64,
    /// Why the recipient's node quarantined it instead of storing it in its
    /// inbox; `None` when it was received.
    pub quarantined: Option<String>,
}

impl Receipt {
    /// The receipt as streamed to the originator.
    pub fn to_proto(&self, message_id: &str) -> pb::DeliveryReceipt {
        pb::DeliveryReceipt {
            message_id: message_id.to_owned(),
            recipient: self.recipient.clone(),
            received_at_ms: self.at_ms,
            quarantined: self.quarantined.is_some(),
            reason: self.quarantined.clone().unwrap_or_default(),
        }
    }
}

impl QueueEntry {
    /// Whether this position delivers the message itself (not a receipt,
    /// a retraction, a forward request or a notice about it).
    pub fn delivers_message(&self) -> bool {
        self.retraction.is_none()
            && self.forward_request.is_none()
            && self.receipt.is_none()
            && self.receipts.is_empty()
            && self.notice.is_none()
            && !self.message_id.is_empty()
    }

    /// A position carrying the message itself.
    pub fn message(message_id: &str, origin: &str, now_ms: i64) -> Self {
        Self {
            message_id: message_id.to_owned(),
            origin: origin.to_owned(),
            routed_at_ms: now_ms,
            retraction: None,
            forward_request: None,
            receipt: None,
            receipts: Vec::new(),
            traceparent: String::new(),
            audit_seq: 0,
            notice: None,
            bytes: 0,
        }
    }

    /// Whether this position carries the message itself (not a withdrawal,
    /// a forward request, a receipt or a notice).
    pub fn is_message(&self) -> bool {
        self.retraction.is_none()
            && self.notice.is_none()
            && self.forward_request.is_none()
            && self.receipt.is_none()
            && self.receipts.is_empty()
    }
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
        /// The deconfliction notices queued (true: blind).
        notices: Vec<bool>,
    },
    /// Already known; the original outcome.
    Duplicate(RoutedOutcome),
}

/// SHA-256 of the encoded envelope.
pub fn digest(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}

/// Folds the plain `delivered` and `acknowledged` records of one delivery
/// batch or acknowledgement into one record per event, originator and
/// recipient, listing its messages in `items` (a message's kind and
/// classification go with it). Records with a reason or a rule
/// (withdrawals, expiries, forward requests, quarantines) stay as they
/// are. Each folded record takes the place and time of its first message.
pub fn batch_records(records: Vec<pb::AuditRecord>) -> Vec<pb::AuditRecord> {
    let plain = |r: &pb::AuditRecord| {
        (r.event == AuditEvent::Delivered.as_str() || r.event == AuditEvent::Acknowledged.as_str())
            && r.reason.is_empty()
            && r.rule.is_empty()
            && r.items.is_empty()
            && !r.message_id.is_empty()
    };
    let mut out: Vec<pb::AuditRecord> = Vec::with_capacity(records.len());
    // The folded record of each (event, origin, recipient, actor, policy).
    let mut open: std::collections::HashMap<(String, String, String, String, String), usize> =
        std::collections::HashMap::new();
    for mut r in records {
        if !plain(&r) {
            out.push(r);
            continue;
        }
        let item = pb::AuditItem {
            message_id: std::mem::take(&mut r.message_id),
            queue_seq: std::mem::take(&mut r.queue_seq),
            kind: std::mem::take(&mut r.kind),
            classification: std::mem::take(&mut r.classification),
        };
        let key = (
            r.event.clone(),
            r.origin.clone(),
            r.recipient.clone(),
            r.actor.clone(),
            r.policy_version.clone(),
        );
        match open.get(&key) {
            Some(&i) => out[i].items.push(item),
            None => {
                open.insert(key, out.len());
                r.items.push(item);
                out.push(r);
            }
        }
    }
    out
}

/// The labels' audit fields: message id, origin, kind, classification.
pub fn audit_base(
    env: &Envelope,
    event: AuditEvent,
    policy_version: &str,
    actor: &str,
    now_ms: i64,
) -> pb::AuditRecord {
    pb::AuditRecord {
        at_ms: now_ms,
        event: event.into(),
        message_id: env.labels.message_id.clone(),
        origin: env.labels.origin.to_string(),
        kind: env.labels.kind.as_str().to_owned(),
        classification: env.labels.classification.as_str().to_owned(),
        policy_version: policy_version.to_owned(),
        actor: actor.to_owned(),
        ..Default::default()
    }
}

/// What a submission comes to, decided purely.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmissionPlan {
    /// A retry of a message already routed: its original outcome, nothing
    /// written.
    Duplicate(RoutedOutcome),
    /// A new message: what was decided, and the effects.
    New {
        /// The outcome stored with it.
        outcome: RoutedOutcome,
        /// Writes, queue appends and audit records.
        effects: Effects,
        /// Whether deliveries are held under embargo.
        held: bool,
    },
}

/// The pure plan of a submission, given the outcome already stored under
/// its id (if any).
///
/// A retry (same id, same content, same origin) gets the original outcome
/// and writes nothing; the same id for different content is
/// [`HubError::IdReused`]. A new message is stored with its outcome, with a
/// `received` record (naming a four-eyes approver if any, and its labels for
/// replay) and one `routed` record per candidate recipient naming the rule;
/// each delivery goes into the recipient's queue (the record names the
/// position), or, under an embargo not yet ended, is held until it ends.
/// Its erasure and expiry are scheduled.
pub fn plan_submission(
    s: &Submission,
    encoded: Vec<u8>,
    digest: String,
    existing: Option<RoutedOutcome>,
) -> Result<SubmissionPlan, HubError> {
    let env = &s.env;
    let id = env.labels.message_id.clone();
    let size = encoded.len() as u64;
    if let Some(original) = existing {
        if original.digest != digest || original.origin != env.labels.origin.as_str() {
            return Err(HubError::IdReused { message_id: id });
        }
        return Ok(SubmissionPlan::Duplicate(original));
    }
    let outcome = RoutedOutcome {
        message_id: id.clone(),
        origin: env.labels.origin.to_string(),
        digest,
        accepted_at_ms: s.now_ms,
        policy_version: s.policy_version.clone(),
        decisions: s
            .decisions
            .iter()
            .map(|d| DecisionRecord::from(&pb::RoutingDecision::from(d)))
            .collect(),
        unaddressed: s
            .unaddressed
            .iter()
            .map(|u| UnaddressedRecord::from(&pb::Unaddressed::from(u)))
            .collect(),
        audit_seq: 0,
    };
    let mut effects = Effects {
        writes: vec![Write::Message {
            encoded,
            outcome: Box::new(outcome.clone()),
            audit: Some(0),
        }],
        ..Effects::default()
    };
    let mut received = audit_base(
        env,
        AuditEvent::Received,
        &s.policy_version,
        &s.actor,
        s.now_ms,
    );
    received.labels = serde_json::to_string(&env.labels).unwrap_or_default();
    if let Some(approver) = &s.approved_by {
        received.reason = format!("released by {approver} after four-eyes approval");
    }
    effects.audit.push(received);
    let embargo = env.labels.not_before_ms.filter(|t| *t > s.now_ms);
    let mut held = Vec::new();
    let routed = || {
        audit_base(
            env,
            AuditEvent::Routed,
            &s.policy_version,
            &s.actor,
            s.now_ms,
        )
    };
    for d in &s.decisions {
        let mut rec = routed();
        rec.recipient = d.recipient.to_string();
        rec.decision = d.outcome.as_str().into();
        rec.rule = d.rule.into();
        rec.reason = d.reason.clone();
        if d.outcome == Outcome::Deliver {
            if embargo.is_some() {
                held.push(d.recipient.to_string());
            } else {
                effects.enqueue.push(Enqueue {
                    body: d.recipient.clone(),
                    entry: QueueEntry {
                        traceparent: s.traceparent.clone(),
                        bytes: size,
                        ..QueueEntry::message(&id, env.labels.origin.as_str(), s.now_ms)
                    },
                    audit: Some(effects.audit.len()),
                });
            }
        }
        effects.audit.push(rec);
    }
    // The bodies it did not address: one record per rule, naming no
    // recipient, so that only the originator's auditors (and the hub's)
    // see it.
    for u in &s.unaddressed {
        let mut rec = routed();
        rec.decision = Outcome::Withhold.as_str().into();
        rec.rule = u.rule.into();
        rec.reason = u.reason.clone();
        effects.audit.push(rec);
    }
    if let Some(ms) = s.retain_ms {
        effects.writes.push(Write::ScheduleErasure {
            message_id: id.clone(),
            at_ms: s.now_ms.saturating_add(ms),
        });
    }
    if let Some(at_ms) = env.labels.expires_at_ms {
        effects.writes.push(Write::ScheduleExpiry {
            message_id: id.clone(),
            at_ms,
        });
    }
    let any_held = !held.is_empty();
    if let (Some(not_before_ms), true) = (embargo, any_held) {
        effects.writes.push(Write::Hold(Held {
            message_id: id,
            origin: env.labels.origin.to_string(),
            recipients: held,
            not_before_ms,
            expires_at_ms: env.labels.expires_at_ms,
        }));
    }
    Ok(SubmissionPlan::New {
        outcome,
        effects,
        held: any_held,
    })
}

/// Stores and routes a batch of submissions in one atomic transaction,
/// in order ([`plan_submission`] decides each, seeing the ones before it in
/// the batch: the same message twice is stored once). A submission the plan
/// refuses (an id reused for other content) is refused alone, writing
/// nothing; a storage failure fails the whole batch.
pub(super) async fn submit_all(
    db: &Db,
    plans: &std::sync::Arc<std::sync::Mutex<Deconfliction>>,
    quota: QueueQuota,
    batch: Vec<Submission>,
) -> Result<(Vec<Result<Submitted, HubError>>, u64), HubError> {
    let plans = std::sync::Arc::clone(plans);
    let batch: Vec<(Submission, Vec<u8>, String)> = batch
        .into_iter()
        .map(|s| {
            let encoded = pb::Envelope::from(&s.env).encode_to_vec();
            let digest = digest(&encoded);
            (s, encoded, digest)
        })
        .collect();
    db.write(move |txn| {
        let mut results = Vec::with_capacity(batch.len());
        // The last record of a refused plan version, made durable with the
        // batch.
        let mut refused_audit = 0;
        // Once a submission is refused for now (a full queue, a plan
        // rate), every later one of the batch is held back behind it: a
        // sender's messages reach each recipient in the order sent.
        let mut held_back: Option<(String, String)> = None;
        for (s, encoded, digest) in batch {
            if let Some((earlier, why)) = &held_back {
                results.push(Err(HubError::HeldBack {
                    earlier: earlier.clone(),
                    why: why.clone(),
                }));
                continue;
            }
            let hold_back = |refused: &HubError| {
                let retry = liaison_proto::status::classify(refused.code()).disposition
                    == liaison_proto::status::Disposition::Retry;
                retry.then(|| (s.env.labels.message_id.clone(), refused.to_string()))
            };
            let okey = outcome_key(&s.env.labels.message_id);
            let existing = match txn.get(&okey)? {
                Some(bytes) => Some(RoutedOutcome::decode(&okey, &bytes)?),
                None => None,
            };
            results.push(match plan_submission(&s, encoded, digest, existing) {
                Err(refused) => Err(refused),
                Ok(SubmissionPlan::Duplicate(original)) => Ok(Submitted::Duplicate(original)),
                Ok(SubmissionPlan::New {
                    mut outcome,
                    effects,
                    held,
                }) => {
                    // Refused whole, writing nothing, while a recipient's
                    // queue is full.
                    let now = queued_for(txn, &effects.enqueue)?;
                    if let Err(full) = quota::check(&quota, &now, &effects.enqueue) {
                        held_back = hold_back(&full);
                        results.push(Err(full));
                        continue;
                    }
                    // A plan's version is checked against the plan first:
                    // refused, only the refusal is written.
                    let deconflicted = match &s.plan {
                        None => None,
                        Some(p) => {
                            let ctx = PlanContext {
                                gov: &p.gov,
                                hub_body: &p.hub_body,
                                actor: &s.actor,
                                now_ms: s.now_ms,
                            };
                            let mut index = plans.lock().unwrap_or_else(|e| e.into_inner());
                            match deconflict::deconflict_in(txn, &mut index, &p.record, &ctx)? {
                                Err(refusal) => {
                                    let (refused, record) = *refusal;
                                    let applied = apply(
                                        txn,
                                        Effects {
                                            audit: vec![record],
                                            ..Effects::default()
                                        },
                                    )?;
                                    drop(index);
                                    held_back = hold_back(&refused);
                                    results.push(Err(refused));
                                    refused_audit = refused_audit.max(applied.audit_seq);
                                    continue;
                                }
                                Ok(planned) => Some(planned),
                            }
                        }
                    };
                    let mut applied = apply(txn, effects)?;
                    outcome.audit_seq = applied.first_audit_seq;
                    let mut notices = Vec::new();
                    if let Some((effects, op)) = deconflicted {
                        notices = effects
                            .enqueue
                            .iter()
                            .filter_map(|e| e.entry.notice.as_ref().map(|n| n.0.blind))
                            .collect();
                        let more = apply(txn, effects)?;
                        applied.queued.extend(more.queued);
                        applied.audit_seq = applied.audit_seq.max(more.audit_seq);
                        plans.lock().unwrap_or_else(|e| e.into_inner()).apply(op);
                    }
                    Ok(Submitted::New {
                        outcome,
                        queued: applied.queued,
                        audit_seq: applied.audit_seq,
                        held,
                        notices,
                    })
                }
            });
        }
        Ok::<_, HubError>((results, refused_audit))
    })
    .await
}

/// What waits now in the queue of each recipient a message position of
/// `enqueue` names, read in the transaction (so earlier submissions of
/// the same batch count).
fn queued_for(
    txn: &Txn<'_>,
    enqueue: &[Enqueue],
) -> Result<std::collections::BTreeMap<BodyId, Queued>, StoreError> {
    let mut out = std::collections::BTreeMap::new();
    for e in enqueue.iter().filter(|e| e.entry.delivers_message()) {
        if out.contains_key(&e.body) {
            continue;
        }
        let q = queued(txn, &e.body)?;
        out.insert(e.body.clone(), q);
    }
    Ok(out)
}

/// What waits in `body`'s queue: positions not acknowledged and the bytes
/// of their messages.
pub(super) fn queued(r: &impl liaison_store::Reader, body: &BodyId) -> Result<Queued, StoreError> {
    let count = |which| -> Result<u64, StoreError> {
        Ok(keys::u64_value(r.get(&counter_key(body.as_str(), which))?))
    };
    Ok(Queued {
        messages: count("next")?.saturating_sub(count("acked")?),
        bytes: count("bytes")?,
    })
}

/// The one result of a batch of one submission.
pub(super) fn only(mut results: Vec<Result<Submitted, HubError>>) -> Result<Submitted, HubError> {
    results.pop().unwrap_or_else(|| {
        Err(HubError::Task {
            what: "submission",
            problem: "the store answered an empty batch".into(),
        })
    })
}

/// Stores and routes one submission: a batch of one (see [`submit_all`]).
#[cfg(test)]
pub(super) async fn submit(db: &Db, s: Submission) -> Result<Submitted, HubError> {
    let plans = std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default()));
    only(
        submit_all(db, &plans, QueueQuota::UNLIMITED, vec![s])
            .await?
            .0,
    )
}

/// Appends `entry` to `body`'s queue; returns its position. The one place a
/// queue grows: submission, embargo release, forwarding, retraction and
/// receipts all come here.
pub(super) fn append_to_queue(
    txn: &mut Txn<'_>,
    body: &BodyId,
    entry: &QueueEntry,
) -> Result<u64, StoreError> {
    let next_key = counter_key(body.as_str(), "next");
    let seq = keys::u64_value(txn.get(&next_key)?) + 1;
    txn.put(next_key, seq.to_be_bytes().to_vec());
    // A message position counts its envelope against the recipient's
    // queue quota (a release or a forward is sized from the stored
    // envelope, which a submission staged in this same transaction).
    let sized;
    let entry = if entry.delivers_message() && entry.bytes == 0 {
        let len = txn.get(&env_key(&entry.message_id))?.map_or(0, |v| v.len());
        sized = QueueEntry {
            bytes: len as u64,
            ..entry.clone()
        };
        &sized
    } else {
        entry
    };
    if entry.bytes > 0 {
        let bytes_key = counter_key(body.as_str(), "bytes");
        let queued = keys::u64_value(txn.get(&bytes_key)?);
        txn.put(
            bytes_key,
            queued.saturating_add(entry.bytes).to_be_bytes().to_vec(),
        );
    }
    let prefix = queue_prefix(body.as_str());
    let key = keys::seq_key(&prefix, seq);
    let Some(stored) = entry.stored() else {
        txn.put(key, json(entry));
        return Ok(seq);
    };
    // The body's last value this transaction staged holds position seq - 1
    // (positions are appended in order): extend it if it is a run.
    let open = txn
        .staged_last_mut(&prefix, &key)
        .filter(|(_, v)| v.first() == Some(&QUEUE_RUN_TAG) && v.len() < QUEUE_RUN_BYTES);
    match open {
        Some((_, run)) => prost::encoding::message::encode(15, &stored, run),
        None => {
            let mut run = Vec::new();
            prost::encoding::message::encode(15, &stored, &mut run);
            txn.put(key, run);
        }
    }
    Ok(seq)
}

/// The stored queue values of `prefix` from the one holding position
/// `first`, decoded: every entry at `first` or later, in order, up to
/// `limit` (and more if a value holds more).
fn queue_from(
    prefix: &[u8],
    first: u64,
    limit: usize,
    scan: impl Fn(&[u8], &[u8], usize, bool) -> Result<Vec<liaison_store::Entry>, StoreError>,
) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
    let end = keys::prefix_end(prefix);
    let holding = scan(
        prefix,
        &keys::seq_key(prefix, first.saturating_add(1)),
        1,
        true,
    )?;
    let mut next = match holding.first() {
        Some((k, _)) => k.clone(),
        None => keys::seq_key(prefix, first),
    };
    let mut out = Vec::new();
    // Values hold one entry (earlier versions) or a run of many: read about
    // as many as the entries still wanted need, from what was seen so far.
    let (mut values_seen, mut entries_seen) = (0usize, 0usize);
    while out.len() < limit {
        let per_value = entries_seen.checked_div(values_seen).unwrap_or(1).max(1);
        let want = (limit - out.len())
            .div_ceil(per_value)
            .clamp(1, QUEUE_VALUES_PER_READ);
        let values = scan(&next, &end, want, false)?;
        let Some((last, _)) = values.last() else {
            break;
        };
        next = last.clone();
        next.push(0); // the key right after it
        let done = values.len() < want;
        values_seen += values.len();
        for (k, v) in values {
            let start = keys::seq_of(&k).unwrap_or_default();
            let skip = usize::try_from(first.saturating_sub(start)).unwrap_or(usize::MAX);
            let (held, entries) = QueueEntry::decode_from(&k, &v, skip, limit - out.len())?;
            entries_seen += held;
            let from = start + skip as u64;
            out.extend((from..).zip(entries));
            if out.len() >= limit {
                break;
            }
        }
        if done {
            break;
        }
    }
    Ok(out)
}

/// Appends several records in one transaction (delivery records); returns
/// the last audit position written.
pub(super) async fn audit_many(db: &Db, records: Vec<pb::AuditRecord>) -> Result<u64, HubError> {
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
pub(super) fn queue_end(db: &Db, body: &BodyId) -> Result<u64, StoreError> {
    Ok(keys::u64_value(
        db.get(&counter_key(body.as_str(), "next"))?,
    ))
}

/// A witness's cosignature as kept: the root it cosigned (so that a log
/// rewritten since is caught against it) and its signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCosignature {
    /// Whose.
    pub body: BodyId,
    /// The tree size.
    pub size: u64,
    /// The root it cosigned.
    pub root: [u8; 32],
    /// The signature line.
    pub line: Vec<u8>,
}

impl KeptCosignature {
    fn decode(prefix_len: usize, k: &[u8], v: &[u8]) -> Result<Self, StoreError> {
        let body = String::from_utf8_lossy(&k[prefix_len..]).into_owned();
        let body = BodyId::parse(&body).map_err(|e| StoreError::corrupt(k, e))?;
        let size = keys::seq_of(&k[..COSIGNATURE_PREFIX.len() + 8]).unwrap_or_default();
        let (root, line) = v
            .split_first_chunk::<32>()
            .ok_or_else(|| StoreError::corrupt(k, "shorter than a root"))?;
        Ok(Self {
            body,
            size,
            root: *root,
            line: line.to_vec(),
        })
    }
}

/// The cosignatures kept for the checkpoint of `size`.
pub(super) fn cosignatures(db: &Db, size: u64) -> Result<Vec<KeptCosignature>, StoreError> {
    let prefix = cosignature_prefix(size);
    db.scan_prefix(&prefix, 1024)?
        .into_iter()
        .map(|(k, v)| KeptCosignature::decode(prefix.len(), &k, &v))
        .collect()
}

/// Every cosignature kept, by tree size.
pub(super) fn all_cosignatures(db: &Db) -> Result<Vec<KeptCosignature>, StoreError> {
    db.scan_prefix(COSIGNATURE_PREFIX, usize::MAX)?
        .into_iter()
        .map(|(k, v)| KeptCosignature::decode(COSIGNATURE_PREFIX.len() + 9, &k, &v))
        .collect()
}

/// The last audit position, durable or not (read at start-up).
pub(super) fn audit_end(db: &Db) -> Result<u64, StoreError> {
    log::log_end(db)
}

/// The body's acknowledged position.
pub(super) fn acked(db: &Db, body: &BodyId) -> Result<u64, StoreError> {
    Ok(keys::u64_value(
        db.get(&counter_key(body.as_str(), "acked"))?,
    ))
}

/// Up to `limit` queue entries with positions after `after`.
pub(super) fn queue_after(
    db: &Db,
    body: &BodyId,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
    let prefix = queue_prefix(body.as_str());
    queue_from(&prefix, after.saturating_add(1), limit, |s, e, l, rev| {
        if rev {
            db.scan_rev(s, e, l)
        } else {
            db.scan(s, e, l)
        }
    })
}

/// The stored envelope of a message.
pub(super) fn envelope(db: &Db, message_id: &str) -> Result<Option<pb::Envelope>, StoreError> {
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

/// What an acknowledgement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// The body's acknowledged position now.
    pub acked: u64,
    /// The last audit position written (0 if none).
    pub audit_seq: u64,
    /// `(originator, queue position)` of each receipt queued.
    pub receipts: Vec<(BodyId, u64)>,
    /// When each message acknowledged was routed (for delivery latency).
    pub routed_at_ms: Vec<i64>,
}

/// Acknowledges the body's queue up to `seq`: removes the entries, writes
/// one audit record per acknowledged message and queues a receipt for its
/// originator. Positions in `quarantined` (with the node's reason) are
/// recorded as quarantined, never as delivered, and their receipts say so.
/// Receipts themselves are acknowledged without a record: they are derived
/// from records already in the log.
pub(super) async fn acknowledge(
    db: &Db,
    body: BodyId,
    seq: u64,
    quarantined: std::collections::BTreeMap<u64, String>,
    actor: String,
    now_ms: i64,
    policy_version: String,
) -> Result<Acknowledged, HubError> {
    db.write(move |txn| {
        let next = keys::u64_value(txn.get(&counter_key(body.as_str(), "next"))?);
        let acked = keys::u64_value(txn.get(&counter_key(body.as_str(), "acked"))?);
        let prefix = queue_prefix(body.as_str());
        let entries = if seq > acked && seq <= next {
            let want = usize::try_from(seq - acked).unwrap_or(usize::MAX);
            let mut entries = queue_from(&prefix, acked + 1, want, |s, e, l, rev| {
                if rev {
                    txn.scan_rev(s, e, l)
                } else {
                    txn.scan(s, e, l)
                }
            })?;
            entries.retain(|(q, _)| *q <= seq);
            entries
        } else {
            Vec::new()
        };
        let ask = AckAsk {
            body: &body,
            seq,
            quarantined: &quarantined,
            actor: &actor,
            now_ms,
            policy_version: &policy_version,
        };
        let (new_acked, effects) = plan_acknowledgement(&ask, acked, next, &entries)?;
        // Every queue append of an acknowledgement is a receipt.
        let applied = apply(txn, effects)?;
        Ok(Acknowledged {
            acked: new_acked,
            audit_seq: applied.audit_seq,
            receipts: applied.queued,
            routed_at_ms: entries
                .iter()
                .filter(|(q, e)| e.is_message() && !quarantined.contains_key(q))
                .map(|(_, e)| e.routed_at_ms)
                .collect(),
        })
    })
    .await
}

/// An acknowledgement asked for by a body's node.
#[derive(Debug, Clone, Copy)]
pub struct AckAsk<'a> {
    /// The body (from its certificate).
    pub body: &'a BodyId,
    /// Everything up to this position is acknowledged.
    pub seq: u64,
    /// Positions among them the node keeps in quarantine, with its reason.
    pub quarantined: &'a std::collections::BTreeMap<u64, String>,
    /// The node's identity.
    pub actor: &'a str,
    /// When.
    pub now_ms: i64,
    /// The policy version in force.
    pub policy_version: &'a str,
}

/// The pure decision of an acknowledgement of `entries` (the positions
/// after `acked` up to the asked position, in a queue that ends at `next`).
///
/// Beyond the end of the queue is [`HubError::AckBeyondQueue`]; a
/// quarantined position outside those acknowledged is invalid; an old
/// position changes nothing. Each acknowledged message gets an
/// `acknowledged` record, or `quarantined` (never delivered) when the node
/// quarantined it, and its originator a receipt in its queue; withdrawals
/// and forward requests get their record; receipts themselves none. Returns
/// the new acknowledged position and the effects.
pub fn plan_acknowledgement(
    ask: &AckAsk<'_>,
    acked: u64,
    next: u64,
    entries: &[(u64, QueueEntry)],
) -> Result<(u64, Effects), HubError> {
    let seq = ask.seq;
    if seq > next {
        return Err(HubError::AckBeyondQueue { seq, last: next });
    }
    if seq <= acked {
        return Ok((acked, Effects::default()));
    }
    if let Some(q) = ask.quarantined.keys().find(|q| **q <= acked || **q > seq) {
        return Err(HubError::Invalid(liaison_types::ValidationError::new(
            "quarantined",
            format!(
                "position {q} is not among the positions acknowledged ({} to {seq})",
                acked + 1
            ),
        )));
    }
    let body = ask.body;
    let mut effects = Effects {
        writes: vec![Write::Acknowledge {
            body: body.clone(),
            acked: seq,
        }],
        ..Effects::default()
    };
    // One receipt position per originator for the whole acknowledgement.
    let mut receipts: std::collections::BTreeMap<BodyId, Vec<Receipt>> =
        std::collections::BTreeMap::new();
    for (qseq, entry) in entries {
        if entry.receipt.is_some() || !entry.receipts.is_empty() {
            continue;
        }
        let quarantine = ask.quarantined.get(qseq);
        let (event, reason) = if let Some(why) = quarantine {
            (
                AuditEvent::Quarantined,
                format!("quarantined by the recipient's node: {why}"),
            )
        } else if entry.retraction.is_some() {
            (AuditEvent::Acknowledged, "retraction".to_owned())
        } else if let Some(n) = &entry.forward_request {
            (
                AuditEvent::Acknowledged,
                format!("forward request {}", n.request_id),
            )
        } else if let Some(n) = &entry.notice {
            (
                AuditEvent::Acknowledged,
                format!("deconfliction notice {}", n.0.reference),
            )
        } else {
            (AuditEvent::Acknowledged, String::new())
        };
        effects.audit.push(pb::AuditRecord {
            at_ms: ask.now_ms,
            event: event.into(),
            message_id: entry.message_id.clone(),
            origin: entry.origin.clone(),
            recipient: body.to_string(),
            actor: ask.actor.to_owned(),
            queue_seq: *qseq,
            policy_version: ask.policy_version.to_owned(),
            reason,
            ..Default::default()
        });
        // The originator learns that the recipient's node took it.
        let origin = BodyId::parse(&entry.origin).ok().filter(|o| o != body);
        if let (Some(origin), true) = (origin, entry.is_message()) {
            receipts.entry(origin).or_default().push(Receipt {
                message_id: entry.message_id.clone(),
                recipient: body.to_string(),
                at_ms: ask.now_ms,
                quarantined: quarantine.cloned(),
            });
        }
    }
    for (origin, receipts) in receipts {
        effects.enqueue.push(Enqueue {
            entry: QueueEntry {
                receipts,
                ..QueueEntry::message("", origin.as_str(), ask.now_ms)
            },
            body: origin,
            audit: None,
        });
    }
    effects.audit = batch_records(std::mem::take(&mut effects.audit));
    Ok((seq, effects))
}

/// The bodies' states set by administrators on top of the governance file.
pub(super) fn body_states(
    db: &Db,
) -> Result<std::collections::BTreeMap<BodyId, liaison_policy::State>, StoreError> {
    Ok(match db.get(BODY_STATES)? {
        Some(bytes) => parse(BODY_STATES, &bytes)?,
        None => Default::default(),
    })
}

/// Replaces the administrators' state overrides and records why, in one
/// transaction; returns the audit position.
pub(super) async fn set_body_states(
    db: &Db,
    states: std::collections::BTreeMap<BodyId, liaison_policy::State>,
    record: pb::AuditRecord,
) -> Result<u64, HubError> {
    db.write(move |txn| {
        txn.put(BODY_STATES, json(&states));
        append_audit(txn, record).map_err(HubError::from)
    })
    .await
}

/// Appends the record of a governance change (event `policy`): `rule` is
/// `policy.reload` for a new version put in force, `policy.reload_refused`
/// for a refused one; `policy_version` is the version in force after it.
/// Returns its audit position.
pub(super) async fn audit_policy_change(
    db: &Db,
    rule: liaison_policy::Rule,
    reason: String,
    policy_version: String,
    actor: String,
    now_ms: i64,
) -> Result<u64, HubError> {
    let record = pb::AuditRecord {
        at_ms: now_ms,
        event: AuditEvent::Policy.into(),
        rule: rule.into(),
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
    use liaison_policy::{route, Governance};
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
        let routing = route(gov, &env.labels, NOW);
        let submission = Submission {
            plan: None,
            env,
            decisions: routing.decisions,
            unaddressed: routing.unaddressed,
            policy_version: "v1".into(),
            actor: "test".into(),
            approved_by: None,
            now_ms: NOW,
            retain_ms: None,
            traceparent: String::new(),
        };
        match submit(db, submission).await.unwrap() {
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

    /// `env` routed under `gov` at `NOW`, by the node "test".
    fn submission_of(gov: &Governance, env: Envelope) -> Submission {
        let routing = route(gov, &env.labels, NOW);
        Submission {
            plan: None,
            decisions: routing.decisions,
            unaddressed: routing.unaddressed,
            env,
            policy_version: "v1".into(),
            actor: "test".into(),
            approved_by: None,
            now_ms: NOW,
            retain_ms: None,
            traceparent: String::new(),
        }
    }

    fn plan_of(env: Envelope, existing: Option<RoutedOutcome>) -> Result<SubmissionPlan, HubError> {
        let submission = Submission {
            approved_by: Some("spiffe://t/org/europol/officer/bob".into()),
            retain_ms: Some(1_000),
            ..submission_of(&governance(), env)
        };
        let encoded = pb::Envelope::from(&submission.env).encode_to_vec();
        let digest = digest(&encoded);
        plan_submission(&submission, encoded, digest, existing)
    }

    fn alert_numbered(n: i64) -> Envelope {
        let mut env = held_alert(0, 0);
        env.labels.message_id = uuid_for(1_000 + n);
        env
    }

    async fn submit_under(
        db: &Db,
        quota: QueueQuota,
        envs: Vec<Envelope>,
    ) -> Vec<Result<Submitted, HubError>> {
        let gov = governance();
        let plans = std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default()));
        let batch = envs.into_iter().map(|e| submission_of(&gov, e)).collect();
        submit_all(db, &plans, quota, batch).await.unwrap().0
    }

    /// A power cut at a seeded random moment while nodes submit: after
    /// the restart, every submission the hub answered is stored with its
    /// outcome, queued for its recipient and audited, and the audit log
    /// checks from its leaves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_power_cut_keeps_every_answered_submission_stored_queued_and_audited() {
        use liaison_store::testing::PowerCut;
        use rand::{Rng, SeedableRng};
        use std::sync::Arc;
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261202);
        let interpol = BodyId::parse("interpol").unwrap();
        let bodies = [BodyId::parse("europol").unwrap(), interpol.clone()];
        let mut checked = 0;
        for round in 0..10 {
            let engine = Arc::new(PowerCut::default());
            let db = Db::with_engine(Arc::clone(&engine) as Arc<dyn liaison_store::Engine>);
            let store = Arc::new(HubStore::open(db, &bodies, log::test_signer()).unwrap());
            let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
            let mut writers = Vec::new();
            for w in 0..3i64 {
                let store = Arc::clone(&store);
                let answered = Arc::clone(&answered);
                writers.push(tokio::spawn(async move {
                    for i in 0..5_000 {
                        let env = alert_numbered(w * 10_000 + i);
                        let id = env.labels.message_id.clone();
                        let s = submission_of(&governance(), env);
                        match store.submit_batch(vec![s]).await {
                            Ok(r) if matches!(r.first(), Some(Ok(_))) => {
                                answered.lock().unwrap().push(id)
                            }
                            _ => return,
                        }
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_micros(
                rng.random_range(0..30_000),
            ))
            .await;
            let before = answered.lock().unwrap().clone();
            let image = engine.image();
            for w in &writers {
                w.abort();
            }
            let db = Db::with_engine(Arc::new(PowerCut::from_image(image)));
            let after = HubStore::open(db.clone(), &bodies, log::test_signer()).unwrap();
            let (check, _) = after.check_log().unwrap();
            assert!(
                check.first_error.is_none(),
                "round {round}: {:?}",
                check.first_error
            );
            let queued: std::collections::BTreeSet<String> = after
                .queue_after(&interpol, 0, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.message_id)
                .collect();
            let mut received = std::collections::BTreeMap::<String, usize>::new();
            for r in log::audit_after(&db, 0, u64::MAX, usize::MAX).unwrap() {
                if r.event == "received" {
                    *received.entry(r.message_id).or_default() += 1;
                }
            }
            for id in &before {
                assert!(
                    db.get(&outcome_key(id)).unwrap().is_some(),
                    "round {round}: {id} answered but not stored"
                );
                assert!(
                    queued.contains(id),
                    "round {round}: {id} answered but not queued"
                );
                assert_eq!(received.get(id), Some(&1), "round {round}: {id}");
            }
            checked += before.len();
        }
        assert!(
            checked > 100,
            "only {checked} answered submissions were checked"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_whole_holds_back_the_rest_and_frees_on_acknowledgement() {
        let db = Db::in_memory();
        let interpol = BodyId::parse("interpol").unwrap();
        let size = pb::Envelope::from(&alert_numbered(0)).encode_to_vec().len() as u64;
        let quota = QueueQuota {
            max_messages_per_peer: 2,
            max_bytes_per_peer: u64::MAX,
        };
        // Two fit; the third is refused naming the peer, and the fourth,
        // behind it in the batch, is held back.
        let results = submit_under(&db, quota, (0..4).map(alert_numbered).collect()).await;
        assert!(results[0].is_ok() && results[1].is_ok());
        match &results[2] {
            Err(HubError::QueueFull {
                peer,
                setting,
                queued,
                ..
            }) => {
                assert_eq!(
                    (peer.as_str(), *setting, *queued),
                    ("interpol", "max_messages_per_peer", 2)
                );
            }
            other => panic!("expected a full queue, got {other:?}"),
        }
        assert!(
            matches!(&results[3], Err(HubError::HeldBack { earlier, .. }) if *earlier == uuid_for(1_002))
        );
        assert_eq!(
            super::queued(&db, &interpol).unwrap(),
            Queued {
                messages: 2,
                bytes: 2 * size
            }
        );
        // Nothing of the refused ones was written.
        for n in [2, 3] {
            assert!(db
                .get(&outcome_key(&uuid_for(1_000 + n)))
                .unwrap()
                .is_none());
        }
        // The bytes limit counts the envelopes.
        let by_bytes = QueueQuota {
            max_messages_per_peer: 100,
            max_bytes_per_peer: 2 * size,
        };
        let results = submit_under(&db, by_bytes, vec![alert_numbered(2)]).await;
        assert!(
            matches!(
                &results[0],
                Err(HubError::QueueFull {
                    setting: "max_bytes_per_peer",
                    ..
                })
            ),
            "{results:?}"
        );
        // Acknowledging the first frees one message and its bytes: the
        // third now fits.
        acknowledge(
            &db,
            interpol.clone(),
            1,
            Default::default(),
            "n".into(),
            NOW,
            "v1".into(),
        )
        .await
        .unwrap();
        assert_eq!(
            super::queued(&db, &interpol).unwrap(),
            Queued {
                messages: 1,
                bytes: size
            }
        );
        let results = submit_under(&db, quota, vec![alert_numbered(2)]).await;
        assert!(results[0].is_ok(), "{results:?}");
        acknowledge(
            &db,
            interpol.clone(),
            3,
            Default::default(),
            "n".into(),
            NOW,
            "v1".into(),
        )
        .await
        .unwrap();
        assert_eq!(super::queued(&db, &interpol).unwrap(), Queued::default());
    }

    #[test]
    fn a_new_submission_is_stored_routed_queued_and_scheduled() {
        let SubmissionPlan::New {
            outcome,
            effects,
            held,
        } = plan_of(held_alert(0, NOW + 5_000), None).unwrap()
        else {
            panic!("new")
        };
        assert!(!held);
        let events: Vec<&str> = effects.audit.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(events, ["received", "routed"]);
        assert!(effects.audit[0].reason.contains("four-eyes"));
        assert_eq!(effects.audit[1].rule, "deliver.all_rules_passed");
        // The delivery's record names its queue position once applied.
        assert_eq!(effects.enqueue.len(), 1);
        assert_eq!(effects.enqueue[0].body.as_str(), "interpol");
        assert_eq!(effects.enqueue[0].audit, Some(1));
        assert!(matches!(effects.writes[0], Write::Message { .. }));
        assert!(effects.writes.contains(&Write::ScheduleErasure {
            message_id: outcome.message_id.clone(),
            at_ms: NOW + 1_000
        }));
        assert!(effects.writes.contains(&Write::ScheduleExpiry {
            message_id: outcome.message_id,
            at_ms: NOW + 5_000
        }));
    }

    #[test]
    fn bodies_a_message_did_not_address_are_one_record_naming_no_recipient() {
        let gov = Governance::for_test()
            .member("interpol", Secret, &["drugs"])
            .member("europol", Secret, &["drugs"])
            .member("afripol", Secret, &["drugs"])
            .member("ameripol", Secret, &["drugs"])
            .member("aseanapol", Secret, &["firearms"])
            .build()
            .unwrap();
        let mut env = held_alert(0, 0);
        for to in ["interpol", "aseanapol"] {
            env.labels.releasable_to.insert(BodyId::parse(to).unwrap());
        }
        let submission = submission_of(&gov, env);
        let encoded = pb::Envelope::from(&submission.env).encode_to_vec();
        let digest = digest(&encoded);
        let SubmissionPlan::New {
            outcome, effects, ..
        } = plan_submission(&submission, encoded, digest, None).unwrap()
        else {
            panic!("new")
        };
        // The two named bodies are decided one each (one delivered, one
        // withheld by its mandate); the two others are counted.
        let routed: Vec<(&str, &str, &str)> = effects
            .audit
            .iter()
            .filter(|r| r.event == "routed")
            .map(|r| (r.recipient.as_str(), r.decision.as_str(), r.rule.as_str()))
            .collect();
        assert_eq!(
            routed,
            [
                ("aseanapol", "withhold", "recipient.mandate"),
                ("interpol", "deliver", "deliver.all_rules_passed"),
                ("", "withhold", "originator.releasability"),
            ]
        );
        let last = effects.audit.last().unwrap();
        assert!(last.reason.starts_with("2 other bodies"), "{}", last.reason);
        assert_eq!(last.origin, "europol");
        assert_eq!(outcome.decisions.len(), 2);
        assert_eq!(outcome.unaddressed.len(), 1);
        assert_eq!(outcome.unaddressed[0].bodies, 2);
        assert_eq!(effects.enqueue.len(), 1);
    }

    #[test]
    fn under_an_embargo_deliveries_are_held_not_queued() {
        let SubmissionPlan::New { effects, held, .. } =
            plan_of(held_alert(NOW + 1, 0), None).unwrap()
        else {
            panic!("new")
        };
        assert!(held && effects.enqueue.is_empty());
        assert!(effects
            .writes
            .iter()
            .any(|w| matches!(w, Write::Hold(h) if h.recipients == ["interpol"])));
    }

    #[test]
    fn a_retry_is_a_duplicate_and_a_reused_id_is_refused() {
        let SubmissionPlan::New { outcome, .. } = plan_of(held_alert(0, 0), None).unwrap() else {
            panic!("new")
        };
        assert_eq!(
            plan_of(held_alert(0, 0), Some(outcome.clone())).unwrap(),
            SubmissionPlan::Duplicate(outcome.clone())
        );
        let mut other = outcome;
        other.digest = "something else".into();
        let err = plan_of(held_alert(0, 0), Some(other)).unwrap_err();
        assert!(matches!(err, HubError::IdReused { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_batch_is_one_transaction_with_a_result_each() {
        let db = Db::in_memory();
        let gov = governance();
        let sub = |env: Envelope| Submission {
            plan: None,
            decisions: route(&gov, &env.labels, NOW).decisions,
            unaddressed: route(&gov, &env.labels, NOW).unaddressed,
            env,
            policy_version: "v1".into(),
            actor: "test".into(),
            approved_by: None,
            now_ms: NOW,
            retain_ms: None,
            traceparent: String::new(),
        };
        let a = held_alert(0, 0);
        let b = held_alert(1, 0);
        let mut reused = held_alert(0, 0);
        reused.labels.priority = liaison_types::Priority::Flash;
        let plans = std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default()));
        let (results, _) = submit_all(
            &db,
            &plans,
            QueueQuota::UNLIMITED,
            vec![sub(a.clone()), sub(b), sub(a), sub(reused)],
        )
        .await
        .unwrap();
        assert!(matches!(&results[0], Ok(Submitted::New { queued, .. }) if queued.len() == 1));
        assert!(matches!(&results[1], Ok(Submitted::New { queued, .. }) if queued[0].1 == 2));
        assert!(
            matches!(&results[2], Ok(Submitted::Duplicate(_))),
            "the same message twice in a batch is stored once"
        );
        assert!(matches!(&results[3], Err(HubError::IdReused { .. })));
        // Two messages routed: one received and one routed record each.
        assert_eq!(audit_after(&db, 0, u64::MAX, 100).unwrap().len(), 4);
    }

    #[test]
    fn hot_path_records_are_binary_and_json_ones_of_earlier_versions_still_read() {
        let outcome = RoutedOutcome {
            message_id: uuid_for(1),
            origin: "alpha".into(),
            digest: "ab".repeat(32),
            accepted_at_ms: NOW,
            policy_version: "v1+x".into(),
            decisions: vec![
                DecisionRecord {
                    recipient: "bravo".into(),
                    deliver: true,
                    rule: "deliver.all_rules_passed".into(),
                    reason: String::new(),
                },
                DecisionRecord {
                    recipient: "charlie".into(),
                    deliver: false,
                    rule: "recipient.clearance".into(),
                    reason: "clearance RESTRICTED below SECRET".into(),
                },
            ],
            unaddressed: vec![UnaddressedRecord {
                rule: "originator.releasability".into(),
                bodies: 998,
                reason: "998 other bodies are not in releasable_to [bravo, charlie]".into(),
            }],
            audit_seq: 0,
        };
        let key = outcome_key(&outcome.message_id);
        let stored = outcome.encode();
        assert_ne!(stored.first(), Some(&b'{'));
        assert!(stored.len() < json(&outcome).len());
        assert_eq!(RoutedOutcome::decode(&key, &stored).unwrap(), outcome);
        assert_eq!(
            RoutedOutcome::decode(&key, &json(&outcome)).unwrap(),
            outcome
        );
        let e = RoutedOutcome::decode(&key, b"\xff\xff")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/out"), "{e}");

        let receipt = |id: &str, q: Option<&str>| Receipt {
            message_id: id.into(),
            recipient: "bravo".into(),
            at_ms: NOW,
            quarantined: q.map(str::to_owned),
        };
        let binary = [
            QueueEntry::message("m", "alpha", NOW),
            QueueEntry {
                receipts: vec![
                    receipt("a", None),
                    receipt("b", Some("body.title: empty")),
                    receipt("c", Some("")),
                ],
                ..QueueEntry::message("", "alpha", NOW)
            },
        ];
        let as_json = [
            QueueEntry {
                retraction: Some(Retraction {
                    reason: "wrong".into(),
                    retracted_at_ms: NOW,
                }),
                ..QueueEntry::message("m", "alpha", NOW)
            },
            QueueEntry {
                receipt: Some(receipt("", None)),
                ..QueueEntry::message("m", "alpha", NOW)
            },
        ];
        let qkey = keys::seq_key(&queue_prefix("bravo"), 1);
        for e in binary {
            let stored = e.encode();
            assert_ne!(stored.first(), Some(&b'{'), "{e:?}");
            assert_eq!(QueueEntry::decode(&qkey, &stored).unwrap(), e);
            assert_eq!(QueueEntry::decode(&qkey, &json(&e)).unwrap(), e, "old JSON");
        }
        for e in as_json {
            let stored = e.encode();
            assert_eq!(stored.first(), Some(&b'{'), "{e:?}");
            assert_eq!(QueueEntry::decode(&qkey, &stored).unwrap(), e);
        }
        assert!(QueueEntry::decode(&qkey, b"\x0a\xff").is_err());
    }

    fn queued(n: u64) -> QueueEntry {
        QueueEntry::message(&uuid_for(n as i64), "alpha", NOW)
    }

    async fn append(db: &Db, body: &str, entries: Vec<QueueEntry>) -> Vec<u64> {
        let body = BodyId::parse(body).unwrap();
        db.write(move |txn| {
            entries
                .iter()
                .map(|e| append_to_queue(txn, &body, e))
                .collect::<Result<Vec<u64>, StoreError>>()
        })
        .await
        .unwrap()
    }

    fn stored_values(db: &Db, body: &str) -> Vec<u64> {
        db.scan_prefix(&queue_prefix(body), usize::MAX)
            .unwrap()
            .iter()
            .map(|(k, _)| keys::seq_of(k).unwrap())
            .collect()
    }

    fn ids(entries: &[(u64, QueueEntry)]) -> Vec<(u64, String)> {
        entries
            .iter()
            .map(|(q, e)| (*q, e.message_id.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_transaction_appends_a_run_per_body_and_any_position_reads_back() {
        let db = Db::in_memory();
        let retraction = QueueEntry {
            retraction: Some(Retraction {
                reason: "wrong".into(),
                retracted_at_ms: NOW,
            }),
            ..queued(4)
        };
        let seqs = append(
            &db,
            "bravo",
            vec![
                queued(1),
                queued(2),
                queued(3),
                retraction,
                queued(5),
                queued(6),
            ],
        )
        .await;
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        append(&db, "charlie", vec![queued(7)]).await;
        append(&db, "bravo", vec![queued(8), queued(9)]).await;
        // Runs 1-3, the JSON withdrawal at 4, run 5-6, and run 7-8 of the
        // next transaction: never extended across transactions.
        assert_eq!(stored_values(&db, "bravo"), [1, 4, 5, 7]);
        assert_eq!(stored_values(&db, "charlie"), [1]);
        let bravo = BodyId::parse("bravo").unwrap();
        let all = queue_after(&db, &bravo, 0, 100).unwrap();
        let want: Vec<(u64, String)> = [1, 2, 3, 4, 5, 6, 8, 9]
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1, uuid_for(*n)))
            .collect();
        assert_eq!(ids(&all), want);
        assert!(all[3].1.retraction.is_some());
        // A damaged run is refused, naming its key.
        let key = keys::seq_key(&queue_prefix("bravo"), 1);
        for bad in [&b"\x7a\x05ab"[..], b"\x7a\xff", b"\x7a\x01\x0a\x0a"] {
            let e = QueueEntry::decode_from(&key, bad, 0, usize::MAX)
                .unwrap_err()
                .to_string();
            assert!(e.contains("q/bravo/"), "{e}");
        }
        for after in 0..=8 {
            for limit in [1, 2, 3, 100] {
                let got = queue_after(&db, &bravo, after, limit).unwrap();
                let expect: Vec<_> = want
                    .iter()
                    .filter(|(q, _)| *q > after)
                    .take(limit)
                    .cloned()
                    .collect();
                assert_eq!(ids(&got), expect, "after {after}, limit {limit}");
            }
        }
    }

    #[tokio::test]
    async fn an_acknowledgement_removes_the_runs_it_covers_whole() {
        let db = Db::in_memory();
        append(&db, "bravo", (1..=4).map(queued).collect()).await;
        append(&db, "bravo", (5..=6).map(queued).collect()).await;
        let bravo = BodyId::parse("bravo").unwrap();
        let ack = |seq: u64| {
            acknowledge(
                &db,
                bravo.clone(),
                seq,
                Default::default(),
                "spiffe://t/org/bravo/node/node".into(),
                NOW,
                "v1".into(),
            )
        };
        // Part of the first run: it stays, and reads start after the ack.
        let first = ack(2).await.unwrap();
        assert_eq!(first.acked, 2);
        assert_eq!(stored_values(&db, "bravo"), [1, 5]);
        let left = queue_after(&db, &bravo, 2, 100).unwrap();
        assert_eq!(
            left.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        // The rest of it and part of the next.
        let records = audit_after(&db, 0, u64::MAX, 100).unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(liaison_types::audit::messages(&records[0]).count(), 2);
        ack(5).await.unwrap();
        assert_eq!(stored_values(&db, "bravo"), [5]);
        let records = audit_after(&db, 1, u64::MAX, 100).unwrap();
        let acked: Vec<&str> = records
            .iter()
            .flat_map(liaison_types::audit::messages)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(acked, [uuid_for(3), uuid_for(4), uuid_for(5)]);
        ack(6).await.unwrap();
        assert!(stored_values(&db, "bravo").is_empty());
    }

    #[tokio::test]
    async fn a_queue_stored_one_entry_per_key_reads_and_acknowledges() {
        let db = Db::in_memory();
        db.write(|txn| {
            let prefix = queue_prefix("bravo");
            for n in 1..=3u64 {
                let e = queued(n);
                // Earlier versions: one value per position, proto or JSON.
                let value = if n == 2 { json(&e) } else { e.encode() };
                txn.put(keys::seq_key(&prefix, n), value);
            }
            txn.put(counter_key("bravo", "next"), 3u64.to_be_bytes().to_vec());
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let bravo = BodyId::parse("bravo").unwrap();
        let got = queue_after(&db, &bravo, 1, 100).unwrap();
        assert_eq!(ids(&got), [(2, uuid_for(2)), (3, uuid_for(3))]);
        acknowledge(
            &db,
            bravo.clone(),
            2,
            Default::default(),
            "spiffe://t/org/bravo/node/node".into(),
            NOW,
            "v1".into(),
        )
        .await
        .unwrap();
        assert_eq!(stored_values(&db, "bravo"), [3]);
        // New appends go in runs after the old entries.
        append(&db, "bravo", vec![queued(4), queued(5)]).await;
        assert_eq!(stored_values(&db, "bravo"), [3, 4]);
        let got = queue_after(&db, &bravo, 2, 100).unwrap();
        assert_eq!(got.iter().map(|(q, _)| *q).collect::<Vec<_>>(), [3, 4, 5]);
    }

    #[test]
    fn plain_delivery_records_fold_into_one_per_originator_and_the_rest_stay() {
        let rec =
            |event: AuditEvent, id: &str, origin: &str, q: u64, reason: &str| pb::AuditRecord {
                at_ms: NOW + q as i64,
                event: event.into(),
                message_id: id.into(),
                origin: origin.into(),
                recipient: "bravo".into(),
                actor: "node".into(),
                kind: "ALERT".into(),
                classification: format!("C{q}"),
                queue_seq: q,
                policy_version: "v1".into(),
                reason: reason.into(),
                ..Default::default()
            };
        let records = vec![
            rec(AuditEvent::Delivered, "a", "alpha", 1, ""),
            rec(AuditEvent::Delivered, "c", "charlie", 2, ""),
            rec(AuditEvent::Delivered, "r", "alpha", 3, "retraction"),
            rec(
                AuditEvent::Expired,
                "x",
                "alpha",
                4,
                "expired before delivery",
            ),
            rec(AuditEvent::Delivered, "b", "alpha", 5, ""),
            rec(AuditEvent::Acknowledged, "z", "alpha", 6, ""),
            pb::AuditRecord {
                actor: "other".into(),
                ..rec(AuditEvent::Delivered, "e", "alpha", 7, "")
            },
        ];
        let folded = batch_records(records.clone());
        type Shape<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, u64)>);
        let shape: Vec<Shape<'_>> = folded
            .iter()
            .map(|r| {
                (
                    r.event.as_str(),
                    r.origin.as_str(),
                    r.actor.as_str(),
                    liaison_types::audit::messages(r).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("delivered", "alpha", "node", vec![("a", 1), ("b", 5)]),
                ("delivered", "charlie", "node", vec![("c", 2)]),
                ("delivered", "alpha", "node", vec![("r", 3)]),
                ("expired", "alpha", "node", vec![("x", 4)]),
                ("acknowledged", "alpha", "node", vec![("z", 6)]),
                ("delivered", "alpha", "other", vec![("e", 7)]),
            ]
        );
        let first = &folded[0];
        assert!(first.message_id.is_empty() && first.queue_seq == 0 && first.kind.is_empty());
        assert_eq!(first.at_ms, NOW + 1, "the time of its first message");
        assert_eq!(
            first.items[1].classification, "C5",
            "each item keeps its labels"
        );
        assert_eq!(
            folded[2], records[2],
            "a record with a reason is kept whole"
        );
        assert!(batch_records(Vec::new()).is_empty());
        assert_eq!(
            batch_records(folded.clone()),
            folded,
            "folding is idempotent"
        );
    }

    #[test]
    fn an_acknowledgement_records_each_message_and_sends_its_originator_a_receipt() {
        let bravo = BodyId::parse("bravo").unwrap();
        let message = |id: &str| QueueEntry::message(id, "alpha", NOW);
        let receipt = QueueEntry {
            receipt: Some(Receipt {
                message_id: String::new(),
                recipient: "charlie".into(),
                at_ms: NOW,
                quarantined: None,
            }),
            ..QueueEntry::message("r", "bravo", NOW)
        };
        let receipts = QueueEntry {
            receipts: vec![Receipt {
                message_id: "s".into(),
                recipient: "charlie".into(),
                at_ms: NOW,
                quarantined: None,
            }],
            ..QueueEntry::message("", "charlie", NOW)
        };
        let from_charlie = |id: &str| QueueEntry::message(id, "charlie", NOW);
        let entries = vec![
            (3, message("a")),
            (4, message("b")),
            (5, receipt),
            (6, from_charlie("c")),
            (7, receipts),
            (8, message("d")),
        ];
        let quarantined = std::collections::BTreeMap::from([(4, "body.title: empty".to_owned())]);
        let ask = AckAsk {
            body: &bravo,
            seq: 5,
            quarantined: &quarantined,
            actor: "node",
            now_ms: NOW,
            policy_version: "v1",
        };
        let ask = AckAsk { seq: 8, ..ask };
        let (acked, e) = plan_acknowledgement(&ask, 2, 8, &entries).unwrap();
        assert_eq!(acked, 8);
        type Recorded<'a> = (&'a str, &'a str, Vec<(&'a str, u64)>);
        let events: Vec<Recorded<'_>> = e
            .audit
            .iter()
            .map(|r| {
                assert_eq!(r.recipient, "bravo");
                (
                    r.event.as_str(),
                    r.origin.as_str(),
                    liaison_types::audit::messages(r).collect(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                ("acknowledged", "alpha", vec![("a", 3), ("d", 8)]),
                ("quarantined", "alpha", vec![("b", 4)]),
                ("acknowledged", "charlie", vec![("c", 6)]),
            ],
            "one record per originator; a quarantine apart; a receipt gets no record"
        );
        // One receipt position per originator, in originator order, each
        // naming its messages; receipts are not receipted.
        type Receipted<'a> = (&'a str, Vec<(&'a str, Option<&'a str>)>);
        let receipts: Vec<Receipted<'_>> = e
            .enqueue
            .iter()
            .map(|q| {
                assert!(q.entry.receipt.is_none() && !q.entry.is_message());
                (
                    q.body.as_str(),
                    q.entry
                        .receipts
                        .iter()
                        .map(|r| {
                            assert_eq!(r.recipient, "bravo");
                            (r.message_id.as_str(), r.quarantined.as_deref())
                        })
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            receipts,
            [
                (
                    "alpha",
                    vec![("a", None), ("b", Some("body.title: empty")), ("d", None)]
                ),
                ("charlie", vec![("c", None)]),
            ]
        );
        assert_eq!(
            e.writes,
            [Write::Acknowledge {
                body: bravo.clone(),
                acked: 8
            }]
        );
        let ask = AckAsk { seq: 5, ..ask };
        // Beyond the queue, a stray quarantine, an old position.
        let beyond = AckAsk { seq: 6, ..ask };
        assert!(matches!(
            plan_acknowledgement(&beyond, 2, 5, &entries),
            Err(HubError::AckBeyondQueue { .. })
        ));
        let stray = std::collections::BTreeMap::from([(9, "x".to_owned())]);
        let wrong = AckAsk {
            quarantined: &stray,
            ..ask
        };
        assert!(matches!(
            plan_acknowledgement(&wrong, 2, 5, &entries),
            Err(HubError::Invalid(_))
        ));
        let old = AckAsk { seq: 2, ..ask };
        assert_eq!(
            plan_acknowledgement(&old, 2, 5, &[]).unwrap(),
            (2, Effects::default())
        );
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
        use liaison_policy::{decide, route, Decision, Governance};
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
            let routing = route(gov, &env.labels, NOW);
            let submission = Submission {
                plan: None,
                env: env.clone(),
                decisions: routing.decisions,
                unaddressed: routing.unaddressed,
                policy_version: "v1".into(),
                actor: "t".into(),
                approved_by: None,
                now_ms: NOW,
                retain_ms: None,
                traceparent: String::new(),
            };
            submit(db, submission).await.unwrap();
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

        /// One step a test sequence may take on a forward request.
        #[derive(Debug, Clone)]
        enum Step {
            /// `from` asks to forward the message to charlie.
            Request(&'static str),
            /// `caller` approves the latest request.
            Approve(&'static str),
            /// `caller` refuses the latest request.
            Refuse(&'static str),
        }

        fn step() -> impl proptest::strategy::Strategy<Value = Step> {
            use proptest::prelude::*;
            prop_oneof![
                prop::sample::select(vec!["bravo", "charlie", "interpol"]).prop_map(Step::Request),
                prop::sample::select(vec!["alpha", "bravo"]).prop_map(Step::Approve),
                prop::sample::select(vec!["alpha", "bravo"]).prop_map(Step::Refuse),
            ]
        }

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

            /// Whatever is asked and decided, in any order, by anyone:
            /// charlie receives the message only after the originator's
            /// approval (or its waiver in the labels), and at most once.
            #[test]
            fn nothing_is_forwarded_without_consent(
                waiver in proptest::bool::ANY,
                steps in proptest::collection::vec(step(), 1..12),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let db = Db::in_memory();
                    let gov = gov();
                    let env = message(waiver, pb::Tlp::Unspecified);
                    routed(&db, &gov, &env).await;
                    let mut latest: Option<String> = None;
                    let mut approved = false;
                    for s in &steps {
                        match s {
                            Step::Request(from) => {
                                if let Ok(Forward::Done { record, .. }) =
                                    request_forward(&db, ask(&gov, &env, from, "charlie")).await
                                {
                                    latest = Some(record.id.clone());
                                }
                            }
                            Step::Approve(caller) | Step::Refuse(caller) => {
                                let Some(id) = &latest else { continue };
                                let approve = matches!(s, Step::Approve(_));
                                if let Ok(Forward::Done { record, .. }) =
                                    decide_forward(&db, verdict(&gov, &env, id, caller, approve)).await
                                {
                                    if approve && record.state == ForwardState::Forwarded {
                                        assert_eq!(*caller, "alpha", "only the originator's approval forwards");
                                        approved = true;
                                    }
                                }
                            }
                        }
                        let got = queue(&db, "charlie");
                        assert!(got.len() <= 1, "forwarded twice: {got:?}");
                        if !got.is_empty() {
                            assert!(waiver || approved, "charlie got it without consent after {steps:?}");
                        }
                    }
                });
            }
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
                &std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default())),
                std::sync::Arc::new(gov.clone()),
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
