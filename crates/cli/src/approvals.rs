//! Four-eyes release, for the second officer: list the messages of your body
//! awaiting approval, read one, approve it (the node sends it to the hub) or
//! refuse it with a reason (it is never sent).

use anyhow::Result;
use liaison_proto::v1 as pb;
use serde_json::json;

use crate::message::format_time;
use crate::officer::{class_name, client, kind_name, IdArgs};
use crate::{Connection, Failure, Output};

/// Arguments of `approvals`.
#[derive(Debug, clap::Args)]
pub struct ApprovalsArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// Show this message in full (labels and body), to read before deciding.
    pub message_id: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// Arguments of `refuse`.
#[derive(Debug, clap::Args)]
pub struct RefuseArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The message id.
    pub message_id: String,
    /// Why it must not be sent (kept on your node, shown to the submitter).
    #[arg(long)]
    pub reason: String,
}

fn entry_json(e: &pb::PendingApproval) -> serde_json::Value {
    let mut v = json!({
        "message_id": e.message_id, "submitted_by": e.submitted_by,
        "submitted_at": format_time(e.submitted_at_ms), "title": e.title,
        "kind": kind_name(e.kind), "classification": class_name(e.classification),
        "approval_reason": e.approval_reason, "can_decide": e.can_decide,
    });
    if let Some(l) = &e.labels {
        v["crime_areas"] = json!(l.crime_areas);
        v["regions"] = json!(l.regions);
        v["countries"] = json!(l.countries);
        v["personal_data"] = json!(l.personal_data);
        v["releasable_to"] = json!(l.releasable_to);
        v["excluded"] = json!(l.excluded);
        v["marking"] = json!(l.marking);
    }
    if let Some(b) = &e.body {
        v["body"] = match &b.content {
            Some(pb::body::Content::ThreatAssessment(t)) => {
                json!({"summary": t.summary, "assessment": t.assessment, "horizon": t.horizon})
            }
            Some(pb::body::Content::OperationalPlan(p)) => json!({
                "summary": p.summary, "window_start": format_time(p.window_start_ms),
                "window_end": format_time(p.window_end_ms), "lead_body": p.lead_body,
                "regions": p.regions, "crime_areas": p.crime_areas, "target_ids": p.target_ids,
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
    }
    v
}

/// `liaison approvals [<id>]`.
pub async fn approvals(args: ApprovalsArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let resp = node
        .list_approvals(pb::ListApprovalsRequest {
            limit: args.limit,
            message_id: args.message_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| Failure::status("approvals", &s))?
        .into_inner();
    match out {
        Output::Json => {
            for e in &resp.entries {
                say!("{}", entry_json(e));
            }
        }
        Output::Human if args.message_id.is_some() => {
            for e in &resp.entries {
                let v = entry_json(e);
                say!("{}", e.title);
                say!("  id:             {}", e.message_id);
                say!(
                    "  submitted by:   {} at {}",
                    e.submitted_by,
                    format_time(e.submitted_at_ms)
                );
                say!(
                    "  kind:           {}   classification: {}",
                    kind_name(e.kind),
                    class_name(e.classification)
                );
                if let Some(l) = &e.labels {
                    say!("  crime areas:    {}", l.crime_areas.join(", "));
                    if !l.releasable_to.is_empty() {
                        say!("  releasable to:  {}", l.releasable_to.join(", "));
                    }
                    if !l.excluded.is_empty() {
                        say!("  excluded:       {}", l.excluded.join(", "));
                    }
                    say!(
                        "  personal data:  {}",
                        if l.personal_data { "yes" } else { "no" }
                    );
                }
                say!("  needs approval: {}", e.approval_reason);
                say!();
                if let Some(serde_json::Value::Object(map)) = v.get("body") {
                    for (k, v) in map {
                        let v = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        say!("{k}: {v}");
                    }
                }
                say!();
                say!("{}", decide_hint(e));
            }
        }
        Output::Human => {
            for e in &resp.entries {
                say!(
                    "{}  {:<17} {:<12} {:<48} {}",
                    e.message_id,
                    kind_name(e.kind),
                    class_name(e.classification),
                    e.submitted_by,
                    e.title
                );
                say!("    why: {}", e.approval_reason);
                if !e.can_decide {
                    say!("    {}", decide_hint(e));
                }
            }
            if resp.entries.is_empty() {
                say!("nothing awaits approval");
            } else {
                say!(
                    "approvers: {}; read one with: liaison approvals <id>",
                    resp.approvers.join(", ")
                );
            }
        }
    }
    Ok(())
}

fn decide_hint(e: &pb::PendingApproval) -> String {
    if e.can_decide {
        format!(
            "approve with: liaison approve {id}   or refuse with: liaison refuse {id} --reason TEXT",
            id = e.message_id
        )
    } else {
        "you may not decide on this one (you submitted it, or you are not an approver)".into()
    }
}

/// `liaison approve <id>`.
pub async fn approve(args: IdArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let r = node
        .approve(pb::ApproveRequest {
            message_id: args.message_id.clone(),
        })
        .await
        .map_err(|s| Failure::status("cannot approve", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "message_id": r.message_id, "approved_by": r.approved_by,
                "approved_at": format_time(r.approved_at_ms),
                "already_approved": r.already_approved, "status": r.status,
            })
        ),
        Output::Human => {
            if r.already_approved {
                say!(
                    "{} was already approved by {} at {}; nothing changed (status {})",
                    r.message_id,
                    r.approved_by,
                    format_time(r.approved_at_ms),
                    r.status
                );
            } else {
                say!(
                    "approved {}: released to the hub (approved by {})",
                    r.message_id,
                    r.approved_by
                );
                say!("see how the hub routed it with: liaison outbox");
            }
        }
    }
    Ok(())
}

/// `liaison refuse <id> --reason TEXT`.
pub async fn refuse(args: RefuseArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let r = node
        .refuse(pb::RefuseRequest {
            message_id: args.message_id.clone(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(|s| Failure::status("cannot refuse", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "message_id": r.message_id, "refused_by": r.refused_by,
                "refused_at": format_time(r.refused_at_ms), "reason": r.reason,
                "already_refused": r.already_refused,
            })
        ),
        Output::Human => {
            if r.already_refused {
                say!(
                    "{} was already refused by {} at {}: {}; nothing changed",
                    r.message_id,
                    r.refused_by,
                    format_time(r.refused_at_ms),
                    r.reason
                );
            } else {
                say!("refused {}: it will never be sent", r.message_id);
            }
        }
    }
    Ok(())
}
