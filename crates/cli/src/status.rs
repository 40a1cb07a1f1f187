//! `liaison status`: a node's status for its officers and operators, or the
//! hub's view of every body for the hub's admins and auditors. Which one is
//! asked for follows from the certificate: an officer's asks its node, an
//! admin's or auditor's asks the hub.

use anyhow::Result;
use liaison_proto::v1 as pb;
use liaison_proto::v1::operations_client::OperationsClient;
use liaison_types::Role;
use serde_json::json;

use crate::message::format_time;
use crate::{one_line, Connection, Failure, Output};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Where and who: an officer certificate and your node, or an admin or
    /// auditor certificate and the hub.
    #[command(flatten)]
    pub conn: Connection,
}

/// Shows the status. Exits with code 7 on an alarm: deliveries in
/// quarantine at a node, or a store (at the hub, the audit log with it)
/// that fails to write.
pub async fn status(args: StatusArgs, out: Output) -> Result<()> {
    let material = args.conn.material()?;
    let me = material.identity()?;
    match me.role {
        Role::Admin | Role::Auditor | Role::Oversight => {
            hub_status(&args.conn, &material, &me, out).await
        }
        _ => node_status(&args.conn, out).await,
    }
}

/// "-" for a time that is not set.
fn time_or_dash(ms: i64) -> String {
    if ms == 0 {
        "-".to_owned()
    } else {
        format_time(ms)
    }
}

