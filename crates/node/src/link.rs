//! The node's link to the hub: one task pushes the outbox, one task holds the
//! delivery subscription.
//!
//! Both retry with bounded exponential backoff and both are safe to repeat:
//! the hub answers a resubmitted message id with its original outcome, and
//! the inbox ignores a message it already holds. A delivery is acknowledged
//! to the hub only once it is durable in the inbox, so a crash between the
//! two means one redelivery, which the inbox absorbs.

use std::sync::Arc;

use futures::StreamExt;
use liaison_proto::v1 as pb;
use liaison_types::{now_ms, Envelope};
use prost::Message;
use tokio::sync::watch;

use crate::config::{Link, Retry};
use crate::service::NodeState;
use crate::store::{self, Arrival, InboxRecord};

/// Messages pushed per scan of the outbox.
const PUSH_BATCH: usize = 32;
/// Deliveries stored per inbox write when the stream has several ready.
const ARRIVAL_BATCH: usize = 256;

/// Whether a hub refusal is final: retrying the same request cannot
/// succeed (the shared table of [`liaison_proto::status`]).
fn is_final(status: &tonic::Status) -> bool {
    !liaison_proto::status::is_retryable(status)
}

/// A hub status as the outbox records it: code and message.
fn described(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Sleeps for `delay` unless the node is stopping; returns false if stopping.
async fn pause(delay: std::time::Duration, stopping: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = stopping.wait_for(|s| *s) => false,
    }
}

/// Pushes the outbox to the hub, oldest first, until the node stops: up to
/// `link.push_batch` messages per request (`SubmitBatch`), or one `Submit`
/// per message when it is 1.
pub async fn push_outbox(
    state: Arc<NodeState>,
    retry: Retry,
    link: Link,
    mut stopping: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    // Lowered when the hub refuses a batch as too large, so that the next
    // attempt sends fewer messages; a single message always goes.
    let mut bytes_budget = link.push_batch_bytes;
    loop {
        if *stopping.borrow() {
            return;
        }
        let pending = match store::pending(&state.db, link.push_batch) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                failures += 1;
                if !pause(retry.backoff(failures), &mut stopping).await {
                    return;
                }
                continue;
            }
        };
        if pending.is_empty() {
            // Messages first, then retractions: a retraction is only sent
            // once the hub has its message.
            match push_retractions(&state, &retry, &mut failures, &mut stopping).await {
                Progress::Stop => return,
                Progress::Again => continue,
                Progress::Idle => {}
            }
            match push_forward_decisions(&state, &retry, &mut failures, &mut stopping).await {
                Progress::Stop => return,
                Progress::Again => continue,
                Progress::Idle => {}
            }
            tokio::select! {
                () = state.outbox_ready.notified() => continue,
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
        // What was read may include a write not flushed yet (an officer
        // not yet answered): send nothing before it is durable, or a crash
        // could leave the hub holding a message this node forgot.
        if let Err(e) = state.db.barrier().await {
            tracing::error!(error = %e, "cannot make the outbox durable");
            failures += 1;
            if !pause(retry.backoff(failures), &mut stopping).await {
                return;
            }
            continue;
        }
        let batch = match take_batch(&state, pending, bytes_budget).await {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot drop a push queue entry");
                failures += 1;
                if !pause(retry.backoff(failures), &mut stopping).await {
                    return;
                }
                continue;
            }
        };
        let sent = batch.len();
        let answer = if link.push_batch == 1 {
            submit_one(&state, &batch[0]).await
        } else {
            submit_many(&state, &batch).await
        };
        let finished = match answer {
            Ok(results) => {
                failures = 0;
                bytes_budget = link.push_batch_bytes;
                let mut finished = Vec::with_capacity(sent);
                for (p, result) in batch.into_iter().zip(results) {
                    match &result {
                        Ok(resp) => {
                            tracing::debug!(message_id = %p.id, duplicate = resp.duplicate, "hub accepted");
                            state.saw_policy_version(&resp.policy_version);
                        }
                        Err(why) => {
                            tracing::warn!(message_id = %p.id, error = %why, "hub refused for good");
                        }
                    }
                    finished.push(store::Finished {
                        push_seq: p.push_seq,
                        id: p.id,
                        outcome: result,
                    });
                }
                tracing::info!(messages = sent, "pushed to the hub");
                // The checkpoint the hub answered with is checked by the
                // witness like any other (the last one covers the others).
                if let Some(note) = finished
                    .iter()
                    .rev()
                    .find_map(|f| f.outcome.as_ref().ok().map(|r| r.checkpoint.clone()))
                {
                    state.witness.offer(note);
                }
                store::finish_pushes(&state.db, finished).await
            }
            Err(status) if sent > 1 && is_too_large(&status) => {
                // Nothing was stored: send fewer at a time.
                bytes_budget = (bytes_budget / 2).max(1);
                tracing::warn!(messages = sent, error = %status.message(), "hub refused a push batch as too large; sending smaller batches");
                continue;
            }
            Err(status) if is_final(&status) => {
                // The request as a whole is refused for good (for example
                // this body is not in the federation): as it would be for
                // each message alone.
                tracing::warn!(messages = sent, code = %status.code(), error = status.message(), "hub refused for good");
                let why = described(&status);
                let finished = batch
                    .into_iter()
                    .map(|p| store::Finished {
                        push_seq: p.push_seq,
                        id: p.id,
                        outcome: Err(why.clone()),
                    })
                    .collect();
                store::finish_pushes(&state.db, finished).await
            }
            Err(status) => {
                failures += 1;
                let delay = retry.backoff(failures);
                tracing::warn!(messages = sent, error = %status.message(), retry_in_ms = delay.as_millis(), "push failed; will retry");
                let ids = batch.into_iter().map(|p| p.id).collect();
                if let Err(e) =
                    store::note_attempts(&state.db, ids, status.message().to_owned()).await
                {
                    tracing::error!(error = %e, "cannot record push attempt");
                }
                if !pause(delay, &mut stopping).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = finished {
            tracing::error!(error = %e, "cannot record push outcome");
            failures += 1;
            if !pause(retry.backoff(failures), &mut stopping).await {
                return;
            }
        }
    }
}

/// Whether the hub refused a request for its size.
fn is_too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::ResourceExhausted && is_final(status)
}

