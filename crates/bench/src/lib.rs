//! `liaison bench`: how fast the federation routes, measured honestly.
//!
//! A real hub and eleven real nodes run as child processes of the `liaison`
//! binary (so that the kernel counts each one's CPU time and memory apart
//! from the driver's), over mutual TLS on loopback, with real sled stores
//! and every `fdatasync`. The driver plays officers: it submits to one
//! node, and watches the recipients' inboxes (`Officer.WatchInbox`), so
//! that a latency is officer submit → recipient inbox, durable at each hop.
//!
//! In the same run it measures a bare tonic unary echo (1 KiB, the same
//! certificates, accept path and limits, no storage, policy or audit) at
//! the same concurrencies, and states every throughput as a ratio to it:
//! machines are noisy, ratios of one run are not.
#![forbid(unsafe_code)]

pub mod echo;
mod proc;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use liaison_federation::{Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_proto::v1::audit_client::AuditClient;
use liaison_proto::v1::federation_client::FederationClient;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_types::Role;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tonic::transport::Channel;

pub use report::{svg, table};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The federation could not start or stop.
    #[error(transparent)]
    Sandbox(#[from] liaison_federation::SandboxError),
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] liaison_pki::PkiError),
    /// A call failed: a benchmark refuses to report figures for a run that
    /// lost or refused messages.
    #[error("{0}")]
    Rpc(String),
    /// Files, processes, tasks.
    #[error("{0}")]
    Io(String),
    /// Deliveries did not all arrive in time.
    #[error("{0}")]
    Timeout(String),
}

/// The federation's name in the benchmark's governance.
pub const FEDERATION: &str = "liaison.bench";
/// Bodies of the benchmark federation: one sender and ten peers.
pub const BODIES: usize = 11;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `liaison` binary to start the hub, nodes and echo server from.
    pub exe: PathBuf,
    /// Seconds instead of minutes: checks that everything works, proves
    /// nothing about speed.
    pub quick: bool,
    /// Also sweep the offered load, for [`svg`].
    pub sweep: bool,
    /// Keep the configurations, stores and logs here (default: a temporary
    /// directory, removed at the end).
    pub dir: Option<PathBuf>,
    /// Messages to queue for a stopped peer before it comes back (0: no
    /// backlog scenario).
    pub backlog: u64,
    /// Bytes of alert text in each message, and of each echo (1 to
    /// [`MAX_PAYLOAD`]; [`PAYLOAD`] by default).
    pub payload: usize,
    /// Federations of this many bodies to measure against the eleven: the
    /// eleven run nodes, every other body is simulated (see [`Peers`]).
    /// Each must be more than [`BODIES`] and at most [`MAX_BODIES`].
    pub bodies: Vec<usize>,
}

/// The largest federation `--bodies` builds.
pub const MAX_BODIES: usize = 5000;
/// The federations of the full run, and of `--quick`.
pub const DEFAULT_BODIES: [usize; 2] = [100, 1000];
/// See [`DEFAULT_BODIES`].
pub const QUICK_BODIES: [usize; 1] = [24];

/// Most bytes of messages in one officer batch of the bench, under a
/// node's default request limit (512 KiB).
const OFFICER_BATCH_BYTES: usize = 384 * 1024;

/// The largest payload: an alert's text holds at most 64 KiB, and a
/// message has no attachments, so larger messages cannot be expressed.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The backlog of the full run, and of `--quick`.
pub const DEFAULT_BACKLOG: u64 = 100_000;
/// See [`DEFAULT_BACKLOG`].
pub const QUICK_BACKLOG: u64 = 200;

impl Options {
    fn window(&self) -> Duration {
        if self.quick {
            Duration::from_millis(400)
        } else {
            Duration::from_secs(4)
        }
    }
}

/// Latencies, for percentiles.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Adds these.
    pub fn extend(&mut self, more: impl IntoIterator<Item = Duration>) {
        self.0.extend(more);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0 < q ≤ 1) in microseconds, nearest rank; 0 if empty.
    pub fn quantile_us(&mut self, q: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        let rank = (q * self.0.len() as f64).ceil() as usize;
        let at = rank.clamp(1, self.0.len()) - 1;
        u64::try_from(self.0[at].as_micros()).unwrap_or(u64::MAX)
    }
}

/// The echo at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct EchoFigure {
    /// Calls in flight.
    pub concurrency: usize,
    /// Calls per second.
    pub rps: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFigure {
    /// What it is, for example `saturation c64 fan-out 10`.
    pub name: String,
    /// Officer submissions in flight (closed loop); `None` at a fixed
    /// offered rate.
    pub concurrency: Option<usize>,
    /// Offered messages per second (open loop); `None` at saturation.
    pub offered_per_s: Option<f64>,
    /// Recipients of each message.
    pub recipients: usize,
    /// Whether the sending node pushed in batches (`SubmitBatch`) or one
    /// `Submit` per message.
    pub batched: bool,
    /// Messages per officer request (`Officer.SubmitBatch`), each request's
    /// messages stored by the sending node in one write; `None` for one
    /// `Officer.Submit` per message.
    pub officer_batch: Option<usize>,
    /// Messages submitted (every one was delivered to every recipient).
    pub messages: u64,
    /// Messages delivered to all their recipients per second, from the
    /// first submission to the last arrival.
    pub msgs_per_s: f64,
    /// Deliveries (message × recipient) per second.
    pub deliveries_per_s: f64,
    /// Officer submit → recipient inbox, per delivery.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub p999_us: u64,
    /// Hub CPU (user + system) per message.
    pub hub_cpu_s_per_msg: f64,
    /// All nodes' CPU per message.
    pub nodes_cpu_s_per_msg: f64,
    /// The hub's peak RSS during the scenario.
    pub hub_peak_rss_bytes: u64,
    /// The largest node's peak RSS during the scenario.
    pub nodes_peak_rss_bytes: u64,
    /// Bytes the hub wrote to storage per message (the kernel's
    /// `write_bytes`; 0 where the filesystem does not count them).
    pub hub_write_bytes_per_msg: f64,
    /// Growth of the hub's data directory per message.
    pub hub_disk_bytes_per_msg: f64,
    /// `msgs_per_s` over the echo's calls per second at the same
    /// concurrency; `None` for a fixed offered rate.
    pub ratio_to_echo: Option<f64>,
    /// `p50_us` over the echo's p50 at the same concurrency.
    pub p50_ratio_to_echo: Option<f64>,
    /// Leaves the hub appended to its audit log per second over the
    /// scenario (its records: receipts, decisions, deliveries and
    /// acknowledgements, each a leaf).
    pub audit_leaves_per_s: f64,
    /// Leaves per message.
    pub audit_leaves_per_msg: f64,
}

