//! Any labels (decoded from bytes) under the shipped governance: if they
//! validate, the message check and the routing decision answer without
//! panicking, with exactly one decision per body but the origin, and
//! `route` summarises `decide`.
#![no_main]

use std::sync::OnceLock;

use liaison_policy::Governance;
use liaison_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn governance() -> &'static Governance {
    static GOV: OnceLock<Governance> = OnceLock::new();
    GOV.get_or_init(|| {
        Governance::from_toml(
            liaison_policy::SHIPPED_FEDERATION_SOURCE,
            liaison_policy::SHIPPED_FEDERATION_TOML,
        )
        .expect("the shipped governance parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = pb::Labels::decode(data) else {
        return;
    };
    let Ok(labels) = liaison_types::Labels::try_from(raw) else {
        return;
    };
    let gov = governance();
    let now = labels.created_at_ms.saturating_add(1000);
    let decisions = liaison_policy::decide(gov, &labels, now);
    let origin_known = gov.body(&labels.origin).is_some();
    if origin_known {
        assert_eq!(decisions.len(), gov.bodies().count() - 1);
    }
    assert!(decisions.iter().all(|d| d.recipient != labels.origin));
    let routing = liaison_policy::route(gov, &labels, now);
    let delivered = |ds: &[liaison_policy::Decision]| {
        ds.iter()
            .filter(|d| d.outcome == liaison_policy::Outcome::Deliver)
            .map(|d| d.recipient.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(delivered(&routing.decisions), delivered(&decisions));
});
