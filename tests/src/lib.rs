//! End-to-end tests of Liaison live in `tests/it/`, one binary with a module
//! per topic; this library is empty.
#![forbid(unsafe_code)]
