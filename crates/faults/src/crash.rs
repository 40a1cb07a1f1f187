//! The crash suite: the hub and three nodes as child processes, two bodies'
//! officers submitting without pause, and SIGKILL at seeded random moments
//! of the hub, a sending node, a receiving node, or a sending and a
//! receiving node at once; each victim restarts on its own store. After
//! each restart a canary message must travel from a sender to two
//! recipients: the time from the kill to its arrival is the recovery time.
//! At the end the checker ([`crate::check`]) reads the whole history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liaison_federation::{Sandbox, SandboxOptions};
use liaison_pki::TlsMaterial;
use liaison_policy::{Governance, Outcome};
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_types::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::Channel;

use crate::check::{self, Arrived, Attempt, Findings};
use crate::FaultError;

/// The suite's federation: the hub's body `alpha` and `bravo` send,
/// `charlie` only receives; each message kind below is delivered to some
/// of the others and withheld from the rest.
pub const GOVERNANCE: &str = r#"
version = 1
federation = "liaison.crash"
hub_body = "alpha"

[observers]
kinds = ["threat_assessment"]
max_classification = "OFFICIAL_USE"

[[body]]
id = "alpha"
name = "Alpha"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "alert"]
mandate = ["drugs", "cybercrime", "terrorism"]

[[body]]
id = "bravo"
name = "Bravo"
status = "member"
clearance = "RESTRICTED"
kinds = ["threat_assessment", "alert"]
mandate = ["drugs", "cybercrime"]

[[body]]
id = "charlie"
name = "Charlie"
status = "member"
clearance = "CONFIDENTIAL"
kinds = ["threat_assessment", "alert"]
mandate = ["drugs"]
"#;

/// The sending node that is killed (its writer keeps going).
const SENDER: &str = "alpha";
/// The node that only receives, killed.
const RECEIVER: &str = "charlie";
/// The bodies whose officers write.
const WRITERS: [&str; 2] = ["alpha", "bravo"];
/// A canary travels from alpha to these.
const CANARY_TO: [&str; 2] = ["bravo", "charlie"];
/// Longest wait for one call, a restart's canary, or the final drain.
const CALL: Duration = Duration::from_secs(10);
const RECOVERY: Duration = Duration::from_secs(60);

/// What to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The hub.
    Hub,
    /// A node whose officer is writing (alpha).
    Sender,
    /// A node that only receives (charlie).
    Receiver,
    /// The sending and the receiving node at once.
    SenderAndReceiver,
}

impl Target {
    /// Every target, in the order the suite takes them.
    pub const ALL: [Target; 4] = [
        Target::Hub,
        Target::Sender,
        Target::Receiver,
        Target::SenderAndReceiver,
    ];

    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Hub => "hub",
            Target::Sender => "sender",
            Target::Receiver => "receiver",
            Target::SenderAndReceiver => "sender_and_receiver",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `liaison` binary to start the hub and nodes from.
    pub exe: PathBuf,
    /// How many kills (the targets take turns, so 4 covers each once).
    pub kills: usize,
    /// Seeds the moments of the kills and the writers' choice of message.
    pub seed: u64,
    /// Keep configurations, stores and logs here (default: a temporary
    /// directory, removed at the end).
    pub dir: Option<PathBuf>,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// What was killed.
    pub target: Target,
    /// How long the writers ran before it, in milliseconds.
    pub after_ms: u64,
    /// From the kill to a canary's arrival at both its recipients, in
    /// milliseconds.
    pub recovery_ms: u64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed, to run it again.
    pub seed: u64,
    /// Every kill, in order.
    pub kills: Vec<Kill>,
    /// The checker's findings.
    pub findings: Findings,
    /// Submissions the nodes did not answer, by gRPC code (a node killed,
    /// or restarting).
    pub unanswered: BTreeMap<String, u64>,
    /// Whether the hub's audit log verified at the end (every leaf and
    /// tree hash against the signed checkpoint).
    pub log_verified: bool,
    /// What the verification said, if it failed.
    pub log_problem: String,
    /// Recovery time, milliseconds: median, 99th percentile, longest.
    pub recovery_p50_ms: u64,
    /// See [`Report::recovery_p50_ms`].
    pub recovery_p99_ms: u64,
    /// See [`Report::recovery_p50_ms`].
    pub recovery_max_ms: u64,
    /// How long the run took, in seconds.
    pub seconds: f64,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.findings.passed() && self.log_verified
    }
}

