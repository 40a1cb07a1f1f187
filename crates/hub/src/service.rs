//! The hub's gRPC services: `Federation` for nodes and `Audit` for auditors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use liaison_pki::caller_from_extensions;
use liaison_policy::{decide, Governance, Outcome};
use liaison_proto::v1 as pb;
use liaison_store::Db;
use liaison_types::{
    audit::ChainVerifier, normalise_message_id, now_ms, BodyId, Classification, Envelope, Identity,
    ValidationError,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{self, Submitted};
use crate::HubError;

/// Deliveries read from the queue per round trip to the store.
const DELIVERY_BATCH: usize = 64;
/// Audit records read per round trip when listing or verifying.
const AUDIT_BATCH: usize = 1024;

/// State shared by every request.
#[derive(Debug)]
pub struct HubState {
    db: Db,
    governance: RwLock<Arc<Governance>>,
    /// One counter per body, bumped when its queue grows, so that open
    /// subscriptions wake up.
    wakers: Mutex<HashMap<BodyId, watch::Sender<u64>>>,
    /// Set when the hub shuts down, so that subscription streams end and the
    /// server can drain.
    stopping: watch::Receiver<bool>,
}

impl HubState {
    /// Builds the state over an open store.
    pub fn new(db: Db, governance: Governance, stopping: watch::Receiver<bool>) -> Self {
        Self {
            db,
            governance: RwLock::new(Arc::new(governance)),
            wakers: Mutex::new(HashMap::new()),
            stopping,
        }
    }

    /// The governance in force.
    pub fn governance(&self) -> Arc<Governance> {
        Arc::clone(&self.governance.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn waker(&self, body: &BodyId) -> watch::Sender<u64> {
        let mut map = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(body.clone())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    fn known_caller(&self, caller: &Identity) -> Result<Arc<Governance>, HubError> {
        let gov = self.governance();
        if gov.is_known(caller.body.as_str()) {
            Ok(gov)
        } else {
            Err(HubError::UnknownBody(caller.body.to_string()))
        }
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
            event: "refused".into(),
            message_id: labels
                .and_then(|l| normalise_message_id(&l.message_id))
                .unwrap_or_default(),
            origin: BodyId::parse(claimed)
                .map(|b| b.to_string())
                .unwrap_or_else(|_| "(not a body id)".into()),
            rule: "identity.origin_mismatch".into(),
            reason: format!(
                "certificate is {} but labels.origin names another body",
                caller.body
            ),
            policy_version: gov.version().to_owned(),
            actor: caller.uri(),
            ..Default::default()
        };
        store::audit_refusal(&self.db, record).await?;
        tracing::warn!(caller = %caller, claimed, "refused a message naming another body as origin");
        Err(HubError::OriginMismatch {
            caller: caller.body.to_string(),
            claimed: claimed
                .chars()
                .take(64)
                .collect::<String>()
                .escape_debug()
                .to_string(),
        })
    }

    fn validate(&self, envelope: pb::Envelope, gov: &Governance) -> Result<Envelope, HubError> {
        let (env, body) = Envelope::parse(envelope)?;
        gov.check_labels(&env.labels)?;
        for (field, named) in body.named_bodies() {
            if !gov.is_known(named) {
                let known: Vec<&str> = gov.bodies().map(|b| b.id.as_str()).collect();
                let problem = format!(
                    "'{named}' is not a body of this federation; expected one of {}",
                    known.join(", ")
                );
                return Err(ValidationError::new(field, problem).into());
            }
        }
        Ok(env)
    }

    /// Validates, routes, stores and audits a submission.
    pub async fn submit(
        &self,
        caller: &Identity,
        envelope: Option<pb::Envelope>,
    ) -> Result<pb::SubmitResponse, HubError> {
        let gov = self.known_caller(caller)?;
        let envelope = envelope.ok_or_else(|| {
            ValidationError::new("envelope", "missing; send the message to route")
        })?;
        self.check_origin(caller, &envelope, &gov).await?;
        let env = self.validate(envelope, &gov)?;
        let now = now_ms();
        let decisions = decide(&gov, &env.labels, now);
        let delivered: Vec<BodyId> = decisions
            .iter()
            .filter(|d| d.outcome == Outcome::Deliver)
            .map(|d| d.recipient.clone())
            .collect();
        let submitted = store::submit(
            &self.db,
            env,
            decisions,
            gov.version().to_owned(),
            caller.uri(),
            now,
        )
        .await?;
        let (outcome, duplicate) = match submitted {
            Submitted::New(o) => {
                for body in &delivered {
                    self.waker(body).send_modify(|n| *n += 1);
                }
                (o, false)
            }
            Submitted::Duplicate(o) => (o, true),
        };
        tracing::info!(message_id = %outcome.message_id, origin = %outcome.origin, duplicate, delivered = delivered.len(), "routed");
        Ok(pb::SubmitResponse {
            message_id: outcome.message_id.clone(),
            duplicate,
            decisions: outcome
                .decisions
                .iter()
                .map(pb::RoutingDecision::from)
                .collect(),
            policy_version: outcome.policy_version.clone(),
            accepted_at_ms: outcome.accepted_at_ms,
        })
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
        })
    }

    /// Acknowledges the caller's queue up to `seq`.
    pub async fn acknowledge(
        &self,
        caller: &Identity,
        seq: u64,
    ) -> Result<pb::AcknowledgeResponse, HubError> {
        self.known_caller(caller)?;
        let acked =
            store::acknowledge(&self.db, caller.body.clone(), seq, caller.uri(), now_ms()).await?;
        Ok(pb::AcknowledgeResponse { acked_seq: acked })
    }

    /// Starts streaming the caller's queue after `after_seq`.
    pub fn subscribe(
        self: &Arc<Self>,
        caller: &Identity,
        after_seq: u64,
    ) -> Result<mpsc::Receiver<Result<pb::Delivery, Status>>, HubError> {
        self.known_caller(caller)?;
        let start = store::acked(&self.db, &caller.body)?.max(after_seq);
        let (tx, rx) = mpsc::channel(DELIVERY_BATCH);
        let state = Arc::clone(self);
        let caller = caller.clone();
        tokio::spawn(async move {
            if let Err(e) = state.stream_deliveries(&caller, start, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
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
        let mut woken = self.waker(&caller.body).subscribe();
        let mut stopping = self.stopping.clone();
        tracing::info!(caller = %caller, after = cursor, "subscription opened");
        loop {
            // Mark the current wake-up as seen before reading, so a message
            // queued after the read still wakes us.
            woken.borrow_and_update();
            let entries = store::queue_after(&self.db, &caller.body, cursor, DELIVERY_BATCH)?;
            if entries.is_empty() {
                tokio::select! {
                    changed = woken.changed() => if changed.is_err() { return Ok(()) },
                    _ = tx.closed() => return Ok(()),
                    _ = stopping.wait_for(|s| *s) => return Ok(()),
                }
                continue;
            }
            let gov = self.governance();
            let mut records = Vec::with_capacity(entries.len());
            for (seq, entry) in entries {
                let Some(envelope) = store::envelope(&self.db, &entry.message_id)? else {
                    return Err(liaison_store::StoreError::Corrupt {
                        key: format!("m/{}/env", entry.message_id),
                        problem: "queued message has no stored envelope".into(),
                    }
                    .into());
                };
                let labels = envelope.labels.clone().unwrap_or_default();
                let classification = Classification::from_proto(labels.classification);
                let delivery = pb::Delivery {
                    seq,
                    recipient_marking: classification
                        .map(|c| gov.marking_for(&caller.body, c))
                        .unwrap_or_default(),
                    envelope: Some(envelope),
                    routed_at_ms: entry.routed_at_ms,
                };
                if tx.send(Ok(delivery)).await.is_err() {
                    break;
                }
                cursor = seq;
                records.push(pb::AuditRecord {
                    at_ms: now_ms(),
                    event: "delivered".into(),
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
                    ..Default::default()
                });
            }
            if !records.is_empty() {
                store::audit_many(&self.db, records).await?;
            }
            if tx.is_closed() {
                return Ok(());
            }
        }
    }

    /// Audit records visible to the caller that match the query.
    ///
    /// An auditor of the hub's body sees everything; another body's auditor
    /// sees the records naming its body as origin or recipient, and those
    /// its own services caused (a refusal of its node, say).
    fn audit_visible(
        hub_body: &BodyId,
        caller: &Identity,
        q: &pb::AuditQuery,
        r: &pb::AuditRecord,
    ) -> bool {
        let own = caller.body.as_str();
        let scope_ok = caller.body == *hub_body
            || r.origin == own
            || r.recipient == own
            || r.actor
                .parse::<Identity>()
                .is_ok_and(|a| a.body == caller.body);
        let eq = |filter: &str, value: &str| filter.is_empty() || filter == value;
        scope_ok
            && eq(&q.message_id, &r.message_id)
            && (q.body.is_empty() || q.body == r.origin || q.body == r.recipient)
            && eq(&q.rule, &r.rule)
            && eq(&q.event, &r.event)
            && eq(&q.decision, &r.decision)
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
        tokio::spawn(async move {
            let mut after = q.after_seq;
            let mut sent = 0u32;
            loop {
                let batch = match store::audit_after(&state.db, after, AUDIT_BATCH) {
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
                    if tx.send(Ok(r)).await.is_err() {
                        return;
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

    /// Verifies the whole chain.
    pub fn audit_verify(&self) -> Result<pb::VerifyResponse, HubError> {
        let mut verifier = ChainVerifier::default();
        let mut after = 0;
        loop {
            let batch = store::audit_after(&self.db, after, AUDIT_BATCH)?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            batch.iter().for_each(|r| verifier.push(r));
        }
        let report = verifier.finish();
        let (first_bad_seq, error) = report.first_error.clone().unwrap_or_default();
        Ok(pb::VerifyResponse {
            ok: report.ok(),
            records: report.records,
            head_hash: report.head_hash,
            first_bad_seq,
            error,
        })
    }
}

/// The `Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService(pub Arc<HubState>);

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        let resp = self.0.submit(&caller, req.into_inner().envelope).await?;
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
        let resp = self.0.acknowledge(&caller, req.into_inner().seq).await?;
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
}

/// The `Audit` service.
#[derive(Debug, Clone)]
pub struct AuditService(pub Arc<HubState>);

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
            .map_err(|e| Status::internal(format!("audit verification task failed: {e}")))??;
        Ok(Response::new(resp))
    }
}
