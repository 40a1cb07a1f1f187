//! The active plans, and the overlaps of a plan with those of other bodies.
//!
//! Two plans overlap when their time windows intersect, their places
//! (regions or countries) intersect, and they share a crime area or a
//! target. Two operational plans that overlap are a possible conflict; two
//! strategic plans, an alignment opportunity; an operational and a
//! strategic plan are not compared (a body's priorities are not an
//! operation to collide with).
//!
//! Candidates come from two hash indexes, on (place, crime area) and on
//! targets: a plan is compared only with plans that share one of its keys,
//! so the work grows with the plans that could overlap it, not with every
//! active plan. A (place, crime area) pair that most plans share (a whole
//! region, a common crime area) still gives a long candidate list; the
//! windows are checked on each candidate.

use std::collections::{BTreeSet, HashMap, HashSet};

use liaison_types::BodyId;

use crate::{PlanError, TargetHash, TargetKind};

/// Operational (an action with a period and places) or strategic (a body's
/// priorities for a planning cycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// An operational plan.
    Operational,
    /// A strategic plan.
    Strategic,
}

/// A day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// Most regions and countries one plan names: a plan is about where it
/// acts, and a plan naming everywhere would be deconflicted against every
/// plan (and could probe where other bodies plan).
pub const MAX_PLACES: usize = 64;

/// Most crime areas one plan names.
pub const MAX_CRIME_AREAS: usize = 32;

impl PlanKind {
    /// The longest window a plan of this kind may have: a year and a day
    /// for an operational plan, six years for a strategic plan's cycle.
    /// It bounds how far back the index looks for windows that can meet a
    /// new one.
    pub fn longest_window_ms(self) -> i64 {
        match self {
            Self::Operational => 366 * DAY_MS,
            Self::Strategic => 6 * 366 * DAY_MS,
        }
    }
}

/// A plan as the index holds it: routing metadata, never its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its id (a message id), the same across its versions.
    pub id: String,
    /// The originating body.
    pub body: BodyId,
    /// Operational or strategic.
    pub kind: PlanKind,
    /// Its window, ms since the Unix epoch, start included, end excluded.
    pub start_ms: i64,
    /// See `start_ms`.
    pub end_ms: i64,
    /// Regions and countries (codes as the governance writes them).
    pub places: BTreeSet<String>,
    /// Crime areas.
    pub crime_areas: BTreeSet<String>,
    /// Target identifiers, keyed-hashed at the node.
    pub targets: BTreeSet<TargetHash>,
}

impl Plan {
    /// Checks that the plan can be indexed: a window that is not empty,
    /// at least one place, and a crime area or a target to match on.
    pub fn check(&self) -> Result<(), PlanError> {
        let bad = |field, problem: &str| PlanError::Plan {
            field,
            problem: problem.to_owned(),
        };
        if self.end_ms <= self.start_ms {
            return Err(bad("window", "its end must come after its start"));
        }
        let longest = self.kind.longest_window_ms();
        if self.end_ms - self.start_ms > longest {
            return Err(PlanError::Plan {
                field: "window",
                problem: format!(
                    "it spans {} days; a{} plan spans at most {} days, so split a longer one into plans for each period",
                    (self.end_ms - self.start_ms + DAY_MS - 1) / DAY_MS,
                    match self.kind {
                        PlanKind::Operational => "n operational",
                        PlanKind::Strategic => " strategic",
                    },
                    longest / DAY_MS
                ),
            });
        }
        if self.places.is_empty() {
            return Err(bad("places", "name at least one region or country"));
        }
        if self.places.len() > MAX_PLACES {
            return Err(PlanError::Plan {
                field: "places",
                problem: format!(
                    "{} regions and countries; a plan names at most {MAX_PLACES}",
                    self.places.len()
                ),
            });
        }
        if self.crime_areas.len() > MAX_CRIME_AREAS {
            return Err(PlanError::Plan {
                field: "crime_areas",
                problem: format!(
                    "{} crime areas; a plan names at most {MAX_CRIME_AREAS}",
                    self.crime_areas.len()
                ),
            });
        }
        if self.crime_areas.is_empty() && self.targets.is_empty() {
            return Err(bad(
                "crime_areas",
                "name a crime area or a target to deconflict on",
            ));
        }
        Ok(())
    }

