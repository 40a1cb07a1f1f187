//! The engine trait and its two implementations.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use serde::Deserialize;

use crate::values::{self, Change, Ref, ValueLog, INLINE, REFERENCE, RESERVED, VALUE_LOG_MIN};
use crate::StoreError;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An ordered key-value store with atomic batches.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether a key is present, without reading its value where the engine
    /// can tell so.
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }
    /// Entries with keys in `[start, end)`, ascending (or descending if
    /// `reverse`), at most `limit`.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Applies every write (`None` deletes) atomically: after a crash, all or
    /// none of them are present.
    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError>;
    /// Makes every applied write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// After a write or a flush failed: forgets whatever was applied but
    /// is not durable and reads the durable state again, as a restart
    /// would, so that nothing built on a lost write is ever made durable.
    /// Engines that lose nothing on failure do nothing.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How the durable engine is set up: the `[store]` table of the hub and
/// node configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOptions {
    /// Bytes of sled's page cache. sled's own default is 1 GiB, which a
    /// backlog for a stopped peer fills; the hub and nodes set this
    /// explicitly (64 MiB unless configured).
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The durable engine: one sled tree, made durable by a real `fdatasync`.
///
/// sled 0.34.7's `flush` writes its log with `pwrite` and then calls
/// `sync_file_range`, which neither writes the file's metadata nor flushes
/// the device's write cache, and it writes large values ("blobs", over a
/// quarter of a segment) to files of their own without syncing them at all:
/// a process crash loses nothing, a power cut can. So [`Engine::flush`]
/// here calls sled's flush and then `fdatasync` on the log file, and
/// `fsync` on each blob file it has not synced yet and on the blob
/// directory when it gained one; only then is a write durable.
///
/// Values of [`VALUE_LOG_MIN`] bytes or more live in the value log (see
/// [`crate::values`]), synced before the tree is; every value in the tree
/// starts with a tag byte saying whether it is the value or a reference.
#[derive(Debug)]
pub struct SledEngine {
    path: PathBuf,
    options: StoreOptions,
    segment_bytes: u64,
    /// The open database; `None` if a reopening failed.
    parts: RwLock<Option<SledParts>>,
    /// Set after a failed write until the writer has reopened the
    /// database: meanwhile every read and write is refused.
    damaged: AtomicBool,
}

/// An open sled database and its value log.
#[derive(Debug)]
struct SledParts {
    db: sled::Db,
    values: ValueLog,
    /// sled's log file (`<dir>/db`), kept open to sync it.
    log: File,
    blobs: PathBuf,
    /// Blob files already synced.
    synced_blobs: Mutex<BTreeSet<OsString>>,
    /// The seal: see [`Seal`].
    seal: Seal,
}

/// Detects writes that sled made durable and then lost. sled 0.34 opens a
/// store whose log has a flipped byte or was cut short without an error,
/// holding only what came before the damage. So every flush also writes
/// its number (`GENERATION_KEY`) into sled, and the number of a durable
/// flush is kept in a file beside it (`sealed`, written at most once a
/// second and when the store closes). A store whose sled holds an older
/// number than its seal has lost durable writes and is refused at open.
#[derive(Debug)]
struct Seal {
    path: PathBuf,
    /// The number of the last flush begun.
    generation: std::sync::atomic::AtomicU64,
    /// The number of the last flush that succeeded.
    durable: std::sync::atomic::AtomicU64,
    /// When the seal file was last written.
    written: Mutex<std::time::Instant>,
}

