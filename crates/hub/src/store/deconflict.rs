//! Plans and their deconfliction at the hub.
//!
//! A plan message (an operational or strategic plan with plan labels) is
//! routed like any message. In the same transaction the hub checks it
//! against its record of the plan ([`check_lifecycle`]: only the originator
//! changes a plan, versions only grow, an ended plan stays ended), finds
//! the active plans of other bodies it overlaps (the in-memory
//! [`Deconfliction`] index, rebuilt from the records at start), and sends
//! both originators a notice in their delivery queues: full when each plan
//! may be released to the other body under the policy in force, blind
//! otherwise ([`plan_deconfliction`], pure). Each side's audit record says
//! only what that side may know; the desk's record (origin: the hub's body)
//! names both plans and the rule that chose full or blind.
//!
//! The hub holds only keyed hashes of targets: it matches them, and tells
//! a full notice's reader which kinds matched, never a value.

use std::collections::{BTreeMap, BTreeSet};

use liaison_plans::{Index, Overlap, Plan, PlanKind, ReferenceKey, TargetHash, TargetKind};
use liaison_policy::{decide, Governance, Outcome, Rule};
use liaison_proto::v1 as pb;
use liaison_store::{from_json as parse, to_json as json, Db, StoreError, Txn};
use liaison_types::audit::Event as AuditEvent;
use liaison_types::{BodyId, Kind, Labels, PlanAction};
use serde::{Deserialize, Serialize};

use super::schema::{
    overlap_key, overlap_prefix, plan_key, plan_rate_key, PLAN_PREFIX, REFERENCE_KEY,
};
use super::{Effects, Enqueue, QueueEntry, Write};
use crate::HubError;

/// The most targets one plan may name.
pub const MAX_TARGETS: usize = 256;

/// What the hub keeps of a plan (`pl/<plan id>`): its latest version's
/// labels and window, and its targets' keyed hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// The plan.
    pub plan_id: String,
    /// Its originating body.
    pub origin: String,
    /// Operational or strategic.
    pub kind: Kind,
    /// Its latest version.
    pub version: u32,
    /// What the latest version did.
    pub action: PlanAction,
    /// The message of the latest version.
    pub message_id: String,
    /// Its title (for a full notice's reader, who may see the plan).
    pub title: String,
    /// Whom to contact.
    pub contact: String,
    /// The latest version's labels (regions, countries, crime areas, and
    /// what the policy decides on).
    pub labels: Labels,
    /// Its window, start included, end excluded (ms since the epoch).
    pub start_ms: i64,
    /// See `start_ms`.
    pub end_ms: i64,
    /// The regions it covers: its labels' and its body's (an operational
    /// plan's body names regions too).
    #[serde(default)]
    pub regions: BTreeSet<String>,
    /// Its targets: kind and keyed hash (hex).
    pub targets: Vec<(String, String)>,
    /// When the hub accepted the latest version.
    pub updated_at_ms: i64,
}

impl PlanRecord {
    /// Whether the plan takes part in deconfliction at `now_ms`: not
    /// closed or cancelled, and its window not over.
    pub fn active(&self, now_ms: i64) -> bool {
        self.action.leaves_active() && self.end_ms > now_ms
    }

    /// The plan as the index holds it.
    pub fn to_index(&self) -> Plan {
        Plan {
            id: self.plan_id.clone(),
            body: self.labels.origin.clone(),
            kind: if self.kind == Kind::StrategicPlan {
                PlanKind::Strategic
            } else {
                PlanKind::Operational
            },
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            places: self
                .labels
                .regions
                .iter()
                .chain(&self.regions)
                .map(|r| format!("{REGION}{r}"))
                .chain(
                    self.labels
                        .countries
                        .iter()
                        .map(|c| format!("{COUNTRY}{c}")),
                )
                .collect(),
            crime_areas: self
                .labels
                .crime_areas
                .iter()
                .map(|c| c.to_string())
                .collect(),
            targets: self
                .targets
                .iter()
                .filter_map(|(kind, hash)| {
                    let kind = TargetKind::parse(kind)?;
                    let hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
                    Some(TargetHash { kind, hash })
                })
                .collect(),
        }
    }
}

const REGION: &str = "r:";
const COUNTRY: &str = "c:";

