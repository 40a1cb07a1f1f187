//! Plans on the node: the body's own plans (with their targets in clear,
//! which never leave the node), the other bodies' plans that reached the
//! inbox (the calendar), and the deconfliction notices the hub sent.
//!
//! Keys:
//! - `pl/<plan id>`: a plan this body originated, as of its latest version
//!   (`OwnPlanRecord`, JSON), written with the version's outbox entry;
//! - `pt/<message id>`: the keyed hashes of that version's targets, for the
//!   push (a `SubmitRequest` holding only `targets`, encoded proto);
//! - `pv/<plan id>`: another body's plan as its latest version to reach the
//!   inbox (`VisiblePlanRecord`, JSON), written with the inbox entry;
//! - `pn/<reference>`: the latest deconfliction notice of an overlap, and
//!   what the body's officers did with it (`NoticeRecord`, JSON).

use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, keys, to_json as json, Db, Reader, StoreError, Txn};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::log_event;
use crate::NodeError;

/// A plan this body originated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnPlanRecord {
    /// The plan.
    pub plan_id: String,
    /// Its latest version, and the message that carried it.
    pub version: u32,
    /// See `version`.
    pub message_id: String,
    /// `operational_plan` or `strategic_plan`.
    pub kind: String,
    /// `new`, `update`, `close` or `cancel`: what the latest version did.
    pub action: String,
    /// Its title.
    pub title: String,
    /// Its window (ms since the epoch), start included, end excluded.
    pub window_start_ms: i64,
    /// See `window_start_ms`.
    pub window_end_ms: i64,
    /// Regions, countries and crime areas, from the labels.
    pub regions: Vec<String>,
    /// See `regions`.
    pub countries: Vec<String>,
    /// See `regions`.
    pub crime_areas: Vec<String>,
    /// Its targets, normalised: kind and value.
    pub targets: Vec<(String, String)>,
    /// Whom to contact.
    pub contact: String,
    /// The officer who sent the latest version, and when.
    pub submitted_by: String,
    /// See `submitted_by`.
    pub updated_at_ms: i64,
}

impl OwnPlanRecord {
    /// `active`, `closed` or `cancelled`.
    pub fn status(&self) -> &'static str {
        match self.action.as_str() {
            "close" => "closed",
            "cancel" => "cancelled",
            _ => "active",
        }
    }
}

/// A version of one of this body's plans, to store with its outbox entry.
#[derive(Debug, Clone)]
pub struct PlanWrite {
    /// The plan as this version makes it.
    pub own: OwnPlanRecord,
    /// The version this one follows (checked in the write: another
    /// officer's version in between is a conflict); `None` for a new plan.
    pub after_version: Option<u32>,
    /// The targets' keyed hashes, for the hub.
    pub targets: Vec<pb::TargetHash>,
}

/// Another body's plan, from the inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisiblePlanRecord {
    /// The plan, its latest version and that version's message.
    pub plan_id: String,
    /// See `plan_id`.
    pub version: u32,
    /// See `plan_id`.
    pub message_id: String,
    /// The originating body.
    pub origin: String,
    /// `operational_plan` or `strategic_plan`.
    pub kind: String,
    /// What the latest version did.
    pub action: String,
    /// Title and window.
    pub title: String,
    /// See `title`.
    pub window_start_ms: i64,
    /// See `title`.
    pub window_end_ms: i64,
    /// Regions, countries, crime areas.
    pub regions: Vec<String>,
    /// See `regions`.
    pub countries: Vec<String>,
    /// See `regions`.
    pub crime_areas: Vec<String>,
    /// Classification on the common scale.
    pub classification: String,
    /// Whom to contact.
    pub contact: String,
    /// When the latest version reached this node.
    pub received_at_ms: i64,
}

impl VisiblePlanRecord {
    /// `active`, `closed` or `cancelled`.
    pub fn status(&self) -> &'static str {
        match self.action.as_str() {
            "close" => "closed",
            "cancel" => "cancelled",
            _ => "active",
        }
    }
}

/// A deconfliction notice as the node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// The latest notice of the overlap (encoded proto, hex).
    #[serde(with = "notice_hex")]
    pub notice: pb::DeconflictionNotice,
    /// `open`, `acknowledged`, `resolved` or `cleared`.
    pub state: String,
    /// Who acknowledged or resolved it, when, and the note.
    pub handled_by: String,
    /// See `handled_by`.
    pub handled_at_ms: i64,
    /// See `handled_by`.
    pub note: String,
    /// When the latest notice was stored.
    pub received_at_ms: i64,
    /// Its position in the hub's queue.
    pub hub_seq: u64,
}

