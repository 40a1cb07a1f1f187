//! The message file an officer writes (TOML or JSON), and its conversion to
//! the API's labels and body.
//!
//! ```toml
//! kind = "alert"
//! classification = "RESTRICTED"
//! marking = "EU RESTRICTED"      # optional: your body's native marking
//! title = "Ransomware campaign against port authorities"
//! crime_areas = ["cybercrime"]
//! regions = ["west-africa"]
//! countries = ["NG", "GH"]
//! priority = "flash"
//! expires_in = "72h"              # or expires_at = "2027-01-31T00:00:00Z"
//!
//! [alert]
//! text = "..."
//! indicators = ["185.0.2.10"]
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use liaison_proto::v1 as pb;
use liaison_types::{now_ms, Classification, HandlingCode, Kind, Priority, Tlp};
use serde::Deserialize;

/// A message as written by an officer.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// Message id (a UUID); generated when absent. Give one to make retries safe.
    #[arg(long)]
    #[serde(default)]
    pub message_id: Option<String>,
    /// threat_assessment, operational_plan, strategic_plan or alert.
    #[arg(long)]
    pub kind: Option<String>,
    /// UNCLASSIFIED, OFFICIAL_USE, RESTRICTED, CONFIDENTIAL or SECRET.
    #[arg(long)]
    pub classification: Option<String>,
    /// Your body's native marking (for example "EU RESTRICTED"); must map to the classification.
    #[arg(long)]
    #[serde(default)]
    pub marking: Option<String>,
    /// Short title shown in inbox listings.
    #[arg(long)]
    pub title: Option<String>,
    /// Crime areas (repeat or comma-separate).
    #[arg(long = "crime-area", value_delimiter = ',')]
    #[serde(default)]
    pub crime_areas: Vec<String>,
    /// Region codes (repeat or comma-separate).
    #[arg(long = "region", value_delimiter = ',')]
    #[serde(default)]
    pub regions: Vec<String>,
    /// ISO 3166-1 alpha-2 country codes (repeat or comma-separate).
    #[arg(long = "country", value_delimiter = ',')]
    #[serde(default)]
    pub countries: Vec<String>,
    /// The message holds personal data.
    #[arg(long)]
    #[serde(default)]
    pub personal_data: bool,
    /// Only these bodies may receive it (repeat or comma-separate).
    #[arg(long = "releasable-to", value_delimiter = ',')]
    #[serde(default)]
    pub releasable_to: Vec<String>,
    /// These bodies must never receive it (repeat or comma-separate).
    #[arg(long = "exclude", value_delimiter = ',')]
    #[serde(default)]
    pub excluded: Vec<String>,
    /// routine, priority, immediate or flash (default routine).
    #[arg(long)]
    #[serde(default)]
    pub priority: Option<String>,
    /// Expire after this long (for example 72h, 30d).
    #[arg(long)]
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Expire at this time (RFC 3339, for example 2027-01-31T00:00:00Z).
    #[arg(long)]
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Recipients may pass it on without asking (third-party rule waived).
    #[arg(long)]
    #[serde(default)]
    pub third_party_release: bool,
    /// TLP 2.0: CLEAR, GREEN, AMBER, AMBER+STRICT or RED (RED needs --releasable-to).
    #[arg(long)]
    #[serde(default)]
    pub tlp: Option<String>,
    /// Handling code H0, H1, H2 or H3.
    #[arg(long)]
    #[serde(default)]
    pub handling_code: Option<String>,
    /// The restriction of handling code H3, in words.
    #[arg(long)]
    #[serde(default)]
    pub handling_restriction: Option<String>,
    /// 4x4 source and information grading, for example B2.
    #[arg(long)]
    #[serde(default)]
    pub grading: Option<String>,
    /// Embargo: deliver not before this time (RFC 3339).
    #[arg(long)]
    #[serde(default)]
    pub embargo_until: Option<String>,
    /// Embargo: deliver not before this long from now (for example 2h).
    #[arg(long)]
    #[serde(default)]
    pub embargo_for: Option<String>,
    /// Working groups to address (repeat or comma-separate).
    #[arg(long = "working-group", value_delimiter = ',')]
    #[serde(default)]
    pub working_groups: Vec<String>,
    /// Summary (threat assessment and operational plan).
    #[arg(long)]
    #[serde(skip)]
    pub summary: Option<String>,
    /// Alert text.
    #[arg(long)]
    #[serde(skip)]
    pub text: Option<String>,
    /// Threat assessment body.
    #[arg(skip)]
    #[serde(default)]
    pub threat_assessment: Option<AssessmentSpec>,
    /// Operational plan body.
    #[arg(skip)]
    #[serde(default)]
    pub operational_plan: Option<PlanSpec>,
    /// Alert body.
    #[arg(skip)]
    #[serde(default)]
    pub alert: Option<AlertSpec>,
    /// Strategic plan body.
    #[arg(skip)]
    #[serde(default)]
    pub strategic_plan: Option<StrategicSpec>,
    /// For a plan: the plan this message is a new version of (its id, from
    /// `liaison plans list`); absent for a new plan.
    #[arg(long = "plan")]
    #[serde(default)]
    pub plan_id: Option<String>,
    /// For a plan: whom to contact about it (one line), told to the other
    /// side of a full deconfliction notice.
    #[arg(long)]
    #[serde(default)]
    pub contact: Option<String>,
    /// For a plan: a target identifier as kind:value (travel_document, imo,
    /// phone, vehicle_plate, crypto_wallet, company_registration); repeat.
    /// The node keeps it and sends the hub only its keyed hash.
    #[arg(long = "target")]
    #[serde(default)]
    pub targets: Vec<String>,
    /// For a new version of a plan: drop its targets (a version that names
    /// none otherwise keeps the last version's).
    #[arg(long)]
    #[serde(default)]
    pub clear_targets: bool,
}

