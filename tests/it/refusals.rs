//! Every refusal of the mutual-TLS and identity layer, end to end: who may
//! call which API is decided by the verified client certificate alone, each
//! refusal says what was wrong, and a refused call leaves nothing behind
//! (or, for a node claiming another body's origin, exactly one audit record).

use std::collections::BTreeSet;

use futures::StreamExt;
use liaison_federation::Sandbox;
use liaison_pki::{CertificateAuthority, PkiError, TlsMaterial};
use liaison_proto::v1 as pb;
use liaison_proto::v1::audit_client::AuditClient;
use liaison_proto::v1::federation_client::FederationClient;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_types::{Identity, Role};
use pb::{Classification as C, Kind as K};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::common::{
    alert, assert_refused, assessment, audit_log, envelope, hub_only, inbox_ids, labels,
    outbox_ids, sandbox,
};

/// The federation of the test governance.
const FED: &str = "liaison.test";

/// A valid alert from `origin`, as its node would send it to the hub.
fn valid_envelope(origin: &str) -> pb::Envelope {
    envelope(
        origin,
        labels(K::Alert, C::OfficialUse, &["drugs"]),
        &alert("refusal probe"),
    )
}

fn submit_request(origin: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(valid_envelope(origin)),
        approved_by: String::new(),
        traceparent: String::new(),
    }
}

fn officer_request() -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(labels(K::Alert, C::OfficialUse, &["drugs"])),
        body: Some(alert("refusal probe")),
    }
}

/// A call to `url` over tonic's own TLS, trusting the federation CA but
/// presenting no client certificate (the liaison connector always
/// authenticates). The listener refuses it at the handshake, so the failure
/// shows when connecting or on the first call; returns its text.
async fn anonymous_call_refused(sandbox: &Sandbox, url: &str, api: Api) -> String {
    let ca = std::fs::read_to_string(sandbox.certs().join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(liaison_pki::SERVER_NAME);
    let connected = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let channel = match connected {
        Err(e) => return format!("{e:?}"),
        Ok(channel) => channel,
    };
    let status = match api {
        Api::Federation => FederationClient::new(channel)
            .submit(submit_request("alpha"))
            .await
            .expect_err("refused"),
        Api::Audit => AuditClient::new(channel)
            .list(pb::AuditQuery::default())
            .await
            .map(|_| ())
            .expect_err("refused"),
        Api::Officer => OfficerClient::new(channel)
            .submit(officer_request())
            .await
            .expect_err("refused"),
    };
    // Never an answer of the service: the connection itself failed.
    assert!(
        !matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::Ok
        ),
        "an unauthenticated client reached the service: {status:?}"
    );
    format!("{status:?}")
}

/// Which API an anonymous client tries.
#[derive(Debug, Clone, Copy)]
enum Api {
    Federation,
    Audit,
    Officer,
}