/// A message kind a writer sends, and who the policy delivers it to.
#[derive(Debug, Clone)]
struct Template {
    labels: pb::Labels,
    entitled: BTreeSet<String>,
}

fn labels(kind: pb::Kind, class: pb::Classification, areas: &[&str]) -> pb::Labels {
    pb::Labels {
        kind: kind as i32,
        classification: class as i32,
        crime_areas: areas.iter().map(|a| (*a).to_owned()).collect(),
        priority: pb::Priority::Routine as i32,
        ..Default::default()
    }
}

/// The kinds each writer sends: some to both others, some to one, one to
/// nobody.
fn kinds_of(sender: &str) -> Vec<pb::Labels> {
    use pb::{Classification as C, Kind as K};
    match sender {
        "alpha" => vec![
            labels(K::Alert, C::Restricted, &["drugs"]),
            labels(K::Alert, C::Confidential, &["drugs"]),
            labels(K::Alert, C::OfficialUse, &["cybercrime"]),
            labels(K::ThreatAssessment, C::Secret, &["terrorism"]),
        ],
        _ => vec![
            labels(K::Alert, C::Restricted, &["drugs"]),
            labels(K::Alert, C::Restricted, &["cybercrime"]),
        ],
    }
}

/// The bodies `decide` delivers `labels` from `origin` to.
fn entitled(
    gov: &Governance,
    origin: &str,
    labels: &pb::Labels,
) -> Result<BTreeSet<String>, FaultError> {
    let now = liaison_types::now_ms();
    let mut l = labels.clone();
    l.origin = origin.to_owned();
    l.message_id = uuid::Uuid::new_v4().to_string();
    l.created_at_ms = now;
    let typed = liaison_types::Labels::try_from(l)
        .map_err(|e| FaultError::Setup(format!("a template's labels: {e}")))?;
    Ok(liaison_policy::decide(gov, &typed, now)
        .into_iter()
        .filter(|d| d.outcome == Outcome::Deliver)
        .map(|d| d.recipient.to_string())
        .collect())
}

/// A body of the kind `labels` names.
fn body_for(labels: &pb::Labels, title: String) -> pb::Body {
    let content = if labels.kind == pb::Kind::ThreatAssessment as i32 {
        pb::body::Content::ThreatAssessment(pb::ThreatAssessment {
            summary: "crash suite".into(),
            ..Default::default()
        })
    } else {
        pb::body::Content::Alert(pb::Alert {
            text: "crash suite".into(),
            ..Default::default()
        })
    };
    pb::Body {
        title,
        content: Some(content),
    }
}

/// The nodes' current addresses (a restarted node listens on a new port).
type Urls = Arc<Mutex<BTreeMap<String, String>>>;

fn url_of(urls: &Urls, body: &str) -> String {
    urls.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(body)
        .cloned()
        .unwrap_or_default()
}

/// Officers' clients that reconnect after their node restarts.
#[derive(Debug, Clone)]
struct Officers {
    urls: Urls,
    federation: String,
    certs: PathBuf,
}

impl Officers {
    async fn client(&self, body: &str, name: &str) -> Option<OfficerClient<Channel>> {
        let stem = format!("{body}/officer-{name}");
        let files = liaison_pki::TlsFiles::in_dev_dir(&self.certs, &stem);
        let material = TlsMaterial::load(&files).ok()?;
        let url = url_of(&self.urls, body);
        let ch = tokio::time::timeout(
            CALL,
            liaison_pki::connect(&url, &material, Some(Role::Node), &self.federation),
        )
        .await
        .ok()?
        .ok()?;
        Some(OfficerClient::new(ch))
    }

