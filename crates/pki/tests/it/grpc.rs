//! End to end through tonic: a tiny hand-written unary service behind
//! `authorize`, served from `tls_incoming`, called through `connect` and
//! `lazy_channel`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use liaison_pki::{
    authorize, caller_from_extensions, connect, lazy_channel, server_config, tls_incoming,
    PkiError, TlsMaterial,
};
use liaison_types::Role;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::support::{ca, identity, material, TestResult, FED};

const PATH: &str = "/liaison.test.WhoAmI/Get";

/// Answers every call on [`PATH`] with the caller's identity URI.
#[derive(Clone)]
struct WhoAmI;

impl NamedService for WhoAmI {
    const NAME: &'static str = "liaison.test.WhoAmI";
}

struct Handler;

impl tonic::server::UnaryService<()> for Handler {
    type Response = String;
    type Future = std::future::Ready<Result<Response<String>, Status>>;

    fn call(&mut self, req: Request<()>) -> Self::Future {
        std::future::ready(caller_from_extensions(&req).map(|id| Response::new(id.uri())))
    }
}

impl tower::Service<http::Request<Body>> for WhoAmI {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<String, ()>::default());
            Ok(grpc.unary(Handler, req).await)
        })
    }
}

/// A tonic server on port 0 presenting `material`, whose only API is open
/// to `allowed`. Stops when the returned sender is dropped.
async fn serve(
    material: &TlsMaterial,
    allowed: &'static [Role],
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tls_incoming(
        listener,
        server_config(material).expect("config"),
        Duration::from_secs(10),
        None,
    );
    let service = InterceptedService::new(WhoAmI, authorize(FED.to_owned(), allowed));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = result {
            panic!("server failed: {e}");
        }
    });
    (addr, stop)
}

async fn who_am_i(channel: Channel) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(PATH);
    let response = grpc
        .unary(Request::new(()), path, ProstCodec::<(), String>::default())
        .await?;
    Ok(response.into_inner())
}

#[tokio::test]
async fn a_node_reaches_a_node_only_api_and_learns_its_identity() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let node_id = identity("europol", Role::Node, "node");
    let node = material(&ca, &node_id);
    let (addr, _stop) = serve(&hub, &[Role::Node]).await;

    let channel = connect(&format!("https://{addr}"), &node, Some(Role::Hub), FED).await?;
    assert_eq!(who_am_i(channel).await?, node_id.uri());

    // The bare host:port form and the lazy channel work the same.
    let channel = lazy_channel(&addr.to_string(), &node, Some(Role::Hub), FED)?;
    assert_eq!(who_am_i(channel).await?, node_id.uri());
    Ok(())
}