/// A strategic plan's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategicSpec {
    /// The priorities in words.
    pub summary: String,
    /// The planning cycle (for example "2027").
    pub cycle: String,
    /// Cycle start, RFC 3339.
    pub window_start: String,
    /// Cycle end, RFC 3339.
    pub window_end: String,
}

/// A threat assessment's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssessmentSpec {
    /// Summary.
    pub summary: String,
    /// Full text.
    #[serde(default)]
    pub assessment: String,
    /// Horizon.
    #[serde(default)]
    pub horizon: String,
}

/// An operational plan's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Summary.
    pub summary: String,
    /// Window start, RFC 3339.
    pub window_start: String,
    /// Window end, RFC 3339.
    pub window_end: String,
    /// Lead body.
    pub lead_body: String,
    /// Regions.
    pub regions: Vec<String>,
    /// Crime areas.
    pub crime_areas: Vec<String>,
    /// Target identifiers.
    #[serde(default)]
    pub target_ids: Vec<String>,
}

/// An alert's body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// Text.
    pub text: String,
    /// Indicators.
    #[serde(default)]
    pub indicators: Vec<String>,
    /// Ask for quick acknowledgement.
    #[serde(default)]
    pub ack_requested: bool,
}

/// Reads a message file: `.json` as JSON, anything else as TOML.
pub fn read_file(path: &Path) -> Result<MessageSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read message file {}", path.display()))?;
    let spec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: line {}, column {}: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })?
    } else {
        toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: {}",
                path.display(),
                liaison_types::located(&text, e.span(), e.message())
            )
        })?
    };
    Ok(spec)
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_time(field: &str, s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        anyhow!("{field}: '{s}' is not an RFC 3339 time (for example 2027-01-31T00:00:00Z): {e}")
    })?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("{field}: '{s}' is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| anyhow!("{field}: '{s}' is too far in the future"))
}

/// Formats milliseconds since the epoch as RFC 3339 with milliseconds, as
/// the hub's and nodes' own texts do ([`liaison_types::rfc3339`]); `-` for
/// none.
pub fn format_time(ms: i64) -> String {
    liaison_types::rfc3339(ms)
}

fn parse_enum<T: std::str::FromStr<Err = String>>(
    field: &str,
    value: Option<&str>,
    default: Option<T>,
) -> Result<T> {
    match (value, default) {
        (Some(v), _) => v.parse().map_err(|e: String| anyhow!("{field}: {e}")),
        (None, Some(d)) => Ok(d),
        (None, None) => bail!("{field}: missing; it is required"),
    }
}

