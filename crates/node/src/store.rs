//! The node's durable outbox and inbox on top of [`liaison_store::Db`].
//!
//! Keys:
//! - `o/<id>`: outbox record (JSON) and envelope (encoded proto) in one
//!   value (a `StoredNodeMessage`; earlier versions stored the record alone
//!   and the envelope under `oe/<id>`),
//!   `oh/<id>`: the hub's answer to its push (`StoredPushAnswer`),
//!   `ok/<id>/<recipient>`: a recipient's receipt (`StoredReceipt`). The
//!   answer and the receipts are written beside the record, not into it, so
//!   that each is one small write; [`read_outbox`] lays them over the
//!   record (records of earlier versions hold them themselves);
//! - `ol/<n>`: outbox order (newest last), `op/<n>`: still to push to the hub
//!   (only messages released: `queued`), `oa/<n>`: awaiting a second
//!   officer's approval (four-eyes release), never pushed until approved;
//! - `i/<id>`: inbox record (JSON) and envelope in one value, as in the
//!   outbox (earlier versions: the envelope under `ie/<id>`);
//! - `il/<n>`: inbox order (newest last); `ix/<at>/<id>`: inbox content due
//!   to be erased (expiry or end of retention), by time;
//! - `or/<id>`: a retraction still to send to the hub;
//! - `fw/<request id>`: another body's request to pass on a message this
//!   body originated (third-party rule), `fd/<request id>`: an officer's
//!   decision on it still to send to the hub;
//! - `qr/<hub seq>`: a delivery this node could not accept (JSON, with the
//!   reason), `qd/<hub seq>`: the delivery as received (encoded proto), kept
//!   as evidence; never in the inbox;
//! - `nl/<n>`: the node's own Merkle log ([`NODE_LOG`]: runs of
//!   `NodeLogRecord` leaves, head at `meta/node_log_head`): inbox content
//!   erased, retractions applied, quarantines, officers' first readings,
//!   each in the write that does it;
//! - `meta/*`: counters and the last hub position stored.

use liaison_proto::v1 as pb;
use liaison_store::merkle::MerkleLog;
use liaison_store::{from_json as parse, keys, to_json as json, Db, Reader, StoreError, Txn};
use liaison_types::{DecisionRecord, Envelope, UnaddressedRecord};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::NodeError;

mod order;
pub mod plans;
use order::Appends;

/// An outbox entry's state.
///
/// ```text
/// awaiting_approval ──approve──▶ queued ──push──▶ routed | rejected
///        └──────────refuse─────▶ refused (never sent)
/// ```
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Held until a second officer approves it (four-eyes release); not in
    /// the push queue.
    AwaitingApproval,
    /// Refused by a second officer; never sent.
    Refused,
    /// Waiting to be accepted by the hub.
    Queued,
    /// Accepted and routed by the hub.
    Routed,
    /// Refused by the hub for good (for example an unknown body in a list).
    Rejected,
    /// Retracted by this body after the hub routed it; the hub withdrew it
    /// from every recipient.
    Retracted,
    /// Withdrawn by this body before it left the node.
    Withdrawn,
}

impl OutboxStatus {
    /// The name shown to officers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Refused => "refused",
            Self::Queued => "queued",
            Self::Routed => "routed",
            Self::Rejected => "rejected",
            Self::Retracted => "retracted",
            Self::Withdrawn => "withdrawn",
        }
    }
}

/// A submitted message and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Message id.
    pub message_id: String,
    /// Digest of the envelope, to tell a retry from a reuse of the id.
    pub digest: String,
    /// Officer identity that submitted.
    pub submitted_by: String,
    /// When.
    pub submitted_at_ms: i64,
    /// Title, kind and classification for listings.
    pub title: String,
    /// Kind name.
    pub kind: String,
    /// Classification name.
    pub classification: String,
    /// Current state.
    pub status: OutboxStatus,
    /// Push attempts.
    pub attempts: u32,
    /// Last push error.
    pub last_error: String,
    /// Hub decisions, once routed.
    pub decisions: Vec<DecisionRecord>,
    /// Bodies the message did not address, counted per rule, once routed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unaddressed: Vec<UnaddressedRecord>,
    /// Policy version that routed it.
    pub policy_version: String,
    /// Position in the outbox order (`ol/<n>`); set by [`enqueue_all`].
    #[serde(default)]
    pub seq: u64,
    /// Why it needs a second officer's approval; empty if it does not.
    #[serde(default)]
    pub approval_reason: String,
    /// Officer identity that approved its release.
    #[serde(default)]
    pub approved_by: String,
    /// When, 0 if not approved.
    #[serde(default)]
    pub approved_at_ms: i64,
    /// Officer identity that refused it.
    #[serde(default)]
    pub refused_by: String,
    /// When, 0 if not refused.
    #[serde(default)]
    pub refused_at_ms: i64,
    /// Why it was refused.
    #[serde(default)]
    pub refusal_reason: String,
    /// Recipient bodies whose nodes stored it in their inbox, and when the
    /// hub learnt of it (from the receipts the hub passes back).
    #[serde(default)]
    pub received_by: std::collections::BTreeMap<String, i64>,
    /// Recipient bodies whose nodes quarantined it: when, and why.
    #[serde(default)]
    pub quarantined_by: std::collections::BTreeMap<String, (i64, String)>,
    /// The W3C trace context of its submission, when the node traces; the
    /// push continues that trace. Empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_parent: String,
    /// The leaf index of its "received" record in the hub's audit log (its
    /// routing decisions are the leaves after it), once routed.
    #[serde(default)]
    pub leaf_index: u64,
    /// The size of the checkpoint the hub answered with, which includes
    /// that leaf; 0 when the hub gave none.
    #[serde(default)]
    pub tree_size: u64,
    /// That checkpoint (a signed note).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkpoint: String,
}

/// A received message's bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxRecord {
    /// Message id.
    pub message_id: String,
    /// Position in this body's hub queue.
    pub hub_seq: u64,
    /// When the node stored it.
    pub received_at_ms: i64,
    /// Classification in this body's marking scheme.
    pub marking: String,
    /// Title from the body.
    pub title: String,
    /// First officer who acknowledged it.
    pub read_by: String,
    /// When, 0 if unread.
    pub read_at_ms: i64,
    /// Set once the message is withdrawn (its content is then erased).
    #[serde(default)]
    pub withdrawn: Option<WithdrawalNote>,
    /// When the retention period of its classification ends (ms since the
    /// epoch, as the hub said), 0 if none: the content is erased then.
    #[serde(default)]
    pub erase_at_ms: i64,
    /// The leaf index in the hub's audit log of the decision to deliver it
    /// here, and the size of a checkpoint that includes it (0: none).
    #[serde(default)]
    pub leaf_index: u64,
    /// See `leaf_index`.
    #[serde(default)]
    pub tree_size: u64,
    /// Stored while the witness of the hub's log was in alarm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified_log: bool,
}

/// Why an inbox message was withdrawn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WithdrawalNote {
    /// `retracted` or `expired`.
    pub cause: String,
    /// The originator's reason, or the expiry, in words.
    pub reason: String,
    /// When.
    pub at_ms: i64,
}

/// A recipient's node took a message this body originated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptArrival {
    /// The message.
    pub message_id: String,
    /// The recipient body.
    pub recipient: String,
    /// When the hub learnt of it.
    pub at_ms: i64,
    /// Why the recipient quarantined it; `None` when it was received.
    pub quarantined: Option<String>,
}

/// A retraction to send to the hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingRetraction {
    /// The message.
    pub message_id: String,
    /// Why.
    pub reason: String,
    /// Officer who asked.
    pub requested_by: String,
}

fn decode_env(key: &[u8], bytes: &[u8]) -> Result<pb::Envelope, StoreError> {
    pb::Envelope::decode(bytes).map_err(|e| StoreError::corrupt(key, e))
}

fn k(prefix: &str, id: &str) -> Vec<u8> {
    format!("{prefix}/{id}").into_bytes()
}

/// A stored outbox or inbox message (`o/<id>`, `i/<id>`), split: its JSON
/// record and, in this version's format (a `StoredNodeMessage`), its
/// encoded envelope from the same value. A value of an earlier version is
/// the record alone (JSON, so it begins with `{`), and the envelope is under
/// `oe/<id>` or `ie/<id>`.
struct Stored {
    record: Vec<u8>,
    envelope: Option<Vec<u8>>,
}

impl Stored {
    fn split(key: &[u8], value: Vec<u8>) -> Result<Self, StoreError> {
        if value.first() == Some(&b'{') {
            return Ok(Self {
                record: value,
                envelope: None,
            });
        }
        let m = pb::StoredNodeMessage::decode(value.as_slice())
            .map_err(|e| StoreError::corrupt(key, e))?;
        Ok(Self {
            record: m.record,
            envelope: Some(m.envelope),
        })
    }

    fn joined(record: Vec<u8>, envelope: Vec<u8>) -> Vec<u8> {
        pb::StoredNodeMessage { record, envelope }.encode_to_vec()
    }

    /// The value with its record replaced, in the format it was in.
    fn with_record(self, record: Vec<u8>) -> Vec<u8> {
        match self.envelope {
            Some(envelope) => Self::joined(record, envelope),
            None => record,
        }
    }

