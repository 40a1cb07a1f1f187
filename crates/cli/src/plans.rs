//! `liaison plans`: the coordination view of plans and deconfliction. An
//! officer lists the body's own plans with their deconfliction notices,
//! reads the calendar of other bodies' plans the policy let the body see,
//! submits, updates, closes and cancels plans, acknowledges and resolves
//! notices, and asks the other side for contact.

use anyhow::Result;
use liaison_proto::v1 as pb;
use serde_json::{json, Value};

use crate::message::{format_time, parse_time, read_file};
use crate::officer::{client, SubmitArgs};
use crate::{one_line, Connection, Failure, Output};

/// `liaison plans …`.
#[derive(Debug, clap::Subcommand)]
pub enum PlansCommand {
    /// Your body's active plans, each with its open deconfliction notices.
    List(ListArgs),
    /// Other bodies' plans your body may see, by period, place and crime area.
    Calendar(CalendarArgs),
    /// Submit a new plan (an operational or strategic plan message; give
    /// targets with --target kind:value).
    Submit(SubmitArgs),
    /// Send a new version of one of your body's plans (--plan PLAN_ID and
    /// the plan's full labels and body; targets are kept unless given).
    Update(SubmitArgs),
    /// Close a plan that ended as planned.
    Close(ChangeArgs),
    /// Cancel a plan that was called off.
    Cancel(ChangeArgs),
    /// Acknowledge a deconfliction notice.
    Ack(NoticeArgs),
    /// Mark a deconfliction notice resolved, with a note.
    Resolve(ResolveArgs),
    /// Ask the other side of a notice for contact (a message to the other
    /// plan's body, or to the hub's deconfliction desk for a blind notice).
    Contact(ContactArgs),
}

/// Arguments of `plans list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// Also closed, cancelled and past plans, and cleared notices.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `plans calendar`.
#[derive(Debug, clap::Args)]
pub struct CalendarArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// Plans whose window ends after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Plans whose window starts before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Plans naming this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Plans naming this country (ISO 3166-1 alpha-2).
    #[arg(long)]
    pub country: Option<String>,
    /// Plans naming this crime area.
    #[arg(long)]
    pub crime_area: Option<String>,
    /// Also your body's own plans.
    #[arg(long)]
    pub include_own: bool,
    /// Also plans that were closed, cancelled or whose window passed.
    #[arg(long)]
    pub include_ended: bool,
}

/// Arguments of `plans close` and `plans cancel`.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The plan (from `liaison plans list`).
    pub plan_id: String,
    /// The ending version's message id (give one to make retries safe).
    #[arg(long)]
    pub message_id: Option<String>,
}

/// Arguments of `plans ack`.
#[derive(Debug, clap::Args)]
pub struct NoticeArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The notice's reference (dx-…).
    pub reference: String,
}

/// Arguments of `plans resolve`.
#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The notice's reference (dx-…).
    pub reference: String,
    /// How it was resolved (one line, no sensitive detail).
    #[arg(long)]
    pub note: String,
}

/// Arguments of `plans contact`.
#[derive(Debug, clap::Args)]
pub struct ContactArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// The notice's reference (dx-…).
    pub reference: String,
    /// What to say (it is an ordinary message, routed and audited).
    #[arg(long)]
    pub text: String,
    /// The message id (give one to make retries safe).
    #[arg(long)]
    pub message_id: Option<String>,
}

/// Runs `liaison plans …`.
pub async fn run(cmd: PlansCommand, out: Output) -> Result<()> {
    match cmd {
        PlansCommand::List(a) => list(a, out).await,
        PlansCommand::Calendar(a) => calendar(a, out).await,
        PlansCommand::Submit(a) => {
            let a = with_file(a)?;
            if a.message.plan_id.is_some() {
                return Err(usage("plans submit sends a new plan; to send a new version of one, use plans update --plan PLAN_ID"));
            }
            crate::officer::submit(a, out).await
        }
        PlansCommand::Update(a) => {
            let a = with_file(a)?;
            if a.message.plan_id.is_none() {
                return Err(usage(
                    "plans update needs --plan PLAN_ID (from liaison plans list), or plan_id in the file",
                ));
            }
            crate::officer::submit(a, out).await
        }
        PlansCommand::Close(a) => change(a, pb::PlanAction::PlanClose, out).await,
        PlansCommand::Cancel(a) => change(a, pb::PlanAction::PlanCancel, out).await,
        PlansCommand::Ack(a) => {
            handle(a.conn, a.reference, "acknowledged", String::new(), out).await
        }
        PlansCommand::Resolve(a) => handle(a.conn, a.reference, "resolved", a.note, out).await,
        PlansCommand::Contact(a) => contact(a, out).await,
    }
}

