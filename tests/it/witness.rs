//! Every node witnesses the hub's audit log: it cosigns the checkpoints it
//! has verified, proves its own body's records, and raises the alarm when
//! the hub serves a log that is not an extension of the one it verified (a
//! rewritten history, or another view of the same size).

use std::path::Path;

use liaison_federation::{wait_until, Sandbox};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_tlog::tree::{self, Hash};
use liaison_tlog::{LogVerifier, WitnessVerifier};
use pb::{Classification as C, Kind as K};
use prost::Message as _;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{alert, assert_refused, audit_log, json_lines, labels, sandbox, SETTLE};

const BODIES: [&str; 4] = ["alpha", "bravo", "charlie", "obs"];

async fn liaison(
    sandbox: &Sandbox,
    server: &str,
    who: &str,
    args: &[&str],
) -> std::process::Output {
    crate::common::liaison_json(sandbox, server, who, args).await
}

/// The log's verifier key and the witnesses' keys, as the dev PKI wrote them.
fn keys(sandbox: &Sandbox) -> (LogVerifier, Vec<WitnessVerifier>) {
    let read = |name: &str| std::fs::read_to_string(sandbox.certs().join(name)).unwrap();
    let log = LogVerifier::from_text(read(liaison_pki::LOG_VKEY_FILE).trim()).unwrap();
    let witnesses = read(liaison_pki::WITNESSES_FILE)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| WitnessVerifier::from_text(l).unwrap())
        .collect();
    (log, witnesses)
}

/// An alert from alpha that only bravo may receive.
async fn alert_to_bravo(officer: &mut OfficerClient<Channel>, title: &str) -> String {
    officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(labels(K::Alert, C::OfficialUse, &["cybercrime"])),
            body: Some(alert(title)),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id
}

/// Waits until bravo's inbox holds `id`, and returns its entry.
async fn in_bravos_inbox(sandbox: &Sandbox, id: &str) -> pb::InboxSummary {
    wait_until(&format!("bravo receives {id}"), SETTLE, || async {
        let mut bravo = sandbox.officer("bravo", "bob").await.ok()?;
        bravo
            .list_inbox(pb::ListInboxRequest {
                unread_only: false,
                limit: 1000,
            })
            .await
            .ok()?
            .into_inner()
            .entries
            .into_iter()
            .find(|e| e.message_id == id)
    })
    .await
    .unwrap()
}

/// Waits until bravo has acknowledged `acked` (so that the log stops
/// growing: an acknowledgement is a record too) and every node has
/// cosigned the latest checkpoint; returns that checkpoint as the hub
/// serves it.
async fn witnessed_by_all(sandbox: &Sandbox, acked: &[&str]) -> pb::CheckpointResponse {
    let oversight = sandbox.oversight().await.unwrap();
    wait_until("every node cosigns the latest checkpoint", SETTLE, || {
        let mut o = oversight.clone();
        async move {
            let records = audit_log(sandbox).await;
            let all_acked = acked.iter().all(|id| {
                records.iter().any(|r| {
                    r.event == "acknowledged" && liaison_types::audit::names_message(r, id)
                })
            });
            let latest = o
                .get_checkpoint(pb::CheckpointRequest::default())
                .await
                .ok()?
                .into_inner();
            let witnessed = o
                .get_checkpoint(pb::CheckpointRequest {
                    tree_size: 0,
                    witnessed: true,
                })
                .await
                .ok()?
                .into_inner();
            (all_acked
                && witnessed.tree_size == latest.tree_size
                && witnessed.cosigners.len() == BODIES.len())
            .then_some(witnessed)
        }
    })
    .await
    .unwrap()
}

