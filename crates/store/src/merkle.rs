//! An append-only Merkle log kept in the store: RFC 6962 leaves, their
//! tree hashes beside them, durable in the transaction that appends them.
//!
//! A transaction's leaves are one value, a run under `<prefix><position of
//! its first>` (big-endian), that holds each leaf and the tree hashes its
//! append completed (the stored hashes of Go's `sumdb/tlog`, contiguous
//! for consecutive leaves), encoded as a protobuf message with the leaves
//! in field 1 and the hashes in field 2 (`liaison.v1.LogRun`). So a log
//! is durable in the same write as what it records: a crash leaves both or
//! neither. The head (one key) holds the tree's right edge
//! ([`Frontier`]), so an append reads one small value, not the tree.
//!
//! Positions count from 1; the leaf index of position `p` is `p - 1`, and
//! the tree of `n` leaves holds positions 1 to `n`. The hub's audit log
//! and each node's own log are both one of these, under their own keys.

use std::cell::RefCell;

use liaison_tlog::tree::{self, Frontier, Hash, HashReader, HASH_SIZE};
use prost::Message as _;

use crate::{keys, Reader, StoreError, Txn};

/// A run stops growing at this many bytes, so that one stays well inside a
/// sled node and is never written as a blob file.
const RUN_BYTES: usize = 16 * 1024;

/// A run as encoded (the wire format of `liaison.v1.LogRun`).
#[derive(Clone, PartialEq, prost::Message)]
struct LogRun {
    #[prost(bytes = "vec", repeated, tag = "1")]
    leaves: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    hashes: Vec<Vec<u8>>,
}

/// Where a log lives in the store, and what its positions are called in
/// errors.
#[derive(Debug, Clone, Copy)]
pub struct MerkleLog {
    prefix: &'static [u8],
    head: &'static [u8],
    what: &'static str,
}

/// The head: where the open run starts, and the tree's right edge (whose
/// size is the last position written).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Head {
    /// The position of the run being written.
    pub run_start: u64,
    /// The tree's right edge.
    pub frontier: Frontier,
}

/// A run, read and checked for shape.
#[derive(Debug, Clone)]
pub struct Run {
    /// The position of its first leaf.
    pub first: u64,
    /// Its leaves, in order.
    pub leaves: Vec<Vec<u8>>,
    /// The tree hashes each leaf's append completed (the first is the
    /// leaf's hash).
    pub hashes: Vec<Vec<u8>>,
}

impl Run {
    /// One past its last position.
    pub fn end(&self) -> u64 {
        self.first + self.leaves.len() as u64
    }

    /// Whether it holds position `seq`.
    pub fn holds(&self, seq: u64) -> bool {
        (self.first..self.end()).contains(&seq)
    }

    /// The leaf at `seq` (which it must hold).
    pub fn leaf(&self, seq: u64) -> &[u8] {
        &self.leaves[(seq - self.first) as usize]
    }
}

/// What a full check of a stored log found.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Leaves checked.
    pub records: u64,
    /// The root recomputed over them.
    pub root: Hash,
    /// The first bad position and what is wrong with it.
    pub first_error: Option<(u64, String)>,
}

impl MerkleLog {
    /// A log whose runs are under `prefix` and whose head is at `head`;
    /// `what` names a position in errors ("audit position").
    pub const fn new(prefix: &'static [u8], head: &'static [u8], what: &'static str) -> Self {
        Self { prefix, head, what }
    }

    fn run_key(&self, first: u64) -> Vec<u8> {
        keys::seq_key(self.prefix, first)
    }

    /// The key of a run, as named in errors (`l/5`).
    pub fn run_name(&self, first: u64) -> String {
        format!("{}{first}", String::from_utf8_lossy(self.prefix))
    }

    fn head_name(&self) -> String {
        String::from_utf8_lossy(self.head).into_owned()
    }

    /// The head as of `reader` (the empty tree if none).
    pub fn read_head(&self, reader: &impl Reader) -> Result<Head, StoreError> {
        let Some(bytes) = reader.get(self.head)? else {
            return Ok(Head::default());
        };
        let corrupt = |problem: String| StoreError::Corrupt {
            key: self.head_name(),
            problem,
        };
        let (start, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("shorter than a run's position".into()))?;
        let frontier = Frontier::decode(rest).map_err(|e| corrupt(e.to_string()))?;
        let run_start = u64::from_be_bytes(*start);
        if run_start > frontier.size() {
            return Err(corrupt("its run begins after its last position".into()));
        }
        Ok(Head {
            run_start,
            frontier,
        })
    }