/// The submission with its file read under the flags, so that whether it
/// names a plan (`plan_id` in the file or `--plan`) is known before the
/// checks below.
fn with_file(mut a: SubmitArgs) -> Result<SubmitArgs> {
    if let Some(f) = a.file.take() {
        a.message = a.message.overlay(read_file(&f)?);
    }
    Ok(a)
}

fn usage(message: &str) -> anyhow::Error {
    Failure {
        code: 2,
        message: message.to_owned(),
    }
    .into()
}

fn change_name(change: i32) -> &'static str {
    match pb::NoticeChange::try_from(change) {
        Ok(pb::NoticeChange::OverlapFound) => "found",
        Ok(pb::NoticeChange::OverlapChanged) => "changed",
        Ok(pb::NoticeChange::OverlapCleared) => "cleared",
        _ => "?",
    }
}

fn overlap_name(kind: i32) -> &'static str {
    match pb::OverlapKind::try_from(kind) {
        Ok(pb::OverlapKind::Conflict) => "conflict",
        Ok(pb::OverlapKind::Alignment) => "alignment",
        _ => "?",
    }
}

/// A notice as JSON: a blind one carries only what its reader may know.
fn notice_json(e: &pb::NoticeEntry) -> Value {
    let n = e.notice.clone().unwrap_or_default();
    let mut v = json!({
        "reference": n.reference, "plan_id": n.plan_id, "plan_version": n.plan_version,
        "message_id": n.message_id, "kind": overlap_name(n.kind), "change": change_name(n.change),
        "blind": n.blind, "contact": n.contact, "noticed_at": format_time(n.noticed_at_ms),
        "state": e.state, "handled_by": e.handled_by,
        "handled_at": if e.handled_at_ms > 0 { json!(format_time(e.handled_at_ms)) } else { json!(null) },
        "note": e.note, "received_at": format_time(e.received_at_ms),
    });
    if !n.blind {
        v["other"] = json!({
            "plan_id": n.other_plan_id, "plan_version": n.other_plan_version,
            "message_id": n.other_message_id, "body": n.other_body, "title": n.other_title,
        });
        if n.overlap_end_ms > 0 {
            v["overlap"] = json!({
                "from": format_time(n.overlap_start_ms), "until": format_time(n.overlap_end_ms),
                "regions": n.regions, "countries": n.countries,
                "crime_areas": n.crime_areas, "target_kinds": n.target_kinds,
            });
        }
    }
    v
}

/// A notice in one line (and a second for what overlaps).
fn say_notice(e: &pb::NoticeEntry) -> Result<()> {
    let n = e.notice.clone().unwrap_or_default();
    let head = format!(
        "{}  {} {}  {}  {}",
        n.reference,
        overlap_name(n.kind),
        change_name(n.change),
        if n.blind { "blind" } else { "full" },
        e.state
    );
    if n.blind {
        say!("    {head}  {}", one_line(&n.contact));
    } else {
        say!(
            "    {head}  with {} plan {} v{} \"{}\"; contact {}",
            one_line(&n.other_body),
            n.other_plan_id,
            n.other_plan_version,
            one_line(&n.other_title),
            one_line(&n.contact)
        );
        if n.overlap_end_ms > 0 {
            let places = places(&n.regions, &n.countries);
            say!(
                "      overlap {} to {}; places {}; crime areas {}; target kinds {}",
                format_time(n.overlap_start_ms),
                format_time(n.overlap_end_ms),
                one_line(&places),
                one_line(&join(&n.crime_areas)),
                one_line(&join(&n.target_kinds))
            );
        }
    }
    if !e.handled_by.is_empty() {
        let note = if e.note.is_empty() {
            String::new()
        } else {
            format!(": {}", one_line(&e.note))
        };
        say!(
            "      {} by {} at {}{note}",
            e.state,
            one_line(&e.handled_by),
            format_time(e.handled_at_ms)
        );
    }
    Ok(())
}

