//! An originator withdraws a message: recipients not yet streamed it never
//! get its content, the others get a retraction in order, deliveries held
//! under embargo are dropped, and only the originator may retract.

use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};
use tonic::Code;

use crate::common::{
    alert, assert_refused, audit_records, envelope, hub_only, labels, submit_as, SETTLE,
};

async fn next(stream: &mut tonic::Streaming<pb::Delivery>) -> pb::Delivery {
    tokio::time::timeout(SETTLE, stream.message())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("a delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retracted_message_is_withdrawn_before_and_after_delivery() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let first_id = submit_as(
        &mut alpha,
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("first"),
    )
    .await;

    // bravo is streamed the first message, then it is retracted: bravo gets
    // the retraction at the next position.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let d = next(&mut stream).await;
    assert_eq!(d.seq, 1);
    assert!(d.withdrawal.is_none());
    let resp = alpha
        .retract(pb::RetractRequest {
            message_id: first_id.clone(),
            reason: "sent to the wrong distribution".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.duplicate);
    assert_eq!(resp.recipients, ["bravo", "charlie"]);
    let d = next(&mut stream).await;
    assert_eq!(d.seq, 2);
    assert!(d.envelope.is_none());
    let r = d.withdrawal.unwrap();
    assert_eq!(
        (r.message_id.as_str(), r.origin.as_str()),
        (first_id.as_str(), "alpha")
    );
    assert_eq!(r.reason, "sent to the wrong distribution");

    // charlie had not been streamed anything: its first position carries the
    // retraction instead of the content, and then the retraction itself.
    let mut charlie = sandbox.hub_as("charlie/node").await.unwrap();
    let mut stream = charlie
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    for seq in [1, 2] {
        let d = next(&mut stream).await;
        assert_eq!(d.seq, seq);
        assert!(d.envelope.is_none(), "withdrawn content left the hub");
        assert_eq!(d.withdrawal.unwrap().message_id, first_id);
    }

    // Retracting again changes nothing.
    let again = alpha
        .retract(pb::RetractRequest {
            message_id: first_id.clone(),
            reason: "again".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    let retracted = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: first_id.clone(),
            event: "retracted".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(retracted.len(), 2, "one per recipient, once");
    let withdrawn = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: first_id,
            event: "delivered".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(withdrawn
        .iter()
        .any(|r| r.recipient == "charlie" && r.reason.starts_with("withdrawn by its originator")));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_originator_may_retract_and_the_attempt_is_audited() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let id = submit_as(
        &mut alpha,
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("mine"),
    )
    .await;
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    assert_refused(
        bravo
            .retract(pb::RetractRequest {
                message_id: id.clone(),
                reason: "not mine".into(),
            })
            .await,
        Code::PermissionDenied,
        &["did not originate", "only its originator may retract it"],
    );
    let refused = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "refused".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].rule, "identity.not_originator");
    assert_eq!(refused[0].message_id, id);
    assert_refused(
        alpha
            .retract(pb::RetractRequest {
                message_id: "00000000-0000-4000-8000-000000000000".into(),
                reason: "unknown".into(),
            })
            .await,
        Code::NotFound,
        &["no message"],
    );
    assert_refused(
        alpha
            .retract(pb::RetractRequest {
                message_id: id,
                reason: " ".into(),
            })
            .await,
        Code::InvalidArgument,
        &["reason"],
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_retracted_under_embargo_is_never_delivered() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    l.not_before_ms = liaison_types::now_ms() + 60_000;
    let id = submit_as(&mut alpha, "alpha", l, &alert("held")).await;
    alpha
        .retract(pb::RetractRequest {
            message_id: id.clone(),
            reason: "operation cancelled".into(),
        })
        .await
        .unwrap();
    let retracted = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: id,
            event: "retracted".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(retracted.len(), 2);
    assert!(retracted
        .iter()
        .all(|r| r.queue_seq == 0 && r.reason.contains("never delivered")));
    // Nothing was queued for bravo: a message sent now is its first.
    let later_id = submit_as(
        &mut alpha,
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("later"),
    )
    .await;
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let d = next(&mut stream).await;
    assert_eq!(
        (d.seq, d.envelope.unwrap().labels.unwrap().message_id),
        (1, later_id)
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_expires_in_the_queue_is_withdrawn_not_delivered() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    let expires = liaison_types::now_ms() + 300;
    l.expires_at_ms = expires;
    let id = submit_as(&mut alpha, "alpha", l, &alert("short-lived")).await;
    // bravo's node was away until after the expiry.
    liaison_federation::wait_until("the message expires", SETTLE, || async {
        (liaison_types::now_ms() > expires).then_some(())
    })
    .await
    .unwrap();
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let d = next(&mut stream).await;
    assert!(d.envelope.is_none(), "expired content left the hub");
    let w = d.withdrawal.unwrap();
    assert_eq!(w.cause, pb::WithdrawalCause::Expired as i32);
    assert_eq!(w.message_id, id);
    // The records follow the stream (and the schedule's own tick): wait
    // for both rather than race them.
    let expired = liaison_federation::wait_until("both expiry records", SETTLE, || {
        let sandbox = &sandbox;
        let id = id.clone();
        async move {
            let records = audit_records(
                sandbox,
                pb::AuditQuery {
                    message_id: id,
                    event: "expired".into(),
                    ..Default::default()
                },
            )
            .await;
            (records.len() >= 2).then_some(records)
        }
    })
    .await
    .unwrap();
    // One record when it expired (the hub's schedule: recipients' inboxes
    // erase it then), one for bravo's queue position that carried the
    // withdrawal instead of the content.
    let mut seen: Vec<(&str, &str)> = expired
        .iter()
        .map(|r| (r.recipient.as_str(), r.rule.as_str()))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [("", "message.expired"), ("bravo", "message.expired")]
    );
    assert!(expired.iter().any(
        |r| r.recipient.is_empty() && r.reason.contains("leaves the inboxes of bravo, charlie")
    ));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_retracts_and_the_recipients_inbox_erases_the_content() {
    let sandbox = crate::common::sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let id = alice
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(labels(K::Alert, C::Restricted, &["drugs"])),
            body: Some(alert("to be retracted")),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    liaison_federation::wait_until("bravo receives it", SETTLE, || {
        let sandbox = &sandbox;
        let id = id.clone();
        async move {
            crate::common::inbox_ids(sandbox, "bravo")
                .await
                .contains(&id)
                .then_some(())
        }
    })
    .await
    .unwrap();

    let status = alice
        .retract(pb::OfficerRetractRequest {
            message_id: id.clone(),
            reason: "superseded by a corrected alert".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, "retraction_queued");
    let shown = liaison_federation::wait_until("bravo's copy is withdrawn", SETTLE, || {
        let mut bob = bob.clone();
        let id = id.clone();
        async move {
            let m = bob
                .show(pb::ShowRequest { message_id: id })
                .await
                .ok()?
                .into_inner();
            (!m.summary.as_ref()?.withdrawn.is_empty()).then_some(m)
        }
    })
    .await
    .unwrap();
    let summary = shown.summary.unwrap();
    assert_eq!(summary.withdrawn, "retracted");
    assert_eq!(summary.withdrawn_reason, "superseded by a corrected alert");
    assert!(shown.body.is_none(), "the content is erased");
    assert_eq!(
        summary.title, "(withdrawn: retracted)",
        "the title is content too"
    );
    assert_eq!(shown.labels.unwrap().message_id, id, "the labels stay");
    // The listing marks it; it is listed once.
    let listed = bob
        .list_inbox(pb::ListInboxRequest {
            unread_only: false,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.iter().filter(|e| e.message_id == id).count(), 1);
    // The sender's outbox says it is retracted.
    let entry = liaison_federation::wait_until("the outbox says retracted", SETTLE, || {
        let mut alice = alice.clone();
        let id = id.clone();
        async move {
            let list = alice
                .list_outbox(pb::ListOutboxRequest { limit: 10 })
                .await
                .ok()?
                .into_inner();
            list.entries
                .into_iter()
                .find(|e| e.message_id == id && e.status == "retracted")
        }
    })
    .await
    .unwrap();
    assert!(
        entry.last_error.contains("superseded"),
        "{}",
        entry.last_error
    );

    // Another body's officer cannot retract it from its own node.
    assert_refused(
        bob.retract(pb::OfficerRetractRequest {
            message_id: id,
            reason: "not ours".into(),
        })
        .await,
        Code::NotFound,
        &["outbox"],
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_erased_when_its_retention_ends_and_never_delivered_after() {
    let governance = format!(
        "{}\n[retention]\nRESTRICTED = \"1s\"\n",
        crate::common::GOVERNANCE
    );
    let sandbox = liaison_federation::Sandbox::start(
        liaison_federation::SandboxOptions::new(&governance).nodes(&[]),
    )
    .await
    .unwrap();
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let env = envelope(
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("kept one second"),
    );
    let id = env.labels.as_ref().unwrap().message_id.clone();
    alpha
        .submit(pb::SubmitRequest {
            envelope: Some(env),
            ..Default::default()
        })
        .await
        .unwrap();
    let kept = envelope(
        "alpha",
        labels(K::Alert, C::OfficialUse, &["drugs"]),
        &alert("kept"),
    );
    alpha
        .submit(pb::SubmitRequest {
            envelope: Some(kept),
            ..Default::default()
        })
        .await
        .unwrap();
    let erased =
        liaison_federation::wait_until("the retention rule erases the content", SETTLE, || {
            let sandbox = &sandbox;
            async move {
                let records = audit_records(
                    sandbox,
                    pb::AuditQuery {
                        event: "erased".into(),
                        ..Default::default()
                    },
                )
                .await;
                (!records.is_empty()).then_some(records)
            }
        })
        .await
        .unwrap();
    assert_eq!(
        erased.len(),
        1,
        "only the RESTRICTED message has a retention period"
    );
    assert_eq!(
        (erased[0].message_id.as_str(), erased[0].rule.as_str()),
        (id.as_str(), "retention")
    );

    // bravo was away: the erased message comes as a withdrawal, the other intact.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert!(first.envelope.is_none(), "erased content left the hub");
    let w = first.withdrawal.unwrap();
    assert_eq!(w.message_id, id);
    assert!(w.reason.contains("retention"), "{}", w.reason);
    let second = next(&mut stream).await;
    assert!(second.envelope.is_some());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_leaves_the_recipients_inbox() {
    let sandbox = crate::common::sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    l.expires_at_ms = liaison_types::now_ms() + 1_500;
    let id = alice
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(l),
            body: Some(alert("valid for a moment")),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let bob = sandbox.officer("bravo", "bob").await.unwrap();
    // First it arrives with its content...
    let first = liaison_federation::wait_until("bravo receives it", SETTLE, || {
        let mut bob = bob.clone();
        let id = id.clone();
        async move {
            let m = bob
                .show(pb::ShowRequest { message_id: id })
                .await
                .ok()?
                .into_inner();
            Some(m)
        }
    })
    .await
    .unwrap();
    // (unless this machine was so slow that it had already expired)
    if first.summary.as_ref().unwrap().withdrawn.is_empty() {
        assert!(first.body.is_some());
    }
    // ...then, once expired, its content is erased and a tombstone stays.
    let gone =
        liaison_federation::wait_until("the expired message leaves the inbox", SETTLE, || {
            let mut bob = bob.clone();
            let id = id.clone();
            async move {
                let m = bob
                    .show(pb::ShowRequest { message_id: id })
                    .await
                    .ok()?
                    .into_inner();
                (m.summary.as_ref()?.withdrawn == "expired").then_some(m)
            }
        })
        .await
        .unwrap();
    assert!(gone.body.is_none());
    assert_eq!(gone.summary.as_ref().unwrap().title, "(withdrawn: expired)");
    assert!(liaison_types::now_ms() >= gone.labels.unwrap().expires_at_ms);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipients_node_erases_content_when_the_retention_period_ends() {
    let governance = format!(
        "{}\n[retention]\nRESTRICTED = \"2s\"\n",
        crate::common::GOVERNANCE
    );
    let sandbox = liaison_federation::Sandbox::start(
        liaison_federation::SandboxOptions::new(&governance).nodes(&["alpha", "bravo"]),
    )
    .await
    .unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let id = alice
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(labels(K::Alert, C::Restricted, &["drugs"])),
            body: Some(alert("kept two seconds")),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let bob = sandbox.officer("bravo", "bob").await.unwrap();
    let gone = liaison_federation::wait_until("bravo's node erases the content", SETTLE, || {
        let mut bob = bob.clone();
        let id = id.clone();
        async move {
            let m = bob
                .show(pb::ShowRequest { message_id: id })
                .await
                .ok()?
                .into_inner();
            (m.summary.as_ref()?.withdrawn == "retention").then_some(m)
        }
    })
    .await
    .unwrap();
    assert!(gone.body.is_none());
    let summary = gone.summary.unwrap();
    assert_eq!(summary.title, "(withdrawn: retention)");
    assert!(summary.withdrawn_reason.contains("retention period"));
    // The node's own log records the erasure.
    let mut audit = sandbox
        .node_audit("bravo", "bravo/auditor-audit")
        .await
        .unwrap();
    let log = audit
        .list_log(pb::NodeLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let erased = log
        .records
        .iter()
        .find(|r| r.event == "erased" && r.message_id == id)
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(erased.origin, "alpha");
    assert!(erased.reason.contains("retention period"), "{erased:?}");
    sandbox.shutdown().await.unwrap();
}
