//! The report for people: a table, and an SVG plot of the sweep.

use std::fmt::Write as _;

use crate::Report;

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

fn bytes(v: u64) -> String {
    format!("{:.0} MiB", v as f64 / (1024.0 * 1024.0))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"))
}

/// The report as text lines.
pub fn table(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if r.quick {
        out.push(
            "quick run (--quick): it checks that the benchmark works; its figures mean nothing"
                .to_owned(),
        );
    }
    out.push(format!(
        "{} CPUs shared by the driver and every server; {} B payload; mutual TLS 1.3 on loopback",
        r.cpus, r.payload_bytes
    ));
    if !r.scenarios.is_empty() || !r.echo.is_empty() {
        out.push(String::new());
        out.push("bare tonic unary echo, one connection (the baseline)".to_owned());
        out.push(format!(
            "{:>6} {:>10} {:>10} {:>10}",
            "c", "calls/s", "p50", "p99"
        ));
        for e in &r.echo {
            out.push(format!(
                "{:>6} {:>10.0} {:>10} {:>10}",
                e.concurrency,
                e.rps,
                us(e.p50_us),
                us(e.p99_us)
            ));
        }
        out.push(String::new());
        out.push(
            "officer submit → recipient inbox, durable at every hop (each node and the hub fdatasync)"
                .to_owned(),
        );
        out.push(format!(
            "{:<40} {:>7} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9}",
            "scenario",
            "pipe",
            "msgs/s",
            "x echo",
            "p50",
            "p99",
            "p999",
            "p50/echo",
            "hub cpu/msg",
            "nodes cpu",
            "hub rss",
            "hub B/msg"
        ));
        for s in &r.scenarios {
            out.push(format!(
                "{:<40} {:>7} {:>9.0} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8.0} µs {:>7.0} µs {:>8} {:>9.0}",
                s.name,
                if s.batched { "batched" } else { "single" },
                s.msgs_per_s,
                ratio(s.ratio_to_echo),
                us(s.p50_us),
                us(s.p99_us),
                us(s.p999_us),
                ratio(s.p50_ratio_to_echo),
                s.hub_cpu_s_per_msg * 1e6,
                s.nodes_cpu_s_per_msg * 1e6,
                bytes(s.hub_peak_rss_bytes),
                s.hub_write_bytes_per_msg,
            ));
        }
        out.push(String::new());
        out.push("audit log: leaves appended by the hub on the submit path (each a Merkle leaf, durable with the routing)".to_owned());
        out.push(format!(
            "{:<40} {:>12} {:>12}",
            "scenario", "leaves/s", "leaves/msg"
        ));
        for s in &r.scenarios {
            out.push(format!(
                "{:<40} {:>12.0} {:>12.2}",
                s.name, s.audit_leaves_per_s, s.audit_leaves_per_msg
            ));
        }
    }
    if let Some(l) = &r.log {
        out.push(format!(
            "  proofs in a tree of {} leaves, {} calls each, one at a time: inclusion p50 {} p99 {} ({} x echo p50 c1); consistency p50 {} p99 {}; checkpoint p50 {}",
            l.tree_size,
            l.calls,
            us(l.inclusion_p50_us),
            us(l.inclusion_p99_us),
            ratio(l.inclusion_p50_ratio_to_echo),
            us(l.consistency_p50_us),
            us(l.consistency_p99_us),
            us(l.checkpoint_p50_us),
        ));
    }
    if let Some(v) = &r.offline_verify {
        out.push(format!(
            "  offline verify of an export of {} records ({}): {:.2} s, {:.0} records/s (every leaf decoded, compared and hashed; the whole tree recomputed)",
            v.records,
            bytes(v.file_bytes),
            v.seconds,
            v.records_per_s
        ));
    }
    if let Some(b) = &r.backlog {
        out.push(String::new());
        out.push(format!(
            "backlog: {} messages queued at the hub for a stopped peer, then drained",
            b.messages
        ));
        out.push(format!(
            "  filled at {:.0} msgs/s; hub RSS {} with all queued ({} peak); hub disk {:.0} B and writes {:.0} B per queued message",
            b.fill_msgs_per_s,
            bytes(b.hub_rss_queued_bytes),
            bytes(b.hub_peak_rss_bytes),
            b.hub_disk_bytes_per_msg,
            b.hub_write_bytes_per_msg
        ));
        out.push(format!(
            "  drained at {:.0} msgs/s ({:.1} s from the peer's restart)",
            b.drain_msgs_per_s, b.drain_s
        ));
    }
    if !r.bodies.is_empty() {
        out.push(String::new());
        out.push(
            "larger federations: eleven nodes, the other bodies simulated (subscribed), c64, fan-out 1"
                .to_owned(),
        );
        out.push(format!(
            "{:>7} {:>9} {:>9} {:>9} {:>9} {:>12} {:>13} {:>9}",
            "bodies", "msgs/s", "x eleven", "p50", "p99", "hub cpu/msg", "hub rss idle", "hub peak"
        ));
        for b in &r.bodies {
            out.push(format!(
                "{:>7} {:>9.0} {:>9} {:>9} {:>9} {:>9.0} µs {:>13} {:>9}",
                b.bodies,
                b.msgs_per_s,
                ratio(b.ratio_to_eleven),
                us(b.p50_us),
                us(b.p99_us),
                b.hub_cpu_s_per_msg * 1e6,
                bytes(b.hub_rss_connected_bytes),
                bytes(b.hub_peak_rss_bytes),
            ));
        }
    }
    if !r.sweep.is_empty() {
        out.push(String::new());
        out.push("offered load sweep, fan-out 1".to_owned());
        out.push(format!(
            "{:>10} {:>10} {:>10} {:>10}",
            "offered/s", "msgs/s", "p50", "p99"
        ));
        for p in &r.sweep {
            out.push(format!(
                "{:>10.0} {:>10.0} {:>10} {:>10}",
                p.offered_per_s,
                p.msgs_per_s,
                us(p.p50_us),
                us(p.p99_us)
            ));
        }
    }
    out
}

