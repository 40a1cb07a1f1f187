//! Each node keeps a log of its own, a Merkle tree like the hub's, of what
//! happens only there: an officer's first reading, a retraction applied,
//! content erased when it expired (and a quarantine, in `delivery.rs`).
//! `liaison audit list --node` lists it and `audit verify --node` checks
//! it, on the node and on the auditor's side; a flipped byte is named.

use liaison_federation::{wait_until, Sandbox};
use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};

use crate::common::{alert, json_lines, labels, sandbox, SETTLE};

async fn liaison(sandbox: &Sandbox, who: &str, args: &[&str]) -> std::process::Output {
    let bravo = sandbox.node_url("bravo").unwrap();
    crate::common::liaison_json(sandbox, &bravo, who, args).await
}

/// bravo's node log, as its auditor reads it.
async fn bravo_log(sandbox: &Sandbox) -> Vec<pb::NodeLogRecord> {
    let mut audit = sandbox
        .node_audit("bravo", "bravo/auditor-audit")
        .await
        .unwrap();
    audit
        .list_log(pb::NodeLogRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records
}

async fn logged(sandbox: &Sandbox, event: &str, id: &str) -> pb::NodeLogRecord {
    wait_until(
        &format!("bravo's node logs {event} of {id}"),
        SETTLE,
        || async {
            bravo_log(sandbox)
                .await
                .into_iter()
                .find(|r| r.event == event && r.message_id == id)
        },
    )
    .await
    .unwrap()
}

async fn send(
    officer: &mut liaison_proto::v1::officer_client::OfficerClient<tonic::transport::Channel>,
    title: &str,
    expires_in_ms: i64,
) -> String {
    let mut l = labels(K::Alert, C::OfficialUse, &["cybercrime"]);
    if expires_in_ms > 0 {
        l.expires_at_ms = liaison_types::now_ms() + expires_in_ms;
    }
    officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(l),
            body: Some(alert(title)),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logs_what_happens_only_there_in_a_merkle_log_that_verifies() {
    let mut sandbox = sandbox().await;
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut bob = sandbox.officer("bravo", "bob").await.unwrap();
    let read = send(&mut alice, "to be read", 0).await;
    let retracted = send(&mut alice, "to be retracted", 0).await;
    let expiring = send(&mut alice, "to expire", 3000).await;
    for id in [&read, &retracted, &expiring] {
        wait_until("bravo receives it", SETTLE, || async {
            crate::common::inbox_ids(&sandbox, "bravo")
                .await
                .contains(id)
                .then_some(())
        })
        .await
        .unwrap();
    }

    // An officer reads one (twice: one record, the first reading).
    for _ in 0..2 {
        bob.acknowledge(pb::OfficerAcknowledgeRequest {
            message_id: read.clone(),
        })
        .await
        .unwrap();
    }
    let r = logged(&sandbox, "read", &read).await;
    assert_eq!(r.actor, "spiffe://liaison.test/org/bravo/officer/bob");
    // The originator retracts one; one expires.
    alice
        .retract(pb::OfficerRetractRequest {
            message_id: retracted.clone(),
            reason: "sent in error".into(),
        })
        .await
        .unwrap();
    let r = logged(&sandbox, "retracted", &retracted).await;
    assert_eq!(r.origin, "alpha");
    assert!(r.hub_seq > 0, "{r:?}");
    let r = logged(&sandbox, "expired", &expiring).await;
    assert!(r.reason.contains("expired at"), "{r:?}");
    let log = bravo_log(&sandbox).await;
    assert_eq!(
        log.iter().filter(|r| r.event == "read").count(),
        1,
        "{log:?}"
    );
    assert_eq!(
        log.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=log.len() as u64).collect::<Vec<_>>()
    );

    // The command line lists it, filtered, and verifies it on both sides.
    let out = liaison(
        &sandbox,
        "bravo/auditor-audit",
        &["audit", "list", "--node", "--event", "read"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["message_id"], read.as_str());
    assert!(listed[0]["at"].as_str().unwrap().ends_with('Z'), "RFC 3339");
    let out = liaison(
        &sandbox,
        "bravo/officer-bob",
        &["audit", "verify", "--node"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records"], log.len(), "{v}");
    assert_eq!(v["node"]["root"], v["root"], "{v}");
    // Another body's certificate is refused.
    let mut other = sandbox
        .node_audit("bravo", "alpha/auditor-audit")
        .await
        .unwrap();
    assert!(other.list_log(pb::NodeLogRequest::default()).await.is_err());

    // A flipped byte in the stored log is named by both checks.
    sandbox.stop_node("bravo").await.unwrap();
    crate::common::change_store(&sandbox.dir().join("nodes/bravo"), |t| {
        let (key, mut value) = t
            .scan(b"nl/", &liaison_store::keys::prefix_end(b"nl/"), 1)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                liaison_store::StoreError::Engine(
                    "no node log runs under nl/: the key schema changed".into(),
                )
            })?;
        value[6] ^= 0x20;
        t.put(key, value);
        Ok(())
    })
    .await;
    sandbox.start_node("bravo").await.unwrap();
    let out = liaison(
        &sandbox,
        "bravo/auditor-audit",
        &["audit", "verify", "--node"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out)[0];
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["node"]["first_bad_seq"], 1, "{v}");
    sandbox.shutdown().await.unwrap();
}