async fn node_status(sandbox: &Sandbox, body: &str) -> pb::NodeStatus {
    let mut officer = sandbox.officer(body, "bob").await.unwrap();
    officer
        .status(pb::NodeStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Checks an inclusion proof as an outside verifier would: the checkpoint
/// signed by the log key, the leaf hashed into its root along the path.
/// Returns the record the leaf holds.
fn check_inclusion(log: &LogVerifier, p: &pb::InclusionProof) -> pb::AuditRecord {
    let signed = log.verify(&p.checkpoint).unwrap();
    assert_eq!(signed.checkpoint.size, p.tree_size);
    let path: Vec<Hash> = p
        .hashes
        .iter()
        .map(|h| Hash(h.as_slice().try_into().unwrap()))
        .collect();
    tree::verify_inclusion(
        &path,
        p.leaf_index,
        p.tree_size,
        tree::leaf_hash(&p.leaf),
        signed.checkpoint.root,
    )
    .unwrap();
    // Any other leaf fails: the proof is of these bytes.
    let mut other = p.leaf.clone();
    other[0] ^= 1;
    assert!(tree::verify_inclusion(
        &path,
        p.leaf_index,
        p.tree_size,
        tree::leaf_hash(&other),
        signed.checkpoint.root
    )
    .is_err());
    pb::AuditRecord::decode(p.leaf.as_slice()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_cosigns_the_checkpoints_it_verified_and_proves_its_own_records() {
    let sandbox = sandbox().await;
    let (log, witnesses) = keys(&sandbox);
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let id = alert_to_bravo(&mut alice, "witnessed").await;
    let entry = in_bravos_inbox(&sandbox, &id).await;
    assert!(!entry.unverified_log);

    // The hub serves the checkpoint with every node's cosignature, and each
    // verifies under that node's witness key.
    let witnessed = witnessed_by_all(&sandbox, &[&id]).await;
    let signed = log.verify(&witnessed.note).unwrap();
    assert_eq!(signed.checkpoint.size, witnessed.tree_size);
    let mut cosigners: Vec<String> = log
        .cosignatures(&witnessed.note, &witnesses)
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    cosigners.sort();
    let fed = sandbox.governance().federation().to_owned();
    let want: Vec<String> = BODIES
        .iter()
        .map(|b| liaison_pki::witness_name(&fed, &liaison_types::BodyId::parse(b).unwrap()))
        .collect();
    assert_eq!(cosigners, want);

    // Each node shows what it witnessed, with no alarm, and writes the
    // checkpoint it holds to a file for operators to compare.
    for body in BODIES {
        let status = wait_until(&format!("{body} holds the latest"), SETTLE, || async {
            let s = node_status(&sandbox, body).await;
            (s.witnessed_size == witnessed.tree_size).then_some(s)
        })
        .await
        .unwrap();
        assert_eq!(status.witness_alarm, "", "{body}");
        let file = sandbox.dir().join("nodes").join(body).join("checkpoint");
        let held = log.verify(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(held.checkpoint, signed.checkpoint, "{}", file.display());
        let mut audit = sandbox
            .node_audit(body, &format!("{body}/auditor-audit"))
            .await
            .unwrap();
        let w = audit
            .witness_status(pb::WitnessStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((w.tree_size, w.alarm.as_str()), (witnessed.tree_size, ""));
        assert!(w.evidence.is_empty());
        assert!(w.cosigned_size > 0 && w.check_error.is_empty(), "{w:?}");
    }

    // The sender proves its message's receipt and routing; the recipient,
    // the decision to deliver to it; each proof verifies on its own.
    let mut alpha_audit = sandbox
        .node_audit("alpha", "alpha/officer-alice")
        .await
        .unwrap();
    let proved = alpha_audit
        .prove(pb::NodeProveRequest {
            message_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!proved.witnessed.is_empty());
    let records: Vec<pb::AuditRecord> = proved
        .proofs
        .iter()
        .map(|p| check_inclusion(&log, p))
        .collect();
    // Its receipt, a decision per body, then bravo's delivery and
    // acknowledgement (batch records that name it among their items).
    assert!(
        records
            .iter()
            .all(|r| liaison_types::audit::names_message(r, &id)),
        "{records:?}"
    );
    let proved_by_alpha = records.len();
    let events: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(events[0], "received");
    assert!(events.contains(&"delivered"), "{events:?}");
    let delivered_to: Vec<&str> = records
        .iter()
        .filter(|r| r.decision == "deliver")
        .map(|r| r.recipient.as_str())
        .collect();
    assert_eq!(delivered_to, ["bravo"], "{records:?}");

    let mut bravo_audit = sandbox
        .node_audit("bravo", "bravo/officer-bob")
        .await
        .unwrap();
    let proved = bravo_audit
        .prove(pb::NodeProveRequest {
            message_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let records: Vec<_> = proved
        .proofs
        .iter()
        .map(|p| check_inclusion(&log, p))
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].recipient.as_str(),
            records[0].message_id.as_str(),
            records[0].decision.as_str()
        ),
        ("bravo", id.as_str(), "deliver")
    );

    // A body that was not party to the message has nothing to prove, and
    // another body's certificate is refused by the node.
    // The officer's command does the same through the node, checking each
    // proof against the signed checkpoint.
    let alpha = sandbox.node_url("alpha").unwrap();
    let out = liaison(
        &sandbox,
        &alpha,
        "alpha/officer-alice",
        &["audit", "prove", "--node", "--message", &id],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), proved_by_alpha);
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:?}");
    assert_eq!(lines[0]["record"]["event"], "received");

    let mut charlie_audit = sandbox
        .node_audit("charlie", "charlie/officer-bob")
        .await
        .unwrap();
    assert_refused(
        charlie_audit
            .prove(pb::NodeProveRequest {
                message_id: id.clone(),
            })
            .await,
        Code::NotFound,
        &[&id],
    );
    let mut stranger = sandbox
        .node_audit("alpha", "bravo/officer-bob")
        .await
        .unwrap();
    assert_refused(
        stranger.witness_status(pb::WitnessStatusRequest {}).await,
        Code::PermissionDenied,
        &["bravo"],
    );
    sandbox.shutdown().await.unwrap();
}

/// Rewrites the stopped hub's audit log: every leaf of `records` appended
/// again from scratch (their positions and hashes recomputed, so that the
/// log is whole and the hub's own checks pass), as a hub that rewrites its
/// history would.
async fn rewrite_hub_log(hub_data: &Path, records: Vec<pb::AuditRecord>) {
    let db = liaison_store::Db::open(hub_data).unwrap();
    let old: Vec<Vec<u8>> = db
        .scan_prefix(b"l/", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        !old.is_empty(),
        "no l/ runs in the hub's store: the key schema changed"
    );
    assert!(db.get(b"meta/log_head").unwrap().is_some());
    db.write(move |t| {
        for k in old {
            t.delete(k);
        }
        t.delete(b"meta/log_head".to_vec());
        for r in records {
            liaison_hub::store::append_audit(t, r)?;
        }
        Ok::<_, liaison_store::StoreError>(())
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || db.close().unwrap())
        .await
        .unwrap();
}

/// Every record as its leaf holds it.
fn leaves(records: &[pb::AuditRecord]) -> Vec<pb::AuditRecord> {
    records
        .iter()
        .map(|r| pb::AuditRecord::decode(r.leaf.as_slice()).unwrap())
        .collect()
}

async fn witness_status(sandbox: &Sandbox, body: &str) -> pb::WitnessStatus {
    let mut audit = sandbox
        .node_audit(body, &format!("{body}/auditor-audit"))
        .await
        .unwrap();
    audit
        .witness_status(pb::WitnessStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn alarmed(sandbox: &Sandbox, body: &str) -> pb::WitnessStatus {
    wait_until(
        &format!("{body}'s witness raises the alarm"),
        SETTLE,
        || async {
            let w = witness_status(sandbox, body).await;
            (!w.alarm.is_empty()).then_some(w)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_rewritten_after_it_was_witnessed_raises_the_alarm_everywhere() {
    let mut sandbox = sandbox().await;
    let (log, _) = keys(&sandbox);
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let id = alert_to_bravo(&mut alice, "before").await;
    in_bravos_inbox(&sandbox, &id).await;
    let witnessed = witnessed_by_all(&sandbox, &[&id]).await;
    let records = audit_log(&sandbox).await;
    assert_eq!(records.len() as u64, witnessed.tree_size);

    // The hub rewrites one routing decision in its past (the decision to
    // deliver to bravo now says bravo was withheld from), recomputing every
    // hash so that the log is whole.
    sandbox.stop_hub().await.unwrap();
    let mut forged = leaves(&records);
    let target = forged
        .iter()
        .position(|r| r.message_id == id && r.recipient == "bravo")
        .unwrap();
    forged[target].decision = "withhold".into();
    forged[target].reason = "rewritten".into();
    rewrite_hub_log(&sandbox.dir().join("hub-data"), forged).await;
    sandbox.start_hub().await.unwrap();

    // Its checkpoint of the same size has another root: every node sees
    // two views of one log, raises the alarm and keeps both checkpoints.
    for body in BODIES {
        let w = alarmed(&sandbox, body).await;
        assert!(w.alarm.contains("root"), "{body}: {}", w.alarm);
        let e = &w.evidence[0];
        let held = log.verify(&e.held).unwrap();
        let served = log.verify(&e.served).unwrap();
        assert_eq!(held.checkpoint.size, served.checkpoint.size);
        assert_ne!(held.checkpoint.root, served.checkpoint.root);
        // The checkpoint held stays the one verified.
        assert_eq!(w.tree_size, witnessed.tree_size);
        let status = node_status(&sandbox, body).await;
        assert_eq!(status.witness_alarm, w.alarm);
    }

    // The oversight auditor's verification names the rewrite: the tree of
    // the size the witnesses cosigned is not the one they cosigned.
    let mut oversight = sandbox.oversight().await.unwrap();
    let v = oversight
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok, "{v:?}");
    assert!(
        v.error.contains("rewritten after it was witnessed"),
        "{}",
        v.error
    );
    assert_eq!(v.first_bad_seq, witnessed.tree_size);

    // The operators' commands show it and fail: status and audit watch.
    let bravo = sandbox.node_url("bravo").unwrap();
    let out = liaison(&sandbox, &bravo, "bravo/officer-bob", &["status"]).await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = &json_lines(&out)[0];
    assert!(
        status["witness_alarm"].as_str().unwrap().contains("root"),
        "{status}"
    );
    let out = liaison(
        &sandbox,
        &bravo,
        "bravo/auditor-audit",
        &["audit", "watch", "--once"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = &json_lines(&out)[0];
    assert_eq!(seen["tree_size"], witnessed.tree_size, "{seen}");
    assert!(
        seen["alarm"]["problem"].as_str().unwrap().contains("root"),
        "{seen}"
    );
    let evidence = &seen["evidence"][0];
    assert_eq!(evidence["held"]["signature"], "verified", "{seen}");
    assert_eq!(evidence["served"]["signature"], "verified", "{seen}");
    assert_eq!(
        evidence["held"]["tree_size"],
        evidence["served"]["tree_size"]
    );
    assert_ne!(evidence["held"]["root"], evidence["served"]["root"]);
    let out = liaison(
        &sandbox,
        &bravo,
        "bravo/officer-bob",
        &["audit", "clear-alarm", "--reason", "mine"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Routing goes on, but what arrives now is marked as received under an
    // unverified log.
    let after = alert_to_bravo(&mut alice, "after").await;
    let entry = in_bravos_inbox(&sandbox, &after).await;
    assert!(entry.unverified_log, "{entry:?}");
    assert!(!in_bravos_inbox(&sandbox, &id).await.unverified_log);

    // Only an admin clears the alarm; taking the hub's latest as the one
    // held starts witnessing again from it.
    let mut officer = sandbox
        .node_audit("bravo", "bravo/officer-bob")
        .await
        .unwrap();
    assert_refused(
        officer
            .clear_alarm(pb::ClearAlarmRequest {
                reason: "looked into it".into(),
                trust_latest: true,
            })
            .await,
        Code::PermissionDenied,
        &["admin"],
    );
    let mut admin = sandbox
        .node_audit("bravo", "bravo/admin-admin")
        .await
        .unwrap();
    assert_refused(
        admin
            .clear_alarm(pb::ClearAlarmRequest {
                reason: String::new(),
                trust_latest: true,
            })
            .await,
        Code::InvalidArgument,
        &["reason"],
    );
    let out = liaison(
        &sandbox,
        &bravo,
        "bravo/admin-admin",
        &[
            "audit",
            "clear-alarm",
            "--trust-latest",
            "--reason",
            "incident 42: the hub operator restored the log",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cleared = &json_lines(&out)[0];
    assert_eq!(cleared["cleared"], true, "{cleared}");
    assert!(
        cleared["evidence_kept"].as_u64().unwrap() > 0,
        "the evidence is kept"
    );
    let out = liaison(&sandbox, &bravo, "bravo/officer-bob", &["status"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next = alert_to_bravo(&mut alice, "cleared").await;
    assert!(!in_bravos_inbox(&sandbox, &next).await.unverified_log);
    // The other nodes keep their alarm.
    assert!(!witness_status(&sandbox, "alpha").await.alarm.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_shown_different_extensions_of_the_log_are_a_split_view() {
    let mut sandbox = sandbox().await;
    let (log, _) = keys(&sandbox);
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let first = alert_to_bravo(&mut alice, "first").await;
    in_bravos_inbox(&sandbox, &first).await;
    witnessed_by_all(&sandbox, &[&first]).await;

    // charlie goes away; alpha and bravo witness one more message.
    sandbox.stop_node("charlie").await.unwrap();
    let second = alert_to_bravo(&mut alice, "second").await;
    in_bravos_inbox(&sandbox, &second).await;
    // Once bravo's acknowledgement of it is recorded, the log stops
    // growing; bravo witnesses it whole.
    let records = wait_until("bravo witnesses the second message", SETTLE, || async {
        let records = audit_log(&sandbox).await;
        let acked = records
            .iter()
            .any(|r| r.event == "acknowledged" && liaison_types::audit::names_message(r, &second));
        let held = witness_status(&sandbox, "bravo").await.tree_size;
        (acked && held == records.len() as u64).then_some(records)
    })
    .await
    .unwrap();
    let size = records.len() as u64;
    let bravo_file = sandbox.dir().join("nodes/bravo/checkpoint");
    let bravo_view = sandbox.dir().join("bravo-view");
    // Written after the status shows it.
    wait_until("bravo's checkpoint file", SETTLE, || async {
        let note = std::fs::read(&bravo_file).ok()?;
        let c = log.verify(&note).ok()?;
        (c.checkpoint.size == size).then_some(())
    })
    .await
    .unwrap();
    std::fs::copy(&bravo_file, &bravo_view).unwrap();

    // The hub shows charlie another history of the same size: the records
    // before the second message as they were, then others in its place.
    // charlie's own check passes: the view extends the checkpoint it holds.
    sandbox.stop_node("alpha").await.unwrap();
    sandbox.stop_node("bravo").await.unwrap();
    sandbox.stop_hub().await.unwrap();
    let mut forged = leaves(&records);
    for r in forged.iter_mut().filter(|r| r.message_id == second) {
        r.reason = "another story".into();
    }
    rewrite_hub_log(&sandbox.dir().join("hub-data"), forged).await;
    sandbox.start_hub().await.unwrap();
    sandbox.start_node("charlie").await.unwrap();
    let charlie = wait_until("charlie witnesses the other view", SETTLE, || async {
        let w = witness_status(&sandbox, "charlie").await;
        (w.tree_size == size).then_some(w)
    })
    .await
    .unwrap();
    assert_eq!(charlie.alarm, "", "charlie cannot tell on its own");
    let charlie_file = sandbox.dir().join("nodes/charlie/checkpoint");

    // Comparing the two bodies' checkpoint files shows the split.
    let out = tokio::task::spawn_blocking({
        let certs = sandbox.certs().to_owned();
        let (a, b) = (bravo_view.clone(), charlie_file.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_liaison-child"))
                .arg("--output")
                .arg("json")
                .arg("audit")
                .arg("compare")
                .arg(&a)
                .arg(&b)
                .arg("--certs")
                .arg(&certs)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "a split view must fail");
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["consistent"], false, "{verdict}");
    assert!(
        verdict["verdict"].as_str().unwrap().contains("SPLIT VIEW"),
        "{verdict}"
    );

    // Each node that then sees the other's view raises the alarm itself.
    sandbox.start_node("bravo").await.unwrap();
    let w = alarmed(&sandbox, "bravo").await;
    assert!(w.alarm.contains("root"), "{}", w.alarm);
    sandbox.shutdown().await.unwrap();
}

/// The hub fails closed: while its store refuses writes (a failing or full
/// disk), a submission is refused with UNAVAILABLE naming the cause and
/// nothing of it is routed or recorded; once the store works again the hub
/// routes by itself, with no restart, and the log is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_routes_nothing_it_cannot_record_and_resumes_by_itself() {
    use liaison_types::{Identity, Role};
    let engine = std::sync::Arc::new(liaison_store::testing::Broken::default());
    let db = liaison_store::Db::with_engine(
        std::sync::Arc::clone(&engine) as std::sync::Arc<dyn liaison_store::Engine>
    );
    let gov = liaison_policy::Governance::from_toml("governance.toml", crate::common::GOVERNANCE)
        .unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let (skey, vkey) = liaison_tlog::note::key_pair(
        "liaison.test/audit",
        liaison_tlog::note::LOG_KEY_TYPE,
        [9; 32],
    )
    .unwrap();
    let keys = liaison_hub::LoadedAuditKeys {
        signer: liaison_tlog::LogSigner::from_text(&skey).unwrap(),
        witnesses: Default::default(),
    };
    let log = LogVerifier::from_text(&vkey).unwrap();
    let hub = std::sync::Arc::new(
        liaison_hub::HubState::new(db, gov, keys, Default::default(), stopping)
            .await
            .unwrap(),
    );
    let alpha = Identity::new("liaison.test", "alpha", Role::Node, "node").unwrap();
    let bravo = Identity::new("liaison.test", "bravo", Role::Node, "node").unwrap();
    let send = |title: &str| {
        crate::common::envelope(
            "alpha",
            labels(K::Alert, C::OfficialUse, &["cybercrime"]),
            &alert(title),
        )
    };
    let first = hub.submit(&alpha, Some(send("before")), "").await.unwrap();
    let before = log.verify(&first.checkpoint).unwrap().checkpoint;

    // The disk fails: the submission is refused, naming why, and nothing of
    // it is queued or recorded.
    engine.set_broken(true);
    let env = send("while broken");
    let id = env.labels.as_ref().unwrap().message_id.clone();
    let refused = hub
        .submit(&alpha, Some(env.clone()), "")
        .await
        .map_err(tonic::Status::from);
    assert_refused(
        refused,
        Code::Unavailable,
        &[
            "nothing was routed",
            "audit log",
            "simulated device failure",
            "retry",
        ],
    );
    let mut queue = hub.subscribe(&bravo, 0).unwrap();
    let d = queue.recv().await.unwrap().unwrap();
    assert_eq!(
        d.envelope.unwrap().labels.unwrap().message_id,
        first.message_id
    );
    // bravo's stream yields nothing more (or ends with UNAVAILABLE, when
    // the hub cannot record what it streams).
    match tokio::time::timeout(std::time::Duration::from_millis(300), queue.recv()).await {
        Err(_) => {}
        Ok(Some(Err(s))) if s.code() == Code::Unavailable => {}
        other => panic!("nothing else is queued for bravo: {other:?}"),
    }
    let checkpoint = hub.checkpoint(0, false).unwrap();
    assert_eq!(checkpoint.tree_size, before.size, "nothing was recorded");
    // The hub's status names the failure (admins see it, and the health
    // service and metrics show it).
    let status = hub.status(&alpha, 0).unwrap();
    assert!(
        status.storage_failure.contains("simulated device failure"),
        "{status:?}"
    );

    // The disk works again: the same submission is routed, once, with no
    // restart, and the log verifies whole.
    engine.set_broken(false);
    let again = wait_until("the hub routes again", SETTLE, || {
        let hub = std::sync::Arc::clone(&hub);
        let alpha = alpha.clone();
        let env = env.clone();
        async move { hub.submit(&alpha, Some(env), "").await.ok() }
    })
    .await
    .unwrap();
    assert_eq!(again.message_id, id);
    assert_eq!(hub.status(&alpha, 0).unwrap().storage_failure, "");
    assert!(!again.duplicate, "it was never recorded, so it is new");
    // bravo, subscribing again, is streamed both messages, in order.
    let mut queue = hub.subscribe(&bravo, 0).unwrap();
    let mut streamed = Vec::new();
    while streamed.len() < 2 {
        let d = tokio::time::timeout(SETTLE, queue.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        streamed.push(d.envelope.unwrap().labels.unwrap().message_id);
    }
    assert_eq!(streamed, [first.message_id.clone(), id.clone()]);
    let v = hub.audit_verify().unwrap();
    assert!(v.ok, "{v:?}");
    let after = log.verify(&again.checkpoint).unwrap().checkpoint;
    assert!(after.size > before.size);
    let oversight = Identity::new("liaison.test", "alpha", Role::Oversight, "ccf").unwrap();
    let mut listed = hub.audit_list(
        &oversight,
        pb::AuditQuery {
            message_id: id.clone(),
            ..Default::default()
        },
    );
    let mut events = Vec::new();
    while let Some(r) = listed.recv().await {
        events.push(r.unwrap().event);
    }
    assert_eq!(
        events.iter().filter(|e| *e == "received").count(),
        1,
        "{events:?}"
    );
}

/// Changes the stopped hub's store with `change`, then closes it.
async fn change_hub_store(
    sandbox: &Sandbox,
    change: impl FnOnce(&mut liaison_store::Txn<'_>) -> Result<(), liaison_store::StoreError>
        + Send
        + 'static,
) {
    crate::common::change_store(&sandbox.dir().join("hub-data"), change).await;
}

async fn oversight_verify(sandbox: &Sandbox) -> pb::VerifyResponse {
    let mut oversight = sandbox.oversight().await.unwrap();
    oversight
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The hub's log damaged on disk (a flipped byte in a leaf, a deleted run)
/// fails verification at the first bad position, on the hub and in the
/// auditor's command; a truncated log fails it too, and every witness that
/// holds a larger tree raises the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_log_is_named_by_verify_and_the_witnesses() {
    let mut sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = alert_to_bravo(&mut alice, &format!("message {i}")).await;
        in_bravos_inbox(&sandbox, &id).await;
        ids.push(id);
    }
    let acked: Vec<&str> = ids.iter().map(String::as_str).collect();
    let witnessed = witnessed_by_all(&sandbox, &acked).await;
    assert!(oversight_verify(&sandbox).await.ok);
    let records = audit_log(&sandbox).await;
    let runs: Vec<(Vec<u8>, Vec<u8>)> = {
        sandbox.stop_hub().await.unwrap();
        let db = liaison_store::Db::open(&sandbox.dir().join("hub-data")).unwrap();
        let runs = db.scan_prefix(b"l/", usize::MAX).unwrap();
        tokio::task::spawn_blocking(move || db.close().unwrap())
            .await
            .unwrap();
        runs
    };
    assert!(runs.len() >= 3, "one run per transaction: {}", runs.len());
    let position = |key: &[u8]| u64::from_be_bytes(key[2..10].try_into().unwrap());

    // A flipped byte in the first record ("received" becomes "Received").
    let (key, value) = runs[0].clone();
    let at = value
        .windows(8)
        .position(|w| w == b"received")
        .expect("the first record is a receipt");
    let mut flipped = value.clone();
    flipped[at] ^= 0x20;
    change_hub_store(&sandbox, move |t| {
        t.put(key, flipped);
        Ok(())
    })
    .await;
    sandbox.start_hub().await.unwrap();
    let v = oversight_verify(&sandbox).await;
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_seq, 1, "{v:?}");
    let out = liaison(
        &sandbox,
        &sandbox.hub_url(),
        &format!("{}/oversight-ccf", sandbox.governance().hub_body()),
        &["audit", "verify"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Repaired, then a whole run deleted: the first position it held is
    // missing.
    sandbox.stop_hub().await.unwrap();
    let (key, value) = runs[0].clone();
    let (gone, _) = runs[1].clone();
    let missing = position(&gone);
    change_hub_store(&sandbox, move |t| {
        t.put(key, value);
        t.delete(gone);
        Ok(())
    })
    .await;
    sandbox.start_hub().await.unwrap();
    let v = oversight_verify(&sandbox).await;
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_seq, missing, "{v:?}");
    assert!(v.error.contains("missing"), "{}", v.error);

    // Truncated: the log rebuilt from its first records only. The hub's
    // own tree is whole, but the witnesses hold a larger one.
    sandbox.stop_hub().await.unwrap();
    let (key, value) = runs[1].clone();
    change_hub_store(&sandbox, move |t| {
        t.put(key, value);
        Ok(())
    })
    .await;
    let keep = (records.len() / 2).max(1);
    rewrite_hub_log(&sandbox.dir().join("hub-data"), leaves(&records[..keep])).await;
    sandbox.start_hub().await.unwrap();
    for body in BODIES {
        let w = alarmed(&sandbox, body).await;
        assert!(w.alarm.contains("fewer than"), "{body}: {}", w.alarm);
        assert_eq!(
            w.tree_size, witnessed.tree_size,
            "the larger tree stays held"
        );
    }
    let v = oversight_verify(&sandbox).await;
    assert!(!v.ok, "{v:?}");
    assert!(v.error.contains("truncated"), "{}", v.error);
    // The hub's status still answers, with the log it holds.
    let out = liaison(
        &sandbox,
        &sandbox.hub_url(),
        &format!("{}/oversight-ccf", sandbox.governance().hub_body()),
        &["status"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = &json_lines(&out)[0];
    let size = status["checkpoint"]["tree_size"].as_u64().unwrap();
    assert!(
        (keep as u64..witnessed.tree_size).contains(&size),
        "{status}"
    );
    sandbox.shutdown().await.unwrap();
}

/// The governance may name the federation's log key (`[audit] log_key`):
/// a reload naming another key than the one the hub signs with is refused,
/// naming the key; the right one goes into force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_governance_names_the_log_key_and_a_hub_with_another_is_refused() {
    let sandbox = crate::common::hub_only().await;
    let ours = std::fs::read_to_string(sandbox.certs().join(liaison_pki::LOG_VKEY_FILE)).unwrap();
    let (_, theirs) = liaison_tlog::note::key_pair(
        "liaison.test/audit",
        liaison_tlog::note::LOG_KEY_TYPE,
        [77; 32],
    )
    .unwrap();
    let mut admin = crate::common::admin(&sandbox, "alpha/admin-admin").await;
    let with_key = |key: &str| {
        format!(
            "{}\n[audit]\nlog_key = \"{}\"\n",
            crate::common::GOVERNANCE,
            key.trim()
        )
    };
    // A hub whose signing key is not the one the governance names does
    // not start.
    let signer = liaison_tlog::LogSigner::from_text(
        std::fs::read_to_string(sandbox.certs().join(liaison_pki::LOG_KEY_FILE))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let gov = liaison_policy::Governance::from_toml("governance.toml", &with_key(&theirs)).unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let keys = liaison_hub::LoadedAuditKeys {
        signer,
        witnesses: Default::default(),
    };
    let refused = liaison_hub::HubState::new(
        liaison_store::Db::in_memory(),
        gov,
        keys,
        Default::default(),
        stopping,
    )
    .await
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("governance.toml") && refused.contains("log_key"),
        "{refused}"
    );

    crate::common::write_governance(&sandbox, &with_key(&theirs));
    assert_refused(
        admin.reload_policy(pb::ReloadPolicyRequest {}).await,
        Code::FailedPrecondition,
        &["log_key", "this hub signs with"],
    );
    crate::common::write_governance(&sandbox, &with_key(&ours));
    admin
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap();
    // A node reads it from the governance the hub hands out.
    let mut node = sandbox.hub_as("bravo/node").await.unwrap();
    let snap = node
        .get_governance(pb::GetGovernanceRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(snap.text.contains(ours.trim()), "{}", snap.text);
    sandbox.shutdown().await.unwrap();
}
