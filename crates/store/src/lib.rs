//! Durable storage for the hub and the nodes.
//!
//! Storage is an ordered key-value [`Engine`] with atomic batches; [`SledEngine`]
//! is the durable one and [`MemoryEngine`] an in-memory one for unit tests.
//! Both pass the same [`conformance`] suite.
//!
//! Every write goes through [`Db::write`], which runs a closure on a single
//! writer thread. The closure reads and stages writes in a [`Txn`]; if it
//! succeeds, its writes are applied as one atomic batch. The writer drains
//! every job waiting in its queue, applies each, then calls `flush` once and
//! only then answers every caller of the group. So a caller's `await` returns
//! only once its writes are on disk, concurrent callers share one fsync, and
//! because one thread applies all writes, a closure that reads a counter and
//! writes it back never races another.
//!
//! The writer does not use sled's `flush_async`: sled 0.34.7 deadlocks with
//! about eight or more concurrent callers of it. "Flushed" means on stable
//! storage: [`SledEngine`]'s flush follows sled's own (which ends with
//! `sync_file_range`, not enough against a power cut) with an `fdatasync`
//! of its log and an `fsync` of any new blob file, once per group.
#![forbid(unsafe_code)]

pub mod conformance;
mod engine;
pub mod keys;
pub mod merkle;
pub mod testing;
mod values;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use engine::{Engine, Entry, MemoryEngine, SledEngine, StoreOptions};
use tokio::sync::{mpsc, oneshot, watch};

/// Why a storage operation failed. Always our fault, never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database reported an error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A stored value could not be decoded.
    #[error("corrupt record at key {key}: {problem}")]
    Corrupt {
        /// The key, escaped for display.
        key: String,
        /// What could not be decoded.
        problem: String,
    },
    /// The writer thread has stopped (the process is shutting down).
    #[error("storage writer has stopped; restart the service")]
    Closed,
    /// The disk is full (or a quota is reached): the write failed (it may
    /// or may not have been kept; a retry with the same id is safe).
    #[error("the store's disk is full ({0}); free space on it: the store works again by itself once there is room")]
    NoSpace(String),
}

impl StoreError {
    /// The same error for another caller of a shared failure (a flush
    /// that failed for a whole group of writes): a full disk stays
    /// [`StoreError::NoSpace`].
    pub fn again(&self) -> Self {
        match self {
            Self::NoSpace(why) => Self::NoSpace(why.clone()),
            Self::Closed => Self::Closed,
            Self::Corrupt { key, problem } => Self::Corrupt {
                key: key.clone(),
                problem: problem.clone(),
            },
            Self::Engine(why) => Self::Engine(why.clone()),
        }
    }

    /// An I/O error while `doing` (for example `writing /path`): a full
    /// disk or quota is [`StoreError::NoSpace`], anything else
    /// [`StoreError::Engine`].
    pub fn io(doing: impl std::fmt::Display, e: &std::io::Error) -> Self {
        let full = e.kind() == std::io::ErrorKind::StorageFull
            || e.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(e.raw_os_error(), Some(28 | 122));
        if full {
            Self::NoSpace(format!("{doing}: {e}"))
        } else {
            Self::Engine(format!("{doing}: {e}"))
        }
    }
}

impl StoreError {
    /// The value under `key` cannot be what it should: `problem` says why.
    pub fn corrupt(key: &[u8], problem: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            problem: problem.to_string(),
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Self::io("sled", &io),
            e => Self::Engine(e.to_string()),
        }
    }
}

type Completion = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;

/// Called by the writer thread with the duration of every flush.
pub type FlushObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// What the writer thread reports to the rest of the process.
struct Reports {
    /// Why the last write or flush failed; `None` once a flush succeeds.
    failure: watch::Sender<Option<String>>,
    /// Told how long each flush took, once set.
    flushes: OnceLock<FlushObserver>,
}

impl Reports {
    fn new() -> Self {
        Self {
            failure: watch::channel(None).0,
            flushes: OnceLock::new(),
        }
    }

    fn failed(&self, e: &StoreError) {
        let text = e.to_string();
        self.failure.send_if_modified(|f| {
            let changed = f.as_deref() != Some(text.as_str());
            *f = Some(text);
            changed
        });
    }

