//! Identity attacks on the mutual-TLS layer that `refusals.rs` does not
//! cover, end to end against a real hub and real nodes: certificates that
//! the federation's own dev CA signed, yet must not name anybody.
//!
//! - A wildcard or incomplete SPIFFE id completes the handshake but names
//!   nobody: every call is `UNAUTHENTICATED`, saying what is wrong with the
//!   id, and the listener records the connection as `bad_identity`.
//! - A certificate without the clientAuth extended key usage (or with no
//!   extended key usage at all), an expired
//!   or not yet valid one, a CA certificate used as a client leaf and a
//!   leaf used as a CA are refused at the TLS handshake: the client gets
//!   the TLS alert for the reason, the request never reaches a service,
//!   and the listener records the failure with its reason.
//! - A node configured for one body with another body's node certificate
//!   refuses to start, naming both, before it touches its store.
//!
//! The listener's record is its `HandshakeFailures` count (exported as
//! `liaison_tls_handshake_failures_total{reason}`) and the log line that
//! the same call writes right after counting (`tls handshake refused`,
//! with the peer's address, the reason and the error). These tests capture
//! that line with a process-wide tracing subscriber that sees only it:
//! each probe connects from a socket of its own, so its line, unlike a
//! count, is found by the probe's address. A refusal at the TLS layer reaches no service, so
//! there is no audit record: after every refusal the audit log is still
//! empty and the hub still serves a legitimate node.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_pki::{CertificateAuthority, IssuedCert, TlsMaterial};
use liaison_proto::v1 as pb;
use liaison_proto::v1::federation_client::FederationClient;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_types::{Identity, Role};
use pb::{Classification as C, Kind as K};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls::{self, AlertDescription};
use tonic::Code;

use crate::common::{
    alert, assert_refused, audit_log, envelope, hub_only, labels, outbox_ids, GOVERNANCE, SETTLE,
};

/// The federation of the test governance.
const FED: &str = "liaison.test";

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// Captures the TLS listeners' `tls handshake refused` log lines of this
/// test process, the only place outside the listener where the reason of a
/// failed handshake shows.
mod handshake_log {
    use std::fmt;
    use std::net::SocketAddr;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Level, Metadata, Subscriber};

    use super::{Mutex, Once, SETTLE};

    /// One refused handshake, as the listener logged it.
    #[derive(Debug, Clone, Default)]
    pub struct Refused {
        pub peer: String,
        pub reason: String,
        pub error: String,
    }

    static REFUSED: Mutex<Vec<Refused>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();

    /// The module whose events are captured, and their message.
    const TARGET: &str = "liaison_pki::incoming";
    const MESSAGE: &str = "tls handshake refused";

    /// A subscriber that keeps the accept loop's warnings and nothing else
    /// (every other callsite is disabled, so other tests pay nothing).
    struct Capture;

    impl Subscriber for Capture {
        fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
            if self.enabled(metadata) {
                Interest::always()
            } else {
                Interest::never()
            }
        }

        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.is_event() && metadata.target() == TARGET && *metadata.level() <= Level::WARN
        }

        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            Some(tracing::level_filters::LevelFilter::WARN)
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            // Never called: no span is enabled.
            Id::from_u64(1)
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if fields.message.starts_with(MESSAGE) {
                REFUSED
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(fields.refused);
            }
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        refused: Refused,
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            let value = format!("{value:?}");
            match field.name() {
                "message" => self.message = value,
                "peer" => self.refused.peer = value,
                "reason" => self.refused.reason = value,
                "error" => self.refused.error = value,
                _ => {}
            }
        }
    }

    /// Starts capturing (once per process).
    pub fn capture() {
        INSTALL.call_once(|| {
            tracing::subscriber::set_global_default(Capture)
                .expect("no other global tracing subscriber in the test process");
        });
    }

    /// The listener's line for the connection from `peer`, once logged.
    pub async fn of(peer: SocketAddr) -> Refused {
        let peer = peer.to_string();
        liaison_federation::wait_until(
            &format!("a listener logs the refused handshake of {peer}"),
            SETTLE,
            || {
                let found = REFUSED
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|r| r.peer == peer)
                    .cloned();
                async move { found }
            },
        )
        .await
        .unwrap()
    }
}

