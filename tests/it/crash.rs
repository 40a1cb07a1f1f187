//! The hub killed with SIGKILL, as a child process, while nodes submit to it
//! and while it is idle: after a restart on the same port and store, every
//! acknowledged message is still stored, queued once for each entitled
//! recipient and audited once, the acknowledged queue positions hold, and
//! the audit chain verifies. And the crash suite (`liaison crash-test`):
//! kills of the hub and of the nodes under load, checked from the outside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use liaison_federation::{wait_until, Sandbox, SandboxOptions};
use liaison_proto::v1 as pb;
use liaison_proto::v1::federation_client::FederationClient;
use pb::{Classification as C, Kind as K};
use tonic::transport::Channel;

use crate::common::{alert, assessment, audit_records, envelope, labels, GOVERNANCE, SETTLE};

/// Concurrent submitters; the last one submits as bravo, the others as alpha.
const WRITERS: usize = 4;
/// Acknowledged submissions to wait for in each round before the kill.
const ACKED_PER_ROUND: usize = 30;
/// Kill and restart this many times.
const ROUNDS: usize = 3;
/// Most submissions one writer makes in one round.
const MAX_PER_WRITER: usize = 300;
/// Longest a single Submit may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Acknowledge every this many deliveries while collecting.
const ACK_EVERY: usize = 16;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_liaison-child"))
}

/// The kinds of message the writers send, each with the recipients the
/// test governance delivers it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Template {
    /// alpha: an open drugs assessment, for every other body.
    AlphaAssessment,
    /// alpha: a cybercrime alert, for bravo only.
    AlphaAlert,
    /// bravo: a drugs alert, for alpha and charlie.
    BravoAlert,
}

impl Template {
    fn origin(self) -> &'static str {
        match self {
            Self::AlphaAssessment | Self::AlphaAlert => "alpha",
            Self::BravoAlert => "bravo",
        }
    }

    fn recipients(self) -> BTreeSet<String> {
        let r: &[&str] = match self {
            Self::AlphaAssessment => &["bravo", "charlie", "obs"],
            Self::AlphaAlert => &["bravo"],
            Self::BravoAlert => &["alpha", "charlie"],
        };
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    fn envelope(self, title: &str) -> pb::Envelope {
        match self {
            Self::AlphaAssessment => envelope(
                "alpha",
                labels(K::ThreatAssessment, C::OfficialUse, &["drugs"]),
                &assessment(title),
            ),
            Self::AlphaAlert => envelope(
                "alpha",
                labels(K::Alert, C::OfficialUse, &["cybercrime"]),
                &alert(title),
            ),
            Self::BravoAlert => envelope(
                "bravo",
                labels(K::Alert, C::OfficialUse, &["drugs"]),
                &alert(title),
            ),
        }
    }
}

fn id_of(env: &pb::Envelope) -> String {
    env.labels.as_ref().unwrap().message_id.clone()
}

fn delivered_to(decisions: &[pb::RoutingDecision]) -> BTreeSet<String> {
    decisions
        .iter()
        .filter(|d| d.outcome == pb::Outcome::Deliver as i32)
        .map(|d| d.recipient.clone())
        .collect()
}

/// A message a writer created.
#[derive(Debug, Clone)]
struct Sent {
    template: Template,
    envelope: pb::Envelope,
}

/// What the writers saw.
#[derive(Debug, Default)]
struct Ledger {
    /// Submissions the hub acknowledged, with its answer.
    acked: BTreeMap<String, (Sent, pb::SubmitResponse)>,
    /// Submissions that failed or were in flight at the kill.
    unacked: BTreeMap<String, Sent>,
    /// How the unacknowledged ones failed, for the log.
    failures: BTreeMap<String, usize>,
}

/// Submits messages of `templates` in turn until `stop` or the first
/// failure, recording each outcome.
async fn writer(
    hub: FederationClient<Channel>,
    templates: Vec<Template>,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tag: String,
) {
    for n in 0..MAX_PER_WRITER {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let template = templates[n % templates.len()];
        let sent = Sent {
            template,
            envelope: template.envelope(&format!("{tag} #{n}")),
        };
        let id = id_of(&sent.envelope);
        let mut client = hub.clone();
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            client.submit(pb::SubmitRequest {
                targets: Vec::new(),
                envelope: Some(sent.envelope.clone()),
                approved_by: String::new(),
                traceparent: String::new(),
            }),
        )
        .await;
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok(Ok(resp)) => {
                ledger.acked.insert(id, (sent, resp.into_inner()));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            // The hub is gone: like a node, stop and retry later.
            Ok(Err(status)) => {
                *ledger
                    .failures
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                ledger.unacked.insert(id, sent);
                break;
            }
            Err(_) => {
                *ledger.failures.entry("timeout".into()).or_default() += 1;
                ledger.unacked.insert(id, sent);
                break;
            }
        }
    }
}

