//! The checker: reads a run's whole history (every submission and its
//! answer, every inbox at the end, the audit log's `received` records) and
//! says what went wrong. Pure: the run collects the facts, this judges
//! them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One officer submission the writers made, in the order each writer made
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The sending body (one writer per body, one submission at a time).
    pub sender: String,
    /// The writer's sequence number, from 0: also in the message's title.
    pub seq: u64,
    /// The bodies the policy delivers it to.
    pub entitled: BTreeSet<String>,
    /// The message id if the node answered (the submission is then
    /// acknowledged: the node holds it durably); `None` if the call failed
    /// (the node may or may not have stored it).
    pub acked: Option<String>,
}

/// One message in a recipient's inbox, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    /// The message id.
    pub message_id: String,
    /// The title, which names the writer and its sequence number.
    pub title: String,
}

/// The title a writer gives its `seq`-th message.
pub fn title(sender: &str, seq: u64) -> String {
    format!("crash {sender} {seq}")
}

/// The writer and sequence number a title names, if it is a writer's.
pub fn parse_title(title: &str) -> Option<(&str, u64)> {
    let mut words = title.strip_prefix("crash ")?.split(' ');
    let sender = words.next()?;
    let seq = words.next()?.parse().ok()?;
    words.next().is_none().then_some((sender, seq))
}

/// What the checker found. Every count but the first three must be 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Submissions the writers made.
    pub submitted: u64,
    /// Of them, answered by the node (durable).
    pub acknowledged: u64,
    /// Deliveries of the writers' messages found in the inboxes.
    pub deliveries: u64,
    /// Deliveries missing from an entitled inbox, of acknowledged messages
    /// and of unanswered ones that arrived somewhere (so were stored).
    pub lost: u64,
    /// Messages found twice in one inbox (by id, or by writer and
    /// sequence number under another id).
    pub duplicates: u64,
    /// Deliveries to a body the policy withheld the message from, or of a
    /// message no writer sent.
    pub withheld_delivered: u64,
    /// Times a recipient got a sender's message after a later one of the
    /// same sender.
    pub out_of_order: u64,
    /// Stored messages (acknowledged, or delivered somewhere) without
    /// exactly one `received` record in the audit log, and any message
    /// with more than one.
    pub audit_mismatches: u64,
    /// The first problems, described.
    pub examples: Vec<String>,
}

impl Findings {
    /// Whether nothing went wrong.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.withheld_delivered == 0
            && self.out_of_order == 0
            && self.audit_mismatches == 0
    }

    fn note(&mut self, problem: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(problem);
        }
    }
}

/// At most this many problems are described.
const MAX_EXAMPLES: usize = 20;

