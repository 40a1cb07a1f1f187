//! The Merkle tree: hashing, appending, roots and proofs.
//!
//! A log of `n` leaves is stored as the hashes of its *complete* subtrees,
//! numbered densely in the order appends create them (Crosby and Wallach's
//! ordering, as Go's `sumdb/tlog` and the C2SP tiles use): appending leaf
//! `n` stores its leaf hash at [`stored_hash_index`]`(0, n)` and then one
//! hash for every subtree that leaf completes, at the following indexes. So
//! the hashes a batch of appends creates are one contiguous range, which the
//! hub stores beside the leaves in the same value.
//!
//! A writer need not read anything to append: [`Frontier`] keeps the roots
//! of the complete subtrees along the right edge (one per bit set in the
//! size), which is all the next append needs, and gives the root hash.

/// The error a [`HashReader`] returns.
pub use tlog_tiles::Error as ReadError;
/// A tile of the C2SP tlog-tiles layout.
pub use tlog_tiles::Tile;
pub use tlog_tiles::{
    split_stored_hash_index, stored_hash_count, stored_hash_index, Hash, HashReader, EMPTY_HASH,
    HASH_SIZE,
};

use crate::TlogError;

/// The RFC 6962 hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    tlog_tiles::record_hash(data)
}

/// The RFC 6962 hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: Hash, right: Hash) -> Hash {
    tlog_tiles::node_hash(left, right)
}

/// The index of the leaf whose append stored the hash at stored index
/// `index` (the last leaf of that hash's subtree).
pub fn leaf_storing(index: u64) -> u64 {
    let (level, n) = split_stored_hash_index(index);
    ((n + 1) << level) - 1
}

/// The right edge of a tree: its size and the roots of its complete
/// subtrees, largest (leftmost) first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash (RFC 6962's MTH; the hash of the empty string
    /// for the empty tree).
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(&last) = hashes.next() else {
            return EMPTY_HASH;
        };
        hashes.fold(last, |right, &left| node_hash(left, right))
    }

    /// Appends a leaf by its hash; returns the hashes to store for it, in
    /// stored-index order from [`stored_hash_index`]`(0, old size)`: the
    /// leaf hash, then the root of each subtree it completes.
    pub fn append(&mut self, leaf: Hash) -> Vec<Hash> {
        let mut stored = vec![leaf];
        let mut hash = leaf;
        let mut n = self.size;
        while n & 1 == 1 {
            // A bit set in the size is a complete subtree on the right edge;
            // the new leaf completes its sibling, so they merge.
            let Some(left) = self.hashes.pop() else {
                break;
            };
            hash = node_hash(left, hash);
            stored.push(hash);
            n >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
        stored
    }

    /// The frontier of a tree of `size` leaves, read from its stored hashes.
    pub fn read(size: u64, reader: &impl HashReader) -> Result<Self, TlogError> {
        let indexes = frontier_indexes(size);
        let hashes = reader
            .read_hashes(&indexes)
            .map_err(|e| TlogError::Read(e.to_string()))?;
        if hashes.len() != indexes.len() {
            return Err(TlogError::Read(format!(
                "asked for {} hashes, got {}",
                indexes.len(),
                hashes.len()
            )));
        }
        Ok(Self { size, hashes })
    }

    /// As stored: the size (8 bytes, big-endian), then the hashes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.hashes.len() * HASH_SIZE);
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(&h.0);
        }
        out
    }

    /// Reads [`Frontier::encode`]'s bytes back, refusing any whose count of
    /// hashes does not match the size.
    pub fn decode(bytes: &[u8]) -> Result<Self, TlogError> {
        let (size, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| TlogError::malformed("frontier", "shorter than its size"))?;
        let size = u64::from_be_bytes(*size);
        let want = size.count_ones() as usize;
        if rest.len() != want * HASH_SIZE {
            return Err(TlogError::malformed(
                "frontier",
                format!(
                    "a tree of {size} leaves has {want} subtree roots, not {} bytes of them",
                    rest.len()
                ),
            ));
        }
        let hashes = rest
            .chunks_exact(HASH_SIZE)
            .map(|c| {
                let mut h = [0; HASH_SIZE];
                h.copy_from_slice(c);
                Hash(h)
            })
            .collect();
        Ok(Self { size, hashes })
    }
}

/// The stored indexes of the frontier of a tree of `size` leaves, largest
/// subtree first.
fn frontier_indexes(size: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut start = 0u64;
    for level in (0..64u8).rev() {
        if size & (1 << level) != 0 {
            out.push(stored_hash_index(level, start >> level));
            start += 1 << level;
        }
    }
    out
}