    /// The last position written, as of `reader`.
    pub fn size(&self, reader: &impl Reader) -> Result<u64, StoreError> {
        Ok(self.read_head(reader)?.frontier.size())
    }

    /// Appends the leaf that `leaf` makes for the next position (it is
    /// given the position, which a leaf may hold): stores it with the tree
    /// hashes it completes and moves the head. Consecutive leaves of one
    /// transaction share one run; a run is never extended by a later
    /// transaction. Returns the position.
    pub fn append(
        &self,
        txn: &mut Txn<'_>,
        leaf: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, StoreError> {
        let mut head = self.read_head(txn)?;
        let seq = head.frontier.size() + 1;
        let leaf = leaf(seq);
        let stored = head.frontier.append(tree::leaf_hash(&leaf));
        let mut hashes = Vec::with_capacity(stored.len() * HASH_SIZE);
        for h in stored {
            hashes.extend_from_slice(&h.0);
        }
        let open = txn
            .staged_mut(&self.run_key(head.run_start))
            .filter(|run| run.len() < RUN_BYTES);
        match open {
            Some(run) => extend_run(run, &leaf, &hashes),
            None => {
                let mut run = Vec::with_capacity(leaf.len() + hashes.len() + 8);
                extend_run(&mut run, &leaf, &hashes);
                txn.put(self.run_key(seq), run);
                head.run_start = seq;
            }
        }
        let mut value = head.run_start.to_be_bytes().to_vec();
        value.extend(head.frontier.encode());
        txn.put(self.head.to_vec(), value);
        Ok(seq)
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Run, StoreError> {
        let first = keys::seq_of(key).unwrap_or_default();
        let corrupt = |problem: String| StoreError::Corrupt {
            key: self.run_name(first),
            problem,
        };
        let run =
            LogRun::decode(bytes).map_err(|e| corrupt(format!("not a run of log leaves: {e}")))?;
        if run.leaves.len() != run.hashes.len() || run.leaves.is_empty() {
            return Err(corrupt(format!(
                "{} leaves with {} sets of hashes",
                run.leaves.len(),
                run.hashes.len()
            )));
        }
        if let Some(bad) = run
            .hashes
            .iter()
            .position(|h| h.is_empty() || h.len() % HASH_SIZE != 0 || h.len() > 64 * HASH_SIZE)
        {
            return Err(corrupt(format!(
                "the hashes of position {} are not whole hashes",
                first + bad as u64
            )));
        }
        Ok(Run {
            first,
            leaves: run.leaves,
            hashes: run.hashes,
        })
    }

    /// The run that holds position `seq`, if any.
    pub fn run_holding(&self, reader: &impl Reader, seq: u64) -> Result<Option<Run>, StoreError> {
        let found = reader.scan_rev(self.prefix, &self.run_key(seq.saturating_add(1)), 1)?;
        let Some((k, v)) = found.into_iter().next() else {
            return Ok(None);
        };
        let run = self.decode(&k, &v)?;
        Ok(run.holds(seq).then_some(run))
    }

    /// The runs holding positions from `first` up to `upto`, in order, at
    /// most `max` of them.
    pub fn runs_from(
        &self,
        reader: &impl Reader,
        first: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let end = self.run_key(upto.saturating_add(1));
        let start = match reader
            .scan_rev(self.prefix, &self.run_key(first.saturating_add(1)), 1)?
            .into_iter()
            .next()
        {
            Some((k, _)) => k,
            None => self.run_key(first),
        };
        reader
            .scan(&start, &end, max)?
            .into_iter()
            .map(|(k, v)| self.decode(&k, &v))
            .collect()
    }

    /// Up to `limit` leaves with positions in `(after, upto]`, in order.
    pub fn leaves_after(
        &self,
        reader: &impl Reader,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        const RUNS_PER_READ: usize = 16;
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        while out.len() < limit && next <= upto {
            let runs = self.runs_from(reader, next, upto, RUNS_PER_READ)?;
            let Some(last_end) = runs.last().map(Run::end) else {
                break;
            };
            for run in &runs {
                for seq in run.first.max(next)..run.end().min(upto.saturating_add(1)) {
                    out.push((seq, run.leaf(seq).to_vec()));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if runs.len() < RUNS_PER_READ || last_end <= next {
                break;
            }
            next = last_end;
        }
        Ok(out)
    }

    /// The tree's stored hashes, for roots and proofs of any size the
    /// reader holds.
    pub fn hashes<'a, R: Reader>(&self, reader: &'a R) -> StoredHashes<'a, R> {
        StoredHashes {
            log: *self,
            reader,
            last: RefCell::new(None),
        }
    }

    /// The leaf hashes of positions `(after, upto]`, in order, to move a
    /// frontier along without reading the tree.
    pub fn leaf_hashes(
        &self,
        reader: &impl Reader,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        let mut out = Vec::with_capacity((upto.saturating_sub(after)) as usize);
        let mut next = after + 1;
        while next <= upto {
            let runs = self.runs_from(reader, next, upto, 16)?;
            if runs.is_empty() {
                break;
            }
            for run in &runs {
                for seq in run.first.max(next)..run.end().min(upto + 1) {
                    let hashes = &run.hashes[(seq - run.first) as usize];
                    let mut h = [0; HASH_SIZE];
                    h.copy_from_slice(&hashes[..HASH_SIZE]);
                    out.push(Hash(h));
                }
                next = next.max(run.end());
            }
        }
        if out.len() as u64 != upto.saturating_sub(after) {
            return Err(StoreError::Corrupt {
                key: self.run_name(after + 1),
                problem: format!(
                    "{}s {} to {upto} are not all in the log",
                    self.what,
                    after + 1
                ),
            });
        }
        Ok(out)
    }

    /// Recomputes every leaf hash and tree hash of positions 1 to `upto`
    /// from the leaves' bytes and compares them with what is stored: a
    /// flipped byte, a missing or reordered leaf, or a rewritten hash
    /// shows as the first position where they differ. `leaf_ok` checks a
    /// leaf's content (that it decodes, that it names its position);
    /// `at_size` is asked after each leaf whether the tree of that size is
    /// wrong for a reason the store cannot see (a witness cosigned
    /// another root).
    pub fn check(
        &self,
        reader: &impl Reader,
        upto: u64,
        mut leaf_ok: impl FnMut(u64, &[u8]) -> Result<(), String>,
        mut at_size: impl FnMut(&Frontier) -> Option<String>,
    ) -> Result<Check, StoreError> {
        let mut frontier = Frontier::new();
        let mut next = 1u64;
        let fail = |frontier: &Frontier, seq: u64, problem: String| Check {
            records: frontier.size(),
            root: frontier.root(),
            first_error: Some((seq, problem)),
        };
        while next <= upto {
            let runs = match self.runs_from(reader, next, upto, 16) {
                Ok(runs) => runs,
                Err(e) => return Ok(fail(&frontier, next, e.to_string())),
            };
            let missing = |next: u64| format!("position {next} is missing");
            let Some(first) = runs.first() else {
                return Ok(fail(&frontier, next, missing(next)));
            };
            if first.first > next {
                return Ok(fail(&frontier, next, missing(next)));
            }
            for run in &runs {
                if run.first != next && !(run.first < next && run.holds(next)) {
                    return Ok(fail(&frontier, next, missing(next)));
                }
                for seq in next..run.end().min(upto + 1) {
                    let i = (seq - run.first) as usize;
                    if let Err(e) = leaf_ok(seq, &run.leaves[i]) {
                        return Ok(fail(&frontier, seq, e));
                    }
                    let stored = frontier.append(tree::leaf_hash(&run.leaves[i]));
                    let want: Vec<u8> = stored.iter().flat_map(|h| h.0).collect();
                    if want != run.hashes[i] {
                        return Ok(fail(
                            &frontier,
                            seq,
                            format!(
                                "the stored tree hashes of position {seq} are not those of its leaf"
                            ),
                        ));
                    }
                    if let Some(problem) = at_size(&frontier) {
                        return Ok(fail(&frontier, seq, problem));
                    }
                }
                next = run.end();
            }
        }
        Ok(Check {
            records: frontier.size(),
            root: frontier.root(),
            first_error: None,
        })
    }
}

/// Appends a leaf and its hashes to a run's encoding: one field 1 and one
/// field 2.
fn extend_run(run: &mut Vec<u8>, leaf: &Vec<u8>, hashes: &Vec<u8>) {
    prost::encoding::bytes::encode(1, leaf, run);
    prost::encoding::bytes::encode(2, hashes, run);
}

/// A log's stored hashes, read from its runs ([`MerkleLog::hashes`]).
pub struct StoredHashes<'a, R: Reader> {
    log: MerkleLog,
    reader: &'a R,
    last: RefCell<Option<Run>>,
}

impl<R: Reader> std::fmt::Debug for StoredHashes<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredHashes")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl<R: Reader> StoredHashes<'_, R> {
    fn hash(&self, index: u64) -> Result<Hash, StoreError> {
        let leaf = tree::leaf_storing(index);
        let seq = leaf + 1;
        let mut last = self.last.borrow_mut();
        if !last.as_ref().is_some_and(|r| r.holds(seq)) {
            *last = self.log.run_holding(self.reader, seq)?;
        }
        let run = last.as_ref().ok_or_else(|| StoreError::Corrupt {
            key: self.log.run_name(seq),
            problem: format!("no run holds {} {seq}", self.log.what),
        })?;
        let hashes = &run.hashes[(seq - run.first) as usize];
        let k = (index - tree::stored_hash_index(0, leaf)) as usize;
        let bytes = hashes
            .get(k * HASH_SIZE..(k + 1) * HASH_SIZE)
            .ok_or_else(|| StoreError::Corrupt {
                key: self.log.run_name(run.first),
                problem: format!("position {seq} lacks its tree hash {k}"),
            })?;
        let mut h = [0; HASH_SIZE];
        h.copy_from_slice(bytes);
        Ok(Hash(h))
    }
}