    /// Submits until the node answers (it may be restarting); returns the
    /// message id.
    async fn submit_until_answered(
        &self,
        body: &str,
        req: pb::OfficerSubmitRequest,
        deadline: Instant,
    ) -> Result<String, FaultError> {
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(mut c) = self.client(body, "bob").await {
                match tokio::time::timeout(CALL, c.submit(req.clone())).await {
                    Ok(Ok(r)) => return Ok(r.into_inner().message_id),
                    Ok(Err(s)) => last = format!("{}: {}", s.code(), s.message()),
                    Err(_) => last = "timed out".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(FaultError::Timeout(format!(
            "{body}'s node did not take a canary within {RECOVERY:?} ({last})"
        )))
    }

    /// Waits until `id` is in every inbox of `bodies`.
    async fn arrived(
        &self,
        id: &str,
        bodies: &[&str],
        deadline: Instant,
    ) -> Result<(), FaultError> {
        let show = pb::ShowRequest {
            message_id: id.to_owned(),
        };
        for body in bodies {
            let mut client = None;
            loop {
                if client.is_none() {
                    client = self.client(body, "bob").await;
                }
                if let Some(c) = client.as_mut() {
                    match tokio::time::timeout(CALL, c.show(show.clone())).await {
                        Ok(Ok(_)) => break,
                        Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
                        _ => client = None,
                    }
                }
                if Instant::now() >= deadline {
                    return Err(FaultError::Timeout(format!(
                        "{id} did not reach {body} within {RECOVERY:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

/// One officer per writing body, submitting one message at a time until
/// `stop`, each answer recorded.
async fn write(
    sender: &'static str,
    templates: Vec<Template>,
    officers: Officers,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Vec<Attempt>, BTreeMap<String, u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut attempts = Vec::new();
    let mut unanswered = BTreeMap::new();
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = officers.client(sender, "alice").await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        let seq = attempts.len() as u64;
        let t = &templates[rng.random_range(0..templates.len())];
        let req = pb::OfficerSubmitRequest {
            labels: Some(t.labels.clone()),
            body: Some(body_for(&t.labels, check::title(sender, seq))),
            targets: Vec::new(),
            clear_targets: false,
        };
        let acked = match tokio::time::timeout(CALL, c.submit(req)).await {
            Ok(Ok(r)) => Some(r.into_inner().message_id),
            Ok(Err(s)) => {
                *unanswered.entry(format!("{:?}", s.code())).or_default() += 1;
                client = None;
                None
            }
            Err(_) => {
                *unanswered.entry("Timeout".to_owned()).or_default() += 1;
                client = None;
                None
            }
        };
        attempts.push(Attempt {
            sender: sender.to_owned(),
            seq,
            entitled: t.entitled.clone(),
            acked,
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
    }
    (attempts, unanswered)
}

/// Kills `target` and restarts what it killed on the same stores.
async fn kill(
    sandbox: &mut Sandbox,
    exe: &Path,
    target: Target,
    urls: &Urls,
) -> Result<(), FaultError> {
    let nodes: &[&str] = match target {
        Target::Hub => {
            sandbox.kill_hub();
            sandbox.start_hub_process(exe).await?;
            return Ok(());
        }
        Target::Sender => &[SENDER],
        Target::Receiver => &[RECEIVER],
        Target::SenderAndReceiver => &[SENDER, RECEIVER],
    };
    for body in nodes {
        if !sandbox.kill_node(body) {
            return Err(FaultError::Setup(format!(
                "{body}'s node is not a child process"
            )));
        }
    }
    for body in nodes {
        sandbox.start_node(body).await?;
        let url = sandbox.node_url(body)?;
        urls.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((*body).to_owned(), url);
    }
    Ok(())
}

/// Runs the suite; `progress` hears what it is doing.
pub async fn run(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Report, FaultError> {
    let started = Instant::now();
    let scratch = match &opts.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("liaison-crash-")
                .tempdir()
                .map_err(|e| FaultError::Setup(format!("creating a temporary directory: {e}")))?,
        ),
    };
    let dir = match (&opts.dir, &scratch) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a directory or a temporary one"),
    };
    let gov = Governance::from_toml("crash.toml", GOVERNANCE)?;
    // The writers submit at full speed: no per-officer limit here.
    let mut o = SandboxOptions::new(GOVERNANCE)
        .processes(&opts.exe)
        .node_toml("[officers]\nmax_submissions_per_minute = 0");
    o.dir = Some(dir.clone());
    progress("starting the hub and three nodes as child processes");
    let mut sandbox = Sandbox::start(o).await?;
    let urls: Urls = Arc::default();
    for body in ["alpha", "bravo", "charlie"] {
        let url = sandbox.node_url(body)?;
        urls.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(body.to_owned(), url);
    }
    let officers = Officers {
        urls: Arc::clone(&urls),
        federation: gov.federation().to_owned(),
        certs: sandbox.certs().to_path_buf(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, sender) in WRITERS.into_iter().enumerate() {
        let templates = kinds_of(sender)
            .into_iter()
            .map(|labels| {
                let entitled = entitled(&gov, sender, &labels)?;
                Ok(Template { labels, entitled })
            })
            .collect::<Result<Vec<_>, FaultError>>()?;
        writers.push(tokio::spawn(write(
            sender,
            templates,
            officers.clone(),
            Arc::clone(&stop),
            opts.seed.wrapping_add(i as u64 + 1),
        )));
    }
    let canary_labels = labels(pb::Kind::Alert, pb::Classification::Restricted, &["drugs"]);
    let canary = |k: String| pb::OfficerSubmitRequest {
        body: Some(body_for(&canary_labels, k)),
        labels: Some(canary_labels.clone()),
        targets: Vec::new(),
        clear_targets: false,
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut kills = Vec::with_capacity(opts.kills);
    let mut failure = None;
    for k in 0..opts.kills {
        let target = Target::ALL[k % Target::ALL.len()];
        let after_ms = rng.random_range(100..800);
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        progress(&format!(
            "kill {} of {}: {}",
            k + 1,
            opts.kills,
            target.as_str()
        ));
        let at = Instant::now();
        if let Err(e) = kill(&mut sandbox, &opts.exe, target, &urls).await {
            failure = Some(e);
            break;
        }
        let deadline = at + RECOVERY;
        let recovered = async {
            let id = officers
                .submit_until_answered(SENDER, canary(format!("canary {k}")), deadline)
                .await?;
            officers.arrived(&id, &CANARY_TO, deadline).await
        }
        .await;
        if let Err(e) = recovered {
            failure = Some(e);
            break;
        }
        kills.push(Kill {
            target,
            after_ms,
            recovery_ms: at.elapsed().as_millis() as u64,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    let mut unanswered: BTreeMap<String, u64> = BTreeMap::new();
    for w in writers {
        let (a, u) = w
            .await
            .map_err(|e| FaultError::Setup(format!("a writer failed: {e}")))?;
        attempts.extend(a);
        for (code, n) in u {
            *unanswered.entry(code).or_default() += n;
        }
    }
    if let Some(e) = failure {
        let _ = sandbox.shutdown().await;
        return Err(e);
    }
    // Each sender's last message, after all its writer's: once it has
    // arrived everywhere, so has everything before it (or it is lost).
    progress("waiting for the last messages to arrive");
    let deadline = Instant::now() + RECOVERY;
    for (sender, to) in [
        ("alpha", ["bravo", "charlie"]),
        ("bravo", ["alpha", "charlie"]),
    ] {
        let id = officers
            .submit_until_answered(sender, canary(format!("final {sender}")), deadline)
            .await?;
        officers.arrived(&id, &to, deadline).await?;
    }
    progress("reading the audit log");
    let (received, verify) = audit(&sandbox).await?;
    progress("stopping, then reading every inbox from its store");
    sandbox.shutdown().await?;
    let mut inboxes = BTreeMap::new();
    for body in ["alpha", "bravo", "charlie"] {
        inboxes.insert(body.to_owned(), inbox(&dir.join("nodes").join(body))?);
    }
    let findings = check::check(&attempts, &inboxes, &received);
    let recovery: Vec<u64> = kills.iter().map(|k| k.recovery_ms).collect();
    Ok(Report {
        seed: opts.seed,
        findings,
        unanswered,
        log_verified: verify.ok,
        log_problem: verify.error,
        recovery_p50_ms: check::percentile(&recovery, 50.0),
        recovery_p99_ms: check::percentile(&recovery, 99.0),
        recovery_max_ms: recovery.iter().copied().max().unwrap_or(0),
        kills,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The `received` records per message id, and the log's verification.
async fn audit(
    sandbox: &Sandbox,
) -> Result<(BTreeMap<String, u64>, pb::VerifyResponse), FaultError> {
    let mut auditor = sandbox.oversight().await?;
    let mut stream = auditor
        .list(pb::AuditQuery {
            event: "received".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut received = BTreeMap::new();
    while let Some(rec) = stream.message().await? {
        *received.entry(rec.message_id).or_default() += 1;
    }
    let verify = auditor.verify(pb::VerifyRequest {}).await?.into_inner();
    Ok((received, verify))
}

/// A stopped node's inbox, oldest first, read from its store.
fn inbox(data_dir: &Path) -> Result<Vec<Arrived>, FaultError> {
    let db = liaison_store::Db::open(data_dir)?;
    let mut items: Vec<Arrived> = liaison_node::store::inbox(&db, usize::MAX, false)?
        .into_iter()
        .map(|(rec, _)| Arrived {
            message_id: rec.message_id,
            title: rec.title,
        })
        .collect();
    items.reverse();
    Ok(items)
}
