//! `liaison demo`: the whole federation on this machine.
//!
//! Starts the hub and all eleven nodes on loopback (each with its own sled
//! store, real mutual TLS, dev certificates made on first run), submits the
//! realistic messages in `deploy/demo/` from several bodies, prints the
//! routing matrix (message × body: delivered, or withheld and the rule), then
//! checks every inbox against that matrix and verifies the audit log. Any
//! disagreement makes it exit with code 7.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use liaison_federation::{dev_spec, wait_until, Sandbox, SandboxOptions};
use liaison_policy::{Governance, SHIPPED_FEDERATION_SOURCE, SHIPPED_FEDERATION_TOML};
use liaison_proto::v1 as pb;
use prost::Message;
use serde_json::json;

use crate::message::MessageSpec;
use crate::officer::{decisions_json, outcome_name};
use crate::{Failure, Output};

/// The demo's messages: sending body and message file.
pub const DEMO_MESSAGES: &[(&str, &str)] = &[
    (
        "europol",
        include_str!("../../../deploy/demo/01-europol-precursors.toml"),
    ),
    (
        "frontex",
        include_str!("../../../deploy/demo/02-frontex-med-operation.toml"),
    ),
    (
        "aseanapol",
        include_str!("../../../deploy/demo/03-aseanapol-port-ransomware.toml"),
    ),
    (
        "interpol",
        include_str!("../../../deploy/demo/04-interpol-ftf-travel.toml"),
    ),
    (
        "ameripol",
        include_str!("../../../deploy/demo/05-ameripol-container-route.toml"),
    ),
    (
        "gccpol",
        include_str!("../../../deploy/demo/06-gccpol-hawala.toml"),
    ),
    (
        "unodc",
        include_str!("../../../deploy/demo/07-unodc-cocaine-outlook.toml"),
    ),
    (
        "afripol",
        include_str!("../../../deploy/demo/08-afripol-sahel-firearms.toml"),
    ),
    (
        "interpol",
        include_str!("../../../deploy/demo/09-interpol-cyber-fraud.toml"),
    ),
    (
        "europol",
        include_str!("../../../deploy/demo/10-europol-balkan-heroin.toml"),
    ),
    (
        "interpol",
        include_str!("../../../deploy/demo/11-interpol-synthetic-opioids.toml"),
    ),
    (
        "europol",
        include_str!("../../../deploy/demo/12-europol-red-smuggling-network.toml"),
    ),
    (
        "gccpol",
        include_str!("../../../deploy/demo/13-gccpol-embargoed-action-day.toml"),
    ),
    (
        "europol",
        include_str!("../../../deploy/demo/17-europol-med-smuggling-plan.toml"),
    ),
    (
        "aseanapol",
        include_str!("../../../deploy/demo/18-aseanapol-vessel-watch.toml"),
    ),
];

/// Messages routed while AIMC is suspended.
const DEMO_PHASE_SUSPENDED: &[(&str, &str)] = &[
    (
        "aimc",
        include_str!("../../../deploy/demo/14-aimc-while-suspended.toml"),
    ),
    (
        "interpol",
        include_str!("../../../deploy/demo/15-interpol-during-suspension.toml"),
    ),
];

/// The alert sent while the hub is down.
const DEMO_PHASE_OUTAGE: (&str, &str) = (
    "afripol",
    include_str!("../../../deploy/demo/16-afripol-short-lived.toml"),
);

/// How long the demo waits for routing and delivery before calling it a failure.
const SETTLE: Duration = Duration::from_secs(60);

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Certificate directory; a dev PKI is made there on first run.
    #[arg(long, default_value = "certs-dev")]
    pub certs: PathBuf,
    /// Governance file (default: the shipped deploy/federation.toml).
    #[arg(long)]
    pub governance: Option<PathBuf>,
    /// Keep configurations and stores in this new directory (default: a
    /// temporary directory, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// After the checks, keep the federation running until Ctrl-C so that
    /// you can try the CLI against it.
    #[arg(long)]
    pub keep_running: bool,
}

