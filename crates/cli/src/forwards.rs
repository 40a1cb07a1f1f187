//! The third-party rule: a recipient asks to pass a message on to another
//! body (`forward`); the originator's officers list such requests
//! (`forwards`) and consent (`forward-approve`) or refuse
//! (`forward-refuse`). The hub delivers a consented forward only if the
//! governance rules allow it, as for a first delivery.

use anyhow::Result;
use liaison_proto::v1 as pb;
use serde_json::json;

use crate::message::format_time;
use crate::officer::client;
use crate::{Connection, Failure, Output};

/// Arguments of `forward`.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The message id (from your inbox).
    pub message_id: String,
    /// The body to pass it on to, for example charlie.
    #[arg(long)]
    pub to: String,
    /// Why, for the originator and the audit log (no sensitive detail).
    #[arg(long)]
    pub reason: String,
}

/// Arguments of `forwards`.
#[derive(Debug, clap::Args)]
pub struct ForwardsArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// Only requests nobody has decided yet.
    #[arg(long)]
    pub pending: bool,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// Arguments of `forward-approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveForwardArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The request id (from `liaison forwards`).
    pub request_id: String,
    /// Why, for the record (optional).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Arguments of `forward-refuse`.
#[derive(Debug, clap::Args)]
pub struct RefuseForwardArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The request id (from `liaison forwards`).
    pub request_id: String,
    /// Why it must not be passed on (for the requester and the audit log).
    #[arg(long)]
    pub reason: String,
}

fn state_name(state: i32) -> &'static str {
    match pb::ForwardState::try_from(state) {
        Ok(pb::ForwardState::Pending) => "pending",
        Ok(pb::ForwardState::Forwarded) => "forwarded",
        Ok(pb::ForwardState::Withheld) => "withheld",
        Ok(pb::ForwardState::Refused) => "refused",
        _ => "?",
    }
}

fn entry_json(e: &pb::ForwardRequestEntry) -> serde_json::Value {
    json!({
        "request_id": e.request_id, "message_id": e.message_id, "title": e.title,
        "requester": e.requester, "requested_by": e.requested_by, "to": e.to,
        "reason": e.reason, "requested_at": format_time(e.requested_at_ms),
        "state": e.state, "decided_by": e.decided_by,
        "decided_at": format_time(e.decided_at_ms), "decision_reason": e.decision_reason,
        "hub_outcome": e.hub_outcome,
    })
}

/// `liaison forward <message-id> --to <body> --reason TEXT`.
pub async fn forward(args: ForwardArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let r = node
        .request_forward(pb::OfficerForwardRequest {
            message_id: args.message_id.clone(),
            to: args.to.clone(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(|s| Failure::status("cannot ask to forward", &s))?
        .into_inner();
    let state = state_name(r.state);
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "request_id": r.request_id, "message_id": args.message_id, "to": args.to,
                "state": state, "rule": r.rule, "reason": r.reason, "duplicate": r.duplicate,
            })
        ),
        Output::Human => match state {
            "pending" => {
                let note = if r.duplicate {
                    " (already asked; nothing new sent)"
                } else {
                    ""
                };
                say!(
                    "request {} awaits the originator's consent{note}; nothing is passed on until then",
                    r.request_id
                );
            }
            "forwarded" => say!(
                "forwarded {} to {} (the originator allowed onward release): {}",
                args.message_id,
                args.to,
                &r.reason
            ),
            _ => say!(
                "not forwarded to {}: the rules withhold it ({}: {})",
                args.to,
                r.rule,
                &r.reason
            ),
        },
    }
    Ok(())
}

/// `liaison forwards`.
pub async fn forwards(args: ForwardsArgs, out: Output) -> Result<()> {
    let mut node = client(&args.conn).await?;
    let resp = node
        .list_forward_requests(pb::ListForwardRequestsRequest {
            limit: args.limit,
            pending_only: args.pending,
        })
        .await
        .map_err(|s| Failure::status("forwards", &s))?
        .into_inner();
    match out {
        Output::Json => {
            for e in &resp.entries {
                say!("{}", entry_json(e));
            }
        }
        Output::Human => {
            for e in &resp.entries {
                say!(
                    "{}  {:<9} {} -> {}  {} {}",
                    e.request_id,
                    e.state,
                    e.requester,
                    e.to,
                    e.message_id,
                    e.title
                );
                say!(
                    "    asked by {} at {}: {}",
                    e.requested_by,
                    format_time(e.requested_at_ms),
                    e.reason
                );
                if e.state == "pending" {
                    say!(
                        "    consent with: liaison forward-approve {id}   or refuse with: liaison forward-refuse {id} --reason TEXT",
                        id = e.request_id
                    );
                } else {
                    say!(
                        "    {} by {} at {}{}; hub: {}",
                        e.state,
                        e.decided_by,
                        format_time(e.decided_at_ms),
                        if e.decision_reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", e.decision_reason)
                        },
                        if e.hub_outcome.is_empty() {
                            "not answered yet"
                        } else {
                            &e.hub_outcome
                        }
                    );
                }
            }
            if resp.entries.is_empty() {
                say!("no forward requests");
            }
        }
    }
    Ok(())
}

async fn decide(
    conn: &Connection,
    request_id: &str,
    approve: bool,
    reason: &str,
    out: Output,
) -> Result<()> {
    let mut node = client(conn).await?;
    let r = node
        .decide_forward(pb::OfficerDecideForwardRequest {
            request_id: request_id.to_owned(),
            approve,
            reason: reason.to_owned(),
        })
        .await
        .map_err(|s| {
            Failure::status(
                if approve {
                    "cannot consent"
                } else {
                    "cannot refuse"
                },
                &s,
            )
        })?
        .into_inner();
    let e = r.entry.unwrap_or_default();
    match out {
        Output::Json => {
            let mut v = entry_json(&e);
            v["already_decided"] = json!(r.already_decided);
            say!("{v}");
        }
        Output::Human if r.already_decided => say!(
            "request {} was already {} by {}; nothing changed",
            e.request_id,
            e.state,
            e.decided_by
        ),
        Output::Human if approve => {
            say!(
                "consented to passing {} on to {}: your node tells the hub, which delivers it if the rules allow",
                e.message_id,
                e.to
            );
            say!("see what the hub did with: liaison forwards");
        }
        Output::Human => say!("refused: {} is not passed on to {}", e.message_id, e.to),
    }
    Ok(())
}

/// `liaison forward-approve <request-id>`.
pub async fn approve(args: ApproveForwardArgs, out: Output) -> Result<()> {
    decide(&args.conn, &args.request_id, true, &args.reason, out).await
}

/// `liaison forward-refuse <request-id> --reason TEXT`.
pub async fn refuse(args: RefuseForwardArgs, out: Output) -> Result<()> {
    decide(&args.conn, &args.request_id, false, &args.reason, out).await
}
