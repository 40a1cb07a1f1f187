//! The officer API, including four-eyes release: a message the node's
//! `[release]` rules cover waits in the outbox, unsent, until a second
//! officer of the body who is an approver approves it (or refuses it).

use std::sync::Arc;

use liaison_pki::caller_from_extensions;
use liaison_proto::v1 as pb;
use liaison_proto::v1::federation_client::FederationClient;
use liaison_store::{Db, StoreError};
use liaison_types::{now_ms, BodyId, Envelope, Identity, TypedBody, ValidationError};
use prost::Message;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::config::Release;
use crate::store::{self, Decider, OutboxRecord, OutboxStatus, Queued};
use crate::NodeError;

const DEFAULT_LIMIT: usize = 100;
/// Most messages in one `Officer.SubmitBatch`.
pub const MAX_OFFICER_BATCH: usize = 1024;
const MAX_LIMIT: usize = 1_000;

/// State shared by the officer API and the hub link.
#[derive(Debug)]
pub struct NodeState {
    /// This node's body.
    pub body: BodyId,
    /// The store.
    pub db: Db,
    /// The hub.
    pub hub: FederationClient<Channel>,
    /// Woken when the outbox has something new to push.
    pub outbox_ready: Arc<Notify>,
    /// Store writes that wake the pusher, each in a task of its own (see
    /// [`NodeState::releasing`]); shutdown waits for them.
    pub writes: TaskTracker,
    /// Woken when the inbox gains a message that expires.
    pub inbox_changed: Notify,
    /// Four-eyes release rules.
    pub release: Release,
    /// Failed TLS handshakes on the officer listener, by reason.
    pub handshake_failures: liaison_pki::HandshakeFailures,
    /// The hub's governance in force, as last fetched and verified (see
    /// [`crate::link::follow_governance`]); `None` until the hub first
    /// answered.
    pub governance: std::sync::RwLock<Option<Arc<liaison_policy::Governance>>>,
    /// Woken when the hub stamped a version other than the one held.
    pub governance_stale: Notify,
    /// Each message newly stored in the inbox, once durable, for
    /// `Officer.WatchInbox`.
    pub inbox_feed: tokio::sync::broadcast::Sender<pb::InboxSummary>,
    /// Set when the node begins to stop: watch streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// What the health service reports (the link to the hub among it).
    pub health: liaison_telemetry::health::Health,
    /// The metrics, updated as things happen.
    pub metrics: crate::metrics::NodeMetrics,
    /// The node's TLS files: the status shows its certificate's expiry as
    /// reloads take it.
    pub tls_files: liaison_pki::TlsFiles,
    /// The witness of the hub's audit log.
    pub witness: Arc<crate::witness::Witness>,
    /// The federation's deconfliction key (`[plans]`), to hash plans'
    /// targets; `None` if not configured.
    pub deconfliction_key: Option<liaison_plans::DeconflictionKey>,
    /// Each officer's submission allowance.
    pub officer_rate: crate::officer_rate::OfficerRate,
}

/// The trace context of a message's submission: a `message.submit` span,
/// child of the request's span, when the node traces; empty otherwise.
fn message_trace(message_id: &str) -> String {
    if !liaison_telemetry::trace::enabled() {
        return String::new();
    }
    let span = tracing::info_span!("message.submit", message_id = %message_id);
    liaison_telemetry::trace::traceparent(&span)
}

/// The span of an officer's request, child of the trace its metadata names.
fn request_span<T>(name: &'static str, req: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!("officer.request", rpc = name);
    liaison_telemetry::trace::set_parent(&span, &liaison_telemetry::trace::extract(req.metadata()));
    span
}