/// How a raw TLS connection ended, seen from the client.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The server ended the handshake with this alert.
    Alert(AlertDescription),
    /// The handshake completed and the server spoke (HTTP/2) first.
    Accepted,
    /// Anything else (a reset, an end without an alert, a timeout).
    Other(String),
}

/// Connects to `url` from a socket of its own and handshakes presenting
/// `material`, as any TLS client could; returns the socket's address (the
/// peer the server logs) and how the connection ended. In TLS 1.3 the
/// server checks the client's certificate after the client's Finished, so
/// its verdict is the first thing it sends.
async fn probe(url: &str, material: &TlsMaterial) -> (SocketAddr, Outcome) {
    let config = liaison_pki::client_config(material).unwrap();
    let tcp = tokio::net::TcpStream::connect(url.strip_prefix("https://").unwrap())
        .await
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let name = rustls_pki_types::ServerName::try_from(liaison_pki::SERVER_NAME).unwrap();
    let alert_of = |e: std::io::Error| match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => Outcome::Alert(*alert),
        _ => Outcome::Other(format!("{e:?}")),
    };
    let ended = tokio::time::timeout(SETTLE, async {
        match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Err(e) => alert_of(e),
            Ok(mut tls) => match tls.read(&mut [0u8; 1]).await {
                Ok(0) => Outcome::Other("closed without an alert".into()),
                Ok(_) => Outcome::Accepted,
                Err(e) => alert_of(e),
            },
        }
    })
    .await
    .unwrap_or_else(|_| Outcome::Other("no answer".into()));
    (local, ended)
}

/// Material with the federation CA as trust anchor and `cert` as the
/// client's certificate.
fn material_with(sandbox: &Sandbox, cert: &IssuedCert) -> TlsMaterial {
    TlsMaterial {
        ca_pem: std::fs::read_to_string(sandbox.certs().join(liaison_pki::CA_CERT_FILE)).unwrap(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
    }
}

/// The federation's dev CA, as rcgen signs with it.
fn federation_ca(sandbox: &Sandbox) -> Issuer<'static, KeyPair> {
    let read = |file: &str| std::fs::read_to_string(sandbox.certs().join(file)).unwrap();
    let key = KeyPair::from_pem(&read(liaison_pki::CA_KEY_FILE)).unwrap();
    Issuer::from_ca_cert_pem(&read(liaison_pki::CA_CERT_FILE), key).unwrap()
}

/// Sets a certificate's validity from `starts` to `ends` seconds from now.
fn valid(params: &mut CertificateParams, starts: i64, ends: i64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let at = |offset: i64| {
        let secs = now.as_secs().checked_add_signed(offset).unwrap();
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs)
    };
    params.not_before = at(starts);
    params.not_after = at(ends);
}

/// A leaf for `uri` as the dev PKI makes a node's (CA:FALSE,
/// digitalSignature, server and client auth, valid from an hour ago for a
/// day); each test changes one property.
fn leaf_params(uri: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, uri);
    params.subject_alt_names = vec![
        SanType::URI(uri.try_into().unwrap()),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    valid(&mut params, -HOUR, DAY);
    params
}

/// Signs `params` for a fresh key with `issuer`.
fn sign(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> IssuedCert {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// alpha's node identity.
fn alpha_node() -> String {
    Identity::new(FED, "alpha", Role::Node, "node")
        .unwrap()
        .uri()
}

fn submit_request(origin: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        targets: Vec::new(),
        envelope: Some(envelope(
            origin,
            labels(K::Alert, C::OfficialUse, &["drugs"]),
            &alert("identity probe"),
        )),
        approved_by: String::new(),
        traceparent: String::new(),
    }
}

fn officer_request() -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(labels(K::Alert, C::OfficialUse, &["drugs"])),
        body: Some(alert("identity probe")),
    }
}

/// A federation client of the hub presenting `material`.
async fn hub_with(
    sandbox: &Sandbox,
    material: &TlsMaterial,
) -> FederationClient<tonic::transport::Channel> {
    let ch = liaison_pki::connect(&sandbox.hub_url(), material, Some(Role::Hub), FED)
        .await
        .unwrap();
    FederationClient::new(ch)
}

