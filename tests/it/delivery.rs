//! Delivery guarantees end to end: a resubmitted message is stored, queued
//! and audited once; a node or the hub that goes away catches up on its
//! return without loss or duplication; each recipient sees its messages in
//! the order the hub accepted them; and the hub's subscription is
//! at-least-once until the subscriber acknowledges.

use std::collections::BTreeSet;

use futures::future::join_all;
use futures::StreamExt;
use liaison_federation::{wait_until, Sandbox};
use liaison_proto::v1 as pb;
use liaison_proto::v1::federation_client::FederationClient;
use liaison_proto::v1::officer_client::OfficerClient;
use pb::{Classification as C, Kind as K};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{
    alert, assessment, audit_records, envelope, inbox_ids, labels, sandbox, SETTLE,
};

/// An alert only `bravo` may receive: charlie's mandate lacks cybercrime and
/// the observer takes no alerts.
fn to_bravo(title: &str) -> (pb::Labels, pb::Body) {
    (
        labels(K::Alert, C::OfficialUse, &["cybercrime"]),
        alert(title),
    )
}

/// The recipients a submission was delivered to.
fn delivered_to(decisions: &[pb::RoutingDecision]) -> BTreeSet<String> {
    decisions
        .iter()
        .filter(|d| d.outcome == pb::Outcome::Deliver as i32)
        .map(|d| d.recipient.clone())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Asserts that a resubmission answered with the original outcome.
fn assert_same_outcome(original: &pb::SubmitResponse, again: &pb::SubmitResponse) {
    assert_eq!(again.message_id, original.message_id);
    assert_eq!(
        again.decisions, original.decisions,
        "decisions of {}",
        original.message_id
    );
    assert_eq!(again.policy_version, original.policy_version);
    assert_eq!(again.accepted_at_ms, original.accepted_at_ms);
}

async fn submit_to_hub(hub: &FederationClient<Channel>, env: &pb::Envelope) -> pb::SubmitResponse {
    let mut hub = hub.clone();
    hub.submit(pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(env.clone()),
        approved_by: String::new(),
        traceparent: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn officer_submit(
    officer: &mut OfficerClient<Channel>,
    labels: pb::Labels,
    body: pb::Body,
) -> String {
    officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(labels),
            body: Some(body),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id
}

async fn outbox(officer: &OfficerClient<Channel>) -> Option<Vec<pb::OutboxEntry>> {
    let mut officer = officer.clone();
    Some(
        officer
            .list_outbox(pb::ListOutboxRequest { limit: 1000 })
            .await
            .ok()?
            .into_inner()
            .entries,
    )
}

/// Waits until `body`'s inbox holds every id of `want`, and returns the
/// whole inbox, newest first.
async fn inbox_holding(sandbox: &Sandbox, body: &str, want: &[String]) -> Vec<String> {
    wait_until(
        &format!("{body}'s inbox holds {} messages", want.len()),
        SETTLE,
        || async {
            let got = inbox_ids(sandbox, body).await;
            want.iter().all(|id| got.contains(id)).then_some(got)
        },
    )
    .await
    .unwrap()
}

/// Waits until the origin's outbox shows every id as routed, and returns
/// those entries in the order of `ids`.
async fn routed(officer: &OfficerClient<Channel>, ids: &[String]) -> Vec<pb::OutboxEntry> {
    wait_until(
        &format!("the hub routes {} messages", ids.len()),
        SETTLE,
        || async {
            let entries = outbox(officer).await?;
            ids.iter()
                .map(|id| {
                    entries
                        .iter()
                        .find(|e| &e.message_id == id && e.status == "routed")
                        .cloned()
                })
                .collect::<Option<Vec<_>>>()
        },
    )
    .await
    .unwrap()
}

fn count(ids: &[String], id: &str) -> usize {
    ids.iter().filter(|i| *i == id).count()
}

/// Opens a subscription and reads `n` deliveries as `(seq, message id)`,
/// without acknowledging; the stream is dropped on return.
async fn read_deliveries(
    hub: &FederationClient<Channel>,
    after_seq: u64,
    n: usize,
) -> Vec<(u64, String)> {
    let mut hub = hub.clone();
    let mut stream = hub
        .subscribe(pb::SubscribeRequest { after_seq })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let d = tokio::time::timeout(SETTLE, stream.next())
            .await
            .expect("a delivery within the settle time")
            .expect("the subscription stays open")
            .unwrap();
        got.push((d.seq, d.envelope.unwrap().labels.unwrap().message_id));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_answers_resubmissions_with_the_original_outcome_and_stores_once() {
    let sandbox = sandbox().await;
    let hub = sandbox.hub_as("alpha/node").await.unwrap();
    let everyone = set(&["bravo", "charlie", "obs"]);

    // Sequential resubmission, then eight concurrent ones.
    let env = envelope(
        "alpha",
        labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]),
        &assessment("resubmitted assessment"),
    );
    let id = env.labels.as_ref().unwrap().message_id.clone();
    let first = submit_to_hub(&hub, &env).await;
    assert!(!first.duplicate);
    assert_eq!(first.message_id, id);
    assert_eq!(delivered_to(&first.decisions), everyone);
    let again = submit_to_hub(&hub, &env).await;
    assert!(again.duplicate, "a resubmission is a duplicate");
    assert_same_outcome(&first, &again);
    let answers = join_all((0..8).map(|_| submit_to_hub(&hub, &env))).await;
    for a in &answers {
        assert!(a.duplicate);
        assert_same_outcome(&first, a);
    }

    // A fresh message submitted eight times at once: exactly one is new.
    let racing = envelope(
        "alpha",
        labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]),
        &assessment("raced assessment"),
    );
    let racing_id = racing.labels.as_ref().unwrap().message_id.clone();
    let answers = join_all((0..8).map(|_| submit_to_hub(&hub, &racing))).await;
    let new: Vec<&pb::SubmitResponse> = answers.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(
        new.len(),
        1,
        "exactly one of eight concurrent submissions is new: {answers:?}"
    );
    for a in &answers {
        assert_same_outcome(new[0], a);
    }
    assert_eq!(delivered_to(&new[0].decisions), everyone);

    // A later message to the same recipients: once it is in an inbox,
    // everything queued before it has been delivered.
    let sentinel = envelope(
        "alpha",
        labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]),
        &assessment("sentinel"),
    );
    let sentinel_id = sentinel.labels.as_ref().unwrap().message_id.clone();
    assert!(!submit_to_hub(&hub, &sentinel).await.duplicate);
    for body in &everyone {
        let inbox = inbox_holding(&sandbox, body, std::slice::from_ref(&sentinel_id)).await;
        assert_eq!(count(&inbox, &id), 1, "{body}'s inbox {inbox:?}");
        assert_eq!(count(&inbox, &racing_id), 1, "{body}'s inbox {inbox:?}");
        assert_eq!(inbox.len(), 3, "{body}'s inbox {inbox:?}");
    }

    // One `received` and one `routed` per candidate, whatever the retries.
    for m in [&id, &racing_id, &sentinel_id] {
        let records = audit_records(
            &sandbox,
            pb::AuditQuery {
                message_id: m.clone(),
                ..Default::default()
            },
        )
        .await;
        let events = |e: &str| records.iter().filter(|r| r.event == e).count();
        assert_eq!(events("received"), 1, "{m}: {records:?}");
        assert_eq!(events("routed"), 3, "{m}: {records:?}");
    }
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(received.len(), 3);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_retry_with_the_same_message_id_is_queued_once() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let (mut l, body) = to_bravo("officer retry");
    l.message_id = id.clone();
    let request = pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(l.clone()),
        body: Some(body.clone()),
    };
    let first = officer.submit(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.message_id, id);
    assert!(!first.duplicate);
    let second = officer.submit(request.clone()).await.unwrap().into_inner();
    assert_eq!(second.message_id, id);
    assert!(second.duplicate, "the retry is recognised");

    // The same id with different content is refused, naming the id.
    let mut changed = request.clone();
    changed.body = Some(alert("something else"));
    let refused = officer.submit(changed).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains(&id), "{refused:?}");

    let entry = routed(&officer, std::slice::from_ref(&id)).await.remove(0);
    assert_eq!(delivered_to(&entry.decisions), set(&["bravo"]));
    let entries = outbox(&officer).await.unwrap();
    assert_eq!(
        entries.iter().filter(|e| e.message_id == id).count(),
        1,
        "{entries:?}"
    );
    assert_eq!(entries.len(), 1, "{entries:?}");

    // A later message to bravo: once it has arrived, so has everything
    // queued before it.
    let (l, body) = to_bravo("sentinel");
    let sentinel = officer_submit(&mut officer, l, body).await;
    let inbox = inbox_holding(&sandbox, "bravo", std::slice::from_ref(&sentinel)).await;
    assert_eq!(
        inbox,
        vec![sentinel, id.clone()],
        "bravo's inbox, newest first"
    );
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: id.clone(),
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(received.len(), 1, "{received:?}");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_offline_catches_up_in_order_and_once() {
    let mut sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let (l, body) = to_bravo("before the stop");
    let before = officer_submit(&mut officer, l, body).await;
    inbox_holding(&sandbox, "bravo", std::slice::from_ref(&before)).await;

    sandbox.stop_node("bravo").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..6 {
        let (l, body) = to_bravo(&format!("while bravo is away {n}"));
        ids.push(officer_submit(&mut officer, l, body).await);
    }
    // Routed and queued at the hub while bravo is away, in submission order.
    for entry in routed(&officer, &ids).await {
        assert_eq!(delivered_to(&entry.decisions), set(&["bravo"]), "{entry:?}");
    }
    let mut queued = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "routed".into(),
            decision: "deliver".into(),
            body: "bravo".into(),
            ..Default::default()
        },
    )
    .await;
    queued.sort_by_key(|r| r.queue_seq);
    let hub_order: Vec<String> = queued.iter().map(|r| r.message_id.clone()).collect();
    let mut all = vec![before.clone()];
    all.extend(ids.iter().cloned());
    assert_eq!(hub_order, all, "bravo's hub queue");

    sandbox.start_node("bravo").await.unwrap();
    sandbox.wait_ready().await.unwrap();
    let mut inbox = inbox_holding(&sandbox, "bravo", &ids).await;
    inbox.reverse();
    assert_eq!(
        inbox, all,
        "bravo's inbox, oldest first: each message once, in hub order"
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_drains_once_the_hub_returns() {
    let mut sandbox = sandbox().await;
    sandbox.stop_hub().await.unwrap();
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        let (l, body) = to_bravo(&format!("while the hub is down {n}"));
        ids.push(officer_submit(&mut officer, l, body).await);
    }
    // Accepted into the durable outbox; the oldest is retried, and each
    // attempt is counted with its error.
    let entries = wait_until(
        "the push of the oldest message is retried",
        SETTLE,
        || async {
            let entries = outbox(&officer).await?;
            let oldest = entries.iter().find(|e| e.message_id == ids[0])?;
            (oldest.attempts >= 3).then_some(entries)
        },
    )
    .await
    .unwrap();
    assert_eq!(entries.len(), ids.len());
    for e in &entries {
        assert_eq!(e.status, "queued", "{e:?}");
        assert!(e.decisions.is_empty(), "{e:?}");
    }
    let oldest = entries.iter().find(|e| e.message_id == ids[0]).unwrap();
    assert!(!oldest.last_error.is_empty(), "{oldest:?}");

    sandbox.start_hub().await.unwrap();
    for entry in routed(&officer, &ids).await {
        assert_eq!(delivered_to(&entry.decisions), set(&["bravo"]), "{entry:?}");
        assert!(entry.last_error.is_empty(), "{entry:?}");
        assert!(!entry.policy_version.is_empty(), "{entry:?}");
    }
    let mut inbox = inbox_holding(&sandbox, "bravo", &ids).await;
    inbox.reverse();
    assert_eq!(inbox, ids, "bravo's inbox, oldest first");
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    let mut got: Vec<String> = received.into_iter().map(|r| r.message_id).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "one `received` record per message");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_sees_its_messages_in_submission_order() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        let (l, body) = to_bravo(&format!("ordered {n:02}"));
        ids.push(officer_submit(&mut officer, l, body).await);
    }
    let mut inbox = inbox_holding(&sandbox, "bravo", &ids).await;
    inbox.reverse();
    assert_eq!(inbox, ids, "bravo's inbox, oldest first");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_redelivers_until_acknowledged_and_resumes_after_the_acknowledged_position() {
    let mut sandbox = sandbox().await;
    // Only this test's client subscribes as bravo.
    sandbox.stop_node("bravo").await.unwrap();
    let alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        let (l, body) = to_bravo(&format!("at least once {n}"));
        let resp = submit_to_hub(&alpha, &envelope("alpha", l, &body)).await;
        assert_eq!(delivered_to(&resp.decisions), set(&["bravo"]));
        ids.push(resp.message_id);
    }
    let bravo = sandbox.hub_as("bravo/node").await.unwrap();

    // Read without acknowledging, drop the stream: it all comes again.
    let first = read_deliveries(&bravo, 0, 5).await;
    assert_eq!(
        first.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert!(
        first.windows(2).all(|w| w[0].0 < w[1].0),
        "positions increase: {first:?}"
    );
    let again = read_deliveries(&bravo, 0, 5).await;
    assert_eq!(
        again, first,
        "unacknowledged deliveries come again, at the same positions"
    );

    // Acknowledge up to the third: a new subscription starts after it.
    let mut ack = bravo.clone();
    let acked = ack
        .acknowledge(pb::AcknowledgeRequest {
            seq: first[2].0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acked_seq, first[2].0);
    assert_eq!(read_deliveries(&bravo, 0, 2).await, first[3..].to_vec());
    // An older acknowledgement does not move the position back.
    let acked = ack
        .acknowledge(pb::AcknowledgeRequest {
            seq: first[0].0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acked_seq, first[2].0);
    // after_seq before the acknowledged position: the acknowledged one wins.
    assert_eq!(
        read_deliveries(&bravo, first[0].0, 2).await,
        first[3..].to_vec()
    );
    // after_seq after the acknowledged position skips ahead.
    assert_eq!(
        read_deliveries(&bravo, first[3].0, 1).await,
        first[4..].to_vec()
    );
    // Acknowledging past the end of the queue is refused and changes nothing.
    let beyond = ack
        .acknowledge(pb::AcknowledgeRequest {
            seq: first[4].0 + 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange, "{beyond:?}");
    assert_eq!(read_deliveries(&bravo, 0, 2).await, first[3..].to_vec());

    // An open subscription receives a message submitted after it opened.
    let mut live = bravo.clone();
    let mut stream = live
        .subscribe(pb::SubscribeRequest {
            after_seq: first[4].0,
        })
        .await
        .unwrap()
        .into_inner();
    let (l, body) = to_bravo("while subscribed");
    let late = submit_to_hub(&alpha, &envelope("alpha", l, &body))
        .await
        .message_id;
    let d = tokio::time::timeout(SETTLE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.unwrap().labels.unwrap().message_id, late);
    assert!(d.seq > first[4].0);
    drop(stream);

    // The audit log names every acknowledged message once, in one record
    // per acknowledgement and originator.
    let acks = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "acknowledged".into(),
            body: "bravo".into(),
            ..Default::default()
        },
    )
    .await;
    let acked_ids: Vec<String> = acks
        .iter()
        .flat_map(|r| liaison_types::audit::messages(r).map(|(id, _)| id.to_owned()))
        .collect();
    assert_eq!(acked_ids, ids[..3].to_vec(), "{acks:?}");
    assert!(
        acks.iter()
            .all(|r| r.recipient == "bravo" && r.actor.contains("/org/bravo/node")),
        "{acks:?}"
    );
    sandbox.shutdown().await.unwrap();
}

/// Stopping a service and starting it again at once on the same store, as
/// an operator's supervisor or `liaison demo` would, works every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_and_a_node_restart_at_once_on_the_same_store() {
    let mut sandbox = sandbox().await;
    for i in 0..5 {
        sandbox.stop_node("bravo").await.unwrap();
        sandbox.start_node("bravo").await.unwrap();
        if let Err(e) = sandbox.wait_ready().await {
            panic!("bravo's node restart {i}: {e}");
        }
        sandbox.stop_hub().await.unwrap();
        sandbox.start_hub().await.unwrap();
        if let Err(e) = sandbox.wait_ready().await {
            panic!("hub restart {i}: {e}");
        }
    }
    // And it still routes and delivers.
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let (l, body) = to_bravo("after the restarts");
    let id = officer_submit(&mut officer, l, body).await;
    assert_eq!(
        inbox_holding(&sandbox, "bravo", std::slice::from_ref(&id)).await,
        vec![id]
    );
    sandbox.shutdown().await.unwrap();
}