impl ScenarioFigure {
    /// Sets the audit figures from the leaves appended over it.
    fn leaves(&mut self, leaves: u64, messages: u64) {
        let seconds = self.messages as f64 / self.msgs_per_s.max(1e-9);
        self.audit_leaves_per_s = leaves as f64 / seconds.max(1e-9);
        self.audit_leaves_per_msg = leaves as f64 / messages.max(1) as f64;
    }
}

/// One point of the offered-load sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// Offered messages per second.
    pub offered_per_s: f64,
    /// Achieved messages per second.
    pub msgs_per_s: f64,
    /// Median submit → inbox.
    pub p50_us: u64,
    /// 99th percentile submit → inbox.
    pub p99_us: u64,
}

/// A backlog queued at the hub for a stopped peer, then drained.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogFigure {
    /// Messages queued (fan-out 1, to the stopped peer only).
    pub messages: u64,
    /// Messages per second routed into the queue while the peer was down
    /// (officer submit to the hub's answer to the sending node).
    pub fill_msgs_per_s: f64,
    /// The hub's peak RSS while the backlog grew and drained.
    pub hub_peak_rss_bytes: u64,
    /// The hub's RSS with the whole backlog queued.
    pub hub_rss_queued_bytes: u64,
    /// Growth of the hub's data directory per queued message.
    pub hub_disk_bytes_per_msg: f64,
    /// Bytes the hub wrote to storage per message while filling.
    pub hub_write_bytes_per_msg: f64,
    /// Messages per second from the peer's restart to the last arrival in
    /// its inbox.
    pub drain_msgs_per_s: f64,
    /// Seconds from the peer's restart to the last arrival.
    pub drain_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// CPUs this machine has (client and servers share them).
    pub cpus: usize,
    /// Whether it was the seconds-long check (`--quick`): its figures mean
    /// nothing.
    pub quick: bool,
    /// Payload of each message and echo, bytes.
    pub payload_bytes: usize,
    /// The baseline.
    pub echo: Vec<EchoFigure>,
    /// The federation.
    pub scenarios: Vec<ScenarioFigure>,
    /// Throughput and p99 against offered load (with `--plot`).
    pub sweep: Vec<SweepPoint>,
    /// A backlog for a stopped peer (with a non-zero `--backlog`).
    pub backlog: Option<BacklogFigure>,
    /// Larger federations against the eleven bodies (`--bodies`).
    pub bodies: Vec<BodiesFigure>,
    /// Proofs and checkpoints of the hub's audit log, once the scenarios
    /// have grown it.
    pub log: Option<LogFigure>,
    /// Offline verification of an audit export (filled by the `liaison`
    /// command, which owns the verifier).
    pub offline_verify: Option<VerifyFigure>,
}

/// The audit log's proofs, served by the hub over mutual TLS to an
/// oversight auditor, one call at a time.
#[derive(Debug, Clone, Serialize)]
pub struct LogFigure {
    /// The tree size the proofs were asked in.
    pub tree_size: u64,
    /// Calls of each kind.
    pub calls: usize,
    /// `Audit.ProveInclusion` of a random leaf in the latest tree.
    pub inclusion_p50_us: u64,
    /// See `inclusion_p50_us`.
    pub inclusion_p99_us: u64,
    /// `Audit.ProveConsistency` from a random smaller size to the latest.
    pub consistency_p50_us: u64,
    /// See `consistency_p50_us`.
    pub consistency_p99_us: u64,
    /// `Audit.GetCheckpoint` (latest, with its cosignatures).
    pub checkpoint_p50_us: u64,
    /// `inclusion_p50_us` over the echo's p50 at c1.
    pub inclusion_p50_ratio_to_echo: Option<f64>,
}

/// An export of the audit log verified offline (`liaison audit verify
/// --file`): every leaf decoded and compared with its record, hashed, and
/// the whole tree recomputed against the signed checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyFigure {
    /// Records in the export.
    pub records: u64,
    /// Its size.
    pub file_bytes: u64,
    /// Seconds to verify it.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
}

impl Report {
    /// A report that measured nothing yet (for figures added by others).
    pub fn empty(quick: bool, payload_bytes: usize) -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            quick,
            payload_bytes,
            echo: Vec::new(),
            scenarios: Vec::new(),
            sweep: Vec::new(),
            backlog: None,
            bodies: Vec::new(),
            log: None,
            offline_verify: None,
        }
    }
}

/// A federation of more bodies than the eleven, measured as the eleven's
/// saturation at c64, fan-out 1.
#[derive(Debug, Clone, Serialize)]
pub struct BodiesFigure {
    /// Bodies in the governance.
    pub bodies: usize,
    /// Of them, bodies with no node process whose subscriptions the driver
    /// holds open.
    pub simulated: usize,
    /// Durable routed messages per second (c64, fan-out 1).
    pub msgs_per_s: f64,
    /// `msgs_per_s` against the eleven bodies' c64 fan-out 1 of this run.
    pub ratio_to_eleven: Option<f64>,
    /// Submit → inbox latency quantiles, µs.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// Hub CPU seconds per message.
    pub hub_cpu_s_per_msg: f64,
    /// Hub RSS with every body connected, before the load.
    pub hub_rss_connected_bytes: u64,
    /// Hub peak RSS under the load.
    pub hub_peak_rss_bytes: u64,
}

/// The payload each message and echo carries unless `--payload` says otherwise.
pub const PAYLOAD: usize = 1024;

