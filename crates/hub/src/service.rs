//! The hub's gRPC services: `Federation` for nodes and `Audit` for auditors.

use std::future::Future;
use std::sync::Arc;

use liaison_pki::caller_from_extensions;
use liaison_policy::{decide, route, Governance, Outcome, Rule};
use liaison_proto::v1 as pb;
use liaison_store::{Db, StoreError};
use liaison_types::{
    normalise_message_id, now_ms, BodyId, Classification, Envelope, Identity, ValidationError,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::governance::{Change, GovernanceCell, InForce};
use crate::store::{self, HubStore, Submitted};
use crate::HubError;
use liaison_types::audit::Event as AuditEvent;

/// Deliveries read from the queue per round trip to the store, and
/// recorded in one audit write.
const DELIVERY_BATCH: usize = 256;
/// Deliveries a subscription holds ready for the connection: a bound on
/// the memory a slow subscriber takes (with the HTTP/2 window), whatever
/// the size of its messages.
const DELIVERY_BUFFER: usize = 64;
/// Most submissions in one `SubmitBatch` request.
pub const MAX_BATCH: usize = 4096;
/// Audit records read per round trip when listing or verifying.
const AUDIT_BATCH: usize = 1024;
/// Whether the hub's log key is the one the governance names (`[audit]
/// log_key`), when it names one.
pub fn check_log_key(gov: &Governance, verifier: &str) -> Result<(), String> {
    match gov.audit_log_key() {
        Some(agreed) if agreed != verifier.trim() => Err(format!(
            "[audit] log_key: the federation's log key is {agreed}, but this hub signs with {}; configure the hub's [audit] signing_key to the key the federation agreed, or correct the governance",
            verifier.trim()
        )),
        _ => Ok(()),
    }
}

/// A store failure while routing: nothing was routed or recorded (a damaged
/// record stays [`HubError::Store`], named, since retrying will not heal it).
fn unrecorded(e: StoreError) -> HubError {
    match e {
        e @ StoreError::Corrupt { .. } => HubError::Store(e),
        e => HubError::Unrecorded(e),
    }
}

/// How often the log is looked at for a new checkpoint to sign (issue 9
/// asks for one at least every second while it grows).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A full queue is warned about at most this often per peer.
const QUEUE_FULL_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// State shared by every request.
///
/// Readers see only what is durable: the [`HubStore`] publishes what each of
/// its writes made durable, and its readers return nothing beyond that.
#[derive(Debug)]
pub struct HubState {
    /// The one writer of the hub's durable state.
    store: HubStore,
    /// The governance in force: the file and the administrators' state
    /// overrides, changed under one lock.
    governance: GovernanceCell,
    /// Set when the hub shuts down, so that subscription streams end and the
    /// server can drain.
    stopping: watch::Receiver<bool>,
    /// Subscription and listing tasks, awaited at shutdown.
    tasks: TaskTracker,
    /// Woken when a submission adds to the schedule (an embargo or an
    /// erasure).
    embargo_changed: tokio::sync::Notify,
    /// Failed TLS handshakes on the hub's listener, by reason.
    handshake_failures: liaison_pki::HandshakeFailures,
    /// When a full queue was last warned about, per peer.
    full_warned: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The metrics, updated as things happen.
    metrics: crate::metrics::HubMetrics,
    /// Why the store's last write or flush failed, while it fails.
    store_failure: watch::Receiver<Option<String>>,
    /// When each body's node last called the hub.
    last_seen: std::sync::Mutex<std::collections::HashMap<BodyId, i64>>,
    /// Each body's witness key, to check its cosignatures with.
    witnesses: std::collections::BTreeMap<BodyId, liaison_tlog::WitnessVerifier>,
}

impl HubState {
    /// Builds the state over a store just opened: everything in it is
    /// durable. A hash-chained audit log of an earlier version is converted
    /// to the Merkle log first (refused if its chain is broken).
    pub async fn new(
        db: Db,
        governance: Governance,
        keys: crate::config::LoadedAuditKeys,
        quota: store::QueueQuota,
        stopping: watch::Receiver<bool>,
    ) -> Result<Self, HubError> {
        let metrics = crate::metrics::HubMetrics::default();
        let flushes = metrics.store.flush_seconds.clone();
        db.observe_flushes(Box::new(move |took| flushes.observe(took.as_secs_f64())));
        let store_failure = db.failures();
        let converted = store::convert_chain(&db).await?;
        if converted > 0 {
            tracing::info!(
                records = converted,
                "converted the hash-chained audit log to the merkle log"
            );
        }
        check_log_key(&governance, &keys.signer.verifier_text()).map_err(|problem| {
            HubError::Config {
                file: governance.source_name().to_owned(),
                problem,
            }
        })?;
        let store =
            HubStore::open(db, governance.bodies().map(|b| &b.id), keys.signer)?.with_quota(quota);
        let overrides = store.body_states()?;
        Ok(Self {
            witnesses: keys.witnesses,
            metrics,
            store_failure,
            last_seen: std::sync::Mutex::default(),
            store,
            governance: GovernanceCell::new(InForce::new(Arc::new(governance), overrides)),
            stopping,
            tasks: TaskTracker::new(),
            embargo_changed: tokio::sync::Notify::new(),
            handshake_failures: liaison_pki::HandshakeFailures::default(),
            full_warned: std::sync::Mutex::default(),
        })
    }

    /// The hub's metrics.
    pub(crate) fn metrics(&self) -> &crate::metrics::HubMetrics {
        &self.metrics
    }

    /// Why the store's last write or flush failed, while it fails.
    pub(crate) fn store_failure(&self) -> Option<String> {
        self.store_failure.borrow().clone()
    }

    /// Failed TLS handshakes on the hub's listener, by reason.
    pub fn handshake_failures(&self) -> &liaison_pki::HandshakeFailures {
        &self.handshake_failures
    }

    /// The governance in force (the effective one: the file with the
    /// administrators' overrides).
    pub fn governance(&self) -> Arc<Governance> {
        Arc::clone(self.governance.current().effective())
    }

    /// Waits for the lock under which the governance in force changes.
    pub(crate) async fn governance_change(&self) -> Change<'_> {
        self.governance.change().await
    }

    /// Suspends, revokes or reinstates `body` on top of the file, audited
    /// before it takes effect. Returns the previous and new versions and the
    /// audit position.
    pub(crate) async fn set_body_state(
        &self,
        body: &str,
        state: &str,
        reason: &str,
        actor: &Identity,
    ) -> Result<(String, String, u64), HubError> {
        // Held until the new value is in force: no reload or other state
        // change can run between reading the value and replacing it.
        let change = self.governance_change().await;
        let current = change.current();
        let file = Arc::clone(current.file());
        let id = BodyId::parse(body)
            .ok()
            .filter(|b| file.is_known(b.as_str()))
            .ok_or_else(|| {
                ValidationError::new(
                    "body",
                    format!("'{}' is not a body of this federation", body.escape_debug()),
                )
            })?;
        if id == *file.hub_body() {
            return Err(HubError::PolicyRefused {
                problem: format!("{id} runs the hub and cannot be suspended or revoked"),
                kept: current.effective().version().to_owned(),
            });
        }
        let state: liaison_policy::State = match state {
            "active" => liaison_policy::State::Active,
            "suspended" => liaison_policy::State::Suspended,
            "revoked" => liaison_policy::State::Revoked,
            other => {
                return Err(ValidationError::new(
                    "state",
                    format!(
                        "'{}' is not a state; use active, suspended or revoked",
                        other.escape_debug()
                    ),
                )
                .into())
            }
        };
        let reason = reason_field(reason, true)?;
        let reason = reason.as_str();
        let previous = current.effective().version().to_owned();
        let next = current.with_state(&id, state);
        let version = next.effective().version().to_owned();
        let what = if state == liaison_policy::State::Active {
            format!("{id} reinstated: its held queue is delivered")
        } else {
            format!("{id} {state}: it receives nothing new and its queue is held")
        };
        let record = pb::AuditRecord {
            at_ms: now_ms(),
            event: AuditEvent::Policy.into(),
            rule: Rule::PeerState.into(),
            recipient: id.to_string(),
            reason: format!("{what}; version {previous} -> {version}; {reason}"),
            policy_version: version.clone(),
            actor: actor.uri(),
            ..Default::default()
        };
        let seq = self
            .store
            .set_body_states(next.overrides().clone(), record)
            .await?;
        self.put_in_force(&change, next)?;
        tracing::info!(body = %id, %state, actor = %actor, "body state set by an administrator");
        Ok((previous, version, seq))
    }

    /// Swaps in the governance every later decision uses, under the change
    /// lock `change`: requests already running finish under the one they
    /// started with, every later decision uses the new one.
    ///
    /// A body the new governance adds gets a durable queue mark at the end of
    /// whatever queue it has on disk: no submission can be in flight to a
    /// body the previous governance did not know, so all of it is durable.
    /// Marks of known bodies are left alone (they may have writes in flight).
    pub(crate) fn put_in_force(&self, change: &Change<'_>, value: InForce) -> Result<(), HubError> {
        let new = Arc::clone(value.effective());
        for body in new.bodies() {
            self.store.track(&body.id)?;
        }
        let inactive: Vec<BodyId> = new
            .bodies()
            .filter(|b| !b.is_active())
            .map(|b| b.id.clone())
            .collect();
        change.install(value);
        // Wake the open subscriptions of suspended or revoked bodies so that
        // they end now rather than at their next delivery.
        for body in inactive {
            self.store.wake(&body);
        }
        Ok(())
    }

    /// The store.
    pub(crate) fn store(&self) -> &HubStore {
        &self.store
    }

    /// The hub's timed work, until it stops: releases deliveries held under
    /// embargo when their time comes, and erases message content whose
    /// retention period has ended. Runs as one task for the hub's lifetime,
    /// sleeping until the earliest of both.
    pub async fn run_schedules(self: Arc<Self>) {
        let mut stopping = self.stopping.clone();
        loop {
            let next = match self.store.next_due() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the hub's schedule; embargo releases and erasures stop");
                    return;
                }
            };
            let wait = next.map(|t| {
                std::time::Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0))
            });
            tokio::select! {
                () = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
                () = self.embargo_changed.notified() => continue,
                _ = stopping.wait_for(|s| *s) => return,
            }
            let version = self.governance().version().to_owned();
            let now = now_ms();
            let done = match self.store.release_due(now, version.clone()).await {
                Ok(released) => {
                    if !released.queued.is_empty() {
                        tracing::info!(
                            deliveries = released.queued.len(),
                            "released held deliveries"
                        );
                    }
                    self.store.erase_due(now, version).await.map(|_| ())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "scheduled work failed; retrying shortly");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// Signs and publishes a checkpoint whenever the durable log has grown
    /// (at most every `CHECKPOINT_EVERY`), whatever made it grow, so that a
    /// growing log has a checkpoint at least every second even when no
    /// submission or reader asks for one.
    pub async fn run_checkpoints(self: Arc<Self>) {
        let mut stopping = self.stopping.clone();
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            // The metrics read the checkpoint at each scrape.
            match self.store.checkpoint() {
                Ok(_) => failing = false,
                // Logged once per failure, not every tick.
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "cannot sign a checkpoint of the audit log");
                }
                Err(_) => {}
            }
        }
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Ends every subscription and listing and waits for them, then returns
    /// the store so that the caller can close it.
    pub async fn shut_down(self: Arc<Self>) -> Option<Db> {
        self.tasks.close();
        self.tasks.wait().await;
        // The server has dropped its handles; give any straggling clone a
        // moment, then hand back the store.
        let mut state = self;
        for _ in 0..100 {
            match Arc::try_unwrap(state) {
                Ok(s) => return Some(s.store.into_db().await),
                Err(shared) => state = shared,
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::warn!(
            "hub state still shared at shutdown; the store closes when the last handle goes"
        );
        None
    }

    /// Refuses a body that is suspended or revoked: its queue is held.
    fn active_body(gov: &Governance, body: &BodyId) -> Result<(), HubError> {
        match gov.body(body) {
            Some(b) if !b.is_active() => Err(HubError::NotActive {
                body: body.to_string(),
                state: b.state.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn known_caller(&self, caller: &Identity) -> Result<Arc<Governance>, HubError> {
        let gov = self.governance();
        if gov.is_known(caller.body.as_str()) {
            if caller.role == liaison_types::Role::Node {
                self.seen(&caller.body);
            }
            Ok(gov)
        } else {
            Err(HubError::UnknownBody(caller.body.to_string()))
        }
    }

    /// Notes that `body`'s node is calling now.
    fn seen(&self, body: &BodyId) {
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(body.clone(), now_ms());
    }

    /// What the hub sees of every body `caller` may see (every body for the
    /// hub's own body; its own for another), for `Operations.Status`.
    pub fn status(
        &self,
        caller: &Identity,
        certificate_expires_ms: i64,
    ) -> Result<pb::HubStatus, HubError> {
        let gov = self.known_caller(caller)?;
        let hub_body = gov.hub_body().clone();
        let now = now_ms();
        let seen = self
            .last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut bodies = Vec::new();
        for b in gov.bodies() {
            if caller.body != hub_body && b.id != caller.body {
                continue;
            }
            let queue = self.store.queue_state(&b.id)?;
            let connected = self
                .metrics
                .subscriptions
                .get_or_create(&crate::metrics::Peer {
                    peer: b.id.to_string(),
                })
                .get()
                > 0;
            bodies.push(pb::BodyStatus {
                body: b.id.to_string(),
                state: b.state.to_string(),
                connected,
                queue_depth: queue.depth,
                oldest_undelivered_ms: queue.oldest_ms.unwrap_or(0),
                last_seen_ms: if connected {
                    now
                } else {
                    seen.get(&b.id).copied().unwrap_or(0)
                },
            });
        }
        let checkpoint = self.store.checkpoint()?;
        // A log shorter than what a witness cosigned has no witnessed
        // checkpoint to serve: the status still answers (Verify names it).
        let witnessed = self.checkpoint(0, true).unwrap_or_default();
        Ok(pb::HubStatus {
            federation: gov.federation().to_owned(),
            hub_body: hub_body.to_string(),
            policy_version: gov.version().to_owned(),
            audit_records: self.store.durable_audit(),
            storage_failure: self.store_failure().unwrap_or_default(),
            certificate_expires_ms: certificate_expires_ms.saturating_mul(1000),
            at_ms: now,
            bodies,
            checkpoint_size: checkpoint.checkpoint.size,
            checkpoint_at_ms: self.store.checkpoint_signed_at_ms(),
            witnessed_size: witnessed.tree_size,
            witnesses: witnessed.cosigners,
        })
    }

    /// Refuses, and audits, a node naming another body as origin.
    async fn check_origin(
        &self,
        caller: &Identity,
        envelope: &pb::Envelope,
        gov: &Governance,
    ) -> Result<(), HubError> {
        let claimed = envelope
            .labels
            .as_ref()
            .map(|l| l.origin.as_str())
            .unwrap_or_default();
        if claimed.is_empty() || claimed == caller.body.as_str() {
            return Ok(());
        }
        // The claimed values are the caller's input: record them only in
        // their valid forms, so a forged request cannot write arbitrary text
        // into the append-only log.
        let labels = envelope.labels.as_ref();
        let record = pb::AuditRecord {
            at_ms: now_ms(),
            event: AuditEvent::Refused.into(),
            message_id: labels
                .and_then(|l| normalise_message_id(&l.message_id))
                .unwrap_or_default(),
            origin: BodyId::parse(claimed)
                .map(|b| b.to_string())
                .unwrap_or_else(|_| "(not a body id)".into()),
            rule: Rule::IdentityOriginMismatch.into(),
            reason: format!(
                "certificate is {} but labels.origin names another body",
                caller.body
            ),
            policy_version: gov.version().to_owned(),
            actor: caller.uri(),
            ..Default::default()
        };
        self.store.audit(vec![record]).await?;
        // Shown bounded and escaped: it is the caller's text.
        let claimed: String = claimed
            .chars()
            .take(64)
            .collect::<String>()
            .escape_debug()
            .to_string();
        tracing::warn!(caller = %caller, claimed, "refused a message naming another body as origin");
        Err(HubError::OriginMismatch {
            caller: caller.body.to_string(),
            claimed,
        })
    }

    fn validate(&self, envelope: pb::Envelope, gov: &Governance) -> Result<Envelope, HubError> {
        let (env, body) = Envelope::parse(envelope)?;
        gov.check_message(&env.labels, &body)?;
        Ok(env)
    }

    /// The governance in force, for a node to validate and explain as the
    /// hub does.
    pub fn governance_snapshot(
        &self,
        caller: &Identity,
        known_version: &str,
    ) -> Result<pb::GovernanceSnapshot, HubError> {
        self.known_caller(caller)?;
        let current = self.governance.current();
        let version = current.effective().version().to_owned();
        if version == known_version {
            return Ok(pb::GovernanceSnapshot {
                version,
                unchanged: true,
                ..Default::default()
            });
        }
        Ok(pb::GovernanceSnapshot {
            version,
            unchanged: false,
            text: current.file().source_text().to_owned(),
            overrides: current
                .overrides()
                .iter()
                .map(|(body, state)| pb::BodyState {
                    body: body.to_string(),
                    state: state.as_str().to_owned(),
                })
                .collect(),
        })
    }

    /// Validates, routes, stores and audits a submission.
    pub async fn submit(
        &self,
        caller: &Identity,
        envelope: Option<pb::Envelope>,
        approved_by: &str,
    ) -> Result<pb::SubmitResponse, HubError> {
        self.submit_traced(
            caller,
            pb::SubmitRequest {
                envelope,
                approved_by: approved_by.to_owned(),
                traceparent: String::new(),
                targets: Vec::new(),
            },
        )
        .await
    }

    /// [`HubState::submit`] of a whole request (its trace context with it).
    pub async fn submit_traced(
        &self,
        caller: &Identity,
        req: pb::SubmitRequest,
    ) -> Result<pb::SubmitResponse, HubError> {
        let mut results = self.submit_batch(caller, vec![req]).await?;
        results.pop().unwrap_or_else(|| {
            Err(HubError::Task {
                what: "routing a submission",
                problem: "a batch of one gave no result".into(),
            })
        })
    }

    /// Validates, routes, stores and audits a batch of submissions in order,
    /// in one store transaction and one flush; each gets its own result. The
    /// whole batch fails only when nothing could be stored.
    pub async fn submit_batch(
        &self,
        caller: &Identity,
        requests: Vec<pb::SubmitRequest>,
    ) -> Result<Vec<Result<pb::SubmitResponse, HubError>>, HubError> {
        let started = std::time::Instant::now();
        let results = self.submit_batch_timed(caller, requests).await;
        self.metrics
            .submit_seconds
            .observe(started.elapsed().as_secs_f64());
        let refused = |e: &HubError| {
            if let HubError::QueueFull { peer, unit, .. } = e {
                self.note_queue_full(peer, unit, e);
            }
            self.metrics
                .refused
                .get_or_create(&crate::metrics::Code {
                    code: format!("{:?}", e.code()),
                })
                .inc();
        };
        match &results {
            Ok(each) => each
                .iter()
                .filter_map(|r| r.as_ref().err())
                .for_each(refused),
            Err(e) => refused(e),
        }
        results
    }

    /// Counts a refusal for a full queue, and warns about it at most once
    /// a minute per peer (the sending node retries it with backoff until
    /// the queue has room again).
    fn note_queue_full(&self, peer: &str, unit: &str, e: &HubError) {
        self.metrics
            .queue_full
            .get_or_create(&crate::metrics::QuotaLabel {
                peer: peer.to_owned(),
                limit: unit.to_owned(),
            })
            .inc();
        let now = std::time::Instant::now();
        let mut warned = self.full_warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned
            .get(peer)
            .is_none_or(|at| now.duration_since(*at) >= QUEUE_FULL_WARN_EVERY);
        if due {
            warned.insert(peer.to_owned(), now);
            tracing::warn!(peer, limit = unit, error = %e, "a peer's queue is full: submissions for it are refused until its node catches up");
        }
    }

    async fn submit_batch_timed(
        &self,
        caller: &Identity,
        requests: Vec<pb::SubmitRequest>,
    ) -> Result<Vec<Result<pb::SubmitResponse, HubError>>, HubError> {
        let gov = self.known_caller(caller)?;
        if requests.is_empty() || requests.len() > MAX_BATCH {
            return Err(ValidationError::new(
                "submissions",
                format!(
                    "{} submissions in one batch; send 1 to {MAX_BATCH}",
                    requests.len()
                ),
            )
            .into());
        }
        let now = now_ms();
        // Refused submissions keep their place; the valid ones go to the
        // store together, in order.
        let mut results: Vec<Option<Result<pb::SubmitResponse, HubError>>> =
            Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        let mut places = Vec::with_capacity(requests.len());
        let mut wake = false;
        // Each traced message's `message.route` span, child of its trace at
        // the node, held until it is stored.
        let mut routing_spans: Vec<tracing::Span> = Vec::new();
        for req in requests {
            let traced = liaison_telemetry::trace::enabled() && !req.traceparent.is_empty();
            let trace = if traced {
                let id = req
                    .envelope
                    .as_ref()
                    .and_then(|e| e.labels.as_ref())
                    .map(|l| liaison_types::text::escape_line_prefix(&l.message_id, 64))
                    .unwrap_or_default();
                let span = tracing::info_span!(parent: None, "message.route", message_id = %id);
                liaison_telemetry::trace::set_parent(&span, &req.traceparent);
                let tp = liaison_telemetry::trace::traceparent(&span);
                routing_spans.push(span);
                tp
            } else {
                String::new()
            };
            match self.prepare(caller, &gov, req, now).await.map(|mut s| {
                s.traceparent = trace;
                s
            }) {
                Ok(submission) => {
                    wake |= submission.retain_ms.is_some()
                        || submission.env.labels.expires_at_ms.is_some();
                    places.push(results.len());
                    results.push(None);
                    valid.push(submission);
                }
                // A store failure (auditing a refusal) is not this
                // message's fault: no message of the batch is routed, and
                // the node retries it all, in order.
                Err(HubError::Store(e)) => return Err(unrecorded(e)),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !valid.is_empty() {
            let count = valid.len();
            let stored = self.store.submit_batch(valid).await.map_err(|e| match e {
                HubError::Store(e) => unrecorded(e),
                e => e,
            })?;
            // One checkpoint for the batch: it includes every record just
            // written (their write is durable, so the mark covers them).
            let checkpoint = self.store.checkpoint()?;
            // One line per batch at info; one per message at debug (the
            // audit log has every message anyway).
            tracing::info!(caller = %caller, messages = count, "routed a batch");
            for (place, submitted) in places.into_iter().zip(stored) {
                results[place] = Some(submitted.map(|submitted| {
                    let (outcome, duplicate) = match submitted {
                        Submitted::New {
                            outcome,
                            held,
                            notices,
                            ..
                        } => {
                            wake |= held;
                            self.count_routed(&outcome);
                            for blind in notices {
                                self.metrics
                                    .notices
                                    .get_or_create(&crate::metrics::NoticeLabel {
                                        notice: if blind { "blind" } else { "full" }.to_owned(),
                                    })
                                    .inc();
                            }
                            (outcome, false)
                        }
                        Submitted::Duplicate(outcome) => (outcome, true),
                    };
                    let delivered = outcome.decisions.iter().filter(|d| d.deliver).count();
                    tracing::debug!(message_id = %outcome.message_id, origin = %outcome.origin, duplicate, delivered, "routed");
                    let recorded = outcome.audit_seq > 0
                        && outcome.audit_seq <= checkpoint.checkpoint.size;
                    pb::SubmitResponse {
                        leaf_index: outcome.audit_seq.saturating_sub(1),
                        tree_size: if recorded { checkpoint.checkpoint.size } else { 0 },
                        checkpoint: if recorded { checkpoint.note.clone() } else { Vec::new() },
                        message_id: outcome.message_id.clone(),
                        duplicate,
                        decisions: outcome
                            .decisions
                            .iter()
                            .map(pb::RoutingDecision::from)
                            .collect(),
                        policy_version: outcome.policy_version.clone(),
                        accepted_at_ms: outcome.accepted_at_ms,
                        unaddressed: outcome
                            .unaddressed
                            .iter()
                            .map(pb::Unaddressed::from)
                            .collect(),
                    }
                }));
            }
        }
        // A new embargo or erasure may be due before the schedule's current
        // wake-up.
        if wake {
            self.embargo_changed.notify_one();
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(HubError::Task {
                        what: "routing a batch",
                        problem: "the store gave fewer results than submissions".into(),
                    })
                })
            })
            .collect())
    }

    /// Counts a new message and its routing decisions.
    fn count_routed(&self, outcome: &store::RoutedOutcome) {
        let m = &self.metrics;
        m.received
            .get_or_create(&crate::metrics::Origin {
                origin: outcome.origin.clone(),
            })
            .inc();
        for d in &outcome.decisions {
            m.decisions
                .get_or_create(&crate::metrics::Decision {
                    peer: d.recipient.clone(),
                    decision: if d.deliver { "deliver" } else { "withhold" }.to_owned(),
                    rule: d.rule.clone(),
                })
                .inc();
        }
        for u in &outcome.unaddressed {
            m.unaddressed
                .get_or_create(&crate::metrics::RuleLabel {
                    rule: u.rule.clone(),
                })
                .inc_by(u64::from(u.bodies));
        }
    }

    /// Checks one submission and decides its routing: everything but the
    /// store write.
    async fn prepare(
        &self,
        caller: &Identity,
        gov: &Arc<Governance>,
        req: pb::SubmitRequest,
        now: i64,
    ) -> Result<store::Submission, HubError> {
        let envelope = req.envelope.ok_or_else(|| {
            ValidationError::new("envelope", "missing; send the message to route")
        })?;
        self.check_origin(caller, &envelope, gov).await?;
        let env = self.validate(envelope, gov)?;
        let plan = self.plan_of(&env, &req.targets, gov, now)?;
        // The node's four-eyes approval happened on the node: the hub cannot
        // verify it, only that it names an officer of the caller's body, and
        // records it.
        let approved_by = match req.approved_by.as_str() {
            "" => None,
            uri => {
                let approver: Identity =
                    uri.parse().map_err(|e: liaison_types::IdentityError| {
                        ValidationError::new("approved_by", e.0)
                    })?;
                if approver.federation != caller.federation
                    || approver.body != caller.body
                    || approver.role != liaison_types::Role::Officer
                {
                    return Err(ValidationError::new(
                        "approved_by",
                        format!(
                            "{approver} is not an officer of {}; name the officer of your own body who approved the release, or leave it empty",
                            caller.body
                        ),
                    )
                    .into());
                }
                Some(approver.uri())
            }
        };
        let routing = route(gov, &env.labels, now);
        let retain_ms = gov.retention_ms(env.labels.classification);
        Ok(store::Submission {
            env,
            decisions: routing.decisions,
            unaddressed: routing.unaddressed,
            policy_version: gov.version().to_owned(),
            actor: caller.uri(),
            approved_by,
            now_ms: now,
            retain_ms,
            traceparent: String::new(),
            plan,
        })
    }

    /// For a version of a plan, the plan as it would stand: its window and
    /// title from the body, its places and crime areas from the labels, its
    /// targets' hashes from the request (never the envelope).
    fn plan_of(
        &self,
        env: &liaison_types::Envelope,
        targets: &[pb::TargetHash],
        gov: &Arc<Governance>,
        now: i64,
    ) -> Result<Option<store::PlanSubmission>, HubError> {
        let Some(plan) = &env.labels.plan else {
            if !targets.is_empty() {
                return Err(ValidationError::new(
                    "targets",
                    "given for a message that is not a version of a plan; targets go with plan labels",
                )
                .into());
            }
            return Ok(None);
        };
        let body = liaison_types::TypedBody::decode(&env.body, &env.labels)?;
        let (start_ms, end_ms) = body.plan_window().ok_or_else(|| {
            ValidationError::new(
                "body",
                "a plan's body has no window; give its start and end",
            )
        })?;
        let record = store::PlanRecord {
            plan_id: plan.plan_id.clone(),
            origin: env.labels.origin.to_string(),
            kind: env.labels.kind,
            version: plan.version,
            action: plan.action,
            message_id: env.labels.message_id.clone(),
            title: body.title().to_owned(),
            contact: plan.contact.clone(),
            labels: env.labels.clone(),
            start_ms,
            end_ms,
            regions: body.plan_regions().iter().cloned().collect(),
            targets: store::parse_targets(targets)?,
            updated_at_ms: now,
        };
        // Only a plan the index can hold is accepted: a window within its
        // kind's longest, places and crime areas within their limits, and
        // a crime area or a target. A close or a cancellation leaves the
        // index, so a plan can always be ended.
        let ends = matches!(
            plan.action,
            liaison_types::PlanAction::Close | liaison_types::PlanAction::Cancel
        );
        if let (Err(e), false) = (record.to_index().check(), ends) {
            return Err(ValidationError::new(e.message_field(), e.to_string()).into());
        }
        Ok(Some(store::PlanSubmission {
            record,
            gov: Arc::clone(gov),
            hub_body: gov.hub_body().clone(),
        }))
    }

    /// Decides without storing.
    pub async fn explain(
        &self,
        caller: &Identity,
        envelope: Option<pb::Envelope>,
    ) -> Result<pb::ExplainResponse, HubError> {
        let gov = self.known_caller(caller)?;
        let envelope = envelope.ok_or_else(|| {
            ValidationError::new("envelope", "missing; send the message to explain")
        })?;
        self.check_origin(caller, &envelope, &gov).await?;
        let env = self.validate(envelope, &gov)?;
        let decisions = decide(&gov, &env.labels, now_ms());
        Ok(pb::ExplainResponse {
            decisions: decisions.iter().map(pb::RoutingDecision::from).collect(),
            policy_version: gov.version().to_owned(),
            approval_needed: String::new(),
        })
    }

    /// Withdraws a message the caller's body originated.
    pub async fn retract(
        &self,
        caller: &Identity,
        req: pb::RetractRequest,
    ) -> Result<pb::RetractResponse, HubError> {
        self.known_caller(caller)?;
        let message_id = uuid_field("message_id", &req.message_id)?;
        let reason = reason_field(&req.reason, true)?;
        let outcome = self
            .store
            .retract(
                self.governance(),
                caller.body.clone(),
                message_id.clone(),
                reason,
                caller.uri(),
                now_ms(),
            )
            .await;
        let retracted = match outcome {
            Err(HubError::NotOrigin {
                caller: body,
                message_id,
            }) => {
                self.store
                    .audit(vec![pb::AuditRecord {
                        at_ms: now_ms(),
                        event: AuditEvent::Refused.into(),
                        message_id: message_id.clone(),
                        rule: Rule::IdentityNotOriginator.into(),
                        reason: format!("{body} tried to retract a message it did not originate"),
                        policy_version: self.governance().version().to_owned(),
                        actor: caller.uri(),
                        ..Default::default()
                    }])
                    .await?;
                return Err(HubError::NotOrigin {
                    caller: body,
                    message_id,
                });
            }
            other => other?,
        };
        tracing::info!(
            message_id,
            duplicate = retracted.duplicate,
            recipients = retracted.recipients.len(),
            "retracted"
        );
        Ok(pb::RetractResponse {
            duplicate: retracted.duplicate,
            recipients: retracted.recipients,
        })
    }

    /// An officer of the caller's body named in a request field, as a URI;
    /// the caller's own URI (its node) if the field is empty.
    fn officer_of_caller(
        caller: &Identity,
        field: &'static str,
        uri: &str,
    ) -> Result<String, HubError> {
        if uri.is_empty() {
            return Ok(caller.uri());
        }
        let officer: Identity = uri
            .parse()
            .map_err(|e: liaison_types::IdentityError| ValidationError::new(field, e.0))?;
        if officer.federation != caller.federation
            || officer.body != caller.body
            || officer.role != liaison_types::Role::Officer
        {
            return Err(ValidationError::new(
                field,
                format!(
                    "{officer} is not an officer of {}; name an officer of your own body, or leave it empty",
                    caller.body
                ),
            )
            .into());
        }
        Ok(officer.uri())
    }

    /// The stored message, with its labels validated.
    fn stored_message(&self, message_id: &str) -> Result<Envelope, HubError> {
        let stored = self
            .store
            .envelope(message_id)?
            .ok_or_else(|| HubError::UnknownMessage(message_id.to_owned()))?;
        let (env, _) = Envelope::parse(stored).map_err(|e| liaison_store::StoreError::Corrupt {
            key: store::env_key_name(message_id),
            problem: format!("stored message does not validate: {e}"),
        })?;
        Ok(env)
    }

    /// The rules' decision for passing a message on to `to`: those of a
    /// first delivery, with `to` named in the releasability list (the
    /// originator's consent, or its waiver, names it) and without
    /// working-group addressing (which narrows only the first
    /// distribution). Every governance rule still applies.
    fn forward_decision(
        gov: &Governance,
        labels: &liaison_types::Labels,
        to: &BodyId,
        now: i64,
    ) -> liaison_policy::Decision {
        let mut l = labels.clone();
        l.releasable_to.insert(to.clone());
        l.working_groups.clear();
        route(gov, &l, now)
            .decisions
            .into_iter()
            .find(|d| d.recipient == *to)
            .unwrap_or_else(|| liaison_policy::Decision {
                recipient: to.clone(),
                outcome: liaison_policy::Outcome::Withhold,
                rule: liaison_policy::Rule::PeerState,
                reason: format!("{to} is not a candidate recipient of this message"),
            })
    }

    /// Files a recipient's request to pass a message on (third-party rule).
    pub async fn request_forward(
        &self,
        caller: &Identity,
        req: pb::ForwardRequest,
    ) -> Result<pb::ForwardRequestResponse, HubError> {
        let gov = self.known_caller(caller)?;
        let message_id = uuid_field("message_id", &req.message_id)?;
        let reason = reason_field(&req.reason, true)?;
        let to = BodyId::parse(req.to.trim())
            .ok()
            .filter(|b| gov.is_known(b.as_str()))
            .ok_or_else(|| {
                let known: Vec<&str> = gov.bodies().map(|b| b.id.as_str()).collect();
                ValidationError::new(
                    "to",
                    format!(
                        "'{}' is not a body of this federation; expected one of {}",
                        req.to.chars().take(40).collect::<String>().escape_debug(),
                        known.join(", ")
                    ),
                )
            })?;
        if to == caller.body {
            return Err(ValidationError::new(
                "to",
                format!("{to} is your own body; name the body to pass the message on to"),
            )
            .into());
        }
        let requested_by = Self::officer_of_caller(caller, "requested_by", &req.requested_by)?;
        let env = self.stored_message(&message_id)?;
        let now = now_ms();
        let decision = Self::forward_decision(&gov, &env.labels, &to, now);
        let filed = self
            .store
            .request_forward(store::ForwardAsk {
                env,
                request_id: uuid::Uuid::new_v4().to_string(),
                requester: caller.body.clone(),
                requested_by,
                to,
                reason,
                decision,
                policy_version: gov.version().to_owned(),
                now_ms: now,
            })
            .await?;
        let (record, duplicate) = self.forward_done(filed)?;
        tracing::info!(message_id, request_id = %record.id, requester = %record.requester, to = %record.to, state = record.state.as_str(), duplicate, "forward requested");
        Ok(pb::ForwardRequestResponse {
            request_id: record.id,
            state: record.state.to_proto() as i32,
            rule: record.rule,
            reason: record.rule_reason,
            duplicate,
        })
    }

    /// The originator's consent to, or refusal of, a forward request.
    pub async fn decide_forward(
        &self,
        caller: &Identity,
        req: pb::DecideForwardRequest,
    ) -> Result<pb::DecideForwardResponse, HubError> {
        let gov = self.known_caller(caller)?;
        let request_id = uuid_field("request_id", &req.request_id)?;
        let reason = reason_field(&req.reason, !req.approve)?;
        let decided_by = Self::officer_of_caller(caller, "decided_by", &req.decided_by)?;
        let record = self
            .store
            .forward(&request_id)?
            .ok_or_else(|| HubError::UnknownForward(request_id.clone()))?;
        let env = self.stored_message(&record.message_id)?;
        let now = now_ms();
        let approve = if req.approve {
            let to = BodyId::parse(&record.to).map_err(|problem| {
                liaison_store::StoreError::Corrupt {
                    key: store::forward_key_name(&request_id),
                    problem,
                }
            })?;
            Some(Self::forward_decision(&gov, &env.labels, &to, now))
        } else {
            None
        };
        let decided = self
            .store
            .decide_forward(store::ForwardVerdict {
                request_id,
                caller: caller.body.clone(),
                env,
                approve,
                reason,
                decided_by,
                policy_version: gov.version().to_owned(),
                now_ms: now,
            })
            .await?;
        let (record, duplicate) = self.forward_done(decided)?;
        tracing::info!(request_id = %record.id, message_id = %record.message_id, to = %record.to, state = record.state.as_str(), duplicate, "forward decided");
        Ok(pb::DecideForwardResponse {
            request_id: record.id,
            state: record.state.to_proto() as i32,
            rule: record.rule,
            reason: if record.state == store::ForwardState::Refused {
                record.decision_reason
            } else {
                record.rule_reason
            },
            duplicate,
        })
    }

    /// A forward write's record; a refusal (audited) becomes the error to
    /// answer.
    fn forward_done(
        &self,
        result: store::Forward,
    ) -> Result<(store::ForwardRecord, bool), HubError> {
        match result {
            store::Forward::Refused { error, .. } => {
                tracing::warn!(error = %error, "forward refused");
                Err(error)
            }
            store::Forward::Done {
                record, duplicate, ..
            } => Ok((*record, duplicate)),
        }
    }

    /// Acknowledges the caller's queue up to `seq`.
    pub async fn acknowledge(
        &self,
        caller: &Identity,
        seq: u64,
        quarantined: Vec<pb::QuarantinedDelivery>,
    ) -> Result<pb::AcknowledgeResponse, HubError> {
        let gov = self.known_caller(caller)?;
        let mut quarantine = std::collections::BTreeMap::new();
        for q in quarantined {
            // The node's own words, kept to one bounded line for the log.
            let reason: String = liaison_types::text::escape_line(q.reason.trim())
                .chars()
                .take(500)
                .collect();
            quarantine.insert(q.seq, reason);
        }
        let done = self
            .store
            .acknowledge(
                caller.body.clone(),
                seq,
                quarantine,
                caller.uri(),
                now_ms(),
                gov.version().to_owned(),
            )
            .await?;
        let now = now_ms();
        for routed in &done.routed_at_ms {
            let ms = (now - routed).max(0);
            #[allow(clippy::cast_precision_loss)] // milliseconds fit in f64
            self.metrics.delivery_seconds.observe(ms as f64 / 1000.0);
        }
        Ok(pb::AcknowledgeResponse {
            acked_seq: done.acked,
        })
    }

    /// Starts streaming the caller's queue after `after_seq`.
    pub fn subscribe(
        self: &Arc<Self>,
        caller: &Identity,
        after_seq: u64,
    ) -> Result<mpsc::Receiver<Result<pb::Delivery, Status>>, HubError> {
        let gov = self.known_caller(caller)?;
        Self::active_body(&gov, &caller.body)?;
        let start = self.store.acked(&caller.body)?.max(after_seq);
        let (tx, rx) = mpsc::channel(DELIVERY_BUFFER);
        let state = Arc::clone(self);
        let caller = caller.clone();
        self.spawn(async move {
            if let Err(e) = state.stream_deliveries(&caller, start, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
            // Last seen when its subscription ended.
            state.seen(&caller.body);
            tracing::debug!(caller = %caller, "subscription ended");
        });
        Ok(rx)
    }

    async fn stream_deliveries(
        &self,
        caller: &Identity,
        mut cursor: u64,
        tx: &mpsc::Sender<Result<pb::Delivery, Status>>,
    ) -> Result<(), HubError> {
        let mut durable = self.store.watch_queue(&caller.body);
        let mut stopping = self.stopping.clone();
        let gauge = self
            .metrics
            .subscriptions
            .get_or_create(&crate::metrics::Peer {
                peer: caller.body.to_string(),
            })
            .clone();
        gauge.inc();
        let _subscribed = crate::metrics::Subscribed(gauge);
        tracing::info!(caller = %caller, after = cursor, "subscription opened");
        loop {
            // Mark the durable position seen before reading the queue, so an
            // entry made durable after the read still wakes us; the store
            // returns durable entries only.
            durable.borrow_and_update();
            // A body suspended (or revoked) while subscribed: its queue is
            // held from now on.
            Self::active_body(&self.governance(), &caller.body)?;
            let entries = self
                .store
                .queue_after(&caller.body, cursor, DELIVERY_BATCH)?;
            if entries.is_empty() {
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return Ok(()) },
                    _ = tx.closed() => return Ok(()),
                    _ = stopping.wait_for(|s| *s) => return Ok(()),
                }
                continue;
            }
            let gov = self.governance();
            let mut records = Vec::with_capacity(entries.len());
            for (seq, entry) in entries {
                // A receipt for the originator travels alone, unaudited (the
                // acknowledgement it reports is in the log).
                if entry.receipt.is_some() || !entry.receipts.is_empty() {
                    let delivery = pb::Delivery {
                        seq,
                        routed_at_ms: entry.routed_at_ms,
                        receipt: entry
                            .receipt
                            .as_ref()
                            .map(|r| r.to_proto(&entry.message_id)),
                        receipts: entry
                            .receipts
                            .iter()
                            .map(|r| r.to_proto(&r.message_id))
                            .collect(),
                        ..Default::default()
                    };
                    tokio::select! {
                        sent = tx.send(Ok(delivery)) => if sent.is_err() { break },
                        _ = stopping.wait_for(|s| *s) => return Ok(()),
                    }
                    cursor = seq;
                    continue;
                }
                // A deconfliction notice or a forward request for the
                // originator travels alone: no content, and never a
                // withdrawal in its stead.
                let alone = if let Some(n) = &entry.notice {
                    Some((
                        pb::Delivery {
                            notice: Some(n.0.clone()),
                            leaf_index: entry.audit_seq.saturating_sub(1),
                            tree_size: if entry.audit_seq > 0 {
                                self.store.durable_audit().max(entry.audit_seq)
                            } else {
                                0
                            },
                            ..Default::default()
                        },
                        format!("deconfliction notice {}", n.0.reference),
                    ))
                } else {
                    entry.forward_request.as_ref().map(|f| {
                        (
                            pb::Delivery {
                                forward_request: Some(f.to_proto(&entry.message_id)),
                                ..Default::default()
                            },
                            format!("forward request {}", f.request_id),
                        )
                    })
                };
                if let Some((delivery, reason)) = alone {
                    let delivery = pb::Delivery {
                        seq,
                        routed_at_ms: entry.routed_at_ms,
                        ..delivery
                    };
                    tokio::select! {
                        sent = tx.send(Ok(delivery)) => if sent.is_err() { break },
                        _ = stopping.wait_for(|s| *s) => return Ok(()),
                    }
                    cursor = seq;
                    records.push(pb::AuditRecord {
                        at_ms: now_ms(),
                        event: AuditEvent::Delivered.into(),
                        reason,
                        message_id: entry.message_id,
                        origin: entry.origin,
                        recipient: caller.body.to_string(),
                        actor: caller.uri(),
                        queue_seq: seq,
                        policy_version: gov.version().to_owned(),
                        ..Default::default()
                    });
                    continue;
                }
                let Some(envelope) = self.store.envelope(&entry.message_id)? else {
                    return Err(liaison_store::StoreError::Corrupt {
                        key: store::env_key_name(&entry.message_id),
                        problem: "queued message has no stored envelope".into(),
                    }
                    .into());
                };
                let labels = envelope.labels.clone().unwrap_or_default();
                let classification = Classification::from_proto(labels.classification);
                let recipient_marking = classification
                    .map(|c| gov.marking_for(&caller.body, c))
                    .unwrap_or_default();
                // A retraction travels in the message's stead: either this
                // position is the retraction, or the message was withdrawn
                // before it was streamed here and its content never leaves.
                let now = now_ms();
                let (withdrawal, event, note) = self.withdrawal(&entry, &labels, now)?;
                let delivery = pb::Delivery {
                    seq,
                    recipient_marking,
                    envelope: if withdrawal.is_some() {
                        None
                    } else {
                        Some(envelope)
                    },
                    routed_at_ms: entry.routed_at_ms,
                    withdrawal,
                    erase_at_ms: self.store.erase_at(&entry.message_id)?.unwrap_or(0),
                    traceparent: entry.traceparent.clone(),
                    // The decision's record is durable with the position;
                    // the log's durable size is a checkpoint that holds it.
                    leaf_index: entry.audit_seq.saturating_sub(1),
                    tree_size: if entry.audit_seq > 0 {
                        self.store.durable_audit().max(entry.audit_seq)
                    } else {
                        0
                    },
                    ..Default::default()
                };
                // A subscriber that stops reading must not keep the hub from
                // shutting down: give up the send when the hub stops.
                tokio::select! {
                    sent = tx.send(Ok(delivery)) => if sent.is_err() { break },
                    _ = stopping.wait_for(|s| *s) => return Ok(()),
                }
                cursor = seq;
                records.push(pb::AuditRecord {
                    at_ms: now,
                    event: event.into(),
                    message_id: entry.message_id,
                    origin: entry.origin,
                    recipient: caller.body.to_string(),
                    kind: liaison_types::Kind::from_proto(labels.kind)
                        .map(|k| k.as_str().to_owned())
                        .unwrap_or_default(),
                    classification: classification
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default(),
                    actor: caller.uri(),
                    queue_seq: seq,
                    policy_version: gov.version().to_owned(),
                    reason: note.to_owned(),
                    rule: if event == AuditEvent::Expired {
                        Rule::MessageExpired.into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                });
            }
            if !records.is_empty() {
                self.store.audit(store::batch_records(records)).await?;
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
    }

    /// What a queue entry carries instead of its message, if anything: the
    /// originator's retraction (this position is one, or the message was
    /// retracted before it was streamed here), or its expiry. Returns the
    /// withdrawal, the audit event and a note for the record.
    fn withdrawal(
        &self,
        entry: &store::QueueEntry,
        labels: &pb::Labels,
        now: i64,
    ) -> Result<(Option<pb::Withdrawal>, AuditEvent, &'static str), HubError> {
        if let Some(r) = &entry.retraction {
            return Ok((
                Some(r.to_proto(&entry.message_id, &entry.origin)),
                AuditEvent::Delivered,
                "retraction",
            ));
        }
        if let Some(r) = self.store.retraction(&entry.message_id)? {
            return Ok((
                Some(r.to_proto(&entry.message_id, &entry.origin)),
                AuditEvent::Delivered,
                "withdrawn by its originator before delivery; content not sent",
            ));
        }
        if let Some(erased) = self.store.erased(&entry.message_id)? {
            let w = pb::Withdrawal {
                message_id: entry.message_id.clone(),
                origin: entry.origin.clone(),
                cause: pb::WithdrawalCause::Expired as i32,
                reason: erased.reason,
                withdrawn_at_ms: now,
            };
            return Ok((
                Some(w),
                AuditEvent::Erased,
                "content erased under retention before delivery",
            ));
        }
        if labels.expires_at_ms != 0 && labels.expires_at_ms <= now {
            let w = pb::Withdrawal {
                message_id: entry.message_id.clone(),
                origin: entry.origin.clone(),
                cause: pb::WithdrawalCause::Expired as i32,
                reason: format!(
                    "expired at {} before it could be delivered",
                    liaison_types::rfc3339(labels.expires_at_ms)
                ),
                withdrawn_at_ms: now,
            };
            return Ok((
                Some(w),
                AuditEvent::Expired,
                "expired before delivery; content not sent",
            ));
        }
        Ok((None, AuditEvent::Delivered, ""))
    }

    /// Audit records visible to the caller that match the query.
    ///
    /// Oversight sees everything; a body's auditor sees the records naming
    /// its body as origin, or as recipient of anything but a withholding (a
    /// body a message was withheld from must not learn that it exists, let
    /// alone its labels and the bodies it was for), and those its own
    /// services caused (a refusal of its node, say). The hub's body is the
    /// origin of the deconfliction desk's records, so its auditors read the
    /// desk's work.
    fn audit_visible(
        hub_body: &BodyId,
        caller: &Identity,
        q: &pb::AuditQuery,
        r: &pb::AuditRecord,
    ) -> bool {
        let own = caller.body.as_str();
        let _ = hub_body;
        let scope_ok = caller.role == liaison_types::Role::Oversight
            || r.event == AuditEvent::Policy.as_str()
            || r.origin == own
            || (r.recipient == own && r.decision != Outcome::Withhold.as_str())
            || r.actor
                .parse::<Identity>()
                .is_ok_and(|a| a.body == caller.body);
        let eq = |filter: &str, value: &str| filter.is_empty() || filter == value;
        scope_ok
            && (q.message_id.is_empty() || liaison_types::audit::names_message(r, &q.message_id))
            && (q.body.is_empty() || q.body == r.origin || q.body == r.recipient)
            && eq(&q.rule, &r.rule)
            && eq(&q.event, &r.event)
            && eq(&q.decision, &r.decision)
            && (q.kind.is_empty() || r.kind == q.kind || r.items.iter().any(|i| i.kind == q.kind))
            && (q.classification.is_empty()
                || r.classification == q.classification
                || r.items.iter().any(|i| i.classification == q.classification))
            && r.at_ms >= q.since_ms
            && (q.until_ms == 0 || r.at_ms < q.until_ms)
    }

    /// Streams matching audit records.
    pub fn audit_list(
        self: &Arc<Self>,
        caller: &Identity,
        q: pb::AuditQuery,
    ) -> mpsc::Receiver<Result<pb::AuditRecord, Status>> {
        let (tx, rx) = mpsc::channel(256);
        let state = Arc::clone(self);
        let caller = caller.clone();
        let hub_body = self.governance().hub_body().clone();
        // List what was durable when the request came in.
        let upto = self.store.durable_audit();
        let mut stopping = self.stopping.clone();
        self.spawn(async move {
            let mut after = q.after_seq;
            let mut sent = 0u32;
            loop {
                let batch = match state.store.audit_after(after, upto, AUDIT_BATCH) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(HubError::from(e).into())).await;
                        return;
                    }
                };
                let Some(last) = batch.last() else { return };
                after = last.seq;
                for r in batch {
                    if !Self::audit_visible(&hub_body, &caller, &q, &r) {
                        continue;
                    }
                    tokio::select! {
                        result = tx.send(Ok(r)) => if result.is_err() { return },
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                    sent += 1;
                    if q.limit != 0 && sent >= q.limit {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Recomputes every leaf and tree hash of the durable log and checks
    /// the root against the checkpoint of that size.
    pub fn audit_verify(&self) -> Result<pb::VerifyResponse, HubError> {
        let (check, checkpoint) = self.store.check_log()?;
        let (first_bad_seq, error) = check.first_error.clone().unwrap_or_default();
        Ok(pb::VerifyResponse {
            ok: check.first_error.is_none(),
            records: check.records,
            head_hash: hex::encode(check.root.0),
            first_bad_seq,
            error,
            checkpoint: checkpoint.note,
        })
    }

    /// A checkpoint with its cosignatures: the latest (`size` 0), the
    /// latest cosigned one (`witnessed`), or that of `size`.
    pub fn checkpoint(
        &self,
        size: u64,
        witnessed: bool,
    ) -> Result<pb::CheckpointResponse, HubError> {
        let size = if size == 0 && witnessed {
            self.store.witnessed_size()?
        } else {
            size
        };
        let signed = if size == 0 {
            self.store.checkpoint()?
        } else {
            self.store.checkpoint_at(size)?
        };
        self.with_cosignatures(&signed)
    }

    fn with_cosignatures(
        &self,
        signed: &liaison_tlog::SignedCheckpoint,
    ) -> Result<pb::CheckpointResponse, HubError> {
        let size = signed.checkpoint.size;
        let mut note = signed.note.clone();
        let mut cosigners = Vec::new();
        for kept in self.store.cosignatures(size)? {
            // Kept only after they verified; checked again, so that a
            // damaged store never serves a cosignature that fails. One over
            // another root means the log was rewritten since: `Verify`
            // names it.
            if kept.root != signed.checkpoint.root.0 {
                continue;
            }
            if let Some(key) = self.witnesses.get(&kept.body) {
                if key.verify_line(&signed.checkpoint, &kept.line).is_ok() {
                    note.extend_from_slice(&kept.line);
                    cosigners.push(key.name().to_owned());
                }
            }
        }
        Ok(pb::CheckpointResponse {
            note,
            tree_size: size,
            cosigners,
        })
    }

    /// The inclusion proof of a record that `caller` may read: what an
    /// auditor of its body may list, and for a node (`own_only`) no record
    /// of the deconfliction desk either.
    pub fn prove_inclusion(
        &self,
        caller: &Identity,
        req: pb::InclusionRequest,
        own_only: bool,
    ) -> Result<pb::InclusionProof, HubError> {
        let seq = req.leaf_index.saturating_add(1);
        let record = self.store.record(seq)?.ok_or_else(|| {
            HubError::BadProofRequest(format!(
                "the log has {} records; there is no leaf {}",
                self.store.durable_audit(),
                req.leaf_index
            ))
        })?;
        let governance = self.governance();
        let hub_body = governance.hub_body();
        let visible = Self::audit_visible(hub_body, caller, &pb::AuditQuery::default(), &record)
            && !(own_only && Self::desk_record(hub_body, &record));
        if !visible {
            return Err(HubError::NotYourRecord {
                caller: caller.body.to_string(),
                seq,
            });
        }
        let (proof, signed) = self.store.prove_inclusion(req.leaf_index, req.tree_size)?;
        let with = self.with_cosignatures(&signed)?;
        Ok(pb::InclusionProof {
            leaf_index: req.leaf_index,
            tree_size: signed.checkpoint.size,
            hashes: proof.iter().map(|h| h.0.to_vec()).collect(),
            leaf: record.leaf,
            checkpoint: with.note,
        })
    }

    /// Whether a record is the deconfliction desk's (both plans of an
    /// overlap, whatever the policy withholds from either side): for the
    /// hub body's auditors and oversight, never for its node, which is a
    /// member's node like any other.
    fn desk_record(hub_body: &BodyId, r: &pb::AuditRecord) -> bool {
        r.event == AuditEvent::Deconflicted.as_str()
            && r.origin == hub_body.as_str()
            && r.recipient.is_empty()
    }

    /// The consistency proof between two tree sizes.
    pub fn prove_consistency(
        &self,
        req: pb::ConsistencyRequest,
    ) -> Result<pb::ConsistencyProof, HubError> {
        let (proof, signed) = self.store.prove_consistency(req.old_size, req.tree_size)?;
        let with = self.with_cosignatures(&signed)?;
        Ok(pb::ConsistencyProof {
            old_size: req.old_size,
            tree_size: signed.checkpoint.size,
            hashes: proof.iter().map(|h| h.0.to_vec()).collect(),
            checkpoint: with.note,
        })
    }

    /// Keeps a node's cosignature of a checkpoint, once it verifies with
    /// its body's witness key.
    pub async fn cosign(
        &self,
        caller: &Identity,
        req: pb::CosignRequest,
    ) -> Result<pb::CosignResponse, HubError> {
        let key = self
            .witnesses
            .get(&caller.body)
            .ok_or_else(|| HubError::NoWitnessKey(caller.body.to_string()))?;
        if req.tree_size == 0 || req.tree_size > self.store.durable_audit() {
            return Err(HubError::BadCosignature(format!(
                "the log has no checkpoint of {} records",
                req.tree_size
            )));
        }
        let signed = self.store.checkpoint_at(req.tree_size)?;
        let cosignature = key
            .verify_line(&signed.checkpoint, &req.signature_line)
            .map_err(|e| HubError::BadCosignature(e.to_string()))?;
        let cosigners = self
            .store
            .add_cosignature(
                req.tree_size,
                signed.checkpoint.root.0,
                caller.body.clone(),
                cosignature.line,
            )
            .await?;
        Ok(pb::CosignResponse {
            cosigners: u32::try_from(cosigners).unwrap_or(u32::MAX),
        })
    }
}

/// The span of a node's request, child of the trace its metadata names.
fn rpc_span<T>(rpc: &'static str, req: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!("hub.request", rpc);
    liaison_telemetry::trace::set_parent(&span, &liaison_telemetry::trace::extract(req.metadata()));
    span
}

/// A UUID request field in its stored form.
fn uuid_field(field: &'static str, value: &str) -> Result<String, HubError> {
    Ok(liaison_types::uuid_field(field, value)?)
}

/// A reason for the audit log: one line of 1 to 500 characters, or empty
/// if not `required`.
fn reason_field(value: &str, required: bool) -> Result<String, HubError> {
    Ok(liaison_types::text::reason("reason", value, required)?)
}

/// The `Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService(pub Arc<HubState>);

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    async fn get_governance(
        &self,
        req: Request<pb::GetGovernanceRequest>,
    ) -> Result<Response<pb::GovernanceSnapshot>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let known = req.into_inner().known_version;
        Ok(Response::new(self.0.governance_snapshot(&caller, &known)?))
    }

    async fn retract(
        &self,
        req: Request<pb::RetractRequest>,
    ) -> Result<Response<pb::RetractResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let resp = self.0.retract(&caller, req.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let span = rpc_span("SubmitBatch", &req);
        let submissions = req.into_inner().submissions;
        let ids: Vec<String> = submissions
            .iter()
            .map(|s| {
                let id = s
                    .envelope
                    .as_ref()
                    .and_then(|e| e.labels.as_ref())
                    .map(|l| l.message_id.as_str())
                    .unwrap_or_default();
                liaison_types::text::escape_line_prefix(id, 64)
            })
            .collect();
        let results = self
            .0
            .submit_batch(&caller, submissions)
            .instrument(span)
            .await?;
        let results = results
            .into_iter()
            .zip(ids)
            .map(|(r, message_id)| pb::SubmitResult {
                result: Some(match r {
                    Ok(resp) => pb::submit_result::Result::Accepted(resp),
                    Err(e) => pb::submit_result::Result::Refused(
                        liaison_proto::status::refused_submission(message_id, &Status::from(e)),
                    ),
                }),
            })
            .collect();
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }

    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let span = rpc_span("Submit", &req);
        let resp = self
            .0
            .submit_traced(&caller, req.into_inner())
            .instrument(span)
            .await?;
        Ok(Response::new(resp))
    }

    async fn request_forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardRequestResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let resp = self.0.request_forward(&caller, req.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn decide_forward(
        &self,
        req: Request<pb::DecideForwardRequest>,
    ) -> Result<Response<pb::DecideForwardResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let resp = self.0.decide_forward(&caller, req.into_inner()).await?;
        Ok(Response::new(resp))
    }

    type SubscribeStream = ReceiverStream<Result<pb::Delivery, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let rx = self.0.subscribe(&caller, req.into_inner().after_seq)?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let req = req.into_inner();
        let resp = self
            .0
            .acknowledge(&caller, req.seq, req.quarantined)
            .await?;
        Ok(Response::new(resp))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let resp = self.0.explain(&caller, req.into_inner().envelope).await?;
        Ok(Response::new(resp))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        let r = req.into_inner();
        Ok(Response::new(self.0.checkpoint(r.tree_size, r.witnessed)?))
    }

    async fn prove_consistency(
        &self,
        req: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        Ok(Response::new(self.0.prove_consistency(req.into_inner())?))
    }

    async fn prove_inclusion(
        &self,
        req: Request<pb::InclusionRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        Ok(Response::new(self.0.prove_inclusion(
            &caller,
            req.into_inner(),
            true,
        )?))
    }

    async fn cosign(
        &self,
        req: Request<pb::CosignRequest>,
    ) -> Result<Response<pb::CosignResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        Ok(Response::new(
            self.0.cosign(&caller, req.into_inner()).await?,
        ))
    }
}

/// The `Audit` service.
#[derive(Debug, Clone)]
pub struct AuditService(pub Arc<HubState>);

/// `Operations`: the hub's status. The second field is the hub's TLS files,
/// whose certificate's expiry the status shows (as reloads take it).
pub struct OperationsService(pub Arc<HubState>, pub liaison_pki::TlsFiles);

#[tonic::async_trait]
impl pb::operations_server::Operations for OperationsService {
    async fn status(
        &self,
        req: Request<pb::HubStatusRequest>,
    ) -> Result<Response<pb::HubStatus>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let state = Arc::clone(&self.0);
        let files = self.1.clone();
        // Reading every queue's state touches the store, and the
        // certificate its file.
        let status = tokio::task::spawn_blocking(move || {
            state.status(&caller, liaison_pki::cert_expires(&files).unwrap_or(0))
        })
        .await
        .map_err(|e| HubError::Task {
            what: "reading the hub's status",
            problem: e.to_string(),
        })??;
        Ok(Response::new(status))
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    type ListStream = ReceiverStream<Result<pb::AuditRecord, Status>>;

    async fn list(
        &self,
        req: Request<pb::AuditQuery>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        Ok(Response::new(ReceiverStream::new(
            self.0.audit_list(&caller, req.into_inner()),
        )))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        let state = Arc::clone(&self.0);
        let resp = tokio::task::spawn_blocking(move || state.audit_verify())
            .await
            .map_err(|e| HubError::Task {
                what: "audit verification",
                problem: e.to_string(),
            })??;
        Ok(Response::new(resp))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        let r = req.into_inner();
        Ok(Response::new(self.0.checkpoint(r.tree_size, r.witnessed)?))
    }

    async fn prove_inclusion(
        &self,
        req: Request<pb::InclusionRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        Ok(Response::new(self.0.prove_inclusion(
            &caller,
            req.into_inner(),
            false,
        )?))
    }

    async fn prove_consistency(
        &self,
        req: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.known_caller(&caller)?;
        Ok(Response::new(self.0.prove_consistency(req.into_inner())?))
    }
}
