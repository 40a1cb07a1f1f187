//! What a gRPC status code means for whoever receives it: one table, shared
//! by the hub, the node's link to the hub and the command-line client.
//!
//! Every status a Liaison server sends is built in its crate's one error
//! map (`HubError` / `NodeError` → `Status`) from a code of this table, and
//! every client decides from this table alone whether to try again
//! ([`Disposition::Retry`]) or to give up and tell someone
//! ([`Disposition::Final`]), and which exit code the CLI ends with.
//!
//! | code | whose fault | disposition | CLI exit |
//! |------|-------------|-------------|---------:|
//! | `INVALID_ARGUMENT`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `FAILED_PRECONDITION` | the caller's | final | 3 |
//! | `UNAUTHENTICATED`, `PERMISSION_DENIED` | the caller's | final | 4 |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED`, `ABORTED`, `UNKNOWN` | nobody's yet: the server or the network, for now | retry | 5 |
//! | `RESOURCE_EXHAUSTED` | the server's, for now (a quota, a size limit) | retry, except a request over a size limit | 5 |
//! | `NOT_FOUND` | the caller's | final | 6 |
//! | `INTERNAL`, `DATA_LOSS`, `UNIMPLEMENTED` | the server's: an operator must look | final | 8 |
//!
//! `UNKNOWN` is what tonic reports for a transport failure (a reset
//! connection, a TLS alert), so it is retried. `INTERNAL` is never retried:
//! a corrupt stored record will not heal by asking again, and a node that
//! retried it forever would hide it; the server raises an alarm instead.

use tonic::{Code, Status};

/// A message of a batch refused with `status`, named by the id it was sent
/// with (which the caller escapes and bounds: it may be what is wrong).
pub fn refused_submission(message_id: String, status: &Status) -> crate::v1::RefusedSubmission {
    crate::v1::RefusedSubmission {
        message_id,
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// Whose fault a status says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong: the caller must change it.
    Caller,
    /// The server or the network cannot serve it now.
    Transient,
    /// The server failed: an operator must look.
    Server,
}

/// What a client should do with a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later, with backoff: the same request may succeed.
    Retry,
    /// Give up: the same request will fail again.
    Final,
}

/// The meaning of one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Whose fault.
    pub fault: Fault,
    /// Retry or give up.
    pub disposition: Disposition,
    /// The `liaison` command's exit code.
    pub exit_code: u8,
}

/// Exit code: the input was refused as invalid.
pub const EXIT_INVALID: u8 = 3;
/// Exit code: not allowed.
pub const EXIT_DENIED: u8 = 4;
/// Exit code: unavailable, try again later.
pub const EXIT_UNAVAILABLE: u8 = 5;
/// Exit code: not found.
pub const EXIT_NOT_FOUND: u8 = 6;
/// Exit code: the server failed; an operator must look.
pub const EXIT_SERVER: u8 = 8;

/// The table (see the module documentation).
pub fn classify(code: Code) -> Class {
    use Disposition::{Final, Retry};
    use Fault::{Caller, Server, Transient};
    let (fault, disposition, exit_code) = match code {
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::FailedPrecondition => (Caller, Final, EXIT_INVALID),
        Code::Unauthenticated | Code::PermissionDenied => (Caller, Final, EXIT_DENIED),
        Code::NotFound => (Caller, Final, EXIT_NOT_FOUND),
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::Unknown
        | Code::ResourceExhausted => (Transient, Retry, EXIT_UNAVAILABLE),
        Code::Internal | Code::DataLoss | Code::Unimplemented => (Server, Final, EXIT_SERVER),
        // Not a refusal; here for completeness.
        Code::Ok => (Caller, Final, 0),
    };
    Class {
        fault,
        disposition,
        exit_code,
    }
}

/// What to do with `status`: as [`classify`] of its code, except that a
/// request over a size limit (`RESOURCE_EXHAUSTED` naming the limit) is
/// final, since the same request stays too big.
pub fn disposition(status: &Status) -> Disposition {
    if status.code() == Code::ResourceExhausted
        && status.message().contains("over this api's limit")
    {
        return Disposition::Final;
    }
    classify(status.code()).disposition
}

/// Whether a client should try `status`'s request again later.
pub fn is_retryable(status: &Status) -> bool {
    disposition(status) == Disposition::Retry
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    #[test]
    fn every_code_is_classified_consistently() {
        for code in ALL {
            let c = classify(code);
            // Retry exactly when nobody is at fault yet.
            assert_eq!(
                c.disposition == Disposition::Retry,
                c.fault == Fault::Transient,
                "{code:?}"
            );
            if code != Code::Ok {
                assert!(c.exit_code >= EXIT_INVALID, "{code:?}");
            }
        }
    }

    #[test]
    fn a_corrupt_record_is_never_retried() {
        assert_eq!(classify(Code::Internal).disposition, Disposition::Final);
        assert_eq!(classify(Code::Internal).exit_code, EXIT_SERVER);
        assert_eq!(classify(Code::Unavailable).disposition, Disposition::Retry);
    }

    #[test]
    fn a_request_over_a_size_limit_is_final_but_a_full_queue_is_retried() {
        let too_big = Status::resource_exhausted(
            "request of 9 bytes is over this api's limit of 8 bytes; send a smaller request",
        );
        assert!(!is_retryable(&too_big));
        assert!(is_retryable(&Status::resource_exhausted(
            "queue for bravo is full"
        )));
    }
}
