//! End-to-end tests: a real hub and real nodes on 127.0.0.1 port 0, real
//! mutual TLS, real sled stores in temporary directories, real tonic clients,
//! and child processes where a crash must be real.
#![allow(clippy::unwrap_used)]

mod common;

mod backpressure;
mod bad_input;
mod batch;
mod bench;
mod cli;
mod crash;
mod delivery;
mod durability;
mod forwarding;
mod four_eyes;
mod handling;
mod http2;
mod identity;
mod network;
mod node_log;
mod operations;
mod plans;
mod policy;
mod refusals;
mod retraction;
mod revocation;
mod routing;
mod storage;
mod suspension;
mod witness;
