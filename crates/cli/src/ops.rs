//! Operator and auditor commands: audit, pki, dev, policy, hub, node.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::{Context, Result};
use futures::Stream;
use liaison_policy::{DecisionChange, Governance};
use liaison_proto::v1 as pb;
use liaison_types::Labels;
use serde_json::{json, Value};

use crate::message::format_time;
use crate::{Failure, Output};

/// `liaison pki ...`
#[derive(Debug, clap::Subcommand)]
pub enum PkiCommand {
    /// Write a dev PKI for every body of a governance file: a federation CA,
    /// the hub, one node per body, officers alice, bob and carol, auditor audit and
    /// admin admin per body.
    Init(PkiInitArgs),
    /// Revoke dev certificates: write `<dir>/crl.pem`, signed by the dev CA,
    /// listing these certificates and every one the existing `crl.pem`
    /// already lists. Point `[tls] crl` at it and reload (SIGHUP or
    /// `liaison admin reload-policy`).
    Revoke(PkiRevokeArgs),
    /// Rotate the dev PKI and show the procedure: new keys and certificates
    /// for every leaf under the CA in force; or, with --ca, a new CA trusted
    /// beside the old one (then rotate the leaves, which it signs); then,
    /// with --finish, the old CA removed. Running processes pick the new
    /// files up within seconds (or at SIGHUP), without a restart.
    Rotate(PkiRotateArgs),
}

/// Arguments of `pki rotate`.
#[derive(Debug, clap::Args)]
pub struct PkiRotateArgs {
    /// The dev PKI directory.
    #[arg(long, default_value = "certs-dev")]
    pub dir: PathBuf,
    /// The governance file naming the federation and its bodies.
    #[arg(long, default_value = DEFAULT_GOVERNANCE)]
    pub governance: PathBuf,
    /// Start a CA rotation: a new CA, trusted beside the old one.
    #[arg(long, conflicts_with = "finish")]
    pub ca: bool,
    /// Finish a CA rotation: trust the new CA only.
    #[arg(long)]
    pub finish: bool,
}

/// Arguments of `pki revoke`.
#[derive(Debug, clap::Args)]
pub struct PkiRevokeArgs {
    /// The dev PKI directory (holds `ca.pem` and `ca.key.pem`).
    #[arg(long, default_value = "certs-dev")]
    pub dir: PathBuf,
    /// Certificates to revoke, as path stems relative to --dir, for example
    /// `europol/node` or `europol/officer-alice`.
    #[arg(required = true)]
    pub stems: Vec<String>,
}

/// File name of the dev PKI's certificate revocation list.
pub const CRL_FILE: &str = "crl.pem";

/// Arguments of `pki init`.
#[derive(Debug, clap::Args)]
pub struct PkiInitArgs {
    /// Where to write the certificates.
    #[arg(long, default_value = "certs-dev")]
    pub dir: PathBuf,
    /// The governance file naming the federation and its bodies (the
    /// default is relative to the repository's root).
    #[arg(long, default_value = DEFAULT_GOVERNANCE)]
    pub governance: PathBuf,
    /// Replace an existing PKI in --dir.
    #[arg(long)]
    pub force: bool,
}

/// Where `pki init` looks for the governance file by default: the shipped
/// one, relative to the repository's root.
pub const DEFAULT_GOVERNANCE: &str = "deploy/federation.toml";

/// The governance file of `pki init`: one that does not exist is most often
/// the default path, from outside the repository, so say what to pass.
fn pki_governance(path: &Path) -> Result<Governance> {
    if let Err(e) = std::fs::metadata(path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            let from_here = if path == Path::new(DEFAULT_GOVERNANCE) {
                " (the default, relative to the repository's root)"
            } else {
                ""
            };
            return Err(Failure {
                code: 1,
                message: format!(
                    "governance file {}{from_here} does not exist; pass --governance <file> naming your federation's governance file (the shipped one is deploy/federation.toml in the repository)",
                    path.display()
                ),
            }
            .into());
        }
    }
    load_governance(path)
}

/// Reads and validates a governance file.
pub fn load_governance(path: &Path) -> Result<Governance> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read governance file {}", path.display()))?;
    Ok(Governance::from_toml(&path.display().to_string(), &text)?)
}

