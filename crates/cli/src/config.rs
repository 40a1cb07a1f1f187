//! `liaison config check FILE`: validates a hub or node configuration file
//! as the process would start from it (environment overrides included),
//! and the files it names: certificates and key, the CRL, the governance.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use liaison_pki::TlsMaterial;
use liaison_types::Role;
use serde_json::json;

use crate::{Failure, Output};

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a hub or node configuration file; errors name the file, the
    /// line and the key (or the environment variable that set it).
    Check(CheckArgs),
}

/// Which process a file configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// The hub (`liaison hub --config FILE`).
    Hub,
    /// An organisation node (`liaison node --config FILE`).
    Node,
}

/// Arguments of `config check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    pub file: PathBuf,
    /// Which process it configures; by default, a file with a `body` key is
    /// a node's and one with a `governance` key the hub's.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
}

/// Runs a `config` subcommand.
pub fn run(c: ConfigCommand, out: Output) -> Result<()> {
    let ConfigCommand::Check(a) = c;
    let text = std::fs::read_to_string(&a.file).map_err(|e| Failure {
        code: 1,
        message: format!("{}: cannot read it: {e}", a.file.display()),
    })?;
    let kind = match a.kind {
        Some(k) => k,
        None => guess(&text).map_err(|why| Failure {
            code: 2,
            message: format!("{}: {why}", a.file.display()),
        })?,
    };
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let (summary, details) = match kind {
        Kind::Hub => {
            let c = liaison_hub::HubConfig::parse_with_env(&a.file, &text, vars)?;
            let m = TlsMaterial::load(&c.tls)?;
            own_certificate(&m, Role::Hub, None, &a.file)?;
            if let Some(crl) = &c.tls.crl {
                liaison_pki::Crls::load(crl, &m.ca_pem)?;
            }
            let gov = liaison_hub::load_governance(&c)?;
            let keys = c.audit.load()?;
            liaison_hub::check_log_key(&gov, &keys.signer.verifier_text())
                .map_err(|e| anyhow::anyhow!("{}: {e}", c.governance.display()))?;
            let unwitnessed: Vec<String> = gov
                .bodies()
                .filter(|b| !keys.witnesses.contains_key(&b.id))
                .map(|b| b.id.to_string())
                .collect();
            (
                format!(
                    "a hub on {}, store {}, governance {} ({} bodies, version {})",
                    c.listen,
                    c.data_dir.display(),
                    c.governance.display(),
                    gov.bodies().count(),
                    gov.version()
                ),
                json!({"listen": c.listen.to_string(), "data_dir": c.data_dir,
                       "governance": c.governance, "bodies": gov.bodies().count(),
                       "policy_version": gov.version(),
                       "log_origin": keys.signer.name(),
                       "witnesses": keys.witnesses.len(),
                       "bodies_without_witness_key": unwitnessed,
                       "metrics": c.metrics.map(|m| m.listen.to_string())}),
            )
        }
        Kind::Node => {
            let c = liaison_node::NodeConfig::parse_with_env(&a.file, &text, vars)?;
            let m = TlsMaterial::load(&c.tls)?;
            own_certificate(&m, Role::Node, Some(&c.body), &a.file)?;
            if let Some(crl) = &c.tls.crl {
                liaison_pki::Crls::load(crl, &m.ca_pem)?;
            }
            let (log_key, witness_key) = c.audit.load()?;
            if !witness_key
                .name()
                .ends_with(&format!("/witness/{}", c.body))
            {
                return Err(Failure {
                    code: 1,
                    message: format!(
                        "{}: [audit] witness_key: the key is named {}, not <federation>/witness/{}; give this body's witness key",
                        a.file.display(),
                        witness_key.name(),
                        c.body
                    ),
                }
                .into());
            }
            let deconfliction = c.plans.load()?.is_some();
            (
                format!(
                    "the node of {} on {}, hub {}, store {}{}",
                    c.body,
                    c.listen,
                    c.hub,
                    c.data_dir.display(),
                    if deconfliction {
                        ""
                    } else {
                        "; no deconfliction key: plans with targets are refused"
                    }
                ),
                json!({"body": c.body, "listen": c.listen.to_string(), "hub": c.hub,
                       "data_dir": c.data_dir, "log_origin": log_key.name(),
                       "witness": witness_key.name(), "deconfliction_key": deconfliction,
                       "metrics": c.metrics.map(|m| m.listen.to_string())}),
            )
        }
    };
    let kind_name = match kind {
        Kind::Hub => "hub",
        Kind::Node => "node",
    };
    match out {
        Output::Json => say!(
            "{}",
            json!({"file": a.file, "kind": kind_name, "ok": true, "config": details})
        ),
        Output::Human => say!("{}: ok, {summary}", a.file.display()),
    }
    Ok(())
}

/// The file's certificate is of `role` (and `body`), or the error names the
/// file.
fn own_certificate(
    m: &TlsMaterial,
    role: Role,
    body: Option<&str>,
    file: &std::path::Path,
) -> Result<()> {
    m.identity_as(role, body).map_err(|e| Failure {
        code: 1,
        message: format!("{}: [tls] cert: {e}", file.display()),
    })?;
    Ok(())
}

/// A node's file has a `body` string, the hub's a `governance` one; a
/// governance file has `[[body]]` tables.
fn guess(text: &str) -> Result<Kind, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not TOML: {}", e.message()))?;
    let body = table.get("body");
    if body.is_some_and(toml::Value::is_array) {
        return Err(
            "this is a governance file ([[body]] tables); check it with `liaison policy check`"
                .into(),
        );
    }
    match (table.contains_key("governance"), body.is_some_and(toml::Value::is_str)) {
        (true, false) => Ok(Kind::Hub),
        (false, true) => Ok(Kind::Node),
        _ => Err("neither a hub file (a governance key) nor a node file (a body key); say which with --kind hub or --kind node".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_follows_from_the_keys() {
        assert_eq!(guess("governance = \"f.toml\""), Ok(Kind::Hub));
        assert_eq!(guess("body = \"europol\""), Ok(Kind::Node));
        assert!(guess("body = \"a\"\ngovernance = \"b\"").is_err());
        assert!(guess("version = 1").unwrap_err().contains("--kind"));
        assert!(guess("not toml =").unwrap_err().starts_with("not TOML"));
        assert!(guess("[[body]]\nid = \"x\"")
            .unwrap_err()
            .contains("policy check"));
    }
}
