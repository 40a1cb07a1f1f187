//! The audit record's canonical form and hash chain.
//!
//! A record's hash is `sha256(prev_hash + "\n" + canonical)`, hex-encoded,
//! where `canonical` is the record as a JSON object of every field except
//! `hash`, with keys sorted and no whitespace (in Python:
//! `json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`).
//! The first record's `prev_hash` is 64 zeros. Anyone holding an export can
//! recompute the chain without trusting the hub.

use liaison_proto::v1::AuditRecord;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
/// Every kind of audit record the hub writes: the `event` field of a record
/// is one of these names, never a string made up at a call site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// The hub accepted a message from its origin's node.
    Received,
    /// One routing decision: deliver to or withhold from one body.
    Routed,
    /// A recipient's node was sent a message, withdrawal or forward request.
    Delivered,
    /// A recipient's node stored a delivery and acknowledged it.
    Acknowledged,
    /// A recipient's node could not accept a delivery and keeps it in
    /// quarantine: not delivered.
    Quarantined,
    /// The hub refused a request (a spoofed origin, a retraction by another
    /// body, a forward request it cannot grant).
    Refused,
    /// The governance changed: a reload, a refused reload, a body's state.
    Policy,
    /// An embargo ended and the message was queued for its recipient.
    Released,
    /// The message expired (under embargo, in a queue, or everywhere).
    Expired,
    /// The message's content was erased when its retention period ended.
    Erased,
    /// The originator retracted the message.
    Retraction,
    /// A retracted message was withdrawn from one recipient.
    Retracted,
    /// A recipient asked to pass the message on to another body.
    ForwardRequested,
    /// The originator refused to let the message be passed on.
    ForwardRefused,
    /// The message was passed on with the originator's consent (or waiver).
    Forwarded,
    /// The originator consented, but the rules withhold it from that body.
    ForwardWithheld,
    /// Two plans overlap (or no longer do): a deconfliction notice for one
    /// side, or the desk's record of both.
    Deconflicted,
}

impl Event {
    /// Every event, in the order of the list above.
    pub const ALL: [Event; 17] = [
        Self::Received,
        Self::Routed,
        Self::Delivered,
        Self::Acknowledged,
        Self::Quarantined,
        Self::Refused,
        Self::Policy,
        Self::Released,
        Self::Expired,
        Self::Erased,
        Self::Retraction,
        Self::Retracted,
        Self::ForwardRequested,
        Self::ForwardRefused,
        Self::Forwarded,
        Self::ForwardWithheld,
        Self::Deconflicted,
    ];

