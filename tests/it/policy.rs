//! Safe policy changes: the hub's governance reloaded without a restart, by
//! an admin's RPC or by SIGHUP, atomically and audited; an invalid file
//! refused with the old rules kept; only the hub body's admins allowed; and
//! `liaison policy diff` replaying a real audit export under a proposed
//! governance.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};
use serde_json::Value;
use tonic::Code;

use crate::common::{
    admin, alert, assert_refused, assessment, audit_log, envelope, hub_only, inbox_ids, labels,
    sandbox, write_governance, GOVERNANCE, SETTLE,
};

const EXE: &str = env!("CARGO_BIN_EXE_liaison-child");

/// The hub body's admin in the test governance.
const ADMIN: &str = "alpha/admin-admin";
const ADMIN_URI: &str = "spiffe://liaison.test/org/alpha/admin/admin";

/// The test governance with bravo's clearance lowered from RESTRICTED to
/// OFFICIAL_USE.
fn lowered() -> String {
    let text = GOVERNANCE.replacen(
        "clearance = \"RESTRICTED\"",
        "clearance = \"OFFICIAL_USE\"",
        1,
    );
    assert_ne!(text, GOVERNANCE);
    text
}

/// The test governance with an invalid clearance for bravo, and the line it
/// is on.
fn invalid() -> (String, usize) {
    let text = GOVERNANCE.replacen("clearance = \"RESTRICTED\"", "clearance = \"HUSH\"", 1);
    let line = text
        .lines()
        .position(|l| l.contains("\"HUSH\""))
        .expect("the invalid line")
        + 1;
    (text, line)
}

/// The version (SHA-256 of the text) a governance text gets.
fn version_of(text: &str) -> String {
    liaison_policy::Governance::from_toml("v.toml", text)
        .unwrap()
        .version()
        .to_owned()
}

