//! Unit tests of the pure parts of deconfliction: the lifecycle check, the
//! planned effects of a plan message (full and blind notices, their audit
//! records, the overlap writes and the index operation), the stored notice,
//! the target hashes and the in-memory index wrapper.

use std::collections::{BTreeMap, BTreeSet};

use liaison_plans::overlap;
use liaison_policy::{decide, BodySpec, Governance, Outcome};
use liaison_types::Classification::{self, Confidential, Restricted, Secret};
use liaison_types::{CrimeArea, Identity, PlanLabels, Priority};
use proptest::prelude::*;

use super::*;

const NOW: i64 = 1_700_000_000_000;
const DAY: i64 = 86_400_000;
/// The node that submits the plan under test (a europol node).
const ACTOR: &str = "spiffe://liaison.dev/org/europol/node/n1";
const AREAS: &[&str] = &["drugs", "migrant_smuggling", "cybercrime", "firearms"];

fn body(id: &str) -> BodyId {
    BodyId::parse(id).expect("body id")
}

fn bodies(list: &[&str]) -> BTreeSet<BodyId> {
    list.iter().map(|b| body(b)).collect()
}

fn strings(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn areas(list: &[&str]) -> BTreeSet<CrimeArea> {
    list.iter()
        .map(|a| CrimeArea::parse(a).expect("crime area"))
        .collect()
}

fn vec_of(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// interpol (the hub, SECRET), europol (SECRET), frontex (CONFIDENTIAL),
/// afripol (SECRET, firearms only) and the observer unodc.
fn governance() -> Governance {
    Governance::for_test()
        .member("interpol", Secret, AREAS)
        .member("europol", Secret, AREAS)
        .member("frontex", Confidential, AREAS)
        .member("afripol", Secret, &["firearms"])
        .body(BodySpec::observer("unodc", AREAS))
        .build()
        .expect("valid test governance")
}

struct Fixture {
    gov: Governance,
    hub: BodyId,
}

impl Fixture {
    fn new() -> Self {
        Self::with(governance())
    }

    fn with(gov: Governance) -> Self {
        let hub = gov.hub_body().clone();
        Self { gov, hub }
    }

    fn ctx(&self) -> PlanContext<'_> {
        PlanContext {
            gov: &self.gov,
            hub_body: &self.hub,
            actor: ACTOR,
            now_ms: NOW,
        }
    }

    fn run(
        &self,
        new: &PlanRecord,
        previous: &BTreeMap<String, (OverlapRecord, Option<PlanRecord>)>,
        found: &[(Overlap, PlanRecord)],
    ) -> (Effects, IndexOp) {
        plan_deconfliction(new, previous, found, &test_key(), &self.ctx())
    }

    /// `new` deconflicted against `other`, which it must overlap.
    fn run_pair(&self, new: &PlanRecord, other: &PlanRecord) -> (Effects, IndexOp) {
        self.run(new, &BTreeMap::new(), &[found(new, other)])
    }
}

/// The hub's reference key in these tests.
fn test_key() -> ReferenceKey {
    ReferenceKey::new([5; 32])
}

/// The first reference of the overlap of `a` and `b` under the test key.
fn reference(a: &str, b: &str) -> String {
    test_key().reference(a, b, 0)
}

fn plan_id(n: u32) -> String {
    format!("0a000000-0000-4000-8000-{n:012x}")
}

fn message_id(plan: &str, version: u32) -> String {
    format!("0b{version:06x}{}", &plan[8..])
}

/// Plan `n` of `origin`, version 1 (new): an operational RESTRICTED plan
/// over the Mediterranean, Italy and Greece, on drugs and migrant smuggling,
/// from a day ago for ten days.
fn plan(n: u32, origin: &str) -> PlanRecord {
    let id = plan_id(n);
    let message = message_id(&id, 1);
    let contact = format!("duty officer {n}, {origin}");
    PlanRecord {
        regions: Default::default(),
        plan_id: id.clone(),
        origin: origin.to_owned(),
        kind: Kind::OperationalPlan,
        version: 1,
        action: PlanAction::New,
        message_id: message.clone(),
        title: format!("Operation number {n}"),
        contact: contact.clone(),
        labels: Labels {
            message_id: message,
            origin: body(origin),
            kind: Kind::OperationalPlan,
            classification: Restricted,
            marking: None,
            crime_areas: areas(&["drugs", "migrant_smuggling"]),
            regions: strings(&["mediterranean"]),
            countries: strings(&["IT", "GR"]),
            personal_data: false,
            releasable_to: BTreeSet::new(),
            excluded: BTreeSet::new(),
            priority: Priority::Routine,
            created_at_ms: NOW - 1_000,
            expires_at_ms: None,
            third_party_release: false,
            tlp: None,
            handling_code: None,
            handling_restriction: None,
            grading: None,
            not_before_ms: None,
            working_groups: BTreeSet::new(),
            plan: Some(PlanLabels {
                plan_id: id,
                version: 1,
                action: PlanAction::New,
                contact,
            }),
        },
        start_ms: NOW - DAY,
        end_ms: NOW + 10 * DAY,
        targets: Vec::new(),
        updated_at_ms: NOW,
    }
}

/// A later message of the same plan.
fn version(p: &PlanRecord, version: u32, action: PlanAction) -> PlanRecord {
    let mut v = p.clone();
    v.version = version;
    v.action = action;
    v.message_id = message_id(&p.plan_id, version);
    v.labels.message_id = v.message_id.clone();
    if let Some(pl) = v.labels.plan.as_mut() {
        pl.version = version;
        pl.action = action;
    }
    v
}

fn strategic(mut p: PlanRecord) -> PlanRecord {
    p.kind = Kind::StrategicPlan;
    p.labels.kind = Kind::StrategicPlan;
    p
}

fn target(kind: TargetKind, byte: u8) -> (String, String) {
    (kind.as_str().to_owned(), hex::encode([byte; 32]))
}

/// Europol's plan 1 and frontex's plan 2: they share the Mediterranean and
/// Italy, migrant smuggling and a vessel, from in two days to in ten.
fn europol_and_frontex() -> (PlanRecord, PlanRecord) {
    let mut a = plan(1, "europol");
    a.targets = vec![target(TargetKind::Imo, 1)];
    let mut b = plan(2, "frontex");
    b.labels.regions = strings(&["mediterranean", "west-balkans"]);
    b.labels.countries = strings(&["ES", "IT"]);
    b.labels.crime_areas = areas(&["migrant_smuggling", "cybercrime"]);
    b.start_ms = NOW + 2 * DAY;
    b.end_ms = NOW + 20 * DAY;
    b.targets = vec![target(TargetKind::Imo, 1), target(TargetKind::Phone, 2)];
    b.contact = String::new();
    b.labels.plan.as_mut().unwrap().contact = String::new();
    (a, b)
}

/// What `new` shares with `other`, as the index finds it.
fn found(new: &PlanRecord, other: &PlanRecord) -> (Overlap, PlanRecord) {
    let o = overlap(&new.to_index(), &other.to_index()).expect("the plans overlap");
    (o, other.clone())
}

fn notice_of(e: &Enqueue) -> &pb::DeconflictionNotice {
    &e.entry
        .notice
        .as_ref()
        .expect("a deconfliction notice position")
        .0
}

/// The side record that names the position of `e`.
fn record_of<'a>(effects: &'a Effects, e: &Enqueue) -> &'a pb::AuditRecord {
    &effects.audit[e.audit.expect("the position's record")]
}

/// The deconfliction desk's records (the only ones without a recipient).
fn desk_records(effects: &Effects) -> Vec<&pb::AuditRecord> {
    effects
        .audit
        .iter()
        .filter(|r| r.recipient.is_empty())
        .collect()
}

fn enqueued_to<'a>(effects: &'a Effects, to: &str) -> Vec<&'a Enqueue> {
    effects
        .enqueue
        .iter()
        .filter(|e| e.body.as_str() == to)
        .collect()
}

/// The one notice for `to`.
fn only_notice_to<'a>(effects: &'a Effects, to: &str) -> &'a Enqueue {
    let mut found = enqueued_to(effects, to);
    assert_eq!(found.len(), 1, "one notice for {to}: {:?}", effects.enqueue);
    found.remove(0)
}

/// Whether the policy delivers `plan`'s labels to `to`.
fn delivers(gov: &Governance, plan: &PlanRecord, to: &str) -> bool {
    decide(gov, &plan.labels, NOW)
        .iter()
        .any(|d| d.recipient.as_str() == to && d.outcome == Outcome::Deliver)
}

/// A blind notice says only that an overlap exists and whom to call.
fn assert_reveals_nothing(n: &pb::DeconflictionNotice, hub: &str) {
    assert!(n.blind, "{n:?}");
    assert_eq!(n.other_plan_id, "", "{n:?}");
    assert_eq!(n.other_plan_version, 0, "{n:?}");
    assert_eq!(n.other_message_id, "", "{n:?}");
    assert_eq!(n.other_body, "", "{n:?}");
    assert_eq!(n.other_title, "", "{n:?}");
    assert_eq!((n.overlap_start_ms, n.overlap_end_ms), (0, 0), "{n:?}");
    assert!(n.regions.is_empty(), "{n:?}");
    assert!(n.countries.is_empty(), "{n:?}");
    assert!(n.crime_areas.is_empty(), "{n:?}");
    assert!(n.target_kinds.is_empty(), "{n:?}");
    assert!(
        n.contact
            .contains(&format!("the deconfliction desk of {hub}"))
            && n.contact.contains(&n.reference),
        "{}",
        n.contact
    );
}

/// Nothing of `other` in a text meant for the other side.
fn assert_names_nothing_of(text: &str, other: &PlanRecord) {
    for secret in [
        other.origin.as_str(),
        other.plan_id.as_str(),
        other.message_id.as_str(),
        other.title.as_str(),
    ] {
        assert!(!text.contains(secret), "'{text}' names '{secret}'");
    }
    if !other.contact.is_empty() {
        assert!(!text.contains(&other.contact), "'{text}' names the contact");
    }
}