/// What a subscriber saw before the hub was killed.
#[derive(Debug, Default)]
struct Reader {
    /// Deliveries whose acknowledgement the hub confirmed.
    confirmed: Vec<(u64, String)>,
    /// Deliveries read but not (confirmed as) acknowledged.
    pending: Vec<(u64, String)>,
}

/// Subscribes like a node, acknowledging every few deliveries, until the
/// stream fails (the hub is killed).
async fn live_reader(mut hub: FederationClient<Channel>) -> Reader {
    let mut r = Reader::default();
    let Ok(resp) = hub.subscribe(pb::SubscribeRequest { after_seq: 0 }).await else {
        return r;
    };
    let mut stream = resp.into_inner();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(CALL_TIMEOUT, stream.next()).await {
        // Receipts for messages this body sent are not deliveries.
        let Some(envelope) = d.envelope else { continue };
        let id = envelope.labels.unwrap().message_id;
        r.pending.push((d.seq, id));
        if r.pending.len() >= 4 {
            match hub
                .acknowledge(pb::AcknowledgeRequest {
                    seq: d.seq,
                    ..Default::default()
                })
                .await
            {
                Ok(a) => {
                    assert_eq!(a.into_inner().acked_seq, d.seq);
                    r.confirmed.append(&mut r.pending);
                }
                Err(_) => break,
            }
        }
    }
    r
}

/// Restarts the hub process and waits until it answers a TLS handshake as
/// the hub; on failure, shows its log.
async fn restart_hub(sandbox: &mut Sandbox) {
    if let Err(e) = sandbox.start_hub_process(exe()).await {
        panic!("restarting the hub: {e}");
    }
    let ready = wait_until("the restarted hub answers", SETTLE, || async {
        sandbox.hub_as("alpha/node").await.ok()
    })
    .await;
    if let Err(e) = ready {
        let log = std::fs::read_to_string(sandbox.dir().join("hub.log")).unwrap_or_default();
        panic!("{e}; hub log:\n{log}");
    }
}

