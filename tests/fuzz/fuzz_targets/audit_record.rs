//! Any bytes as an audit record: a stored (protobuf) leaf, and a line of an
//! auditor's JSON export. A record read from JSON reads back the same from
//! its canonical form.
#![no_main]

use liaison_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::AuditRecord::decode(data) {
        let _ = liaison_types::audit::canonical(&r);
        let _ = liaison_types::audit::record_hash(&r);
        let _ = liaison_types::audit::messages(&r).count();
    }
    if let Ok(r) = liaison_types::audit::from_json(data) {
        let canonical = liaison_types::audit::canonical(&r);
        let again = liaison_types::audit::from_json(canonical.as_bytes())
            .expect("a record's canonical form parses");
        assert_eq!(liaison_types::audit::canonical(&again), canonical);
    }
});