#[tokio::test]
async fn another_role_is_denied_with_a_clear_message() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let officer = material(&ca, &identity("europol", Role::Officer, "alice"));
    let (addr, _stop) = serve(&hub, &[Role::Node]).await;

    let channel = connect(&format!("https://{addr}"), &officer, None, FED).await?;
    let status = who_am_i(channel).await.expect_err("officer refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "role 'officer' may not call this api; it is open to node certificates"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_without_certificate_is_refused_at_the_handshake() -> TestResult {
    let ca = ca();
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let (addr, _stop) = serve(&hub, &[Role::Node]).await;

    // tonic's own TLS client, trusting the CA but presenting nothing.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    // The client's side of a TLS 1.3 handshake may complete before the
    // server's verdict arrives: the refusal shows either when connecting or
    // on the first call, and no call ever reaches the service.
    let connected = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await;
    if let Ok(channel) = connected {
        let status = who_am_i(channel).await.expect_err("no certificate");
        assert!(
            format!("{status:?}").contains("CertificateRequired"),
            "the tls alert says why: {status:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn connect_refuses_a_server_of_the_wrong_role() -> TestResult {
    let ca = ca();
    // A node where the hub should be.
    let impostor = material(&ca, &identity("europol", Role::Node, "node"));
    let client = material(&ca, &identity("fr-police", Role::Node, "node"));
    let (addr, _stop) = serve(&impostor, &[Role::Node]).await;

    let err = connect(&format!("https://{addr}"), &client, Some(Role::Hub), FED)
        .await
        .expect_err("wrong role");
    assert!(
        matches!(
            err,
            PkiError::WrongServerRole {
                found: Role::Node,
                expected: Role::Hub,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "spiffe://liaison.dev/org/europol/node/node with role 'node', expected role 'hub'"
        ),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn connect_refuses_a_server_of_another_ca() -> TestResult {
    let ours = ca();
    let theirs = ca();
    let server = material(&theirs, &identity("liaison", Role::Hub, "hub"));
    let client = material(&ours, &identity("europol", Role::Node, "node"));
    let (addr, _stop) = serve(&server, &[Role::Node]).await;

    let err = connect(&format!("https://{addr}"), &client, Some(Role::Hub), FED)
        .await
        .expect_err("unknown issuer");
    assert!(matches!(err, PkiError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("tls handshake"), "{err}");
    Ok(())
}

#[tokio::test]
async fn endpoints_must_be_tls_host_and_port() {
    let ca = ca();
    let node = material(&ca, &identity("europol", Role::Node, "node"));
    for bad in [
        "http://127.0.0.1:1",
        "https://127.0.0.1",
        "127.0.0.1:1/path",
        "",
    ] {
        let err = lazy_channel(bad, &node, None, FED).expect_err(bad);
        assert!(matches!(err, PkiError::BadEndpoint { .. }), "{bad}: {err}");
    }
}

#[tokio::test]
async fn the_server_certificate_must_name_the_host_dialled() -> TestResult {
    let ca = ca();
    let node = material(&ca, &identity("europol", Role::Node, "node"));
    let hub = material(&ca, &identity("liaison", Role::Hub, "hub"));
    let (addr, _stop) = serve(&hub, &[Role::Node]).await;
    // Dev server certificates name localhost and 127.0.0.1: both dial.
    let by_name = format!("https://localhost:{}", addr.port());
    connect(&by_name, &node, Some(Role::Hub), FED).await?;
    connect(&format!("https://{addr}"), &node, Some(Role::Hub), FED).await?;

    // A hub certificate for another host is refused at 127.0.0.1.
    let hub_uri = identity("liaison", Role::Hub, "hub").uri();
    let elsewhere = ca.issue(&[hub_uri], &["hub.example.org".to_owned()], &[])?;
    let other = TlsMaterial {
        ca_pem: ca.cert_pem(),
        cert_pem: elsewhere.cert_pem,
        key_pem: elsewhere.key_pem,
    };
    let (addr, _stop2) = serve(&other, &[Role::Node]).await;
    let err = connect(&format!("https://{addr}"), &node, Some(Role::Hub), FED)
        .await
        .expect_err("the certificate does not name 127.0.0.1");
    assert!(err.to_string().contains("tls handshake"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_server_certificate_without_an_extended_key_usage_is_refused() -> TestResult {
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    let ca = ca();
    let node = material(&ca, &identity("europol", Role::Node, "node"));
    // A hub certificate the federation CA signed, right in every way but
    // one: it has no extended key usage extension (RFC 5280 reads that as
    // any purpose; Liaison does not).
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem(), KeyPair::from_pem(&ca.key_pem())?)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.subject_alt_names.push(SanType::URI(
        identity("liaison", Role::Hub, "hub")
            .uri()
            .as_str()
            .try_into()?,
    ));
    params.extended_key_usages = vec![];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let hub = TlsMaterial {
        ca_pem: ca.cert_pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let (addr, _stop) = serve(&hub, &[Role::Node]).await;
    let err = connect(&format!("https://{addr}"), &node, Some(Role::Hub), FED)
        .await
        .expect_err("a server certificate without serverAuth");
    let text = format!("{err:?} {err}");
    assert!(text.contains("tls handshake"), "{text}");
    assert!(text.contains("no extended key usage"), "{text}");
    Ok(())
}
