//! `liaison bench` and the echo server it starts (`bench-echo-server`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::Output;

/// Arguments of `liaison bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run for seconds, not minutes: checks that the benchmark works (CI);
    /// its figures mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Also sweep the offered load and write a plot of throughput and p99
    /// against it to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Keep configurations, stores and process logs in this directory
    /// (default: a temporary one, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Queue this many messages at the hub for a stopped peer, then time
    /// its drain when it returns (0: skip; default 100000, 200 with
    /// --quick).
    #[arg(long, value_name = "N")]
    pub backlog: Option<u64>,
    /// Bytes of alert text in each message, and of each echo call (1 to
    /// 65536: an alert's text holds at most 64 KiB).
    #[arg(long, value_name = "BYTES", default_value_t = liaison_bench::PAYLOAD as u32,
          value_parser = clap::value_parser!(u32).range(1..=liaison_bench::MAX_PAYLOAD as i64))]
    pub payload: u32,
    /// Also measure federations of these many bodies (comma-separated, 12
    /// to 5000): the eleven bodies run nodes, the driver holds the others'
    /// subscriptions (default 100,1000; 24 with --quick; 0 skips).
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub bodies: Option<Vec<usize>>,
    /// Verify an export of the audit log of this many records offline, as
    /// `liaison audit verify --file` does (default 1000000; 2000 with
    /// --quick; 0 skips). The export is synthetic, shaped as the hub's.
    #[arg(long, value_name = "N")]
    pub verify_records: Option<u64>,
    /// Only the offline verification (no federation is started).
    #[arg(long)]
    pub verify_only: bool,
}

/// Times `liaison audit verify --file` on a synthetic export of `n` records
/// written in `dir`.
fn offline_verify(n: u64, dir: &std::path::Path) -> Result<liaison_bench::VerifyFigure> {
    let path = dir.join("audit-export.jsonl");
    let log = crate::audit::write_synthetic_export(&path, n)?;
    let file_bytes = std::fs::metadata(&path)?.len();
    let started = std::time::Instant::now();
    let records = crate::audit::verify_export(&path, log)?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    anyhow::ensure!(
        records == n,
        "the verifier checked {records} of {n} records"
    );
    Ok(liaison_bench::VerifyFigure {
        records,
        file_bytes,
        seconds,
        records_per_s: records as f64 / seconds.max(1e-9),
    })
}

/// Runs the benchmark and prints its report.
pub async fn run(a: BenchArgs, out: Output) -> Result<()> {
    liaison_telemetry::init("error", liaison_telemetry::Format::Text);
    let exe = std::env::current_exe().context("cannot find this program to start the servers")?;
    let opts = liaison_bench::Options {
        exe,
        quick: a.quick,
        sweep: a.plot.is_some(),
        dir: a.dir,
        payload: a.payload as usize,
        bodies: match a.bodies {
            Some(list) => list.into_iter().filter(|&n| n != 0).collect(),
            None if a.quick => liaison_bench::QUICK_BODIES.to_vec(),
            None => liaison_bench::DEFAULT_BODIES.to_vec(),
        },
        backlog: a.backlog.unwrap_or(if a.quick {
            liaison_bench::QUICK_BACKLOG
        } else {
            liaison_bench::DEFAULT_BACKLOG
        }),
    };
    let human = out == Output::Human;
    let progress = move |what: &str| {
        if human {
            eprintln!("measuring: {what}");
        }
    };
    let verify_records = a
        .verify_records
        .unwrap_or(if a.quick { 2_000 } else { 1_000_000 });
    let mut report = if a.verify_only {
        liaison_bench::Report::empty(a.quick, a.payload as usize)
    } else {
        liaison_bench::run(&opts, &progress).await?
    };
    if verify_records > 0 {
        progress(&format!(
            "audit log: offline verify of an export of {verify_records} records"
        ));
        let scratch = tempfile::Builder::new()
            .prefix("liaison-bench-verify-")
            .tempdir()
            .context("creating a temporary directory")?;
        let n = verify_records;
        let dir = scratch.path().to_path_buf();
        report.offline_verify =
            Some(tokio::task::spawn_blocking(move || offline_verify(n, &dir)).await??);
    }
    if let Some(path) = &a.plot {
        let svg = liaison_bench::svg(&report)
            .context("the sweep measured nothing; there is nothing to plot")?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match out {
        Output::Json => say!("{}", serde_json::to_string(&report)?),
        Output::Human => {
            for line in liaison_bench::table(&report) {
                say!("{line}");
            }
            if let Some(path) = &a.plot {
                say!("plot written to {}", path.display());
            }
        }
    }
    Ok(())
}

/// Arguments of the echo server that `liaison bench` starts.
#[derive(Debug, clap::Args)]
pub struct EchoServerArgs {
    /// The dev PKI directory; the server presents the hub's certificate.
    #[arg(long)]
    pub certs: PathBuf,
    /// Listen here (port 0: any free port, written to --ready-file).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Write the bound address here once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Exit when this process stops being the parent.
    #[arg(long, value_name = "PID")]
    pub exit_with_parent: Option<u32>,
}

/// Serves the bare echo until SIGTERM or Ctrl-C.
pub async fn echo_server(a: EchoServerArgs) -> Result<()> {
    liaison_telemetry::init("warn", liaison_telemetry::Format::Text);
    crate::ops::exit_with_parent(a.exit_with_parent);
    let material =
        liaison_pki::TlsMaterial::load(&liaison_pki::TlsFiles::in_dev_dir(&a.certs, "hub"))?;
    let stop = crate::ops::shutdown_signal();
    let listener = crate::ops::bind(a.listen, a.ready_file.as_deref()).await?;
    liaison_bench::echo::serve(listener, &material, liaison_bench::FEDERATION, stop).await?;
    Ok(())
}