/// The governance of the benchmark: `BODIES` members that may all receive
/// everything, so that `releasable_to` alone chooses the recipients.
pub fn governance(bodies: usize) -> String {
    let mut text = format!(
        "version = 1\nfederation = \"{FEDERATION}\"\nhub_body = \"{}\"\n\n[observers]\nkinds = [\"threat_assessment\"]\nmax_classification = \"OFFICIAL_USE\"\n",
        body(0)
    );
    for i in 0..bodies {
        text.push_str(&format!(
            "\n[[body]]\nid = \"{}\"\nname = \"Bench body {i}\"\nstatus = \"member\"\nclearance = \"SECRET\"\nkinds = [\"threat_assessment\", \"operational_plan\", \"alert\"]\nmandate = [\"drugs\"]\n",
            body(i)
        ));
    }
    text
}

/// The id of benchmark body `i`.
pub fn body(i: usize) -> String {
    format!("body{i:02}")
}

/// Runs the whole benchmark. `progress` hears what is being measured.
pub async fn run(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Report, BenchError> {
    if let Some(n) = opts
        .bodies
        .iter()
        .find(|n| !(BODIES + 1..=MAX_BODIES).contains(n))
    {
        return Err(BenchError::Io(format!(
            "a federation of {n} bodies cannot be measured: give {} to {MAX_BODIES} bodies",
            BODIES + 1
        )));
    }
    let (_temp, dir) = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| io_err("creating the bench directory", &e))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("liaison-bench-")
                .tempdir()
                .map_err(|e| io_err("creating a temporary directory", &e))?;
            let d = t.path().to_path_buf();
            (Some(t), d)
        }
    };
    let text = governance(BODIES);
    let window = opts.window();
    let mut report = Report {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        quick: opts.quick,
        payload_bytes: opts.payload,
        echo: Vec::new(),
        scenarios: Vec::new(),
        sweep: Vec::new(),
        backlog: None,
        bodies: Vec::new(),
        log: None,
        offline_verify: None,
    };

    // The batched federation (the default node configuration).
    let sandbox = start(opts, &dir.join("batched"), &text, "").await?;
    progress(&format!("bare tonic mTLS echo, {} B", opts.payload));
    report.echo = measure_echo(opts, &sandbox, window).await?;
    let fed = Fed::connect(sandbox, true, opts.payload).await?;
    fed.warm_up().await?;
    let mut specs: Vec<(usize, usize)> = vec![(1, 1), (16, 1), (64, 1), (64, 4), (64, 10)];
    if opts.quick {
        // c64 fan-out 1 is the reference of the larger federations.
        specs = vec![(1, 1), (16, 4), (64, 1), (64, 10)];
    }
    for (c, k) in specs {
        progress(&format!("batched pipe, saturation, c{c}, fan-out {k}"));
        report
            .scenarios
            .push(fed.saturate(c, k, window, &report.echo, None).await?);
    }
    let pipe: &[(usize, usize, usize)] = if opts.quick {
        &[(2, 64, 1)]
    } else {
        &[(4, 256, 1), (4, 256, 10)]
    };
    for &(c, batch, k) in pipe {
        // A batch stays under the node's 512 KiB request limit.
        let batch = batch.min(OFFICER_BATCH_BYTES / (opts.payload + 512)).max(1);
        progress(&format!(
            "batched pipe, officer batches of {batch}, c{c}, fan-out {k}"
        ));
        report.scenarios.push(
            fed.saturate(c, k, window, &report.echo, Some(batch))
                .await?,
        );
    }
    progress("batched pipe, 100 messages/s offered, fan-out 1");
    report.scenarios.push(
        fed.fixed_rate(100.0, 1, window.max(Duration::from_secs(1)))
            .await?,
    );
    if opts.sweep {
        report.sweep = fed.sweep(window, progress).await?;
    }
    progress("audit log: proofs and checkpoints");
    report.log = Some(
        fed.log_figure(if opts.quick { 50 } else { 2000 }, &report.echo)
            .await?,
    );
    let mut fed = fed;
    if opts.backlog > 0 {
        report.backlog = Some(fed.backlog(opts.backlog, progress).await?);
    }
    fed.shutdown().await?;

    // One message per request from node to hub.
    let sandbox = start(
        opts,
        &dir.join("unbatched"),
        &text,
        "[link]\npush_batch = 1",
    )
    .await?;
    let fed = Fed::connect(sandbox, false, opts.payload).await?;
    fed.warm_up().await?;
    for c in [1, 64] {
        progress(&format!(
            "one message per request, saturation, c{c}, fan-out 1"
        ));
        report
            .scenarios
            .push(fed.saturate(c, 1, window, &report.echo, None).await?);
    }
    fed.shutdown().await?;

    let eleven = report
        .scenarios
        .iter()
        .find(|s| s.batched && s.concurrency == Some(64) && s.recipients == 1)
        .map(|s| s.msgs_per_s);
    for &n in &opts.bodies {
        report
            .bodies
            .push(bodies(opts, &dir, n, window, eleven, progress).await?);
    }
    Ok(report)
}

/// Measures a federation of `n` bodies: the hub, the eleven nodes, and the
/// driver holding a subscription for each other body.
async fn bodies(
    opts: &Options,
    dir: &Path,
    n: usize,
    window: Duration,
    eleven: Option<f64>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BodiesFigure, BenchError> {
    progress(&format!(
        "{n} bodies ({} simulated), saturation, c64, fan-out 1",
        n - BODIES
    ));
    let here = dir.join(format!("bodies-{n}"));
    let names: Vec<String> = (0..BODIES).map(body).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut o = SandboxOptions::new(&governance(n))
        .processes(&opts.exe)
        .node_toml("[officers]\nmax_submissions_per_minute = 0")
        .nodes(&names);
    o.certs = Some(here.join("certs"));
    o.dir = Some(here);
    let sandbox = Sandbox::start(o).await?;
    let peers = Peers::connect(&sandbox, BODIES..n).await?;
    let fed = Fed::connect(sandbox, true, opts.payload).await?;
    fed.warm_up().await?;
    let connected = fed.sandbox.hub_pid().and_then(proc::rss).unwrap_or(0);
    let fig = fed.saturate(64, 1, window, &[], None).await?;
    peers.check()?;
    drop(peers);
    fed.shutdown().await?;
    Ok(BodiesFigure {
        bodies: n,
        simulated: n - BODIES,
        msgs_per_s: fig.msgs_per_s,
        ratio_to_eleven: eleven.map(|e| fig.msgs_per_s / e),
        p50_us: fig.p50_us,
        p99_us: fig.p99_us,
        hub_cpu_s_per_msg: fig.hub_cpu_s_per_msg,
        hub_rss_connected_bytes: connected,
        hub_peak_rss_bytes: fig.hub_peak_rss_bytes.max(connected),
    })
}

/// Bodies without a node process: for each, the driver holds the
/// subscription a node would, on a mutual-TLS connection of its own with
/// the body's node certificate, and acknowledges whatever arrives.
#[derive(Debug)]
struct Peers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ended: Arc<Mutex<Vec<String>>>,
}

