//! Shared helpers for the end-to-end tests.

use std::time::Duration;

use liaison_federation::{Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use prost::Message;

/// How long a test waits for routing or delivery before failing.
pub const SETTLE: Duration = Duration::from_secs(30);

/// A small governance for tests: three members and one observer.
///
/// - `alpha` (member, SECRET, all kinds, terrorism + cybercrime + drugs)
/// - `bravo` (member, RESTRICTED, all kinds, cybercrime + drugs)
/// - `charlie` (member, CONFIDENTIAL, threat assessments and alerts, drugs)
/// - `obs` (observer, OFFICIAL_USE, threat assessments, drugs + cybercrime)
///
/// A personal-data agreement binds alpha and bravo only; the `strategic`
/// working group is alpha, charlie and obs. `alpha` runs the hub.
pub const GOVERNANCE: &str = r#"
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
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["terrorism", "cybercrime", "drugs"]
[body.markings]
"ALPHA RESTRICTED" = "RESTRICTED"

[[body]]
id = "bravo"
name = "Bravo"
status = "member"
clearance = "RESTRICTED"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["cybercrime", "drugs"]
[body.markings]
"BRAVO LIMITED" = "RESTRICTED"

[[body]]
id = "charlie"
name = "Charlie"
status = "member"
clearance = "CONFIDENTIAL"
kinds = ["threat_assessment", "alert"]
mandate = ["drugs"]

[[body]]
id = "obs"
name = "Observer"
status = "observer"
clearance = "OFFICIAL_USE"
kinds = ["threat_assessment"]
mandate = ["drugs", "cybercrime"]

[[agreement]]
between = ["alpha", "bravo"]
personal_data = true

[[working_group]]
id = "strategic"
name = "Strategic working group"
members = ["alpha", "charlie", "obs"]
"#;

/// Starts the test governance with a node for every body.
pub async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions::new(GOVERNANCE))
        .await
        .unwrap()
}

/// Labels for a message from `origin`, ready to submit to a node (origin and
/// creation time are left for the node to fill).
pub fn labels(kind: pb::Kind, class: pb::Classification, areas: &[&str]) -> pb::Labels {
    pb::Labels {
        kind: kind as i32,
        classification: class as i32,
        crime_areas: areas.iter().map(|a| (*a).to_owned()).collect(),
        priority: pb::Priority::Routine as i32,
        ..Default::default()
    }
}

/// A threat assessment body.
pub fn assessment(title: &str) -> pb::Body {
    pb::Body {
        title: title.to_owned(),
        content: Some(pb::body::Content::ThreatAssessment(pb::ThreatAssessment {
            summary: "summary".into(),
            ..Default::default()
        })),
    }
}

/// An alert body.
pub fn alert(title: &str) -> pb::Body {
    pb::Body {
        title: title.to_owned(),
        content: Some(pb::body::Content::Alert(pb::Alert {
            text: "act now".into(),
            ..Default::default()
        })),
    }
}

/// A complete envelope as a node would send it to the hub.
pub fn envelope(origin: &str, mut labels: pb::Labels, body: &pb::Body) -> pb::Envelope {
    labels.origin = origin.to_owned();
    if labels.message_id.is_empty() {
        labels.message_id = uuid::Uuid::new_v4().to_string();
    }
    if labels.created_at_ms == 0 {
        labels.created_at_ms = liaison_types::now_ms();
    }
    pb::Envelope {
        labels: Some(labels),
        body: body.encode_to_vec(),
    }
}

/// The message ids in `body`'s inbox.
/// An outbox entry's routing: recipient → withholding rule (`None` for a
/// delivery), and `"N others"` → rule for the bodies the message did not
/// address.
pub fn routing_of(entry: &pb::OutboxEntry) -> std::collections::BTreeMap<String, Option<String>> {
    entry
        .decisions
        .iter()
        .map(|d| {
            let rule = (d.outcome == pb::Outcome::Withhold as i32).then(|| d.rule.clone());
            (d.recipient.clone(), rule)
        })
        .chain(
            entry
                .unaddressed
                .iter()
                .map(|u| (format!("{} others", u.bodies), Some(u.rule.clone()))),
        )
        .collect()
}