    /// The envelope: from the value, or (earlier versions) from `ekey`.
    fn envelope(self, r: &impl Reader, ekey: &[u8]) -> Result<pb::Envelope, StoreError> {
        let bytes = match self.envelope {
            Some(b) => b,
            None => r
                .get(ekey)?
                .ok_or_else(|| StoreError::corrupt(ekey, "the message has no stored envelope"))?,
        };
        decode_env(ekey, &bytes)
    }
}

/// Replaces the record of a stored message, keeping its envelope (and its
/// format).
fn put_record(txn: &mut Txn<'_>, key: Vec<u8>, record: Vec<u8>) -> Result<(), StoreError> {
    let value = match txn.get(&key)? {
        Some(v) => Stored::split(&key, v)?.with_record(record),
        None => record,
    };
    txn.put(key, value);
    Ok(())
}

/// The prefix of a message's receipts: `ok/<id>/`.
fn receipts_prefix(id: &str) -> Vec<u8> {
    format!("ok/{id}/").into_bytes()
}

/// Reads an outbox record as it stands: the stored record, with the hub's
/// answer to its push (`oh/<id>`) and its recipients' receipts
/// (`ok/<id>/<recipient>`) laid over it. A record rewritten after the
/// answer (a retraction, say) already holds it and no longer says
/// `queued`, so the answer is laid over a queued record only.
pub fn read_outbox(r: &impl Reader, id: &str) -> Result<Option<OutboxRecord>, StoreError> {
    Ok(read_outbox_value(r, id)?.map(|(rec, _)| rec))
}

/// [`read_outbox`], with the stored value the record came from (for its
/// envelope).
fn read_outbox_value(
    r: &impl Reader,
    id: &str,
) -> Result<Option<(OutboxRecord, Stored)>, StoreError> {
    let key = k("o", id);
    let Some(bytes) = r.get(&key)? else {
        return Ok(None);
    };
    let stored = Stored::split(&key, bytes)?;
    let mut rec: OutboxRecord = parse(&key, &stored.record)?;
    if rec.status == OutboxStatus::Queued {
        let akey = k("oh", id);
        if let Some(b) = r.get(&akey)? {
            let answer = pb::StoredPushAnswer::decode(b.as_slice())
                .map_err(|e| StoreError::corrupt(&akey, e))?;
            rec.attempts += 1;
            match answer.outcome {
                Some(pb::stored_push_answer::Outcome::Routed(resp)) => {
                    rec.status = OutboxStatus::Routed;
                    rec.decisions = resp.decisions.iter().map(DecisionRecord::from).collect();
                    rec.unaddressed = resp
                        .unaddressed
                        .iter()
                        .map(UnaddressedRecord::from)
                        .collect();
                    rec.policy_version = resp.policy_version;
                    rec.leaf_index = resp.leaf_index;
                    rec.tree_size = resp.tree_size;
                    rec.checkpoint = String::from_utf8_lossy(&resp.checkpoint).into_owned();
                    rec.last_error.clear();
                }
                Some(pb::stored_push_answer::Outcome::Rejected(why)) => {
                    rec.status = OutboxStatus::Rejected;
                    rec.last_error = why;
                }
                None => {
                    return Err(StoreError::corrupt(
                        &akey,
                        "the answer is neither routed nor rejected",
                    ))
                }
            }
        }
    }
    let prefix = receipts_prefix(id);
    for (rkey, value) in r.scan_prefix(&prefix, usize::MAX)? {
        let recipient = String::from_utf8_lossy(&rkey[prefix.len()..]).into_owned();
        let receipt = pb::StoredReceipt::decode(value.as_slice())
            .map_err(|e| StoreError::corrupt(&rkey, e))?;
        match receipt.quarantined {
            None => {
                rec.received_by.entry(recipient).or_insert(receipt.at_ms);
            }
            Some(reason) => {
                rec.quarantined_by
                    .entry(recipient)
                    .or_insert((receipt.at_ms, reason));
            }
        }
    }
    Ok(Some((rec, stored)))
}

/// Digest of what the officer asked for: the envelope without the node's
/// creation time, so that a retry with the same message id matches.
pub fn submission_digest(env: &Envelope) -> String {
    use sha2::{Digest, Sha256};
    let mut labels = pb::Labels::from(&env.labels);
    labels.created_at_ms = 0;
    let mut h = Sha256::new();
    h.update(labels.encode_to_vec());
    h.update(&env.body);
    hex::encode(h.finalize())
}

/// The node's own log: what happens only at this node, as leaves of a
/// Merkle tree kept like the hub's audit log, in the write that does it.
pub const NODE_LOG: MerkleLog = MerkleLog::new(b"nl/", b"meta/node_log_head", "node log position");

/// Appends a record to the node's log in `txn`: `record.seq` and `leaf`
/// are set here.
fn log_event(txn: &mut Txn<'_>, mut record: pb::NodeLogRecord) -> Result<u64, StoreError> {
    record.leaf.clear();
    NODE_LOG.append(txn, |seq| {
        record.seq = seq;
        record.encode_to_vec()
    })
}

/// A leaf of the node's log decoded as the record of position `seq`.
pub fn decode_log_leaf(seq: u64, leaf: &[u8]) -> Result<pb::NodeLogRecord, String> {
    let mut r = pb::NodeLogRecord::decode(leaf)
        .map_err(|e| format!("the leaf of position {seq} is not a node log record: {e}"))?;
    if r.seq != seq {
        return Err(format!(
            "the leaf of position {seq} says it is position {}",
            r.seq
        ));
    }
    r.leaf = leaf.to_vec();
    Ok(r)
}

