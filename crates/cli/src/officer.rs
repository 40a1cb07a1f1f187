//! Officer commands, against the officer's own node.

use std::path::PathBuf;

use anyhow::Result;
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_types::{Classification, HandlingCode, Kind, Priority, Role, Tlp};
use serde_json::json;
use tonic::transport::Channel;

use crate::message::{format_time, read_file, MessageSpec};
use crate::{Connection, Failure, Output};

/// Arguments of `submit` and `explain`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// A message file (TOML, or JSON if it ends in .json); flags override its fields.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// The message, from flags.
    #[command(flatten)]
    pub message: MessageSpec,
}

/// Arguments of `outbox`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// Arguments of `inbox`.
#[derive(Debug, clap::Args)]
pub struct InboxArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// Only messages nobody has acknowledged.
    #[arg(long)]
    pub unread: bool,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// Arguments of `retract`.
#[derive(Debug, clap::Args)]
pub struct RetractArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The message id (from your outbox).
    pub message_id: String,
    /// Why, for the recipients and the audit log (no sensitive detail).
    #[arg(long)]
    pub reason: String,
}

/// Arguments naming one message.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The message id.
    pub message_id: String,
}

/// Connects to the node named by `conn` as an officer.
pub async fn client(conn: &Connection) -> Result<OfficerClient<Channel>> {
    let material = conn.material()?;
    let me = material.identity()?;
    let channel =
        liaison_pki::connect(&conn.server, &material, Some(Role::Node), &me.federation).await?;
    Ok(OfficerClient::new(channel))
}

/// An officer's message: labels, body, targets in clear, and whether to
/// drop the plan's targets.
type Message = (pb::Labels, pb::Body, Vec<pb::PlanTarget>, bool);

fn message(args: &SubmitArgs) -> Result<Message> {
    let spec = match &args.file {
        Some(f) => args.message.clone().overlay(read_file(f)?),
        None => args.message.clone(),
    };
    let bad = |e: anyhow::Error| -> anyhow::Error {
        Failure {
            code: 2,
            message: e.to_string(),
        }
        .into()
    };
    let (labels, body) = spec.to_request().map_err(bad)?;
    Ok((
        labels,
        body,
        spec.plan_targets().map_err(bad)?,
        spec.clear_targets,
    ))
}

pub(crate) fn decisions_json(d: &[pb::RoutingDecision]) -> serde_json::Value {
    d.iter()
        .map(|d| {
            json!({
                "recipient": d.recipient,
                "outcome": outcome_name(d.outcome),
                "rule": d.rule,
                "reason": d.reason,
            })
        })
        .collect()
}

pub(crate) fn unaddressed_json(u: &[pb::Unaddressed]) -> serde_json::Value {
    u.iter()
        .map(|u| json!({"bodies": u.bodies, "outcome": "withhold", "rule": u.rule, "reason": u.reason}))
        .collect()
}

pub(crate) fn outcome_name(o: i32) -> &'static str {
    if o == pb::Outcome::Deliver as i32 {
        "deliver"
    } else {
        "withhold"
    }
}

pub(crate) fn print_decisions(d: &[pb::RoutingDecision]) -> Result<()> {
    say!("{:<10} {:<9} {:<28} REASON", "RECIPIENT", "OUTCOME", "RULE");
    for d in d {
        say!(
            "{:<10} {:<9} {:<28} {}",
            d.recipient,
            outcome_name(d.outcome),
            d.rule,
            &d.reason
        );
    }
    Ok(())
}

fn tlp_name(t: i32) -> String {
    match Tlp::from_proto(t) {
        Ok(Some(t)) => t.to_string(),
        _ => String::new(),
    }
}

fn handling_name(h: i32) -> String {
    match HandlingCode::from_proto(h) {
        Ok(Some(h)) => format!("{h} ({})", h.meaning()),
        _ => String::new(),
    }
}

pub(crate) fn kind_name(k: i32) -> &'static str {
    Kind::from_proto(k).map_or("?", Kind::as_str)
}

pub(crate) fn class_name(c: i32) -> &'static str {
    Classification::from_proto(c).map_or("?", Classification::as_str)
}

fn priority_name(p: i32) -> &'static str {
    Priority::from_proto(p).map_or("?", Priority::as_str)
}