    fn flushed(&self, took: Duration) {
        self.failure.send_if_modified(|f| f.take().is_some());
        if let Some(observe) = self.flushes.get() {
            observe(took);
        }
    }
}
type Job = Box<dyn FnOnce(&dyn Engine) -> Option<Completion> + Send>;

/// Encodes a record as JSON, the format of stored records.
pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain structs, which always serialise")
}

/// Decodes a stored JSON record; `key` names it in the error.
pub fn from_json<T: serde::de::DeserializeOwned>(
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: e.to_string(),
    })
}

/// Largest number of jobs that share one flush.
const MAX_GROUP: usize = 512;

/// While the store waits to be reopened after a failed write, with nothing
/// to write, the writer tries again this often.
const RECOVER_EVERY: Duration = Duration::from_millis(200);

/// A handle to the store: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Db {
    engine: Arc<dyn Engine>,
    jobs: mpsc::Sender<Job>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    reports: Arc<Reports>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (or creates) a durable sled store in `path` with the default
    /// options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) a durable sled store in `path`.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Ok(Self::with_engine(Arc::new(SledEngine::open_with(
            path, options,
        )?)))
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Self {
        Self::with_engine(Arc::new(MemoryEngine::default()))
    }

    /// A store over any engine; starts the writer thread.
    pub fn with_engine(engine: Arc<dyn Engine>) -> Self {
        let (jobs, rx) = mpsc::channel(4 * MAX_GROUP);
        let writer_engine = Arc::clone(&engine);
        let reports = Arc::new(Reports::new());
        let writer_reports = Arc::clone(&reports);
        let handle = std::thread::Builder::new()
            .name("liaison-store-writer".into())
            .spawn(move || writer(writer_engine, rx, writer_reports))
            .expect("spawning the store writer thread");
        Self {
            engine,
            jobs,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
            reports,
        }
    }

    /// Why the store's last write or flush failed, or `None` while it
    /// works: set by the writer thread when a write or a flush fails, and
    /// cleared by the next flush that succeeds. Health checks watch it.
    pub fn failures(&self) -> watch::Receiver<Option<String>> {
        self.reports.failure.subscribe()
    }

    /// Has the writer thread tell `observe` how long every flush takes
    /// (for a latency histogram). Only the first observer set is kept;
    /// returns whether this one was.
    pub fn observe_flushes(&self, observe: FlushObserver) -> bool {
        self.reports.flushes.set(observe).is_ok()
    }

    /// Closes the store: waits for the writer to finish every queued write
    /// and its final flush, then releases the engine (and sled's file lock),
    /// so that the same directory can be opened again at once.
    ///
    /// Only the last handle can close; if other clones are alive this
    /// returns them back as `Err(self)` and nothing changes. Blocks: call it
    /// from a blocking context.
    pub fn close(self) -> Result<(), Self> {
        if Arc::strong_count(&self.writer) > 1 {
            return Err(self);
        }
        let Db {
            engine,
            jobs,
            writer,
            reports: _,
        } = self;
        drop(jobs);
        let handle = writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
        drop(engine);
        Ok(())
    }

    /// Runs `f` on the writer thread. If it returns `Ok`, its staged writes
    /// are applied atomically and are durable when this returns; if it
    /// returns `Err`, nothing it staged is written.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |engine: &dyn Engine| {
            let mut txn = Txn {
                engine,
                writes: BTreeMap::new(),
            };
            match f(&mut txn) {
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
                Ok(value) => {
                    let writes = std::mem::take(&mut txn.writes);
                    if let Err(e) = engine.apply(writes.into_iter().collect()) {
                        let _ = tx.send(Err(e.into()));
                        return None;
                    }
                    Some(Box::new(move |flushed: Result<(), Arc<StoreError>>| {
                        let _ = tx.send(match flushed {
                            Ok(()) => Ok(value),
                            Err(e) => Err(e.again().into()),
                        });
                    }) as Completion)
                }
            }
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| E::from(StoreError::Closed))?;
        rx.await.map_err(|_| E::from(StoreError::Closed))?
    }

    /// Waits until every write applied so far is durable: a write of
    /// nothing, queued behind them, completes only after the flush that
    /// covers them. Readers of committed data (which includes applied but
    /// unflushed writes) call it before they let what they read leave the
    /// process.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.write(|_| Ok::<(), StoreError>(())).await
    }

    /// Reads one key (committed data).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(key)
    }

    /// Whether a key is present (committed data), without reading its value
    /// where the engine can tell so.
    pub fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.engine.contains(key)
    }

    /// Committed entries with keys in `[start, end)`, ascending, at most `limit`.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.engine.scan(start, end, limit, false)
    }

    /// Committed entries with keys in `[start, end)`, descending, at most `limit`.
    pub fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.engine.scan(start, end, limit, true)
    }

    /// Committed entries whose key starts with `prefix`, ascending, at most `limit`.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.engine
            .scan(prefix, &keys::prefix_end(prefix), limit, false)
    }
}

