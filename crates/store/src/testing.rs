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