async fn submit(hub: &FederationClient<Channel>, env: &pb::Envelope) -> pb::SubmitResponse {
    let mut hub = hub.clone();
    match hub
        .submit(pb::SubmitRequest {
            targets: Vec::new(),
            envelope: Some(env.clone()),
            approved_by: String::new(),
            traceparent: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("submitting {} after the restart: {s:?}", id_of(env)),
    }
}

fn assert_same_outcome(original: &pb::SubmitResponse, again: &pb::SubmitResponse) {
    assert!(
        again.duplicate,
        "{} resubmitted: {again:?}",
        original.message_id
    );
    assert_eq!(again.message_id, original.message_id);
    assert_eq!(
        again.decisions, original.decisions,
        "decisions of {}",
        original.message_id
    );
    assert_eq!(again.policy_version, original.policy_version);
    assert_eq!(again.accepted_at_ms, original.accepted_at_ms);
}

/// Reads deliveries as `body`'s node until `want` of them arrived or every
/// id of `until` did, acknowledging every few and at the end; returns
/// `(seq, message id)` in stream order.
async fn collect(
    sandbox: &Sandbox,
    body: &str,
    want: usize,
    until: &BTreeSet<String>,
    deadline: Instant,
) -> Vec<(u64, String)> {
    let mut hub = sandbox.hub_as(&format!("{body}/node")).await.unwrap();
    let mut stream = hub
        .subscribe(pb::SubscribeRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut last_seq = 0;
    let mut pending_until = until.clone();
    while got.len() < want && (until.is_empty() || !pending_until.is_empty()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!(
                "{body}: after {} deliveries ({:?} still awaited): {other:?}",
                got.len(),
                pending_until
            ),
        };
        last_seq = d.seq;
        // Receipts for messages this body sent are not deliveries.
        let Some(envelope) = d.envelope else { continue };
        let id = envelope.labels.unwrap().message_id;
        pending_until.remove(&id);
        got.push((d.seq, id));
        if got.len().is_multiple_of(ACK_EVERY) {
            hub.acknowledge(pb::AcknowledgeRequest {
                seq: d.seq,
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    if last_seq > 0 {
        let acked = hub
            .acknowledge(pb::AcknowledgeRequest {
                seq: last_seq,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acked.acked_seq, last_seq);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_busy_hub_loses_no_acknowledged_message() {
    let test_deadline = Instant::now() + Duration::from_secs(120);
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&[])
            .hub_process(exe()),
    )
    .await
    .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut retried_duplicates = 0usize;
    let mut retried_new = 0usize;
    // Deliveries collected so far (and acknowledged), per recipient.
    let mut seen: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    // Messages in each acknowledged-or-retried set, for the final check.
    let mut stored: BTreeMap<String, (Sent, pb::SubmitResponse)> = BTreeMap::new();
    // Everything charlie's live reader was sent before each kill.
    let mut streamed_before_kill: Vec<(u64, String)> = Vec::new();

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (stem, templates) = if w == WRITERS - 1 {
                ("bravo/node", vec![Template::BravoAlert])
            } else {
                (
                    "alpha/node",
                    vec![Template::AlphaAssessment, Template::AlphaAlert],
                )
            };
            let hub = sandbox.hub_as(stem).await.unwrap();
            tasks.push(tokio::spawn(writer(
                hub,
                templates,
                Arc::clone(&ledger),
                Arc::clone(&acked),
                Arc::clone(&stop),
                format!("round {round} writer {w}"),
            )));
        }
        // charlie's queue is read and acknowledged while the writers run.
        let reader = tokio::spawn(live_reader(sandbox.hub_as("charlie/node").await.unwrap()));
        let target = acked.load(Ordering::SeqCst) + ACKED_PER_ROUND;
        wait_until(
            &format!("round {round}: {ACKED_PER_ROUND} acknowledged submissions"),
            SETTLE,
            || {
                let acked = Arc::clone(&acked);
                async move { (acked.load(Ordering::SeqCst) >= target).then_some(()) }
            },
        )
        .await
        .unwrap();
        // Kill while the writers are still submitting, then stop them.
        sandbox.kill_hub();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            tokio::time::timeout(CALL_TIMEOUT * 2, t)
                .await
                .expect("writer stops")
                .unwrap();
        }

        let reader = tokio::time::timeout(CALL_TIMEOUT * 2, reader)
            .await
            .expect("the reader stops")
            .unwrap();

        restart_hub(&mut sandbox).await;
        let alpha = sandbox.hub_as("alpha/node").await.unwrap();
        let bravo = sandbox.hub_as("bravo/node").await.unwrap();

        // charlie's acknowledged position survived the kill.
        let mut charlie = sandbox.hub_as("charlie/node").await.unwrap();
        let position = charlie
            .acknowledge(pb::AcknowledgeRequest {
                seq: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .acked_seq;
        if let Some((last, _)) = reader.confirmed.last() {
            assert!(
                position >= *last,
                "round {round}: charlie's acknowledgement of {last} was confirmed before the kill, but the restarted hub is at {position}"
            );
        }
        streamed_before_kill.extend(reader.confirmed.iter().cloned());
        streamed_before_kill.extend(reader.pending.iter().cloned());
        let charlie_seen = seen.entry("charlie".to_owned()).or_default();
        charlie_seen.extend(reader.confirmed);
        charlie_seen.extend(reader.pending.into_iter().filter(|(s, _)| *s <= position));

        // A node retries what was not acknowledged, with the same bytes.
        let (unacked, acked_now) = {
            let mut l = ledger.lock().unwrap();
            let unacked = std::mem::take(&mut l.unacked);
            (unacked, l.acked.clone())
        };
        for (id, sent) in unacked {
            let hub = if sent.template.origin() == "alpha" {
                &alpha
            } else {
                &bravo
            };
            let resp = submit(hub, &sent.envelope).await;
            assert_eq!(resp.message_id, id);
            if resp.duplicate {
                retried_duplicates += 1;
            } else {
                retried_new += 1;
            }
            stored.insert(id, (sent, resp));
        }
        // Acknowledged ones answer as duplicates with the original outcome.
        let mut newly_acked: Vec<(String, (Sent, pb::SubmitResponse))> = acked_now
            .into_iter()
            .filter(|(id, _)| !stored.contains_key(id))
            .collect();
        assert!(newly_acked.len() >= ACKED_PER_ROUND);
        let picks = [0, newly_acked.len() / 2, newly_acked.len() - 1];
        for i in picks {
            let (_, (sent, original)) = &newly_acked[i];
            let hub = if sent.template.origin() == "alpha" {
                &alpha
            } else {
                &bravo
            };
            assert!(!original.duplicate);
            assert_same_outcome(original, &submit(hub, &sent.envelope).await);
        }
        for (id, entry) in newly_acked.drain(..) {
            stored.insert(id, entry);
        }

        // Take and acknowledge part of each queue, so that the next kill
        // hits a store with acknowledged positions.
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for (_, resp) in stored.values() {
            for r in delivered_to(&resp.decisions) {
                *expected.entry(r).or_default() += 1;
            }
        }
        for (body, total) in expected {
            let seen = seen.entry(body.clone()).or_default();
            let half = (total - seen.len().min(total)) / 2;
            if half > 0 {
                let got = collect(&sandbox, &body, half, &BTreeSet::new(), test_deadline).await;
                seen.extend(got);
            }
        }
    }

    // Sentinels after everything: once a recipient has them, it has been
    // given its whole queue.
    let alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let bravo = sandbox.hub_as("bravo/node").await.unwrap();
    let sentinels = [
        (Template::AlphaAssessment, &alpha),
        (Template::BravoAlert, &bravo),
    ];
    let mut sentinel_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut all_ids: BTreeSet<String> = stored.keys().cloned().collect();
    for (template, hub) in sentinels {
        let env = template.envelope("sentinel");
        let resp = submit(hub, &env).await;
        assert!(!resp.duplicate);
        for r in delivered_to(&resp.decisions) {
            sentinel_ids
                .entry(r)
                .or_default()
                .insert(resp.message_id.clone());
        }
        all_ids.insert(resp.message_id.clone());
    }

    // Every stored message went where its template says, and each recipient
    // got exactly its messages: none lost, none twice, nothing else.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, (sent, resp)) in &stored {
        assert_eq!(
            delivered_to(&resp.decisions),
            sent.template.recipients(),
            "{id}: {resp:?}"
        );
        for r in delivered_to(&resp.decisions) {
            expected.entry(r).or_default().insert(id.clone());
        }
    }
    let mut queues: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (body, until) in &sentinel_ids {
        let mut got = seen.remove(body).unwrap_or_default();
        got.extend(collect(&sandbox, body, usize::MAX, until, test_deadline).await);
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "{body}: positions increase: {got:?}"
        );
        let ids: Vec<&String> = got.iter().map(|(_, id)| id).collect();
        let unique: BTreeSet<&String> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{body}: a message delivered twice: {got:?}"
        );
        let mut want: BTreeSet<String> = expected.remove(body).unwrap_or_default();
        want.extend(until.iter().cloned());
        let got_set: BTreeSet<String> = unique.into_iter().cloned().collect();
        let lost: Vec<&String> = want.difference(&got_set).collect();
        let extra: Vec<&String> = got_set.difference(&want).collect();
        assert!(
            lost.is_empty() && extra.is_empty(),
            "{body}: lost {lost:?}, unexpected {extra:?}"
        );
        queues.insert(body.clone(), got);
    }
    assert!(
        expected.is_empty(),
        "recipients without a sentinel: {expected:?}"
    );

    // The audit chain verifies; one `received` per stored message and
    // nothing else; the queue positions in `routed` records are the ones
    // delivered.
    let mut auditor = sandbox.oversight().await.unwrap();
    let verify = auditor
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    let log = audit_records(&sandbox, pb::AuditQuery::default()).await;
    assert_eq!(verify.records, log.len() as u64);
    assert!(
        log.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1),
        "audit positions have gaps"
    );
    let mut received: BTreeMap<&str, usize> = BTreeMap::new();
    let mut routed: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for r in &log {
        match r.event.as_str() {
            "received" => *received.entry(r.message_id.as_str()).or_default() += 1,
            "routed" if r.decision == "deliver" => routed
                .entry(r.recipient.clone())
                .or_default()
                .push((r.queue_seq, r.message_id.clone())),
            _ => {}
        }
    }
    let twice: Vec<_> = received.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "messages received more than once: {twice:?}"
    );
    let received_ids: BTreeSet<String> = received.keys().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        received_ids, all_ids,
        "`received` records and stored messages differ"
    );
    for (body, mut queue) in routed {
        queue.sort();
        assert_eq!(
            Some(&queue),
            queues.get(&body),
            "{body}: routed records vs deliveries"
        );
    }

    // What the hub streamed before a kill is still at the same position
    // after it: a node resumes after the last position it stored, so an
    // entry streamed before it was durable, then lost and its position
    // reused by another message, would be skipped for good.
    let charlie_queue: BTreeMap<u64, String> = queues["charlie"].iter().cloned().collect();
    let moved: Vec<&(u64, String)> = streamed_before_kill
        .iter()
        .filter(|(seq, id)| charlie_queue.get(seq) != Some(id))
        .collect();
    assert!(
        moved.is_empty(),
        "deliveries streamed to charlie before a kill are not at their position after the restart: {moved:?}; charlie's queue: {charlie_queue:?}"
    );

    let l = ledger.lock().unwrap();
    eprintln!(
        "crash test: {} messages over {ROUNDS} kills; {} streamed live to charlie; {} retried after a kill ({retried_duplicates} already stored, {retried_new} new); failures {:?}; {} audit records",
        stored.len(),
        streamed_before_kill.len(),
        retried_duplicates + retried_new,
        l.failures,
        log.len()
    );
    drop(l);
    sandbox.kill_hub();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_idle_hub_keeps_an_acknowledged_message_and_position() {
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&[])
            .hub_process(exe()),
    )
    .await
    .unwrap();
    let alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let first_env = Template::AlphaAssessment.envelope("acknowledged then killed");
    let first = submit(&alpha, &first_env).await;
    assert!(!first.duplicate);
    sandbox.kill_hub();

    restart_hub(&mut sandbox).await;
    let alpha = sandbox.hub_as("alpha/node").await.unwrap();
    assert_same_outcome(&first, &submit(&alpha, &first_env).await);
    let until: BTreeSet<String> = [first.message_id.clone()].into();
    let deadline = Instant::now() + SETTLE;
    for body in ["bravo", "charlie", "obs"] {
        let got = collect(&sandbox, body, usize::MAX, &until, deadline).await;
        assert_eq!(got, vec![(1, first.message_id.clone())], "{body}");
    }

    // Kill again once it is acknowledged: the position holds, so the next
    // message is the first one delivered.
    sandbox.kill_hub();
    restart_hub(&mut sandbox).await;
    let alpha = sandbox.hub_as("alpha/node").await.unwrap();
    let second_env = Template::AlphaAssessment.envelope("after the second kill");
    let second = submit(&alpha, &second_env).await;
    assert!(!second.duplicate);
    let until: BTreeSet<String> = [second.message_id.clone()].into();
    for body in ["bravo", "charlie", "obs"] {
        let got = collect(&sandbox, body, usize::MAX, &until, deadline).await;
        assert_eq!(got, vec![(2, second.message_id.clone())], "{body}");
    }

    let mut auditor = sandbox.oversight().await.unwrap();
    let verify = auditor
        .verify(pb::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<String> = received.into_iter().map(|r| r.message_id).collect();
    assert_eq!(ids, vec![first.message_id, second.message_id]);
    sandbox.kill_hub();
}

