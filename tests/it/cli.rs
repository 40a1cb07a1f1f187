//! The `liaison` command as officers, auditors and operators run it: a child
//! process against a running federation, checking output and exit codes.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use serde_json::Value;

use crate::common::{sandbox, GOVERNANCE, SETTLE};

const EXE: &str = env!("CARGO_BIN_EXE_liaison-child");

/// Runs `liaison` with `args` off the async runtime.
async fn liaison(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || run(&args))
        .await
        .unwrap()
}

/// Runs `liaison` with `args` and waits for it.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

/// Arguments that connect to `server` as `who` (a dev pki stem).
fn conn(sandbox: &Sandbox, server: &str, who: &str) -> Vec<String> {
    vec![
        "--server".into(),
        server.into(),
        "--certs".into(),
        sandbox.certs().display().to_string(),
        "--as".into(),
        who.into(),
    ]
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_submits_reads_and_acknowledges_from_the_command_line() {
    let sandbox = sandbox().await;
    let alpha = sandbox.node_url("alpha").unwrap();
    let bravo = sandbox.node_url("bravo").unwrap();

    // Explain first: nothing is sent.
    let mut a = args(&["--output", "json", "explain"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    a.extend(args(&[
        "--kind",
        "alert",
        "--classification",
        "RESTRICTED",
        "--title",
        "botnet takedown",
        "--crime-area",
        "cybercrime",
        "--text",
        "sinkhole these domains",
        "--priority",
        "flash",
    ]));
    let out = liaison(a.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let explained: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let decisions = explained["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 3);
    let bravo_decision = decisions
        .iter()
        .find(|d| d["recipient"] == "bravo")
        .unwrap();
    assert_eq!(bravo_decision["outcome"], "deliver");
    let charlie = decisions
        .iter()
        .find(|d| d["recipient"] == "charlie")
        .unwrap();
    assert_eq!(charlie["rule"], "recipient.mandate");

    // Submit the same message from flags.
    a[2] = "submit".into();
    let out = liaison(a).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = submitted["message_id"].as_str().unwrap().to_owned();

    // And a message from a TOML file.
    let file = sandbox.dir().join("assessment.toml");
    std::fs::write(
        &file,
        r#"
kind = "threat_assessment"
classification = "OFFICIAL_USE"
title = "cannabis resin routes"
crime_areas = ["drugs"]
[threat_assessment]
summary = "resin moves north through new corridors"
"#,
    )
    .unwrap();
    let mut a = args(&["submit"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    a.extend(args(&["--file", file.to_str().unwrap()]));
    let out = liaison(a).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("queued "), "{}", stdout(&out));

    // The recipient's officer finds it in the inbox, reads it and acknowledges.
    let mut inbox = args(&["--output", "json", "inbox"]);
    inbox.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    let listed = wait_until("bravo's inbox lists the alert", SETTLE, || {
        let inbox = inbox.clone();
        let id = id.clone();
        async move {
            let out = liaison(inbox).await;
            let lines: Vec<Value> = stdout(&out)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            lines.into_iter().find(|v| v["message_id"] == id.as_str())
        }
    })
    .await
    .unwrap();
    assert_eq!(listed["origin"], "alpha");
    assert_eq!(
        listed["marking"], "BRAVO LIMITED",
        "shown in bravo's own marking"
    );
    assert_eq!(listed["read"], false);

    let mut show = args(&["--output", "json", "show"]);
    show.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    show.push(id.clone());
    let out = liaison(show).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["body"]["text"], "sinkhole these domains");

    let mut ack = args(&["ack"]);
    ack.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    ack.push(id.clone());
    let out = liaison(ack).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("read by spiffe://liaison.test/org/bravo/officer/bob"),
        "{}",
        stdout(&out)
    );

    // The sender's outbox shows bravo's node received it (once its receipt
    // came back through the hub).
    let mut outbox = args(&["outbox"]);
    outbox.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    output_once(&outbox, "received by the nodes of: bravo").await;
    // And the node's status has no alarm.
    let mut status = args(&["status"]);
    status.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    let out = liaison(status).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("quarantine: empty"),
        "{}",
        stdout(&out)
    );
    sandbox.shutdown().await.unwrap();
}

/// Runs `liaison` with `args` until its output holds `needle`; returns it.
async fn output_once(args: &[String], needle: &str) -> String {
    wait_until(&format!("the output to say {needle:?}"), SETTLE, || async {
        let text = stdout(&liaison(args.to_vec()).await);
        text.contains(needle).then_some(text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_says_queued_at_the_hub_until_the_recipients_node_takes_it() {
    let mut sandbox = liaison_federation::Sandbox::start(
        liaison_federation::SandboxOptions::new(crate::common::GOVERNANCE).nodes(&["alpha"]),
    )
    .await
    .unwrap();
    let alpha = sandbox.node_url("alpha").unwrap();
    let mut submit = args(&[
        "--output",
        "json",
        "submit",
        "--kind",
        "alert",
        "--classification",
        "OFFICIAL_USE",
        "--crime-area",
        "cybercrime",
        "--title",
        "for bravo",
        "--text",
        "sinkhole these",
    ]);
    submit.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    let out = liaison(submit).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut outbox = args(&["outbox"]);
    outbox.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    // bravo's node is not running: routed to bravo means queued at the hub.
    let shown = output_once(&outbox, "queued at the hub for: bravo").await;
    assert!(!shown.contains("received by"), "{shown}");
    // Once bravo's node runs and takes it, the outbox says so.
    sandbox.start_node("bravo").await.unwrap();
    let shown = output_once(&outbox, "received by the nodes of: bravo").await;
    assert!(!shown.contains("queued at the hub for: bravo"), "{shown}");
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong() {
    let sandbox = sandbox().await;
    let alpha = sandbox.node_url("alpha").unwrap();

    // 2: a bad value caught before sending.
    let mut a = args(&["submit"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    a.extend(args(&[
        "--kind",
        "alert",
        "--classification",
        "TOP_SECRET",
        "--title",
        "t",
        "--text",
        "x",
    ]));
    let out = liaison(a).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("classification: unknown classification 'TOP_SECRET'"),
        "{}",
        stderr(&out)
    );

    // 3: the node refuses the input and says which field.
    let mut a = args(&["submit"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    a.extend(args(&[
        "--kind",
        "alert",
        "--classification",
        "RESTRICTED",
        "--title",
        "t",
        "--text",
        "x",
        "--crime-area",
        "jaywalking",
    ]));
    let out = liaison(a).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("labels.crime_areas[0]"),
        "{}",
        stderr(&out)
    );

    // 4: an officer of another body.
    let mut a = args(&["inbox"]);
    a.extend(conn(&sandbox, &alpha, "bravo/officer-alice"));
    let out = liaison(a).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("use your own body's node"),
        "{}",
        stderr(&out)
    );

    // 6: no such message.
    let mut a = args(&["show"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    a.push("00000000-0000-4000-8000-000000000000".into());
    let out = liaison(a).await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));

    // 1: an unreadable certificate names the file.
    let mut a = args(&["inbox"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-nobody"));
    let out = liaison(a).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("officer-nobody.pem does not exist"),
        "{}",
        stderr(&out)
    );

    // 5: nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut a = args(&["inbox"]);
    a.extend(conn(
        &sandbox,
        &format!("https://{closed}"),
        "alpha/officer-alice",
    ));
    let out = liaison(a).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_lists_exports_and_verifies() {
    let sandbox = sandbox().await;
    let alpha = sandbox.node_url("alpha").unwrap();
    let hub = sandbox.hub_url();
    let mut a = args(&["submit"]);
    a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    a.extend(args(&[
        "--kind",
        "alert",
        "--classification",
        "OFFICIAL_USE",
        "--title",
        "t",
        "--text",
        "x",
        "--crime-area",
        "drugs",
    ]));
    assert!(liaison(a).await.status.success());

    let mut csv = args(&["audit", "list", "--csv", "--event", "routed"]);
    csv.extend(conn(&sandbox, &hub, "alpha/oversight-ccf"));
    let out = wait_until("the hub routes the alert", SETTLE, || {
        let csv = csv.clone();
        async move {
            let out = liaison(csv).await;
            (stdout(&out).lines().count() == 4).then_some(out)
        }
    })
    .await
    .unwrap();
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("seq,at,event,message_id,origin,recipient,decision,rule"));
    assert!(lines.all(|l| l.contains(",routed,")));

    // The oversight auditor reads the whole log: the tree is recomputed.
    let mut verify = args(&["audit", "verify"]);
    verify.extend(conn(&sandbox, &hub, "alpha/oversight-ccf"));
    let out = liaison(verify).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("whole tree recomputed: same root, log intact"),
        "{}",
        stdout(&out)
    );
    // A body's auditor reads part of it: each record is proven.
    let mut verify = args(&["audit", "verify"]);
    verify.extend(conn(&sandbox, &hub, "bravo/auditor-audit"));
    let out = liaison(verify).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("each proven in the signed tree: intact"),
        "{}",
        stdout(&out)
    );

    // Exports verify offline, here and with the independent script in
    // deploy/, whole (recomputed) or in part (each record with its proof).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/verify_audit.py");
    let certs = sandbox.certs().to_path_buf();
    let python = |file: &Path| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(file)
            .arg("--log-key")
            .arg(certs.join("log.vkey"))
            .arg("--witnesses")
            .arg(certs.join("witnesses.vkeys"))
            .output()
            .unwrap()
    };
    for (who, whole) in [
        ("alpha/oversight-ccf", true),
        ("bravo/auditor-audit", false),
    ] {
        let mut export = args(&["audit", "export"]);
        export.extend(conn(&sandbox, &hub, who));
        let out = liaison(export).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let file = sandbox.dir().join("audit.jsonl");
        std::fs::write(&file, &out.stdout).unwrap();
        let head: serde_json::Value =
            serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
        assert_eq!(head["whole_log"], whole, "{head}");
        let checked = python(&file);
        assert!(checked.status.success(), "{who}: {}", stderr(&checked));
        assert!(
            stdout(&checked).contains(": intact"),
            "{}",
            stdout(&checked)
        );
        let mut offline = args(&["audit", "verify", "--file"]);
        offline.push(file.display().to_string());
        offline.extend(args(&["--certs", &certs.display().to_string()]));
        let checked = liaison(offline).await;
        assert!(checked.status.success(), "{who}: {}", stderr(&checked));
        // A record altered in the export is caught by both; so is one
        // deleted from a whole log (a part has no record of what it omits).
        let text = stdout(&out);
        let altered = text.replacen("\"event\":\"routed\"", "\"event\":\"received\"", 1);
        assert_ne!(altered, text);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        let deleted = lines.join("\n");
        let damaged = if whole {
            vec![altered, deleted]
        } else {
            vec![altered]
        };
        for bad in damaged {
            std::fs::write(&file, &bad).unwrap();
            let checked = python(&file);
            assert_eq!(
                checked.status.code(),
                Some(1),
                "{who}: {}",
                stdout(&checked)
            );
            assert!(
                stderr(&checked).starts_with("record "),
                "{}",
                stderr(&checked)
            );
            let mut offline = args(&["audit", "verify", "--file"]);
            offline.push(file.display().to_string());
            offline.extend(args(&["--certs", &certs.display().to_string()]));
            let checked = liaison(offline).await;
            assert_eq!(
                checked.status.code(),
                Some(7),
                "{who}: {}",
                stdout(&checked)
            );
            assert!(
                stdout(&checked).contains("BROKEN at record"),
                "{}",
                stdout(&checked)
            );
        }
    }

    // An officer certificate cannot read the audit log.
    let mut verify = args(&["audit", "verify"]);
    verify.extend(conn(&sandbox, &hub, "alpha/officer-alice"));
    let out = liaison(verify).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    sandbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_check_policies_and_make_a_dev_pki() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, crate::common::GOVERNANCE).unwrap();
    let out = liaison(vec![
        "policy".into(),
        "check".into(),
        good.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok, 4 bodies (1 observers)"),
        "{}",
        stdout(&out)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        crate::common::GOVERNANCE.replace("clearance = \"RESTRICTED\"", "clearance = \"HUSH\""),
    )
    .unwrap();
    let out = liaison(vec![
        "policy".into(),
        "check".into(),
        bad.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml:") && err.contains("clearance"),
        "{err}"
    );

    let certs = dir.path().join("certs");
    let out = liaison(vec![
        "pki".into(),
        "init".into(),
        "--dir".into(),
        certs.display().to_string(),
        "--governance".into(),
        good.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    for f in [
        "ca.pem",
        "hub.pem",
        "alpha/node.pem",
        "obs/officer-alice.pem",
        "bravo/auditor-audit.key.pem",
    ] {
        assert!(Path::new(&certs).join(f).exists(), "{f}");
    }
}

/// The README's first command, as a child process: the whole eleven-body
/// federation, every rule deciding at least once, every inbox checked. Left
/// running, its suggestions go to standard error, so that standard output
/// stays one JSON document.
#[test]
fn the_demo_runs_the_whole_federation_and_agrees_with_itself() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut demo = Streamed::start(&[
        "--output".as_ref(),
        "json".as_ref(),
        "demo".as_ref(),
        "--certs".as_ref(),
        certs.as_os_str(),
        "--keep-running".as_ref(),
    ]);
    demo.wait_for(Stream::Err, "press Ctrl-C to stop");
    let (status, out, err) = demo.terminate();
    assert!(status.success(), "{out}\n{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["messages"].as_array().unwrap().len(), 18);
    // Two overlaps, each noticed on both sides: full, then blind.
    let notices = report["deconfliction"].as_array().unwrap();
    let blind: Vec<bool> = notices
        .iter()
        .map(|n| n["blind"].as_bool().unwrap())
        .collect();
    assert_eq!(blind, [false, false, true, true], "{report}");
    assert!(notices[2]["other_body"].as_str().unwrap().is_empty());
    assert_eq!(report["audit"]["ok"], true);
    assert!(
        certs.join("ca.pem").exists(),
        "dev certificates made on first run"
    );
    assert_eq!(suggested(&err).len(), 2, "{err}");
}

/// Which of a child's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// A `liaison` child whose output is read line by line while it runs
/// (killed and reaped if the test ends first).
struct Streamed {
    child: std::process::Child,
    lines: mpsc::Receiver<(Stream, String)>,
    out: String,
    err: String,
}

impl Streamed {
    fn start(args: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new(EXE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (stream, pipe) in [
            (Stream::Out, Box::new(out) as Box<dyn std::io::Read + Send>),
            (Stream::Err, Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            out: String::new(),
            err: String::new(),
        }
    }

    fn keep(&mut self, (stream, line): (Stream, String)) {
        let text = match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        };
        text.push_str(&line);
        text.push('\n');
    }

    /// Reads output until a line of `stream` contains `needle`.
    fn wait_for(&mut self, stream: Stream, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((s, line)) => {
                    let found = s == stream && line.contains(needle);
                    self.keep((s, line));
                    if found {
                        return;
                    }
                }
                Err(e) => panic!(
                    "no {needle:?} from the demo ({e}); stdout:\n{}\nstderr:\n{}",
                    self.out, self.err
                ),
            }
        }
    }

    /// Sends SIGTERM, waits for the exit and returns it with all output.
    fn terminate(mut self) -> (std::process::ExitStatus, String, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.keep(line);
        }
        (
            status,
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.err),
        )
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The commands the demo suggests (lines running `inbox` or `audit`), as
/// words.
fn suggested(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.contains(" inbox --server ") || l.contains(" audit verify --server "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Runs `liaison` as a suggested command does, checking it names this
/// binary.
fn run_suggested(words: &[String]) -> Output {
    let exe = std::fs::canonicalize(EXE).unwrap();
    assert_eq!(
        std::fs::canonicalize(&words[0]).ok(),
        Some(exe),
        "{words:?} does not run this binary"
    );
    Command::new(&words[0]).args(&words[1..]).output().unwrap()
}

/// Runs of 12 or more digits followed by " ms": milliseconds since the
/// epoch shown raw.
fn raw_timestamps(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut digits = String::new();
    for (i, c) in text.char_indices() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 12 && text[i..].starts_with(" ms") {
            found.push(format!("{digits} ms"));
        }
        digits.clear();
    }
    found
}

/// Whether `s` starts with an RFC 3339 time in seconds, like
/// 2026-12-01T08:05:49Z.
/// Whether `s` starts with an RFC 3339 UTC time, whole seconds
/// (`2026-12-01T10:50:01Z`) or with a fraction (`...01.123Z`).
fn starts_with_rfc_3339(s: &str) -> bool {
    let b = s.as_bytes();
    let date_time = b.len() >= 19
        && b[..19].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !date_time {
        return false;
    }
    let rest = &b[19..];
    let rest = match rest.strip_prefix(b".") {
        Some(fraction) => {
            let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            &fraction[digits..]
        }
        None => rest,
    };
    rest.first() == Some(&b'Z')
}

#[test]
fn the_demo_left_running_suggests_commands_that_run_this_binary_and_shows_times_in_rfc_3339() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut demo = Streamed::start(&[
        "demo".as_ref(),
        "--certs".as_ref(),
        certs.as_os_str(),
        "--keep-running".as_ref(),
    ]);
    demo.wait_for(Stream::Out, "press Ctrl-C to stop");
    let shown = demo.out.clone();

    // The matrix explains the expired alert with times people read.
    assert_eq!(raw_timestamps(&shown), Vec::<String>::new(), "{shown}");
    let expired: Vec<&str> = shown
        .lines()
        .filter_map(|l| l.split_once("message.expired: expired at ").map(|(_, t)| t))
        .collect();
    assert!(!expired.is_empty(), "{shown}");
    for t in expired {
        let (at, now) = t.split_once(", now ").unwrap();
        assert!(starts_with_rfc_3339(at) && starts_with_rfc_3339(now), "{t}");
    }

    // The suggestions run this binary, and work against the federation.
    assert!(!shown.contains("cargo run"), "{shown}");
    let commands = suggested(&shown);
    assert_eq!(commands.len(), 2, "{shown}");
    for words in &commands {
        let out = run_suggested(words);
        assert!(out.status.success(), "{words:?}: {}", stderr(&out));
        if words.contains(&"inbox".to_owned()) {
            assert!(!stdout(&out).contains("inbox is empty"), "{}", stdout(&out));
        } else {
            assert!(stdout(&out).contains("log intact"), "{}", stdout(&out));
        }
    }

    let (status, out, err) = demo.terminate();
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn logs_carry_no_colour_codes_when_standard_error_is_not_a_terminal() {
    for server in ["hub", "node"] {
        // A parent that is not this process's: the server logs an error
        // and exits at once, after setting up logging.
        let out = Command::new(EXE)
            .args([server, "--config", "/nonexistent/liaison.toml"])
            .args(["--exit-with-parent", &u32::MAX.to_string()])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(70), "{server}: {err}");
        assert!(
            err.contains("the parent process is already gone"),
            "{server}: {err}"
        );
        assert!(!err.contains('\u{1b}'), "{server}: {err:?}");
    }
}

#[test]
fn pki_init_outside_the_repository_says_to_pass_the_governance_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(EXE)
        .args(["pki", "init"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("governance file deploy/federation.toml")
            && err.contains("pass --governance <file>"),
        "{err}"
    );
    assert!(!dir.path().join("certs-dev").exists());
}

/// Audit events written as string literals in the hub's source: every
/// `event: "..."` and `event = "..."`, and a literal event in an
/// `audit_base(..)` call (there should be none: the hub writes
/// `liaison_types::audit::Event`s).
fn hub_audit_events() -> BTreeSet<String> {
    fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let literal = |rest: &str| rest.split('"').next().unwrap_or_default().to_owned();
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/hub/src"),
        &mut files,
    );
    let mut events = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for pattern in ["event: \"", "event = \""] {
            for (at, _) in text.match_indices(pattern) {
                events.insert(literal(&text[at + pattern.len()..]));
            }
        }
        for (at, _) in text.match_indices("audit_base(") {
            let call = &text[at..];
            let call = &call[..call.find(')').unwrap_or(call.len())];
            if let Some(quote) = call.find('"') {
                events.insert(literal(&call[quote + 1..]));
            }
        }
    }
    events
}

/// The values `--help` lists under `flag` ("Possible values:" then "- name:
/// what").
fn possible_values(help: &str, flag: &str) -> BTreeSet<String> {
    let mut lines = help
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with(flag))
        .skip_while(|l| *l != "Possible values:")
        .skip(1);
    let mut values = BTreeSet::new();
    while let Some(value) = lines.next().and_then(|l| l.strip_prefix("- ")) {
        values.insert(value.split(':').next().unwrap_or_default().to_owned());
    }
    values
}

#[test]
fn audit_list_offers_every_event_the_hub_writes_and_refuses_any_other() {
    // The hub writes events from one typed list only: no event is a string
    // literal in its source (the scan finds none)...
    let literals = hub_audit_events();
    assert!(
        literals.is_empty(),
        "event names written as string literals in crates/hub: {literals:?}; use liaison_types::audit::Event"
    );
    // ...and `--help` lists exactly that list, with the one event only a
    // node's own log holds (`--node`).
    let written: BTreeSet<String> = liaison_types::audit::Event::ALL
        .iter()
        .map(|e| e.as_str().to_owned())
        .chain(["read".to_owned()])
        .collect();
    let help = stdout(&run(&["audit", "list", "--help"]));
    assert_eq!(possible_values(&help, "--event <EVENT>"), written, "{help}");
    assert_eq!(
        possible_values(&help, "--decision <DECISION>"),
        BTreeSet::from(["deliver".to_owned(), "withhold".to_owned()]),
        "{help}"
    );

    for (flag, value) in [("--event", "delivery"), ("--decision", "allow")] {
        let out = run(&[
            "audit",
            "list",
            "--server",
            "https://127.0.0.1:1",
            flag,
            value,
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}"))
                && err.contains("[possible values: "),
            "{err}"
        );
    }
    let help = stdout(&run(&["admin", "set-state", "--help"]));
    assert_eq!(
        possible_values(&help, "<STATE>"),
        BTreeSet::from(["active", "suspended", "revoked"].map(str::to_owned)),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_unread_says_when_everything_has_been_read() {
    let sandbox = sandbox().await;
    let alpha = sandbox.node_url("alpha").unwrap();
    let bravo = sandbox.node_url("bravo").unwrap();
    let mut inbox = args(&["inbox"]);
    inbox.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    let mut unread = inbox.clone();
    unread.push("--unread".into());
    for a in [&inbox, &unread] {
        let out = liaison(a.clone()).await;
        assert_eq!(stdout(&out), "inbox is empty\n", "{}", stderr(&out));
    }

    let id = submit_alert(&sandbox, &alpha).await;
    let mut listed = args(&["--output", "json", "inbox"]);
    listed.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    wait_listed(&listed, &id).await;
    let mut ack = args(&["ack"]);
    ack.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    ack.push(id.clone());
    assert!(liaison(ack).await.status.success());

    let out = liaison(unread).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "no unread messages (1 read)\n");
    let out = liaison(inbox).await;
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    sandbox.shutdown().await.unwrap();
}

/// Submits an alert from alpha's officer that the test governance delivers
/// to bravo; returns its id.
async fn submit_alert(sandbox: &Sandbox, alpha: &str) -> String {
    let mut a = args(&["--output", "json", "submit"]);
    a.extend(conn(sandbox, alpha, "alpha/officer-alice"));
    a.extend(args(&[
        "--kind",
        "alert",
        "--classification",
        "RESTRICTED",
        "--title",
        "botnet takedown",
        "--crime-area",
        "cybercrime",
        "--text",
        "sinkhole these domains",
    ]));
    let out = liaison(a).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted: Value = serde_json::from_str(&stdout(&out)).unwrap();
    submitted["message_id"].as_str().unwrap().to_owned()
}

/// Waits until `inbox` (JSON lines) lists message `id`.
async fn wait_listed(inbox: &[String], id: &str) {
    wait_until("the inbox lists the message", SETTLE, || {
        let inbox = inbox.to_vec();
        async move {
            let out = liaison(inbox).await;
            stdout(&out)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| v["message_id"] == id)
                .then_some(())
        }
    })
    .await
    .unwrap();
}

/// A server child that dies with the test, pass or fail.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's by-hand path: a second node from `dev node-config`, run as
/// `liaison node`, whose officer reads and acknowledges what another body
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_written_by_dev_node_config_runs_and_its_officer_reads_and_acknowledges() {
    let sandbox = Sandbox::start(SandboxOptions::new(GOVERNANCE).nodes(&["alpha"]))
        .await
        .unwrap();
    let alpha = sandbox.node_url("alpha").unwrap();
    let dir = sandbox.dir().join("by-hand");
    let file = dir.join("bravo.toml");
    let data = dir.join("bravo-data");
    let mut write = args(&["dev", "node-config", "bravo", "--hub"]);
    write.push(sandbox.hub_url());
    write.extend(args(&["--listen", "127.0.0.1:0", "--certs"]));
    write.push(sandbox.certs().display().to_string());
    write.push("--data-dir".into());
    write.push(data.display().to_string());
    let mut printed = write.clone();
    write.push("--out".into());
    write.push(file.display().to_string());

    let out = liaison(write.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(" node --config {}", file.display())),
        "{}",
        stdout(&out)
    );
    let config = liaison_node::NodeConfig::load(&file).unwrap();
    assert_eq!(config.body, "bravo");
    assert_eq!(config.hub, sandbox.hub_url());
    assert_eq!(config.listen.to_string(), "127.0.0.1:0");
    assert_eq!(config.data_dir, data);
    assert_eq!(config.tls.cert, sandbox.certs().join("bravo/node.pem"));
    assert_eq!(config.tls.key, sandbox.certs().join("bravo/node.key.pem"));
    assert_eq!(config.tls.ca, sandbox.certs().join("ca.pem"));

    // Without --out it prints the same configuration.
    let out = liaison(printed.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), std::fs::read_to_string(&file).unwrap());
    // It never replaces a file unasked, and refuses a body without certificates.
    let out = liaison(write).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --force"), "{}", stderr(&out));
    printed[2] = "delta".into();
    let out = liaison(printed).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no node certificate for delta")
            && stderr(&out).contains("alpha, bravo, charlie, obs"),
        "{}",
        stderr(&out)
    );

    let ready = dir.join("bravo.addr");
    let log = std::fs::File::create(dir.join("bravo.log")).unwrap();
    let _node = Server(
        Command::new(EXE)
            .arg("node")
            .arg("--config")
            .arg(&file)
            .arg("--ready-file")
            .arg(&ready)
            .args(["--exit-with-parent", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr = wait_until("the node is listening", SETTLE, || {
        let ready = ready.clone();
        async move { std::fs::read_to_string(ready).ok() }
    })
    .await
    .unwrap();
    let bravo = format!("https://{addr}");

    let id = submit_alert(&sandbox, &alpha).await;
    let mut inbox = args(&["--output", "json", "inbox"]);
    inbox.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    wait_listed(&inbox, &id).await;
    let mut show = args(&["show"]);
    show.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    show.push(id.clone());
    let out = liaison(show).await;
    assert!(
        stdout(&out).contains("text: sinkhole these domains"),
        "{}",
        stdout(&out)
    );
    let mut ack = args(&["ack"]);
    ack.extend(conn(&sandbox, &bravo, "bravo/officer-bob"));
    ack.push(id);
    let out = liaison(ack).await;
    assert!(
        stdout(&out).contains("read by spiffe://liaison.test/org/bravo/officer/bob at "),
        "{}",
        stdout(&out)
    );
    sandbox.shutdown().await.unwrap();
}

/// `liaison submit-batch`: a JSON Lines file of messages, each answered by
/// its line number; a refused line makes the exit code say so without
/// losing the others, and a file with a mistake sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_submits_a_batch_from_a_json_lines_file() {
    let sandbox = sandbox().await;
    let alpha = sandbox.node_url("alpha").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let line = |title: &str, id: Option<&str>| {
        let mut m = serde_json::json!({
            "kind": "alert", "classification": "RESTRICTED", "title": title,
            "crime_areas": ["cybercrime"], "alert": {"text": "sinkhole these domains"},
        });
        if let Some(id) = id {
            m["message_id"] = id.into();
        }
        m.to_string()
    };
    let named = uuid::Uuid::new_v4().to_string();
    let file = dir.path().join("batch.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n\n{}\n",
            line("one", None),
            line("two", Some(&named)),
            line("three", None)
        ),
    )
    .unwrap();
    let batch = |file: &Path, output: &str| {
        let mut a = args(&["--output", output, "submit-batch"]);
        a.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
        a.push(file.display().to_string());
        a
    };

    let out = liaison(batch(&file, "json")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["messages"], 3, "{report}");
    assert_eq!(report["queued"], 3, "{report}");
    assert_eq!(report["refused"], 0, "{report}");
    let lines: Vec<u64> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 4], "blank lines are skipped, not counted");
    assert_eq!(report["results"][1]["message_id"], named.as_str());

    // Again, in words: the named message is known, the others are new.
    let out = liaison(batch(&file, "human")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("line 2: {named} already submitted")),
        "{text}"
    );
    assert!(text.contains("line 1: queued "), "{text}");
    assert!(
        text.contains("2 queued, 0 awaiting approval, 1 already submitted, 0 refused, of 3"),
        "{text}"
    );

    // A line reusing an id for other content is refused; the line after it
    // is stored all the same, and the exit code is the refusal's (3).
    let reuse = dir.path().join("reuse.jsonl");
    std::fs::write(
        &reuse,
        format!(
            "{}\n{}\n",
            line("other content", Some(&named)),
            line("four", None)
        ),
    )
    .unwrap();
    let out = liaison(batch(&reuse, "json")).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["refused"], 1, "{report}");
    assert_eq!(report["results"][0]["code"], "AlreadyExists", "{report}");
    assert_eq!(report["results"][1]["status"], "queued", "{report}");
    assert!(
        stderr(&out).contains("1 of 2 messages refused"),
        "{}",
        stderr(&out)
    );

    // Nothing of a file with a mistake is sent, and the line is named.
    let mut outbox = args(&["--output", "json", "outbox"]);
    outbox.extend(conn(&sandbox, &alpha, "alpha/officer-alice"));
    let before = stdout(&liaison(outbox.clone()).await).lines().count();
    assert_eq!(before, 6, "three, two more, and one");
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, format!("{}\n{{\"kind\": \n", line("five", None))).unwrap();
    let out = liaison(batch(&broken, "json")).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    let out = liaison(batch(&empty, "json")).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds no message"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&liaison(outbox).await).lines().count(), before);
    sandbox.shutdown().await.unwrap();
}