/// Runs a pki command.
pub fn pki(c: PkiCommand, out: Output) -> Result<()> {
    let a = match c {
        PkiCommand::Init(a) => a,
        PkiCommand::Revoke(a) => return pki_revoke(&a, out),
        PkiCommand::Rotate(a) => return pki_rotate(&a, out),
    };
    let gov = pki_governance(&a.governance)?;
    let spec = liaison_federation::dev_spec(&gov);
    let generated = if a.force {
        liaison_pki::generate_dev_pki(&a.dir, &spec)?;
        true
    } else {
        liaison_pki::ensure_dev_pki(&a.dir, &spec)?
    };
    match out {
        Output::Json => say!(
            "{}",
            json!({"dir": a.dir, "generated": generated, "bodies": spec.bodies})
        ),
        Output::Human if generated => say!(
            "wrote a dev pki for federation {} ({} bodies) into {}",
            spec.federation,
            spec.bodies.len(),
            a.dir.display()
        ),
        Output::Human => say!(
            "{} already holds a pki; use --force to replace it",
            a.dir.display()
        ),
    }
    Ok(())
}

/// `liaison pki rotate`.
fn pki_rotate(a: &PkiRotateArgs, out: Output) -> Result<()> {
    use liaison_pki::Rotation;
    let gov = pki_governance(&a.governance)?;
    let spec = liaison_federation::dev_spec(&gov);
    let step = match (a.ca, a.finish) {
        (true, _) => Rotation::NewCa,
        (_, true) => Rotation::Finish,
        _ => Rotation::Leaves,
    };
    let done = liaison_pki::rotate_dev_pki(&a.dir, &spec, step)?;
    let (name, next) = match step {
        Rotation::Leaves => (
            "leaves",
            vec![
                "every process reads its new certificate and key within 5 s (or now: SIGHUP, `systemctl reload`)".to_owned(),
                "connections already open keep the old certificate until they end ([limits] max_connection_age_ms)".to_owned(),
                "give officers, auditors and admins their new files; the old ones stay valid until they expire or are revoked (`liaison pki revoke`)".to_owned(),
            ],
        ),
        Rotation::NewCa => (
            "new_ca",
            vec![
                format!("ca.pem now trusts {} CAs, the new one first, and ca.key.pem is the new CA's key; no certificate changed yet", done.trusted_cas),
                "every process reloads within 5 s (or at SIGHUP) and trusts both CAs; give the new ca.pem to every officer, auditor and admin".to_owned(),
                format!("then reissue the certificates under the new CA: {} pki rotate --dir {}", crate::this_program(), crate::shell_word(&a.dir.display().to_string())),
                format!("once every party holds its new certificate and every connection has been made again ([limits] max_connection_age_ms), finish: {} pki rotate --finish --dir {}", crate::this_program(), crate::shell_word(&a.dir.display().to_string())),
            ],
        ),
        Rotation::Finish => (
            "finish",
            vec![
                "ca.pem now trusts the new CA only; every process reloads within 5 s (or at SIGHUP)".to_owned(),
                "a certificate of the old CA is refused at its next handshake".to_owned(),
            ],
        ),
    };
    match out {
        Output::Json => say!(
            "{}",
            json!({"dir": a.dir, "step": name, "leaves": done.leaves, "trusted_cas": done.trusted_cas, "next": next})
        ),
        Output::Human => {
            say!(
                "rotated the dev pki in {} ({name}: {} leaves reissued, {} CA certificates trusted)",
                a.dir.display(),
                done.leaves,
                done.trusted_cas
            );
            for (i, step) in next.iter().enumerate() {
                say!("  {}. {step}", i + 1);
            }
        }
    }
    Ok(())
}

