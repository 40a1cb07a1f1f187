//! Network faults between the nodes and the hub, in a network namespace
//! the test makes itself: the hub runs in it (`ip netns exec`), joined to
//! the nodes by a veth pair whose two ends `tc netem` impairs. Loss, delay
//! and reordering (where the kernel has netem); a partition (both veth
//! ends down: 8 s here, a minute with `LIAISON_PARTITION_SECONDS=60`) and
//! its healing; a hub that accepts TCP but answers nothing (stopped with
//! SIGSTOP: 5 s, or `LIAISON_SILENT_HUB_SECONDS`) and its return. Every
//! message arrives once, in the order sent, the nodes reconnect within
//! their bounded backoff once the path heals, and the hub holds a handful
//! of connections afterwards, not a storm. Where this process may not
//! create a namespace, the test says so in one line and skips (unless
//! `LIAISON_REQUIRE_PRIVILEGES` is set).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use pb::{Classification as C, Kind as K};
use tonic::transport::Channel;

use crate::common::{alert, inbox_ids, labels, GOVERNANCE};

/// The port the hub listens on inside its namespace.
const HUB_PORT: u16 = 7400;
/// Longest wait for deliveries through an impaired or healed path.
const THROUGH: Duration = Duration::from_secs(60);

/// Runs a command; whether it succeeded.
fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A namespace for the hub and the veth pair to it; removed when dropped.
struct HubNet {
    ns: String,
    outside: String,
    inside: String,
    hub_ip: Ipv4Addr,
}

