//! Four-eyes release end to end: a node whose `[release]` table covers a
//! message holds it, unsent, until a second officer of the body who is an
//! approver approves it; the hub then routes it and records the approver.
//! The submitter can never decide on their own message, a non-approver
//! cannot decide at all, a refused message is never sent, and all of it
//! survives restarts.
//!
//! "Not sent" is shown without timers: the push queue is first in, first
//! out, so once a message submitted later has been routed and delivered,
//! anything that was in the queue before it has been too.

use std::process::Output;

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use pb::{Classification as C, Kind as K};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{
    alert, assert_refused, assessment, audit_records, inbox_ids, labels, GOVERNANCE, SETTLE,
};

/// alpha's release rules: CONFIDENTIAL and up, and every operational plan,
/// need a second officer; alice and bob approve, carol does not.
const ALPHA_RELEASE: &str = r#"four_eyes_from = "CONFIDENTIAL"
four_eyes_kinds = ["operational_plan"]
approvers = ["alice", "bob"]"#;

const ALICE: &str = "spiffe://liaison.test/org/alpha/officer/alice";
const BOB: &str = "spiffe://liaison.test/org/alpha/officer/bob";

/// alpha (with four-eyes release), bravo and charlie.
async fn four_eyes_sandbox() -> Sandbox {
    Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha", "bravo", "charlie"])
            .release("alpha", ALPHA_RELEASE),
    )
    .await
    .unwrap()
}

/// A CONFIDENTIAL assessment only charlie may receive (bravo's clearance is
/// RESTRICTED, the observer's OFFICIAL_USE).
fn confidential(title: &str) -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(labels(K::ThreatAssessment, C::Confidential, &["drugs"])),
        body: Some(assessment(title)),
    }
}

/// A RESTRICTED alert (below alpha's four-eyes level) for bravo and charlie.
fn restricted(title: &str) -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(labels(K::Alert, C::Restricted, &["drugs"])),
        body: Some(alert(title)),
    }
}

/// An OFFICIAL_USE operational plan (bravo accepts plans, charlie does not).
fn low_plan(title: &str) -> pb::OfficerSubmitRequest {
    let now = liaison_types::now_ms();
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(labels(K::OperationalPlan, C::OfficialUse, &["drugs"])),
        body: Some(pb::Body {
            title: title.into(),
            content: Some(pb::body::Content::OperationalPlan(pb::OperationalPlan {
                summary: "joint controlled delivery".into(),
                window_start_ms: now + 3_600_000,
                window_end_ms: now + 7_200_000,
                lead_body: "alpha".into(),
                regions: vec!["west-africa".into()],
                crime_areas: vec!["drugs".into()],
                target_ids: vec![],
            })),
        }),
    }
}

async fn submit(
    officer: &mut OfficerClient<Channel>,
    req: pb::OfficerSubmitRequest,
) -> pb::OfficerSubmitResponse {
    officer.submit(req).await.unwrap().into_inner()
}

