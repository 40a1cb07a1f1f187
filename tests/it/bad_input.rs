//! Bad input on every RPC of the hub and the node, end to end: each is
//! answered with a precise gRPC status whose message names what was wrong,
//! never a panic, and nothing is half-written (no audit record, no outbox
//! entry, no queue entry, and the message id stays free).

use futures::StreamExt;
use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_types::Role;
use pb::{Classification as C, Kind as K};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{
    alert, assert_refused, assessment, audit_log, envelope, hub_only, inbox_ids, labels,
    outbox_ids, sandbox, GOVERNANCE, SETTLE,
};

/// Largest body the hub accepts (`liaison_types::envelope::MAX_BODY_BYTES`).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A valid alert from alpha: bravo and charlie get it, obs does not (kind).
fn alpha_alert(title: &str) -> pb::Envelope {
    envelope(
        "alpha",
        labels(K::Alert, C::OfficialUse, &["drugs"]),
        &alert(title),
    )
}

/// A valid operational plan body.
fn plan(start: i64, end: i64, lead: &str, area: &str) -> pb::Body {
    pb::Body {
        title: "joint operation".into(),
        content: Some(pb::body::Content::OperationalPlan(pb::OperationalPlan {
            summary: "coordinated action".into(),
            window_start_ms: start,
            window_end_ms: end,
            lead_body: lead.into(),
            regions: vec!["west-africa".into()],
            crime_areas: vec![area.into()],
            target_ids: vec![],
        })),
    }
}

fn submit(env: pb::Envelope) -> pb::SubmitRequest {
    pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(env),
        approved_by: String::new(),
        traceparent: String::new(),
    }
}

type Mutation = Box<dyn Fn(&mut pb::Envelope)>;

fn on_labels(f: impl Fn(&mut pb::Labels) + 'static) -> Mutation {
    Box::new(move |e: &mut pb::Envelope| f(e.labels.as_mut().unwrap()))
}

fn with_body(body: pb::Body) -> Mutation {
    Box::new(move |e: &mut pb::Envelope| e.body = body.encode_to_vec())
}