/// Real sled whose flush can be held, as on a slow disk: writes are applied
/// (and readable) but not yet durable while the gate is closed.
struct SlowFlush {
    sled: liaison_store::SledEngine,
    open: Mutex<bool>,
    opened: std::sync::Condvar,
    holding: AtomicBool,
}

impl SlowFlush {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl liaison_store::Engine for SlowFlush {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, liaison_store::StoreError> {
        self.sled.get(key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<liaison_store::Entry>, liaison_store::StoreError> {
        self.sled.scan(start, end, limit, reverse)
    }

    fn apply(
        &self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), liaison_store::StoreError> {
        self.sled.apply(writes)
    }

    fn flush(&self) -> Result<(), liaison_store::StoreError> {
        let mut open = self.open.lock().unwrap();
        if !*open {
            self.holding.store(true, Ordering::SeqCst);
        }
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        drop(open);
        self.sled.flush()
    }
}

/// The hub must stream a queue entry only once it is durable. A node stores
/// what it is streamed and resumes after the last position it stored; if the
/// hub streams an entry whose transaction is applied but not yet flushed and
/// is then killed, the entry is lost, its position is given to the next
/// message for that body after the restart, and the node, resuming after
/// that position, never receives that message although its sender was told
/// it was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_streams_a_delivery_only_once_it_is_durable() {
    use liaison_types::{Identity, Role};
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SlowFlush {
        sled: liaison_store::SledEngine::open(dir.path()).unwrap(),
        open: Mutex::new(false),
        opened: std::sync::Condvar::new(),
        holding: AtomicBool::new(false),
    });
    let db = liaison_store::Db::with_engine(Arc::clone(&engine) as Arc<dyn liaison_store::Engine>);
    let gov = liaison_policy::Governance::from_toml("governance.toml", GOVERNANCE).unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let (skey, _) = liaison_tlog::note::key_pair(
        "liaison.test/audit",
        liaison_tlog::note::LOG_KEY_TYPE,
        [5; 32],
    )
    .unwrap();
    let keys = liaison_hub::LoadedAuditKeys {
        signer: liaison_tlog::LogSigner::from_text(&skey).unwrap(),
        witnesses: Default::default(),
    };
    let hub = Arc::new(
        liaison_hub::HubState::new(db, gov, keys, Default::default(), stopping)
            .await
            .unwrap(),
    );
    let bravo = Identity::new("liaison.test", "bravo", Role::Node, "node").unwrap();
    let charlie = Identity::new("liaison.test", "charlie", Role::Node, "node").unwrap();

