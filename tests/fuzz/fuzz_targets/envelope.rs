//! Any bytes as the protobuf messages a node or an officer sends, then the
//! envelope's validation (labels, typed body, text rules): an error is
//! fine, a panic is not. A valid envelope re-encodes and validates again
//! to the same labels.
#![no_main]

use liaison_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = pb::SubmitRequest::decode(data);
    let _ = pb::SubmitBatchRequest::decode(data);
    let _ = pb::OfficerSubmitRequest::decode(data);
    let _ = pb::StoredQueueRun::decode(data);
    if let Ok(env) = pb::Envelope::decode(data) {
        if let Ok((valid, _body)) = liaison_types::Envelope::parse(env) {
            let again = pb::Envelope::from(&valid);
            let (twice, _) = liaison_types::Envelope::parse(again)
                .expect("a valid envelope, encoded again, is still valid");
            assert_eq!(twice.labels, valid.labels);
        }
    }
});