impl HubNet {
    /// Makes the namespace, or says why it cannot and returns `None`.
    fn create() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id() % 1000 * 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 10;
        let net = Self {
            ns: format!("lzn{n}"),
            outside: format!("lzo{n}"),
            inside: format!("lzi{n}"),
            hub_ip: Ipv4Addr::new(10, 213, (n % 250) as u8, 2),
        };
        let host_ip = format!("10.213.{}.1/30", n % 250);
        let hub_ip = format!("{}/30", net.hub_ip);
        let made = run("ip", &["netns", "add", &net.ns])
            && run(
                "ip",
                &[
                    "link",
                    "add",
                    &net.outside,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &net.inside,
                ],
            )
            && run("ip", &["link", "set", &net.inside, "netns", &net.ns])
            && run("ip", &["addr", "add", &host_ip, "dev", &net.outside])
            && run("ip", &["link", "set", &net.outside, "up"])
            && net.exec(&["ip", "addr", "add", &hub_ip, "dev", &net.inside])
            && net.exec(&["ip", "link", "set", &net.inside, "up"])
            && net.exec(&["ip", "link", "set", "lo", "up"])
            && run("tc", &["-V"]);
        if !made {
            assert!(
                std::env::var_os("LIAISON_REQUIRE_PRIVILEGES").is_none(),
                "cannot make a network namespace with a veth pair and tc, and LIAISON_REQUIRE_PRIVILEGES is set"
            );
            crate::common::skip("network faults: this process may not make network namespaces, veth pairs and tc qdiscs (needs root or CAP_NET_ADMIN, and iproute2)");
            return None;
        }
        Some(net)
    }

    fn exec(&self, args: &[&str]) -> bool {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Applies `netem` (for example `delay 20ms loss 5%`) to both
    /// directions; `false` (said in one line) where the kernel has no
    /// netem qdisc.
    fn impair(&self, netem: &str) -> bool {
        let mut args = vec!["qdisc", "replace", "dev", &self.outside, "root", "netem"];
        args.extend(netem.split(' '));
        if !run("tc", &args) {
            assert!(
                std::env::var_os("LIAISON_REQUIRE_PRIVILEGES").is_none(),
                "tc netem is refused here, and LIAISON_REQUIRE_PRIVILEGES is set"
            );
            crate::common::skip("network faults: loss, delay and reordering: this kernel has no netem qdisc (sch_netem)");
            return false;
        }
        let mut inside = vec![
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.inside,
            "root",
            "netem",
        ];
        inside.extend(netem.split(' '));
        assert!(self.exec(&inside), "{inside:?}");
        true
    }

    /// Removes every impairment.
    fn unimpair(&self) {
        run("tc", &["qdisc", "del", "dev", &self.outside, "root"]);
        self.exec(&["tc", "qdisc", "del", "dev", &self.inside, "root"]);
    }

    /// Cuts the path: both ends of the veth pair go down, so every packet
    /// either way is lost (no reset reaches either side).
    fn partition(&self) {
        assert!(run("ip", &["link", "set", &self.outside, "down"]));
        assert!(self.exec(&["ip", "link", "set", &self.inside, "down"]));
    }

    /// Restores the path.
    fn heal(&self) {
        assert!(run("ip", &["link", "set", &self.outside, "up"]));
        assert!(self.exec(&["ip", "link", "set", &self.inside, "up"]));
    }

    /// TCP connections established to the hub's port, seen from inside.
    fn hub_connections(&self) -> usize {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .arg(format!("( sport = :{HUB_PORT} )"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for HubNet {
    fn drop(&mut self) {
        run("ip", &["link", "del", &self.outside]);
        run("ip", &["netns", "del", &self.ns]);
    }
}

/// The hub's certificate again, also naming `ip` (nodes dial it there).
fn hub_certificate_for(certs: &std::path::Path, ip: IpAddr) {
    let files = liaison_pki::TlsFiles::in_dev_dir(certs, "hub");
    let uri = liaison_pki::TlsMaterial::load(&files)
        .unwrap()
        .identity()
        .unwrap()
        .uri();
    let ca = liaison_pki::CertificateAuthority::load(certs).unwrap();
    let issued = ca
        .issue(
            &[uri],
            &["localhost".to_owned()],
            &[IpAddr::from([127, 0, 0, 1]), ip],
        )
        .unwrap();
    std::fs::write(&files.cert, issued.cert_pem).unwrap();
    std::fs::write(&files.key, issued.key_pem).unwrap();
}

/// An alert from `origin` that only the other of alpha and bravo receives
/// (charlie's mandate lacks cybercrime; the observer takes no alerts).
fn alert_for_the_other(title: &str) -> pb::OfficerSubmitRequest {
    pb::OfficerSubmitRequest {
        labels: Some(labels(K::Alert, C::OfficialUse, &["cybercrime"])),
        body: Some(alert(title)),
        targets: Vec::new(),
        clear_targets: false,
    }
}

async fn submit_n(officer: &mut OfficerClient<Channel>, what: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            officer
                .submit(alert_for_the_other(&format!("{what} {i}")))
                .await
                .unwrap()
                .into_inner()
                .message_id,
        );
    }
    ids
}

/// Waits until `body`'s inbox holds every id of `sent`, then checks that
/// it holds each once and in the order sent (among the messages of
/// `all_sent`, everything this sender sent it so far).
async fn arrived_in_order(sandbox: &Sandbox, body: &str, sent: &[String], all_sent: &[String]) {
    let inbox = wait_until(
        &format!("{body} gets {} messages", sent.len()),
        THROUGH,
        || async {
            let got = inbox_ids(sandbox, body).await;
            sent.iter().all(|id| got.contains(id)).then_some(got)
        },
    )
    .await
    .unwrap();
    let oldest_first: Vec<&String> = inbox
        .iter()
        .rev()
        .filter(|id| all_sent.contains(id))
        .collect();
    let expected: Vec<&String> = all_sent
        .iter()
        .filter(|id| oldest_first.contains(id))
        .collect();
    assert_eq!(
        oldest_first, expected,
        "{body}: each once, in the order sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_delay_reordering_a_partition_and_a_silent_hub_lose_nothing_and_heal_without_a_storm()
{
    let Some(net) = HubNet::create() else {
        return;
    };
    let seconds = |var: &str, default: u64| {
        Duration::from_secs(
            std::env::var(var)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default),
        )
    };
    let partition = seconds("LIAISON_PARTITION_SECONDS", 8);
    let silence = seconds("LIAISON_SILENT_HUB_SECONDS", 5);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let gov = liaison_policy::Governance::from_toml("governance.toml", GOVERNANCE).unwrap();
    liaison_pki::ensure_dev_pki(&certs, &liaison_federation::dev_spec(&gov)).unwrap();
    hub_certificate_for(&certs, IpAddr::V4(net.hub_ip));
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_liaison-child"));
    let mut o = SandboxOptions::new(GOVERNANCE)
        .nodes(&["alpha", "bravo"])
        .hub_in_netns(
            exe,
            &net.ns,
            SocketAddr::new(IpAddr::V4(net.hub_ip), HUB_PORT),
        );
    o.dir = Some(dir.path().join("run"));
    o.certs = Some(certs);
    let sandbox = Sandbox::start(o).await.unwrap();
    let mut alice = sandbox.officer("alpha", "alice").await.unwrap();
    let mut of_bravo = sandbox.officer("bravo", "alice").await.unwrap();

    // Loss, delay with jitter, and reordering, both ways (where the kernel
    // has netem).
    let mut to_bravo = Vec::new();
    let mut to_alpha = Vec::new();
    if net.impair("delay 20ms 10ms loss 5% reorder 10% 50%") {
        to_bravo = submit_n(&mut alice, "impaired", 40).await;
        to_alpha = submit_n(&mut of_bravo, "impaired", 20).await;
        arrived_in_order(&sandbox, "bravo", &to_bravo, &to_bravo).await;
        arrived_in_order(&sandbox, "alpha", &to_alpha, &to_alpha).await;
        net.unimpair();
    }
    let before = submit_n(&mut alice, "before the partition", 5).await;
    to_bravo.extend(before.iter().cloned());
    arrived_in_order(&sandbox, "bravo", &before, &to_bravo).await;

    // A partition: the nodes keep what officers submit meanwhile.
    net.partition();
    let during = submit_n(&mut alice, "partitioned", 10).await;
    to_bravo.extend(during.iter().cloned());
    let back = submit_n(&mut of_bravo, "partitioned", 5).await;
    to_alpha.extend(back.iter().cloned());
    // The fault itself lasts this long.
    tokio::time::sleep(partition).await;
    net.heal();
    let healed = Instant::now();
    arrived_in_order(&sandbox, "bravo", &during, &to_bravo).await;
    arrived_in_order(&sandbox, "alpha", &back, &to_alpha).await;
    let recovered = healed.elapsed();
    let connections = net.hub_connections();
    eprintln!(
        "figure: a partition of {partition:?}: delivered {recovered:?} after healing; {connections} connections at the hub"
    );
    assert!(recovered < Duration::from_secs(30), "{recovered:?}");
    // Two nodes, each with a connection or two, and this test's clients:
    // not one per retry.
    assert!(connections <= 8, "{connections} connections after healing");

    // A hub that accepts TCP and answers nothing.
    let pid = rustix::process::Pid::from_raw(sandbox.hub_pid().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let silent = submit_n(&mut alice, "hub silent", 10).await;
    to_bravo.extend(silent.iter().cloned());
    tokio::time::sleep(silence).await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let woke = Instant::now();
    arrived_in_order(&sandbox, "bravo", &silent, &to_bravo).await;
    eprintln!(
        "figure: a hub silent for {silence:?}: delivered {:?} after it answered again; {} connections at the hub",
        woke.elapsed(),
        net.hub_connections()
    );
    assert!(net.hub_connections() <= 8);
    sandbox.shutdown().await.unwrap();
    drop(net);
}
