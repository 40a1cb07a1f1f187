//! Handling labels end to end: TLP, handling codes and grading carried to
//! the reader, TLP:RED to named recipients only, working groups narrowing
//! the recipients, and embargoes held by the hub until their time.

use std::collections::BTreeMap;

use liaison_federation::{wait_until, Sandbox};
use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};
use tonic::Code;

use crate::common::{
    alert, assert_refused, assessment, audit_records, envelope, hub_only, inbox_ids, labels,
    routing_of, sandbox, SETTLE,
};

/// Submits through `origin`'s officer and waits until the hub has routed it;
/// returns the id and the decisions, recipient → withholding rule (`None`
/// for a delivery), and `"N others"` → rule for the bodies it did not
/// address.
async fn route(
    sandbox: &Sandbox,
    origin: &str,
    labels: pb::Labels,
    body: pb::Body,
) -> (String, BTreeMap<String, Option<String>>) {
    let mut officer = sandbox.officer(origin, "alice").await.unwrap();
    let id = officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(labels),
            body: Some(body),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let entry = sandbox.settled(origin, &id, SETTLE).await.unwrap();
    assert_eq!(entry.status, "routed", "{}", entry.last_error);
    let decisions = routing_of(&entry);
    (id, decisions)
}

fn expect(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(b, r)| ((*b).to_owned(), r.map(str::to_owned)))
        .collect()
}

