//! The batched pipe: `Federation.SubmitBatch` at the hub, the node's batched
//! push, and `Officer.WatchInbox`.

use futures::StreamExt;
use liaison_federation::{wait_until, SandboxOptions};
use liaison_proto::v1 as pb;
use tonic::Code;

use crate::common::{
    alert, assert_refused, audit_log, envelope, hub_only, inbox_ids, labels, outbox_ids, sandbox,
    GOVERNANCE, SETTLE,
};

fn restricted_alert(origin: &str, title: &str) -> pb::Envelope {
    envelope(
        origin,
        labels(pb::Kind::Alert, pb::Classification::Restricted, &["drugs"]),
        &alert(title),
    )
}

/// Officer alice of alpha submits `bodies` as RESTRICTED drugs alerts, in
/// order; returns their ids.
async fn submit_alerts(
    sandbox: &liaison_federation::Sandbox,
    bodies: impl IntoIterator<Item = pb::Body>,
) -> Vec<String> {
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut sent = Vec::new();
    for body in bodies {
        let resp = officer
            .submit(pb::OfficerSubmitRequest {
                clear_targets: false,
                targets: Vec::new(),
                labels: Some(labels(
                    pb::Kind::Alert,
                    pb::Classification::Restricted,
                    &["drugs"],
                )),
                body: Some(body),
            })
            .await
            .unwrap()
            .into_inner();
        sent.push(resp.message_id);
    }
    sent
}

fn id_of(env: &pb::Envelope) -> String {
    env.labels.as_ref().unwrap().message_id.clone()
}

fn one(env: pb::Envelope) -> pb::SubmitRequest {
    pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(env),
        approved_by: String::new(),
        traceparent: String::new(),
    }
}

fn accepted(r: &pb::SubmitResult) -> &pb::SubmitResponse {
    match &r.result {
        Some(pb::submit_result::Result::Accepted(a)) => a,
        other => panic!("expected accepted, got {other:?}"),
    }
}

fn refused(r: &pb::SubmitResult) -> &pb::RefusedSubmission {
    match &r.result {
        Some(pb::submit_result::Result::Refused(f)) => f,
        other => panic!("expected refused, got {other:?}"),
    }
}

/// Each submission of a batch gets its own answer in its own place: the
/// valid ones are routed in order, a refused one writes nothing and stops
/// nothing, a repeat gets its original outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gets_one_result_per_submission_in_order() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let first = restricted_alert("alpha", "first");
    let second = restricted_alert("alpha", "second");
    let mut malformed = restricted_alert("alpha", "malformed");
    malformed.labels.as_mut().unwrap().crime_areas.clear();
    let mut reused = restricted_alert("alpha", "reused id, other content");
    reused.labels.as_mut().unwrap().message_id = id_of(&first);
    let forged = restricted_alert("bravo", "forged origin");

    let batch = vec![
        one(first.clone()),
        one(malformed.clone()),
        one(second.clone()),
        one(first.clone()),
        one(reused),
        one(forged.clone()),
        pb::SubmitRequest::default(),
    ];
    let results = node
        .submit_batch(pb::SubmitBatchRequest { submissions: batch })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 7, "{results:?}");

    let a = accepted(&results[0]);
    assert_eq!(a.message_id, id_of(&first));
    assert!(!a.duplicate);
    assert!(a
        .decisions
        .iter()
        .any(|d| d.recipient == "bravo" && d.outcome == pb::Outcome::Deliver as i32));

    let bad = refused(&results[1]);
    assert_eq!(bad.code, Code::InvalidArgument as i32);
    assert_eq!(bad.message_id, id_of(&malformed));
    assert!(bad.message.contains("crime_areas"), "{bad:?}");

    assert_eq!(accepted(&results[2]).message_id, id_of(&second));
    let again = accepted(&results[3]);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.decisions, a.decisions);
    assert_eq!(refused(&results[4]).code, Code::AlreadyExists as i32);
    let forged_answer = refused(&results[5]);
    assert_eq!(forged_answer.code, Code::PermissionDenied as i32);
    assert!(
        forged_answer.message.contains("origin"),
        "{forged_answer:?}"
    );
    let empty = refused(&results[6]);
    assert_eq!(empty.code, Code::InvalidArgument as i32);
    assert!(empty.message.contains("envelope"), "{empty:?}");

    // The audit log: the two routed messages in batch order, each received
    // once; the malformed one never reached it; the forged one is a refusal.
    let log = audit_log(&sandbox).await;
    let received: Vec<&str> = log
        .iter()
        .filter(|r| r.event == "received")
        .map(|r| r.message_id.as_str())
        .collect();
    assert_eq!(received, [id_of(&first), id_of(&second)]);
    assert!(log.iter().all(|r| r.message_id != id_of(&malformed)));
    assert!(log
        .iter()
        .any(|r| r.event == "refused" && r.message_id == id_of(&forged)));
    sandbox.shutdown().await.unwrap();
}

