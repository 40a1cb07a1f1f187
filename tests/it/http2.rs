//! HTTP/2 limits as a raw client sees them: the hub and a node advertise
//! how many streams a client may open on one connection, and refuse a
//! header list over their limit, while serving the connection on.

use liaison_federation::{Sandbox, SandboxOptions};

use crate::common::GOVERNANCE;

/// An HTTP/2 client over mutual TLS to `url` as `stem`, and the task that
/// drives its connection.
async fn raw_h2(
    sandbox: &Sandbox,
    url: &str,
    stem: &str,
) -> (
    h2::client::SendRequest<tonic::codegen::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let material = sandbox.material(stem).unwrap();
    let mut config = (*liaison_pki::client_config(&material).unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(connection))
}

/// A gRPC health check request, with `extra` bytes of one more header.
fn health_check(extra: usize) -> tonic::codegen::http::Request<()> {
    let mut req = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri("https://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if extra > 0 {
        req = req.header("x-padding", "a".repeat(extra));
    }
    req.body(()).unwrap()
}

/// Sends one empty health check and returns the response's HTTP status (a
/// gRPC error still answers 200), or the stream's error.
async fn call(
    send: &mut h2::client::SendRequest<tonic::codegen::Bytes>,
    extra: usize,
) -> Result<tonic::codegen::http::StatusCode, h2::Error> {
    let mut ready = send.clone().ready().await?;
    let (response, mut stream) = ready.send_request(health_check(extra), false)?;
    // An empty HealthCheckRequest: a zero-length gRPC frame.
    stream.send_data(tonic::codegen::Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
    Ok(response.await?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_advertise_a_stream_limit_and_refuse_huge_headers_but_serve_on() {
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let node_url = sandbox.node_url("alpha").unwrap();
    for (url, stem) in [
        (sandbox.hub_url(), "alpha/node"),
        (node_url, "alpha/officer-alice"),
    ] {
        let (mut send, _conn) = raw_h2(&sandbox, &url, stem).await;
        // One round trip: the server's SETTINGS have been read by then.
        assert_eq!(
            call(&mut send, 0).await.unwrap(),
            tonic::codegen::http::StatusCode::OK
        );
        assert_eq!(
            send.current_max_send_streams(),
            256,
            "{url}: SETTINGS_MAX_CONCURRENT_STREAMS"
        );
        // A header list over 64 KiB is refused, and the connection serves on.
        let refused = call(&mut send, 80 * 1024).await;
        assert!(
            !matches!(refused, Ok(tonic::codegen::http::StatusCode::OK)),
            "{url}: an 80 KiB header was served: {refused:?}"
        );
        let (mut again, _conn) = raw_h2(&sandbox, &url, stem).await;
        assert_eq!(
            call(&mut again, 1024).await.unwrap(),
            tonic::codegen::http::StatusCode::OK
        );
    }
}
