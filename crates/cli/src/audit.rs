//! `liaison audit ...`: the auditor's tools over the hub's Merkle log.
//!
//! Every check here trusts only the log's public key and the witnesses'
//! keys (`log.vkey` and `witnesses.vkeys` in the certificates directory,
//! or `--log-key` and `--witnesses`), never the hub's word: a checkpoint's
//! signature is checked here, leaves are hashed here, and proofs are run
//! here against the signed root.

use std::collections::BTreeMap;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use liaison_proto::v1 as pb;
use liaison_proto::v1::audit_client::AuditClient;
use liaison_tlog::tree::{self, Frontier, Hash, MemoryTree, HASH_SIZE};
use liaison_tlog::{LogVerifier, SignedCheckpoint, WitnessVerifier};
use liaison_types::audit::to_json;
use liaison_types::Role;
use prost::Message as _;
use serde_json::{json, Value};

use crate::message::format_time;
use crate::{Connection, Failure, Output};

/// `liaison audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first.
    List(ListArgs),
    /// Follow the log: list the records that match, then each new one as
    /// the hub writes it, until interrupted.
    Follow(ListArgs),
    /// Verify the log: the hub recomputes it; here, the checkpoint's
    /// signature and cosignatures are checked, and every record you may
    /// read is hashed and proven against the signed root (the whole tree is
    /// recomputed when you read it all). With --file, an export, offline.
    Verify(VerifyArgs),
    /// Export the records you may read, with the signed checkpoint: JSON
    /// lines (each record with its leaf, and its inclusion proof unless you
    /// read the whole log), CSV, or the C2SP tlog-tiles layout (the whole
    /// log only).
    Export(ExportArgs),
    /// Show the latest checkpoint (or the latest the witnesses cosigned),
    /// its signature and cosignatures checked; --save writes the note.
    Checkpoint(CheckpointArgs),
    /// Prove what the log holds about a message (or one leaf): each
    /// record's inclusion proof in the signed checkpoint, checked here.
    Prove(ProveArgs),
    /// Compare two checkpoint files (for example two bodies' nodes'): the
    /// same tree size with two roots is a split view; different sizes are
    /// checked with a consistency proof from the hub when --server is given.
    Compare(CompareArgs),
    /// Who sent what to whom: routing decisions counted by origin,
    /// recipient, kind and classification, over a period.
    Flows(FlowsArgs),
    /// Watch your node's witness of the hub's log (--server is your node):
    /// the checkpoint it verified, its cosignature, its last check, and the
    /// alarm with its evidence; a line each time one changes, until
    /// interrupted. --once prints it and exits (7 while the alarm is
    /// raised).
    Watch(WatchArgs),
    /// Clear your node's audit log alarm once you have looked into it (an
    /// admin of the body; recorded with the reason). Deliveries are no
    /// longer marked from then on; the evidence is kept.
    ClearAlarm(ClearAlarmArgs),
}

/// `audit watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Print the witness's state once and exit.
    #[arg(long)]
    pub once: bool,
    /// How often to ask the node.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub every: std::time::Duration,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `audit clear-alarm`.
#[derive(Debug, clap::Args)]
pub struct ClearAlarmArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Why the alarm may be cleared (recorded in the node's log).
    #[arg(long)]
    pub reason: String,
    /// Also take the hub's latest checkpoint as the one held from now on,
    /// after an investigation concluded that the checkpoint held was wrong
    /// (otherwise the node keeps it, and raises the alarm again if the hub
    /// still serves a log that does not extend it).
    #[arg(long)]
    pub trust_latest: bool,
}

/// Record filters, shared by `list`, `follow`, `export` and `flows`.
#[derive(Debug, Clone, clap::Args)]
pub struct Filters {
    /// Only this message.
    #[arg(long)]
    pub message: Option<String>,
    /// Only records naming this body as origin or recipient.
    #[arg(long)]
    pub body: Option<String>,
    /// Only this rule, for example recipient.clearance (`liaison policy
    /// rules` lists the routing rules).
    #[arg(long)]
    pub rule: Option<String>,
    /// Only this event.
    #[arg(long, value_parser = event_parser())]
    pub event: Option<String>,
    /// Only this decision (routing and forwarding records).
    #[arg(long, value_parser = decision_parser())]
    pub decision: Option<String>,
    /// Only messages of this kind (ALERT, THREAT_ASSESSMENT, OPERATIONAL_PLAN...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only messages of this classification (OFFICIAL_USE, RESTRICTED,
    /// CONFIDENTIAL, SECRET, TOP_SECRET).
    #[arg(long)]
    pub classification: Option<String>,
    /// Only records at or after this time: RFC 3339, or a span back from
    /// now such as 24h, 7d or 30m.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this time: RFC 3339, or a span back from now.
    #[arg(long)]
    pub until: Option<String>,
}

/// `audit list` and `audit follow`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Where and who (an auditor certificate; --server is the hub).
    #[command(flatten)]
    pub conn: Connection,
    #[command(flatten)]
    pub filters: Filters,
    /// Only records after this position (to page: the last position shown).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many records (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// CSV (a header line first) instead of a table or JSON lines.
    #[arg(long)]
    pub csv: bool,
    /// --server is your node: list its own log (inbox erasures,
    /// retractions applied, quarantines, officers' first readings) instead
    /// of the hub's; --message, --event, --since and --until apply.
    #[arg(long, conflicts_with = "csv")]
    pub node: bool,
}

/// The keys a verifier trusts.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// The audit log's verifier key (default: log.vkey in --certs).
    #[arg(long)]
    pub log_key: Option<PathBuf>,
    /// The witnesses' verifier keys, one per line (default:
    /// witnesses.vkeys in --certs).
    #[arg(long)]
    pub witnesses: Option<PathBuf>,
}

/// `audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// An export (`liaison audit export`) to verify offline, without the
    /// hub; `-` reads standard input.
    #[arg(long, conflicts_with = "server")]
    pub file: Option<PathBuf>,
    /// The hub's address (not with --file).
    #[arg(long, env = "LIAISON_SERVER")]
    pub server: Option<String>,
    /// Directory of the certificates and keys (the dev PKI layout).
    #[arg(long, env = "LIAISON_CERTS", default_value = "certs-dev")]
    pub certs: PathBuf,
    /// Your certificate within --certs (an auditor's).
    #[arg(long = "as", env = "LIAISON_AS")]
    pub identity: Option<String>,
    /// --server is your node: verify its own log (the node recomputes it,
    /// and every leaf is hashed and the root recomputed here).
    #[arg(long, conflicts_with = "file")]
    pub node: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

impl VerifyArgs {
    /// The connection to `--server`; `missing` says what to give without it.
    fn connection(&self, missing: &str) -> Result<Connection> {
        let server = self.server.clone().ok_or_else(|| anyhow!("{missing}"))?;
        Ok(Connection {
            server,
            certs: self.certs.clone(),
            identity: self.identity.clone(),
            cert: None,
            key: None,
            ca: None,
        })
    }
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// JSON lines: the checkpoint first, then one record per line.
    Jsonl,
    /// CSV, a header line first (no proofs).
    Csv,
    /// The C2SP tlog-tiles layout in --out (a directory): checkpoint, tile/<L>/<N>,
    /// tile/entries/<N> (the whole log only).
    Tiles,
}

/// `audit export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(flatten)]
    pub filters: Filters,
    /// The format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Write here (a file; a directory for tiles) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `audit checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The latest checkpoint the witnesses cosigned, rather than the latest.
    #[arg(long)]
    pub witnessed: bool,
    /// Write the signed note (with its cosignatures) to this file.
    #[arg(long)]
    pub save: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `audit prove`.
#[derive(Debug, clap::Args)]
pub struct ProveArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Every record of this message you may read.
    #[arg(long, required_unless_present = "leaf", conflicts_with = "leaf")]
    pub message: Option<String>,
    /// One leaf (a record's position minus one).
    #[arg(long)]
    pub leaf: Option<u64>,
    /// In the checkpoint of this tree size (default: the latest).
    #[arg(long, default_value_t = 0)]
    pub tree_size: u64,
    /// --server is your node: it proves your body's message from the leaf
    /// index and tree size it stored when the hub answered or delivered,
    /// in the checkpoint its witness verified (any certificate of your
    /// body; officers use this).
    #[arg(long)]
    pub node: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `audit compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// One checkpoint file (a signed note).
    pub first: PathBuf,
    /// The other.
    pub second: PathBuf,
    /// The hub, to ask for the consistency proof between different sizes.
    #[arg(long, env = "LIAISON_SERVER")]
    pub server: Option<String>,
    /// Directory of the certificates and keys.
    #[arg(long, env = "LIAISON_CERTS", default_value = "certs-dev")]
    pub certs: PathBuf,
    /// Your certificate within --certs (with --server).
    #[arg(long = "as", env = "LIAISON_AS")]
    pub identity: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// `audit flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(flatten)]
    pub filters: Filters,
}