/// Checks a submission's target hashes: known kinds, 32 bytes each, at most
/// [`MAX_TARGETS`], none twice; returns them as the record keeps them.
pub fn parse_targets(targets: &[pb::TargetHash]) -> Result<Vec<(String, String)>, HubError> {
    if targets.len() > MAX_TARGETS {
        return Err(liaison_types::ValidationError::new(
            "targets",
            format!(
                "{} targets; a plan names at most {MAX_TARGETS}",
                targets.len()
            ),
        )
        .into());
    }
    let mut out = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let Some(kind) = TargetKind::parse(&t.kind) else {
            return Err(liaison_types::ValidationError::new(
                format!("targets[{i}].kind"),
                format!(
                    "'{}' is not a target kind; expected one of {}",
                    liaison_types::text::escape_line_prefix(&t.kind, 40),
                    TargetKind::ALL.map(TargetKind::as_str).join(", ")
                ),
            )
            .into());
        };
        if t.hash.len() != 32 {
            return Err(liaison_types::ValidationError::new(
                format!("targets[{i}].hash"),
                format!(
                    "{} bytes; a target is sent as its 32-byte HMAC-SHA-256, never in clear",
                    t.hash.len()
                ),
            )
            .into());
        }
        out.insert((kind.as_str().to_owned(), hex::encode(&t.hash)));
    }
    Ok(out.into_iter().collect())
}

/// An overlap as the hub keeps it for each of its two plans
/// (`po/<plan>/<other plan>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlapRecord {
    /// Its reference, the same on both sides.
    pub reference: String,
    /// Whether the notices were blind.
    pub blind: bool,
    /// The other plan's body.
    pub other_body: String,
    /// Its generation: a full overlap that becomes blind takes the next,
    /// and with it a new reference (see [`ReferenceKey::reference`]).
    #[serde(default)]
    pub generation: u32,
}

/// A deconfliction notice as a queue position keeps it (the proto,
/// encoded, in hex: queue positions of this kind are JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotice(pub pb::DeconflictionNotice);

impl Serialize for StoredNotice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(prost::Message::encode_to_vec(&self.0)))
    }
}

impl<'de> Deserialize<'de> for StoredNotice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        prost::Message::decode(bytes.as_slice())
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// What the index must do once a plan's transaction is staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOp {
    /// Hold this plan (new or changed, still active).
    Put(Plan),
    /// Drop this plan (closed or cancelled).
    Remove(String),
}

/// What is fixed for one plan submission.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    /// The governance in force.
    pub gov: &'a Governance,
    /// The hub's body: its deconfliction desk.
    pub hub_body: &'a BodyId,
    /// The submitting node.
    pub actor: &'a str,
    /// Now.
    pub now_ms: i64,
}

/// A lifecycle refusal: the error for the caller and the record for the
/// log.
pub type Refusal = Box<(HubError, pb::AuditRecord)>;

/// Checks a plan message against the hub's record of the plan (pure).
pub fn check_lifecycle(
    new: &PlanRecord,
    held: Option<&PlanRecord>,
    ctx: &PlanContext<'_>,
) -> Result<(), Refusal> {
    let refuse = |rule: Rule, err: HubError| Err(refusal(new, ctx, rule, err));
    let lifecycle = |problem: String| HubError::PlanRefused {
        plan_id: new.plan_id.clone(),
        problem,
    };
    let Some(held) = held else {
        if new.action == PlanAction::New {
            return Ok(());
        }
        return refuse(
            Rule::PlanLifecycle,
            lifecycle(format!(
                "plan {} is not known to the hub, so version {} cannot {} it; send it as a new plan (version 1)",
                new.plan_id,
                new.version,
                new.action.as_str()
            )),
        );
    };
    if held.origin != new.origin {
        return refuse(
            Rule::PlanOriginator,
            HubError::PlanNotOrigin {
                caller: new.origin.clone(),
                plan_id: new.plan_id.clone(),
            },
        );
    }
    if new.action == PlanAction::New {
        return refuse(
            Rule::PlanLifecycle,
            HubError::PlanExists {
                plan_id: new.plan_id.clone(),
                version: held.version,
            },
        );
    }
    if !held.action.leaves_active() {
        return refuse(
            Rule::PlanLifecycle,
            lifecycle(format!(
                "plan {} was {} at version {}; an ended plan does not change, so submit a new plan",
                new.plan_id,
                if held.action == PlanAction::Close {
                    "closed"
                } else {
                    "cancelled"
                },
                held.version
            )),
        );
    }
    if new.version <= held.version {
        return refuse(
            Rule::PlanLifecycle,
            lifecycle(format!(
                "plan {} is at version {}; version {} is not newer, so send {} or later",
                new.plan_id,
                held.version,
                new.version,
                held.version + 1
            )),
        );
    }
    if new.kind != held.kind {
        return refuse(
            Rule::PlanLifecycle,
            lifecycle(format!(
                "plan {} is a {}; a version cannot make it a {}",
                new.plan_id, held.kind, new.kind
            )),
        );
    }
    Ok(())
}

