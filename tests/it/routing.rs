//! The routing matrix end to end, across four bodies including an observer:
//! what the hub decides is exactly what lands in each inbox, and the audit
//! log names the rule of every decision.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use liaison_federation::wait_until;
use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};

use crate::common::{alert, assessment, inbox_ids, labels, routing_of, sandbox, SETTLE};

/// What each other body should get: `None` for a delivery, `Some(rule)` for
/// a withhold by that rule; `"N others"` for the bodies a message did not
/// address, counted under one rule.
type Expected = BTreeMap<&'static str, Option<&'static str>>;

/// (sender, labels, body, expected outcome per other body).
fn cases() -> Vec<(&'static str, pb::Labels, pb::Body, Expected)> {
    let mut personal = labels(K::ThreatAssessment, C::Restricted, &["drugs"]);
    personal.personal_data = true;
    let mut excluded = labels(K::Alert, C::Restricted, &["drugs"]);
    excluded.excluded = vec!["charlie".into()];
    let mut releasable = labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]);
    releasable.releasable_to = vec!["charlie".into()];
    vec![
        (
            "alpha",
            labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]),
            assessment("open drugs assessment"),
            BTreeMap::from([("bravo", None), ("charlie", None), ("obs", None)]),
        ),
        (
            "alpha",
            labels(K::Alert, C::Confidential, &["cybercrime"]),
            alert("confidential cyber alert"),
            BTreeMap::from([
                ("bravo", Some("recipient.clearance")),
                ("charlie", Some("recipient.mandate")),
                ("obs", Some("recipient.clearance")),
            ]),
        ),
        (
            "bravo",
            personal,
            assessment("assessment with personal data"),
            BTreeMap::from([
                ("alpha", None),
                ("charlie", Some("agreement.personal_data")),
                ("obs", Some("recipient.clearance")),
            ]),
        ),
        (
            "alpha",
            excluded,
            alert("alert excluding charlie"),
            BTreeMap::from([
                ("bravo", None),
                ("charlie", Some("originator.exclusion")),
                ("obs", Some("recipient.clearance")),
            ]),
        ),
        (
            "obs",
            releasable,
            assessment("observer assessment for charlie only"),
            // The bodies it does not name are counted, not listed.
            BTreeMap::from([
                ("2 others", Some("originator.releasability")),
                ("charlie", None),
            ]),
        ),
        (
            "charlie",
            labels(K::Alert, C::OfficialUse, &["drugs"]),
            alert("drugs alert"),
            BTreeMap::from([
                ("alpha", None),
                ("bravo", None),
                ("obs", Some("recipient.kind")),
            ]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_inbox_matches_the_routing_decisions_and_the_audit_log() {
    let sandbox = sandbox().await;
    let mut expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut ids = Vec::new();
    let mut records = 0;
    for (origin, labels, body, want) in cases() {
        let mut officer = sandbox.officer(origin, "alice").await.unwrap();
        let id = officer
            .submit(pb::OfficerSubmitRequest {
                clear_targets: false,
                targets: Vec::new(),
                labels: Some(labels),
                body: Some(body.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .message_id;
        // The origin's outbox shows the hub's decisions once routed.
        let entry = sandbox.settled(origin, &id, SETTLE).await.unwrap();
        assert_eq!(entry.status, "routed", "{}", entry.last_error);
        let got = routing_of(&entry);
        let wanted: BTreeMap<String, Option<String>> = want
            .iter()
            .map(|(b, r)| ((*b).to_owned(), r.map(str::to_owned)))
            .collect();
        assert_eq!(got, wanted, "decisions for {:?}", body.title);
        records += want.len();
        for (recipient, rule) in &want {
            if rule.is_none() {
                expected.entry(recipient).or_default().insert(id.clone());
            }
        }
        ids.push(id);
    }

    for body in ["alpha", "bravo", "charlie", "obs"] {
        let want = expected.remove(body).unwrap_or_default();
        let got = wait_until(
            &format!("{body}'s inbox holds its deliveries"),
            SETTLE,
            || {
                let sandbox = &sandbox;
                let want = want.clone();
                async move {
                    let got: BTreeSet<String> =
                        inbox_ids(sandbox, body).await.into_iter().collect();
                    want.is_subset(&got).then_some(got)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(got, want, "{body}'s inbox");
    }

    // One routing record per decision (and per count of bodies not
    // addressed, naming no recipient), each naming its rule and the policy
    // version; and the chain verifies.
    let mut auditor = sandbox.oversight().await.unwrap();
    let mut stream = auditor
        .list(pb::AuditQuery {
            event: "routed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut routed = Vec::new();
    while let Some(r) = stream.next().await {
        routed.push(r.unwrap());
    }
    assert_eq!(routed.len(), records);
    let counted: Vec<&pb::AuditRecord> = routed.iter().filter(|r| r.recipient.is_empty()).collect();
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counted[0].rule, "originator.releasability");
    assert!(
        counted[0].reason.starts_with("2 other bodies"),
        "{counted:?}"
    );
    let version = sandbox.governance().version().to_owned();
    for r in &routed {
        assert!(ids.contains(&r.message_id));
        assert_eq!(r.policy_version, version);
        assert!(!r.rule.is_empty());
        assert!(r.decision == "deliver" || r.decision == "withhold");
    }
    let verify = auditor
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    sandbox.shutdown().await.unwrap();
}