/// The root hash of the tree's first `size` leaves.
pub fn root(size: u64, reader: &impl HashReader) -> Result<Hash, TlogError> {
    tlog_tiles::tree_hash(size, reader).map_err(|e| TlogError::Read(e.to_string()))
}

/// The inclusion proof (RFC 9162 2.1.3) of leaf `index` in the tree of
/// `size` leaves.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    reader: &impl HashReader,
) -> Result<Vec<Hash>, TlogError> {
    if index >= size {
        return Err(TlogError::OutOfRange {
            problem: format!("a tree of {size} leaves has no leaf {index}"),
        });
    }
    tlog_tiles::prove_record(size, index, reader).map_err(|e| TlogError::Read(e.to_string()))
}

/// The consistency proof (RFC 9162 2.1.4) that the tree of `old` leaves is
/// a prefix of the tree of `new` leaves.
pub fn consistency_proof(
    old: u64,
    new: u64,
    reader: &impl HashReader,
) -> Result<Vec<Hash>, TlogError> {
    if old > new {
        return Err(TlogError::OutOfRange {
            problem: format!("a tree of {old} leaves cannot be a prefix of one of {new}"),
        });
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    tlog_tiles::prove_tree(new, old, reader).map_err(|e| TlogError::Read(e.to_string()))
}

/// Checks that `proof` shows the leaf with hash `leaf` at `index` in the
/// tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    proof: &[Hash],
    index: u64,
    size: u64,
    leaf: Hash,
    root: Hash,
) -> Result<(), TlogError> {
    let bad = |problem: String| TlogError::BadProof {
        what: "inclusion",
        problem,
    };
    if index >= size {
        return Err(bad(format!("a tree of {size} leaves has no leaf {index}")));
    }
    if proof.len() > 64 {
        return Err(bad(format!("{} hashes is too long a path", proof.len())));
    }
    tlog_tiles::check_record(&proof.to_vec(), size, root, index, leaf).map_err(|e| {
        bad(format!(
            "leaf {index} does not lead to the root of the tree of {size} leaves ({e})"
        ))
    })
}

/// Checks that `proof` shows the tree of `old` leaves with root `old_root`
/// to be a prefix of the tree of `new` leaves with root `new_root`.
pub fn verify_consistency(
    proof: &[Hash],
    old: u64,
    old_root: Hash,
    new: u64,
    new_root: Hash,
) -> Result<(), TlogError> {
    let bad = |problem: String| TlogError::BadProof {
        what: "consistency",
        problem,
    };
    if old > new {
        return Err(bad(format!(
            "a tree of {old} leaves cannot be a prefix of one of {new}"
        )));
    }
    if old == 0 || old == new {
        if !proof.is_empty() {
            return Err(bad(format!(
                "the proof from {old} to {new} leaves must be empty, not {} hashes",
                proof.len()
            )));
        }
        if old == new && old_root != new_root {
            return Err(bad(format!(
                "two different roots for one tree of {new} leaves"
            )));
        }
        return Ok(());
    }
    if proof.len() > 128 {
        return Err(bad(format!("{} hashes is too long a proof", proof.len())));
    }
    tlog_tiles::check_tree(&proof.to_vec(), new, new_root, old, old_root).map_err(|e| {
        bad(format!(
            "the tree of {old} leaves is not a prefix of the tree of {new} ({e})"
        ))
    })
}

/// Every stored hash of a log, in memory: for tests, and for the offline
/// verification of an export.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    frontier: Frontier,
    stored: Vec<Hash>,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf by its data.
    pub fn push(&mut self, data: &[u8]) {
        self.push_hash(leaf_hash(data));
    }

    /// Appends a leaf by its hash.
    pub fn push_hash(&mut self, leaf: Hash) {
        let new = self.frontier.append(leaf);
        self.stored.extend(new);
    }

    /// How many leaves it has.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Its root hash.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Its right edge.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Every hash it stores, in stored-index order.
    pub fn stored(&self) -> &[Hash] {
        &self.stored
    }
}