pub async fn inbox_ids(sandbox: &Sandbox, body: &str) -> Vec<String> {
    let mut officer = sandbox.officer(body, "bob").await.unwrap();
    officer
        .list_inbox(pb::ListInboxRequest {
            unread_only: false,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.message_id)
        .collect()
}

/// Every audit record matching `query`, as the hub body's auditor sees them.
pub async fn audit_records(sandbox: &Sandbox, query: pb::AuditQuery) -> Vec<pb::AuditRecord> {
    use futures::StreamExt;
    // The oversight auditor reads the whole log.
    let mut auditor = sandbox.oversight().await.unwrap();
    let mut stream = auditor.list(query).await.unwrap().into_inner();
    let mut records = Vec::new();
    while let Some(r) = stream.next().await {
        records.push(r.unwrap());
    }
    records
}

/// Every audit record the hub holds, as the hub body's auditor sees them.
pub async fn audit_log(sandbox: &Sandbox) -> Vec<pb::AuditRecord> {
    audit_records(sandbox, pb::AuditQuery::default()).await
}

/// The message ids in `body`'s outbox, newest first.
pub async fn outbox_ids(sandbox: &Sandbox, body: &str) -> Vec<String> {
    let mut officer = sandbox.officer(body, "bob").await.unwrap();
    officer
        .list_outbox(pb::ListOutboxRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.message_id)
        .collect()
}

/// The test governance with the hub only: no node subscribes, so the hub's
/// queues and audit log change only when a test acts.
pub async fn hub_only() -> Sandbox {
    Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&[]))
        .await
        .unwrap()
}

/// Asserts that `result` is a refusal with `code` whose message contains
/// every one of `needles`; returns the status.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> tonic::Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?} containing {needles:?}, got Ok({v:?})"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "wrong code: {status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message of {code:?} lacks {needle:?}: {:?}",
            status.message()
        );
    }
    status
}

/// Replaces the sandbox's governance file (the hub reads it on reload).
pub fn write_governance(sandbox: &Sandbox, text: &str) {
    std::fs::write(sandbox.dir().join("governance.toml"), text).unwrap();
}

/// A client of the hub's Admin API with the dev certificate `stem`.
pub async fn admin(
    sandbox: &Sandbox,
    stem: &str,
) -> liaison_proto::v1::admin_client::AdminClient<tonic::transport::Channel> {
    let ch = liaison_pki::connect(
        &sandbox.hub_url(),
        &sandbox.material(stem).unwrap(),
        Some(liaison_types::Role::Hub),
        sandbox.governance().federation(),
    )
    .await
    .unwrap();
    liaison_proto::v1::admin_client::AdminClient::new(ch)
}

/// Submits a message from `origin` straight to the hub (as that body's node
/// would) and returns its id once the hub has accepted it.
pub async fn submit_as(
    node: &mut liaison_proto::v1::federation_client::FederationClient<tonic::transport::Channel>,
    origin: &str,
    labels: pb::Labels,
    body: &pb::Body,
) -> String {
    let env = envelope(origin, labels, body);
    let id = env.labels.as_ref().unwrap().message_id.clone();
    node.submit(pb::SubmitRequest {
        envelope: Some(env),
        ..Default::default()
    })
    .await
    .unwrap();
    id
}

/// Opens the stopped process's store in `dir`, applies `change` in one
/// write, and closes it (as a bug, a bad disk or an attacker would).
pub async fn change_store(
    dir: &std::path::Path,
    change: impl FnOnce(&mut liaison_store::Txn<'_>) -> Result<(), liaison_store::StoreError>
        + Send
        + 'static,
) {
    let db = liaison_store::Db::open(dir).unwrap();
    db.write(change).await.unwrap();
    tokio::task::spawn_blocking(move || db.close().unwrap())
        .await
        .unwrap();
}

/// Rewrites the value at `key` in the stopped hub's store with `damage`
/// (as a hub bug or a bad disk would), then closes the store. The key must
/// exist: a test that damages nothing proves nothing.
pub async fn damage_hub_record(
    sandbox: &Sandbox,
    key: &str,
    damage: impl FnOnce(Vec<u8>) -> Vec<u8> + Send + 'static,
) {
    let key = key.as_bytes().to_vec();
    change_store(&sandbox.dir().join("hub-data"), move |t| {
        let value = t.get(&key)?.ok_or_else(|| {
            liaison_store::StoreError::Engine(format!(
                "no {} in the hub's store: the key schema changed",
                String::from_utf8_lossy(&key)
            ))
        })?;
        t.put(key, damage(value));
        Ok(())
    })
    .await;
}

/// Runs `liaison --output json` with `args` against `server` as `who` (a
/// dev PKI stem), off the async runtime.
pub async fn liaison_json(
    sandbox: &Sandbox,
    server: &str,
    who: &str,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_liaison-child"));
    cmd.args(["--output", "json"])
        .args(args)
        .arg("--server")
        .arg(server)
        .arg("--certs")
        .arg(sandbox.certs())
        .arg("--as")
        .arg(who);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Each line of a command's standard output, as JSON.
pub fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Says in one line that a test (or part of one) skipped and why, on
/// standard error and, when `LIAISON_SKIP_LOG` names a file (`.ci/run` sets
/// it), in that file too, so that CI can say how many ran.
pub fn skip(what: &str) {
    eprintln!("skipped: {what}");
    if let Some(path) = std::env::var_os("LIAISON_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{what}");
        }
    }
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