/// Every way to get an envelope wrong, with the words the refusal must use.
fn malformed_envelopes() -> Vec<(&'static str, Mutation, Vec<&'static str>)> {
    let now = liaison_types::now_ms();
    vec![
        (
            "missing labels",
            Box::new(|e: &mut pb::Envelope| e.labels = None),
            vec!["labels", "missing"],
        ),
        (
            "message id not a uuid",
            on_labels(|l| l.message_id = "not-a-uuid".into()),
            vec!["labels.message_id", "not a UUID"],
        ),
        (
            "empty origin",
            on_labels(|l| l.origin.clear()),
            vec!["labels.origin", "invalid body id"],
        ),
        (
            "kind unspecified",
            on_labels(|l| l.kind = 0),
            vec!["labels.kind", "missing or unknown"],
        ),
        (
            "kind 99",
            on_labels(|l| l.kind = 99),
            vec!["labels.kind", "missing or unknown"],
        ),
        (
            "classification unspecified",
            on_labels(|l| l.classification = 0),
            vec!["labels.classification", "missing or unknown"],
        ),
        (
            "classification 42",
            on_labels(|l| l.classification = 42),
            vec!["labels.classification", "missing or unknown"],
        ),
        (
            "priority unspecified",
            on_labels(|l| l.priority = 0),
            vec!["labels.priority"],
        ),
        (
            "no crime area",
            on_labels(|l| l.crime_areas.clear()),
            vec!["labels.crime_areas", "empty"],
        ),
        (
            "unknown crime area",
            on_labels(|l| l.crime_areas = vec!["jaywalking".into()]),
            vec!["labels.crime_areas[0]", "unknown crime area 'jaywalking'"],
        ),
        (
            "too many crime areas",
            on_labels(|l| l.crime_areas = vec!["drugs".into(); 65]),
            vec!["labels.crime_areas", "over the limit of 64"],
        ),
        (
            "unknown country",
            on_labels(|l| l.countries = vec!["NG".into(), "XX".into()]),
            vec!["labels.countries[1]", "'XX' is not an ISO 3166-1"],
        ),
        (
            "lowercase country",
            on_labels(|l| l.countries = vec!["ng".into()]),
            vec!["labels.countries[0]"],
        ),
        (
            "bad region",
            on_labels(|l| l.regions = vec!["West Africa".into()]),
            vec!["labels.regions[0]", "not a region code"],
        ),
        (
            "releasable to an unknown body",
            on_labels(|l| l.releasable_to = vec!["zulu".into()]),
            vec![
                "labels.releasable_to[0]",
                "'zulu' is not a body of federation liaison.test",
            ],
        ),
        (
            "excluding an unknown body",
            on_labels(|l| l.excluded = vec!["bravo".into(), "zulu".into()]),
            vec!["labels.excluded[1]", "'zulu'"],
        ),
        (
            "releasable and excluded at once",
            on_labels(|l| {
                l.releasable_to = vec!["bravo".into()];
                l.excluded = vec!["bravo".into()];
            }),
            vec!["labels.excluded", "both releasable and excluded"],
        ),
        (
            "another body's marking",
            on_labels(|l| {
                l.classification = C::Restricted as i32;
                l.marking = "BRAVO LIMITED".into();
            }),
            vec!["labels.marking", "BRAVO LIMITED"],
        ),
        (
            "own marking for another level",
            on_labels(|l| l.marking = "ALPHA RESTRICTED".into()),
            vec!["labels.marking", "'ALPHA RESTRICTED'"],
        ),
        (
            "marking with control characters",
            on_labels(|l| l.marking = "ALPHA\u{7}RESTRICTED".into()),
            vec!["labels.marking", "U+0007", "one line"],
        ),
        (
            "no creation time",
            on_labels(|l| l.created_at_ms = 0),
            vec!["labels.created_at_ms", "missing"],
        ),
        (
            "expiry before creation",
            on_labels(move |l| {
                l.created_at_ms = now;
                l.expires_at_ms = now - 1;
            }),
            vec!["labels.expires_at_ms", "not after created_at_ms"],
        ),
        (
            "body bytes that do not decode",
            Box::new(|e: &mut pb::Envelope| e.body = vec![0xff; 10]),
            vec!["body", "not a valid encoded Body"],
        ),
        (
            "empty body bytes",
            Box::new(|e: &mut pb::Envelope| e.body.clear()),
            vec!["body.title", "empty"],
        ),
        (
            "body without content",
            with_body(pb::Body {
                title: "no content".into(),
                content: None,
            }),
            vec!["body.content", "missing"],
        ),
        (
            "body kind not the labels' kind",
            with_body(assessment("an assessment labelled as an alert")),
            vec![
                "body.content",
                "is a threat_assessment body but labels.kind is alert",
            ],
        ),
        (
            "title with a line break",
            with_body(alert(
                "routine\n00000000-0000-4000-8000-000000000000  bravo  alert",
            )),
            vec!["body.title", "U+000A (line feed)", "one line"],
        ),
        (
            "title with a carriage return",
            with_body(alert("routine\rforged")),
            vec!["body.title", "U+000D"],
        ),
        (
            "title with a bidirectional override",
            with_body(alert("abc\u{202e}fed")),
            vec!["body.title", "bidirectional"],
        ),
        (
            "indicator with a line break",
            with_body(pb::Body {
                title: "indicators".into(),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: "multi-line text\nis fine".into(),
                    indicators: vec!["ok".into(), "bad\nline".into()],
                    ..Default::default()
                })),
            }),
            vec!["body.alert.indicators[1]", "one line"],
        ),
        (
            "title too long",
            with_body(alert(&"t".repeat(201))),
            vec!["body.title", "over the limit of 200"],
        ),
        (
            "alert without text",
            with_body(pb::Body {
                title: "silent alert".into(),
                content: Some(pb::body::Content::Alert(pb::Alert::default())),
            }),
            vec!["body.alert.text", "empty"],
        ),
        (
            "plan window ending before it starts",
            Box::new(move |e: &mut pb::Envelope| {
                e.labels.as_mut().unwrap().kind = K::OperationalPlan as i32;
                e.body = plan(now + 10_000, now, "alpha", "drugs").encode_to_vec();
            }),
            vec![
                "body.operational_plan.window_end_ms",
                "the window must end after it starts",
            ],
        ),
        (
            "plan crime area missing from the labels",
            Box::new(move |e: &mut pb::Envelope| {
                e.labels.as_mut().unwrap().kind = K::OperationalPlan as i32;
                e.body = plan(now, now + 10_000, "alpha", "terrorism").encode_to_vec();
            }),
            vec![
                "body.operational_plan.crime_areas[0]",
                "not in labels.crime_areas",
            ],
        ),
        (
            "plan lead body not a body id",
            Box::new(move |e: &mut pb::Envelope| {
                e.labels.as_mut().unwrap().kind = K::OperationalPlan as i32;
                e.body = plan(now, now + 10_000, "Alpha Police", "drugs").encode_to_vec();
            }),
            vec!["body.operational_plan.lead_body", "invalid body id"],
        ),
        (
            "body over 256 KiB",
            Box::new(|e: &mut pb::Envelope| e.body = vec![0; MAX_BODY_BYTES + 1]),
            vec!["body", "262145 bytes is over the limit of 262144 bytes"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_submit_refuses_each_malformed_envelope_naming_the_field() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let valid = alpha_alert("the valid one");
    let id = valid.labels.as_ref().unwrap().message_id.clone();

    assert_refused(
        node.submit(pb::SubmitRequest::default()).await,
        Code::InvalidArgument,
        &["envelope", "missing"],
    );
    for (case, mutate, needles) in malformed_envelopes() {
        let mut env = valid.clone();
        mutate(&mut env);
        let status = node.submit(submit(env)).await;
        assert!(status.is_err(), "{case}: accepted");
        let status = status.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().starts_with("invalid message: "),
            "{case}: {status:?}"
        );
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{case}: message lacks {needle:?}: {:?}",
                status.message()
            );
        }
    }

    // Nothing was half-written: no audit record at all, and the message id
    // every bad submission carried is still free.
    assert!(audit_log(&sandbox).await.is_empty());
    let accepted = node.submit(submit(valid)).await.unwrap().into_inner();
    assert_eq!(accepted.message_id, id);
    assert!(!accepted.duplicate, "{accepted:?}");
    let log = audit_log(&sandbox).await;
    assert_eq!(log.iter().filter(|r| r.event == "received").count(), 1);
    assert!(log.iter().all(|r| r.message_id == id), "{log:#?}");
    sandbox.shutdown().await.unwrap();
}

