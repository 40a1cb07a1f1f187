//! The Liaison gRPC API, generated at build time from `proto/liaison/v1`.
//!
//! Generated code, and with the `services` feature the one table that says
//! what each gRPC status code means for a caller ([`status`]). Conversions to
//! the domain types are in `liaison-types`. Without `services` the crate is
//! the prost messages only: the core crates depend on it that way.
#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// Version 1 of the API.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/liaison.v1.rs"));

    /// Every file of `proto/liaison/v1` as an encoded
    /// `google.protobuf.FileDescriptorSet`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/liaison_descriptor.bin"));
}

#[cfg(feature = "services")]
pub mod status;
