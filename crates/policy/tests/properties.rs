//! Properties of the routing decision over generated governances and labels.
//!
//! Governances are generated as [`GovernanceBuilder`]s, so every one goes
//! through the real TOML parser and validation; labels are generated over
//! the same small pool of body ids (an id outside the governance plays an
//! unknown originator).

use std::collections::BTreeSet;

use liaison_policy::{
    decide, route, summarize, BodyPolicy, BodySpec, Decision, Governance, GovernanceBuilder,
    Outcome, Rule, State, Unaddressed,
};
use liaison_types::{BodyId, Classification, CrimeArea, Kind, Labels, Priority, Tlp};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

const POOL: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
const AREAS: [&str; 5] = ["terrorism", "cybercrime", "drugs", "firearms", "corruption"];
const NOW: i64 = 1_700_000_000_000;
const GROUPS: [&str; 2] = ["wg-a", "wg-b"];

fn level() -> impl Strategy<Value = Classification> {
    select(Classification::ALL.to_vec())
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![18 => Just(State::Active), 1 => Just(State::Suspended), 1 => Just(State::Revoked)]
}

#[derive(Debug, Clone)]
struct Observers {
    kinds: Vec<Kind>,
    max: Classification,
}

fn observers() -> impl Strategy<Value = Observers> {
    (
        select(vec![
            vec![Kind::ThreatAssessment],
            vec![Kind::ThreatAssessment, Kind::Alert],
        ]),
        select(vec![
            Classification::Unclassified,
            Classification::OfficialUse,
            Classification::Restricted,
        ]),
    )
        .prop_map(|(kinds, max)| Observers { kinds, max })
}

fn body(i: usize, n: usize, obs: Observers) -> impl Strategy<Value = BodySpec> {
    let others: Vec<&'static str> = POOL[..n]
        .iter()
        .copied()
        .filter(|o| *o != POOL[i])
        .collect();
    let others_len = others.len();
    (
        // The hub body (index 0) is always a member.
        prop::bool::weighted(0.25).prop_map(move |o| o && i != 0),
        state(),
        level(),
        subsequence(Kind::ALL.to_vec(), 1..=3),
        subsequence(obs.kinds.clone(), 1..=obs.kinds.len()),
        prop_oneof![1 => Just(Vec::new()), 4 => subsequence(AREAS.to_vec(), 1..=AREAS.len())],
        prop_oneof![4 => Just(Vec::new()), 1 => subsequence(others, 0..=others_len.min(2))],
        prop::option::weighted(0.2, level()),
        prop::option::weighted(0.2, level()),
    )
        .prop_map(
            move |(
                observer,
                state,
                clearance,
                kinds,
                obs_kinds,
                mandate,
                never,
                to_obs,
                required,
            )| {
                let mut spec = if observer {
                    let mut s = BodySpec::observer(POOL[i], &mandate);
                    s.kinds = obs_kinds;
                    s.clearance = clearance.min(obs.max);
                    s
                } else {
                    let mut s = BodySpec::member(POOL[i], clearance, &mandate);
                    s.kinds = kinds;
                    s
                };
                spec.state = state;
                spec.never_share_with = never.iter().map(|s| (*s).to_owned()).collect();
                spec.max_to_observers = to_obs.map(|m| m.min(obs.max));
                spec.releasability_required_from = required;
                spec
            },
        )
}

