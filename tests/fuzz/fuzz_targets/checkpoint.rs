//! Any bytes as a checkpoint, a signed note and a witness's cosignature
//! line, as a node's witness reads what the hub serves: refused or
//! accepted, never a panic.
#![no_main]

use std::sync::OnceLock;

use liaison_tlog::note::{Checkpoint, LogVerifier};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static LogVerifier {
    static V: OnceLock<LogVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let (_, vkey) =
            liaison_tlog::note::key_pair("liaison.fuzz/audit", 0x01, [7; 32]).expect("a key pair");
        LogVerifier::from_text(&vkey).expect("its verifier key parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Checkpoint::parse(data);
    if verifier().verify(data).is_ok() {
        let _ = verifier().cosignatures(data, &[]);
    }
});
