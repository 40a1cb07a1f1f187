//! The value log: large values kept out of sled's tree, in append-only
//! segment files, with a short reference in the tree.
//!
//! sled 0.34 copies a whole leaf node (up to 16 entries, values included) on
//! every insert into it, and rewrites whole nodes when it consolidates or
//! splits them. With envelopes, audit runs and queue runs in its leaves, a
//! 1 KiB message cost tens of KiB of copies and log writes. Kept here
//! instead (as WiscKey separates keys from values), a value is written once,
//! sequentially, and sled's nodes hold 25-byte references.
//!
//! Layout: `<dir>/values/<segment>.vlog`, segments numbered from 1, each up
//! to [`SEGMENT_BYTES`] (a larger value gets a segment of its own). A value
//! is its bytes alone; the reference in the tree says where it is and
//! carries its CRC-32, so a damaged or missing value is reported, never
//! returned.
//!
//! The live bytes of each segment are counted under reserved keys in the
//! same tree and the same atomic batches as the references, so the counts
//! survive a crash exactly as the references do. A value's bytes are
//! destroyed (a hole punched, or zeros written) once the write that
//! replaced or deleted its reference is durable, and a segment file is
//! removed once nothing refers to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::StoreError;

/// Values of at least this many bytes go to the value log.
pub const VALUE_LOG_MIN: usize = 256;

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The first byte of a stored value in the tree: the value itself follows.
pub(crate) const INLINE: u8 = 0;
/// The first byte of a stored value in the tree: a [`Ref`] follows.
pub(crate) const REFERENCE: u8 = 1;

/// Keys the engine reserves for itself, hidden from scans: they sort after
/// every key the hub and nodes use (all printable ASCII).
pub(crate) const RESERVED: &[u8] = b"\xff\xfe";
/// Live bytes of a segment: `RESERVED ++ "vlog/" ++ segment (big-endian)`.
pub(crate) const LIVE_PREFIX: &[u8] = b"\xff\xfevlog/";

