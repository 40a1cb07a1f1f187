//! `liaison bench --quick`: the benchmark runs end to end (a hub and eleven
//! nodes as child processes, the echo baseline) and reports every figure
//! the README promises. It checks that the benchmark works, never that the
//! federation is fast.

use std::process::Command;

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_liaison-child");

#[test]
fn the_quick_benchmark_reports_every_figure_against_the_echo() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("load.svg");
    let out = Command::new(EXE)
        .args(["--output", "json", "bench", "--quick", "--plot"])
        .arg(&plot)
        .arg("--dir")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON document");
    assert_eq!(report["quick"], true);

    let echo = report["echo"].as_array().unwrap();
    let concurrencies: Vec<u64> = echo
        .iter()
        .map(|e| e["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(concurrencies, [1, 16, 64]);
    for e in echo {
        assert!(e["rps"].as_f64().unwrap() > 0.0, "{e}");
        assert!(e["p50_us"].as_u64().unwrap() > 0, "{e}");
        assert!(
            e["p99_us"].as_u64().unwrap() >= e["p50_us"].as_u64().unwrap(),
            "{e}"
        );
    }

    let scenarios = report["scenarios"].as_array().unwrap();
    assert!(scenarios.iter().any(|s| s["batched"] == true));
    assert!(scenarios.iter().any(|s| s["batched"] == false));
    // The pipe from the officer on: batches of messages per officer request.
    assert!(
        scenarios
            .iter()
            .any(|s| s["officer_batch"].as_u64().is_some_and(|b| b > 1)),
        "no scenario sent officer batches"
    );
    let fan_outs: std::collections::BTreeSet<u64> = scenarios
        .iter()
        .map(|s| s["recipients"].as_u64().unwrap())
        .collect();
    assert!(
        fan_outs.contains(&1) && fan_outs.contains(&10),
        "{fan_outs:?}"
    );
    for s in scenarios {
        for key in [
            "name",
            "concurrency",
            "recipients",
            "batched",
            "msgs_per_s",
            "p50_us",
            "p99_us",
            "p999_us",
            "hub_cpu_s_per_msg",
            "hub_peak_rss_bytes",
            "ratio_to_echo",
        ] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        assert!(s["messages"].as_u64().unwrap() > 0, "{s}");
        assert!(s["msgs_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(
            s["p999_us"].as_u64().unwrap() >= s["p50_us"].as_u64().unwrap(),
            "{s}"
        );
        // The kernel counted the child processes' own CPU and memory.
        assert!(s["hub_cpu_s_per_msg"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["nodes_cpu_s_per_msg"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["hub_peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
        // Every message is at least its receipt and one decision.
        assert!(s["audit_leaves_per_msg"].as_f64().unwrap() >= 2.0, "{s}");
        assert!(s["audit_leaves_per_s"].as_f64().unwrap() > 0.0, "{s}");
        match s["concurrency"].as_u64() {
            Some(_) => assert!(s["ratio_to_echo"].as_f64().unwrap() > 0.0, "{s}"),
            None => {
                assert!(s["offered_per_s"].as_f64().unwrap() > 0.0, "{s}");
                assert!(s["ratio_to_echo"].is_null(), "{s}");
            }
        }
    }

    // The audit log's proofs, timed in the grown log, and an export
    // verified offline.
    let log = &report["log"];
    assert_eq!(log["calls"], 50, "{log}");
    assert!(log["tree_size"].as_u64().unwrap() > 100, "{log}");
    for key in [
        "inclusion_p50_us",
        "consistency_p50_us",
        "checkpoint_p50_us",
    ] {
        assert!(log[key].as_u64().unwrap() > 0, "{key} in {log}");
    }
    assert!(
        log["inclusion_p50_ratio_to_echo"].as_f64().unwrap() > 0.0,
        "{log}"
    );
    let verified = &report["offline_verify"];
    assert_eq!(verified["records"], 2000, "{verified}");
    assert!(verified["seconds"].as_f64().unwrap() > 0.0, "{verified}");

    // The quick backlog: queued for a stopped peer, drained on its return.
    let backlog = &report["backlog"];
    assert_eq!(backlog["messages"], 200, "{backlog}");
    for key in [
        "fill_msgs_per_s",
        "drain_msgs_per_s",
        "drain_s",
        "hub_disk_bytes_per_msg",
    ] {
        assert!(backlog[key].as_f64().unwrap() > 0.0, "{key} in {backlog}");
    }
    assert!(
        backlog["hub_peak_rss_bytes"].as_u64().unwrap()
            >= backlog["hub_rss_queued_bytes"].as_u64().unwrap(),
        "{backlog}"
    );
    assert!(
        backlog["hub_rss_queued_bytes"].as_u64().unwrap() > 1 << 20,
        "{backlog}"
    );

    // The quick larger federation: 24 bodies, 13 of them simulated,
    // against the eleven's c64 fan-out 1 of the same run.
    let bodies = report["bodies"].as_array().unwrap();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let b = &bodies[0];
    assert_eq!(b["bodies"], 24, "{b}");
    assert_eq!(b["simulated"], 13, "{b}");
    for key in ["msgs_per_s", "ratio_to_eleven", "hub_cpu_s_per_msg"] {
        assert!(b[key].as_f64().unwrap() > 0.0, "{key} in {b}");
    }
    assert!(
        b["hub_peak_rss_bytes"].as_u64().unwrap() >= b["hub_rss_connected_bytes"].as_u64().unwrap(),
        "{b}"
    );
    assert!(
        b["hub_rss_connected_bytes"].as_u64().unwrap() > 1 << 20,
        "{b}"
    );

    assert!(!report["sweep"].as_array().unwrap().is_empty());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg ") && svg.contains("<polyline"),
        "{svg}"
    );
    // The bench stopped every process it started (each would also end by
    // itself with its parent: --exit-with-parent).
}