// ---------------------------------------------------------------------
// check_lifecycle
// ---------------------------------------------------------------------

/// The refusal of `new` against `held`: the error and its record, checked
/// for what every refusal's record says.
fn refusal(fx: &Fixture, new: &PlanRecord, held: Option<&PlanRecord>, rule: &str) -> HubError {
    let (err, record) = *check_lifecycle(new, held, &fx.ctx()).expect_err("refused");
    assert_eq!(record.event, "refused");
    assert_eq!(record.message_id, new.message_id);
    assert_eq!(record.origin, new.origin);
    assert_eq!(record.kind, new.kind.as_str());
    assert_eq!(record.classification, new.labels.classification.as_str());
    assert_eq!(record.rule, rule);
    assert_eq!(record.reason, err.to_string());
    assert_eq!(record.policy_version, fx.gov.version());
    assert_eq!(record.actor, ACTOR);
    assert_eq!(record.at_ms, NOW);
    assert!(record.recipient.is_empty());
    err
}

fn lifecycle_problem(err: HubError, plan_id: &str) -> String {
    match err {
        HubError::PlanRefused {
            plan_id: p,
            problem,
        } => {
            assert_eq!(p, plan_id);
            problem
        }
        other => panic!("expected PlanRefused, got {other:?}"),
    }
}

#[test]
fn a_new_plan_the_hub_does_not_hold_passes() {
    let fx = Fixture::new();
    assert!(check_lifecycle(&plan(1, "europol"), None, &fx.ctx()).is_ok());
    let s = strategic(plan(2, "frontex"));
    assert!(check_lifecycle(&s, None, &fx.ctx()).is_ok());
}

#[test]
fn a_change_to_an_unknown_plan_is_refused() {
    let fx = Fixture::new();
    let p = plan(1, "europol");
    for action in [PlanAction::Update, PlanAction::Close, PlanAction::Cancel] {
        let v = version(&p, 2, action);
        let err = refusal(&fx, &v, None, "plan.lifecycle");
        let problem = lifecycle_problem(err, &p.plan_id);
        assert!(problem.contains("not known to the hub"), "{problem}");
        assert!(problem.contains(action.as_str()), "{problem}");
        assert!(problem.contains("version 1"), "{problem}");
    }
}

#[test]
fn only_the_originator_changes_a_plan() {
    let fx = Fixture::new();
    let held = plan(1, "europol");
    for action in [
        PlanAction::Update,
        PlanAction::Close,
        PlanAction::Cancel,
        PlanAction::New,
    ] {
        let mut v = version(&held, if action == PlanAction::New { 1 } else { 2 }, action);
        v.origin = "frontex".into();
        v.labels.origin = body("frontex");
        let err = refusal(&fx, &v, Some(&held), "plan.originator");
        match &err {
            HubError::PlanNotOrigin { caller, plan_id } => {
                assert_eq!(caller, "frontex");
                assert_eq!(plan_id, &held.plan_id);
            }
            other => panic!("expected PlanNotOrigin, got {other:?}"),
        }
        // The record is the caller's, not the plan's originator's.
        let (_, record) = *check_lifecycle(&v, Some(&held), &fx.ctx()).unwrap_err();
        assert_eq!(record.origin, "frontex");
    }
}

#[test]
fn a_new_plan_with_a_held_id_exists() {
    let fx = Fixture::new();
    let held = version(&plan(1, "europol"), 3, PlanAction::Update);
    let again = plan(1, "europol");
    match refusal(&fx, &again, Some(&held), "plan.lifecycle") {
        HubError::PlanExists { plan_id, version } => {
            assert_eq!(plan_id, held.plan_id);
            assert_eq!(version, 3);
        }
        other => panic!("expected PlanExists, got {other:?}"),
    }
    // Even over an ended plan: the id is taken.
    let closed = version(&plan(1, "europol"), 4, PlanAction::Close);
    assert!(matches!(
        refusal(&fx, &again, Some(&closed), "plan.lifecycle"),
        HubError::PlanExists { version: 4, .. }
    ));
}

#[test]
fn an_ended_plan_does_not_change() {
    let fx = Fixture::new();
    let p = plan(1, "europol");
    for (ended, word) in [
        (PlanAction::Close, "closed"),
        (PlanAction::Cancel, "cancelled"),
    ] {
        let held = version(&p, 3, ended);
        for action in [PlanAction::Update, PlanAction::Close, PlanAction::Cancel] {
            let v = version(&p, 4, action);
            let problem =
                lifecycle_problem(refusal(&fx, &v, Some(&held), "plan.lifecycle"), &p.plan_id);
            assert!(problem.contains(word), "{problem}");
            assert!(problem.contains("version 3"), "{problem}");
        }
    }
}

#[test]
fn versions_only_grow_but_may_skip() {
    let fx = Fixture::new();
    let p = plan(1, "europol");
    let held = version(&p, 3, PlanAction::Update);
    for (v, action) in [
        (3, PlanAction::Update),
        (2, PlanAction::Update),
        (1, PlanAction::Close),
        (3, PlanAction::Cancel),
    ] {
        let problem = lifecycle_problem(
            refusal(&fx, &version(&p, v, action), Some(&held), "plan.lifecycle"),
            &p.plan_id,
        );
        assert!(problem.contains("is at version 3"), "{problem}");
        assert!(problem.contains("send 4 or later"), "{problem}");
    }
    // A gap is allowed: versions the hub never saw (sent elsewhere, or
    // refused) do not block later ones.
    let held1 = plan(1, "europol");
    for action in [PlanAction::Update, PlanAction::Close, PlanAction::Cancel] {
        assert!(check_lifecycle(&version(&p, 5, action), Some(&held1), &fx.ctx()).is_ok());
    }
    assert!(check_lifecycle(&version(&p, 4, PlanAction::Update), Some(&held), &fx.ctx()).is_ok());
}

#[test]
fn a_version_cannot_change_the_kind() {
    let fx = Fixture::new();
    let held = plan(1, "europol");
    let v = strategic(version(&held, 2, PlanAction::Update));
    let problem = lifecycle_problem(
        refusal(&fx, &v, Some(&held), "plan.lifecycle"),
        &held.plan_id,
    );
    assert!(problem.contains("operational_plan"), "{problem}");
    assert!(problem.contains("strategic_plan"), "{problem}");
    // And back.
    let held = strategic(plan(2, "europol"));
    let mut v = version(&held, 2, PlanAction::Update);
    v.kind = Kind::OperationalPlan;
    v.labels.kind = Kind::OperationalPlan;
    refusal(&fx, &v, Some(&held), "plan.lifecycle");
}

// ---------------------------------------------------------------------
// plan_deconfliction: full notices
// ---------------------------------------------------------------------

#[test]
fn two_releasable_plans_get_full_notices_each() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    assert!(delivers(&fx.gov, &a, "frontex") && delivers(&fx.gov, &b, "europol"));
    let (effects, op) = fx.run_pair(&a, &b);
    let reference = reference(&a.plan_id, &b.plan_id);
    assert_eq!(reference, self::reference(&b.plan_id, &a.plan_id));
    assert!(
        reference.starts_with("dx-") && reference.len() == 19,
        "{reference}"
    );

    // One notice to each originator, the new plan's first.
    assert_eq!(effects.enqueue.len(), 2);
    assert_eq!(effects.enqueue[0].body.as_str(), "europol");
    assert_eq!(effects.enqueue[1].body.as_str(), "frontex");
    for (e, side, other) in [(&effects.enqueue[0], &a, &b), (&effects.enqueue[1], &b, &a)] {
        let n = notice_of(e);
        assert!(!n.blind);
        assert_eq!(n.reference, reference);
        assert_eq!(n.change, pb::NoticeChange::OverlapFound as i32);
        assert_eq!(n.kind, pb::OverlapKind::Conflict as i32);
        assert_eq!(n.noticed_at_ms, NOW);
        assert_eq!(n.plan_id, side.plan_id);
        assert_eq!(n.plan_version, side.version);
        assert_eq!(n.message_id, side.message_id);
        assert_eq!(n.other_plan_id, other.plan_id);
        assert_eq!(n.other_plan_version, other.version);
        assert_eq!(n.other_message_id, other.message_id);
        assert_eq!(n.other_body, other.origin);
        assert_eq!(n.other_title, other.title);
        // The intersection of the windows; places without their index
        // prefixes; what is shared, never what is not.
        assert_eq!(
            (n.overlap_start_ms, n.overlap_end_ms),
            (NOW + 2 * DAY, NOW + 10 * DAY)
        );
        assert_eq!(n.regions, vec_of(&["mediterranean"]));
        assert_eq!(n.countries, vec_of(&["IT"]));
        assert_eq!(n.crime_areas, vec_of(&["migrant_smuggling"]));
        assert_eq!(n.target_kinds, vec_of(&["imo"]));
        // The position is the side's own plan message's.
        assert_eq!(e.entry.message_id, side.message_id);
        assert_eq!(e.entry.origin, side.origin);
        assert_eq!(e.entry.routed_at_ms, NOW);
        assert!(!e.entry.is_message());
        // Its record: the side's own view.
        let r = record_of(&effects, e);
        assert_eq!(r.event, "deconflicted");
        assert_eq!(r.origin, side.origin);
        assert_eq!(r.recipient, side.origin);
        assert_eq!(r.message_id, side.message_id);
        assert_eq!(r.rule, "deconfliction.full");
        assert_eq!(r.kind, "operational_plan");
        assert_eq!(r.classification, "RESTRICTED");
        assert_eq!(r.policy_version, fx.gov.version());
        assert_eq!(r.at_ms, NOW);
        for word in [
            "full notice",
            reference.as_str(),
            "conflict found",
            other.origin.as_str(),
            other.plan_id.as_str(),
            "mediterranean",
            "IT",
            "migrant_smuggling",
            "imo",
        ] {
            assert!(r.reason.contains(word), "'{}' lacks '{word}'", r.reason);
        }
    }
    // Whom to contact: the other plan's contact, or its body's desk.
    assert_eq!(notice_of(&effects.enqueue[1]).contact, a.contact);
    assert_eq!(
        notice_of(&effects.enqueue[0]).contact,
        "frontex's liaison desk"
    );

    // Two side records and the desk's, which names both plans.
    assert_eq!(effects.audit.len(), 3);
    let desk = desk_records(&effects);
    assert_eq!(desk.len(), 1);
    let d = desk[0];
    assert_eq!(d.event, "deconflicted");
    assert_eq!(d.origin, "interpol");
    assert_eq!(d.rule, "deconfliction.full");
    assert_eq!(d.message_id, a.message_id);
    for word in [
        reference.as_str(),
        "found",
        "europol",
        "frontex",
        a.plan_id.as_str(),
        b.plan_id.as_str(),
        a.message_id.as_str(),
        b.message_id.as_str(),
        "full",
        "deliver.all_rules_passed",
    ] {
        assert!(d.reason.contains(word), "'{}' lacks '{word}'", d.reason);
    }

    // The plan, then the overlap both ways.
    assert_eq!(
        effects.writes,
        vec![
            Write::Plan(Box::new(a.clone())),
            Write::Overlap {
                plan: a.plan_id.clone(),
                other: b.plan_id.clone(),
                record: Some(OverlapRecord {
                    generation: 0,
                    reference: reference.clone(),
                    blind: false,
                    other_body: "frontex".into(),
                }),
            },
            Write::Overlap {
                plan: b.plan_id.clone(),
                other: a.plan_id.clone(),
                record: Some(OverlapRecord {
                    generation: 0,
                    reference: reference.clone(),
                    blind: false,
                    other_body: "europol".into(),
                }),
            },
        ]
    );
    assert_eq!(op, IndexOp::Put(a.to_index()));
}