    /// The name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Routed => "routed",
            Self::Delivered => "delivered",
            Self::Acknowledged => "acknowledged",
            Self::Quarantined => "quarantined",
            Self::Refused => "refused",
            Self::Policy => "policy",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Erased => "erased",
            Self::Retraction => "retraction",
            Self::Retracted => "retracted",
            Self::ForwardRequested => "forward_requested",
            Self::ForwardRefused => "forward_refused",
            Self::Forwarded => "forwarded",
            Self::ForwardWithheld => "forward_withheld",
            Self::Deconflicted => "deconflicted",
        }
    }

    /// What it records, in words (for `--help`).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Received => "the hub accepted a message from its origin's node",
            Self::Routed => "one routing decision: deliver to or withhold from one body, with its rule",
            Self::Delivered => "a recipient's node was sent messages (one record per delivery batch and originator), a withdrawal or a forward request",
            Self::Acknowledged => "a recipient's node stored deliveries and acknowledged them (one record per acknowledgement and originator)",
            Self::Quarantined => "a recipient's node could not accept a delivery and keeps it in quarantine (not delivered)",
            Self::Refused => "the hub refused a request: a spoofed origin, a retraction by another body, a forward request it cannot grant",
            Self::Policy => "the governance changed: a reload, a refused reload, or a body's state set by an admin",
            Self::Released => "an embargo ended and the message was queued for its recipient",
            Self::Expired => "the message expired: under embargo, in a queue, or its content leaves the inboxes",
            Self::Erased => "the message's content was erased when its retention period ended",
            Self::Retraction => "the originator retracted the message",
            Self::Retracted => "a retracted message was withdrawn from one recipient",
            Self::ForwardRequested => "a recipient asked to pass the message on to another body",
            Self::ForwardRefused => "the originator refused to let the message be passed on",
            Self::Forwarded => "the message was passed on to another body with the originator's consent",
            Self::ForwardWithheld => "the originator consented, but the rules withhold the message from that body",
            Self::Deconflicted => "two plans of different bodies overlap, or no longer do: a notice for each side, and the desk's record",
        }
    }

    /// The event named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Event> for String {
    fn from(e: Event) -> Self {
        e.as_str().to_owned()
    }
}

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The record as a JSON object: every field, `at` (the time in RFC 3339)
/// beside `at_ms`, and, when the record comes from the Merkle log, its
/// `leaf_index` and `leaf` (the leaf's bytes, standard base64) in place of
/// the chain's empty `prev_hash` and `hash`.
pub fn to_json(r: &AuditRecord) -> Map<String, Value> {
    let mut m = canonical_map(r);
    m.insert("at".into(), Value::from(crate::time::rfc3339(r.at_ms)));
    if r.leaf.is_empty() {
        m.insert("hash".into(), Value::from(r.hash.clone()));
    } else {
        use base64::Engine as _;
        m.remove("prev_hash");
        m.insert("leaf_index".into(), Value::from(r.seq.saturating_sub(1)));
        m.insert(
            "leaf".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(&r.leaf)),
        );
    }
    m
}

fn canonical_map(r: &AuditRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("seq".into(), Value::from(r.seq));
    m.insert("at_ms".into(), Value::from(r.at_ms));
    m.insert("event".into(), Value::from(r.event.clone()));
    m.insert("message_id".into(), Value::from(r.message_id.clone()));
    m.insert("origin".into(), Value::from(r.origin.clone()));
    m.insert("recipient".into(), Value::from(r.recipient.clone()));
    m.insert("decision".into(), Value::from(r.decision.clone()));
    m.insert("rule".into(), Value::from(r.rule.clone()));
    m.insert("reason".into(), Value::from(r.reason.clone()));
    m.insert(
        "policy_version".into(),
        Value::from(r.policy_version.clone()),
    );
    m.insert("actor".into(), Value::from(r.actor.clone()));
    m.insert("kind".into(), Value::from(r.kind.clone()));
    m.insert(
        "classification".into(),
        Value::from(r.classification.clone()),
    );
    m.insert("queue_seq".into(), Value::from(r.queue_seq));
    m.insert("prev_hash".into(), Value::from(r.prev_hash.clone()));
    m.insert("labels".into(), Value::from(r.labels.clone()));
    // Absent when empty, so that records written before batch records
    // existed keep their hash.
    if !r.items.is_empty() {
        let items = r
            .items
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("message_id".into(), Value::from(i.message_id.clone()));
                o.insert("queue_seq".into(), Value::from(i.queue_seq));
                o.insert("kind".into(), Value::from(i.kind.clone()));
                o.insert(
                    "classification".into(),
                    Value::from(i.classification.clone()),
                );
                Value::Object(o)
            })
            .collect();
        m.insert("items".into(), Value::Array(items));
    }
    m
}

/// The messages a record is about: its `message_id`, or each of its
/// `items` (a batch record), with their queue positions.
pub fn messages(r: &AuditRecord) -> impl Iterator<Item = (&str, u64)> {
    let single = (r.items.is_empty() && !r.message_id.is_empty())
        .then_some((r.message_id.as_str(), r.queue_seq));
    single
        .into_iter()
        .chain(r.items.iter().map(|i| (i.message_id.as_str(), i.queue_seq)))
}