/// A batch that is empty, too long or too large is refused as a whole,
/// naming the limit, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_too_long_or_too_large_batch_is_refused_whole() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    assert_refused(
        node.submit_batch(pb::SubmitBatchRequest::default()).await,
        Code::InvalidArgument,
        &["submissions", "0 submissions in one batch; send 1 to 4096"],
    );
    // Three messages each within the 256 KiB body limit, together over the
    // hub's 512 KiB request limit.
    let too_large: Vec<pb::SubmitRequest> = (0..3)
        .map(|i| {
            let mut env = restricted_alert("alpha", &format!("large {i}"));
            env.body = prost::Message::encode_to_vec(&pb::Body {
                title: format!("large {i}"),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: "x".repeat(200 * 1024),
                    ..Default::default()
                })),
            });
            one(env)
        })
        .collect();
    let count_only: Vec<pb::SubmitRequest> =
        (0..4097).map(|_| pb::SubmitRequest::default()).collect();
    assert_refused(
        node.submit_batch(pb::SubmitBatchRequest {
            submissions: count_only,
        })
        .await,
        Code::InvalidArgument,
        &["4097 submissions in one batch; send 1 to 4096"],
    );
    assert_refused(
        node.submit_batch(pb::SubmitBatchRequest {
            submissions: too_large,
        })
        .await,
        Code::ResourceExhausted,
        &["limit"],
    );
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

/// A backlog built while the hub is away reaches the recipient complete and
/// in submission order, whether the node pushes it in batches (the default)
/// or one message per request (`[link] push_batch = 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_pushed_complete_and_in_order_batched_or_not() {
    for link in ["", "[link]\npush_batch = 1"] {
        let mut sandbox = liaison_federation::Sandbox::start(
            SandboxOptions::new(GOVERNANCE)
                .nodes(&["alpha", "bravo"])
                .node_toml(link),
        )
        .await
        .unwrap();
        sandbox.stop_hub().await.unwrap();
        let sent = submit_alerts(&sandbox, (0..120).map(|i| alert(&format!("backlog {i}")))).await;
        sandbox.start_hub().await.unwrap();
        let got = wait_until("bravo's inbox holds the backlog", SETTLE, || async {
            let ids = inbox_ids(&sandbox, "bravo").await;
            (ids.len() >= sent.len()).then_some(ids)
        })
        .await
        .unwrap();
        // The inbox lists newest first.
        let mut oldest_first = got;
        oldest_first.reverse();
        assert_eq!(oldest_first, sent, "order with {link:?}");
        let received: Vec<String> = audit_log(&sandbox)
            .await
            .into_iter()
            .filter(|r| r.event == "received")
            .map(|r| r.message_id)
            .collect();
        assert_eq!(received, sent, "audit order with {link:?}");
        sandbox.shutdown().await.unwrap();
    }
}