/// The refusal of a plan version: the error and its `refused` record.
fn refusal(new: &PlanRecord, ctx: &PlanContext<'_>, rule: Rule, err: HubError) -> Refusal {
    let record = pb::AuditRecord {
        at_ms: ctx.now_ms,
        event: AuditEvent::Refused.into(),
        message_id: new.message_id.clone(),
        origin: new.origin.clone(),
        kind: new.kind.as_str().to_owned(),
        classification: new.labels.classification.as_str().to_owned(),
        rule: rule.into(),
        reason: err.to_string(),
        policy_version: ctx.gov.version().to_owned(),
        actor: ctx.actor.to_owned(),
        ..Default::default()
    };
    Box::new((err, record))
}

/// An hour, the window of the plan rate.
const HOUR_MS: i64 = 3_600_000;

/// The plan rate (pure): with `recent` the times of a body's plan versions
/// (new plans and updates) still in the last hour, oldest first, whether
/// one more may go now: the times to keep (this one added), or when the
/// oldest leaves the hour.
pub fn plan_rate(recent: &[i64], now_ms: i64, limit: u32) -> Result<Vec<i64>, i64> {
    let mut kept: Vec<i64> = recent
        .iter()
        .copied()
        .filter(|t| *t > now_ms - HOUR_MS)
        .collect();
    if kept.len() >= limit as usize {
        let oldest = kept[kept.len() - limit as usize];
        return Err(oldest + HOUR_MS);
    }
    kept.push(now_ms);
    Ok(kept)
}

/// Whether `plan` may be released to `to` under the policy now: the
/// decision's outcome, rule and reason. A plan under embargo is released
/// to nobody yet.
fn release(gov: &Governance, plan: &PlanRecord, to: &BodyId, now_ms: i64) -> (bool, String) {
    if plan.labels.not_before_ms.is_some_and(|t| t > now_ms) {
        return (false, "embargo: not yet released to anyone".to_owned());
    }
    match decide(gov, &plan.labels, now_ms)
        .into_iter()
        .find(|d| &d.recipient == to)
    {
        Some(d) => (
            d.outcome == Outcome::Deliver,
            format!("{}: {}", d.rule, d.reason),
        ),
        None => (false, format!("{to} is not a body of the federation")),
    }
}

/// The notice for `side`'s originator about its overlap with `other`.
#[allow(clippy::too_many_arguments)]
fn notice(
    side: &PlanRecord,
    other: &PlanRecord,
    shared: Option<&Overlap>,
    change: pb::NoticeChange,
    blind: bool,
    reference: &str,
    hub_body: &BodyId,
    now_ms: i64,
) -> pb::DeconflictionNotice {
    let mut n = pb::DeconflictionNotice {
        reference: reference.to_owned(),
        plan_id: side.plan_id.clone(),
        plan_version: side.version,
        message_id: side.message_id.clone(),
        kind: if side.kind == Kind::StrategicPlan {
            pb::OverlapKind::Alignment
        } else {
            pb::OverlapKind::Conflict
        } as i32,
        change: change as i32,
        blind,
        noticed_at_ms: now_ms,
        ..Default::default()
    };
    if blind {
        n.contact = format!(
            "the deconfliction desk of {hub_body}, quoting reference {reference}: a possible overlap exists with another body's plan"
        );
        return n;
    }
    n.contact = if other.contact.is_empty() {
        format!("{}'s liaison desk", other.origin)
    } else {
        other.contact.clone()
    };
    n.other_plan_id = other.plan_id.clone();
    n.other_plan_version = other.version;
    n.other_message_id = other.message_id.clone();
    n.other_body = other.origin.clone();
    n.other_title = other.title.clone();
    if let Some(o) = shared {
        n.overlap_start_ms = o.from_ms;
        n.overlap_end_ms = o.until_ms;
        n.regions = strip(&o.places, REGION);
        n.countries = strip(&o.places, COUNTRY);
        n.crime_areas = o.crime_areas.iter().cloned().collect();
        n.target_kinds = o
            .target_kinds
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect();
    }
    n
}