/// Where each flush writes its number.
const GENERATION_KEY: &[u8] = b"\xff\xfegeneration";
/// The seal file, beside sled's.
const SEAL_FILE: &str = "sealed";
/// The seal file is written at most this often while the store runs.
const SEAL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Seal {
    /// Checks sled's number against the seal file's and writes the seal if
    /// there is none yet.
    fn open(dir: &Path, db: &sled::Db) -> Result<Self, StoreError> {
        let in_sled = match db.get(GENERATION_KEY)? {
            Some(v) => u64::from_be_bytes(<[u8; 8]>::try_from(&v[..]).map_err(|_| {
                StoreError::corrupt(GENERATION_KEY, "the flush number is not 8 bytes")
            })?),
            None => 0,
        };
        let path = dir.join(SEAL_FILE);
        let seal = Self {
            path,
            generation: std::sync::atomic::AtomicU64::new(in_sled),
            durable: std::sync::atomic::AtomicU64::new(in_sled),
            written: Mutex::new(std::time::Instant::now()),
        };
        match std::fs::read_to_string(&seal.path) {
            Ok(text) => {
                let sealed = parse_seal(&text).ok_or_else(|| StoreError::Corrupt {
                    key: seal.path.display().to_string(),
                    problem: "the seal file is damaged; restore the data directory from a backup"
                        .into(),
                })?;
                if sealed > in_sled {
                    return Err(StoreError::Corrupt {
                        key: dir.display().to_string(),
                        problem: format!(
                            "sled's files hold the writes up to flush {in_sled}, but flush {sealed} was durable before: sled lost writes it had made durable (a damaged or truncated file); restore the data directory from a backup"
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => seal.write(in_sled)?,
            Err(e) => {
                return Err(StoreError::io(
                    format_args!("reading {}", seal.path.display()),
                    &e,
                ))
            }
        }
        Ok(seal)
    }

    /// Writes `generation` to the seal file atomically and durably.
    fn write(&self, generation: u64) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("tmp");
        let io = |doing: &str, e: std::io::Error| {
            StoreError::io(format_args!("{doing} {}", self.path.display()), &e)
        };
        {
            use std::io::Write;
            let mut f = File::create(&tmp).map_err(|e| io("writing", e))?;
            f.write_all(format!("liaison store seal 1\ngeneration {generation}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io("writing", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| io("renaming", e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing the directory of", e))?;
        }
        *self.written.lock().map_err(poisoned)? = std::time::Instant::now();
        Ok(())
    }
}

fn parse_seal(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("liaison store seal 1\ngeneration ")?;
    rest.strip_suffix('\n')?.parse().ok()
}

impl Drop for SledParts {
    fn drop(&mut self) {
        // A clean close seals the last durable flush.
        let durable = self.seal.durable.load(Ordering::SeqCst);
        if let Err(e) = self.seal.write(durable) {
            tracing::warn!(error = %e, "cannot write the store's seal at close");
        }
    }
}

impl SledEngine {
    /// Opens or creates the database in `path` with the default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens or creates the database in `path`.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_segments(path, options, values::SEGMENT_BYTES)
    }

    /// Opens or creates the database in `path`, closing value log segments
    /// at `segment_bytes`.
    fn open_segments(
        path: &Path,
        options: StoreOptions,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        let parts = SledParts::open(path, options, segment_bytes)?;
        Ok(Self {
            path: path.to_path_buf(),
            options,
            segment_bytes,
            parts: RwLock::new(Some(parts)),
            damaged: AtomicBool::new(false),
        })
    }

    /// Runs `f` on the open database. After a failed write, until the
    /// writer has reopened it ([`Engine::recover`]), every read and write
    /// is refused: the old handle may still hold writes that were never
    /// durable, and nothing may act on them.
    fn with<T>(
        &self,
        f: impl FnOnce(&SledParts) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let parts = self.parts.read().map_err(poisoned)?;
        match parts.as_ref() {
            Some(p) if !self.damaged.load(Ordering::SeqCst) => f(p),
            _ => Err(self.closed()),
        }
    }

    /// Why the store refuses while it waits to be reopened.
    fn closed(&self) -> StoreError {
        let why = format!(
            "the store at {} is closed after a failed write and reopens by itself once the cause is gone",
            self.path.display()
        );
        match free_room(&self.path) {
            Ok(()) => StoreError::Engine(why),
            Err(full) => StoreError::NoSpace(format!("{why}: {full}")),
        }
    }

    /// Closes and opens the database again from disk, once the disk has
    /// room: sled, closed or opened on a full disk, can leave a torn
    /// segment that it then refuses to open.
    fn reopen(&self) -> Result<(), StoreError> {
        free_room(&self.path).map_err(StoreError::NoSpace)?;
        let mut parts = self.parts.write().map_err(poisoned)?;
        // sled holds a lock on its directory: the old handle goes first.
        drop(parts.take());
        *parts = Some(SledParts::open(
            &self.path,
            self.options,
            self.segment_bytes,
        )?);
        self.damaged.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// How long an open waits for a directory lock that sled has not yet
/// released (another process holding it is refused after this).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The store is reopened after a failed write only with this much room on
/// its disk (sled's segments are 512 KiB; its cache is written back on
/// close).
const REOPEN_FREE_BYTES: u64 = 8 << 20;

/// Whether [`REOPEN_FREE_BYTES`] can be written under `dir`, tried for
/// real (a file allocated and removed), so that a quota or the blocks
/// reserved for root count as they will for sled; `Err` says why not.
fn free_room(dir: &Path) -> Result<(), String> {
    let probe = dir.join("reopen.probe");
    let tried = File::create(&probe).and_then(|f| {
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::empty(),
            0,
            REOPEN_FREE_BYTES,
        )
        .map_err(std::io::Error::from)
    });
    let _ = std::fs::remove_file(&probe);
    tried.map_err(|e| {
        format!(
            "{REOPEN_FREE_BYTES} bytes cannot be written under {}: {e}",
            dir.display()
        )
    })
}

impl SledParts {
    fn open(path: &Path, options: StoreOptions, segment_bytes: u64) -> Result<Self, StoreError> {
        // sled releases its directory lock from its own threads some time
        // after the last handle goes (seen in CI under load: a reopen
        // straight after a close found it held for over 2 s), so a held
        // lock is waited for, up to `LOCK_WAIT`.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(options.cache_bytes)
                .open();
            match opened {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => {
                    break other.map_err(|e| {
                        StoreError::Engine(format!("opening {}: {e}", path.display()))
                    })?
                }
            }
        };
        // Before anything is written or removed: a store that lost
        // durable writes is refused as it is.
        let seal = Seal::open(path, &db)?;
        let log_path = path.join("db");
        let log = File::open(&log_path)
            .map_err(|e| StoreError::io(format_args!("opening {}", log_path.display()), &e))?;
        let blobs = path.join("blobs");
        tag_values(&db, path)?;
        let mut live = BTreeMap::new();
        for r in db.scan_prefix(values::LIVE_PREFIX) {
            let (k, v) = r?;
            if let (Some(segment), Ok(bytes)) =
                (values::segment_of_live_key(&k), <[u8; 8]>::try_from(&v[..]))
            {
                live.insert(segment, u64::from_be_bytes(bytes));
            }
        }
        let values = ValueLog::open(path.join("values"), live, segment_bytes)?;
        // Blobs present at start-up were written before a restart; sync
        // them once so that the set below can assume they are durable.
        let engine = Self {
            db,
            values,
            log,
            blobs,
            synced_blobs: Mutex::new(BTreeSet::new()),
            seal,
        };
        engine.sync_blobs()?;
        Ok(engine)
    }

    /// `fsync`s every blob file not synced yet, then the blob directory if
    /// it gained any; forgets blobs that sled has removed.
    fn sync_blobs(&self) -> Result<(), StoreError> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&self.blobs, &e)),
        };
        let mut synced = self.synced_blobs.lock().map_err(poisoned)?;
        let mut present = BTreeSet::new();
        let mut gained = false;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.blobs, &e))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                match File::open(&path).and_then(|f| f.sync_all()) {
                    Ok(()) => {}
                    // sled removed it (its page was rewritten) between the
                    // listing and the sync: nothing refers to it any more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&path, &e)),
                }
                gained = true;
            }
            present.insert(name);
        }
        if gained {
            File::open(&self.blobs)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(&self.blobs, &e))?;
        }
        *synced = present;
        Ok(())
    }
}