/// Whether the record is about message `id`.
pub fn names_message(r: &AuditRecord, id: &str) -> bool {
    messages(r).any(|(m, _)| m == id)
}

/// Parses a record from its JSON object (as stored and exported).
pub fn from_json(text: &[u8]) -> Result<AuditRecord, String> {
    let v: Map<String, Value> =
        serde_json::from_slice(text).map_err(|e| format!("not a json object: {e}"))?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or_default();
    Ok(AuditRecord {
        seq: n("seq"),
        at_ms: v.get("at_ms").and_then(Value::as_i64).unwrap_or_default(),
        event: s("event"),
        message_id: s("message_id"),
        origin: s("origin"),
        recipient: s("recipient"),
        decision: s("decision"),
        rule: s("rule"),
        reason: s("reason"),
        policy_version: s("policy_version"),
        actor: s("actor"),
        kind: s("kind"),
        classification: s("classification"),
        queue_seq: n("queue_seq"),
        prev_hash: s("prev_hash"),
        hash: s("hash"),
        labels: s("labels"),
        leaf: match v.get("leaf") {
            None => Vec::new(),
            Some(Value::String(b64)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| "leaf: not base64".to_owned())?
            }
            Some(_) => return Err("leaf: not a string".into()),
        },
        items: match v.get("items") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    let o = i.as_object().ok_or("items: an item is not an object")?;
                    let s = |k: &str| {
                        o.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    Ok(liaison_proto::v1::AuditItem {
                        message_id: s("message_id"),
                        queue_seq: o
                            .get("queue_seq")
                            .and_then(Value::as_u64)
                            .unwrap_or_default(),
                        kind: s("kind"),
                        classification: s("classification"),
                    })
                })
                .collect::<Result<_, &str>>()?,
            Some(_) => return Err("items: not an array".into()),
        },
    })
}

/// The canonical text the hash covers: the record without `hash` as one
/// JSON object, keys sorted, no spaces (what `serde_json` makes of
/// [`to_json`] minus `hash`, and what `deploy/verify_audit.py` recomputes).
///
/// Written directly rather than through a JSON map: this runs for every
/// record the hub appends.
pub fn canonical(r: &AuditRecord) -> String {
    let mut out = String::with_capacity(256 + r.labels.len() + r.reason.len() + 96 * r.items.len());
    out.push('{');
    // In key order; `items` only when there are some (see `canonical_map`).
    push_field(&mut out, "actor", Scalar::Str(&r.actor));
    push_field(&mut out, "at_ms", Scalar::I64(r.at_ms));
    push_field(&mut out, "classification", Scalar::Str(&r.classification));
    push_field(&mut out, "decision", Scalar::Str(&r.decision));
    push_field(&mut out, "event", Scalar::Str(&r.event));
    if !r.items.is_empty() {
        out.push_str(",\"items\":[");
        for (n, i) in r.items.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push('{');
            push_field(&mut out, "classification", Scalar::Str(&i.classification));
            push_field(&mut out, "kind", Scalar::Str(&i.kind));
            push_field(&mut out, "message_id", Scalar::Str(&i.message_id));
            push_field(&mut out, "queue_seq", Scalar::U64(i.queue_seq));
            out.push('}');
        }
        out.push(']');
    }
    push_field(&mut out, "kind", Scalar::Str(&r.kind));
    push_field(&mut out, "labels", Scalar::Str(&r.labels));
    push_field(&mut out, "message_id", Scalar::Str(&r.message_id));
    push_field(&mut out, "origin", Scalar::Str(&r.origin));
    push_field(&mut out, "policy_version", Scalar::Str(&r.policy_version));
    push_field(&mut out, "prev_hash", Scalar::Str(&r.prev_hash));
    push_field(&mut out, "queue_seq", Scalar::U64(r.queue_seq));
    push_field(&mut out, "reason", Scalar::Str(&r.reason));
    push_field(&mut out, "recipient", Scalar::Str(&r.recipient));
    push_field(&mut out, "rule", Scalar::Str(&r.rule));
    push_field(&mut out, "seq", Scalar::U64(r.seq));
    out.push('}');
    out
}

