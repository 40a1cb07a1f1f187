//! `liaison submit-batch`: many messages to the officer's own node, in
//! batches of up to [`MAX_OFFICER_BATCH`] messages and [`BATCH_BYTES`] per
//! request, each batch stored in one write.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use liaison_node::MAX_OFFICER_BATCH;
use liaison_proto::v1 as pb;
use liaison_proto::v1::officer_submit_result::Result as Answer;
use serde_json::json;

use crate::message::MessageSpec;
use crate::officer::client;
use crate::{Connection, Failure, Output};

/// Most bytes of encoded messages per request, below a node's default
/// request limit (`[limits] max_request_bytes`, 512 KiB); a larger message
/// goes alone.
pub const BATCH_BYTES: usize = 384 * 1024;

/// Arguments of `submit-batch`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Where and who.
    #[command(flatten)]
    pub conn: Connection,
    /// A JSON Lines file, `-` for standard input: one message per line, with
    /// the fields of a JSON message file. Give each a `message_id` to make
    /// a rerun after a failure safe (the node then knows what it already
    /// holds).
    pub file: PathBuf,
}

/// Reads and checks every line before anything is sent, so that a file with
/// a mistake sends nothing. Blank lines are skipped; each message keeps its
/// line number for the report.
fn read_lines(args: &BatchArgs) -> Result<Vec<(usize, pb::OfficerSubmitRequest)>> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read messages from standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read message file {}", args.file.display()))?
    };
    let name = args.file.display();
    let mut messages = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| -> anyhow::Error {
            Failure {
                code: 2,
                message: format!("{name}: line {line_no}: {problem}; nothing was sent"),
            }
            .into()
        };
        let spec: MessageSpec =
            serde_json::from_str(line).map_err(|e| bad(format!("column {}: {e}", e.column())))?;
        let (labels, body) = spec.to_request().map_err(|e| bad(e.to_string()))?;
        messages.push((
            line_no,
            pb::OfficerSubmitRequest {
                clear_targets: false,
                targets: Vec::new(),
                labels: Some(labels),
                body: Some(body),
            },
        ));
    }
    if messages.is_empty() {
        return Err(Failure {
            code: 2,
            message: format!("{name} holds no message; write one JSON message per line"),
        }
        .into());
    }
    Ok(messages)
}

/// What became of one line.
struct Line {
    line: usize,
    answer: Answer,
}

/// `liaison submit-batch`.
pub async fn submit_batch(args: BatchArgs, out: Output) -> Result<()> {
    let messages = read_lines(&args)?;
    let total = messages.len();
    let mut node = client(&args.conn).await?;
    let mut done: Vec<Line> = Vec::with_capacity(total);
    let mut failure = None;
    let mut rest = messages.into_iter().peekable();
    while rest.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some((_, m)) = rest.peek() {
            let size = prost::Message::encoded_len(m);
            if !chunk.is_empty() && (chunk.len() == MAX_OFFICER_BATCH || bytes + size > BATCH_BYTES)
            {
                break;
            }
            bytes += size;
            chunk.extend(rest.next());
        }
        let lines: Vec<usize> = chunk.iter().map(|(n, _)| *n).collect();
        let request = pb::OfficerSubmitBatchRequest {
            messages: chunk.into_iter().map(|(_, m)| m).collect(),
        };
        match node.submit_batch(request).await {
            Ok(resp) => {
                let results = resp.into_inner().results;
                if results.len() != lines.len() {
                    failure = Some(anyhow!(
                        "the node answered {} results for {} messages; check the outbox with: liaison outbox",
                        results.len(),
                        lines.len()
                    ));
                    break;
                }
                for (line, r) in lines.into_iter().zip(results) {
                    let answer = r.result.ok_or_else(|| {
                        anyhow!("the node answered line {line} with nothing; check the outbox with: liaison outbox")
                    })?;
                    done.push(Line { line, answer });
                }
            }
            Err(s) => {
                let first = lines.first().copied().unwrap_or_default();
                failure = Some(
                    Failure::status(
                        &format!("submit-batch refused from line {first} on (lines before it are stored)"),
                        &s,
                    )
                    .into(),
                );
                break;
            }
        }
    }
    report(&done, total, out)?;
    if let Some(f) = failure {
        return Err(f);
    }
    let refused: Vec<&pb::RefusedSubmission> = done
        .iter()
        .filter_map(|l| match &l.answer {
            Answer::Refused(r) => Some(r),
            Answer::Accepted(_) => None,
        })
        .collect();
    if let Some(first) = refused.first() {
        let code = liaison_proto::status::classify(tonic::Code::from(first.code)).exit_code;
        return Err(Failure {
            code,
            message: format!(
                "{} of {total} messages refused (see above); the others are stored",
                refused.len()
            ),
        }
        .into());
    }
    Ok(())
}

fn report(done: &[Line], total: usize, out: Output) -> Result<()> {
    let count = |f: &dyn Fn(&Answer) -> bool| done.iter().filter(|l| f(&l.answer)).count();
    let refused = count(&|a| matches!(a, Answer::Refused(_)));
    let duplicates = count(&|a| matches!(a, Answer::Accepted(r) if r.duplicate));
    let awaiting = count(
        &|a| matches!(a, Answer::Accepted(r) if !r.duplicate && r.status == "awaiting_approval"),
    );
    let queued = done.len() - refused - duplicates - awaiting;
    match out {
        Output::Json => {
            let results: Vec<_> = done
                .iter()
                .map(|l| match &l.answer {
                    Answer::Accepted(r) => json!({
                        "line": l.line, "message_id": r.message_id, "status": r.status,
                        "duplicate": r.duplicate, "approval_reason": r.approval_reason,
                    }),
                    Answer::Refused(r) => json!({
                        "line": l.line, "message_id": r.message_id, "status": "refused",
                        "code": format!("{:?}", tonic::Code::from(r.code)), "reason": r.message,
                    }),
                })
                .collect();
            say!(
                "{}",
                json!({
                    "messages": total, "answered": done.len(), "queued": queued,
                    "awaiting_approval": awaiting, "duplicates": duplicates, "refused": refused,
                    "results": results,
                })
            );
        }
        Output::Human => {
            for l in done {
                match &l.answer {
                    Answer::Accepted(r) if r.duplicate => say!(
                        "line {}: {} already submitted ({}); nothing new sent",
                        l.line,
                        r.message_id,
                        r.status
                    ),
                    Answer::Accepted(r) if r.status == "awaiting_approval" => say!(
                        "line {}: {} awaits approval by a second officer: {}",
                        l.line,
                        r.message_id,
                        r.approval_reason
                    ),
                    Answer::Accepted(r) => say!("line {}: queued {}", l.line, r.message_id),
                    Answer::Refused(r) => say!(
                        "line {}: refused {}: {} ({:?})",
                        l.line,
                        if r.message_id.is_empty() {
                            "(no id)"
                        } else {
                            r.message_id.as_str()
                        },
                        r.message,
                        tonic::Code::from(r.code)
                    ),
                }
            }
            say!(
                "{queued} queued, {awaiting} awaiting approval, {duplicates} already submitted, {refused} refused, of {total}"
            );
            if queued > 0 {
                say!("see how the hub routed them with: liaison outbox");
            }
        }
    }
    Ok(())
}