/// Reads of committed data that [`Db`] and [`Txn`] share, so that a view
/// composed from several keys is built by one function inside a write or
/// outside it. A [`Txn`] reads its own staged writes, with `get` and with
/// `scan` alike.
pub trait Reader {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether a key is present, without reading its value where the engine
    /// can tell so.
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// Entries with keys in `[start, end)`, ascending, at most `limit`.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Entries with keys in `[start, end)`, descending, at most `limit`.
    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Entries whose key starts with `prefix`, ascending, at most `limit`.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.scan(prefix, &keys::prefix_end(prefix), limit)
    }
}

impl Reader for Db {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Db::get(self, key)
    }
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Db::contains(self, key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        Db::scan(self, start, end, limit)
    }
    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        Db::scan_rev(self, start, end, limit)
    }
}

impl Reader for Txn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Txn::get(self, key)
    }
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Txn::contains(self, key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        Txn::scan(self, start, end, limit)
    }
    fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        Txn::scan_rev(self, start, end, limit)
    }
}

/// The writer thread: drains a group of jobs, applies each, flushes once,
/// then completes the whole group.
fn writer(engine: Arc<dyn Engine>, mut rx: mpsc::Receiver<Job>, reports: Arc<Reports>) {
    let mut completions: Vec<Completion> = Vec::with_capacity(MAX_GROUP);
    // A job reports its own apply failure to its caller; the writer learns
    // of it through this engine wrapper, to report it to health checks.
    let watched = Watched {
        engine: Arc::clone(&engine),
        reports: Arc::clone(&reports),
        failed: AtomicBool::new(false),
    };
    // After a failed write or flush the engine is reopened from its
    // durable state (see `Engine::recover`), here only, between groups, so
    // that no transaction reads from one opening and writes to the next.
    // While that fails, the engine refuses everything, and the reopening
    // is tried again at each group and, with nothing to write, every
    // `RECOVER_EVERY`, so that reads resume too.
    let mut damaged = false;
    loop {
        let first = if damaged {
            match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(RECOVER_EVERY);
                    damaged = !recover(&*engine, &reports, false);
                    continue;
                }
            }
        } else {
            match rx.blocking_recv() {
                Some(job) => job,
                None => break,
            }
        };
        if damaged {
            damaged = !recover(&*engine, &reports, false);
        }
        completions.extend(first(&watched));
        while completions.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => completions.extend(job(&watched)),
                Err(_) => break,
            }
        }
        if completions.is_empty() {
            if watched.failed.swap(false, Ordering::SeqCst) {
                damaged = !recover(&*engine, &reports, true);
            }
            continue;
        }
        let started = Instant::now();
        let flushed = engine.flush().map_err(Arc::new);
        match &flushed {
            Ok(()) => reports.flushed(started.elapsed()),
            Err(e) => {
                tracing::error!(error = %e, "store flush failed");
                reports.failed(e);
            }
        }
        // Reopened before the group hears of a failed flush, so that what
        // its writers read next is what is durable.
        if flushed.is_err() || watched.failed.swap(false, Ordering::SeqCst) {
            damaged = !recover(&*engine, &reports, true);
        }
        for done in completions.drain(..) {
            done(flushed.clone());
        }
    }
    if let Err(e) = engine.flush() {
        tracing::error!(error = %e, "final store flush failed");
    }
}

