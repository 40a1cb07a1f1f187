//! Plans and their deconfliction, the pure parts (issue 10): no I/O, no
//! clock, no policy.
//!
//! - [`target`]: target identifiers (travel documents, vessels, phones,
//!   plates, wallets, companies) normalised per type at the node and sent
//!   to the hub only as keyed hashes (HMAC-SHA-256 under the federation's
//!   deconfliction key, which only nodes hold), so that the hub matches
//!   hashes and never sees an identifier.
//! - [`index`]: the active plans and the overlaps of a new or updated plan
//!   with those of other bodies: the time windows intersect, and the places
//!   (regions or countries) intersect, and a crime area or a target is
//!   shared. Candidates come from hash indexes on (place, crime area) and on
//!   targets, never from a scan of every plan.
#![forbid(unsafe_code)]

pub mod bench;
pub mod index;
pub mod target;

pub use index::{
    overlap, Index, Overlap, OverlapKind, Plan, PlanKind, MAX_CRIME_AREAS, MAX_PLACES,
};
pub use target::{DeconflictionKey, ReferenceKey, TargetHash, TargetKind};

/// Why a plan or a target identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A target identifier that is not one of its kind.
    #[error("{kind}: {problem}")]
    Target {
        /// The kind it was given as.
        kind: &'static str,
        /// What is wrong, for the officer.
        problem: String,
    },
    /// A plan whose fields do not make a plan.
    #[error("plan {field}: {problem}")]
    Plan {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A deconfliction key that is not 32 bytes or more.
    #[error("the deconfliction key is {0} bytes; it must be at least 32")]
    ShortKey(usize),
}

impl PlanError {
    /// The field of a plan message to change for a plan the index cannot
    /// hold: its body's window, its labels' crime areas, or its places
    /// (labels and body regions, labels countries); `targets` otherwise.
    pub fn message_field(&self) -> &'static str {
        match self {
            Self::Plan {
                field: "window", ..
            } => "body.window",
            Self::Plan {
                field: "crime_areas",
                ..
            } => "labels.crime_areas",
            Self::Plan { .. } => "labels.regions",
            Self::Target { .. } | Self::ShortKey(_) => "targets",
        }
    }
}
