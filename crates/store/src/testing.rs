//! Engines for tests of what happens between a write and its flush.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{Engine, Entry, MemoryEngine, StoreError};

/// An in-memory engine whose flush waits until the test calls
/// [`HeldFlush::release`]: a write is applied (visible to readers) but not
/// yet durable for as long as the test likes.
#[derive(Debug, Default)]
pub struct HeldFlush {
    inner: MemoryEngine,
    applied: AtomicBool,
    released: AtomicBool,
}

impl HeldFlush {
    /// Whether a write has been applied since the engine was made.
    pub fn applied(&self) -> bool {
        self.applied.load(Ordering::SeqCst)
    }

    /// Lets every flush, held or to come, complete.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

impl Engine for HeldFlush {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.inner.contains(key)
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
        self.inner.apply(writes)?;
        self.applied.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        while !self.released.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// An in-memory engine whose writes and flushes fail while the test says
/// so ([`Broken::set_broken`]), as a full or failing disk would.
#[derive(Debug, Default)]
pub struct Broken {
    inner: MemoryEngine,
    broken: AtomicBool,
}

impl Broken {
    /// Makes every apply and flush from now on fail (`true`) or work.
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Engine("simulated device failure".into()));
        }
        Ok(())
    }
}

impl Engine for Broken {
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
        self.check()?;
        self.inner.apply(writes)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.check()
    }
}

/// An in-memory engine that can lose power. Applied writes are visible at
/// once, as in any engine, but only a flush makes them durable:
/// [`PowerCut::image`] is what a disk would hold if the power went now,
/// every write since the last flush gone, and a new engine opened on it
/// ([`PowerCut::from_image`]) is the store after the restart.
#[derive(Debug, Default)]
pub struct PowerCut {
    visible: MemoryEngine,
    state: std::sync::Mutex<CutState>,
}

/// One applied batch: keys and values (`None` deletes).
type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

#[derive(Debug, Default)]
struct CutState {
    durable: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// Applied since the last flush, in order.
    pending: Vec<Batch>,
}

impl PowerCut {
    /// What survives a power cut now: the durable entries.
    pub fn image(&self) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .durable
            .clone()
    }

    /// An engine after the restart: `image` is both what it shows and what
    /// is durable.
    pub fn from_image(image: std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        let engine = Self::default();
        engine
            .visible
            .apply(
                image
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect(),
            )
            .expect("a memory engine applies");
        engine
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .durable = image;
        engine
    }
}

impl Engine for PowerCut {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.visible.get(key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        self.visible.scan(start, end, limit, reverse)
    }

    fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.visible.apply(writes.clone())?;
        state.pending.push(writes);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(&mut state.pending);
        for batch in pending {
            for (k, v) in batch {
                match v {
                    Some(v) => state.durable.insert(k, v),
                    None => state.durable.remove(&k),
                };
            }
        }
        Ok(())
    }
}