/// `liaison submit`.
pub async fn submit(args: SubmitArgs, out: Output) -> Result<()> {
    let (labels, body, targets, clear_targets) = message(&args)?;
    let mut node = client(&args.conn).await?;
    let resp = node
        .submit(pb::OfficerSubmitRequest {
            targets,
            labels: Some(labels),
            body: Some(body),
            clear_targets,
        })
        .await
        .map_err(|s| Failure::status("submit refused", &s))?
        .into_inner();
    // A node from before four-eyes release does not say; it queued it.
    let status = if resp.status.is_empty() {
        "queued"
    } else {
        resp.status.as_str()
    };
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "message_id": resp.message_id, "duplicate": resp.duplicate, "status": status,
                "approval_reason": resp.approval_reason,
            })
        ),
        Output::Human => {
            let note = if resp.duplicate {
                " (already submitted; nothing new sent)"
            } else {
                ""
            };
            if status == "awaiting_approval" {
                say!(
                    "{} is awaiting approval by a second officer{note}; nothing is sent until then",
                    resp.message_id
                );
                say!("  why: {}", resp.approval_reason);
                say!(
                    "an approver of your body releases it with: liaison approve {}",
                    resp.message_id
                );
            } else if status == "queued" {
                say!("queued {}{note}", resp.message_id);
                say!("see how the hub routed it with: liaison outbox");
            } else {
                say!("{} is {status}{note}", resp.message_id);
                say!("see what became of it with: liaison outbox");
            }
        }
    }
    Ok(())
}

/// `liaison explain`.
pub async fn explain(args: SubmitArgs, out: Output) -> Result<()> {
    let (labels, body, _, _) = message(&args)?;
    let mut node = client(&args.conn).await?;
    let resp = node
        .explain(pb::OfficerExplainRequest {
            labels: Some(labels),
            body: Some(body),
        })
        .await
        .map_err(|s| Failure::status("explain refused", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({"policy_version": resp.policy_version, "approval_needed": resp.approval_needed, "decisions": decisions_json(&resp.decisions)})
        ),
        Output::Human => {
            say!("policy version {}", resp.policy_version);
            if !resp.approval_needed.is_empty() {
                say!(
                    "your node holds it for a second officer's approval first: {}",
                    resp.approval_needed
                );
            }
            print_decisions(&resp.decisions)?;
        }
    }
    Ok(())
}

/// `liaison outbox`.
pub async fn outbox(args: ListArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let resp = node
        .list_outbox(pb::ListOutboxRequest { limit: args.limit })
        .await
        .map_err(|s| Failure::status("outbox", &s))?
        .into_inner();
    match out {
        Output::Json => {
            for e in &resp.entries {
                say!(
                    "{}",
                    json!({
                        "message_id": e.message_id, "title": e.title, "kind": kind_name(e.kind),
                        "classification": class_name(e.classification), "status": e.status,
                        "submitted_by": e.submitted_by, "submitted_at": format_time(e.submitted_at_ms),
                        "attempts": e.attempts, "last_error": e.last_error,
                        "policy_version": e.policy_version, "decisions": decisions_json(&e.decisions),
                        "unaddressed": unaddressed_json(&e.unaddressed),
                        "approval_reason": e.approval_reason, "approved_by": e.approved_by,
                        "approved_at": format_time(e.approved_at_ms), "refused_by": e.refused_by,
                        "refused_at": format_time(e.refused_at_ms), "refusal_reason": e.refusal_reason,
                        "received_by": e.received_by.iter().map(|r| json!({"body": r.body, "at": format_time(r.at_ms)})).collect::<Vec<_>>(),
                        "quarantined_by": e.quarantined_by.iter().map(|r| json!({"body": r.body, "at": format_time(r.at_ms), "reason": r.reason})).collect::<Vec<_>>(),
                    })
                );
            }
        }
        Output::Human => {
            for e in &resp.entries {
                let delivered: Vec<&str> = e
                    .decisions
                    .iter()
                    .filter(|d| d.outcome == pb::Outcome::Deliver as i32)
                    .map(|d| d.recipient.as_str())
                    .collect();
                say!(
                    "{}  {:<17} {:<17} {:<12} {}",
                    e.message_id,
                    e.status,
                    kind_name(e.kind),
                    class_name(e.classification),
                    crate::one_line(&e.title)
                );
                match e.status.as_str() {
                    "awaiting_approval" => say!(
                        "    awaiting approval by a second officer (not sent): {}",
                        e.approval_reason
                    ),
                    "refused" => say!(
                        "    refused by {} at {} (never sent): {}",
                        e.refused_by,
                        format_time(e.refused_at_ms),
                        e.refusal_reason
                    ),
                    _ if !e.approved_by.is_empty() => say!(
                        "    four-eyes: approved by {} at {}",
                        e.approved_by,
                        format_time(e.approved_at_ms)
                    ),
                    _ => {}
                }
                match e.status.as_str() {
                    "routed" if delivered.is_empty() => {
                        say!("    routed to nobody: every body's rules withhold it")
                    }
                    "routed" => {
                        // Routed to a body is only queued at the hub until
                        // that body's node takes it (a receipt comes back).
                        let received: Vec<&str> =
                            e.received_by.iter().map(|r| r.body.as_str()).collect();
                        let quarantined: Vec<&str> =
                            e.quarantined_by.iter().map(|r| r.body.as_str()).collect();
                        let queued: Vec<&str> = delivered
                            .iter()
                            .copied()
                            .filter(|b| !received.contains(b) && !quarantined.contains(b))
                            .collect();
                        if !received.is_empty() {
                            say!("    received by the nodes of: {}", received.join(", "));
                        }
                        if !queued.is_empty() {
                            say!(
                                "    queued at the hub for: {} (their nodes have not taken it yet)",
                                queued.join(", ")
                            );
                        }
                        for u in &e.unaddressed {
                            say!("    not addressed: {} ({})", u.reason, u.rule);
                        }
                        for q in &e.quarantined_by {
                            say!(
                                "    quarantined by {}'s node at {} (not delivered): {}",
                                q.body,
                                format_time(q.at_ms),
                                crate::one_line(&q.reason)
                            );
                        }
                    }
                    "rejected" => say!("    rejected: {}", &e.last_error),
                    "retracted" | "withdrawn" => say!("    {}", &e.last_error),
                    _ if !e.last_error.is_empty() => {
                        say!("    {} attempts; last error: {}", e.attempts, &e.last_error)
                    }
                    _ => {}
                }
            }
            if resp.entries.is_empty() {
                say!("outbox is empty");
            }
        }
    }
    Ok(())
}