impl Peers {
    async fn connect(
        sandbox: &Sandbox,
        bodies: std::ops::Range<usize>,
    ) -> Result<Self, BenchError> {
        let mut peers = Self {
            tasks: Vec::new(),
            ended: Arc::default(),
        };
        for i in bodies {
            let name = body(i);
            let material = sandbox.material(&format!("{name}/node"))?;
            let channel =
                liaison_pki::connect(&sandbox.hub_url(), &material, Some(Role::Hub), FEDERATION)
                    .await?;
            let mut hub = FederationClient::new(channel);
            let mut stream = hub
                .subscribe(pb::SubscribeRequest { after_seq: 0 })
                .await
                .map_err(|s| BenchError::Rpc(format!("subscribing as {name}: {}", s.message())))?
                .into_inner();
            let ended = Arc::clone(&peers.ended);
            peers.tasks.push(tokio::spawn(async move {
                let why = loop {
                    let delivery = match stream.next().await {
                        Some(Ok(d)) => d,
                        Some(Err(s)) => break format!("{name}: {:?}: {}", s.code(), s.message()),
                        None => break format!("{name}: the hub ended the subscription"),
                    };
                    let ack = pb::AcknowledgeRequest {
                        seq: delivery.seq,
                        quarantined: Vec::new(),
                    };
                    if let Err(s) = hub.acknowledge(ack).await {
                        break format!("{name}: acknowledging: {:?}: {}", s.code(), s.message());
                    }
                };
                ended.lock().unwrap_or_else(|p| p.into_inner()).push(why);
            }));
        }
        Ok(peers)
    }

    /// Refuses figures measured while a simulated body was cut off.
    fn check(&self) -> Result<(), BenchError> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if !ended.is_empty() {
            return Err(BenchError::Rpc(format!(
                "{} of {} simulated bodies lost their subscription: {}",
                ended.len(),
                self.tasks.len(),
                ended.join("; ")
            )));
        }
        Ok(())
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn io_err(context: &str, e: &std::io::Error) -> BenchError {
    BenchError::Io(format!("{context}: {e}"))
}

async fn start(
    opts: &Options,
    dir: &Path,
    governance: &str,
    node_toml: &str,
) -> Result<Sandbox, BenchError> {
    // The driver submits as few officers at saturation: no per-officer
    // rate limit, so that the pipe is measured, not the limit.
    let mut o = SandboxOptions::new(governance)
        .processes(&opts.exe)
        .node_toml("[officers]\nmax_submissions_per_minute = 0")
        .node_toml(node_toml);
    o.dir = Some(dir.to_path_buf());
    o.certs = Some(dir.parent().unwrap_or(dir).join("certs"));
    Ok(Sandbox::start(o).await?)
}

/// A child process killed when dropped.
#[derive(Debug)]
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the echo server as a child process with the hub's certificate and
/// measures it at c1, c16 and c64.
async fn measure_echo(
    opts: &Options,
    sandbox: &Sandbox,
    window: Duration,
) -> Result<Vec<EchoFigure>, BenchError> {
    let (child, addr) = liaison_federation::start_server(
        &opts.exe,
        &[
            "bench-echo-server".as_ref(),
            "--certs".as_ref(),
            sandbox.certs().as_os_str(),
        ],
        sandbox.dir(),
        "echo",
    )
    .await?;
    let guard = ChildGuard(child);
    let material = sandbox.material(&format!("{}/node", body(0)))?;
    let channel = liaison_pki::connect(
        &format!("https://{addr}"),
        &material,
        Some(Role::Hub),
        FEDERATION,
    )
    .await?;
    echo::measure(&channel, 4, window / 4, opts.payload).await?;
    let mut figures = Vec::new();
    for c in [1, 16, 64] {
        let mut lat = echo::measure(&channel, c, window, opts.payload).await?;
        figures.push(EchoFigure {
            concurrency: c,
            rps: lat.len() as f64 / window.as_secs_f64(),
            p50_us: lat.quantile_us(0.5),
            p99_us: lat.quantile_us(0.99),
        });
    }
    drop(guard);
    Ok(figures)
}

/// Submit times and arrivals of the messages in flight.
#[derive(Debug, Default)]
struct Tracker {
    /// Message id → (submitted at, recipients still to receive it).
    open: HashMap<String, (Instant, usize)>,
    latencies: Latencies,
    completed: u64,
    last_arrival: Option<Instant>,
    /// Arrivals of messages this tracker did not send (a bug, or a
    /// previous scenario's leftovers).
    unexpected: u64,
    /// Inbox watches that ended while the federation ran, and why.
    ended: Vec<String>,
}

/// A running benchmark federation and the driver's clients.
#[derive(Debug)]
struct Fed {
    sandbox: Sandbox,
    batched: bool,
    payload: usize,
    sender: OfficerClient<Channel>,
    /// An oversight auditor of the hub's log.
    audit: AuditClient<Channel>,
    tracker: Arc<Mutex<Tracker>>,
    arrived: Arc<Notify>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Fed {
    async fn connect(sandbox: Sandbox, batched: bool, payload: usize) -> Result<Self, BenchError> {
        let sender = sandbox.officer(&body(0), "alice").await?;
        let audit = sandbox.oversight().await?;
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let arrived = Arc::new(Notify::new());
        let mut watchers = Vec::new();
        for i in 1..BODIES {
            watchers.push(Self::watch(&sandbox, i, &tracker, &arrived).await?);
        }
        Ok(Self {
            sandbox,
            batched,
            payload,
            sender,
            audit,
            tracker,
            arrived,
            watchers,
        })
    }

    /// Watches body `i`'s inbox for the tracker's messages.
    async fn watch(
        sandbox: &Sandbox,
        i: usize,
        tracker: &Arc<Mutex<Tracker>>,
        arrived: &Arc<Notify>,
    ) -> Result<tokio::task::JoinHandle<()>, BenchError> {
        let mut officer = sandbox.officer(&body(i), "bob").await?;
        let mut stream = officer
            .watch_inbox(pb::WatchInboxRequest {})
            .await
            .map_err(|s| BenchError::Rpc(format!("watching {}: {}", body(i), s.message())))?
            .into_inner();
        let tracker = Arc::clone(tracker);
        let arrived = Arc::clone(arrived);
        Ok(tokio::spawn(async move {
            let name = body(i);
            let why = loop {
                let summary = match stream.next().await {
                    Some(Ok(summary)) => summary,
                    Some(Err(s)) => break format!("{name}: {:?}: {}", s.code(), s.message()),
                    None => break format!("{name}: the node ended the stream"),
                };
                let now = Instant::now();
                let mut guard = tracker.lock().unwrap_or_else(|p| p.into_inner());
                let t = &mut *guard;
                let done = match t.open.get_mut(&summary.message_id) {
                    Some((at, left)) => {
                        *left -= 1;
                        t.latencies.extend([now - *at]);
                        t.last_arrival = Some(now);
                        *left == 0
                    }
                    None => {
                        t.unexpected += 1;
                        false
                    }
                };
                if done {
                    let t = &mut *guard;
                    t.open.remove(&summary.message_id);
                    t.completed += 1;
                    arrived.notify_waiters();
                }
            };
            let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
            t.ended.push(why);
        }))
    }

    async fn shutdown(self) -> Result<(), BenchError> {
        for w in &self.watchers {
            w.abort();
        }
        self.sandbox.shutdown().await?;
        Ok(())
    }

    fn pids(&self) -> (Option<u32>, Vec<u32>) {
        let nodes = (0..BODIES)
            .filter_map(|i| self.sandbox.node_pid(&body(i)))
            .collect();
        (self.sandbox.hub_pid(), nodes)
    }

    /// Some traffic first, so that connections, caches and files exist.
    async fn warm_up(&self) -> Result<(), BenchError> {
        self.reset();
        let submitted = self
            .closed_loop(4, BODIES - 1, Duration::from_millis(300), None)
            .await?;
        self.wait_all(submitted).await?;
        Ok(())
    }

    fn reset(&self) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        // A watch that ended stays ended: later scenarios cannot be timed.
        let ended = std::mem::take(&mut t.ended);
        *t = Tracker {
            ended,
            ..Tracker::default()
        };
    }