/// `--event`: one of the events the hub writes
/// ([`liaison_types::audit::Event`], the one list the hub writes from);
/// clap lists them in `--help` and refuses any other.
fn event_parser() -> clap::builder::PossibleValuesParser {
    liaison_types::audit::Event::ALL
        .iter()
        .map(|e| clap::builder::PossibleValue::new(e.as_str()).help(e.describe()))
        // The one event only a node's own log holds (--node); its others
        // (expired, erased, retracted, quarantined) share the hub's names.
        .chain([clap::builder::PossibleValue::new("read")
            .help("(--node) an officer of this body read the message for the first time")])
        .collect::<Vec<_>>()
        .into()
}

/// `--decision`: a routing outcome.
fn decision_parser() -> clap::builder::PossibleValuesParser {
    use liaison_policy::Outcome;
    [
        clap::builder::PossibleValue::new(Outcome::Deliver.as_str())
            .help("the rules let the recipient have it"),
        clap::builder::PossibleValue::new(Outcome::Withhold.as_str())
            .help("a rule kept it from the recipient"),
    ]
    .into()
}

/// Runs an audit command.
pub async fn run(c: AuditCommand, out: Output) -> Result<()> {
    match c {
        AuditCommand::List(a) => list(a, out, false).await,
        AuditCommand::Follow(a) => list(a, out, true).await,
        AuditCommand::Verify(a) => verify(a, out).await,
        AuditCommand::Export(a) => export(a).await,
        AuditCommand::Checkpoint(a) => checkpoint(a, out).await,
        AuditCommand::Prove(a) => prove(a, out).await,
        AuditCommand::Compare(a) => compare(a, out).await,
        AuditCommand::Flows(a) => flows(a, out).await,
        AuditCommand::Watch(a) => watch(a, out).await,
        AuditCommand::ClearAlarm(a) => clear_alarm(a, out).await,
    }
}