/// One submitted demo message.
#[derive(Debug)]
struct Sent {
    origin: String,
    id: String,
    title: String,
    kind: String,
    classification: String,
    personal_data: bool,
    decisions: Vec<pb::RoutingDecision>,
    unaddressed: Vec<pb::Unaddressed>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs, out: Output) -> Result<()> {
    liaison_telemetry::init("error", liaison_telemetry::Format::Text);
    let (source, text) = match &args.governance {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => (
            SHIPPED_FEDERATION_SOURCE.to_owned(),
            SHIPPED_FEDERATION_TOML.to_owned(),
        ),
    };
    let gov = Governance::from_toml(&source, &text)?;
    if let Some(dir) = &args.dir {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} is not empty; give a new directory so the demo starts from empty stores",
                dir.display()
            );
        }
    }
    let human = out == Output::Human;
    if liaison_pki::ensure_dev_pki(&args.certs, &dev_spec(&gov))? && human {
        say!(
            "made a dev pki for {} bodies in {}",
            gov.bodies().count(),
            args.certs.display()
        );
    }
    let mut opts = SandboxOptions::new(&text);
    opts.certs = Some(args.certs.clone());
    opts.dir = args.dir.clone();
    let mut sandbox = Sandbox::start(opts).await?;
    if human {
        say!("hub (run by {}) on {}", gov.hub_body(), sandbox.hub_url());
        for body in sandbox.running_nodes() {
            let b = gov
                .body(body.as_str())
                .map(|b| (b.name.clone(), b.status.as_str()))
                .unwrap_or_default();
            say!(
                "  node {body:<10} {:<44} {:<8} {}",
                b.0,
                b.1,
                sandbox.node_url(&body)?
            );
        }
        say!("policy version {}", gov.version());
    }

    let result = exercise(&mut sandbox, &gov, human).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = sandbox.shutdown().await;
            return Err(e);
        }
    };
    if out == Output::Json {
        say!("{}", report.json);
    }
    if args.keep_running && report.problems.is_empty() {
        // The commands run this very program, wherever it was built or
        // installed; with --output json they go to standard error, so that
        // standard output stays one JSON document.
        let hints = keep_running_hints(&sandbox, &args)?;
        // Listen before saying "press Ctrl-C".
        let stop = crate::ops::shutdown_signal();
        for line in &hints {
            if human {
                say!("{line}");
            } else {
                eprintln!("{}", liaison_types::text::escape_text(line));
            }
        }
        stop.await;
    }
    sandbox.shutdown().await?;
    if report.problems.is_empty() {
        if human {
            say!("\nall checks passed: every inbox matches the routing matrix and the audit log verifies");
        }
        Ok(())
    } else {
        for p in &report.problems {
            eprintln!("disagreement: {p}");
        }
        Err(Failure::check(format!(
            "{} disagreement(s) between routing, inboxes and audit",
            report.problems.len()
        ))
        .into())
    }
}

/// What to try against the federation left running: commands that invoke
/// the running executable.
fn keep_running_hints(sandbox: &Sandbox, args: &DemoArgs) -> Result<Vec<String>> {
    let me = crate::this_program();
    let certs = crate::shell_word(&args.certs.display().to_string());
    Ok(vec![
        String::new(),
        "the federation keeps running; try for example:".to_owned(),
        format!(
            "  {me} inbox --server {} --certs {certs} --as interpol/officer-alice",
            sandbox.node_url("interpol")?
        ),
        format!(
            "  {me} audit verify --server {} --certs {certs} --as interpol/oversight-ccf",
            sandbox.hub_url()
        ),
        "press Ctrl-C to stop".to_owned(),
    ])
}

struct Report {
    problems: Vec<String>,
    json: serde_json::Value,
}