/// An SVG of the sweep: achieved throughput and p99 latency against offered
/// load, both on log scales; `None` without a sweep.
pub fn svg(r: &Report) -> Option<String> {
    let points = &r.sweep;
    if points.is_empty() {
        return None;
    }
    let (w, h, pad) = (720.0_f64, 320.0_f64, 60.0_f64);
    let max_x = points
        .iter()
        .map(|p| p.offered_per_s)
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let min_x = points
        .iter()
        .map(|p| p.offered_per_s)
        .fold(f64::MAX, f64::min)
        .log10()
        .floor();
    let x =
        |v: f64| pad + (v.max(1.0).log10() - min_x) / (max_x - min_x).max(1.0) * (w - 2.0 * pad);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"##,
        2.0 * h
    );
    let charts: [(&str, &str, Vec<f64>); 2] = [
        (
            "achieved messages/s (fan-out 1) against offered",
            "msgs/s",
            points.iter().map(|p| p.msgs_per_s).collect(),
        ),
        (
            "p99 officer submit → inbox (ms) against offered",
            "ms",
            points.iter().map(|p| p.p99_us as f64 / 1000.0).collect(),
        ),
    ];
    for (i, (title, unit, ys)) in charts.iter().enumerate() {
        let top = i as f64 * h;
        let max_y = ys
            .iter()
            .copied()
            .fold(1.0, f64::max)
            .log10()
            .ceil()
            .max(1.0);
        let min_y = ys
            .iter()
            .copied()
            .fold(f64::MAX, f64::min)
            .max(0.01)
            .log10()
            .floor();
        let y = |v: f64| {
            top + h - pad
                + -(v.max(0.01).log10() - min_y) / (max_y - min_y).max(1.0) * (h - 2.0 * pad)
        };
        let _ = write!(
            s,
            r##"<text x="{pad}" y="{}" font-weight="bold">{title}</text>"##,
            top + 24.0
        );
        let _ = write!(
            s,
            r##"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{}" x2="{pad}" y2="{}" stroke="black"/>"##,
            top + h - pad,
            w - pad,
            top + h - pad,
            top + pad,
            top + h - pad
        );
        let mut e = min_x;
        while e <= max_x {
            let v = 10f64.powf(e);
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle">{v:.0}</text>"##,
                x(v),
                top + h - pad + 16.0
            );
            e += 1.0;
        }
        let mut e = min_y;
        while e <= max_y {
            let v = 10f64.powf(e);
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end">{v} {unit}</text>"##,
                pad - 4.0,
                y(v) + 4.0
            );
            e += 1.0;
        }
        let line: Vec<String> = points
            .iter()
            .zip(ys)
            .map(|(p, &v)| format!("{:.1},{:.1}", x(p.offered_per_s), y(v)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="#1f5fa8" stroke-width="2" points="{}"/>"##,
            line.join(" ")
        );
        for (p, &v) in points.iter().zip(ys) {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#1f5fa8"/>"##,
                x(p.offered_per_s),
                y(v)
            );
        }
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">offered messages/s</text>"##,
            w / 2.0,
            top + h - pad + 34.0
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EchoFigure, SweepPoint};

    fn report() -> Report {
        Report {
            cpus: 2,
            quick: false,
            payload_bytes: 1024,
            echo: vec![EchoFigure {
                concurrency: 1,
                rps: 5000.0,
                p50_us: 180,
                p99_us: 400,
            }],
            scenarios: Vec::new(),
            backlog: None,
            bodies: vec![crate::BodiesFigure {
                bodies: 1000,
                simulated: 989,
                msgs_per_s: 1234.0,
                ratio_to_eleven: Some(0.875),
                p50_us: 1000,
                p99_us: 2000,
                hub_cpu_s_per_msg: 0.0004,
                hub_rss_connected_bytes: 300 << 20,
                hub_peak_rss_bytes: 310 << 20,
            }],
            sweep: vec![
                SweepPoint {
                    offered_per_s: 100.0,
                    msgs_per_s: 100.0,
                    p50_us: 3000,
                    p99_us: 5000,
                },
                SweepPoint {
                    offered_per_s: 200.0,
                    msgs_per_s: 150.0,
                    p50_us: 30_000,
                    p99_us: 900_000,
                },
            ],
            log: Some(crate::LogFigure {
                tree_size: 123_456,
                calls: 2000,
                inclusion_p50_us: 420,
                inclusion_p99_us: 1900,
                consistency_p50_us: 410,
                consistency_p99_us: 1800,
                checkpoint_p50_us: 300,
                inclusion_p50_ratio_to_echo: Some(2.333),
            }),
            offline_verify: Some(crate::VerifyFigure {
                records: 1_000_000,
                file_bytes: 700 << 20,
                seconds: 4.25,
                records_per_s: 235_294.0,
            }),
        }
    }

    #[test]
    fn the_plot_is_one_svg_document_with_both_charts() {
        let svg = svg(&report()).unwrap();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let mut r = report();
        r.sweep.clear();
        assert!(super::svg(&r).is_none());
    }

    #[test]
    fn the_table_shows_the_baseline_and_the_sweep() {
        let lines = table(&report());
        assert!(
            lines.iter().any(|l| l.contains("123456 leaves")
                && l.contains("inclusion p50 420 µs")
                && l.contains("2.333")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("1000000 records") && l.contains("4.25 s")),
            "{lines:#?}"
        );
        assert!(lines
            .iter()
            .any(|l| l.contains("5000") && l.contains("180 µs")));
        assert!(lines.iter().any(|l| l.contains("900.0 ms")), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("1000") && l.contains("0.875") && l.contains("300 MiB")),
            "{lines:#?}"
        );
    }
}