async fn client_for(conn: &Connection) -> Result<AuditClient<tonic::transport::Channel>> {
    let material = conn.material()?;
    let me = material.identity()?;
    let channel =
        liaison_pki::connect(&conn.server, &material, Some(Role::Hub), &me.federation).await?;
    Ok(AuditClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
}

/// A time filter: RFC 3339, or a span back from now ("24h").
fn parse_when(field: &str, s: &str) -> Result<i64> {
    if let Ok(span) = humantime::parse_duration(s) {
        let back = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
        return Ok(liaison_types::now_ms().saturating_sub(back).max(0));
    }
    crate::message::parse_time(field, s)
        .map_err(|e| anyhow!("{e}; or give a span back from now, such as 24h, 7d or 30m"))
}

fn query(f: &Filters, after: u64, limit: u32) -> Result<pb::AuditQuery> {
    Ok(pb::AuditQuery {
        message_id: f.message.clone().unwrap_or_default(),
        body: f.body.clone().unwrap_or_default(),
        rule: f.rule.clone().unwrap_or_default(),
        event: f.event.clone().unwrap_or_default(),
        decision: f.decision.clone().unwrap_or_default(),
        kind: f.kind.clone().map(|k| k.to_uppercase()).unwrap_or_default(),
        classification: f
            .classification
            .clone()
            .map(|c| c.to_uppercase())
            .unwrap_or_default(),
        since_ms: f
            .since
            .as_deref()
            .map(|s| parse_when("since", s))
            .transpose()?
            .unwrap_or(0),
        until_ms: f
            .until
            .as_deref()
            .map(|s| parse_when("until", s))
            .transpose()?
            .unwrap_or(0),
        after_seq: after,
        limit,
    })
}

/// Every record a query returns.
async fn records(
    client: &mut AuditClient<tonic::transport::Channel>,
    q: pb::AuditQuery,
) -> Result<Vec<pb::AuditRecord>> {
    let mut stream = client
        .list(q)
        .await
        .map_err(|s| Failure::status("audit list", &s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.push(r.map_err(|s| Failure::status("audit list", &s))?);
    }
    Ok(out)
}

const CSV_FIELDS: [&str; 16] = [
    "seq",
    "at",
    "event",
    "message_id",
    "origin",
    "recipient",
    "decision",
    "rule",
    "reason",
    "policy_version",
    "actor",
    "kind",
    "classification",
    "queue_seq",
    "labels",
    "items",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(r: &pb::AuditRecord) -> String {
    // A batch record's messages, as `id:queue position`, space-separated.
    let items = r
        .items
        .iter()
        .map(|i| format!("{}:{}", i.message_id, i.queue_seq))
        .collect::<Vec<_>>()
        .join(" ");
    [
        r.seq.to_string(),
        format_time(r.at_ms),
        r.event.clone(),
        r.message_id.clone(),
        r.origin.clone(),
        r.recipient.clone(),
        r.decision.clone(),
        r.rule.clone(),
        r.reason.clone(),
        r.policy_version.clone(),
        r.actor.clone(),
        r.kind.clone(),
        r.classification.clone(),
        r.queue_seq.to_string(),
        r.labels.clone(),
        items,
    ]
    .map(|f| csv_field(&f))
    .join(",")
}

fn table_header() -> Result<()> {
    say!(
        "{:>6} {:<24} {:<12} {:<36} {:<9} {:<9} {:<8} RULE",
        "SEQ",
        "AT",
        "EVENT",
        "MESSAGE",
        "ORIGIN",
        "RECIPIENT",
        "DECISION"
    );
    Ok(())
}

fn table_line(r: &pb::AuditRecord) -> Result<()> {
    let message = match r.items.as_slice() {
        [] => r.message_id.clone(),
        [one] => one.message_id.clone(),
        many => format!("{} messages:", many.len()),
    };
    say!(
        "{:>6} {:<24} {:<12} {:<36} {:<9} {:<9} {:<8} {}",
        r.seq,
        format_time(r.at_ms),
        r.event,
        message,
        r.origin,
        r.recipient,
        r.decision,
        r.rule
    );
    // A batch record's messages, one line each under its MESSAGE column.
    if r.items.len() > 1 {
        for i in &r.items {
            say!("{:>6} {:<24} {:<12} {}", "", "", "", i.message_id);
        }
    }
    Ok(())
}

async fn list(a: ListArgs, out: Output, follow: bool) -> Result<()> {
    if a.node {
        return list_node(&a, out, follow).await;
    }
    let mut client = client_for(&a.conn).await?;
    if a.csv {
        say!("{}", CSV_FIELDS.join(","));
    } else if out == Output::Human {
        table_header()?;
    }
    let mut after = a.after;
    let mut shown = 0u32;
    loop {
        let left = if a.limit == 0 { 0 } else { a.limit - shown };
        let q = query(&a.filters, after, left)?;
        let mut stream = client
            .list(q)
            .await
            .map_err(|s| Failure::status("audit list", &s))?
            .into_inner();
        let mut last_seen = None;
        while let Some(r) = stream.next().await {
            let r = r.map_err(|s| Failure::status("audit list", &s))?;
            last_seen = Some(r.seq);
            if a.csv {
                say!("{}", csv_line(&r));
            } else if out == Output::Json {
                say!("{}", Value::Object(to_json(&r)));
            } else {
                table_line(&r)?;
            }
            shown += 1;
        }
        if !follow || (a.limit != 0 && shown >= a.limit) {
            return Ok(());
        }
        // The filters keep records the caller does not see out of the
        // stream, so the next page starts after the log's end as the
        // checkpoint says, not after the last record shown.
        let cp = client
            .get_checkpoint(pb::CheckpointRequest::default())
            .await
            .map_err(|s| Failure::status("audit checkpoint", &s))?
            .into_inner();
        after = after.max(last_seen.unwrap_or(0)).max(cp.tree_size);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The keys to check with.
struct Keys {
    log: LogVerifier,
    witnesses: Vec<WitnessVerifier>,
}

fn load_keys(k: &KeyArgs, certs: &Path) -> Result<Keys> {
    let log_path = k
        .log_key
        .clone()
        .unwrap_or_else(|| certs.join(liaison_pki::LOG_VKEY_FILE));
    let text = std::fs::read_to_string(&log_path).with_context(|| {
        format!(
            "reading the log's verifier key {} (give --log-key)",
            log_path.display()
        )
    })?;
    let log = LogVerifier::from_text(&text).map_err(|e| anyhow!("{}: {e}", log_path.display()))?;
    let w_path = k
        .witnesses
        .clone()
        .unwrap_or_else(|| certs.join(liaison_pki::WITNESSES_FILE));
    let mut witnesses = Vec::new();
    match std::fs::read_to_string(&w_path) {
        Ok(text) => {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                witnesses.push(
                    WitnessVerifier::from_text(line)
                        .map_err(|e| anyhow!("{} line {}: {e}", w_path.display(), n + 1))?,
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && k.witnesses.is_none() => {}
        Err(e) => return Err(anyhow!("reading {}: {e}", w_path.display())),
    }
    Ok(Keys { log, witnesses })
}

/// A signed checkpoint checked with the keys: the log's signature, and the
/// witnesses' cosignatures that verify (by name).
fn check_note(keys: &Keys, note: &[u8]) -> Result<(SignedCheckpoint, Vec<String>)> {
    let signed = keys
        .log
        .verify(note)
        .map_err(|e| Failure::check(format!("the checkpoint does not verify: {e}")))?;
    let cosigners = keys
        .log
        .cosignatures(note, &keys.witnesses)
        .map_err(|e| Failure::check(format!("a cosignature does not verify: {e}")))?
        .into_iter()
        .map(|c| c.name)
        .collect();
    Ok((signed, cosigners))
}

fn hash_of(bytes: &[u8]) -> Result<Hash, String> {
    let raw: [u8; HASH_SIZE] = bytes
        .try_into()
        .map_err(|_| format!("a proof hash of {} bytes", bytes.len()))?;
    Ok(Hash(raw))
}

fn hashes_of(raw: &[Vec<u8>]) -> Result<Vec<Hash>, String> {
    raw.iter().map(|h| hash_of(h)).collect()
}

/// Checks that a record's fields are what its leaf says.
pub fn leaf_matches(r: &pb::AuditRecord) -> Result<(), String> {
    if r.leaf.is_empty() {
        return Err("it carries no leaf (an export of an earlier, hash-chained version?)".into());
    }
    let decoded = pb::AuditRecord::decode(r.leaf.as_slice())
        .map_err(|e| format!("its leaf is not an audit record: {e}"))?;
    let mut shown = r.clone();
    shown.leaf.clear();
    if decoded != shown {
        return Err("its fields are not those its leaf holds (the record was altered)".into());
    }
    Ok(())
}

/// A whole log, checked record by record from the first.
#[derive(Debug, Default)]
pub struct WholeLog {
    frontier: Frontier,
    first_error: Option<(u64, String)>,
}

impl WholeLog {
    /// Takes the next record.
    pub fn push(&mut self, r: &pb::AuditRecord) {
        self.push_leaf(r.seq, &r.leaf, || leaf_matches(r));
    }

    /// Takes the next leaf, said to be position `seq`; `matches` checks
    /// that the record shown is the one the leaf holds.
    pub fn push_leaf(
        &mut self,
        seq: u64,
        leaf: &[u8],
        matches: impl FnOnce() -> Result<(), String>,
    ) {
        if self.first_error.is_some() {
            return;
        }
        let expected = self.frontier.size() + 1;
        let problem = if seq != expected {
            Some(format!(
                "position {seq} where {expected} was expected (a record is missing or reordered)"
            ))
        } else {
            matches().err()
        };
        match problem {
            Some(p) => self.first_error = Some((seq.min(expected), p)),
            None => {
                self.frontier.append(tree::leaf_hash(leaf));
            }
        }
    }

    /// The first bad position and why, if any so far.
    pub fn first_error(&self) -> Option<&(u64, String)> {
        self.first_error.as_ref()
    }

    /// The root of the leaves taken.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Records taken.
    pub fn records(&self) -> u64 {
        self.frontier.size()
    }

    /// The outcome against the checkpoint: the first bad position and why.
    pub fn finish(self, checkpoint: &liaison_tlog::Checkpoint) -> Result<u64, (u64, String)> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        let n = self.frontier.size();
        if n != checkpoint.size {
            return Err((
                n + 1,
                format!(
                    "the log holds {n} records where the checkpoint says {} (records were deleted or the log was truncated)",
                    checkpoint.size
                ),
            ));
        }
        if self.frontier.root() != checkpoint.root {
            return Err((
                n,
                "the recomputed root is not the checkpoint's (a record was altered, or the checkpoint is of another tree)"
                    .into(),
            ));
        }
        Ok(n)
    }
}

/// Checks one record with its inclusion proof against a checkpoint.
pub fn check_proven(
    r: &pb::AuditRecord,
    proof: &[Hash],
    checkpoint: &liaison_tlog::Checkpoint,
) -> Result<(), String> {
    leaf_matches(r)?;
    if r.seq == 0 {
        return Err("position 0 does not exist".into());
    }
    tree::verify_inclusion(
        proof,
        r.seq - 1,
        checkpoint.size,
        tree::leaf_hash(&r.leaf),
        checkpoint.root,
    )
    .map_err(|e| e.to_string())
}

/// What verifying found.
#[derive(Debug, Clone)]
struct Report {
    checkpoint: liaison_tlog::Checkpoint,
    cosigners: Vec<String>,
    records: u64,
    whole: bool,
    first_error: Option<(u64, String)>,
}

fn print_report(r: &Report, hub: Option<&pb::VerifyResponse>, out: Output) -> Result<()> {
    let root = hex::encode(r.checkpoint.root.0);
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "ok": r.first_error.is_none() && hub.is_none_or(|h| h.ok),
                "origin": r.checkpoint.origin,
                "tree_size": r.checkpoint.size,
                "root": root,
                "cosigners": r.cosigners,
                "records_checked": r.records,
                "whole_log": r.whole,
                "first_bad_seq": r.first_error.as_ref().map(|(s, _)| *s),
                "error": r.first_error.as_ref().map(|(_, e)| e.clone()),
                "hub": hub.map(|h| json!({"ok": h.ok, "records": h.records, "root": h.head_hash, "first_bad_seq": h.first_bad_seq, "error": h.error})),
            })
        ),
        Output::Human => {
            say!(
                "checkpoint: {} records of {}, root {root}, signature valid",
                r.checkpoint.size,
                r.checkpoint.origin
            );
            if r.cosigners.is_empty() {
                say!("witnesses:  none has cosigned this checkpoint yet");
            } else {
                say!(
                    "witnesses:  cosigned by {} ({})",
                    r.cosigners.len(),
                    r.cosigners.join(", ")
                );
            }
            if let Some(h) = hub {
                if h.ok {
                    say!("hub:        recomputed {} records: log intact", h.records);
                } else {
                    say!(
                        "hub:        BROKEN at record {}: {}",
                        h.first_bad_seq,
                        h.error
                    );
                }
            }
            match &r.first_error {
                None if r.whole => say!(
                    "here:       {} records hashed and the whole tree recomputed: same root, log intact",
                    r.records
                ),
                None => say!(
                    "here:       {} records you may read, each proven in the signed tree: intact",
                    r.records
                ),
                Some((seq, e)) => say!("here:       BROKEN at record {seq}: {e}"),
            }
        }
    }
    Ok(())
}

async fn verify(a: VerifyArgs, out: Output) -> Result<()> {
    if a.node {
        return verify_node(&a, out).await;
    }
    let keys = load_keys(&a.keys, &a.certs)?;
    if let Some(file) = &a.file {
        let report = verify_file(file, &keys)?;
        print_report(&report, None, out)?;
        return match &report.first_error {
            None => Ok(()),
            Some((seq, _)) => Err(Failure::check(format!(
                "the export does not verify (first bad record {seq})"
            ))
            .into()),
        };
    }
    let conn = a.connection("give --server (the hub) or --file (an export)")?;
    let mut client = client_for(&conn).await?;
    let hub = client
        .verify(pb::VerifyRequest {})
        .await
        .map_err(|s| Failure::status("audit verify", &s))?
        .into_inner();
    let (report, _) = verify_online(&mut client, &keys).await?;
    if hub.ok && !hub.checkpoint.is_empty() {
        let (signed, _) = check_note(&keys, &hub.checkpoint)?;
        if hex::encode(signed.checkpoint.root.0) != hub.head_hash {
            return Err(Failure::check(
                "the hub's recomputed root is not the root of the checkpoint it signed",
            )
            .into());
        }
    }
    print_report(&report, Some(&hub), out)?;
    if !hub.ok || report.first_error.is_some() {
        return Err(Failure::check("the audit log does not verify").into());
    }
    Ok(())
}

/// Checks the latest checkpoint, the witnessed one and the consistency
/// between them, then every record the caller may read: the whole tree
/// when it reads it all, each record's inclusion proof otherwise. Returns
/// the report and the records with their proofs (none for a whole log).
async fn verify_online(
    client: &mut AuditClient<tonic::transport::Channel>,
    keys: &Keys,
) -> Result<(Report, Vec<(pb::AuditRecord, Vec<Hash>)>)> {
    let latest = client
        .get_checkpoint(pb::CheckpointRequest::default())
        .await
        .map_err(|s| Failure::status("audit checkpoint", &s))?
        .into_inner();
    let (signed, mut cosigners) = check_note(keys, &latest.note)?;
    let witnessed = client
        .get_checkpoint(pb::CheckpointRequest {
            tree_size: 0,
            witnessed: true,
        })
        .await
        .map_err(|s| Failure::status("audit checkpoint", &s))?
        .into_inner();
    if witnessed.tree_size > 0 {
        let (w, w_cosigners) = check_note(keys, &witnessed.note)?;
        // The tree the witnesses vouched for must be a prefix of this one.
        let proof = client
            .prove_consistency(pb::ConsistencyRequest {
                old_size: w.checkpoint.size,
                tree_size: signed.checkpoint.size,
            })
            .await
            .map_err(|s| Failure::status("audit consistency proof", &s))?
            .into_inner();
        let hashes = hashes_of(&proof.hashes).map_err(Failure::check)?;
        tree::verify_consistency(
            &hashes,
            w.checkpoint.size,
            w.checkpoint.root,
            signed.checkpoint.size,
            signed.checkpoint.root,
        )
        .map_err(|e| {
            Failure::check(format!(
                "the latest checkpoint is not consistent with the one the witnesses cosigned: {e}"
            ))
        })?;
        if cosigners.is_empty() {
            cosigners = w_cosigners
                .into_iter()
                .map(|n| format!("{n} (at {} records)", w.checkpoint.size))
                .collect();
        }
    }
    let size = signed.checkpoint.size;
    let all = records(
        client,
        pb::AuditQuery {
            after_seq: 0,
            ..Default::default()
        },
    )
    .await?;
    let all: Vec<_> = all.into_iter().filter(|r| r.seq <= size).collect();
    let whole = all.len() as u64 == size;
    let mut first_error = None;
    let mut proven = Vec::new();
    if whole {
        let mut log = WholeLog::default();
        all.iter().for_each(|r| log.push(r));
        if let Err(e) = log.finish(&signed.checkpoint) {
            first_error = Some(e);
        }
    } else {
        for r in all {
            let p = client
                .prove_inclusion(pb::InclusionRequest {
                    leaf_index: r.seq.saturating_sub(1),
                    tree_size: size,
                })
                .await
                .map_err(|s| Failure::status("audit inclusion proof", &s))?
                .into_inner();
            let checked = hashes_of(&p.hashes)
                .and_then(|h| check_proven(&r, &h, &signed.checkpoint).map(|()| h));
            match checked {
                Ok(h) => proven.push((r, h)),
                Err(e) => {
                    first_error = Some((r.seq, e));
                    break;
                }
            }
        }
    }
    let records = if whole { size } else { proven.len() as u64 };
    Ok((
        Report {
            checkpoint: signed.checkpoint,
            cosigners,
            records,
            whole,
            first_error,
        },
        proven,
    ))
}

/// Synthetic record `seq` of [`write_synthetic_export`], with its leaf:
/// per message a receipt with its labels, then a routing decision for each
/// of ten bodies.
fn synthetic_record(seq: u64) -> pb::AuditRecord {
    let body = |i: u64| format!("body{:02}", i % 11);
    let message = seq / 11;
    let id = format!("01900000-0000-7000-8000-{message:012x}");
    let mut r = pb::AuditRecord {
        seq,
        at_ms: 1_796_184_000_000 + i64::try_from(seq).unwrap_or(i64::MAX),
        message_id: id.clone(),
        origin: body(message),
        policy_version: "a894a2f0d1667e1764574e5ea844be43028b9805bc05fb53b39151ae19facb8a".into(),
        actor: format!("spiffe://liaison.bench/org/{}/node/node", body(message)),
        kind: "alert".into(),
        classification: "RESTRICTED".into(),
        ..Default::default()
    };
    if seq % 11 == 1 {
        r.event = "received".into();
        r.labels = format!(
            "{{\"message_id\":\"{id}\",\"origin\":\"{}\",\"kind\":\"alert\",\"classification\":\"RESTRICTED\",\"crime_areas\":[\"drugs\"],\"priority\":\"routine\",\"created_at_ms\":{}}}",
            body(message),
            r.at_ms
        );
    } else {
        r.event = "routed".into();
        r.recipient = body(seq);
        r.decision = "deliver".into();
        r.rule = "deliver.all_rules_passed".into();
        r.reason =
            "clearance SECRET >= RESTRICTED; accepts alert; mandate covers drugs; no personal data"
                .into();
        r.queue_seq = message + 1;
    }
    r.leaf = r.encode_to_vec();
    r
}

/// Writes an export of `n` synthetic records in the format of `audit
/// export` (the checkpoint line, then each record with its leaf), shaped as
/// the hub writes them ([`synthetic_record`]). The checkpoint is signed
/// with a throwaway key, whose verifier is returned. The records are made
/// twice (once for the root the header needs, once to write), so that the
/// file is written once. For the benchmark.
pub fn write_synthetic_export(path: &Path, n: u64) -> Result<LogVerifier> {
    let (skey, vkey) = liaison_tlog::note::key_pair(
        "liaison.bench/audit",
        liaison_tlog::note::LOG_KEY_TYPE,
        [42; 32],
    )
    .map_err(|e| anyhow!("{e}"))?;
    let signer = liaison_tlog::LogSigner::from_text(&skey).map_err(|e| anyhow!("{e}"))?;
    let mut frontier = Frontier::new();
    for seq in 1..=n {
        frontier.append(tree::leaf_hash(&synthetic_record(seq).leaf));
    }
    let signed = signer.sign(frontier.size(), frontier.root());
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let head = json!({
        "checkpoint": String::from_utf8_lossy(&signed.note),
        "origin": signed.checkpoint.origin,
        "tree_size": n,
        "whole_log": true,
        "records": n,
    });
    writeln!(w, "{head}")?;
    for seq in 1..=n {
        serde_json::to_writer(&mut w, &Value::Object(to_json(&synthetic_record(seq))))?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    LogVerifier::from_text(&vkey).map_err(|e| anyhow!("{e}"))
}

/// Verifies an export offline as `audit verify --file` does, with `log` as
/// the only key; returns the records checked, or the first failure.
pub fn verify_export(path: &Path, log: LogVerifier) -> Result<u64> {
    let keys = Keys {
        log,
        witnesses: Vec::new(),
    };
    let report = verify_file(path, &keys)?;
    match report.first_error {
        None => Ok(report.records),
        Some((seq, e)) => Err(Failure::check(format!("position {seq}: {e}")).into()),
    }
}

/// Verifies an export (JSON lines: the checkpoint line, then records).
fn verify_file(path: &Path, keys: &Keys) -> Result<Report> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut lines = reader.lines();
    let head = lines
        .next()
        .transpose()?
        .ok_or_else(|| Failure::check(format!("{} is empty", path.display())))?;
    let head: Value = serde_json::from_str(&head)
        .map_err(|e| Failure::check(format!("line 1 is not JSON: {e}")))?;
    let note = head["checkpoint"].as_str().ok_or_else(|| {
        Failure::check("line 1 holds no checkpoint (not an export of `liaison audit export`)")
    })?;
    let (signed, cosigners) = check_note(keys, note.as_bytes())?;
    let whole = head["whole_log"].as_bool().unwrap_or(false);
    let mut log = WholeLog::default();
    let mut checked = 0u64;
    let mut first_error = None;
    for (n, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = n as u64 + 2;
        let r = match liaison_types::audit::from_json(line.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                first_error = Some((log.records() + 1, format!("line {at}: {e}")));
                break;
            }
        };
        if whole {
            log.push(&r);
        } else {
            let proof = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["proof"].as_array().cloned())
                .unwrap_or_default();
            let proof: Result<Vec<Hash>, String> = proof
                .iter()
                .map(|h| {
                    h.as_str()
                        .ok_or_else(|| "a proof hash is not text".to_owned())
                        .and_then(|t| liaison_tlog::note::parse_root(t).map_err(|e| e.to_string()))
                })
                .collect();
            if let Err(e) = proof.and_then(|p| check_proven(&r, &p, &signed.checkpoint)) {
                first_error = Some((r.seq, e));
                break;
            }
            checked += 1;
        }
    }
    if whole && first_error.is_none() {
        match log.finish(&signed.checkpoint) {
            Ok(n) => checked = n,
            Err(e) => first_error = Some(e),
        }
    }
    Ok(Report {
        checkpoint: signed.checkpoint,
        cosigners,
        records: checked,
        whole,
        first_error,
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn export(a: ExportArgs) -> Result<()> {
    let keys = load_keys(&a.keys, &a.conn.certs)?;
    let mut client = client_for(&a.conn).await?;
    let latest = client
        .get_checkpoint(pb::CheckpointRequest::default())
        .await
        .map_err(|s| Failure::status("audit checkpoint", &s))?
        .into_inner();
    let (signed, _) = check_note(&keys, &latest.note)?;
    let size = signed.checkpoint.size;
    let mut q = query(&a.filters, 0, 0)?;
    q.after_seq = 0;
    let all: Vec<_> = records(&mut client, q)
        .await?
        .into_iter()
        .filter(|r| r.seq <= size)
        .collect();
    let filtered = a.filters.message.is_some()
        || a.filters.body.is_some()
        || a.filters.rule.is_some()
        || a.filters.event.is_some()
        || a.filters.decision.is_some()
        || a.filters.kind.is_some()
        || a.filters.classification.is_some()
        || a.filters.since.is_some()
        || a.filters.until.is_some();
    let whole = !filtered && all.len() as u64 == size;
    match a.format {
        ExportFormat::Tiles => {
            if !whole {
                return Err(Failure::check(
                    "the tiles hold the whole log: export them with an oversight certificate and no filters",
                )
                .into());
            }
            let dir = a
                .out
                .clone()
                .ok_or_else(|| anyhow!("give --out, the directory for the tiles"))?;
            let written = write_tiles(&dir, &all, &latest.note)?;
            eprintln!(
                "wrote {} records as {written} tiles and the checkpoint in {}",
                all.len(),
                dir.display()
            );
            Ok(())
        }
        ExportFormat::Csv => {
            let mut w = sink(a.out.as_deref())?;
            writeln!(w, "{}", CSV_FIELDS.join(","))?;
            for r in &all {
                writeln!(w, "{}", csv_line(r))?;
            }
            w.flush()?;
            Ok(())
        }
        ExportFormat::Jsonl => {
            let mut w = sink(a.out.as_deref())?;
            let note = String::from_utf8_lossy(&latest.note).into_owned();
            writeln!(
                w,
                "{}",
                json!({
                    "checkpoint": note,
                    "origin": signed.checkpoint.origin,
                    "tree_size": size,
                    "whole_log": whole,
                    "records": all.len(),
                })
            )?;
            for r in &all {
                let mut m = to_json(r);
                if !whole {
                    let p = client
                        .prove_inclusion(pb::InclusionRequest {
                            leaf_index: r.seq - 1,
                            tree_size: size,
                        })
                        .await
                        .map_err(|s| Failure::status("audit inclusion proof", &s))?
                        .into_inner();
                    m.insert(
                        "proof".into(),
                        Value::Array(p.hashes.iter().map(|h| Value::from(b64(h))).collect()),
                    );
                }
                writeln!(w, "{}", Value::Object(m))?;
            }
            w.flush()?;
            Ok(())
        }
    }
}

fn sink(path: Option<&Path>) -> Result<Box<dyn std::io::Write>> {
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

/// Writes the C2SP tlog-tiles layout of a whole log: the hash tiles (height
/// 8), the entry bundles (each entry a big-endian 16-bit length and the
/// leaf), and the checkpoint. Returns how many tiles it wrote.
fn write_tiles(dir: &Path, all: &[pb::AuditRecord], note: &[u8]) -> Result<usize> {
    const HEIGHT: u8 = 8;
    let mut t = MemoryTree::new();
    for r in all {
        t.push(&r.leaf);
    }
    let size = t.size();
    let mut written = 0;
    for tile in tree::Tile::new_tiles(HEIGHT, 0, size) {
        let data = tile
            .read_data(&t)
            .map_err(|e| anyhow!("building tile {}: {e}", tile.path()))?;
        let path = dir.join(tile.path());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    // Entry bundles: 256 leaves each, the last one partial.
    let width = 1usize << HEIGHT;
    for (n, chunk) in all.chunks(width).enumerate() {
        let mut bundle = Vec::new();
        for r in chunk {
            let len = u16::try_from(r.leaf.len())
                .map_err(|_| anyhow!("record {} is too long for an entry bundle", r.seq))?;
            bundle.extend_from_slice(&len.to_be_bytes());
            bundle.extend_from_slice(&r.leaf);
        }
        let mut tile = tree::Tile::new(HEIGHT, 0, n as u64, chunk.len() as u32, true);
        tile.set_is_data();
        let path = dir.join(tile.path());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bundle).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("checkpoint"), note)?;
    Ok(written)
}

async fn checkpoint(a: CheckpointArgs, out: Output) -> Result<()> {
    let keys = load_keys(&a.keys, &a.conn.certs)?;
    let mut client = client_for(&a.conn).await?;
    let cp = client
        .get_checkpoint(pb::CheckpointRequest {
            tree_size: 0,
            witnessed: a.witnessed,
        })
        .await
        .map_err(|s| Failure::status("audit checkpoint", &s))?
        .into_inner();
    if cp.tree_size == 0 && a.witnessed {
        return Err(Failure::check("no witness has cosigned a checkpoint yet").into());
    }
    let (signed, cosigners) = check_note(&keys, &cp.note)?;
    if let Some(path) = &a.save {
        std::fs::write(path, &cp.note).with_context(|| format!("writing {}", path.display()))?;
    }
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "origin": signed.checkpoint.origin,
                "tree_size": signed.checkpoint.size,
                "root": hex::encode(signed.checkpoint.root.0),
                "cosigners": cosigners,
                "note": String::from_utf8_lossy(&cp.note),
            })
        ),
        Output::Human => {
            for line in String::from_utf8_lossy(&cp.note).lines() {
                say!("{line}");
            }
            say!();
            say!(
                "signature valid; cosigned by {} of {} witnesses{}",
                cosigners.len(),
                keys.witnesses.len(),
                if cosigners.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", cosigners.join(", "))
                }
            );
        }
    }
    Ok(())
}