impl NodeState {
    /// Runs a store write that can give the pusher work in a task of its
    /// own, and wakes the pusher when the write is durable and `released`
    /// says it queued something. A caller that stops waiting (a cancelled
    /// request, a lost connection) cannot skip the wake-up: a write already
    /// queued commits all the same, and an idle pusher would leave it in
    /// the outbox until some later write woke it.
    async fn releasing<T: Send + 'static>(
        &self,
        write: impl std::future::Future<Output = Result<T, NodeError>> + Send + 'static,
        released: impl FnOnce(&T) -> bool + Send + 'static,
    ) -> Result<T, NodeError> {
        let ready = Arc::clone(&self.outbox_ready);
        self.writes
            .spawn(async move {
                let done = write.await;
                if done.as_ref().is_ok_and(released) {
                    ready.notify_one();
                }
                done
            })
            .await
            .map_err(|e| NodeError::Store(StoreError::Engine(format!("a store task ended: {e}"))))?
    }

    /// The hub's governance as last verified, if any.
    pub fn governance(&self) -> Option<Arc<liaison_policy::Governance>> {
        self.governance
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Notes a version the hub stamped; a different one than held makes
    /// the governance follower fetch again.
    pub fn saw_policy_version(&self, version: &str) {
        let held = self.governance();
        if !version.is_empty() && held.as_ref().is_none_or(|g| g.version() != version) {
            self.governance_stale.notify_one();
        }
    }

    fn own_officer(&self, caller: &Identity) -> Result<(), NodeError> {
        if caller.body == self.body {
            Ok(())
        } else {
            Err(NodeError::WrongBody {
                caller: caller.uri(),
                caller_body: caller.body.to_string(),
                node_body: self.body.to_string(),
            })
        }
    }

    /// Builds and validates the envelope for an officer's message.
    fn envelope(
        &self,
        labels: Option<pb::Labels>,
        body: Option<pb::Body>,
    ) -> Result<(Envelope, TypedBody), NodeError> {
        let mut labels = labels.ok_or_else(|| {
            ValidationError::new("labels", "missing; every message needs its labels")
        })?;
        let body = body
            .ok_or_else(|| ValidationError::new("body", "missing; every message needs its body"))?;
        if !labels.origin.is_empty() && labels.origin != self.body.as_str() {
            return Err(NodeError::OriginMismatch {
                claimed: labels.origin,
                node_body: self.body.to_string(),
            });
        }
        labels.origin = self.body.to_string();
        if labels.message_id.is_empty() {
            labels.message_id = liaison_types::new_message_id();
        }
        // The node, not the officer, says when a message was created.
        labels.created_at_ms = now_ms();
        let (env, typed) = Envelope::parse(pb::Envelope {
            labels: Some(labels),
            body: body.encode_to_vec(),
        })?;
        // What the hub would refuse (an unknown body in a list, another
        // body's marking, an unknown working group...) is refused here, with
        // the hub's own words, before the officer is told "queued". Until
        // the hub first answered, the node cannot know and the hub decides.
        if let Some(gov) = self.governance() {
            gov.check_message(&env.labels, &typed)?;
        }
        Ok((env, typed))
    }

    /// Checks an officer's message and builds its outbox record; nothing
    /// is stored yet.
    fn prepare(
        &self,
        caller: &Identity,
        req: pb::OfficerSubmitRequest,
    ) -> Result<(Envelope, OutboxRecord, Option<store::plans::PlanWrite>), NodeError> {
        let mut labels = req.labels;
        let draft = self.plan_draft(&mut labels, &req.targets, req.clear_targets)?;
        // A retry with the same id must produce the same envelope, so the
        // creation time of a resubmission is the original one.
        let (env, typed) = self.envelope(labels, req.body)?;
        let plan = match draft {
            Some(d) => Self::plan_write(d, &env, &typed, caller)?,
            None => None,
        };
        let digest = store::submission_digest(&env);
        let approval_reason = self
            .release
            .approval_reason(env.labels.kind, env.labels.classification);
        if let Some(reason) = &approval_reason {
            // A message nobody else may approve would wait forever.
            if !self.release.approvers.iter().any(|a| *a != caller.name) {
                return Err(NodeError::NoOtherApprover {
                    reason: reason.clone(),
                    approvers: self.release.approvers.join(", "),
                });
            }
        }
        let record = OutboxRecord {
            message_id: env.labels.message_id.clone(),
            digest,
            submitted_by: caller.uri(),
            submitted_at_ms: now_ms(),
            title: typed.title().to_owned(),
            kind: env.labels.kind.as_str().to_owned(),
            classification: env.labels.classification.as_str().to_owned(),
            status: if approval_reason.is_some() {
                OutboxStatus::AwaitingApproval
            } else {
                OutboxStatus::Queued
            },
            attempts: 0,
            last_error: String::new(),
            decisions: Vec::new(),
            unaddressed: Vec::new(),
            policy_version: String::new(),
            seq: 0,
            approval_reason: approval_reason.unwrap_or_default(),
            approved_by: String::new(),
            approved_at_ms: 0,
            refused_by: String::new(),
            refused_at_ms: 0,
            refusal_reason: String::new(),
            received_by: Default::default(),
            quarantined_by: Default::default(),
            trace_parent: message_trace(&env.labels.message_id),
            leaf_index: 0,
            tree_size: 0,
            checkpoint: String::new(),
        };
        Ok((env, record, plan))
    }

    /// Takes `n` submissions from the officer's allowance, counting and
    /// warning about a refusal.
    fn admit(&self, caller: &Identity, n: usize) -> Result<(), NodeError> {
        let officer = caller.to_string();
        self.officer_rate.admit(&officer, n).inspect_err(|e| {
            if matches!(e, NodeError::RateLimited { .. }) {
                self.metrics.rate_limited.inc();
                tracing::warn!(
                    officer,
                    messages = n,
                    "an officer's submissions are rate-limited"
                );
            }
        })
    }

    async fn submit(
        &self,
        caller: &Identity,
        req: pb::OfficerSubmitRequest,
    ) -> Result<pb::OfficerSubmitResponse, NodeError> {
        self.own_officer(caller)?;
        self.admit(caller, 1)?;
        let prepared = self.prepare(caller, req)?;
        let mut results = self.store_submissions(caller, vec![prepared]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Engine("a write answered nothing".into()).into()))
    }

    /// Checks each message of a batch on its own, then stores the valid
    /// ones in one write; each gets its own result, in order. The whole
    /// batch fails only when it is malformed or nothing could be stored.
    async fn submit_batch(
        &self,
        caller: &Identity,
        requests: Vec<pb::OfficerSubmitRequest>,
    ) -> Result<Vec<Result<pb::OfficerSubmitResponse, NodeError>>, NodeError> {
        self.own_officer(caller)?;
        if requests.is_empty() || requests.len() > MAX_OFFICER_BATCH {
            return Err(NodeError::BadRequest {
                field: "messages",
                problem: format!(
                    "{} messages in one batch; send 1 to {MAX_OFFICER_BATCH}",
                    requests.len()
                ),
            });
        }
        self.admit(caller, requests.len())?;
        let mut results: Vec<Option<Result<pb::OfficerSubmitResponse, NodeError>>> =
            Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        for req in requests {
            match self.prepare(caller, req) {
                Ok(p) => {
                    valid.push(p);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut stored = if valid.is_empty() {
            Vec::new()
        } else {
            self.store_submissions(caller, valid).await?
        }
        .into_iter();
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    stored.next().unwrap_or_else(|| {
                        Err(StoreError::Engine("a write answered too few messages".into()).into())
                    })
                })
            })
            .collect())
    }

    /// Stores checked messages in the outbox in one write, waking the
    /// pusher if any was queued; one result per message, in order.
    async fn store_submissions(
        &self,
        caller: &Identity,
        prepared: Vec<(Envelope, OutboxRecord, Option<store::plans::PlanWrite>)>,
    ) -> Result<Vec<Result<pb::OfficerSubmitResponse, NodeError>>, NodeError> {
        let db = self.db.clone();
        let results = self
            .releasing(
                async move { store::enqueue_all(&db, prepared).await },
                |results| {
                    results.iter().any(|r| {
                        r.as_ref().is_ok_and(|(queued, stored)| {
                            *queued == Queued::New && stored.status == OutboxStatus::Queued
                        })
                    })
                },
            )
            .await?;
        // One line per message for a single submit; a batch gets one line
        // with its counts, and its messages' lines at debug level (the
        // outbox records who submitted each).
        let single = results.len() == 1;
        let (mut queued_n, mut awaiting_n) = (0usize, 0usize);
        let results: Vec<_> = results
            .into_iter()
            .map(|r| {
                let (queued, stored) = r?;
                if queued == Queued::New {
                    if stored.status == OutboxStatus::Queued {
                        queued_n += 1;
                        if single {
                            tracing::info!(message_id = %stored.message_id, officer = %caller, "queued for the hub");
                        } else {
                            tracing::debug!(message_id = %stored.message_id, officer = %caller, "queued for the hub");
                        }
                    } else {
                        awaiting_n += 1;
                        if single {
                            tracing::info!(message_id = %stored.message_id, officer = %caller, reason = %stored.approval_reason, "awaiting four-eyes approval");
                        } else {
                            tracing::debug!(message_id = %stored.message_id, officer = %caller, reason = %stored.approval_reason, "awaiting four-eyes approval");
                        }
                    }
                }
                Ok(pb::OfficerSubmitResponse {
                    message_id: stored.message_id,
                    duplicate: queued == Queued::Duplicate,
                    status: stored.status.as_str().to_owned(),
                    approval_reason: stored.approval_reason,
                })
            })
            .collect();
        if !single {
            tracing::info!(officer = %caller, messages = results.len(), queued = queued_n, awaiting_approval = awaiting_n, "stored a batch in the outbox");
        }
        Ok(results)
    }

    /// Who may approve, in words, for refusals.
    fn approvers_in_words(&self) -> String {
        if self.release.approvers.is_empty() {
            "this node has no four-eyes approvers ([release] approvers in its configuration)"
                .to_owned()
        } else {
            format!(
                "only these officers of {} may: {}",
                self.body,
                self.release.approvers.join(", ")
            )
        }
    }

    /// Checks that `caller` may decide on message `id`: it is in the outbox,
    /// they did not submit it, and they are an approver. Denials are logged.
    fn may_decide(&self, caller: &Identity, id: &str, verb: &str) -> Result<(), NodeError> {
        self.own_officer(caller)?;
        let (rec, _) = store::outbox_message(&self.db, id)?
            .ok_or_else(|| NodeError::NotInOutbox(id.to_owned()))?;
        let denied = if rec.submitted_by == caller.uri() {
            NodeError::OwnMessage {
                message_id: id.to_owned(),
            }
        } else if !self.release.may_approve(&caller.name) {
            NodeError::NotApprover {
                caller: caller.uri(),
                who: self.approvers_in_words(),
            }
        } else {
            return Ok(());
        };
        tracing::warn!(message_id = %id, officer = %caller, submitted_by = %rec.submitted_by, error = %denied, "four-eyes {verb} denied");
        Err(denied)
    }

    async fn approve(
        &self,
        caller: &Identity,
        req: pb::ApproveRequest,
    ) -> Result<pb::ApproveResponse, NodeError> {
        let id = id_field("message_id", &req.message_id)?;
        self.may_decide(caller, &id, "approval")?;
        let decider = Decider {
            uri: caller.uri(),
            now_ms: now_ms(),
        };
        let db = self.db.clone();
        let (rec, already) = self
            .releasing(
                async move { store::approve(&db, id, decider).await },
                |(_, already)| !already,
            )
            .await?;
        if !already {
            tracing::info!(message_id = %rec.message_id, approved_by = %rec.approved_by, submitted_by = %rec.submitted_by, "four-eyes approval: released to the hub");
        }
        Ok(pb::ApproveResponse {
            message_id: rec.message_id,
            approved_by: rec.approved_by,
            approved_at_ms: rec.approved_at_ms,
            already_approved: already,
            status: rec.status.as_str().to_owned(),
        })
    }

    async fn refuse(
        &self,
        caller: &Identity,
        req: pb::RefuseRequest,
    ) -> Result<pb::RefuseResponse, NodeError> {
        let id = id_field("message_id", &req.message_id)?;
        let reason = reason_field(&req.reason, true)?;
        self.may_decide(caller, &id, "refusal")?;
        let decider = Decider {
            uri: caller.uri(),
            now_ms: now_ms(),
        };
        let (rec, already) = store::refuse(&self.db, id, decider, reason).await?;
        if !already {
            tracing::info!(message_id = %rec.message_id, refused_by = %rec.refused_by, submitted_by = %rec.submitted_by, "four-eyes refusal: never sent");
        }
        Ok(pb::RefuseResponse {
            message_id: rec.message_id,
            refused_by: rec.refused_by,
            refused_at_ms: rec.refused_at_ms,
            reason: rec.refusal_reason,
            already_refused: already,
        })
    }

    fn list_approvals(
        &self,
        caller: &Identity,
        req: pb::ListApprovalsRequest,
    ) -> Result<pb::ListApprovalsResponse, NodeError> {
        self.own_officer(caller)?;
        let one = !req.message_id.is_empty();
        let items = if one {
            let id = id_field("message_id", &req.message_id)?;
            match store::outbox_message(&self.db, &id)? {
                Some((rec, env)) if rec.status == OutboxStatus::AwaitingApproval => {
                    vec![(rec, env)]
                }
                _ => return Err(NodeError::NotAwaiting(id)),
            }
        } else {
            store::awaiting(&self.db, limit(req.limit))?
        };
        let entries = items
            .into_iter()
            .map(|(rec, env)| {
                let body = if one {
                    Some(pb::Body::decode(env.body.as_slice()).map_err(|e| {
                        liaison_store::StoreError::Corrupt {
                            key: format!("oe/{}", rec.message_id),
                            problem: format!("stored body does not decode: {e}"),
                        }
                    })?)
                } else {
                    None
                };
                Ok(pb::PendingApproval {
                    can_decide: rec.submitted_by != caller.uri()
                        && self.release.may_approve(&caller.name),
                    message_id: rec.message_id,
                    submitted_by: rec.submitted_by,
                    submitted_at_ms: rec.submitted_at_ms,
                    title: rec.title,
                    kind: kind_proto(&rec.kind),
                    classification: class_proto(&rec.classification),
                    approval_reason: rec.approval_reason,
                    labels: env.labels,
                    body,
                })
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        Ok(pb::ListApprovalsResponse {
            entries,
            approvers: self.release.approvers.clone(),
        })
    }

    /// Asks the hub to pass a received message on; the hub answers at once.
    async fn request_forward(
        &self,
        caller: &Identity,
        req: pb::OfficerForwardRequest,
    ) -> Result<pb::ForwardRequestResponse, NodeError> {
        self.own_officer(caller)?;
        // Each request queues a notice for another body: limited as a
        // submission is.
        self.admit(caller, 1)?;
        let message_id = id_field("message_id", &req.message_id)?;
        let reason = reason_field(&req.reason, true)?;
        let mut hub = self.hub.clone();
        let resp = hub
            .request_forward(pb::ForwardRequest {
                message_id,
                to: req.to.trim().to_owned(),
                reason,
                requested_by: caller.uri(),
            })
            .await
            .map_err(NodeError::Hub)?
            .into_inner();
        tracing::info!(request_id = %resp.request_id, officer = %caller, state = resp.state, "forward requested");
        Ok(resp)
    }

    fn list_forward_requests(
        &self,
        caller: &Identity,
        req: pb::ListForwardRequestsRequest,
    ) -> Result<pb::ListForwardRequestsResponse, NodeError> {
        self.own_officer(caller)?;
        let entries = store::forward_requests(&self.db, limit(req.limit), req.pending_only)?
            .into_iter()
            .map(|r| self.forward_entry(r))
            .collect::<Result<_, _>>()?;
        Ok(pb::ListForwardRequestsResponse { entries })
    }

    fn forward_entry(
        &self,
        r: store::ForwardRequestRecord,
    ) -> Result<pb::ForwardRequestEntry, NodeError> {
        let title = store::outbox_message(&self.db, &r.message_id)?
            .map(|(o, _)| o.title)
            .unwrap_or_default();
        Ok(pb::ForwardRequestEntry {
            request_id: r.request_id,
            message_id: r.message_id,
            title,
            requester: r.requester,
            requested_by: r.requested_by,
            to: r.to,
            reason: r.reason,
            requested_at_ms: r.requested_at_ms,
            state: r.state.as_str().to_owned(),
            decided_by: r.decided_by,
            decided_at_ms: r.decided_at_ms,
            decision_reason: r.decision_reason,
            hub_outcome: r.hub_outcome,
        })
    }

    /// Records an officer's decision on a forward request; the push task
    /// sends it to the hub.
    async fn decide_forward(
        &self,
        caller: &Identity,
        req: pb::OfficerDecideForwardRequest,
    ) -> Result<pb::OfficerDecideForwardResponse, NodeError> {
        self.own_officer(caller)?;
        let id = id_field("request_id", &req.request_id)?;
        // A reason is required to refuse.
        let reason = reason_field(&req.reason, !req.approve)?;
        let decider = Decider {
            uri: caller.uri(),
            now_ms: now_ms(),
        };
        let db = self.db.clone();
        let approve = req.approve;
        let (rec, already) = self
            .releasing(
                async move { store::decide_forward(&db, id, approve, reason, decider).await },
                |(_, already)| !already,
            )
            .await?;
        if !already {
            tracing::info!(request_id = %rec.request_id, message_id = %rec.message_id, to = %rec.to, officer = %caller, state = rec.state.as_str(), "forward request decided");
        }
        Ok(pb::OfficerDecideForwardResponse {
            entry: Some(self.forward_entry(rec)?),
            already_decided: already,
        })
    }

    async fn explain(
        &self,
        caller: &Identity,
        req: pb::OfficerExplainRequest,
    ) -> Result<pb::ExplainResponse, NodeError> {
        self.own_officer(caller)?;
        let (env, _) = self.envelope(req.labels, req.body)?;
        // The same decision the hub makes, under the governance the hub has
        // in force; asked of the hub only while the node holds none.
        let mut resp = if let Some(gov) = self.governance() {
            let decisions = liaison_policy::decide(&gov, &env.labels, now_ms());
            pb::ExplainResponse {
                decisions: decisions.iter().map(pb::RoutingDecision::from).collect(),
                policy_version: gov.version().to_owned(),
                approval_needed: String::new(),
            }
        } else {
            let mut hub = self.hub.clone();
            hub.explain(pb::ExplainRequest {
                envelope: Some(pb::Envelope::from(&env)),
            })
            .await
            .map_err(NodeError::Hub)?
            .into_inner()
        };
        resp.approval_needed = self
            .release
            .approval_reason(env.labels.kind, env.labels.classification)
            .unwrap_or_default();
        Ok(resp)
    }
}

pub(crate) fn summary(rec: &store::InboxRecord, env: &pb::Envelope) -> pb::InboxSummary {
    let l = env.labels.clone().unwrap_or_default();
    pb::InboxSummary {
        message_id: rec.message_id.clone(),
        origin: l.origin,
        kind: l.kind,
        classification: l.classification,
        marking: rec.marking.clone(),
        priority: l.priority,
        title: rec.title.clone(),
        received_at_ms: rec.received_at_ms,
        read: rec.read_at_ms != 0,
        withdrawn: rec
            .withdrawn
            .as_ref()
            .map(|w| w.cause.clone())
            .unwrap_or_default(),
        withdrawn_reason: rec
            .withdrawn
            .as_ref()
            .map(|w| w.reason.clone())
            .unwrap_or_default(),
        unverified_log: rec.unverified_log,
    }
}

/// A UUID request field in its stored form; anything else is
/// `INVALID_ARGUMENT` naming the field, as at the hub.
fn id_field(field: &str, value: &str) -> Result<String, NodeError> {
    Ok(liaison_types::uuid_field(field, value)?)
}

/// A reason given by an officer: one line of 1 to 500 characters, required
/// or not.
fn reason_field(value: &str, required: bool) -> Result<String, NodeError> {
    Ok(liaison_types::text::reason("reason", value, required)?)
}

fn kind_proto(name: &str) -> i32 {
    name.parse::<liaison_types::Kind>()
        .map(|k| k.to_proto() as i32)
        .unwrap_or(0)
}

fn class_proto(name: &str) -> i32 {
    name.parse::<liaison_types::Classification>()
        .map(|c| c.to_proto() as i32)
        .unwrap_or(0)
}

fn limit(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_LIMIT,
        n => (n as usize).min(MAX_LIMIT),
    }
}