/// The oldest pending messages that fit in `bytes` (at least one), after
/// dropping any entry that is not released (it is never sent).
async fn take_batch(
    state: &NodeState,
    pending: Vec<store::Pending>,
    bytes: usize,
) -> Result<Vec<store::Pending>, crate::NodeError> {
    let mut batch = Vec::with_capacity(pending.len());
    let mut size = 0usize;
    for p in pending {
        if !p.releasable {
            // Only released messages are ever queued for the hub; never
            // send anything else, whatever the store says.
            tracing::error!(message_id = %p.id, "push queue held a message that is not released; dropped unsent");
            store::drop_push(&state.db, p.push_seq).await?;
            // Keep the order: what follows goes in the next round.
            break;
        }
        let len = p.envelope.encoded_len() + p.approved_by.len() + 16;
        if !batch.is_empty() && size + len > bytes {
            break;
        }
        size += len;
        batch.push(p);
    }
    Ok(batch)
}

/// When the node traces: a `message.push` span per message, child of its
/// submission's trace, held until the hub answers, and the trace context
/// each message carries to the hub. Empty contexts otherwise.
fn push_spans(batch: &[store::Pending]) -> (Vec<tracing::Span>, Vec<String>) {
    if !liaison_telemetry::trace::enabled() {
        return (Vec::new(), vec![String::new(); batch.len()]);
    }
    batch
        .iter()
        .map(|p| {
            let span = tracing::info_span!(parent: None, "message.push", message_id = %p.id);
            liaison_telemetry::trace::set_parent(&span, &p.traceparent);
            let tp = liaison_telemetry::trace::traceparent(&span);
            (span, tp)
        })
        .unzip()
}

