//! Plain data for Liaison: classifications, kinds, labels, envelopes and the
//! caller identities taken from certificates. No I/O happens here.
//!
//! Every value that arrives over the wire is converted with `TryFrom`, which
//! validates it and names the offending field in a [`ValidationError`].
#![forbid(unsafe_code)]

pub mod audit;
mod envelope;
mod identity;
mod label;
pub mod text;
mod time;

pub use envelope::{
    new_message_id, normalise_message_id, uuid_field, DecisionRecord, Envelope, Labels, PlanAction,
    PlanLabels, TypedBody, UnaddressedRecord, MAX_BODY_BYTES,
};
pub use identity::{Identity, IdentityError, Role};
pub use label::{
    BodyId, Classification, CrimeArea, Grading, HandlingCode, Kind, Priority, Tlp, CRIME_AREAS,
};
pub use time::{now_ms, rfc3339};

/// A field of an incoming message is missing, malformed or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// Dotted path of the field, for example `labels.crime_areas[2]`.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub problem: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A parse error of configuration text, prefixed with its line and column
/// when the parser gave a byte span.
pub fn located(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    match span {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {message}")
        }
        None => message.to_owned(),
    }
}

/// The 1-based line and column of byte `offset` in `text`, for error messages
/// that point into configuration files.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}