/// Up to `limit` records of the node's log after `after`, with the tree
/// they are in (its size and root).
pub fn node_log(
    db: &Db,
    after: u64,
    limit: usize,
) -> Result<(Vec<pb::NodeLogRecord>, u64, liaison_tlog::Hash), StoreError> {
    let size = NODE_LOG.size(db)?;
    let root = liaison_tlog::tree::root(size, &NODE_LOG.hashes(db))
        .map_err(|e| StoreError::Engine(format!("the node log's root: {e}")))?;
    let records = NODE_LOG
        .leaves_after(db, after, size, limit)?
        .into_iter()
        .map(|(seq, leaf)| {
            decode_log_leaf(seq, &leaf).map_err(|problem| StoreError::Corrupt {
                key: NODE_LOG.run_name(seq),
                problem,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((records, size, root))
}

/// Recomputes the node's whole log from its leaves.
pub fn check_node_log(db: &Db) -> Result<liaison_store::merkle::Check, StoreError> {
    let size = NODE_LOG.size(db)?;
    NODE_LOG.check(
        db,
        size,
        |seq, leaf| decode_log_leaf(seq, leaf).map(|_| ()),
        |_| None,
    )
}

const OUTBOX_NEXT: &[u8] = b"meta/outbox_next";
const INBOX_NEXT: &[u8] = b"meta/inbox_next";
const HUB_CURSOR: &[u8] = b"meta/hub_cursor";

/// Whether a submission was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Stored in the outbox.
    New,
    /// The same message was already in the outbox.
    Duplicate,
}

/// Allocates the next outbox position.
fn next_position(txn: &mut Txn<'_>) -> Result<u64, StoreError> {
    let n = keys::u64_value(txn.get(OUTBOX_NEXT)?) + 1;
    txn.put(OUTBOX_NEXT, n.to_be_bytes().to_vec());
    Ok(n)
}

/// Puts validated messages in the outbox in one write, in order: each in
/// the push queue if its status is `Queued`, among the messages awaiting
/// approval if it is `AwaitingApproval`, with whether it was new and the
/// stored record (the original one for a duplicate). Each gets its own result: a message id already used
/// for other content is refused (`IdReused`) without refusing the others.
/// The whole write fails only when nothing could be stored.
pub async fn enqueue_all(
    db: &Db,
    messages: Vec<(Envelope, OutboxRecord, Option<plans::PlanWrite>)>,
) -> Result<Vec<Result<(Queued, OutboxRecord), NodeError>>, NodeError> {
    let encoded: Vec<(Vec<u8>, OutboxRecord, Option<plans::PlanWrite>)> = messages
        .into_iter()
        .map(|(env, record, plan)| (pb::Envelope::from(&env).encode_to_vec(), record, plan))
        .collect();
    db.write(move |txn| {
        let mut appends = Appends::default();
        let results = encoded
            .into_iter()
            .map(|(envelope, record, plan)| {
                match enqueue_in(txn, &mut appends, envelope, record, plan) {
                    Err(NodeError::Store(e)) => Err(e.into()),
                    done => Ok(done),
                }
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        appends.write(txn);
        Ok(results)
    })
    .await
}

/// One message of [`enqueue_all`]: a refusal of the message is `Err` with
/// nothing staged; a store failure is `Err(NodeError::Store)`, which fails
/// the write.
fn enqueue_in(
    txn: &mut Txn<'_>,
    appends: &mut Appends,
    envelope: Vec<u8>,
    mut record: OutboxRecord,
    plan: Option<plans::PlanWrite>,
) -> Result<(Queued, OutboxRecord), NodeError> {
    let key = k("o", &record.message_id);
    if let Some(existing) = read_outbox(txn, &record.message_id)? {
        return if existing.digest == record.digest {
            Ok((Queued::Duplicate, existing))
        } else {
            Err(NodeError::IdReused(record.message_id))
        };
    }
    let pushed = match record.status {
        OutboxStatus::Queued => true,
        OutboxStatus::AwaitingApproval => false,
        other => {
            return Err(StoreError::corrupt(
                &key,
                format_args!("a new outbox record cannot be {}", other.as_str()),
            )
            .into())
        }
    };
    // A plan's version goes with its message, or neither does.
    if let Some(plan) = &plan {
        plans::write_own(txn, plan)?;
    }
    let n = next_position(txn)?;
    record.seq = n;
    appends.push(b"ol/", n, &record.message_id);
    if pushed {
        appends.push(b"op/", n, &record.message_id);
    } else {
        // Few messages wait for approval, and each leaves on its own.
        txn.put(
            keys::seq_key(b"oa/", n),
            record.message_id.clone().into_bytes(),
        );
    }
    txn.put(key, Stored::joined(json(&record), envelope));
    Ok((Queued::New, record))
}

/// A message to push to the hub.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its push position.
    pub push_seq: u64,
    /// Message id.
    pub id: String,
    /// The envelope to send.
    pub envelope: pb::Envelope,
    /// Officer identity that approved its release, if four-eyes applied.
    pub approved_by: String,
    /// The trace context of its submission (empty if untraced).
    pub traceparent: String,
    /// For a plan's version: its targets' keyed hashes.
    pub targets: Vec<pb::TargetHash>,
    /// Whether it may be sent. Only released messages (status `Queued`) are
    /// ever put in the push queue; should an entry for any other status be
    /// found, it is dropped unsent (see [`drop_push`]), never pushed.
    pub releasable: bool,
}

/// The oldest messages still to push.
pub fn pending(db: &Db, limit: usize) -> Result<Vec<Pending>, StoreError> {
    order::first(db, b"op/", limit)?
        .into_iter()
        .map(|(push_seq, id)| {
            let key = k("o", &id);
            let Some(stored) = db.get(&key)? else {
                // A damaged store: nothing to send, and never a reason to
                // stop pushing the rest. It is dropped unsent.
                return Ok(Pending {
                    push_seq,
                    id,
                    envelope: pb::Envelope::default(),
                    approved_by: String::new(),
                    traceparent: String::new(),
                    targets: Vec::new(),
                    releasable: false,
                });
            };
            let stored = Stored::split(&key, stored)?;
            let rec: OutboxRecord = parse(&key, &stored.record)?;
            Ok(Pending {
                push_seq,
                targets: plans::push_targets(db, &id)?,
                envelope: stored.envelope(db, &k("oe", &id))?,
                id,
                releasable: rec.status == OutboxStatus::Queued,
                approved_by: rec.approved_by,
                traceparent: rec.trace_parent,
            })
        })
        .collect()
}

/// Removes a push queue entry without sending it (one that is not
/// releasable; see [`pending`]).
pub async fn drop_push(db: &Db, push_seq: u64) -> Result<(), NodeError> {
    db.write(move |txn| Ok(order::remove(txn, b"op/", &[push_seq].into())?))
        .await
}

/// Who is deciding on a message awaiting four-eyes approval.
#[derive(Debug, Clone)]
pub struct Decider {
    /// Their identity (SPIFFE URI).
    pub uri: String,
    /// When, milliseconds since the Unix epoch.
    pub now_ms: i64,
}

fn outbox_record(txn: &Txn<'_>, id: &str) -> Result<OutboxRecord, NodeError> {
    read_outbox(txn, id)?.ok_or_else(|| NodeError::NotInOutbox(id.to_owned()))
}

/// The submitter never decides on their own message.
fn not_own(rec: &OutboxRecord, decider: &Decider) -> Result<(), NodeError> {
    if rec.submitted_by == decider.uri {
        Err(NodeError::OwnMessage {
            message_id: rec.message_id.clone(),
        })
    } else {
        Ok(())
    }
}

/// Approves a message awaiting four-eyes approval: moves it into the push
/// queue (status `Queued`) and records the approver, atomically. Approving
/// an approved message again returns the original approval and `true`. The
/// caller has checked that `decider` is an approver.
pub async fn approve(
    db: &Db,
    id: String,
    decider: Decider,
) -> Result<(OutboxRecord, bool), NodeError> {
    db.write(move |txn| {
        let mut rec = outbox_record(txn, &id)?;
        not_own(&rec, &decider)?;
        match rec.status {
            OutboxStatus::AwaitingApproval => {}
            _ if !rec.approved_by.is_empty() => return Ok((rec, true)),
            _ => return Err(not_awaiting(&rec, "approved")),
        }
        rec.status = OutboxStatus::Queued;
        rec.approved_by = decider.uri;
        rec.approved_at_ms = decider.now_ms;
        // Released now: it joins the push queue behind what is already there.
        let n = next_position(txn)?;
        txn.delete(keys::seq_key(b"oa/", rec.seq));
        let mut appends = Appends::default();
        appends.push(b"op/", n, &id);
        appends.write(txn);
        put_record(txn, k("o", &id), json(&rec))?;
        Ok((rec, false))
    })
    .await
}

/// Refuses a message awaiting four-eyes approval: it is never sent.
/// Refusing a refused message again returns the original refusal and
/// `true`. The caller has checked that `decider` is an approver and that
/// `reason` is acceptable.
pub async fn refuse(
    db: &Db,
    id: String,
    decider: Decider,
    reason: String,
) -> Result<(OutboxRecord, bool), NodeError> {
    db.write(move |txn| {
        let mut rec = outbox_record(txn, &id)?;
        not_own(&rec, &decider)?;
        match rec.status {
            OutboxStatus::AwaitingApproval => {}
            OutboxStatus::Refused => return Ok((rec, true)),
            _ => return Err(not_awaiting(&rec, "refused")),
        }
        rec.status = OutboxStatus::Refused;
        rec.refused_by = decider.uri;
        rec.refused_at_ms = decider.now_ms;
        rec.refusal_reason = reason;
        txn.delete(keys::seq_key(b"oa/", rec.seq));
        put_record(txn, k("o", &id), json(&rec))?;
        Ok((rec, false))
    })
    .await
}

/// Why a message that is not awaiting approval cannot be `verb`.
fn not_awaiting(rec: &OutboxRecord, verb: &str) -> NodeError {
    let state = match rec.status {
        OutboxStatus::Refused => format!(
            "it was refused by {}: {}; a refused message is never sent (submit a corrected message under a new id)",
            rec.refused_by, rec.refusal_reason
        ),
        _ if !rec.approved_by.is_empty() => format!(
            "it was already approved by {} and released",
            rec.approved_by
        ),
        _ => format!(
            "it did not need four-eyes approval and was released when submitted (status {})",
            rec.status.as_str()
        ),
    };
    NodeError::NotAwaitingApproval {
        message_id: rec.message_id.clone(),
        problem: format!("it cannot be {verb}: {state}"),
    }
}

/// Messages awaiting four-eyes approval, oldest first, with their envelopes.
pub fn awaiting(db: &Db, limit: usize) -> Result<Vec<(OutboxRecord, pb::Envelope)>, StoreError> {
    db.scan_prefix(b"oa/", limit)?
        .into_iter()
        .map(|(_, id)| {
            let id = String::from_utf8_lossy(&id).into_owned();
            outbox_message(db, &id)?.ok_or_else(|| StoreError::Corrupt {
                key: format!("o/{id}"),
                problem: "a message awaiting approval has no outbox record".into(),
            })
        })
        .collect()
}

/// One outbox message: record and envelope.
pub fn outbox_message(
    db: &Db,
    id: &str,
) -> Result<Option<(OutboxRecord, pb::Envelope)>, StoreError> {
    let Some((rec, stored)) = read_outbox_value(db, id)? else {
        return Ok(None);
    };
    Ok(Some((rec, stored.envelope(db, &k("oe", id))?)))
}

/// Records the hub's answers to pushed messages in one write: each is
/// `routed` (with the hub's decisions) or, after a final refusal,
/// `rejected` with the reason, and leaves the push queue. The answer is
/// written beside the record (`oh/<id>`), not into it (see
/// [`read_outbox`]).
pub async fn finish_pushes(db: &Db, finished: Vec<Finished>) -> Result<(), NodeError> {
    db.write(move |txn| {
        let positions = finished.iter().map(|f| f.push_seq).collect();
        order::remove(txn, b"op/", &positions)?;
        for Finished { id, outcome, .. } in finished {
            let outcome = match outcome {
                Ok(resp) => pb::stored_push_answer::Outcome::Routed(resp),
                Err(why) => pb::stored_push_answer::Outcome::Rejected(why),
            };
            txn.put(
                k("oh", &id),
                pb::StoredPushAnswer {
                    outcome: Some(outcome),
                }
                .encode_to_vec(),
            );
        }
        Ok(())
    })
    .await
}

/// The hub's answer to one pushed message (see [`finish_pushes`]).
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its push position.
    pub push_seq: u64,
    /// Message id.
    pub id: String,
    /// The hub's outcome, or why it refused the message for good.
    pub outcome: Result<pb::SubmitResponse, String>,
}

/// Records a failed push attempt of these messages, which will be retried.
pub async fn note_attempts(db: &Db, ids: Vec<String>, error: String) -> Result<(), NodeError> {
    db.write(move |txn| {
        for id in ids {
            let key = k("o", &id);
            if let Some(b) = txn.get(&key)? {
                let stored = Stored::split(&key, b)?;
                let mut rec: OutboxRecord = parse(&key, &stored.record)?;
                rec.attempts += 1;
                rec.last_error.clone_from(&error);
                txn.put(key, stored.with_record(json(&rec)));
            }
        }
        Ok(())
    })
    .await
}

/// The newest outbox records.
pub fn outbox(db: &Db, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
    order::last(db, b"ol/", None, limit)?
        .into_iter()
        .filter_map(|(_, id)| read_outbox(db, &id).transpose())
        .collect()
}

/// The last hub position stored in the inbox.
/// Deliveries kept in quarantine: how many, and the newest `limit` of them
/// (newest first).
pub fn quarantine(db: &Db, limit: usize) -> Result<(u64, Vec<QuarantineRecord>), StoreError> {
    let all = db.scan_prefix(b"qr/", usize::MAX)?;
    let count = all.len() as u64;
    let newest = all
        .into_iter()
        .rev()
        .take(limit)
        .map(|(k, v)| parse(&k, &v))
        .collect::<Result<_, _>>()?;
    Ok((count, newest))
}

/// How many messages wait to be pushed to the hub.
pub fn outbox_pending(db: &Db) -> Result<u64, StoreError> {
    order::count(db, b"op/")
}

/// How many messages the inbox holds.
pub fn inbox_count(db: &Db) -> Result<u64, StoreError> {
    order::count(db, b"il/")
}

/// The last hub queue position stored here.
pub fn hub_cursor(db: &Db) -> Result<u64, StoreError> {
    Ok(keys::u64_value(db.get(HUB_CURSOR)?))
}

/// A delivery ready to store.
#[derive(Debug)]
pub enum Arrival {
    /// A message.
    Message {
        /// Validated envelope.
        envelope: Box<pb::Envelope>,
        /// Bookkeeping.
        record: InboxRecord,
    },
    /// The withdrawal of a message (held or not).
    Withdrawal {
        /// Hub position.
        seq: u64,
        /// The message.
        message_id: String,
        /// Its originating body.
        origin: String,
        /// Classification in this body's marking scheme.
        marking: String,
        /// Why.
        note: WithdrawalNote,
    },
    /// Another body asks to pass on a message this body originated.
    ForwardRequest(Box<ForwardRequestRecord>),
    /// Recipients' nodes took messages this body originated.
    Receipts(Vec<ReceiptArrival>),
    /// A deconfliction notice for one of this body's plans.
    Notice {
        /// Hub position.
        seq: u64,
        /// The notice.
        notice: Box<pb::DeconflictionNotice>,
    },
    /// A delivery this node cannot accept: kept in quarantine, never in the
    /// inbox.
    Quarantine {
        /// Bookkeeping.
        record: QuarantineRecord,
        /// The delivery as received, kept as evidence.
        raw: Vec<u8>,
    },
}

/// A delivery this node could not accept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuarantineRecord {
    /// Position in this body's hub queue.
    pub hub_seq: u64,
    /// The message id as delivered, escaped (it may be what is wrong).
    pub message_id: String,
    /// The originating body as delivered, escaped.
    pub origin: String,
    /// Why it could not be accepted.
    pub reason: String,
    /// When.
    pub at_ms: i64,
}

/// Stores a batch of deliveries and advances the hub cursor, atomically. A
/// message already in the inbox (a redelivery after a crash) is not stored
/// twice. Returns how many were new.
pub async fn store_arrivals(
    db: &Db,
    arrivals: Vec<Arrival>,
    cursor: u64,
) -> Result<Vec<String>, NodeError> {
    db.write(move |txn| {
        let mut new = Vec::new();
        let mut appends = Appends::default();
        for a in arrivals {
            match a {
                Arrival::Message { envelope, record } => {
                    if txn.contains(&k("i", &record.message_id))? {
                        continue;
                    }
                    append_inbox(txn, &mut appends, &record.message_id, &envelope, &record)?;
                    plans::see_plan(txn, &envelope, record.received_at_ms)?;
                    new.push(record.message_id);
                }
                Arrival::Notice { seq, notice } => {
                    plans::store_notice(txn, *notice, seq, liaison_types::now_ms())?
                }
                Arrival::Withdrawal {
                    seq,
                    message_id,
                    origin,
                    marking,
                    note,
                } => withdraw(txn, &mut appends, seq, &message_id, &origin, marking, note)?,
                Arrival::ForwardRequest(record) => {
                    // A redelivery after a crash changes nothing.
                    let key = k("fw", &record.request_id);
                    if txn.get(&key)?.is_none() {
                        txn.put(key, json(&*record));
                    }
                }
                Arrival::Receipts(receipts) => {
                    for ReceiptArrival {
                        message_id,
                        recipient,
                        at_ms,
                        quarantined,
                    } in receipts
                    {
                        // The first receipt of a recipient stands; one for
                        // a message this node no longer knows (its store
                        // was replaced) has nowhere to go.
                        let rkey = [receipts_prefix(&message_id), recipient.into_bytes()].concat();
                        if !txn.contains(&rkey)? && txn.contains(&k("o", &message_id))? {
                            let receipt = pb::StoredReceipt {
                                at_ms,
                                quarantined,
                                ..Default::default()
                            };
                            txn.put(rkey, receipt.encode_to_vec());
                        }
                    }
                }
                Arrival::Quarantine { record, raw } => {
                    let key = keys::seq_key(b"qr/", record.hub_seq);
                    if txn.get(&key)?.is_none() {
                        txn.put(keys::seq_key(b"qd/", record.hub_seq), raw);
                        txn.put(key, json(&record));
                        log_event(
                            txn,
                            pb::NodeLogRecord {
                                at_ms: record.at_ms,
                                event: "quarantined".into(),
                                message_id: record.message_id.clone(),
                                origin: record.origin.clone(),
                                reason: record.reason.clone(),
                                hub_seq: record.hub_seq,
                                ..Default::default()
                            },
                        )?;
                    }
                }
            }
        }
        appends.write(txn);
        let old = keys::u64_value(txn.get(HUB_CURSOR)?);
        txn.put(HUB_CURSOR, old.max(cursor).to_be_bytes().to_vec());
        Ok(new)
    })
    .await
}

fn append_inbox(
    txn: &mut liaison_store::Txn<'_>,
    appends: &mut Appends,
    id: &str,
    envelope: &pb::Envelope,
    record: &InboxRecord,
) -> Result<(), StoreError> {
    let n = keys::u64_value(txn.get(INBOX_NEXT)?) + 1;
    txn.put(INBOX_NEXT, n.to_be_bytes().to_vec());
    appends.push(b"il/", n, id);
    txn.put(
        k("i", id),
        Stored::joined(json(record), envelope.encode_to_vec()),
    );
    // The content goes at the earlier of its expiry and the end of its
    // retention period.
    let expires = envelope.labels.as_ref().map_or(0, |l| l.expires_at_ms);
    let due = [(expires, "expired"), (record.erase_at_ms, "retention")]
        .into_iter()
        .filter(|(t, _)| *t > 0)
        .min_by_key(|(t, _)| *t);
    if let (Some((at, cause)), None) = (due, &record.withdrawn) {
        txn.put(expiry_key(at, id), cause.as_bytes().to_vec());
    }
    Ok(())
}

const EXPIRY_PREFIX: &[u8] = b"ix/";

fn expiry_key(expires_at_ms: i64, id: &str) -> Vec<u8> {
    let mut key = keys::seq_key(EXPIRY_PREFIX, u64::try_from(expires_at_ms).unwrap_or(0));
    key.push(b'/');
    key.extend_from_slice(id.as_bytes());
    key
}

/// When the next inbox message expires, if any does.
pub fn next_inbox_expiry(db: &Db) -> Result<Option<i64>, StoreError> {
    Ok(db
        .scan_prefix(EXPIRY_PREFIX, 1)?
        .first()
        .and_then(|(k, _)| k.get(EXPIRY_PREFIX.len()..EXPIRY_PREFIX.len() + 8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX)))
}

/// Erases the content of every inbox message that expired by `now_ms`
/// (labels and a tombstone stay, as for a withdrawal). Returns how many.
pub async fn expire_inbox(db: &Db, now_ms: i64) -> Result<usize, NodeError> {
    db.write(move |txn| {
        let end = keys::seq_key(
            EXPIRY_PREFIX,
            u64::try_from(now_ms).unwrap_or(0).saturating_add(1),
        );
        let mut expired = 0;
        for (key, cause) in txn.scan(EXPIRY_PREFIX, &end, 256)? {
            let Some(id) = key
                .get(EXPIRY_PREFIX.len() + 9..)
                .map(|b| String::from_utf8_lossy(b).into_owned())
            else {
                continue;
            };
            let expires = key
                .get(..EXPIRY_PREFIX.len() + 8)
                .and_then(keys::seq_of)
                .unwrap_or_default();
            txn.delete(key);
            if !txn.contains(&k("i", &id))? {
                continue;
            }
            let note = if cause == b"retention" {
                WithdrawalNote {
                    cause: "retention".into(),
                    reason: format!("the retention period of its classification ended at {}; its content was erased from this inbox", liaison_types::rfc3339(i64::try_from(expires).unwrap_or(i64::MAX))),
                    at_ms: now_ms,
                }
            } else {
                WithdrawalNote {
                    cause: "expired".into(),
                    reason: format!("expired at {}; its content was erased from this inbox", liaison_types::rfc3339(i64::try_from(expires).unwrap_or(i64::MAX))),
                    at_ms: now_ms,
                }
            };
            let mut appends = Appends::default();
            withdraw(txn, &mut appends, 0, &id, "", String::new(), note)?;
            appends.write(txn);
            expired += 1;
        }
        Ok(expired)
    })
    .await
}

/// Withdraws an inbox message: its content is erased, its labels and the
/// reason stay. A message withdrawn before it reached this node leaves a
/// tombstone with what is known of it. Withdrawing twice changes nothing.
/// The title an inbox shows for a withdrawn message in place of its own.
fn withdrawn_title(note: &WithdrawalNote, delivered: bool) -> String {
    if delivered {
        format!("(withdrawn: {})", note.cause)
    } else {
        format!("(withdrawn before delivery: {})", note.cause)
    }
}

fn withdraw(
    txn: &mut liaison_store::Txn<'_>,
    appends: &mut Appends,
    seq: u64,
    id: &str,
    origin: &str,
    marking: String,
    note: WithdrawalNote,
) -> Result<(), StoreError> {
    let key = k("i", id);
    match txn.get(&key)? {
        Some(bytes) => {
            let stored = Stored::split(&key, bytes)?;
            let mut rec: InboxRecord = parse(&key, &stored.record)?;
            if rec.withdrawn.is_some() {
                return Ok(());
            }
            let ekey = k("ie", id);
            let labels = match stored.envelope {
                Some(b) => decode_env(&key, &b)?.labels,
                None => {
                    // An earlier version's envelope: its content goes with
                    // the value that held it.
                    let labels = match txn.get(&ekey)? {
                        Some(b) => decode_env(&ekey, &b)?.labels,
                        None => None,
                    };
                    txn.delete(ekey);
                    labels
                }
            };
            // The title is content too: only the labels and the tombstone
            // stay (and a plan's version leaves the calendar).
            plans::forget_visible(txn, labels.as_ref(), id)?;
            rec.title = withdrawn_title(&note, true);
            let from = labels
                .as_ref()
                .map(|l| l.origin.clone())
                .unwrap_or_default();
            log_withdrawal(txn, seq, id, &from, &note)?;
            rec.withdrawn = Some(note);
            let kept = pb::Envelope {
                labels,
                body: Vec::new(),
            };
            txn.put(key, Stored::joined(json(&rec), kept.encode_to_vec()));
        }
        None => {
            log_withdrawal(txn, seq, id, origin, &note)?;
            let record = InboxRecord {
                message_id: id.to_owned(),
                hub_seq: seq,
                received_at_ms: note.at_ms,
                marking,
                title: withdrawn_title(&note, false),
                read_by: String::new(),
                read_at_ms: 0,
                withdrawn: Some(note),
                erase_at_ms: 0,
                leaf_index: 0,
                tree_size: 0,
                unverified_log: false,
            };
            let labels = pb::Labels {
                message_id: id.to_owned(),
                origin: origin.to_owned(),
                ..Default::default()
            };
            append_inbox(
                txn,
                appends,
                id,
                &pb::Envelope {
                    labels: Some(labels),
                    body: Vec::new(),
                },
                &record,
            )?;
        }
    }
    Ok(())
}

/// Records a withdrawal applied here in the node's log.
fn log_withdrawal(
    txn: &mut Txn<'_>,
    seq: u64,
    id: &str,
    origin: &str,
    note: &WithdrawalNote,
) -> Result<(), StoreError> {
    let event = match note.cause.as_str() {
        "retention" => "erased",
        "expired" => "expired",
        _ => "retracted",
    };
    log_event(
        txn,
        pb::NodeLogRecord {
            at_ms: note.at_ms,
            event: event.into(),
            message_id: id.to_owned(),
            origin: origin.to_owned(),
            reason: note.reason.clone(),
            hub_seq: seq,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Withdraws a message of this body's outbox: one that has not left the
/// node is withdrawn here and never sent; one the hub has (or may have) is
/// queued for retraction at the hub, after it. Returns the outcome.
pub async fn request_retraction(
    db: &Db,
    id: String,
    reason: String,
    officer: String,
) -> Result<&'static str, NodeError> {
    db.write(move |txn| {
        let key = k("o", &id);
        let mut rec = outbox_record(txn, &id)?;
        match rec.status {
            OutboxStatus::AwaitingApproval => {
                rec.status = OutboxStatus::Withdrawn;
                rec.last_error = format!("withdrawn by {officer}: {reason}");
                txn.delete(keys::seq_key(b"oa/", rec.seq));
                put_record(txn, key, json(&rec))?;
                Ok("withdrawn")
            }
            OutboxStatus::Queued | OutboxStatus::Routed => {
                let pending = PendingRetraction {
                    message_id: id.clone(),
                    reason,
                    requested_by: officer,
                };
                let rkey = k("or", &id);
                if txn.get(&rkey)?.is_none() {
                    txn.put(rkey, json(&pending));
                }
                Ok("retraction_queued")
            }
            OutboxStatus::Retracted | OutboxStatus::Withdrawn => Ok("retraction_queued"),
            OutboxStatus::Refused | OutboxStatus::Rejected => Err(NodeError::NotRetractable {
                message_id: id,
                status: rec.status.as_str(),
            }),
        }
    })
    .await
}

/// Retractions waiting for the hub whose message the hub has routed (a
/// retraction never overtakes its message).
pub fn pending_retractions(db: &Db, limit: usize) -> Result<Vec<PendingRetraction>, StoreError> {
    let mut out = Vec::new();
    for (key, value) in db.scan_prefix(b"or/", limit)? {
        let p: PendingRetraction = parse(&key, &value)?;
        let routed = match read_outbox(db, &p.message_id)? {
            Some(rec) => rec.status != OutboxStatus::Queued,
            None => true,
        };
        if routed {
            out.push(p);
        }
    }
    Ok(out)
}

/// Records the hub's answer to a retraction and forgets the request.
pub async fn finish_retraction(
    db: &Db,
    id: String,
    outcome: Result<(), String>,
) -> Result<(), NodeError> {
    db.write(move |txn| {
        let rkey = k("or", &id);
        let Some(bytes) = txn.get(&rkey)? else {
            return Ok(());
        };
        let pending: PendingRetraction = parse(&rkey, &bytes)?;
        txn.delete(rkey);
        if let Some(mut rec) = read_outbox(txn, &id)? {
            let key = k("o", &id);
            match outcome {
                Ok(()) => {
                    rec.status = OutboxStatus::Retracted;
                    rec.last_error =
                        format!("retracted by {}: {}", pending.requested_by, pending.reason);
                }
                Err(why) => rec.last_error = format!("retraction refused by the hub: {why}"),
            }
            put_record(txn, key, json(&rec))?;
        }
        Ok(())
    })
    .await
}

/// Where a forward request stands on the originating node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardDecisionState {
    /// Nobody on this node decided yet.
    Pending,
    /// An officer consented; the hub decides under the governance rules.
    Approved,
    /// An officer refused; the message is not passed on.
    Refused,
}

impl ForwardDecisionState {
    /// The name shown to officers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Refused => "refused",
        }
    }
}

/// Another body's request to pass on a message this body originated (the
/// third-party rule), as the hub's delivery stream brought it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardRequestRecord {
    /// The hub's request id.
    pub request_id: String,
    /// The message, from this body's outbox.
    pub message_id: String,
    /// The body that asks.
    pub requester: String,
    /// The officer who asked, if known.
    pub requested_by: String,
    /// The body it would pass the message on to.
    pub to: String,
    /// Why, in the requester's words.
    pub reason: String,
    /// When the hub filed it.
    pub requested_at_ms: i64,
    /// Position in this body's hub queue.
    pub hub_seq: u64,
    /// Where it stands here.
    pub state: ForwardDecisionState,
    /// Officer who decided.
    #[serde(default)]
    pub decided_by: String,
    /// When, 0 while pending.
    #[serde(default)]
    pub decided_at_ms: i64,
    /// The deciding officer's reason.
    #[serde(default)]
    pub decision_reason: String,
    /// What the hub did with the decision, once it answered.
    #[serde(default)]
    pub hub_outcome: String,
}