/// `WatchInbox` streams each new message once it is stored, to officers of
/// the node's own body only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_inbox_streams_new_messages_to_the_bodys_own_officers() {
    let sandbox = liaison_federation::Sandbox::start(
        SandboxOptions::new(GOVERNANCE).nodes(&["alpha", "bravo"]),
    )
    .await
    .unwrap();
    let mut stranger = sandbox
        .officer_at("bravo", "alpha/officer-alice")
        .await
        .unwrap();
    assert_refused(
        stranger.watch_inbox(pb::WatchInboxRequest {}).await,
        Code::PermissionDenied,
        &["bravo"],
    );
    let mut watcher = sandbox.officer("bravo", "bob").await.unwrap();
    let mut stream = watcher
        .watch_inbox(pb::WatchInboxRequest {})
        .await
        .unwrap()
        .into_inner();
    let sent = submit_alerts(&sandbox, (0..3).map(|i| alert(&format!("watched {i}")))).await;
    let mut seen = Vec::new();
    while seen.len() < sent.len() {
        let next = tokio::time::timeout(SETTLE, stream.next())
            .await
            .expect("a watched message in time")
            .expect("the stream stays open")
            .unwrap();
        assert_eq!(next.origin, "alpha");
        assert!(next.title.starts_with("watched "), "{next:?}");
        assert!(next.received_at_ms > 0);
        seen.push(next.message_id);
    }
    assert_eq!(seen, sent);
    // Each is in the inbox: the watcher was told only once it was stored.
    let mut stored = inbox_ids(&sandbox, "bravo").await;
    stored.reverse();
    assert_eq!(stored, sent);
    sandbox.shutdown().await.unwrap();
}

/// A node configured to batch more bytes than the hub accepts splits the
/// batch the hub refused as too large, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_hub_finds_too_large_is_split_not_lost() {
    let mut sandbox = liaison_federation::Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha", "bravo"])
            .hub_limits("max_request_bytes = 131072")
            .node_toml("[link]\npush_batch_bytes = 4194304"),
    )
    .await
    .unwrap();
    sandbox.stop_hub().await.unwrap();
    let large = (0..5).map(|i| pb::Body {
        title: format!("large {i}"),
        content: Some(pb::body::Content::Alert(pb::Alert {
            text: "x".repeat(60 * 1024),
            ..Default::default()
        })),
    });
    let sent = submit_alerts(&sandbox, large).await;
    sandbox.start_hub().await.unwrap();
    let mut got = wait_until("bravo's inbox holds the five", SETTLE, || async {
        let ids = inbox_ids(&sandbox, "bravo").await;
        (ids.len() >= sent.len()).then_some(ids)
    })
    .await
    .unwrap();
    got.reverse();
    assert_eq!(got, sent);
    for id in &sent {
        let entry = sandbox.settled("alpha", id, SETTLE).await.unwrap();
        assert_eq!(entry.status, "routed", "{entry:?}");
    }
    sandbox.shutdown().await.unwrap();
}

/// A RESTRICTED drugs alert as an officer submits it (the node names it
/// when `id` is empty).
fn officer_alert(title: &str, id: &str) -> pb::OfficerSubmitRequest {
    let mut l = labels(pb::Kind::Alert, pb::Classification::Restricted, &["drugs"]);
    l.message_id = id.to_owned();
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(l),
        body: Some(alert(title)),
    }
}

fn officer_accepted(r: &pb::OfficerSubmitResult) -> &pb::OfficerSubmitResponse {
    match &r.result {
        Some(pb::officer_submit_result::Result::Accepted(a)) => a,
        other => panic!("expected accepted, got {other:?}"),
    }
}

fn officer_refused(r: &pb::OfficerSubmitResult) -> &pb::RefusedSubmission {
    match &r.result {
        Some(pb::officer_submit_result::Result::Refused(f)) => f,
        other => panic!("expected refused, got {other:?}"),
    }
}