async fn node_status(conn: &Connection, out: Output) -> Result<()> {
    let mut node = crate::officer::client(conn).await?;
    let s = node
        .status(pb::NodeStatusRequest {})
        .await
        .map_err(|e| Failure::status("status", &e))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "body": s.body, "hub_connected": s.hub_connected,
                "outbox_pending": s.outbox_pending, "inbox_messages": s.inbox_messages,
                "hub_cursor": s.hub_cursor, "storage_failure": s.storage_failure,
                "certificate_expires": time_or_dash(s.certificate_expires_ms),
                "quarantined": s.quarantined,
                "witnessed_size": s.witnessed_size,
                "witness_alarm": s.witness_alarm,
                "quarantine": s.quarantine.iter().map(|q| json!({
                    "hub_seq": q.hub_seq, "message_id": q.message_id, "origin": q.origin,
                    "reason": q.reason, "at": format_time(q.at_ms),
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Human => {
            say!("node of {}", s.body);
            if s.hub_connected {
                say!("  hub: connected (delivery stream open)");
            } else {
                say!("  hub: NOT CONNECTED; the outbox keeps what officers submit until it is");
            }
            say!("  outbox: {} waiting for the hub", s.outbox_pending);
            say!("  inbox: {} messages", s.inbox_messages);
            say!("  hub queue stored up to position {}", s.hub_cursor);
            say!(
                "  certificate expires {}",
                time_or_dash(s.certificate_expires_ms)
            );
            if s.storage_failure.is_empty() {
                say!("  store: ok");
            } else {
                say!(
                    "  ALARM: the store fails to write: {}",
                    one_line(&s.storage_failure)
                );
            }
            if s.witness_alarm.is_empty() {
                say!(
                    "  audit log: verified and cosigned up to {} records",
                    s.witnessed_size
                );
            } else {
                say!(
                    "  ALARM: the hub's audit log failed this node's check: {}; deliveries are marked as received under an unverified log until an admin clears it (liaison audit watch shows the evidence)",
                    one_line(&s.witness_alarm)
                );
            }
            if s.quarantined == 0 {
                say!("  quarantine: empty");
            } else {
                say!(
                    "  ALARM: {} deliveries this node could not accept are in quarantine (never in the inbox); the hub was told",
                    s.quarantined
                );
                for q in &s.quarantine {
                    say!(
                        "    {}  position {}  from {}  message {}: {}",
                        format_time(q.at_ms),
                        q.hub_seq,
                        one_line(&q.origin),
                        one_line(&q.message_id),
                        one_line(&q.reason)
                    );
                }
            }
        }
    }
    if s.quarantined > 0 {
        return Err(Failure::check(format!(
            "{} deliveries are in quarantine on the node of {}",
            s.quarantined, s.body
        ))
        .into());
    }
    if !s.storage_failure.is_empty() {
        return Err(Failure::check(format!(
            "the store of the node of {} fails to write",
            s.body
        ))
        .into());
    }
    if !s.witness_alarm.is_empty() {
        return Err(
            Failure::check(format!("the node of {} raised the audit log alarm", s.body)).into(),
        );
    }
    Ok(())
}

async fn hub_status(
    conn: &Connection,
    material: &liaison_pki::TlsMaterial,
    me: &liaison_types::Identity,
    out: Output,
) -> Result<()> {
    let channel =
        liaison_pki::connect(&conn.server, material, Some(Role::Hub), &me.federation).await?;
    let s = OperationsClient::new(channel)
        .status(pb::HubStatusRequest {})
        .await
        .map_err(|e| Failure::status("status", &e))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "federation": s.federation, "hub_body": s.hub_body,
                "policy_version": s.policy_version, "audit_records": s.audit_records,
                "storage_failure": s.storage_failure,
                "certificate_expires": time_or_dash(s.certificate_expires_ms),
                "at": format_time(s.at_ms),
                "checkpoint": {
                    "tree_size": s.checkpoint_size,
                    "signed_at": time_or_dash(s.checkpoint_at_ms),
                    "witnessed_size": s.witnessed_size,
                    "witnesses": s.witnesses,
                },
                "bodies": s.bodies.iter().map(|b| json!({
                    "body": b.body, "state": b.state, "connected": b.connected,
                    "queue_depth": b.queue_depth,
                    "oldest_undelivered": time_or_dash(b.oldest_undelivered_ms),
                    "last_seen": time_or_dash(b.last_seen_ms),
                })).collect::<Vec<_>>(),
            })
        ),
        Output::Human => {
            let version: String = s.policy_version.chars().take(12).collect();
            say!(
                "hub of {} (run by {}), policy {}, {} audit records, as of {}",
                one_line(&s.federation),
                one_line(&s.hub_body),
                version,
                s.audit_records,
                format_time(s.at_ms)
            );
            say!(
                "  certificate expires {}",
                time_or_dash(s.certificate_expires_ms)
            );
            say!(
                "  audit log: checkpoint of {} records signed {}; witnessed up to {} records by {}",
                s.checkpoint_size,
                time_or_dash(s.checkpoint_at_ms),
                s.witnessed_size,
                if s.witnesses.is_empty() {
                    "no witness yet".to_owned()
                } else {
                    s.witnesses
                        .iter()
                        .map(|w| one_line(w))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            if s.storage_failure.is_empty() {
                say!("  store and audit log: ok");
            } else {
                say!(
                    "  ALARM: the store (and the audit log) fails to write: {}",
                    one_line(&s.storage_failure)
                );
            }
            let width = s
                .bodies
                .iter()
                .map(|b| b.body.len())
                .max()
                .unwrap_or(4)
                .max(4);
            say!(
                "  {:<width$}  {:<9}  {:<9}  {:>7}  {:<29}  last seen",
                "body",
                "state",
                "connected",
                "queue",
                "oldest undelivered"
            );
            for b in &s.bodies {
                say!(
                    "  {:<width$}  {:<9}  {:<9}  {:>7}  {:<29}  {}",
                    one_line(&b.body),
                    one_line(&b.state),
                    if b.connected { "yes" } else { "no" },
                    b.queue_depth,
                    time_or_dash(b.oldest_undelivered_ms),
                    time_or_dash(b.last_seen_ms)
                );
            }
        }
    }
    if !s.storage_failure.is_empty() {
        return Err(Failure::check("the hub's store (and audit log) fails to write").into());
    }
    Ok(())
}