/// A governance of 2 to 6 bodies (the first is the hub body), and its size.
fn governance() -> impl Strategy<Value = (usize, GovernanceBuilder)> {
    (2usize..=POOL.len(), observers())
        .prop_flat_map(|(n, obs)| {
            let bodies: Vec<_> = (0..n).map(|i| body(i, n, obs.clone())).collect();
            let pairs = n * (n - 1) / 2;
            (
                Just(obs),
                bodies,
                prop::collection::vec(prop::option::of(any::<bool>()), pairs),
                prop::collection::vec(subsequence(POOL[..n].to_vec(), 1..=n), GROUPS.len()),
            )
        })
        .prop_map(|(obs, bodies, agreements, groups)| {
            let n = bodies.len();
            let mut b = Governance::for_test()
                .hub_body(POOL[0])
                .observers(&obs.kinds, obs.max);
            let mut next = agreements.into_iter();
            for i in 0..bodies.len() {
                for j in i + 1..bodies.len() {
                    if let Some(Some(pd)) = next.next() {
                        let observer = |s: &BodySpec| s.status == liaison_policy::Status::Observer;
                        let pd = pd && !observer(&bodies[i]) && !observer(&bodies[j]);
                        b = b.agreement(POOL[i], POOL[j], pd);
                    }
                }
            }
            for spec in bodies {
                b = b.body(spec);
            }
            for (id, members) in GROUPS.iter().zip(groups) {
                b = b.working_group(id, &members);
            }
            (n, b)
        })
}

fn ids(list: Vec<&str>) -> BTreeSet<BodyId> {
    list.into_iter()
        .map(|i| BodyId::parse(i).expect("pool id"))
        .collect()
}

/// Mostly no expiry; sometimes just past, exactly now, or in the future.
fn expiry() -> impl Strategy<Value = Option<i64>> {
    let times = vec![Some(NOW - 1), Some(NOW), Some(NOW + 60_000)];
    prop_oneof![6 => Just(None), 1 => select(times)]
}

fn area(name: &str) -> CrimeArea {
    CrimeArea::parse(name).expect("pool area")
}

/// Labels for a governance of the first `n` pool bodies; the origin is one
/// of them, or now and then a body the governance does not know.
fn labels(n: usize) -> impl Strategy<Value = Labels> {
    (
        prop_oneof![19 => select(POOL[..n].to_vec()), 1 => Just("zulu")],
        select(Kind::ALL.to_vec()),
        level(),
        subsequence(AREAS.to_vec(), 1..=3),
        prop::bool::weighted(0.3),
        prop_oneof![4 => Just(Vec::new()), 1 => subsequence(POOL.to_vec(), 1..=3)],
        prop_oneof![2 => Just(Vec::new()), 1 => subsequence(POOL.to_vec(), 1..=2)],
        expiry(),
        prop_oneof![3 => Just(None), 1 => select(Tlp::ALL.to_vec()).prop_map(Some)],
        prop_oneof![3 => Just(Vec::new()), 1 => subsequence(GROUPS.to_vec(), 1..=2)],
    )
        .prop_map(
            |(
                origin,
                kind,
                classification,
                areas,
                pd,
                releasable,
                excluded,
                expires,
                tlp,
                groups,
            )| {
                let releasable_to = ids(releasable);
                let excluded: BTreeSet<_> =
                    ids(excluded).difference(&releasable_to).cloned().collect();
                Labels {
                    plan: None,
                    message_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
                    origin: BodyId::parse(origin).expect("pool id"),
                    kind,
                    classification,
                    marking: None,
                    crime_areas: areas.into_iter().map(area).collect(),
                    regions: BTreeSet::new(),
                    countries: BTreeSet::new(),
                    personal_data: pd,
                    releasable_to,
                    excluded,
                    priority: Priority::Routine,
                    created_at_ms: NOW - 120_000,
                    expires_at_ms: expires,
                    third_party_release: false,
                    tlp,
                    handling_code: None,
                    handling_restriction: None,
                    grading: None,
                    not_before_ms: None,
                    working_groups: groups.into_iter().map(str::to_owned).collect(),
                }
            },
        )
}

/// A governance and labels to route under it.
fn case() -> impl Strategy<Value = (GovernanceBuilder, Labels)> {
    governance().prop_flat_map(|(n, b)| (Just(b), labels(n)))
}

fn build(b: &GovernanceBuilder) -> Governance {
    b.build()
        .unwrap_or_else(|e| panic!("generated governance is invalid: {e}\n{}", b.to_toml()))
}

fn delivered(decisions: &[Decision]) -> BTreeSet<BodyId> {
    decisions
        .iter()
        .filter(|d| d.delivers())
        .map(|d| d.recipient.clone())
        .collect()
}

