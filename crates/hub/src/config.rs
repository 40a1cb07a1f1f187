//! The hub's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use liaison_pki::{ServerLimits, TlsFiles};
use serde::Deserialize;

use crate::HubError;

/// The prefix of the environment variables that override keys of this
/// file, for example `LIAISON_HUB__LISTEN`.
pub const ENV_PREFIX: &str = "LIAISON_HUB__";

/// The hub's configuration (`hub.toml`). Relative paths are resolved against
/// the directory of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// Address to listen on (TLS only), for example `0.0.0.0:7400`.
    pub listen: SocketAddr,
    /// Directory of the durable store; created if absent.
    pub data_dir: PathBuf,
    /// The federation governance file (see `deploy/federation.toml`).
    pub governance: PathBuf,
    /// The hub's certificate, key and the federation CA.
    pub tls: TlsFiles,
    /// The audit log's keys (`[audit] signing_key, witnesses`).
    pub audit: AuditKeys,
    /// The durable store (`[store] cache_bytes`).
    #[serde(default)]
    pub store: liaison_store::StoreOptions,
    /// Protective limits.
    #[serde(default)]
    pub limits: ServerLimits,
    /// Per-peer queue quotas (`[queues] max_messages_per_peer,
    /// max_bytes_per_peer`).
    #[serde(default)]
    pub queues: crate::store::QueueQuota,
    /// The `/metrics` endpoint (`[metrics] listen, tls`); none if absent.
    #[serde(default)]
    pub metrics: Option<liaison_telemetry::metrics::MetricsConfig>,
    /// Trace export (`[telemetry] otlp_endpoint`); off if absent.
    #[serde(default)]
    pub telemetry: liaison_telemetry::trace::TelemetryConfig,
}