fn strip(places: &BTreeSet<String>, prefix: &str) -> Vec<String> {
    places
        .iter()
        .filter_map(|p| p.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

/// The deconfliction of one plan message that passed
/// [`check_lifecycle`] (pure): `previous` are the overlaps recorded for
/// the plan, with the other plan as the hub holds it; `found` the active
/// plans it overlaps now. Returns the writes (the plan, the overlaps), the
/// notices for both sides of every overlap found, changed or cleared, their
/// audit records, and what the index must do.
pub fn plan_deconfliction(
    new: &PlanRecord,
    previous: &BTreeMap<String, (OverlapRecord, Option<PlanRecord>)>,
    found: &[(Overlap, PlanRecord)],
    key: &ReferenceKey,
    ctx: &PlanContext<'_>,
) -> (Effects, IndexOp) {
    let mut effects = Effects::default();
    effects.writes.push(Write::Plan(Box::new(new.clone())));
    let new_body = new.labels.origin.clone();
    let mut seen = BTreeSet::new();
    for (shared, other) in found {
        seen.insert(other.plan_id.clone());
        let other_body = other.labels.origin.clone();
        let (to_other, why_to_other) = release(ctx.gov, new, &other_body, ctx.now_ms);
        let (to_new, why_to_new) = release(ctx.gov, other, &new_body, ctx.now_ms);
        let blind = !(to_other && to_new);
        let was = previous.get(&other.plan_id).map(|(was, _)| was);
        // An overlap both sides saw that turns blind is cleared under its
        // old reference and found again under a new one: both sides know
        // the old reference's plans, and nothing told under the new one
        // may be tied to them.
        let generation = match was {
            None => 0,
            Some(w) if !w.blind && blind => {
                let cleared = pb::NoticeChange::OverlapCleared;
                for (side, them) in [(new, other), (other, new)] {
                    let n = notice(
                        side,
                        them,
                        None,
                        cleared,
                        true,
                        &w.reference,
                        ctx.hub_body,
                        ctx.now_ms,
                    );
                    let reason = side_reason(&n);
                    let mine = std::ptr::eq(side, new);
                    push_notice(
                        &mut effects,
                        side,
                        n,
                        Rule::DeconflictionBlind,
                        reason,
                        mine,
                        ctx,
                    );
                }
                effects.audit.push(desk_record(
                    new,
                    other,
                    cleared,
                    &w.reference,
                    Rule::DeconflictionBlind,
                    "the overlap turned blind: it continues under a new reference".to_owned(),
                    ctx,
                ));
                w.generation.saturating_add(1)
            }
            Some(w) => w.generation,
        };
        let change = match was {
            Some(w) if w.generation == generation => pb::NoticeChange::OverlapChanged,
            _ => pb::NoticeChange::OverlapFound,
        };
        let reference = key.reference(&new.plan_id, &other.plan_id, generation);
        let record = |other: &PlanRecord| OverlapRecord {
            reference: reference.clone(),
            blind,
            other_body: other.origin.clone(),
            generation,
        };
        effects.writes.push(Write::Overlap {
            plan: new.plan_id.clone(),
            other: other.plan_id.clone(),
            record: Some(record(other)),
        });
        effects.writes.push(Write::Overlap {
            plan: other.plan_id.clone(),
            other: new.plan_id.clone(),
            record: Some(record(new)),
        });
        // The other side's view of what is shared.
        let mirrored = liaison_plans::overlap(&other.to_index(), &new.to_index());
        let rule = if blind {
            Rule::DeconflictionBlind
        } else {
            Rule::DeconflictionFull
        };
        for (side, them, shared) in [(new, other, Some(shared)), (other, new, mirrored.as_ref())] {
            let mine = std::ptr::eq(side, new);
            let n = notice(
                side,
                them,
                shared,
                change,
                blind,
                &reference,
                ctx.hub_body,
                ctx.now_ms,
            );
            let reason = side_reason(&n);
            push_notice(&mut effects, side, n, rule, reason, mine, ctx);
        }
        effects.audit.push(desk_record(
            new,
            other,
            change,
            &reference,
            rule,
            format!(
                "{}; {} to {}: {}; {} to {}: {}",
                if blind {
                    "blind: the policy withholds a plan from the other body"
                } else {
                    "full: each plan may be released to the other body"
                },
                new.origin,
                other.origin,
                why_to_other,
                other.origin,
                new.origin,
                why_to_new
            ),
            ctx,
        ));
    }
    for (other_id, (was, other)) in previous {
        if seen.contains(other_id) {
            continue;
        }
        effects.writes.push(Write::Overlap {
            plan: new.plan_id.clone(),
            other: other_id.clone(),
            record: None,
        });
        effects.writes.push(Write::Overlap {
            plan: other_id.clone(),
            other: new.plan_id.clone(),
            record: None,
        });
        // A plan that ended on its own (its window passed) hears nothing
        // more; an active one hears that the overlap is gone. Blind stays
        // blind, and a full overlap whose plans may no longer be released
        // to each other is cleared blind: a cleared notice names the
        // versions as they are now.
        let blind = was.blind
            || other.as_ref().is_none_or(|o| {
                !(release(ctx.gov, new, &o.labels.origin, ctx.now_ms).0
                    && release(ctx.gov, o, &new.labels.origin, ctx.now_ms).0)
            });
        let rule = if blind {
            Rule::DeconflictionBlind
        } else {
            Rule::DeconflictionFull
        };
        let cleared = pb::NoticeChange::OverlapCleared;
        let mut sides = vec![(new, other.as_ref())];
        if let Some(other) = other.as_ref().filter(|o| o.active(ctx.now_ms)) {
            sides.push((other, Some(new)));
        }
        for (side, them) in sides {
            let Some(them) = them else { continue };
            let mine = std::ptr::eq(side, new);
            let n = notice(
                side,
                them,
                None,
                cleared,
                blind,
                &was.reference,
                ctx.hub_body,
                ctx.now_ms,
            );
            let reason = side_reason(&n);
            push_notice(&mut effects, side, n, rule, reason, mine, ctx);
        }
        if let Some(other) = other {
            effects.audit.push(desk_record(
                new,
                other,
                cleared,
                &was.reference,
                rule,
                format!(
                    "the overlap is gone after {} version {} ({})",
                    new.plan_id,
                    new.version,
                    new.action.as_str()
                ),
                ctx,
            ));
        }
    }
    let op = if new.active(ctx.now_ms) {
        IndexOp::Put(new.to_index())
    } else {
        IndexOp::Remove(new.plan_id.clone())
    };
    (effects, op)
}

fn change_word(change: i32) -> &'static str {
    match pb::NoticeChange::try_from(change) {
        Ok(pb::NoticeChange::OverlapFound) => "found",
        Ok(pb::NoticeChange::OverlapChanged) => "changed",
        Ok(pb::NoticeChange::OverlapCleared) => "cleared",
        _ => "unspecified",
    }
}

/// What a side's own audit record says: no more than its notice.
fn side_reason(n: &pb::DeconflictionNotice) -> String {
    let what = if n.kind == pb::OverlapKind::Alignment as i32 {
        "alignment"
    } else {
        "conflict"
    };
    let head = format!(
        "{} notice {} ({what} {}) for plan {} version {}",
        if n.blind { "blind" } else { "full" },
        n.reference,
        change_word(n.change),
        n.plan_id,
        n.plan_version
    );
    if n.blind {
        return format!("{head}: another body's plan; the policy withholds a plan from the other side, so nothing about it is told");
    }
    let mut text = format!(
        "{head}: {} plan {} version {}",
        n.other_body, n.other_plan_id, n.other_plan_version
    );
    if n.overlap_end_ms > 0 {
        text.push_str(&format!(
            "; {} to {}; places {}; crime areas {}; target kinds {}",
            liaison_types::rfc3339(n.overlap_start_ms),
            liaison_types::rfc3339(n.overlap_end_ms),
            list(n.regions.iter().chain(&n.countries)),
            list(n.crime_areas.iter()),
            list(n.target_kinds.iter()),
        ));
    }
    text
}

fn list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.map(String::as_str).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// A notice for `side`'s originator, with the record that names its
/// position (the side's own view). Only the submitter's own record names
/// the submitting node as its actor: an auditor reads the records its
/// body's identities caused, and the other side's record is not for it.
fn push_notice(
    effects: &mut Effects,
    side: &PlanRecord,
    n: pb::DeconflictionNotice,
    rule: Rule,
    reason: String,
    submitter: bool,
    ctx: &PlanContext<'_>,
) {
    effects.enqueue.push(Enqueue {
        body: side.labels.origin.clone(),
        entry: QueueEntry {
            notice: Some(StoredNotice(n)),
            ..QueueEntry::message(&side.message_id, &side.origin, ctx.now_ms)
        },
        audit: Some(effects.audit.len()),
    });
    effects.audit.push(pb::AuditRecord {
        at_ms: ctx.now_ms,
        event: AuditEvent::Deconflicted.into(),
        message_id: side.message_id.clone(),
        origin: side.origin.clone(),
        recipient: side.origin.clone(),
        kind: side.kind.as_str().to_owned(),
        classification: side.labels.classification.as_str().to_owned(),
        rule: rule.into(),
        reason,
        policy_version: ctx.gov.version().to_owned(),
        actor: if submitter {
            ctx.actor.to_owned()
        } else {
            String::new()
        },
        ..Default::default()
    });
}

/// The deconfliction desk's record of an overlap: both plans, and why full
/// or blind. Its origin is the hub's body and it names no actor (the
/// submitting node is in its reason), so only the hub's auditors and
/// oversight read it.
#[allow(clippy::too_many_arguments)]
fn desk_record(
    new: &PlanRecord,
    other: &PlanRecord,
    change: pb::NoticeChange,
    reference: &str,
    rule: Rule,
    why: String,
    ctx: &PlanContext<'_>,
) -> pb::AuditRecord {
    pb::AuditRecord {
        at_ms: ctx.now_ms,
        event: AuditEvent::Deconflicted.into(),
        message_id: new.message_id.clone(),
        origin: ctx.hub_body.to_string(),
        kind: new.kind.as_str().to_owned(),
        rule: rule.into(),
        reason: format!(
            "{reference} {}: {} plan {} version {} (message {}) and {} plan {} version {} (message {}); {why}",
            change_word(change as i32),
            new.origin,
            new.plan_id,
            new.version,
            new.message_id,
            other.origin,
            other.plan_id,
            other.version,
            other.message_id,
        ) + &format!("; sent by {}", ctx.actor),
        policy_version: ctx.gov.version().to_owned(),
        ..Default::default()
    }
}

/// The active plans in memory, indexed for overlap, and their ends so that
/// a plan whose window passed leaves the index.
#[derive(Debug, Default)]
pub struct Deconfliction {
    index: Index,
    ends: BTreeSet<(i64, String)>,
    /// The hub's reference key, once read from (or made in) the store.
    reference_key: Option<ReferenceKey>,
}

impl Deconfliction {
    /// The active plans of the store.
    pub fn load(db: &Db, now_ms: i64) -> Result<Self, StoreError> {
        let mut d = Self {
            reference_key: read_reference_key(db.get(REFERENCE_KEY)?)?,
            ..Self::default()
        };
        let mut next = PLAN_PREFIX.to_vec();
        let end = liaison_store::keys::prefix_end(PLAN_PREFIX);
        loop {
            let page = db.scan(&next, &end, 1024)?;
            let Some((last, _)) = page.last() else { break };
            next = last.clone();
            next.push(0);
            for (key, value) in &page {
                let rec: PlanRecord = parse(key, value)?;
                if rec.active(now_ms) {
                    d.apply(IndexOp::Put(rec.to_index()));
                }
            }
            if page.len() < 1024 {
                break;
            }
        }
        Ok(d)
    }

    /// The hub's reference key: read from the store, or made now and
    /// staged in `txn` (with the first plan that needs it, in the same
    /// atomic write). A write that fails reloads the index, and with it the
    /// key as the store holds it.
    fn reference_key(&mut self, txn: &mut Txn<'_>) -> Result<ReferenceKey, StoreError> {
        if let Some(k) = &self.reference_key {
            return Ok(k.clone());
        }
        let key = match read_reference_key(txn.get(REFERENCE_KEY)?)? {
            Some(k) => k,
            None => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| {
                    StoreError::Engine(format!(
                        "no randomness for the deconfliction reference key: {e}"
                    ))
                })?;
                txn.put(REFERENCE_KEY, bytes.to_vec());
                ReferenceKey::new(bytes)
            }
        };
        self.reference_key = Some(key.clone());
        Ok(key)
    }

    /// How many plans are active.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Drops the plans whose window ended by `now_ms`.
    pub fn prune(&mut self, now_ms: i64) {
        while let Some((end, id)) = self.ends.first().cloned() {
            if end > now_ms {
                break;
            }
            self.ends.pop_first();
            self.index.remove(&id);
        }
    }

    /// The active plans of other bodies that `plan` overlaps.
    pub fn overlaps(&self, plan: &Plan) -> Vec<Overlap> {
        self.index.overlaps(plan)
    }

    /// Applies what a staged plan transaction asks.
    pub fn apply(&mut self, op: IndexOp) {
        match op {
            IndexOp::Put(plan) => {
                if let Some(old) = self.index.get(&plan.id) {
                    self.ends.remove(&(old.end_ms, old.id.clone()));
                }
                self.ends.insert((plan.end_ms, plan.id.clone()));
                // A plan the hub accepted was checked when it was built
                // (`HubState::plan_of`); one that is not indexable leaves
                // no earlier version behind.
                if self.index.put(plan.clone()).is_err() {
                    self.ends.remove(&(plan.end_ms, plan.id.clone()));
                    self.index.remove(&plan.id);
                }
            }
            IndexOp::Remove(id) => {
                if let Some(old) = self.index.remove(&id) {
                    self.ends.remove(&(old.end_ms, old.id));
                }
            }
        }
    }
}

