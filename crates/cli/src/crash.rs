//! `liaison crash-test`: the crash suite of `liaison_faults::crash`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::exit::Failure;
use crate::Output;

/// Arguments of `liaison crash-test`.
#[derive(Debug, clap::Args)]
pub struct CrashArgs {
    /// How many times to kill something (the hub, a sending node, a
    /// receiving node, both nodes, in turn).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub kills: u32,
    /// Seeds the moments of the kills and the writers' messages (default:
    /// the clock; the report names it, to run the same again).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep configurations, stores and process logs in this directory
    /// (default: a temporary one, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the suite and prints its report; a finding is exit code 7.
pub async fn run(a: CrashArgs, out: Output) -> Result<()> {
    liaison_telemetry::init("error", liaison_telemetry::Format::Text);
    let exe = std::env::current_exe().context("cannot find this program to start the servers")?;
    let seed = a.seed.unwrap_or_else(|| liaison_types::now_ms() as u64);
    let opts = liaison_faults::crash::Options {
        exe,
        kills: a.kills as usize,
        seed,
        dir: a.dir,
    };
    let human = out == Output::Human;
    let progress = move |what: &str| {
        if human {
            eprintln!("crash suite: {what}");
        }
    };
    let report = liaison_faults::crash::run(&opts, &progress)
        .await
        .map_err(|e| {
            Failure::check(format!(
                "the crash suite (seed {seed}) could not finish: {e}"
            ))
        })?;
    match out {
        Output::Json => say!("{}", serde_json::to_string(&report)?),
        Output::Human => {
            for line in table(&report) {
                say!("{line}");
            }
        }
    }
    if !report.passed() {
        return Err(Failure::check(format!(
            "the crash suite found problems (seed {seed}; run again with --seed {seed})"
        ))
        .into());
    }
    Ok(())
}

fn table(r: &liaison_faults::crash::Report) -> Vec<String> {
    let f = &r.findings;
    let mut by_target = std::collections::BTreeMap::<&str, usize>::new();
    for k in &r.kills {
        *by_target.entry(k.target.as_str()).or_default() += 1;
    }
    let kills = by_target
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let unanswered = r
        .unanswered
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut lines = vec![
        format!("seed                         {}", r.seed),
        format!("kills                        {} ({kills})", r.kills.len()),
        format!("submissions                  {}", f.submitted),
        format!(
            "acknowledged                 {} (unanswered: {})",
            f.acknowledged,
            if unanswered.is_empty() {
                "none".into()
            } else {
                unanswered
            }
        ),
        format!("deliveries checked           {}", f.deliveries),
        format!("acknowledged lost            {}", f.lost),
        format!("duplicates                   {}", f.duplicates),
        format!("delivered though withheld    {}", f.withheld_delivered),
        format!("order broken                 {}", f.out_of_order),
        format!("audit records wrong          {}", f.audit_mismatches),
        format!(
            "audit log verifies           {}",
            if r.log_verified {
                "yes".to_owned()
            } else {
                format!("no: {}", r.log_problem)
            }
        ),
        format!(
            "recovery after a kill        p50 {} ms, p99 {} ms, max {} ms",
            r.recovery_p50_ms, r.recovery_p99_ms, r.recovery_max_ms
        ),
        format!("took                         {:.0} s", r.seconds),
        format!(
            "result                       {}",
            if r.passed() { "passed" } else { "FAILED" }
        ),
    ];
    lines.extend(f.examples.iter().map(|e| format!("  {e}")));
    lines
}
