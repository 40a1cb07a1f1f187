//! Certificates and mutual TLS for Liaison.
//!
//! Every Liaison connection is mutual TLS 1.3, and a party's identity is the
//! single `spiffe://<federation>/org/<body>/<role>/<name>` URI SAN of its
//! certificate, verified against the federation CA. This crate holds all of
//! that in one place:
//!
//! - [`generate_dev_pki`] / [`ensure_dev_pki`] write a dev PKI with rcgen;
//!   [`CertificateAuthority`] issues certificates (tests mint odd ones).
//! - [`TlsFiles`] and [`TlsMaterial`] load certificates and keys;
//!   [`server_config`] and [`client_config`] build the rustls configurations.
//! - [`tls_incoming`] feeds a tonic server established TLS connections,
//!   handshaking off the accept loop.
//! - [`caller`], [`authorize`] and [`caller_from_extensions`] give servers
//!   the caller's identity and refuse roles an API is not open to.
//! - [`connect`] and [`lazy_channel`] give clients channels that check the
//!   server's identity too.
#![forbid(unsafe_code)]

mod ca;
mod client;
mod config;
mod dev;
mod error;
mod identity;
mod incoming;
mod reload;
mod server;
mod usage;

pub use ca::{serials_of_crl, CertificateAuthority, IssuedCert};
pub use client::{connect, lazy_channel, lazy_channel_reloading};
pub use config::{
    client_config, server_config, server_config_with_crls, Crls, TlsFiles, TlsMaterial, SERVER_NAME,
};
pub use dev::{
    ensure_dev_pki, generate_dev_pki, log_origin, rotate_dev_pki, witness_name, DevPkiSpec,
    Rotated, Rotation, CA_CERT_FILE, CA_KEY_FILE, DECONFLICTION_KEY_FILE, DEV_ADMINS, DEV_AUDITORS,
    DEV_OFFICERS, DEV_OVERSIGHT, LOG_KEY_FILE, LOG_VKEY_FILE, WITNESSES_FILE, WITNESS_KEY_FILE,
    WITNESS_VKEY_FILE,
};
pub use error::PkiError;
pub use identity::{authorize, caller, caller_from_extensions, identity_from_der};
pub use incoming::{
    tls_incoming, tls_incoming_with, AcceptOptions, ConfigSource, HandshakeFailure,
    HandshakeFailures, ServerTlsStream, LOGS_PER_SECOND,
};
pub use reload::{
    cert_expires, warn_if_expiring, watch_files, LoadedTls, EXPIRY_CHECK_EVERY, EXPIRY_WARNING,
    TLS_CHECK_EVERY,
};
pub use rustls::{ClientConfig, ServerConfig};
pub use server::{
    drain_within, oversize_response_status, oversize_status, Oversize, OversizeLayer, ServerLimits,
    MAX_RESPONSE_BYTES,
};
