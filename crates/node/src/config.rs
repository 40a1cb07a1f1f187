//! The node's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use liaison_pki::{ServerLimits, TlsFiles};
use liaison_types::{Classification, Kind};
use serde::Deserialize;
use toml::Spanned;

use crate::NodeError;

/// The prefix of the environment variables that override keys of this
/// file, for example `LIAISON_NODE__LISTEN`.
pub const ENV_PREFIX: &str = "LIAISON_NODE__";

/// A node's configuration (`node.toml`). Relative paths are resolved against
/// the directory of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// The body this node serves (for example `europol`); must match the
    /// node certificate.
    pub body: String,
    /// Address of the officer API (TLS only), for example `0.0.0.0:7401`.
    pub listen: SocketAddr,
    /// The hub's address, for example `https://hub.example.org:7400`.
    pub hub: String,
    /// Directory of the durable outbox and inbox; created if absent.
    pub data_dir: PathBuf,
    /// The node's certificate (server for officers, client of the hub), key
    /// and the federation CA.
    pub tls: TlsFiles,
    /// Witnessing the hub's audit log (`[audit] log_key, witness_key,
    /// witness_every_ms`).
    pub audit: Witnessing,
    /// Plans (`[plans] deconfliction_key`).
    #[serde(default)]
    pub plans: Plans,
    /// Retry timing for pushing to and subscribing from the hub.
    #[serde(default)]
    pub retry: Retry,
    /// How the outbox is pushed to the hub (`[link]`).
    #[serde(default)]
    pub link: Link,
    /// The durable store (`[store] cache_bytes`).
    #[serde(default)]
    pub store: liaison_store::StoreOptions,
    /// Protective limits.
    #[serde(default)]
    pub limits: ServerLimits,
    /// The `/metrics` endpoint (`[metrics] listen, tls`); none if absent.
    #[serde(default)]
    pub metrics: Option<liaison_telemetry::metrics::MetricsConfig>,
    /// Trace export (`[telemetry] otlp_endpoint`); off if absent.
    #[serde(default)]
    pub telemetry: liaison_telemetry::trace::TelemetryConfig,
    /// How fast each officer may submit (`[officers]
    /// max_submissions_per_minute`).
    #[serde(default)]
    pub officers: crate::officer_rate::Officers,
    /// The `[release]` table as written, with positions for error messages.
    #[serde(default, rename = "release")]
    release_table: Option<Spanned<RawRelease>>,
    /// Four-eyes release rules, from the `[release]` table; none if absent.
    #[serde(skip)]
    pub release: Release,
}

/// How the node witnesses the hub's audit log: the log's public key to
/// check checkpoints with, the node's own witness key to cosign those it
/// has verified, and how often it checks.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Witnessing {
    /// The file holding the log's verifier key (`log.vkey` of the dev PKI:
    /// `<origin>+<key id>+<key>`).
    pub log_key: PathBuf,
    /// The file holding this body's witness signing key (`<body>/witness.key`
    /// of the dev PKI; keep it secret). Its name must be the one the hub's
    /// `[audit] witnesses` file lists for this body.
    pub witness_key: PathBuf,
    /// How often the node fetches the hub's latest checkpoint and checks it
    /// against the one it holds, in milliseconds (100 to 10000).
    #[serde(default = "default_witness_every_ms")]
    pub witness_every_ms: u64,
}

fn default_witness_every_ms() -> u64 {
    5_000
}

impl Witnessing {
    /// Reads both keys.
    pub fn load(
        &self,
    ) -> Result<(liaison_tlog::LogVerifier, liaison_tlog::WitnessSigner), NodeError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| NodeError::Config {
                file: path.display().to_string(),
                problem: format!(
                    "cannot read it: {e}; make the audit keys with `liaison pki init` (or point [audit] at them)"
                ),
            })
        };
        let log = liaison_tlog::LogVerifier::from_text(&read(&self.log_key)?).map_err(|e| {
            NodeError::Config {
                file: self.log_key.display().to_string(),
                problem: e.to_string(),
            }
        })?;
        let witness =
            liaison_tlog::WitnessSigner::from_text(&read(&self.witness_key)?).map_err(|e| {
                NodeError::Config {
                    file: self.witness_key.display().to_string(),
                    problem: e.to_string(),
                }
            })?;
        Ok((log, witness))
    }
}

