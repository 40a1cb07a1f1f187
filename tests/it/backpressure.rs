//! Backpressure: a recipient whose node stays away fills its queue up to
//! the hub's per-peer quota, and then its senders are refused with
//! RESOURCE_EXHAUSTED naming it (nothing stored, nothing dropped: the
//! sending node keeps the message and retries) until the node returns and
//! catches up; an officer flooding a node is rate-limited per certificate
//! while the node's other officers are served.

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use pb::{Classification as C, Kind as K};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{alert, audit_records, envelope, inbox_ids, labels, GOVERNANCE, SETTLE};
use crate::operations::{http, sample, samples};

/// An alert that only charlie may receive (bravo's clearance is below it).
fn to_charlie(title: &str) -> pb::OfficerSubmitRequest {
    request(labels(K::Alert, C::Confidential, &["drugs"]), title)
}

/// An alert that only bravo may receive (charlie's mandate lacks
/// cybercrime).
fn to_bravo(title: &str) -> pb::OfficerSubmitRequest {
    request(labels(K::Alert, C::OfficialUse, &["cybercrime"]), title)
}

/// The id of a message submitted to the hub directly, as a node would.
const DIRECT: &str = "7f1c5a5e-0c4b-4b7e-9a55-3c2f6f0d9e11";

fn request(labels: pb::Labels, title: &str) -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        labels: Some(labels),
        body: Some(alert(title)),
        targets: Vec::new(),
        clear_targets: false,
    }
}

async fn submit(officer: &mut OfficerClient<Channel>, req: pb::OfficerSubmitRequest) -> String {
    officer.submit(req).await.unwrap().into_inner().message_id
}

async fn outbox_entry(officer: &OfficerClient<Channel>, id: &str) -> Option<pb::OutboxEntry> {
    let mut officer = officer.clone();
    officer
        .list_outbox(pb::ListOutboxRequest { limit: 1000 })
        .await
        .ok()?
        .into_inner()
        .entries
        .into_iter()
        .find(|e| e.message_id == id)
}

async fn routed(officer: &OfficerClient<Channel>, id: &str) {
    wait_until(&format!("{id} is routed"), SETTLE, || async {
        outbox_entry(officer, id)
            .await
            .filter(|e| e.status == "routed")
    })
    .await
    .unwrap();
}

/// `body`'s inbox once it holds every id of `want`, oldest first.
async fn inbox_holding(sandbox: &Sandbox, body: &str, want: &[String]) -> Vec<String> {
    let mut got = wait_until(
        &format!("{body}'s inbox holds {} messages", want.len()),
        SETTLE,
        || async {
            let got = inbox_ids(sandbox, body).await;
            want.iter().all(|id| got.contains(id)).then_some(got)
        },
    )
    .await
    .unwrap();
    got.reverse();
    got
}