/// `liaison pki revoke`.
fn pki_revoke(a: &PkiRevokeArgs, out: Output) -> Result<()> {
    let ca = liaison_pki::CertificateAuthority::load(&a.dir)?;
    let crl_path = a.dir.join(CRL_FILE);
    let mut serials = match std::fs::read_to_string(&crl_path) {
        Ok(text) => liaison_pki::serials_of_crl(&text, &crl_path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", crl_path.display()));
        }
    };
    let before = serials.len();
    let mut certs = Vec::with_capacity(a.stems.len());
    for stem in &a.stems {
        let path = a.dir.join(format!("{stem}.pem"));
        let pem = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; name certificates by their stem in {}, for example europol/node",
                path.display(),
                a.dir.display()
            )
        })?;
        certs.push(pem);
    }
    let crl = ca.revoke(&certs, &serials)?;
    serials = liaison_pki::serials_of_crl(&crl, "the new crl")?;
    let tmp = a.dir.join(format!(".{CRL_FILE}.tmp"));
    std::fs::write(&tmp, &crl).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &crl_path)
        .with_context(|| format!("cannot move {} into place", crl_path.display()))?;
    match out {
        Output::Json => say!(
            "{}",
            json!({"crl": crl_path, "revoked": serials.len(), "stems": a.stems})
        ),
        Output::Human => say!(
            "wrote {} revoking {} certificates ({} before); point the hub and nodes at it (`crl` in their [tls] table) and reload them (SIGHUP, or `liaison admin reload-policy` for the hub)",
            crl_path.display(),
            serials.len(),
            before
        ),
    }
    Ok(())
}

/// `liaison dev ...`: helpers for trying Liaison on one machine with the
/// dev PKI.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Write a ready-to-run node configuration for BODY against a running
    /// hub, with the certificates of the dev PKI (`liaison pki init`); start
    /// the node with `liaison node --config FILE`.
    NodeConfig(NodeConfigArgs),
}

/// The hub's address in `deploy/hub.toml`.
pub const DEV_HUB: &str = "https://127.0.0.1:7400";