    // bravo submits a message for charlie; the hub applies it and waits on
    // the flush.
    let env = Template::BravoAlert.envelope("not durable yet");
    let id = id_of(&env);
    let submitting = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move { hub.submit(&bravo, Some(env), "").await })
    };
    wait_until("the hub waits on the flush", SETTLE, || async {
        engine.holding.load(Ordering::SeqCst).then_some(())
    })
    .await
    .unwrap();

    // charlie's node (re)subscribes meanwhile.
    let mut deliveries = hub.subscribe(&charlie, 0).unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), deliveries.recv()).await;
    let answered_before_durable = submitting.is_finished();
    engine.release();
    let outcome = submitting.await.unwrap().unwrap();
    assert_eq!(outcome.message_id, id);
    assert!(!answered_before_durable, "Submit answered before its flush");
    if let Ok(Some(Ok(d))) = &early {
        panic!(
            "charlie was streamed {id} at position {} before the hub had flushed it or answered its sender",
            d.seq
        );
    }
    // Once durable, it is delivered.
    let d = tokio::time::timeout(SETTLE, deliveries.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.unwrap().labels.unwrap().message_id, id);
}

/// The whole path with real nodes: officers submit to alpha's node while the
/// hub, a child process, is killed with SIGKILL and restarted. Every message
/// a node accepted reaches bravo's inbox exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_hub_under_real_nodes_loses_and_duplicates_nothing_in_any_inbox() {
    const MESSAGES: usize = 40;
    let exe = Path::new(env!("CARGO_BIN_EXE_liaison-child"));
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .hub_process(exe)
            .nodes(&["alpha", "bravo"]),
    )
    .await
    .unwrap();
    let officer = sandbox.officer("alpha", "alice").await.unwrap();
    let submit = |i: usize| {
        let mut officer = officer.clone();
        async move {
            officer
                .submit(pb::OfficerSubmitRequest {
                    clear_targets: false,
                    targets: Vec::new(),
                    labels: Some(labels(K::Alert, C::Restricted, &["drugs"])),
                    body: Some(alert(&format!("message {i}"))),
                })
                .await
                .unwrap()
                .into_inner()
                .message_id
        }
    };
    // Half before the kill, some of them surely in flight to the hub.
    let mut ids = Vec::new();
    for i in 0..MESSAGES / 2 {
        ids.push(submit(i).await);
    }
    sandbox.kill_hub();
    // The rest while the hub is down: accepted by the node, queued in its outbox.
    for i in MESSAGES / 2..MESSAGES {
        ids.push(submit(i).await);
    }
    sandbox.start_hub_process(exe).await.unwrap();

    let want: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), MESSAGES);
    let got = wait_until("bravo's inbox holds every message", SETTLE, || {
        let sandbox = &sandbox;
        let want = want.clone();
        async move {
            let listed = crate::common::inbox_ids(sandbox, "bravo").await;
            let set: BTreeSet<String> = listed.iter().cloned().collect();
            want.is_subset(&set).then_some(listed)
        }
    })
    .await
    .unwrap();
    assert_eq!(got.len(), MESSAGES, "no message twice in the inbox");
    // Every message was received by the hub exactly once, whatever the retries.
    let received = audit_records(
        &sandbox,
        pb::AuditQuery {
            event: "received".into(),
            ..Default::default()
        },
    )
    .await;
    let received: Vec<String> = received.into_iter().map(|r| r.message_id).collect();
    assert_eq!(received.len(), MESSAGES);
    assert_eq!(received.iter().cloned().collect::<BTreeSet<_>>(), want);
    sandbox.kill_hub();
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_with_exit_with_parent_dies_with_its_parent_even_by_sigkill() {
    // The sandbox writes the hub's configuration; stop its own hub and start
    // another under a shell that is then killed with SIGKILL.
    let mut sandbox = Sandbox::start(
        SandboxOptions::new(GOVERNANCE)
            .nodes(&[])
            .hub_process(exe()),
    )
    .await
    .unwrap();
    sandbox.kill_hub();
    let config = sandbox.dir().join("hub.toml");
    assert!(config.exists());
    let script = format!(
        "'{}' hub --config '{}' --exit-with-parent $$ 2>/dev/null & echo $!; exec sleep 30",
        exe().display(),
        config.display()
    );
    let mut shell = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = shell.stdout.take().unwrap();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
        .await
        .unwrap();
    let hub: u32 = line.trim().parse().unwrap();
    // The hub runs while its parent does (it listens: the ready file is not
    // asked for, so wait until it has its own process image).
    wait_until("the hub to start", Duration::from_secs(20), || async {
        std::fs::read_link(format!("/proc/{hub}/exe"))
            .ok()
            .filter(|p| p.ends_with("liaison-child"))
    })
    .await
    .unwrap();
    assert!(!exited(hub));
    shell.start_kill().unwrap();
    shell.wait().await.unwrap();
    wait_until(
        "the orphaned hub to exit",
        Duration::from_secs(10),
        || async { exited(hub).then_some(()) },
    )
    .await
    .unwrap_or_else(|_| {
        let _ = std::process::Command::new("kill")
            .args(["-9", &hub.to_string()])
            .status();
        panic!("the hub outlived its parent");
    });
}

