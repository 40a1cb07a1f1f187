//! The audit log as stored: a Merkle tree whose every record is a leaf.
//!
//! Each record is one leaf: the record encoded as a proto (`leaf` empty),
//! hashed as RFC 6962 prescribes. One leaf per record, rather than one per
//! message, so that a body can be given the proof of the decision about it
//! without the decisions about the other bodies (a routing record names one
//! recipient). Binary and small, the leaves cost a fraction of what the hash
//! chain's canonical JSON did.
//!
//! A transaction's leaves are one value, a [`pb::LogRun`] under
//! `l/<position of its first>`, together with the tree hashes their appends
//! created (the stored hashes of Go's `sumdb/tlog`, contiguous for
//! consecutive leaves). So the tree is durable in the same write as the
//! routing it records: a crash leaves both or neither. The head
//! (`meta/log_head`) holds the tree's right edge ([`Frontier`]), so an
//! append reads one small value, not the tree.
//!
//! Records keep their positions (`seq`, from 1); a record's leaf index is
//! `seq - 1`, and the tree of `n` leaves holds positions 1 to `n`.

use std::cell::RefCell;

use liaison_proto::v1 as pb;
use liaison_store::{keys, Db, Reader, StoreError, Txn};
use liaison_tlog::tree::{self, Frontier, Hash, HashReader, HASH_SIZE};
use prost::Message as _;

/// The log's runs, by the position of their first record.
pub(super) const LOG_PREFIX: &[u8] = b"l/";
/// The tree's right edge and the position of the run being written.
pub(super) const LOG_HEAD: &[u8] = b"meta/log_head";

/// A run stops growing at this many bytes, so that one stays well inside a
/// sled node and is never written as a blob file.
const RUN_BYTES: usize = 16 * 1024;

fn run_key(first: u64) -> Vec<u8> {
    keys::seq_key(LOG_PREFIX, first)
}

/// The key of a run, as named in errors.
pub(super) fn run_key_name(first: u64) -> String {
    format!("l/{first}")
}

fn head_name() -> String {
    String::from_utf8_lossy(LOG_HEAD).into_owned()
}

/// The head: where the open run starts, and the tree's right edge (whose
/// size is the last position written).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct LogHead {
    pub run_start: u64,
    pub frontier: Frontier,
}

impl LogHead {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.run_start.to_be_bytes().to_vec();
        v.extend(self.frontier.encode());
        v
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt {
            key: head_name(),
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
        Ok(Self {
            run_start,
            frontier,
        })
    }
}

/// The head as of `reader` (the empty tree if none).
pub(super) fn read_head(reader: &impl Reader) -> Result<LogHead, StoreError> {
    match reader.get(LOG_HEAD)? {
        Some(bytes) => LogHead::decode(&bytes),
        None => Ok(LogHead::default()),
    }
}

/// The last audit position written, durable or not (read at start-up, when
/// all of it is durable).
pub(super) fn log_end(db: &Db) -> Result<u64, StoreError> {
    Ok(read_head(db)?.frontier.size())
}

/// Appends one audit record inside a transaction as the next leaf: assigns
/// its position, stores its bytes and the tree hashes it creates, and moves
/// the head. Consecutive records of one transaction share one run; a run is
/// never extended by a later transaction.
pub fn append_audit(txn: &mut Txn<'_>, mut record: pb::AuditRecord) -> Result<u64, StoreError> {
    let mut head = read_head(txn)?;
    let seq = head.frontier.size() + 1;
    record.seq = seq;
    record.hash.clear();
    record.prev_hash.clear();
    record.leaf.clear();
    let leaf = record.encode_to_vec();
    let stored = head.frontier.append(tree::leaf_hash(&leaf));
    let mut hashes = Vec::with_capacity(stored.len() * HASH_SIZE);
    for h in stored {
        hashes.extend_from_slice(&h.0);
    }
    let open = txn
        .staged_mut(&run_key(head.run_start))
        .filter(|run| run.len() < RUN_BYTES);
    match open {
        Some(run) => extend_run(run, &leaf, &hashes),
        None => {
            let mut run = Vec::with_capacity(leaf.len() + hashes.len() + 8);
            extend_run(&mut run, &leaf, &hashes);
            txn.put(run_key(seq), run);
            head.run_start = seq;
        }
    }
    txn.put(LOG_HEAD, head.encode());
    Ok(seq)
}