/// Plans: the federation's deconfliction key, which every node holds and
/// the hub never does. Without it the node sends plans without targets
/// only (and refuses targets).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Plans {
    /// The file holding the key, in hex (at least 32 bytes:
    /// `deconfliction.key` of the dev PKI; keep it secret).
    pub deconfliction_key: Option<PathBuf>,
}

impl Plans {
    /// Reads the key, if one is configured.
    pub fn load(&self) -> Result<Option<liaison_plans::DeconflictionKey>, NodeError> {
        let Some(path) = &self.deconfliction_key else {
            return Ok(None);
        };
        let bad = |problem: String| NodeError::Config {
            file: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad(format!(
                "cannot read it: {e}; make it with `liaison pki init` (or point [plans] deconfliction_key at it)"
            ))
        })?;
        let bytes = hex::decode(text.trim()).map_err(|e| {
            bad(format!(
                "not a hex key: {e}; it holds the key in hex on one line"
            ))
        })?;
        liaison_plans::DeconflictionKey::new(bytes)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }
}

/// Four-eyes release: which messages need a second officer's approval
/// before the node sends them to the hub, and who may give it.
///
/// ```toml
/// [release]
/// four_eyes_from = "CONFIDENTIAL"          # at or above this level
/// four_eyes_kinds = ["operational_plan"]   # these kinds always
/// approvers = ["bob", "carol"]             # officer certificate names
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// Messages classified at or above this level need approval.
    pub four_eyes_from: Option<Classification>,
    /// Messages of these kinds need approval whatever their level.
    pub four_eyes_kinds: Vec<Kind>,
    /// Officers (the name part of their certificate identity) who may
    /// approve or refuse; never for a message they submitted themselves.
    pub approvers: Vec<String>,
}

