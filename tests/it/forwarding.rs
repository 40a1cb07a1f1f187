//! The third-party rule end to end: a recipient asks to pass a message on,
//! the originator's officer consents or refuses from its own node, and only
//! then does the hub deliver it, under the same rules as a first delivery.
//! A body that never received the message cannot ask, TLP:AMBER+STRICT
//! never goes further, consent never bypasses the rules, and an originator
//! that waived the rule (`third_party_release`) is not asked. Every step is
//! audited.

use liaison_federation::{wait_until, Sandbox};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use pb::{Classification as C, Kind as K};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{
    alert, assert_refused, audit_records, hub_only, inbox_ids, labels, sandbox, submit_as, SETTLE,
};

const ALICE: &str = "spiffe://liaison.test/org/alpha/officer/alice";

/// A RESTRICTED drugs alert from alpha that only bravo may receive: charlie
/// (cleared, mandated) is withheld by the releasability list, the observer
/// by its clearance.
fn for_bravo_only() -> pb::Labels {
    let mut l = labels(K::Alert, C::Restricted, &["drugs"]);
    l.releasable_to = vec!["bravo".into()];
    l
}

/// alpha's officer submits a message for bravo only; returns its id once
/// bravo's inbox holds it.
async fn sent_to_bravo(sandbox: &Sandbox, title: &str) -> String {
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let id = alice
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(for_bravo_only()),
            body: Some(alert(title)),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    wait_until("bravo's inbox holds the message", SETTLE, || async {
        inbox_ids(sandbox, "bravo")
            .await
            .contains(&id)
            .then_some(())
    })
    .await
    .unwrap();
    id
}