impl<R: Reader> HashReader for StoredHashes<'_, R> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tree::ReadError> {
        indexes
            .iter()
            .map(|&i| {
                self.hash(i)
                    .map_err(|e| tree::ReadError::InvalidInput(e.to_string()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Db;
    use liaison_tlog::tree::MemoryTree;

    const LOG: MerkleLog = MerkleLog::new(b"t/", b"meta/t_head", "test position");

    async fn write(db: &Db, counts: &[usize], len: usize) {
        for &n in counts {
            db.write(move |txn| {
                for _ in 0..n {
                    LOG.append(txn, |seq| format!("{seq}:{}", "x".repeat(len)).into_bytes())?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn the_stored_tree_is_the_rfc_6962_tree_of_its_leaves_at_every_size() {
        let db = Db::in_memory();
        write(&db, &[1, 3, 40, 2], 700).await;
        let n = LOG.size(&db).unwrap();
        assert_eq!(n, 46);
        let leaves = LOG.leaves_after(&db, 0, n, usize::MAX).unwrap();
        assert_eq!(leaves.len(), 46);
        assert!(
            db.scan_prefix(b"t/", 100).unwrap().len() > 4,
            "runs split at 16 KiB"
        );
        let mut t = MemoryTree::new();
        for (seq, leaf) in &leaves {
            assert!(leaf.starts_with(format!("{seq}:").as_bytes()));
            t.push(leaf);
        }
        let stored = LOG.hashes(&db);
        for size in 1..=n {
            let mut small = MemoryTree::new();
            for (_, leaf) in &leaves[..size as usize] {
                small.push(leaf);
            }
            assert_eq!(
                tree::root(size, &stored).unwrap(),
                small.root(),
                "size {size}"
            );
            let p = tree::inclusion_proof(size - 1, size, &stored).unwrap();
            assert_eq!(p, tree::inclusion_proof(size - 1, size, &t).unwrap());
        }
        let check = LOG.check(&db, n, |_, _| Ok(()), |_| None).unwrap();
        assert_eq!((check.first_error, check.root), (None, t.root()));
        assert_eq!(
            LOG.leaf_hashes(&db, 10, 12).unwrap(),
            [
                tree::leaf_hash(&leaves[10].1),
                tree::leaf_hash(&leaves[11].1)
            ]
        );
    }

    #[tokio::test]
    async fn a_flipped_byte_or_a_missing_run_is_found_at_its_position() {
        let db = Db::in_memory();
        write(&db, &[3, 3, 3], 10).await;
        let (key, mut value) = db.scan_prefix(b"t/", 10).unwrap().remove(1);
        let at = value.len() - 40;
        value[at] ^= 1;
        db.write(move |t| {
            t.put(key, value);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let (seq, problem) = LOG
            .check(&db, 9, |_, _| Ok(()), |_| None)
            .unwrap()
            .first_error
            .unwrap();
        assert!((4..=6).contains(&seq), "{seq}: {problem}");
        let db = Db::in_memory();
        write(&db, &[3, 3, 3], 10).await;
        let key = db.scan_prefix(b"t/", 10).unwrap().remove(1).0;
        db.write(move |t| {
            t.delete(key);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let (seq, problem) = LOG
            .check(&db, 9, |_, _| Ok(()), |_| None)
            .unwrap()
            .first_error
            .unwrap();
        assert_eq!(seq, 4, "{problem}");
        assert!(problem.contains("missing"), "{problem}");
        // A leaf the caller refuses is named at its position.
        let (seq, _) = LOG
            .check(
                &db,
                3,
                |seq, _| if seq == 2 { Err("no".into()) } else { Ok(()) },
                |_| None,
            )
            .unwrap()
            .first_error
            .unwrap();
        assert_eq!(seq, 2);
    }
}