/// The forged certificates differ from an accepted one in one property
/// only: `leaf_params` as it is, signed by the federation CA, completes the
/// handshake and reads the governance (a call that records nothing).
async fn the_unchanged_forgery_is_accepted(sandbox: &Sandbox, ca: &Issuer<'_, KeyPair>) {
    let material = material_with(sandbox, &sign(&leaf_params(&alpha_node()), ca));
    let (_, outcome) = probe(&sandbox.hub_url(), &material).await;
    assert_eq!(outcome, Outcome::Accepted);
    let governance = hub_with(sandbox, &material)
        .await
        .get_governance(pb::GetGovernanceRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(governance.version, sandbox.governance().version());
}

/// A gRPC client presenting `material` cannot reach the hub's service: the
/// failure comes from the client's transport, when connecting or on the
/// first call, never as an answer of the service. Returns its text.
async fn a_call_fails_at_the_transport(sandbox: &Sandbox, material: &TlsMaterial) -> String {
    match liaison_pki::connect(&sandbox.hub_url(), material, Some(Role::Hub), FED).await {
        Err(e) => e.to_string(),
        Ok(ch) => {
            let status = FederationClient::new(ch)
                .submit(submit_request("alpha"))
                .await
                .expect_err("a certificate refused at the handshake must not reach the hub");
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
    }
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

/// Each forged certificate in `cases` is refused at the hub's handshake
/// with `alert`, logged with `reason` and an error containing the case's
/// needle, and fails a real gRPC call at the transport; nothing is audited,
/// and the hub still serves a legitimate node.
async fn refused_at_the_handshake(
    sandbox: &Sandbox,
    cases: &[(&str, TlsMaterial, &str)],
    alert: AlertDescription,
    reason: &str,
) {
    let audited = audit_log(sandbox).await.len();
    // Probes first, each waiting for its line: the listener logs at most
    // ten refusals a second.
    for (what, material, needle) in cases {
        let (peer, outcome) = probe(&sandbox.hub_url(), material).await;
        assert_eq!(outcome, Outcome::Alert(alert), "{what}");
        let logged = handshake_log::of(peer).await;
        assert_eq!(logged.reason, reason, "{what}: {logged:?}");
        assert!(logged.error.contains(needle), "{what}: {logged:?}");
    }
    for (what, material, _) in cases {
        let failure = a_call_fails_at_the_transport(sandbox, material).await;
        assert!(!failure.is_empty(), "{what}");
    }
    assert_eq!(
        audit_log(sandbox).await.len(),
        audited,
        "a refusal was audited"
    );
    hub_still_works(sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_incomplete_spiffe_ids_are_unauthenticated_and_counted_as_bad_identity() {
    handshake_log::capture();
    let sandbox = crate::common::sandbox().await;
    let ca = CertificateAuthority::load(sandbox.certs()).unwrap();
    // Signed by the federation CA: only the id is wrong. (Another scheme,
    // another federation, no URI and two URIs: refusals.rs.)
    let cases = [
        ("spiffe://liaison.test/org/*/node/x", "invalid body id '*'"),
        (
            "spiffe://liaison.test/org/alpha/node/*",
            "bad federation or name",
        ),
        ("spiffe://liaison.test/org/alpha/*/node", "unknown role '*'"),
        ("spiffe://*/org/alpha/node/node", "bad federation or name"),
        ("spiffe://liaison.test/org/alpha/node", "wrong path"),
        (
            "spiffe://liaison.test/org/alpha/node/",
            "bad federation or name",
        ),
        ("spiffe://liaison.test/alpha/node/node", "wrong path"),
        ("spiffe://liaison.test/org//node/node", "invalid body id ''"),
    ];
    let certs: Vec<(&str, &str, TlsMaterial)> = cases
        .iter()
        .map(|(uri, why)| {
            let cert = ca.issue(&[(*uri).to_owned()], &[], &[]).unwrap();
            (*uri, *why, material_with(&sandbox, &cert))
        })
        .collect();

    // The handshake completes (a TLS alert could not say what is wrong),
    // and the listener records the connection as a bad identity.
    for (uri, why, material) in &certs {
        let (peer, outcome) = probe(&sandbox.hub_url(), material).await;
        assert_eq!(outcome, Outcome::Accepted, "{uri}");
        let logged = handshake_log::of(peer).await;
        assert_eq!(logged.reason, "bad_identity", "{uri}: {logged:?}");
        // The listener escapes the error for the log (quotes as \').
        let error = logged.error.replace("\\'", "'");
        assert!(
            error.contains(&format!("'{uri}' is not a liaison identity ({why}")),
            "{uri}: {logged:?}"
        );
    }
    // Every call is UNAUTHENTICATED, naming the id and what is wrong with it.
    for (uri, why, material) in &certs {
        let needles: [&str; 3] = [
            "client certificate refused",
            &format!("'{uri}' is not a liaison identity ({why}"),
            "expected spiffe://<federation>/org/<body>/<role>/<name>",
        ];
        let mut hub = hub_with(&sandbox, material).await;
        assert_refused(
            hub.submit(submit_request("alpha")).await,
            Code::Unauthenticated,
            &needles,
        );
        assert_refused(
            hub.subscribe(pb::SubscribeRequest { after_seq: 0 }).await,
            Code::Unauthenticated,
            &needles,
        );
    }

    // The same at a node, for an officer whose body is a wildcard.
    let uri = "spiffe://liaison.test/org/*/officer/alice";
    let cert = ca.issue(&[uri.to_owned()], &[], &[]).unwrap();
    let material = material_with(&sandbox, &cert);
    let node = sandbox.node_url("alpha").unwrap();
    let (peer, outcome) = probe(&node, &material).await;
    assert_eq!(outcome, Outcome::Accepted);
    let logged = handshake_log::of(peer).await;
    assert_eq!(logged.reason, "bad_identity", "{logged:?}");
    let ch = liaison_pki::connect(&node, &material, Some(Role::Node), FED)
        .await
        .unwrap();
    assert_refused(
        OfficerClient::new(ch).submit(officer_request()).await,
        Code::Unauthenticated,
        &[
            "client certificate refused",
            &format!("'{uri}' is not a liaison identity (invalid body id '*'"),
        ],
    );

    // Nothing was written anywhere, and the hub serves alpha's node.
    assert!(audit_log(&sandbox).await.is_empty());
    assert!(outbox_ids(&sandbox, "alpha").await.is_empty());
    hub_still_works(&sandbox).await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_client_auth_usage_is_refused_at_the_handshake_and_counted() {
    handshake_log::capture();
    let sandbox = hub_only().await;
    let ca = federation_ca(&sandbox);
    the_unchanged_forgery_is_accepted(&sandbox, &ca).await;

    // alpha's node identity, for server authentication only (as a
    // certificate issued for a web server would be).
    let mut server_only = leaf_params(&alpha_node());
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // For code signing: no TLS purpose at all.
    let mut code_signing = leaf_params(&alpha_node());
    code_signing.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let cases = [
        (
            "server auth only",
            material_with(&sandbox, &sign(&server_only, &ca)),
            "does not allow extended key usage for client authentication, allows server authentication",
        ),
        (
            "code signing only",
            material_with(&sandbox, &sign(&code_signing, &ca)),
            "does not allow extended key usage for client authentication",
        ),
    ];
    // Counted as `other`: HandshakeFailure has no reason of its own for a
    // wrong key usage; the error says which.
    refused_at_the_handshake(
        &sandbox,
        &cases,
        AlertDescription::UnsupportedCertificate,
        "other",
    )
    .await;
    // No extended key usage at all: RFC 5280 reads that as any purpose,
    // and webpki accepts it; Liaison refuses it (every certificate of the
    // federation names its purpose).
    let mut no_usage = leaf_params(&alpha_node());
    no_usage.extended_key_usages = vec![];
    let cases = [(
        "no extended key usage",
        material_with(&sandbox, &sign(&no_usage, &ca)),
        "certificate has no extended key usage extension; a liaison certificate must name clientAuth",
    )];
    refused_at_the_handshake(
        &sandbox,
        &cases,
        AlertDescription::CertificateUnknown,
        "other",
    )
    .await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_not_yet_valid_client_certificate_is_refused_at_the_handshake_and_counted() {
    handshake_log::capture();
    let sandbox = hub_only().await;
    let ca = federation_ca(&sandbox);
    the_unchanged_forgery_is_accepted(&sandbox, &ca).await;

    let mut expired = leaf_params(&alpha_node());
    valid(&mut expired, -2 * DAY, -DAY);
    let mut not_yet = leaf_params(&alpha_node());
    valid(&mut not_yet, DAY, 2 * DAY);
    let cases = [
        (
            "expired a day ago",
            material_with(&sandbox, &sign(&expired, &ca)),
            "certificate expired",
        ),
        (
            "valid from tomorrow",
            material_with(&sandbox, &sign(&not_yet, &ca)),
            "certificate not valid yet",
        ),
    ];
    refused_at_the_handshake(
        &sandbox,
        &cases,
        AlertDescription::CertificateExpired,
        "expired",
    )
    .await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_used_as_a_client_leaf_is_refused_at_the_handshake_and_counted() {
    handshake_log::capture();
    let sandbox = hub_only().await;
    let ca = federation_ca(&sandbox);
    the_unchanged_forgery_is_accepted(&sandbox, &ca).await;

    // A CA certificate the federation CA signed, naming alpha's node.
    let mut sub_ca = leaf_params(&alpha_node());
    sub_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    sub_ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The federation CA itself, with its own key.
    let read = |file: &str| std::fs::read_to_string(sandbox.certs().join(file)).unwrap();
    let itself = TlsMaterial {
        ca_pem: read(liaison_pki::CA_CERT_FILE),
        cert_pem: read(liaison_pki::CA_CERT_FILE),
        key_pem: read(liaison_pki::CA_KEY_FILE),
    };
    let cases = [
        (
            "a CA signed by the federation CA",
            material_with(&sandbox, &sign(&sub_ca, &ca)),
            "CaUsedAsEndEntity",
        ),
        ("the federation CA itself", itself, "CaUsedAsEndEntity"),
    ];
    // Counted as `other` (no reason of its own); the error names it.
    refused_at_the_handshake(
        &sandbox,
        &cases,
        AlertDescription::CertificateUnknown,
        "other",
    )
    .await;
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_signing_a_certificate_for_another_body_with_its_own_key_is_refused_at_the_handshake(
) {
    handshake_log::capture();
    let sandbox = hub_only().await;
    // alpha's node (or anyone holding its key) signs bravo's node identity
    // and presents the chain forged leaf, alpha's node certificate.
    let read = |file: &str| std::fs::read_to_string(sandbox.certs().join(file)).unwrap();
    let alpha_cert = read("alpha/node.pem");
    let alpha_key = KeyPair::from_pem(&read("alpha/node.key.pem")).unwrap();
    let alpha_as_issuer = Issuer::from_ca_cert_pem(&alpha_cert, alpha_key).unwrap();
    let bravo = Identity::new(FED, "bravo", Role::Node, "node")
        .unwrap()
        .uri();
    let forged = sign(&leaf_params(&bravo), &alpha_as_issuer);
    let chained = IssuedCert {
        cert_pem: format!("{}{}", forged.cert_pem, alpha_cert),
        key_pem: forged.key_pem,
    };
    let cases = [(
        "bravo's identity under alpha's node certificate",
        material_with(&sandbox, &chained),
        "EndEntityUsedAsCa",
    )];
    refused_at_the_handshake(
        &sandbox,
        &cases,
        AlertDescription::CertificateUnknown,
        "other",
    )
    .await;
    sandbox.shutdown().await.unwrap();
}

/// alpha's node configuration as the sandbox wrote it, but with bravo's
/// node certificate and key, its own data directory and port 0.
fn alpha_config_with_bravos_certificate(sandbox: &Sandbox, data_dir: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(sandbox.dir().join("node-alpha.toml")).unwrap();
    let bravo = |file: &str| {
        sandbox
            .certs()
            .join("bravo")
            .join(file)
            .display()
            .to_string()
    };
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let (key, _) = line.split_once(" = ").unwrap_or((line, ""));
            let value = match key {
                "cert" => format!("{:?}", bravo("node.pem")),
                "key" => format!("{:?}", bravo("node.key.pem")),
                "listen" => "\"127.0.0.1:0\"".to_owned(),
                "data_dir" => format!("{data_dir:?}"),
                _ => return line.to_owned(),
            };
            replaced += 1;
            format!("{key} = {value}")
        })
        .collect();
    assert_eq!(
        replaced, 4,
        "the sandbox's node configuration changed:\n{text}"
    );
    assert!(text.contains("body = \"alpha\""), "{text}");
    let path = sandbox.dir().join("node-alpha-with-bravo-cert.toml");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_configured_for_one_body_with_another_bodys_certificate_refuses_to_start() {
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let data = "nodes/alpha-with-bravo-cert";
    let config_path = alpha_config_with_bravos_certificate(&sandbox, data);
    let bravo_cert = sandbox.certs().join("bravo/node.pem");
    let needles = [
        bravo_cert.display().to_string(),
        "the certificate is spiffe://liaison.test/org/bravo/node/node".to_owned(),
        "not a node certificate of alpha".to_owned(),
    ];

    // In this process: `run` returns the error instead of serving.
    let config = liaison_node::NodeConfig::load(&config_path).unwrap();
    assert_eq!(config.body, "alpha");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let ran = tokio::time::timeout(
        SETTLE,
        liaison_node::run(config, listener, std::future::pending::<()>()),
    )
    .await
    .expect("the node started with another body's certificate");
    let err = ran.expect_err("the node started with another body's certificate");
    assert!(
        matches!(err, liaison_node::NodeError::Config { .. }),
        "{err:?}"
    );
    let shown = err.to_string();
    for needle in &needles {
        assert!(shown.contains(needle.as_str()), "{needle:?} not in {shown}");
    }

    // As the `liaison node` command: it exits with the same words, and
    // never says it is ready (no ready file).
    let ready = sandbox.dir().join("alpha-with-bravo-cert.ready");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_liaison-child"))
        .args(["node", "--config"])
        .arg(&config_path)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--exit-with-parent")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until("the liaison node command exits", SETTLE, || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    let Ok(status) = exited else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("the liaison node command runs with another body's certificate");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!ready.exists(), "it said it was ready first: {stderr}");
    for needle in &needles {
        assert!(
            stderr.contains(needle.as_str()),
            "{needle:?} not in {stderr}"
        );
    }

    // Refused before anything: no store, nothing at the hub.
    assert!(!sandbox.dir().join(data).exists());
    assert!(audit_log(&sandbox).await.is_empty());
    hub_still_works(&sandbox).await;
    sandbox.shutdown().await.unwrap();
}

/// The hub given a hub certificate of another body than the governance's
/// hub body (signed by the federation CA, so only its body is wrong)
/// refuses to start, naming both, and never says it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_given_another_bodys_hub_certificate_refuses_to_start_and_never_says_it_is_ready() {
    let sandbox = hub_only().await;
    let ca = CertificateAuthority::load(sandbox.certs()).unwrap();
    let forged = ca
        .issue(
            &[format!("spiffe://{FED}/org/bravo/hub/hub")],
            &["localhost".to_owned()],
            &[std::net::IpAddr::from([127, 0, 0, 1])],
        )
        .unwrap();
    let cert = sandbox.dir().join("bravo-hub.pem");
    let key = sandbox.dir().join("bravo-hub.key.pem");
    std::fs::write(&cert, &forged.cert_pem).unwrap();
    std::fs::write(&key, &forged.key_pem).unwrap();
    let text = std::fs::read_to_string(sandbox.dir().join("hub.toml")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let (k, _) = line.split_once(" = ").unwrap_or((line, ""));
            match k {
                "cert" => format!("cert = {:?}", cert.display().to_string()),
                "key" => format!("key = {:?}", key.display().to_string()),
                "listen" => "listen = \"127.0.0.1:0\"".to_owned(),
                "data_dir" => "data_dir = \"hub-data-bravo\"".to_owned(),
                _ => line.to_owned(),
            }
        })
        .collect();
    let config = sandbox.dir().join("hub-bravo.toml");
    std::fs::write(&config, lines.join("\n")).unwrap();
    let ready = sandbox.dir().join("hub-bravo.ready");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_liaison-child"))
        .args(["hub", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--exit-with-parent")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until("the liaison hub command exits", SETTLE, || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    let Ok(status) = exited else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("the liaison hub command runs with another body's hub certificate");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!ready.exists(), "it said it was ready first: {stderr}");
    assert!(
        stderr.contains("spiffe://liaison.test/org/bravo/hub/hub")
            && stderr.contains("alpha")
            && stderr.contains(&cert.display().to_string()),
        "{stderr}"
    );
    assert!(!sandbox.dir().join("hub-data-bravo").exists());
    sandbox.shutdown().await.unwrap();
}