/// Appends `"key":value` to an object begun in `out`, after a comma unless
/// it is the object's first member.
fn push_field(out: &mut String, key: &str, value: Scalar<'_>) {
    if !out.ends_with('{') {
        out.push(',');
    }
    push_json_str(out, key);
    out.push(':');
    match value {
        Scalar::Str(v) => push_json_str(out, v),
        Scalar::U64(v) => out.push_str(&v.to_string()),
        Scalar::I64(v) => out.push_str(&v.to_string()),
    }
}

/// A canonical field's value.
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes it; runs
/// that need no escape are copied whole.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `i` is a character boundary.
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Computes the record's hash from its `prev_hash` and canonical form.
pub fn record_hash(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    h.update(r.prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical(r).as_bytes());
    hex::encode(h.finalize())
}

/// A record in its stored form: the encoded proto, `hash` included (JSON is
/// for export; the hash covers [`canonical`] whatever the stored form).
pub fn encode_stored(r: &AuditRecord) -> Vec<u8> {
    prost::Message::encode_to_vec(r)
}

/// Reads a stored record: the encoded proto, or the JSON object that
/// earlier versions stored (a proto encoding never begins with `{`).
pub fn decode_stored(bytes: &[u8]) -> Result<AuditRecord, String> {
    if bytes.first() == Some(&b'{') {
        return from_json(bytes);
    }
    <AuditRecord as prost::Message>::decode(bytes).map_err(|e| format!("not an audit record: {e}"))
}

/// Appends `r` to a stored run ([`liaison_proto::v1::AuditRun`]): the
/// encoding of a repeated field is the concatenation of its elements, so a
/// run grows without being decoded. An empty `run` becomes a run of one.
pub fn extend_run(run: &mut Vec<u8>, r: &AuditRecord) {
    prost::encoding::message::encode(1, r, run);
}

/// Reads a stored run of records, in order. Also reads what earlier
/// versions stored under one key, a single record: as JSON (it begins with
/// `{`) or as an encoded `AuditRecord` (it begins with the tag of `seq`,
/// field 1 as a varint, never the tag of a run's field 1, length-delimited).
pub fn decode_run(bytes: &[u8]) -> Result<Vec<AuditRecord>, String> {
    const SEQ_TAG: u8 = 0x08;
    match bytes.first() {
        Some(&b'{') | Some(&SEQ_TAG) => Ok(vec![decode_stored(bytes)?]),
        _ => <liaison_proto::v1::AuditRun as prost::Message>::decode(bytes)
            .map(|run| run.records)
            .map_err(|e| format!("not a run of audit records: {e}")),
    }
}

/// The result of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record checked (the genesis hash if none).
    pub head_hash: String,
    /// The first bad record and what was wrong with it.
    pub first_error: Option<(u64, String)>,
}

impl ChainReport {
    /// Whether the whole chain checked out.
    pub fn ok(&self) -> bool {
        self.first_error.is_none()
    }
}

/// Incrementally verifies a chain, record by record, from the first.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    report: ChainReport,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            report: ChainReport {
                records: 0,
                head_hash: GENESIS_HASH.to_owned(),
                first_error: None,
            },
        }
    }
}

impl ChainVerifier {
    /// A verifier that takes up a chain at record `r` (the first left of a
    /// conversion that stopped part-way): it trusts `r`'s link to the
    /// records before it, which are gone. From the first record, it is
    /// [`ChainVerifier::default`].
    pub fn starting_after(r: &AuditRecord) -> Self {
        if r.seq <= 1 {
            return Self::default();
        }
        Self {
            report: ChainReport {
                records: r.seq - 1,
                head_hash: r.prev_hash.clone(),
                first_error: None,
            },
        }
    }

