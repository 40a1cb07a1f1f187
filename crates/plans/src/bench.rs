//! The deconfliction benchmark's workload and measurement, shared by
//! `cargo bench -p liaison-plans` (which prints figures) and a smoke test.
//!
//! A federation's active plans, drawn from a fixed seed: eleven bodies,
//! 200 countries and 20 regions, 30 crime areas, windows of a day to a
//! quarter over two years, one to three places, one or two crime areas,
//! and up to three targets per plan from a pool of targets that some plans
//! share. New plans drawn the same way are deconflicted against them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use liaison_types::BodyId;

use crate::{Index, Plan, PlanKind, TargetHash, TargetKind};

/// A small, fixed pseudo-random sequence (SplitMix64): the same plans every
/// run.
#[derive(Debug)]
pub struct Seeded(u64);

impl Seeded {
    /// The sequence from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

const DAY: i64 = 86_400_000;
const BODIES: [&str; 11] = [
    "afripol",
    "ameripol",
    "aseanapol",
    "aimc",
    "eco",
    "europol",
    "frontex",
    "gccpol",
    "interpol",
    "sco",
    "unodc",
];

/// Plan number `n` of the workload.
pub fn plan(rng: &mut Seeded, n: u64) -> Plan {
    let places = 1 + rng.below(3);
    let areas = 1 + rng.below(2);
    let targets = rng.below(4);
    let start = i64::try_from(rng.below(730)).unwrap_or(0) * DAY;
    let len = (1 + i64::try_from(rng.below(90)).unwrap_or(0)) * DAY;
    let body = BODIES[usize::try_from(rng.below(11)).unwrap_or(0)];
    Plan {
        id: format!("plan-{n}"),
        body: BodyId::parse(body).unwrap_or_else(|_| unreachable!("a fixed body id")),
        kind: if rng.below(10) == 0 {
            PlanKind::Strategic
        } else {
            PlanKind::Operational
        },
        start_ms: start,
        end_ms: start + len,
        places: (0..places)
            .map(|_| match rng.below(10) {
                0 => format!("R{:02}", rng.below(20)),
                _ => format!("C{:03}", rng.below(200)),
            })
            .collect(),
        crime_areas: (0..areas)
            .map(|_| format!("area{:02}", rng.below(30)))
            .collect(),
        targets: (0..targets)
            .map(|_| {
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&rng.below(1 << 40).to_be_bytes());
                TargetHash {
                    kind: TargetKind::ALL[usize::try_from(rng.below(6)).unwrap_or(0)],
                    hash,
                }
            })
            .collect::<BTreeSet<_>>(),
    }
}

/// What one size measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Active plans.
    pub plans: usize,
    /// Time to index them all.
    pub build: Duration,
    /// Deconflicting a new plan, quantiles.
    pub p50: Duration,
    /// See `p50`.
    pub p99: Duration,
    /// See `p50`.
    pub max: Duration,
    /// Overlaps found per new plan, on average.
    pub overlaps_per_plan: f64,
    /// Resident memory per active plan (the process's RSS before and after
    /// building, where /proc tells it).
    pub bytes_per_plan: Option<f64>,
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Indexes `n` plans, then deconflicts `probes` new ones, one at a time.
pub fn measure(n: usize, probes: usize) -> Figures {
    let mut rng = Seeded::new(0x5eed);
    let before = rss_bytes();
    let started = Instant::now();
    let mut index = Index::new();
    for i in 0..n as u64 {
        // Every drawn plan is valid: a place and a crime area each.
        let _ = index.put(plan(&mut rng, i));
    }
    let build = started.elapsed();
    let after = rss_bytes();
    let mut times = Vec::with_capacity(probes);
    let mut found = 0usize;
    for i in 0..probes as u64 {
        let p = plan(&mut rng, n as u64 + i);
        let t = Instant::now();
        found += index.overlaps(&p).len();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Figures {
        plans: index.len(),
        build,
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        overlaps_per_plan: found as f64 / probes.max(1) as f64,
        bytes_per_plan: before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / n.max(1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's smoke mode: it runs, finds overlaps, and its draws
    /// are valid plans.
    #[test]
    fn the_benchmark_runs_in_its_smoke_mode() {
        let f = measure(2_000, 200);
        assert_eq!(f.plans, 2_000);
        assert!(f.overlaps_per_plan > 0.0, "{f:?}");
        assert!(f.p50 <= f.p99 && f.p99 <= f.max);
        let mut rng = Seeded::new(1);
        for i in 0..1000 {
            assert!(plan(&mut rng, i).check().is_ok());
        }
    }
}