/// Where a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ref {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl Ref {
    /// Bytes of an encoded reference, tag included.
    pub const ENCODED: usize = 1 + 8 + 8 + 4 + 4;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED);
        out.push(REFERENCE);
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// The reference a stored value holds, if it holds one.
    pub fn decode(stored: &[u8]) -> Option<Self> {
        if stored.len() != Self::ENCODED || stored[0] != REFERENCE {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(stored[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_be_bytes(stored[i..i + 4].try_into().unwrap_or([0; 4]));
        Some(Self {
            segment: u64_at(1),
            offset: u64_at(9),
            len: u32_at(17),
            crc: u32_at(21),
        })
    }
}

/// The key counting a segment's live bytes.
pub(crate) fn live_key(segment: u64) -> Vec<u8> {
    let mut k = LIVE_PREFIX.to_vec();
    k.extend_from_slice(&segment.to_be_bytes());
    k
}

/// The segment a live-bytes key counts.
pub(crate) fn segment_of_live_key(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(LIVE_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The segment files, the one being appended to, and what to sync and
/// destroy at the next flush.
#[derive(Debug)]
pub(crate) struct ValueLog {
    dir: PathBuf,
    /// A segment is closed at this size ([`SEGMENT_BYTES`] but in tests).
    segment_bytes: u64,
    /// Open segment files, for reads and for punching holes.
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// Appends and the bookkeeping of the writer.
    writer: Mutex<Appender>,
}

#[derive(Debug)]
struct Appender {
    active: u64,
    len: u64,
    file: Arc<File>,
    /// Live bytes per segment, as the tree counts them.
    live: BTreeMap<u64, u64>,
    /// Segments written (appended, or bytes destroyed) since the last sync.
    dirty: BTreeSet<u64>,
    /// Values whose references were replaced or deleted, to destroy once
    /// that is durable.
    released: Vec<Ref>,
}

fn io(path: &Path, doing: &str, e: &std::io::Error) -> StoreError {
    StoreError::io(format_args!("{doing} {}", path.display()), e)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.vlog"))
}

fn open_segment(path: &Path) -> Result<File, StoreError> {
    // Not O_APPEND: on Linux that makes every positioned write append,
    // which would put the zeros of a destroyed value at the end.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io(path, "opening", &e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, "syncing", &e))
}

/// How a change of the tree moves the live bytes: what each segment gains
/// and loses, and the values to destroy once it is durable.
#[derive(Debug, Default)]
pub(crate) struct Change {
    gained: BTreeMap<u64, u64>,
    lost: BTreeMap<u64, u64>,
    released: Vec<Ref>,
}

impl Change {
    /// A value the change stores.
    pub fn stores(&mut self, r: Ref) {
        *self.gained.entry(r.segment).or_default() += u64::from(r.len);
    }

    /// A value whose reference the change replaces or deletes.
    pub fn releases(&mut self, r: Ref) {
        *self.lost.entry(r.segment).or_default() += u64::from(r.len);
        self.released.push(r);
    }
}

impl ValueLog {
    /// Opens the value log in `dir` (made if missing) with the live bytes
    /// the tree counts; removes segments nothing refers to.
    pub fn open(
        dir: PathBuf,
        live: BTreeMap<u64, u64>,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, "creating", &e))?;
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, "listing", &e))? {
            let entry = entry.map_err(|e| io(&dir, "listing", &e))?;
            let name = entry.file_name();
            let Some(segment) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".vlog"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            present.insert(segment);
        }
        // A segment the tree counts must exist: one that is gone would turn
        // every value in it into a read error later.
        if let Some((segment, bytes)) = live.iter().find(|(s, b)| **b > 0 && !present.contains(s)) {
            return Err(StoreError::Corrupt {
                key: segment_path(&dir, *segment).display().to_string(),
                problem: format!(
                    "the value log segment holding {bytes} live bytes is missing; restore the data directory from a backup"
                ),
            });
        }
        let active = present.last().copied().unwrap_or(1);
        for &segment in &present {
            if segment != active && live.get(&segment).copied().unwrap_or(0) == 0 {
                let path = segment_path(&dir, segment);
                std::fs::remove_file(&path).map_err(|e| io(&path, "removing", &e))?;
            }
        }
        let path = segment_path(&dir, active);
        let file = Arc::new(open_segment(&path)?);
        // Bytes past the last durable reference (a write a crash cut short)
        // stay as they are: nothing refers to them, and the segment goes
        // when its last live value does.
        let len = file.metadata().map_err(|e| io(&path, "reading", &e))?.len();
        sync_dir(&dir)?;
        let mut files = BTreeMap::new();
        files.insert(active, Arc::clone(&file));
        Ok(Self {
            dir,
            segment_bytes,
            files: RwLock::new(files),
            writer: Mutex::new(Appender {
                active,
                len,
                file,
                live,
                dirty: BTreeSet::new(),
                released: Vec::new(),
            }),
        })
    }

    fn appender(&self) -> Result<std::sync::MutexGuard<'_, Appender>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Engine("value log lock poisoned".into()))
    }

    /// Appends a value; the reference says where.
    pub fn append(&self, value: &[u8]) -> Result<Ref, StoreError> {
        let len = u32::try_from(value.len()).map_err(|_| {
            StoreError::Engine(format!("a value of {} bytes is too large", value.len()))
        })?;
        let mut w = self.appender()?;
        if w.len > 0 && w.len + u64::from(len) > self.segment_bytes {
            let next = w.active + 1;
            let path = segment_path(&self.dir, next);
            let file = Arc::new(open_segment(&path)?);
            sync_dir(&self.dir)?;
            self.files
                .write()
                .map_err(|_| StoreError::Engine("value log lock poisoned".into()))?
                .insert(next, Arc::clone(&file));
            // The closed segment is synced with the next flush (it is dirty).
            w.active = next;
            w.len = 0;
            w.file = file;
        }
        let offset = w.len;
        let path = segment_path(&self.dir, w.active);
        w.file
            .write_all_at(value, offset)
            .map_err(|e| io(&path, "writing", &e))?;
        w.len += u64::from(len);
        let segment = w.active;
        w.dirty.insert(segment);
        Ok(Ref {
            segment,
            offset,
            len,
            crc: crc32fast::hash(value),
        })
    }

    /// The live-bytes counts a change leaves, to write in its batch:
    /// `(segment, bytes)`.
    pub fn counts_after(&self, change: &Change) -> Result<Vec<(u64, u64)>, StoreError> {
        let w = self.appender()?;
        let touched: BTreeSet<u64> = change
            .gained
            .keys()
            .chain(change.lost.keys())
            .copied()
            .collect();
        Ok(touched
            .into_iter()
            .map(|s| {
                let now = w.live.get(&s).copied().unwrap_or(0);
                let after = (now + change.gained.get(&s).copied().unwrap_or(0))
                    .saturating_sub(change.lost.get(&s).copied().unwrap_or(0));
                (s, after)
            })
            .collect())
    }

    /// Takes in a change the tree now holds: its counts, and the values to
    /// destroy at the next flush.
    pub fn applied(&self, change: Change, counts: Vec<(u64, u64)>) -> Result<(), StoreError> {
        let mut w = self.appender()?;
        for (s, n) in counts {
            w.live.insert(s, n);
        }
        w.released.extend(change.released);
        Ok(())
    }

    /// Syncs every segment written since the last call. Called before the
    /// tree is flushed, so that a durable reference never points at bytes
    /// that are not.
    pub fn sync(&self) -> Result<(), StoreError> {
        let dirty: Vec<u64> = std::mem::take(&mut self.appender()?.dirty)
            .into_iter()
            .collect();
        for (i, &segment) in dirty.iter().enumerate() {
            if let Some(file) = self.file(segment)? {
                if let Err(e) = file.sync_data() {
                    // Not durable: these stay to be synced again.
                    self.appender()?.dirty.extend(&dirty[i..]);
                    return Err(io(&segment_path(&self.dir, segment), "syncing", &e));
                }
            }
        }
        Ok(())
    }

    /// Once the tree's flush made the releases durable: destroys the
    /// released values' bytes and removes segments nothing refers to.
    pub fn reclaim(&self) -> Result<(), StoreError> {
        let (released, dead) = {
            let mut w = self.appender()?;
            let released = std::mem::take(&mut w.released);
            let active = w.active;
            let dead: Vec<u64> = w
                .live
                .iter()
                .filter(|(s, n)| **n == 0 && **s != active)
                .map(|(s, _)| *s)
                .collect();
            for s in &dead {
                w.live.remove(s);
            }
            for r in &released {
                if !dead.contains(&r.segment) {
                    w.dirty.insert(r.segment);
                }
            }
            (released, dead)
        };
        for r in released {
            if dead.contains(&r.segment) {
                continue;
            }
            if let Some(file) = self.file(r.segment)? {
                destroy(&file, r.offset, u64::from(r.len)).map_err(|e| {
                    io(
                        &segment_path(&self.dir, r.segment),
                        "erasing a value in",
                        &e,
                    )
                })?;
            }
        }
        if !dead.is_empty() {
            let mut files = self
                .files
                .write()
                .map_err(|_| StoreError::Engine("value log lock poisoned".into()))?;
            for s in dead {
                files.remove(&s);
                let path = segment_path(&self.dir, s);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path, "removing", &e)),
                }
            }
            drop(files);
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn file(&self, segment: u64) -> Result<Option<Arc<File>>, StoreError> {
        if let Some(f) = self
            .files
            .read()
            .map_err(|_| StoreError::Engine("value log lock poisoned".into()))?
            .get(&segment)
        {
            return Ok(Some(Arc::clone(f)));
        }
        let path = segment_path(&self.dir, segment);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "opening", &e)),
        };
        self.files
            .write()
            .map_err(|_| StoreError::Engine("value log lock poisoned".into()))?
            .insert(segment, Arc::clone(&file));
        Ok(Some(file))
    }

    /// Reads a value, or `None` if its bytes are gone or do not match the
    /// reference (the caller tells a value replaced meanwhile from damage).
    pub fn read(&self, r: Ref) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = self.file(r.segment)? else {
            return Ok(None);
        };
        let mut buf = vec![0; r.len as usize];
        match file.read_exact_at(&mut buf, r.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(&segment_path(&self.dir, r.segment), "reading", &e)),
        }
        Ok((crc32fast::hash(&buf) == r.crc).then_some(buf))
    }

    /// Where a segment is, for error messages.
    pub fn path_of(&self, segment: u64) -> PathBuf {
        segment_path(&self.dir, segment)
    }
}

/// Destroys `len` bytes at `offset`: a hole punched where the file system
/// can, zeros written where it cannot.
fn destroy(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::FallocateFlags;
        match rustix::fs::fallocate(
            file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.write_all_at(&zeros, offset)
}
