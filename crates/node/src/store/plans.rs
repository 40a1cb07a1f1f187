//! Plans on the node: the body's own plans (with their targets in clear,
//! which never leave the node), the other bodies' plans that reached the
//! inbox (the calendar), and the deconfliction notices the hub sent.
//!
//! Keys:
//! - `pl/<plan id>`: a plan this body originated: the latest version the
//!   hub accepted and every version sent after it (`OwnPlanVersions`,
//!   JSON), each added with its outbox entry. Where each version stands
//!   (in force, waiting, dead) is read from its outbox record, never kept
//!   twice;
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

use super::{log_event, read_outbox, OutboxStatus};
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
        status_after(&self.action)
    }
}

/// A plan's status after a version that did `action` (`new`, `update`,
/// `close`, `cancel`).
fn status_after(action: &str) -> &'static str {
    match action {
        "close" => "closed",
        "cancel" => "cancelled",
        _ => "active",
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
        status_after(&self.action)
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

/// What the node keeps of one of its plans, at `pl/<plan id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OwnPlanVersions {
    /// The highest version number given so far: a version that died (refused
    /// by four-eyes, rejected by the hub, withdrawn) keeps its number.
    last_version: u32,
    /// The latest version the hub accepted (if it is known yet) and the
    /// versions sent after it, oldest first.
    versions: Vec<OwnPlanRecord>,
}

/// Where a version of a plan stands, from its outbox record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// The hub accepted it (it was routed), and whether this body retracted
    /// it since (the hub withdraws a plan whose latest version is
    /// retracted).
    Accepted { retracted: bool },
    /// Awaiting four-eyes approval, or queued for the hub.
    Waiting(OutboxStatus),
    /// Refused, rejected or withdrawn: it never reached the hub, or the hub
    /// refused it; the plan stands as it was.
    Dead,
}

fn standing(r: &impl Reader, message_id: &str) -> Result<Standing, StoreError> {
    Ok(match read_outbox(r, message_id)?.map(|rec| rec.status) {
        Some(OutboxStatus::Routed) => Standing::Accepted { retracted: false },
        Some(OutboxStatus::Retracted) => Standing::Accepted { retracted: true },
        Some(s @ (OutboxStatus::AwaitingApproval | OutboxStatus::Queued)) => Standing::Waiting(s),
        Some(OutboxStatus::Refused | OutboxStatus::Rejected | OutboxStatus::Withdrawn) | None => {
            Standing::Dead
        }
    })
}

/// One of this body's plans as it stands: the version in force at the hub
/// and the versions sent after it that the hub has not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPlan {
    /// The version to show as the plan: the latest the hub accepted or,
    /// while `accepted` is false, its first version, still waiting.
    pub shown: OwnPlanRecord,
    /// Whether the hub accepted `shown`.
    pub accepted: bool,
    /// Whether `shown`, accepted, was retracted since: the hub withdrew the
    /// plan.
    pub withdrawn: bool,
    /// The versions after `shown` awaiting approval or queued for the hub,
    /// oldest first, with their outbox status.
    pub waiting: Vec<(OwnPlanRecord, OutboxStatus)>,
    /// The highest version number given so far.
    pub last_version: u32,
}

impl OwnPlan {
    /// The version a new one follows: the last one waiting, or else the one
    /// shown.
    pub fn latest(&self) -> &OwnPlanRecord {
        self.waiting.last().map_or(&self.shown, |(w, _)| w)
    }

    /// `active`, `closed` or `cancelled` as the hub holds it, `withdrawn`
    /// once its version in force was retracted; `pending` while its first
    /// version waits.
    pub fn status(&self) -> &'static str {
        match (self.accepted, self.withdrawn) {
            (true, true) => "withdrawn",
            (true, false) => self.shown.status(),
            (false, _) => "pending",
        }
    }

    /// The status a new version would follow: that of the last version
    /// sent, or `withdrawn` once the hub withdrew the plan.
    pub fn next_status(&self) -> &'static str {
        if self.accepted && self.withdrawn {
            "withdrawn"
        } else {
            self.latest().status()
        }
    }
}

fn read_versions(r: &impl Reader, plan_id: &str) -> Result<Option<OwnPlanVersions>, StoreError> {
    let key = own_key(plan_id);
    r.get(&key)?.map(|v| parse(&key, &v)).transpose()
}

