//! The one error type of this crate: a governance configuration that cannot
//! be used, with the place in the file and the key that is wrong.
//!
//! Every error is the operator's to fix (the file is theirs), so each message
//! says what was found and what would be accepted.

use std::fmt;

/// Where in a configuration file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The name the caller gave the text (usually its path).
    pub source_name: String,
    /// Line, counted from 1.
    pub line: usize,
    /// Column in characters, counted from 1, when known.
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(f, "{}:{}:{}", self.source_name, self.line, column),
            None => write!(f, "{}:{}", self.source_name, self.line),
        }
    }
}

/// A governance configuration was refused.
///
/// Displayed as `file:line:column: key: problem`, for example
/// `deploy/federation.toml:42:13: body[3].clearance: unknown variant
/// `TOP_SECRET`, expected one of ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not valid TOML.
    #[error("{location}: {key}: invalid toml: {problem}")]
    Syntax {
        /// Where the parser stopped.
        location: Location,
        /// The key being read, or `(top level)`.
        key: String,
        /// What the parser expected.
        problem: String,
    },
    /// The TOML is well formed but a key is unknown or missing, a value has
    /// the wrong type or is out of range, or two settings contradict each
    /// other (an unknown body in an agreement, a duplicate id, ...).
    #[error("{location}: {key}: {problem}")]
    Invalid {
        /// Where the offending key or value is.
        location: Location,
        /// Dotted path of the key, for example `body[3].markings."EU SECRET"`.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },
}

impl PolicyError {
    /// Where in the file the error is.
    pub fn location(&self) -> &Location {
        match self {
            Self::Syntax { location, .. } | Self::Invalid { location, .. } => location,
        }
    }

    /// The dotted key path the error is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Syntax { key, .. } | Self::Invalid { key, .. } => key,
        }
    }

    /// What is wrong and what would be right.
    pub fn problem(&self) -> &str {
        match self {
            Self::Syntax { problem, .. } | Self::Invalid { problem, .. } => problem,
        }
    }
}