async fn prove(a: ProveArgs, out: Output) -> Result<()> {
    let keys = load_keys(&a.keys, &a.conn.certs)?;
    let proofs = if a.node {
        node_proofs(&a, &keys).await?
    } else {
        hub_proofs(&a).await?
    };
    let mut results = Vec::new();
    let mut failed = None;
    for p in proofs {
        let leaf = p.leaf_index;
        let (signed, cosigners) = check_note(&keys, &p.checkpoint)?;
        let record = pb::AuditRecord::decode(p.leaf.as_slice())
            .map(|mut r| {
                r.leaf = p.leaf.clone();
                r
            })
            .map_err(|e| anyhow!("leaf {leaf} is not an audit record: {e}"))?;
        let outcome =
            hashes_of(&p.hashes).and_then(|h| check_proven(&record, &h, &signed.checkpoint));
        if let Err(e) = &outcome {
            failed.get_or_insert(format!("leaf {leaf}: {e}"));
        }
        results.push((record, p, signed, cosigners, outcome));
    }
    for (r, p, signed, cosigners, outcome) in &results {
        match out {
            Output::Json => say!(
                "{}",
                json!({
                    "leaf_index": p.leaf_index,
                    "tree_size": p.tree_size,
                    "root": hex::encode(signed.checkpoint.root.0),
                    "leaf_hash": hex::encode(tree::leaf_hash(&p.leaf).0),
                    "proof": p.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
                    "record": Value::Object(to_json(r)),
                    "cosigners": cosigners,
                    "checkpoint": String::from_utf8_lossy(&p.checkpoint),
                    "verified": outcome.is_ok(),
                    "error": outcome.as_ref().err(),
                })
            ),
            Output::Human => {
                say!(
                    "record {} ({} {} {}{}), leaf {} in the tree of {} records",
                    r.seq,
                    r.event,
                    r.message_id,
                    r.recipient,
                    if r.decision.is_empty() {
                        String::new()
                    } else {
                        format!(" {} by {}", r.decision, r.rule)
                    },
                    p.leaf_index,
                    p.tree_size
                );
                say!("  at         {}", format_time(r.at_ms));
                say!("  leaf hash  {}", hex::encode(tree::leaf_hash(&p.leaf).0));
                for (i, h) in p.hashes.iter().enumerate() {
                    say!("  path {i:<5} {}", hex::encode(h));
                }
                say!("  root       {}", hex::encode(signed.checkpoint.root.0));
                match outcome {
                    Ok(()) => say!(
                        "  verified: the path leads to the root of the checkpoint signed by {}{}",
                        signed.checkpoint.origin,
                        if cosigners.is_empty() {
                            String::new()
                        } else {
                            format!(", cosigned by {}", cosigners.join(", "))
                        }
                    ),
                    Err(e) => say!("  DOES NOT VERIFY: {e}"),
                }
            }
        }
    }
    match failed {
        None => Ok(()),
        Some(e) => Err(Failure::check(format!("a proof does not verify: {e}")).into()),
    }
}

