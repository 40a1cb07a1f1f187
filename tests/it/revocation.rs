//! Certificate revocation end to end: a hub with a `[tls] crl` file and a
//! short maximum connection age; revoking bravo's node certificate and
//! reloading through the Admin API refuses bravo's next handshake, leaves
//! alpha working, and ends bravo's open subscription within the age.

use std::time::{Duration, Instant};

use futures::StreamExt;
use liaison_federation::{dev_spec, wait_until, Sandbox, SandboxOptions};
use liaison_pki::CertificateAuthority;
use liaison_proto::v1 as pb;

use crate::common::{admin, assert_refused, audit_log, GOVERNANCE, SETTLE};

/// The hub's maximum connection age in these tests.
const MAX_AGE: Duration = Duration::from_millis(3_000);

/// A hub-only sandbox whose hub reads `certs/crl.pem` (empty at first).
async fn hub_with_crl(dir: &std::path::Path) -> (Sandbox, std::path::PathBuf) {
    let certs = dir.join("certs");
    let gov = liaison_policy::Governance::from_toml("governance.toml", GOVERNANCE).unwrap();
    liaison_pki::ensure_dev_pki(&certs, &dev_spec(&gov)).unwrap();
    let ca = CertificateAuthority::load(&certs).unwrap();
    let crl = certs.join("crl.pem");
    std::fs::write(&crl, ca.revoke(&[], &[]).unwrap()).unwrap();
    let mut opts = SandboxOptions::new(GOVERNANCE)
        .nodes(&[])
        .hub_tls(&format!("crl = \"{}\"", crl.display()))
        .hub_limits(&format!("max_connection_age_ms = {}", MAX_AGE.as_millis()));
    opts.certs = Some(certs);
    opts.dir = Some(dir.join("sandbox"));
    (Sandbox::start(opts).await.unwrap(), crl)
}

/// Whether a fresh connection as `stem` can open a subscription.
async fn can_subscribe(sandbox: &Sandbox, stem: &str) -> bool {
    let Ok(mut hub) = sandbox.hub_as(stem).await else {
        return false;
    };
    hub.subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_and_its_open_stream_ends_within_the_max_age() {
    let temp = tempfile::tempdir().unwrap();
    let (sandbox, crl) = hub_with_crl(temp.path()).await;

    // Before: bravo subscribes.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let mut open = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let opened = Instant::now();

    // Revoke bravo's node certificate and reload.
    let ca = CertificateAuthority::load(sandbox.certs()).unwrap();
    let bravo_cert = std::fs::read_to_string(sandbox.certs().join("bravo/node.pem")).unwrap();
    std::fs::write(&crl, ca.revoke(&[bravo_cert], &[]).unwrap()).unwrap();
    let reloaded = admin(&sandbox, "alpha/admin-admin")
        .await
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    // The governance is unchanged; the new CRL is audited.
    assert!(!reloaded.changed);
    assert!(reloaded.audit_seq > 0, "{reloaded:?}");
    let log = audit_log(&sandbox).await;
    let record = log.iter().find(|r| r.seq == reloaded.audit_seq).unwrap();
    assert_eq!(record.rule, "policy.reload");
    assert!(
        record.reason.contains("crl: 1 revoked certificates"),
        "{record:?}"
    );

    // A new connection as bravo fails; alpha still works.
    assert!(!can_subscribe(&sandbox, "bravo/node").await);
    assert!(can_subscribe(&sandbox, "alpha/node").await);

    // Bravo's open stream ends (an error or the end) within the max age.
    let ended = tokio::time::timeout(MAX_AGE + SETTLE, async {
        loop {
            match open.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "bravo's stream still open");
    let age = opened.elapsed();
    assert!(
        age < MAX_AGE + Duration::from_secs(2),
        "ended after {age:?}"
    );
    // And bravo cannot come back.
    wait_until("bravo stays refused", SETTLE, || async {
        (!can_subscribe(&sandbox, "bravo/node").await).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_crl_refuses_the_reload_and_keeps_the_crl_in_force() {
    let temp = tempfile::tempdir().unwrap();
    let (sandbox, crl) = hub_with_crl(temp.path()).await;

    std::fs::write(&crl, "not a crl\n").unwrap();
    let mut client = admin(&sandbox, "alpha/admin-admin").await;
    assert_refused(
        client.reload_policy(pb::ReloadPolicyRequest {}).await,
        tonic::Code::FailedPrecondition,
        &[
            "crl.pem",
            "contains no crl",
            "the certificates, key and crl in force stay",
        ],
    );
    // The empty CRL stays in force: bravo still connects.
    assert!(can_subscribe(&sandbox, "bravo/node").await);
    let log = audit_log(&sandbox).await;
    assert!(
        log.iter()
            .any(|r| r.rule == "policy.reload_refused" && r.reason.contains("crl.pem")),
        "{log:?}"
    );
}