/// A write in progress on the writer thread.
///
/// Reads and scans see this transaction's own staged writes over committed
/// data (which includes every earlier transaction, flushed or not).
pub struct Txn<'a> {
    engine: &'a dyn Engine,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("staged", &self.writes.len())
            .finish()
    }
}

impl Txn<'_> {
    /// Reads a key, seeing this transaction's staged writes first.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.engine.get(key),
        }
    }

    /// Whether a key is present, seeing this transaction's staged writes
    /// first.
    pub fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        match self.writes.get(key) {
            Some(staged) => Ok(staged.is_some()),
            None => self.engine.contains(key),
        }
    }

    /// Stages a write.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    /// The value this transaction has staged under `key`, to extend in
    /// place: `None` if it staged nothing there, or a delete. A value the
    /// engine already holds is never returned, so extending one is always
    /// part of this transaction's atomic batch.
    pub fn staged_mut(&mut self, key: &[u8]) -> Option<&mut Vec<u8>> {
        self.writes.get_mut(key).and_then(Option::as_mut)
    }

    /// The greatest key this transaction staged in `[start, end)`, with its
    /// value to extend in place: `None` if it staged nothing there, or if
    /// that key is staged as a delete. Like [`Txn::staged_mut`], it never
    /// returns a value the engine already holds.
    pub fn staged_last_mut(&mut self, start: &[u8], end: &[u8]) -> Option<(&[u8], &mut Vec<u8>)> {
        use std::ops::Bound;
        let (key, value) = self
            .writes
            .range_mut::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .next_back()?;
        value.as_mut().map(|v| (key.as_slice(), v))
    }

    /// Stages a deletion.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// Entries with keys in `[start, end)`, ascending, at most `limit`, as
    /// they will be once this transaction commits: its staged writes
    /// replace committed values and its staged deletes hide them.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.overlay_scan(start, end, limit, false)
    }

    /// Like [`Txn::scan`], descending.
    pub fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.overlay_scan(start, end, limit, true)
    }

    fn overlay_scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        use std::ops::Bound;
        if start >= end {
            return Ok(Vec::new());
        }
        let staged: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .collect();
        if staged.is_empty() {
            return self.engine.scan(start, end, limit, reverse);
        }
        // Every staged key may hide or replace one committed entry, so the
        // engine is asked for that many more to still fill `limit`.
        let requested = limit.saturating_add(staged.len());
        let committed = self.engine.scan(start, end, requested, reverse)?;
        // If the engine stopped at its limit, keys beyond its last one were
        // not read, and a staged key beyond it would jump the queue.
        let committed_edge = (committed.len() >= requested)
            .then(|| committed.last().map(|(k, _)| k.clone()))
            .flatten();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (key, value) in staged {
            let beyond =
                committed_edge.as_ref().is_some_and(
                    |edge| {
                        if reverse {
                            key < edge
                        } else {
                            key > edge
                        }
                    },
                );
            if beyond {
                continue;
            }
            match value {
                Some(v) => {
                    merged.insert(key.clone(), v.clone());
                }
                None => {
                    merged.remove(key);
                }
            }
        }
        let mut out: Vec<Entry> = merged.into_iter().collect();
        if reverse {
            out.reverse();
        }
        out.truncate(limit);
        Ok(out)
    }
}

/// The engine as the writer's jobs see it: an apply that fails is also
/// reported as the store's failure.
struct Watched {
    engine: Arc<dyn Engine>,
    reports: Arc<Reports>,
    /// Set when an apply failed.
    failed: AtomicBool,
}

/// Reopens `engine` from its durable state after a failure; whether it
/// worked. A failure is logged if `loud` (not on every quiet retry).
fn recover(engine: &dyn Engine, reports: &Reports, loud: bool) -> bool {
    match engine.recover() {
        Ok(()) => {
            tracing::warn!("reopened the store from disk after a failed write (the writes that failed may or may not have been kept; their writers were told they failed)");
            true
        }
        Err(e) => {
            if loud {
                tracing::error!(error = %e, "cannot reopen the store after a failed write; trying again until it can");
            }
            reports.failed(&e);
            false
        }
    }
}