#[test]
fn the_reference_is_symmetric_and_stable() {
    let (a, b) = (plan_id(1), plan_id(2));
    assert_eq!(reference(&a, &b), reference(&b, &a));
    assert_ne!(reference(&a, &b), reference(&a, &plan_id(3)));
    assert_eq!(reference(&a, &b), reference(&a, &b));
    // Which side is deconflicted does not change it.
    let fx = Fixture::new();
    let (pa, pb) = europol_and_frontex();
    let (one, _) = fx.run_pair(&pa, &pb);
    let (two, _) = fx.run_pair(&pb, &pa);
    let refs = |e: &Effects| -> BTreeSet<String> {
        e.enqueue
            .iter()
            .map(|q| notice_of(q).reference.clone())
            .collect()
    };
    assert_eq!(refs(&one), refs(&two));
    assert_eq!(refs(&one).len(), 1);
}

#[test]
fn the_other_side_of_a_found_overlap_sees_its_own_view() {
    // Frontex's plan deconflicted against europol's: the same overlap,
    // seen from the new plan's side first.
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let (effects, _) = fx.run_pair(&b, &a);
    let e = only_notice_to(&effects, "europol");
    let n = notice_of(e);
    assert_eq!(n.plan_id, a.plan_id);
    assert_eq!(n.other_plan_id, b.plan_id);
    assert_eq!(n.countries, vec_of(&["IT"]));
    assert_eq!(n.target_kinds, vec_of(&["imo"]));
    assert_eq!(effects.enqueue[0].body.as_str(), "frontex");
    assert_eq!(desk_records(&effects)[0].message_id, b.message_id);
}

#[test]
fn two_strategic_plans_align() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let (a, b) = (strategic(a), strategic(b));
    let (effects, _) = fx.run_pair(&a, &b);
    for e in &effects.enqueue {
        let n = notice_of(e);
        assert_eq!(n.kind, pb::OverlapKind::Alignment as i32);
        assert!(!n.blind);
        let r = record_of(&effects, e);
        assert!(r.reason.contains("alignment found"), "{}", r.reason);
        assert_eq!(r.kind, "strategic_plan");
    }
}

#[test]
fn a_shared_target_alone_is_named_by_kind_only() {
    let fx = Fixture::new();
    let (a, mut b) = europol_and_frontex();
    b.labels.crime_areas = areas(&["cybercrime"]);
    let (effects, _) = fx.run_pair(&a, &b);
    for e in &effects.enqueue {
        let n = notice_of(e);
        assert!(n.crime_areas.is_empty());
        assert_eq!(n.target_kinds, vec_of(&["imo"]));
        let r = record_of(&effects, e);
        assert!(!r.reason.contains(&hex::encode([1u8; 32])), "{}", r.reason);
        assert!(r.reason.contains("crime areas none"), "{}", r.reason);
    }
}

#[test]
fn several_overlaps_are_decided_each_on_its_own() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    // interpol may receive europol's plan, but europol's is withheld from
    // afripol (its mandate is firearms).
    let mut c = plan(3, "interpol");
    c.labels.crime_areas = areas(&["drugs", "firearms"]);
    let mut d = plan(4, "afripol");
    d.labels.crime_areas = areas(&["drugs", "firearms"]);
    assert!(!delivers(&fx.gov, &a, "afripol"));
    let found_all = [found(&a, &b), found(&a, &c), found(&a, &d)];
    let (effects, _) = fx.run(&a, &BTreeMap::new(), &found_all);
    assert_eq!(effects.enqueue.len(), 6);
    assert_eq!(enqueued_to(&effects, "europol").len(), 3);
    assert_eq!(desk_records(&effects).len(), 3);
    let blind: Vec<(String, bool)> = enqueued_to(&effects, "europol")
        .iter()
        .map(|e| {
            let n = notice_of(e);
            (n.reference.clone(), n.blind)
        })
        .collect();
    assert_eq!(
        blind,
        vec![
            (reference(&a.plan_id, &b.plan_id), false),
            (reference(&a.plan_id, &c.plan_id), false),
            (reference(&a.plan_id, &d.plan_id), true),
        ]
    );
    assert_reveals_nothing(notice_of(only_notice_to(&effects, "afripol")), "interpol");
    assert!(!notice_of(only_notice_to(&effects, "interpol")).blind);
    // One plan write, two overlap writes per overlap.
    assert_eq!(effects.writes.len(), 7);
    // Every position points at its own side record.
    for e in &effects.enqueue {
        assert_eq!(record_of(&effects, e).recipient, e.body.as_str());
        assert_eq!(record_of(&effects, e).message_id, e.entry.message_id);
    }
}

// ---------------------------------------------------------------------
// plan_deconfliction: blind notices
// ---------------------------------------------------------------------

/// Checks a blind overlap of `new` (europol's, unless changed) with
/// `other`: both notices blind and empty, side records naming nothing of
/// the other side, the desk record naming the rule, both bodies and the
/// withholding rule `why`.
fn assert_blind(fx: &Fixture, new: &PlanRecord, other: &PlanRecord, why: &str) {
    let (effects, op) = fx.run_pair(new, other);
    let reference = reference(&new.plan_id, &other.plan_id);
    assert_eq!(effects.enqueue.len(), 2);
    for (side, them) in [(new, other), (other, new)] {
        let e = only_notice_to(&effects, &side.origin);
        let n = notice_of(e);
        assert_reveals_nothing(n, "interpol");
        assert_eq!(n.reference, reference);
        assert_eq!(n.plan_id, side.plan_id);
        assert_eq!(n.plan_version, side.version);
        assert_eq!(n.message_id, side.message_id);
        assert_eq!(n.change, pb::NoticeChange::OverlapFound as i32);
        let r = record_of(&effects, e);
        assert_eq!(r.rule, "deconfliction.blind");
        assert_eq!(r.origin, side.origin);
        assert_eq!(r.recipient, side.origin);
        assert!(r.reason.contains("blind notice"), "{}", r.reason);
        assert!(r.reason.contains(&reference), "{}", r.reason);
        assert_names_nothing_of(&r.reason, them);
        assert_names_nothing_of(&n.contact, them);
    }
    let desk = desk_records(&effects);
    assert_eq!(desk.len(), 1);
    let d = desk[0];
    assert_eq!(d.origin, "interpol");
    assert_eq!(d.rule, "deconfliction.blind");
    for word in [
        reference.as_str(),
        "blind",
        new.origin.as_str(),
        other.origin.as_str(),
        new.plan_id.as_str(),
        other.plan_id.as_str(),
        why,
    ] {
        assert!(d.reason.contains(word), "'{}' lacks '{word}'", d.reason);
    }
    let blind_record = |other_body: &str| {
        Some(OverlapRecord {
            generation: 0,
            reference: reference.clone(),
            blind: true,
            other_body: other_body.to_owned(),
        })
    };
    assert_eq!(
        &effects.writes[1..],
        &[
            Write::Overlap {
                plan: new.plan_id.clone(),
                other: other.plan_id.clone(),
                record: blind_record(&other.origin),
            },
            Write::Overlap {
                plan: other.plan_id.clone(),
                other: new.plan_id.clone(),
                record: blind_record(&new.origin),
            },
        ]
    );
    assert_eq!(op, IndexOp::Put(new.to_index()));
}

#[test]
fn a_plan_above_the_other_bodys_clearance_makes_both_notices_blind() {
    let fx = Fixture::new();
    let (mut a, b) = europol_and_frontex();
    a.labels.classification = Secret;
    assert!(!delivers(&fx.gov, &a, "frontex"));
    assert!(delivers(&fx.gov, &b, "europol"));
    assert_blind(&fx, &a, &b, "europol to frontex: recipient.clearance");
    // The same seen from the other plan's submission.
    assert_blind(&fx, &b, &a, "europol to frontex: recipient.clearance");
}

#[test]
fn a_plan_not_releasable_to_the_other_body_makes_both_notices_blind() {
    let fx = Fixture::new();
    let (mut a, b) = europol_and_frontex();
    a.labels.releasable_to = bodies(&["interpol"]);
    assert_blind(&fx, &a, &b, "europol to frontex: originator.releasability");
    // Naming the other body releases it.
    a.labels.releasable_to = bodies(&["interpol", "frontex"]);
    let (effects, _) = fx.run_pair(&a, &b);
    assert!(effects.enqueue.iter().all(|e| !notice_of(e).blind));
}