/// The policy's rule that a plan's lead body "must be a federation body"
/// (messages.proto, `OperationalPlan.lead_body`) is not enforced: only the
/// syntax of the id is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn hub_submit_refuses_a_plan_led_by_an_unknown_body() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let now = liaison_types::now_ms();
    let env = envelope(
        "alpha",
        labels(K::OperationalPlan, C::OfficialUse, &["drugs"]),
        &plan(now, now + 60_000, "zulu", "drugs"),
    );
    assert_refused(
        node.submit(submit(env)).await,
        Code::InvalidArgument,
        &["body.operational_plan.lead_body", "zulu"],
    );
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_hub_decoding_limit_is_refused_and_the_hub_carries_on() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let mut env = alpha_alert("huge");
    env.body = vec![0; 600 * 1024];
    let status = node.submit(submit(env)).await.unwrap_err();
    // tonic's decoder refuses the frame before the service runs; the
    // answer says the request is too big and names the limit.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("over this api's limit of 524288 bytes"),
        "{status:?}"
    );
    assert!(audit_log(&sandbox).await.is_empty());

    // The same connection and the hub still work.
    let ok = node
        .submit(submit(alpha_alert("small")))
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.duplicate);
    assert_eq!(audit_log(&sandbox).await.len(), 4);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_mib_request_is_resource_exhausted_at_hub_and_node_naming_the_limit() {
    let sandbox = sandbox().await;
    let five_mib = "x".repeat(5 * 1024 * 1024);

    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let mut env = alpha_alert("huge");
    env.body = five_mib.clone().into_bytes();
    assert_refused(
        node.submit(submit(env)).await,
        Code::ResourceExhausted,
        &[
            "over this api's limit of 524288 bytes",
            "send a smaller request",
        ],
    );

    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut request = officer_alert("huge");
    if let Some(pb::body::Content::Alert(a)) =
        request.body.as_mut().and_then(|b| b.content.as_mut())
    {
        a.text = five_mib;
    }
    assert_refused(
        officer.submit(request).await,
        Code::ResourceExhausted,
        &["over this api's limit of 524288 bytes"],
    );
    // Nothing was stored or sent, and both still answer.
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    assert!(audit_log(&sandbox).await.is_empty());
    officer.submit(officer_alert("small")).await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_record_is_internal_naming_its_key_not_unavailable() {
    let mut sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let env = alpha_alert("to be corrupted");
    let id = env.labels.as_ref().unwrap().message_id.clone();
    node.submit(submit(env.clone())).await.unwrap();
    sandbox.stop_hub().await.unwrap();
    // Damage the stored outcome of the message behind the hub's back.
    crate::common::damage_hub_record(&sandbox, &format!("m/{id}/out"), |_| b"{not json".to_vec())
        .await;
    sandbox.start_hub().await.unwrap();
    sandbox.wait_ready().await.unwrap();
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    // A retry of the message reads the damaged record: INTERNAL (final, an
    // operator must look), naming the key, never UNAVAILABLE (which a node
    // would retry forever).
    let status = node.submit(submit(env)).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("corrupt record at key m/{id}/out")),
        "{status:?}"
    );
    assert!(!liaison_proto::status::is_retryable(&status));
    // Other messages are still routed.
    node.submit(submit(alpha_alert("unharmed"))).await.unwrap();
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_a_message_id_is_idempotent_for_the_same_content_only() {
    let sandbox = sandbox().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let original = alpha_alert("the original");
    let id = original.labels.as_ref().unwrap().message_id.clone();
    let first = node
        .submit(submit(original.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);

    // The same content: the original outcome, nothing routed twice.
    let again = node
        .submit(submit(original.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.decisions, first.decisions);
    assert_eq!(again.policy_version, first.policy_version);
    assert_eq!(again.accepted_at_ms, first.accepted_at_ms);

    // Different content under the same id: refused, whatever differs.
    let mut other_title = original.clone();
    other_title.body = alert("a different title").encode_to_vec();
    let mut other_labels = original.clone();
    other_labels.labels.as_mut().unwrap().priority = pb::Priority::Flash as i32;
    for changed in [other_title, other_labels] {
        assert_refused(
            node.submit(submit(changed)).await,
            Code::AlreadyExists,
            &[&id, "already submitted with different content"],
        );
    }
    // Another body reusing the id for its own message: refused too.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut theirs = envelope(
        "bravo",
        labels(K::Alert, C::OfficialUse, &["drugs"]),
        &alert("the original"),
    );
    theirs.labels.as_mut().unwrap().message_id = id.clone();
    assert_refused(
        bravo.submit(submit(theirs)).await,
        Code::AlreadyExists,
        &[&id],
    );

    // One receipt and one routing record per candidate, no more.
    let log = audit_log(&sandbox).await;
    let count = |event: &str| {
        log.iter()
            .filter(|r| r.message_id == id && r.event == event)
            .count()
    };
    assert_eq!(count("received"), 1, "{log:#?}");
    assert_eq!(count("routed"), 3, "{log:#?}");

    // bravo's inbox holds it exactly once, with the original content.
    wait_until("bravo's node stores the alert", SETTLE, || {
        let sandbox = &sandbox;
        let id = id.clone();
        async move {
            inbox_ids(sandbox, "bravo")
                .await
                .contains(&id)
                .then_some(())
        }
    })
    .await
    .unwrap();
    let held = inbox_ids(&sandbox, "bravo").await;
    assert_eq!(held.iter().filter(|m| **m == id).count(), 1, "{held:?}");
    let mut officer = sandbox.officer("bravo", "alice").await.unwrap();
    let shown = officer
        .show(pb::ShowRequest {
            message_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.body.unwrap().title, "the original");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_beyond_the_queue_is_out_of_range_and_zero_is_a_no_op() {
    let sandbox = hub_only().await;
    // One message for alpha: its queue ends at 1.
    let mut charlie = sandbox.hub_as("charlie/node").await.unwrap();
    let id = charlie
        .submit(submit(envelope(
            "charlie",
            labels(K::Alert, C::OfficialUse, &["drugs"]),
            &alert("for alpha"),
        )))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let before = audit_log(&sandbox).await;

    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    for seq in [2, u64::MAX] {
        assert_refused(
            alpha
                .acknowledge(pb::AcknowledgeRequest {
                    seq,
                    ..Default::default()
                })
                .await,
            Code::OutOfRange,
            &[
                &format!("cannot acknowledge position {seq}"),
                "the queue ends at 1",
            ],
        );
    }
    let zero = alpha
        .acknowledge(pb::AcknowledgeRequest {
            seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(zero.acked_seq, 0);
    assert_eq!(audit_log(&sandbox).await, before);

    // A subscription starting beyond the end is accepted (the hub starts
    // after the later of after_seq and the acknowledged position) and loses
    // nothing: a later subscription from the start still gets the message.
    let beyond = alpha
        .subscribe(pb::SubscribeRequest {
            after_seq: u64::MAX,
        })
        .await
        .unwrap();
    drop(beyond);
    let mut stream = alpha
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let delivery = stream.next().await.unwrap().unwrap();
    drop(stream);
    assert_eq!(delivery.seq, 1);
    assert_eq!(delivery.envelope.unwrap().labels.unwrap().message_id, id);

    // Acknowledging it, then 0 again, does not move the position back.
    let acked = alpha
        .acknowledge(pb::AcknowledgeRequest {
            seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acked_seq, 1);
    let zero = alpha
        .acknowledge(pb::AcknowledgeRequest {
            seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(zero.acked_seq, 1);
    let acks: Vec<_> = audit_log(&sandbox)
        .await
        .into_iter()
        .filter(|r| r.event == "acknowledged")
        .collect();
    assert_eq!(acks.len(), 1, "{acks:#?}");
    let acked: Vec<_> = liaison_types::audit::messages(&acks[0]).collect();
    assert_eq!(acked, [(id.as_str(), 1)]);
    assert_eq!(acks[0].recipient, "alpha");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_explain_refuses_invalid_input_and_another_origin() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    assert_refused(
        node.explain(pb::ExplainRequest { envelope: None }).await,
        Code::InvalidArgument,
        &["envelope", "missing"],
    );
    let mut bad_class = alpha_alert("explain me");
    bad_class.labels.as_mut().unwrap().classification = 42;
    assert_refused(
        node.explain(pb::ExplainRequest {
            envelope: Some(bad_class),
        })
        .await,
        Code::InvalidArgument,
        &["labels.classification"],
    );
    let mut unknown = alpha_alert("explain me");
    unknown.labels.as_mut().unwrap().releasable_to = vec!["zulu".into()];
    assert_refused(
        node.explain(pb::ExplainRequest {
            envelope: Some(unknown),
        })
        .await,
        Code::InvalidArgument,
        &["labels.releasable_to[0]", "'zulu'"],
    );
    let mut bad_body = alpha_alert("explain me");
    bad_body.body = vec![0xff; 3];
    assert_refused(
        node.explain(pb::ExplainRequest {
            envelope: Some(bad_body),
        })
        .await,
        Code::InvalidArgument,
        &["body", "not a valid encoded Body"],
    );
    assert_refused(
        node.explain(pb::ExplainRequest {
            envelope: Some(envelope(
                "bravo",
                labels(K::Alert, C::OfficialUse, &["drugs"]),
                &alert("bravo's"),
            )),
        })
        .await,
        Code::PermissionDenied,
        &["this node is alpha", "names bravo as origin"],
    );

    // A valid one is explained, and explaining stores nothing.
    let explained = node
        .explain(pb::ExplainRequest {
            envelope: Some(alpha_alert("explain me")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.decisions.len(), 3);
    // Explaining stores nothing; only the attempt to speak for bravo is on
    // record, as every origin mismatch is.
    let log = audit_log(&sandbox).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].event, "refused");
    assert_eq!(log[0].rule, "identity.origin_mismatch");
    assert_eq!(log[0].origin, "bravo");
    sandbox.shutdown().await.unwrap();
}

/// Explain checks the origin before validating, and takes a missing origin
/// (or missing labels) for a claim of another body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_explain_refuses_missing_labels_as_invalid() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let mut no_labels = alpha_alert("explain me");
    no_labels.labels = None;
    assert_refused(
        node.explain(pb::ExplainRequest {
            envelope: Some(no_labels),
        })
        .await,
        Code::InvalidArgument,
        &["labels", "missing"],
    );
    let mut no_origin = alpha_alert("explain me");
    no_origin.labels.as_mut().unwrap().origin.clear();
    assert_refused(
        node.explain(pb::ExplainRequest {
            envelope: Some(no_origin),
        })
        .await,
        Code::InvalidArgument,
        &["labels.origin"],
    );
    sandbox.shutdown().await.unwrap();
}

async fn list(sandbox: &Sandbox, q: pb::AuditQuery) -> Result<Vec<pb::AuditRecord>, tonic::Status> {
    let mut auditor = sandbox.oversight().await.unwrap();
    let mut stream = auditor.list(q).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.push(r?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_with_odd_filters_answers_empty_not_an_error() {
    let sandbox = hub_only().await;
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    node.submit(submit(alpha_alert("something to list")))
        .await
        .unwrap();
    let all = list(&sandbox, pb::AuditQuery::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    let last = all.last().unwrap().seq;

    let q = pb::AuditQuery::default;
    let empty = [
        (
            "unknown event",
            pb::AuditQuery {
                event: "exploded".into(),
                ..q()
            },
        ),
        (
            "unknown decision",
            pb::AuditQuery {
                decision: "maybe".into(),
                ..q()
            },
        ),
        (
            "unknown rule",
            pb::AuditQuery {
                rule: "no.such.rule".into(),
                ..q()
            },
        ),
        (
            "unknown body",
            pb::AuditQuery {
                body: "zulu".into(),
                ..q()
            },
        ),
        (
            "garbage message id",
            pb::AuditQuery {
                message_id: "\u{0}../..".into(),
                ..q()
            },
        ),
        (
            "since in the future",
            pb::AuditQuery {
                since_ms: i64::MAX,
                ..q()
            },
        ),
        (
            "until before everything",
            pb::AuditQuery { until_ms: 1, ..q() },
        ),
        (
            "negative until",
            pb::AuditQuery {
                until_ms: -5,
                ..q()
            },
        ),
        (
            "after the last record",
            pb::AuditQuery {
                after_seq: last,
                ..q()
            },
        ),
        (
            "after u64::MAX",
            pb::AuditQuery {
                after_seq: u64::MAX,
                ..q()
            },
        ),
        (
            "since after until",
            pb::AuditQuery {
                since_ms: 2_000_000_000_000,
                until_ms: 1_000_000_000_000,
                ..q()
            },
        ),
    ];
    for (case, query) in empty {
        let got = list(&sandbox, query).await;
        assert!(matches!(&got, Ok(v) if v.is_empty()), "{case}: {got:?}");
    }
    // Filters that match everything, or cap it.
    let everything = list(
        &sandbox,
        pb::AuditQuery {
            since_ms: i64::MIN,
            ..q()
        },
    )
    .await
    .unwrap();
    assert_eq!(everything, all);
    let one = list(&sandbox, pb::AuditQuery { limit: 1, ..q() })
        .await
        .unwrap();
    assert_eq!(one, all[..1]);
    let huge = list(
        &sandbox,
        pb::AuditQuery {
            limit: u32::MAX,
            ..q()
        },
    )
    .await
    .unwrap();
    assert_eq!(huge, all);

    // A query over the Audit API's 64 KiB decoding limit is refused, and the
    // hub answers the next one.
    let too_big = list(
        &sandbox,
        pb::AuditQuery {
            message_id: "x".repeat(70 * 1024),
            ..q()
        },
    )
    .await;
    assert_refused(
        too_big,
        Code::ResourceExhausted,
        &["71684 bytes", "limit of 65536 bytes"],
    );
    assert_eq!(list(&sandbox, q()).await.unwrap(), all);
    sandbox.shutdown().await.unwrap();
}

/// A valid officer request for an alert.
fn officer_alert(title: &str) -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(labels(K::Alert, C::OfficialUse, &["drugs"])),
        body: Some(alert(title)),
    }
}

fn malformed_officer_requests() -> Vec<(&'static str, pb::OfficerSubmitRequest, Vec<&'static str>)>
{
    let now = liaison_types::now_ms();
    let with_labels = |f: &dyn Fn(&mut pb::Labels)| {
        let mut r = officer_alert("officer probe");
        f(r.labels.as_mut().unwrap());
        r
    };
    let with_body = |b: pb::Body| pb::OfficerSubmitRequest {
        body: Some(b),
        ..officer_alert("officer probe")
    };
    let mut plan_labels = labels(K::OperationalPlan, C::OfficialUse, &["drugs"]);
    plan_labels.regions = vec!["west-africa".into()];
    vec![
        (
            "missing labels",
            pb::OfficerSubmitRequest {
                labels: None,
                ..officer_alert("x")
            },
            vec!["labels", "missing"],
        ),
        (
            "missing body",
            pb::OfficerSubmitRequest {
                body: None,
                ..officer_alert("x")
            },
            vec!["body", "missing"],
        ),
        (
            "empty title",
            with_body(alert("")),
            vec!["body.title", "empty"],
        ),
        (
            "blank title",
            with_body(alert("   ")),
            vec!["body.title", "empty"],
        ),
        (
            "classification unspecified",
            with_labels(&|l| l.classification = 0),
            vec!["labels.classification", "missing or unknown"],
        ),
        (
            "classification 42",
            with_labels(&|l| l.classification = 42),
            vec!["labels.classification"],
        ),
        (
            "kind 99",
            with_labels(&|l| l.kind = 99),
            vec!["labels.kind"],
        ),
        (
            "priority unspecified",
            with_labels(&|l| l.priority = 0),
            vec!["labels.priority"],
        ),
        (
            "message id not a uuid",
            with_labels(&|l| l.message_id = "42".into()),
            vec!["labels.message_id", "not a UUID"],
        ),
        (
            "unknown crime area",
            with_labels(&|l| l.crime_areas = vec!["jaywalking".into()]),
            vec!["labels.crime_areas[0]"],
        ),
        (
            "no crime area",
            with_labels(&|l| l.crime_areas.clear()),
            vec!["labels.crime_areas", "empty"],
        ),
        (
            "unknown country",
            with_labels(&|l| l.countries = vec!["XX".into()]),
            vec!["labels.countries[0]"],
        ),
        (
            "bad body id in releasable_to",
            with_labels(&|l| l.releasable_to = vec!["Bravo".into()]),
            vec!["labels.releasable_to[0]", "invalid body id"],
        ),
        (
            "expiry before creation",
            with_labels(&|l| {
                l.created_at_ms = now;
                l.expires_at_ms = now - 1;
            }),
            vec!["labels.expires_at_ms"],
        ),
        (
            "body kind not the labels' kind",
            with_body(assessment("assessment labelled as alert")),
            vec!["body.content", "labels.kind is alert"],
        ),
        (
            "alert text over 64 KiB",
            with_body(pb::Body {
                title: "long alert".into(),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: "a".repeat(64 * 1024 + 1),
                    ..Default::default()
                })),
            }),
            vec![
                "body.alert.text",
                "65537 bytes is over the limit of 65536 bytes",
            ],
        ),
        (
            "plan window ending before it starts",
            pb::OfficerSubmitRequest {
                clear_targets: false,
                targets: Vec::new(),
                labels: Some(plan_labels),
                body: Some(plan(now + 1_000, now, "alpha", "drugs")),
            },
            vec!["body.operational_plan.window_end_ms"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_submit_refuses_each_malformed_message_and_queues_nothing() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    for (case, request, needles) in malformed_officer_requests() {
        let status = officer.submit(request.clone()).await;
        assert!(status.is_err(), "{case}: accepted");
        let status = status.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        for needle in &needles {
            assert!(
                status.message().contains(needle),
                "{case}: message lacks {needle:?}: {:?}",
                status.message()
            );
        }
        // Explain validates the same way, before asking the hub.
        let explained = officer
            .explain(pb::OfficerExplainRequest {
                labels: request.labels,
                body: request.body,
            })
            .await;
        let status = explained.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(status.message().contains(needles[0]), "{case}: {status:?}");
    }
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

/// officer.proto: "`origin` and `created_at_ms` are set by the node". The
/// node overrides the origin (or refuses another one) but keeps any creation
/// time the officer gives, so an officer can back- or forward-date a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn officer_submit_does_not_let_the_officer_choose_the_creation_time() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let before = liaison_types::now_ms();
    let mut request = officer_alert("backdated");
    request.labels.as_mut().unwrap().created_at_ms = 1_000;
    match officer.submit(request).await {
        // Refusing the field is as good as overriding it.
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains("labels.created_at_ms"),
                "{status:?}"
            );
            assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
        }
        Ok(resp) => {
            let id = resp.into_inner().message_id;
            wait_until("bravo's node stores the alert", SETTLE, || {
                let sandbox = &sandbox;
                let id = id.clone();
                async move {
                    inbox_ids(sandbox, "bravo")
                        .await
                        .contains(&id)
                        .then_some(())
                }
            })
            .await
            .unwrap();
            let mut bravo = sandbox.officer("bravo", "alice").await.unwrap();
            let shown = bravo
                .show(pb::ShowRequest { message_id: id })
                .await
                .unwrap()
                .into_inner();
            let created = shown.labels.unwrap().created_at_ms;
            assert!(
                created >= before,
                "the routed message claims to be created at {created}, before it was submitted ({before})"
            );
        }
    }
    sandbox.shutdown().await.unwrap();
}

/// Officer requests the hub would refuse under the test governance, by
/// what is wrong with them.
fn labels_of(r: &mut pb::OfficerSubmitRequest) -> &mut pb::Labels {
    r.labels.as_mut().unwrap()
}

fn refused_by_the_governance() -> Vec<(&'static str, pb::OfficerSubmitRequest, &'static str)> {
    let now = liaison_types::now_ms();
    let with = |f: &dyn Fn(&mut pb::OfficerSubmitRequest)| {
        let mut r = officer_alert("refused by the governance");
        f(&mut r);
        r
    };
    vec![
        (
            "an unknown body in releasable_to",
            with(&|r| labels_of(r).releasable_to = vec!["zulu".into()]),
            "labels.releasable_to[0]",
        ),
        (
            "an unknown body in excluded",
            with(&|r| labels_of(r).excluded = vec!["bravo".into(), "zulu".into()]),
            "labels.excluded[1]",
        ),
        (
            "another body's marking",
            with(&|r| {
                labels_of(r).classification = C::Restricted as i32;
                labels_of(r).marking = "BRAVO LIMITED".into();
            }),
            "labels.marking",
        ),
        (
            "a marking of another level",
            with(&|r| labels_of(r).marking = "ALPHA RESTRICTED".into()),
            "labels.marking",
        ),
        (
            "an unknown working group",
            with(&|r| labels_of(r).working_groups = vec!["nowhere".into()]),
            "labels.working_groups",
        ),
        (
            "an unknown lead body",
            with(&|r| {
                labels_of(r).kind = K::OperationalPlan as i32;
                r.body = Some(plan(now, now + 86_400_000, "zulu", "drugs"));
            }),
            "body.operational_plan.lead_body",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_what_the_hub_would_refuse_before_it_says_queued_in_the_hubs_words() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut hub = sandbox.hub_as("alpha/node").await.unwrap();
    // The node fetches the governance in force from the hub when it starts.
    let (_, first, _) = refused_by_the_governance().remove(0);
    wait_until("the node holds the hub's governance", SETTLE, || {
        let mut officer = officer.clone();
        let first = first.clone();
        async move {
            let r = officer.submit(first).await;
            matches!(r, Err(s) if s.code() == Code::InvalidArgument).then_some(())
        }
    })
    .await
    .unwrap();
    for (case, request, field) in refused_by_the_governance() {
        // What the hub says of the same message...
        let mut env_labels = request.labels.clone().unwrap();
        env_labels.origin = "alpha".into();
        env_labels.message_id = uuid::Uuid::new_v4().to_string();
        env_labels.created_at_ms = liaison_types::now_ms();
        let hub_says = hub
            .explain(pb::ExplainRequest {
                envelope: Some(pb::Envelope {
                    labels: Some(env_labels),
                    body: request.body.clone().unwrap().encode_to_vec(),
                }),
            })
            .await
            .expect_err(case);
        assert_eq!(
            hub_says.code(),
            Code::InvalidArgument,
            "{case}: {hub_says:?}"
        );
        // ...the node says at once, to submit and explain alike.
        for (rpc, node_says) in [
            ("submit", officer.submit(request.clone()).await.map(|_| ())),
            (
                "explain",
                officer
                    .explain(pb::OfficerExplainRequest {
                        labels: request.labels.clone(),
                        body: request.body.clone(),
                    })
                    .await
                    .map(|_| ()),
            ),
        ] {
            let node_says = node_says.expect_err(case);
            assert_eq!(
                node_says.code(),
                Code::InvalidArgument,
                "{case} {rpc}: {node_says:?}"
            );
            assert!(
                node_says.message().contains(field),
                "{case} {rpc}: {node_says:?}"
            );
            assert_eq!(
                node_says.message(),
                hub_says.message(),
                "{case} {rpc}: the node and the hub say the same"
            );
        }
    }
    // Nothing was queued or sent.
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_explain_is_answered_under_the_hubs_governance_version() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut hub = sandbox.hub_as("alpha/node").await.unwrap();
    let request = officer_alert("who gets this");
    let mut env_labels = request.labels.clone().unwrap();
    env_labels.origin = "alpha".into();
    env_labels.message_id = uuid::Uuid::new_v4().to_string();
    env_labels.created_at_ms = liaison_types::now_ms();
    let at_hub = hub
        .explain(pb::ExplainRequest {
            envelope: Some(pb::Envelope {
                labels: Some(env_labels),
                body: request.body.clone().unwrap().encode_to_vec(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let at_node = officer
        .explain(pb::OfficerExplainRequest {
            labels: request.labels.clone(),
            body: request.body.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_node.policy_version, at_hub.policy_version);
    assert_eq!(at_node.decisions, at_hub.decisions);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_resubmission_is_a_duplicate_only_for_the_same_content() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut request = officer_alert("retry me");
    request.labels.as_mut().unwrap().message_id = id.clone();

    let first = officer.submit(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.message_id, id);
    assert!(!first.duplicate);
    // The same request again (the node sets a new creation time, which does
    // not count), and with the id spelt in capitals.
    let again = officer.submit(request.clone()).await.unwrap().into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message_id, id);
    let mut upper = request.clone();
    upper.labels.as_mut().unwrap().message_id = id.to_uppercase();
    let again = officer.submit(upper).await.unwrap().into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message_id, id);

    // Different content under the same id: refused.
    let mut changed = request.clone();
    changed.body = Some(alert("something else"));
    assert_refused(
        officer.submit(changed).await,
        Code::AlreadyExists,
        &[&id, "already submitted with different content"],
    );
    let mut changed = request;
    changed.labels.as_mut().unwrap().countries = vec!["NG".into()];
    assert_refused(officer.submit(changed).await, Code::AlreadyExists, &[&id]);

    // One outbox entry, routed once by the hub, held once by bravo.
    assert_eq!(outbox_ids(&sandbox, "alpha").await, vec![id.clone()]);
    wait_until("bravo's node stores the alert", SETTLE, || {
        let sandbox = &sandbox;
        let id = id.clone();
        async move {
            inbox_ids(sandbox, "bravo")
                .await
                .contains(&id)
                .then_some(())
        }
    })
    .await
    .unwrap();
    let log = audit_log(&sandbox).await;
    let received = log
        .iter()
        .filter(|r| r.event == "received" && r.message_id == id)
        .count();
    assert_eq!(received, 1);
    let mut bravo = sandbox.officer("bravo", "alice").await.unwrap();
    let shown = bravo
        .show(pb::ShowRequest { message_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.body.unwrap().title, "retry me");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_show_and_acknowledge_of_an_unknown_id_are_not_found() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    // Any spelling of a UUID is looked up in its canonical form.
    for id in [unknown.clone(), unknown.to_uppercase()] {
        assert_refused(
            officer
                .show(pb::ShowRequest {
                    message_id: id.clone(),
                })
                .await,
            Code::NotFound,
            &[&format!("no message {unknown} in this node's inbox")],
        );
        assert_refused(
            officer
                .acknowledge(pb::OfficerAcknowledgeRequest {
                    message_id: id.clone(),
                })
                .await,
            Code::NotFound,
            &[&format!("no message {unknown} in this node's inbox")],
        );
    }
    // Acknowledging did not create anything.
    assert!(inbox_ids(&sandbox, "alpha").await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_rpc_refuses_a_malformed_id_as_invalid_naming_the_field() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let bad_ids = [
        ("", "empty"),
        ("not-a-uuid", "'not-a-uuid' is not a UUID"),
        ("../../etc/passwd", "is not a UUID"),
        ("i/whatever", "is not a UUID"),
        ("1b4e28ba\n2fa1", "is not a UUID"),
        ("\u{1b}[2J", "\\u{1b}[2J"),
    ];
    for (id, needle) in bad_ids {
        let id = id.to_owned();
        let expect = |r: Result<(), tonic::Status>, rpc: &str, field: &str| {
            let status = r.expect_err(rpc);
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{rpc} with id {id:?}: {status:?}"
            );
            assert!(
                status.message().contains(&format!("{field}: "))
                    && status.message().contains(needle),
                "{rpc} with id {id:?}: {status:?}"
            );
            assert!(!status.message().contains('\n') && !status.message().contains('\u{1b}'));
        };
        let m = || id.clone();
        expect(
            officer
                .show(pb::ShowRequest { message_id: m() })
                .await
                .map(|_| ()),
            "show",
            "message_id",
        );
        expect(
            officer
                .acknowledge(pb::OfficerAcknowledgeRequest { message_id: m() })
                .await
                .map(|_| ()),
            "acknowledge",
            "message_id",
        );
        expect(
            officer
                .approve(pb::ApproveRequest { message_id: m() })
                .await
                .map(|_| ()),
            "approve",
            "message_id",
        );
        expect(
            officer
                .refuse(pb::RefuseRequest {
                    message_id: m(),
                    reason: "no".into(),
                })
                .await
                .map(|_| ()),
            "refuse",
            "message_id",
        );
        expect(
            officer
                .retract(pb::OfficerRetractRequest {
                    message_id: m(),
                    reason: "wrong".into(),
                })
                .await
                .map(|_| ()),
            "retract",
            "message_id",
        );
        if !id.is_empty() {
            // An empty id lists every message awaiting approval.
            expect(
                officer
                    .list_approvals(pb::ListApprovalsRequest {
                        message_id: m(),
                        limit: 0,
                    })
                    .await
                    .map(|_| ()),
                "list_approvals",
                "message_id",
            );
        }
        expect(
            officer
                .request_forward(pb::OfficerForwardRequest {
                    message_id: m(),
                    to: "bravo".into(),
                    reason: "joint operation".into(),
                })
                .await
                .map(|_| ()),
            "request_forward",
            "message_id",
        );
        expect(
            officer
                .decide_forward(pb::OfficerDecideForwardRequest {
                    request_id: m(),
                    approve: true,
                    reason: String::new(),
                })
                .await
                .map(|_| ()),
            "decide_forward",
            "request_id",
        );
    }
    assert!(inbox_ids(&sandbox, "alpha").await.is_empty());
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_listings_with_a_huge_limit_are_capped_not_refused() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut ids = Vec::new();
    for title in ["first", "second"] {
        ids.push(
            officer
                .submit(officer_alert(title))
                .await
                .unwrap()
                .into_inner()
                .message_id,
        );
    }
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let incoming = bravo
        .submit(submit(envelope(
            "bravo",
            labels(K::Alert, C::OfficialUse, &["drugs"]),
            &alert("for alpha"),
        )))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    wait_until("alpha's node stores bravo's alert", SETTLE, || {
        let sandbox = &sandbox;
        let id = incoming.clone();
        async move {
            inbox_ids(sandbox, "alpha")
                .await
                .contains(&id)
                .then_some(())
        }
    })
    .await
    .unwrap();

    for limit in [u32::MAX, 1_001, 1_000_000] {
        let outbox = officer
            .list_outbox(pb::ListOutboxRequest { limit })
            .await
            .unwrap()
            .into_inner();
        let got: Vec<_> = outbox
            .entries
            .iter()
            .map(|e| e.message_id.clone())
            .collect();
        assert_eq!(got, vec![ids[1].clone(), ids[0].clone()], "newest first");
        for unread_only in [false, true] {
            let inbox = officer
                .list_inbox(pb::ListInboxRequest { unread_only, limit })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(inbox.entries.len(), 1);
            assert_eq!(inbox.entries[0].message_id, incoming);
        }
    }
    // A limit of 1 really limits.
    let one = officer
        .list_outbox(pb::ListOutboxRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.entries.len(), 1);
    assert_eq!(one.entries[0].message_id, ids[1]);
    sandbox.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Unknown protobuf fields. prost ignores fields it does not know, so a
// message carrying field 99 decodes fine on the hub and on the node. What
// must hold is that the unknown field is not smuggled through: both the hub
// and the node re-encode the labels from the validated domain type, so the
// stored and delivered labels no longer carry it (a resubmission without the
// field is the same message). The body stays opaque bytes on purpose (a
// signature or encryption will wrap it later), so an unknown field inside
// the body travels verbatim to the recipient, whose own decoding ignores it.
// ---------------------------------------------------------------------------

/// A codec that sends and receives raw protobuf bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Length-delimited field `tag` holding `bytes`.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// The marker carried in the unknown field 99.
const SMUGGLED: &[u8] = b"smuggled-unknown-field";

/// `msg` encoded, with an unknown field 99 appended.
fn with_unknown_field(msg: &impl Message) -> Vec<u8> {
    let mut bytes = msg.encode_to_vec();
    bytes.extend(field(99, SMUGGLED));
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn raw_channel(sandbox: &Sandbox, url: &str, stem: &str, server: Role) -> Channel {
    liaison_pki::connect(
        url,
        &sandbox.material(stem).unwrap(),
        Some(server),
        sandbox.governance().federation(),
    )
    .await
    .unwrap()
}

async fn raw_unary(
    ch: Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The first raw delivery of `stem`'s queue.
async fn first_raw_delivery(sandbox: &Sandbox, stem: &str) -> Vec<u8> {
    let ch = raw_channel(sandbox, &sandbox.hub_url(), stem, Role::Hub).await;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(pb::SubscribeRequest { after_seq: 0 }.encode_to_vec()),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/liaison.v1.Federation/Subscribe",
            ),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_in_the_labels_is_dropped_by_the_hub() {
    let sandbox = hub_only().await;
    let env = alpha_alert("with an unknown label field");
    let labels_bytes = with_unknown_field(env.labels.as_ref().unwrap());
    let mut body_bytes = env.body.clone();
    body_bytes.extend(field(99, SMUGGLED));
    let request = field(
        1,
        &[field(1, &labels_bytes), field(2, &body_bytes)].concat(),
    );

    let ch = raw_channel(&sandbox, &sandbox.hub_url(), "alpha/node", Role::Hub).await;
    let resp = raw_unary(ch, "/liaison.v1.Federation/Submit", request)
        .await
        .unwrap();
    let resp = pb::SubmitResponse::decode(resp.as_slice()).unwrap();
    assert!(!resp.duplicate);

    // The same labels without the unknown field (and the same body bytes)
    // are the same message: the field was not part of what the hub stored.
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let same = node
        .submit(submit(pb::Envelope {
            labels: env.labels.clone(),
            body: body_bytes.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(same.duplicate, "{same:?}");

    // What bravo receives: labels re-encoded without field 99; the body, opaque,
    // exactly as sent.
    let raw = first_raw_delivery(&sandbox, "bravo/node").await;
    let delivery = pb::Delivery::decode(raw.as_slice()).unwrap();
    let delivered = delivery.envelope.unwrap();
    let delivered_labels = delivered.labels.unwrap();
    assert_eq!(&delivered_labels, env.labels.as_ref().unwrap());
    assert!(
        !contains(&delivered_labels.encode_to_vec(), SMUGGLED),
        "labels carry the unknown field"
    );
    assert_eq!(delivered.body, body_bytes);
    // In the raw delivery, the marker appears once: inside the opaque body.
    let occurrences = raw
        .windows(SMUGGLED.len())
        .filter(|w| *w == SMUGGLED)
        .count();
    assert_eq!(occurrences, 1);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_in_an_officer_request_is_dropped_by_the_node() {
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let request = officer_alert("officer with an unknown field");
    let id = uuid::Uuid::new_v4().to_string();
    let mut labels = request.labels.clone().unwrap();
    labels.message_id = id.clone();
    let raw = [
        field(1, &with_unknown_field(&labels)),
        field(2, &request.body.as_ref().unwrap().encode_to_vec()),
        field(98, SMUGGLED),
    ]
    .concat();
    let ch = raw_channel(
        &sandbox,
        &sandbox.node_url("alpha").unwrap(),
        "alpha/officer-alice",
        Role::Node,
    )
    .await;
    let resp = raw_unary(ch, "/liaison.v1.Officer/Submit", raw)
        .await
        .unwrap();
    let resp = pb::OfficerSubmitResponse::decode(resp.as_slice()).unwrap();
    assert_eq!(resp.message_id, id);
    assert!(!resp.duplicate);

    // Without the unknown fields it is the same message.
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let same = officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(labels),
            body: request.body,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(same.duplicate);

    // And what the node pushed to the hub no longer carries it: bravo has no
    // node here, so its delivery waits at the hub, read raw.
    wait_until("the hub routes the message", SETTLE, || {
        let mut officer = officer.clone();
        let id = id.clone();
        async move {
            let list = officer
                .list_outbox(pb::ListOutboxRequest { limit: 10 })
                .await
                .ok()?
                .into_inner();
            list.entries
                .into_iter()
                .find(|e| e.message_id == id && e.status == "routed")
        }
    })
    .await
    .unwrap();
    let raw = first_raw_delivery(&sandbox, "bravo/node").await;
    assert!(
        !contains(&raw, SMUGGLED),
        "the unknown field reached the recipient"
    );
    let delivery = pb::Delivery::decode(raw.as_slice()).unwrap();
    assert_eq!(delivery.envelope.unwrap().labels.unwrap().message_id, id);
    let stored = audit_log(&sandbox).await;
    assert_eq!(
        stored
            .iter()
            .filter(|r| r.event == "received" && r.message_id == id)
            .count(),
        1
    );
    sandbox.shutdown().await.unwrap();
}
