//! Exit codes, and how errors map to them.
//!
//! | code | meaning |
//! |-----:|---------|
//! | 0 | success |
//! | 1 | any other failure (including configuration and file errors) |
//! | 2 | bad command line (wrong flags or values) |
//! | 3 | the server refused the input as invalid (`INVALID_ARGUMENT`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `FAILED_PRECONDITION`) |
//! | 4 | not allowed (`UNAUTHENTICATED`, `PERMISSION_DENIED`) |
//! | 5 | the server could not be reached or is unavailable: try again later (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, ...) |
//! | 6 | not found |
//! | 7 | a check failed: audit chain broken, or the demo found a disagreement |
//! | 8 | the server failed (`INTERNAL`, `DATA_LOSS`, `UNIMPLEMENTED`): tell its operator |
//!
//! Codes 3 to 6 and 8 come from the one table of [`liaison_proto::status`],
//! shared with the hub and the nodes.

use std::fmt;
use std::process::ExitCode;

use tonic::Code;

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What to tell the user.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Exit code for a failed check.
pub const CHECK_FAILED: u8 = 7;

impl Failure {
    /// A failed check (exit code 7).
    pub fn check(message: impl Into<String>) -> Self {
        Self {
            code: CHECK_FAILED,
            message: message.into(),
        }
    }

    /// The reader went away (a closed pipe): stop without an error.
    pub fn quiet() -> Self {
        Self {
            code: 0,
            message: String::new(),
        }
    }

    /// Whether this is [`Failure::quiet`].
    pub fn is_quiet(&self) -> bool {
        self.code == 0
    }

    /// A gRPC status from a server, with what we were doing.
    pub fn status(doing: &str, s: &tonic::Status) -> Self {
        let code = liaison_proto::status::classify(s.code()).exit_code;
        let mut message = format!("{doing}: {} ({:?})", s.message(), s.code());
        if s.code() == Code::Unavailable && s.message().is_empty() {
            message = format!("{doing}: server unavailable");
        }
        Self { code, message }
    }
}

/// The exit code for an error chain.
pub fn code_of(err: &anyhow::Error) -> ExitCode {
    if let Some(f) = err.downcast_ref::<Failure>() {
        return ExitCode::from(f.code);
    }
    if err
        .downcast_ref::<liaison_pki::PkiError>()
        .is_some_and(|e| matches!(e, liaison_pki::PkiError::Connect { .. }))
    {
        return ExitCode::from(5);
    }
    ExitCode::from(1)
}