/// One message, one `Submit`.
async fn submit_one(
    state: &NodeState,
    p: &store::Pending,
) -> Result<Vec<Result<pb::SubmitResponse, String>>, tonic::Status> {
    let mut hub = state.hub.clone();
    let (spans, traces) = push_spans(std::slice::from_ref(p));
    let mut req = tonic::Request::new(pb::SubmitRequest {
        envelope: Some(p.envelope.clone()),
        approved_by: p.approved_by.clone(),
        traceparent: traces.into_iter().next().unwrap_or_default(),
        targets: p.targets.clone(),
    });
    if let Some(span) = spans.first() {
        liaison_telemetry::trace::inject(span, req.metadata_mut());
    }
    let result = hub.submit(req).await;
    drop(spans);
    match result {
        Ok(resp) => Ok(vec![Ok(resp.into_inner())]),
        Err(status) if is_final(&status) && !is_too_large(&status) => {
            Ok(vec![Err(described(&status))])
        }
        Err(status) => Err(status),
    }
}

/// A batch in one `SubmitBatch`: one result per message, in order.
async fn submit_many(
    state: &NodeState,
    batch: &[store::Pending],
) -> Result<Vec<Result<pb::SubmitResponse, String>>, tonic::Status> {
    let mut hub = state.hub.clone();
    let (spans, traces) = push_spans(batch);
    let submissions = batch
        .iter()
        .zip(traces)
        .map(|(p, traceparent)| pb::SubmitRequest {
            envelope: Some(p.envelope.clone()),
            approved_by: p.approved_by.clone(),
            traceparent,
            targets: p.targets.clone(),
        })
        .collect();
    let mut req = tonic::Request::new(pb::SubmitBatchRequest { submissions });
    let rpc = tracing::info_span!("outbox.push", messages = batch.len());
    liaison_telemetry::trace::inject(&rpc, req.metadata_mut());
    let resp = hub.submit_batch(req).await?.into_inner();
    drop(spans);
    if resp.results.len() != batch.len() {
        return Err(tonic::Status::internal(format!(
            "the hub answered {} results for {} submissions",
            resp.results.len(),
            batch.len()
        )));
    }
    resp.results
        .into_iter()
        .map(|r| match r.result {
            Some(pb::submit_result::Result::Accepted(resp)) => Ok(Ok(resp)),
            Some(pb::submit_result::Result::Refused(refused)) => {
                let code = tonic::Code::from_i32(refused.code);
                let status = tonic::Status::new(code, refused.message);
                if is_final(&status) {
                    Ok(Err(described(&status)))
                } else {
                    // The hub refuses per message only for the caller's
                    // input; anything else fails the whole batch.
                    Err(status)
                }
            }
            None => Err(tonic::Status::internal(
                "the hub answered a submission with no result",
            )),
        })
        .collect()
}

/// What a round of retractions did.
enum Progress {
    /// Nothing to send.
    Idle,
    /// Something was sent, or a failure was waited out: look again.
    Again,
    /// The node is stopping.
    Stop,
}

/// Counts a failure and waits out its backoff.
async fn wait_out(
    retry: &Retry,
    failures: &mut u32,
    stopping: &mut watch::Receiver<bool>,
) -> Progress {
    *failures += 1;
    if pause(retry.backoff(*failures), stopping).await {
        Progress::Again
    } else {
        Progress::Stop
    }
}

/// Sends the pending retractions to the hub, oldest first.
async fn push_retractions(
    state: &NodeState,
    retry: &Retry,
    failures: &mut u32,
    stopping: &mut watch::Receiver<bool>,
) -> Progress {
    let pending = match store::pending_retractions(&state.db, PUSH_BATCH) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot read pending retractions");
            return wait_out(retry, failures, stopping).await;
        }
    };
    if pending.is_empty() {
        return Progress::Idle;
    }
    // Send only what is durable (see push_outbox).
    if let Err(e) = state.db.barrier().await {
        tracing::error!(error = %e, "cannot make the outbox durable");
        return wait_out(retry, failures, stopping).await;
    }
    for p in pending {
        let mut hub = state.hub.clone();
        let result = hub
            .retract(pb::RetractRequest {
                message_id: p.message_id.clone(),
                reason: p.reason.clone(),
            })
            .await;
        let outcome = match result {
            Ok(_) => Ok(()),
            Err(status) if is_final(&status) => Err(described(&status)),
            Err(status) => {
                tracing::warn!(message_id = %p.message_id, error = %status.message(), "retraction failed; will retry");
                return wait_out(retry, failures, stopping).await;
            }
        };
        *failures = 0;
        tracing::info!(message_id = %p.message_id, ok = outcome.is_ok(), "retraction sent to the hub");
        if let Err(e) = store::finish_retraction(&state.db, p.message_id, outcome).await {
            tracing::error!(error = %e, "cannot record a retraction");
        }
    }
    Progress::Again
}