mod notice_hex {
    use liaison_proto::v1 as pb;
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &pb::DeconflictionNotice, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(n.encode_to_vec()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<pb::DeconflictionNotice, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        pb::DeconflictionNotice::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

fn own_key(plan_id: &str) -> Vec<u8> {
    format!("pl/{plan_id}").into_bytes()
}

fn targets_key(message_id: &str) -> Vec<u8> {
    format!("pt/{message_id}").into_bytes()
}

fn visible_key(plan_id: &str) -> Vec<u8> {
    format!("pv/{plan_id}").into_bytes()
}

fn notice_key(reference: &str) -> Vec<u8> {
    format!("pn/{reference}").into_bytes()
}

fn all<T: serde::de::DeserializeOwned>(db: &Db, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
    let end = keys::prefix_end(prefix);
    let mut out = Vec::new();
    let mut next = prefix.to_vec();
    loop {
        let page = db.scan(&next, &end, 1024)?;
        let Some((last, _)) = page.last() else { break };
        next = last.clone();
        next.push(0);
        let full = page.len() == 1024;
        for (k, v) in page {
            out.push(parse(&k, &v)?);
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

/// One of this body's plans.
pub fn own_plan(r: &impl Reader, plan_id: &str) -> Result<Option<OwnPlanRecord>, StoreError> {
    let key = own_key(plan_id);
    r.get(&key)?.map(|v| parse(&key, &v)).transpose()
}

/// Every plan this body originated.
pub fn own_plans(db: &Db) -> Result<Vec<OwnPlanRecord>, StoreError> {
    all(db, b"pl/")
}

/// Every other body's plan that reached the inbox.
pub fn visible_plans(db: &Db) -> Result<Vec<VisiblePlanRecord>, StoreError> {
    all(db, b"pv/")
}

/// Every notice.
pub fn notices(db: &Db) -> Result<Vec<NoticeRecord>, StoreError> {
    all(db, b"pn/")
}

/// One notice.
pub fn notice(db: &Db, reference: &str) -> Result<Option<NoticeRecord>, StoreError> {
    let key = notice_key(reference);
    db.get(&key)?.map(|v| parse(&key, &v)).transpose()
}

/// The targets' keyed hashes to push with a message (none for most).
pub fn push_targets(r: &impl Reader, message_id: &str) -> Result<Vec<pb::TargetHash>, StoreError> {
    let key = targets_key(message_id);
    match r.get(&key)? {
        None => Ok(Vec::new()),
        Some(v) => pb::SubmitRequest::decode(v.as_slice())
            .map(|r| r.targets)
            .map_err(|e| StoreError::corrupt(&key, e)),
    }
}

/// Stores a plan's version with its outbox entry (same transaction).
pub(super) fn write_own(txn: &mut Txn<'_>, w: &PlanWrite) -> Result<(), NodeError> {
    let held = own_plan(txn, &w.own.plan_id)?;
    let held_version = held.as_ref().map(|h| h.version);
    if held_version != w.after_version {
        return Err(NodeError::PlanChanged {
            plan_id: w.own.plan_id.clone(),
            version: held_version.unwrap_or(0),
        });
    }
    txn.put(own_key(&w.own.plan_id), json(&w.own));
    if !w.targets.is_empty() {
        let holder = pb::SubmitRequest {
            targets: w.targets.clone(),
            ..Default::default()
        };
        txn.put(targets_key(&w.own.message_id), holder.encode_to_vec());
    }
    Ok(())
}

/// Notes another body's plan version that is being stored in the inbox.
pub(super) fn see_plan(
    txn: &mut Txn<'_>,
    envelope: &pb::Envelope,
    received_at_ms: i64,
) -> Result<(), StoreError> {
    let Some(labels) = envelope.labels.as_ref() else {
        return Ok(());
    };
    let Some(plan) = labels.plan.as_ref() else {
        return Ok(());
    };
    let Ok(body) = pb::Body::decode(envelope.body.as_slice()) else {
        return Ok(());
    };
    let (start, end, body_regions) = match &body.content {
        Some(pb::body::Content::OperationalPlan(p)) => {
            (p.window_start_ms, p.window_end_ms, p.regions.clone())
        }
        Some(pb::body::Content::StrategicPlan(p)) => {
            (p.window_start_ms, p.window_end_ms, Vec::new())
        }
        _ => return Ok(()),
    };
    let regions: std::collections::BTreeSet<String> =
        labels.regions.iter().cloned().chain(body_regions).collect();
    let key = visible_key(&plan.plan_id);
    if let Some(v) = txn.get(&key)? {
        let held: VisiblePlanRecord = parse(&key, &v)?;
        // A later version reached the inbox first (a redelivery).
        if held.version >= plan.version {
            return Ok(());
        }
    }
    let kind = liaison_types::Kind::from_proto(labels.kind)
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    let classification = liaison_types::Classification::from_proto(labels.classification)
        .map(|c| c.as_str().to_owned())
        .unwrap_or_default();
    let action = liaison_types::PlanAction::from_proto(plan.action)
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let rec = VisiblePlanRecord {
        plan_id: plan.plan_id.clone(),
        version: plan.version,
        message_id: labels.message_id.clone(),
        origin: labels.origin.clone(),
        kind,
        action,
        title: body.title.clone(),
        window_start_ms: start,
        window_end_ms: end,
        regions: regions.into_iter().collect(),
        countries: labels.countries.clone(),
        crime_areas: labels.crime_areas.clone(),
        classification,
        contact: plan.contact.clone(),
        received_at_ms,
    };
    txn.put(key, json(&rec));
    Ok(())
}

/// Stores a deconfliction notice: the latest of its overlap replaces the
/// one held. A new or changed overlap needs attention again (`open`); a
/// cleared one is `cleared`. A redelivery (the same hub position) changes
/// nothing.
pub(super) fn store_notice(
    txn: &mut Txn<'_>,
    notice: pb::DeconflictionNotice,
    hub_seq: u64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let key = notice_key(&notice.reference);
    let held: Option<NoticeRecord> = txn.get(&key)?.map(|v| parse(&key, &v)).transpose()?;
    if held.as_ref().is_some_and(|h| h.hub_seq >= hub_seq) {
        return Ok(());
    }
    let state = if notice.change == pb::NoticeChange::OverlapCleared as i32 {
        "cleared"
    } else {
        "open"
    };
    let (handled_by, handled_at_ms, note) = held
        .map(|h| (h.handled_by, h.handled_at_ms, h.note))
        .unwrap_or_default();
    let rec = NoticeRecord {
        notice,
        state: state.to_owned(),
        handled_by,
        handled_at_ms,
        note,
        received_at_ms: now_ms,
        hub_seq,
    };
    txn.put(key, json(&rec));
    Ok(())
}

/// An officer acknowledges a notice, or resolves it with a note; recorded
/// in the node's own log (the note stays in the notice record, not the
/// log). The same state again changes nothing; a cleared notice cannot be
/// acknowledged, and a resolved one not acknowledged again.
pub async fn handle_notice(
    db: &Db,
    reference: String,
    state: &'static str,
    note: String,
    actor: String,
    now_ms: i64,
) -> Result<NoticeRecord, NodeError> {
    db.write(move |txn| {
        let key = notice_key(&reference);
        let Some(v) = txn.get(&key)? else {
            return Err(NodeError::UnknownNotice(reference));
        };
        let mut rec: NoticeRecord = parse(&key, &v)?;
        if rec.state == state && (state != "resolved" || rec.note == note) {
            return Ok(rec);
        }
        let refused = match (rec.state.as_str(), state) {
            ("cleared", "acknowledged") => Some("the hub cleared it: the overlap is gone"),
            ("resolved", "acknowledged") => Some("it is already resolved"),
            _ => None,
        };
        if let Some(why) = refused {
            return Err(NodeError::NoticeState {
                reference,
                problem: format!("cannot be acknowledged: {why}"),
            });
        }
        rec.state = state.to_owned();
        rec.handled_by = actor.clone();
        rec.handled_at_ms = now_ms;
        if state == "resolved" {
            rec.note = note;
        }
        txn.put(key, json(&rec));
        log_event(
            txn,
            pb::NodeLogRecord {
                at_ms: now_ms,
                event: format!("notice_{state}"),
                message_id: rec.notice.message_id.clone(),
                actor,
                reason: format!(
                    "deconfliction notice {} for plan {}",
                    rec.notice.reference, rec.notice.plan_id
                ),
                hub_seq: rec.hub_seq,
                ..Default::default()
            },
        )?;
        Ok(rec)
    })
    .await
}