#[test]
fn a_plan_that_excludes_the_other_body_makes_both_notices_blind() {
    let fx = Fixture::new();
    let (mut a, mut b) = europol_and_frontex();
    a.labels.excluded = bodies(&["frontex"]);
    assert_blind(&fx, &a, &b, "europol to frontex: originator.exclusion");
    // The other plan's exclusion, seen from the new plan.
    a.labels.excluded.clear();
    b.labels.excluded = bodies(&["europol"]);
    assert_blind(&fx, &a, &b, "frontex to europol: originator.exclusion");
}

#[test]
fn an_observer_that_does_not_accept_plans_gets_a_blind_notice() {
    let fx = Fixture::new();
    let (mut a, _) = europol_and_frontex();
    // Within the observer's clearance: its kinds withhold the plan.
    a.labels.classification = Classification::OfficialUse;
    let mut u = plan(5, "unodc");
    u.labels.crime_areas = areas(&["migrant_smuggling"]);
    assert!(!delivers(&fx.gov, &a, "unodc"));
    assert!(delivers(&fx.gov, &u, "europol"));
    assert_blind(&fx, &a, &u, "europol to unodc: recipient.kind");
    assert_blind(&fx, &u, &a, "europol to unodc: recipient.kind");
    // Above it, its clearance does.
    a.labels.classification = Restricted;
    assert_blind(&fx, &a, &u, "europol to unodc: recipient.clearance");
}

#[test]
fn a_plan_under_embargo_is_released_to_nobody_yet() {
    let fx = Fixture::new();
    let (mut a, b) = europol_and_frontex();
    a.labels.not_before_ms = Some(NOW + DAY);
    // The policy alone would deliver it (the embargo only holds it).
    assert!(delivers(&fx.gov, &a, "frontex"));
    assert_blind(&fx, &a, &b, "embargo");
    // The other plan's embargo blinds the overlap too.
    let (a, mut b) = europol_and_frontex();
    b.labels.not_before_ms = Some(NOW + 1);
    assert_blind(&fx, &a, &b, "embargo");
    // An embargo that has ended does not.
    b.labels.not_before_ms = Some(NOW);
    let (effects, _) = fx.run_pair(&a, &b);
    assert!(effects.enqueue.iter().all(|e| !notice_of(e).blind));
}

#[test]
fn a_plan_of_a_body_outside_the_federation_is_blind() {
    let fx = Fixture::new();
    let (a, _) = europol_and_frontex();
    let mut x = plan(6, "ameripol");
    x.labels.crime_areas = areas(&["drugs"]);
    assert_blind(&fx, &a, &x, "ameripol is not a body of the federation");
}

/// The records that name the other side of a blind overlap must not be
/// shown to the submitting body: the hub shows a body's auditors every
/// record whose actor is one of its nodes (`HubState::audit_visible`), so
/// the other side's record and the desk's record must not carry the
/// submitting node as their actor.
#[test]
fn a_blind_overlaps_other_records_are_not_attributed_to_the_submitter() {
    let fx = Fixture::new();
    let (mut a, b) = europol_and_frontex();
    a.labels.classification = Secret;
    let (effects, _) = fx.run_pair(&a, &b);
    let submitter: Identity = ACTOR.parse().unwrap();
    for r in &effects.audit {
        if r.origin == a.origin {
            continue;
        }
        let attributed = r
            .actor
            .parse::<Identity>()
            .is_ok_and(|i| i.body == submitter.body);
        assert!(
            !attributed,
            "a record of {} ({}) has the submitter's actor {}: {}",
            r.origin, r.rule, r.actor, r.reason
        );
    }
}

// ---------------------------------------------------------------------
// plan_deconfliction: the index, changes and clearing
// ---------------------------------------------------------------------

#[test]
fn an_active_plan_is_put_an_ended_one_removed() {
    let fx = Fixture::new();
    let p = plan(1, "europol");
    let none = BTreeMap::new();
    let (effects, op) = fx.run(&p, &none, &[]);
    assert_eq!(op, IndexOp::Put(p.to_index()));
    assert_eq!(effects.writes, vec![Write::Plan(Box::new(p.clone()))]);
    assert!(effects.enqueue.is_empty() && effects.audit.is_empty());
    let v2 = version(&p, 2, PlanAction::Update);
    assert_eq!(fx.run(&v2, &none, &[]).1, IndexOp::Put(v2.to_index()));
    for action in [PlanAction::Close, PlanAction::Cancel] {
        let v = version(&p, 2, action);
        let (effects, op) = fx.run(&v, &none, &[]);
        assert_eq!(op, IndexOp::Remove(p.plan_id.clone()));
        assert_eq!(effects.writes, vec![Write::Plan(Box::new(v.clone()))]);
    }
    // A window that ended (the end is excluded) leaves the index too.
    for end in [NOW, NOW - 1] {
        let mut late = version(&p, 2, PlanAction::Update);
        late.end_ms = end;
        assert_eq!(
            fx.run(&late, &none, &[]).1,
            IndexOp::Remove(p.plan_id.clone())
        );
    }
    let mut last = version(&p, 2, PlanAction::Update);
    last.end_ms = NOW + 1;
    assert!(matches!(fx.run(&last, &none, &[]).1, IndexOp::Put(_)));
}

fn previous_of(
    other: &PlanRecord,
    reference: &str,
    blind: bool,
    other_body: &str,
) -> BTreeMap<String, (OverlapRecord, Option<PlanRecord>)> {
    BTreeMap::from([(
        other.plan_id.clone(),
        (
            OverlapRecord {
                generation: 0,
                reference: reference.to_owned(),
                blind,
                other_body: other_body.to_owned(),
            },
            Some(other.clone()),
        ),
    )])
}

#[test]
fn an_overlap_still_found_is_changed() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let mut v2 = version(&a, 2, PlanAction::Update);
    v2.end_ms = NOW + 5 * DAY;
    let r = reference(&a.plan_id, &b.plan_id);
    let previous = previous_of(&b, &r, false, "frontex");
    let (effects, _) = fx.run(&v2, &previous, &[found(&v2, &b)]);
    assert_eq!(effects.enqueue.len(), 2);
    for e in &effects.enqueue {
        let n = notice_of(e);
        assert_eq!(n.change, pb::NoticeChange::OverlapChanged as i32);
        assert_eq!(n.reference, r);
        assert!(!n.blind);
        assert_eq!(n.overlap_end_ms, NOW + 5 * DAY);
        assert!(record_of(&effects, e).reason.contains("conflict changed"));
    }
    assert_eq!(
        notice_of(only_notice_to(&effects, "frontex")).other_plan_version,
        2
    );
    let desk = desk_records(&effects);
    assert_eq!(desk.len(), 1);
    assert!(
        desk[0].reason.contains(&format!("{r} changed")),
        "{}",
        desk[0].reason
    );
    // No removal: the overlap stays, rewritten.
    assert!(effects
        .writes
        .iter()
        .all(|w| !matches!(w, Write::Overlap { record: None, .. })));
    // A change that makes it blind is decided afresh: blind now, and
    // under a new reference (both sides know the old one's plans), after
    // a blind cleared notice under the old one.
    let mut secret = version(&a, 3, PlanAction::Update);
    secret.labels.classification = Secret;
    let (effects, _) = fx.run(&secret, &previous, &[found(&secret, &b)]);
    let told: Vec<(i32, String)> = effects
        .enqueue
        .iter()
        .map(|e| {
            let n = notice_of(e);
            assert_reveals_nothing(n, "interpol");
            (n.change, n.reference.clone())
        })
        .collect();
    let next = test_key().reference(&a.plan_id, &b.plan_id, 1);
    assert_ne!(next, r);
    let cleared = pb::NoticeChange::OverlapCleared as i32;
    let found_again = pb::NoticeChange::OverlapFound as i32;
    assert_eq!(
        told,
        vec![
            (cleared, r.clone()),
            (cleared, r.clone()),
            (found_again, next.clone()),
            (found_again, next.clone())
        ]
    );
    let turned = effects
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Overlap {
                record: Some(rec), ..
            } => Some((rec.generation, rec.reference.clone(), rec.blind)),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(
        turned,
        vec![(1, next.clone(), true), (1, next.clone(), true)]
    );

    // Blind that stays blind, or turns full, keeps its reference: nothing
    // about the plans was told under it.
    let blind_before = previous_of(&b, &r, true, "frontex");
    for (v, _) in [(&secret, "stays blind"), (&v2, "turns full")] {
        let (effects, _) = fx.run(v, &blind_before, &[found(v, &b)]);
        assert_eq!(effects.enqueue.len(), 2);
        for e in &effects.enqueue {
            let n = notice_of(e);
            assert_eq!(n.change, pb::NoticeChange::OverlapChanged as i32);
            assert_eq!(n.reference, r);
        }
    }
}

fn assert_cleared_writes(effects: &Effects, a: &PlanRecord, b: &PlanRecord) {
    assert_eq!(
        &effects.writes[1..],
        &[
            Write::Overlap {
                plan: a.plan_id.clone(),
                other: b.plan_id.clone(),
                record: None,
            },
            Write::Overlap {
                plan: b.plan_id.clone(),
                other: a.plan_id.clone(),
                record: None,
            },
        ]
    );
}