/// The reference key as the store holds it.
fn read_reference_key(value: Option<Vec<u8>>) -> Result<Option<ReferenceKey>, StoreError> {
    match value {
        None => Ok(None),
        Some(v) => <[u8; 32]>::try_from(v.as_slice())
            .map(|b| Some(ReferenceKey::new(b)))
            .map_err(|_| {
                StoreError::corrupt(
                    REFERENCE_KEY,
                    format_args!("the reference key is {} bytes, not 32", v.len()),
                )
            }),
    }
}

/// Reads the facts of one plan submission inside its transaction, checks
/// and plans it, and applies the plan's writes; the index sees the change
/// at once (later submissions of the batch are deconflicted against it).
/// A refusal writes only its audit record.
pub(super) fn deconflict_in(
    txn: &mut Txn<'_>,
    index: &mut Deconfliction,
    new: &PlanRecord,
    ctx: &PlanContext<'_>,
) -> Result<Result<(Effects, IndexOp), Refusal>, StoreError> {
    let held = read_plan(txn, &new.plan_id)?;
    if let Err(refusal) = check_lifecycle(new, held.as_ref(), ctx) {
        return Ok(Err(refusal));
    }
    // Ending a plan is never limited; every other version counts.
    if new.action.leaves_active() {
        let key = plan_rate_key(&new.origin);
        let recent: Vec<i64> = match txn.get(&key)? {
            Some(v) => parse(&key, &v)?,
            None => Vec::new(),
        };
        let limit = ctx.gov.max_plan_versions_per_hour();
        match plan_rate(&recent, ctx.now_ms, limit) {
            Ok(kept) => txn.put(key, json(&kept)),
            Err(retry_at_ms) => {
                let err = HubError::PlanRate {
                    body: new.origin.clone(),
                    limit,
                    retry_at: liaison_types::rfc3339(retry_at_ms),
                };
                return Ok(Err(refusal(new, ctx, Rule::PlanRate, err)));
            }
        }
    }
    index.prune(ctx.now_ms);
    let previous = previous_overlaps(txn, &new.plan_id)?;
    let mut found = Vec::new();
    if new.active(ctx.now_ms) {
        for o in index.overlaps(&new.to_index()) {
            if let Some(other) = read_plan(txn, &o.other)?.filter(|p| p.active(ctx.now_ms)) {
                found.push((o, other));
            }
        }
    }
    let key = index.reference_key(txn)?;
    Ok(Ok(plan_deconfliction(new, &previous, &found, &key, ctx)))
}

