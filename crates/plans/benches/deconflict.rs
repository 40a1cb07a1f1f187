//! Prints how long deconflicting a new plan takes against 10k, 100k and 1M
//! active plans, and memory per active plan:
//!
//!   cargo bench -p liaison-plans --bench deconflict            # 10k, 100k, 1M
//!   cargo bench -p liaison-plans --bench deconflict -- 100000  # chosen sizes
#![allow(clippy::unwrap_used)]

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "plans", "build", "p50", "p99", "max", "overlaps", "bytes/plan"
    );
    for n in sizes {
        let f = liaison_plans::bench::measure(n, 10_000);
        println!(
            "{:>10} {:>9.2}s {:>8.1}µs {:>8.1}µs {:>8.1}µs {:>12.2} {:>12}",
            f.plans,
            f.build.as_secs_f64(),
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            f.max.as_secs_f64() * 1e6,
            f.overlaps_per_plan,
            f.bytes_per_plan
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.0}")),
        );
    }
}
