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

use liaison_proto::v1 as pb;
use liaison_store::merkle::{Head, MerkleLog};
use liaison_store::{keys, Db, Reader, StoreError, Txn};
use liaison_tlog::tree::{Frontier, Hash};
use prost::Message as _;

/// The audit log: runs under `l/`, the head at `meta/log_head` (see
/// [`liaison_store::merkle`]).
pub(super) const LOG: MerkleLog = MerkleLog::new(b"l/", b"meta/log_head", "audit position");

/// The key of a run, as named in errors.
pub(super) fn run_key_name(first: u64) -> String {
    LOG.run_name(first)
}

/// The head as of `reader` (the empty tree if none).
pub(super) fn read_head(reader: &impl Reader) -> Result<Head, StoreError> {
    LOG.read_head(reader)
}

/// The last audit position written, durable or not (read at start-up, when
/// all of it is durable).
pub(super) fn log_end(db: &Db) -> Result<u64, StoreError> {
    LOG.size(db)
}

/// Appends one audit record inside a transaction as the next leaf: assigns
/// its position, stores its bytes and the tree hashes it creates, and moves
/// the head. Consecutive records of one transaction share one run; a run is
/// never extended by a later transaction.
pub fn append_audit(txn: &mut Txn<'_>, mut record: pb::AuditRecord) -> Result<u64, StoreError> {
    record.hash.clear();
    record.prev_hash.clear();
    record.leaf.clear();
    LOG.append(txn, |seq| {
        record.seq = seq;
        record.encode_to_vec()
    })
}

/// A leaf decoded as the record of position `seq`.
fn decode_leaf(seq: u64, leaf: &[u8]) -> Result<pb::AuditRecord, String> {
    let mut r = pb::AuditRecord::decode(leaf)
        .map_err(|e| format!("the leaf of position {seq} is not an audit record: {e}"))?;
    if r.seq != seq {
        return Err(format!(
            "the leaf of position {seq} says it is position {}",
            r.seq
        ));
    }
    r.leaf = leaf.to_vec();
    Ok(r)
}

/// Up to `limit` audit records with positions in `(after, upto]`, in order,
/// each with its leaf bytes.
pub(super) fn audit_after(
    db: &Db,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<pb::AuditRecord>, StoreError> {
    LOG.leaves_after(db, after, upto, limit)?
        .into_iter()
        .map(|(seq, leaf)| {
            decode_leaf(seq, &leaf).map_err(|problem| StoreError::Corrupt {
                key: run_key_name(seq),
                problem,
            })
        })
        .collect()
}

/// The tree's stored hashes, for roots and proofs up to the durable mark.
pub(super) fn stored_hashes<R: Reader>(reader: &R) -> liaison_store::merkle::StoredHashes<'_, R> {
    LOG.hashes(reader)
}

/// The leaf hashes of positions `(after, upto]`, in order, to move a
/// frontier along without reading the tree.
pub(super) fn leaf_hashes(
    reader: &impl Reader,
    after: u64,
    upto: u64,
) -> Result<Vec<Hash>, StoreError> {
    LOG.leaf_hashes(reader, after, upto)
}

/// What a full check of the stored log found.
pub type LogCheck = liaison_store::merkle::Check;

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
    let leaf_ok = |seq: u64, leaf: &[u8]| decode_leaf(seq, leaf).map(|_| ());
    LOG.check(db, upto, leaf_ok, witnessed)
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
    use liaison_tlog::tree::{self, MemoryTree};
    use liaison_types::audit::Event as AuditEvent;

    fn run_key(first: u64) -> Vec<u8> {
        keys::seq_key(b"l/", first)
    }

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
        let stored = stored_hashes(&db);
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
        let at = |size: u64| tree::root(size, &stored_hashes(&db)).unwrap();
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

    #[tokio::test]
    async fn a_damaged_head_is_named() {
        let db = Db::in_memory();
        write(&db, &[2], 10).await;
        let head = db.get(b"meta/log_head").unwrap().unwrap();
        assert_eq!(read_head(&db).unwrap().frontier.size(), 2);
        for bad in [b"short".to_vec(), head[..20].to_vec()] {
            db.write(move |t| {
                t.put(b"meta/log_head".to_vec(), bad);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
            let e = read_head(&db).unwrap_err().to_string();
            assert!(e.contains("meta/log_head"), "{e}");
        }
    }
}
