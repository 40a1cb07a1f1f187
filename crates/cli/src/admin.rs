//! Hub administration commands (`liaison admin ...`), with an admin
//! certificate of the body that runs the hub.

use anyhow::Result;
use liaison_proto::v1 as pb;
use liaison_proto::v1::admin_client::AdminClient;
use liaison_types::Role;
use serde_json::json;
use tonic::transport::Channel;

use crate::message::format_time;
use crate::{Connection, Failure, Output};

/// `liaison admin ...`
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Make the hub re-read its governance file and put it in force without
    /// a restart. An invalid file is refused (exit 3) and the rules in force
    /// stay; the reload, or its refusal, is audited.
    ReloadPolicy(AdminArgs),
    /// Show the governance in force on the hub: version, file, when it was
    /// loaded, and the last refused reload.
    Policy(AdminArgs),
    /// Suspend, revoke or reinstate a body at once, on top of the governance
    /// file (it survives restarts and reloads): a suspended body receives
    /// nothing new and its queue is held until it is reinstated. Audited.
    SetState(SetStateArgs),
}

/// Arguments of `admin set-state`.
#[derive(Debug, clap::Args)]
pub struct SetStateArgs {
    /// Where and who (an admin certificate of the hub's body; --server is the hub).
    #[command(flatten)]
    pub conn: Connection,
    /// The body, for example aimc.
    pub body: String,
    /// The state to put the body in.
    #[arg(value_parser = state_parser())]
    pub state: String,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: String,
}

/// The states an admin can set, as the hub names them.
fn state_parser() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue;
    use liaison_policy::State;
    [
        PossibleValue::new(State::Active.as_str())
            .help("reinstate it: its held queue is delivered"),
        PossibleValue::new(State::Suspended.as_str())
            .help("for now: it receives nothing new, its queue is held"),
        PossibleValue::new(State::Revoked.as_str())
            .help("cut off for good, as when suspended (an admin can still reinstate it)"),
    ]
    .into()
}

/// Arguments of the admin commands.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Where and who (an admin certificate of the hub's body; --server is the hub).
    #[command(flatten)]
    pub conn: Connection,
}

async fn client(conn: &Connection) -> Result<AdminClient<Channel>> {
    let material = conn.material()?;
    let me = material.identity()?;
    let channel =
        liaison_pki::connect(&conn.server, &material, Some(Role::Hub), &me.federation).await?;
    Ok(AdminClient::new(channel))
}

/// Runs an admin command.
pub async fn run(c: AdminCommand, out: Output) -> Result<()> {
    match c {
        AdminCommand::ReloadPolicy(a) => reload(a, out).await,
        AdminCommand::Policy(a) => show(a, out).await,
        AdminCommand::SetState(a) => set_state(a, out).await,
    }
}

async fn set_state(a: SetStateArgs, out: Output) -> Result<()> {
    let r = client(&a.conn)
        .await?
        .set_body_state(pb::SetBodyStateRequest {
            body: a.body.clone(),
            state: a.state.clone(),
            reason: a.reason.clone(),
        })
        .await
        .map_err(|s| Failure::status("set state", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({"body": a.body, "state": a.state, "previous_version": r.previous_version,
                   "version": r.version, "audit_seq": r.audit_seq})
        ),
        Output::Human => say!(
            "{} is now {}: version {} -> {} (audit record {})",
            a.body,
            a.state,
            r.previous_version,
            r.version,
            r.audit_seq
        ),
    }
    Ok(())
}

async fn reload(a: AdminArgs, out: Output) -> Result<()> {
    let r = client(&a.conn)
        .await?
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .map_err(|s| Failure::status("reload policy", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "changed": r.changed,
                "previous_version": r.previous_version,
                "version": r.version,
                "bodies": r.bodies,
                "audit_seq": r.audit_seq,
            })
        ),
        Output::Human if r.changed => say!(
            "policy reloaded: version {} -> {} ({} bodies, audit record {})",
            r.previous_version,
            r.version,
            r.bodies,
            r.audit_seq
        ),
        Output::Human => say!(
            "policy unchanged: the file is the version in force, {} ({} bodies)",
            r.version,
            r.bodies
        ),
    }
    Ok(())
}

async fn show(a: AdminArgs, out: Output) -> Result<()> {
    let p = client(&a.conn)
        .await?
        .get_policy(pb::GetPolicyRequest {})
        .await
        .map_err(|s| Failure::status("get policy", &s))?
        .into_inner();
    match out {
        Output::Json => say!(
            "{}",
            json!({
                "version": p.version,
                "file": p.file,
                "bodies": p.bodies,
                "federation": p.federation,
                "hub_body": p.hub_body,
                "loaded_at": format_time(p.loaded_at_ms),
                "loaded_at_ms": p.loaded_at_ms,
                "last_refusal": (!p.last_refusal.is_empty()).then_some(&p.last_refusal),
                "last_refusal_at": (p.last_refusal_at_ms != 0).then(|| format_time(p.last_refusal_at_ms)),
                "last_refusal_at_ms": (p.last_refusal_at_ms != 0).then_some(p.last_refusal_at_ms),
            })
        ),
        Output::Human => {
            say!("version     {}", p.version);
            say!("file        {}", p.file);
            say!(
                "federation  {} (hub body {}, {} bodies)",
                p.federation,
                p.hub_body,
                p.bodies
            );
            say!("loaded at   {}", format_time(p.loaded_at_ms));
            if !p.last_refusal.is_empty() {
                say!(
                    "last reload REFUSED at {}: {}",
                    format_time(p.last_refusal_at_ms),
                    &p.last_refusal
                );
            }
        }
    }
    Ok(())
}