    /// The labels of a benchmark message to these peers.
    fn message_labels(to: impl IntoIterator<Item = usize>) -> pb::Labels {
        pb::Labels {
            kind: pb::Kind::Alert as i32,
            classification: pb::Classification::Restricted as i32,
            crime_areas: vec!["drugs".into()],
            priority: pb::Priority::Immediate as i32,
            releasable_to: to.into_iter().map(body).collect(),
            ..Default::default()
        }
    }

    /// A message to the first `recipients` peers.
    fn message(&self, recipients: usize) -> (String, pb::OfficerSubmitRequest) {
        self.message_to(1..=recipients)
    }

    fn message_to(
        &self,
        to: impl IntoIterator<Item = usize>,
    ) -> (String, pb::OfficerSubmitRequest) {
        let id = liaison_types::new_message_id();
        let mut labels = Self::message_labels(to);
        labels.message_id.clone_from(&id);
        let body = pb::Body {
            title: "bench".into(),
            content: Some(pb::body::Content::Alert(pb::Alert {
                text: "x".repeat(self.payload),
                ..Default::default()
            })),
        };
        (
            id,
            pb::OfficerSubmitRequest {
                clear_targets: false,
                labels: Some(labels),
                body: Some(body),
                targets: Vec::new(),
            },
        )
    }

    /// Submits one message and starts its clock.
    async fn submit_one(
        sender: &mut OfficerClient<Channel>,
        tracker: &Mutex<Tracker>,
        id: String,
        req: pb::OfficerSubmitRequest,
        recipients: usize,
    ) -> Result<(), BenchError> {
        tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .insert(id, (Instant::now(), recipients));
        Self::officer_submit(sender, req).await
    }

    /// One officer submission, which the node must answer `queued`.
    async fn officer_submit(
        sender: &mut OfficerClient<Channel>,
        req: pb::OfficerSubmitRequest,
    ) -> Result<(), BenchError> {
        let resp = sender
            .submit(req)
            .await
            .map_err(|s| {
                BenchError::Rpc(format!("officer submit: {:?}: {}", s.code(), s.message()))
            })?
            .into_inner();
        if resp.status != "queued" {
            return Err(BenchError::Rpc(format!(
                "officer submit: the node answered status {:?}, not queued",
                resp.status
            )));
        }
        Ok(())
    }

