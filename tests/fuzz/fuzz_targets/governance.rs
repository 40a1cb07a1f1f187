//! Any text as a governance file: refused with a located error or
//! accepted; an accepted file has a version and answers for each body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match liaison_policy::Governance::from_toml("fuzz.toml", text) {
        Ok(gov) => {
            assert!(!gov.version().is_empty());
            for b in gov.bodies() {
                assert!(gov.body(&b.id).is_some());
            }
        }
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    }
});