impl MessageSpec {
    /// Fills empty fields of `self` from `other` (flags override a file).
    pub fn overlay(mut self, file: MessageSpec) -> MessageSpec {
        macro_rules! take {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        take!(
            message_id,
            kind,
            classification,
            marking,
            title,
            priority,
            expires_in,
            expires_at,
            tlp,
            handling_code,
            handling_restriction,
            grading,
            embargo_until,
            embargo_for,
            threat_assessment,
            operational_plan,
            alert,
            strategic_plan,
            plan_id,
            contact
        );
        macro_rules! extend {
            ($($f:ident),*) => { $( if self.$f.is_empty() { self.$f = file.$f; } )* };
        }
        extend!(
            crime_areas,
            regions,
            countries,
            releasable_to,
            excluded,
            working_groups,
            targets
        );
        self.personal_data |= file.personal_data;
        self.third_party_release |= file.third_party_release;
        self.clear_targets |= file.clear_targets;
        self
    }

    /// Converts to the API's labels and body. The node fills in the origin
    /// and the creation time.
    pub fn to_request(&self) -> Result<(pb::Labels, pb::Body)> {
        let kind: Kind = match (
            &self.kind,
            &self.threat_assessment,
            &self.operational_plan,
            &self.alert,
            &self.strategic_plan,
        ) {
            (Some(k), ..) => parse_enum("kind", Some(k), None)?,
            (None, Some(_), None, None, None) => Kind::ThreatAssessment,
            (None, None, Some(_), None, None) => Kind::OperationalPlan,
            (None, None, None, Some(_), None) => Kind::Alert,
            (None, None, None, None, Some(_)) => Kind::StrategicPlan,
            _ => bail!("kind: missing; give kind = threat_assessment, operational_plan, strategic_plan or alert"),
        };
        let classification: Classification =
            parse_enum("classification", self.classification.as_deref(), None)?;
        let priority: Priority = parse_enum(
            "priority",
            self.priority.as_deref(),
            Some(Priority::Routine),
        )?;
        let expires_at_ms = match (&self.expires_in, &self.expires_at) {
            (Some(_), Some(_)) => bail!("expires_in and expires_at: give one or the other"),
            (Some(d), None) => {
                let d = humantime::parse_duration(d).map_err(|e| {
                    anyhow!("expires_in: '{d}' is not a duration (for example 72h or 30d): {e}")
                })?;
                now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
            }
            (None, Some(t)) => parse_time("expires_at", t)?,
            (None, None) => 0,
        };
        let not_before_ms = match (&self.embargo_for, &self.embargo_until) {
            (Some(_), Some(_)) => bail!("embargo_for and embargo_until: give one or the other"),
            (Some(d), None) => {
                let d = humantime::parse_duration(d).map_err(|e| {
                    anyhow!("embargo_for: '{d}' is not a duration (for example 2h): {e}")
                })?;
                now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
            }
            (None, Some(t)) => parse_time("embargo_until", t)?,
            (None, None) => 0,
        };
        let tlp = match &self.tlp {
            Some(t) => t
                .parse::<Tlp>()
                .map_err(|e| anyhow!("tlp: {e}"))?
                .to_proto() as i32,
            None => 0,
        };
        let handling_code = match &self.handling_code {
            Some(h) => h
                .parse::<HandlingCode>()
                .map_err(|e| anyhow!("handling_code: {e}"))?
                .to_proto() as i32,
            None => 0,
        };
        let title = self
            .title
            .clone()
            .ok_or_else(|| anyhow!("title: missing; give a short title"))?;
        let content = match kind {
            Kind::ThreatAssessment => {
                let a = match (&self.threat_assessment, &self.summary) {
                    (Some(a), _) => a.clone(),
                    (None, Some(s)) => AssessmentSpec {
                        summary: s.clone(),
                        ..Default::default()
                    },
                    (None, None) => bail!(
                        "threat_assessment: missing; add a [threat_assessment] table or --summary"
                    ),
                };
                pb::body::Content::ThreatAssessment(pb::ThreatAssessment {
                    summary: a.summary,
                    assessment: a.assessment,
                    horizon: a.horizon,
                })
            }
            Kind::OperationalPlan => {
                let p = self
                    .operational_plan
                    .clone()
                    .ok_or_else(|| anyhow!("operational_plan: missing; add an [operational_plan] table (use a message file)"))?;
                pb::body::Content::OperationalPlan(pb::OperationalPlan {
                    summary: p.summary,
                    window_start_ms: parse_time("operational_plan.window_start", &p.window_start)?,
                    window_end_ms: parse_time("operational_plan.window_end", &p.window_end)?,
                    lead_body: p.lead_body,
                    regions: p.regions,
                    crime_areas: p.crime_areas,
                    target_ids: p.target_ids,
                })
            }
            Kind::StrategicPlan => {
                let p = self
                    .strategic_plan
                    .clone()
                    .ok_or_else(|| anyhow!("strategic_plan: missing; add a [strategic_plan] table (use a message file)"))?;
                pb::body::Content::StrategicPlan(pb::StrategicPlan {
                    summary: p.summary,
                    cycle: p.cycle,
                    window_start_ms: parse_time("strategic_plan.window_start", &p.window_start)?,
                    window_end_ms: parse_time("strategic_plan.window_end", &p.window_end)?,
                })
            }
            Kind::Alert => {
                let a = match (&self.alert, &self.text) {
                    (Some(a), _) => a.clone(),
                    (None, Some(t)) => AlertSpec {
                        text: t.clone(),
                        ..Default::default()
                    },
                    (None, None) => bail!("alert: missing; add an [alert] table or --text"),
                };
                pb::body::Content::Alert(pb::Alert {
                    text: a.text,
                    indicators: a.indicators,
                    ack_requested: a.ack_requested,
                })
            }
        };
        let plan = (self.plan_id.is_some() || self.contact.is_some()).then(|| pb::PlanLabels {
            plan_id: self.plan_id.clone().unwrap_or_default(),
            contact: self.contact.clone().unwrap_or_default(),
            action: if self.plan_id.is_some() {
                pb::PlanAction::PlanUpdate as i32
            } else {
                pb::PlanAction::PlanNew as i32
            },
            version: 0,
        });
        let labels = pb::Labels {
            plan,
            message_id: self.message_id.clone().unwrap_or_default(),
            origin: String::new(),
            kind: kind.to_proto() as i32,
            classification: classification.to_proto() as i32,
            marking: self.marking.clone().unwrap_or_default(),
            crime_areas: self.crime_areas.clone(),
            regions: self.regions.clone(),
            countries: self.countries.clone(),
            personal_data: self.personal_data,
            releasable_to: self.releasable_to.clone(),
            excluded: self.excluded.clone(),
            priority: priority.to_proto() as i32,
            created_at_ms: 0,
            expires_at_ms,
            third_party_release: self.third_party_release,
            tlp,
            handling_code,
            handling_restriction: self.handling_restriction.clone().unwrap_or_default(),
            grading: self.grading.clone().unwrap_or_default(),
            not_before_ms,
            working_groups: self.working_groups.clone(),
        };
        Ok((
            labels,
            pb::Body {
                title,
                content: Some(content),
            },
        ))
    }
}

impl MessageSpec {
    /// The plan's targets, from `kind:value` (the value is never echoed in
    /// an error: it may be the identifier to keep).
    pub fn plan_targets(&self) -> Result<Vec<pb::PlanTarget>> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (kind, value) = t.split_once(':').ok_or_else(|| {
                    anyhow!("targets[{i}]: not kind:value; write it as, for example, imo:9074729")
                })?;
                Ok(pb::PlanTarget {
                    kind: kind.trim().to_owned(),
                    value: value.trim().to_owned(),
                })
            })
            .collect()
    }
}

