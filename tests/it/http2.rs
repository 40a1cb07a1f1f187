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

/// How long after `started` the server closed `stream` (its read side saw
/// the end or an error), waiting at most `within`.
async fn closed_after(
    mut stream: tokio::io::ReadHalf<tokio::net::TcpStream>,
    started: std::time::Instant,
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// A TCP client that never starts its handshake, and one that trickles a
/// ClientHello a byte at a time, are both closed once the handshake
/// timeout passes, at the hub and at a node, and a real client is served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_trickled_handshake_is_closed_within_the_timeout_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let timeout = std::time::Duration::from_millis(1000);
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha"])
            .hub_limits("handshake_timeout_ms = 1000")
            .node_toml("[limits]\nhandshake_timeout_ms = 1000"),
    )
    .await
    .unwrap();
    let node_url = sandbox.node_url("alpha").unwrap();
    for (url, stem) in [
        (sandbox.hub_url(), "alpha/node"),
        (node_url, "alpha/officer-alice"),
    ] {
        let addr = url.trim_start_matches("https://").to_owned();
        let started = std::time::Instant::now();
        let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (silent_read, _silent_write) = tokio::io::split(silent);
        let trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (trickle_read, mut trickle_write) = tokio::io::split(trickle);
        // A TLS record header announcing a ClientHello, then its body a
        // byte every 100 ms: far slower than the timeout allows.
        let trickler = tokio::spawn(async move {
            let mut hello = vec![
                0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc, 0x03, 0x03,
            ];
            hello.resize(261, 0x42);
            for b in hello {
                if trickle_write.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        let silent_closed = tokio::spawn(closed_after(silent_read, started, timeout * 10));
        let trickle_closed = tokio::spawn(closed_after(trickle_read, started, timeout * 10));
        // Served while both stall.
        let (mut send, _conn) = raw_h2(&sandbox, &url, stem).await;
        assert_eq!(
            call(&mut send, 0).await.unwrap(),
            tonic::codegen::http::StatusCode::OK,
            "{url}"
        );
        for (what, closed) in [("silent", silent_closed), ("trickled", trickle_closed)] {
            let after = closed
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{url}: the {what} handshake was still open after 10 s"));
            assert!(
                after >= timeout - std::time::Duration::from_millis(100) && after < timeout * 5,
                "{url}: the {what} handshake was closed after {after:?}, the timeout is {timeout:?}"
            );
        }
        trickler.abort();
    }
    // Each process counts both as timeouts.
    for addr in [
        sandbox.hub_metrics_addr().unwrap(),
        sandbox.node_metrics_addr("alpha").unwrap(),
    ] {
        let (_, _, body) = crate::operations::http(addr, "GET", "/metrics").await;
        let m = crate::operations::samples(&body);
        assert!(
            crate::operations::sample(
                &m,
                "liaison_tls_handshake_failures_total{reason=\"timeout\"}"
            ) >= 2.0,
            "{addr}: {body}"
        );
    }
    sandbox.shutdown().await.unwrap();
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
    abuse_for(sandbox, url, attack, count, 20).await
}

/// [`abuse`] for at most `seconds`.
async fn abuse_for(
    sandbox: &Sandbox,
    url: &str,
    attack: &str,
    count: u32,
    seconds: u32,
) -> serde_json::Value {
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
            &seconds.to_string(),
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

/// Every HTTP/2 attack of `tests/h2_abuse.py` against a hub running as a
/// child process: the reset attacks and the zero-window update end in
/// GOAWAY, the PING and SETTINGS floods are absorbed, a real client is
/// served after each, and the hub's peak memory stays bounded (printed, for
/// the figures in SECURITY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http2_attack_leaves_the_hub_serving_with_its_memory_bounded() {
    if !have_python_h2() {
        return;
    }
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_liaison-child"));
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha"])
            .hub_process(exe),
    )
    .await
    .unwrap();
    let pid = sandbox.hub_pid().unwrap();
    let hub = sandbox.hub_url();
    let at_start = crate::common::peak_rss(pid);
    let mut peaks = Vec::new();
    for (attack, count) in [
        ("made_you_reset", 20_000),
        ("rapid_reset", 20_000),
        ("zero_window", 2_000),
        ("ping_flood", 100_000),
        ("settings_flood", 100_000),
        ("continuation_flood", 100_000),
        ("slowloris", 10_000),
    ] {
        let report = if attack == "slowloris" {
            // Twenty connections, each holding every stream it may open.
            let reports = futures::future::join_all(
                (0..20).map(|_| abuse_for(&sandbox, &hub, attack, count, 3)),
            )
            .await;
            let held: u64 = reports
                .iter()
                .map(|r| r["open_streams"].as_u64().unwrap())
                .sum();
            assert!(held <= 20 * 256, "{attack}: {held} streams held");
            eprintln!("figure: slowloris: {held} idle streams held on 20 connections");
            reports.into_iter().next().unwrap()
        } else {
            abuse(&sandbox, &hub, attack, count).await
        };
        match attack {
            "made_you_reset" | "rapid_reset" => {
                assert_eq!(report["goaway_error"], 0xb, "{attack}: {report}");
            }
            "zero_window" | "continuation_flood" => {
                assert!(
                    report["goaway"] == true || report["closed"] == true,
                    "{attack}: {report}"
                );
                assert!(
                    report["sent"].as_u64().unwrap() < u64::from(count),
                    "{attack}: {report}"
                );
            }
            _ => {}
        }
        let (mut send, _conn) = raw_h2(&sandbox, &hub, "alpha/node").await;
        assert_eq!(
            call(&mut send, 0).await.unwrap(),
            tonic::codegen::http::StatusCode::OK,
            "served after {attack}"
        );
        let peak = crate::common::peak_rss(pid);
        eprintln!(
            "figure: {attack}: {} frames sent, goaway {}, hub peak RSS {} MiB",
            report["sent"],
            report["goaway_error"],
            peak >> 20
        );
        peaks.push((attack, peak));
    }
    let worst = peaks.iter().map(|(_, p)| *p).max().unwrap();
    eprintln!(
        "figure: hub peak RSS {} MiB at start, {} MiB after every attack",
        at_start >> 20,
        worst >> 20
    );
    assert!(
        worst < 256 << 20,
        "the hub grew to {} MiB: {peaks:?}",
        worst >> 20
    );
    sandbox.shutdown().await.unwrap();
}

/// Load shedding: a connection whose request slots are all held by
/// requests that never finish gets its next request refused at once with
/// RESOURCE_EXHAUSTED (which clients retry), not queued behind them; other
/// connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_connections_concurrency_is_shed_at_once_and_others_are_served() {
    if !have_python_h2() {
        return;
    }
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha"])
            .hub_limits("concurrency_per_connection = 8"),
    )
    .await
    .unwrap();
    let hub = sandbox.hub_url();
    let report = abuse_for(&sandbox, &hub, "overload", 8, 10).await;
    assert_eq!(report["sent"], 8, "{report}");
    // 8 is RESOURCE_EXHAUSTED.
    assert_eq!(report["answer"]["grpc-status"], "8", "{report}");
    assert!(
        report["answered_after_ms"].as_u64().unwrap() < 5_000,
        "{report}"
    );
    let (mut send, _conn) = raw_h2(&sandbox, &hub, "alpha/node").await;
    assert_eq!(
        call(&mut send, 0).await.unwrap(),
        tonic::codegen::http::StatusCode::OK
    );
    sandbox.shutdown().await.unwrap();
}