async fn policy_in_force(sandbox: &Sandbox) -> pb::GetPolicyResponse {
    admin(sandbox, ADMIN)
        .await
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Submits straight to the hub as `origin`'s node.
async fn submit(sandbox: &Sandbox, origin: &str, env: pb::Envelope) -> pb::SubmitResponse {
    let mut hub = sandbox.hub_as(&format!("{origin}/node")).await.unwrap();
    hub.submit(pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(env),
        approved_by: String::new(),
        traceparent: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// `(outcome, rule)` of the decision for `recipient`.
fn decision(resp: &pb::SubmitResponse, recipient: &str) -> (pb::Outcome, String) {
    let d = resp
        .decisions
        .iter()
        .find(|d| d.recipient == recipient)
        .unwrap_or_else(|| panic!("no decision for {recipient}: {resp:?}"));
    (d.outcome(), d.rule.clone())
}

/// An alpha alert about cybercrime at `class`: bravo's mandate covers it,
/// charlie's does not, observers take no alerts.
fn cyber_alert(class: C, title: &str) -> pb::Envelope {
    envelope(
        "alpha",
        labels(K::Alert, class, &["cybercrime"]),
        &alert(title),
    )
}

fn policy_records(log: &[pb::AuditRecord]) -> Vec<&pb::AuditRecord> {
    log.iter().filter(|r| r.event == "policy").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reload_changes_later_routing_and_later_audit_records() {
    let sandbox = sandbox().await;
    let old = version_of(GOVERNANCE);
    let new = version_of(&lowered());
    assert_eq!(policy_in_force(&sandbox).await.version, old);

    // Before: a RESTRICTED alert reaches bravo.
    let before = submit(
        &sandbox,
        "alpha",
        cyber_alert(C::Restricted, "before the reload"),
    )
    .await;
    assert_eq!(
        decision(&before, "bravo"),
        (pb::Outcome::Deliver, "deliver.all_rules_passed".into())
    );
    assert_eq!(before.policy_version, old);
    // Let its delivery (and its audit record) finish under the old rules.
    wait_until("bravo's delivery is audited", SETTLE, || async {
        audit_log(&sandbox)
            .await
            .iter()
            .any(|r| {
                r.event == "delivered" && liaison_types::audit::names_message(r, &before.message_id)
            })
            .then_some(())
    })
    .await
    .unwrap();

    // The operator lowers bravo's clearance and reloads.
    write_governance(&sandbox, &lowered());
    let reloaded = admin(&sandbox, ADMIN)
        .await
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(reloaded.changed);
    assert_eq!(reloaded.previous_version, old);
    assert_eq!(reloaded.version, new);
    assert_eq!(reloaded.bodies, 4);
    let in_force = policy_in_force(&sandbox).await;
    assert_eq!(in_force.version, new);
    assert!(
        in_force.file.ends_with("governance.toml"),
        "{}",
        in_force.file
    );
    assert!(in_force.last_refusal.is_empty());

    // After: the same kind of message is withheld from bravo by its clearance,
    // and a lower one still reaches it.
    let withheld = submit(
        &sandbox,
        "alpha",
        cyber_alert(C::Restricted, "after the reload"),
    )
    .await;
    let (outcome, rule) = decision(&withheld, "bravo");
    assert_eq!(
        (outcome, rule.as_str()),
        (pb::Outcome::Withhold, "recipient.clearance")
    );
    assert_eq!(withheld.policy_version, new);
    let open = submit(&sandbox, "alpha", cyber_alert(C::OfficialUse, "open")).await;
    assert_eq!(decision(&open, "bravo").0, pb::Outcome::Deliver);
    // Bravo's queue is in order: once the later message is in its inbox, the
    // withheld one would have been too.
    let inbox = wait_until("bravo receives the open alert", SETTLE, || async {
        let ids = inbox_ids(&sandbox, "bravo").await;
        ids.contains(&open.message_id).then_some(ids)
    })
    .await
    .unwrap();
    assert!(inbox.contains(&before.message_id));
    assert!(!inbox.contains(&withheld.message_id));

    // The log: one reload record, by the admin, stamped with the new
    // version; the old version before it, the new one on every record after
    // it that carries a version.
    let log = audit_log(&sandbox).await;
    let policy = policy_records(&log);
    assert_eq!(policy.len(), 1, "{policy:?}");
    let reload = policy[0];
    assert_eq!(reload.rule, "policy.reload");
    assert_eq!(reload.reason, format!("version {old} -> {new}"));
    assert_eq!(reload.policy_version, new);
    assert_eq!(reload.actor, ADMIN_URI);
    assert_eq!(reload.seq, reloaded.audit_seq);
    for r in &log {
        if r.policy_version.is_empty() {
            continue;
        }
        let expected = if r.seq >= reload.seq { &new } else { &old };
        assert_eq!(&r.policy_version, expected, "record {r:?}");
    }
    assert!(log
        .iter()
        .any(|r| r.message_id == withheld.message_id && r.rule == "recipient.clearance"));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_and_the_rules_in_force_stay() {
    let sandbox = hub_only().await;
    let old = version_of(GOVERNANCE);
    let mut client = admin(&sandbox, ADMIN).await;

    // A bad value: refused with the file, line and key.
    let (bad, line) = invalid();
    write_governance(&sandbox, &bad);
    assert_refused(
        client.reload_policy(pb::ReloadPolicyRequest {}).await,
        Code::FailedPrecondition,
        &[
            &format!("governance.toml:{line}:"),
            "clearance",
            "HUSH",
            &format!("version {old} stays in force"),
        ],
    );
    let in_force = policy_in_force(&sandbox).await;
    assert_eq!(in_force.version, old);
    assert!(
        in_force
            .last_refusal
            .contains(&format!("governance.toml:{line}:")),
        "{in_force:?}"
    );
    assert!(in_force.last_refusal_at_ms > 0);
    // Routing is unchanged.
    let resp = submit(&sandbox, "alpha", cyber_alert(C::Restricted, "still open")).await;
    assert_eq!(decision(&resp, "bravo").0, pb::Outcome::Deliver);
    assert_eq!(resp.policy_version, old);

    // An unreadable file.
    std::fs::remove_file(sandbox.dir().join("governance.toml")).unwrap();
    assert_refused(
        client.reload_policy(pb::ReloadPolicyRequest {}).await,
        Code::FailedPrecondition,
        &["governance.toml: cannot read the governance file"],
    );
    // A valid file for another federation: a running hub cannot move.
    write_governance(
        &sandbox,
        &GOVERNANCE.replace(
            "federation = \"liaison.test\"",
            "federation = \"other.test\"",
        ),
    );
    assert_refused(
        client.reload_policy(pb::ReloadPolicyRequest {}).await,
        Code::FailedPrecondition,
        &["governance.toml:3:1: federation: changes from 'liaison.test' to 'other.test'"],
    );
    assert_eq!(policy_in_force(&sandbox).await.version, old);

    // The same file as in force: nothing to do, nothing audited.
    write_governance(&sandbox, GOVERNANCE);
    let same = client
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!same.changed);
    assert_eq!(
        (same.previous_version.as_str(), same.version.as_str()),
        (old.as_str(), old.as_str())
    );
    assert_eq!(same.audit_seq, 0);
    assert!(policy_in_force(&sandbox).await.last_refusal.is_empty());

    // Each refusal is audited with the version that stayed; the no-op is not.
    let log = audit_log(&sandbox).await;
    let policy = policy_records(&log);
    assert_eq!(policy.len(), 3, "{policy:?}");
    for r in &policy {
        assert_eq!(r.rule, "policy.reload_refused");
        assert_eq!(r.policy_version, old);
        assert_eq!(r.actor, ADMIN_URI);
        assert!(r.reason.contains("governance.toml"), "{r:?}");
        assert!(r.reason.chars().count() <= 300, "{r:?}");
    }
    assert!(policy[0]
        .reason
        .contains(&format!("governance.toml:{line}:")));
    assert!(policy[1].reason.contains("cannot read"), "{:?}", policy[1]);
    assert!(policy[2].reason.contains("federation"), "{:?}", policy[2]);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_of_the_hub_body_may_administer_it() {
    let sandbox = hub_only().await;
    let old = version_of(GOVERNANCE);
    // A change is waiting on disk: nobody refused may put it in force.
    write_governance(&sandbox, &lowered());
    for stem in [
        "alpha/officer-alice",
        "alpha/node",
        "alpha/auditor-audit",
        "bravo/admin-admin",
    ] {
        let mut client = admin(&sandbox, stem).await;
        let status = assert_refused(
            client.reload_policy(pb::ReloadPolicyRequest {}).await,
            Code::PermissionDenied,
            &[],
        );
        if stem == "bravo/admin-admin" {
            assert!(
                status
                    .message()
                    .contains("an admin of bravo may not administer this hub"),
                "{status:?}"
            );
        } else {
            assert!(
                status.message().contains("open to admin certificates"),
                "{stem}: {status:?}"
            );
        }
        assert_refused(
            client.get_policy(pb::GetPolicyRequest {}).await,
            Code::PermissionDenied,
            &[],
        );
    }
    assert_eq!(policy_in_force(&sandbox).await.version, old);
    assert!(policy_records(&audit_log(&sandbox).await).is_empty());
    sandbox.shutdown().await.unwrap();
}

fn sighup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -HUP {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_hub_and_survives_a_bad_file() {
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&[])
            .hub_process(Path::new(EXE)),
    )
    .await
    .unwrap();
    let pid = sandbox.hub_pid().expect("a child-process hub");
    let old = version_of(GOVERNANCE);
    let new = version_of(&lowered());

    write_governance(&sandbox, &lowered());
    sighup(pid);
    wait_until("the hub reloads on SIGHUP", SETTLE, || async {
        let p = policy_in_force(&sandbox).await;
        (p.version != old).then_some(p)
    })
    .await
    .unwrap();
    assert_eq!(policy_in_force(&sandbox).await.version, new);
    let resp = submit(
        &sandbox,
        "alpha",
        cyber_alert(C::Restricted, "after sighup"),
    )
    .await;
    assert_eq!(
        decision(&resp, "bravo"),
        (pb::Outcome::Withhold, "recipient.clearance".into())
    );
    assert_eq!(resp.policy_version, new);

    // A bad file on SIGHUP: the hub keeps running under the rules in force.
    let (bad, line) = invalid();
    write_governance(&sandbox, &bad);
    sighup(pid);
    let refused = wait_until("the hub refuses the bad file", SETTLE, || async {
        let p = policy_in_force(&sandbox).await;
        (!p.last_refusal.is_empty()).then_some(p)
    })
    .await
    .unwrap();
    assert_eq!(refused.version, new);
    assert!(
        refused
            .last_refusal
            .contains(&format!("governance.toml:{line}:")),
        "{refused:?}"
    );

    let log = audit_log(&sandbox).await;
    let policy = policy_records(&log);
    assert_eq!(policy.len(), 2, "{policy:?}");
    assert_eq!(
        (policy[0].rule.as_str(), policy[0].actor.as_str()),
        ("policy.reload", "signal:SIGHUP")
    );
    assert_eq!(policy[0].reason, format!("version {old} -> {new}"));
    assert_eq!(policy[0].policy_version, new);
    assert_eq!(
        (policy[1].rule.as_str(), policy[1].actor.as_str()),
        ("policy.reload_refused", "signal:SIGHUP")
    );
    assert_eq!(policy[1].policy_version, new);
    sandbox.shutdown().await.unwrap();
}

/// Runs `liaison` with `args` (and `stdin`, if any) off the async runtime.
async fn liaison(args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(EXE)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(&input).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Arguments connecting to the hub as `who` (a dev pki stem).
fn to_hub(sandbox: &Sandbox, who: &str) -> Vec<String> {
    args(&[
        "--server",
        &sandbox.hub_url(),
        "--certs",
        &sandbox.certs().display().to_string(),
        "--as",
        who,
    ])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_reload_from_the_command_line_with_exit_codes() {
    let sandbox = hub_only().await;
    let old = version_of(GOVERNANCE);
    let new = version_of(&lowered());

    let mut show = args(&["admin", "policy"]);
    show.extend(to_hub(&sandbox, ADMIN));
    let out = liaison(show.clone(), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("version     {old}")),
        "{}",
        text(&out.stdout)
    );

    let mut reload = args(&["admin", "reload-policy"]);
    reload.extend(to_hub(&sandbox, ADMIN));
    let out = liaison(reload.clone(), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("policy unchanged"),
        "{}",
        text(&out.stdout)
    );

    // 3: an invalid file is refused, naming the line.
    let (bad, line) = invalid();
    write_governance(&sandbox, &bad);
    let out = liaison(reload.clone(), None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("governance.toml:{line}:")),
        "{}",
        text(&out.stderr)
    );
    let out = liaison(show.clone(), None).await;
    assert!(
        text(&out.stdout).contains("last reload REFUSED"),
        "{}",
        text(&out.stdout)
    );

    // 4: not an admin of the hub's body.
    let mut as_bravo = args(&["admin", "reload-policy"]);
    as_bravo.extend(to_hub(&sandbox, "bravo/admin-admin"));
    let out = liaison(as_bravo, None).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));

    // 0: a valid change, as JSON.
    write_governance(&sandbox, &lowered());
    let mut json_reload = args(&["--output", "json", "admin", "reload-policy"]);
    json_reload.extend(to_hub(&sandbox, ADMIN));
    let out = liaison(json_reload, None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["changed"], true);
    assert_eq!(v["previous_version"], old.as_str());
    assert_eq!(v["version"], new.as_str());
    let mut json_show = args(&["--output", "json", "admin", "policy"]);
    json_show.extend(to_hub(&sandbox, ADMIN));
    let out = liaison(json_show, None).await;
    let v: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["version"], new.as_str());
    assert_eq!(v["last_refusal"], Value::Null);
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_diff_lists_exactly_the_messages_a_new_governance_routes_differently() {
    let sandbox = hub_only().await;
    // Traffic under the test governance; lowering bravo's clearance to
    // OFFICIAL_USE changes the routing of the RESTRICTED messages it gets.
    let changes = [
        submit(
            &sandbox,
            "alpha",
            cyber_alert(C::Restricted, "bravo loses this"),
        )
        .await,
        submit(
            &sandbox,
            "alpha",
            envelope(
                "alpha",
                labels(K::ThreatAssessment, C::Restricted, &["drugs"]),
                &assessment("bravo loses this too"),
            ),
        )
        .await,
    ];
    let same = [
        // Open: bravo keeps it.
        submit(
            &sandbox,
            "alpha",
            envelope(
                "alpha",
                labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]),
                &assessment("open"),
            ),
        )
        .await,
        // Above bravo's clearance under both (only the reason's values differ).
        submit(
            &sandbox,
            "alpha",
            cyber_alert(C::Confidential, "too high anyway"),
        )
        .await,
        // From bravo: its own clearance does not decide what it sends.
        submit(
            &sandbox,
            "bravo",
            envelope(
                "bravo",
                labels(K::Alert, C::Restricted, &["drugs"]),
                &alert("from bravo"),
            ),
        )
        .await,
    ];
    for c in &changes {
        assert_eq!(decision(c, "bravo").0, pb::Outcome::Deliver);
    }

    // An auditor's export, and the two governance files.
    let mut export = args(&["--output", "json", "audit", "list"]);
    export.extend(to_hub(&sandbox, "alpha/oversight-ccf"));
    let out = liaison(export, None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let audit = sandbox.dir().join("audit.jsonl");
    std::fs::write(&audit, &out.stdout).unwrap();
    let old = sandbox.dir().join("old.toml");
    let new = sandbox.dir().join("new.toml");
    std::fs::write(&old, GOVERNANCE).unwrap();
    std::fs::write(&new, lowered()).unwrap();
    let diff = |json: bool, audit_arg: &str| {
        let mut a = if json {
            args(&["--output", "json"])
        } else {
            Vec::new()
        };
        a.extend(args(&[
            "policy",
            "diff",
            &old.display().to_string(),
            &new.display().to_string(),
            "--audit",
            audit_arg,
        ]));
        a
    };

    let out = liaison(diff(false, &audit.display().to_string()), None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    assert!(
        human.contains("2 of 5 messages would be routed differently (2 change who receives them)"),
        "{human}"
    );
    for c in &changes {
        assert!(human.contains(&c.message_id), "{human}");
    }
    for s in &same {
        assert!(!human.contains(&s.message_id), "{human}");
    }
    assert!(
        human.contains("deliver (deliver.all_rules_passed) -> withhold (recipient.clearance)"),
        "{human}"
    );
    assert!(
        human.contains("now: clearance OFFICIAL_USE < RESTRICTED"),
        "{human}"
    );

    // JSON, reading the export from standard input.
    let out = liaison(diff(true, "-"), Some(std::fs::read(&audit).unwrap())).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["messages"], 5);
    assert_eq!(v["changed"], 2);
    assert_eq!(v["old"]["version"], version_of(GOVERNANCE).as_str());
    assert_eq!(v["routed_under_other_versions"], 0);
    let listed: BTreeSet<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = changes.iter().map(|c| c.message_id.as_str()).collect();
    assert_eq!(listed, expected);
    for m in v["changes"].as_array().unwrap() {
        let recipients = m["recipients"].as_array().unwrap();
        assert_eq!(recipients.len(), 1, "{m}");
        let r = &recipients[0];
        assert_eq!(r["recipient"], "bravo");
        assert_eq!(r["delivery_changed"], true);
        assert_eq!(r["old"]["outcome"], "deliver");
        assert_eq!(r["new"]["outcome"], "withhold");
        assert_eq!(r["new"]["rule"], "recipient.clearance");
    }

    // The same file on both sides changes nothing; a broken export is an
    // error naming its line.
    let mut a = args(&[
        "policy",
        "diff",
        &old.display().to_string(),
        &old.display().to_string(),
    ]);
    a.extend(args(&["--audit", &audit.display().to_string()]));
    let out = liaison(a, None).await;
    assert!(
        text(&out.stdout).contains("0 of 5 messages would be routed differently"),
        "{}",
        text(&out.stdout)
    );
    let broken = sandbox.dir().join("broken.jsonl");
    std::fs::write(&broken, "{}\nnot json\n").unwrap();
    let mut a = args(&[
        "policy",
        "diff",
        &old.display().to_string(),
        &new.display().to_string(),
    ]);
    a.extend(args(&["--audit", &broken.display().to_string()]));
    let out = liaison(a, None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("broken.jsonl:2:"),
        "{}",
        text(&out.stderr)
    );
    sandbox.shutdown().await.unwrap();
}