#[test]
fn an_overlap_no_longer_found_is_cleared_for_both_sides() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let r = reference(&a.plan_id, &b.plan_id);
    // Europol moves its plan to Greece only, then closes it: either way the
    // overlap is gone.
    let mut moved = version(&a, 2, PlanAction::Update);
    moved.labels.regions.clear();
    moved.labels.countries = strings(&["GR"]);
    let closed = version(&a, 3, PlanAction::Close);
    for new in [moved, closed] {
        let (effects, op) = fx.run(&new, &previous_of(&b, &r, false, "frontex"), &[]);
        assert_eq!(effects.writes[0], Write::Plan(Box::new(new.clone())));
        assert_cleared_writes(&effects, &new, &b);
        assert_eq!(effects.enqueue.len(), 2);
        for (side, other) in [(&new, &b), (&b, &new)] {
            let e = only_notice_to(&effects, &side.origin);
            let n = notice_of(e);
            assert_eq!(n.change, pb::NoticeChange::OverlapCleared as i32);
            assert_eq!(n.reference, r);
            assert!(!n.blind);
            assert_eq!(n.plan_id, side.plan_id);
            assert_eq!(n.other_plan_id, other.plan_id);
            // Nothing is shared any more.
            assert_eq!((n.overlap_start_ms, n.overlap_end_ms), (0, 0));
            assert!(n.regions.is_empty() && n.countries.is_empty());
            assert!(n.crime_areas.is_empty() && n.target_kinds.is_empty());
            let rec = record_of(&effects, e);
            assert_eq!(rec.rule, "deconfliction.full");
            assert_eq!(rec.recipient, side.origin);
            assert!(rec.reason.contains("conflict cleared"), "{}", rec.reason);
        }
        let desk = desk_records(&effects);
        assert_eq!(desk.len(), 1);
        assert_eq!(desk[0].rule, "deconfliction.full");
        assert!(desk[0].reason.contains(&format!("{r} cleared")));
        assert!(desk[0].reason.contains(new.action.as_str()));
        assert!(desk[0].reason.contains(&b.plan_id));
        if new.action == PlanAction::Close {
            assert_eq!(op, IndexOp::Remove(a.plan_id.clone()));
        } else {
            assert_eq!(op, IndexOp::Put(new.to_index()));
        }
    }
}

#[test]
fn a_blind_overlap_is_cleared_blind() {
    let fx = Fixture::new();
    let (mut a, b) = europol_and_frontex();
    a.labels.classification = Secret;
    let r = reference(&a.plan_id, &b.plan_id);
    let cancelled = version(&a, 2, PlanAction::Cancel);
    let (effects, op) = fx.run(&cancelled, &previous_of(&b, &r, true, "frontex"), &[]);
    assert_cleared_writes(&effects, &cancelled, &b);
    assert_eq!(effects.enqueue.len(), 2);
    for (side, other) in [(&cancelled, &b), (&b, &cancelled)] {
        let e = only_notice_to(&effects, &side.origin);
        let n = notice_of(e);
        assert_eq!(n.change, pb::NoticeChange::OverlapCleared as i32);
        assert_eq!(n.reference, r);
        assert_reveals_nothing(n, "interpol");
        let rec = record_of(&effects, e);
        assert_eq!(rec.rule, "deconfliction.blind");
        assert_names_nothing_of(&rec.reason, other);
    }
    let desk = desk_records(&effects);
    assert_eq!(desk.len(), 1);
    assert_eq!(desk[0].rule, "deconfliction.blind");
    assert!(desk[0].reason.contains(&b.plan_id) && desk[0].reason.contains("europol"));
    assert_eq!(op, IndexOp::Remove(a.plan_id.clone()));
}

#[test]
fn a_plan_whose_window_ended_hears_nothing_more() {
    let fx = Fixture::new();
    let (a, mut b) = europol_and_frontex();
    b.start_ms = NOW - 5 * DAY;
    b.end_ms = NOW - DAY;
    assert!(!b.active(NOW));
    let r = reference(&a.plan_id, &b.plan_id);
    let v2 = version(&a, 2, PlanAction::Update);
    let (effects, _) = fx.run(&v2, &previous_of(&b, &r, false, "frontex"), &[]);
    assert_cleared_writes(&effects, &v2, &b);
    assert_eq!(effects.enqueue.len(), 1);
    assert_eq!(effects.enqueue[0].body.as_str(), "europol");
    let n = notice_of(&effects.enqueue[0]);
    assert_eq!(n.change, pb::NoticeChange::OverlapCleared as i32);
    assert_eq!(n.plan_id, a.plan_id);
    assert_eq!(desk_records(&effects).len(), 1);
    // A closed other plan likewise.
    let (a, b) = europol_and_frontex();
    let b_closed = version(&b, 2, PlanAction::Close);
    let (effects, _) = fx.run(&v2, &previous_of(&b_closed, &r, false, "frontex"), &[]);
    assert_eq!(effects.enqueue.len(), 1);
    assert_eq!(notice_of(&effects.enqueue[0]).plan_id, a.plan_id);
}

#[test]
fn an_overlap_with_a_plan_the_hub_no_longer_holds_is_only_removed() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let r = reference(&a.plan_id, &b.plan_id);
    let previous = BTreeMap::from([(
        b.plan_id.clone(),
        (
            OverlapRecord {
                generation: 0,
                reference: r,
                blind: false,
                other_body: "frontex".into(),
            },
            None,
        ),
    )]);
    let v2 = version(&a, 2, PlanAction::Update);
    let (effects, _) = fx.run(&v2, &previous, &[]);
    assert_cleared_writes(&effects, &v2, &b);
    assert!(effects.enqueue.is_empty());
    assert!(effects.audit.is_empty());
}

/// A full overlap cleared by a version that the policy now withholds from
/// the other body: the other side's cleared notice describes the new
/// version (its title, message, version), which that body may not receive.
#[test]
fn a_cleared_notice_does_not_reveal_a_version_withheld_from_the_other_body() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let r = reference(&a.plan_id, &b.plan_id);
    let mut v2 = version(&a, 2, PlanAction::Update);
    v2.labels.classification = Secret;
    v2.title = "Operation number 1, phase two (SECRET)".into();
    v2.labels.countries = strings(&["GR"]);
    v2.labels.regions.clear();
    assert!(!delivers(&fx.gov, &v2, "frontex"));
    let (effects, _) = fx.run(&v2, &previous_of(&b, &r, false, "frontex"), &[]);
    let n = notice_of(only_notice_to(&effects, "frontex"));
    assert_eq!(n.change, pb::NoticeChange::OverlapCleared as i32);
    assert_ne!(n.other_title, v2.title, "{n:?}");
    assert_ne!(n.other_message_id, v2.message_id, "{n:?}");
    assert_reveals_nothing(n, "interpol");
}

#[test]
fn found_and_cleared_overlaps_in_one_message() {
    let fx = Fixture::new();
    let (a, b) = europol_and_frontex();
    let mut c = plan(3, "interpol");
    c.labels.countries = strings(&["GR"]);
    c.labels.regions.clear();
    let mut previous = previous_of(&c, &reference(&a.plan_id, &c.plan_id), false, "interpol");
    previous.extend(previous_of(
        &b,
        &reference(&a.plan_id, &b.plan_id),
        false,
        "frontex",
    ));
    // Version 2 leaves Greece: the overlap with c is gone, b's stays.
    let mut v2 = version(&a, 2, PlanAction::Update);
    v2.labels.countries = strings(&["IT"]);
    let (effects, _) = fx.run(&v2, &previous, &[found(&v2, &b)]);
    let changes: BTreeMap<String, i32> = effects
        .enqueue
        .iter()
        .map(|e| (e.body.to_string(), notice_of(e).change))
        .filter(|(who, _)| who != "europol")
        .collect();
    assert_eq!(
        changes,
        BTreeMap::from([
            ("frontex".into(), pb::NoticeChange::OverlapChanged as i32),
            ("interpol".into(), pb::NoticeChange::OverlapCleared as i32),
        ])
    );
    assert_eq!(enqueued_to(&effects, "europol").len(), 2);
    assert_eq!(desk_records(&effects).len(), 2);
    assert!(effects.writes.contains(&Write::Overlap {
        plan: c.plan_id.clone(),
        other: a.plan_id.clone(),
        record: None,
    }));
}

// ---------------------------------------------------------------------
// The property: a blind notice never reveals anything
// ---------------------------------------------------------------------

const BODIES: [&str; 5] = ["interpol", "europol", "frontex", "afripol", "unodc"];

fn arb_plan(n: u32) -> impl Strategy<Value = PlanRecord> {
    (
        (
            0..BODIES.len(),
            0i64..20,
            1i64..15,
            proptest::sample::subsequence(vec!["mediterranean", "sahel", "west-balkans"], 0..=2),
            proptest::sample::subsequence(vec!["IT", "GR", "NG"], 0..=2),
            proptest::sample::subsequence(vec!["drugs", "migrant_smuggling", "firearms"], 1..=2),
            proptest::collection::btree_set(0u8..3, 0..=2),
        ),
        (
            proptest::sample::select(Classification::ALL.to_vec()),
            proptest::sample::subsequence(BODIES.to_vec(), 0..=3),
            proptest::sample::subsequence(BODIES.to_vec(), 0..=2),
            any::<bool>(),
            proptest::option::of(-2i64..3),
            any::<bool>(),
        ),
    )
        .prop_map(
            move |(
                (origin, start, len, regions, countries, crime_areas, targets),
                (classification, releasable_to, excluded, personal_data, embargo, contact),
            )| {
                let mut p = plan(n, BODIES[origin]);
                p.start_ms = NOW + (start - 10) * DAY;
                p.end_ms = p.start_ms + len * DAY;
                p.labels.regions = strings(&regions);
                p.labels.countries = strings(&countries);
                if regions.is_empty() && countries.is_empty() {
                    p.labels.countries = strings(&["IT"]);
                }
                p.labels.crime_areas = areas(&crime_areas);
                p.targets = targets
                    .into_iter()
                    .map(|t| target(TargetKind::Imo, t))
                    .collect();
                p.labels.classification = classification;
                p.labels.releasable_to = bodies(&releasable_to);
                p.labels.excluded = bodies(&excluded);
                p.labels.personal_data = personal_data;
                p.labels.not_before_ms = embargo.map(|h| NOW + h * 3_600_000);
                if !contact {
                    p.contact.clear();
                }
                p
            },
        )
}

