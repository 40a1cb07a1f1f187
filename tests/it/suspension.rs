//! Suspending a peer by a governance reload: it receives nothing new, what
//! is queued for it is held (not dropped) and reaches it once reinstated,
//! and its open subscription ends at once.

use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};
use tonic::Code;

use crate::common::{
    admin, alert, assert_refused, audit_records, envelope, hub_only, labels, submit_as,
    write_governance, GOVERNANCE, SETTLE,
};

fn bravo_suspended() -> String {
    let active = "id = \"bravo\"\nname = \"Bravo\"\nstatus = \"member\"\n";
    assert!(GOVERNANCE.contains(active));
    GOVERNANCE.replace(active, &format!("{active}state = \"suspended\"\n"))
}

async fn reload(sandbox: &liaison_federation::Sandbox) -> pb::ReloadPolicyResponse {
    admin(sandbox, "alpha/admin-admin")
        .await
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_peer_gets_nothing_new_and_its_queue_is_held_until_reinstated() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let queued_id = submit_as(
        &mut alpha,
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("queued"),
    )
    .await;

    // bravo is subscribed (and reads nothing yet) when it is suspended: the
    // open stream ends with the reason.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    write_governance(&sandbox, &bravo_suspended());
    let reloaded = reload(&sandbox).await;
    assert!(reloaded.changed);
    let ended = tokio::time::timeout(SETTLE, stream.message())
        .await
        .expect("the stream ends");
    assert_refused(
        ended,
        Code::PermissionDenied,
        &["bravo is suspended", "held"],
    );

    // A new subscription is refused; a new message is withheld by peer.state.
    assert_refused(
        bravo.subscribe(pb::SubscribeRequest { after_seq: 0 }).await,
        Code::PermissionDenied,
        &["bravo is suspended"],
    );
    let during = envelope(
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("during"),
    );
    let decisions = alpha
        .submit(pb::SubmitRequest {
            targets: Vec::new(),
            envelope: Some(during),
            approved_by: String::new(),
            traceparent: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    let to_bravo = decisions.iter().find(|d| d.recipient == "bravo").unwrap();
    assert_eq!(to_bravo.rule, "peer.state");
    let policy = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "policy".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        policy[0]
            .reason
            .contains("bravo suspended: its queue is held"),
        "{}",
        policy[0].reason
    );

    // Reinstated: the held message arrives, the withheld one never does.
    write_governance(&sandbox, GOVERNANCE);
    reload(&sandbox).await;
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let d = tokio::time::timeout(SETTLE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.seq, 1);
    assert_eq!(d.envelope.unwrap().labels.unwrap().message_id, queued_id);
    bravo
        .acknowledge(pb::AcknowledgeRequest {
            seq: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let nothing_more =
        tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await;
    assert!(
        nothing_more.is_err(),
        "only the held message was queued for bravo"
    );
    sandbox.shutdown().await.unwrap();
}

async fn set_state(
    sandbox: &liaison_federation::Sandbox,
    stem: &str,
    body: &str,
    state: &str,
) -> Result<pb::SetBodyStateResponse, tonic::Status> {
    admin(sandbox, stem)
        .await
        .set_body_state(pb::SetBodyStateRequest {
            body: body.into(),
            state: state.into(),
            reason: "under review by the governing bodies".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_suspends_a_body_at_once_and_it_stays_suspended_across_a_restart() {
    let mut sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let queued = envelope(
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("queued"),
    );
    let queued_id = queued.labels.as_ref().unwrap().message_id.clone();
    alpha
        .submit(pb::SubmitRequest {
            envelope: Some(queued),
            ..Default::default()
        })
        .await
        .unwrap();

    let r = set_state(&sandbox, "alpha/admin-admin", "bravo", "suspended")
        .await
        .unwrap();
    assert!(
        r.version.starts_with(&format!("{}+", r.previous_version)),
        "{r:?}"
    );
    // Refusals: not an admin of the hub body, the hub body itself, bad input.
    assert_refused(
        set_state(&sandbox, "bravo/admin-admin", "charlie", "suspended").await,
        Code::PermissionDenied,
        &["may not administer"],
    );
    assert_refused(
        set_state(&sandbox, "alpha/admin-admin", "alpha", "suspended").await,
        Code::FailedPrecondition,
        &["runs the hub"],
    );
    assert_refused(
        set_state(&sandbox, "alpha/admin-admin", "bravo", "asleep").await,
        Code::InvalidArgument,
        &["state", "active, suspended or revoked"],
    );

    // It holds across a restart: the override is durable.
    sandbox.stop_hub().await.unwrap();
    sandbox.start_hub().await.unwrap();
    sandbox.wait_ready().await.unwrap();
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    assert_refused(
        bravo.subscribe(pb::SubscribeRequest { after_seq: 0 }).await,
        Code::PermissionDenied,
        &["bravo is suspended"],
    );
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let during = envelope(
        "alpha",
        labels(K::Alert, C::Restricted, &["drugs"]),
        &alert("during"),
    );
    let decisions = alpha
        .submit(pb::SubmitRequest {
            envelope: Some(during),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let to_bravo = decisions
        .decisions
        .iter()
        .find(|d| d.recipient == "bravo")
        .unwrap();
    assert_eq!(to_bravo.rule, "peer.state");
    assert!(
        decisions.policy_version.contains('+'),
        "the override is in the version"
    );

    // Reinstated: the held message arrives.
    set_state(&sandbox, "alpha/admin-admin", "bravo", "active")
        .await
        .unwrap();
    let mut stream = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let d = tokio::time::timeout(SETTLE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.unwrap().labels.unwrap().message_id, queued_id);
    let records = audit_records(
        &sandbox,
        pb::AuditQuery {
            rule: "peer.state".into(),
            event: "policy".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(records.len(), 2);
    assert!(
        records[0].reason.starts_with("bravo suspended"),
        "{}",
        records[0].reason
    );
    assert!(
        records[1].reason.starts_with("bravo reinstated"),
        "{}",
        records[1].reason
    );
    assert_eq!(
        records[0].actor,
        "spiffe://liaison.test/org/alpha/admin/admin"
    );
    sandbox.shutdown().await.unwrap();
}

/// `A` and `B` of a policy record's `version A -> B`, if it says so.
fn version_step(reason: &str) -> Option<(String, String)> {
    let rest = &reason[reason.find("version ")? + "version ".len()..];
    let (from, rest) = rest.split_once(" -> ")?;
    let to = rest.split(';').next()?.trim();
    Some((from.to_owned(), to.to_owned()))
}

/// Whether alpha's next alert is withheld from `body` by its state.
fn withheld_by_state(resp: &pb::SubmitResponse, body: &str) -> bool {
    resp.decisions
        .iter()
        .find(|d| d.recipient == body)
        .is_some_and(|d| d.rule == "peer.state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_state_changes_racing_each_other_lose_nothing() {
    let sandbox = hub_only().await;
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        // Each round: bravo and charlie change state at once, while the
        // governance file changes and is reloaded twice.
        let suspend = round % 2 == 0;
        let state = if suspend { "suspended" } else { "active" };
        let file = format!("{GOVERNANCE}\n# round {round}\n");
        write_governance(&sandbox, &file);
        let (b, c, r1, r2) = tokio::join!(
            set_state(&sandbox, "alpha/admin-admin", "bravo", state),
            set_state(&sandbox, "alpha/admin-admin", "charlie", state),
            reload(&sandbox),
            reload(&sandbox),
        );
        b.unwrap();
        c.unwrap();
        assert!(
            r1.changed || r2.changed,
            "round {round}: the new file is loaded"
        );
        // Both state changes are in force, and so is the new file: the next
        // decision shows each.
        let resp = alpha
            .submit(pb::SubmitRequest {
                envelope: Some(envelope(
                    "alpha",
                    labels(K::Alert, C::Restricted, &["drugs"]),
                    &alert(&format!("round {round}")),
                )),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for body in ["bravo", "charlie"] {
            assert_eq!(
                withheld_by_state(&resp, body),
                suspend,
                "round {round}: {body} should be {state}: {resp:?}"
            );
        }
        let in_force = admin(&sandbox, "alpha/admin-admin")
            .await
            .get_policy(pb::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version;
        assert_eq!(resp.policy_version, in_force, "round {round}");
    }
    // Every change took the version in force when it ran to a new one: the
    // log's versions form one unbroken chain, and the last is in force.
    let records = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "policy".into(),
            ..Default::default()
        },
    )
    .await;
    let steps: Vec<(String, String)> = records
        .iter()
        .filter_map(|r| version_step(&r.reason))
        .collect();
    assert!(steps.len() >= ROUNDS * 3, "{steps:?}");
    for pair in steps.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "a change started from a version that was not in force: {steps:?}"
        );
    }
    for r in &records {
        if let Some((_, to)) = version_step(&r.reason) {
            assert_eq!(
                r.policy_version, to,
                "each record is stamped with its result"
            );
        }
    }
    sandbox.shutdown().await.unwrap();
}