fn summary_json(s: &pb::InboxSummary) -> serde_json::Value {
    json!({
        "message_id": s.message_id, "origin": s.origin, "kind": kind_name(s.kind),
        "classification": class_name(s.classification), "marking": s.marking,
        "priority": priority_name(s.priority), "title": s.title,
        "received_at": format_time(s.received_at_ms), "read": s.read,
        "withdrawn": s.withdrawn, "withdrawn_reason": s.withdrawn_reason,
    })
}

/// `liaison inbox`.
pub async fn inbox(args: InboxArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let resp = node
        .list_inbox(pb::ListInboxRequest {
            unread_only: args.unread,
            limit: args.limit,
        })
        .await
        .map_err(|s| Failure::status("inbox", &s))?
        .into_inner();
    match out {
        Output::Json => {
            for s in &resp.entries {
                say!("{}", summary_json(s));
            }
        }
        Output::Human => {
            for s in &resp.entries {
                say!(
                    "{} {}  {:<9} {:<17} {:<9} {:<30} {}",
                    if !s.withdrawn.is_empty() {
                        "x"
                    } else if s.read {
                        " "
                    } else {
                        "*"
                    },
                    s.message_id,
                    s.origin,
                    kind_name(s.kind),
                    priority_name(s.priority),
                    crate::one_line(&s.marking),
                    crate::one_line(&s.title)
                );
            }
            if resp.entries.is_empty() {
                if args.unread {
                    say!("{}", nothing_unread(&mut node).await?);
                } else {
                    say!("inbox is empty");
                }
            }
        }
    }
    Ok(())
}

/// What `inbox --unread` says when it lists nothing: whether the inbox is
/// empty, or how many messages in it have been read.
async fn nothing_unread(node: &mut OfficerClient<Channel>) -> Result<String> {
    // The node lists at most this many entries in one answer.
    const MOST: u32 = 1000;
    let all = node
        .list_inbox(pb::ListInboxRequest {
            unread_only: false,
            limit: MOST,
        })
        .await
        .map_err(|s| Failure::status("inbox", &s))?
        .into_inner();
    let read = all.entries.iter().filter(|s| s.read).count();
    Ok(match read {
        0 if all.entries.is_empty() => "inbox is empty".to_owned(),
        n if all.entries.len() == MOST as usize => {
            format!("no unread messages (at least {n} read)")
        }
        n => format!("no unread messages ({n} read)"),
    })
}

