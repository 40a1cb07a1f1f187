//! The node's durable outbox and inbox on top of [`liaison_store::Db`].
//!
//! Keys:
//! - `o/<id>`: outbox record (JSON), `oe/<id>`: its envelope (encoded proto);
//! - `ol/<n>`: outbox order (newest last), `op/<n>`: still to push to the hub;
//! - `i/<id>`: inbox record (JSON), `ie/<id>`: its envelope;
//! - `il/<n>`: inbox order (newest last);
//! - `meta/*`: counters and the last hub position stored.

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, to_json as json, Db, StoreError};
use liaison_types::{DecisionRecord, Envelope};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// An outbox entry's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting to be accepted by the hub.
    Queued,
    /// Accepted and routed by the hub.
    Routed,
    /// Refused by the hub for good (for example an unknown body in a list).
    Rejected,
}

impl OutboxStatus {
    /// The name shown to officers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Routed => "routed",
            Self::Rejected => "rejected",
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
    /// Policy version that routed it.
    pub policy_version: String,
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
}

fn decode_env(key: &[u8], bytes: &[u8]) -> Result<pb::Envelope, StoreError> {
    pb::Envelope::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: e.to_string(),
    })
}

fn k(prefix: &str, id: &str) -> Vec<u8> {
    format!("{prefix}/{id}").into_bytes()
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

/// Puts a validated message in the outbox and the push queue, atomically.
pub async fn enqueue(db: &Db, env: &Envelope, record: OutboxRecord) -> Result<Queued, NodeError> {
    let encoded = pb::Envelope::from(env).encode_to_vec();
    db.write(move |txn| {
        let key = k("o", &record.message_id);
        if let Some(existing) = txn.get(&key)? {
            let existing: OutboxRecord = parse(&key, &existing)?;
            return if existing.digest == record.digest {
                Ok(Queued::Duplicate)
            } else {
                Err(NodeError::IdReused(record.message_id))
            };
        }
        let n = keys::u64_value(txn.get(OUTBOX_NEXT)?) + 1;
        txn.put(OUTBOX_NEXT, n.to_be_bytes().to_vec());
        txn.put(
            keys::seq_key(b"ol/", n),
            record.message_id.clone().into_bytes(),
        );
        txn.put(
            keys::seq_key(b"op/", n),
            record.message_id.clone().into_bytes(),
        );
        txn.put(k("oe", &record.message_id), encoded);
        txn.put(key, json(&record));
        Ok(Queued::New)
    })
    .await
}

/// The oldest messages still to push: `(push position, id, envelope)`.
pub fn pending(db: &Db, limit: usize) -> Result<Vec<(u64, String, pb::Envelope)>, StoreError> {
    db.scan_prefix(b"op/", limit)?
        .into_iter()
        .map(|(key, id)| {
            let id = String::from_utf8_lossy(&id).into_owned();
            let ekey = k("oe", &id);
            let env = db.get(&ekey)?.ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&ekey).into_owned(),
                problem: "pending message has no envelope".into(),
            })?;
            Ok((
                keys::seq_of(&key).unwrap_or_default(),
                id,
                decode_env(&ekey, &env)?,
            ))
        })
        .collect()
}

/// Records the end of pushing one message: routed (with the hub's answer)
/// or rejected for good (with the reason). Removes it from the push queue.
pub async fn finish_push(
    db: &Db,
    push_seq: u64,
    id: String,
    outcome: Result<pb::SubmitResponse, String>,
) -> Result<(), NodeError> {
    db.write(move |txn| {
        let key = k("o", &id);
        let mut rec: OutboxRecord = match txn.get(&key)? {
            Some(b) => parse(&key, &b)?,
            None => return Ok(()),
        };
        rec.attempts += 1;
        match outcome {
            Ok(resp) => {
                rec.status = OutboxStatus::Routed;
                rec.decisions = resp.decisions.iter().map(DecisionRecord::from).collect();
                rec.policy_version = resp.policy_version;
                rec.last_error.clear();
            }
            Err(why) => {
                rec.status = OutboxStatus::Rejected;
                rec.last_error = why;
            }
        }
        txn.put(key, json(&rec));
        txn.delete(keys::seq_key(b"op/", push_seq));
        Ok(())
    })
    .await
}