/// The proofs of the hub: of one leaf, or of every record of a message
/// that the caller may read.
async fn hub_proofs(a: &ProveArgs) -> Result<Vec<pb::InclusionProof>> {
    let mut client = client_for(&a.conn).await?;
    let leaves: Vec<u64> = match (&a.message, a.leaf) {
        (_, Some(leaf)) => vec![leaf],
        (Some(id), None) => {
            let found = records(
                &mut client,
                pb::AuditQuery {
                    message_id: id.clone(),
                    ..Default::default()
                },
            )
            .await?;
            if found.is_empty() {
                return Err(Failure::check(format!(
                    "the log holds no record of message {} that you may read",
                    liaison_types::text::escape_line(id)
                ))
                .into());
            }
            found.iter().map(|r| r.seq - 1).collect()
        }
        (None, None) => return Err(anyhow!("give --message or --leaf")),
    };
    let mut proofs = Vec::new();
    for leaf in leaves {
        proofs.push(
            client
                .prove_inclusion(pb::InclusionRequest {
                    leaf_index: leaf,
                    tree_size: a.tree_size,
                })
                .await
                .map_err(|s| Failure::status("audit inclusion proof", &s))?
                .into_inner(),
        );
    }
    Ok(proofs)
}

/// The proofs a node keeps for its body's message (`--node`): the node
/// asks the hub with the leaf index and tree size it stored, in the
/// checkpoint its witness holds. That checkpoint is checked here too, and
/// every proof in a tree of its size must have its root.
async fn node_proofs(a: &ProveArgs, keys: &Keys) -> Result<Vec<pb::InclusionProof>> {
    let Some(id) = &a.message else {
        return Err(Failure {
            code: 2,
            message: "with --node, give --message: the node keeps proofs of its body's messages"
                .into(),
        }
        .into());
    };
    if a.leaf.is_some() || a.tree_size != 0 {
        return Err(Failure {
            code: 2,
            message: "--leaf and --tree-size ask the hub; with --node the node chooses the leaves it stored and the checkpoint its witness holds".into(),
        }
        .into());
    }
    let mut node = node_audit_client(&a.conn).await?;
    let answer = node
        .prove(pb::NodeProveRequest {
            message_id: id.clone(),
        })
        .await
        .map_err(|s| Failure::status("node proof", &s))?
        .into_inner();
    if !answer.witnessed.is_empty() {
        let (held, _) = check_note(keys, &answer.witnessed)?;
        for p in &answer.proofs {
            if p.tree_size == held.checkpoint.size {
                let (signed, _) = check_note(keys, &p.checkpoint)?;
                if signed.checkpoint.root != held.checkpoint.root {
                    return Err(Failure::check(format!(
                        "the hub proved leaf {} in a tree of {} records that is not the one the node's witness verified",
                        p.leaf_index, p.tree_size
                    ))
                    .into());
                }
            }
        }
    }
    if answer.proofs.is_empty() {
        return Err(Failure::check(format!(
            "the hub returned no record of message {} for this body",
            liaison_types::text::escape_line(id)
        ))
        .into());
    }
    Ok(answer.proofs)
}