/// Sends officers' decisions on forward requests to the hub, oldest first.
async fn push_forward_decisions(
    state: &NodeState,
    retry: &Retry,
    failures: &mut u32,
    stopping: &mut watch::Receiver<bool>,
) -> Progress {
    let pending = match store::pending_forward_decisions(&state.db, PUSH_BATCH) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot read pending forward decisions");
            return wait_out(retry, failures, stopping).await;
        }
    };
    if pending.is_empty() {
        return Progress::Idle;
    }
    // Send only what is durable (see push_outbox).
    if let Err(e) = state.db.barrier().await {
        tracing::error!(error = %e, "cannot make the outbox durable");
        return wait_out(retry, failures, stopping).await;
    }
    for p in pending {
        let mut hub = state.hub.clone();
        let result = hub
            .decide_forward(pb::DecideForwardRequest {
                request_id: p.request_id.clone(),
                approve: p.approve,
                reason: p.reason.clone(),
                decided_by: p.decided_by.clone(),
            })
            .await;
        let outcome = match result {
            Ok(resp) => {
                let r = resp.into_inner();
                Ok(match pb::ForwardState::try_from(r.state) {
                    Ok(pb::ForwardState::Forwarded) => "forwarded".to_owned(),
                    Ok(pb::ForwardState::Withheld) => {
                        format!("withheld ({}: {})", r.rule, r.reason)
                    }
                    Ok(pb::ForwardState::Refused) => "refused".to_owned(),
                    _ => format!("state {}", r.state),
                })
            }
            Err(status) if is_final(&status) => Err(described(&status)),
            Err(status) => {
                tracing::warn!(request_id = %p.request_id, error = %status.message(), "forward decision failed; will retry");
                return wait_out(retry, failures, stopping).await;
            }
        };
        *failures = 0;
        tracing::info!(request_id = %p.request_id, approve = p.approve, outcome = %match &outcome { Ok(s) | Err(s) => s.as_str() }, "forward decision sent to the hub");
        if let Err(e) = store::finish_forward_decision(&state.db, p.request_id, outcome).await {
            tracing::error!(error = %e, "cannot record a forward decision");
        }
    }
    Progress::Again
}

/// Holds the delivery subscription, storing deliveries in the inbox and
/// acknowledging them, until the node stops.
pub async fn receive(state: Arc<NodeState>, retry: Retry, mut stopping: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        if *stopping.borrow() {
            return;
        }
        let outcome = tokio::select! {
            r = receive_once(&state, &mut failures) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        if let Err(e) = outcome {
            state.health.set_hub_link(false);
            failures += 1;
            let delay = retry.backoff(failures);
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "hub subscription interrupted");
            if !pause(delay, &mut stopping).await {
                return;
            }
        }
    }
}