/// A decision on a forward request, waiting to be sent to the hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingForwardDecision {
    /// The request.
    pub request_id: String,
    /// Consent or refusal.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// Officer who decided.
    pub decided_by: String,
}

fn forward_request_record(
    txn: &Txn<'_>,
    id: &str,
) -> Result<Option<ForwardRequestRecord>, StoreError> {
    let key = k("fw", id);
    txn.get(&key)?.map(|b| parse(&key, &b)).transpose()
}

/// Forward requests for this body's messages, oldest first.
pub fn forward_requests(
    db: &Db,
    limit: usize,
    pending_only: bool,
) -> Result<Vec<ForwardRequestRecord>, StoreError> {
    let mut out = db
        .scan_prefix(b"fw/", usize::MAX)?
        .into_iter()
        .map(|(key, value)| parse::<ForwardRequestRecord>(&key, &value))
        .collect::<Result<Vec<_>, _>>()?;
    out.retain(|r| !pending_only || r.state == ForwardDecisionState::Pending);
    out.sort_by_key(|r| (r.requested_at_ms, r.hub_seq));
    out.truncate(limit);
    Ok(out)
}

/// Records an officer's decision on a forward request and queues it for the
/// hub, atomically. Deciding again the same way returns the original
/// decision and `true`; the other way is refused.
pub async fn decide_forward(
    db: &Db,
    id: String,
    approve: bool,
    reason: String,
    decider: Decider,
) -> Result<(ForwardRequestRecord, bool), NodeError> {
    db.write(move |txn| {
        let Some(mut rec) = forward_request_record(txn, &id)? else {
            return Err(NodeError::UnknownForwardRequest(id));
        };
        let wanted = if approve {
            ForwardDecisionState::Approved
        } else {
            ForwardDecisionState::Refused
        };
        match rec.state {
            ForwardDecisionState::Pending => {}
            s if s == wanted => return Ok((rec, true)),
            s => {
                return Err(NodeError::ForwardDecided {
                    request_id: id,
                    problem: format!(
                        "it was already {} by {}; a decision cannot be changed",
                        s.as_str(),
                        rec.decided_by
                    ),
                })
            }
        }
        rec.state = wanted;
        rec.decided_by = decider.uri.clone();
        rec.decided_at_ms = decider.now_ms;
        rec.decision_reason = reason.clone();
        txn.put(
            k("fd", &id),
            json(&PendingForwardDecision {
                request_id: id.clone(),
                approve,
                reason,
                decided_by: decider.uri,
            }),
        );
        txn.put(k("fw", &id), json(&rec));
        Ok((rec, false))
    })
    .await
}

