//! Plans and deconfliction end to end: officers submit, update, close and
//! cancel plans at their nodes; the hub finds overlaps with other bodies'
//! active plans from keyed hashes of the targets (never the targets) and
//! sends both originators a notice over the ordinary delivery stream, full
//! when each plan may be released to the other body, blind otherwise; the
//! officers see their plans, notices and the calendar, acknowledge, resolve
//! and ask for contact. A plan and its update survive a hub restart.

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{assert_refused, audit_records, envelope, SETTLE};

/// Three members and an observer; alpha runs the hub. bravo is cleared to
/// RESTRICTED, charlie takes no operational plans, the observer only
/// threat assessments.
const GOVERNANCE: &str = r#"
version = 1
federation = "liaison.test"
hub_body = "alpha"

[observers]
kinds = ["threat_assessment"]
max_classification = "OFFICIAL_USE"

[[body]]
id = "alpha"
name = "Alpha"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "operational_plan", "strategic_plan", "alert"]
mandate = ["migrant_smuggling", "maritime_crime", "drugs"]

[[body]]
id = "bravo"
name = "Bravo"
status = "member"
clearance = "RESTRICTED"
kinds = ["threat_assessment", "operational_plan", "strategic_plan", "alert"]
mandate = ["migrant_smuggling", "maritime_crime", "drugs"]

[[body]]
id = "charlie"
name = "Charlie"
status = "member"
clearance = "CONFIDENTIAL"
kinds = ["threat_assessment", "alert"]
mandate = ["migrant_smuggling", "maritime_crime", "drugs"]

[[body]]
id = "obs"
name = "Observer"
status = "observer"
clearance = "OFFICIAL_USE"
kinds = ["threat_assessment"]
mandate = ["drugs"]
"#;

const DAY: i64 = 86_400_000;

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions::new(GOVERNANCE))
        .await
        .unwrap()
}

/// A plan's window from `from` days to `to` days from now.
fn window(from: i64, to: i64) -> (i64, i64) {
    let now = liaison_types::now_ms();
    (now + from * DAY, now + to * DAY)
}

/// An operational plan's labels and body.
fn operational(
    lead: &str,
    class: pb::Classification,
    areas: &[&str],
    regions: &[&str],
    (start, end): (i64, i64),
    title: &str,
) -> (pb::Labels, pb::Body) {
    let labels = pb::Labels {
        kind: pb::Kind::OperationalPlan as i32,
        classification: class as i32,
        crime_areas: areas.iter().map(|a| (*a).to_owned()).collect(),
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
        priority: pb::Priority::Routine as i32,
        plan: Some(pb::PlanLabels {
            contact: format!("{lead} operations desk"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = pb::Body {
        title: title.to_owned(),
        content: Some(pb::body::Content::OperationalPlan(pb::OperationalPlan {
            summary: "joint patrols and interceptions".into(),
            window_start_ms: start,
            window_end_ms: end,
            lead_body: lead.to_owned(),
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            crime_areas: areas.iter().map(|a| (*a).to_owned()).collect(),
            target_ids: Vec::new(),
        })),
    };
    (labels, body)
}

fn target(kind: &str, value: &str) -> pb::PlanTarget {
    pb::PlanTarget {
        kind: kind.to_owned(),
        value: value.to_owned(),
    }
}

/// Submits a plan (or a version of one) as `body`'s officer; returns the
/// plan id and the message id.
async fn submit_plan(
    officer: &mut OfficerClient<Channel>,
    (labels, body): (pb::Labels, pb::Body),
    targets: Vec<pb::PlanTarget>,
) -> Result<(String, String), tonic::Status> {
    let plan_id = labels
        .plan
        .as_ref()
        .map(|p| p.plan_id.clone())
        .unwrap_or_default();
    let resp = officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            labels: Some(labels),
            body: Some(body),
            targets,
        })
        .await?
        .into_inner();
    let plan_id = if plan_id.is_empty() {
        resp.message_id.clone()
    } else {
        plan_id
    };
    Ok((plan_id, resp.message_id))
}

/// `plan`'s labels naming an existing plan: the next version.
fn version_of(plan_id: &str, (mut labels, body): (pb::Labels, pb::Body)) -> (pb::Labels, pb::Body) {
    labels.plan = Some(pb::PlanLabels {
        plan_id: plan_id.to_owned(),
        action: pb::PlanAction::PlanUpdate as i32,
        ..Default::default()
    });
    (labels, body)
}

/// The body's plans, waiting until `ready` holds for them.
async fn plans_when(
    officer: &OfficerClient<Channel>,
    what: &str,
    ready: impl Fn(&[pb::OwnPlan]) -> bool,
) -> Vec<pb::OwnPlan> {
    wait_until(what, SETTLE, || {
        let mut officer = officer.clone();
        let ready = &ready;
        async move {
            let plans = officer
                .list_plans(pb::ListPlansRequest { all: true })
                .await
                .ok()?
                .into_inner()
                .plans;
            ready(&plans).then_some(plans)
        }
    })
    .await
    .unwrap()
}

/// The notices of `plan_id` among `plans`.
fn notices_of<'a>(plans: &'a [pb::OwnPlan], plan_id: &str) -> Vec<&'a pb::NoticeEntry> {
    plans
        .iter()
        .filter(|p| p.plan_id == plan_id)
        .flat_map(|p| p.notices.iter())
        .collect()
}

fn notice(e: &pb::NoticeEntry) -> &pb::DeconflictionNotice {
    e.notice.as_ref().unwrap()
}

