//! "Durable" means on stable storage: the hub answers a submission only after
//! an `fdatasync` of the store's log that covers it. Proven by tracing the
//! system calls of a real hub process with strace and reading their order:
//! the store's write of the submission, then the sync of the log file, then
//! the answer on the socket.
//!
//! Skipped, saying so on one line, where strace is missing or may not trace
//! (ptrace refused); `.ci/run` installs strace.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use pb::{Classification as C, Kind as K};

use crate::common::{alert, envelope, labels, GOVERNANCE};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_liaison-child"))
}

/// One traced system call: its name, the path strace printed for its file
/// descriptor (`/…/db`, `TCP:[a->b]`), and when it started and returned.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    fd: String,
    start: f64,
    end: f64,
}

/// The calls of an `strace -f -ttt -yy` log, with calls split by other
/// threads ("<unfinished ...>" / "<... resumed>") joined again.
fn calls(log: &str) -> Vec<Call> {
    let mut done = Vec::new();
    let mut pending: std::collections::HashMap<String, Call> = Default::default();
    for line in log.lines() {
        // "<pid> <seconds.micros> <call>", the pid padded with spaces.
        let line = line.trim_start();
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if resumed.contains(" resumed>") {
                if let Some(mut call) = pending.remove(pid) {
                    call.end = ts;
                    done.push(call);
                }
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        // The fd argument and its path: `9</tmp/x/db>`.
        // (a socket's path holds "->", so it ends at ">," or ">)").
        let fd = args
            .split_once('<')
            .and_then(|(_, p)| {
                let end = [">,", ">)", "> "].iter().filter_map(|e| p.find(e)).min()?;
                Some(p[..end].to_owned())
            })
            .unwrap_or_default();
        let call = Call {
            name: name.to_owned(),
            fd,
            start: ts,
            end: ts,
        };
        if rest.contains("<unfinished ...>") {
            pending.insert(pid.to_owned(), call);
        } else {
            done.push(call);
        }
    }
    done.sort_by(|a, b| a.start.total_cmp(&b.start));
    done
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Whether strace runs and may trace here.
fn strace_works() -> bool {
    let probe = std::process::Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(probe, Ok(s) if s.success())
}

/// A `liaison` server process under strace.
struct Traced {
    strace: tokio::process::Child,
    log: PathBuf,
}

impl Traced {
    /// Starts `liaison <args> --ready-file <ready> --exit-with-parent <strace>`
    /// under strace, logging to `log`, and waits until it listens; returns
    /// the address it listens on.
    async fn start(args: &str, log: &Path, ready: &Path) -> (Self, String) {
        // `exec` keeps the shell's process id for strace, so the server
        // (strace's child) can be told its parent's id and ends with it.
        let script = format!(
            "exec strace -f -ttt -yy -s 0 -e trace=pwrite64,pwritev,fdatasync,fsync,write,writev,sendmsg,sendto -o '{}' '{}' {args} --ready-file '{}' --exit-with-parent $$",
            log.display(),
            exe().display(),
            ready.display()
        );
        let strace = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = wait_until(
            "the traced server to listen",
            Duration::from_secs(30),
            || async {
                std::fs::read_to_string(ready)
                    .ok()
                    .filter(|a| !a.is_empty())
            },
        )
        .await
        .unwrap();
        (
            Self {
                strace,
                log: log.to_owned(),
            },
            addr,
        )
    }

    /// Stops the server with SIGTERM (strace, with nothing left to trace,
    /// writes out its log and exits) and returns its calls.
    async fn stop(mut self) -> Vec<Call> {
        let tracer = self.strace.id().unwrap();
        let children =
            std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
        for child in children.split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", child])
                .status();
        }
        let ended = tokio::time::timeout(Duration::from_secs(20), self.strace.wait()).await;
        assert!(ended.is_ok(), "the traced server did not stop on SIGTERM");
        calls(&std::fs::read_to_string(&self.log).unwrap())
    }
}

/// For each `(before, after)` window of one answered request: the server's
/// first write to its store log (`…/db` under `data_dir`), then an
/// `fdatasync` of that log that returned, then the answer on a connection
/// of the server's socket `local` (`ip:port`).
fn assert_synced_before_answers(
    calls: &[Call],
    windows: &[(f64, f64)],
    data_dir: &Path,
    local: &str,
) {
    let log_file = data_dir.join("db").display().to_string();
    let socket = format!("{local}->");
    let is_log = |c: &Call| c.fd == log_file;
    for (before, after) in windows {
        let in_window: Vec<&Call> = calls
            .iter()
            .filter(|c| c.start >= *before && c.start <= *after)
            .collect();
        // The store's write of this request.
        let write = in_window
            .iter()
            .find(|c| c.name.starts_with("pwrite") && is_log(c))
            .unwrap_or_else(|| panic!("no write to {log_file} in {in_window:#?}"));
        // The answer: the first write on the caller's connection after it.
        let answer = in_window
            .iter()
            .find(|c| {
                c.start >= write.end
                    && matches!(c.name.as_str(), "write" | "writev" | "sendmsg" | "sendto")
                    && c.fd.contains(&socket)
            })
            .unwrap_or_else(|| {
                panic!("no answer on {socket} after the store write in {in_window:#?}")
            });
        // Between them, a real sync of the log file that returned before the
        // answer began.
        let synced = in_window.iter().any(|c| {
            c.name == "fdatasync" && is_log(c) && c.start >= write.end && c.end <= answer.start
        });
        assert!(
            synced,
            "the answer left before an fdatasync of the store log: write {write:?}, answer {answer:?}, calls {in_window:#?}"
        );
    }
}

/// One request to warm the connection up, then three, each timed: the
/// `(before, after)` windows of their answers.
async fn timed_requests<F, Fut, T>(request: F) -> Vec<(f64, f64)>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    request("warm-up").await;
    let mut windows = Vec::new();
    for title in ["one", "two", "three"] {
        let before = now_secs();
        request(title).await;
        windows.push((before, now_secs()));
    }
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_answers_a_submission_only_after_an_fdatasync_of_its_store() {
    if !strace_works() {
        eprintln!("skipped: strace is missing or may not trace here (install strace)");
        return;
    }
    // The sandbox writes the hub's configuration; its own hub makes way for
    // one under strace, on the same port and store.
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&[])
            .hub_process(exe()),
    )
    .await
    .unwrap();
    sandbox.kill_hub();
    let dir = sandbox.dir().to_owned();
    let (traced, addr) = Traced::start(
        &format!("hub --config '{}'", dir.join("hub.toml").display()),
        &dir.join("hub.strace"),
        &dir.join("traced.ready"),
    )
    .await;
    let alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let submit = |title: &'static str| {
        let mut alpha = alpha.clone();
        async move {
            alpha
                .submit(pb::SubmitRequest {
                    envelope: Some(envelope(
                        "alpha",
                        labels(K::Alert, C::Restricted, &["drugs"]),
                        &alert(title),
                    )),
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    let windows = timed_requests(submit).await;
    let calls = traced.stop().await;
    assert_synced_before_answers(&calls, &windows, &dir.join("hub-data"), addr.trim());
    drop(sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_an_officer_only_after_an_fdatasync_of_its_outbox() {
    if !strace_works() {
        eprintln!("skipped: strace is missing or may not trace here (install strace)");
        return;
    }
    // A hub in this process; alpha's node a traced child, configured by
    // `liaison dev node-config` as an operator would.
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&[]))
        .await
        .unwrap();
    let dir = sandbox.dir().to_owned();
    let config = dir.join("traced-node.toml");
    let data = dir.join("traced-node-data");
    let wrote = std::process::Command::new(exe())
        .args([
            "dev",
            "node-config",
            "alpha",
            "--listen",
            "127.0.0.1:0",
            "--hub",
        ])
        .arg(sandbox.hub_url())
        .arg("--certs")
        .arg(sandbox.certs())
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let (traced, addr) = Traced::start(
        &format!("node --config '{}'", config.display()),
        &dir.join("node.strace"),
        &dir.join("node.ready"),
    )
    .await;
    let addr = addr.trim().to_owned();
    let material = sandbox.material("alpha/officer-alice").unwrap();
    let channel = liaison_pki::connect(
        &format!("https://{addr}"),
        &material,
        Some(liaison_types::Role::Node),
        sandbox.governance().federation(),
    )
    .await
    .unwrap();
    let alice = liaison_proto::v1::officer_client::OfficerClient::new(channel);
    let submit = |title: &'static str| {
        let mut alice = alice.clone();
        async move {
            alice
                .submit(pb::OfficerSubmitRequest {
                    clear_targets: false,
                    targets: Vec::new(),
                    labels: Some(labels(K::Alert, C::Restricted, &["drugs"])),
                    body: Some(alert(title)),
                })
                .await
                .unwrap()
        }
    };
    let windows = timed_requests(submit).await;
    let calls = traced.stop().await;
    assert_synced_before_answers(&calls, &windows, &data, &addr);
    drop(sandbox);
}