/// `Officer.SubmitBatch`: each message is judged as `Submit` would judge
/// it and answered in its own place; the accepted ones are stored once
/// each and reach the recipients; a refused one stores nothing and stops
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_batch_gets_one_result_per_message_in_order() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let earlier_id = uuid::Uuid::new_v4().to_string();
    let earlier = officer_alert("earlier", &earlier_id);
    officer.submit(earlier.clone()).await.unwrap();

    let mut malformed = officer_alert("malformed", "");
    malformed.labels.as_mut().unwrap().crime_areas.clear();
    let named_id = uuid::Uuid::new_v4().to_string();
    let named = officer_alert("named by the officer", &named_id);
    let mut forged = officer_alert("forged origin", "");
    forged.labels.as_mut().unwrap().origin = "bravo".into();
    let batch = vec![
        officer_alert("named by the node", ""),
        malformed,
        earlier.clone(),
        officer_alert("reused id, other content", &earlier_id),
        named.clone(),
        named,
        forged,
        pb::OfficerSubmitRequest::default(),
    ];
    let results = officer
        .submit_batch(pb::OfficerSubmitBatchRequest { messages: batch })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 8, "{results:?}");

    let new = officer_accepted(&results[0]);
    assert!(!new.duplicate && new.status == "queued", "{new:?}");
    assert!(uuid::Uuid::parse_str(&new.message_id).is_ok(), "{new:?}");
    let bad = officer_refused(&results[1]);
    assert_eq!(bad.code, Code::InvalidArgument as i32, "{bad:?}");
    assert!(bad.message.contains("crime_areas"), "{bad:?}");
    let again = officer_accepted(&results[2]);
    assert!(
        again.duplicate && again.message_id == earlier_id,
        "{again:?}"
    );
    let reused = officer_refused(&results[3]);
    assert_eq!(reused.code, Code::AlreadyExists as i32, "{reused:?}");
    assert_eq!(reused.message_id, earlier_id);
    let first = officer_accepted(&results[4]);
    assert!(
        !first.duplicate && first.message_id == named_id,
        "{first:?}"
    );
    // The same message twice in one batch is stored once.
    assert!(officer_accepted(&results[5]).duplicate, "{:?}", results[5]);
    let forged = officer_refused(&results[6]);
    assert_eq!(forged.code, Code::PermissionDenied as i32, "{forged:?}");
    assert!(forged.message.contains("origin"), "{forged:?}");
    let empty = officer_refused(&results[7]);
    assert_eq!(empty.code, Code::InvalidArgument as i32, "{empty:?}");
    assert!(empty.message.contains("labels"), "{empty:?}");

    let mut outbox = outbox_ids(&sandbox, "alpha").await;
    outbox.sort();
    let mut expected = vec![earlier_id.clone(), new.message_id.clone(), named_id.clone()];
    expected.sort();
    assert_eq!(outbox, expected, "each accepted message once, nothing else");
    let sent = [earlier_id, new.message_id.clone(), named_id];
    wait_until("bravo received the batch", SETTLE, || async {
        let inbox = inbox_ids(&sandbox, "bravo").await;
        sent.iter().all(|id| inbox.contains(id)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(inbox_ids(&sandbox, "bravo").await.len(), 3);
    sandbox.shutdown().await.unwrap();
}

/// An officer batch that is empty, too long, too large or sent to another
/// body's node is refused whole, naming what is wrong, and nothing of it is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_batch_that_is_malformed_or_misaddressed_is_refused_whole() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    assert_refused(
        officer
            .submit_batch(pb::OfficerSubmitBatchRequest::default())
            .await,
        Code::InvalidArgument,
        &["messages", "0 messages in one batch; send 1 to 1024"],
    );
    let too_long = (0..1025).map(|_| officer_alert("many", "")).collect();
    assert_refused(
        officer
            .submit_batch(pb::OfficerSubmitBatchRequest { messages: too_long })
            .await,
        Code::InvalidArgument,
        &["1025 messages in one batch; send 1 to 1024"],
    );
    // Three messages each within the 256 KiB body limit, together over the
    // node's 512 KiB request limit.
    let too_large = (0..3)
        .map(|i| {
            let mut m = officer_alert(&format!("large {i}"), "");
            m.body = Some(pb::Body {
                title: format!("large {i}"),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: "x".repeat(200 * 1024),
                    ..Default::default()
                })),
            });
            m
        })
        .collect();
    assert_refused(
        officer
            .submit_batch(pb::OfficerSubmitBatchRequest {
                messages: too_large,
            })
            .await,
        Code::ResourceExhausted,
        &["limit"],
    );
    let mut stranger = sandbox
        .officer_at("alpha", "bravo/officer-bob")
        .await
        .unwrap();
    assert_refused(
        stranger
            .submit_batch(pb::OfficerSubmitBatchRequest {
                messages: vec![officer_alert("not mine to send", "")],
            })
            .await,
        Code::PermissionDenied,
        &["bravo"],
    );
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    sandbox.shutdown().await.unwrap();
}