fn released(gov: &Governance, plan: &PlanRecord, to: &str) -> bool {
    plan.labels.not_before_ms.is_none_or(|t| t <= NOW) && delivers(gov, plan, to)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the plans and the policy, a notice is full exactly when
    /// each plan may be released to the other body, and a blind notice
    /// and its side record say nothing of the other plan.
    #[test]
    fn a_blind_notice_never_reveals_anything(
        a in arb_plan(1),
        b in arb_plan(2),
        strategic_pair in any::<bool>(),
        previously in proptest::option::of(any::<bool>()),
    ) {
        let fx = Fixture::new();
        let (a, b) = if strategic_pair { (strategic(a), strategic(b)) } else { (a, b) };
        let previous = match previously {
            Some(blind) => previous_of(&b, &reference(&a.plan_id, &b.plan_id), blind, &b.origin),
            None => BTreeMap::new(),
        };
        // The store looks for overlaps of active plans only.
        let found_now: Vec<_> = if a.active(NOW) && b.active(NOW) {
            overlap(&a.to_index(), &b.to_index())
                .map(|o| (o, b.clone()))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let (effects, op) = fx.run(&a, &previous, &found_now);
        if a.active(NOW) {
            prop_assert_eq!(op, IndexOp::Put(a.to_index()));
        } else {
            prop_assert_eq!(op, IndexOp::Remove(a.plan_id.clone()));
        }
        if found_now.is_empty() {
            // Only a previous overlap, now cleared, can be told: to the new
            // plan's side, and to the other's while it is active.
            let told = if previous.is_empty() { 0 } else { 1 + usize::from(b.active(NOW)) };
            prop_assert_eq!(effects.enqueue.len(), told);
            for e in &effects.enqueue {
                let n = notice_of(e);
                prop_assert_eq!(n.change, pb::NoticeChange::OverlapCleared as i32);
                // Blind stays blind; full stays full only while each plan
                // may still be released to the other body.
                let releasable_now =
                    released(&fx.gov, &a, &b.origin) && released(&fx.gov, &b, &a.origin);
                prop_assert_eq!(n.blind, previously == Some(true) || !releasable_now);
            }
            return Ok(());
        }
        let releasable = released(&fx.gov, &a, &b.origin) && released(&fx.gov, &b, &a.origin);
        // A full overlap that turns blind is cleared under the reference
        // both sides know and goes on under a new one.
        let turned_blind = previously == Some(false) && !releasable;
        let old = reference(&a.plan_id, &b.plan_id);
        prop_assert_eq!(effects.enqueue.len(), if turned_blind { 4 } else { 2 });
        prop_assert_eq!(desk_records(&effects).len(), if turned_blind { 2 } else { 1 });
        for e in &effects.enqueue {
            let n = notice_of(e);
            if n.change == pb::NoticeChange::OverlapCleared as i32 {
                prop_assert!(turned_blind);
                prop_assert_eq!(&n.reference, &old);
                assert_reveals_nothing(n, "interpol");
                continue;
            }
            if turned_blind {
                prop_assert_ne!(&n.reference, &old);
                prop_assert_eq!(n.change, pb::NoticeChange::OverlapFound as i32);
            } else {
                prop_assert_eq!(&n.reference, &old);
            }
            let (side, other) = if e.body.as_str() == a.origin { (&a, &b) } else { (&b, &a) };
            prop_assert_eq!(e.body.as_str(), side.origin.as_str());
            prop_assert_eq!(&n.plan_id, &side.plan_id);
            let r = record_of(&effects, e);
            prop_assert_eq!(&r.recipient, &side.origin);
            prop_assert_eq!(n.blind, !releasable, "{:?}", n);
            if n.blind {
                assert_reveals_nothing(n, "interpol");
                assert_names_nothing_of(&r.reason, other);
                prop_assert_eq!(&r.rule, "deconfliction.blind");
            } else {
                prop_assert!(delivers(&fx.gov, &a, &b.origin));
                prop_assert!(delivers(&fx.gov, &b, &a.origin));
                prop_assert_eq!(&n.other_plan_id, &other.plan_id);
                prop_assert_eq!(&r.rule, "deconfliction.full");
                prop_assert!(n.overlap_start_ms < n.overlap_end_ms);
                prop_assert!(n.overlap_start_ms >= a.start_ms.max(b.start_ms));
                prop_assert!(n.overlap_end_ms <= a.end_ms.min(b.end_ms));
                prop_assert!(!n.regions.is_empty() || !n.countries.is_empty());
                prop_assert!(!n.crime_areas.is_empty() || !n.target_kinds.is_empty());
                for place in n.regions.iter().chain(&n.countries) {
                    prop_assert!(!place.contains(':'), "{}", place);
                }
            }
        }
        let desk = desk_records(&effects);
        let d = desk[desk.len() - 1];
        prop_assert_eq!(
            &d.rule,
            if releasable { "deconfliction.full" } else { "deconfliction.blind" }
        );
        for word in [&a.origin, &b.origin, &a.plan_id, &b.plan_id] {
            prop_assert!(d.reason.contains(word.as_str()), "{}", d.reason);
        }
    }
}

// ---------------------------------------------------------------------
// StoredNotice, parse_targets
// ---------------------------------------------------------------------

fn sample_notice() -> pb::DeconflictionNotice {
    pb::DeconflictionNotice {
        reference: "dx-0123456789abcdef".into(),
        plan_id: plan_id(1),
        plan_version: 3,
        message_id: message_id(&plan_id(1), 3),
        kind: pb::OverlapKind::Conflict as i32,
        change: pb::NoticeChange::OverlapChanged as i32,
        blind: false,
        contact: "frontex's liaison desk".into(),
        noticed_at_ms: NOW,
        other_plan_id: plan_id(2),
        other_plan_version: 1,
        other_message_id: message_id(&plan_id(2), 1),
        other_body: "frontex".into(),
        other_title: "Themis".into(),
        overlap_start_ms: NOW,
        overlap_end_ms: NOW + DAY,
        regions: vec_of(&["mediterranean"]),
        countries: vec_of(&["IT", "MT"]),
        crime_areas: vec_of(&["migrant_smuggling"]),
        target_kinds: vec_of(&["imo", "phone"]),
    }
}

#[test]
fn a_stored_notice_round_trips_through_json() {
    for n in [sample_notice(), pb::DeconflictionNotice::default()] {
        let stored = StoredNotice(n.clone());
        let text = serde_json::to_string(&stored).unwrap();
        // A JSON string of the encoded proto, in hex.
        assert_eq!(
            text,
            format!("\"{}\"", hex::encode(prost::Message::encode_to_vec(&n)))
        );
        let back: StoredNotice = serde_json::from_str(&text).unwrap();
        assert_eq!(back, stored);
    }
    // In a queue position, which is stored as JSON.
    let entry = QueueEntry {
        notice: Some(StoredNotice(sample_notice())),
        ..QueueEntry::message(&message_id(&plan_id(1), 3), "europol", NOW)
    };
    let bytes = entry.encode();
    assert_eq!(bytes.first(), Some(&b'{'));
    assert_eq!(QueueEntry::decode(b"q/test", &bytes).unwrap(), entry);
}

#[test]
fn a_stored_notice_that_is_not_hex_or_not_a_notice_is_refused() {
    for bad in ["\"zz\"", "\"abc\"", "\"0a05\"", "42", "null", "{}"] {
        assert!(
            serde_json::from_str::<StoredNotice>(bad).is_err(),
            "{bad} was accepted"
        );
    }
}

fn th(kind: &str, hash: Vec<u8>) -> pb::TargetHash {
    pb::TargetHash {
        kind: kind.into(),
        hash,
    }
}

fn invalid_field(result: Result<Vec<(String, String)>, HubError>) -> (String, String) {
    match result {
        Err(HubError::Invalid(e)) => (e.field, e.problem),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn targets_of_an_unknown_kind_are_refused() {
    let (field, problem) = invalid_field(parse_targets(&[
        th("imo", vec![1; 32]),
        th("passport", vec![2; 32]),
    ]));
    assert_eq!(field, "targets[1].kind");
    assert!(
        problem.contains("'passport' is not a target kind"),
        "{problem}"
    );
    for kind in TargetKind::ALL {
        assert!(problem.contains(kind.as_str()), "{problem}");
    }
    // Kinds are exact: no case folding, no empty kind.
    for kind in ["IMO", "", " imo"] {
        let (field, _) = invalid_field(parse_targets(&[th(kind, vec![1; 32])]));
        assert_eq!(field, "targets[0].kind");
    }
    // A kind that is not one line is escaped in the problem.
    let (_, problem) = invalid_field(parse_targets(&[th("imo\nphone", vec![1; 32])]));
    assert!(!problem.contains('\n'), "{problem}");
}

#[test]
fn targets_whose_hash_is_not_32_bytes_are_refused() {
    for len in [0usize, 1, 31, 33, 64] {
        let (field, problem) = invalid_field(parse_targets(&[
            th("phone", vec![9; 32]),
            th("phone", vec![1; len]),
        ]));
        assert_eq!(field, "targets[1].hash");
        assert!(problem.starts_with(&format!("{len} bytes")), "{problem}");
    }
}

#[test]
fn at_most_max_targets_are_accepted() {
    let many = |n: usize| -> Vec<pb::TargetHash> {
        (0..n)
            .map(|i| {
                let mut hash = vec![0u8; 32];
                hash[..8].copy_from_slice(&(i as u64).to_be_bytes());
                th("crypto_wallet", hash)
            })
            .collect()
    };
    assert_eq!(
        parse_targets(&many(MAX_TARGETS)).unwrap().len(),
        MAX_TARGETS
    );
    let (field, problem) = invalid_field(parse_targets(&many(MAX_TARGETS + 1)));
    assert_eq!(field, "targets");
    assert!(
        problem.contains(&format!("{} targets", MAX_TARGETS + 1)),
        "{problem}"
    );
    assert!(problem.contains(&MAX_TARGETS.to_string()), "{problem}");
    // Counted before duplicates are dropped.
    let same = vec![th("imo", vec![1; 32]); MAX_TARGETS + 1];
    assert_eq!(invalid_field(parse_targets(&same)).0, "targets");
    assert!(parse_targets(&[]).unwrap().is_empty());
}

#[test]
fn targets_are_deduplicated_and_sorted() {
    let out = parse_targets(&[
        th("vehicle_plate", vec![0xab; 32]),
        th("imo", vec![0x02; 32]),
        th("imo", vec![0x01; 32]),
        th("vehicle_plate", vec![0xab; 32]),
        th("phone", vec![0x01; 32]),
        th("imo", vec![0x02; 32]),
    ])
    .unwrap();
    assert_eq!(
        out,
        vec![
            target(TargetKind::Imo, 0x01),
            target(TargetKind::Imo, 0x02),
            target(TargetKind::Phone, 0x01),
            target(TargetKind::VehiclePlate, 0xab),
        ]
    );
    // Lower-case hex, as the record keeps it and the index reads it.
    assert!(out
        .iter()
        .all(|(_, h)| h.len() == 64 && h == &h.to_lowercase()));
    // The same hash under two kinds is two targets.
    let two = parse_targets(&[th("imo", vec![7; 32]), th("phone", vec![7; 32])]).unwrap();
    assert_eq!(two.len(), 2);
    // And the record's targets come back in the index.
    let mut p = plan(1, "europol");
    p.targets = out;
    let index: BTreeSet<TargetHash> = p.to_index().targets;
    assert_eq!(index.len(), 4);
    assert!(index.contains(&TargetHash {
        kind: TargetKind::VehiclePlate,
        hash: [0xab; 32]
    }));
}

#[test]
fn a_record_is_indexed_with_prefixed_places() {
    let mut p = strategic(plan(1, "europol"));
    p.labels.regions = strings(&["sahel"]);
    p.labels.countries = strings(&["NG", "ML"]);
    let i = p.to_index();
    assert_eq!(i.id, p.plan_id);
    assert_eq!(i.body, body("europol"));
    assert_eq!(i.kind, PlanKind::Strategic);
    assert_eq!((i.start_ms, i.end_ms), (p.start_ms, p.end_ms));
    assert_eq!(i.places, strings(&["r:sahel", "c:NG", "c:ML"]));
    assert_eq!(i.crime_areas, strings(&["drugs", "migrant_smuggling"]));
    // A region and a country with the same code are different places.
    let mut a = plan(1, "europol");
    a.labels.regions = strings(&["it"]);
    a.labels.countries.clear();
    let mut b = plan(2, "frontex");
    b.labels.regions.clear();
    b.labels.countries = strings(&["IT"]);
    assert!(overlap(&a.to_index(), &b.to_index()).is_none());
}

#[test]
fn a_record_is_active_until_it_ends_or_its_window_passes() {
    let p = plan(1, "europol");
    assert!(p.active(NOW));
    assert!(p.active(p.end_ms - 1));
    assert!(!p.active(p.end_ms));
    assert!(version(&p, 2, PlanAction::Update).active(NOW));
    assert!(!version(&p, 2, PlanAction::Close).active(NOW));
    assert!(!version(&p, 2, PlanAction::Cancel).active(NOW));
}

// ---------------------------------------------------------------------
// Deconfliction (the in-memory index)
// ---------------------------------------------------------------------

/// A probe from interpol over Italy, on drugs, for all of the next month.
fn probe() -> liaison_plans::Plan {
    let mut p = plan(99, "interpol");
    p.labels.countries = strings(&["IT"]);
    p.labels.regions.clear();
    p.labels.crime_areas = areas(&["drugs"]);
    p.start_ms = NOW - 30 * DAY;
    p.end_ms = NOW + 30 * DAY;
    p.to_index()
}

fn others(d: &Deconfliction) -> Vec<String> {
    d.overlaps(&probe()).into_iter().map(|o| o.other).collect()
}

#[test]
fn a_put_for_the_same_plan_replaces_it() {
    let mut d = Deconfliction::default();
    assert!(d.is_empty());
    let p = plan(1, "europol");
    d.apply(IndexOp::Put(p.to_index()));
    assert_eq!((d.len(), others(&d)), (1, vec![p.plan_id.clone()]));
    // Version 2 leaves Italy: replaced, not added.
    let mut v2 = version(&p, 2, PlanAction::Update);
    v2.labels.countries = strings(&["GR"]);
    v2.labels.regions.clear();
    v2.end_ms = NOW + 20 * DAY;
    d.apply(IndexOp::Put(v2.to_index()));
    assert_eq!(d.len(), 1);
    assert!(others(&d).is_empty());
    // Back to Italy, and its new end is the one that counts.
    let mut v3 = version(&p, 3, PlanAction::Update);
    v3.end_ms = NOW + 20 * DAY;
    d.apply(IndexOp::Put(v3.to_index()));
    assert_eq!(d.len(), 1);
    assert_eq!(others(&d), vec![p.plan_id.clone()]);
    d.prune(NOW + 10 * DAY);
    assert_eq!(d.len(), 1, "the first version's end no longer prunes it");
    d.prune(NOW + 20 * DAY);
    assert!(d.is_empty());
    // An earlier end replaces a later one too.
    d.apply(IndexOp::Put(v3.to_index()));
    let mut v4 = version(&p, 4, PlanAction::Update);
    v4.end_ms = NOW + 2 * DAY;
    d.apply(IndexOp::Put(v4.to_index()));
    d.prune(NOW + 2 * DAY);
    assert!(d.is_empty());
    d.prune(NOW + 30 * DAY);
    assert!(d.is_empty());
}

#[test]
fn prune_drops_the_plans_whose_window_ended() {
    let mut d = Deconfliction::default();
    let ends = [(1, 5), (2, 10), (3, 10), (4, 15)];
    for (n, days) in ends {
        let mut p = plan(n, "europol");
        p.end_ms = NOW + days * DAY;
        d.apply(IndexOp::Put(p.to_index()));
    }
    assert_eq!(d.len(), 4);
    d.prune(NOW);
    assert_eq!(d.len(), 4);
    d.prune(NOW + 5 * DAY - 1);
    assert_eq!(d.len(), 4);
    // The end is excluded: a plan ending now is over.
    d.prune(NOW + 5 * DAY);
    assert_eq!(others(&d), vec![plan_id(2), plan_id(3), plan_id(4)]);
    d.prune(NOW + 10 * DAY);
    assert_eq!(others(&d), vec![plan_id(4)]);
    // Pruning is idempotent and never goes back.
    d.prune(NOW + 10 * DAY);
    d.prune(NOW);
    assert_eq!(d.len(), 1);
    d.prune(NOW + 100 * DAY);
    assert!(d.is_empty());
}

#[test]
fn remove_drops_a_plan_and_its_end() {
    let mut d = Deconfliction::default();
    let a = plan(1, "europol");
    let b = plan(2, "frontex");
    d.apply(IndexOp::Put(a.to_index()));
    d.apply(IndexOp::Put(b.to_index()));
    assert_eq!(others(&d), vec![a.plan_id.clone(), b.plan_id.clone()]);
    d.apply(IndexOp::Remove(a.plan_id.clone()));
    assert_eq!(others(&d), vec![b.plan_id.clone()]);
    // Removing what is not held does nothing.
    d.apply(IndexOp::Remove(a.plan_id.clone()));
    d.apply(IndexOp::Remove(plan_id(42)));
    assert_eq!(d.len(), 1);
    // Its end is gone with it: putting it back with a later end is not
    // pruned at the old one.
    let mut later = a.clone();
    later.end_ms = NOW + 40 * DAY;
    d.apply(IndexOp::Put(later.to_index()));
    d.prune(a.end_ms);
    assert_eq!(others(&d), vec![a.plan_id.clone()]);
    d.apply(IndexOp::Remove(a.plan_id.clone()));
    d.prune(NOW + 100 * DAY);
    assert!(d.is_empty());
}

#[test]
fn the_index_finds_other_bodies_plans_only() {
    let mut d = Deconfliction::default();
    let (a, b) = europol_and_frontex();
    d.apply(IndexOp::Put(a.to_index()));
    d.apply(IndexOp::Put(b.to_index()));
    let mine = plan(7, "europol").to_index();
    let found: Vec<String> = d.overlaps(&mine).into_iter().map(|o| o.other).collect();
    assert_eq!(found, vec![b.plan_id.clone()]);
    // What the index finds is what `overlap` says the plans share.
    let o = &d.overlaps(&a.to_index())[0];
    assert_eq!(Some(o.clone()), overlap(&a.to_index(), &b.to_index()));
}

/// A version that cannot be indexed (a plan message's labels need name no
/// region or country) must not leave the earlier version in the index.
#[test]
fn a_version_that_cannot_be_indexed_does_not_leave_the_old_one() {
    let mut d = Deconfliction::default();
    let p = plan(1, "europol");
    d.apply(IndexOp::Put(p.to_index()));
    let mut v2 = version(&p, 2, PlanAction::Update);
    v2.labels.regions.clear();
    v2.labels.countries.clear();
    assert!(v2.to_index().check().is_err());
    assert!(v2.active(NOW));
    d.apply(IndexOp::Put(v2.to_index()));
    assert!(
        others(&d).is_empty(),
        "version 1 still overlaps: {:?}",
        others(&d)
    );
}

/// In a store: a version's title goes when its content is erased; another
/// version's erasure leaves the plan alone; the index reloads only the
/// active plans.
#[tokio::test]
async fn an_erased_versions_title_goes_and_the_index_reloads_active_plans() {
    let db = liaison_store::Db::in_memory();
    let live = plan(1, "europol");
    let mut closed = version(&plan(2, "frontex"), 2, PlanAction::Close);
    closed.title = "closed plan".into();
    let (a, b) = (live.clone(), closed.clone());
    db.write(move |txn| {
        write_plan(txn, &a);
        write_plan(txn, &b);
        // Another message of the plan: nothing changes.
        forget_title(txn, &a.plan_id, "00000000-0000-4000-8000-000000000000")?;
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    assert_eq!(
        read_plan_db(&db, &live.plan_id).unwrap().unwrap().title,
        live.title
    );
    let (id, msg) = (live.plan_id.clone(), live.message_id.clone());
    db.write(move |txn| forget_title(txn, &id, &msg))
        .await
        .unwrap();
    let kept = read_plan_db(&db, &live.plan_id).unwrap().unwrap();
    assert!(kept.title.is_empty());
    assert_eq!(kept.version, live.version);
    let index = Deconfliction::load(&db, NOW).unwrap();
    assert_eq!(index.len(), 1, "the closed plan is not indexed");
}

/// A submission of `p`'s version as the store receives it.
fn submission(fx: &Fixture, p: &PlanRecord) -> super::super::Submission {
    let labels = p.labels.clone();
    let routed = liaison_policy::route(&fx.gov, &labels, NOW);
    super::super::Submission {
        env: liaison_types::Envelope {
            labels,
            body: Vec::new(),
        },
        decisions: routed.decisions,
        unaddressed: routed.unaddressed,
        policy_version: "v1".into(),
        actor: ACTOR.into(),
        approved_by: None,
        now_ms: NOW,
        retain_ms: None,
        traceparent: String::new(),
        plan: Some(super::super::PlanSubmission {
            record: p.clone(),
            gov: std::sync::Arc::new(fx.gov.clone()),
            hub_body: fx.hub.clone(),
        }),
    }
}

fn notices_of(result: &Result<super::super::Submitted, HubError>) -> Vec<bool> {
    match result {
        Ok(super::super::Submitted::New { notices, .. }) => notices.clone(),
        other => panic!("not routed: {other:?}"),
    }
}

#[tokio::test]
async fn a_version_in_the_same_batch_as_the_one_before_sees_its_overlaps() {
    let fx = Fixture::new();
    let db = Db::in_memory();
    let plans = std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default()));
    let (a, b) = europol_and_frontex();
    let (first, _) = super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &a)],
    )
    .await
    .unwrap();
    assert!(notices_of(&first[0]).is_empty());
    // Frontex's version 1 overlaps Europol's plan and its version 2, in the
    // same batch, moves away from it: found, then cleared, both sides.
    let mut moved = version(&b, 2, PlanAction::Update);
    moved.labels.regions = strings(&["pacific"]);
    moved.labels.countries = strings(&["FJ"]);
    moved.labels.crime_areas = areas(&["cybercrime"]);
    moved.targets = Vec::new();
    let (results, _) = super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &b), submission(&fx, &moved)],
    )
    .await
    .unwrap();
    assert_eq!(notices_of(&results[0]).len(), 2, "found, to each side");
    assert_eq!(notices_of(&results[1]).len(), 2, "cleared, to each side");
    let left = db.scan_prefix(b"po/", 100).unwrap();
    assert!(left.is_empty(), "no overlap is left: {left:?}");
}