/// The format marker: every value in the tree starts with a tag byte.
const FORMAT_KEY: &[u8] = b"\xff\xfeformat";
const FORMAT: &[u8] = b"tagged values, value log 1";
/// While a store from before the value log is being tagged: the last key
/// tagged, written in the same batch as its chunk.
const TAGGED_UPTO_KEY: &[u8] = b"\xff\xfetagged_upto";

/// A value as the tree holds it inline: the tag, then the bytes.
fn inline(value: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(value.len() + 1);
    tagged.push(INLINE);
    tagged.extend_from_slice(value);
    tagged
}

/// Makes sure every value in the tree is tagged: a new store is marked so,
/// and a store written before the value log has each value tagged inline,
/// in chunks that each record how far they got, so that a crash in the
/// middle resumes where it stopped instead of tagging a value twice.
fn tag_values(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY)? {
        Some(f) if f == FORMAT => return Ok(()),
        Some(f) => {
            return Err(StoreError::Corrupt {
                key: path.display().to_string(),
                problem: format!(
                    "the store's format is {:?}, which this version does not read; use the version that wrote it",
                    String::from_utf8_lossy(&f)
                ),
            })
        }
        None => {}
    }
    let start = match db.get(TAGGED_UPTO_KEY)? {
        Some(last) => std::ops::Bound::Excluded(last.to_vec()),
        None => std::ops::Bound::Unbounded,
    };
    let mut batch = sled::Batch::default();
    let mut n = 0usize;
    for r in db.range::<Vec<u8>, _>((start, std::ops::Bound::Excluded(RESERVED.to_vec()))) {
        let (k, v) = r?;
        batch.insert(k.clone(), inline(&v));
        n += 1;
        if n.is_multiple_of(10_000) {
            batch.insert(TAGGED_UPTO_KEY, k);
            db.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    batch.remove(TAGGED_UPTO_KEY);
    batch.insert(FORMAT_KEY, FORMAT);
    db.apply_batch(batch)?;
    db.flush()?;
    if n > 0 {
        tracing::info!(store = %path.display(), values = n, "tagged the values of a store written before the value log");
    }
    Ok(())
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::io(format_args!("syncing {}", path.display()), e)
}

impl SledParts {
    /// The value a stored entry holds: its inline bytes, or what its
    /// reference points at. A reference whose bytes are gone or do not
    /// match is read again from the tree: if the key was rewritten
    /// meanwhile (its old value destroyed), the new value is the answer;
    /// if not, the value is damaged.
    fn resolve(&self, key: &[u8], mut stored: sled::IVec) -> Result<Option<Vec<u8>>, StoreError> {
        loop {
            match stored.first() {
                Some(&INLINE) => return Ok(Some(stored[1..].to_vec())),
                Some(&REFERENCE) => {}
                _ => return Err(untagged(key)),
            }
            let r = Ref::decode(&stored).ok_or_else(|| untagged(key))?;
            if let Some(v) = self.values.read(r)? {
                return Ok(Some(v));
            }
            match self.db.get(key)? {
                None => return Ok(None),
                Some(now) if now == stored => {
                    return Err(StoreError::Corrupt {
                        key: String::from_utf8_lossy(key).into_owned(),
                        problem: format!(
                            "its value ({} bytes at offset {} of {}) is missing or does not match its checksum",
                            r.len,
                            r.offset,
                            self.values.path_of(r.segment).display()
                        ),
                    })
                }
                Some(now) => stored = now,
            }
        }
    }
}

fn untagged(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: "its stored value has no valid tag".into(),
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|p| p.get(key))
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.with(|p| p.contains(key))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        self.with(|p| p.scan(start, end, limit, reverse))
    }

    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        self.with(|p| p.apply(writes))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.with(SledParts::flush)
    }

    /// Marks the database damaged (everything is refused from now on) and
    /// reopens it from disk if the disk has room: sled, which refuses every
    /// write after one I/O error, works again once the cause (a full disk)
    /// is gone. Called by the store's writer thread only, between groups of
    /// writes, so that no transaction straddles a reopen. What was applied
    /// but not flushed may or may not survive: sled writes its cache back
    /// when it closes unless it had failed itself.
    fn recover(&self) -> Result<(), StoreError> {
        self.damaged.store(true, Ordering::SeqCst);
        self.reopen()
    }
}

