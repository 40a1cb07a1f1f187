//! Storage faults on real disks: the hub's data directory on a small
//! tmpfs that fills up. Submissions are refused with RESOURCE_EXHAUSTED
//! naming the full disk, nothing is half-written, the sending node keeps
//! its messages, and service resumes by itself once space returns.
//! (Damaged records and logs: `bad_input.rs` and `witness.rs`.)

use std::path::{Path, PathBuf};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};
use tonic::Code;

use crate::common::{alert, audit_records, envelope, inbox_ids, labels, GOVERNANCE, SETTLE};

/// A tmpfs mounted for one test; unmounted when dropped.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// Mounts `bytes` of tmpfs at `at` (created), or says in one line why
    /// it cannot (the process may not mount) and returns `None`, unless
    /// `LIAISON_REQUIRE_PRIVILEGES` asks for a failure instead.
    fn mount(at: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("LIAISON_REQUIRE_PRIVILEGES").is_none(),
                "cannot mount a tmpfs, and LIAISON_REQUIRE_PRIVILEGES is set"
            );
            crate::common::skip("full disk at the hub: this process may not mount a small tmpfs to fill (needs CAP_SYS_ADMIN)");
            return None;
        }
        Some(Self { at: at.to_owned() })
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.at.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

fn to_bravo(title: &str) -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        labels: Some(labels(K::Alert, C::OfficialUse, &["cybercrime"])),
        body: Some(alert(title)),
        targets: Vec::new(),
        clear_targets: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_the_hub_refuses_submissions_whole_and_service_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // The hub's store ("hub-data" in the sandbox) on a disk of its own.
    let Some(disk) = SmallDisk::mount(&dir.path().join("hub-data"), 64 << 20) else {
        return;
    };
    let mut o = SandboxOptions::new(GOVERNANCE).nodes(&["alpha", "bravo"]);
    o.dir = Some(dir.path().to_path_buf());
    let sandbox = Sandbox::start(o).await.unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let before = alice
        .submit(to_bravo("before the disk fills"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    sandbox.settled("alpha", &before, SETTLE).await.unwrap();

    let filler = disk.fill();
    // Asked directly, the hub refuses with RESOURCE_EXHAUSTED, naming the
    // full disk.
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let direct = envelope(
        "alpha",
        labels(K::Alert, C::OfficialUse, &["cybercrime"]),
        &alert("asked while the disk is full"),
    );
    let direct_id = direct.labels.as_ref().unwrap().message_id.clone();
    // A big enough message that its write cannot fit in what is left.
    let mut big = direct;
    big.body = prost::Message::encode_to_vec(&pb::Body {
        title: "asked while the disk is full".into(),
        content: Some(pb::body::Content::Alert(pb::Alert {
            text: "x".repeat(60_000),
            ..Default::default()
        })),
    });
    let refused = node
        .submit(pb::SubmitRequest {
            envelope: Some(big.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("disk is full"),
        "{}",
        refused.message()
    );
    // An officer's message waits in alpha's outbox, saying why.
    let during = alice
        .submit(to_bravo("while the disk is full"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    wait_until("alpha's node hears the disk is full", SETTLE, || async {
        let mut alice = alice.clone();
        let entries = alice
            .list_outbox(pb::ListOutboxRequest { limit: 100 })
            .await
            .ok()?
            .into_inner()
            .entries;
        entries
            .into_iter()
            .find(|e| e.message_id == during && e.last_error.contains("disk is full"))
    })
    .await
    .unwrap();

    // Space returns: the waiting message is routed by itself, once.
    std::fs::remove_file(&filler).unwrap();
    let entry = sandbox.settled("alpha", &during, SETTLE).await.unwrap();
    assert_eq!(entry.status, "routed", "{entry:?}");
    wait_until("bravo has it", SETTLE, || async {
        inbox_ids(&sandbox, "bravo")
            .await
            .contains(&during)
            .then_some(())
    })
    .await
    .unwrap();
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: during.clone(),
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(received.len(), 1, "{received:?}");
    // The refused one, sent again, is stored once: as new, or as the
    // duplicate of a write the store kept whole although it failed.
    node.submit(pb::SubmitRequest {
        envelope: Some(big),
        ..Default::default()
    })
    .await
    .unwrap();
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            message_id: direct_id.clone(),
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(received.len(), 1, "{received:?}");
    // The log is whole.
    let mut auditor = sandbox.oversight().await.unwrap();
    let v = auditor
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    sandbox.shutdown().await.unwrap();
    drop(disk);
}