    fn keys(&self) -> impl Iterator<Item = (&String, &String)> {
        self.places
            .iter()
            .flat_map(move |p| self.crime_areas.iter().map(move |a| (p, a)))
    }
}

/// Conflict or alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapKind {
    /// Two operational plans: a possible conflict.
    Conflict,
    /// Two strategic plans: an alignment opportunity.
    Alignment,
}

/// What two plans share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The other plan.
    pub other: String,
    /// Its body.
    pub other_body: BodyId,
    /// Conflict or alignment.
    pub kind: OverlapKind,
    /// The intersection of the windows, start included, end excluded.
    pub from_ms: i64,
    /// See `from_ms`.
    pub until_ms: i64,
    /// The places both name.
    pub places: BTreeSet<String>,
    /// The crime areas both name.
    pub crime_areas: BTreeSet<String>,
    /// The kinds of the targets both name (never the targets).
    pub target_kinds: BTreeSet<TargetKind>,
}

/// What two plans share, if they overlap (pure; the index's oracle).
pub fn overlap(a: &Plan, b: &Plan) -> Option<Overlap> {
    if a.body == b.body || a.kind != b.kind {
        return None;
    }
    let from_ms = a.start_ms.max(b.start_ms);
    let until_ms = a.end_ms.min(b.end_ms);
    if from_ms >= until_ms {
        return None;
    }
    let places: BTreeSet<String> = a.places.intersection(&b.places).cloned().collect();
    if places.is_empty() {
        return None;
    }
    let crime_areas: BTreeSet<String> = a
        .crime_areas
        .intersection(&b.crime_areas)
        .cloned()
        .collect();
    let target_kinds: BTreeSet<TargetKind> =
        a.targets.intersection(&b.targets).map(|t| t.kind).collect();
    if crime_areas.is_empty() && target_kinds.is_empty() {
        return None;
    }
    Some(Overlap {
        other: b.id.clone(),
        other_body: b.body.clone(),
        kind: match a.kind {
            PlanKind::Operational => OverlapKind::Conflict,
            PlanKind::Strategic => OverlapKind::Alignment,
        },
        from_ms,
        until_ms,
        places,
        crime_areas,
        target_kinds,
    })
}

/// The plans that share one key (a place and a crime area, or a target),
/// ordered by the start of their window: a query reads only those that
/// start before its end and after its start less the longest window the
/// bucket ever held, so it does not read every plan of a busy key.
#[derive(Debug, Default)]
struct Bucket {
    by_start: BTreeSet<(i64, String)>,
    /// The longest window held since the bucket was last empty.
    longest: i64,
}

impl Bucket {
    fn insert(&mut self, plan: &Plan) {
        self.longest = self.longest.max(plan.end_ms - plan.start_ms);
        self.by_start.insert((plan.start_ms, plan.id.clone()));
    }

    /// Removes the plan; returns whether the bucket is now empty.
    fn remove(&mut self, plan: &Plan) -> bool {
        self.by_start.remove(&(plan.start_ms, plan.id.clone()));
        self.by_start.is_empty()
    }

    /// The plans whose window may meet `[start, end)`.
    fn meeting(&self, start: i64, end: i64) -> impl Iterator<Item = &str> {
        let from = start.saturating_sub(self.longest);
        self.by_start
            .range((from, String::new())..(end, String::new()))
            .map(|(_, id)| id.as_str())
    }
}

/// The active plans, indexed for overlap.
#[derive(Debug, Default)]
pub struct Index {
    plans: HashMap<String, Plan>,
    by_place_area: HashMap<(PlanKind, String, String), Bucket>,
    by_target: HashMap<(PlanKind, TargetHash), Bucket>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Active plans held.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The plan `id`, if active.
    pub fn get(&self, id: &str) -> Option<&Plan> {
        self.plans.get(id)
    }