impl HubConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, HubError> {
        let text = std::fs::read_to_string(path).map_err(|e| HubError::Config {
            file: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse_with_env(path, &text, std::env::vars())
    }

    /// Parses configuration text with the environment overrides among
    /// `vars` applied ([`ENV_PREFIX`]`KEY`, `TABLE__KEY`; see
    /// `liaison_telemetry::env`). Without any, the same as [`HubConfig::parse`].
    pub fn parse_with_env(
        path: &Path,
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, HubError> {
        let bad = |problem: String| HubError::Config {
            file: path.display().to_string(),
            problem,
        };
        match liaison_telemetry::env::apply(text, ENV_PREFIX, vars).map_err(bad)? {
            None => Self::parse(path, text),
            Some((merged, names)) => Self::parse(path, &merged).map_err(|e| match e {
                HubError::Config { file, problem } => HubError::Config {
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
    pub fn parse(path: &Path, text: &str) -> Result<Self, HubError> {
        let bad = |problem: String| HubError::Config {
            file: path.display().to_string(),
            problem,
        };
        let mut config: HubConfig = toml::from_str(text)
            .map_err(|e| bad(liaison_types::located(text, e.span(), e.message())))?;
        if config.version != 1 {
            return Err(bad(format!(
                "version = {} is not supported; use version = 1",
                config.version
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.data_dir, &mut config.governance] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.tls.resolve(base);
        for p in [&mut config.audit.signing_key, &mut config.audit.witnesses] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(m) = &config.metrics {
            m.check().map_err(bad)?;
        }
        config.telemetry.check().map_err(bad)?;
        config
            .queues
            .check(config.limits.max_request_bytes)
            .map_err(bad)?;
        Ok(config)
    }
}

/// The audit log's keys: the hub's note signing key and the bodies'
/// witness verifier keys.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditKeys {
    /// The file holding the log's signing key, a C2SP signed-note signer
    /// key (`PRIVATE+KEY+<origin>+<id>+<key>`; `liaison pki init` writes
    /// `log.key`). Its name is the log's origin.
    pub signing_key: PathBuf,
    /// The file listing the witnesses' verifier keys, one per line
    /// (`<federation>/witness/<body>+<id>+<key>`; `liaison pki init` writes
    /// `witnesses.vkeys`): the hub keeps a body's cosignatures only if they
    /// verify with its key.
    pub witnesses: PathBuf,
}

/// The keys of [`AuditKeys`], read and checked.
#[derive(Debug, Clone)]
pub struct LoadedAuditKeys {
    /// The log's signing key.
    pub signer: liaison_tlog::LogSigner,
    /// Each body's witness key.
    pub witnesses: std::collections::BTreeMap<liaison_types::BodyId, liaison_tlog::WitnessVerifier>,
}

impl AuditKeys {
    /// Reads both files. A witness key's name must end in `/witness/<body>`,
    /// which says whose it is.
    pub fn load(&self) -> Result<LoadedAuditKeys, HubError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| HubError::Config {
                file: path.display().to_string(),
                problem: format!(
                    "cannot read it: {e}; make the audit keys with `liaison pki init` (or point [audit] at them)"
                ),
            })
        };
        let bad = |path: &Path, problem: String| HubError::Config {
            file: path.display().to_string(),
            problem,
        };
        let signer = liaison_tlog::LogSigner::from_text(&read(&self.signing_key)?)
            .map_err(|e| bad(&self.signing_key, e.to_string()))?;
        let mut witnesses = std::collections::BTreeMap::new();
        for (n, line) in read(&self.witnesses)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |problem: String| bad(&self.witnesses, format!("line {}: {problem}", n + 1));
            let key =
                liaison_tlog::WitnessVerifier::from_text(line).map_err(|e| at(e.to_string()))?;
            let body = key
                .name()
                .rsplit_once("/witness/")
                .map(|(_, b)| b)
                .ok_or_else(|| {
                    at(format!(
                        "the key name {:?} does not end in /witness/<body>",
                        key.name()
                    ))
                })
                .and_then(|b| liaison_types::BodyId::parse(b).map_err(at))?;
            if witnesses.insert(body.clone(), key).is_some() {
                return Err(at(format!("a second witness key for {body}")));
            }
        }
        Ok(LoadedAuditKeys { signer, witnesses })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HubConfig, HubError> {
        HubConfig::parse(Path::new("/etc/liaison/hub.toml"), text)
    }

    const GOOD: &str = r#"
version = 1
listen = "0.0.0.0:7400"
data_dir = "/var/lib/liaison/hub"
governance = "federation.toml"
[tls]
ca = "ca.pem"
cert = "hub.pem"
key = "hub.key.pem"
[audit]
signing_key = "log.key"
witnesses = "witnesses.vkeys"
"#;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn the_environment_overrides_keys_and_its_errors_name_the_variables() {
        let path = Path::new("/etc/liaison/hub.toml");
        let c = HubConfig::parse_with_env(
            path,
            GOOD,
            vars(&[
                ("LIAISON_HUB__LISTEN", "127.0.0.1:7500"),
                ("LIAISON_HUB__DATA_DIR", "data"),
                ("LIAISON_HUB__METRICS__LISTEN", "127.0.0.1:9464"),
                ("LIAISON_NODE__LISTEN", "127.0.0.1:1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7500".parse().unwrap());
        // A relative path from the environment is resolved like one in the file.
        assert_eq!(c.data_dir, Path::new("/etc/liaison/data"));
        assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9464".parse().unwrap());
        // A key the file lacks may come from the environment alone.
        let without = GOOD.replace("listen = \"0.0.0.0:7400\"\n", "");
        assert!(parse(&without).is_err());
        let c = HubConfig::parse_with_env(
            path,
            &without,
            vars(&[("LIAISON_HUB__LISTEN", "127.0.0.1:1")]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 1);
        for (name, value, says) in [
            ("LIAISON_HUB__LISTEN", "nowhere", "invalid socket address"),
            ("LIAISON_HUB__COLOUR", "1", "colour"),
            ("LIAISON_HUB__METRICS__LISTEN", "0.0.0.0:9464", "tls = true"),
            ("LIAISON_HUB__LISTEN__PORT", "1", "listen is a value"),
        ] {
            let e = HubConfig::parse_with_env(path, GOOD, vars(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/etc/liaison/hub.toml"), "{e}");
            assert!(e.contains(name), "{name}: {e}");
            assert!(e.contains(says), "{name}: {e}");
            assert!(
                !e.contains("line "),
                "no line of a text the operator never saw: {e}"
            );
        }
    }

    #[test]
    fn a_good_config_resolves_relative_paths_and_keeps_absolute_ones() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/var/lib/liaison/hub"));
        assert_eq!(c.governance, Path::new("/etc/liaison/federation.toml"));
        assert_eq!(c.tls.key, Path::new("/etc/liaison/hub.key.pem"));
        assert_eq!(c.limits.max_request_bytes, 512 * 1024);
        assert_eq!(c.tls.crl, None);
    }

    #[test]
    fn the_crl_and_the_max_connection_age_are_optional_keys() {
        let text = GOOD.replace(
            "key = \"hub.key.pem\"",
            "key = \"hub.key.pem\"\ncrl = \"crl.pem\"\n[limits]\nmax_connection_age_ms = 1500",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.tls.crl.as_deref(),
            Some(Path::new("/etc/liaison/crl.pem"))
        );
        assert_eq!(
            c.limits.max_connection_age(),
            Some(std::time::Duration::from_millis(1500))
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = HubConfig::parse(
            Path::new("deploy/hub.toml"),
            include_str!("../../../deploy/hub.toml"),
        )
        .unwrap();
        assert_eq!(c.governance, Path::new("deploy/federation.toml"));
        assert_eq!(c.store.cache_bytes, 64 * 1024 * 1024);
        assert_eq!(c.queues, crate::store::QueueQuota::default());
        // A byte quota below the largest request is refused, naming both.
        let small = include_str!("../../../deploy/hub.toml").replace(
            "max_bytes_per_peer = 4294967296",
            "max_bytes_per_peer = 1000",
        );
        let err = HubConfig::parse(Path::new("hub.toml"), &small)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_bytes_per_peer = 1000") && err.contains("max_request_bytes"),
            "{err}"
        );
        // Unknown store keys are refused.
        let bad = include_str!("../../../deploy/hub.toml").replace("cache_bytes", "cache_size");
        let err = HubConfig::parse(Path::new("hub.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache_size"), "{err}");
        let m = c.metrics.unwrap();
        assert_eq!(m.listen, "127.0.0.1:9464".parse().unwrap());
        assert!(!m.tls);
        // Plain metrics on a network address are refused, naming the file.
        let open =
            include_str!("../../../deploy/hub.toml").replace("127.0.0.1:9464", "0.0.0.0:9464");
        let err = HubConfig::parse(Path::new("hub.toml"), &open)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("hub.toml"), "{err}");
        assert!(err.contains("tls = true"), "{err}");
        let tls = open.replace("tls = false", "tls = true");
        assert!(
            HubConfig::parse(Path::new("hub.toml"), &tls)
                .unwrap()
                .metrics
                .unwrap()
                .tls
        );
        let unknown = include_str!("../../../deploy/hub.toml")
            .replace("tls = false", "tls = false\npath = \"/m\"");
        let err = HubConfig::parse(Path::new("hub.toml"), &unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("path"), "{err}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = parse(&GOOD.replace("[tls]", "[tls]\ncolour = 1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/liaison/hub.toml: line 7, column 1"),
            "{err}"
        );
        assert!(err.contains("colour"), "{err}");
        let err = parse(&GOOD.replace("version = 1", "version = 2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("version = 2 is not supported"), "{err}");
        let err = parse(&GOOD.replace("0.0.0.0:7400", "nowhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        let err = parse(&GOOD.replace("governance = \"federation.toml\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("governance"), "{err}");
    }
}