    /// `concurrency` officers submit back to back for `window`, one
    /// `Officer.Submit` per message, or `batch` messages per
    /// `Officer.SubmitBatch`; returns how many messages they submitted.
    async fn closed_loop(
        &self,
        concurrency: usize,
        recipients: usize,
        window: Duration,
        batch: Option<usize>,
    ) -> Result<u64, BenchError> {
        let end = Instant::now() + window;
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let mut sender = self.sender.clone();
                let tracker = Arc::clone(&self.tracker);
                let (_, template) = self.message(recipients);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let messages: Vec<_> = (0..batch.unwrap_or(1))
                            .map(|_| {
                                let mut req = template.clone();
                                if let Some(l) = req.labels.as_mut() {
                                    l.message_id = liaison_types::new_message_id();
                                }
                                req
                            })
                            .collect();
                        {
                            let now = Instant::now();
                            let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
                            for m in &messages {
                                let id = m.labels.as_ref().map(|l| l.message_id.clone());
                                t.open.insert(id.unwrap_or_default(), (now, recipients));
                            }
                        }
                        n += messages.len() as u64;
                        match batch {
                            Some(_) => Self::officer_submit_batch(&mut sender, messages).await?,
                            None => {
                                for m in messages {
                                    Self::officer_submit(&mut sender, m).await?;
                                }
                            }
                        }
                    }
                    Ok::<_, BenchError>(n)
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t
                .await
                .map_err(|e| BenchError::Io(format!("submit task: {e}")))??;
        }
        Ok(total)
    }

    /// Waits until `submitted` messages have reached all their recipients.
    async fn wait_all(&self, submitted: u64) -> Result<(), BenchError> {
        let limit = Duration::from_secs(120);
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            {
                let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                if t.completed >= submitted {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                let ended = if t.ended.is_empty() {
                    String::new()
                } else {
                    format!(" (inbox watches ended: {})", t.ended.join("; "))
                };
                return Err(BenchError::Timeout(format!(
                    "only {} of {submitted} messages reached all their recipients within {}s{ended}; see the logs in {}",
                    t.completed,
                    limit.as_secs(),
                    self.sandbox.dir().display()
                )));
            }
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(200)), notified)
                    .await;
        }
    }

    /// Measures one closed-loop scenario: one `Officer.Submit` per message,
    /// or `batch` messages per `Officer.SubmitBatch` (the batched pipe from
    /// the officer on, whose ratio is to the echo's best calls per second:
    /// messages per second against what the stack answers one call at a
    /// time).
    async fn saturate(
        &self,
        concurrency: usize,
        recipients: usize,
        window: Duration,
        echo: &[EchoFigure],
        batch: Option<usize>,
    ) -> Result<ScenarioFigure, BenchError> {
        let before = self.counters();
        let log_before = self.log_size().await?;
        self.reset();
        let start = Instant::now();
        let submitted = self
            .closed_loop(concurrency, recipients, window, batch)
            .await?;
        self.wait_all(submitted).await?;
        let leaves = self.log_size().await?.saturating_sub(log_before);
        let name = match batch {
            None => format!("saturation c{concurrency} fan-out {recipients}"),
            Some(b) => format!("officer batches of {b}, c{concurrency}, fan-out {recipients}"),
        };
        let mut fig = self.figure(name, start, submitted, recipients, &before)?;
        fig.leaves(leaves, submitted);
        fig.concurrency = Some(concurrency);
        fig.officer_batch = batch;
        match batch {
            None => {
                if let Some(e) = echo.iter().find(|e| e.concurrency == concurrency) {
                    fig.ratio_to_echo = Some(fig.msgs_per_s / e.rps);
                    fig.p50_ratio_to_echo = Some(fig.p50_us as f64 / e.p50_us.max(1) as f64);
                }
            }
            Some(_) => {
                if let Some(e) = echo.iter().max_by_key(|e| e.concurrency) {
                    fig.ratio_to_echo = Some(fig.msgs_per_s / e.rps);
                }
            }
        }
        Ok(fig)
    }

    /// One `Officer.SubmitBatch`, every message of which the node must
    /// answer `queued`.
    async fn officer_submit_batch(
        sender: &mut OfficerClient<Channel>,
        messages: Vec<pb::OfficerSubmitRequest>,
    ) -> Result<(), BenchError> {
        let n = messages.len();
        let resp = sender
            .submit_batch(pb::OfficerSubmitBatchRequest { messages })
            .await
            .map_err(|s| {
                BenchError::Rpc(format!(
                    "officer submit batch: {:?}: {}",
                    s.code(),
                    s.message()
                ))
            })?
            .into_inner();
        if resp.results.len() != n {
            return Err(BenchError::Rpc(format!(
                "officer submit batch: {} results for {n} messages",
                resp.results.len()
            )));
        }
        for r in resp.results {
            match r.result {
                Some(pb::officer_submit_result::Result::Accepted(a)) if a.status == "queued" => {}
                other => {
                    return Err(BenchError::Rpc(format!(
                        "officer submit batch: the node answered {other:?}, not queued"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Measures `rate` messages per second offered for `window`, open loop.
    async fn fixed_rate(
        &self,
        rate: f64,
        recipients: usize,
        window: Duration,
    ) -> Result<ScenarioFigure, BenchError> {
        let before = self.counters();
        let log_before = self.log_size().await?;
        self.reset();
        let start = Instant::now();
        let total = (rate * window.as_secs_f64()).ceil().max(1.0) as u64;
        let in_flight = Arc::new(Semaphore::new(4096));
        let mut tasks = Vec::new();
        for n in 0..total {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .map_err(|e| BenchError::Io(e.to_string()))?;
            let mut sender = self.sender.clone();
            let tracker = Arc::clone(&self.tracker);
            let (id, req) = self.message(recipients);
            tasks.push(tokio::spawn(async move {
                let r = Self::submit_one(&mut sender, &tracker, id, req, recipients).await;
                drop(permit);
                r
            }));
        }
        for t in tasks {
            t.await
                .map_err(|e| BenchError::Io(format!("submit task: {e}")))??;
        }
        self.wait_all(total).await?;
        let leaves = self.log_size().await?.saturating_sub(log_before);
        let mut fig = self.figure(
            format!("{rate:.0} msgs/s offered, fan-out {recipients}"),
            start,
            total,
            recipients,
            &before,
        )?;
        fig.leaves(leaves, total);
        fig.offered_per_s = Some(rate);
        Ok(fig)
    }

    /// Offered load doubling from 100 messages/s until the federation no
    /// longer keeps up (or p99 passes 2 s).
    async fn sweep(
        &self,
        window: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<SweepPoint>, BenchError> {
        let mut points = Vec::new();
        let mut rate = 100.0;
        while rate <= 51_200.0 {
            progress(&format!("sweep: {rate:.0} messages/s offered, fan-out 1"));
            let f = self.fixed_rate(rate, 1, window).await?;
            let keeping_up = f.msgs_per_s >= 0.8 * rate && f.p99_us < 2_000_000;
            points.push(SweepPoint {
                offered_per_s: rate,
                msgs_per_s: f.msgs_per_s,
                p50_us: f.p50_us,
                p99_us: f.p99_us,
            });
            if !keeping_up {
                break;
            }
            rate *= 2.0;
        }
        Ok(points)
    }

    /// Queues `n` messages at the hub for a stopped peer (fan-out 1, 64
    /// officers), then restarts the peer and times the drain: from its
    /// restart until its hub cursor has moved past all `n` positions (the
    /// node stores deliveries and the cursor in one write). It is the last
    /// scenario of a federation: the peer's inbox watcher is not restarted.
    async fn backlog(
        &mut self,
        n: u64,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<BacklogFigure, BenchError> {
        let peer = BODIES - 1;
        let name = body(peer);
        progress(&format!(
            "backlog: {n} messages for a stopped peer, then its return"
        ));
        let cursor = self
            .poll(&name, Duration::ZERO, "its status", |_| true)
            .await?
            .hub_cursor;
        self.watchers[peer - 1].abort();
        self.sandbox.stop_node(&name).await?;
        let before = self.counters();
        let start = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let mut sender = self.sender.clone();
                let (_, template) = self.message_to([peer]);
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        let mut req = template.clone();
                        if let Some(l) = req.labels.as_mut() {
                            l.message_id = liaison_types::new_message_id();
                        }
                        Self::officer_submit(&mut sender, req).await?;
                    }
                    Ok::<_, BenchError>(())
                })
            })
            .collect();
        for t in tasks {
            t.await
                .map_err(|e| BenchError::Io(format!("submit task: {e}")))??;
        }
        let sender = body(0);
        let limit = Duration::from_secs(60) + Duration::from_millis(n.saturating_mul(10));
        self.poll(&sender, limit, "the sender's outbox to empty", |s| {
            s.outbox_pending == 0
        })
        .await?;
        let filled = start.elapsed().as_secs_f64().max(1e-9);
        let queued = self.counters_now();
        let hub = self.sandbox.hub_pid();
        let rss_queued = hub.and_then(proc::rss).unwrap_or(0);
        self.sandbox.start_node(&name).await?;
        let restarted = Instant::now();
        self.poll(&name, limit, "the peer to drain its backlog", |s| {
            s.hub_cursor >= cursor + n
        })
        .await?;
        let drain = restarted.elapsed().as_secs_f64().max(1e-9);
        let per = |x: u64| x as f64 / n as f64;
        Ok(BacklogFigure {
            messages: n,
            fill_msgs_per_s: n as f64 / filled,
            hub_peak_rss_bytes: hub.and_then(proc::peak_rss).unwrap_or(0).max(rss_queued),
            hub_rss_queued_bytes: rss_queued,
            hub_disk_bytes_per_msg: per(queued.hub_disk.saturating_sub(before.hub_disk)),
            hub_write_bytes_per_msg: per(queued
                .hub
                .write_bytes
                .saturating_sub(before.hub.write_bytes)),
            drain_msgs_per_s: n as f64 / drain,
            drain_s: drain,
        })
    }

    /// Asks `name`'s status every 50 ms until `done`, for at most `limit`;
    /// returns the status that was done.
    async fn poll(
        &self,
        name: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&pb::NodeStatus) -> bool,
    ) -> Result<pb::NodeStatus, BenchError> {
        let deadline = Instant::now() + limit;
        let mut officer = self.sandbox.officer(name, "bob").await?;
        loop {
            let status = officer
                .status(pb::NodeStatusRequest {})
                .await
                .map_err(|s| BenchError::Rpc(format!("status of {name}: {}", s.message())))?
                .into_inner();
            if done(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout(format!(
                    "waited {}s for {what} ({name}: {} in the outbox, hub cursor {}); see the logs in {}",
                    limit.as_secs(),
                    status.outbox_pending,
                    status.hub_cursor,
                    self.sandbox.dir().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts the peak RSS counts and reads the counters.
    /// The audit log's durable size, as its latest checkpoint says.
    async fn log_size(&self) -> Result<u64, BenchError> {
        let mut audit = self.audit.clone();
        Ok(audit
            .get_checkpoint(pb::CheckpointRequest::default())
            .await
            .map_err(|s| BenchError::Rpc(format!("audit checkpoint: {}", s.message())))?
            .into_inner()
            .tree_size)
    }

    /// Times `calls` inclusion proofs, consistency proofs and checkpoints,
    /// one at a time, in the latest tree.
    async fn log_figure(&self, calls: usize, echo: &[EchoFigure]) -> Result<LogFigure, BenchError> {
        let mut audit = self.audit.clone();
        let size = self.log_size().await?;
        if size < 2 {
            return Err(BenchError::Rpc(
                "the audit log holds fewer than 2 records".into(),
            ));
        }
        let rpc = |what: &'static str| {
            move |s: tonic::Status| BenchError::Rpc(format!("{what}: {}", s.message()))
        };
        // A fixed sequence of positions spread over the tree (a simple LCG:
        // the same positions every run).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 11) % n
        };
        let (mut inc, mut con, mut cp) = (
            Latencies::default(),
            Latencies::default(),
            Latencies::default(),
        );
        for _ in 0..calls {
            let leaf = next(size);
            let t = Instant::now();
            let p = audit
                .prove_inclusion(pb::InclusionRequest {
                    leaf_index: leaf,
                    tree_size: size,
                })
                .await
                .map_err(rpc("inclusion proof"))?
                .into_inner();
            inc.extend([t.elapsed()]);
            if p.leaf_index != leaf || p.tree_size != size {
                return Err(BenchError::Rpc(format!(
                    "an inclusion proof of leaf {leaf} in {size} answered another"
                )));
            }
            let old = 1 + next(size - 1);
            let t = Instant::now();
            audit
                .prove_consistency(pb::ConsistencyRequest {
                    old_size: old,
                    tree_size: size,
                })
                .await
                .map_err(rpc("consistency proof"))?;
            con.extend([t.elapsed()]);
            let t = Instant::now();
            audit
                .get_checkpoint(pb::CheckpointRequest::default())
                .await
                .map_err(rpc("checkpoint"))?;
            cp.extend([t.elapsed()]);
        }
        let inclusion_p50_us = inc.quantile_us(0.5);
        Ok(LogFigure {
            tree_size: size,
            calls,
            inclusion_p50_us,
            inclusion_p99_us: inc.quantile_us(0.99),
            consistency_p50_us: con.quantile_us(0.5),
            consistency_p99_us: con.quantile_us(0.99),
            checkpoint_p50_us: cp.quantile_us(0.5),
            inclusion_p50_ratio_to_echo: echo
                .iter()
                .find(|e| e.concurrency == 1)
                .map(|e| inclusion_p50_us as f64 / e.p50_us.max(1) as f64),
        })
    }

    fn counters(&self) -> Counters {
        let (hub, nodes) = self.pids();
        if let Some(h) = hub {
            proc::reset_peak_rss(h);
        }
        for &n in &nodes {
            proc::reset_peak_rss(n);
        }
        self.counters_now()
    }

    fn figure(
        &self,
        name: String,
        start: Instant,
        messages: u64,
        recipients: usize,
        before: &Counters,
    ) -> Result<ScenarioFigure, BenchError> {
        let after = self.counters_now();
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if !t.ended.is_empty() {
            return Err(BenchError::Rpc(format!(
                "inbox watches ended: {}",
                t.ended.join("; ")
            )));
        }
        if t.unexpected > 0 {
            return Err(BenchError::Rpc(format!(
                "{} deliveries arrived that this scenario did not send",
                t.unexpected
            )));
        }
        let elapsed = t
            .last_arrival
            .map_or_else(|| start.elapsed(), |l| l - start)
            .as_secs_f64()
            .max(1e-9);
        let per = |x: f64| x / messages.max(1) as f64;
        let (hub, nodes) = self.pids();
        Ok(ScenarioFigure {
            name,
            concurrency: None,
            offered_per_s: None,
            recipients,
            batched: self.batched,
            officer_batch: None,
            messages,
            msgs_per_s: messages as f64 / elapsed,
            deliveries_per_s: (messages as f64 * recipients as f64) / elapsed,
            p50_us: t.latencies.quantile_us(0.5),
            p99_us: t.latencies.quantile_us(0.99),
            p999_us: t.latencies.quantile_us(0.999),
            hub_cpu_s_per_msg: per(after.hub.cpu_s - before.hub.cpu_s),
            nodes_cpu_s_per_msg: per(after.nodes.iter().map(|s| s.cpu_s).sum::<f64>()
                - before.nodes.iter().map(|s| s.cpu_s).sum::<f64>()),
            hub_peak_rss_bytes: hub.and_then(proc::peak_rss).unwrap_or(0),
            nodes_peak_rss_bytes: nodes
                .iter()
                .filter_map(|&n| proc::peak_rss(n))
                .max()
                .unwrap_or(0),
            hub_write_bytes_per_msg: per(after
                .hub
                .write_bytes
                .saturating_sub(before.hub.write_bytes)
                as f64),
            hub_disk_bytes_per_msg: per(after.hub_disk.saturating_sub(before.hub_disk) as f64),
            ratio_to_echo: None,
            p50_ratio_to_echo: None,
            audit_leaves_per_s: 0.0,
            audit_leaves_per_msg: 0.0,
        })
    }

    fn counters_now(&self) -> Counters {
        let (hub, nodes) = self.pids();
        Counters {
            hub: hub.and_then(proc::sample).unwrap_or_default(),
            nodes: nodes.iter().filter_map(|&n| proc::sample(n)).collect(),
            hub_disk: proc::dir_bytes(&self.sandbox.dir().join("hub-data")),
        }
    }
}

/// Process counters at the start or end of a scenario.
#[derive(Debug, Clone, Default)]
struct Counters {
    hub: proc::Sample,
    nodes: Vec<proc::Sample>,
    hub_disk: u64,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile_us(0.5), 0);
        l.extend((1..=100).map(Duration::from_micros));
        assert_eq!(l.quantile_us(0.5), 50);
        assert_eq!(l.quantile_us(0.99), 99);
        assert_eq!(l.quantile_us(0.999), 100);
        assert_eq!(l.quantile_us(1.0), 100);
    }

    /// `releasable_to` alone chooses the recipients: a message to the
    /// first k peers goes to exactly those k.
    #[test]
    fn the_governance_delivers_to_exactly_the_named_peers() {
        let gov = liaison_policy::Governance::from_toml("bench.toml", &governance(BODIES)).unwrap();
        assert_eq!(gov.bodies().count(), BODIES);
        // Fan-out 1, 4 and 10, and the backlog's one stopped peer.
        let sets: [Vec<usize>; 4] = [
            vec![1],
            (1..=4).collect(),
            (1..BODIES).collect(),
            vec![BODIES - 1],
        ];
        for to in sets {
            let mut labels = Fed::message_labels(to.clone());
            labels.origin = body(0);
            labels.created_at_ms = 1;
            labels.message_id = liaison_types::new_message_id();
            let env = pb::Envelope {
                labels: Some(labels),
                body: Vec::new(),
            };
            let (env, _) = liaison_types::Envelope::parse(pb::Envelope {
                body: pb::Body {
                    title: "bench".into(),
                    content: Some(pb::body::Content::Alert(pb::Alert {
                        text: "x".into(),
                        ..Default::default()
                    })),
                }
                .encode_to_vec(),
                ..env
            })
            .unwrap();
            let delivered: Vec<String> = liaison_policy::decide(&gov, &env.labels, 2)
                .into_iter()
                .filter(|d| d.outcome == liaison_policy::Outcome::Deliver)
                .map(|d| d.recipient.to_string())
                .collect();
            assert_eq!(
                delivered,
                to.iter().copied().map(body).collect::<Vec<_>>(),
                "to {to:?}"
            );
        }
    }
}