async fn exercise(sandbox: &mut Sandbox, gov: &Governance, human: bool) -> Result<Report> {
    let bodies: Vec<String> = gov.bodies().map(|b| b.id.to_string()).collect();
    let mut problems = Vec::new();

    // 1. An officer asks before sending.
    let (explain_body, explain_text) = DEMO_MESSAGES[4];
    let (labels, body) = toml::from_str::<MessageSpec>(explain_text)?.to_request()?;
    let explained = sandbox
        .officer(explain_body, "alice")
        .await?
        .explain(pb::OfficerExplainRequest {
            labels: Some(labels),
            body: Some(body.clone()),
        })
        .await
        .map_err(|s| Failure::status("explain", &s))?
        .into_inner();
    if human {
        say!(
            "\n== {explain_body} officer asks who would receive \"{}\" (nothing is sent)",
            body.title
        );
        crate::officer::print_decisions(&explained.decisions)?;
    }

    // 2. Officers of several bodies submit, and the hub routes each.
    let mut sent = Vec::new();
    for (origin, text) in DEMO_MESSAGES {
        sent.push(submit_demo(sandbox, origin, text).await?);
    }
    for s in &mut sent {
        wait_routed(sandbox, s, &mut problems).await?;
    }

    // 3. Plans are deconflicted: Europol's and Frontex's overlap on one
    //    route and may see each other (full notices); AMERIPOL's and
    //    ASEANAPOL's share only a vessel and may not (blind notices).
    let notices = deconfliction(sandbox, &sent, &mut problems, human).await?;

    // 4. The federation changes its rules without a restart: AIMC is
    //    suspended (hot reload by an INTERPOL admin). What AIMC sends is
    //    delivered to nobody (origin.state); AIMC receives nothing new
    //    (peer.state).
    let notes = governance_change(
        sandbox,
        gov,
        text_of(sandbox)?,
        &mut sent,
        &mut problems,
        human,
    )
    .await?;
    if human {
        print_matrix(&sent, &bodies)?;
        for n in &notes {
            say!("  note: {n}");
        }
    }

    // 5. A node that claims another body's identity is refused and audited.
    let spoof = spoof_attempt(sandbox).await?;
    if human {
        say!("\n== the europol node submits a message naming frontex as origin");
        say!("   hub answered {:?}: {}", spoof.code(), spoof.message());
    }
    if spoof.code() != tonic::Code::PermissionDenied {
        problems.push(format!(
            "a spoofed origin was answered {:?}, not PermissionDenied",
            spoof.code()
        ));
    }

    // 6. Every inbox must hold exactly what the matrix delivered to it.
    let mut expected: BTreeMap<&str, BTreeSet<String>> = bodies
        .iter()
        .map(|b| (b.as_str(), BTreeSet::new()))
        .collect();
    for s in &sent {
        for d in &s.decisions {
            if d.outcome == pb::Outcome::Deliver as i32 {
                expected
                    .entry(d.recipient.as_str())
                    .or_default()
                    .insert(s.id.clone());
            }
        }
    }
    let mut markings = Vec::new();
    for (body, want) in &expected {
        let client = sandbox.officer(body, "bob").await?;
        let want = want.clone();
        let got = wait_until(&format!("{body}'s inbox fills"), SETTLE, || {
            let mut client = client.clone();
            let want = want.clone();
            async move {
                let list = client
                    .list_inbox(pb::ListInboxRequest {
                        unread_only: false,
                        limit: 1000,
                    })
                    .await
                    .ok()?
                    .into_inner();
                // Wait until everything expected arrived; anything extra is
                // then caught below.
                let ids: BTreeSet<String> =
                    list.entries.iter().map(|e| e.message_id.clone()).collect();
                want.is_subset(&ids).then_some(list.entries)
            }
        })
        .await?;
        let ids: BTreeSet<String> = got.iter().map(|e| e.message_id.clone()).collect();
        for extra in ids.difference(&want) {
            problems.push(format!(
                "{body}'s inbox holds {extra}, which the hub withheld from it"
            ));
        }
        if let Some(first) = got.first() {
            markings.push((body.to_string(), first.marking.clone(), first.title.clone()));
        }
    }
    if human {
        say!("\n== inboxes: every body holds exactly what the matrix delivered to it");
        for (body, want) in &expected {
            say!("   {body:<10} {} message(s)", want.len());
        }
        say!("\n== each reader sees the classification in its own marking scheme");
        for (body, marking, title) in markings.iter().take(6) {
            say!("   {body:<10} \"{marking}\"  {title}");
        }
    }

    // 7. An officer reads and acknowledges a message.
    if let Some(id) = expected.get("interpol").and_then(|s| s.iter().next()) {
        let ack = sandbox
            .officer("interpol", "bob")
            .await?
            .acknowledge(pb::OfficerAcknowledgeRequest {
                message_id: id.clone(),
            })
            .await
            .map_err(|s| Failure::status("ack", &s))?
            .into_inner();
        if human {
            say!(
                "\n== interpol officer acknowledges {id}: read by {}",
                ack.read_by
            );
        }
    }

    // 8. The oversight auditor verifies the log, here and on the hub.
    let mut auditor = sandbox.oversight().await?;
    // One record per decision, and one per rule for the bodies a message
    // did not address.
    let expected_routed: usize = sent
        .iter()
        .map(|s| s.decisions.len() + s.unaddressed.len())
        .sum();
    let delivered_total: usize = expected.values().map(BTreeSet::len).sum();
    let records = wait_until(
        "every delivery is acknowledged in the audit log",
        SETTLE,
        || {
            let mut auditor = auditor.clone();
            async move {
                let records = collect_audit(&mut auditor).await.ok()?;
                let acks: usize = records
                    .iter()
                    .filter(|r| r.event == "acknowledged")
                    .map(|r| liaison_types::audit::messages(r).count())
                    .sum();
                (acks >= delivered_total).then_some(records)
            }
        },
    )
    .await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut whole = crate::audit::WholeLog::default();
    for r in &records {
        whole.push(r);
        *counts.entry(r.event.clone()).or_default() += 1;
    }
    // The checkpoint of exactly the records listed, checked with the log's
    // public key: the root recomputed here from every leaf must be its root.
    let log_key = std::fs::read_to_string(sandbox.certs().join(liaison_pki::LOG_VKEY_FILE))
        .context("reading the log's verifier key")?;
    let log_key =
        liaison_tlog::LogVerifier::from_text(&log_key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let note = auditor
        .get_checkpoint(pb::CheckpointRequest {
            tree_size: records.len() as u64,
            witnessed: false,
        })
        .await
        .map_err(|s| Failure::status("audit checkpoint", &s))?
        .into_inner()
        .note;
    let signed = log_key
        .verify(&note)
        .map_err(|e| anyhow::anyhow!("the checkpoint: {e}"))?;
    let root = hex::encode(signed.checkpoint.root.0);
    let local = whole.finish(&signed.checkpoint);
    let hub = auditor
        .verify(pb::VerifyRequest {})
        .await
        .map_err(|s| Failure::status("audit verify", &s))?
        .into_inner();
    if local.is_err() || !hub.ok || (hub.records == records.len() as u64 && hub.head_hash != root) {
        problems.push(format!(
            "audit log: here {:?} root {root}, hub ok={} root {} ({})",
            local.as_ref().err(),
            hub.ok,
            hub.head_hash,
            hub.error
        ));
    }
    let routed = counts.get("routed").copied().unwrap_or(0);
    if routed != expected_routed {
        problems.push(format!(
            "audit holds {routed} routing decisions, the matrix {expected_routed}"
        ));
    }
    if counts.get("refused").copied().unwrap_or(0) != 1 {
        problems.push("audit does not hold exactly one refusal for the spoofed origin".into());
    }
    let withheld_rules: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.decision == "withhold")
        .map(|r| r.rule.as_str())
        .collect();
    // The demo exists to show every rule at work: say so if one never decided.
    for rule in liaison_policy::Rule::ALL {
        if rule != liaison_policy::Rule::AllRulesPassed && !withheld_rules.contains(rule.as_str()) {
            problems.push(format!("rule {rule} never decided in the demo"));
        }
    }
    if human {
        say!(
            "\n== audit: {} records, every leaf hashed here and the root checked against the signed checkpoint ({}), and on the hub: root {root}",
            records.len(),
            signed.checkpoint.origin
        );
        for (event, n) in &counts {
            say!("   {event:<13} {n}");
        }
        say!(
            "   rules that withheld: {}",
            withheld_rules
                .iter()
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let json = json!({
        "hub": sandbox.hub_url(),
        "policy_version": gov.version(),
        "messages": sent.iter().map(|s| json!({
            "message_id": s.id, "origin": s.origin, "title": s.title, "kind": s.kind,
            "classification": s.classification, "personal_data": s.personal_data,
            "decisions": decisions_json(&s.decisions),
            "unaddressed": crate::officer::unaddressed_json(&s.unaddressed),
        })).collect::<Vec<_>>(),
        "deconfliction": notices,
        "audit": {"records": records.len(), "root": root, "checkpoint": String::from_utf8_lossy(&note), "events": counts, "ok": local.is_ok() && hub.ok},
        "problems": problems,
    });
    Ok(Report { problems, json })
}

/// The demo's plan pairs: (body, title) of each side, and whether the
/// notices must be blind.
const OVERLAPS: [(&str, &str, &str, &str, bool); 2] = [
    (
        "frontex",
        "Joint operation: Central Mediterranean smuggling networks",
        "europol",
        "Action days: smuggling networks on the Central Mediterranean route",
        false,
    ),
    (
        "ameripol",
        "Container route: cocaine concealed in fruit shipments",
        "aseanapol",
        "Vessel watch: bulk carrier on the Pacific route",
        true,
    ),
];

/// Waits for each demo overlap's notices on both sides and shows them.
async fn deconfliction(
    sandbox: &Sandbox,
    sent: &[Sent],
    problems: &mut Vec<String>,
    human: bool,
) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    if human {
        say!("\n== plans are deconflicted: each originator gets a notice over its delivery stream");
    }
    for (a, a_title, b, b_title, blind) in OVERLAPS {
        let plan_of = |body: &str, title: &str| {
            sent.iter()
                .find(|s| s.origin == body && s.title == title)
                .map(|s| s.id.clone())
        };
        let (Some(a_plan), Some(b_plan)) = (plan_of(a, a_title), plan_of(b, b_title)) else {
            problems.push(format!("the demo did not send the plans of {a} and {b}"));
            continue;
        };
        let mut seen = Vec::new();
        for (body, plan) in [(a, &a_plan), (b, &b_plan)] {
            let officer = sandbox.officer(body, "alice").await?;
            let got = wait_until(&format!("{body}'s plan gets its notice"), SETTLE, || {
                let mut officer = officer.clone();
                async move {
                    officer
                        .list_plans(pb::ListPlansRequest { all: false })
                        .await
                        .ok()?
                        .into_inner()
                        .plans
                        .into_iter()
                        .find(|p| &p.plan_id == plan)
                        .and_then(|p| p.notices.into_iter().next())
                }
            })
            .await;
            match got {
                Ok(n) => seen.push((body, n)),
                Err(e) => problems.push(format!("{body}'s plan {plan}: {e}")),
            }
        }
        for (body, entry) in &seen {
            let n = entry.notice.clone().unwrap_or_default();
            out.push(json!({
                "body": body, "reference": n.reference, "plan_id": n.plan_id, "blind": n.blind,
                "other_body": n.other_body, "other_plan_id": n.other_plan_id,
                "overlap_from": if n.blind { json!(null) } else { json!(crate::message::format_time(n.overlap_start_ms)) },
                "overlap_until": if n.blind { json!(null) } else { json!(crate::message::format_time(n.overlap_end_ms)) },
                "regions": n.regions, "countries": n.countries, "crime_areas": n.crime_areas,
                "target_kinds": n.target_kinds, "contact": n.contact,
            }));
            if n.blind != blind {
                problems.push(format!(
                    "{body}'s notice {} is {}, not {}",
                    n.reference,
                    if n.blind { "blind" } else { "full" },
                    if blind { "blind" } else { "full" }
                ));
            }
            if n.blind && (!n.other_body.is_empty() || n.overlap_end_ms != 0) {
                problems.push(format!(
                    "{body}'s blind notice {} reveals the other plan",
                    n.reference
                ));
            }
            if human {
                if n.blind {
                    say!("   {body:<10} blind notice {}: {}", n.reference, n.contact);
                } else {
                    say!(
                        "   {body:<10} full notice {}: {} plan \"{}\", {} to {}, places {}, crime areas {}, target kinds {}; contact {}",
                        n.reference,
                        n.other_body,
                        n.other_title,
                        crate::message::format_time(n.overlap_start_ms),
                        crate::message::format_time(n.overlap_end_ms),
                        n.regions.iter().chain(&n.countries).cloned().collect::<Vec<_>>().join(", "),
                        n.crime_areas.join(", "),
                        if n.target_kinds.is_empty() { "none".to_owned() } else { n.target_kinds.join(", ") },
                        n.contact
                    );
                }
            }
        }
    }
    Ok(out)
}

async fn collect_audit(
    auditor: &mut pb::audit_client::AuditClient<tonic::transport::Channel>,
) -> Result<Vec<pb::AuditRecord>, tonic::Status> {
    let mut stream = auditor.list(pb::AuditQuery::default()).await?.into_inner();
    let mut records = Vec::new();
    while let Some(r) = stream.next().await {
        records.push(r?);
    }
    Ok(records)
}

/// The europol node's certificate, submitting as frontex.
async fn spoof_attempt(sandbox: &Sandbox) -> Result<tonic::Status> {
    let (mut labels, body) = toml::from_str::<MessageSpec>(DEMO_MESSAGES[1].1)?.to_request()?;
    labels.origin = "frontex".into();
    labels.message_id = liaison_types::new_message_id();
    labels.created_at_ms = liaison_types::now_ms();
    let result = sandbox
        .hub_as("europol/node")
        .await?
        .submit(pb::SubmitRequest {
            targets: Vec::new(),
            envelope: Some(pb::Envelope {
                labels: Some(labels),
                body: body.encode_to_vec(),
            }),
            approved_by: String::new(),
            traceparent: String::new(),
        })
        .await;
    Ok(match result {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(s) => s,
    })
}

/// Submits one demo message through its body's officer.
async fn submit_demo(sandbox: &Sandbox, origin: &str, text: &str) -> Result<Sent> {
    let spec: MessageSpec =
        toml::from_str(text).with_context(|| format!("demo message from {origin}"))?;
    let (labels, body) = spec.to_request()?;
    let resp = sandbox
        .officer(origin, "alice")
        .await?
        .submit(pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: spec.plan_targets()?,
            labels: Some(labels.clone()),
            body: Some(body.clone()),
        })
        .await
        .map_err(|s| Failure::status(&format!("submit from {origin}"), &s))?
        .into_inner();
    Ok(Sent {
        origin: origin.to_owned(),
        id: resp.message_id,
        title: body.title,
        kind: spec.kind.clone().unwrap_or_default(),
        classification: spec.classification.clone().unwrap_or_default(),
        personal_data: labels.personal_data,
        decisions: Vec::new(),
        unaddressed: Vec::new(),
    })
}