/// Judges a run: `attempts` from every writer, each body's inbox oldest
/// first (messages whose title is not a writer's, such as the run's
/// canaries, are left out of the order and entitlement checks but still
/// counted for duplicates), and the number of `received` audit records per
/// message id.
pub fn check(
    attempts: &[Attempt],
    inboxes: &BTreeMap<String, Vec<Arrived>>,
    received: &BTreeMap<String, u64>,
) -> Findings {
    let mut f = Findings {
        submitted: attempts.len() as u64,
        acknowledged: attempts.iter().filter(|a| a.acked.is_some()).count() as u64,
        ..Findings::default()
    };
    let by_writer: BTreeMap<(&str, u64), &Attempt> = attempts
        .iter()
        .map(|a| ((a.sender.as_str(), a.seq), a))
        .collect();
    // The id each writer's message arrived under, wherever it arrived: a
    // message the node stored without answering is checked as an
    // acknowledged one is, once it is seen anywhere.
    let mut found: BTreeMap<(&str, u64), &str> = BTreeMap::new();
    for (body, inbox) in inboxes {
        let mut ids = BTreeSet::new();
        let mut writes = BTreeSet::new();
        let mut last_seq: BTreeMap<&str, u64> = BTreeMap::new();
        for m in inbox {
            if !ids.insert(m.message_id.as_str()) {
                f.duplicates += 1;
                f.note(format!("{body} holds {} twice", m.message_id));
                continue;
            }
            let Some((sender, seq)) = parse_title(&m.title) else {
                continue;
            };
            f.deliveries += 1;
            if !writes.insert((sender, seq)) {
                f.duplicates += 1;
                f.note(format!(
                    "{body} holds {sender}'s message {seq} twice, the second time as {}",
                    m.message_id
                ));
                continue;
            }
            match by_writer.get(&(sender, seq)) {
                None => {
                    f.withheld_delivered += 1;
                    f.note(format!(
                        "{body} holds {} ({sender}'s message {seq}), which no writer sent",
                        m.message_id
                    ));
                }
                Some(a) if !a.entitled.contains(body) => {
                    f.withheld_delivered += 1;
                    f.note(format!(
                        "{body} holds {} ({sender}'s message {seq}), which the policy withholds from it",
                        m.message_id
                    ));
                }
                Some(_) => {
                    found.entry((sender, seq)).or_insert(m.message_id.as_str());
                }
            }
            if let Some(prev) = last_seq.insert(sender, seq) {
                if prev > seq {
                    f.out_of_order += 1;
                    f.note(format!(
                        "{body} got {sender}'s message {seq} after its message {prev}"
                    ));
                }
            }
        }
    }
    let empty = Vec::new();
    let mut checked = BTreeSet::new();
    for a in attempts {
        let (id, how) = match (&a.acked, found.get(&(a.sender.as_str(), a.seq))) {
            (Some(id), _) => (id.as_str(), "acknowledged"),
            (None, Some(id)) => (*id, "unanswered but delivered"),
            (None, None) => continue,
        };
        checked.insert(id);
        for body in &a.entitled {
            let inbox = inboxes.get(body).unwrap_or(&empty);
            if !inbox.iter().any(|m| m.message_id == id) {
                f.lost += 1;
                f.note(format!(
                    "{}'s {how} message {} ({id}) never reached {body}",
                    a.sender, a.seq
                ));
            }
        }
        let records = received.get(id).copied().unwrap_or(0);
        if records != 1 {
            f.audit_mismatches += 1;
            f.note(format!(
                "{}'s {how} message {} ({id}) has {records} received records in the audit log",
                a.sender, a.seq
            ));
        }
    }
    // No message, whoever sent it, is received twice.
    for (id, n) in received {
        if *n > 1 && !checked.contains(id.as_str()) {
            f.audit_mismatches += 1;
            f.note(format!("{id} has {n} received records in the audit log"));
        }
    }
    f
}