impl Release {
    /// Why a message of `kind` at `classification` needs a second officer's
    /// approval, naming each rule that applies; `None` if it needs none.
    pub fn approval_reason(&self, kind: Kind, classification: Classification) -> Option<String> {
        let mut why = Vec::new();
        if let Some(level) = self.four_eyes_from.filter(|l| classification >= *l) {
            why.push(format!(
                "release.four_eyes_from: {classification} is at or above {level}"
            ));
        }
        if self.four_eyes_kinds.contains(&kind) {
            why.push(format!(
                "release.four_eyes_kinds: every {kind} needs a second officer's approval"
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Whether the officer named `name` (certificate name part) may approve
    /// or refuse messages they did not submit.
    pub fn may_approve(&self, name: &str) -> bool {
        self.approvers.iter().any(|a| a == name)
    }
}

/// The `[release]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    four_eyes_from: Option<Spanned<String>>,
    four_eyes_kinds: Option<Spanned<Vec<Spanned<String>>>>,
    approvers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Whether `name` can be the name part of a certificate identity.
fn is_officer_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

impl RawRelease {
    /// Validates the table; errors are `(position, message)`.
    fn validate(
        &self,
        table: std::ops::Range<usize>,
    ) -> Result<Release, (std::ops::Range<usize>, String)> {
        let mut release = Release::default();
        if let Some(level) = &self.four_eyes_from {
            release.four_eyes_from = Some(
                level
                    .get_ref()
                    .parse()
                    .map_err(|e: String| (level.span(), format!("release.four_eyes_from: {e}")))?,
            );
        }
        if let Some(kinds) = &self.four_eyes_kinds {
            for k in kinds.get_ref() {
                let kind: Kind = k
                    .get_ref()
                    .parse()
                    .map_err(|e: String| (k.span(), format!("release.four_eyes_kinds: {e}")))?;
                if release.four_eyes_kinds.contains(&kind) {
                    return Err((
                        k.span(),
                        format!("release.four_eyes_kinds: {kind} is listed twice; list it once"),
                    ));
                }
                release.four_eyes_kinds.push(kind);
            }
        }
        if let Some(approvers) = &self.approvers {
            for a in approvers.get_ref() {
                let name = a.get_ref();
                if !is_officer_name(name) {
                    return Err((
                        a.span(),
                        format!(
                            "release.approvers: '{}' is not an officer name; give the name part of the officer's certificate identity (for example \"bob\" for spiffe://<federation>/org/<body>/officer/bob)",
                            name.escape_debug()
                        ),
                    ));
                }
                if release.approvers.contains(name) {
                    return Err((
                        a.span(),
                        format!("release.approvers: '{name}' is listed twice; list it once"),
                    ));
                }
                release.approvers.push(name.clone());
            }
        }
        let rule_set = release.four_eyes_from.is_some() || !release.four_eyes_kinds.is_empty();
        if !rule_set {
            return Err((
                table,
                "release: no rule is set; set four_eyes_from and/or four_eyes_kinds, or remove the [release] table".into(),
            ));
        }
        if release.approvers.is_empty() {
            let at = self.approvers.as_ref().map_or(table, Spanned::span);
            return Err((
                at,
                "release.approvers: empty, but the four-eyes rules need approvers; name the officers who may approve (for example approvers = [\"bob\", \"carol\"])".into(),
            ));
        }
        Ok(release)
    }
}

/// How the node pushes its outbox to the hub (the `[link]` table).
///
/// ```toml
/// [link]
/// push_batch = 256          # messages per request; 1 = one `Submit` each
/// push_batch_bytes = 262144 # and at most this many bytes of envelopes
/// ```
///
/// A batch goes in one `SubmitBatch` request, which the hub routes in one
/// store transaction and one flush. Keep `push_batch_bytes` below the hub's
/// `[limits] max_request_bytes` (512 KiB by default); a message larger than
/// it goes alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    /// Most messages per push request, 1 to 4096.
    pub push_batch: usize,
    /// Most bytes of encoded envelopes per push request (a single larger
    /// message is sent alone).
    pub push_batch_bytes: usize,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            push_batch: 256,
            push_batch_bytes: 256 * 1024,
        }
    }
}

/// Bounded exponential backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// First delay after a failure, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
        }
    }
}

impl Retry {
    /// The delay before retry number `attempt` (1-based), doubling up to the
    /// maximum, with up to 25% random jitter so that nodes do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff_ms);
        let jitter = rand::random_range(0..=base / 4);
        Duration::from_millis(base - jitter)
    }
}

/// The dotted key assigned on the line holding byte `offset` (for example
/// `release.four_eyes_from`), if that line is a `key = value` line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        (l.starts_with('[') && !l.starts_with("[[")).then(|| l.trim_matches(['[', ']']).trim())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

