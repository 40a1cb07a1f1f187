//! The audit log's pure parts, as modern transparency logs build them.
//!
//! - [`tree`]: RFC 6962 / RFC 9162 Merkle hashing (leaf prefix `0x00`, node
//!   prefix `0x01`, SHA-256), the [`tree::Frontier`] a writer keeps to append
//!   without reading, the dense "stored hash" numbering of Go's
//!   `golang.org/x/mod/sumdb/tlog` (which the `tlog_tiles` crate ports), and
//!   inclusion and consistency proofs over any [`tree::HashReader`].
//! - [`note`]: the C2SP `tlog-checkpoint` text (origin, size, root), signed
//!   as a C2SP `signed-note` with Ed25519 by the hub, and cosigned by
//!   witnesses as C2SP `tlog-cosignature` v1 (timestamped Ed25519).
//!
//! Nothing here does I/O, reads a clock or draws randomness: the store
//! supplies the hashes, the caller the time and the key seeds. The hashing
//! and the proofs are `tlog_tiles`'s and the signatures `ed25519-dalek`'s
//! (through `signed_note`); this crate fixes how Liaison uses them and
//! checks them against the public test vectors.

#![forbid(unsafe_code)]

pub mod note;
pub mod tree;

pub use note::{
    Checkpoint, Cosignature, LogSigner, LogVerifier, SignedCheckpoint, WitnessSigner,
    WitnessVerifier,
};
pub use tree::{Frontier, Hash, HashReader};

/// What can go wrong with a proof, a key, a checkpoint or a note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    /// A proof that does not lead to the root it is checked against.
    #[error("the {what} proof does not verify: {problem}")]
    BadProof {
        /// "inclusion" or "consistency".
        what: &'static str,
        /// What did not match.
        problem: String,
    },
    /// A leaf or a tree size beyond the tree.
    #[error("{problem}")]
    OutOfRange {
        /// Which index or size, against which tree.
        problem: String,
    },
    /// Text or bytes that are not what they claim to be.
    #[error("malformed {what}: {problem}")]
    Malformed {
        /// A key, a checkpoint, a note, a frontier.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A signature by a known key that does not verify, or a note without
    /// the signature it needs.
    #[error("{problem}")]
    Signature {
        /// Whose signature, and what is wrong with it.
        problem: String,
    },
    /// The hashes a proof needs could not be read.
    #[error("reading the tree's hashes: {0}")]
    Read(String),
}

impl TlogError {
    pub(crate) fn malformed(what: &'static str, problem: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            problem: problem.to_string(),
        }
    }
}