/// The `p`-th percentile (0 to 100) of `values`, by nearest rank; 0 if
/// there are none.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(sender: &str, seq: u64, to: &[&str], acked: bool) -> Attempt {
        Attempt {
            sender: sender.into(),
            seq,
            entitled: to.iter().map(|s| (*s).to_owned()).collect(),
            acked: acked.then(|| id(sender, seq)),
        }
    }

    fn id(sender: &str, seq: u64) -> String {
        format!("{sender}-{seq}")
    }

    fn arrived(sender: &str, seq: u64) -> Arrived {
        Arrived {
            message_id: id(sender, seq),
            title: title(sender, seq),
        }
    }

    fn received(attempts: &[Attempt]) -> BTreeMap<String, u64> {
        attempts
            .iter()
            .filter_map(|a| a.acked.clone())
            .map(|id| (id, 1))
            .collect()
    }

    fn history() -> (Vec<Attempt>, BTreeMap<String, Vec<Arrived>>) {
        let attempts = vec![
            attempt("alpha", 0, &["bravo", "charlie"], true),
            attempt("alpha", 1, &["charlie"], true),
            attempt("alpha", 2, &["bravo"], false),
            attempt("bravo", 0, &["charlie"], true),
        ];
        let inboxes = BTreeMap::from([
            ("bravo".to_owned(), vec![arrived("alpha", 0)]),
            (
                "charlie".to_owned(),
                vec![
                    arrived("alpha", 0),
                    arrived("bravo", 0),
                    arrived("alpha", 1),
                ],
            ),
        ]);
        (attempts, inboxes)
    }

    #[test]
    fn a_clean_history_passes_and_an_unacknowledged_message_may_be_missing() {
        let (attempts, inboxes) = history();
        let f = check(&attempts, &inboxes, &received(&attempts));
        assert!(f.passed(), "{f:?}");
        assert_eq!((f.submitted, f.acknowledged, f.deliveries), (4, 3, 4));
    }

    #[test]
    fn an_unacknowledged_message_that_arrived_once_is_fine() {
        let (attempts, mut inboxes) = history();
        inboxes.get_mut("bravo").unwrap().push(arrived("alpha", 2));
        let mut r = received(&attempts);
        r.insert(id("alpha", 2), 1);
        assert!(check(&attempts, &inboxes, &r).passed());
    }

    #[test]
    fn a_lost_acknowledged_message_is_found() {
        let (attempts, mut inboxes) = history();
        inboxes.get_mut("charlie").unwrap().pop();
        let f = check(&attempts, &inboxes, &received(&attempts));
        assert_eq!(f.lost, 1, "{f:?}");
        assert!(f.examples[0].contains("never reached charlie"), "{f:?}");
    }

    #[test]
    fn duplicates_by_id_and_by_writer_are_found() {
        let (attempts, mut inboxes) = history();
        inboxes.get_mut("bravo").unwrap().push(arrived("alpha", 0));
        let again = Arrived {
            message_id: "other".into(),
            title: title("alpha", 1),
        };
        inboxes.get_mut("charlie").unwrap().push(again);
        let f = check(&attempts, &inboxes, &received(&attempts));
        assert_eq!(f.duplicates, 2, "{f:?}");
    }

    #[test]
    fn a_delivery_the_policy_withholds_or_nobody_sent_is_found() {
        let (attempts, mut inboxes) = history();
        inboxes.get_mut("bravo").unwrap().push(arrived("alpha", 1));
        inboxes.get_mut("bravo").unwrap().push(arrived("alpha", 99));
        let f = check(&attempts, &inboxes, &received(&attempts));
        assert_eq!(f.withheld_delivered, 2, "{f:?}");
    }

    #[test]
    fn order_broken_per_sender_and_recipient_is_found() {
        let (attempts, mut inboxes) = history();
        let charlie = inboxes.get_mut("charlie").unwrap();
        charlie.swap(0, 2);
        let f = check(&attempts, &inboxes, &received(&attempts));
        assert_eq!(f.out_of_order, 1, "{f:?}");
    }

    #[test]
    fn an_acknowledged_message_must_be_received_once_in_the_audit_log() {
        let (attempts, inboxes) = history();
        let mut r = received(&attempts);
        r.insert(id("alpha", 0), 2);
        r.remove(&id("bravo", 0));
        let f = check(&attempts, &inboxes, &r);
        assert_eq!(f.audit_mismatches, 2, "{f:?}");
    }

    #[test]
    fn an_unanswered_message_that_arrived_somewhere_must_arrive_everywhere_once() {
        let (mut attempts, mut inboxes) = history();
        attempts.push(attempt("bravo", 1, &["alpha", "charlie"], false));
        inboxes
            .get_mut("charlie")
            .unwrap()
            .push(arrived("bravo", 1));
        let mut r = received(&attempts);
        r.insert(id("bravo", 1), 1);
        let f = check(&attempts, &inboxes, &r);
        assert_eq!(f.lost, 1, "{f:?}");
        assert!(f.examples[0].contains("unanswered but delivered"), "{f:?}");
        // And received once: a second record is found too.
        r.insert(id("bravo", 1), 2);
        inboxes.insert("alpha".into(), vec![arrived("bravo", 1)]);
        let f = check(&attempts, &inboxes, &r);
        assert_eq!((f.lost, f.audit_mismatches), (0, 1), "{f:?}");
    }

    #[test]
    fn any_message_received_twice_is_found() {
        let (attempts, inboxes) = history();
        let mut r = received(&attempts);
        r.insert("a-canary".into(), 2);
        assert_eq!(check(&attempts, &inboxes, &r).audit_mismatches, 1);
    }

    #[test]
    fn canaries_are_neither_writers_nor_ordered() {
        let (attempts, mut inboxes) = history();
        inboxes.get_mut("bravo").unwrap().insert(
            0,
            Arrived {
                message_id: "c".into(),
                title: "canary 3".into(),
            },
        );
        assert!(check(&attempts, &inboxes, &received(&attempts)).passed());
    }

    #[test]
    fn titles_round_trip_and_others_are_not_writers() {
        assert_eq!(parse_title(&title("alpha", 17)), Some(("alpha", 17)));
        for t in [
            "canary 1",
            "crash alpha",
            "crash alpha x",
            "crash alpha 1 2",
        ] {
            assert_eq!(parse_title(t), None, "{t}");
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[5], 99.0), 5);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0)), (50, 99));
    }
}