/// Every configured body except `origin`, in id order.
fn others(g: &Governance, origin: &BodyId) -> Vec<BodyId> {
    g.bodies()
        .map(|b| b.id.clone())
        .filter(|id| id != origin)
        .collect()
}

/// The rules written out independently of `decide`, as the design states them.
fn entitled(g: &Governance, l: &Labels, r: &BodyPolicy) -> bool {
    let Some(o) = g.body(&l.origin) else {
        return false;
    };
    let c = l.classification;
    let obs = g.observers();
    o.is_active()
        && r.is_active()
        && l.expires_at_ms.is_none_or(|e| e > NOW)
        && !l.excluded.contains(&r.id)
        && (l.tlp != Some(Tlp::Red) || l.releasable_to.contains(&r.id))
        && (l.releasable_to.is_empty() || l.releasable_to.contains(&r.id))
        && (l.working_groups.is_empty()
            || l.working_groups.iter().any(|w| {
                g.working_group(w)
                    .is_some_and(|wg| wg.members.contains(&r.id))
            }))
        && !o.outbound.never_share_with.contains(&r.id)
        && !(r.is_observer() && o.outbound.max_to_observers.is_some_and(|m| c > m))
        && (o.outbound.releasability_required_from.is_none_or(|f| c < f)
            || l.releasable_to.contains(&r.id))
        && r.clearance >= c
        && r.kinds.contains(&l.kind)
        && l.crime_areas.iter().any(|a| r.mandate.contains(a))
        && !(r.is_observer()
            && (!obs.kinds.contains(&l.kind) || l.personal_data || c > obs.max_classification))
        && (!l.personal_data
            || g.agreement(&l.origin, &r.id)
                .is_some_and(|a| a.personal_data))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decide_follows_the_rules((b, l) in case()) {
        let g = build(&b);
        for d in decide(&g, &l, NOW) {
            let r = g.body(&d.recipient).expect("decisions are for configured bodies");
            prop_assert_eq!(d.delivers(), entitled(&g, &l, r), "{:?}\n{}", d, b.to_toml());
            prop_assert_eq!(d.rule == Rule::AllRulesPassed, d.delivers(), "{:?}", d);
            prop_assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn route_counts_exactly_the_unaddressed_decisions((b, l) in case()) {
        let g = build(&b);
        let all = decide(&g, &l, NOW);
        let routing = route(&g, &l, NOW);
        prop_assert_eq!(&routing, &summarize(all.clone(), &l), "{}", b.to_toml());
        // Nothing is lost: every body is either listed or counted once, and
        // every delivery is listed.
        let counted: u32 = routing.unaddressed.iter().map(|u| u.bodies).sum();
        prop_assert_eq!(routing.decisions.len() + counted as usize, all.len());
        prop_assert_eq!(delivered(&routing.decisions), delivered(&all));
        for u in &routing.unaddressed {
            prop_assert!(Unaddressed::counts(u.rule) && u.bodies > 0, "{:?}", u);
            prop_assert!(u.reason.contains(&u.bodies.to_string()), "{:?}", u);
        }
        for d in &routing.decisions {
            prop_assert!(
                d.delivers() || !Unaddressed::counts(d.rule) || l.releasable_to.contains(&d.recipient),
                "{:?}", d
            );
        }
    }

    #[test]
    fn deny_by_default((b, l) in case()) {
        let g = build(&b);
        for d in decide(&g, &l, NOW) {
            let r = g.body(&d.recipient).expect("configured");
            if r.mandate.is_empty() || r.clearance < l.classification {
                prop_assert_eq!(d.outcome, Outcome::Withhold, "{:?}", d);
            }
        }
        // A federation whose bodies have no mandate delivers nothing.
        let mut empty = Governance::for_test().hub_body(POOL[0]);
        for id in POOL {
            empty = empty.body(BodySpec::member(id, Classification::Secret, &[]));
        }
        prop_assert!(decide(&build(&empty), &l, NOW).iter().all(|d| !d.delivers()));
    }

    #[test]
    fn raising_the_classification_never_adds_a_recipient((b, l) in case(), higher in level()) {
        prop_assume!(higher > l.classification);
        let g = build(&b);
        let before = delivered(&decide(&g, &l, NOW));
        let raised = Labels { classification: higher, ..l.clone() };
        let after = delivered(&decide(&g, &raised, NOW));
        let gained: Vec<_> = after.difference(&before).collect();
        prop_assert!(gained.is_empty(), "raising to {:?} added {:?}", higher, gained);
    }

    #[test]
    fn an_exclusion_always_wins((b, l) in case(), pick in any::<prop::sample::Index>()) {
        let g = build(&b);
        let candidates = others(&g, &l.origin);
        let excluded = candidates[pick.index(candidates.len())].clone();
        let mut l = l;
        l.releasable_to.remove(&excluded);
        l.excluded.insert(excluded.clone());
        let d = decide(&g, &l, NOW)
            .into_iter()
            .find(|d| d.recipient == excluded)
            .expect("a candidate");
        prop_assert_eq!(d.outcome, Outcome::Withhold);
        // Only a rule before the exclusion (states, expiry) may name it instead.
        prop_assert!(d.rule <= Rule::OriginatorExclusion, "{:?}", d);
    }

    #[test]
    fn tlp_red_never_reaches_an_unnamed_body((b, l) in case()) {
        let g = build(&b);
        let l = Labels { tlp: Some(Tlp::Red), ..l };
        for d in decide(&g, &l, NOW) {
            if !l.releasable_to.contains(&d.recipient) {
                prop_assert_eq!(d.outcome, Outcome::Withhold, "{:?}", d);
            }
        }
    }

    #[test]
    fn addressing_working_groups_never_adds_a_recipient((b, l) in case(), groups in subsequence(GROUPS.to_vec(), 1..=2)) {
        let g = build(&b);
        let open = Labels { working_groups: BTreeSet::new(), ..l.clone() };
        let addressed = Labels { working_groups: groups.iter().map(|s| (*s).to_owned()).collect(), ..l };
        let before = delivered(&decide(&g, &open, NOW));
        let after = delivered(&decide(&g, &addressed, NOW));
        prop_assert!(after.is_subset(&before), "groups {:?} added {:?}", groups, after.difference(&before).collect::<Vec<_>>());
        // And every recipient left is a member of an addressed group.
        for r in &after {
            prop_assert!(groups.iter().any(|w| g.working_group(w).is_some_and(|wg| wg.members.contains(r))));
        }
    }

    #[test]
    fn an_observer_never_receives_personal_data((b, l) in case()) {
        let g = build(&b);
        let l = Labels { personal_data: true, ..l };
        for d in decide(&g, &l, NOW) {
            if g.body(&d.recipient).expect("configured").is_observer() {
                prop_assert_eq!(d.outcome, Outcome::Withhold, "{:?}", d);
            }
        }
    }

    #[test]
    fn a_suspended_or_revoked_peer_never_receives((b, l) in case()) {
        let g = build(&b);
        for d in decide(&g, &l, NOW) {
            if !g.body(&d.recipient).expect("configured").is_active() {
                prop_assert_eq!(d.outcome, Outcome::Withhold);
                prop_assert!(d.rule <= Rule::PeerState, "{:?}", d);
            }
        }
    }

    #[test]
    fn the_originator_is_never_a_candidate((b, l) in case()) {
        let g = build(&b);
        let got: Vec<BodyId> = decide(&g, &l, NOW).into_iter().map(|d| d.recipient).collect();
        let want = others(&g, &l.origin);
        prop_assert!(!got.contains(&l.origin));
        prop_assert_eq!(got, want, "every other body, in id order");
    }

    #[test]
    fn decide_is_deterministic((b, l) in case()) {
        let g = build(&b);
        let first = decide(&g, &l, NOW);
        prop_assert_eq!(&first, &decide(&g, &l, NOW));
        // The same text loaded again decides the same, and has the same version.
        let again = build(&b);
        prop_assert_eq!(g.version(), again.version());
        prop_assert_eq!(&first, &decide(&again, &l, NOW));
    }
}