#[tokio::test]
async fn the_reference_key_is_made_once_kept_in_the_store_and_read_again() {
    use super::super::schema::REFERENCE_KEY;
    let fx = Fixture::new();
    let db = Db::in_memory();
    let plans = std::sync::Arc::new(std::sync::Mutex::new(
        Deconfliction::load(&db, NOW).unwrap(),
    ));
    assert!(db.get(REFERENCE_KEY).unwrap().is_none());
    let (a, b) = europol_and_frontex();
    super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &a)],
    )
    .await
    .unwrap();
    let stored = db
        .get(REFERENCE_KEY)
        .unwrap()
        .expect("made with the first plan");
    let key = ReferenceKey::new(stored.as_slice().try_into().unwrap());
    // Read again (as after a restart): the overlap's reference is keyed
    // under the stored key, and is no unkeyed hash of the two ids.
    let reloaded = std::sync::Arc::new(std::sync::Mutex::new(
        Deconfliction::load(&db, NOW).unwrap(),
    ));
    super::super::submit_all(
        &db,
        &reloaded,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &b)],
    )
    .await
    .unwrap();
    assert_eq!(
        db.get(REFERENCE_KEY).unwrap(),
        Some(stored.clone()),
        "made once"
    );
    let held = db.scan_prefix(b"po/", 10).unwrap();
    assert_eq!(held.len(), 2);
    for (k, v) in &held {
        let rec: OverlapRecord = liaison_store::from_json(k, v).unwrap();
        assert_eq!(rec.reference, key.reference(&a.plan_id, &b.plan_id, 0));
    }

    // A key of the wrong length is damage, named, never replaced.
    let bad = db.clone();
    bad.write(|t| {
        t.put(REFERENCE_KEY.to_vec(), vec![1; 7]);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let err = Deconfliction::load(&db, NOW).unwrap_err();
    assert!(
        err.to_string().contains("deconfliction_reference_key")
            && err.to_string().contains("7 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn retracting_a_plans_latest_version_withdraws_the_plan_and_clears_its_overlaps() {
    let fx = Fixture::new();
    let db = Db::in_memory();
    let plans = std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default()));
    let (a, b) = europol_and_frontex();
    let (done, _) = super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &a), submission(&fx, &b)],
    )
    .await
    .unwrap();
    assert_eq!(notices_of(&done[1]).len(), 2);
    assert_eq!(db.scan_prefix(b"po/", 10).unwrap().len(), 2);
    let retract = |message_id: String| {
        let db = db.clone();
        let plans = std::sync::Arc::clone(&plans);
        let gov = std::sync::Arc::new(fx.gov.clone());
        async move {
            super::super::retraction::retract(
                &db,
                &plans,
                gov,
                body("europol"),
                message_id,
                "sent in error".into(),
                ACTOR.into(),
                NOW + 1,
            )
            .await
            .unwrap()
        }
    };
    let r = retract(a.message_id.clone()).await;
    // The retraction to each recipient, and a cleared notice to each side
    // (europol's own, and frontex's after its retraction).
    let told: Vec<&str> = r.queued.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(r.recipients.len() + 2, told.len(), "{told:?}");
    assert_eq!(
        told.iter().filter(|b| **b == "europol").count(),
        1,
        "{told:?}"
    );
    assert_eq!(
        told.iter().filter(|b| **b == "frontex").count(),
        2,
        "{told:?}"
    );
    assert!(db.scan_prefix(b"po/", 10).unwrap().is_empty());
    let held = read_plan_db(&db, &a.plan_id).unwrap().unwrap();
    assert_eq!(held.action, PlanAction::Cancel);
    let left = others(&plans.lock().unwrap());
    assert!(!left.contains(&a.plan_id), "{left:?}");
    // Retracting it again, or retracting a plan's older version, withdraws
    // nothing more.
    let again = retract(a.message_id.clone()).await;
    assert!(again.duplicate && again.queued.is_empty());
}