/// One subscription: runs until the stream fails or ends.
async fn receive_once(state: &NodeState, failures: &mut u32) -> Result<(), String> {
    let cursor = store::hub_cursor(&state.db).map_err(|e| e.to_string())?;
    let mut hub = state.hub.clone();
    let stream = hub
        .subscribe(pb::SubscribeRequest { after_seq: cursor })
        .await
        .map_err(|s| described(&s))?
        .into_inner();
    tracing::info!(after = cursor, "subscribed to the hub");
    state.health.set_hub_link(true);
    // Back in touch with the hub: check its log now.
    state.witness.nudge();
    *failures = 0;
    let mut batches = stream.ready_chunks(ARRIVAL_BATCH);
    while let Some(batch) = batches.next().await {
        let mut arrivals = Vec::with_capacity(batch.len());
        let mut quarantined = Vec::new();
        let mut last = 0;
        // Each traced message's span, held until it is stored and
        // acknowledged.
        let mut delivered: Vec<tracing::Span> = Vec::new();
        for item in batch {
            let delivery = item.map_err(|s| described(&s))?;
            last = delivery.seq;
            let raw = delivery.encode_to_vec();
            let (seq, message_id, origin) = delivery_ids(&delivery);
            if liaison_telemetry::trace::enabled() && !delivery.traceparent.is_empty() {
                let span = tracing::info_span!(parent: None, "message.deliver", message_id = %message_id, hub_seq = seq);
                liaison_telemetry::trace::set_parent(&span, &delivery.traceparent);
                delivered.push(span);
            }
            match arrival(delivery) {
                Ok(a) => arrivals.push(a),
                // The hub validated it on the way in, so this is a hub bug
                // or damage on the way. Never skip it silently: keep it in
                // quarantine with the reason, raise the alarm (this log line
                // and the node's status), and tell the hub with the
                // acknowledgement, which records it as quarantined, not
                // delivered.
                Err(reason) => {
                    let reason = liaison_types::text::escape_line(&reason)
                        .chars()
                        .take(500)
                        .collect::<String>();
                    tracing::error!(seq, message_id = %message_id, origin = %origin, reason = %reason, "hub delivered a message this node cannot accept; kept in quarantine");
                    quarantined.push(pb::QuarantinedDelivery {
                        seq,
                        reason: reason.clone(),
                    });
                    arrivals.push(Arrival::Quarantine {
                        record: store::QuarantineRecord {
                            hub_seq: seq,
                            message_id,
                            origin,
                            reason,
                            at_ms: now_ms(),
                        },
                        raw,
                    });
                }
            }
        }
        let expiring = arrivals.iter().any(|a| match a {
            Arrival::Message { envelope, record } => {
                record.erase_at_ms > 0
                    || envelope
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.expires_at_ms > 0)
            }
            _ => false,
        });
        // Summaries for the inbox watchers, if any: made before the write
        // takes the arrivals, sent after it for those that were new.
        let mut watched: std::collections::HashMap<String, pb::InboxSummary> =
            if state.inbox_feed.receiver_count() > 0 {
                arrivals
                    .iter()
                    .filter_map(|a| match a {
                        Arrival::Message { envelope, record } => Some((
                            record.message_id.clone(),
                            crate::service::summary(record, envelope),
                        )),
                        _ => None,
                    })
                    .collect()
            } else {
                std::collections::HashMap::new()
            };
        // While the witness is in alarm, what arrives is marked: the hub's
        // record of it cannot be trusted.
        if state.witness.alarm().is_some() {
            for a in &mut arrivals {
                if let Arrival::Message { record, .. } = a {
                    record.unverified_log = true;
                }
            }
        }
        let new = store::store_arrivals(&state.db, arrivals, last)
            .await
            .map_err(|e| e.to_string())?;
        if expiring {
            state.inbox_changed.notify_one();
        }
        for id in &new {
            if let Some(summary) = watched.remove(id) {
                // No watcher left is no error.
                let _ = state.inbox_feed.send(summary);
            }
        }
        let new = new.len();
        state.metrics.received.inc_by(new as u64);
        state
            .metrics
            .quarantined_total
            .inc_by(quarantined.len() as u64);
        let mut ack = tonic::Request::new(pb::AcknowledgeRequest {
            seq: last,
            quarantined,
        });
        if let Some(first) = delivered.first() {
            liaison_telemetry::trace::inject(first, ack.metadata_mut());
        }
        hub.acknowledge(ack)
            .await
            .map_err(|s| format!("acknowledging {last}: {:?}: {}", s.code(), s.message()))?;
        drop(delivered);
        tracing::info!(up_to = last, new, "deliveries stored and acknowledged");
    }
    Err("the hub closed the subscription".into())
}

