//! Fault suites against a real federation: hub and nodes as child
//! processes on loopback, killed, restarted and checked from the outside.
//!
//! - [`crash`]: SIGKILL of the hub and of nodes under load, with a
//!   checker ([`check`]) of the whole history: acknowledged messages
//!   lost, duplicates, deliveries the policy withheld, order per (sender,
//!   recipient), the audit log, and the time to recover after each kill.
//!   `liaison crash-test` runs it.

pub mod check;
pub mod crash;

/// Why a suite could not run to its end (what it found is in its report,
/// not here).
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The federation could not start, restart or stop.
    #[error(transparent)]
    Sandbox(#[from] liaison_federation::SandboxError),
    /// The suite's governance.
    #[error(transparent)]
    Policy(#[from] liaison_policy::PolicyError),
    /// A store read at the end.
    #[error(transparent)]
    Store(#[from] liaison_store::StoreError),
    /// A call the suite needed failed.
    #[error("a call failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// Something the suite sets up.
    #[error("{0}")]
    Setup(String),
    /// The federation did not recover in time: a finding in itself.
    #[error("{0}")]
    Timeout(String),
}