/// The overlaps recorded for a plan, with the other plan as the hub holds
/// it (if it still does).
type Previous = BTreeMap<String, (OverlapRecord, Option<PlanRecord>)>;

fn previous_overlaps(txn: &Txn<'_>, plan_id: &str) -> Result<Previous, StoreError> {
    let mut previous = BTreeMap::new();
    let prefix = overlap_prefix(plan_id);
    for (key, value) in txn.scan(
        &prefix,
        &liaison_store::keys::prefix_end(&prefix),
        usize::MAX,
    )? {
        let other_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let was: OverlapRecord = parse(&key, &value)?;
        let other = read_plan(txn, &other_id)?;
        previous.insert(other_id, (was, other));
    }
    Ok(previous)
}

/// When the originator retracts the message of a plan's latest version,
/// the plan is withdrawn from deconfliction as if cancelled: it leaves the
/// index, and each overlap it had is cleared for both sides. A retracted
/// older version, or a plan that already ended, changes nothing. Returns
/// the effects and what the index must do, or `None`.
pub(super) fn withdraw_in(
    txn: &mut Txn<'_>,
    index: &mut Deconfliction,
    plan_id: &str,
    message_id: &str,
    ctx: &PlanContext<'_>,
) -> Result<Option<(Effects, IndexOp)>, StoreError> {
    let Some(held) = read_plan(txn, plan_id)? else {
        return Ok(None);
    };
    if held.message_id != message_id || !held.action.leaves_active() {
        return Ok(None);
    }
    let mut withdrawn = held;
    withdrawn.action = PlanAction::Cancel;
    withdrawn.updated_at_ms = ctx.now_ms;
    if let Some(p) = withdrawn.labels.plan.as_mut() {
        p.action = PlanAction::Cancel;
    }
    index.prune(ctx.now_ms);
    let previous = previous_overlaps(txn, plan_id)?;
    let key = index.reference_key(txn)?;
    Ok(Some(plan_deconfliction(
        &withdrawn,
        &previous,
        &[],
        &key,
        ctx,
    )))
}