/// Records a failed push attempt that will be retried.
pub async fn note_attempt(db: &Db, id: String, error: String) -> Result<(), NodeError> {
    db.write(move |txn| {
        let key = k("o", &id);
        if let Some(b) = txn.get(&key)? {
            let mut rec: OutboxRecord = parse(&key, &b)?;
            rec.attempts += 1;
            rec.last_error = error;
            txn.put(key, json(&rec));
        }
        Ok(())
    })
    .await
}

/// The newest outbox records.
pub fn outbox(db: &Db, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
    db.scan_rev(b"ol/", &keys::prefix_end(b"ol/"), limit)?
        .into_iter()
        .filter_map(|(_, id)| {
            let key = k("o", &String::from_utf8_lossy(&id));
            db.get(&key)
                .transpose()
                .map(|r| r.and_then(|b| parse(&key, &b)))
        })
        .collect()
}

/// The last hub position stored in the inbox.
pub fn hub_cursor(db: &Db) -> Result<u64, StoreError> {
    Ok(keys::u64_value(db.get(HUB_CURSOR)?))
}

/// A delivery ready to store.
#[derive(Debug)]
pub struct Arrival {
    /// Hub position.
    pub seq: u64,
    /// Validated envelope.
    pub envelope: pb::Envelope,
    /// Bookkeeping.
    pub record: InboxRecord,
}

/// Stores a batch of deliveries and advances the hub cursor, atomically. A
/// message already in the inbox (a redelivery after a crash) is not stored
/// twice. Returns how many were new.
pub async fn store_arrivals(
    db: &Db,
    arrivals: Vec<Arrival>,
    cursor: u64,
) -> Result<usize, NodeError> {
    db.write(move |txn| {
        let mut new = 0;
        for a in arrivals {
            let key = k("i", &a.record.message_id);
            if txn.get(&key)?.is_some() {
                continue;
            }
            let n = keys::u64_value(txn.get(INBOX_NEXT)?) + 1;
            txn.put(INBOX_NEXT, n.to_be_bytes().to_vec());
            txn.put(
                keys::seq_key(b"il/", n),
                a.record.message_id.clone().into_bytes(),
            );
            txn.put(k("ie", &a.record.message_id), a.envelope.encode_to_vec());
            txn.put(key, json(&a.record));
            new += 1;
        }
        let old = keys::u64_value(txn.get(HUB_CURSOR)?);
        txn.put(HUB_CURSOR, old.max(cursor).to_be_bytes().to_vec());
        Ok(new)
    })
    .await
}

/// One inbox message: bookkeeping and envelope.
pub fn inbox_message(db: &Db, id: &str) -> Result<Option<(InboxRecord, pb::Envelope)>, StoreError> {
    let key = k("i", id);
    let Some(rec) = db.get(&key)? else {
        return Ok(None);
    };
    let rec: InboxRecord = parse(&key, &rec)?;
    let ekey = k("ie", id);
    let env = db.get(&ekey)?.ok_or_else(|| StoreError::Corrupt {
        key: String::from_utf8_lossy(&ekey).into_owned(),
        problem: "inbox message has no envelope".into(),
    })?;
    Ok(Some((rec, decode_env(&ekey, &env)?)))
}

/// The newest inbox messages.
pub fn inbox(
    db: &Db,
    limit: usize,
    unread_only: bool,
) -> Result<Vec<(InboxRecord, pb::Envelope)>, StoreError> {
    let mut out = Vec::new();
    let mut end = keys::prefix_end(b"il/");
    while out.len() < limit {
        let page = db.scan_rev(b"il/", &end, 256)?;
        let Some((last_key, _)) = page.last() else {
            break;
        };
        end = last_key.clone();
        for (_, id) in &page {
            if let Some((rec, env)) = inbox_message(db, &String::from_utf8_lossy(id))? {
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
            Some(b) => parse(&key, &b)?,
            None => return Err(NodeError::NotFound(id)),
        };
        if rec.read_at_ms == 0 {
            rec.read_by = officer;
            rec.read_at_ms = now_ms;
            txn.put(key, json(&rec));
        }
        Ok(rec)
    })
    .await
}