/// `liaison crash-test` in its CI size: a dozen SIGKILLs of the hub, a
/// sending node, a receiving node and both nodes at once, under load from
/// two bodies; its checker must find every acknowledged message delivered
/// once, in order, only where the policy allows, and audited once. The
/// long mode is the same command with `--kills 1000` (see the README).
#[test]
fn the_crash_suite_loses_nothing_through_a_dozen_kills_of_every_process() {
    let seed = liaison_types::now_ms() as u64;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe())
        .args(["--output", "json", "crash-test", "--kills", "12", "--seed"])
        .arg(seed.to_string())
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "seed {seed}\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON document");
    let f = &report["findings"];
    for zero in [
        "lost",
        "duplicates",
        "withheld_delivered",
        "out_of_order",
        "audit_mismatches",
    ] {
        assert_eq!(f[zero], 0, "{zero}, seed {seed}: {report}");
    }
    assert_eq!(report["log_verified"], true, "{report}");
    // The run was real: every target killed, messages acknowledged and
    // delivered, recovery measured.
    let kills = report["kills"].as_array().unwrap();
    assert_eq!(kills.len(), 12);
    for target in ["hub", "sender", "receiver", "sender_and_receiver"] {
        assert_eq!(
            kills.iter().filter(|k| k["target"] == target).count(),
            3,
            "{target}"
        );
    }
    assert!(f["acknowledged"].as_u64().unwrap() > 100, "{report}");
    assert!(f["deliveries"].as_u64().unwrap() > 100, "{report}");
    assert!(report["recovery_p50_ms"].as_u64().unwrap() > 0);
    assert!(
        report["recovery_p99_ms"].as_u64().unwrap() >= report["recovery_p50_ms"].as_u64().unwrap()
    );
}