    /// Adds a plan, or replaces its earlier version.
    pub fn put(&mut self, plan: Plan) -> Result<(), PlanError> {
        plan.check()?;
        self.remove(&plan.id);
        for (p, a) in plan.keys() {
            self.by_place_area
                .entry((plan.kind, p.clone(), a.clone()))
                .or_default()
                .insert(&plan);
        }
        for t in &plan.targets {
            self.by_target
                .entry((plan.kind, *t))
                .or_default()
                .insert(&plan);
        }
        self.plans.insert(plan.id.clone(), plan);
        Ok(())
    }

    /// Removes a plan (closed, cancelled or expired); returns it.
    pub fn remove(&mut self, id: &str) -> Option<Plan> {
        let plan = self.plans.remove(id)?;
        for (p, a) in plan.keys() {
            let key = (plan.kind, p.clone(), a.clone());
            if self
                .by_place_area
                .get_mut(&key)
                .is_some_and(|b| b.remove(&plan))
            {
                self.by_place_area.remove(&key);
            }
        }
        for t in &plan.targets {
            let key = (plan.kind, *t);
            if self
                .by_target
                .get_mut(&key)
                .is_some_and(|b| b.remove(&plan))
            {
                self.by_target.remove(&key);
            }
        }
        Some(plan)
    }