/// The hub's record of a plan, read outside a transaction.
pub(super) fn read_plan_db(db: &Db, plan_id: &str) -> Result<Option<PlanRecord>, StoreError> {
    let key = plan_key(plan_id);
    db.get(&key)?.map(|v| parse(&key, &v)).transpose()
}

fn read_plan(txn: &Txn<'_>, plan_id: &str) -> Result<Option<PlanRecord>, StoreError> {
    let key = plan_key(plan_id);
    txn.get(&key)?.map(|v| parse(&key, &v)).transpose()
}

/// Applies a plan's typed writes (called by [`super::plan::apply`]).
pub(super) fn write_plan(txn: &mut Txn<'_>, rec: &PlanRecord) {
    txn.put(plan_key(&rec.plan_id), json(rec));
}

/// Blanks the title a plan keeps when the content of the version that gave
/// it is erased (its retention ended).
pub(super) fn forget_title(
    txn: &mut Txn<'_>,
    plan_id: &str,
    message_id: &str,
) -> Result<(), StoreError> {
    if let Some(mut rec) = read_plan(txn, plan_id)? {
        if rec.message_id == message_id && !rec.title.is_empty() {
            rec.title.clear();
            write_plan(txn, &rec);
        }
    }
    Ok(())
}

/// Stores or removes one side of an overlap.
pub(super) fn write_overlap(
    txn: &mut Txn<'_>,
    plan: &str,
    other: &str,
    record: Option<&OverlapRecord>,
) {
    match record {
        Some(r) => txn.put(overlap_key(plan, other), json(r)),
        None => txn.delete(overlap_key(plan, other)),
    }
}

#[cfg(test)]
mod tests;
