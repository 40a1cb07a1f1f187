//! Throughput of the hub's submit path, end to end over mutual TLS with a
//! real sled store, at several client concurrencies, reported as ratios to
//! the one-at-a-time baseline measured in the same run.
//!
//! What it shows: the hub answers a submission only once it is flushed to
//! disk, and concurrent submissions share a flush (group commit), so more
//! concurrency means more messages per fsync rather than a queue of fsyncs.
//!
//! `cargo bench -p liaison-tests --bench throughput` (bounded: a few thousand
//! messages on loopback, well under a minute).

use std::time::{Duration, Instant};

use liaison_federation::{Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use prost::Message;

const GOVERNANCE: &str = r#"
version = 1
federation = "liaison.bench"
hub_body = "alpha"
[observers]
kinds = ["threat_assessment"]
max_classification = "OFFICIAL_USE"
[[body]]
id = "alpha"
name = "Alpha"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["drugs"]
[[body]]
id = "bravo"
name = "Bravo"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["drugs"]
[[body]]
id = "charlie"
name = "Charlie"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["drugs"]
"#;

fn envelope() -> pb::Envelope {
    let body = pb::Body {
        title: "bench".into(),
        content: Some(pb::body::Content::Alert(pb::Alert {
            text: "x".repeat(512),
            ..Default::default()
        })),
    };
    pb::Envelope {
        labels: Some(pb::Labels {
            message_id: uuid::Uuid::new_v4().to_string(),
            origin: "alpha".into(),
            kind: pb::Kind::Alert as i32,
            classification: pb::Classification::Restricted as i32,
            crime_areas: vec!["drugs".into()],
            priority: pb::Priority::Routine as i32,
            created_at_ms: liaison_types::now_ms(),
            ..Default::default()
        }),
        body: body.encode_to_vec(),
    }
}

/// Submits `total` messages with `concurrency` clients in flight; returns
/// messages per second.
async fn run(sandbox: &Sandbox, concurrency: usize, total: usize) -> f64 {
    let client = sandbox.hub_as("alpha/node").await.expect("hub client");
    let per_task = total / concurrency;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client
                        .submit(pb::SubmitRequest {
                            targets: Vec::new(),
                            envelope: Some(envelope()),
                            approved_by: String::new(),
                            traceparent: String::new(),
                        })
                        .await
                        .expect("submit");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("submit task");
    }
    (per_task * concurrency) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&[]))
            .await
            .expect("sandbox");
        // Warm up connections and the store.
        run(&sandbox, 4, 200).await;
        let budget = Duration::from_secs(20);
        let started = Instant::now();
        let baseline = run(&sandbox, 1, 300).await;
        println!("hub submit, 2 recipients each, 512-byte alert, mTLS + sled flush per answer");
        println!(
            "{:>12} {:>12} {:>10}",
            "concurrency", "msgs/s", "x baseline"
        );
        println!("{:>12} {:>12.0} {:>10.2}", 1, baseline, 1.0);
        for concurrency in [4, 16, 64] {
            if started.elapsed() > budget {
                break;
            }
            let rate = run(&sandbox, concurrency, 1280).await;
            println!("{concurrency:>12} {rate:>12.0} {:>10.2}", rate / baseline);
        }
        sandbox.shutdown().await.expect("shutdown");
    });
}
