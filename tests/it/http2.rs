//! HTTP/2 limits as a raw client sees them: the hub and a node advertise
//! how many streams a client may open on one connection and refuse a
//! header list over their limit; resets a client provokes (MadeYouReset)
//! or sends (rapid reset) end its connection in GOAWAY; and other clients
//! are served throughout. The attacks that need frames no well-behaved
//! client sends are `tests/h2_abuse.py`, with Python's `h2` (installed by
//! `.ci/run`; without it, and without `LIAISON_REQUIRE_TOOLS`, they skip
//! with one line).

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

/// Whether Python's `h2` package is here; `false` (with a line saying so)
/// if it is missing and not required.
fn have_python_h2() -> bool {
    let ran = std::process::Command::new("python3")
        .args(["-c", "import h2"])
        .output();
    let ok = matches!(&ran, Ok(o) if o.status.success());
    if !ok {
        assert!(
            std::env::var_os("LIAISON_REQUIRE_TOOLS").is_none(),
            "Python's h2 is required here (LIAISON_REQUIRE_TOOLS is set) but does not import: {ran:?}"
        );
        eprintln!("skipped: Python's h2 package is missing (see .ci/run for how to install it)");
    }
    ok
}

/// Runs `tests/h2_abuse.py` with `attack` against `url` as alpha's node;
/// its JSON report.
async fn abuse(sandbox: &Sandbox, url: &str, attack: &str, count: u32) -> serde_json::Value {
    let certs = sandbox.certs();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/h2_abuse.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg("--addr")
        .arg(url.trim_start_matches("https://"))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("alpha").join("node.pem"))
        .arg("--key")
        .arg(certs.join("alpha").join("node.key.pem"))
        .args([
            "--attack",
            attack,
            "--count",
            &count.to_string(),
            "--seconds",
            "20",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{attack}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{attack}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_the_client_provokes_or_sends_end_in_goaway_and_others_are_served() {
    if !have_python_h2() {
        return;
    }
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let hub = sandbox.hub_url();
    for attack in ["made_you_reset", "rapid_reset"] {
        let report = abuse(&sandbox, &hub, attack, 20_000).await;
        // ENHANCE_YOUR_CALM (0xb), long before the attacker is done.
        assert_eq!(report["goaway"], true, "{attack}: {report}");
        assert_eq!(report["goaway_error"], 0xb, "{attack}: {report}");
        let sent = report["sent"].as_u64().unwrap();
        assert!(sent < 20_000, "{attack}: {report}");
        // Meanwhile, and after, another client is served.
        let (mut send, _conn) = raw_h2(&sandbox, &hub, "alpha/node").await;
        assert_eq!(
            call(&mut send, 0).await.unwrap(),
            tonic::codegen::http::StatusCode::OK
        );
    }
}