impl NodeConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::Config {
            file: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse_with_env(path, &text, std::env::vars())
    }

    /// Parses configuration text with the environment overrides among
    /// `vars` applied ([`ENV_PREFIX`]`KEY`, `TABLE__KEY`; see
    /// `liaison_telemetry::env`). Without any, the same as [`NodeConfig::parse`].
    pub fn parse_with_env(
        path: &Path,
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, NodeError> {
        let bad = |problem: String| NodeError::Config {
            file: path.display().to_string(),
            problem,
        };
        match liaison_telemetry::env::apply(text, ENV_PREFIX, vars).map_err(bad)? {
            None => Self::parse(path, text),
            Some((merged, names)) => Self::parse(path, &merged).map_err(|e| match e {
                NodeError::Config { file, problem } => NodeError::Config {
                    file,
                    problem: format!(
                        "{} (with the environment overrides {})",
                        liaison_telemetry::env::without_position(&problem),
                        names.join(", ")
                    ),
                },
                other => other,
            }),
        }
    }

    /// Parses configuration text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, NodeError> {
        let bad = |problem: String| NodeError::Config {
            file: path.display().to_string(),
            problem,
        };
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| {
            let message = match e.span().and_then(|s| key_at(text, s.start)) {
                Some(key) if !e.message().contains("unknown field") => {
                    format!("{key}: {}", e.message())
                }
                _ => e.message().to_owned(),
            };
            bad(liaison_types::located(text, e.span(), &message))
        })?;
        if let Some(table) = &config.release_table {
            config.release = table
                .get_ref()
                .validate(table.span())
                .map_err(|(at, problem)| bad(liaison_types::located(text, Some(at), &problem)))?;
        }
        if config.version != 1 {
            return Err(bad(format!(
                "version = {} is not supported; use version = 1",
                config.version
            )));
        }
        liaison_types::BodyId::parse(&config.body).map_err(|e| bad(format!("body: {e}")))?;
        if !config.hub.starts_with("https://") {
            return Err(bad(format!(
                "hub: '{}' must be an https:// address; the hub only speaks TLS",
                config.hub
            )));
        }
        if config.retry.initial_backoff_ms == 0
            || config.retry.max_backoff_ms < config.retry.initial_backoff_ms
        {
            return Err(bad(
                "retry: initial_backoff_ms must be positive and no larger than max_backoff_ms"
                    .into(),
            ));
        }
        if !(1..=4096).contains(&config.link.push_batch) {
            return Err(bad(format!(
                "link.push_batch = {} is out of range; use 1 (one message per request) to 4096",
                config.link.push_batch
            )));
        }
        if config.link.push_batch_bytes < 1024 {
            return Err(bad(format!(
                "link.push_batch_bytes = {} is too small; use at least 1024",
                config.link.push_batch_bytes
            )));
        }
        if let Some(m) = &config.metrics {
            m.check().map_err(bad)?;
        }
        config.telemetry.check().map_err(bad)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
        ]
        .into_iter()
        .chain(config.tls.crl.as_mut())
        .chain([&mut config.audit.log_key, &mut config.audit.witness_key])
        .chain(config.plans.deconfliction_key.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if !(100..=10_000).contains(&config.audit.witness_every_ms) {
            return Err(bad(format!(
                "audit.witness_every_ms = {} is out of range; use 100 to 10000 (a witness checks the hub's log at least every 10 s)",
                config.audit.witness_every_ms
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, NodeError> {
        NodeConfig::parse(Path::new("/etc/liaison/node.toml"), text)
    }

    const GOOD: &str = r#"
version = 1
body = "europol"
listen = "127.0.0.1:7401"
hub = "https://127.0.0.1:7400"
data_dir = "data"
[tls]
ca = "ca.pem"
cert = "node.pem"
key = "node.key.pem"
[audit]
log_key = "log.vkey"
witness_key = "witness.key"
"#;

    #[test]
    fn a_good_config_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/liaison/data"));
        assert_eq!(c.retry.max_backoff_ms, 30_000);
        assert_eq!(c.tls.crl, None);
        assert_eq!(c.limits.max_connection_age_ms, 3_600_000);
    }

    #[test]
    fn the_crl_and_the_max_connection_age_are_optional_keys() {
        let text = GOOD.replace(
            "key = \"node.key.pem\"",
            "key = \"node.key.pem\"\ncrl = \"crl.pem\"\n[limits]\nmax_connection_age_ms = 0",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.tls.crl.as_deref(),
            Some(Path::new("/etc/liaison/crl.pem"))
        );
        assert_eq!(c.limits.max_connection_age(), None);
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = NodeConfig::parse(
            Path::new("deploy/node.toml"),
            include_str!("../../../deploy/node.toml"),
        )
        .unwrap();
        assert_eq!(c.body, "europol");
        assert_eq!(c.release.approvers, ["bob", "carol"]);
        assert_eq!(c.officers, crate::officer_rate::Officers::default());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = parse(&GOOD.replace("data_dir", "datadir"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/liaison/node.toml: line 6"), "{err}");
        assert!(err.contains("datadir"), "{err}");
        let err = parse(&GOOD.replace("https://", "http://"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hub:"), "{err}");
        let err = parse(&GOOD.replace("\"europol\"", "\"Europol\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("body:"), "{err}");
        // A value of the wrong type names its key, inside tables too.
        let err = parse(&GOOD.replace("\"node.pem\"", "7"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/liaison/node.toml: line 9, column 8: tls.cert: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn without_a_release_table_nothing_needs_approval() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.release, Release::default());
        for kind in Kind::ALL {
            for class in Classification::ALL {
                assert_eq!(c.release.approval_reason(kind, class), None);
            }
        }
    }

    #[test]
    fn the_environment_overrides_keys_the_release_table_among_them() {
        let vars = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        let c = NodeConfig::parse_with_env(
            Path::new("/etc/liaison/node.toml"),
            GOOD,
            vars(&[
                ("LIAISON_NODE__HUB", "https://hub.example.org:7400"),
                ("LIAISON_NODE__RELEASE__APPROVERS", "[\"bob\", \"carol\"]"),
                ("LIAISON_NODE__RELEASE__FOUR_EYES_FROM", "CONFIDENTIAL"),
                ("LIAISON_HUB__LISTEN", "127.0.0.1:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.hub, "https://hub.example.org:7400");
        assert!(c.release.may_approve("carol"));
        assert_eq!(c.release.four_eyes_from, Some(Classification::Confidential));
        let e = NodeConfig::parse_with_env(
            Path::new("/etc/liaison/node.toml"),
            GOOD,
            vars(&[("LIAISON_NODE__HUB", "http://plain:7400")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("https://") && e.contains("LIAISON_NODE__HUB"),
            "{e}"
        );
    }

    #[test]
    fn a_release_table_sets_the_four_eyes_rules() {
        let c = parse(&format!(
            "{GOOD}\n[release]\nfour_eyes_from = \"CONFIDENTIAL\"\nfour_eyes_kinds = [\"operational_plan\"]\napprovers = [\"bob\", \"carol\"]\n"
        ))
        .unwrap();
        let r = &c.release;
        assert_eq!(r.four_eyes_from, Some(Classification::Confidential));
        assert_eq!(r.four_eyes_kinds, vec![Kind::OperationalPlan]);
        assert!(r.may_approve("bob") && r.may_approve("carol") && !r.may_approve("alice"));
        use Classification as C;
        assert_eq!(r.approval_reason(Kind::Alert, C::Restricted), None);
        let why = r.approval_reason(Kind::Alert, C::Confidential).unwrap();
        assert!(why.contains("release.four_eyes_from"), "{why}");
        assert!(why.contains("CONFIDENTIAL"), "{why}");
        assert!(r.approval_reason(Kind::Alert, C::Secret).is_some());
        let why = r
            .approval_reason(Kind::OperationalPlan, C::Unclassified)
            .unwrap();
        assert!(why.contains("release.four_eyes_kinds"), "{why}");
        assert!(!why.contains("four_eyes_from"), "{why}");
        let both = r.approval_reason(Kind::OperationalPlan, C::Secret).unwrap();
        assert!(
            both.contains("four_eyes_from") && both.contains("four_eyes_kinds"),
            "{both}"
        );

        // Either rule alone is enough.
        let kinds_only = parse(&format!(
            "{GOOD}\n[release]\nfour_eyes_kinds = [\"alert\"]\napprovers = [\"bob\"]\n"
        ))
        .unwrap();
        assert_eq!(kinds_only.release.four_eyes_from, None);
        assert!(kinds_only
            .release
            .approval_reason(Kind::Alert, C::Unclassified)
            .is_some());
    }

    /// Parses GOOD plus a `[release]` table and returns the error text.
    fn release_error(table: &str) -> String {
        parse(&format!("{GOOD}\n[release]\n{table}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn release_errors_name_file_line_and_key() {
        // GOOD has 10 lines (the first empty); `[release]` is line 12.
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "four_eyes_from = \"TOP\"\napprovers = [\"bob\"]\n",
                "line 16",
                &["release.four_eyes_from", "TOP", "CONFIDENTIAL"],
            ),
            (
                "four_eyes_kinds = [\"alert\", \"memo\"]\napprovers = [\"bob\"]\n",
                "line 16",
                &["release.four_eyes_kinds", "memo", "operational_plan"],
            ),
            (
                "four_eyes_kinds = [\"alert\", \"alert\"]\napprovers = [\"bob\"]\n",
                "line 16",
                &["release.four_eyes_kinds", "twice"],
            ),
            (
                "four_eyes_from = \"SECRET\"\napprovers = []\n",
                "line 17",
                &["release.approvers", "empty"],
            ),
            (
                "four_eyes_from = \"SECRET\"\n",
                "line 15,",
                &["release.approvers", "empty"],
            ),
            (
                "four_eyes_from = \"SECRET\"\napprovers = [\"Bob Smith\"]\n",
                "line 17",
                &["release.approvers", "Bob Smith", "certificate"],
            ),
            (
                "four_eyes_from = \"SECRET\"\napprovers = [\"bob\", \"bob\"]\n",
                "line 17",
                &["release.approvers", "twice"],
            ),
            (
                "approvers = [\"bob\"]\n",
                "line 15,",
                &["release:", "no rule", "four_eyes_from"],
            ),
            (
                "four_eyes_from = \"SECRET\"\napprovers = [\"bob\"]\nquorum = 2\n",
                "line 18",
                &["quorum"],
            ),
            (
                "four_eyes_from = 4\napprovers = [\"bob\"]\n",
                "line 16",
                &["release.four_eyes_from: invalid type", "string"],
            ),
        ];
        for (table, line, needles) in cases {
            let err = release_error(table);
            assert!(
                err.starts_with(&format!("/etc/liaison/node.toml: {line}")),
                "{table:?}: {err}"
            );
            for n in *needles {
                assert!(err.contains(n), "{table:?}: {err} lacks {n:?}");
            }
        }
    }

    #[test]
    fn the_link_table_sets_the_push_batch_within_bounds() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.link.push_batch, 256);
        assert_eq!(c.link.push_batch_bytes, 256 * 1024);
        let c = parse(&format!(
            "{GOOD}\n[link]\npush_batch = 1\npush_batch_bytes = 2048\n"
        ))
        .unwrap();
        assert_eq!((c.link.push_batch, c.link.push_batch_bytes), (1, 2048));
        for (table, needle) in [
            (
                "push_batch = 0",
                "link.push_batch = 0 is out of range; use 1",
            ),
            (
                "push_batch = 4097",
                "link.push_batch = 4097 is out of range",
            ),
            (
                "push_batch_bytes = 10",
                "link.push_batch_bytes = 10 is too small",
            ),
            ("batch = 3", "unknown field"),
        ] {
            let err = parse(&format!("{GOOD}\n[link]\n{table}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{table}: {err}");
            assert!(err.contains("/etc/liaison/node.toml"), "{table}: {err}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let r = Retry {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        assert!(r.backoff(1) <= Duration::from_millis(100));
        assert!(r.backoff(3) >= Duration::from_millis(300));
        assert!(r.backoff(60) <= Duration::from_millis(1_000));
        assert!(r.backoff(60) >= Duration::from_millis(750));
    }
}