async fn approve(
    officer: &mut OfficerClient<Channel>,
    id: &str,
) -> Result<pb::ApproveResponse, tonic::Status> {
    officer
        .approve(pb::ApproveRequest {
            message_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn refuse(
    officer: &mut OfficerClient<Channel>,
    id: &str,
    reason: &str,
) -> Result<pb::RefuseResponse, tonic::Status> {
    officer
        .refuse(pb::RefuseRequest {
            message_id: id.to_owned(),
            reason: reason.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
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

/// Waits until `id`'s outbox entry has `status`, and returns it.
async fn outbox_status(
    officer: &OfficerClient<Channel>,
    id: &str,
    status: &str,
) -> pb::OutboxEntry {
    wait_until(
        &format!("{id} is {status} in the outbox"),
        SETTLE,
        || async {
            outbox_entry(officer, id)
                .await
                .filter(|e| e.status == status)
        },
    )
    .await
    .unwrap()
}

async fn awaiting(officer: &mut OfficerClient<Channel>) -> Vec<pb::PendingApproval> {
    officer
        .list_approvals(pb::ListApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// The hub's `received` records for `id`.
async fn received(sandbox: &Sandbox, id: &str) -> Vec<pb::AuditRecord> {
    audit_records(
        sandbox,
        pb::AuditQuery {
            message_id: id.to_owned(),
            event: "received".into(),
            ..Default::default()
        },
    )
    .await
}

/// Waits until `body`'s inbox holds `id`, and returns the inbox.
async fn delivered(sandbox: &Sandbox, body: &str, id: &str) -> Vec<String> {
    wait_until(&format!("{body}'s inbox holds {id}"), SETTLE, || async {
        let ids = inbox_ids(sandbox, body).await;
        ids.iter().any(|i| i == id).then_some(ids)
    })
    .await
    .unwrap()
}

/// Submits a message that needs no approval and waits until charlie holds
/// it: everything alpha's node had queued before it has been pushed and
/// delivered by then.
async fn sentinel(sandbox: &Sandbox, officer: &mut OfficerClient<Channel>) -> Vec<String> {
    let sent = submit(officer, restricted("sentinel")).await;
    assert_eq!(sent.status, "queued");
    delivered(sandbox, "charlie", &sent.message_id).await
}

/// Asserts that `id` never reached the hub nor charlie.
async fn assert_not_sent(sandbox: &Sandbox, officer: &mut OfficerClient<Channel>, id: &str) {
    let charlie = sentinel(sandbox, officer).await;
    assert!(!charlie.contains(&id.to_owned()), "charlie holds {id}");
    let records = received(sandbox, id).await;
    assert!(records.is_empty(), "the hub received {id}: {records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_message_waits_for_a_second_officer_then_is_delivered_once() {
    let sandbox = four_eyes_sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();
    let mut carol = sandbox.officer("alpha", "carol").await.unwrap();

    let held = submit(&mut alice, confidential("precursor shipment")).await;
    assert_eq!(held.status, "awaiting_approval");
    assert!(!held.duplicate);
    assert!(
        held.approval_reason.contains("release.four_eyes_from")
            && held.approval_reason.contains("CONFIDENTIAL"),
        "{held:?}"
    );
    let id = held.message_id.clone();
    let entry = outbox_status(&alice, &id, "awaiting_approval").await;
    assert_eq!(entry.approval_reason, held.approval_reason);
    assert!(entry.approved_by.is_empty() && entry.decisions.is_empty());
    assert_not_sent(&sandbox, &mut alice, &id).await;

    // Bob sees it with who submitted it and why; alice sees she cannot decide.
    let listed = awaiting(&mut bob).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let l = &listed[0];
    assert_eq!(
        (l.message_id.as_str(), l.submitted_by.as_str()),
        (id.as_str(), ALICE)
    );
    assert_eq!(l.title, "precursor shipment");
    assert_eq!(l.kind, K::ThreatAssessment as i32);
    assert_eq!(l.classification, C::Confidential as i32);
    assert_eq!(l.approval_reason, held.approval_reason);
    assert!(l.can_decide);
    assert!(l.body.is_none(), "bodies only when asked for one message");
    assert!(!awaiting(&mut alice).await[0].can_decide);
    assert!(!awaiting(&mut carol).await[0].can_decide);
    let one = bob
        .list_approvals(pb::ListApprovalsRequest {
            message_id: id.to_uppercase(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.approvers, vec!["alice", "bob"]);
    assert_eq!(
        one.entries[0].body.as_ref().unwrap().title,
        "precursor shipment"
    );

    // The submitter cannot approve or refuse her own message, though she is
    // an approver; carol is not an approver; another body's officer cannot
    // even ask. Nothing changes.
    assert_refused(
        approve(&mut alice, &id).await,
        Code::PermissionDenied,
        &["you submitted", &id, "second officer"],
    );
    assert_refused(
        refuse(&mut alice, &id, "withdrawn").await,
        Code::PermissionDenied,
        &["you submitted"],
    );
    assert_refused(
        approve(&mut carol, &id).await,
        Code::PermissionDenied,
        &["officer/carol may not approve", "alice, bob"],
    );
    assert_refused(
        refuse(&mut carol, &id, "no").await,
        Code::PermissionDenied,
        &["may not approve or refuse"],
    );
    let mut intruder = sandbox
        .officer_at("alpha", "bravo/officer-bob")
        .await
        .unwrap();
    assert_refused(
        approve(&mut intruder, &id).await,
        Code::PermissionDenied,
        &["bravo"],
    );
    assert_eq!(
        outbox_status(&alice, &id, "awaiting_approval")
            .await
            .approved_by,
        ""
    );

    // Bob approves: released, routed, delivered once, the approver audited.
    let approved = approve(&mut bob, &id).await.unwrap();
    assert_eq!(approved.approved_by, BOB);
    assert!(!approved.already_approved);
    assert!(approved.approved_at_ms > 0);
    let entry = outbox_status(&alice, &id, "routed").await;
    assert_eq!(entry.approved_by, BOB);
    assert_eq!(entry.approved_at_ms, approved.approved_at_ms);
    let inbox = delivered(&sandbox, "charlie", &id).await;
    assert_eq!(inbox.iter().filter(|i| **i == id).count(), 1);
    let records = received(&sandbox, &id).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0].reason,
        format!("released by {BOB} after four-eyes approval")
    );
    assert!(records[0].actor.contains("/org/alpha/node/"), "{records:?}");
    assert!(awaiting(&mut bob).await.is_empty());

    // Approving again changes nothing; refusing now is too late.
    let again = approve(&mut bob, &id).await.unwrap();
    assert!(again.already_approved);
    assert_eq!(
        (again.approved_by.as_str(), again.approved_at_ms),
        (BOB, approved.approved_at_ms)
    );
    assert_refused(
        refuse(&mut bob, &id, "second thoughts").await,
        Code::FailedPrecondition,
        &["already approved by", BOB],
    );
    assert_refused(
        approve(&mut bob, "00000000-0000-4000-8000-000000000000").await,
        Code::NotFound,
        &["outbox"],
    );
    sentinel(&sandbox, &mut alice).await;
    assert_eq!(received(&sandbox, &id).await.len(), 1);
    let inbox = inbox_ids(&sandbox, "charlie").await;
    assert_eq!(inbox.iter().filter(|i| **i == id).count(), 1);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_never_sent() {
    let sandbox = four_eyes_sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();
    let id = submit(&mut alice, confidential("unverified source"))
        .await
        .message_id;

    assert_refused(
        refuse(&mut bob, &id, "  ").await,
        Code::InvalidArgument,
        &["reason", "empty"],
    );
    assert_refused(
        refuse(&mut bob, &id, &"x".repeat(501)).await,
        Code::InvalidArgument,
        &["reason", "501 bytes is over the limit of 500 bytes"],
    );
    assert_refused(
        refuse(&mut bob, &id, "two\nlines").await,
        Code::InvalidArgument,
        &["reason", "U+000A (line feed)"],
    );
    let refused = refuse(&mut bob, &id, "source not yet vetted")
        .await
        .unwrap();
    assert_eq!(refused.refused_by, BOB);
    assert_eq!(refused.reason, "source not yet vetted");
    assert!(!refused.already_refused);
    let entry = outbox_status(&alice, &id, "refused").await;
    assert_eq!(
        (entry.refused_by.as_str(), entry.refusal_reason.as_str()),
        (BOB, "source not yet vetted")
    );
    assert!(entry.approved_by.is_empty());

    // Refusing again keeps the first refusal; it can no longer be approved.
    let again = refuse(&mut bob, &id, "other words").await.unwrap();
    assert!(again.already_refused);
    assert_eq!(again.reason, "source not yet vetted");
    assert_refused(
        approve(&mut bob, &id).await,
        Code::FailedPrecondition,
        &["refused by", "never sent"],
    );
    assert!(awaiting(&mut bob).await.is_empty());
    assert_refused(
        bob.list_approvals(pb::ListApprovalsRequest {
            message_id: id.clone(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["not awaiting approval"],
    );
    assert_not_sent(&sandbox, &mut alice, &id).await;
    assert_eq!(outbox_status(&alice, &id, "refused").await.attempts, 0);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_need_approval_when_configured_and_messages_below_the_level_do_not() {
    let sandbox = four_eyes_sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();

    // Below the level: sent at once, no approver recorded.
    let plain = submit(&mut alice, restricted("below the level")).await;
    assert_eq!(plain.status, "queued");
    assert!(plain.approval_reason.is_empty());
    let entry = outbox_status(&alice, &plain.message_id, "routed").await;
    assert!(entry.approved_by.is_empty() && entry.approval_reason.is_empty());
    delivered(&sandbox, "bravo", &plain.message_id).await;
    let records = received(&sandbox, &plain.message_id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reason, "");
    assert_refused(
        approve(&mut bob, &plain.message_id).await,
        Code::FailedPrecondition,
        &["did not need four-eyes approval"],
    );

    // A low-level operational plan needs approval by kind.
    let plan = submit(&mut alice, low_plan("controlled delivery")).await;
    assert_eq!(plan.status, "awaiting_approval");
    assert!(
        plan.approval_reason.contains("release.four_eyes_kinds")
            && !plan.approval_reason.contains("four_eyes_from"),
        "{plan:?}"
    );
    // The plan goes to bravo only; a later message to bravo arrives first.
    let later = submit(&mut alice, restricted("after the plan")).await;
    let inbox = delivered(&sandbox, "bravo", &later.message_id).await;
    assert!(!inbox.contains(&plan.message_id), "{inbox:?}");
    assert!(received(&sandbox, &plan.message_id).await.is_empty());

    approve(&mut bob, &plan.message_id).await.unwrap();
    delivered(&sandbox, "bravo", &plan.message_id).await;
    let records = received(&sandbox, &plan.message_id).await;
    assert_eq!(records.len(), 1);
    assert!(records[0].reason.contains(BOB), "{records:?}");
    let entry = outbox_status(&alice, &plan.message_id, "routed").await;
    assert_eq!(entry.approved_by, BOB);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_and_waiting_messages_survive_node_restarts() {
    let mut sandbox = four_eyes_sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let first = submit(&mut alice, confidential("first")).await.message_id;
    let second = submit(&mut alice, confidential("second")).await.message_id;

    // Both still wait after a restart.
    sandbox.stop_node("alpha").await.unwrap();
    sandbox.start_node("alpha").await.unwrap();
    sandbox.wait_ready().await.unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();
    let ids: Vec<String> = awaiting(&mut bob)
        .await
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(ids, vec![first.clone(), second.clone()]);

    // With the hub away, bob approves the first; the node restarts before
    // it could push it.
    sandbox.stop_hub().await.unwrap();
    let approved = approve(&mut bob, &first).await.unwrap();
    assert_eq!(approved.status, "queued");
    sandbox.stop_node("alpha").await.unwrap();
    sandbox.start_node("alpha").await.unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let entry = outbox_status(&alice, &first, "queued").await;
    assert_eq!(entry.approved_by, BOB);
    outbox_status(&alice, &second, "awaiting_approval").await;

    // The hub returns: the approved message goes, with its approver.
    sandbox.start_hub().await.unwrap();
    sandbox.wait_ready().await.unwrap();
    delivered(&sandbox, "charlie", &first).await;
    let records = received(&sandbox, &first).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].reason,
        format!("released by {BOB} after four-eyes approval")
    );
    assert_not_sent(&sandbox, &mut alice, &second).await;
    outbox_status(&alice, &second, "awaiting_approval").await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_message_only_its_submitter_could_approve() {
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]).release(
        "alpha",
        "four_eyes_from = \"SECRET\"\napprovers = [\"bob\"]",
    ))
    .await
    .unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();
    let mut req = confidential("top");
    req.labels.as_mut().unwrap().classification = C::Secret as i32;
    assert_refused(
        bob.submit(req).await,
        Code::FailedPrecondition,
        &["no officer other than you", "bob", "nothing was stored"],
    );
    let outbox = bob
        .list_outbox(pb::ListOutboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(outbox.is_empty(), "{outbox:?}");
    sandbox.shutdown().await.unwrap();
}

const EXE: &str = env!("CARGO_BIN_EXE_liaison-child");

/// Runs `liaison` as `who` against alpha's node, off the async runtime.
async fn liaison(sandbox: &Sandbox, who: &str, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.extend([
        "--server".into(),
        sandbox.node_url("alpha").unwrap(),
        "--certs".into(),
        sandbox.certs().display().to_string(),
        "--as".into(),
        format!("alpha/officer-{who}"),
    ]);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(EXE).args(&all).output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_approve_and_refuse_from_the_command_line() {
    let sandbox = four_eyes_sandbox().await;
    let message = [
        "--kind",
        "threat_assessment",
        "--classification",
        "CONFIDENTIAL",
        "--title",
        "container route",
        "--crime-area",
        "drugs",
        "--summary",
        "new route",
    ];

    // Submit: told it awaits a second officer, and why.
    let mut a = vec!["submit"];
    a.extend(message);
    let out = liaison(&sandbox, "alice", &a).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("awaiting approval by a second officer"),
        "{text}"
    );
    assert!(text.contains("release.four_eyes_from"), "{text}");
    let id = text.split_whitespace().next().unwrap().to_owned();
    let mut a = vec!["--output", "json", "submit"];
    a.extend(message);
    let out = liaison(&sandbox, "alice", &a).await;
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["status"], "awaiting_approval", "{json}");
    let refused_id = json["message_id"].as_str().unwrap().to_owned();

    // List, human and JSON.
    let out = liaison(&sandbox, "bob", &["approvals"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&id) && text.contains(&refused_id), "{text}");
    assert!(
        text.contains(ALICE) && text.contains("container route"),
        "{text}"
    );
    let out = liaison(&sandbox, "bob", &["--output", "json", "approvals"]).await;
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["message_id"], id.as_str());
    assert_eq!(lines[0]["submitted_by"], ALICE);
    assert_eq!(lines[0]["can_decide"], true);
    let out = liaison(&sandbox, "bob", &["approvals", &id]).await;
    assert!(
        stdout(&out).contains("summary: new route"),
        "{}",
        stdout(&out)
    );

    // Exit 4 for the submitter and for a non-approver.
    let out = liaison(&sandbox, "alice", &["approve", &id]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("you submitted"), "{}", stderr(&out));
    let out = liaison(&sandbox, "carol", &["approve", &id]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("alice, bob"), "{}", stderr(&out));

    // Bob approves one and refuses the other.
    let out = liaison(&sandbox, "bob", &["approve", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("approved {id}")),
        "{}",
        stdout(&out)
    );
    let out = liaison(&sandbox, "bob", &["refuse", &refused_id]).await;
    assert_eq!(out.status.code(), Some(2), "--reason is required");
    let out = liaison(
        &sandbox,
        "bob",
        &[
            "--output",
            "json",
            "refuse",
            &refused_id,
            "--reason",
            "duplicate of the other",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["refused_by"], BOB);
    // Exit 3: the approved one can no longer be refused.
    let out = liaison(&sandbox, "bob", &["refuse", &id, "--reason", "late"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // The outbox shows both states.
    delivered(&sandbox, "charlie", &id).await;
    let alice = sandbox.officer("alpha", "alice").await.unwrap();
    outbox_status(&alice, &id, "routed").await;
    let out = liaison(&sandbox, "alice", &["outbox"]).await;
    let text = stdout(&out);
    assert!(
        text.contains(&format!("four-eyes: approved by {BOB}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("refused by {BOB}")) && text.contains("duplicate of the other"),
        "{text}"
    );
    let out = liaison(&sandbox, "alice", &["--output", "json", "outbox"]).await;
    let entries: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let approved = entries
        .iter()
        .find(|e| e["message_id"] == id.as_str())
        .unwrap();
    assert_eq!(approved["approved_by"], BOB);
    let refused = entries
        .iter()
        .find(|e| e["message_id"] == refused_id.as_str())
        .unwrap();
    assert_eq!(refused["status"], "refused");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_records_only_an_officer_of_the_submitting_body_as_approver() {
    let sandbox = crate::common::hub_only().await;
    let mut hub = sandbox.hub_as("alpha/node").await.unwrap();
    let request = |approved_by: &str| {
        let env = crate::common::envelope(
            "alpha",
            labels(K::ThreatAssessment, C::Confidential, &["drugs"]),
            &assessment("approved elsewhere"),
        );
        pb::SubmitRequest {
            targets: Vec::new(),
            envelope: Some(env),
            approved_by: approved_by.to_owned(),
            traceparent: String::new(),
        }
    };
    for (approver, needles) in [
        ("bob", &["approved_by", "not a liaison identity"][..]),
        (
            "spiffe://liaison.test/org/bravo/officer/bob",
            &["approved_by", "not an officer of alpha"][..],
        ),
        (
            "spiffe://liaison.test/org/alpha/node/node",
            &["approved_by", "not an officer of alpha"][..],
        ),
        (
            "spiffe://other.test/org/alpha/officer/bob",
            &["approved_by", "not an officer of alpha"][..],
        ),
    ] {
        let req = request(approver);
        let id = req
            .envelope
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()
            .message_id
            .clone();
        assert_refused(hub.submit(req).await, Code::InvalidArgument, needles);
        assert!(received(&sandbox, &id).await.is_empty(), "{approver}");
    }
    let req = request(BOB);
    let id = req
        .envelope
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap()
        .message_id
        .clone();
    hub.submit(req).await.unwrap();
    let records = received(&sandbox, &id).await;
    assert_eq!(
        records[0].reason,
        format!("released by {BOB} after four-eyes approval")
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_when_the_node_would_hold_a_message_for_approval() {
    let sandbox = four_eyes_sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let explain = |r: pb::OfficerSubmitRequest| pb::OfficerExplainRequest {
        labels: r.labels,
        body: r.body,
    };
    let held = alice
        .explain(explain(confidential("explain me")))
        .await
        .unwrap()
        .into_inner();
    assert!(held.approval_needed.contains("four_eyes_from"), "{held:?}");
    let plan = alice
        .explain(explain(low_plan("explain the plan")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        plan.approval_needed.contains("operational_plan"),
        "{plan:?}"
    );
    let open = alice
        .explain(explain(restricted("explain the alert")))
        .await
        .unwrap()
        .into_inner();
    assert!(open.approval_needed.is_empty(), "{open:?}");
    // Explaining stores and sends nothing.
    assert!(crate::common::outbox_ids(&sandbox, "alpha")
        .await
        .is_empty());
    sandbox.shutdown().await.unwrap();
}

/// alpha's plans as its node lists them (ended ones included).
async fn own_plans(officer: &mut OfficerClient<Channel>) -> Vec<pb::OwnPlan> {
    officer
        .list_plans(pb::ListPlansRequest { all: true })
        .await
        .unwrap()
        .into_inner()
        .plans
}

/// An update of `plan_id`: `low_plan` again, titled `title`.
fn plan_update(plan_id: &str, title: &str) -> pb::OfficerSubmitRequest {
    let mut req = low_plan(title);
    if let Some(l) = req.labels.as_mut() {
        l.plan = Some(pb::PlanLabels {
            plan_id: plan_id.to_owned(),
            action: pb::PlanAction::PlanUpdate as i32,
            ..Default::default()
        });
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_version_waiting_for_approval_changes_the_plan_only_once_routed() {
    let sandbox = four_eyes_sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("alpha", "bob").await.unwrap();
    // Version 1 waits: the plan is pending, and in nobody's calendar.
    let v1 = submit(&mut alice, low_plan("Operation Harmattan")).await;
    assert_eq!(v1.status, "awaiting_approval");
    let plans = own_plans(&mut alice).await;
    assert_eq!(plans.len(), 1);
    assert_eq!(
        (
            plans[0].status.as_str(),
            plans[0].version,
            plans[0].outbox_status.as_str()
        ),
        ("pending", 1, "awaiting_approval")
    );
    approve(&mut bob, &v1.message_id).await.unwrap();
    outbox_status(&alice, &v1.message_id, "routed").await;
    delivered(&sandbox, "bravo", &v1.message_id).await;

    // Version 2 waits; the plan in force is still version 1.
    let v2 = submit(&mut alice, plan_update(&v1.message_id, "Harmattan, moved")).await;
    assert_eq!(v2.status, "awaiting_approval");
    let plans = own_plans(&mut alice).await;
    assert_eq!(
        (
            plans[0].status.as_str(),
            plans[0].version,
            plans[0].title.as_str()
        ),
        ("active", 1, "Operation Harmattan")
    );
    let waiting: Vec<(u32, &str)> = plans[0]
        .waiting
        .iter()
        .map(|w| (w.version, w.outbox_status.as_str()))
        .collect();
    assert_eq!(waiting, vec![(2, "awaiting_approval")]);

    // Refused: the plan stands as it was, with nothing waiting.
    refuse(&mut bob, &v2.message_id, "not yet agreed")
        .await
        .unwrap();
    let plans = own_plans(&mut alice).await;
    assert_eq!(
        (
            plans[0].version,
            plans[0].title.as_str(),
            plans[0].waiting.len()
        ),
        (1, "Operation Harmattan", 0)
    );
    assert_not_sent(&sandbox, &mut alice, &v2.message_id).await;

    // The next version follows version 1 and takes number 3; approved and
    // routed, it is the plan.
    let v3 = submit(&mut alice, plan_update(&v1.message_id, "Harmattan, agreed")).await;
    approve(&mut bob, &v3.message_id).await.unwrap();
    outbox_status(&alice, &v3.message_id, "routed").await;
    let plans = own_plans(&mut alice).await;
    assert_eq!(
        (
            plans[0].version,
            plans[0].title.as_str(),
            plans[0].waiting.len()
        ),
        (3, "Harmattan, agreed", 0)
    );
    delivered(&sandbox, "bravo", &v3.message_id).await;
}