/// A plan's versions with where each stands; `None` if none is accepted or
/// waiting.
fn resolve(r: &impl Reader, held: OwnPlanVersions) -> Result<Option<OwnPlan>, StoreError> {
    let mut accepted: Option<(OwnPlanRecord, bool)> = None;
    let mut waiting = Vec::new();
    for v in held.versions {
        match standing(r, &v.message_id)? {
            Standing::Accepted { retracted } => {
                // The hub keeps a plan at its highest accepted version.
                if accepted.as_ref().is_none_or(|(a, _)| a.version < v.version) {
                    waiting.retain(|(w, _): &(OwnPlanRecord, _)| w.version > v.version);
                    accepted = Some((v, retracted));
                }
            }
            Standing::Waiting(status) => waiting.push((v, status)),
            Standing::Dead => {}
        }
    }
    let (shown, accepted, withdrawn) = match accepted {
        Some((a, retracted)) => (a, true, retracted),
        None if waiting.is_empty() => return Ok(None),
        None => (waiting.remove(0).0, false, false),
    };
    Ok(Some(OwnPlan {
        shown,
        accepted,
        withdrawn,
        waiting,
        last_version: held.last_version,
    }))
}

/// One of this body's plans.
pub fn own_plan(r: &impl Reader, plan_id: &str) -> Result<Option<OwnPlan>, StoreError> {
    match read_versions(r, plan_id)? {
        None => Ok(None),
        Some(held) => resolve(r, held),
    }
}