/// The node log's records after `after`, page by page, with the tree
/// they are in (the size and root of the last page).
async fn node_log_after(
    node: &mut liaison_proto::v1::node_audit_client::NodeAuditClient<tonic::transport::Channel>,
    mut after: u64,
) -> Result<(Vec<pb::NodeLogRecord>, u64, Vec<u8>)> {
    let mut all = Vec::new();
    loop {
        let page = node
            .list_log(pb::NodeLogRequest {
                after_seq: after,
                limit: 10_000,
            })
            .await
            .map_err(|s| Failure::status("node log", &s))?
            .into_inner();
        let done =
            page.records.is_empty() || page.records.last().map(|r| r.seq) >= Some(page.tree_size);
        if let Some(last) = page.records.last() {
            after = last.seq;
        }
        all.extend(page.records);
        if done {
            return Ok((all, page.tree_size, page.root));
        }
    }
}

/// A node log record as JSON (times in RFC 3339, the leaf in base64).
fn node_record_json(r: &pb::NodeLogRecord) -> Value {
    json!({
        "seq": r.seq,
        "at": format_time(r.at_ms),
        "event": r.event,
        "message_id": r.message_id,
        "origin": r.origin,
        "actor": r.actor,
        "reason": r.reason,
        "hub_seq": r.hub_seq,
        "leaf": b64(&r.leaf),
    })
}

/// Whether a node log record's fields are those its leaf holds.
fn node_leaf_matches(r: &pb::NodeLogRecord) -> Result<(), String> {
    let decoded = pb::NodeLogRecord::decode(r.leaf.as_slice())
        .map_err(|e| format!("its leaf is not a node log record: {e}"))?;
    let mut shown = r.clone();
    shown.leaf.clear();
    if decoded != shown {
        return Err("its fields are not those its leaf holds".into());
    }
    Ok(())
}