    /// Checks the next record: position, link and hash.
    pub fn push(&mut self, r: &AuditRecord) {
        if self.report.first_error.is_some() {
            return;
        }
        let expected_seq = self.report.records + 1;
        let problem = if r.seq != expected_seq {
            Some(format!(
                "position {} where {expected_seq} was expected (a record is missing or reordered)",
                r.seq
            ))
        } else if r.prev_hash != self.report.head_hash {
            Some(format!(
                "prev_hash {} does not match the previous record's hash {}",
                r.prev_hash, self.report.head_hash
            ))
        } else if record_hash(r) != r.hash {
            Some(format!(
                "hash {} does not match the record's content (it was altered)",
                r.hash
            ))
        } else {
            None
        };
        match problem {
            Some(p) => self.report.first_error = Some((r.seq, p)),
            None => {
                self.report.records = expected_seq;
                self.report.head_hash = r.hash.clone();
            }
        }
    }

    /// The report so far.
    pub fn finish(self) -> ChainReport {
        self.report
    }
}

/// Builds a hash chain as hubs of earlier versions wrote it: numbers each
/// record and links it to the one before (for tests of the conversion to
/// the Merkle log).
#[derive(Debug, Clone, Default)]
pub struct ChainBuilder {
    seq: u64,
    prev: Option<String>,
}