/// Decisions on forward requests still to send to the hub.
pub fn pending_forward_decisions(
    db: &Db,
    limit: usize,
) -> Result<Vec<PendingForwardDecision>, StoreError> {
    db.scan_prefix(b"fd/", limit)?
        .into_iter()
        .map(|(key, value)| parse(&key, &value))
        .collect()
}

/// Records the hub's answer to a forward decision (what it did, or why it
/// refused) and forgets the decision.
pub async fn finish_forward_decision(
    db: &Db,
    id: String,
    outcome: Result<String, String>,
) -> Result<(), NodeError> {
    db.write(move |txn| {
        txn.delete(k("fd", &id));
        if let Some(mut rec) = forward_request_record(txn, &id)? {
            rec.hub_outcome = match outcome {
                Ok(done) => done,
                Err(why) => format!("refused by the hub: {why}"),
            };
            txn.put(k("fw", &id), json(&rec));
        }
        Ok(())
    })
    .await
}

/// One inbox message: bookkeeping and envelope.
pub fn inbox_message(db: &Db, id: &str) -> Result<Option<(InboxRecord, pb::Envelope)>, StoreError> {
    let key = k("i", id);
    let Some(value) = db.get(&key)? else {
        return Ok(None);
    };
    let stored = Stored::split(&key, value)?;
    let rec: InboxRecord = parse(&key, &stored.record)?;
    Ok(Some((rec, stored.envelope(db, &k("ie", id))?)))
}

