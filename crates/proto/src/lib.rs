//! The Liaison gRPC API, generated at build time from `proto/liaison/v1`.
//!
//! Nothing but generated code lives here; conversions to the domain types are
//! in `liaison-types`.
#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("liaison.v1");
}