/// The `Officer` service.
#[derive(Debug, Clone)]
pub struct OfficerService(pub Arc<NodeState>);

#[tonic::async_trait]
impl pb::officer_server::Officer for OfficerService {
    async fn change_plan(
        &self,
        req: Request<pb::ChangePlanRequest>,
    ) -> Result<Response<pb::OfficerSubmitResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let submission = self.0.end_plan_request(req.get_ref())?;
        Ok(Response::new(self.0.submit(&caller, submission).await?))
    }

    async fn list_plans(
        &self,
        req: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        Ok(Response::new(self.0.list_plans(req.get_ref().all)?))
    }

    async fn plan_calendar(
        &self,
        req: Request<pb::PlanCalendarRequest>,
    ) -> Result<Response<pb::PlanCalendarResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        Ok(Response::new(self.0.calendar(req.get_ref())?))
    }

    async fn update_notice(
        &self,
        req: Request<pb::UpdateNoticeRequest>,
    ) -> Result<Response<pb::NoticeEntry>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        Ok(Response::new(
            self.0.update_notice(&caller, req.into_inner()).await?,
        ))
    }

    async fn request_contact(
        &self,
        req: Request<pb::RequestContactRequest>,
    ) -> Result<Response<pb::OfficerSubmitResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let submission = self.0.contact_request(req.get_ref())?;
        Ok(Response::new(self.0.submit(&caller, submission).await?))
    }
    async fn status(
        &self,
        req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let db = &self.0.db;
        let (quarantined, newest) = store::quarantine(db, 20).map_err(NodeError::from)?;
        let health = self.0.health.conditions();
        Ok(Response::new(pb::NodeStatus {
            body: self.0.body.to_string(),
            quarantined,
            quarantine: newest
                .into_iter()
                .map(|q| pb::QuarantineEntry {
                    hub_seq: q.hub_seq,
                    message_id: q.message_id,
                    origin: q.origin,
                    reason: q.reason,
                    at_ms: q.at_ms,
                })
                .collect(),
            outbox_pending: store::outbox_pending(db).map_err(NodeError::from)?,
            hub_cursor: store::hub_cursor(db).map_err(NodeError::from)?,
            hub_connected: health.hub_link == Some(true),
            inbox_messages: store::inbox_count(db).map_err(NodeError::from)?,
            storage_failure: health.storage_failure.unwrap_or_default(),
            certificate_expires_ms: liaison_pki::cert_expires(&self.0.tls_files)
                .unwrap_or(0)
                .saturating_mul(1000),
            witnessed_size: crate::witness::Witness::held(db)
                .map_err(NodeError::from)?
                .map_or(0, |h| h.size),
            witness_alarm: self
                .0
                .witness
                .alarm()
                .map(|a| a.problem)
                .unwrap_or_default(),
        }))
    }

    async fn submit(
        &self,
        req: Request<pb::OfficerSubmitRequest>,
    ) -> Result<Response<pb::OfficerSubmitResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let started = std::time::Instant::now();
        let span = request_span("Submit", &req);
        let done = self
            .0
            .submit(&caller, req.into_inner())
            .instrument(span)
            .await;
        let m = &self.0.metrics;
        m.submit_seconds.observe(started.elapsed().as_secs_f64());
        if done.is_ok() {
            m.submitted.inc();
        }
        Ok(Response::new(done?))
    }

    async fn submit_batch(
        &self,
        req: Request<pb::OfficerSubmitBatchRequest>,
    ) -> Result<Response<pb::OfficerSubmitBatchResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let span = request_span("SubmitBatch", &req);
        let messages = req.into_inner().messages;
        // A refused message is named by the id it was sent with (escaped,
        // and cut short: it may be what is wrong).
        let ids: Vec<String> = messages
            .iter()
            .map(|m| {
                let id = m
                    .labels
                    .as_ref()
                    .map(|l| l.message_id.as_str())
                    .unwrap_or_default();
                liaison_types::text::escape_line_prefix(id, 64)
            })
            .collect();
        let started = std::time::Instant::now();
        let results = self
            .0
            .submit_batch(&caller, messages)
            .instrument(span)
            .await;
        let m = &self.0.metrics;
        m.submit_seconds.observe(started.elapsed().as_secs_f64());
        let results = results?;
        m.submitted
            .inc_by(results.iter().filter(|r| r.is_ok()).count() as u64);
        let results = results
            .into_iter()
            .zip(ids)
            .map(|(r, message_id)| pb::OfficerSubmitResult {
                result: Some(match r {
                    Ok(resp) => pb::officer_submit_result::Result::Accepted(resp),
                    Err(e) => pb::officer_submit_result::Result::Refused(
                        liaison_proto::status::refused_submission(message_id, &Status::from(e)),
                    ),
                }),
            })
            .collect();
        Ok(Response::new(pb::OfficerSubmitBatchResponse { results }))
    }

    async fn list_outbox(
        &self,
        req: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let records =
            store::outbox(&self.0.db, limit(req.get_ref().limit)).map_err(NodeError::from)?;
        let entries = records
            .into_iter()
            .map(|r| pb::OutboxEntry {
                message_id: r.message_id,
                title: r.title,
                kind: kind_proto(&r.kind),
                classification: class_proto(&r.classification),
                status: r.status.as_str().to_owned(),
                decisions: r.decisions.iter().map(pb::RoutingDecision::from).collect(),
                unaddressed: r.unaddressed.iter().map(pb::Unaddressed::from).collect(),
                submitted_by: r.submitted_by,
                submitted_at_ms: r.submitted_at_ms,
                attempts: r.attempts,
                last_error: r.last_error,
                policy_version: r.policy_version,
                approval_reason: r.approval_reason,
                approved_by: r.approved_by,
                approved_at_ms: r.approved_at_ms,
                refused_by: r.refused_by,
                refused_at_ms: r.refused_at_ms,
                refusal_reason: r.refusal_reason,
                received_by: r
                    .received_by
                    .into_iter()
                    .map(|(body, at_ms)| pb::Receipt {
                        body,
                        at_ms,
                        reason: String::new(),
                    })
                    .collect(),
                quarantined_by: r
                    .quarantined_by
                    .into_iter()
                    .map(|(body, (at_ms, reason))| pb::Receipt {
                        body,
                        at_ms,
                        reason,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListOutboxResponse { entries }))
    }

    async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let r = req.into_inner();
        let items =
            store::inbox(&self.0.db, limit(r.limit), r.unread_only).map_err(NodeError::from)?;
        Ok(Response::new(pb::ListInboxResponse {
            entries: items.iter().map(|(rec, env)| summary(rec, env)).collect(),
        }))
    }

    type WatchInboxStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::InboxSummary, Status>>;

    async fn watch_inbox(
        &self,
        req: Request<pb::WatchInboxRequest>,
    ) -> Result<Response<Self::WatchInboxStream>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let mut feed = self.0.inbox_feed.subscribe();
        let mut stopping = self.0.stopping.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let item = tokio::select! {
                    item = feed.recv() => item,
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                let (next, last) = match item {
                    Ok(summary) => (Ok(summary), false),
                    Err(RecvError::Lagged(missed)) => (
                        Err(Status::resource_exhausted(format!(
                            "this watcher fell {missed} messages behind the inbox and was ended; list the inbox, then watch again"
                        ))),
                        true,
                    ),
                    Err(RecvError::Closed) => return,
                };
                // A watcher that stops reading must not keep the node from
                // stopping.
                let sent = tokio::select! {
                    sent = tx.send(next) => sent.is_ok(),
                    _ = stopping.wait_for(|s| *s) => false,
                };
                if !sent || last {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn show(
        &self,
        req: Request<pb::ShowRequest>,
    ) -> Result<Response<pb::InboxMessage>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let id = id_field("message_id", &req.into_inner().message_id)?;
        let (rec, env) = store::inbox_message(&self.0.db, &id)
            .map_err(NodeError::from)?
            .ok_or_else(|| NodeError::NotFound(id.clone()))?;
        // A withdrawn message's content is erased: there is no body to show.
        let body = if rec.withdrawn.is_some() {
            None
        } else {
            Some(pb::Body::decode(env.body.as_slice()).map_err(|e| {
                NodeError::from(StoreError::Corrupt {
                    key: format!("inbox body of {id}"),
                    problem: e.to_string(),
                })
            })?)
        };
        Ok(Response::new(pb::InboxMessage {
            summary: Some(summary(&rec, &env)),
            labels: env.labels,
            body,
            read_by: rec.read_by,
            read_at_ms: rec.read_at_ms,
        }))
    }

    async fn retract(
        &self,
        req: Request<pb::OfficerRetractRequest>,
    ) -> Result<Response<pb::OfficerRetractResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let r = req.into_inner();
        let id = id_field("message_id", &r.message_id)?;
        let reason = reason_field(&r.reason, true)?;
        let db = self.0.db.clone();
        let (target, by) = (id.clone(), caller.uri());
        let status = self
            .0
            .releasing(
                async move { store::request_retraction(&db, target, reason, by).await },
                |status| *status == "retraction_queued",
            )
            .await?;
        tracing::info!(message_id = %id, officer = %caller, status, "retraction requested");
        Ok(Response::new(pb::OfficerRetractResponse {
            status: status.to_owned(),
        }))
    }

    async fn acknowledge(
        &self,
        req: Request<pb::OfficerAcknowledgeRequest>,
    ) -> Result<Response<pb::OfficerAcknowledgeResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.own_officer(&caller)?;
        let id = id_field("message_id", &req.into_inner().message_id)?;
        let rec = store::mark_read(&self.0.db, id, caller.uri(), now_ms()).await?;
        Ok(Response::new(pb::OfficerAcknowledgeResponse {
            read_by: rec.read_by,
            read_at_ms: rec.read_at_ms,
        }))
    }

    async fn explain(
        &self,
        req: Request<pb::OfficerExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.explain(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.list_approvals(&caller, req.into_inner())?,
        ))
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.approve(&caller, req.into_inner()).await?,
        ))
    }

    async fn request_forward(
        &self,
        req: Request<pb::OfficerForwardRequest>,
    ) -> Result<Response<pb::ForwardRequestResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.request_forward(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_forward_requests(
        &self,
        req: Request<pb::ListForwardRequestsRequest>,
    ) -> Result<Response<pb::ListForwardRequestsResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.list_forward_requests(&caller, req.into_inner())?,
        ))
    }

    async fn decide_forward(
        &self,
        req: Request<pb::OfficerDecideForwardRequest>,
    ) -> Result<Response<pb::OfficerDecideForwardResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.decide_forward(&caller, req.into_inner()).await?,
        ))
    }

    async fn refuse(
        &self,
        req: Request<pb::RefuseRequest>,
    ) -> Result<Response<pb::RefuseResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        Ok(Response::new(
            self.0.refuse(&caller, req.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::time::Duration;

    use futures::FutureExt;
    use liaison_store::testing::HeldFlush;
    use liaison_store::Engine;
    use liaison_types::Role;

    use super::*;

    fn node(db: Db) -> NodeState {
        let db_for_witness = db.clone();
        let hub = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        NodeState {
            body: BodyId::parse("body01").unwrap(),
            db,
            hub: FederationClient::new(hub),
            outbox_ready: Arc::default(),
            writes: TaskTracker::new(),
            inbox_changed: Notify::new(),
            release: Release::default(),
            handshake_failures: liaison_pki::HandshakeFailures::default(),
            governance: RwLock::new(None),
            governance_stale: Notify::new(),
            inbox_feed: tokio::sync::broadcast::channel(8).0,
            stopping: tokio::sync::watch::channel(false).1,
            health: liaison_telemetry::health::Health::new(crate::SERVICES, true).0,
            metrics: crate::metrics::NodeMetrics::default(),
            officer_rate: crate::officer_rate::OfficerRate::new(Default::default()),
            tls_files: liaison_pki::TlsFiles::in_dev_dir(std::path::Path::new("/nonexistent"), "x"),
            witness: Arc::new(crate::witness::tests::witness(&db_for_witness)),
            deconfliction_key: None,
        }
    }

    fn alert() -> pb::OfficerSubmitRequest {
        pb::OfficerSubmitRequest {
            clear_targets: false,
            targets: Vec::new(),
            labels: Some(pb::Labels {
                kind: pb::Kind::Alert as i32,
                classification: pb::Classification::Restricted as i32,
                crime_areas: vec!["drugs".into()],
                priority: pb::Priority::Immediate as i32,
                releasable_to: vec!["body02".into()],
                ..Default::default()
            }),
            body: Some(pb::Body {
                title: "a test alert".into(),
                content: Some(pb::body::Content::Alert(pb::Alert {
                    text: "text".into(),
                    ..Default::default()
                })),
            }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_whose_caller_stops_waiting_still_wakes_the_pusher() {
        let engine = Arc::new(HeldFlush::default());
        let state = Arc::new(node(
            Db::with_engine(Arc::clone(&engine) as Arc<dyn Engine>),
        ));
        let officer = Identity::new("liaison.test", "body01", Role::Officer, "alice").unwrap();
        let submitter = Arc::clone(&state);
        let caller = tokio::spawn(async move { submitter.submit(&officer, alert()).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !engine.applied() {
            assert!(std::time::Instant::now() < deadline, "the write is applied");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The officer's request goes away before the flush.
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert!(
            state.outbox_ready.notified().now_or_never().is_none(),
            "the pusher is not woken before the message is durable"
        );
        engine.release();
        tokio::time::timeout(Duration::from_secs(10), state.outbox_ready.notified())
            .await
            .expect("the pusher is woken once the message is durable");
        assert_eq!(store::pending(&state.db, 10).unwrap().len(), 1);
    }
}

/// `NodeAudit`: the witness and the proofs the node keeps for its body.
#[derive(Debug, Clone)]
pub struct NodeAuditService(pub Arc<NodeState>);

impl NodeAuditService {
    /// Officers, auditors and admins of the node's own body.
    fn own(&self, caller: &Identity) -> Result<(), NodeError> {
        self.0.own_officer(caller)
    }
}

#[tonic::async_trait]
impl pb::node_audit_server::NodeAudit for NodeAuditService {
    async fn witness_status(
        &self,
        req: Request<pb::WitnessStatusRequest>,
    ) -> Result<Response<pb::WitnessStatus>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.own(&caller)?;
        Ok(Response::new(
            self.0.witness.status(&self.0.db).map_err(NodeError::from)?,
        ))
    }

    async fn clear_alarm(
        &self,
        req: Request<pb::ClearAlarmRequest>,
    ) -> Result<Response<pb::WitnessStatus>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.own(&caller)?;
        if caller.role != liaison_types::Role::Admin {
            return Err(NodeError::NotAdmin(caller.uri()).into());
        }
        let r = req.into_inner();
        let reason =
            liaison_types::text::reason("reason", &r.reason, true).map_err(NodeError::from)?;
        let mut hub = self.0.hub.clone();
        self.0
            .witness
            .clear(&self.0.db, &mut hub, r.trust_latest)
            .await?;
        tracing::warn!(by = %caller, reason = %reason, trust_latest = r.trust_latest, "the audit log alarm was cleared");
        Ok(Response::new(
            self.0.witness.status(&self.0.db).map_err(NodeError::from)?,
        ))
    }

    async fn prove(
        &self,
        req: Request<pb::NodeProveRequest>,
    ) -> Result<Response<pb::NodeProveResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.own(&caller)?;
        let id = liaison_types::uuid_field("message_id", &req.into_inner().message_id)
            .map_err(NodeError::from)?;
        Ok(Response::new(self.0.prove(&id).await?))
    }

    async fn list_log(
        &self,
        req: Request<pb::NodeLogRequest>,
    ) -> Result<Response<pb::NodeLogResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.own(&caller)?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 1000,
            n => n.min(10_000) as usize,
        };
        let (records, tree_size, root) =
            store::node_log(&self.0.db, r.after_seq, limit).map_err(NodeError::from)?;
        Ok(Response::new(pb::NodeLogResponse {
            records,
            tree_size,
            root: root.0.to_vec(),
        }))
    }

    async fn verify_log(
        &self,
        req: Request<pb::NodeLogVerifyRequest>,
    ) -> Result<Response<pb::NodeLogVerifyResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.own(&caller)?;
        let db = self.0.db.clone();
        let check = tokio::task::spawn_blocking(move || store::check_node_log(&db))
            .await
            .map_err(|e| Status::internal(format!("checking the node log: {e}")))?
            .map_err(NodeError::from)?;
        let (first_bad_seq, error) = check.first_error.clone().unwrap_or_default();
        if let Some((seq, problem)) = &check.first_error {
            tracing::error!(position = seq, problem = %problem, "the node's own log does not verify");
        }
        Ok(Response::new(pb::NodeLogVerifyResponse {
            ok: check.first_error.is_none(),
            records: check.records,
            root: check.root.0.to_vec(),
            first_bad_seq,
            error,
        }))
    }
}

impl NodeState {
    /// The hub's records about one of this body's messages, each with its
    /// inclusion proof, in the checkpoint the witness holds when it covers
    /// them (else in the one the hub answered or delivered with).
    pub async fn prove(&self, id: &str) -> Result<pb::NodeProveResponse, NodeError> {
        // As origin: the "received" record and the routing decisions after
        // it; as recipient: the decision to deliver here.
        let (first, size, many) = if let Some(rec) = store::read_outbox(&self.db, id)? {
            (rec.leaf_index, rec.tree_size, true)
        } else if let Some((rec, _)) = store::inbox_message(&self.db, id)? {
            (rec.leaf_index, rec.tree_size, false)
        } else {
            return Err(NodeError::NotFound(id.to_owned()));
        };
        if size == 0 {
            return Err(NodeError::NotRecorded(id.to_owned()));
        }
        let held = crate::witness::Witness::held(&self.db)?;
        let in_size = match &held {
            Some(h) if h.size > first => h.size,
            _ => size,
        };
        let mut hub = self.hub.clone();
        let mut proofs = Vec::new();
        let mut leaf = first;
        while leaf < in_size {
            let p = hub
                .prove_inclusion(pb::InclusionRequest {
                    leaf_index: leaf,
                    tree_size: in_size,
                })
                .await
                .map_err(NodeError::Hub)?
                .into_inner();
            let record =
                <pb::AuditRecord as prost::Message>::decode(p.leaf.as_slice()).map_err(|e| {
                    NodeError::Witness(format!("leaf {leaf} is not an audit record: {e}"))
                })?;
            let about = liaison_types::audit::names_message(&record, id);
            if !about {
                break;
            }
            proofs.push(p);
            if !many {
                break;
            }
            leaf += 1;
        }
        Ok(pb::NodeProveResponse {
            proofs,
            witnessed: held.map(|h| h.note.into_bytes()).unwrap_or_default(),
        })
    }
}
