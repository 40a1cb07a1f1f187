//! [`HubStore`]: the one writer of the hub's state, and the keeper of its
//! durability marks.
//!
//! The engine applies a group of writes before it flushes them, so a plain
//! read could see a queue entry or an audit record that a crash would then
//! undo: a node could store a message whose submitter was never answered,
//! and after the restart another message would take its queue position. So
//! the store keeps, per body, the highest queue position known to be flushed
//! and the highest flushed audit position, and every write method raises
//! them itself once its flush has returned. Readers of queues and of the
//! audit log see nothing beyond the marks. No caller can forget to publish
//! a write, and no reader can see one that is not on disk. Each write and
//! its publication run in a task of their own, so a caller that stops
//! waiting (a cancelled request) cannot leave a committed write unpublished.
//!
//! The write methods take whole batches where the caller has them (a
//! message and all its recipients; several audit records), so that the
//! batched pipe of the next step only adds callers, not write paths.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use liaison_proto::v1 as pb;
use liaison_store::{Db, StoreError};
use liaison_types::BodyId;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::*;
use crate::HubError;
use liaison_tlog::{LogSigner, SignedCheckpoint};

/// The hub's durable state (see the module documentation).
#[derive(Debug)]
pub struct HubStore {
    db: Db,
    marks: Arc<Marks>,
    /// The log's signing key and the latest checkpoint signed.
    log: LogKeeper,
    /// The writes in flight (see [`HubStore::detached`]); shutdown waits
    /// for them before it closes the database.
    writes: TaskTracker,
    /// The active plans, indexed for deconfliction.
    plans: Arc<Mutex<Deconfliction>>,
    /// How much may wait for one recipient.
    quota: QueueQuota,
}

/// The log's key and its latest signed checkpoint.
struct LogKeeper {
    signer: LogSigner,
    /// The durable log's right edge and its signed checkpoint.
    latest: Mutex<(liaison_tlog::Frontier, SignedCheckpoint)>,
    /// The latest checkpoint, for those who follow it.
    published: watch::Sender<SignedCheckpoint>,
    /// When the latest checkpoint was signed (ms since the epoch).
    signed_at_ms: AtomicI64,
}

impl std::fmt::Debug for LogKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKeeper")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// The durability marks, shared with the tasks that raise them.
#[derive(Debug)]
struct Marks {
    /// Per body, the highest durable queue position; subscriptions wait on it.
    queues: Mutex<HashMap<BodyId, watch::Sender<u64>>>,
    /// The highest durable audit position.
    audit: AtomicU64,
}

impl Marks {
    fn queue_mark(&self, body: &BodyId) -> watch::Sender<u64> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        // A body unknown at start-up has nothing durable yet: its mark
        // starts at 0 and rises with its deliveries.
        queues
            .entry(body.clone())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Raises the marks after a flush: these queue positions and the audit
    /// log up to `audit_seq` are durable.
    fn publish(&self, queued: &[(BodyId, u64)], audit_seq: u64) {
        self.audit.fetch_max(audit_seq, Ordering::AcqRel);
        for (body, seq) in queued {
            self.queue_mark(body).send_if_modified(|mark| {
                let raised = seq > mark;
                *mark = (*mark).max(*seq);
                raised
            });
        }
    }

    fn publish_forward(&self, done: &Forward) {
        match done {
            Forward::Refused { audit_seq, .. } => self.publish(&[], *audit_seq),
            Forward::Done {
                queued, audit_seq, ..
            } => self.publish(queued, *audit_seq),
        }
    }
}

/// After a write that failed, the index may hold plans of it: it is read
/// again from what the store holds.
fn reload_plans(db: &Db, plans: &Mutex<Deconfliction>) {
    match Deconfliction::load(db, liaison_types::now_ms()) {
        Ok(fresh) => *plans.lock().unwrap_or_else(|p| p.into_inner()) = fresh,
        Err(reload) => {
            tracing::error!(error = %reload, "cannot reload the plans after a failed write")
        }
    }
}