impl Engine for Watched {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(key)
    }
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.engine.contains(key)
    }
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        self.engine.scan(start, end, limit, reverse)
    }
    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let applied = self.engine.apply(writes);
        if let Err(e) = &applied {
            self.reports.failed(e);
            self.failed.store(true, Ordering::SeqCst);
        }
        applied
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.engine.flush()
    }
    fn recover(&self) -> Result<(), StoreError> {
        self.engine.recover()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A power cut at any moment keeps every write that was answered:
    /// writers race through the one writer thread while the power is cut
    /// at seeded random moments; each answered write is in the image with
    /// all of its keys, and nothing is in the image that was not written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_power_cut_at_any_moment_keeps_every_answered_write_whole() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261202);
        for round in 0..20 {
            let engine = Arc::new(testing::PowerCut::default());
            let db = Db::with_engine(Arc::clone(&engine) as Arc<dyn Engine>);
            let answered = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
            let mut writers = Vec::new();
            for w in 0..4u32 {
                let db = db.clone();
                let answered = Arc::clone(&answered);
                writers.push(tokio::spawn(async move {
                    for i in 0..10_000u32 {
                        let n = w * 100_000 + i;
                        let done = db
                            .write(move |txn| {
                                for part in ["a", "b", "c"] {
                                    txn.put(format!("w/{n:08}/{part}"), n.to_be_bytes().to_vec());
                                }
                                Ok::<_, StoreError>(())
                            })
                            .await;
                        if done.is_err() {
                            return;
                        }
                        answered.lock().unwrap().push(n);
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_micros(
                rng.random_range(0..20_000),
            ))
            .await;
            // What was answered before the cut, then the cut.
            let before = answered.lock().unwrap().clone();
            let image = engine.image();
            for w in &writers {
                w.abort();
            }
            let mut whole = std::collections::BTreeMap::<u32, usize>::new();
            for (k, v) in &image {
                let n = u32::from_be_bytes(v[..].try_into().unwrap());
                assert!(
                    k.starts_with(format!("w/{n:08}/").as_bytes()),
                    "round {round}: {k:?} holds {n}"
                );
                *whole.entry(n).or_default() += 1;
            }
            assert!(
                whole.values().all(|&parts| parts == 3),
                "round {round}: a write was torn"
            );
            for n in &before {
                assert!(
                    whole.contains_key(n),
                    "round {round}: write {n} was answered but lost"
                );
            }
            // The restarted store holds the image and takes new writes.
            let after = Db::with_engine(Arc::new(testing::PowerCut::from_image(image.clone())));
            after
                .write(|txn| {
                    txn.put("after", b"1".to_vec());
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
            assert_eq!(
                after.scan_prefix(b"w/", usize::MAX).unwrap().len(),
                image.len()
            );
        }
    }

    #[test]
    fn memory_engine_conforms() {
        conformance::engine_suite(Arc::new(MemoryEngine::default()));
    }

    proptest::proptest! {
        /// A scan inside a transaction equals a scan of what the store
        /// holds once the transaction commits, for any range, limit and
        /// direction.
        #[test]
        fn a_transaction_scans_its_own_writes(
            committed in proptest::collection::btree_map(0u8..24, 0u8..4, 0..16),
            staged in proptest::collection::btree_map(0u8..24, proptest::option::of(4u8..8), 0..12),
            (lo, hi) in (0u8..26, 0u8..26),
            limit in 0usize..12,
            reverse in proptest::bool::ANY,
        ) {
            let engine = MemoryEngine::default();
            engine
                .apply(committed.iter().map(|(k, v)| (vec![*k], Some(vec![*v]))).collect())
                .unwrap();
            let mut txn = Txn { engine: &engine, writes: BTreeMap::new() };
            for (k, v) in &staged {
                match v {
                    Some(v) => txn.put(vec![*k], vec![*v]),
                    None => txn.delete(vec![*k]),
                }
            }
            let got = if reverse {
                txn.scan_rev(&[lo], &[hi], limit).unwrap()
            } else {
                txn.scan(&[lo], &[hi], limit).unwrap()
            };
            let mut model = committed.clone();
            for (k, v) in &staged {
                match v {
                    Some(v) => { model.insert(*k, *v); }
                    None => { model.remove(k); }
                }
            }
            let mut want: Vec<Entry> = model
                .into_iter()
                .filter(|(k, _)| *k >= lo && *k < hi)
                .map(|(k, v)| (vec![k], vec![v]))
                .collect();
            if reverse {
                want.reverse();
            }
            want.truncate(limit);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn sled_engine_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance::engine_suite(Arc::new(SledEngine::open(dir.path()).unwrap()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_or_flush_is_reported_until_a_flush_succeeds() {
        let engine = Arc::new(testing::Broken::default());
        let db = Db::with_engine(engine.clone());
        let flushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&flushes);
        assert!(db.observe_flushes(Box::new(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })));
        assert!(
            !db.observe_flushes(Box::new(|_| {})),
            "only the first observer is kept"
        );
        let mut failures = db.failures();
        let put = |db: &Db| {
            let db = db.clone();
            async move {
                db.write(|txn| {
                    txn.put(b"k".to_vec(), b"v".to_vec());
                    Ok::<(), StoreError>(())
                })
                .await
            }
        };
        put(&db).await.unwrap();
        assert_eq!(flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(failures.borrow_and_update().is_none());

        engine.set_broken(true);
        assert!(put(&db).await.is_err());
        failures.changed().await.unwrap();
        let why = failures.borrow_and_update().clone().unwrap();
        assert!(why.contains("simulated device failure"), "{why}");

        engine.set_broken(false);
        put(&db).await.unwrap();
        assert!(failures.borrow_and_update().is_none());
        assert_eq!(flushes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_db_conforms() {
        conformance::db_suite(Db::in_memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_db_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance::db_suite(Db::open(dir.path()).unwrap()).await;
    }

    /// An in-memory engine that records the order of applies and flushes.
    #[derive(Debug, Default)]
    struct Recording {
        inner: MemoryEngine,
        events: std::sync::Mutex<Vec<&'static str>>,
    }

    impl Recording {
        fn events(&self) -> Vec<&'static str> {
            self.events.lock().unwrap().clone()
        }
    }

    impl Engine for Recording {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(
            &self,
            start: &[u8],
            end: &[u8],
            limit: usize,
            reverse: bool,
        ) -> Result<Vec<Entry>, StoreError> {
            self.inner.scan(start, end, limit, reverse)
        }
        fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
            if !writes.is_empty() {
                self.events.lock().unwrap().push("apply");
            }
            self.inner.apply(writes)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.events.lock().unwrap().push("flush");
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_barrier_returns_only_after_a_flush_that_covers_every_earlier_write() {
        let engine = Arc::new(Recording::default());
        let db = Db::with_engine(Arc::clone(&engine) as Arc<dyn Engine>);
        for i in 0..20u8 {
            let writer = db.clone();
            let write = tokio::spawn(async move {
                writer
                    .write(move |t| {
                        t.put(vec![i], vec![i]);
                        Ok::<_, StoreError>(())
                    })
                    .await
            });
            // Wait until the write is applied (visible), then the barrier.
            while db.get(&[i]).unwrap().is_none() {
                tokio::task::yield_now().await;
            }
            db.barrier().await.unwrap();
            let events = engine.events();
            let last_apply = events.iter().rposition(|e| *e == "apply").unwrap();
            assert!(
                events[last_apply..].contains(&"flush"),
                "the barrier returned before the write was flushed: {events:?}"
            );
            write.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_releases_the_directory_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let other = db.clone();
        let db = db
            .close()
            .expect_err("a second handle keeps the store open");
        drop(other);
        db.write(|t| {
            t.put(b"k".to_vec(), b"v".to_vec());
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        tokio::task::spawn_blocking(move || db.close().expect("last handle closes"))
            .await
            .unwrap();
        let db = Db::open(dir.path()).expect("reopens at once");
        assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            db.write(|t| {
                t.put(b"k".to_vec(), b"v".to_vec());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        }
        // The writer thread holds the engine until its channel closes; wait for
        // sled's lock to be released by retrying the open.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match Db::open(dir.path()) {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        };
        assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