/// An officer's alert for bravo only; returns its id.
async fn submit_to_bravo(officer: &mut OfficerClient<Channel>, title: &str) -> String {
    let (l, b) = to_bravo(title);
    officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(l),
            body: Some(b),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id
}

/// alpha's outbox entry for `id`, once `done` holds for it.
async fn outbox_entry_when(
    sandbox: &Sandbox,
    id: &str,
    what: &str,
    done: impl Fn(&pb::OutboxEntry) -> bool,
) -> pb::OutboxEntry {
    let alice = sandbox.officer("alpha", "alice").await.unwrap();
    wait_until(what, SETTLE, || {
        let mut alice = alice.clone();
        let done = &done;
        async move {
            alice
                .list_outbox(pb::ListOutboxRequest { limit: 100 })
                .await
                .ok()?
                .into_inner()
                .entries
                .into_iter()
                .find(|e| e.message_id == id && done(e))
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_node_cannot_accept_is_quarantined_reported_and_never_counted_delivered() {
    let mut sandbox = liaison_federation::Sandbox::start(
        liaison_federation::SandboxOptions::new(crate::common::GOVERNANCE)
            .nodes(&["alpha", "bravo"]),
    )
    .await
    .unwrap();
    sandbox.stop_node("bravo").await.unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let id = submit_to_bravo(&mut alice, "damaged on the way").await;
    // Routed to bravo, whose node is down: queued at the hub, not received.
    let routed = outbox_entry_when(&sandbox, &id, "alpha's message is routed", |e| {
        e.status == "routed"
    })
    .await;
    assert!(routed.received_by.is_empty(), "{routed:?}");

    // The stored envelope is damaged behind the hub's back (as a hub bug or
    // a bad disk would): its title becomes empty, which no node accepts.
    sandbox.stop_hub().await.unwrap();
    crate::common::damage_hub_record(&sandbox, &format!("m/{id}/env"), |bytes| {
        let mut env: pb::Envelope = prost::Message::decode(bytes.as_slice()).unwrap();
        let mut body: pb::Body = prost::Message::decode(env.body.as_slice()).unwrap();
        body.title.clear();
        env.body = prost::Message::encode_to_vec(&body);
        prost::Message::encode_to_vec(&env)
    })
    .await;
    sandbox.start_hub().await.unwrap();
    sandbox.start_node("bravo").await.unwrap();

    // bravo's node keeps it in quarantine and says so in its status...
    let bob = sandbox.officer("bravo", "bob").await.unwrap();
    let status = wait_until("bravo's node quarantines it", SETTLE, || {
        let mut bob = bob.clone();
        async move {
            let s = bob
                .status(pb::NodeStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.quarantined > 0).then_some(s)
        }
    })
    .await
    .unwrap();
    assert_eq!(status.quarantined, 1);
    let q = &status.quarantine[0];
    assert_eq!(q.message_id, id);
    assert_eq!(q.origin, "alpha");
    assert!(q.reason.contains("body.title"), "{q:?}");
    // `liaison status` raises the alarm, with exit code 7 for scripts.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison-child"))
        .arg("status")
        .arg("--server")
        .arg(sandbox.node_url("bravo").unwrap())
        .arg("--certs")
        .arg(sandbox.certs())
        .args(["--as", "bravo/officer-bob"])
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert_eq!(cli.status.code(), Some(7), "{shown}");
    assert!(shown.contains("ALARM: 1 deliveries"), "{shown}");
    assert!(shown.contains("body.title"), "{shown}");
    // ...in the node's own log...
    let mut audit = sandbox
        .node_audit("bravo", "bravo/auditor-audit")
        .await
        .unwrap();
    let log = audit
        .list_log(pb::NodeLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let kept = log
        .records
        .iter()
        .find(|r| r.event == "quarantined")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(
        (kept.message_id.as_str(), kept.origin.as_str()),
        (id.as_str(), "alpha")
    );
    assert_eq!(kept.hub_seq, q.hub_seq);
    assert!(kept.reason.contains("body.title"), "{kept:?}");
    // ...never in its inbox...
    assert!(!inbox_ids(&sandbox, "bravo").await.contains(&id));
    // ...the hub records it as quarantined, never as delivered to bravo...
    // (the node stores the quarantine, then acknowledges with the report)
    let records = wait_until("the hub records the quarantine", SETTLE, || async {
        let records = audit_records(
            &sandbox,
            pb::AuditQuery {
                message_id: id.clone(),
                ..Default::default()
            },
        )
        .await;
        records
            .iter()
            .any(|r| r.event == "quarantined")
            .then_some(records)
    })
    .await
    .unwrap();
    let for_bravo: Vec<&str> = records
        .iter()
        .filter(|r| r.recipient == "bravo" && r.event != "routed" && r.event != "delivered")
        .map(|r| r.event.as_str())
        .collect();
    assert_eq!(for_bravo, ["quarantined"], "{records:#?}");
    let quarantined = records.iter().find(|r| r.event == "quarantined").unwrap();
    assert!(quarantined.reason.contains("body.title"), "{quarantined:?}");
    // ...and alpha's outbox says bravo's node quarantined it, not received.
    let entry = outbox_entry_when(&sandbox, &id, "alpha hears of the quarantine", |e| {
        !e.quarantined_by.is_empty()
    })
    .await;
    assert_eq!(entry.quarantined_by[0].body, "bravo");
    assert!(entry.quarantined_by[0].reason.contains("body.title"));
    assert!(entry.received_by.is_empty());

    // The queue goes on: the next message is received, and alpha's outbox
    // shows bravo's node received it.
    let next = submit_to_bravo(&mut alice, "intact").await;
    let entry = outbox_entry_when(&sandbox, &next, "bravo's node receives the next", |e| {
        !e.received_by.is_empty()
    })
    .await;
    assert_eq!(entry.received_by[0].body, "bravo");
    assert!(inbox_ids(&sandbox, "bravo").await.contains(&next));
    sandbox.shutdown().await.unwrap();
}