#[test]
fn the_plan_rate_counts_the_last_hour_only() {
    const H: i64 = 3_600_000;
    assert_eq!(plan_rate(&[], NOW, 2), Ok(vec![NOW]));
    assert_eq!(plan_rate(&[NOW - 10], NOW, 2), Ok(vec![NOW - 10, NOW]));
    // Full: the next may go when the oldest of the last `limit` leaves.
    assert_eq!(plan_rate(&[NOW - 30, NOW - 10], NOW, 2), Err(NOW - 30 + H));
    // One an hour old or more no longer counts (and is dropped).
    assert_eq!(
        plan_rate(&[NOW - H, NOW - 10], NOW, 2),
        Ok(vec![NOW - 10, NOW])
    );
    // A limit lowered below what is held waits for enough of them to leave.
    assert_eq!(
        plan_rate(&[NOW - 30, NOW - 20, NOW - 10], NOW, 1),
        Err(NOW - 10 + H)
    );
}

#[tokio::test]
async fn a_body_over_the_plan_rate_is_refused_and_audited_and_may_still_end_a_plan() {
    let text = format!(
        "{}\n[plans]\nmax_versions_per_hour = 2\n",
        Governance::for_test()
            .member("interpol", Secret, AREAS)
            .member("europol", Secret, AREAS)
            .member("frontex", Confidential, AREAS)
            .to_toml()
    );
    let fx = Fixture::with(Governance::from_toml("rate", &text).unwrap());
    assert_eq!(fx.gov.max_plan_versions_per_hour(), 2);
    let db = Db::in_memory();
    let plans = std::sync::Arc::new(std::sync::Mutex::new(Deconfliction::default()));
    let (a, _) = europol_and_frontex();
    let v2 = version(&a, 2, PlanAction::Update);
    let v3 = version(&a, 3, PlanAction::Update);
    let close = version(&a, 4, PlanAction::Close);
    let (results, refused_audit) = super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![
            submission(&fx, &a),
            submission(&fx, &v2),
            submission(&fx, &v3),
            submission(&fx, &close),
        ],
    )
    .await
    .unwrap();
    let mut results = results;
    assert!(results[0].is_ok() && results[1].is_ok());
    // What follows a refusal for now in the batch waits behind it, so the
    // body's versions arrive in order.
    assert!(
        matches!(&results[3], Err(HubError::HeldBack { earlier, .. }) if *earlier == v3.message_id),
        "{:?}",
        results[3]
    );
    let err = results.remove(2).unwrap_err();
    assert!(matches!(err, HubError::PlanRate { limit: 2, .. }), "{err}");
    assert!(err.to_string().contains("max_versions_per_hour"), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    assert!(refused_audit > 0);
    let records = super::super::audit_after(&db, 0, u64::MAX, 100).unwrap();
    let refused: Vec<_> = records.iter().filter(|r| r.event == "refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].rule, "plan.rate");
    assert_eq!(refused[0].message_id, v3.message_id);
    // A close is never limited.
    let (results, _) = super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &close)],
    )
    .await
    .unwrap();
    assert!(results[0].is_ok(), "a close is never limited: {results:?}");
    // Another body has its own hour.
    let mut other = plan(7, "frontex");
    other.labels.regions = strings(&["sahel"]);
    let (results, _) = super::super::submit_all(
        &db,
        &plans,
        super::super::QueueQuota::UNLIMITED,
        vec![submission(&fx, &other)],
    )
    .await
    .unwrap();
    assert!(results[0].is_ok());
}