/// Appends a leaf and its hashes to a run's encoding: one field 1 and one
/// field 2 (see [`pb::LogRun`]).
fn extend_run(run: &mut Vec<u8>, leaf: &Vec<u8>, hashes: &Vec<u8>) {
    prost::encoding::bytes::encode(1, leaf, run);
    prost::encoding::bytes::encode(2, hashes, run);
}

/// A run, read and checked for shape.
#[derive(Debug, Clone)]
pub(super) struct Run {
    /// The position of its first record.
    pub first: u64,
    pub leaves: Vec<Vec<u8>>,
    pub hashes: Vec<Vec<u8>>,
}

impl Run {
    fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let first = keys::seq_of(key).unwrap_or_default();
        let corrupt = |problem: String| StoreError::Corrupt {
            key: run_key_name(first),
            problem,
        };
        let run = pb::LogRun::decode(bytes)
            .map_err(|e| corrupt(format!("not a run of audit leaves: {e}")))?;
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
        Ok(Self {
            first,
            leaves: run.leaves,
            hashes: run.hashes,
        })
    }

    /// One past its last position.
    pub fn end(&self) -> u64 {
        self.first + self.leaves.len() as u64
    }

    fn holds(&self, seq: u64) -> bool {
        (self.first..self.end()).contains(&seq)
    }

    /// The record at `seq`, decoded, with its leaf bytes.
    pub fn record(&self, seq: u64) -> Result<pb::AuditRecord, StoreError> {
        let leaf = &self.leaves[(seq - self.first) as usize];
        let mut r = pb::AuditRecord::decode(leaf.as_slice()).map_err(|e| StoreError::Corrupt {
            key: run_key_name(self.first),
            problem: format!("the leaf of position {seq} is not an audit record: {e}"),
        })?;
        if r.seq != seq {
            return Err(StoreError::Corrupt {
                key: run_key_name(self.first),
                problem: format!("the leaf of position {seq} says it is position {}", r.seq),
            });
        }
        r.leaf = leaf.clone();
        Ok(r)
    }
}

/// The run that holds position `seq`, if any.
pub(super) fn run_holding(reader: &impl Reader, seq: u64) -> Result<Option<Run>, StoreError> {
    let found = reader.scan_rev(LOG_PREFIX, &run_key(seq.saturating_add(1)), 1)?;
    let Some((k, v)) = found.into_iter().next() else {
        return Ok(None);
    };
    let run = Run::decode(&k, &v)?;
    Ok(run.holds(seq).then_some(run))
}

/// The runs holding positions from `first` up to `upto`, in order, at most
/// `max` of them.
pub(super) fn runs_from(
    reader: &impl Reader,
    first: u64,
    upto: u64,
    max: usize,
) -> Result<Vec<Run>, StoreError> {
    let end = run_key(upto.saturating_add(1));
    let start = match reader
        .scan_rev(LOG_PREFIX, &run_key(first.saturating_add(1)), 1)?
        .into_iter()
        .next()
    {
        Some((k, _)) => k,
        None => run_key(first),
    };
    reader
        .scan(&start, &end, max)?
        .into_iter()
        .map(|(k, v)| Run::decode(&k, &v))
        .collect()
}