/// A delivery's position, message id and origin, escaped for a record
/// (they may be what is wrong with it).
fn delivery_ids(d: &pb::Delivery) -> (u64, String, String) {
    let labels = d.envelope.as_ref().and_then(|e| e.labels.as_ref());
    let (id, origin) = if let Some(l) = labels {
        (l.message_id.as_str(), l.origin.as_str())
    } else if let Some(w) = &d.withdrawal {
        (w.message_id.as_str(), w.origin.as_str())
    } else if let Some(f) = &d.forward_request {
        (f.message_id.as_str(), "")
    } else if let Some(n) = &d.notice {
        (n.message_id.as_str(), "")
    } else if let Some(r) = d.receipt.as_ref().or(d.receipts.first()) {
        (r.message_id.as_str(), r.recipient.as_str())
    } else {
        ("", "")
    };
    let clip = |s: &str| -> String {
        liaison_types::text::escape_line(s)
            .chars()
            .take(80)
            .collect()
    };
    (d.seq, clip(id), clip(origin))
}

fn arrival(d: pb::Delivery) -> Result<Arrival, String> {
    if d.receipt.is_some() || !d.receipts.is_empty() {
        return d
            .receipt
            .into_iter()
            .chain(d.receipts)
            .map(|r| {
                let message_id =
                    liaison_types::normalise_message_id(&r.message_id).ok_or_else(|| {
                        format!("receipt for an invalid message id {:?}", r.message_id)
                    })?;
                Ok(store::ReceiptArrival {
                    message_id,
                    recipient: r.recipient,
                    at_ms: r.received_at_ms,
                    quarantined: r.quarantined.then_some(r.reason),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Arrival::Receipts);
    }
    if let Some(n) = d.notice {
        let reference_ok = n.reference.starts_with("dx-")
            && n.reference.len() == 19
            && n.reference[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if !reference_ok {
            return Err(format!(
                "deconfliction notice with an invalid reference {:?}",
                n.reference
            ));
        }
        if liaison_types::normalise_message_id(&n.plan_id).as_deref() != Some(n.plan_id.as_str()) {
            return Err(format!(
                "deconfliction notice for an invalid plan id {:?}",
                n.plan_id
            ));
        }
        return Ok(Arrival::Notice {
            seq: d.seq,
            notice: Box::new(n),
        });
    }
    if let Some(f) = d.forward_request {
        let valid = |id: &str, what: &str| {
            liaison_types::normalise_message_id(id)
                .ok_or_else(|| format!("forward request with an invalid {what} {id:?}"))
        };
        return Ok(Arrival::ForwardRequest(Box::new(
            store::ForwardRequestRecord {
                request_id: valid(&f.request_id, "request id")?,
                message_id: valid(&f.message_id, "message id")?,
                requester: f.requester,
                requested_by: f.requested_by,
                to: f.to,
                reason: f.reason,
                requested_at_ms: f.requested_at_ms,
                hub_seq: d.seq,
                state: store::ForwardDecisionState::Pending,
                decided_by: String::new(),
                decided_at_ms: 0,
                decision_reason: String::new(),
                hub_outcome: String::new(),
            },
        )));
    }
    if let Some(w) = d.withdrawal {
        let cause = match pb::WithdrawalCause::try_from(w.cause) {
            Ok(pb::WithdrawalCause::Retracted) => "retracted",
            Ok(pb::WithdrawalCause::Expired) => "expired",
            _ => {
                return Err(format!(
                    "withdrawal of {} with unknown cause {}",
                    w.message_id, w.cause
                ))
            }
        };
        let message_id = liaison_types::normalise_message_id(&w.message_id)
            .ok_or_else(|| format!("withdrawal of an invalid message id {:?}", w.message_id))?;
        return Ok(Arrival::Withdrawal {
            seq: d.seq,
            message_id,
            origin: w.origin,
            marking: d.recipient_marking,
            note: store::WithdrawalNote {
                cause: cause.to_owned(),
                reason: w.reason,
                at_ms: w.withdrawn_at_ms,
            },
        });
    }
    let envelope = d
        .envelope
        .ok_or("delivery without envelope or withdrawal")?;
    let (env, body) = Envelope::parse(envelope).map_err(|e| e.to_string())?;
    let envelope = pb::Envelope::from(&env);
    Ok(Arrival::Message {
        record: InboxRecord {
            message_id: env.labels.message_id.clone(),
            hub_seq: d.seq,
            received_at_ms: now_ms(),
            marking: d.recipient_marking,
            title: body.title().to_owned(),
            read_by: String::new(),
            read_at_ms: 0,
            withdrawn: None,
            erase_at_ms: d.erase_at_ms,
            leaf_index: d.leaf_index,
            tree_size: d.tree_size,
            unverified_log: false,
        },
        envelope: Box::new(envelope),
    })
}

/// How often the node asks the hub whether its governance changed, when
/// nothing else told it.
const GOVERNANCE_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the node's copy of the hub's governance in force, until the node
/// stops: fetched at start, then every [`GOVERNANCE_REFRESH`] and whenever a
/// hub answer is stamped with another version. A copy is put in use only
/// when parsing the hub's text and applying its overrides gives exactly the
/// version the hub announced; otherwise the node keeps the one it had and
/// says so in its log.
pub async fn follow_governance(
    state: Arc<NodeState>,
    retry: crate::config::Retry,
    mut stopping: watch::Receiver<bool>,
) {
    let mut failures = 0;
    loop {
        let known = state
            .governance()
            .map(|g| g.version().to_owned())
            .unwrap_or_default();
        let mut hub = state.hub.clone();
        let wait = match hub
            .get_governance(pb::GetGovernanceRequest {
                known_version: known.clone(),
            })
            .await
        {
            Ok(resp) => {
                failures = 0;
                let snap = resp.into_inner();
                if !snap.unchanged {
                    match verified_governance(&snap) {
                        Ok(gov) => {
                            tracing::info!(version = %gov.version(), previous = %known, "governance in force at the hub fetched");
                            state
                                .witness
                                .check_agreed_key(&state.db, gov.audit_log_key())
                                .await;
                            *state.governance.write().unwrap_or_else(|p| p.into_inner()) =
                                Some(Arc::new(gov));
                        }
                        Err(e) => {
                            tracing::error!(version = %snap.version, error = %e, "the hub's governance does not verify; keeping the one held")
                        }
                    }
                }
                GOVERNANCE_REFRESH
            }
            Err(status) => {
                failures += 1;
                tracing::debug!(error = %status.message(), "cannot fetch the hub's governance; will retry");
                retry.backoff(failures).min(GOVERNANCE_REFRESH)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.governance_stale.notified() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Parses a governance snapshot and checks it against its version.
fn verified_governance(
    snap: &pb::GovernanceSnapshot,
) -> Result<liaison_policy::Governance, String> {
    let file = liaison_policy::Governance::from_toml("the hub's governance", &snap.text)
        .map_err(|e| e.to_string())?;
    let mut overrides = std::collections::BTreeMap::new();
    for o in &snap.overrides {
        let body = liaison_types::BodyId::parse(&o.body).map_err(|e| e.to_string())?;
        let state = liaison_policy::State::parse(&o.state)
            .ok_or_else(|| format!("unknown state '{}'", o.state.escape_debug()))?;
        overrides.insert(body, state);
    }
    let gov = file.with_states(&overrides);
    if gov.version() != snap.version {
        return Err(format!(
            "the text and overrides give version {}, not the announced {}",
            gov.version(),
            snap.version
        ));
    }
    Ok(gov)
}

/// Erases expired messages from the inbox when they expire, until the node
/// stops: they leave the inbox as a withdrawal does (labels and a tombstone
/// stay, the content goes).
pub async fn expire_inbox(state: Arc<NodeState>, mut stopping: watch::Receiver<bool>) {
    loop {
        let next = match store::next_inbox_expiry(&state.db) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "cannot read inbox expiries; expired messages stay until restart");
                return;
            }
        };
        let wait = next
            .map(|t| std::time::Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)));
        tokio::select! {
            () = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
            () = state.inbox_changed.notified() => continue,
            _ = stopping.wait_for(|s| *s) => return,
        }
        match store::expire_inbox(&state.db, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "expired messages erased from the inbox"),
            Err(e) => {
                tracing::error!(error = %e, "cannot erase expired messages; retrying shortly");
                if !pause(std::time::Duration::from_secs(1), &mut stopping).await {
                    return;
                }
            }
        }
    }
}