/// Material with the federation CA as trust anchor and `cert` as the
/// client's certificate.
fn material_with(sandbox: &Sandbox, cert: liaison_pki::IssuedCert) -> TlsMaterial {
    TlsMaterial {
        ca_pem: std::fs::read_to_string(sandbox.certs().join("ca.pem")).unwrap(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    }
}

/// A federation client to the hub presenting `cert`.
async fn hub_with(sandbox: &Sandbox, cert: liaison_pki::IssuedCert) -> FederationClient<Channel> {
    let ch = liaison_pki::connect(
        &sandbox.hub_url(),
        &material_with(sandbox, cert),
        Some(Role::Hub),
        FED,
    )
    .await
    .unwrap();
    FederationClient::new(ch)
}

/// The hub still routes a valid message from alpha's node.
async fn hub_still_works(sandbox: &Sandbox) {
    let mut node = sandbox.hub_as("alpha/node").await.unwrap();
    let resp = node
        .submit(submit_request("alpha"))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.duplicate);
    assert_eq!(resp.decisions.len(), 3, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_certificate_is_refused_at_the_handshake_by_hub_and_node() {
    let sandbox = sandbox().await;
    let hub = sandbox.hub_url();
    let node = sandbox.node_url("alpha").unwrap();
    for (url, api) in [
        (&hub, Api::Federation),
        (&hub, Api::Audit),
        (&node, Api::Officer),
    ] {
        // Refused by the tls layer (a transport error, an alert or a
        // closed connection, depending on timing), never by the service.
        let refusal = anonymous_call_refused(&sandbox, url, api).await;
        assert!(
            refusal.contains("ransport") || refusal.contains("connection"),
            "{api:?} at {url}: {refusal}"
        );
    }

    // Nothing was written anywhere.
    assert!(audit_log(&sandbox).await.is_empty());
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let sandbox = hub_only().await;
    let rogue = CertificateAuthority::generate("rogue federation ca").unwrap();
    // The very identity of alpha's node, but signed by the wrong CA.
    let id = Identity::new(FED, "alpha", Role::Node, "node").unwrap();
    let material = material_with(&sandbox, rogue.issue_identity(&id).unwrap());

    // In TLS 1.3 the server checks the client certificate after the client
    // has sent its Finished, so the failure may surface when connecting or
    // on the first call; either way it must be an error.
    let failure =
        match liaison_pki::connect(&sandbox.hub_url(), &material, Some(Role::Hub), FED).await {
            Err(e) => e.to_string(),
            Ok(ch) => {
                let status = FederationClient::new(ch)
                    .submit(submit_request("alpha"))
                    .await
                    .expect_err("a certificate of another CA must not be able to call the hub");
                // Observed: UNKNOWN "transport error" (broken pipe) or CANCELLED
                // "connection closed", depending on when the server's TLS alert
                // lands. What matters is that the failure comes from the client's
                // transport, never as an answer from the service.
                assert!(
                    matches!(
                        status.code(),
                        Code::Unknown | Code::Unavailable | Code::Cancelled
                    ),
                    "the request must never reach the service: {status:?}"
                );
                let source = std::error::Error::source(&status);
                assert!(
                    source.is_some_and(|e| e.is::<tonic::transport::Error>()),
                    "not a transport failure: {status:?}"
                );
                format!("{status:?}")
            }
        };
    assert!(!failure.is_empty());

    // Nothing reached the service: the audit log is empty, and the hub still
    // serves a legitimate node.
    assert!(audit_log(&sandbox).await.is_empty(), "{failure}");
    hub_still_works(&sandbox).await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_naming_no_single_identity_of_this_federation_are_unauthenticated() {
    let sandbox = sandbox().await;
    let ca = CertificateAuthority::load(sandbox.certs()).unwrap();
    let alpha_node = Identity::new(FED, "alpha", Role::Node, "node")
        .unwrap()
        .uri();
    let bravo_node = Identity::new(FED, "bravo", Role::Node, "node")
        .unwrap()
        .uri();

    let no_uri = ca.issue(&[], &["localhost".to_owned()], &[]).unwrap();
    let two_uris = ca
        .issue(&[alpha_node.clone(), bravo_node], &[], &[])
        .unwrap();
    let other_fed = ca
        .issue_identity(&Identity::new("other.test", "alpha", Role::Node, "node").unwrap())
        .unwrap();
    let not_liaison = ca
        .issue(&["https://example.org/alpha".to_owned()], &[], &[])
        .unwrap();

    let cases = [
        (no_uri, vec!["client certificate refused", "no URI SAN"]),
        (two_uris, vec!["client certificate refused", "2 URI SANs"]),
        (
            other_fed,
            vec![
                "client certificate refused",
                "federation 'other.test'",
                "not 'liaison.test'",
            ],
        ),
        (
            not_liaison,
            vec!["client certificate refused", "not a liaison identity"],
        ),
    ];
    for (cert, needles) in cases {
        // At the hub...
        let mut hub = hub_with(&sandbox, cert.clone()).await;
        assert_refused(
            hub.submit(submit_request("alpha")).await,
            Code::Unauthenticated,
            &needles,
        );
        // ...and at a node.
        let ch = liaison_pki::connect(
            &sandbox.node_url("alpha").unwrap(),
            &material_with(&sandbox, cert),
            Some(Role::Node),
            FED,
        )
        .await
        .unwrap();
        assert_refused(
            OfficerClient::new(ch).submit(officer_request()).await,
            Code::Unauthenticated,
            &needles,
        );
    }

    assert!(audit_log(&sandbox).await.is_empty());
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_not_allowed_on_an_api_is_permission_denied() {
    let sandbox = sandbox().await;

    // An officer (and an admin) certificate on the hub's Federation API.
    for stem in ["alpha/officer-alice", "alpha/admin-admin"] {
        let role = stem.split_once('/').unwrap().1.split('-').next().unwrap();
        let mut hub = sandbox.hub_as(stem).await.unwrap();
        assert_refused(
            hub.submit(submit_request("alpha")).await,
            Code::PermissionDenied,
            &[
                &format!("role '{role}' may not call this api"),
                "open to node",
            ],
        );
        assert_refused(
            hub.subscribe(pb::SubscribeRequest { after_seq: 0 }).await,
            Code::PermissionDenied,
            &[&format!("role '{role}'")],
        );
    }

    // A node certificate on the hub's Audit API.
    let ch = liaison_pki::connect(
        &sandbox.hub_url(),
        &sandbox.material("alpha/node").unwrap(),
        Some(Role::Hub),
        FED,
    )
    .await
    .unwrap();
    let mut audit = AuditClient::new(ch);
    assert_refused(
        audit.list(pb::AuditQuery::default()).await,
        Code::PermissionDenied,
        &["role 'node' may not call this api", "open to auditor"],
    );
    assert_refused(
        audit.verify(pb::VerifyRequest {}).await,
        Code::PermissionDenied,
        &["role 'node'"],
    );

    // An auditor certificate on a node's Officer API.
    let mut officer = sandbox
        .officer_at("alpha", "alpha/auditor-audit")
        .await
        .unwrap();
    assert_refused(
        officer.submit(officer_request()).await,
        Code::PermissionDenied,
        &["role 'auditor' may not call this api", "open to officer"],
    );
    assert_refused(
        officer
            .list_inbox(pb::ListInboxRequest {
                unread_only: false,
                limit: 0,
            })
            .await,
        Code::PermissionDenied,
        &["role 'auditor'"],
    );

    // Nothing was written.
    assert!(audit_log(&sandbox).await.is_empty());
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_of_another_body_is_refused_on_every_officer_rpc() {
    let sandbox = sandbox().await;
    // Give alpha's inbox a message, so that a leak would have something to show.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let id = bravo
        .submit(submit_request("bravo"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    liaison_federation::wait_until(
        "alpha's node stores the alert",
        crate::common::SETTLE,
        || {
            let sandbox = &sandbox;
            let id = id.clone();
            async move {
                inbox_ids(sandbox, "alpha")
                    .await
                    .contains(&id)
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();

    let mut intruder = sandbox
        .officer_at("alpha", "bravo/officer-alice")
        .await
        .unwrap();
    let needles: &[&str] = &[
        "spiffe://liaison.test/org/bravo/officer/alice",
        "belongs to bravo, but this node serves alpha",
    ];
    assert_refused(
        intruder.submit(officer_request()).await,
        Code::PermissionDenied,
        needles,
    );
    assert_refused(
        intruder
            .list_outbox(pb::ListOutboxRequest { limit: 0 })
            .await,
        Code::PermissionDenied,
        needles,
    );
    assert_refused(
        intruder
            .list_inbox(pb::ListInboxRequest {
                unread_only: false,
                limit: 0,
            })
            .await,
        Code::PermissionDenied,
        needles,
    );
    assert_refused(
        intruder
            .show(pb::ShowRequest {
                message_id: id.clone(),
            })
            .await,
        Code::PermissionDenied,
        needles,
    );
    assert_refused(
        intruder
            .acknowledge(pb::OfficerAcknowledgeRequest {
                message_id: id.clone(),
            })
            .await,
        Code::PermissionDenied,
        needles,
    );
    assert_refused(
        intruder
            .explain(pb::OfficerExplainRequest {
                labels: Some(labels(K::Alert, C::OfficialUse, &["drugs"])),
                body: Some(alert("probe")),
            })
            .await,
        Code::PermissionDenied,
        needles,
    );

    // Nothing changed: alpha's outbox is empty and its message is unread.
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    let mut own = sandbox.officer("alpha", "alice").await.unwrap();
    let shown = own
        .show(pb::ShowRequest { message_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.read_at_ms, 0, "{shown:?}");
    assert!(shown.read_by.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_a_body_outside_the_governance_is_permission_denied() {
    let sandbox = hub_only().await;
    // Issued by the federation CA, but for a body the governance lacks.
    let ca = CertificateAuthority::load(sandbox.certs()).unwrap();
    let zulu = ca
        .issue_identity(&Identity::new(FED, "zulu", Role::Node, "node").unwrap())
        .unwrap();
    let mut hub = hub_with(&sandbox, zulu).await;
    assert_refused(
        hub.submit(submit_request("zulu")).await,
        Code::PermissionDenied,
        &["body zulu is not a member of this federation"],
    );
    assert_refused(
        hub.subscribe(pb::SubscribeRequest { after_seq: 0 }).await,
        Code::PermissionDenied,
        &["body zulu is not a member"],
    );
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_origin_is_refused_and_audited() {
    let sandbox = sandbox().await;
    let forged = valid_envelope("alpha");
    let id = forged.labels.as_ref().unwrap().message_id.clone();

    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    assert_refused(
        bravo
            .submit(pb::SubmitRequest {
                targets: Vec::new(),
                envelope: Some(forged),
                approved_by: String::new(),
                traceparent: String::new(),
            })
            .await,
        Code::PermissionDenied,
        &["this node is bravo", "names alpha as origin"],
    );

    // Exactly one record: the refusal, naming the rule and the real caller.
    let log = audit_log(&sandbox).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    let refused = &log[0];
    assert_eq!(refused.event, "refused");
    assert_eq!(refused.rule, "identity.origin_mismatch");
    assert_eq!(refused.actor, "spiffe://liaison.test/org/bravo/node/node");
    assert_eq!(refused.message_id, id);
    assert_eq!(refused.origin, "alpha");
    assert!(refused.recipient.is_empty());
    assert_eq!(refused.policy_version, sandbox.governance().version());
    assert!(refused.reason.contains("bravo"), "{refused:?}");

    // Nothing was routed: no other record names the message (queue entries
    // are written in the same transaction as routing records), and no inbox
    // holds it.
    assert!(!log
        .iter()
        .any(|r| r.message_id == id && (r.event == "received" || r.event == "routed")));
    for body in ["alpha", "bravo", "charlie", "obs"] {
        assert!(!inbox_ids(&sandbox, body).await.contains(&id), "{body}");
    }

    // The chain still verifies.
    let mut auditor = sandbox.oversight().await.unwrap();
    let verify = auditor
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    assert_eq!(verify.records, 1);

    // The offending body's own auditor sees its node's refusal too; an
    // uninvolved body's auditor does not.
    for (body, visible) in [("bravo", 1), ("charlie", 0)] {
        let mut auditor = sandbox.auditor(body).await.unwrap();
        let mut stream = auditor
            .list(pb::AuditQuery::default())
            .await
            .unwrap()
            .into_inner();
        let mut seen = 0;
        while let Some(r) = stream.next().await {
            assert_eq!(r.unwrap().event, "refused");
            seen += 1;
        }
        assert_eq!(seen, visible, "{body}");
    }
    sandbox.shutdown().await.unwrap();
}

/// The refusal record truncates the claimed origin to 64 characters but
/// copies the message id verbatim, so a node can write up to the hub's
/// request limit (512 KiB) of arbitrary text into the append-only audit log
/// with every forged submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_forged_submission_cannot_write_unbounded_text_into_the_audit_log() {
    let sandbox = hub_only().await;
    let mut forged = valid_envelope("alpha");
    forged.labels.as_mut().unwrap().message_id = "x".repeat(400 * 1024);
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    assert_refused(
        bravo
            .submit(pb::SubmitRequest {
                targets: Vec::new(),
                envelope: Some(forged),
                approved_by: String::new(),
                traceparent: String::new(),
            })
            .await,
        Code::PermissionDenied,
        &["names alpha as origin"],
    );
    let log = audit_log(&sandbox).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].rule, "identity.origin_mismatch");
    assert!(
        log[0].message_id.len() <= 64,
        "the refusal record holds a {}-byte message id",
        log[0].message_id.len()
    );
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_naming_another_origin_is_refused_by_the_node() {
    let sandbox = sandbox().await;
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let mut l = labels(K::Alert, C::OfficialUse, &["drugs"]);
    l.origin = "bravo".into();
    assert_refused(
        officer
            .submit(pb::OfficerSubmitRequest {
                clear_targets: false,
                targets: Vec::new(),
                labels: Some(l.clone()),
                body: Some(alert("forged origin")),
            })
            .await,
        Code::PermissionDenied,
        &["labels.origin is bravo", "this node submits for alpha"],
    );
    // Explain is refused the same way, before asking the hub.
    assert_refused(
        officer
            .explain(pb::OfficerExplainRequest {
                labels: Some(l),
                body: Some(alert("forged origin")),
            })
            .await,
        Code::PermissionDenied,
        &["labels.origin is bravo"],
    );
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    assert!(audit_log(&sandbox).await.is_empty());
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_will_not_talk_to_a_server_that_is_not_the_hub() {
    let sandbox = sandbox().await;
    let url = sandbox.node_url("bravo").unwrap();
    let err = liaison_pki::connect(
        &url,
        &sandbox.material("alpha/node").unwrap(),
        Some(Role::Hub),
        FED,
    )
    .await
    .expect_err("bravo's node is not the hub");
    match &err {
        PkiError::WrongServerRole {
            endpoint,
            identity,
            found,
            expected,
        } => {
            assert_eq!(endpoint, &url);
            assert_eq!(identity, "spiffe://liaison.test/org/bravo/node/node");
            assert_eq!(*found, Role::Node);
            assert_eq!(*expected, Role::Hub);
        }
        other => panic!("expected WrongServerRole, got {other:?}"),
    }
    assert!(err.to_string().contains("expected role 'hub'"), "{err}");
    sandbox.shutdown().await.unwrap();
}

async fn list(client: &mut AuditClient<Channel>, q: pb::AuditQuery) -> Vec<pb::AuditRecord> {
    let mut stream = client.list(q).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_sees_only_records_naming_its_body_and_the_oversight_auditor_sees_all() {
    let sandbox = hub_only().await;
    // charlie -> alpha and bravo (obs withheld by kind).
    let mut charlie = sandbox.hub_as("charlie/node").await.unwrap();
    let from_charlie = charlie
        .submit(submit_request("charlie"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    // alpha -> a threat assessment that excludes bravo.
    let mut l = labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]);
    l.excluded = vec!["bravo".into()];
    let mut alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let from_alpha = alpha
        .submit(pb::SubmitRequest {
            targets: Vec::new(),
            envelope: Some(envelope("alpha", l, &assessment("not for bravo"))),
            approved_by: String::new(),
            traceparent: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    // bravo -> its own alert.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let from_bravo = bravo
        .submit(submit_request("bravo"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    // charlie acknowledges the first message queued for it, alpha's (a record
    // naming alpha and charlie only). No subscription is opened, so no
    // delivery records appear behind the test's back.
    let acked = charlie
        .acknowledge(pb::AcknowledgeRequest {
            seq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acked_seq, 1);

    // The oversight auditor (the federation's control body) sees the whole
    // log.
    let mut hub_auditor = sandbox.oversight().await.unwrap();
    let all = list(&mut hub_auditor, pb::AuditQuery::default()).await;
    let verify = hub_auditor
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    assert_eq!(all.len() as u64, verify.records);
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=verify.records).collect::<Vec<_>>());

    // The hub body's own auditor is a body's auditor like any other: it
    // sees what concerns its body, and gets proofs of that only.
    let mut alpha_auditor = sandbox.auditor("alpha").await.unwrap();
    let alpha_sees = list(&mut alpha_auditor, pb::AuditQuery::default()).await;
    assert!(!alpha_sees.is_empty() && alpha_sees.len() < all.len());
    let hidden = all
        .iter()
        .find(|r| !alpha_sees.iter().any(|s| s.seq == r.seq))
        .unwrap();
    let refused = alpha_auditor
        .prove_inclusion(pb::InclusionRequest {
            leaf_index: hidden.seq - 1,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let proof = alpha_auditor
        .prove_inclusion(pb::InclusionRequest {
            leaf_index: alpha_sees[0].seq - 1,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.leaf, alpha_sees[0].leaf);

    // bravo's auditor sees exactly the records naming bravo, but for those
    // withholding something from it.
    let names_bravo = |r: &pb::AuditRecord| {
        r.origin == "bravo" || (r.recipient == "bravo" && r.decision != "withhold")
    };
    let mut bravo_auditor = sandbox.auditor("bravo").await.unwrap();
    let seen = list(&mut bravo_auditor, pb::AuditQuery::default()).await;
    let expected: Vec<pb::AuditRecord> = all.iter().filter(|r| names_bravo(r)).cloned().collect();
    assert!(!seen.is_empty());
    assert!(seen.len() < all.len());
    assert_eq!(seen, expected);
    // In particular nothing about alpha's message, which excluded bravo:
    // not even its withhold record, which names bravo as recipient but
    // would tell bravo that the message exists and excluded it.
    assert!(all.iter().any(|r| r.message_id == from_alpha
        && r.recipient == "bravo"
        && r.rule == "originator.exclusion"));
    let about_alpha: Vec<_> = seen.iter().filter(|r| r.message_id == from_alpha).collect();
    assert!(about_alpha.is_empty(), "{about_alpha:#?}");
    // Nor charlie's receipt, nor charlie's acknowledgement.
    assert!(!seen
        .iter()
        .any(|r| r.event == "received" && r.origin == "charlie"));
    assert!(!seen.iter().any(|r| r.event == "acknowledged"));
    // Its own message, whole.
    let about_bravo: BTreeSet<&str> = seen
        .iter()
        .filter(|r| r.message_id == from_bravo)
        .map(|r| r.event.as_str())
        .collect();
    assert_eq!(about_bravo, BTreeSet::from(["received", "routed"]));

    // A filter cannot widen the scope: asking for charlie's records returns
    // only those naming bravo too.
    let charlie_filter = list(
        &mut bravo_auditor,
        pb::AuditQuery {
            body: "charlie".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!charlie_filter.is_empty());
    for r in &charlie_filter {
        assert!(names_bravo(r), "{r:?}");
        assert!(r.origin == "charlie" || r.recipient == "charlie", "{r:?}");
    }
    let by_id = list(
        &mut bravo_auditor,
        pb::AuditQuery {
            message_id: from_charlie.clone(),
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(by_id.is_empty(), "{by_id:#?}");
    sandbox.shutdown().await.unwrap();
}