/// bravo's officer asks to pass `id` on to `to`.
async fn ask(sandbox: &Sandbox, id: &str, to: &str) -> pb::ForwardRequestResponse {
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    bob.request_forward(pb::OfficerForwardRequest {
        message_id: id.to_owned(),
        to: to.to_owned(),
        reason: "joint operation with charlie".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Waits until alpha's node lists forward request `request_id` and returns it
/// once `ready` holds.
async fn listed(
    alice: &mut OfficerClient<Channel>,
    request_id: &str,
    ready: impl Fn(&pb::ForwardRequestEntry) -> bool,
) -> pb::ForwardRequestEntry {
    wait_until(
        &format!("alpha's node lists forward request {request_id}"),
        SETTLE,
        || {
            let mut alice = alice.clone();
            let ready = &ready;
            async move {
                alice
                    .list_forward_requests(pb::ListForwardRequestsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .entries
                    .into_iter()
                    .find(|e| e.request_id == request_id && ready(e))
            }
        },
    )
    .await
    .unwrap()
}

/// The forwarding events of a message, in log order.
async fn forward_events(sandbox: &Sandbox, id: &str) -> Vec<pb::AuditRecord> {
    audit_records(
        sandbox,
        pb::AuditQuery {
            message_id: id.to_owned(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .filter(|r| r.event.starts_with("forward"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consented_forward_reaches_the_body_once_and_is_audited() {
    let sandbox = sandbox().await;
    let id = sent_to_bravo(&sandbox, "precursor shipment").await;

    let asked = ask(&sandbox, &id, "charlie").await;
    assert_eq!(asked.state, pb::ForwardState::Pending as i32);
    assert!(!asked.duplicate);
    // Asking again returns the pending request.
    let again = ask(&sandbox, &id, "charlie").await;
    assert!(again.duplicate);
    assert_eq!(again.request_id, asked.request_id);

    // alpha's officer sees the request, with the message's title.
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let entry = listed(&mut alice, &asked.request_id, |_| true).await;
    assert_eq!(
        (
            entry.message_id.as_str(),
            entry.requester.as_str(),
            entry.to.as_str()
        ),
        (id.as_str(), "bravo", "charlie")
    );
    assert_eq!(entry.state, "pending");
    assert_eq!(entry.title, "precursor shipment");
    assert!(entry.requested_by.ends_with("/org/bravo/officer/bob"));
    assert!(
        !inbox_ids(&sandbox, "charlie").await.contains(&id),
        "nothing is passed on before the originator consents"
    );

    let decided = alice
        .decide_forward(pb::OfficerDecideForwardRequest {
            request_id: asked.request_id.clone(),
            approve: true,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!decided.already_decided);
    assert_eq!(decided.entry.unwrap().state, "approved");

    wait_until(
        "charlie's inbox holds the forwarded message",
        SETTLE,
        || async {
            inbox_ids(&sandbox, "charlie")
                .await
                .contains(&id)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let done = listed(&mut alice, &asked.request_id, |e| !e.hub_outcome.is_empty()).await;
    assert_eq!(done.hub_outcome, "forwarded");
    assert_eq!(done.decided_by, ALICE);

    // Approving again changes nothing; refusing now is refused.
    let again = alice
        .decide_forward(pb::OfficerDecideForwardRequest {
            request_id: asked.request_id.clone(),
            approve: true,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_decided);
    assert_refused(
        alice
            .decide_forward(pb::OfficerDecideForwardRequest {
                request_id: asked.request_id.clone(),
                approve: false,
                reason: "changed my mind".into(),
            })
            .await,
        Code::FailedPrecondition,
        &["already approved"],
    );
    // The body that has it now cannot be asked for again.
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    assert_refused(
        bob.request_forward(pb::OfficerForwardRequest {
            message_id: id.clone(),
            to: "charlie".into(),
            reason: "again".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["already received it"],
    );

    let ids = inbox_ids(&sandbox, "charlie").await;
    assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "exactly once");
    let events = forward_events(&sandbox, &id).await;
    let chain: Vec<&str> = events.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(chain, ["forward_requested", "forwarded"]);
    assert!(events[0].actor.ends_with("/org/bravo/officer/bob"));
    assert_eq!(events[0].recipient, "charlie");
    assert_eq!(events[1].actor, ALICE);
    assert_eq!(events[1].rule, "deliver.all_rules_passed");
    assert_eq!(events[1].decision, "deliver");
    assert!(events[1].queue_seq > 0);
    // charlie's delivery of it is audited like any other.
    let delivered = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: id.clone(),
            event: "delivered".into(),
            body: "charlie".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(delivered.len(), 1);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_forward_is_never_delivered() {
    let sandbox = sandbox().await;
    let id = sent_to_bravo(&sandbox, "informant network").await;
    let asked = ask(&sandbox, &id, "charlie").await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    listed(&mut alice, &asked.request_id, |_| true).await;
    assert_refused(
        alice
            .decide_forward(pb::OfficerDecideForwardRequest {
                request_id: asked.request_id.clone(),
                approve: false,
                reason: " ".into(),
            })
            .await,
        Code::InvalidArgument,
        &["reason"],
    );
    alice
        .decide_forward(pb::OfficerDecideForwardRequest {
            request_id: asked.request_id.clone(),
            approve: false,
            reason: "sources would be exposed".into(),
        })
        .await
        .unwrap();
    let done = listed(&mut alice, &asked.request_id, |e| !e.hub_outcome.is_empty()).await;
    assert_eq!(done.hub_outcome, "refused");
    assert_eq!(done.state, "refused");

    let events = forward_events(&sandbox, &id).await;
    let chain: Vec<&str> = events.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(chain, ["forward_requested", "forward_refused"]);
    assert!(events[1].reason.contains("sources would be exposed"));
    // The refusal queued nothing for charlie: what charlie holds now is all
    // it will ever hold of this message.
    assert!(!inbox_ids(&sandbox, "charlie").await.contains(&id));
    sandbox.shutdown().await.unwrap();
}

/// Submits `labels` from alpha straight to the hub; returns the id.
async fn submitted(
    alpha: &mut liaison_proto::v1::federation_client::FederationClient<Channel>,
    l: pb::Labels,
) -> String {
    submit_as(alpha, "alpha", l, &alert("straight to the hub")).await
}

fn request(id: &str, to: &str) -> pb::ForwardRequest {
    pb::ForwardRequest {
        message_id: id.to_owned(),
        to: to.to_owned(),
        reason: "needed downstream".into(),
        requested_by: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_recipient_may_ask_and_strict_markings_never_go_further() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let id = submitted(&mut alpha, for_bravo_only()).await;

    // charlie never received it.
    let mut charlie = sandbox.hub_as("charlie/node").await.unwrap();
    assert_refused(
        charlie.request_forward(request(&id, "obs")).await,
        Code::PermissionDenied,
        &[
            "charlie never received",
            "only a body the message was delivered to",
        ],
    );
    let refused = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "refused".into(),
            rule: "forward.not_a_recipient".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].message_id, id);
    assert!(refused[0].actor.contains("/org/charlie/node"));

    // Bad requests from a recipient.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    assert_refused(
        bravo.request_forward(request(&id, "zulu")).await,
        Code::InvalidArgument,
        &["'zulu' is not a body"],
    );
    assert_refused(
        bravo.request_forward(request(&id, "bravo")).await,
        Code::InvalidArgument,
        &["your own body"],
    );
    assert_refused(
        bravo.request_forward(request(&id, "alpha")).await,
        Code::FailedPrecondition,
        &["alpha already received it"],
    );
    assert_refused(
        bravo
            .request_forward(pb::ForwardRequest {
                requested_by: ALICE.into(),
                ..request(&id, "charlie")
            })
            .await,
        Code::InvalidArgument,
        &["requested_by", "not an officer of bravo"],
    );

    // TLP:AMBER+STRICT never leaves the bodies it was sent to.
    let mut strict = for_bravo_only();
    strict.tlp = pb::Tlp::AmberStrict as i32;
    let strict_id = submitted(&mut alpha, strict).await;
    assert_refused(
        bravo.request_forward(request(&strict_id, "charlie")).await,
        Code::FailedPrecondition,
        &["TLP:AMBER+STRICT"],
    );
    let tlp = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: strict_id.clone(),
            rule: "forward.tlp".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(tlp.len(), 1);
    assert_eq!(tlp[0].event, "refused");

    // A retracted message cannot be passed on.
    alpha
        .retract(pb::RetractRequest {
            message_id: id.clone(),
            reason: "superseded".into(),
        })
        .await
        .unwrap();
    assert_refused(
        bravo.request_forward(request(&id, "charlie")).await,
        Code::FailedPrecondition,
        &["retracted"],
    );
    assert!(forward_events(&sandbox, &id).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_never_bypasses_the_rules() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let id = submitted(&mut alpha, for_bravo_only()).await;
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let asked = bravo
        .request_forward(request(&id, "obs"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked.state, pb::ForwardState::Pending as i32);

    let decide = |approve: bool| pb::DecideForwardRequest {
        request_id: asked.request_id.clone(),
        approve,
        reason: "for their awareness".into(),
        decided_by: ALICE.into(),
    };
    // Only the originator decides.
    assert_refused(
        bravo
            .decide_forward(pb::DecideForwardRequest {
                decided_by: String::new(),
                ..decide(true)
            })
            .await,
        Code::PermissionDenied,
        &["only its originator may decide"],
    );
    let resp = alpha
        .decide_forward(decide(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.state, pb::ForwardState::Withheld as i32);
    assert_eq!(resp.rule, "recipient.clearance");
    let events = forward_events(&sandbox, &id).await;
    let chain: Vec<&str> = events.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(chain, ["forward_requested", "forward_withheld"]);
    assert_eq!(events[1].rule, "recipient.clearance");
    assert_eq!(events[1].decision, "withhold");
    assert_eq!(events[1].recipient, "obs");
    assert_eq!(events[1].queue_seq, 0, "nothing queued");
    // Deciding again the same way changes nothing.
    assert!(
        alpha
            .decide_forward(decide(true))
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    assert_refused(
        alpha.decide_forward(decide(false)).await,
        Code::FailedPrecondition,
        &["already decided"],
    );
    assert_refused(
        alpha
            .decide_forward(pb::DecideForwardRequest {
                request_id: "00000000-0000-4000-8000-000000000000".into(),
                ..decide(true)
            })
            .await,
        Code::NotFound,
        &["no forward request"],
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waived_rule_needs_no_consent_but_the_rules_still_apply() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let mut open = for_bravo_only();
    open.third_party_release = true;
    open.tlp = pb::Tlp::Green as i32;
    let id = submitted(&mut alpha, open).await;
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();

    let to_charlie = bravo
        .request_forward(request(&id, "charlie"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_charlie.state, pb::ForwardState::Forwarded as i32);
    assert_eq!(to_charlie.rule, "deliver.all_rules_passed");
    let to_obs = bravo
        .request_forward(request(&id, "obs"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_obs.state, pb::ForwardState::Withheld as i32);
    assert_eq!(to_obs.rule, "recipient.clearance");

    // charlie's stream carries the message itself.
    let mut charlie = sandbox.hub_as("charlie/node").await.unwrap();
    let mut stream = charlie
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let d = tokio::time::timeout(SETTLE, stream.message())
        .await
        .expect("a delivery in time")
        .unwrap()
        .expect("a delivery");
    assert_eq!(d.envelope.unwrap().labels.unwrap().message_id, id);
    assert!(d.forward_request.is_none() && d.withdrawal.is_none());

    // alpha was not asked: the first thing in its queue is a message bravo
    // sent after the requests, not a forward request.
    let marker_id = submit_as(
        &mut bravo,
        "bravo",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("after"),
    )
    .await;
    let mut alpha_stream = alpha
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(SETTLE, alpha_stream.message())
        .await
        .expect("a delivery in time")
        .unwrap()
        .expect("a delivery");
    assert!(
        first.forward_request.is_none(),
        "the originator is not asked"
    );
    assert_eq!(
        first.envelope.unwrap().labels.unwrap().message_id,
        marker_id
    );

    let events = forward_events(&sandbox, &id).await;
    let chain: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|r| (r.event.as_str(), r.recipient.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(chain.len(), 4);
    assert_eq!(
        chain[1],
        ("forwarded", "charlie", "hub:third_party_release")
    );
    assert_eq!(
        chain[3],
        ("forward_withheld", "obs", "hub:third_party_release")
    );
    sandbox.shutdown().await.unwrap();
}

const EXE: &str = env!("CARGO_BIN_EXE_liaison-child");

/// Runs `liaison` as `who` (`<body>/officer-<name>`) against that body's
/// node, off the async runtime.
async fn liaison(sandbox: &Sandbox, who: &str, args: &[&str]) -> std::process::Output {
    let body = who.split('/').next().unwrap();
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.extend([
        "--server".into(),
        sandbox.node_url(body).unwrap(),
        "--certs".into(),
        sandbox.certs().display().to_string(),
        "--as".into(),
        who.to_owned(),
    ]);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(EXE).args(&all).output().unwrap()
    })
    .await
    .unwrap()
}

fn json_line(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_ask_and_consent_from_the_command_line() {
    let sandbox = sandbox().await;
    let id = sent_to_bravo(&sandbox, "cli forward").await;

    // The observer never received it: not allowed (exit 4).
    let out = liaison(
        &sandbox,
        "obs/officer-bob",
        &["forward", &id, "--to", "charlie", "--reason", "curious"],
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("never received"));

    let asked = json_line(
        &liaison(
            &sandbox,
            "bravo/officer-bob",
            &[
                "--output",
                "json",
                "forward",
                &id,
                "--to",
                "charlie",
                "--reason",
                "joint case",
            ],
        )
        .await,
    );
    assert_eq!(asked["state"], "pending");
    let rid = asked["request_id"].as_str().unwrap().to_owned();

    let listed = wait_until("alpha's officer lists the request", SETTLE, || async {
        let out = liaison(
            &sandbox,
            "alpha/officer-alice",
            &["--output", "json", "forwards", "--pending"],
        )
        .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["request_id"] == rid.as_str())
    })
    .await
    .unwrap();
    assert_eq!(listed["to"], "charlie");
    assert_eq!(listed["requester"], "bravo");

    // Refusing needs a reason (exit 2); consent needs none.
    let out = liaison(&sandbox, "alpha/officer-alice", &["forward-refuse", &rid]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = liaison(&sandbox, "alpha/officer-alice", &["forward-approve", &rid]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("consented"));
    wait_until(
        "charlie's inbox holds the forwarded message",
        SETTLE,
        || async {
            inbox_ids(&sandbox, "charlie")
                .await
                .contains(&id)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let out = liaison(
        &sandbox,
        "alpha/officer-alice",
        &["forward-refuse", &rid, "--reason", "too late"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    sandbox.shutdown().await.unwrap();
}