impl SledParts {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.db.get(key)? {
            Some(stored) => self.resolve(key, stored),
            None => Ok(None),
        }
    }

    /// A value in the value log is not read: the reference says it is there.
    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(key)?)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        // The engine's own keys are never listed.
        let end = end.min(RESERVED);
        if start >= end {
            return Ok(Vec::new());
        }
        let range = self.db.range(start..end);
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for r in iter {
            if out.len() >= limit {
                break;
            }
            let (k, stored) = r?;
            // A value deleted between the listing and its read is skipped,
            // as if the scan had come a moment later.
            if let Some(v) = self.resolve(&k, stored)? {
                out.push((k.to_vec(), v));
            }
        }
        Ok(out)
    }

    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        // Refused before anything is appended to the value log.
        if let Some((k, _)) = writes.iter().find(|(k, _)| k.starts_with(RESERVED)) {
            return Err(StoreError::Engine(format!(
                "key {} is reserved for the store itself",
                String::from_utf8_lossy(k)
            )));
        }
        let mut batch = sled::Batch::default();
        let mut change = Change::default();
        for (k, v) in writes {
            // The value this write replaces or deletes, if it is in the
            // value log, is destroyed once this write is durable.
            if let Some(old) = self.db.get(&k)?.as_deref().and_then(Ref::decode) {
                change.releases(old);
            }
            match v {
                Some(v) if v.len() >= VALUE_LOG_MIN => {
                    let r = self.values.append(&v)?;
                    change.stores(r);
                    batch.insert(k, r.encode());
                }
                Some(v) => batch.insert(k, inline(&v)),
                None => batch.remove(k),
            }
        }
        let counts = self.values.counts_after(&change)?;
        for &(segment, bytes) in &counts {
            let key = values::live_key(segment);
            if bytes == 0 {
                batch.remove(key);
            } else {
                batch.insert(key, bytes.to_be_bytes().to_vec());
            }
        }
        self.db.apply_batch(batch)?;
        self.values.applied(change, counts)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Values first: a reference made durable below must point at
        // durable bytes.
        self.values.sync()?;
        let generation = self.seal.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.db.insert(GENERATION_KEY, &generation.to_be_bytes())?;
        self.db.flush()?;
        // sled's flush ends with sync_file_range: make it a real sync.
        self.log
            .sync_data()
            .map_err(|e| StoreError::io("syncing the store log", &e))?;
        self.sync_blobs()?;
        self.seal.durable.fetch_max(generation, Ordering::SeqCst);
        // Now that the releases are durable, their values can go.
        self.values.reclaim()?;
        // The flush is durable whatever becomes of the seal: a seal that
        // cannot be written is warned about, and tried again a second
        // later.
        let due = self.seal.written.lock().map_err(poisoned)?.elapsed() >= SEAL_EVERY;
        if due {
            if let Err(e) = self.seal.write(generation) {
                tracing::warn!(error = %e, "cannot write the store's seal; a store damaged meanwhile would not be detected at open");
                *self.seal.written.lock().map_err(poisoned)? = std::time::Instant::now();
            }
        }
        Ok(())
    }
}