/// Arguments of `dev node-config`.
#[derive(Debug, clap::Args)]
pub struct NodeConfigArgs {
    /// The body the node serves, for example interpol; --certs must hold
    /// its node certificate (BODY/node.pem).
    pub body: String,
    /// The hub's address.
    #[arg(long, default_value = DEV_HUB)]
    pub hub: String,
    /// Address of the node's officer API; port 0 takes any free port (start
    /// the node with --ready-file to learn which). The default is clear of
    /// the hub (7400) and the node of deploy/node.toml (7401).
    #[arg(long, default_value = "127.0.0.1:7402")]
    pub listen: std::net::SocketAddr,
    /// Directory of the dev PKI.
    #[arg(long, default_value = "certs-dev")]
    pub certs: PathBuf,
    /// The node's durable outbox and inbox (default: .data/BODY).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the configuration to this file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

/// Runs a dev command.
pub fn dev(c: DevCommand, out: Output) -> Result<()> {
    match c {
        DevCommand::NodeConfig(a) => node_config(&a, out),
    }
}

/// A bad value on the command line (exit code 2).
fn usage(message: String) -> anyhow::Error {
    Failure { code: 2, message }.into()
}

/// The bodies with a node certificate in a dev PKI directory, sorted.
fn bodies_in(certs: &Path) -> Vec<String> {
    let mut bodies: Vec<String> = std::fs::read_dir(certs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("node.pem").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    bodies.sort();
    bodies
}

/// A TOML string holding `path`.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The text of a node configuration, with paths as given.
fn node_config_text(
    body: &liaison_types::BodyId,
    a: &NodeConfigArgs,
    data_dir: &Path,
    files: &liaison_pki::TlsFiles,
    certs: &Path,
) -> String {
    format!(
        "# Liaison node configuration for {body}, written by `liaison dev node-config`\n\
         # for the dev PKI. Start the node with `liaison node --config <this file>`;\n\
         # deploy/node.toml explains every key.\n\
         \n\
         version = 1\n\
         body = {}\n\
         \n\
         # The officer API (mutual TLS only): officers of {body} connect here.\n\
         listen = {}\n\
         hub = {}\n\
         \n\
         # Durable outbox and inbox (sled); created if absent.\n\
         data_dir = {}\n\
         \n\
         [tls]\n\
         ca = {}\n\
         cert = {}\n\
         key = {}\n\
         \n\
         # Witnessing the hub's audit log: its verifier key, this body's witness key.\n\
         [audit]\n\
         log_key = {}\n\
         witness_key = {}\n\
         \n\
         # The federation's deconfliction key: plans' targets are sent as keyed hashes.\n\
         [plans]\n\
         deconfliction_key = {}\n",
        toml::Value::String(body.to_string()),
        toml::Value::String(a.listen.to_string()),
        toml::Value::String(a.hub.clone()),
        toml_path(data_dir),
        toml_path(&files.ca),
        toml_path(&files.cert),
        toml_path(&files.key),
        toml_path(&certs.join(liaison_pki::LOG_VKEY_FILE)),
        toml_path(
            &certs
                .join(body.as_str())
                .join(liaison_pki::WITNESS_KEY_FILE)
        ),
        toml_path(&certs.join(liaison_pki::DECONFLICTION_KEY_FILE)),
    )
}

/// `liaison dev node-config BODY`.
fn node_config(a: &NodeConfigArgs, out: Output) -> Result<()> {
    let body = liaison_types::BodyId::parse(&a.body).map_err(|e| {
        usage(format!(
            "body '{}': {e}; name a body of the federation, for example interpol",
            a.body.escape_debug()
        ))
    })?;
    if !a.hub.starts_with("https://") {
        return Err(usage(format!(
            "--hub '{}' is not an https:// address; the hub only speaks TLS (for example {DEV_HUB})",
            a.hub.escape_debug()
        )));
    }
    // Absolute paths: the file works from any directory, and on standard
    // output it has no directory to be relative to.
    let absolute = |p: &Path| {
        std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
    };
    let certs = absolute(&a.certs)?;
    let files = liaison_pki::TlsFiles::in_dev_dir(&certs, &format!("{body}/node"));
    if !files.ca.is_file() {
        return Err(usage(format!(
            "{} holds no dev pki ({} does not exist); make one with `liaison pki init`, or pass --certs <dir>",
            a.certs.display(),
            files.ca.display()
        )));
    }
    for f in [&files.cert, &files.key] {
        if !f.is_file() {
            let known = bodies_in(&certs);
            return Err(usage(format!(
                "{} has no node certificate for {body} ({} does not exist); bodies it has one for: {}",
                a.certs.display(),
                f.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    let data_dir = match &a.data_dir {
        Some(d) => absolute(d)?,
        None => absolute(&Path::new(".data").join(body.as_str()))?,
    };
    let text = node_config_text(&body, a, &data_dir, &files, &certs);
    let shown = a.out.clone().unwrap_or_else(|| PathBuf::from("(stdout)"));
    // What the node will read: refuse to write anything it would refuse.
    liaison_node::NodeConfig::parse(&shown, &text)
        .context("the node configuration written here does not parse; this is a bug")?;
    let Some(file) = &a.out else {
        match out {
            Output::Json => say!(
                "{}",
                json!({"body": body.as_str(), "listen": a.listen, "hub": a.hub, "data_dir": data_dir, "config": text})
            ),
            Output::Human => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                match stdout.write_all(text.as_bytes()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Err(Failure::quiet().into())
                    }
                    other => other?,
                }
            }
        }
        return Ok(());
    };
    if file.exists() && !a.force {
        return Err(Failure {
            code: 1,
            message: format!(
                "{} exists; pass --force to replace it, or choose another --out",
                file.display()
            ),
        }
        .into());
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    match out {
        Output::Json => say!(
            "{}",
            json!({"file": file, "body": body.as_str(), "listen": a.listen, "hub": a.hub, "data_dir": data_dir})
        ),
        Output::Human => {
            let me = crate::this_program();
            say!(
                "wrote {}: the {body} node listens on {} for its officers and connects to the hub at {}",
                file.display(),
                a.listen,
                a.hub
            );
            say!(
                "start it with: {me} node --config {}",
                crate::shell_word(&file.display().to_string())
            );
            if a.listen.port() == 0 {
                say!("(port 0: add --ready-file <file> to learn the port the node takes)");
            } else {
                say!(
                    "then, as one of its officers: {me} inbox --server https://{} --certs {} --as {body}/officer-alice",
                    a.listen,
                    crate::shell_word(&a.certs.display().to_string())
                );
            }
        }
    }
    Ok(())
}

/// `liaison policy ...`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a governance file; errors name the file, line and key.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// List the routing rules, in the order they are applied.
    Rules,
    /// Replay past traffic under two governance files and list the messages
    /// the new one would route differently, recipient by recipient, and why.
    Diff(PolicyDiffArgs),
}

/// Arguments of `policy diff`.
#[derive(Debug, clap::Args)]
pub struct PolicyDiffArgs {
    /// The governance to compare from (usually the one in force).
    pub old: PathBuf,
    /// The governance to compare to (the proposed one).
    pub new: PathBuf,
    /// The past traffic: an audit export as JSON lines, as written by
    /// `liaison audit list --output json`; `-` reads standard input. Every
    /// `received` record's labels are decided again, at the time it was
    /// routed.
    #[arg(long)]
    pub audit: PathBuf,
}

/// Reads a governance file; errors keep their file, line and key.
fn governance_file(path: &Path) -> Result<Governance> {
    load_governance(path).map_err(|e| {
        Failure {
            code: 1,
            message: format!("{e:#}"),
        }
        .into()
    })
}

/// Runs a policy command.
pub fn policy(c: PolicyCommand, out: Output) -> Result<()> {
    match c {
        PolicyCommand::Diff(a) => return policy_diff(&a, out),
        PolicyCommand::Check { file } => {
            let gov = governance_file(&file)?;
            let observers = gov.bodies().filter(|b| b.is_observer()).count();
            match out {
                Output::Json => say!(
                    "{}",
                    json!({"file": file, "ok": true, "version": gov.version(), "bodies": gov.bodies().count(), "observers": observers})
                ),
                Output::Human => say!(
                    "{}: ok, {} bodies ({} observers), version {}",
                    file.display(),
                    gov.bodies().count(),
                    observers,
                    gov.version()
                ),
            }
        }
        PolicyCommand::Rules => {
            for (rule, what) in liaison_policy::explain_rules() {
                match out {
                    Output::Json => {
                        say!("{}", json!({"rule": rule.as_str(), "description": what}))
                    }
                    Output::Human => say!("{:<28} {what}", rule.as_str()),
                }
            }
        }
    }
    Ok(())
}

/// One message whose routing would change.
struct ChangedMessage {
    record: pb::AuditRecord,
    changes: Vec<DecisionChange>,
}

/// What replaying an audit export under two governances found.
#[derive(Default)]
struct DiffReport {
    /// Messages replayed.
    messages: usize,
    /// Those routed under another version than the old governance's.
    other_version: usize,
    /// `received` records without labels (written before labels were kept).
    without_labels: usize,
    /// `received` records whose labels could not be read: where and why.
    unreadable: Vec<String>,
    changed: Vec<ChangedMessage>,
}

impl DiffReport {
    fn delivery_changed(&self) -> usize {
        self.changed
            .iter()
            .filter(|m| m.changes.iter().any(DecisionChange::delivery_changed))
            .count()
    }
}

/// Replays every `received` record of an audit export under both governances.
fn replay(old: &Governance, new: &Governance, name: &str, text: &str) -> Result<DiffReport> {
    let mut report = DiffReport::default();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = liaison_types::audit::from_json(line.as_bytes()).map_err(|e| Failure {
            code: 1,
            message: format!(
                "{name}:{}: {e}; expected json lines from `liaison audit list --output json`",
                i + 1
            ),
        })?;
        if record.event != "received" {
            continue;
        }
        if record.labels.is_empty() {
            report.without_labels += 1;
            continue;
        }
        if !seen.insert(record.message_id.clone()) {
            continue;
        }
        let labels: Labels = match serde_json::from_str(&record.labels) {
            Ok(l) => l,
            Err(e) => {
                report.unreadable.push(format!(
                    "{name}:{}: message {}: labels: {e}",
                    i + 1,
                    record.message_id
                ));
                continue;
            }
        };
        report.messages += 1;
        if record.policy_version != old.version() {
            report.other_version += 1;
        }
        let changes = liaison_policy::diff(old, new, &labels, record.at_ms);
        if !changes.is_empty() {
            report.changed.push(ChangedMessage { record, changes });
        }
    }
    Ok(report)
}

fn decision_json(d: Option<&liaison_policy::Decision>) -> Value {
    match d {
        Some(d) => {
            json!({"outcome": d.outcome.as_str(), "rule": d.rule.as_str(), "reason": d.reason})
        }
        None => Value::Null,
    }
}

fn decision_text(d: Option<&liaison_policy::Decision>) -> String {
    match d {
        Some(d) => format!("{} ({})", d.outcome, d.rule),
        None => "nothing (not configured)".to_owned(),
    }
}

/// `liaison policy diff OLD NEW --audit FILE`.
fn policy_diff(a: &PolicyDiffArgs, out: Output) -> Result<()> {
    let old = governance_file(&a.old)?;
    let new = governance_file(&a.new)?;
    let (name, text) = if a.audit == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the audit export from standard input")?;
        ("(stdin)".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(&a.audit)
            .with_context(|| format!("cannot read audit export {}", a.audit.display()))?;
        (a.audit.display().to_string(), text)
    };
    let report = replay(&old, &new, &name, &text)?;
    let summary = format!(
        "{} of {} messages would be routed differently ({} change who receives them)",
        report.changed.len(),
        report.messages,
        report.delivery_changed()
    );
    match out {
        Output::Json => {
            let changes: Vec<Value> = report
                .changed
                .iter()
                .map(|m| {
                    let r = &m.record;
                    let recipients: Vec<Value> = m
                        .changes
                        .iter()
                        .map(|c| {
                            json!({
                                "recipient": c.recipient.as_str(),
                                "delivery_changed": c.delivery_changed(),
                                "old": decision_json(c.old.as_ref()),
                                "new": decision_json(c.new.as_ref()),
                            })
                        })
                        .collect();
                    json!({
                        "message_id": r.message_id, "origin": r.origin, "kind": r.kind,
                        "classification": r.classification, "at": format_time(r.at_ms), "at_ms": r.at_ms,
                        "policy_version": r.policy_version, "recipients": recipients,
                    })
                })
                .collect();
            say!(
                "{}",
                json!({
                    "old": {"file": a.old, "version": old.version()},
                    "new": {"file": a.new, "version": new.version()},
                    "messages": report.messages,
                    "changed": report.changed.len(),
                    "delivery_changed": report.delivery_changed(),
                    "routed_under_other_versions": report.other_version,
                    "without_labels": report.without_labels,
                    "unreadable": report.unreadable,
                    "changes": changes,
                })
            );
        }
        Output::Human => {
            for m in &report.changed {
                let r = &m.record;
                say!(
                    "message {} from {} ({}, {}), routed {}",
                    r.message_id,
                    r.origin,
                    r.kind,
                    r.classification,
                    format_time(r.at_ms)
                );
                for c in &m.changes {
                    say!(
                        "  {:<12} {} -> {}",
                        c.recipient.as_str(),
                        decision_text(c.old.as_ref()),
                        decision_text(c.new.as_ref())
                    );
                    for (side, d) in [("was", &c.old), ("now", &c.new)] {
                        if let Some(d) = d {
                            say!("  {:<12}   {side}: {}", "", &d.reason);
                        }
                    }
                }
            }
            say!("{summary}");
            say!(
                "old {} ({}), new {} ({})",
                old.version(),
                a.old.display(),
                new.version(),
                a.new.display()
            );
            if report.other_version > 0 {
                say!(
                    "note: {} of the messages were routed under another version than the old file's; its decisions are compared, not the recorded ones",
                    report.other_version
                );
            }
            if report.without_labels > 0 {
                say!(
                    "note: {} received records carry no labels and were not replayed",
                    report.without_labels
                );
            }
            if let Some(first) = report.unreadable.first() {
                say!(
                    "warning: {} received records have labels this version cannot read and were not replayed; first: {first}",
                    report.unreadable.len()
                );
            }
        }
    }
    Ok(())
}

/// Arguments of `hub` and `node`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Once listening, write the bound address to this file (useful with port 0).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Once listening, write the bound `[metrics] listen` address to this
    /// file (it is bound before --ready-file is written).
    #[arg(long)]
    pub metrics_ready_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
    /// Exit at once when the process whose id this is stops being this
    /// process's parent (it died): for supervisors and test harnesses that
    /// must not leave a server behind them.
    #[arg(long, env = "LIAISON_EXIT_WITH_PARENT", value_name = "PID")]
    pub exit_with_parent: Option<u32>,
}

/// Ends the process when `parent` is no longer its parent: the parent died
/// (even by SIGKILL), so the process was handed to another.
pub(crate) fn exit_with_parent(parent: Option<u32>) {
    let Some(parent) = parent else { return };
    #[cfg(unix)]
    {
        if std::os::unix::process::parent_id() != parent {
            tracing::error!(parent, "the parent process is already gone; exiting");
            std::process::exit(70);
        }
        std::thread::Builder::new()
            .name("liaison-parent-watch".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if std::os::unix::process::parent_id() != parent {
                    tracing::error!(parent, "the parent process died; exiting");
                    std::process::exit(70);
                }
            })
            .ok();
    }
}

pub(crate) async fn bind(
    addr: std::net::SocketAddr,
    ready_file: Option<&Path>,
) -> Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    if let Some(path) = ready_file {
        write_ready_file(path, listener.local_addr()?)?;
    }
    Ok(listener)
}

/// Writes `bound` to the ready file `path`, whole or not at all.
fn write_ready_file(path: &Path, bound: std::net::SocketAddr) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bound.to_string())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives
/// between the two (after a "press Ctrl-C" line, say) is not lost, and does
/// not end the process by its default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logging, and trace export to `endpoint` as `service` if there is one;
/// the guard flushes the last spans when dropped.
fn start_logs(
    json: bool,
    endpoint: Option<&str>,
    service: &str,
) -> Result<Option<liaison_telemetry::trace::TraceGuard>> {
    liaison_telemetry::init_with("info", log_format(json), endpoint.map(|e| (e, service)))
        .map_err(anyhow::Error::msg)
}