/// The newest inbox messages.
pub fn inbox(
    db: &Db,
    limit: usize,
    unread_only: bool,
) -> Result<Vec<(InboxRecord, pb::Envelope)>, StoreError> {
    let mut out = Vec::new();
    let mut before = None;
    while out.len() < limit {
        let page = order::last(db, b"il/", before, 256)?;
        let Some(&(oldest, _)) = page.last() else {
            break;
        };
        before = Some(oldest);
        for (_, id) in &page {
            if let Some((rec, env)) = inbox_message(db, id)? {
                if !unread_only || rec.read_at_ms == 0 {
                    out.push((rec, env));
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Marks an inbox message as read; the first reader is kept.
pub async fn mark_read(
    db: &Db,
    id: String,
    officer: String,
    now_ms: i64,
) -> Result<InboxRecord, NodeError> {
    db.write(move |txn| {
        let key = k("i", &id);
        let mut rec: InboxRecord = match txn.get(&key)? {
            Some(b) => parse(&key, &Stored::split(&key, b)?.record)?,
            None => return Err(NodeError::NotFound(id)),
        };
        if rec.read_at_ms == 0 {
            log_event(
                txn,
                pb::NodeLogRecord {
                    at_ms: now_ms,
                    event: "read".into(),
                    message_id: id.clone(),
                    actor: officer.clone(),
                    ..Default::default()
                },
            )?;
            rec.read_by = officer;
            rec.read_at_ms = now_ms;
            put_record(txn, key, json(&rec))?;
        }
        Ok(rec)
    })
    .await
}

/// An outbox record of `message_id` in `status`, as tests build them (an
/// alert by alice, `CONFIDENTIAL`, never sent).
#[cfg(test)]
pub(crate) fn test_record(message_id: &str, status: OutboxStatus) -> OutboxRecord {
    OutboxRecord {
        message_id: message_id.to_owned(),
        digest: "d".into(),
        submitted_by: "spiffe://liaison.test/org/alpha/officer/alice".into(),
        submitted_at_ms: liaison_types::now_ms(),
        title: "four eyes".into(),
        kind: "alert".into(),
        classification: "CONFIDENTIAL".into(),
        status,
        attempts: 0,
        last_error: String::new(),
        decisions: Vec::new(),
        unaddressed: Vec::new(),
        policy_version: String::new(),
        seq: 0,
        approval_reason: if status == OutboxStatus::AwaitingApproval {
            "release.four_eyes_from: CONFIDENTIAL is at or above CONFIDENTIAL".into()
        } else {
            String::new()
        },
        approved_by: String::new(),
        approved_at_ms: 0,
        refused_by: String::new(),
        refused_at_ms: 0,
        refusal_reason: String::new(),
        received_by: Default::default(),
        quarantined_by: Default::default(),
        trace_parent: String::new(),
        leaf_index: 0,
        tree_size: 0,
        checkpoint: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liaison_types::now_ms;

    const ALICE: &str = "spiffe://liaison.test/org/alpha/officer/alice";
    const BOB: &str = "spiffe://liaison.test/org/alpha/officer/bob";
    const CAROL: &str = "spiffe://liaison.test/org/alpha/officer/carol";

    fn message() -> Envelope {
        let body = pb::Body {
            title: "four eyes".into(),
            content: Some(pb::body::Content::Alert(pb::Alert {
                text: "act".into(),
                ..Default::default()
            })),
        };
        let labels = pb::Labels {
            message_id: uuid::Uuid::new_v4().to_string(),
            origin: "alpha".into(),
            kind: pb::Kind::Alert as i32,
            classification: pb::Classification::Confidential as i32,
            crime_areas: vec!["drugs".into()],
            priority: pb::Priority::Routine as i32,
            created_at_ms: now_ms(),
            ..Default::default()
        };
        Envelope::parse(pb::Envelope {
            labels: Some(labels),
            body: body.encode_to_vec(),
        })
        .unwrap()
        .0
    }

    fn record(env: &Envelope, status: OutboxStatus) -> OutboxRecord {
        let mut rec = test_record(&env.labels.message_id, status);
        rec.digest = submission_digest(env);
        rec
    }

    fn by(uri: &str) -> Decider {
        Decider {
            uri: uri.into(),
            now_ms: 1_000,
        }
    }

    async fn submit(db: &Db, status: OutboxStatus) -> String {
        let env = message();
        let (queued, rec) = enqueue(db, &env, record(&env, status)).await;
        assert_eq!(queued, Queued::New);
        assert_eq!(rec.status, status);
        rec.message_id
    }

    fn pushable(db: &Db) -> Vec<String> {
        pending(db, 100)
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    fn waiting(db: &Db) -> Vec<String> {
        awaiting(db, 100)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.message_id)
            .collect()
    }

    fn status(db: &Db, id: &str) -> OutboxRecord {
        outbox_message(db, id).unwrap().unwrap().0
    }

    #[tokio::test]
    async fn an_awaiting_message_is_not_pushed_until_approved() {
        let db = Db::in_memory();
        let plain = submit(&db, OutboxStatus::Queued).await;
        let held = submit(&db, OutboxStatus::AwaitingApproval).await;
        assert_eq!(pushable(&db), vec![plain.clone()]);
        assert_eq!(waiting(&db), vec![held.clone()]);

        // The submitter cannot approve; nothing changes.
        let before = status(&db, &held);
        let err = approve(&db, held.clone(), by(ALICE)).await.unwrap_err();
        assert!(matches!(err, NodeError::OwnMessage { .. }), "{err}");
        assert_eq!(status(&db, &held), before);
        assert_eq!(pushable(&db), vec![plain.clone()]);

        // A second officer approves: it joins the push queue behind what is
        // there, with the approver.
        let (rec, already) = approve(&db, held.clone(), by(BOB)).await.unwrap();
        assert!(!already);
        assert_eq!(rec.status, OutboxStatus::Queued);
        assert_eq!((rec.approved_by.as_str(), rec.approved_at_ms), (BOB, 1_000));
        assert_eq!(pushable(&db), vec![plain.clone(), held.clone()]);
        assert!(waiting(&db).is_empty());
        let p = pending(&db, 100).unwrap();
        assert!(p.iter().all(|p| p.releasable));
        assert_eq!(p[0].approved_by, "");
        assert_eq!(p[1].approved_by, BOB);

        // Approving again is idempotent, whoever asks; the first approver stays.
        let (again, already) = approve(&db, held.clone(), by(CAROL)).await.unwrap();
        assert!(already);
        assert_eq!(again.approved_by, BOB);
        assert_eq!(pushable(&db).len(), 2);

        // It can no longer be refused, before or after the hub routed it.
        let err = refuse(&db, held.clone(), by(CAROL), "no".into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, NodeError::NotAwaitingApproval { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("already approved by"), "{err}");
        let push_seq = p[1].push_seq;
        finish_pushes(
            &db,
            vec![Finished {
                push_seq,
                id: held.clone(),
                outcome: Ok(pb::SubmitResponse::default()),
            }],
        )
        .await
        .unwrap();
        assert_eq!(status(&db, &held).status, OutboxStatus::Routed);
        let (routed, already) = approve(&db, held.clone(), by(BOB)).await.unwrap();
        assert!(already);
        assert_eq!(routed.status, OutboxStatus::Routed);
    }

    #[tokio::test]
    async fn a_refused_message_is_never_pushed() {
        let db = Db::in_memory();
        let held = submit(&db, OutboxStatus::AwaitingApproval).await;
        let err = refuse(&db, held.clone(), by(ALICE), "mine".into())
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::OwnMessage { .. }), "{err}");

        let (rec, already) = refuse(&db, held.clone(), by(BOB), "sources exposed".into())
            .await
            .unwrap();
        assert!(!already);
        assert_eq!(rec.status, OutboxStatus::Refused);
        assert_eq!(rec.refused_by, BOB);
        assert_eq!(rec.refusal_reason, "sources exposed");
        assert!(pushable(&db).is_empty());
        assert!(waiting(&db).is_empty());

        // Refusing again keeps the first refusal; approving is refused.
        let (again, already) = refuse(&db, held.clone(), by(CAROL), "other".into())
            .await
            .unwrap();
        assert!(already);
        assert_eq!(
            (again.refused_by.as_str(), again.refusal_reason.as_str()),
            (BOB, "sources exposed")
        );
        let err = approve(&db, held.clone(), by(CAROL)).await.unwrap_err();
        assert!(
            matches!(err, NodeError::NotAwaitingApproval { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("refused by"), "{err}");
        assert!(pushable(&db).is_empty());
        assert_eq!(status(&db, &held).status, OutboxStatus::Refused);
    }

    #[tokio::test]
    async fn only_awaiting_messages_can_be_approved_or_refused() {
        let db = Db::in_memory();
        let plain = submit(&db, OutboxStatus::Queued).await;
        let err = approve(&db, plain.clone(), by(BOB)).await.unwrap_err();
        assert!(
            matches!(err, NodeError::NotAwaitingApproval { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("did not need"), "{err}");
        let err = refuse(&db, plain.clone(), by(BOB), "late".into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, NodeError::NotAwaitingApproval { .. }),
            "{err}"
        );
        let err = approve(&db, "no-such-id".into(), by(BOB))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::NotInOutbox(_)), "{err}");
        assert_eq!(status(&db, &plain).status, OutboxStatus::Queued);
    }

    /// One message through `enqueue_all`, which must accept it.
    async fn enqueue(db: &Db, env: &Envelope, record: OutboxRecord) -> (Queued, OutboxRecord) {
        enqueue_all(db, vec![(env.clone(), record, None)])
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_resubmitted_awaiting_message_stays_awaiting() {
        let db = Db::in_memory();
        let env = message();
        let (_, first) = enqueue(&db, &env, record(&env, OutboxStatus::AwaitingApproval)).await;
        let (queued, again) =
            enqueue(&db, &env, record(&env, OutboxStatus::AwaitingApproval)).await;
        assert_eq!(queued, Queued::Duplicate);
        assert_eq!(again, first);
        assert_eq!(waiting(&db).len(), 1);
        assert!(pushable(&db).is_empty());
    }

    #[tokio::test]
    async fn an_unreleased_entry_in_the_push_queue_is_not_releasable() {
        let db = Db::in_memory();
        let held = submit(&db, OutboxStatus::AwaitingApproval).await;
        // Simulate a damaged store: the message in the push queue anyway.
        let id = held.clone();
        db.write(move |txn| {
            txn.put(keys::seq_key(b"op/", 99), id.into_bytes());
            Ok::<_, NodeError>(())
        })
        .await
        .unwrap();
        let p = pending(&db, 100).unwrap();
        assert_eq!(p.len(), 1);
        assert!(!p[0].releasable);
        drop_push(&db, p[0].push_seq).await.unwrap();
        assert!(pushable(&db).is_empty());
        assert_eq!(status(&db, &held).status, OutboxStatus::AwaitingApproval);

        // One whose outbox record is gone is not releasable either, and
        // does not stop the entries behind it.
        let plain = submit(&db, OutboxStatus::Queued).await;
        db.write(move |txn| {
            txn.put(keys::seq_key(b"op/", 1), b"gone".to_vec());
            Ok::<_, NodeError>(())
        })
        .await
        .unwrap();
        let p = pending(&db, 100).unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.id.as_str(), p.releasable))
                .collect::<Vec<_>>(),
            vec![("gone", false), (plain.as_str(), true)]
        );
    }

    async fn reopen(db: Db, dir: &std::path::Path) -> Db {
        tokio::task::spawn_blocking(move || db.close().unwrap())
            .await
            .unwrap();
        Db::open(dir).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn approvals_and_waiting_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let held = submit(&db, OutboxStatus::AwaitingApproval).await;
        let other = submit(&db, OutboxStatus::AwaitingApproval).await;
        let db = reopen(db, dir.path()).await;
        assert_eq!(waiting(&db), vec![held.clone(), other.clone()]);
        assert!(pushable(&db).is_empty());
        approve(&db, held.clone(), by(BOB)).await.unwrap();
        let db = reopen(db, dir.path()).await;
        assert_eq!(waiting(&db), vec![other.clone()]);
        let p = pending(&db, 100).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].id.as_str(), p[0].approved_by.as_str()),
            (held.as_str(), BOB)
        );
        let rec = status(&db, &held);
        assert_eq!(
            (rec.status, rec.approved_by.as_str()),
            (OutboxStatus::Queued, BOB)
        );
        tokio::task::spawn_blocking(move || db.close().unwrap())
            .await
            .unwrap();
    }

    #[test]
    fn records_written_before_four_eyes_still_read() {
        let old = r#"{"message_id":"m","digest":"d","submitted_by":"s","submitted_at_ms":1,"title":"t","kind":"alert","classification":"RESTRICTED","status":"routed","attempts":1,"last_error":"","decisions":[],"policy_version":"v"}"#;
        let rec: OutboxRecord = parse(b"o/m", old.as_bytes()).unwrap();
        assert_eq!(rec.status, OutboxStatus::Routed);
        assert!(rec.approved_by.is_empty() && rec.approval_reason.is_empty());
    }

    fn receipt(id: &str, recipient: &str, at_ms: i64, quarantined: Option<&str>) -> Arrival {
        Arrival::Receipts(vec![ReceiptArrival {
            message_id: id.into(),
            recipient: recipient.into(),
            at_ms,
            quarantined: quarantined.map(str::to_owned),
        }])
    }

    #[tokio::test]
    async fn the_hub_answer_and_receipts_are_laid_over_the_outbox_record() {
        let db = Db::in_memory();
        let id = submit(&db, OutboxStatus::Queued).await;
        let stored = db.get(&k("o", &id)).unwrap().unwrap();
        let push_seq = pending(&db, 10).unwrap()[0].push_seq;
        let answer = pb::SubmitResponse {
            message_id: id.clone(),
            decisions: vec![pb::RoutingDecision {
                recipient: "bravo".into(),
                outcome: pb::Outcome::Deliver as i32,
                rule: "releasable".into(),
                ..Default::default()
            }],
            policy_version: "v1".into(),
            ..Default::default()
        };
        finish_pushes(
            &db,
            vec![Finished {
                push_seq,
                id: id.clone(),
                outcome: Ok(answer),
            }],
        )
        .await
        .unwrap();
        // Two receipts of bravo (a redelivery): the first stands; charlie
        // quarantined it; one for a message this node does not know is
        // dropped.
        let unknown = uuid::Uuid::new_v4().to_string();
        let arrivals = vec![
            receipt(&id, "bravo", 10, None),
            receipt(&id, "bravo", 20, None),
            receipt(&id, "charlie", 30, Some("unknown marking")),
            receipt(&unknown, "bravo", 40, None),
        ];
        store_arrivals(&db, arrivals, 3).await.unwrap();

        // The record itself was not rewritten.
        assert_eq!(db.get(&k("o", &id)).unwrap().unwrap(), stored);
        assert!(pending(&db, 10).unwrap().is_empty());
        let rec = status(&db, &id);
        assert_eq!(rec.status, OutboxStatus::Routed);
        assert_eq!((rec.attempts, rec.policy_version.as_str()), (1, "v1"));
        assert_eq!(rec.decisions.len(), 1);
        assert_eq!(rec.received_by.get("bravo"), Some(&10));
        assert_eq!(
            rec.quarantined_by.get("charlie"),
            Some(&(30, "unknown marking".to_owned()))
        );
        assert!(db
            .scan_prefix(&receipts_prefix(&unknown), 10)
            .unwrap()
            .is_empty());
        assert_eq!(outbox(&db, 10).unwrap(), vec![rec.clone()]);

        // A retraction rewrites the record from that view: it keeps the
        // answer and the receipts, and no longer says queued.
        assert_eq!(
            request_retraction(&db, id.clone(), "wrong".into(), ALICE.into())
                .await
                .unwrap(),
            "retraction_queued"
        );
        assert_eq!(pending_retractions(&db, 10).unwrap().len(), 1);
        finish_retraction(&db, id.clone(), Ok(())).await.unwrap();
        let retracted = status(&db, &id);
        assert_eq!(retracted.status, OutboxStatus::Retracted);
        assert_eq!(
            (
                retracted.attempts,
                &retracted.decisions,
                &retracted.received_by
            ),
            (1, &rec.decisions, &rec.received_by)
        );
    }

    #[tokio::test]
    async fn a_rejection_is_laid_over_the_record_and_an_old_record_reads_as_stored() {
        let db = Db::in_memory();
        let id = submit(&db, OutboxStatus::Queued).await;
        let push_seq = pending(&db, 10).unwrap()[0].push_seq;
        note_attempts(&db, vec![id.clone()], "hub unreachable".into())
            .await
            .unwrap();
        finish_pushes(
            &db,
            vec![Finished {
                push_seq,
                id: id.clone(),
                outcome: Err("unknown body zulu".into()),
            }],
        )
        .await
        .unwrap();
        let rec = status(&db, &id);
        assert_eq!(
            (rec.status, rec.attempts, rec.last_error.as_str()),
            (OutboxStatus::Rejected, 2, "unknown body zulu")
        );
        let err = request_retraction(&db, id, "x".into(), ALICE.into())
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::NotRetractable { .. }), "{err}");

        // A record of an earlier version holds its answer and receipts.
        let old = r#"{"message_id":"m","digest":"d","submitted_by":"s","submitted_at_ms":1,"title":"t","kind":"alert","classification":"RESTRICTED","status":"routed","attempts":1,"last_error":"","decisions":[],"policy_version":"v","received_by":{"bravo":7}}"#;
        db.write(|t| {
            t.put(k("o", "m"), old.as_bytes().to_vec());
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let rec = read_outbox(&db, "m").unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.attempts, rec.received_by.get("bravo")),
            (OutboxStatus::Routed, 1, Some(&7))
        );
    }

    /// Rewrites a message stored in this version's format (record and
    /// envelope in one value) the way earlier versions stored it: the
    /// record alone, the envelope under `ekey`.
    async fn store_as_earlier(db: &Db, key: Vec<u8>, ekey: Vec<u8>) {
        db.write(move |t| {
            let stored = Stored::split(&key, t.get(&key)?.unwrap())?;
            t.put(ekey, stored.envelope.unwrap());
            t.put(key, stored.record);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn messages_stored_by_earlier_versions_read_push_and_change_alike() {
        let db = Db::in_memory();
        let env = message();
        let (_, rec) = enqueue(&db, &env, record(&env, OutboxStatus::Queued)).await;
        let id = rec.message_id;
        store_as_earlier(&db, k("o", &id), k("oe", &id)).await;
        assert!(db.get(&k("o", &id)).unwrap().unwrap().starts_with(b"{"));
        let p = pending(&db, 10).unwrap();
        assert_eq!(p[0].envelope, pb::Envelope::from(&env));
        assert!(p[0].releasable);
        note_attempts(&db, vec![id.clone()], "down".into())
            .await
            .unwrap();
        let (rec, shown) = outbox_message(&db, &id).unwrap().unwrap();
        assert_eq!((rec.attempts, shown), (1, pb::Envelope::from(&env)));

        // An inbox message of an earlier version: read, marked read, then
        // withdrawn, which takes its old envelope with it.
        let in_id = uuid::Uuid::new_v4().to_string();
        let mut labels = pb::Envelope::from(&env).labels.unwrap();
        labels.message_id = in_id.clone();
        let delivered = pb::Envelope {
            labels: Some(labels),
            body: b"content".to_vec(),
        };
        let arrival = Arrival::Message {
            envelope: Box::new(delivered.clone()),
            record: InboxRecord {
                message_id: in_id.clone(),
                hub_seq: 1,
                received_at_ms: 1,
                marking: "CONFIDENTIAL".into(),
                title: "t".into(),
                read_by: String::new(),
                read_at_ms: 0,
                withdrawn: None,
                erase_at_ms: 0,
                leaf_index: 0,
                tree_size: 0,
                unverified_log: false,
            },
        };
        store_arrivals(&db, vec![arrival], 1).await.unwrap();
        assert_eq!(inbox_message(&db, &in_id).unwrap().unwrap().1, delivered);
        store_as_earlier(&db, k("i", &in_id), k("ie", &in_id)).await;
        assert_eq!(inbox_message(&db, &in_id).unwrap().unwrap().1, delivered);
        mark_read(&db, in_id.clone(), BOB.into(), 5).await.unwrap();
        assert!(db.get(&k("i", &in_id)).unwrap().unwrap().starts_with(b"{"));
        let note = WithdrawalNote {
            cause: "retracted".into(),
            reason: "wrong".into(),
            at_ms: 9,
        };
        let withdrawal = Arrival::Withdrawal {
            seq: 2,
            message_id: in_id.clone(),
            origin: "alpha".into(),
            marking: "CONFIDENTIAL".into(),
            note,
        };
        store_arrivals(&db, vec![withdrawal], 2).await.unwrap();
        assert_eq!(db.get(&k("ie", &in_id)).unwrap(), None);
        let (rec, kept) = inbox_message(&db, &in_id).unwrap().unwrap();
        assert_eq!(rec.read_by, BOB);
        assert!(rec.withdrawn.is_some());
        assert!(kept.body.is_empty());
        assert_eq!(kept.labels, delivered.labels);
        assert_eq!(inbox(&db, 10, false).unwrap().len(), 1);
    }

    fn forward_arrival(id: &str) -> Arrival {
        Arrival::ForwardRequest(Box::new(ForwardRequestRecord {
            request_id: id.into(),
            message_id: uuid::Uuid::new_v4().to_string(),
            requester: "bravo".into(),
            requested_by: "spiffe://liaison.test/org/bravo/officer/bob".into(),
            to: "charlie".into(),
            reason: "joint operation".into(),
            requested_at_ms: 5,
            hub_seq: 1,
            state: ForwardDecisionState::Pending,
            decided_by: String::new(),
            decided_at_ms: 0,
            decision_reason: String::new(),
            hub_outcome: String::new(),
        }))
    }

    #[tokio::test]
    async fn a_forward_decision_is_queued_once_and_cannot_be_reversed() {
        let db = Db::in_memory();
        let id = uuid::Uuid::new_v4().to_string();
        store_arrivals(&db, vec![forward_arrival(&id)], 1)
            .await
            .unwrap();
        // A redelivery changes nothing.
        store_arrivals(&db, vec![forward_arrival(&id)], 1)
            .await
            .unwrap();
        let listed = forward_requests(&db, 100, true).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, ForwardDecisionState::Pending);
        assert!(pending_forward_decisions(&db, 10).unwrap().is_empty());

        let (rec, already) = decide_forward(&db, id.clone(), true, String::new(), by(ALICE))
            .await
            .unwrap();
        assert!(!already);
        assert_eq!(rec.state, ForwardDecisionState::Approved);
        assert_eq!(rec.decided_by, ALICE);
        let queued = pending_forward_decisions(&db, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert!(queued[0].approve);
        assert!(forward_requests(&db, 100, true).unwrap().is_empty());

        // The same decision again is idempotent; the other is refused.
        let (again, already) = decide_forward(&db, id.clone(), true, String::new(), by(BOB))
            .await
            .unwrap();
        assert!(already);
        assert_eq!(again.decided_by, ALICE);
        assert_eq!(pending_forward_decisions(&db, 10).unwrap().len(), 1);
        let err = decide_forward(&db, id.clone(), false, "no".into(), by(BOB))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::ForwardDecided { .. }), "{err}");

        finish_forward_decision(&db, id.clone(), Ok("forwarded".into()))
            .await
            .unwrap();
        assert!(pending_forward_decisions(&db, 10).unwrap().is_empty());
        assert_eq!(
            forward_requests(&db, 100, false).unwrap()[0].hub_outcome,
            "forwarded"
        );

        let err = decide_forward(&db, "nope".into(), true, String::new(), by(BOB))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::UnknownForwardRequest(_)), "{err}");
    }
}