/// `liaison show`.
pub async fn show(args: IdArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let m = node
        .show(pb::ShowRequest {
            message_id: args.message_id.clone(),
        })
        .await
        .map_err(|s| Failure::status("show", &s))?
        .into_inner();
    let s = m.summary.clone().unwrap_or_default();
    let l = m.labels.clone().unwrap_or_default();
    let body = m.body.clone().unwrap_or_default();
    let content = match &body.content {
        Some(pb::body::Content::ThreatAssessment(t)) => {
            json!({"summary": t.summary, "assessment": t.assessment, "horizon": t.horizon})
        }
        Some(pb::body::Content::OperationalPlan(p)) => json!({
            "summary": p.summary, "window_start": format_time(p.window_start_ms), "window_end": format_time(p.window_end_ms),
            "lead_body": p.lead_body, "regions": p.regions, "crime_areas": p.crime_areas, "target_ids": p.target_ids,
        }),
        Some(pb::body::Content::StrategicPlan(p)) => json!({
            "summary": p.summary, "cycle": p.cycle, "window_start": format_time(p.window_start_ms),
            "window_end": format_time(p.window_end_ms),
        }),
        Some(pb::body::Content::Alert(a)) => {
            json!({"text": a.text, "indicators": a.indicators, "ack_requested": a.ack_requested})
        }
        None => json!(null),
    };
    match out {
        Output::Json => {
            let mut v = summary_json(&s);
            v["crime_areas"] = json!(l.crime_areas);
            v["regions"] = json!(l.regions);
            v["countries"] = json!(l.countries);
            v["personal_data"] = json!(l.personal_data);
            v["third_party_release"] = json!(l.third_party_release);
            v["tlp"] = json!(tlp_name(l.tlp));
            v["handling_code"] = json!(handling_name(l.handling_code));
            v["handling_restriction"] = json!(l.handling_restriction);
            v["grading"] = json!(l.grading);
            v["embargo_until"] = json!(format_time(l.not_before_ms));
            v["working_groups"] = json!(l.working_groups);
            v["expires_at"] = json!(format_time(l.expires_at_ms));
            v["read_by"] = json!(m.read_by);
            v["body"] = content;
            say!("{v}");
        }
        Output::Human => {
            say!("{}", s.marking);
            say!(
                "{}",
                if body.title.is_empty() {
                    &s.title
                } else {
                    &body.title
                }
            );
            if !s.withdrawn.is_empty() {
                say!(
                    "  WITHDRAWN ({}): {} — its content has been erased",
                    s.withdrawn,
                    &s.withdrawn_reason
                );
            }
            say!("  id:             {}", s.message_id);
            say!("  from:           {}", s.origin);
            say!(
                "  kind:           {}   priority: {}",
                kind_name(s.kind),
                priority_name(s.priority)
            );
            say!(
                "  classification: {} (common scale {})",
                s.marking,
                class_name(s.classification)
            );
            say!("  crime areas:    {}", l.crime_areas.join(", "));
            if !l.regions.is_empty() || !l.countries.is_empty() {
                say!(
                    "  where:          {} {}",
                    l.regions.join(", "),
                    l.countries.join(", ")
                );
            }
            if l.tlp != 0 {
                say!("  tlp:            {}", tlp_name(l.tlp));
            }
            if l.handling_code != 0 {
                say!("  handling:       {}", handling_name(l.handling_code));
            }
            if !l.handling_restriction.is_empty() {
                say!("  restriction:    {}", l.handling_restriction);
            }
            if !l.grading.is_empty() {
                say!("  grading:        {}", l.grading);
            }
            if !l.working_groups.is_empty() {
                say!("  working groups: {}", l.working_groups.join(", "));
            }
            if l.not_before_ms != 0 {
                say!("  embargo until:  {}", format_time(l.not_before_ms));
            }
            say!(
                "  personal data:  {}",
                if l.personal_data { "yes" } else { "no" }
            );
            say!(
                "  onward release: {}",
                if l.third_party_release {
                    "allowed"
                } else {
                    "not without the originator's consent"
                }
            );
            say!(
                "  created:        {}   expires: {}",
                format_time(l.created_at_ms),
                format_time(l.expires_at_ms)
            );
            say!("  received:       {}", format_time(s.received_at_ms));
            if !m.read_by.is_empty() {
                say!(
                    "  read by:        {} at {}",
                    m.read_by,
                    format_time(m.read_at_ms)
                );
            }
            say!();
            if let serde_json::Value::Object(map) = content {
                for (k, v) in map {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    say!("{k}: {v}");
                }
            }
        }
    }
    Ok(())
}

/// `liaison ack`.
pub async fn ack(args: IdArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let r = node
        .acknowledge(pb::OfficerAcknowledgeRequest {
            message_id: args.message_id.clone(),
        })
        .await
        .map_err(|s| Failure::status("ack", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({"message_id": args.message_id, "read_by": r.read_by, "read_at": format_time(r.read_at_ms)})
        ),
        Output::Human => say!(
            "{} read by {} at {}",
            args.message_id,
            r.read_by,
            format_time(r.read_at_ms)
        ),
    }
    Ok(())
}

/// `liaison retract`.
pub async fn retract(args: RetractArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let r = node
        .retract(pb::OfficerRetractRequest {
            message_id: args.message_id.clone(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(|s| Failure::status("retract", &s))?
        .into_inner();
    match out {
        Output::Json => say!("{}", json!({"message_id": args.message_id, "status": r.status})),
        Output::Human if r.status == "withdrawn" => {
            say!("{} withdrawn: it had not left your node and never will", args.message_id)
        }
        Output::Human => say!(
            "{} retraction queued: your node tells the hub, which withdraws it from every recipient (see liaison outbox)",
            args.message_id
        ),
    }
    Ok(())
}