fn log_format(json: bool) -> liaison_telemetry::Format {
    if json {
        liaison_telemetry::Format::Json
    } else {
        liaison_telemetry::Format::Text
    }
}

/// `liaison hub`.
pub async fn hub(a: ServeArgs) -> Result<()> {
    // Logging first (with trace export if the file asks for it), then the
    // parent check, then a configuration error, if any.
    let config = liaison_hub::HubConfig::load(&a.config);
    let endpoint = config
        .as_ref()
        .ok()
        .and_then(|c| c.telemetry.otlp_endpoint.clone());
    let _traces = start_logs(a.json_logs, endpoint.as_deref(), "liaison-hub")?;
    exit_with_parent(a.exit_with_parent);
    let config = config?;
    // Its own certificate is checked before it says it is ready: a hub
    // certificate of the governance's hub body (if the governance cannot
    // be read, the hub's start says why; the role is checked here anyway).
    let hub_body = std::fs::read_to_string(&config.governance)
        .ok()
        .and_then(|text| {
            liaison_policy::Governance::from_toml(&config.governance.display().to_string(), &text)
                .ok()
        })
        .map(|g| g.hub_body().to_string());
    liaison_pki::TlsMaterial::load(&config.tls)
        .and_then(|m| m.identity_as(liaison_types::Role::Hub, hub_body.as_deref()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.tls.cert.display()))?;
    // SIGHUP reloads the governance and the TLS files.
    let (listeners, stop, reloads) =
        start_serving(&a, "hub", config.listen, config.metrics.as_ref()).await?;
    liaison_hub::run_with_reload(config, listeners, stop, reloads).await?;
    Ok(())
}