/// Regions then countries, in words.
fn places(regions: &[String], countries: &[String]) -> String {
    let all: Vec<&String> = regions.iter().chain(countries).collect();
    join(&all)
}

fn join<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn list(a: ListArgs, out: Output) -> Result<()> {
    let mut node = client(&a.conn).await?;
    let resp = node
        .list_plans(pb::ListPlansRequest { all: a.all })
        .await
        .map_err(|s| Failure::status("listing plans", &s))?
        .into_inner();
    match out {
        Output::Json => {
            let plans: Vec<Value> = resp
                .plans
                .iter()
                .map(|p| {
                    json!({
                        "plan_id": p.plan_id, "version": p.version, "message_id": p.message_id,
                        "kind": p.kind, "status": p.status, "title": p.title,
                        "window_start": format_time(p.window_start_ms), "window_end": format_time(p.window_end_ms),
                        "regions": p.regions, "countries": p.countries, "crime_areas": p.crime_areas,
                        "targets": p.targets.iter().map(|t| json!({"kind": t.kind, "value": t.value})).collect::<Vec<_>>(),
                        "contact": p.contact, "submitted_by": p.submitted_by,
                        "updated_at": format_time(p.updated_at_ms), "outbox_status": p.outbox_status,
                        "notices": p.notices.iter().map(notice_json).collect::<Vec<_>>(),
                        "waiting": p.waiting.iter().map(|w| json!({
                            "version": w.version, "message_id": w.message_id, "action": w.action,
                            "outbox_status": w.outbox_status, "submitted_by": w.submitted_by,
                            "updated_at": format_time(w.updated_at_ms),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            say!("{}", json!({ "plans": plans }));
        }
        Output::Human => {
            if resp.plans.is_empty() {
                say!("no plans; submit one with: liaison plans submit --file PLAN.toml");
            }
            for p in &resp.plans {
                say!(
                    "{}  v{}  {}  {}  \"{}\"",
                    p.plan_id,
                    p.version,
                    p.kind,
                    p.status,
                    one_line(&p.title)
                );
                let places = places(&p.regions, &p.countries);
                say!(
                    "  {} to {}; places {}; crime areas {}",
                    format_time(p.window_start_ms),
                    format_time(p.window_end_ms),
                    one_line(&places),
                    one_line(&join(&p.crime_areas))
                );
                if !p.targets.is_empty() {
                    let targets: Vec<String> = p
                        .targets
                        .iter()
                        .map(|t| format!("{}:{}", t.kind, t.value))
                        .collect();
                    say!(
                        "  targets (kept on this node) {}",
                        one_line(&join(&targets))
                    );
                }
                say!(
                    "  {} {} ({})",
                    if p.status == "pending" {
                        "first version, not yet accepted by the hub,"
                    } else {
                        "version in force"
                    },
                    p.message_id,
                    if p.outbox_status.is_empty() {
                        "?"
                    } else {
                        &p.outbox_status
                    }
                );
                for w in &p.waiting {
                    say!(
                        "  version {} ({}) {}: {} by {} at {}",
                        w.version,
                        one_line(&w.action),
                        w.message_id,
                        w.outbox_status,
                        one_line(&w.submitted_by),
                        format_time(w.updated_at_ms)
                    );
                }
                if p.notices.is_empty() {
                    say!("  no deconfliction notices");
                } else {
                    say!("  deconfliction notices:");
                    for n in &p.notices {
                        say_notice(n)?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn calendar(a: CalendarArgs, out: Output) -> Result<()> {
    let time = |field: &str, v: &Option<String>| -> Result<i64> {
        v.as_deref().map_or(Ok(0), |t| {
            parse_time(field, t).map_err(|e| usage(&e.to_string()))
        })
    };
    let req = pb::PlanCalendarRequest {
        from_ms: time("from", &a.from)?,
        until_ms: time("until", &a.until)?,
        region: a.region.clone().unwrap_or_default(),
        country: a.country.clone().unwrap_or_default(),
        crime_area: a.crime_area.clone().unwrap_or_default(),
        include_own: a.include_own,
        include_ended: a.include_ended,
    };
    let mut node = client(&a.conn).await?;
    let resp = node
        .plan_calendar(req)
        .await
        .map_err(|s| Failure::status("reading the plan calendar", &s))?
        .into_inner();
    match out {
        Output::Json => {
            let plans: Vec<Value> = resp
                .plans
                .iter()
                .map(|p| {
                    json!({
                        "plan_id": p.plan_id, "version": p.version, "message_id": p.message_id,
                        "origin": p.origin, "kind": p.kind, "status": p.status, "title": p.title,
                        "window_start": format_time(p.window_start_ms), "window_end": format_time(p.window_end_ms),
                        "regions": p.regions, "countries": p.countries, "crime_areas": p.crime_areas,
                        "classification": p.classification, "contact": p.contact,
                        "received_at": format_time(p.received_at_ms),
                    })
                })
                .collect();
            say!("{}", json!({ "plans": plans }));
        }
        Output::Human => {
            if resp.plans.is_empty() {
                say!("no plans of other bodies match");
            }
            for p in &resp.plans {
                let places = places(&p.regions, &p.countries);
                say!(
                    "{} to {}  {}  {}  {}  \"{}\"  places {}; crime areas {}; plan {} v{}",
                    format_time(p.window_start_ms),
                    format_time(p.window_end_ms),
                    one_line(&p.origin),
                    p.kind,
                    p.status,
                    one_line(&p.title),
                    one_line(&places),
                    one_line(&join(&p.crime_areas)),
                    p.plan_id,
                    p.version
                );
            }
        }
    }
    Ok(())
}

fn say_submitted(what: &str, resp: &pb::OfficerSubmitResponse, out: Output) -> Result<()> {
    match out {
        Output::Json => say!(
            "{}",
            json!({"message_id": resp.message_id, "duplicate": resp.duplicate, "status": resp.status})
        ),
        Output::Human => {
            say!(
                "{what}: message {} {}{}",
                resp.message_id,
                resp.status,
                if resp.duplicate {
                    " (already submitted; nothing new sent)"
                } else {
                    ""
                }
            );
            say!("see how the hub routed it with: liaison outbox");
        }
    }
    Ok(())
}

async fn change(a: ChangeArgs, action: pb::PlanAction, out: Output) -> Result<()> {
    let mut node = client(&a.conn).await?;
    let what = if action == pb::PlanAction::PlanClose {
        "closing"
    } else {
        "cancelling"
    };
    let resp = node
        .change_plan(pb::ChangePlanRequest {
            plan_id: a.plan_id.clone(),
            action: action as i32,
            message_id: a.message_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| Failure::status(&format!("{what} plan"), &s))?
        .into_inner();
    say_submitted(&format!("{what} plan {}", a.plan_id), &resp, out)
}

async fn handle(
    conn: Connection,
    reference: String,
    state: &str,
    note: String,
    out: Output,
) -> Result<()> {
    let mut node = client(&conn).await?;
    let e = node
        .update_notice(pb::UpdateNoticeRequest {
            reference,
            state: state.to_owned(),
            note,
        })
        .await
        .map_err(|s| Failure::status("updating the notice", &s))?
        .into_inner();
    match out {
        Output::Json => say!("{}", notice_json(&e)),
        Output::Human => say_notice(&e)?,
    }
    Ok(())
}

async fn contact(a: ContactArgs, out: Output) -> Result<()> {
    let mut node = client(&a.conn).await?;
    let resp = node
        .request_contact(pb::RequestContactRequest {
            reference: a.reference.clone(),
            text: a.text.clone(),
            message_id: a.message_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| Failure::status("asking for contact", &s))?
        .into_inner();
    say_submitted(&format!("contact request for {}", a.reference), &resp, out)
}