/// Every plan this body originated that has a version accepted or waiting.
pub fn own_plans(db: &Db) -> Result<Vec<OwnPlan>, StoreError> {
    let mut out = Vec::new();
    for held in all::<OwnPlanVersions>(db, b"pl/")? {
        out.extend(resolve(db, held)?);
    }
    Ok(out)
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

/// Stores a plan's version with its outbox entry (same transaction). The
/// plan itself moves only once the hub accepts the version: until then it
/// waits beside the version in force.
pub(super) fn write_own(txn: &mut Txn<'_>, w: &PlanWrite) -> Result<(), NodeError> {
    let held = read_versions(txn, &w.own.plan_id)?;
    let last_version = held.as_ref().map_or(0, |h| h.last_version);
    let plan = match held {
        Some(h) => resolve(txn, h)?,
        None => None,
    };
    let latest = plan.as_ref().map(|p| p.latest().version);
    if latest != w.after_version || w.own.version <= last_version {
        return Err(NodeError::PlanChanged {
            plan_id: w.own.plan_id.clone(),
            version: latest.unwrap_or(0),
        });
    }
    // Dead versions, and accepted ones below the one in force, are dropped.
    let mut versions: Vec<OwnPlanRecord> = match plan {
        None => Vec::new(),
        Some(p) => std::iter::once(p.shown)
            .chain(p.waiting.into_iter().map(|(v, _)| v))
            .collect(),
    };
    versions.push(w.own.clone());
    let stored = OwnPlanVersions {
        last_version: w.own.version,
        versions,
    };
    txn.put(own_key(&w.own.plan_id), json(&stored));
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

/// Forgets another body's plan in the calendar when the inbox message of
/// its latest version is withdrawn (retracted, expired, its retention
/// ended): what the calendar shows of it (title, window, places) is that
/// message's content.
pub(super) fn forget_visible(
    txn: &mut Txn<'_>,
    labels: Option<&pb::Labels>,
    message_id: &str,
) -> Result<(), StoreError> {
    let Some(plan) = labels.and_then(|l| l.plan.as_ref()) else {
        return Ok(());
    };
    let key = visible_key(&plan.plan_id);
    if let Some(v) = txn.get(&key)? {
        let held: VisiblePlanRecord = parse(&key, &v)?;
        if held.message_id == message_id {
            txn.delete(key);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "6a1f0c2e-0000-4000-8000-000000000001";
    const REF: &str = "dx-3f1c0a9b27d4e5f6";
    const ALICE: &str = "spiffe://liaison.test/org/alpha/officer/alice";
    const BOB: &str = "spiffe://liaison.test/org/alpha/officer/bob";

    fn notice_of(
        reference: &str,
        change: pb::NoticeChange,
        title: &str,
    ) -> pb::DeconflictionNotice {
        pb::DeconflictionNotice {
            reference: reference.into(),
            plan_id: PLAN.into(),
            plan_version: 1,
            message_id: PLAN.into(),
            kind: pb::OverlapKind::Conflict as i32,
            change: change as i32,
            contact: "bravo operations desk".into(),
            noticed_at_ms: 50,
            other_plan_id: "6a1f0c2e-0000-4000-8000-0000000000b0".into(),
            other_plan_version: 1,
            other_body: "bravo".into(),
            other_title: title.into(),
            ..Default::default()
        }
    }

    async fn store(db: &Db, n: pb::DeconflictionNotice, hub_seq: u64, now_ms: i64) {
        db.write(move |txn| store_notice(txn, n, hub_seq, now_ms))
            .await
            .unwrap();
    }

    fn held(db: &Db, reference: &str) -> NoticeRecord {
        notice(db, reference)
            .unwrap()
            .expect("the notice is stored")
    }

    fn log(db: &Db) -> Vec<pb::NodeLogRecord> {
        crate::store::node_log(db, 0, 1000).unwrap().0
    }

    async fn handle(
        db: &Db,
        reference: &str,
        state: &'static str,
        note: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<NoticeRecord, NodeError> {
        handle_notice(
            db,
            reference.into(),
            state,
            note.into(),
            actor.into(),
            now_ms,
        )
        .await
    }

    #[tokio::test]
    async fn the_latest_notice_of_an_overlap_replaces_the_one_held_and_reopens_it() {
        let db = Db::in_memory();
        store(
            &db,
            notice_of(REF, pb::NoticeChange::OverlapFound, "first"),
            5,
            100,
        )
        .await;
        let first = held(&db, REF);
        assert_eq!(first.state, "open");
        assert_eq!((first.hub_seq, first.received_at_ms), (5, 100));
        assert_eq!(first.notice.other_title, "first");
        assert!(first.handled_by.is_empty() && first.note.is_empty());
        assert_eq!(first.handled_at_ms, 0);

        // A redelivery (the same position) or an older one changes nothing.
        for seq in [5, 4, 1] {
            store(
                &db,
                notice_of(REF, pb::NoticeChange::OverlapChanged, "stale"),
                seq,
                200,
            )
            .await;
            assert_eq!(held(&db, REF), first, "hub_seq {seq}");
        }

        // Handled, then changed by the hub: open again, what was done kept.
        let resolved = handle(&db, REF, "resolved", "boarding moved to day 14", ALICE, 300)
            .await
            .unwrap();
        assert_eq!(resolved.state, "resolved");
        store(
            &db,
            notice_of(REF, pb::NoticeChange::OverlapChanged, "second"),
            8,
            400,
        )
        .await;
        let changed = held(&db, REF);
        assert_eq!(changed.state, "open");
        assert_eq!(
            changed.notice.change,
            pb::NoticeChange::OverlapChanged as i32
        );
        assert_eq!(changed.notice.other_title, "second");
        assert_eq!((changed.hub_seq, changed.received_at_ms), (8, 400));
        assert_eq!(changed.handled_by, ALICE);
        assert_eq!(changed.handled_at_ms, 300);
        assert_eq!(changed.note, "boarding moved to day 14");

        // Cleared by the hub.
        store(
            &db,
            notice_of(REF, pb::NoticeChange::OverlapCleared, "second"),
            9,
            500,
        )
        .await;
        let cleared = held(&db, REF);
        assert_eq!(cleared.state, "cleared");
        assert_eq!(cleared.hub_seq, 9);
        assert_eq!(cleared.handled_by, ALICE);
        assert_eq!(cleared.note, "boarding moved to day 14");

        // A later change of a cleared overlap is open again; other
        // overlaps are kept beside it.
        store(
            &db,
            notice_of(REF, pb::NoticeChange::OverlapChanged, "third"),
            12,
            600,
        )
        .await;
        assert_eq!(held(&db, REF).state, "open");
        store(
            &db,
            notice_of("dx-0000000000000001", pb::NoticeChange::OverlapFound, "x"),
            13,
            700,
        )
        .await;
        assert_eq!(notices(&db).unwrap().len(), 2);
        assert!(notice(&db, "dx-ffffffffffffffff").unwrap().is_none());
        // Storing notices is not an officer's act: only the resolution is
        // in the node log.
        let events: Vec<String> = log(&db).into_iter().map(|r| r.event).collect();
        assert_eq!(events, vec!["notice_resolved".to_owned()]);
    }

    #[tokio::test]
    async fn officers_acknowledge_and_resolve_notices_in_the_node_log() {
        let db = Db::in_memory();
        store(
            &db,
            notice_of(REF, pb::NoticeChange::OverlapFound, "t"),
            7,
            100,
        )
        .await;

        let acked = handle(&db, REF, "acknowledged", "", ALICE, 200)
            .await
            .unwrap();
        assert_eq!(acked.state, "acknowledged");
        assert_eq!(
            (acked.handled_by.as_str(), acked.handled_at_ms),
            (ALICE, 200)
        );
        assert_eq!(held(&db, REF), acked);
        let records = log(&db);
        assert_eq!(records.len(), 1, "{records:?}");
        let r = &records[0];
        assert_eq!(r.event, "notice_acknowledged");
        assert_eq!(r.actor, ALICE);
        assert_eq!(r.message_id, PLAN);
        assert_eq!((r.at_ms, r.hub_seq), (200, 7));
        assert!(r.reason.contains(REF), "{}", r.reason);
        assert!(r.reason.contains(PLAN), "{}", r.reason);

        // The same state again: nothing changes, nothing is logged.
        let again = handle(&db, REF, "acknowledged", "", BOB, 250)
            .await
            .unwrap();
        assert_eq!(again, acked, "the first acknowledgement stays");
        assert_eq!(log(&db).len(), 1);

        // Resolved with a note: the note is in the record, not the log.
        let note = "desk confirmed: boarding moved to day 14";
        let resolved = handle(&db, REF, "resolved", note, BOB, 300).await.unwrap();
        assert_eq!(resolved.state, "resolved");
        assert_eq!(resolved.note, note);
        assert_eq!(
            (resolved.handled_by.as_str(), resolved.handled_at_ms),
            (BOB, 300)
        );
        assert_eq!(held(&db, REF), resolved);
        let records = log(&db);
        assert_eq!(records.len(), 2, "{records:?}");
        let r = &records[1];
        assert_eq!(r.event, "notice_resolved");
        assert_eq!(r.actor, BOB);
        assert!(
            r.reason.contains(REF) && r.reason.contains(PLAN),
            "{}",
            r.reason
        );
        for r in &records {
            assert!(
                !format!("{r:?}").contains("boarding"),
                "the note is in the node log: {r:?}"
            );
        }
        // Resolved again with the same note: nothing.
        handle(&db, REF, "resolved", note, ALICE, 350)
            .await
            .unwrap();
        assert_eq!(log(&db).len(), 2);
        assert_eq!(held(&db, REF), resolved);

        // A resolved notice is not acknowledged again.
        let err = handle(&db, REF, "acknowledged", "", ALICE, 400)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, NodeError::NoticeState { reference, problem }
                if reference == REF && problem.contains("already resolved")),
            "{err}"
        );
        assert_eq!(held(&db, REF), resolved);
        assert_eq!(log(&db).len(), 2);

        // A cleared one is not acknowledged at all.
        let gone = "dx-0000000000000002";
        store(
            &db,
            notice_of(gone, pb::NoticeChange::OverlapFound, "t"),
            8,
            500,
        )
        .await;
        store(
            &db,
            notice_of(gone, pb::NoticeChange::OverlapCleared, "t"),
            9,
            600,
        )
        .await;
        let before = held(&db, gone);
        let err = handle(&db, gone, "acknowledged", "", ALICE, 700)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, NodeError::NoticeState { reference, problem }
                if reference == gone && problem.contains("cleared")),
            "{err}"
        );
        assert_eq!(held(&db, gone), before);
        assert_eq!(log(&db).len(), 2);

        // A notice the node never received.
        let err = handle(&db, "dx-ffffffffffffffff", "acknowledged", "", ALICE, 800)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, NodeError::UnknownNotice(r) if r == "dx-ffffffffffffffff"),
            "{err}"
        );
        // A reference echoed back is escaped: no terminal control reaches
        // the officer's screen.
        let err = handle(&db, "dx-\u{1b}[2J\nforged", "acknowledged", "", ALICE, 800)
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\u{1b}') && !err.contains('\n'), "{err:?}");
        assert_eq!(log(&db).len(), 2);
        let check = crate::store::check_node_log(&db).unwrap();
        assert_eq!((check.records, check.first_error), (2, None));
    }

    fn own(version: u32, message_id: &str) -> OwnPlanRecord {
        OwnPlanRecord {
            plan_id: PLAN.into(),
            version,
            message_id: message_id.into(),
            kind: "operational_plan".into(),
            action: if version == 1 { "new" } else { "update" }.into(),
            title: format!("Operation Dune v{version}"),
            window_start_ms: 1_000,
            window_end_ms: 2_000,
            regions: vec!["sahel".into()],
            countries: vec!["ML".into()],
            crime_areas: vec!["drugs".into()],
            targets: vec![("imo".into(), "9074729".into())],
            contact: "alpha operations desk".into(),
            submitted_by: ALICE.into(),
            updated_at_ms: 10 * i64::from(version),
        }
    }

    fn hashes() -> Vec<pb::TargetHash> {
        vec![pb::TargetHash {
            kind: "imo".into(),
            hash: vec![7; 32],
        }]
    }

    async fn write(db: &Db, w: PlanWrite) -> Result<(), NodeError> {
        db.write(move |txn| write_own(txn, &w)).await
    }

    /// Puts (or replaces) the outbox record of `message_id` with `status`.
    async fn outbox(db: &Db, message_id: &str, status: OutboxStatus) {
        let rec = crate::store::test_record(message_id, status);
        let key = crate::store::k("o", message_id);
        let value = crate::store::Stored::joined(json(&rec), Vec::new());
        db.write(move |txn| {
            txn.put(key, value);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    }

    /// Writes version `version` of the plan after `after`, with its outbox
    /// record in `status`.
    async fn send(
        db: &Db,
        version: u32,
        after: Option<u32>,
        status: OutboxStatus,
    ) -> Result<String, NodeError> {
        let m = format!("6a1f0c2e-0000-4000-8000-0000000000{version:02}");
        write(
            db,
            PlanWrite {
                own: own(version, &m),
                after_version: after,
                targets: Vec::new(),
            },
        )
        .await?;
        outbox(db, &m, status).await;
        Ok(m)
    }

    /// (version shown, accepted, versions waiting, latest, last version
    /// given, status).
    fn standing_of(db: &Db) -> (u32, bool, Vec<u32>, u32, u32, &'static str) {
        let p = own_plan(db, PLAN).unwrap().expect("the plan is held");
        (
            p.shown.version,
            p.accepted,
            p.waiting.iter().map(|(w, _)| w.version).collect(),
            p.latest().version,
            p.last_version,
            p.status(),
        )
    }

    #[tokio::test]
    async fn a_plan_version_is_written_only_after_the_version_held() {
        let db = Db::in_memory();
        let m1 = "6a1f0c2e-0000-4000-8000-0000000000m1";
        write(
            &db,
            PlanWrite {
                own: own(1, m1),
                after_version: None,
                targets: hashes(),
            },
        )
        .await
        .unwrap();
        outbox(&db, m1, OutboxStatus::Routed).await;
        assert!(db.get(format!("pl/{PLAN}").as_bytes()).unwrap().is_some());
        assert!(db.get(format!("pt/{m1}").as_bytes()).unwrap().is_some());
        assert_eq!(own_plan(&db, PLAN).unwrap().unwrap().shown, own(1, m1));
        assert_eq!(push_targets(&db, m1).unwrap(), hashes());
        assert_eq!(own_plans(&db).unwrap().len(), 1);
        assert_eq!(own(1, m1).status(), "active");

        // The next version, without targets to push.
        let m2 = "6a1f0c2e-0000-4000-8000-0000000000m2";
        write(
            &db,
            PlanWrite {
                own: own(2, m2),
                after_version: Some(1),
                targets: Vec::new(),
            },
        )
        .await
        .unwrap();
        outbox(&db, m2, OutboxStatus::Routed).await;
        assert_eq!(own_plan(&db, PLAN).unwrap().unwrap().shown, own(2, m2));
        assert!(push_targets(&db, m2).unwrap().is_empty());
        assert!(db.get(format!("pt/{m2}").as_bytes()).unwrap().is_none());
        assert_eq!(push_targets(&db, m1).unwrap(), hashes(), "v1's are kept");

        // Another officer's version came in between; or a version number
        // already given; or a new plan on a used id; or a version of a plan
        // the node does not hold.
        let m3 = "6a1f0c2e-0000-4000-8000-0000000000m3";
        for (after, version, plan_id, held) in [
            (Some(1), 3, PLAN, 2),
            (Some(3), 3, PLAN, 2),
            (Some(2), 2, PLAN, 2),
            (None, 3, PLAN, 2),
            (Some(1), 3, "6a1f0c2e-0000-4000-8000-00000000dead", 0),
        ] {
            let mut rec = own(version, m3);
            rec.plan_id = plan_id.into();
            let err = write(
                &db,
                PlanWrite {
                    own: rec,
                    after_version: after,
                    targets: hashes(),
                },
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, NodeError::PlanChanged { plan_id: p, version }
                    if p == plan_id && *version == held),
                "after {after:?}: {err}"
            );
            assert_eq!(own_plan(&db, PLAN).unwrap().unwrap().shown, own(2, m2));
            assert!(own_plan(&db, "6a1f0c2e-0000-4000-8000-00000000dead")
                .unwrap()
                .is_none());
            assert!(db.get(format!("pt/{m3}").as_bytes()).unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_plan_moves_only_when_the_hub_accepts_a_version() {
        let db = Db::in_memory();
        // Version 1 waits for the hub: the plan is pending.
        let m1 = send(&db, 1, None, OutboxStatus::Queued).await.unwrap();
        assert_eq!(standing_of(&db), (1, false, vec![], 1, 1, "pending"));
        outbox(&db, &m1, OutboxStatus::Routed).await;
        assert_eq!(standing_of(&db), (1, true, vec![], 1, 1, "active"));

        // Version 2 awaits four-eyes approval: version 1 stays in force,
        // and the next version would follow version 2.
        let m2 = send(&db, 2, Some(1), OutboxStatus::AwaitingApproval)
            .await
            .unwrap();
        assert_eq!(standing_of(&db), (1, true, vec![2], 2, 2, "active"));
        // Refused: the plan stands as it was, and 2 is never given again.
        outbox(&db, &m2, OutboxStatus::Refused).await;
        assert_eq!(standing_of(&db), (1, true, vec![], 1, 2, "active"));
        assert!(matches!(
            send(&db, 2, Some(1), OutboxStatus::Queued).await,
            Err(NodeError::PlanChanged { version: 1, .. })
        ));

        // A close the hub rejects leaves the plan active.
        let m3 = send(&db, 3, Some(1), OutboxStatus::Queued).await.unwrap();
        let mut close = own(3, &m3);
        close.action = "close".into();
        db.write({
            let close = close.clone();
            move |txn| {
                let mut held = read_versions(txn, PLAN)?.unwrap();
                *held.versions.last_mut().unwrap() = close;
                txn.put(own_key(PLAN), json(&held));
                Ok::<_, StoreError>(())
            }
        })
        .await
        .unwrap();
        assert_eq!(own_plan(&db, PLAN).unwrap().unwrap().latest(), &close);
        outbox(&db, &m3, OutboxStatus::Rejected).await;
        assert_eq!(standing_of(&db), (1, true, vec![], 1, 3, "active"));

        // Two versions queued; the hub accepts the later one first: the
        // earlier is no longer waiting for anything the plan can become.
        let m4 = send(&db, 4, Some(1), OutboxStatus::Queued).await.unwrap();
        let m5 = send(&db, 5, Some(4), OutboxStatus::Queued).await.unwrap();
        assert_eq!(standing_of(&db), (1, true, vec![4, 5], 5, 5, "active"));
        outbox(&db, &m5, OutboxStatus::Routed).await;
        assert_eq!(standing_of(&db), (5, true, vec![], 5, 5, "active"));
        outbox(&db, &m4, OutboxStatus::Routed).await;
        assert_eq!(standing_of(&db), (5, true, vec![], 5, 5, "active"));
        // Retracting an older version changes nothing; retracting the one
        // in force withdraws the plan (the hub does the same).
        outbox(&db, &m4, OutboxStatus::Retracted).await;
        assert_eq!(standing_of(&db), (5, true, vec![], 5, 5, "active"));
        outbox(&db, &m5, OutboxStatus::Retracted).await;
        assert_eq!(standing_of(&db), (5, true, vec![], 5, 5, "withdrawn"));
        assert_eq!(
            own_plan(&db, PLAN).unwrap().unwrap().next_status(),
            "withdrawn"
        );

        // The next write keeps only the version in force and what follows.
        send(&db, 6, Some(5), OutboxStatus::Queued).await.unwrap();
        let kept: Vec<u32> = read_versions(&db, PLAN)
            .unwrap()
            .unwrap()
            .versions
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(kept, vec![5, 6]);
    }

    #[tokio::test]
    async fn a_plan_whose_first_version_died_is_no_plan() {
        let db = Db::in_memory();
        let m1 = send(&db, 1, None, OutboxStatus::AwaitingApproval)
            .await
            .unwrap();
        assert_eq!(own_plans(&db).unwrap().len(), 1);
        for dead in [
            OutboxStatus::Refused,
            OutboxStatus::Withdrawn,
            OutboxStatus::Rejected,
        ] {
            outbox(&db, &m1, dead).await;
            assert!(own_plan(&db, PLAN).unwrap().is_none(), "{dead:?}");
            assert!(own_plans(&db).unwrap().is_empty(), "{dead:?}");
        }
    }

    /// An envelope of `origin`'s plan version: labels naming `label_regions`,
    /// an operational plan body naming `body_regions`.
    fn plan_envelope(
        message_id: &str,
        version: u32,
        action: pb::PlanAction,
        label_regions: &[&str],
        body_regions: &[&str],
    ) -> pb::Envelope {
        let labels = pb::Labels {
            message_id: message_id.into(),
            origin: "bravo".into(),
            kind: pb::Kind::OperationalPlan as i32,
            classification: pb::Classification::Restricted as i32,
            crime_areas: vec!["drugs".into(), "maritime_crime".into()],
            regions: label_regions.iter().map(|r| (*r).to_owned()).collect(),
            countries: vec!["IT".into(), "LY".into()],
            priority: pb::Priority::Routine as i32,
            created_at_ms: 10,
            plan: Some(pb::PlanLabels {
                plan_id: PLAN.into(),
                version,
                action: action as i32,
                contact: "bravo operations desk".into(),
            }),
            ..Default::default()
        };
        let body = pb::Body {
            title: format!("Operation Tidewater v{version}"),
            content: Some(pb::body::Content::OperationalPlan(pb::OperationalPlan {
                summary: "patrols".into(),
                window_start_ms: 1_000,
                window_end_ms: 9_000,
                lead_body: "bravo".into(),
                regions: body_regions.iter().map(|r| (*r).to_owned()).collect(),
                crime_areas: vec!["drugs".into()],
                target_ids: Vec::new(),
            })),
        };
        pb::Envelope {
            labels: Some(labels),
            body: body.encode_to_vec(),
        }
    }

    async fn see(db: &Db, env: pb::Envelope, received_at_ms: i64) {
        db.write(move |txn| see_plan(txn, &env, received_at_ms))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn another_bodys_plan_is_kept_as_its_latest_version() {
        let db = Db::in_memory();
        let m2 = "6a1f0c2e-0000-4000-8000-0000000000b2";
        see(
            &db,
            plan_envelope(
                m2,
                2,
                pb::PlanAction::PlanUpdate,
                &["west-africa"],
                &["med-central", "west-africa"],
            ),
            500,
        )
        .await;
        let expected = VisiblePlanRecord {
            plan_id: PLAN.into(),
            version: 2,
            message_id: m2.into(),
            origin: "bravo".into(),
            kind: "operational_plan".into(),
            action: "update".into(),
            title: "Operation Tidewater v2".into(),
            window_start_ms: 1_000,
            window_end_ms: 9_000,
            regions: vec!["med-central".into(), "west-africa".into()],
            countries: vec!["IT".into(), "LY".into()],
            crime_areas: vec!["drugs".into(), "maritime_crime".into()],
            classification: "RESTRICTED".into(),
            contact: "bravo operations desk".into(),
            received_at_ms: 500,
        };
        assert_eq!(visible_plans(&db).unwrap(), vec![expected.clone()]);
        assert_eq!(expected.status(), "active");

        // An older version, or the same one again, arriving late.
        for (id, version) in [("6a1f0c2e-0000-4000-8000-0000000000b1", 1), (m2, 2)] {
            see(
                &db,
                plan_envelope(id, version, pb::PlanAction::PlanNew, &["sahel"], &["sahel"]),
                600,
            )
            .await;
            assert_eq!(visible_plans(&db).unwrap(), vec![expected.clone()]);
        }

        // A later version replaces it.
        let m3 = "6a1f0c2e-0000-4000-8000-0000000000b3";
        see(
            &db,
            plan_envelope(m3, 3, pb::PlanAction::PlanClose, &["sahel"], &["sahel"]),
            700,
        )
        .await;
        let closed = visible_plans(&db).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].version, closed[0].message_id.as_str()), (3, m3));
        assert_eq!(
            (closed[0].action.as_str(), closed[0].status()),
            ("close", "closed")
        );
        assert_eq!(closed[0].regions, vec!["sahel".to_owned()]);
        assert_eq!(closed[0].received_at_ms, 700);
    }

    #[tokio::test]
    async fn a_message_that_is_not_a_plan_makes_no_calendar_entry() {
        let db = Db::in_memory();
        let alert_body = pb::Body {
            title: "act".into(),
            content: Some(pb::body::Content::Alert(pb::Alert {
                text: "now".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        // An alert.
        let mut alert = plan_envelope(
            "6a1f0c2e-0000-4000-8000-0000000000c1",
            1,
            pb::PlanAction::PlanNew,
            &["sahel"],
            &["sahel"],
        );
        alert.body = alert_body.clone();
        let labels = alert.labels.as_mut().unwrap();
        labels.kind = pb::Kind::Alert as i32;
        labels.plan = None;
        see(&db, alert.clone(), 1).await;
        // Plan labels over an alert's body, or a body that does not decode.
        alert.labels.as_mut().unwrap().plan = Some(pb::PlanLabels {
            plan_id: PLAN.into(),
            version: 1,
            action: pb::PlanAction::PlanNew as i32,
            contact: String::new(),
        });
        see(&db, alert.clone(), 2).await;
        alert.body = vec![0xff, 0xff, 0xff];
        see(&db, alert.clone(), 3).await;
        // No labels at all.
        see(
            &db,
            pb::Envelope {
                labels: None,
                body: alert_body,
            },
            4,
        )
        .await;
        assert!(visible_plans(&db).unwrap().is_empty());
        assert!(db.scan_prefix(b"pv/", 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_strategic_plan_takes_its_places_from_the_labels() {
        let db = Db::in_memory();
        let mut env = plan_envelope(
            "6a1f0c2e-0000-4000-8000-0000000000d1",
            1,
            pb::PlanAction::PlanNew,
            &["med-central"],
            &[],
        );
        env.labels.as_mut().unwrap().kind = pb::Kind::StrategicPlan as i32;
        env.body = pb::Body {
            title: "Bravo priorities 2027".into(),
            content: Some(pb::body::Content::StrategicPlan(pb::StrategicPlan {
                summary: "priorities".into(),
                cycle: "2027".into(),
                window_start_ms: 3_000,
                window_end_ms: 4_000,
            })),
        }
        .encode_to_vec();
        see(&db, env, 9).await;
        let seen = visible_plans(&db).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].kind, "strategic_plan");
        assert_eq!(seen[0].action, "new");
        assert_eq!(seen[0].regions, vec!["med-central".to_owned()]);
        assert_eq!(
            (seen[0].window_start_ms, seen[0].window_end_ms),
            (3_000, 4_000)
        );
    }

    #[tokio::test]
    async fn a_withdrawn_latest_version_leaves_the_calendar_and_an_older_one_does_not() {
        let db = Db::in_memory();
        let (m1, m2) = (
            "6a1f0c2e-0000-4000-8000-0000000000c1",
            "6a1f0c2e-0000-4000-8000-0000000000c2",
        );
        see(
            &db,
            plan_envelope(m1, 1, pb::PlanAction::PlanNew, &["sahel"], &[]),
            1,
        )
        .await;
        see(
            &db,
            plan_envelope(m2, 2, pb::PlanAction::PlanUpdate, &["sahel"], &[]),
            2,
        )
        .await;
        let labels = plan_envelope(m1, 1, pb::PlanAction::PlanNew, &["sahel"], &[]).labels;
        let l = labels.clone();
        db.write(move |txn| forget_visible(txn, l.as_ref(), m1))
            .await
            .unwrap();
        assert_eq!(
            visible_plans(&db).unwrap().len(),
            1,
            "an older version's withdrawal leaves it"
        );
        let labels = plan_envelope(m2, 2, pb::PlanAction::PlanUpdate, &["sahel"], &[]).labels;
        db.write(move |txn| forget_visible(txn, labels.as_ref(), m2))
            .await
            .unwrap();
        assert!(visible_plans(&db).unwrap().is_empty());
        // A message that is not a plan changes nothing.
        db.write(move |txn| forget_visible(txn, None, m2))
            .await
            .unwrap();
    }
}