/// What a server needs before it runs, in the order that makes readiness
/// true: SIGHUP and SIGTERM caught (by default either would end the
/// process), the metrics and API listeners bound; then, once the process
/// has opened its store (the listeners' `ready`), the ready files written,
/// systemd told `READY=1` and the watchdog started. The stop future tells
/// systemd `STOPPING=1` when SIGTERM comes.
async fn start_serving(
    a: &ServeArgs,
    what: &str,
    listen: std::net::SocketAddr,
    metrics: Option<&liaison_telemetry::metrics::MetricsConfig>,
) -> Result<(
    liaison_telemetry::metrics::Listeners,
    impl std::future::Future<Output = ()> + Send,
    Pin<Box<dyn Stream<Item = ()> + Send>>,
)> {
    let reloads = reload_signal()?;
    let stop = shutdown_signal();
    let metrics = match metrics {
        Some(m) => Some(bind(m.listen, None).await?),
        None => None,
    };
    let api = bind(listen, None).await?;
    let files = [
        (
            a.metrics_ready_file.clone(),
            metrics.as_ref().map(|l| l.local_addr()).transpose()?,
        ),
        (a.ready_file.clone(), Some(api.local_addr()?)),
    ];
    let what = what.to_owned();
    let ready = move || {
        // Ready files first (the API's last): a supervisor that reads the
        // API's file finds the metrics' one already there.
        for (path, bound) in &files {
            if let (Some(path), Some(bound)) = (path, bound) {
                if let Err(e) = write_ready_file(path, *bound) {
                    tracing::error!(error = %format!("{e:#}"), "cannot announce readiness");
                    std::process::exit(74);
                }
            }
        }
        let bound = files[1].1.map_or_else(String::new, |a| a.to_string());
        crate::systemd::ready(&format!("{what} listening on {bound}"));
        crate::systemd::watchdog();
    };
    let stop = async move {
        stop.await;
        crate::systemd::stopping();
    };
    Ok((
        liaison_telemetry::metrics::Listeners {
            api,
            metrics,
            ready: Some(Box::new(ready)),
        },
        stop,
        reloads,
    ))
}

