//! The engine trait and its two implementations.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::Deserialize;

use crate::StoreError;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An ordered key-value store with atomic batches.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
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
#[derive(Debug)]
pub struct SledEngine {
    db: sled::Db,
    /// sled's log file (`<dir>/db`), kept open to sync it.
    log: File,
    blobs: PathBuf,
    /// Blob files already synced.
    synced_blobs: Mutex<BTreeSet<OsString>>,
}

impl SledEngine {
    /// Opens or creates the database in `path` with the default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens or creates the database in `path`.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(options.cache_bytes)
            .open()
            .map_err(|e| StoreError::Engine(format!("opening {}: {e}", path.display())))?;
        let log_path = path.join("db");
        let log = File::open(&log_path)
            .map_err(|e| StoreError::Engine(format!("opening {}: {e}", log_path.display())))?;
        let blobs = path.join("blobs");
        // Blobs present at start-up were written before a restart; sync
        // them once so that the set below can assume they are durable.
        let engine = Self {
            db,
            log,
            blobs,
            synced_blobs: Mutex::new(BTreeSet::new()),
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

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Engine(format!("syncing {}: {e}", path.display()))
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
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
        let range = self.db.range(start..end);
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        iter.take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            .collect()
    }

    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        Ok(self.db.apply_batch(batch)?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        // sled's flush ends with sync_file_range: make it a real sync.
        self.log
            .sync_data()
            .map_err(|e| StoreError::Engine(format!("syncing the store log: {e}")))?;
        self.sync_blobs()
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