impl HashReader for MemoryTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.stored.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(hex_text: &str) -> Hash {
        let mut out = [0; HASH_SIZE];
        out.copy_from_slice(&hex::decode(hex_text).unwrap());
        Hash(out)
    }

    /// The public RFC 6962 test vectors (as the certificate-transparency and
    /// transparency-dev projects publish them), kept as this project's own
    /// data in `testdata/rfc6962.json`.
    struct Vectors {
        leaves: Vec<Vec<u8>>,
        roots: Vec<Hash>,
        inclusion: Vec<(u64, u64, Vec<Hash>)>,
        consistency: Vec<(u64, u64, Vec<Hash>)>,
    }

    fn vectors() -> Vectors {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/rfc6962.json")).unwrap();
        let hashes = |a: &serde_json::Value| -> Vec<Hash> {
            a.as_array()
                .unwrap()
                .iter()
                .map(|x| h(x.as_str().unwrap()))
                .collect()
        };
        let proofs = |name: &str, a: &str, b: &str| -> Vec<(u64, u64, Vec<Hash>)> {
            v[name]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[a].as_u64().unwrap(),
                        p[b].as_u64().unwrap(),
                        hashes(&p["proof"]),
                    )
                })
                .collect()
        };
        Vectors {
            leaves: v["leaves"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| hex::decode(x.as_str().unwrap()).unwrap())
                .collect(),
            roots: hashes(&v["roots"]),
            inclusion: proofs("inclusion", "leaf_index", "tree_size"),
            consistency: proofs("consistency", "old_size", "new_size"),
        }
    }

    fn tree_of(leaves: &[Vec<u8>]) -> MemoryTree {
        let mut t = MemoryTree::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    #[test]
    fn the_empty_tree_and_the_leaf_and_node_hashes_are_rfc_6962s() {
        assert_eq!(
            Frontier::new().root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        // RFC 6962's first test leaf is the empty string.
        assert_eq!(
            leaf_hash(b""),
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
        );
    }

    #[test]
    fn every_root_of_the_test_vectors_is_computed_by_appending_and_by_reading() {
        let v = vectors();
        for size in 1..=v.leaves.len() {
            let t = tree_of(&v.leaves[..size]);
            assert_eq!(t.root(), v.roots[size - 1], "size {size}");
            assert_eq!(root(size as u64, &t).unwrap(), v.roots[size - 1]);
            // The frontier read back from the stored hashes is the one kept.
            assert_eq!(&Frontier::read(size as u64, &t).unwrap(), t.frontier());
        }
    }

    #[test]
    fn the_test_vectors_proofs_are_generated_and_verified() {
        let v = vectors();
        let t = tree_of(&v.leaves);
        for (leaf, size, proof) in &v.inclusion {
            // The vectors number leaves from 1.
            let index = leaf - 1;
            let small = tree_of(&v.leaves[..*size as usize]);
            assert_eq!(
                &inclusion_proof(index, *size, &small).unwrap(),
                proof,
                "{leaf} in {size}"
            );
            assert_eq!(&inclusion_proof(index, *size, &t).unwrap(), proof);
            let lh = leaf_hash(&v.leaves[index as usize]);
            verify_inclusion(proof, index, *size, lh, v.roots[*size as usize - 1]).unwrap();
        }
        for (old, new, proof) in &v.consistency {
            assert_eq!(
                &consistency_proof(*old, *new, &t).unwrap(),
                proof,
                "{old} in {new}"
            );
            verify_consistency(
                proof,
                *old,
                v.roots[*old as usize - 1],
                *new,
                v.roots[*new as usize - 1],
            )
            .unwrap();
        }
    }

    #[test]
    fn the_stored_hashes_are_those_of_go_tlogs_numbering() {
        let v = vectors();
        let mut t = MemoryTree::new();
        for (n, leaf) in v.leaves.iter().enumerate() {
            let before = t.stored().len() as u64;
            assert_eq!(before, stored_hash_index(0, n as u64));
            t.push(leaf);
            let expected = tlog_tiles::stored_hashes(n as u64, leaf, &t).unwrap();
            assert_eq!(&t.stored()[before as usize..], &expected[..]);
            assert_eq!(t.stored().len() as u64, stored_hash_count(n as u64 + 1));
            for i in before..t.stored().len() as u64 {
                assert_eq!(leaf_storing(i), n as u64, "stored index {i}");
            }
        }
    }

    #[test]
    fn a_wrong_or_damaged_proof_is_refused_for_every_test_vector() {
        let v = vectors();
        for (leaf, size, proof) in &v.inclusion {
            let index = leaf - 1;
            let lh = leaf_hash(&v.leaves[index as usize]);
            let r = v.roots[*size as usize - 1];
            let mut wrong: Vec<(String, Vec<Hash>, u64, u64, Hash, Hash)> = vec![
                ("index + 1".into(), proof.clone(), index + 1, *size, lh, r),
                ("size * 2".into(), proof.clone(), index, size * 2, lh, r),
                (
                    "other leaf".into(),
                    proof.clone(),
                    index,
                    *size,
                    leaf_hash(b"x"),
                    r,
                ),
                (
                    "other root".into(),
                    proof.clone(),
                    index,
                    *size,
                    lh,
                    EMPTY_HASH,
                ),
            ];
            let mut longer = proof.clone();
            longer.push(r);
            wrong.push(("trailing hash".into(), longer, index, *size, lh, r));
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i].0[0] ^= 8;
                wrong.push((format!("bit flipped in {i}"), p, index, *size, lh, r));
            }
            if !proof.is_empty() {
                let p = proof[..proof.len() - 1].to_vec();
                wrong.push(("truncated".into(), p, index, *size, lh, r));
            }
            for (what, p, i, s, l, root) in wrong {
                assert!(
                    verify_inclusion(&p, i, s, l, root).is_err(),
                    "{what}: leaf {leaf} in {size}"
                );
            }
        }
        for (old, new, proof) in &v.consistency {
            let (r1, r2) = (v.roots[*old as usize - 1], v.roots[*new as usize - 1]);
            if proof.is_empty() {
                continue;
            }
            let mut wrong = vec![
                ("swapped roots", proof.clone(), *old, r2, *new, r1),
                ("empty proof", Vec::new(), *old, r1, *new, r2),
                ("old + 1", proof.clone(), old + 1, r1, *new, r2),
            ];
            let mut p = proof.clone();
            p[0].0[0] ^= 16;
            wrong.push(("bit flipped", p, *old, r1, *new, r2));
            for (what, p, o, a, n, b) in wrong {
                assert!(
                    verify_consistency(&p, o, a, n, b).is_err(),
                    "{what}: {old} in {new}"
                );
            }
        }
        // Two roots for one size are never consistent.
        let e = verify_consistency(&[], 3, v.roots[2], 3, v.roots[3]).unwrap_err();
        assert!(e.to_string().contains("two different roots"), "{e}");
    }

    #[test]
    fn a_frontier_round_trips_and_a_damaged_one_is_refused() {
        let v = vectors();
        let t = tree_of(&v.leaves[..7]);
        let bytes = t.frontier().encode();
        assert_eq!(bytes.len(), 8 + 3 * 32);
        assert_eq!(&Frontier::decode(&bytes).unwrap(), t.frontier());
        for bad in [
            &bytes[..5],
            &bytes[..bytes.len() - 1],
            &[0, 0, 0, 0, 0, 0, 0, 8][..],
        ] {
            assert!(Frontier::decode(bad).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every inclusion and consistency proof of a random tree verifies,
        /// and flipping any bit of it makes it fail.
        #[test]
        fn every_proof_verifies_and_any_flipped_bit_fails(
            leaves in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..70),
            pick in any::<(u64, u64, u64)>(),
            bit in 0usize..256,
        ) {
            let t = tree_of(&leaves);
            let n = t.size();
            let size = 1 + pick.0 % n;
            let index = pick.1 % size;
            let small = tree_of(&leaves[..size as usize]);
            let proof = inclusion_proof(index, size, &t).unwrap();
            let leaf = leaf_hash(&leaves[index as usize]);
            verify_inclusion(&proof, index, size, leaf, small.root()).unwrap();
            if !proof.is_empty() {
                let mut p = proof.clone();
                let k = bit / 8 % p.len();
                p[k].0[bit % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_inclusion(&p, index, size, leaf, small.root()).is_err());
            }
            let mut flipped = leaf;
            flipped.0[bit % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(&proof, index, size, flipped, small.root()).is_err());

            let old = 1 + pick.2 % size;
            let older = tree_of(&leaves[..old as usize]);
            let proof = consistency_proof(old, size, &t).unwrap();
            verify_consistency(&proof, old, older.root(), size, small.root()).unwrap();
            if !proof.is_empty() {
                let mut p = proof.clone();
                let k = bit / 8 % p.len();
                p[k].0[bit % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(&p, old, older.root(), size, small.root()).is_err());
            }
            if old < size {
                let mut r = older.root();
                r.0[bit % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_consistency(&proof, old, r, size, small.root()).is_err());
            }
        }

        /// Random bytes as a proof never verify and never panic.
        #[test]
        fn garbage_proofs_are_refused_without_a_panic(
            raw in proptest::collection::vec(any::<[u8; 32]>(), 0..40),
            index in 0u64..1000, size in 0u64..1000, old in 0u64..1000,
        ) {
            let proof: Vec<Hash> = raw.into_iter().map(Hash).collect();
            let _ = verify_inclusion(&proof, index, size, EMPTY_HASH, EMPTY_HASH);
            let _ = verify_consistency(&proof, old, EMPTY_HASH, size, leaf_hash(b"x"));
        }
    }
}