/// Waits until the origin's outbox says the hub routed the message, and
/// records the decisions.
async fn wait_routed(sandbox: &Sandbox, s: &mut Sent, problems: &mut Vec<String>) -> Result<()> {
    let entry = sandbox.settled(&s.origin, &s.id, SETTLE).await?;
    if entry.status != "routed" {
        problems.push(format!(
            "{} was {}: {}",
            s.id, entry.status, entry.last_error
        ));
    }
    s.decisions = entry.decisions;
    s.unaddressed = entry.unaddressed;
    Ok(())
}

/// The governance text the sandbox's hub reads.
fn text_of(sandbox: &Sandbox) -> Result<String> {
    let path = sandbox.dir().join("governance.toml");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// `text` with body `id`'s state set to `state`.
fn with_state(text: &str, id: &str, state: &str) -> Result<String> {
    let start = text
        .find(&format!("id = \"{id}\""))
        .with_context(|| format!("no body {id} in the governance"))?;
    let rel = text[start..]
        .find("state = \"active\"")
        .with_context(|| format!("body {id} has no explicit state"))?;
    let at = start + rel;
    Ok(format!(
        "{}state = \"{state}\"{}",
        &text[..at],
        &text[at + "state = \"active\"".len()..]
    ))
}

/// Reloads the hub's governance from `text` as INTERPOL's admin.
async fn reload(sandbox: &Sandbox, hub_body: &str, text: &str) -> Result<pb::ReloadPolicyResponse> {
    std::fs::write(sandbox.dir().join("governance.toml"), text)?;
    Ok(sandbox
        .admin(hub_body)
        .await?
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .map_err(|s| Failure::status("reload", &s))?
        .into_inner())
}

/// Suspends AIMC by a hot reload, routes a message from it and one that
/// would reach it, takes the hub down while a short-lived alert is sent,
/// then restores everything. Returns notes for the matrix.
async fn governance_change(
    sandbox: &mut Sandbox,
    gov: &Governance,
    original: String,
    sent: &mut Vec<Sent>,
    problems: &mut Vec<String>,
    human: bool,
) -> Result<Vec<String>> {
    let hub_body = gov.hub_body().to_string();
    let first = sent.len() + 1;
    let r = reload(
        sandbox,
        &hub_body,
        &with_state(&original, "aimc", "suspended")?,
    )
    .await?;
    if human {
        say!("\n== an INTERPOL admin suspends AIMC by reloading the rules (no restart): version {} -> {}", r.previous_version, r.version);
    }
    for (origin, text) in DEMO_PHASE_SUSPENDED {
        let mut s = submit_demo(sandbox, origin, text).await?;
        wait_routed(sandbox, &mut s, problems).await?;
        sent.push(s);
    }
    let r = reload(sandbox, &hub_body, &original).await?;
    if human {
        say!("== AIMC reinstated: version {}", r.version);
        say!("== the hub goes down; an AFRIPOL officer sends a one-second alert meanwhile");
    }
    sandbox.stop_hub().await?;
    let mut s = submit_demo(sandbox, DEMO_PHASE_OUTAGE.0, DEMO_PHASE_OUTAGE.1).await?;
    let sent_at = liaison_types::now_ms();
    wait_until("the short-lived alert expires", SETTLE, || async {
        (liaison_types::now_ms() > sent_at + 1_100).then_some(())
    })
    .await?;
    sandbox.start_hub().await?;
    sandbox.wait_ready().await?;
    wait_routed(sandbox, &mut s, problems).await?;
    if human {
        say!("== the hub is back; the node pushed its outbox and the hub routed it (expired)");
    }
    sent.push(s);
    Ok(vec![
        format!(
            "#{first} and #{} were routed while AIMC was suspended",
            first + 1
        ),
        format!(
            "#{} was sent while the hub was down and expired before it came back",
            first + 2
        ),
    ])
}

fn print_matrix(sent: &[Sent], bodies: &[String]) -> Result<()> {
    use std::fmt::Write as _;
    let mut legend: BTreeMap<String, char> = BTreeMap::new();
    let letters = "abcdefghijklmnopqrstuvwxyz";
    say!("\n== routing matrix (✓ delivered, · originator, a letter: withheld by the rule in the legend)");
    let mut header = format!("{:<4}{:<11}{:<18}{:<13}", "#", "from", "kind", "class");
    for b in bodies {
        let _ = write!(header, "{:<10}", b.chars().take(9).collect::<String>());
    }
    say!("{header}");
    for (i, s) in sent.iter().enumerate() {
        let mut row = format!(
            "{:<4}{:<11}{:<18}{:<13}",
            i + 1,
            s.origin,
            s.kind,
            s.classification
        );
        for b in bodies {
            let cell = match s.decisions.iter().find(|d| &d.recipient == b) {
                None if *b == s.origin => "·".to_owned(),
                // Not listed: a body the message did not address, counted
                // under its one addressing rule.
                None => match s.unaddressed.as_slice() {
                    [u] => {
                        let n = legend.len();
                        legend
                            .entry(u.rule.clone())
                            .or_insert_with(|| letters.chars().nth(n).unwrap_or('?'))
                            .to_string()
                    }
                    _ => "?".to_owned(),
                },
                Some(d) if outcome_name(d.outcome) == "deliver" => "✓".to_owned(),
                Some(d) => {
                    let n = legend.len();
                    legend
                        .entry(d.rule.clone())
                        .or_insert_with(|| letters.chars().nth(n).unwrap_or('?'))
                        .to_string()
                }
            };
            let _ = write!(row, "{cell:<10}");
        }
        say!("{row}");
    }
    say!("\nlegend:");
    let mut by_letter: Vec<(char, &String)> = legend.iter().map(|(r, c)| (*c, r)).collect();
    by_letter.sort();
    for (c, rule) in by_letter {
        say!("  {c}  {rule}");
    }
    say!("\nwhy (every withheld delivery, with its rule):");
    for (i, s) in sent.iter().enumerate() {
        let pd = if s.personal_data {
            ", personal data"
        } else {
            ""
        };
        say!("  #{} {} ({}{pd})", i + 1, s.title, s.classification);
        for d in &s.decisions {
            if outcome_name(d.outcome) != "deliver" {
                say!("      {:<10} {}: {}", d.recipient, d.rule, &d.reason);
            }
        }
        for u in &s.unaddressed {
            say!("      {:<10} {}: {}", "others", u.rule, &u.reason);
        }
    }
    Ok(())
}