/// Up to `limit` audit records with positions in `(after, upto]`, in order,
/// each with its leaf bytes.
pub(super) fn audit_after(
    db: &Db,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<pb::AuditRecord>, StoreError> {
    const RUNS_PER_READ: usize = 16;
    let mut out = Vec::new();
    let mut next = after.saturating_add(1);
    while out.len() < limit && next <= upto {
        let runs = runs_from(db, next, upto, RUNS_PER_READ)?;
        let Some(last_end) = runs.last().map(Run::end) else {
            break;
        };
        for run in &runs {
            for seq in run.first.max(next)..run.end().min(upto.saturating_add(1)) {
                out.push(run.record(seq)?);
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

/// The tree's stored hashes, read from the runs: proofs and roots of any
/// tree size up to the durable mark read only what is durable.
pub(super) struct StoredHashes<'a, R: Reader> {
    reader: &'a R,
    last: RefCell<Option<Run>>,
}

impl<'a, R: Reader> StoredHashes<'a, R> {
    pub fn new(reader: &'a R) -> Self {
        Self {
            reader,
            last: RefCell::new(None),
        }
    }

    fn hash(&self, index: u64) -> Result<Hash, StoreError> {
        let leaf = tree::leaf_storing(index);
        let seq = leaf + 1;
        let mut last = self.last.borrow_mut();
        if !last.as_ref().is_some_and(|r| r.holds(seq)) {
            *last = run_holding(self.reader, seq)?;
        }
        let run = last.as_ref().ok_or_else(|| StoreError::Corrupt {
            key: run_key_name(seq),
            problem: format!("no run holds audit position {seq}"),
        })?;
        let hashes = &run.hashes[(seq - run.first) as usize];
        let k = (index - tree::stored_hash_index(0, leaf)) as usize;
        let bytes = hashes
            .get(k * HASH_SIZE..(k + 1) * HASH_SIZE)
            .ok_or_else(|| StoreError::Corrupt {
                key: run_key_name(run.first),
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

/// The leaf hashes of positions `(after, upto]`, in order, to move a
/// frontier along without reading the tree.
pub(super) fn leaf_hashes(
    reader: &impl Reader,
    after: u64,
    upto: u64,
) -> Result<Vec<Hash>, StoreError> {
    let mut out = Vec::with_capacity((upto.saturating_sub(after)) as usize);
    let mut next = after + 1;
    while next <= upto {
        let runs = runs_from(reader, next, upto, 16)?;
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
            key: run_key_name(after + 1),
            problem: format!(
                "audit positions {} to {upto} are not all in the log",
                after + 1
            ),
        });
    }
    Ok(out)
}

/// What a full check of the stored log found.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCheck {
    /// Records checked.
    pub records: u64,
    /// The root recomputed over them.
    pub root: Hash,
    /// The first bad position and what is wrong with it.
    pub first_error: Option<(u64, String)>,
}

/// Recomputes every leaf hash and tree hash of positions 1 to `upto` from
/// the leaves' bytes and compares them with what is stored: a flipped byte,
/// a missing or reordered record, or a rewritten hash shows as the first
/// position where they differ.
///
/// Each kept cosignature is checked too: the root its witness cosigned must
/// be the root recomputed at its size, or the log was rewritten after the
/// witness saw it (even if every hash was rewritten to match).
pub(super) fn check_log(
    db: &Db,
    upto: u64,
    cosigned: &[super::KeptCosignature],
) -> Result<LogCheck, StoreError> {
    let mut by_size: std::collections::BTreeMap<u64, Vec<&super::KeptCosignature>> =
        std::collections::BTreeMap::new();
    for c in cosigned {
        by_size.entry(c.size).or_default().push(c);
    }
    let witnessed = |frontier: &Frontier| -> Option<String> {
        let root = frontier.root();
        by_size.get(&frontier.size()).and_then(|cs| {
            cs.iter().find(|c| c.root != root.0).map(|c| {
                format!(
                    "the tree of {} records is not the one {} cosigned (the log was rewritten after it was witnessed)",
                    frontier.size(),
                    c.body
                )
            })
        })
    };
    let mut frontier = Frontier::new();
    let mut next = 1u64;
    let fail = |frontier: &Frontier, seq: u64, problem: String| LogCheck {
        records: frontier.size(),
        root: frontier.root(),
        first_error: Some((seq, problem)),
    };
    while next <= upto {
        let runs = match runs_from(db, next, upto, 16) {
            Ok(runs) => runs,
            Err(e) => return Ok(fail(&frontier, next, e.to_string())),
        };
        let Some(first) = runs.first() else {
            return Ok(fail(&frontier, next, format!("position {next} is missing")));
        };
        if first.first > next {
            return Ok(fail(&frontier, next, format!("position {next} is missing")));
        }
        for run in &runs {
            if run.first != next && !(run.first < next && run.holds(next)) {
                return Ok(fail(&frontier, next, format!("position {next} is missing")));
            }
            for seq in next..run.end().min(upto + 1) {
                let i = (seq - run.first) as usize;
                if let Err(e) = run.record(seq) {
                    return Ok(fail(&frontier, seq, e.to_string()));
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
                if let Some(problem) = witnessed(&frontier) {
                    return Ok(fail(&frontier, seq, problem));
                }
            }
            next = run.end();
        }
    }
    Ok(LogCheck {
        records: frontier.size(),
        root: frontier.root(),
        first_error: None,
    })
}

/// Converts a hash-chained audit log of an earlier version (`a/<seq>` runs
/// of `AuditRun`, `meta/audit_head`) into the Merkle log, keeping every
/// record's position and content. The chain is checked first: a log whose
/// chain is broken is not converted (the hub refuses to start, naming the
/// first bad record), because converting would launder the damage. The
/// conversion goes by batches, each converting whole runs and deleting
/// them in one transaction, so a crash part-way resumes where it stopped.
pub(crate) async fn convert_chain(db: &Db) -> Result<u64, StoreError> {
    const OLD_PREFIX: &[u8] = b"a/";
    const OLD_HEAD: &[u8] = b"meta/audit_head";
    if db.scan_prefix(OLD_PREFIX, 1)?.is_empty() {
        if db.contains(OLD_HEAD)? {
            db.write(|txn| {
                txn.delete(OLD_HEAD.to_vec());
                Ok::<_, StoreError>(())
            })
            .await?;
        }
        return Ok(0);
    }
    // Check the whole chain before changing anything.
    let mut verifier: Option<liaison_types::audit::ChainVerifier> = None;
    let mut converted = 0u64;
    let mut next = OLD_PREFIX.to_vec();
    let end = keys::prefix_end(OLD_PREFIX);
    loop {
        let runs = db.scan(&next, &end, 64)?;
        let Some((last, _)) = runs.last() else {
            break;
        };
        next = last.clone();
        next.push(0);
        for (k, v) in &runs {
            let records =
                liaison_types::audit::decode_run(v).map_err(|problem| StoreError::Corrupt {
                    key: format!("a/{}", keys::seq_of(k).unwrap_or_default()),
                    problem,
                })?;
            for r in &records {
                let v = verifier
                    .get_or_insert_with(|| liaison_types::audit::ChainVerifier::starting_after(r));
                v.push(r);
            }
        }
    }
    if let Some(v) = verifier {
        let report = v.finish();
        if let Some((seq, problem)) = report.first_error {
            return Err(StoreError::Corrupt {
                key: format!("a/{seq}"),
                problem: format!(
                    "the audit log of an earlier version does not verify at record {seq} ({problem}), so it is not converted; restore the store from a backup"
                ),
            });
        }
    }
    loop {
        let runs = db.scan_prefix(OLD_PREFIX, 64)?;
        if runs.is_empty() {
            break;
        }
        let n = db
            .write(move |txn| {
                let mut n = 0u64;
                let head = read_head(txn)?;
                let mut expected = head.frontier.size() + 1;
                for (k, v) in runs {
                    let records = liaison_types::audit::decode_run(&v).map_err(|problem| {
                        StoreError::Corrupt {
                            key: format!("a/{}", keys::seq_of(&k).unwrap_or_default()),
                            problem,
                        }
                    })?;
                    for r in records {
                        if r.seq != expected {
                            return Err(StoreError::Corrupt {
                                key: format!("a/{}", r.seq),
                                problem: format!(
                                    "record {} follows position {}",
                                    r.seq,
                                    expected - 1
                                ),
                            });
                        }
                        append_audit(txn, r)?;
                        expected += 1;
                        n += 1;
                    }
                    txn.delete(k);
                }
                Ok::<_, StoreError>(n)
            })
            .await?;
        converted += n;
    }
    db.write(|txn| {
        txn.delete(OLD_HEAD.to_vec());
        Ok::<_, StoreError>(())
    })
    .await?;
    Ok(converted)
}

/// A fixed signing key, for tests.
#[cfg(test)]
pub(crate) fn test_signer() -> liaison_tlog::LogSigner {
    let (skey, _) = liaison_tlog::note::key_pair(
        "liaison.test/audit",
        liaison_tlog::note::LOG_KEY_TYPE,
        [1; 32],
    )
    .expect("a valid name");
    liaison_tlog::LogSigner::from_text(&skey).expect("a key just made")
}

#[cfg(test)]
mod tests {
    use super::*;
    use liaison_tlog::tree::MemoryTree;
    use liaison_types::audit::Event as AuditEvent;

    fn record(reason: &str) -> pb::AuditRecord {
        pb::AuditRecord {
            event: AuditEvent::Policy.into(),
            reason: reason.into(),
            at_ms: 1,
            ..Default::default()
        }
    }

    async fn write(db: &Db, counts: &[usize], reason_len: usize) {
        for &n in counts {
            db.write(move |txn| {
                for _ in 0..n {
                    append_audit(txn, record(&"r".repeat(reason_len)))?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        }
    }

    /// The same leaves in memory, for an independent root and proofs.
    fn mirror(db: &Db) -> MemoryTree {
        let mut t = MemoryTree::new();
        for r in audit_after(db, 0, u64::MAX, usize::MAX).unwrap() {
            t.push(&r.leaf);
        }
        t
    }

    #[tokio::test]
    async fn the_stored_tree_is_the_rfc_6962_tree_of_the_leaves_at_every_size() {
        let db = Db::in_memory();
        // Transactions of several sizes, some runs split at 16 KiB.
        write(&db, &[1, 3, 1, 40, 2, 7], 600).await;
        let n = log_end(&db).unwrap();
        assert_eq!(n, 54);
        let t = mirror(&db);
        assert_eq!(t.size(), n);
        let stored = StoredHashes::new(&db);
        for size in 1..=n {
            let root = tree::root(size, &stored).unwrap();
            let small = {
                let mut s = MemoryTree::new();
                for r in audit_after(&db, 0, size, usize::MAX).unwrap() {
                    s.push(&r.leaf);
                }
                s
            };
            assert_eq!(root, small.root(), "size {size}");
            for leaf in [0, size / 2, size - 1] {
                let p = tree::inclusion_proof(leaf, size, &stored).unwrap();
                assert_eq!(p, tree::inclusion_proof(leaf, size, &t).unwrap());
            }
            let p = tree::consistency_proof(size / 2, size, &stored).unwrap();
            assert_eq!(p, tree::consistency_proof(size / 2, size, &t).unwrap());
        }
        assert_eq!(&read_head(&db).unwrap().frontier, t.frontier());
        let check = check_log(&db, n, &[]).unwrap();
        assert_eq!(check.first_error, None);
        assert_eq!(check.root, t.root());
        // Leaf hashes for moving a frontier along.
        let hashes = leaf_hashes(&db, 10, 30).unwrap();
        assert_eq!(hashes.len(), 20);
        assert_eq!(
            hashes[0],
            tree::leaf_hash(&audit_after(&db, 10, 11, 1).unwrap()[0].leaf)
        );
    }

    #[tokio::test]
    async fn a_log_rewritten_after_a_witness_cosigned_it_fails_the_check() {
        let db = Db::in_memory();
        write(&db, &[4, 4], 100).await;
        let at = |size: u64| tree::root(size, &StoredHashes::new(&db)).unwrap();
        let kept = |size: u64, root: Hash| super::super::KeptCosignature {
            body: liaison_types::BodyId::parse("bravo").unwrap(),
            size,
            root: root.0,
            line: b"- bravo ...\n".to_vec(),
        };
        // A cosignature of the tree as it is: the check passes.
        let honest = [kept(5, at(5))];
        assert_eq!(check_log(&db, 8, &honest).unwrap().first_error, None);
        // One of another tree of that size: the tree was rewritten (every
        // stored hash agrees with the leaves, so only the witness shows it).
        let other = [kept(3, at(5))];
        let (seq, problem) = check_log(&db, 8, &other).unwrap().first_error.unwrap();
        assert_eq!(seq, 3, "{problem}");
        assert!(problem.contains("not the one bravo cosigned"), "{problem}");
        // A cosignature beyond the range checked is not judged.
        assert_eq!(check_log(&db, 2, &other).unwrap().first_error, None);
    }

    #[tokio::test]
    async fn records_read_back_from_any_position_with_their_leaf_bytes() {
        let db = Db::in_memory();
        write(&db, &[5, 1, 30, 2], 900).await;
        let all = audit_after(&db, 0, u64::MAX, usize::MAX).unwrap();
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=38).collect::<Vec<_>>()
        );
        for r in &all {
            let mut plain = r.clone();
            plain.leaf.clear();
            assert_eq!(plain.encode_to_vec(), r.leaf);
        }
        for after in [0, 4, 5, 6, 20, 37, 38] {
            for limit in [1, 3, 100] {
                let got: Vec<u64> = audit_after(&db, after, 36, limit)
                    .unwrap()
                    .iter()
                    .map(|r| r.seq)
                    .collect();
                let want: Vec<u64> = (after + 1..=36).take(limit).collect();
                assert_eq!(got, want, "after {after} limit {limit}");
            }
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_or_a_deleted_run_is_found_at_its_position() {
        let db = Db::in_memory();
        write(&db, &[3, 3, 3], 10).await;
        // Flip one byte inside the leaf of position 5 (run l/4).
        let key = run_key(4);
        let mut v = db.get(&key).unwrap().unwrap();
        let at = v.iter().position(|&b| b == b'r').unwrap();
        v[at] = b's';
        db.write(move |txn| {
            txn.put(key, v);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let check = check_log(&db, 9, &[]).unwrap();
        let (seq, problem) = check.first_error.unwrap();
        assert_eq!(seq, 4, "{problem}");
        assert!(problem.contains("tree hashes"), "{problem}");
        // A deleted run is a missing position.
        db.write(|txn| {
            txn.delete(run_key(7));
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let db2 = Db::in_memory();
        write(&db2, &[3, 3, 3], 10).await;
        db2.write(|txn| {
            txn.delete(run_key(4));
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let (seq, problem) = check_log(&db2, 9, &[]).unwrap().first_error.unwrap();
        assert_eq!(seq, 4, "{problem}");
        assert!(problem.contains("missing"), "{problem}");
    }

    #[tokio::test]
    async fn a_chained_log_of_an_earlier_version_is_converted_keeping_positions() {
        let db = Db::in_memory();
        // Write an earlier version's chain: three runs.
        let mut chain = liaison_types::audit::ChainBuilder::default();
        let mut runs = Vec::new();
        for n in [2usize, 1, 3] {
            let mut run = Vec::new();
            let mut first = 0;
            for _ in 0..n {
                let r = chain.next(record("old"));
                if first == 0 {
                    first = r.seq;
                }
                liaison_types::audit::extend_run(&mut run, &r);
            }
            runs.push((first, run));
        }
        db.write(move |txn| {
            for (first, run) in runs {
                txn.put(keys::seq_key(b"a/", first), run);
            }
            txn.put(b"meta/audit_head".to_vec(), b"whatever".to_vec());
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert_eq!(convert_chain(&db).await.unwrap(), 6);
        assert!(db.scan_prefix(b"a/", 10).unwrap().is_empty());
        assert!(!db.contains(b"meta/audit_head").unwrap());
        let all = audit_after(&db, 0, u64::MAX, 100).unwrap();
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|r| r.reason == "old" && r.hash.is_empty()));
        assert_eq!(check_log(&db, 6, &[]).unwrap().first_error, None);
        // Converting again does nothing.
        assert_eq!(convert_chain(&db).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_broken_chain_of_an_earlier_version_is_not_converted() {
        let db = Db::in_memory();
        let mut chain = liaison_types::audit::ChainBuilder::default();
        let mut run = Vec::new();
        for i in 0..3 {
            let mut r = chain.next(record("old"));
            if i == 1 {
                r.reason = "rewritten".into();
            }
            liaison_types::audit::extend_run(&mut run, &r);
        }
        db.write(move |txn| {
            txn.put(keys::seq_key(b"a/", 1), run);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let e = convert_chain(&db).await.unwrap_err().to_string();
        assert!(e.contains("record 2") && e.contains("not converted"), "{e}");
        assert_eq!(db.scan_prefix(b"a/", 10).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_head_is_named() {
        let head = LogHead {
            run_start: 1,
            frontier: {
                let mut f = Frontier::new();
                f.append(tree::leaf_hash(b"a"));
                f
            },
        };
        assert_eq!(LogHead::decode(&head.encode()).unwrap(), head);
        for bad in [&b"short"[..], &head.encode()[..20]] {
            let e = LogHead::decode(bad).unwrap_err().to_string();
            assert!(e.contains("meta/log_head"), "{e}");
        }
    }
}