/// Waits until `plan_id`'s notice has `change`; returns it.
async fn notice_when(
    officer: &OfficerClient<Channel>,
    plan_id: &str,
    change: pb::NoticeChange,
) -> pb::NoticeEntry {
    let plans = plans_when(
        officer,
        &format!("plan {plan_id} has a notice {change:?}"),
        |plans| {
            notices_of(plans, plan_id)
                .iter()
                .any(|n| notice(n).change == change as i32)
        },
    )
    .await;
    notices_of(&plans, plan_id)
        .into_iter()
        .find(|n| notice(n).change == change as i32)
        .unwrap()
        .clone()
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.extend(bytes);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_that_may_see_each_other_get_full_notices_and_the_hub_never_holds_a_target() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let imo = "IMO 9074729";
    let (a_plan, a_msg) = submit_plan(
        &mut alice,
        operational(
            "alpha",
            pb::Classification::Restricted,
            &["migrant_smuggling"],
            &["med-central"],
            window(1, 21),
            "Operation Sentinel",
        ),
        vec![target("imo", imo), target("phone", "+33 6 12 34 56 78")],
    )
    .await
    .unwrap();
    // The same vessel in another spelling: the nodes normalise it alike.
    let (b_plan, _) = submit_plan(
        &mut bob,
        operational(
            "bravo",
            pb::Classification::Restricted,
            &["migrant_smuggling", "drugs"],
            &["med-central", "west-africa"],
            window(7, 28),
            "Operation Tidewater",
        ),
        vec![target("imo", "9074729")],
    )
    .await
    .unwrap();

    let a = notice_when(&alice, &a_plan, pb::NoticeChange::OverlapFound).await;
    let b = notice_when(&bob, &b_plan, pb::NoticeChange::OverlapFound).await;
    for (e, other_body, other_plan, other_title) in [
        (&a, "bravo", &b_plan, "Operation Tidewater"),
        (&b, "alpha", &a_plan, "Operation Sentinel"),
    ] {
        let n = notice(e);
        assert!(!n.blind, "{n:?}");
        assert_eq!(n.kind, pb::OverlapKind::Conflict as i32);
        assert_eq!(e.state, "open");
        assert_eq!(n.other_body, other_body);
        assert_eq!(&n.other_plan_id, other_plan);
        assert_eq!(n.other_title, other_title);
        assert_eq!(n.regions, vec!["med-central".to_owned()]);
        assert_eq!(n.crime_areas, vec!["migrant_smuggling".to_owned()]);
        assert_eq!(n.target_kinds, vec!["imo".to_owned()]);
        assert_eq!(n.contact, format!("{other_body} operations desk"));
        // The common period: the later start, the earlier end.
        assert!(n.overlap_start_ms < n.overlap_end_ms);
    }
    assert_eq!(notice(&a).reference, notice(&b).reference);
    assert_eq!(
        notice(&a).overlap_start_ms,
        notice(&b).overlap_start_ms,
        "both sides see one period"
    );

    // Each sees the other's plan in its calendar (it was delivered).
    let calendar = wait_until("bravo's calendar shows alpha's plan", SETTLE, || {
        let mut bob = bob.clone();
        let a_plan = a_plan.clone();
        async move {
            let plans = bob
                .plan_calendar(pb::PlanCalendarRequest {
                    region: "med-central".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .plans;
            plans.iter().any(|p| p.plan_id == a_plan).then_some(plans)
        }
    })
    .await
    .unwrap();
    let seen = calendar.iter().find(|p| p.plan_id == a_plan).unwrap();
    assert_eq!(seen.origin, "alpha");
    assert_eq!(seen.status, "active");
    assert_eq!(seen.version, 1);
    // Filters that exclude it.
    let none = bob
        .plan_calendar(pb::PlanCalendarRequest {
            region: "west-africa".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(none.iter().all(|p| p.plan_id != a_plan));

    // The node keeps the targets normalised; the hub never holds them.
    let own = plans_when(&alice, "alpha lists its plan", |p| !p.is_empty()).await;
    let mine = own.iter().find(|p| p.plan_id == a_plan).unwrap();
    let kept: Vec<(String, String)> = mine
        .targets
        .iter()
        .map(|t| (t.kind.clone(), t.value.clone()))
        .collect();
    assert!(kept.contains(&("imo".into(), "9074729".into())), "{kept:?}");
    assert!(
        kept.contains(&("phone".into(), "+33612345678".into())),
        "{kept:?}"
    );
    let hub = all_bytes(&sandbox.dir().join("hub-data"));
    for clear in ["9074729", "612345678"] {
        assert!(
            !contains(&hub, clear),
            "the hub's store holds {clear} in clear"
        );
    }

    // The audit log: each side's record, and the desk's naming the rule.
    let records = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "deconflicted".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(records.iter().all(|r| r.rule == "deconfliction.full"));
    let desk: Vec<_> = records
        .iter()
        .filter(|r| r.origin == "alpha" && r.recipient.is_empty())
        .collect();
    assert_eq!(desk.len(), 1, "{records:?}");
    assert!(desk[0].reason.contains("each plan may be released"));
    assert!(records.iter().any(|r| r.recipient == "bravo"));

    // alpha retracts its plan's message: it leaves bravo's calendar with
    // the content.
    alice
        .retract(pb::OfficerRetractRequest {
            message_id: a_msg.clone(),
            reason: "sent in error".into(),
        })
        .await
        .unwrap();
    wait_until(
        "alpha's retracted plan leaves bravo's calendar",
        SETTLE,
        || {
            let mut bob = bob.clone();
            let a_plan = a_plan.clone();
            async move {
                let plans = bob
                    .plan_calendar(pb::PlanCalendarRequest {
                        include_ended: true,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .plans;
                plans.iter().all(|p| p.plan_id != a_plan).then_some(())
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_withheld_from_the_other_body_gives_blind_notices_that_reveal_nothing() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    // CONFIDENTIAL: above bravo's clearance. They share only the vessel
    // (different crime areas) in the same sea.
    let (a_plan, a_msg) = submit_plan(
        &mut alice,
        operational(
            "alpha",
            pb::Classification::Confidential,
            &["maritime_crime"],
            &["gulf-of-guinea"],
            window(2, 30),
            "Operation Deepwater",
        ),
        vec![target("imo", "9074729")],
    )
    .await
    .unwrap();
    let (b_plan, _) = submit_plan(
        &mut bob,
        operational(
            "bravo",
            pb::Classification::Restricted,
            &["drugs"],
            &["gulf-of-guinea"],
            window(10, 40),
            "Operation Harbour",
        ),
        vec![target("imo", "IMO9074729")],
    )
    .await
    .unwrap();
    let a = notice_when(&alice, &a_plan, pb::NoticeChange::OverlapFound).await;
    let b = notice_when(&bob, &b_plan, pb::NoticeChange::OverlapFound).await;
    for e in [&a, &b] {
        let n = notice(e);
        assert!(n.blind, "{n:?}");
        assert!(n.other_plan_id.is_empty() && n.other_body.is_empty() && n.other_title.is_empty());
        assert!(n.other_message_id.is_empty() && n.other_plan_version == 0);
        assert_eq!((n.overlap_start_ms, n.overlap_end_ms), (0, 0));
        assert!(n.regions.is_empty() && n.countries.is_empty());
        assert!(n.crime_areas.is_empty() && n.target_kinds.is_empty());
        assert!(
            n.contact.contains("deconfliction desk of alpha"),
            "{}",
            n.contact
        );
        assert!(n.contact.contains(&n.reference));
    }
    // Nothing bravo can read names alpha's plan: not its notice, not its
    // calendar, not its auditor's view of the log.
    let calendar = bob
        .plan_calendar(pb::PlanCalendarRequest {
            include_ended: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(calendar.iter().all(|p| p.plan_id != a_plan));
    let mut bravo_auditor = sandbox.auditor("bravo").await.unwrap();
    let mut stream = bravo_auditor
        .list(pb::AuditQuery::default())
        .await
        .unwrap()
        .into_inner();
    use futures::StreamExt;
    while let Some(r) = stream.next().await {
        let r = r.unwrap();
        let text = format!("{r:?}");
        assert!(
            !text.contains(&a_plan) && !text.contains(&a_msg),
            "bravo's auditor reads a record naming alpha's plan: {r:?}"
        );
    }
    // The desk's record names both and the rule that made it blind.
    let desk = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "deconflicted".into(),
            rule: "deconfliction.blind".into(),
            ..Default::default()
        },
    )
    .await;
    let desk = desk
        .iter()
        .find(|r| r.origin == "alpha" && r.recipient.is_empty())
        .expect("the desk's record");
    assert!(desk.reason.contains(&a_plan) && desk.reason.contains(&b_plan));
    assert!(
        desk.reason.contains("recipient.clearance"),
        "{}",
        desk.reason
    );

    // bravo asks the desk for contact: an alert to alpha (the hub's body).
    let asked = bob
        .request_contact(pb::RequestContactRequest {
            reference: notice(&b).reference.clone(),
            text: "we board her on day 12; who else is interested?".into(),
            message_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut alice2 = alice.clone();
    wait_until("the desk's inbox holds the contact request", SETTLE, || {
        let mut alice2 = alice2.clone();
        let id = asked.message_id.clone();
        async move {
            alice2
                .list_inbox(pb::ListInboxRequest {
                    unread_only: false,
                    limit: 100,
                })
                .await
                .ok()?
                .into_inner()
                .entries
                .into_iter()
                .find(|e| e.message_id == id)
        }
    })
    .await
    .unwrap();
    let shown = alice2
        .show(pb::ShowRequest {
            message_id: asked.message_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.body.unwrap().title.contains(&notice(&b).reference));

    // Acknowledge, then resolve with a note; both are kept.
    let acked = bob
        .update_notice(pb::UpdateNoticeRequest {
            reference: notice(&b).reference.clone(),
            state: "acknowledged".into(),
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.state, "acknowledged");
    assert!(acked.handled_by.ends_with("/officer/bob"));
    assert_refused(
        bob.update_notice(pb::UpdateNoticeRequest {
            reference: notice(&b).reference.clone(),
            state: "resolved".into(),
            note: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["note"],
    );
    let resolved = bob
        .update_notice(pb::UpdateNoticeRequest {
            reference: notice(&b).reference.clone(),
            state: "resolved".into(),
            note: "desk confirmed: boarding moved to day 14".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.state, "resolved");
    assert_refused(
        bob.update_notice(pb::UpdateNoticeRequest {
            reference: notice(&b).reference.clone(),
            state: "acknowledged".into(),
            note: String::new(),
        })
        .await,
        Code::FailedPrecondition,
        &["already resolved"],
    );
    assert_refused(
        bob.update_notice(pb::UpdateNoticeRequest {
            reference: "dx-0000000000000000".into(),
            state: "acknowledged".into(),
            note: String::new(),
        })
        .await,
        Code::NotFound,
        &["dx-0000000000000000"],
    );
    drop(alice2);
    let _ = &mut alice;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_create_and_clear_overlaps_and_an_ended_plan_does_not_change() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let plan = |regions: &[&str], title: &str| {
        operational(
            "alpha",
            pb::Classification::Restricted,
            &["drugs"],
            regions,
            window(1, 10),
            title,
        )
    };
    let (a_plan, _) = submit_plan(&mut alice, plan(&["sahel"], "Operation Dune"), vec![])
        .await
        .unwrap();
    // Touching windows do not overlap: bravo's starts when alpha's ends.
    let (b_plan, _) = submit_plan(
        &mut bob,
        operational(
            "bravo",
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            (window(1, 10).1, window(1, 20).1),
            "Operation Oasis",
        ),
        vec![],
    )
    .await
    .unwrap();
    plans_when(&bob, "bravo's plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == b_plan && p.outbox_status == "routed")
    })
    .await;
    // alpha's version 2 moves into bravo's window: an overlap.
    let mut v2 = plan(&["sahel"], "Operation Dune (extended)");
    if let Some(pb::body::Content::OperationalPlan(p)) = &mut v2.1.content {
        p.window_end_ms = window(1, 15).1;
    }
    submit_plan(&mut alice, version_of(&a_plan, v2), vec![])
        .await
        .unwrap();
    let found = notice_when(&bob, &b_plan, pb::NoticeChange::OverlapFound).await;
    assert_eq!(notice(&found).other_plan_version, 2);
    // Version 3 moves elsewhere: the overlap is cleared on both sides.
    submit_plan(
        &mut alice,
        version_of(&a_plan, plan(&["horn-of-africa"], "Operation Dune")),
        vec![],
    )
    .await
    .unwrap();
    let cleared = notice_when(&bob, &b_plan, pb::NoticeChange::OverlapCleared).await;
    assert_eq!(cleared.state, "cleared");
    assert_eq!(notice(&cleared).reference, notice(&found).reference);
    notice_when(&alice, &a_plan, pb::NoticeChange::OverlapCleared).await;
    // Back again (version 4), then cancelled: found, then cleared.
    let mut v4 = plan(&["sahel"], "Operation Dune");
    if let Some(pb::body::Content::OperationalPlan(p)) = &mut v4.1.content {
        p.window_end_ms = window(1, 15).1;
    }
    submit_plan(&mut alice, version_of(&a_plan, v4), vec![])
        .await
        .unwrap();
    plans_when(&bob, "bravo's notice is open again", |p| {
        notices_of(p, &b_plan)
            .iter()
            .any(|n| n.state == "open" && notice(n).other_plan_version == 4)
    })
    .await;
    let cancelled = alice
        .change_plan(pb::ChangePlanRequest {
            plan_id: a_plan.clone(),
            action: pb::PlanAction::PlanCancel as i32,
            message_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, "queued");
    plans_when(&bob, "bravo's notice is cleared by the cancellation", |p| {
        notices_of(p, &b_plan)
            .iter()
            .any(|n| n.state == "cleared" && notice(n).other_plan_version == 5)
    })
    .await;
    // bravo received every version, the cancellation last.
    let seen = wait_until("bravo's calendar shows the cancellation", SETTLE, || {
        let mut bob = bob.clone();
        let a_plan = a_plan.clone();
        async move {
            bob.plan_calendar(pb::PlanCalendarRequest {
                include_ended: true,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner()
            .plans
            .into_iter()
            .find(|p| p.plan_id == a_plan && p.status == "cancelled")
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.version, 5);
    // An ended plan does not change, at the node.
    assert_refused(
        submit_plan(
            &mut alice,
            version_of(&a_plan, plan(&["sahel"], "again")),
            vec![],
        )
        .await,
        Code::FailedPrecondition,
        &["cancelled"],
    );
    assert_refused(
        alice
            .change_plan(pb::ChangePlanRequest {
                plan_id: a_plan.clone(),
                action: pb::PlanAction::PlanClose as i32,
                message_id: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        &["cancelled"],
    );
    // A plan of another body is not this node's to change.
    assert_refused(
        bob.change_plan(pb::ChangePlanRequest {
            plan_id: a_plan.clone(),
            action: pb::PlanAction::PlanClose as i32,
            message_id: String::new(),
        })
        .await,
        Code::NotFound,
        &[&a_plan],
    );
    let listed = alice
        .list_plans(pb::ListPlansRequest { all: false })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(
        listed.iter().all(|p| p.plan_id != a_plan),
        "an ended plan is listed only with all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_and_audits_a_plan_changed_out_of_turn() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let (a_plan, _) = submit_plan(
        &mut alice,
        operational(
            "alpha",
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            window(1, 10),
            "Operation Dune",
        ),
        vec![],
    )
    .await
    .unwrap();
    plans_when(&alice, "alpha's plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.outbox_status == "routed")
    })
    .await;
    let (labels, body) = operational(
        "bravo",
        pb::Classification::Restricted,
        &["drugs"],
        &["sahel"],
        window(1, 10),
        "Not yours",
    );
    let as_version = |origin: &str, version: u32, action: pb::PlanAction| {
        let mut l = labels.clone();
        l.plan = Some(pb::PlanLabels {
            plan_id: a_plan.clone(),
            version,
            action: action as i32,
            contact: String::new(),
        });
        pb::SubmitRequest {
            envelope: Some(envelope(origin, l, &body)),
            ..Default::default()
        }
    };
    // bravo's node sends a version of alpha's plan.
    let mut bravo_node = sandbox.hub_as("bravo/node").await.unwrap();
    let refused = as_version("bravo", 2, pb::PlanAction::PlanUpdate);
    let refused_id = refused
        .envelope
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap()
        .message_id
        .clone();
    assert_refused(
        bravo_node.submit(refused).await,
        Code::PermissionDenied,
        &["bravo did not originate plan", &a_plan],
    );
    // alpha's node out of turn: a stale version, a new plan on a used id,
    // a target that is not a hash.
    let mut alpha_node = sandbox.hub_as("alpha/node").await.unwrap();
    assert_refused(
        alpha_node
            .submit(as_version("alpha", 1, pb::PlanAction::PlanNew))
            .await,
        Code::AlreadyExists,
        &["already exists"],
    );
    let mut stale = as_version("alpha", 3, pb::PlanAction::PlanUpdate);
    alpha_node.submit(stale.clone()).await.unwrap();
    stale
        .envelope
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .message_id = uuid::Uuid::new_v4().to_string();
    assert_refused(
        alpha_node.submit(stale).await,
        Code::FailedPrecondition,
        &["is at version 3"],
    );
    let mut clear = as_version("alpha", 9, pb::PlanAction::PlanUpdate);
    clear.targets = vec![pb::TargetHash {
        kind: "imo".into(),
        hash: b"9074729".to_vec(),
    }];
    assert_refused(
        alpha_node.submit(clear).await,
        Code::InvalidArgument,
        &["32-byte", "never in clear"],
    );
    // Each refusal of the plan is in the log with its rule; the refused
    // message was routed to nobody.
    let records = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "refused".into(),
            ..Default::default()
        },
    )
    .await;
    let rules: Vec<&str> = records.iter().map(|r| r.rule.as_str()).collect();
    assert!(rules.contains(&"plan.originator"), "{rules:?}");
    assert_eq!(
        rules.iter().filter(|r| **r == "plan.lifecycle").count(),
        2,
        "{rules:?}"
    );
    let routed = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: refused_id,
            event: "routed".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        routed.is_empty(),
        "a refused version was routed: {routed:?}"
    );

    // At the node: targets on an alert, an unknown target kind, a plan the
    // node does not hold.
    let mut alert = operational(
        "alpha",
        pb::Classification::Restricted,
        &["drugs"],
        &["sahel"],
        window(1, 2),
        "x",
    );
    alert.0.kind = pb::Kind::Alert as i32;
    alert.0.plan = None;
    alert.1.content = Some(pb::body::Content::Alert(pb::Alert {
        text: "t".into(),
        ..Default::default()
    }));
    assert_refused(
        submit_plan(&mut alice, alert, vec![target("imo", "9074729")]).await,
        Code::InvalidArgument,
        &["not a plan"],
    );
    let secret = "+44 20 7946 0958";
    let status = assert_refused(
        submit_plan(
            &mut alice,
            operational(
                "alpha",
                pb::Classification::Restricted,
                &["drugs"],
                &["sahel"],
                window(1, 2),
                "x",
            ),
            vec![target("telephone", secret)],
        )
        .await,
        Code::InvalidArgument,
        &["telephone", "not a target kind"],
    );
    assert!(
        !status.message().contains("7946"),
        "the value is never echoed"
    );
    let status = assert_refused(
        submit_plan(
            &mut alice,
            operational(
                "alpha",
                pb::Classification::Restricted,
                &["drugs"],
                &["sahel"],
                window(1, 2),
                "x",
            ),
            vec![target("imo", "1234568")],
        )
        .await,
        Code::InvalidArgument,
        &["imo", "check digit"],
    );
    assert!(
        !status.message().contains("1234568"),
        "the value is never echoed"
    );
    assert_refused(
        submit_plan(
            &mut alice,
            version_of(
                "0b0b0b0b-0000-4000-8000-000000000000",
                operational(
                    "alpha",
                    pb::Classification::Restricted,
                    &["drugs"],
                    &["sahel"],
                    window(1, 2),
                    "x",
                ),
            ),
            vec![],
        )
        .await,
        Code::NotFound,
        &["0b0b0b0b-0000-4000-8000-000000000000"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_update_and_an_overlap_sent_while_the_hub_is_down_are_deconflicted_after_it_restarts(
) {
    let mut sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let (a_plan, _) = submit_plan(
        &mut alice,
        operational(
            "alpha",
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            window(1, 10),
            "Operation Dune",
        ),
        vec![target("vehicle_plate", "AB-123-CD")],
    )
    .await
    .unwrap();
    plans_when(&alice, "alpha's plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.outbox_status == "routed")
    })
    .await;
    sandbox.stop_hub().await.unwrap();
    // While the hub is down: alpha's version 2 (same target, new window),
    // and bravo's plan on the same plate in the same region.
    let mut v2 = operational(
        "alpha",
        pb::Classification::Restricted,
        &["drugs"],
        &["sahel"],
        window(2, 12),
        "Operation Dune (v2)",
    );
    v2 = version_of(&a_plan, v2);
    submit_plan(&mut alice, v2, vec![]).await.unwrap();
    let (b_plan, _) = submit_plan(
        &mut bob,
        operational(
            "bravo",
            pb::Classification::Restricted,
            &["maritime_crime"],
            &["sahel"],
            window(5, 6),
            "Operation Plate",
        ),
        vec![target("vehicle_plate", "ab 123 cd")],
    )
    .await
    .unwrap();
    sandbox.start_hub().await.unwrap();
    // The nodes push in either order: bravo's plan meets alpha's version 1
    // (found, then changed by version 2) or version 2 (found).
    let plans = plans_when(&bob, "bravo's notice names alpha's version 2", |p| {
        notices_of(p, &b_plan)
            .iter()
            .any(|e| notice(e).other_plan_version == 2)
    })
    .await;
    let b = notices_of(&plans, &b_plan)[0].clone();
    let n = notice(&b);
    assert!(!n.blind);
    assert_eq!(n.target_kinds, vec!["vehicle_plate".to_owned()]);
    assert!(n.crime_areas.is_empty(), "they share the plate only");
    plans_when(&alice, "alpha's notice names bravo's plan", |p| {
        notices_of(p, &a_plan)
            .iter()
            .any(|e| notice(e).other_plan_id == b_plan)
    })
    .await;
    // Restarted once more, the hub still holds alpha's plan at version 2.
    sandbox.stop_hub().await.unwrap();
    sandbox.start_hub().await.unwrap();
    let mut alpha_node = sandbox.hub_as("alpha/node").await.unwrap();
    let (mut labels, body) = operational(
        "alpha",
        pb::Classification::Restricted,
        &["drugs"],
        &["sahel"],
        window(2, 12),
        "stale",
    );
    labels.plan = Some(pb::PlanLabels {
        plan_id: a_plan.clone(),
        version: 2,
        action: pb::PlanAction::PlanUpdate as i32,
        contact: String::new(),
    });
    assert_refused(
        alpha_node
            .submit(pb::SubmitRequest {
                envelope: Some(envelope("alpha", labels, &body)),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["is at version 2"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategic_plans_align_and_bodies_that_take_no_plans_get_blind_notices() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let strategic = |title: &str| {
        let (start, end) = window(0, 365);
        (
            pb::Labels {
                kind: pb::Kind::StrategicPlan as i32,
                classification: pb::Classification::OfficialUse as i32,
                crime_areas: vec!["migrant_smuggling".into()],
                regions: vec!["med-central".into()],
                priority: pb::Priority::Routine as i32,
                ..Default::default()
            },
            pb::Body {
                title: title.to_owned(),
                content: Some(pb::body::Content::StrategicPlan(pb::StrategicPlan {
                    summary: "priorities for the cycle".into(),
                    cycle: "2027".into(),
                    window_start_ms: start,
                    window_end_ms: end,
                })),
            },
        )
    };
    let (a_plan, _) = submit_plan(&mut alice, strategic("Alpha priorities 2027"), vec![])
        .await
        .unwrap();
    let (b_plan, _) = submit_plan(&mut bob, strategic("Bravo priorities 2027"), vec![])
        .await
        .unwrap();
    let a = notice_when(&alice, &a_plan, pb::NoticeChange::OverlapFound).await;
    assert_eq!(notice(&a).kind, pb::OverlapKind::Alignment as i32);
    assert!(!notice(&a).blind);
    assert_eq!(notice(&a).other_plan_id, b_plan);

    // charlie takes no operational plans: its plan and alpha's are blind
    // to each other, though charlie is cleared for them.
    let mut carol = sandbox.officer("charlie", "carol").await.unwrap();
    let (c_plan, _) = submit_plan(
        &mut carol,
        operational(
            "charlie",
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            window(1, 5),
            "Operation Charlie",
        ),
        vec![],
    )
    .await
    .unwrap();
    let (a2, _) = submit_plan(
        &mut alice,
        operational(
            "alpha",
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            window(2, 6),
            "Operation Alpha",
        ),
        vec![],
    )
    .await
    .unwrap();
    let c = notice_when(&carol, &c_plan, pb::NoticeChange::OverlapFound).await;
    assert!(notice(&c).blind);
    let a = notice_when(&alice, &a2, pb::NoticeChange::OverlapFound).await;
    assert!(notice(&a).blind);
    assert!(notice(&a).other_body.is_empty());
}

/// Runs `liaison` with `args` against `body`'s node as its officer `name`,
/// with `--output json` first when `json`; off the async runtime.
async fn plans_cli(
    sandbox: &Sandbox,
    body: &str,
    name: &str,
    json: bool,
    args: &[&str],
) -> std::process::Output {
    let server = sandbox.node_url(body).unwrap();
    let who = format!("{body}/officer-{name}");
    if json {
        return crate::common::liaison_json(sandbox, &server, &who, args).await;
    }
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_liaison-child"));
    cmd.args(args)
        .arg("--server")
        .arg(&server)
        .arg("--certs")
        .arg(sandbox.certs())
        .arg("--as")
        .arg(&who);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// A successful command's one line of JSON.
#[track_caller]
fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = crate::common::json_lines(out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

/// An operational plan file as an officer writes it.
fn plan_file(
    lead: &str,
    title: &str,
    (start, end): (i64, i64),
    regions: &[&str],
    target: &str,
) -> String {
    let regions = regions
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"kind = "operational_plan"
classification = "RESTRICTED"
title = "{title}"
crime_areas = ["migrant_smuggling"]
regions = [{regions}]
priority = "priority"
contact = "{lead} operations desk"
targets = ["{target}"]

[operational_plan]
summary = "Joint patrols and interceptions."
window_start = "{}"
window_end = "{}"
lead_body = "{lead}"
regions = [{regions}]
crime_areas = ["migrant_smuggling"]
"#,
        liaison_types::rfc3339(start),
        liaison_types::rfc3339(end)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_submit_see_handle_and_close_plans_from_the_command_line() {
    let sandbox = sandbox().await;
    let a_file = sandbox.dir().join("alpha-plan.toml");
    std::fs::write(
        &a_file,
        plan_file(
            "alpha",
            "Operation Sentinel",
            window(1, 21),
            &["med-central"],
            "imo:9074729",
        ),
    )
    .unwrap();
    let b_file = sandbox.dir().join("bravo-plan.toml");
    std::fs::write(
        &b_file,
        plan_file(
            "bravo",
            "Operation Tidewater",
            window(7, 28),
            &["med-central", "west-africa"],
            "imo:IMO 9074729",
        ),
    )
    .unwrap();
    let a_path = a_file.to_str().unwrap();
    let b_path = b_file.to_str().unwrap();

    let submitted = json_of(
        &plans_cli(
            &sandbox,
            "alpha",
            "alice",
            true,
            &["plans", "submit", "--file", a_path],
        )
        .await,
    );
    assert_eq!(submitted["status"], "queued", "{submitted}");
    assert_eq!(submitted["duplicate"], false, "{submitted}");
    // A plan's id is its first version's message id.
    let a_plan = submitted["message_id"].as_str().unwrap().to_owned();
    let submitted = json_of(
        &plans_cli(
            &sandbox,
            "bravo",
            "bob",
            true,
            &["plans", "submit", "--file", b_path],
        )
        .await,
    );
    let b_plan = submitted["message_id"].as_str().unwrap().to_owned();

    // alpha lists its plan until the hub's notice is there.
    let plan = wait_until("alpha's plan shows a notice", SETTLE, || async {
        let out = plans_cli(&sandbox, "alpha", "alice", true, &["plans", "list"]).await;
        if !out.status.success() {
            return None;
        }
        let listed = json_of(&out);
        listed["plans"]
            .as_array()?
            .iter()
            .find(|p| p["plan_id"] == a_plan.as_str())
            .filter(|p| p["notices"].as_array().is_some_and(|n| !n.is_empty()))
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(plan["kind"], "operational_plan", "{plan}");
    assert_eq!(plan["status"], "active", "{plan}");
    assert_eq!(plan["version"], 1, "{plan}");
    assert_eq!(plan["title"], "Operation Sentinel", "{plan}");
    assert_eq!(plan["contact"], "alpha operations desk", "{plan}");
    assert!(
        plan["submitted_by"]
            .as_str()
            .unwrap()
            .ends_with("/officer/alice"),
        "{plan}"
    );
    assert!(
        plan["targets"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"kind": "imo", "value": "9074729"})),
        "{plan}"
    );
    let notices = plan["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1, "{plan}");
    let n = &notices[0];
    assert_eq!(n["blind"], false, "{n}");
    assert_eq!(n["kind"], "conflict", "{n}");
    assert_eq!(n["change"], "found", "{n}");
    assert_eq!(n["state"], "open", "{n}");
    assert_eq!(n["plan_id"], a_plan.as_str(), "{n}");
    assert_eq!(n["contact"], "bravo operations desk", "{n}");
    assert_eq!(n["handled_at"], serde_json::Value::Null, "{n}");
    assert_eq!(n["other"]["body"], "bravo", "{n}");
    assert_eq!(n["other"]["plan_id"], b_plan.as_str(), "{n}");
    assert_eq!(n["other"]["title"], "Operation Tidewater", "{n}");
    let overlap = n["overlap"].as_object().expect("a full notice's overlap");
    assert_eq!(
        overlap["regions"],
        serde_json::json!(["med-central"]),
        "{n}"
    );
    assert_eq!(
        overlap["crime_areas"],
        serde_json::json!(["migrant_smuggling"]),
        "{n}"
    );
    assert_eq!(overlap["target_kinds"], serde_json::json!(["imo"]), "{n}");
    assert!(
        overlap["from"].as_str().unwrap() < overlap["until"].as_str().unwrap(),
        "{n}"
    );
    let reference = n["reference"].as_str().unwrap().to_owned();
    assert!(reference.starts_with("dx-"), "{reference}");

    // The same list for people: the notice by reference, full.
    let out = plans_cli(&sandbox, "alpha", "alice", false, &["plans", "list"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains(&a_plan), "{human}");
    assert!(
        human.contains("targets (kept on this node) imo:9074729"),
        "{human}"
    );
    let line = human
        .lines()
        .find(|l| l.contains(&reference))
        .unwrap_or_else(|| panic!("no line names {reference}: {human}"));
    assert!(line.contains("full"), "{line}");
    assert!(line.contains("conflict found"), "{line}");
    assert!(line.contains("with bravo plan"), "{line}");

    // Acknowledged, then resolved with a note.
    let acked = json_of(
        &plans_cli(
            &sandbox,
            "alpha",
            "alice",
            true,
            &["plans", "ack", &reference],
        )
        .await,
    );
    assert_eq!(acked["reference"], reference.as_str(), "{acked}");
    assert_eq!(acked["state"], "acknowledged", "{acked}");
    assert!(
        acked["handled_by"]
            .as_str()
            .unwrap()
            .ends_with("/officer/alice"),
        "{acked}"
    );
    assert!(acked["handled_at"].is_string(), "{acked}");
    let note = "called bravo's desk: boarding moved to day 14";
    let resolved = json_of(
        &plans_cli(
            &sandbox,
            "alpha",
            "alice",
            true,
            &["plans", "resolve", &reference, "--note", note],
        )
        .await,
    );
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["note"], note, "{resolved}");
    assert_eq!(resolved["other"]["body"], "bravo", "{resolved}");

    // bravo's calendar shows alpha's plan (it was delivered).
    let seen = wait_until("bravo's calendar shows alpha's plan", SETTLE, || async {
        let out = plans_cli(
            &sandbox,
            "bravo",
            "bob",
            true,
            &["plans", "calendar", "--region", "med-central"],
        )
        .await;
        if !out.status.success() {
            return None;
        }
        json_of(&out)["plans"]
            .as_array()?
            .iter()
            .find(|p| p["plan_id"] == a_plan.as_str())
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(seen["origin"], "alpha", "{seen}");
    assert_eq!(seen["status"], "active", "{seen}");
    assert_eq!(seen["version"], 1, "{seen}");
    assert_eq!(seen["classification"], "RESTRICTED", "{seen}");
    assert_eq!(seen["contact"], "alpha operations desk", "{seen}");
    assert_eq!(
        seen["regions"],
        serde_json::json!(["med-central"]),
        "{seen}"
    );
    assert!(
        seen.get("targets").is_none(),
        "a calendar has no targets: {seen}"
    );

    // alpha closes its plan: a new version, queued; no longer active.
    let closed = json_of(
        &plans_cli(
            &sandbox,
            "alpha",
            "alice",
            true,
            &["plans", "close", &a_plan],
        )
        .await,
    );
    assert_eq!(closed["status"], "queued", "{closed}");
    assert_ne!(closed["message_id"], a_plan.as_str(), "{closed}");
    // Once the hub has the close (a plan shows as the hub holds it; until
    // then the close waits in the outbox), it is listed only with --all.
    wait_until("the hub has the close", SETTLE, || async {
        let listed =
            json_of(&plans_cli(&sandbox, "alpha", "alice", true, &["plans", "list"]).await);
        listed["plans"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["plan_id"] != a_plan.as_str())
            .then_some(())
    })
    .await
    .unwrap();
    let all = json_of(
        &plans_cli(
            &sandbox,
            "alpha",
            "alice",
            true,
            &["plans", "list", "--all"],
        )
        .await,
    );
    let mine = all["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plan_id"] == a_plan.as_str())
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(
        (&mine["status"], &mine["version"]),
        (&"closed".into(), &2.into()),
        "{mine}"
    );

    // A new version needs the plan it is a version of: a bad command line.
    let out = plans_cli(
        &sandbox,
        "bravo",
        "bob",
        true,
        &["plans", "update", "--file", b_path],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--plan"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A file may name the plan itself: `plans update` takes it, `plans
    // submit` (a new plan) refuses it.
    let v2_file = sandbox.dir().join("bravo-plan-v2.toml");
    std::fs::write(
        &v2_file,
        format!(
            "plan_id = \"{b_plan}\"\n{}",
            plan_file(
                "bravo",
                "Operation Tidewater (v2)",
                window(7, 28),
                &["med-central"],
                "imo:9074729",
            )
        ),
    )
    .unwrap();
    let v2_path = v2_file.to_str().unwrap();
    let out = plans_cli(
        &sandbox,
        "bravo",
        "bob",
        true,
        &["plans", "submit", "--file", v2_path],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("plans update --plan"), "{err}");
    let updated = json_of(
        &plans_cli(
            &sandbox,
            "bravo",
            "bob",
            true,
            &["plans", "update", "--file", v2_path],
        )
        .await,
    );
    assert_eq!(updated["status"], "queued", "{updated}");
    // The plan moves to version 2 once the hub accepts it; until then
    // version 2 is listed as waiting under version 1.
    let listed = wait_until("bravo's plan is at version 2", SETTLE, || async {
        let listed =
            json_of(&plans_cli(&sandbox, "bravo", "bob", true, &["plans", "list", "--all"]).await);
        let plan = listed["plans"]
            .as_array()?
            .iter()
            .find(|p| p["plan_id"] == b_plan.as_str())?;
        if plan["version"] == 1 {
            assert_eq!(plan["waiting"][0]["version"], 2, "{listed}");
            return None;
        }
        Some(listed)
    })
    .await
    .unwrap();
    let theirs: Vec<&serde_json::Value> = listed["plans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["plan_id"] == b_plan.as_str())
        .collect();
    assert_eq!(theirs.len(), 1, "{listed}");
    assert_eq!(theirs[0]["version"], 2, "{listed}");
    assert_eq!(
        theirs[0]["waiting"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    assert_eq!(theirs[0]["title"], "Operation Tidewater (v2)", "{listed}");
    assert_eq!(theirs[0]["message_id"], updated["message_id"], "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_whose_window_has_passed_are_not_deconflicted() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let past = window(-20, -10);
    let plan = |lead: &str, title: &str| {
        operational(
            lead,
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            past,
            title,
        )
    };
    let (a_plan, _) = submit_plan(
        &mut alice,
        plan("alpha", "Past A"),
        vec![target("imo", "9074729")],
    )
    .await
    .unwrap();
    plans_when(&alice, "alpha's past plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.outbox_status == "routed")
    })
    .await;
    let (b_plan, _) = submit_plan(
        &mut bob,
        plan("bravo", "Past B"),
        vec![target("imo", "9074729")],
    )
    .await
    .unwrap();
    plans_when(&bob, "bravo's past plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == b_plan && p.outbox_status == "routed")
    })
    .await;
    // A notice would be queued with the routing, before anything sent
    // after it: once each side holds a message the other sent since, it
    // would hold the notice too.
    for (from, to) in [("alpha", "bravo"), ("bravo", "alpha")] {
        let mut officer = sandbox.officer(from, "carol").await.unwrap();
        let sentinel = officer
            .submit(pb::OfficerSubmitRequest {
                clear_targets: false,
                labels: Some(pb::Labels {
                    kind: pb::Kind::Alert as i32,
                    classification: pb::Classification::Restricted as i32,
                    crime_areas: vec!["drugs".into()],
                    priority: pb::Priority::Routine as i32,
                    releasable_to: vec![to.into()],
                    ..Default::default()
                }),
                body: Some(pb::Body {
                    title: "sentinel".into(),
                    content: Some(pb::body::Content::Alert(pb::Alert {
                        text: "after the past plans".into(),
                        ..Default::default()
                    })),
                }),
                targets: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .message_id;
        wait_until(&format!("{to} holds {from}'s sentinel"), SETTLE, || async {
            crate::common::inbox_ids(&sandbox, to)
                .await
                .contains(&sentinel)
                .then_some(())
        })
        .await
        .unwrap();
    }
    let plans = bob
        .list_plans(pb::ListPlansRequest { all: true })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(
        notices_of(&plans, &b_plan).is_empty(),
        "a past plan got a notice"
    );
    let mine = alice
        .list_plans(pb::ListPlansRequest { all: true })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(notices_of(&mine, &a_plan).is_empty());
    // A past plan is listed only with --all.
    let active = bob
        .list_plans(pb::ListPlansRequest { all: false })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(active.iter().all(|p| p.plan_id != b_plan));
}

/// Asks for the inclusion proof of `r` as a node of the federation.
async fn node_proof(
    node: &mut liaison_proto::v1::federation_client::FederationClient<Channel>,
    r: &pb::AuditRecord,
) -> Result<pb::InclusionProof, tonic::Status> {
    node.prove_inclusion(pb::InclusionRequest {
        leaf_index: r.seq - 1,
        tree_size: 0,
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_inclusion_proofs_only_of_records_its_auditors_may_read() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    // alpha (the hub's body) plans above bravo's clearance; the two plans
    // overlap blind.
    let (_, a_msg) = submit_plan(
        &mut alice,
        operational(
            "alpha",
            pb::Classification::Confidential,
            &["drugs"],
            &["sahel"],
            window(2, 30),
            "Operation Deepwater",
        ),
        vec![],
    )
    .await
    .unwrap();
    let (_, b_msg) = submit_plan(
        &mut bob,
        operational(
            "bravo",
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            window(10, 40),
            "Operation Harbour",
        ),
        vec![],
    )
    .await
    .unwrap();
    let desk = |r: &pb::AuditRecord| {
        r.event == "deconflicted" && r.origin == "alpha" && r.recipient.is_empty()
    };
    let all = wait_until("the desk's record of the overlap", SETTLE, || async {
        let all = audit_records(&sandbox, pb::AuditQuery::default()).await;
        all.iter().any(desk).then_some(all)
    })
    .await
    .unwrap();
    let desk_record = all.iter().find(|r| desk(r)).unwrap();
    assert!(
        desk_record.reason.contains(&b_msg),
        "{}",
        desk_record.reason
    );
    let withheld = all
        .iter()
        .find(|r| r.message_id == a_msg && r.recipient == "bravo" && r.decision == "withhold")
        .expect("alpha's plan was withheld from bravo");
    let own = |body: &str, msg: &str| {
        all.iter()
            .find(|r| r.message_id == msg && r.origin == body && r.event == "received")
            .unwrap()
            .clone()
    };
    let mut alpha_node = sandbox.hub_as("alpha/node").await.unwrap();
    let mut bravo_node = sandbox.hub_as("bravo/node").await.unwrap();
    // The hub body's node is a member's node: the desk's record is not
    // its to read; bravo's node does not learn of the plan withheld from it.
    for (node, r, what) in [
        (&mut alpha_node, desk_record, "the desk's record"),
        (&mut bravo_node, withheld, "a withholding from bravo"),
    ] {
        let err = node_proof(node, r).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
        assert!(err.message().contains("not"), "{what}: {}", err.message());
    }
    // Each node proves its own records.
    for (node, r) in [
        (&mut alpha_node, own("alpha", &a_msg)),
        (&mut bravo_node, own("bravo", &b_msg)),
    ] {
        let proof = node_proof(node, &r).await.unwrap();
        assert_eq!(proof.leaf, r.leaf);
    }
    // The hub body's auditor reads the desk's work.
    let mut alpha_auditor = sandbox.auditor("alpha").await.unwrap();
    let proof = alpha_auditor
        .prove_inclusion(pb::InclusionRequest {
            leaf_index: desk_record.seq - 1,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.leaf, desk_record.leaf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_keeps_or_clears_targets_and_a_plan_past_its_expiry_still_closes() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    // The two plans share only a vessel (different crime areas).
    let mut a = operational(
        "alpha",
        pb::Classification::Restricted,
        &["drugs"],
        &["sahel"],
        window(2, 30),
        "Operation Dune",
    );
    // alpha's message expires soon; its plan lives on.
    let expires = liaison_types::now_ms() + 1_500;
    a.0.expires_at_ms = expires;
    let (a_plan, _) = submit_plan(&mut alice, a.clone(), vec![target("imo", "9074729")])
        .await
        .unwrap();
    let (b_plan, _) = submit_plan(
        &mut bob,
        operational(
            "bravo",
            pb::Classification::Restricted,
            &["maritime_crime"],
            &["sahel"],
            window(10, 40),
            "Operation Harbour",
        ),
        vec![target("imo", "IMO 9074729")],
    )
    .await
    .unwrap();
    notice_when(&bob, &b_plan, pb::NoticeChange::OverlapFound).await;

    // A version without targets keeps the vessel: still overlapping.
    let mut v2 = version_of(&a_plan, a.clone());
    v2.0.expires_at_ms = 0;
    v2.1.title = "Operation Dune, v2".into();
    submit_plan(&mut alice, v2.clone(), vec![]).await.unwrap();
    notice_when(&bob, &b_plan, pb::NoticeChange::OverlapChanged).await;

    // Targets and clearing them at once is refused; clearing them alone
    // ends the overlap.
    let both = alice
        .submit(pb::OfficerSubmitRequest {
            labels: Some(v2.0.clone()),
            body: Some(v2.1.clone()),
            targets: vec![target("imo", "9074729")],
            clear_targets: true,
        })
        .await;
    assert_refused(
        both,
        Code::InvalidArgument,
        &["clear_targets", "given with targets"],
    );
    alice
        .submit(pb::OfficerSubmitRequest {
            labels: Some(v2.0.clone()),
            body: Some(v2.1.clone()),
            targets: vec![],
            clear_targets: true,
        })
        .await
        .unwrap();
    notice_when(&bob, &b_plan, pb::NoticeChange::OverlapCleared).await;
    let plans = plans_when(&alice, "alpha's plan is at version 3", |p| {
        p.iter().any(|p| p.plan_id == a_plan && p.version == 3)
    })
    .await;
    let mine = plans.iter().find(|p| p.plan_id == a_plan).unwrap();
    assert!(mine.targets.is_empty(), "{mine:?}");

    // Version 1's message has expired; the plan is closed all the same.
    wait_until("alpha's first message has expired", SETTLE, || async {
        (liaison_types::now_ms() > expires).then_some(())
    })
    .await
    .unwrap();
    let closed = alice
        .change_plan(pb::ChangePlanRequest {
            plan_id: a_plan.clone(),
            action: pb::PlanAction::PlanClose as i32,
            message_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.status, "queued");
    plans_when(&alice, "alpha's plan is closed", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.status == "closed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_too_long_or_too_wide_is_refused_at_the_node() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let long = operational(
        "alpha",
        pb::Classification::Restricted,
        &["drugs"],
        &["sahel"],
        window(1, 400),
        "Operation Forever",
    );
    assert_refused(
        submit_plan(&mut alice, long.clone(), vec![]).await,
        Code::InvalidArgument,
        &["body.window", "399 days", "at most 366"],
    );
    // The hub checks the same, whatever a node sends.
    let mut labels = long.0;
    labels.plan = Some(pb::PlanLabels {
        plan_id: labels.message_id.clone(),
        version: 1,
        action: pb::PlanAction::PlanNew as i32,
        contact: String::new(),
    });
    let mut alpha_node = sandbox.hub_as("alpha/node").await.unwrap();
    let env = envelope("alpha", labels, &long.1);
    let plan_id = env.labels.as_ref().unwrap().message_id.clone();
    let mut env = env;
    env.labels.as_mut().unwrap().plan.as_mut().unwrap().plan_id = plan_id;
    assert_refused(
        alpha_node
            .submit(pb::SubmitRequest {
                envelope: Some(env),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["body.window", "at most 366"],
    );
    // 40 regions in the labels and 25 more in the body: 65 places.
    let regions: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = regions.iter().map(String::as_str).collect();
    let mut wide = operational(
        "alpha",
        pb::Classification::Restricted,
        &["drugs"],
        &refs[..40],
        window(1, 10),
        "Operation Everywhere",
    );
    if let Some(pb::body::Content::OperationalPlan(p)) = wide.1.content.as_mut() {
        p.regions = regions[40..].to_vec();
    }
    assert_refused(
        submit_plan(&mut alice, wide, vec![]).await,
        Code::InvalidArgument,
        &["labels.regions", "at most 64"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retracting_a_plans_version_in_force_withdraws_the_plan() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let plan = |lead: &str, title: &str| {
        operational(
            lead,
            pb::Classification::Restricted,
            &["drugs"],
            &["sahel"],
            window(2, 30),
            title,
        )
    };
    let (a_plan, a_msg) = submit_plan(&mut alice, plan("alpha", "Operation Dune"), vec![])
        .await
        .unwrap();
    let (b_plan, _) = submit_plan(&mut bob, plan("bravo", "Operation Harbour"), vec![])
        .await
        .unwrap();
    notice_when(&bob, &b_plan, pb::NoticeChange::OverlapFound).await;
    plans_when(&alice, "alpha's plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.outbox_status == "routed")
    })
    .await;
    alice
        .retract(pb::OfficerRetractRequest {
            message_id: a_msg.clone(),
            reason: "sent in error".into(),
        })
        .await
        .unwrap();
    // bravo hears that the overlap is gone; alpha's plan is withdrawn and
    // takes no new version.
    notice_when(&bob, &b_plan, pb::NoticeChange::OverlapCleared).await;
    plans_when(&alice, "alpha's plan is withdrawn", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.status == "withdrawn")
    })
    .await;
    assert_refused(
        submit_plan(
            &mut alice,
            version_of(&a_plan, plan("alpha", "again")),
            vec![],
        )
        .await,
        Code::FailedPrecondition,
        &[&a_plan, "withdrawn"],
    );
    let listed = alice
        .list_plans(pb::ListPlansRequest { all: false })
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert!(listed.iter().all(|p| p.plan_id != a_plan), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_version_that_kept_its_targets_is_answered_as_a_duplicate() {
    let sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let first = operational(
        "alpha",
        pb::Classification::Restricted,
        &["maritime_crime"],
        &["sahel"],
        window(2, 30),
        "Operation Keel",
    );
    let (a_plan, _) = submit_plan(&mut alice, first.clone(), vec![target("imo", "9074729")])
        .await
        .unwrap();
    plans_when(&alice, "alpha's plan is routed", |p| {
        p.iter()
            .any(|p| p.plan_id == a_plan && p.outbox_status == "routed")
    })
    .await;
    // Version 2 keeps the vessel; sent twice with one id, the second is the
    // first again.
    let mut v2 = version_of(&a_plan, first);
    v2.0.message_id = uuid::Uuid::new_v4().to_string();
    v2.1.title = "Operation Keel, v2".into();
    let req = pb::OfficerSubmitRequest {
        labels: Some(v2.0.clone()),
        body: Some(v2.1.clone()),
        targets: vec![],
        clear_targets: false,
    };
    let sent = alice.submit(req.clone()).await.unwrap().into_inner();
    assert!(!sent.duplicate);
    let again = alice.submit(req).await.unwrap().into_inner();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.message_id, sent.message_id);
}