impl ChainBuilder {
    /// `r` as the next record of the chain.
    pub fn next(&mut self, mut r: AuditRecord) -> AuditRecord {
        self.seq += 1;
        r.seq = self.seq;
        r.prev_hash = self.prev.clone().unwrap_or_else(|| GENESIS_HASH.to_owned());
        r.hash = record_hash(&r);
        self.prev = Some(r.hash.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_one_name_that_parses_back() {
        let names: std::collections::BTreeSet<&str> =
            Event::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names.len(), Event::ALL.len());
        for e in Event::ALL {
            assert_eq!(Event::parse(e.as_str()), Some(e));
            assert!(!e.describe().is_empty());
        }
        assert_eq!(Event::parse("delivered!"), None);
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    at_ms: 1000 + seq as i64,
                    event: "routed".into(),
                    message_id: format!("m{seq}"),
                    origin: "europol".into(),
                    recipient: "interpol".into(),
                    decision: "deliver".into(),
                    prev_hash: prev.clone(),
                    ..Default::default()
                };
                r.hash = record_hash(&r);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> ChainReport {
        let mut v = ChainVerifier::default();
        records.iter().for_each(|r| v.push(r));
        v.finish()
    }

    #[test]
    fn a_good_chain_verifies_and_round_trips_through_json() {
        let records = chain(5);
        let report = verify(&records);
        assert!(report.ok());
        assert_eq!(report.records, 5);
        for r in &records {
            let text = Value::Object(to_json(r)).to_string();
            assert_eq!(&from_json(text.as_bytes()).unwrap(), r);
        }
    }

    /// The direct writer makes exactly the text the JSON map made (so the
    /// hashes of existing logs, and `deploy/verify_audit.py`, still agree).
    #[test]
    fn the_canonical_text_is_the_sorted_json_object_without_the_hash() {
        let awkward = "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} nul \u{0} del \u{7f} é 中 \u{2028} \u{8} \u{c}";
        let mut records = chain(3);
        records[1].reason = awkward.into();
        records[1].labels = r#"{"crime_areas":["drugs"],"origin":"europol"}"#.into();
        records[2].at_ms = -5;
        records[2].queue_seq = u64::MAX;
        records[2].items = vec![item(awkward, 7), item("b", u64::MAX)];
        records.push(AuditRecord::default());
        for r in &records {
            let reference = Value::Object(canonical_map(r)).to_string();
            assert_eq!(canonical(r), reference);
        }
    }

    fn item(id: &str, queue_seq: u64) -> liaison_proto::v1::AuditItem {
        liaison_proto::v1::AuditItem {
            message_id: id.into(),
            queue_seq,
            kind: "ALERT".into(),
            classification: "RESTRICTED".into(),
        }
    }

    #[test]
    fn a_batch_record_names_its_messages_and_round_trips_through_its_export() {
        let mut records = chain(2);
        records[1].message_id.clear();
        records[1].items = vec![item("m1", 4), item("m2", 9)];
        records[1].hash = record_hash(&records[1]);
        let single = &records[0];
        assert!(!to_json(single).contains_key("items"), "absent when empty");
        assert_eq!(
            messages(single).collect::<Vec<_>>(),
            [(single.message_id.as_str(), single.queue_seq)]
        );
        assert_eq!(
            messages(&records[1]).collect::<Vec<_>>(),
            [("m1", 4), ("m2", 9)]
        );
        assert!(names_message(&records[1], "m2") && !names_message(&records[1], "m3"));
        assert!(messages(&AuditRecord::default()).next().is_none());
        for r in &records {
            let export = Value::Object(to_json(r)).to_string();
            assert_eq!(&from_json(export.as_bytes()).unwrap(), r);
        }
        assert!(verify(&records).ok());
        let mut tampered = records.clone();
        tampered[1].items[1].queue_seq = 10;
        assert_eq!(verify(&tampered).first_error.unwrap().0, 2);
        assert!(from_json(br#"{"items":{}}"#).is_err());
        assert!(from_json(br#"{"items":[1]}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_canonical_text_matches_the_json_map_for_any_text(
            reason in "\\PC*|[\\x00-\\x7f]*",
            labels in proptest::prelude::any::<String>(),
            at_ms in proptest::prelude::any::<i64>(),
            queue_seq in proptest::prelude::any::<u64>(),
            items in proptest::collection::vec(("\\PC*", proptest::prelude::any::<u64>()), 0..3),
        ) {
            let items = items.into_iter().map(|(id, q)| item(&id, q)).collect();
            let r = AuditRecord { reason, labels, at_ms, queue_seq, items, ..Default::default() };
            proptest::prop_assert_eq!(canonical(&r), Value::Object(canonical_map(&r)).to_string());
        }
    }

    #[test]
    fn the_stored_form_is_binary_and_old_json_records_still_read() {
        for r in chain(3) {
            let stored = encode_stored(&r);
            assert_ne!(stored.first(), Some(&b'{'));
            assert_eq!(decode_stored(&stored).unwrap(), r);
            let old = Value::Object(to_json(&r)).to_string();
            assert_eq!(decode_stored(old.as_bytes()).unwrap(), r);
        }
        assert!(decode_stored(b"\xff\xff").is_err());
    }

    #[test]
    fn a_run_reads_back_in_order_and_old_single_records_read_as_runs_of_one() {
        let records = chain(5);
        let mut run = Vec::new();
        for r in &records {
            extend_run(&mut run, r);
        }
        assert_eq!(decode_run(&run).unwrap(), records);
        let mut one = Vec::new();
        extend_run(&mut one, &records[0]);
        assert_eq!(decode_run(&one).unwrap(), records[..1]);
        assert_eq!(
            decode_run(&encode_stored(&records[3])).unwrap(),
            records[3..4]
        );
        let old = Value::Object(to_json(&records[2])).to_string();
        assert_eq!(decode_run(old.as_bytes()).unwrap(), records[2..3]);
        assert!(decode_run(&run[..run.len() - 1]).is_err());
    }

    #[test]
    fn tampering_is_found_at_the_right_record() {
        let mut records = chain(5);
        records[2].decision = "withhold".into();
        assert_eq!(verify(&records).first_error.unwrap().0, 3);

        let mut records = chain(5);
        records.remove(1);
        assert_eq!(verify(&records).first_error.unwrap().0, 3);

        let mut records = chain(5);
        records[3].hash = record_hash(&records[2]);
        assert_eq!(verify(&records).first_error.unwrap().0, 4);
    }
}
