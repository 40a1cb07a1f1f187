//! Integration tests of `liaison_pki`: one binary, a module per topic.

mod dev_pki;
mod grpc;
mod identity;
mod limits;
mod revocation;
mod support;
mod tls;