async fn list_node(a: &ListArgs, out: Output, follow: bool) -> Result<()> {
    let f = &a.filters;
    if f.body.is_some()
        || f.rule.is_some()
        || f.decision.is_some()
        || f.kind.is_some()
        || f.classification.is_some()
    {
        return Err(Failure {
            code: 2,
            message: "a node's log is filtered by --message, --event, --since and --until only"
                .into(),
        }
        .into());
    }
    let since = f
        .since
        .as_deref()
        .map(|t| parse_when("--since", t))
        .transpose()?;
    let until = f
        .until
        .as_deref()
        .map(|t| parse_when("--until", t))
        .transpose()?;
    let keep = |r: &pb::NodeLogRecord| {
        f.message.as_ref().is_none_or(|m| &r.message_id == m)
            && f.event.as_ref().is_none_or(|e| &r.event == e)
            && since.is_none_or(|t| r.at_ms >= t)
            && until.is_none_or(|t| r.at_ms < t)
    };
    let mut node = node_audit_client(&a.conn).await?;
    let mut after = a.after;
    let mut shown = 0u32;
    if out == Output::Human {
        say!(
            "{:>6}  {:<24}  {:<11}  {:<36}  {:<10}  who / why",
            "seq",
            "at",
            "event",
            "message",
            "origin"
        );
    }
    loop {
        let (records, _, _) = node_log_after(&mut node, after).await?;
        for r in &records {
            after = r.seq;
            if !keep(r) {
                continue;
            }
            match out {
                Output::Json => say!("{}", node_record_json(r)),
                Output::Human => say!(
                    "{:>6}  {:<24}  {:<11}  {:<36}  {:<10}  {}",
                    r.seq,
                    format_time(r.at_ms),
                    crate::one_line(&r.event),
                    crate::one_line(&r.message_id),
                    crate::one_line(&r.origin),
                    crate::one_line(if r.actor.is_empty() {
                        &r.reason
                    } else {
                        &r.actor
                    })
                ),
            }
            shown += 1;
            if a.limit != 0 && shown >= a.limit {
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn verify_node(a: &VerifyArgs, out: Output) -> Result<()> {
    let conn = a.connection("give --server (your node) with --node")?;
    let mut node = node_audit_client(&conn).await?;
    let theirs = node
        .verify_log(pb::NodeLogVerifyRequest {})
        .await
        .map_err(|s| Failure::status("node log verify", &s))?
        .into_inner();
    // Here: every leaf decoded, compared with its record and hashed, in
    // order, and the root recomputed against the node's.
    let mut mine: Option<(u64, String)> = None;
    let (records, size, root) = match node_log_after(&mut node, 0).await {
        Ok(listed) => listed,
        // A log damaged so that its leaves no longer decode cannot be
        // listed: the node's own check names the position.
        Err(e) if !theirs.ok => {
            mine = Some((
                theirs.first_bad_seq,
                format!("the node cannot list its log: {e}"),
            ));
            (Vec::new(), 0, Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut log = WholeLog::default();
    for r in &records {
        log.push_leaf(r.seq, &r.leaf, || node_leaf_matches(r));
    }
    if mine.is_none() {
        mine = log.first_error().cloned();
    }
    if mine.is_none() && (log.records() != size || log.root().0.as_slice() != root.as_slice()) {
        mine = Some((
            log.records(),
            format!(
                "the {} records listed do not make the root the node gives for its {size}",
                log.records()
            ),
        ));
    }
    let ok = theirs.ok && mine.is_none();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "ok": ok,
                "records": log.records(),
                "root": hex::encode(log.root().0),
                "node": {"ok": theirs.ok, "records": theirs.records, "root": hex::encode(&theirs.root),
                         "first_bad_seq": theirs.first_bad_seq, "error": theirs.error},
                "here": {"first_bad_seq": mine.as_ref().map(|m| m.0), "error": mine.as_ref().map(|m| m.1.clone())},
            })
        ),
        Output::Human => {
            if theirs.ok {
                say!(
                    "node:  {} records recomputed from their leaves: log intact",
                    theirs.records
                );
            } else {
                say!(
                    "node:  DOES NOT VERIFY at position {}: {}",
                    theirs.first_bad_seq,
                    crate::one_line(&theirs.error)
                );
            }
            match &mine {
                None => say!(
                    "here:  {} records hashed and the tree recomputed: root {}",
                    log.records(),
                    hex::encode(log.root().0)
                ),
                Some((seq, p)) => say!(
                    "here:  DOES NOT VERIFY at position {seq}: {}",
                    crate::one_line(p)
                ),
            }
        }
    }
    if !ok {
        let at = if theirs.ok {
            mine.map(|m| m.0).unwrap_or_default()
        } else {
            theirs.first_bad_seq
        };
        return Err(Failure::check(format!(
            "the node's log does not verify (first bad position {at})"
        ))
        .into());
    }
    Ok(())
}

/// A `NodeAudit` client to the node at `--server`.
async fn node_audit_client(
    conn: &Connection,
) -> Result<liaison_proto::v1::node_audit_client::NodeAuditClient<tonic::transport::Channel>> {
    let material = conn.material()?;
    let me = material.identity()?;
    let channel =
        liaison_pki::connect(&conn.server, &material, Some(Role::Node), &me.federation).await?;
    Ok(liaison_proto::v1::node_audit_client::NodeAuditClient::new(
        channel,
    ))
}

/// A checkpoint note's size and root, for display ("-" when empty or not
/// a checkpoint signed by the log key).
fn note_summary(keys: &Keys, note: &[u8]) -> Value {
    if note.is_empty() {
        return Value::Null;
    }
    match keys.log.verify(note) {
        Ok(s) => json!({
            "tree_size": s.checkpoint.size,
            "root": hex::encode(s.checkpoint.root.0),
            "signature": "verified",
        }),
        Err(e) => json!({"signature": format!("does not verify: {e}")}),
    }
}

/// The witness's state as `watch` shows it (what changes between lines;
/// the times of checks that found nothing new are left out).
fn witness_view(keys: &Keys, w: &pb::WitnessStatus) -> Value {
    json!({
        "checkpoint": note_summary(keys, &w.checkpoint),
        "tree_size": w.tree_size,
        "verified_at": if w.verified_at_ms == 0 { Value::Null } else { format_time(w.verified_at_ms).into() },
        "cosigned_size": w.cosigned_size,
        "alarm": if w.alarm.is_empty() { Value::Null } else { json!({
            "problem": w.alarm,
            "since": format_time(w.alarm_at_ms),
        }) },
        "check_error": if w.check_error.is_empty() { Value::Null } else { w.check_error.clone().into() },
        "evidence": w.evidence.iter().map(|e| json!({
            "id": e.id,
            "at": format_time(e.at_ms),
            "problem": e.problem,
            "held": note_summary(keys, &e.held),
            "served": note_summary(keys, &e.served),
            "proof": e.proof.iter().map(hex::encode).collect::<Vec<_>>(),
            "held_note": String::from_utf8_lossy(&e.held),
            "served_note": String::from_utf8_lossy(&e.served),
        })).collect::<Vec<_>>(),
    })
}

fn say_witness(out: Output, view: &Value, w: &pb::WitnessStatus) -> Result<()> {
    match out {
        Output::Json => {
            let mut line = view.clone();
            line["at"] = format_time(liaison_types::now_ms()).into();
            say!("{line}");
        }
        Output::Human => {
            let now = format_time(liaison_types::now_ms());
            if w.tree_size == 0 {
                say!("{now}  no checkpoint verified yet");
            } else {
                say!(
                    "{now}  verified the hub's log up to {} records at {} (root {}), cosigned up to {}",
                    w.tree_size,
                    format_time(w.verified_at_ms),
                    view["checkpoint"]["root"].as_str().unwrap_or("-"),
                    w.cosigned_size
                );
            }
            if !w.check_error.is_empty() {
                say!(
                    "{now}  the last check could not be made: {}",
                    crate::one_line(&w.check_error)
                );
            }
            if !w.alarm.is_empty() {
                say!(
                    "{now}  ALARM since {}: {}",
                    format_time(w.alarm_at_ms),
                    crate::one_line(&w.alarm)
                );
                say!("{now}  deliveries are marked as received under an unverified log until an admin clears the alarm (liaison audit clear-alarm)");
                for (e, v) in w
                    .evidence
                    .iter()
                    .zip(view["evidence"].as_array().into_iter().flatten())
                {
                    let side = |k: &str| {
                        let s = &v[k];
                        match (s["tree_size"].as_u64(), s["root"].as_str()) {
                            (Some(n), Some(r)) => format!("{n} records, root {r}"),
                            _ => "-".to_owned(),
                        }
                    };
                    say!(
                        "  evidence {} at {}: {}\n    held:   {}\n    served: {}{}",
                        e.id,
                        format_time(e.at_ms),
                        crate::one_line(&e.problem),
                        side("held"),
                        side("served"),
                        if e.proof.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "\n    proof:  {} hashes that do not connect them",
                                e.proof.len()
                            )
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

async fn watch(a: WatchArgs, out: Output) -> Result<()> {
    let keys = load_keys(&a.keys, &a.conn.certs)?;
    let mut node = node_audit_client(&a.conn).await?;
    let mut last: Option<Value> = None;
    loop {
        match node.witness_status(pb::WitnessStatusRequest {}).await {
            Ok(w) => {
                let w = w.into_inner();
                let view = witness_view(&keys, &w);
                if last.as_ref() != Some(&view) {
                    say_witness(out, &view, &w)?;
                    last = Some(view);
                }
                if a.once {
                    if w.alarm.is_empty() {
                        return Ok(());
                    }
                    return Err(Failure::check(format!(
                        "the node's witness raised the audit log alarm: {}",
                        crate::one_line(&w.alarm)
                    ))
                    .into());
                }
            }
            Err(s) if a.once => return Err(Failure::status("witness status", &s).into()),
            Err(s) => {
                let view = json!({"error": s.message()});
                if last.as_ref() != Some(&view) {
                    match out {
                        Output::Json => say!("{view}"),
                        Output::Human => say!(
                            "{}  cannot ask the node: {}",
                            format_time(liaison_types::now_ms()),
                            crate::one_line(s.message())
                        ),
                    }
                    last = Some(view);
                }
            }
        }
        tokio::time::sleep(a.every).await;
    }
}

async fn clear_alarm(a: ClearAlarmArgs, out: Output) -> Result<()> {
    let mut node = node_audit_client(&a.conn).await?;
    let w = node
        .clear_alarm(pb::ClearAlarmRequest {
            reason: a.reason.clone(),
            trust_latest: a.trust_latest,
        })
        .await
        .map_err(|s| Failure::status("clear the alarm", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "cleared": w.alarm.is_empty(),
                "tree_size": w.tree_size,
                "alarm": w.alarm,
                "evidence_kept": w.evidence.len(),
            })
        ),
        Output::Human => {
            if w.alarm.is_empty() {
                say!(
                    "alarm cleared; the witness holds the checkpoint of {} records; {} pieces of evidence kept",
                    w.tree_size,
                    w.evidence.len()
                );
            } else {
                say!("ALARM raised again at once: {}", crate::one_line(&w.alarm));
            }
        }
    }
    if !w.alarm.is_empty() {
        return Err(Failure::check("the alarm was raised again by the next check").into());
    }
    Ok(())
}

async fn compare(a: CompareArgs, out: Output) -> Result<()> {
    let keys = load_keys(&a.keys, &a.certs)?;
    let read = |p: &Path| -> Result<(SignedCheckpoint, Vec<String>)> {
        let note = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        check_note(&keys, &note).map_err(|e| anyhow!("{}: {e}", p.display()))
    };
    let (one, _) = read(&a.first)?;
    let (two, _) = read(&a.second)?;
    let (small, large) = if one.checkpoint.size <= two.checkpoint.size {
        (&one, &two)
    } else {
        (&two, &one)
    };
    let verdict: Result<String, String> = if small.checkpoint.size == large.checkpoint.size {
        if small.checkpoint.root == large.checkpoint.root {
            Ok("the same tree: consistent".into())
        } else {
            Err(format!(
                "SPLIT VIEW: two signed checkpoints of {} records with different roots",
                small.checkpoint.size
            ))
        }
    } else if let Some(server) = &a.server {
        let conn = Connection {
            server: server.clone(),
            certs: a.certs.clone(),
            identity: a.identity.clone(),
            cert: None,
            key: None,
            ca: None,
        };
        let mut client = client_for(&conn).await?;
        let proof = client
            .prove_consistency(pb::ConsistencyRequest {
                old_size: small.checkpoint.size,
                tree_size: large.checkpoint.size,
            })
            .await
            .map_err(|s| Failure::status("audit consistency proof", &s))?
            .into_inner();
        let hashes = hashes_of(&proof.hashes).map_err(Failure::check)?;
        match tree::verify_consistency(
            &hashes,
            small.checkpoint.size,
            small.checkpoint.root,
            large.checkpoint.size,
            large.checkpoint.root,
        ) {
            Ok(()) => Ok(format!(
                "the tree of {} records is a prefix of the tree of {}: consistent",
                small.checkpoint.size, large.checkpoint.size
            )),
            Err(e) => Err(format!(
                "SPLIT VIEW: the hub's consistency proof between the two checkpoints fails ({e})"
            )),
        }
    } else {
        return Err(Failure::check(format!(
            "the checkpoints are of {} and {} records: give --server (the hub) to check the consistency proof between them",
            small.checkpoint.size, large.checkpoint.size
        ))
        .into());
    };
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "consistent": verdict.is_ok(),
                "first": {"tree_size": one.checkpoint.size, "root": hex::encode(one.checkpoint.root.0)},
                "second": {"tree_size": two.checkpoint.size, "root": hex::encode(two.checkpoint.root.0)},
                "verdict": verdict.as_ref().unwrap_or_else(|e| e),
            })
        ),
        Output::Human => say!("{}", verdict.as_ref().unwrap_or_else(|e| e)),
    }
    verdict.map(|_| ()).map_err(|e| Failure::check(e).into())
}

async fn flows(a: FlowsArgs, out: Output) -> Result<()> {
    let mut client = client_for(&a.conn).await?;
    let mut q = query(&a.filters, 0, 0)?;
    q.event = liaison_types::audit::Event::Routed.as_str().into();
    let all = records(&mut client, q).await?;
    // (origin, recipient, kind, classification) -> (delivered, withheld)
    let mut flows: BTreeMap<(String, String, String, String), (u64, u64)> = BTreeMap::new();
    for r in &all {
        let e = flows
            .entry((
                r.origin.clone(),
                r.recipient.clone(),
                r.kind.clone(),
                r.classification.clone(),
            ))
            .or_default();
        if r.decision == "deliver" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let (from, to) = (
        all.first().map(|r| r.at_ms).unwrap_or(0),
        all.last().map(|r| r.at_ms).unwrap_or(0),
    );
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "from": format_time(from),
                "to": format_time(to),
                "flows": flows.iter().map(|((o, r, k, c), (d, w))| json!({
                    "origin": o, "recipient": r, "kind": k, "classification": c,
                    "delivered": d, "withheld": w,
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Human => {
            say!(
                "routing decisions from {} to {}",
                format_time(from),
                format_time(to)
            );
            say!(
                "{:<10} {:<10} {:<20} {:<14} {:>9} {:>9}",
                "ORIGIN",
                "RECIPIENT",
                "KIND",
                "CLASSIFICATION",
                "DELIVERED",
                "WITHHELD"
            );
            for ((o, r, k, c), (d, w)) in &flows {
                say!("{o:<10} {r:<10} {k:<20} {c:<14} {d:>9} {w:>9}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, reason: &str) -> pb::AuditRecord {
        let mut r = pb::AuditRecord {
            seq,
            event: "policy".into(),
            reason: reason.into(),
            at_ms: 5,
            ..Default::default()
        };
        r.leaf = r.encode_to_vec();
        r
    }

    fn signed(records: &[pb::AuditRecord]) -> liaison_tlog::Checkpoint {
        let mut t = MemoryTree::new();
        for r in records {
            t.push(&r.leaf);
        }
        liaison_tlog::Checkpoint {
            origin: "o".into(),
            size: t.size(),
            root: t.root(),
        }
    }

    #[test]
    fn a_whole_log_verifies_and_each_kind_of_damage_is_named_at_its_position() {
        let log: Vec<_> = (1..=9).map(|s| record(s, "r")).collect();
        let cp = signed(&log);
        let check = |records: &[pb::AuditRecord]| {
            let mut w = WholeLog::default();
            records.iter().for_each(|r| w.push(r));
            w.finish(&cp)
        };
        assert_eq!(check(&log), Ok(9));
        // A field altered without its leaf.
        let mut altered = log.clone();
        altered[3].reason = "other".into();
        assert_eq!(check(&altered).unwrap_err().0, 4);
        // A leaf altered with its field (re-encoded): the root differs.
        let mut rewritten = log.clone();
        rewritten[3] = record(4, "other");
        let e = check(&rewritten).unwrap_err();
        assert!(e.1.contains("root"), "{e:?}");
        // A deleted record.
        let mut deleted = log.clone();
        deleted.remove(5);
        assert_eq!(check(&deleted).unwrap_err().0, 6);
        // A truncated log.
        let e = check(&log[..7]).unwrap_err();
        assert!(e.1.contains("truncated"), "{e:?}");
    }

    #[test]
    fn a_proven_record_verifies_and_a_damaged_one_does_not() {
        let log: Vec<_> = (1..=6).map(|s| record(s, "r")).collect();
        let cp = signed(&log);
        let mut t = MemoryTree::new();
        log.iter().for_each(|r| t.push(&r.leaf));
        let proof = tree::inclusion_proof(2, 6, &t).unwrap();
        check_proven(&log[2], &proof, &cp).unwrap();
        assert!(check_proven(&log[3], &proof, &cp).is_err());
        let mut altered = log[2].clone();
        altered.reason = "x".into();
        assert!(check_proven(&altered, &proof, &cp).is_err());
    }
}