impl HubStore {
    /// The store over a database just opened, for these bodies: everything
    /// on disk is durable, so every mark starts at the end of what is there.
    /// The log's checkpoints are signed with `signer`.
    pub fn open<'a>(
        db: Db,
        bodies: impl IntoIterator<Item = &'a BodyId>,
        signer: LogSigner,
    ) -> Result<Self, StoreError> {
        let mut queues = HashMap::new();
        for body in bodies {
            queues.insert(body.clone(), watch::channel(queue_end(&db, body)?).0);
        }
        let frontier = log::read_head(&db)?.frontier;
        let signed = signer.sign(frontier.size(), frontier.root());
        let (published, _) = watch::channel(signed.clone());
        let plans = Arc::new(Mutex::new(Deconfliction::load(
            &db,
            liaison_types::now_ms(),
        )?));
        Ok(Self {
            plans,
            log: LogKeeper {
                signer,
                latest: Mutex::new((frontier, signed)),
                published,
                signed_at_ms: AtomicI64::new(liaison_types::now_ms()),
            },
            marks: Arc::new(Marks {
                audit: AtomicU64::new(audit_end(&db)?),
                queues: Mutex::new(queues),
            }),
            db,
            writes: TaskTracker::new(),
            quota: QueueQuota::default(),
        })
    }

    /// The same store under the per-peer queue quota `quota` (the hub's
    /// `[queues]`; [`QueueQuota::default`] until set).
    pub fn with_quota(mut self, quota: QueueQuota) -> Self {
        self.quota = quota;
        self
    }

    /// Gives the database back, to close it at shutdown, once every write
    /// in flight has finished (each holds a handle to it).
    pub async fn into_db(self) -> Db {
        self.writes.close();
        self.writes.wait().await;
        self.db
    }

    /// Runs a write and the raising of its marks in a task of its own, to
    /// the end even if the caller stops waiting (a request cancelled, a
    /// connection lost): a write already queued commits all the same, and
    /// marks left low would hide its queue positions from every
    /// subscription until some later write to the same body raised them.
    async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, HubError>> + Send + 'static,
    ) -> Result<T, HubError> {
        self.writes
            .spawn(work)
            .await
            .map_err(|e| HubError::Store(StoreError::Engine(format!("a store task ended: {e}"))))?
    }

    /// Starts keeping a mark for a body a new governance adds, at the end of
    /// whatever queue it has on disk: no write can be in flight to a body the
    /// previous governance did not know, so all of it is durable. A body
    /// already known is left alone (it may have writes in flight).
    pub fn track(&self, body: &BodyId) -> Result<(), StoreError> {
        let mut queues = self.marks.queues.lock().unwrap_or_else(|p| p.into_inner());
        if !queues.contains_key(body) {
            let end = queue_end(&self.db, body)?;
            queues.insert(body.clone(), watch::channel(end).0);
        }
        Ok(())
    }

    fn queue_mark(&self, body: &BodyId) -> watch::Sender<u64> {
        self.marks.queue_mark(body)
    }

    /// The database and the marks, for a detached write.
    fn parts(&self) -> (Db, Arc<Marks>) {
        (self.db.clone(), Arc::clone(&self.marks))
    }

    /// The body's durable queue position, to wait on.
    pub fn watch_queue(&self, body: &BodyId) -> watch::Receiver<u64> {
        self.queue_mark(body).subscribe()
    }

    /// Wakes the body's waiting subscriptions without raising its mark (its
    /// state changed).
    pub fn wake(&self, body: &BodyId) {
        self.queue_mark(body).send_modify(|_| {});
    }

    /// How many plans are active (indexed for deconfliction).
    pub fn active_plans(&self) -> usize {
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The hub's record of a plan.
    pub fn plan(&self, plan_id: &str) -> Result<Option<PlanRecord>, StoreError> {
        deconflict::read_plan_db(&self.db, plan_id)
    }

    /// The highest durable audit position.
    pub fn durable_audit(&self) -> u64 {
        self.marks.audit.load(Ordering::Acquire)
    }

    // Writes. Each publishes what it made durable.

    /// Stores and routes a submission atomically, or returns the original
    /// outcome of an earlier submission of the same message.
    pub async fn submit(&self, s: Submission) -> Result<Submitted, HubError> {
        only(self.submit_batch(vec![s]).await?)
    }

    /// Stores and routes a batch of submissions in one transaction and one
    /// flush, in order; each gets its own result (one refused does not
    /// refuse the others).
    pub async fn submit_batch(
        &self,
        batch: Vec<Submission>,
    ) -> Result<Vec<Result<Submitted, HubError>>, HubError> {
        let (db, marks) = self.parts();
        let plans = Arc::clone(&self.plans);
        let quota = self.quota;
        self.detached(async move {
            let (results, refused_audit) = match submit_all(&db, &plans, quota, batch).await {
                Ok(done) => done,
                Err(e) => {
                    reload_plans(&db, &plans);
                    return Err(e);
                }
            };
            marks.publish(&[], refused_audit);
            for r in &results {
                if let Ok(Submitted::New {
                    queued, audit_seq, ..
                }) = r
                {
                    marks.publish(queued, *audit_seq);
                }
            }
            Ok(results)
        })
        .await
    }

    /// Withdraws a message its originator retracts.
    #[allow(clippy::too_many_arguments)]
    pub async fn retract(
        &self,
        gov: Arc<liaison_policy::Governance>,
        caller: BodyId,
        message_id: String,
        reason: String,
        actor: String,
        now_ms: i64,
    ) -> Result<Retracted, HubError> {
        let (db, marks) = self.parts();
        let plans = Arc::clone(&self.plans);
        self.detached(async move {
            let done =
                match retract(&db, &plans, gov, caller, message_id, reason, actor, now_ms).await {
                    Ok(done) => done,
                    Err(e) => {
                        reload_plans(&db, &plans);
                        return Err(e);
                    }
                };
            marks.publish(&done.queued, done.audit_seq);
            Ok(done)
        })
        .await
    }

    /// Files a forward request (third-party rule).
    pub async fn request_forward(&self, ask: ForwardAsk) -> Result<Forward, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let done = request_forward(&db, ask).await?;
            marks.publish_forward(&done);
            Ok(done)
        })
        .await
    }

    /// Records the originator's verdict on a forward request.
    pub async fn decide_forward(&self, verdict: ForwardVerdict) -> Result<Forward, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let done = decide_forward(&db, verdict).await?;
            marks.publish_forward(&done);
            Ok(done)
        })
        .await
    }

    /// Acknowledges a body's queue up to `seq` (see [`acknowledge`]).
    pub async fn acknowledge(
        &self,
        body: BodyId,
        seq: u64,
        quarantined: BTreeMap<u64, String>,
        actor: String,
        now_ms: i64,
        policy_version: String,
    ) -> Result<Acknowledged, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let done =
                acknowledge(&db, body, seq, quarantined, actor, now_ms, policy_version).await?;
            marks.publish(&done.receipts, done.audit_seq);
            Ok(done)
        })
        .await
    }

    /// Appends audit records in one transaction; returns the last position.
    pub async fn audit(&self, records: Vec<pb::AuditRecord>) -> Result<u64, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let seq = audit_many(&db, records).await?;
            marks.publish(&[], seq);
            Ok(seq)
        })
        .await
    }

    /// Appends the record of a governance change (event `policy`).
    pub async fn audit_policy_change(
        &self,
        rule: liaison_policy::Rule,
        reason: String,
        policy_version: String,
        actor: String,
        now_ms: i64,
    ) -> Result<u64, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let seq = audit_policy_change(&db, rule, reason, policy_version, actor, now_ms).await?;
            marks.publish(&[], seq);
            Ok(seq)
        })
        .await
    }

    /// Stores the administrators' state overrides with the record of the
    /// change, atomically.
    pub async fn set_body_states(
        &self,
        states: BTreeMap<BodyId, liaison_policy::State>,
        record: pb::AuditRecord,
    ) -> Result<u64, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let seq = set_body_states(&db, states, record).await?;
            marks.publish(&[], seq);
            Ok(seq)
        })
        .await
    }

    /// Keeps a body's cosignature of the checkpoint of `size` (already
    /// checked) in place of the body's earlier one: a cosignature of a tree
    /// covers every record before it, so the latest is all that need be
    /// kept, and the store does not grow with every checkpoint witnessed.
    /// One older than the body's latest is superseded and not kept.
    /// Cosignatures are not audit records: they are about the log, and
    /// recording them would grow the log they cosign.
    pub async fn add_cosignature(
        &self,
        size: u64,
        root: [u8; 32],
        body: BodyId,
        line: Vec<u8>,
    ) -> Result<usize, HubError> {
        let (db, _) = self.parts();
        self.detached(async move {
            db.write(move |txn| {
                let by = cosigned_by_key(body.as_str());
                let latest = txn.get(&by)?.map(|v| keys::u64_value(Some(v)));
                if latest.is_some_and(|latest| latest > size) {
                    return Ok(());
                }
                if let Some(latest) = latest.filter(|&l| l != size) {
                    txn.delete(cosignature_key(latest, body.as_str()));
                }
                txn.put(by, size.to_be_bytes().to_vec());
                let mut value = root.to_vec();
                value.extend_from_slice(&line);
                txn.put(cosignature_key(size, body.as_str()), value);
                let witnessed = keys::u64_value(txn.get(WITNESSED)?);
                if size > witnessed {
                    txn.put(WITNESSED.to_vec(), size.to_be_bytes().to_vec());
                }
                Ok::<_, HubError>(())
            })
            .await?;
            Ok(cosignatures(&db, size)?.len())
        })
        .await
    }

    /// Queues every held delivery whose time has come.
    pub async fn release_due(
        &self,
        now_ms: i64,
        policy_version: String,
    ) -> Result<Released, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let done = release_due(&db, now_ms, policy_version).await?;
            marks.publish(&done.queued, done.audit_seq);
            Ok(done)
        })
        .await
    }

    /// Erases the content whose retention period has ended, and records the
    /// expiries that have come.
    pub async fn erase_due(&self, now_ms: i64, policy_version: String) -> Result<u64, HubError> {
        let (db, marks) = self.parts();
        self.detached(async move {
            let seq = erase_due(&db, now_ms, policy_version).await?;
            marks.publish(&[], seq);
            Ok(seq)
        })
        .await
    }

    // Reads. Queues and the audit log: durable entries only.

    /// Up to `limit` durable entries of the body's queue after `after`.
    pub fn queue_after(
        &self,
        body: &BodyId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
        let mark = *self.queue_mark(body).borrow();
        let mut entries = queue_after(&self.db, body, after, limit)?;
        entries.retain(|(seq, _)| *seq <= mark);
        Ok(entries)
    }

    /// Up to `limit` durable audit records with positions in
    /// `(after, upto]` (a listing fixes `upto` when it starts, at
    /// [`HubStore::durable_audit`], so that it has an end).
    pub fn audit_after(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<pb::AuditRecord>, StoreError> {
        audit_after(&self.db, after, upto.min(self.durable_audit()), limit)
    }

    /// The signed checkpoint of the durable log (cached: signed again only
    /// when the log has grown). A reader given it can ask for any proof up
    /// to its size.
    pub fn checkpoint(&self) -> Result<SignedCheckpoint, StoreError> {
        let mark = self.durable_audit();
        let mut latest = self.log.latest.lock().unwrap_or_else(|p| p.into_inner());
        let (frontier, signed) = &mut *latest;
        if frontier.size() < mark {
            // Move the right edge along by the leaves written since, which
            // a reader of durable positions may read.
            for h in log::leaf_hashes(&self.db, frontier.size(), mark)? {
                frontier.append(h);
            }
            *signed = self.log.signer.sign(frontier.size(), frontier.root());
            self.log
                .signed_at_ms
                .store(liaison_types::now_ms(), Ordering::Relaxed);
            self.log.published.send_replace(signed.clone());
        }
        Ok(signed.clone())
    }

    /// The log's verifier key, as text (`<name>+<id>+<key>`).
    pub fn log_verifier_text(&self) -> String {
        self.log.signer.verifier_text()
    }

    /// When the latest checkpoint was signed (ms since the epoch): at
    /// start-up, then each time the log has grown and a checkpoint was
    /// asked for or published.
    pub fn checkpoint_signed_at_ms(&self) -> i64 {
        self.log.signed_at_ms.load(Ordering::Relaxed)
    }

    /// The latest checkpoint as it changes (see [`HubStore::checkpoint`],
    /// which publishes).
    pub fn watch_checkpoint(&self) -> watch::Receiver<SignedCheckpoint> {
        self.log.published.subscribe()
    }

    /// The signed checkpoint of the first `size` records (at most the
    /// durable log).
    pub fn checkpoint_at(&self, size: u64) -> Result<SignedCheckpoint, HubError> {
        let latest = self.checkpoint()?;
        if size == latest.checkpoint.size {
            return Ok(latest);
        }
        self.within(size, latest.checkpoint.size)?;
        let root = liaison_tlog::tree::root(size, &log::stored_hashes(&self.db))
            .map_err(|e| HubError::Store(StoreError::Engine(e.to_string())))?;
        Ok(self.log.signer.sign(size, root))
    }

    fn within(&self, size: u64, durable: u64) -> Result<(), HubError> {
        if size > durable {
            return Err(HubError::BadProofRequest(format!(
                "the log has {durable} records; there is no tree of {size}"
            )));
        }
        Ok(())
    }

    /// The record at audit position `seq` (durable only), with its leaf.
    pub fn record(&self, seq: u64) -> Result<Option<pb::AuditRecord>, StoreError> {
        if seq == 0 || seq > self.durable_audit() {
            return Ok(None);
        }
        Ok(self.audit_after(seq - 1, seq, 1)?.into_iter().next())
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves
    /// (0: the latest checkpoint's), with that checkpoint.
    pub fn prove_inclusion(
        &self,
        index: u64,
        size: u64,
    ) -> Result<(Vec<liaison_tlog::Hash>, SignedCheckpoint), HubError> {
        let checkpoint = self.checkpoint_or_latest(size)?;
        let size = checkpoint.checkpoint.size;
        if index >= size {
            return Err(HubError::BadProofRequest(format!(
                "a tree of {size} records has no leaf {index}"
            )));
        }
        let proof = liaison_tlog::tree::inclusion_proof(index, size, &log::stored_hashes(&self.db))
            .map_err(|e| HubError::Store(StoreError::Engine(e.to_string())))?;
        Ok((proof, checkpoint))
    }

    /// The consistency proof from the tree of `old` leaves to the tree of
    /// `size` (0: the latest checkpoint's), with that checkpoint.
    pub fn prove_consistency(
        &self,
        old: u64,
        size: u64,
    ) -> Result<(Vec<liaison_tlog::Hash>, SignedCheckpoint), HubError> {
        let checkpoint = self.checkpoint_or_latest(size)?;
        let size = checkpoint.checkpoint.size;
        if old > size {
            return Err(HubError::BadProofRequest(format!(
                "a tree of {old} records is not a prefix of the tree of {size}"
            )));
        }
        let proof = liaison_tlog::tree::consistency_proof(old, size, &log::stored_hashes(&self.db))
            .map_err(|e| HubError::Store(StoreError::Engine(e.to_string())))?;
        Ok((proof, checkpoint))
    }

    fn checkpoint_or_latest(&self, size: u64) -> Result<SignedCheckpoint, HubError> {
        if size == 0 {
            Ok(self.checkpoint()?)
        } else {
            self.checkpoint_at(size)
        }
    }

    /// Recomputes the durable log's every hash from its leaves and checks
    /// the root against the checkpoint.
    pub fn check_log(&self) -> Result<(log::LogCheck, SignedCheckpoint), StoreError> {
        let checkpoint = self.checkpoint()?;
        let cosigned = all_cosignatures(&self.db)?;
        let size = checkpoint.checkpoint.size;
        let mut check = log::check_log(&self.db, size, &cosigned)?;
        // A witness that cosigned a larger tree than the log now holds saw
        // records that are gone.
        if check.first_error.is_none() {
            if let Some(c) = cosigned.iter().find(|c| c.size > size) {
                check.first_error = Some((
                    size + 1,
                    format!(
                        "{} cosigned a tree of {} records but the log holds {size} (it was truncated or replaced)",
                        c.body, c.size
                    ),
                ));
            }
        }
        if check.first_error.is_none() && check.root != checkpoint.checkpoint.root {
            check.first_error = Some((
                checkpoint.checkpoint.size,
                "the recomputed root is not the checkpoint's".into(),
            ));
        }
        Ok((check, checkpoint))
    }

    /// The cosignatures kept for the checkpoint of `size`.
    pub fn cosignatures(&self, size: u64) -> Result<Vec<KeptCosignature>, StoreError> {
        cosignatures(&self.db, size)
    }

    /// The largest tree size that witnesses have cosigned (0 if none).
    pub fn witnessed_size(&self) -> Result<u64, StoreError> {
        Ok(keys::u64_value(self.db.get(WITNESSED)?))
    }

    /// How far behind the body's node is: durable queue positions not yet
    /// acknowledged, and when the oldest of them was queued.
    pub fn queue_state(&self, body: &BodyId) -> Result<QueueState, StoreError> {
        let mark = *self.queue_mark(body).borrow();
        let acked = acked(&self.db, body)?;
        let oldest_ms = if mark > acked {
            self.queue_after(body, acked, 1)?
                .first()
                .map(|(_, e)| e.routed_at_ms)
        } else {
            None
        };
        Ok(QueueState {
            depth: mark.saturating_sub(acked),
            oldest_ms,
            bytes: super::queued(&self.db, body)?.bytes,
        })
    }

    /// The body's acknowledged position.
    pub fn acked(&self, body: &BodyId) -> Result<u64, StoreError> {
        acked(&self.db, body)
    }

    /// The stored envelope of a message.
    pub fn envelope(&self, message_id: &str) -> Result<Option<pb::Envelope>, StoreError> {
        envelope(&self.db, message_id)
    }

    /// When a message's content is to be erased, if ever.
    pub fn erase_at(&self, message_id: &str) -> Result<Option<i64>, StoreError> {
        erase_at(&self.db, message_id)
    }

    /// The record of a message's content erasure, if erased.
    pub fn erased(&self, message_id: &str) -> Result<Option<Erased>, StoreError> {
        erased(&self.db, message_id)
    }

    /// The originator's retraction of a message, if retracted.
    pub fn retraction(&self, message_id: &str) -> Result<Option<Retraction>, StoreError> {
        retraction(&self.db, message_id)
    }

    /// A forward request.
    pub fn forward(&self, request_id: &str) -> Result<Option<ForwardRecord>, StoreError> {
        forward(&self.db, request_id)
    }

    /// The administrators' state overrides.
    pub fn body_states(&self) -> Result<BTreeMap<BodyId, liaison_policy::State>, StoreError> {
        body_states(&self.db)
    }

    /// The earliest time the schedule has work: an embargo release or an
    /// erasure.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(next_release(&self.db)?
            .into_iter()
            .chain(next_erasure(&self.db)?)
            .min())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use liaison_store::testing::HeldFlush;
    use liaison_store::Engine;

    use super::*;

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_stops_waiting_still_raises_its_marks() {
        let engine = Arc::new(HeldFlush::default());
        let db = Db::with_engine(Arc::clone(&engine) as Arc<dyn Engine>);
        let store = Arc::new(HubStore::open(db, [], log::test_signer()).unwrap());
        let writer = Arc::clone(&store);
        let caller = tokio::spawn(async move {
            let record = pb::AuditRecord {
                event: AuditEvent::Policy.into(),
                ..Default::default()
            };
            writer.audit(vec![record]).await
        });
        until("the write is applied", || engine.applied()).await;
        // The caller goes away (a cancelled request) before the flush.
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert_eq!(store.durable_audit(), 0, "not durable before the flush");
        engine.release();
        until("the mark rises after the flush", || {
            store.durable_audit() == 1
        })
        .await;
        assert_eq!(store.audit_after(0, 1, 10).unwrap().len(), 1);
    }
}

/// How far behind a body's node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Durable queue positions not yet acknowledged.
    pub depth: u64,
    /// When the oldest of them was queued, if any.
    pub oldest_ms: Option<i64>,
    /// Bytes of the messages among them (durable or not yet).
    pub bytes: u64,
}