/// A time `days` from now, RFC 3339, for generated examples.
pub fn days_from_now(days: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(days * 86_400))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_alert_converts() {
        let spec: MessageSpec = toml::from_str(
            r#"
kind = "alert"
classification = "RESTRICTED"
title = "t"
crime_areas = ["cybercrime"]
priority = "flash"
expires_in = "72h"
[alert]
text = "x"
"#,
        )
        .unwrap();
        let (l, b) = spec.to_request().unwrap();
        assert_eq!(l.kind, pb::Kind::Alert as i32);
        assert!(l.expires_at_ms > now_ms());
        assert!(matches!(b.content, Some(pb::body::Content::Alert(_))));
    }

    #[test]
    fn errors_name_the_field() {
        let spec = MessageSpec {
            kind: Some("memo".into()),
            ..Default::default()
        };
        assert!(spec
            .to_request()
            .unwrap_err()
            .to_string()
            .starts_with("kind:"));
        let spec = MessageSpec {
            kind: Some("alert".into()),
            classification: Some("SECRET".into()),
            title: Some("t".into()),
            expires_in: Some("soon".into()),
            ..Default::default()
        };
        assert!(spec
            .to_request()
            .unwrap_err()
            .to_string()
            .starts_with("expires_in:"));
        assert!(toml::from_str::<MessageSpec>("colour = \"red\"").is_err());
    }
}