/// An in-memory engine for unit tests; `flush` does nothing.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.read().map_err(poisoned)?.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.map.read().map_err(poisoned)?;
        let range = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(clone).collect()
        } else {
            range.take(limit).map(clone).collect()
        })
    }

    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut map = self.map.write().map_err(poisoned)?;
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Engine("memory engine lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir.join("values"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn put(engine: &SledEngine, key: &str, value: Option<Vec<u8>>) {
        engine
            .apply(vec![(key.as_bytes().to_vec(), value)])
            .unwrap();
        engine.flush().unwrap();
    }

    fn marked(mark: &str, len: usize) -> Vec<u8> {
        let mut v = mark.as_bytes().to_vec();
        v.resize(len, b'.');
        v
    }

    /// A large value is written once to the value log, not into the tree;
    /// once the write that replaced or deleted it is durable its bytes are
    /// gone from the disk; it survives a reopen while it is live.
    #[test]
    fn a_replaced_or_deleted_value_is_destroyed_and_a_live_one_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            put(&engine, "m/1", Some(marked("SECRET-ONE", 4096)));
            put(&engine, "m/2", Some(marked("SECRET-TWO", 4096)));
            put(&engine, "m/3", Some(marked("SECRET-THREE", 4096)));
            let all: Vec<u8> = segments(dir.path())
                .into_iter()
                .flat_map(|(_, b)| b)
                .collect();
            assert!(contains(&all, b"SECRET-ONE") && contains(&all, b"SECRET-TWO"));
            put(&engine, "m/1", Some(b"labels only".to_vec()));
            put(&engine, "m/2", None);
            let all: Vec<u8> = segments(dir.path())
                .into_iter()
                .flat_map(|(_, b)| b)
                .collect();
            assert!(
                !contains(&all, b"SECRET-ONE"),
                "a replaced value's bytes remain"
            );
            assert!(
                !contains(&all, b"SECRET-TWO"),
                "a deleted value's bytes remain"
            );
            assert!(contains(&all, b"SECRET-THREE"));
            // sled's own files never held the values.
            let log = std::fs::read(dir.path().join("db")).unwrap();
            assert!(
                !contains(&log, b"SECRET-THREE"),
                "the value went into the tree"
            );
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(b"m/1").unwrap(), Some(b"labels only".to_vec()));
        assert_eq!(engine.get(b"m/2").unwrap(), None);
        assert_eq!(
            engine.get(b"m/3").unwrap(),
            Some(marked("SECRET-THREE", 4096))
        );
    }

    /// A segment nothing refers to is removed, at once or at the next
    /// open; the one being appended to stays.
    #[test]
    fn a_segment_nothing_refers_to_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open_segments(dir.path(), StoreOptions::default(), 8192).unwrap();
        for i in 0..6 {
            put(
                &engine,
                &format!("k/{i}"),
                Some(marked(&format!("v{i}"), 3000)),
            );
        }
        let names: Vec<String> = segments(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 3, "two values per 8 KiB segment: {names:?}");
        put(&engine, "k/0", None);
        assert_eq!(
            segments(dir.path()).len(),
            3,
            "one value of the first is live"
        );
        put(&engine, "k/1", None);
        let names: Vec<String> = segments(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!names.contains(&format!("{:020}.vlog", 1)), "{names:?}");
        for i in 2..6 {
            assert_eq!(
                engine.get(format!("k/{i}").as_bytes()).unwrap(),
                Some(marked(&format!("v{i}"), 3000))
            );
        }
        drop(engine);
        let engine = SledEngine::open_segments(dir.path(), StoreOptions::default(), 8192).unwrap();
        assert_eq!(engine.get(b"k/5").unwrap(), Some(marked("v5", 3000)));
    }

    /// A damaged value is an error naming the key and the segment, never
    /// wrong bytes; a missing segment that holds live values stops the
    /// store from opening.
    #[test]
    fn a_damaged_value_or_a_missing_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            put(&engine, "m/1", Some(marked("VALUE", 2048)));
        }
        let (name, mut bytes) = segments(dir.path()).remove(0);
        bytes[100] ^= 0x01;
        let path = dir.path().join("values").join(&name);
        std::fs::write(&path, &bytes).unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            match engine.get(b"m/1") {
                Err(StoreError::Corrupt { key, problem }) => {
                    assert_eq!(key, "m/1");
                    assert!(
                        problem.contains(&name) && problem.contains("checksum"),
                        "{problem}"
                    );
                }
                other => panic!("expected a corrupt value, got {other:?}"),
            }
        }
        std::fs::remove_file(&path).unwrap();
        match SledEngine::open(dir.path()) {
            Err(StoreError::Corrupt { key, problem }) => {
                assert!(key.ends_with(&name), "{key}");
                assert!(
                    problem.contains("missing") && problem.contains("backup"),
                    "{problem}"
                );
            }
            other => panic!("expected the open to be refused, got {other:?}"),
        }
    }

    /// A tmpfs of `bytes` mounted on a new directory for one test, or
    /// `None` (said once) where this process may not mount.
    struct SmallDisk {
        dir: tempfile::TempDir,
    }

    impl SmallDisk {
        fn mount(bytes: u64) -> Option<Self> {
            let dir = tempfile::tempdir().ok()?;
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let why = "full disk (store): this process may not mount a small tmpfs to fill (needs CAP_SYS_ADMIN)";
                eprintln!("skipped: {why}");
                if let Some(path) = std::env::var_os("LIAISON_SKIP_LOG") {
                    use std::io::Write;
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        let _ = writeln!(f, "{why}");
                    }
                }
                return None;
            }
            Some(Self { dir })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Writes a file until the disk is full; returns its path.
        fn fill(&self) -> PathBuf {
            use std::io::Write;
            let path = self.path().join("filler");
            let mut f = File::create(&path).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
            path
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }

    /// Writes `n` values of `len` bytes under `prefix` in one transaction.
    async fn write_many(
        db: &crate::Db,
        prefix: &str,
        n: usize,
        len: usize,
    ) -> Result<(), StoreError> {
        let prefix = prefix.to_owned();
        db.write(move |txn| {
            for i in 0..n {
                txn.put(format!("{prefix}/{i:05}"), marked(&prefix, len));
            }
            Ok::<_, StoreError>(())
        })
        .await
    }

    /// Marked damaged while its disk has no room to reopen, the engine
    /// refuses reads and writes (as `NoSpace`) rather than serve the old
    /// handle, and once there is room it reopens with what was durable.
    #[test]
    fn a_damaged_engine_refuses_everything_until_it_can_reopen() {
        let Some(disk) = SmallDisk::mount(64 << 20) else {
            return;
        };
        let engine = SledEngine::open(&disk.path().join("store")).unwrap();
        put(&engine, "k", Some(marked("durable", 3000)));
        let filler = disk.fill();
        assert!(matches!(engine.recover(), Err(StoreError::NoSpace(_))));
        assert!(matches!(engine.get(b"k"), Err(StoreError::NoSpace(_))));
        assert!(engine
            .apply(vec![(b"j".to_vec(), Some(b"1".to_vec()))])
            .is_err());
        std::fs::remove_file(&filler).unwrap();
        engine.recover().unwrap();
        assert_eq!(engine.get(b"k").unwrap(), Some(marked("durable", 3000)));
        assert_eq!(engine.get(b"j").unwrap(), None);
    }

    /// On a real full disk (a small tmpfs), both in sled's log (many small
    /// values) and in the value log (large ones): the write fails as
    /// `NoSpace`, nothing of it is stored, what was durable stays, and once
    /// space returns the store works again by itself (sled refuses every
    /// write after one I/O error until it is reopened, which the writer
    /// does); after a reopen everything acknowledged is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_writes_whole_and_they_work_again_once_space_returns() {
        let Some(disk) = SmallDisk::mount(64 << 20) else {
            return;
        };
        let store = disk.path().join("store");
        let db = crate::Db::open(&store).unwrap();
        write_many(&db, "before", 50, 3000).await.unwrap();
        for (what, n, len) in [("small", 20_000, 100), ("large", 64, 100_000)] {
            let filler = disk.fill();
            match write_many(&db, what, n, len).await {
                Err(StoreError::NoSpace(why)) => {
                    assert!(why.contains("No space left"), "{what}: {why}");
                }
                other => panic!("{what}: expected a full disk, got {other:?}"),
            }
            // Meanwhile a read is refused (the old handle may still hold
            // what failed) or, once the writer has reopened the store,
            // answered from what is durable: the failed write whole or
            // not at all (sled may have written it back as it closed).
            if let Ok(seen) = db.scan_prefix(format!("{what}/").as_bytes(), usize::MAX) {
                assert!(
                    seen.is_empty() || seen.len() == n,
                    "{what}: {} of {n} of the failed write read back",
                    seen.len()
                );
            }
            std::fs::remove_file(&filler).unwrap();
            // The writer reopens it by itself, with nothing to write.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let stored = loop {
                match db.scan_prefix(format!("{what}/").as_bytes(), usize::MAX) {
                    Ok(v) => break v,
                    Err(e) => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "{what}: still closed: {e}"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
            };
            assert!(
                stored.is_empty() || stored.len() == n,
                "{what}: {} of {n} of the refused write stored",
                stored.len()
            );
            write_many(&db, &format!("{what}-after"), 10, len)
                .await
                .unwrap();
        }
        let before = db.scan_prefix(b"before/", usize::MAX).unwrap();
        assert_eq!(before.len(), 50);
        tokio::task::spawn_blocking(move || db.close().unwrap())
            .await
            .unwrap();
        let db = crate::Db::open(&store).unwrap();
        for (prefix, n) in [("before/", 50), ("small-after/", 10), ("large-after/", 10)] {
            assert_eq!(
                db.scan_prefix(prefix.as_bytes(), usize::MAX).unwrap().len(),
                n,
                "{prefix}"
            );
        }
        // A refused write is there whole or not at all.
        for (prefix, n) in [("small/", 20_000), ("large/", 64)] {
            let kept = db.scan_prefix(prefix.as_bytes(), usize::MAX).unwrap().len();
            assert!(kept == 0 || kept == n, "{prefix}: {kept} of {n} kept");
        }
        tokio::task::spawn_blocking(move || db.close().unwrap())
            .await
            .unwrap();
    }

    /// A value-log append that a crash tore (bytes past the last durable
    /// reference, here garbage) is ignored: every durable value reads back,
    /// and values written after the restart read back after another.
    #[test]
    fn a_torn_append_at_the_end_of_the_value_log_loses_nothing_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            put(&engine, "m/1", Some(marked("ONE", 2048)));
        }
        let (name, bytes) = segments(dir.path()).remove(0);
        let path = dir.path().join("values").join(&name);
        let mut torn = bytes.clone();
        torn.extend_from_slice(&marked("TORN", 777)[..500]);
        std::fs::write(&path, &torn).unwrap();
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            assert_eq!(engine.get(b"m/1").unwrap(), Some(marked("ONE", 2048)));
            put(&engine, "m/2", Some(marked("TWO", 3000)));
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(b"m/1").unwrap(), Some(marked("ONE", 2048)));
        assert_eq!(engine.get(b"m/2").unwrap(), Some(marked("TWO", 3000)));
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }

    /// sled's own file damaged (a flipped byte anywhere, or cut short):
    /// the store either refuses to open, naming what is wrong, or opens
    /// with every durable key. sled alone opens a cut-short log holding
    /// only what came before the cut; the seal turns that into a refusal.
    #[test]
    fn a_damaged_or_truncated_sled_file_is_refused_never_a_silent_loss() {
        let clean = tempfile::tempdir().unwrap();
        let keys = 2000;
        {
            let engine = SledEngine::open(clean.path()).unwrap();
            for batch in 0..20 {
                let writes = (0..keys / 20)
                    .map(|i| {
                        let k = format!("k/{:05}", batch * (keys / 20) + i).into_bytes();
                        (k, Some(marked("small", 100)))
                    })
                    .collect();
                engine.apply(writes).unwrap();
                engine.flush().unwrap();
            }
        }
        let len = std::fs::metadata(clean.path().join("db")).unwrap().len() as usize;
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let mut damages: Vec<(String, Damage)> = Vec::new();
        for tenth in [1, 3, 5, 7, 9] {
            let at = len * tenth / 10;
            damages.push((
                format!("a byte flipped at {at}"),
                Box::new(move |b: &mut Vec<u8>| b[at] ^= 0x40),
            ));
        }
        for quarter in [1, 2, 3] {
            let at = len * quarter / 4;
            damages.push((
                format!("cut at {at}"),
                Box::new(move |b: &mut Vec<u8>| b.truncate(at)),
            ));
        }
        let mut refused = 0;
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(clean.path(), dir.path());
            let db = dir.path().join("db");
            let mut bytes = std::fs::read(&db).unwrap();
            damage(&mut bytes);
            std::fs::write(&db, &bytes).unwrap();
            match SledEngine::open(dir.path()) {
                Err(e) => {
                    refused += 1;
                    let shown = e.to_string();
                    assert!(
                        shown.contains(&dir.path().display().to_string()),
                        "{what}: the refusal names the store: {shown}"
                    );
                }
                Ok(engine) => {
                    let n = engine.scan(b"k/", b"l", usize::MAX, false).map(|v| v.len());
                    assert_eq!(n.ok(), Some(keys), "{what}: opened with keys missing");
                }
            }
        }
        assert!(refused >= 3, "every cut is refused: {refused}");
    }

    /// A store written before the value log (untagged values) reads the
    /// same after its first open.
    #[test]
    fn a_store_from_before_the_value_log_is_tagged_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.insert(b"o/1", b"{\"json\": true}".to_vec()).unwrap();
            db.insert(b"oe/1", vec![7u8; 3000]).unwrap();
            db.insert(b"meta/n", 5u64.to_be_bytes().to_vec()).unwrap();
            db.flush().unwrap();
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(
            engine.get(b"o/1").unwrap(),
            Some(b"{\"json\": true}".to_vec())
        );
        assert_eq!(engine.get(b"oe/1").unwrap(), Some(vec![7u8; 3000]));
        assert_eq!(
            engine.get(b"meta/n").unwrap(),
            Some(5u64.to_be_bytes().to_vec())
        );
        let all = engine.scan(b"", &[0xff], usize::MAX, false).unwrap();
        assert_eq!(all.len(), 3, "{all:?}");
        // Rewriting the old large value moves it to the value log.
        put(&engine, "oe/1", Some(vec![8u8; 3000]));
        assert_eq!(engine.get(b"oe/1").unwrap(), Some(vec![8u8; 3000]));
    }

    /// Tagging that a crash cut short resumes after the last chunk it
    /// recorded: what it tagged is not tagged twice.
    #[test]
    fn tagging_cut_short_resumes_without_tagging_twice() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            // The first chunk was tagged and recorded; the rest was not.
            db.insert(b"a/1", inline(b"one")).unwrap();
            db.insert(TAGGED_UPTO_KEY, b"a/1".to_vec()).unwrap();
            db.insert(b"a/2", b"two".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(b"a/1").unwrap(), Some(b"one".to_vec()));
        assert_eq!(engine.get(b"a/2").unwrap(), Some(b"two".to_vec()));
        {
            let parts = engine.parts.read().unwrap();
            assert_eq!(
                parts.as_ref().unwrap().db.get(TAGGED_UPTO_KEY).unwrap(),
                None
            );
        }
        drop(engine);
        // Opening again changes nothing.
        let engine = SledEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(b"a/1").unwrap(), Some(b"one".to_vec()));
    }

    /// The engine's own keys cannot be written by its users.
    #[test]
    fn reserved_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SledEngine::open(dir.path()).unwrap();
        let err = engine
            .apply(vec![
                (b"m/1".to_vec(), Some(vec![1u8; 4096])),
                (b"\xff\xfevlog/x".to_vec(), Some(b"1".to_vec())),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        // Nothing of the refused batch was written, in the tree or the log.
        assert_eq!(engine.get(b"m/1").unwrap(), None);
        assert!(segments(dir.path()).iter().all(|(_, b)| b.is_empty()));
    }
}
