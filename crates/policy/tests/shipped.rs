//! The shipped `deploy/federation.toml` loads, holds all eleven bodies, and
//! routes a few representative messages as its comments say.

use std::collections::BTreeSet;

use liaison_policy::{decide, Governance, Outcome, Rule, Status, SHIPPED_FEDERATION_TOML};
use liaison_types::{BodyId, Classification, CrimeArea, Kind, Labels, Priority};

const SHIPPED: &str = include_str!("../../../deploy/federation.toml");
const NOW: i64 = 1_700_000_000_000;

fn shipped() -> Governance {
    Governance::from_toml("deploy/federation.toml", SHIPPED).unwrap_or_else(|e| panic!("{e}"))
}

fn id(s: &str) -> BodyId {
    BodyId::parse(s).expect("valid id")
}

fn labels(origin: &str, kind: Kind, classification: Classification, areas: &[&str]) -> Labels {
    Labels {
        plan: None,
        message_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
        origin: id(origin),
        kind,
        classification,
        marking: None,
        crime_areas: areas
            .iter()
            .map(|a| CrimeArea::parse(a).expect("area"))
            .collect(),
        regions: BTreeSet::new(),
        countries: BTreeSet::new(),
        personal_data: false,
        releasable_to: BTreeSet::new(),
        excluded: BTreeSet::new(),
        priority: Priority::Routine,
        created_at_ms: NOW - 1,
        expires_at_ms: None,
        third_party_release: false,
        tlp: None,
        handling_code: None,
        handling_restriction: None,
        grading: None,
        not_before_ms: None,
        working_groups: BTreeSet::new(),
    }
}

fn outcome(g: &Governance, l: &Labels, recipient: &str) -> (Outcome, Rule) {
    let d = decide(g, l, NOW)
        .into_iter()
        .find(|d| d.recipient.as_str() == recipient)
        .unwrap_or_else(|| panic!("no decision for {recipient}"));
    (d.outcome, d.rule)
}

#[test]
fn the_shipped_file_validates_with_eleven_bodies_and_two_observers() {
    let g = shipped();
    assert_eq!(
        SHIPPED, SHIPPED_FEDERATION_TOML,
        "the embedded copy is the deploy file"
    );
    let ids: Vec<_> = g.bodies().map(|b| b.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "afripol",
            "aimc",
            "ameripol",
            "aseanapol",
            "eco",
            "europol",
            "frontex",
            "gccpol",
            "interpol",
            "sco",
            "unodc"
        ]
    );
    let observers: Vec<_> = g
        .bodies()
        .filter(|b| b.status == Status::Observer)
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(observers, ["sco", "unodc"]);
    assert_eq!(g.hub_body().as_str(), "interpol");
    assert_eq!(g.federation(), "liaison.dev");
    assert_eq!(
        g.observers().max_classification,
        Classification::OfficialUse
    );
    assert_eq!(g.observers().kinds, [Kind::ThreatAssessment].into());
    assert!(g.bodies().all(|b| b.is_active() && !b.mandate.is_empty()));
    assert!(
        SHIPPED.contains("ILLUSTRATIVE"),
        "the header says the rules are illustrative"
    );
}

#[test]
fn the_shipped_markings_render_in_each_scheme() {
    let g = shipped();
    assert_eq!(
        g.marking_for(&id("interpol"), Classification::OfficialUse),
        "INTERPOL FOR OFFICIAL USE ONLY"
    );
    assert_eq!(
        g.marking_for(&id("interpol"), Classification::Secret),
        "SECRET"
    );
    assert_eq!(
        g.marking_for(&id("europol"), Classification::Restricted),
        "EU RESTRICTED"
    );
    assert_eq!(
        g.marking_for(&id("frontex"), Classification::Restricted),
        "EU RESTRICTED"
    );
    assert_eq!(
        g.marking_for(&id("ameripol"), Classification::Confidential),
        "AMERIPOL CONFIDENCIAL"
    );
    let mut l = labels(
        "europol",
        Kind::Alert,
        Classification::Secret,
        &["cybercrime"],
    );
    l.marking = Some("EU SECRET".into());
    assert_eq!(g.check_labels(&l), Ok(()));
}