async fn metrics(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let (status, _, body) = http(addr, "GET", "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    samples(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_its_senders_until_the_peer_catches_up_and_loses_nothing() {
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha", "bravo", "charlie"])
            .hub_toml("[queues]\nmax_messages_per_peer = 4\nmax_bytes_per_peer = 1048576"),
    )
    .await
    .unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    sandbox.stop_node("charlie").await.unwrap();

    // Four fill charlie's queue.
    let mut for_charlie = Vec::new();
    for n in 0..4 {
        let id = submit(&mut alice, to_charlie(&format!("fills the queue {n}"))).await;
        routed(&alice, &id).await;
        for_charlie.push(id);
    }
    // The fifth is refused at the hub; alpha's node keeps it and says why.
    let fifth = submit(&mut alice, to_charlie("over the quota")).await;
    for_charlie.push(fifth.clone());
    let waiting = wait_until("the hub refuses the fifth", SETTLE, || async {
        outbox_entry(&alice, &fifth)
            .await
            .filter(|e| e.last_error.contains("queue for charlie is full"))
    })
    .await
    .unwrap();
    assert_eq!(waiting.status, "queued", "{waiting:?}");
    assert!(
        waiting.last_error.contains("max_messages_per_peer"),
        "{waiting:?}"
    );
    // A later message of alpha's, for bravo, waits behind it: alpha's
    // messages reach each recipient in the order sent.
    let behind = submit(&mut alice, to_bravo("behind the refused one")).await;

    // Asked directly, the hub answers RESOURCE_EXHAUSTED naming charlie.
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let mut l = labels(K::Alert, C::Confidential, &["drugs"]);
    l.message_id = DIRECT.into();
    l.created_at_ms = liaison_types::now_ms();
    let refused = node
        .submit(pb::SubmitRequest {
            envelope: Some(envelope("alpha", l, &alert("asked directly"))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("the queue for charlie is full: 4 messages"),
        "{}",
        refused.message()
    );
    let stored = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: DIRECT.into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        stored.is_empty(),
        "a refused message is not recorded: {stored:?}"
    );

    // Other senders and other recipients are served meanwhile.
    let mut of_bravo = sandbox.officer("bravo", "alice").await.unwrap();
    let l = labels(K::Alert, C::OfficialUse, &["cybercrime"]);
    let from_bravo = submit(&mut of_bravo, request(l, "bravo to alpha")).await;
    routed(&of_bravo, &from_bravo).await;
    inbox_holding(&sandbox, "alpha", std::slice::from_ref(&from_bravo)).await;
    let entry = outbox_entry(&alice, &behind).await.unwrap();
    assert_eq!(entry.status, "queued", "held behind the fifth: {entry:?}");

    // The hub counts the refusals and shows the queue's bytes.
    let m = metrics(sandbox.hub_metrics_addr().unwrap()).await;
    assert!(
        sample(
            &m,
            "liaison_hub_queue_full_refusals_total{peer=\"charlie\",limit=\"messages\"}"
        ) >= 1.0
    );
    assert!(sample(&m, "liaison_hub_queue_bytes{peer=\"charlie\"}") > 0.0);
    assert_eq!(sample(&m, "liaison_hub_queue_depth{peer=\"charlie\"}"), 4.0);

    // Charlie returns: its queue drains, the fifth goes through, and every
    // message arrives once, in the order sent.
    sandbox.start_node("charlie").await.unwrap();
    sandbox.wait_ready().await.unwrap();
    let inbox = inbox_holding(&sandbox, "charlie", &for_charlie).await;
    assert_eq!(inbox, for_charlie, "charlie's inbox, oldest first");
    inbox_holding(&sandbox, "bravo", std::slice::from_ref(&behind)).await;
    routed(&alice, &fifth).await;
    routed(&alice, &behind).await;
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: fifth.clone(),
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(received.len(), 1, "stored once: {received:?}");
    wait_until("charlie's queue is empty", SETTLE, || async {
        let m = metrics(sandbox.hub_metrics_addr().unwrap()).await;
        (sample(&m, "liaison_hub_queue_bytes{peer=\"charlie\"}") == 0.0).then_some(())
    })
    .await
    .unwrap();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_flooding_a_node_is_rate_limited_and_other_officers_are_not() {
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha", "bravo"])
            .node_toml("[officers]\nmax_submissions_per_minute = 3"),
    )
    .await
    .unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();
    let mut taken = Vec::new();
    for n in 0..3 {
        taken.push(submit(&mut alice, to_bravo(&format!("within the limit {n}"))).await);
    }
    let refused = alice.submit(to_bravo("one too many")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("spiffe://liaison.test/org/alpha/officer/alice submitted as many messages")
            && refused.message().contains("max_submissions_per_minute = 3")
            && refused.message().contains("nothing was stored"),
        "{}",
        refused.message()
    );
    // A batch is counted message by message, and refused whole.
    let batch = alice
        .submit_batch(pb::OfficerSubmitBatchRequest {
            messages: vec![to_bravo("batched")],
        })
        .await
        .unwrap_err();
    assert_eq!(batch.code(), Code::ResourceExhausted);
    // Another officer of the same node is served.
    let from_bob = submit(&mut bob, to_bravo("bob is not limited")).await;
    taken.push(from_bob);
    // Exactly what was admitted is in the outbox.
    let mut outbox: Vec<String> = alice
        .list_outbox(pb::ListOutboxRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    outbox.sort();
    taken.sort();
    assert_eq!(outbox, taken);
    let m = metrics(sandbox.node_metrics_addr("alpha").unwrap()).await;
    assert_eq!(sample(&m, "liaison_node_officer_rate_limited_total"), 2.0);
    sandbox.shutdown().await.unwrap();
}

/// A hub (its own process) whose peer's queue is full refuses a flood of
/// submissions for it without growing: its peak memory after 5,000 refused
/// batches is within a few MiB of what it was with the queue just full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_refusing_a_flood_for_a_full_queue_keeps_its_memory_flat() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_liaison-child"));
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha"])
            .hub_process(exe)
            .hub_toml("[queues]\nmax_messages_per_peer = 200\nmax_bytes_per_peer = 1048576"),
    )
    .await
    .unwrap();
    let pid = sandbox.hub_pid().unwrap();
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let submission = |title: &str| {
        let mut l = labels(K::Alert, C::Confidential, &["drugs"]);
        l.created_at_ms = liaison_types::now_ms();
        pb::SubmitRequest {
            envelope: Some(envelope("alpha", l, &alert(title))),
            ..Default::default()
        }
    };
    // Charlie has no node here: its queue fills.
    for n in 0..200 {
        node.submit(submission(&format!("fills {n}")))
            .await
            .unwrap();
    }
    let full = crate::common::peak_rss(pid);
    let mut refused = 0;
    for n in 0..1_000 {
        let batch = pb::SubmitBatchRequest {
            submissions: (0..4)
                .map(|i| submission(&format!("flood {n}.{i}")))
                .collect(),
        };
        let results = node.submit_batch(batch).await.unwrap().into_inner().results;
        for r in results {
            match r.result {
                Some(pb::submit_result::Result::Refused(r)) => {
                    assert_eq!(r.code, Code::ResourceExhausted as i32, "{r:?}");
                    refused += 1;
                }
                other => panic!("accepted past the quota: {other:?}"),
            }
        }
    }
    let after = crate::common::peak_rss(pid);
    eprintln!(
        "figure: {refused} submissions refused for a full queue; hub peak RSS {} MiB with the queue full, {} MiB after",
        full >> 20,
        after >> 20
    );
    assert_eq!(refused, 4_000);
    assert!(
        after <= full + (16 << 20),
        "the hub grew from {} to {} MiB",
        full >> 20,
        after >> 20
    );
    sandbox.shutdown().await.unwrap();
}
