//! What a change of governance would change: the decisions for one message
//! under an old and a new governance, compared recipient by recipient.
//!
//! Replaying past traffic (the labels kept in the audit log's `received`
//! records) through [`diff`] with the time each message was routed tells an
//! operator, before a reload, which messages the new rules would have routed
//! differently and why. Pure, like [`decide`]: the caller reads the files.

use std::collections::BTreeMap;

use liaison_types::{BodyId, Labels};

use crate::config::Governance;
use crate::decide::{decide, Decision};

/// How the decision for one recipient differs between two governances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionChange {
    /// The recipient.
    pub recipient: BodyId,
    /// The decision under the old governance; `None` if the recipient was
    /// not a candidate there (not configured, or the origin itself).
    pub old: Option<Decision>,
    /// The decision under the new governance; `None` if the recipient is not
    /// a candidate there.
    pub new: Option<Decision>,
}

impl DecisionChange {
    /// Whether the recipient gets the message under one governance and not
    /// under the other (a body missing from one side does not get it there).
    pub fn delivery_changed(&self) -> bool {
        let delivers = |d: &Option<Decision>| d.as_ref().is_some_and(Decision::delivers);
        delivers(&self.old) != delivers(&self.new)
    }
}

/// The recipients whose decision (outcome or deciding rule) differs when a
/// message with `labels`, routed at `at_ms`, is decided under `old` and under
/// `new`, in recipient id order. A recipient withheld under both by the same
/// rule is not a change even if the reason's values differ (a clearance
/// lowered but still too low); a recipient withheld under both by different
/// rules is, since the audit record would name another rule.
pub fn diff(
    old: &Governance,
    new: &Governance,
    labels: &Labels,
    at_ms: i64,
) -> Vec<DecisionChange> {
    let mut sides: BTreeMap<BodyId, (Option<Decision>, Option<Decision>)> = BTreeMap::new();
    for d in decide(old, labels, at_ms) {
        let recipient = d.recipient.clone();
        sides.entry(recipient).or_default().0 = Some(d);
    }
    for d in decide(new, labels, at_ms) {
        let recipient = d.recipient.clone();
        sides.entry(recipient).or_default().1 = Some(d);
    }
    sides
        .into_iter()
        .filter(|(_, (o, n))| {
            let key = |d: &Option<Decision>| d.as_ref().map(|d| (d.outcome, d.rule));
            key(o) != key(n)
        })
        .map(|(recipient, (old, new))| DecisionChange {
            recipient,
            old,
            new,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Outcome, Rule};
    use liaison_proto::v1 as pb;
    use liaison_types::Classification;

    const BASE: &str = r#"
version = 1
federation = "diff.test"
hub_body = "alpha"

[observers]
kinds = ["threat_assessment"]
max_classification = "OFFICIAL_USE"

[[body]]
id = "alpha"
name = "Alpha"
status = "member"
clearance = "SECRET"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["cybercrime", "drugs"]

[[body]]
id = "bravo"
name = "Bravo"
status = "member"
clearance = "CONFIDENTIAL"
kinds = ["threat_assessment", "operational_plan", "alert"]
mandate = ["cybercrime", "drugs"]

[[body]]
id = "charlie"
name = "Charlie"
status = "member"
clearance = "CONFIDENTIAL"
kinds = ["threat_assessment", "alert"]
mandate = ["drugs"]
"#;

    fn gov(text: &str) -> Governance {
        Governance::from_toml("test.toml", text).unwrap()
    }

    /// An alert from alpha, through the same conversion as a received
    /// message (so fields added to the labels later keep their defaults).
    fn labels(class: Classification, area: &str) -> Labels {
        Labels::try_from(pb::Labels {
            message_id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            origin: "alpha".into(),
            kind: pb::Kind::Alert as i32,
            classification: class.to_proto() as i32,
            crime_areas: vec![area.into()],
            priority: pb::Priority::Routine as i32,
            created_at_ms: 1,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_same_governance_changes_nothing() {
        let g = gov(BASE);
        assert!(diff(&g, &g, &labels(Classification::Restricted, "drugs"), 5).is_empty());
    }

    #[test]
    fn a_lowered_clearance_withholds_and_names_both_rules() {
        let old = gov(BASE);
        let new = gov(&BASE.replacen(
            "clearance = \"CONFIDENTIAL\"",
            "clearance = \"OFFICIAL_USE\"",
            1,
        ));
        let changes = diff(&old, &new, &labels(Classification::Restricted, "drugs"), 5);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let c = &changes[0];
        assert_eq!(c.recipient.as_str(), "bravo");
        let (o, n) = (c.old.as_ref().unwrap(), c.new.as_ref().unwrap());
        assert_eq!(
            (o.outcome, o.rule),
            (Outcome::Deliver, Rule::AllRulesPassed)
        );
        assert_eq!(
            (n.outcome, n.rule),
            (Outcome::Withhold, Rule::RecipientClearance)
        );
        assert!(n.reason.contains("OFFICIAL_USE"), "{}", n.reason);
        assert!(c.delivery_changed());
        // Backwards, the same change with the sides swapped.
        let back = diff(&new, &old, &labels(Classification::Restricted, "drugs"), 5);
        assert_eq!(back.len(), 1);
        assert_eq!((&back[0].old, &back[0].new), (&c.new, &c.old));
    }

    #[test]
    fn a_changed_reason_under_the_same_rule_is_not_a_change() {
        let old = gov(BASE);
        let new = gov(&BASE.replacen(
            "clearance = \"CONFIDENTIAL\"",
            "clearance = \"OFFICIAL_USE\"",
            1,
        ));
        // SECRET is above bravo's clearance under both.
        assert!(diff(&old, &new, &labels(Classification::Secret, "drugs"), 5).is_empty());
    }

    #[test]
    fn another_withholding_rule_is_a_change_without_a_delivery_change() {
        let old = gov(BASE);
        // charlie is withheld by its mandate under the old rules; suspended,
        // it is withheld by its state, which comes first.
        let new = gov(&BASE.replace(
            "id = \"charlie\"\nname = \"Charlie\"\nstatus = \"member\"",
            "id = \"charlie\"\nname = \"Charlie\"\nstatus = \"member\"\nstate = \"suspended\"",
        ));
        let changes = diff(
            &old,
            &new,
            &labels(Classification::Restricted, "cybercrime"),
            5,
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            changes[0].old.as_ref().unwrap().rule,
            Rule::RecipientMandate
        );
        assert_eq!(changes[0].new.as_ref().unwrap().rule, Rule::PeerState);
        assert!(!changes[0].delivery_changed());
    }

    #[test]
    fn a_body_only_one_side_knows_is_listed_with_the_other_side_empty() {
        let old = gov(BASE);
        let extra = "\n[[body]]\nid = \"delta\"\nname = \"Delta\"\nstatus = \"member\"\nclearance = \"SECRET\"\nkinds = [\"alert\"]\nmandate = [\"drugs\"]\n";
        let new = gov(&format!("{BASE}{extra}"));
        let l = labels(Classification::Restricted, "drugs");
        let added = diff(&old, &new, &l, 5);
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(added[0].recipient.as_str(), "delta");
        assert!(added[0].old.is_none() && added[0].new.as_ref().unwrap().delivers());
        assert!(added[0].delivery_changed());
        let removed = diff(&new, &old, &l, 5);
        assert!(removed[0].new.is_none() && removed[0].delivery_changed());
    }

    #[test]
    fn the_routing_time_decides_expiry() {
        let old = gov(BASE);
        let new = gov(&BASE.replacen(
            "clearance = \"CONFIDENTIAL\"",
            "clearance = \"OFFICIAL_USE\"",
            1,
        ));
        let mut l = labels(Classification::Restricted, "drugs");
        l.expires_at_ms = Some(10);
        assert_eq!(
            diff(&old, &new, &l, 5).len(),
            1,
            "routed before expiry: a change"
        );
        assert!(
            diff(&old, &new, &l, 10).is_empty(),
            "expired under both: no change"
        );
    }
}