    /// The overlaps of `plan` with the active plans of other bodies (its
    /// own earlier version excluded), ordered by the other plan's id.
    pub fn overlaps(&self, plan: &Plan) -> Vec<Overlap> {
        let (start, end) = (plan.start_ms, plan.end_ms);
        let mut candidates: HashSet<&str> = HashSet::new();
        for (p, a) in plan.keys() {
            if let Some(b) = self.by_place_area.get(&(plan.kind, p.clone(), a.clone())) {
                candidates.extend(b.meeting(start, end));
            }
        }
        for t in &plan.targets {
            if let Some(b) = self.by_target.get(&(plan.kind, *t)) {
                candidates.extend(b.meeting(start, end));
            }
        }
        let mut found: Vec<Overlap> = candidates
            .into_iter()
            .filter(|id| *id != plan.id)
            .filter_map(|id| self.plans.get(id))
            .filter_map(|other| overlap(plan, other))
            .collect();
        found.sort_by(|a, b| a.other.cmp(&b.other));
        found
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DAY: i64 = 86_400_000;

    fn plan(id: &str, body: &str, days: (i64, i64), places: &[&str], areas: &[&str]) -> Plan {
        Plan {
            id: id.into(),
            body: BodyId::parse(body).unwrap(),
            kind: PlanKind::Operational,
            start_ms: days.0 * DAY,
            end_ms: days.1 * DAY,
            places: places.iter().map(|s| (*s).to_owned()).collect(),
            crime_areas: areas.iter().map(|s| (*s).to_owned()).collect(),
            targets: BTreeSet::new(),
        }
    }

    fn vessel(n: u8) -> TargetHash {
        TargetHash {
            kind: TargetKind::Imo,
            hash: [n; 32],
        }
    }

    #[test]
    fn overlap_needs_time_and_place_and_an_area_or_a_target() {
        let a = plan(
            "a",
            "frontex",
            (10, 20),
            &["GR", "IT"],
            &["migrant_smuggling"],
        );
        // Shared period, place and area: a conflict, with what is shared.
        let b = plan(
            "b",
            "europol",
            (15, 30),
            &["IT"],
            &["migrant_smuggling", "drugs"],
        );
        let o = overlap(&a, &b).unwrap();
        assert_eq!(o.kind, OverlapKind::Conflict);
        assert_eq!((o.from_ms, o.until_ms), (15 * DAY, 20 * DAY));
        assert_eq!(o.places, BTreeSet::from(["IT".to_owned()]));
        assert_eq!(
            o.crime_areas,
            BTreeSet::from(["migrant_smuggling".to_owned()])
        );
        assert!(o.target_kinds.is_empty());
        // Touching windows do not overlap (the end is excluded).
        assert!(overlap(
            &a,
            &plan("c", "europol", (20, 25), &["IT"], &["migrant_smuggling"])
        )
        .is_none());
        // Disjoint places do not.
        assert!(overlap(
            &a,
            &plan("d", "europol", (10, 20), &["ES"], &["migrant_smuggling"])
        )
        .is_none());
        // A shared place and period but no area and no target do not.
        assert!(overlap(
            &a,
            &plan("e", "europol", (10, 20), &["IT"], &["cybercrime"])
        )
        .is_none());
        // A shared target alone does.
        let mut f = plan("f", "europol", (12, 13), &["GR"], &["cybercrime"]);
        let mut a2 = a.clone();
        a2.targets.insert(vessel(1));
        f.targets.insert(vessel(1));
        f.targets.insert(vessel(2));
        let o = overlap(&a2, &f).unwrap();
        assert!(o.crime_areas.is_empty());
        assert_eq!(o.target_kinds, BTreeSet::from([TargetKind::Imo]));
        // A body's own plans are never compared; nor are an operational
        // and a strategic plan. Two strategic plans align.
        assert!(overlap(
            &a,
            &plan("g", "frontex", (10, 20), &["IT"], &["migrant_smuggling"])
        )
        .is_none());
        let mut s1 = a.clone();
        s1.kind = PlanKind::Strategic;
        assert!(overlap(&s1, &b).is_none());
        let mut s2 = b.clone();
        s2.kind = PlanKind::Strategic;
        assert_eq!(overlap(&s1, &s2).unwrap().kind, OverlapKind::Alignment);
    }

    #[test]
    fn updates_and_removals_change_what_overlaps() {
        let mut index = Index::new();
        index
            .put(plan(
                "a",
                "frontex",
                (10, 20),
                &["IT"],
                &["migrant_smuggling"],
            ))
            .unwrap();
        let b = plan("b", "europol", (15, 30), &["IT"], &["migrant_smuggling"]);
        assert_eq!(index.overlaps(&b).len(), 1);
        // An update that moves "a" away removes the overlap; one that moves
        // it back restores it.
        index
            .put(plan(
                "a",
                "frontex",
                (10, 20),
                &["ES"],
                &["migrant_smuggling"],
            ))
            .unwrap();
        assert!(index.overlaps(&b).is_empty());
        assert_eq!(index.len(), 1);
        index
            .put(plan(
                "a",
                "frontex",
                (16, 18),
                &["IT"],
                &["migrant_smuggling"],
            ))
            .unwrap();
        assert_eq!(index.overlaps(&b)[0].from_ms, 16 * DAY);
        // A plan's own earlier version is not an overlap.
        index.put(b.clone()).unwrap();
        let mut b2 = b.clone();
        b2.end_ms += DAY;
        assert_eq!(
            index
                .overlaps(&b2)
                .iter()
                .map(|o| o.other.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        // Cancelled: gone from every index.
        assert!(index.remove("a").is_some());
        assert!(index.overlaps(&b2).is_empty());
        assert!(index.remove("a").is_none());
        index.remove("b");
        assert!(index.is_empty() && index.by_place_area.is_empty() && index.by_target.is_empty());
    }

    #[test]
    fn a_plan_that_cannot_be_matched_is_refused() {
        let mut index = Index::new();
        for (p, field) in [
            (
                plan("x", "frontex", (20, 20), &["IT"], &["drugs"]),
                "window",
            ),
            (plan("x", "frontex", (1, 2), &[], &["drugs"]), "places"),
            (plan("x", "frontex", (1, 2), &["IT"], &[]), "crime_areas"),
        ] {
            match index.put(p) {
                Err(PlanError::Plan { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(index.is_empty());
    }

    #[test]
    fn a_plan_too_long_or_too_wide_is_refused_at_the_limit_and_not_below() {
        let mut index = Index::new();
        let year = plan("ok", "frontex", (0, 366), &["IT"], &["drugs"]);
        let longer = plan("long", "frontex", (0, 366), &["IT"], &["drugs"]);
        let longer = Plan {
            end_ms: longer.end_ms + 1,
            ..longer
        };
        let cycle = Plan {
            id: "cycle".into(),
            kind: PlanKind::Strategic,
            end_ms: 6 * 366 * DAY,
            ..year.clone()
        };
        let longer_cycle = Plan {
            id: "long cycle".into(),
            end_ms: cycle.end_ms + 1,
            ..cycle.clone()
        };
        let places: Vec<String> = (0..=MAX_PLACES).map(|i| format!("r{i}")).collect();
        let place_refs: Vec<&str> = places.iter().map(String::as_str).collect();
        let widest = plan(
            "wide",
            "frontex",
            (0, 1),
            &place_refs[..MAX_PLACES],
            &["drugs"],
        );
        let too_wide = plan("too wide", "frontex", (0, 1), &place_refs, &["drugs"]);
        let areas: Vec<String> = (0..=MAX_CRIME_AREAS).map(|i| format!("a{i}")).collect();
        let area_refs: Vec<&str> = areas.iter().map(String::as_str).collect();
        let too_many_areas = plan("areas", "frontex", (0, 1), &["IT"], &area_refs);
        for ok in [&year, &cycle, &widest] {
            index.put(ok.clone()).unwrap();
        }
        for (p, field, says) in [
            (longer, "window", "367 days"),
            (longer_cycle, "window", "at most 2196 days"),
            (too_wide, "places", "at most 64"),
            (too_many_areas, "crime_areas", "at most 32"),
        ] {
            match index.put(p) {
                Err(PlanError::Plan { field: f, problem }) => {
                    assert_eq!(f, field);
                    assert!(problem.contains(says), "{problem}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(index.len(), 3);
    }

    fn arb_plan(id: usize) -> impl Strategy<Value = Plan> {
        let bodies = ["europol", "frontex", "interpol"];
        let places = ["GR", "IT", "ES", "MT"];
        let areas = ["drugs", "migrant_smuggling", "cybercrime"];
        (
            0..bodies.len(),
            any::<bool>(),
            0i64..40,
            1i64..15,
            proptest::sample::subsequence(places.to_vec(), 1..=2),
            proptest::sample::subsequence(areas.to_vec(), 0..=2),
            proptest::collection::btree_set(0u8..4, 0..=2),
        )
            .prop_filter_map(
                "a plan needs an area or a target",
                move |(b, strategic, start, len, ps, ars, ts)| {
                    let p = Plan {
                        id: format!("p{id}"),
                        body: BodyId::parse(bodies[b]).ok()?,
                        kind: if strategic {
                            PlanKind::Strategic
                        } else {
                            PlanKind::Operational
                        },
                        start_ms: start * DAY,
                        end_ms: (start + len) * DAY,
                        places: ps.iter().map(|s| (*s).to_owned()).collect(),
                        crime_areas: ars.iter().map(|s| (*s).to_owned()).collect(),
                        targets: ts.into_iter().map(vessel).collect(),
                    };
                    p.check().ok().map(|()| p)
                },
            )
    }

    proptest! {
        /// The index finds exactly the overlaps a comparison with every
        /// active plan finds, after any sequence of puts, new versions
        /// (another window, kind or places) and removals.
        #[test]
        fn the_index_finds_what_comparing_every_plan_finds(
            plans in proptest::collection::vec(0usize..1, 1..40)
                .prop_flat_map(|v| (0..v.len()).map(arb_plan).collect::<Vec<_>>()),
            versions in proptest::collection::vec((0usize..40).prop_flat_map(arb_plan), 0..10),
            removed in proptest::collection::vec(0usize..40, 0..10),
            probe in arb_plan(1000),
        ) {
            let mut index = Index::new();
            let mut held: std::collections::BTreeMap<String, Plan> = Default::default();
            for p in plans.iter().chain(&versions) {
                index.put(p.clone()).unwrap();
                held.insert(p.id.clone(), p.clone());
            }
            for r in &removed {
                index.remove(&format!("p{r}"));
                held.remove(&format!("p{r}"));
            }
            prop_assert_eq!(index.len(), held.len());
            let mut want: Vec<Overlap> = held
                .values()
                .filter_map(|p| overlap(&probe, p))
                .collect();
            want.sort_by(|a, b| a.other.cmp(&b.other));
            prop_assert_eq!(index.overlaps(&probe), want);
        }
    }
}