async fn wait_for_inbox(sandbox: &Sandbox, body: &str, id: &str) {
    wait_until(&format!("{body} receives {id}"), SETTLE, || async {
        inbox_ids(sandbox, body)
            .await
            .iter()
            .any(|i| i == id)
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handling_labels_reach_the_reader_and_red_reaches_only_the_named() {
    let sandbox = sandbox().await;
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    l.tlp = pb::Tlp::Red as i32;
    l.releasable_to = vec!["bravo".into()];
    l.handling_code = pb::HandlingCode::H3 as i32;
    l.handling_restriction = "not for use in court without consent".into();
    l.grading = "b2".into();
    let (id, decisions) = route(&sandbox, "alpha", l, alert("red alert")).await;
    assert_eq!(
        decisions,
        expect(&[("bravo", None), ("2 others", Some("handling.tlp_red")),])
    );
    wait_for_inbox(&sandbox, "bravo", &id).await;
    let shown = sandbox
        .officer("bravo", "bob")
        .await
        .unwrap()
        .show(pb::ShowRequest { message_id: id })
        .await
        .unwrap()
        .into_inner();
    let l = shown.labels.unwrap();
    assert_eq!(l.tlp, pb::Tlp::Red as i32);
    assert_eq!(l.handling_code, pb::HandlingCode::H3 as i32);
    assert_eq!(
        l.handling_restriction,
        "not for use in court without consent"
    );
    assert_eq!(l.grading, "B2", "stored in its canonical form");
    assert!(!l.third_party_release);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_group_narrows_the_recipients_and_an_unknown_group_is_refused() {
    let sandbox = sandbox().await;
    let mut l = labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]);
    l.working_groups = vec!["strategic".into()];
    let (id, decisions) = route(&sandbox, "alpha", l, assessment("for the group")).await;
    assert_eq!(
        decisions,
        expect(&[
            ("1 others", Some("working_group.membership")),
            ("charlie", None),
            ("obs", None),
        ])
    );
    wait_for_inbox(&sandbox, "obs", &id).await;

    // Membership is no bypass: a group member the other rules refuse is
    // still refused.
    let mut l = labels(K::ThreatAssessment, C::Restricted, &["drugs"]);
    l.working_groups = vec!["strategic".into()];
    let (_, decisions) = route(&sandbox, "alpha", l, assessment("too high for obs")).await;
    assert_eq!(decisions["obs"].as_deref(), Some("recipient.clearance"));

    let mut hub = sandbox.hub_as("alpha/node").await.unwrap();
    let mut l = labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]);
    l.working_groups = vec!["tactical".into()];
    assert_refused(
        hub.submit(pb::SubmitRequest {
            targets: Vec::new(),
            envelope: Some(envelope("alpha", l, &assessment("unknown group"))),
            approved_by: String::new(),
            traceparent: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &[
            "labels.working_groups[0]",
            "'tactical' is not a working group",
            "strategic",
        ],
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embargoed_message_is_held_until_its_time_then_delivered_in_order() {
    let sandbox = sandbox().await;
    let not_before = liaison_types::now_ms() + 1_500;
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    l.not_before_ms = not_before;
    let (held, decisions) = route(&sandbox, "alpha", l, alert("embargoed")).await;
    assert_eq!(decisions["bravo"], None, "decided at once: deliver");

    // A message sent after it, without embargo, arrives first: the held one
    // has no queue position yet, so it blocks nothing.
    let (plain, _) = route(
        &sandbox,
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        alert("plain"),
    )
    .await;
    wait_for_inbox(&sandbox, "bravo", &plain).await;
    assert!(
        !inbox_ids(&sandbox, "bravo").await.contains(&held),
        "delivered before its embargo ended"
    );
    assert!(
        liaison_types::now_ms() < not_before,
        "the test ran too slowly to prove the hold"
    );

    wait_for_inbox(&sandbox, "bravo", &held).await;
    let shown = sandbox
        .officer("bravo", "bob")
        .await
        .unwrap()
        .show(pb::ShowRequest {
            message_id: held.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.summary.unwrap().received_at_ms >= not_before);
    let released = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: held.clone(),
            event: "released".into(),
            ..Default::default()
        },
    )
    .await;
    let recipients: Vec<&str> = released.iter().map(|r| r.recipient.as_str()).collect();
    assert_eq!(
        recipients,
        ["bravo", "charlie"],
        "one release per entitled recipient"
    );
    assert!(released
        .iter()
        .all(|r| r.queue_seq > 0 && r.at_ms >= not_before));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delivery_survives_a_hub_restart() {
    let mut sandbox = hub_only().await;
    let not_before = liaison_types::now_ms() + 1_000;
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    l.not_before_ms = not_before;
    let env = envelope("alpha", l, &alert("held across a restart"));
    let mut hub = sandbox.hub_as("alpha/node").await.unwrap();
    hub.submit(pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(env),
        approved_by: String::new(),
        traceparent: String::new(),
    })
    .await
    .unwrap();
    sandbox.stop_hub().await.unwrap();
    sandbox.start_hub().await.unwrap();
    sandbox.wait_ready().await.unwrap();

    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(SETTLE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(liaison_types::now_ms() >= not_before);
    assert_eq!(first.seq, 1);
    assert_eq!(
        first.envelope.unwrap().labels.unwrap().not_before_ms,
        not_before
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_handling_labels_are_refused_with_the_field() {
    let sandbox = hub_only().await;
    let mut hub = sandbox.hub_as("alpha/node").await.unwrap();
    type Mutation = Box<dyn Fn(&mut pb::Labels)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "labels.releasable_to",
            Box::new(|l| l.tlp = pb::Tlp::Red as i32),
        ),
        (
            "labels.third_party_release",
            Box::new(|l| {
                l.tlp = pb::Tlp::AmberStrict as i32;
                l.third_party_release = true;
            }),
        ),
        (
            "labels.handling_restriction",
            Box::new(|l| l.handling_code = pb::HandlingCode::H3 as i32),
        ),
        ("labels.grading", Box::new(|l| l.grading = "E9".into())),
    ];
    for (field, mutate) in cases {
        let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
        mutate(&mut l);
        assert_refused(
            hub.submit(pb::SubmitRequest {
                targets: Vec::new(),
                envelope: Some(envelope("alpha", l, &alert("bad labels"))),
                approved_by: String::new(),
                traceparent: String::new(),
            })
            .await,
            Code::InvalidArgument,
            &[field],
        );
    }
    assert!(crate::common::audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}
