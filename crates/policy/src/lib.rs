//! The governance rules of the federation and the routing decision made from
//! them.
//!
//! This crate is pure: it reads no file, opens no socket and looks at no
//! clock. The hub (or the CLI, or a test) reads the configuration file and
//! passes its text to [`Governance::from_toml`], and passes the current time
//! to [`decide`]. Given the same text, labels and time, the decision is always
//! the same, which is what lets an auditor replay it later.
//!
//! - [`Governance`] is the validated configuration: the bodies of the
//!   federation, their clearances, mandates, accepted kinds and native
//!   markings, the originators' outbound rules, the bilateral personal-data
//!   agreements and the observer restrictions. Its [`Governance::version`] is
//!   the SHA-256 of the file text and is stamped on every audit record.
//! - [`decide`] returns one [`Decision`] per candidate recipient: deliver only
//!   if every [`Rule`] allows it (deny by default), otherwise withhold and name
//!   the first rule that refused.
//! - [`diff`] compares the decisions for one message under two governances,
//!   so that past traffic can be replayed before a change (`liaison policy
//!   diff`).
//! - [`GovernanceBuilder`] (from [`Governance::for_test`]) builds a small
//!   governance in code for tests, through the same TOML parser and
//!   validation as the shipped file.
//!
//! The shipped configuration, `deploy/federation.toml`, is embedded as
//! [`SHIPPED_FEDERATION_TOML`] so that tests and the demo can load the real
//! file without touching the file system.
#![forbid(unsafe_code)]

mod builder;
mod config;
mod decide;
mod diff;
mod error;
mod span;

pub use builder::{BodySpec, GovernanceBuilder};
pub use config::{
    Agreement, BodyPolicy, Governance, ObserverRestriction, Outbound, State, Status, WorkingGroup,
    CONFIG_VERSION,
};
pub use decide::{
    decide, explain_rules, route, summarize, Decision, Outcome, Routing, Rule, Unaddressed,
};
pub use diff::{diff, DecisionChange};
pub use error::{Location, PolicyError};

/// The text of `deploy/federation.toml`, the configuration shipped with
/// Liaison for all eleven bodies (illustrative rules, see its header).
pub const SHIPPED_FEDERATION_TOML: &str = include_str!("../../../deploy/federation.toml");

/// The name under which [`SHIPPED_FEDERATION_TOML`] reports its errors.
pub const SHIPPED_FEDERATION_SOURCE: &str = "deploy/federation.toml";