#[test]
fn the_shipped_agreements() {
    let g = shipped();
    let pd = |a: &str, b: &str| g.agreement(&id(a), &id(b)).is_some_and(|a| a.personal_data);
    assert!(pd("interpol", "europol") && pd("europol", "frontex"));
    for regional in [
        "afripol",
        "ameripol",
        "aseanapol",
        "aimc",
        "eco",
        "frontex",
        "gccpol",
    ] {
        assert!(pd("interpol", regional), "interpol-{regional}");
    }
    assert!(g.agreement(&id("aseanapol"), &id("europol")).is_none());
    assert!(!pd("interpol", "unodc") && !pd("interpol", "sco"));
}

#[test]
fn representative_routing_on_the_shipped_rules() {
    let g = shipped();

    // A low-level strategic terrorism assessment from the hub body reaches
    // every body whose mandate covers terrorism, observers included.
    let l = labels(
        "interpol",
        Kind::ThreatAssessment,
        Classification::OfficialUse,
        &["terrorism"],
    );
    assert_eq!(
        outcome(&g, &l, "sco"),
        (Outcome::Deliver, Rule::AllRulesPassed)
    );
    assert_eq!(
        outcome(&g, &l, "unodc"),
        (Outcome::Deliver, Rule::AllRulesPassed)
    );
    assert_eq!(
        outcome(&g, &l, "frontex"),
        (Outcome::Withhold, Rule::RecipientMandate)
    );

    // Europol releases nothing above UNCLASSIFIED to observers.
    let l = labels(
        "europol",
        Kind::ThreatAssessment,
        Classification::OfficialUse,
        &["drugs"],
    );
    assert_eq!(
        outcome(&g, &l, "unodc"),
        (Outcome::Withhold, Rule::OriginatorOutbound)
    );

    // Personal data from Europol: interpol and frontex have agreements,
    // aseanapol does not.
    let mut l = labels(
        "europol",
        Kind::Alert,
        Classification::Restricted,
        &["drugs"],
    );
    l.personal_data = true;
    assert_eq!(
        outcome(&g, &l, "interpol"),
        (Outcome::Deliver, Rule::AllRulesPassed)
    );
    assert_eq!(
        outcome(&g, &l, "frontex"),
        (Outcome::Deliver, Rule::AllRulesPassed)
    );
    assert_eq!(
        outcome(&g, &l, "aseanapol"),
        (Outcome::Withhold, Rule::AgreementPersonalData)
    );
    // Europol's own observer limit refuses before the clearance is compared.
    assert_eq!(
        outcome(&g, &l, "unodc"),
        (Outcome::Withhold, Rule::OriginatorOutbound)
    );

    // ECO accepts no operational plans.
    let l = labels(
        "interpol",
        Kind::OperationalPlan,
        Classification::Restricted,
        &["drugs"],
    );
    assert_eq!(
        outcome(&g, &l, "eco"),
        (Outcome::Withhold, Rule::RecipientKind)
    );
    assert_eq!(
        outcome(&g, &l, "aseanapol"),
        (Outcome::Deliver, Rule::AllRulesPassed)
    );

    // GCCPOL's CONFIDENTIAL material goes only to bodies it names.
    let mut l = labels(
        "gccpol",
        Kind::Alert,
        Classification::Confidential,
        &["cybercrime"],
    );
    assert_eq!(
        outcome(&g, &l, "interpol"),
        (Outcome::Withhold, Rule::OriginatorOutbound)
    );
    l.releasable_to = [id("interpol")].into();
    assert_eq!(
        outcome(&g, &l, "interpol"),
        (Outcome::Deliver, Rule::AllRulesPassed)
    );
}
