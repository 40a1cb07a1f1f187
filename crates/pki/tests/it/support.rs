//! Shared fixtures: a small dev PKI spec, certificates minted in memory,
//! TLS servers on port 0, and polling with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use liaison_pki::{
    server_config, tls_incoming, CertificateAuthority, DevPkiSpec, ServerTlsStream, TlsMaterial,
};
use liaison_types::{BodyId, Identity, Role};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub const FED: &str = "liaison.dev";

/// Generous bound for things that should happen at once on loopback.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn body(s: &str) -> BodyId {
    BodyId::parse(s).expect("valid body id")
}

pub fn spec() -> DevPkiSpec {
    DevPkiSpec {
        federation: FED.into(),
        hub_body: body("liaison"),
        bodies: vec![body("europol"), body("fr-police")],
        officers: vec!["alice".into(), "bob".into()],
        auditors: vec!["audit".into()],
        admins: vec!["root".into()],
        oversight: vec!["ccf".into()],
    }
}

pub fn identity(body: &str, role: Role, name: &str) -> Identity {
    Identity::new(FED, body, role, name).expect("valid identity")
}

/// Material for `identity`, issued by `ca`.
pub fn material(ca: &CertificateAuthority, identity: &Identity) -> TlsMaterial {
    let issued = ca.issue_identity(identity).expect("issue");
    TlsMaterial {
        ca_pem: ca.cert_pem(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    }
}

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("test federation ca").expect("generate ca")
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem certificate")
}

pub type Incoming = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<ServerTlsStream>> + Send>>;

/// A `tls_incoming` stream on a fresh port-0 listener.
pub async fn tls_server(
    material: &TlsMaterial,
    handshake_timeout: Duration,
) -> (SocketAddr, Incoming) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let config = server_config(material).expect("server config");
    (
        addr,
        Box::pin(tls_incoming(listener, config, handshake_timeout, None)),
    )
}

/// The next established connection, within the deadline.
pub async fn next_established(incoming: &mut Incoming) -> ServerTlsStream {
    tokio::time::timeout(DEADLINE, incoming.next())
        .await
        .expect("a connection within the deadline")
        .expect("stream still open")
        .expect("established")
}

/// A client configuration that trusts `ca_pem` and presents no certificate.
pub fn anonymous_client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// TLS client handshake to `addr` with `config`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from(liaison_pki::SERVER_NAME).expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Polls `check` until it yields `Some`, failing the test after `DEADLINE`.
#[allow(dead_code)]
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