/// One item per SIGHUP, the operator's way to ask for a governance reload.
#[cfg(unix)]
fn reload_signal() -> Result<Pin<Box<dyn Stream<Item = ()> + Send>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(Box::pin(futures::stream::unfold(
        hangups,
        |mut s| async move { s.recv().await.map(|()| ((), s)) },
    )))
}

/// No SIGHUP here: reload with `liaison admin reload-policy`.
#[cfg(not(unix))]
fn reload_signal() -> Result<Pin<Box<dyn Stream<Item = ()> + Send>>> {
    Ok(Box::pin(futures::stream::pending()))
}

/// `liaison node`.
pub async fn node(a: ServeArgs) -> Result<()> {
    // Logging first (with trace export if the file asks for it), then the
    // parent check, then a configuration error, if any.
    let config = liaison_node::NodeConfig::load(&a.config);
    let (endpoint, service) = match &config {
        Ok(c) => (
            c.telemetry.otlp_endpoint.clone(),
            format!("liaison-node-{}", c.body),
        ),
        Err(_) => (None, String::new()),
    };
    let _traces = start_logs(a.json_logs, endpoint.as_deref(), &service)?;
    exit_with_parent(a.exit_with_parent);
    let config = config?;
    // Its own certificate is checked before it says it is ready: a node
    // given another body's certificate must never announce readiness.
    liaison_pki::TlsMaterial::load(&config.tls)
        .and_then(|m| m.identity_as(liaison_types::Role::Node, Some(&config.body)))
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.tls.cert.display()))?;
    // SIGHUP reloads the TLS files.
    let (listeners, stop, reloads) =
        start_serving(&a, "node", config.listen, config.metrics.as_ref()).await?;
    liaison_node::run_with_reload(config, listeners, stop, reloads).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_node_configuration_keeps_awkward_paths_exactly() {
        let body = liaison_types::BodyId::parse("interpol").unwrap();
        let args = NodeConfigArgs {
            body: "interpol".into(),
            hub: DEV_HUB.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            certs: PathBuf::from("/tmp/certs"),
            data_dir: None,
            out: None,
            force: false,
        };
        let certs = Path::new("/tmp/a \"quoted\" \\ dir\n# not = \"a key\"");
        let files = liaison_pki::TlsFiles::in_dev_dir(certs, "interpol/node");
        let data = Path::new("/tmp/data 'dir'");
        let text = node_config_text(&body, &args, data, &files, certs);
        let config = liaison_node::NodeConfig::parse(Path::new("/etc/node.toml"), &text).unwrap();
        assert_eq!(config.body, "interpol");
        assert_eq!(config.hub, DEV_HUB);
        assert_eq!(config.listen, args.listen);
        assert_eq!(config.data_dir, data);
        assert_eq!(config.tls.ca, files.ca);
        assert_eq!(config.tls.cert, files.cert);
        assert_eq!(config.tls.key, files.key);
        assert_eq!(config.audit.log_key, certs.join("log.vkey"));
        assert_eq!(config.audit.witness_key, certs.join("interpol/witness.key"));
    }
}
