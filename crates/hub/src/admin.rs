//! The `Admin` service, and the governance reload behind it and behind
//! SIGHUP.
//!
//! A reload reads the governance file named in the hub configuration (never
//! a file named by the caller), validates it with the same parser as at
//! start-up, and refuses what a running hub cannot change: the federation
//! (every certificate names it) and the hub body (it decides who may
//! administer and audit everything). A valid, different file is first
//! audited (event `policy`, rule `policy.reload`, stamped with the new
//! version) and only then put in force with
//! `HubState::put_in_force`, so every record stamped with the new
//! version follows the record of the reload in the log. A refused file is
//! audited too (rule `policy.reload_refused`, stamped with the version that
//! stays) and changes nothing else. A reload holds the governance's change
//! lock (see [`crate::governance`]) from reading the value in force to
//! putting the new one in force, as an administrator's state change does, so
//! two reloads, or a reload and a state change, cannot interleave their
//! reads, records and swaps.
//!
//! With a `[tls] crl` file configured, every reload re-reads it too: an
//! unusable CRL refuses the whole reload (the governance and the CRL in
//! force stay), a usable one is put in force for the next TLS handshakes,
//! after the audit record (whose reason says `crl: N revoked
//! certificates`). A changed CRL alone, with the governance unchanged, is
//! audited under [`RULE_RELOAD`] with the version in force.

use std::path::PathBuf;
use std::sync::Arc;

use liaison_pki::{caller_from_extensions, Crls, LoadedTls, ServerConfig, TlsFiles};
use liaison_policy::{Governance, Rule};
use liaison_proto::v1 as pb;
use liaison_types::{now_ms, Identity};
use tokio::sync::{watch, Mutex};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::{HubError, HubState};

/// The actor of a reload asked for by a signal.
pub const SIGNAL_ACTOR: &str = "signal:SIGHUP";
/// The actor of a reload because a certificate, key or CRL file changed.
pub const FILES_ACTOR: &str = "hub:tls-files";
/// Rule of the audit record of a reload that put a new version in force.
pub const RULE_RELOAD: Rule = Rule::PolicyReload;
/// Rule of the audit record of a refused reload.
pub const RULE_RELOAD_REFUSED: Rule = Rule::PolicyReloadRefused;
/// Longest reason written to the audit log for a refused reload, in
/// characters (the full text goes to the caller and the hub's log).
const MAX_AUDIT_REASON_CHARS: usize = 300;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Version in force before.
    pub previous_version: String,
    /// Version in force now.
    pub version: String,
    /// Whether a different governance was put in force.
    pub changed: bool,
    /// Bodies in the governance now in force.
    pub bodies: usize,
    /// Audit position of the reload's record; 0 when nothing changed.
    pub audit_seq: u64,
}

/// When the governance in force was loaded, and the last refused attempt.
#[derive(Debug)]
struct ReloadStatus {
    loaded_at_ms: i64,
    last_refusal: Option<(i64, String)>,
}

/// The TLS files a reload re-reads (certificate, key, CA and CRL), and
/// where the server configuration they give goes.
#[derive(Debug)]
pub struct TlsReload {
    files: TlsFiles,
    configs: watch::Sender<Arc<ServerConfig>>,
    /// What is in force (changed under the reloader's status lock).
    in_force: std::sync::Mutex<LoadedTls>,
}

impl TlsReload {
    /// Reloads of `files` for a server whose configuration in force (built
    /// from `loaded`) is the latest value of `configs`.
    pub fn new(
        files: TlsFiles,
        loaded: LoadedTls,
        configs: watch::Sender<Arc<ServerConfig>>,
    ) -> Self {
        Self {
            files,
            configs,
            in_force: std::sync::Mutex::new(loaded),
        }
    }

    /// Reads every file again; the error says what is wrong. A certificate
    /// that is not a hub certificate of the same federation is refused.
    fn read(&self) -> Result<LoadedTls, String> {
        let cert = self.files.cert.display();
        let loaded = LoadedTls::load(&self.files).map_err(|e| e.to_string())?;
        let id = loaded
            .material
            .identity_as(liaison_types::Role::Hub, None)
            .map_err(|e| format!("{cert}: {e}"))?;
        let was = self.lock().material.identity().map_err(|e| e.to_string())?;
        if id.federation != was.federation {
            return Err(format!(
                "{cert}: the certificate is now of federation {}, not {}; point [tls] cert at this hub's",
                id.federation, was.federation
            ));
        }
        Ok(loaded)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadedTls> {
        self.in_force
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self, loaded: &LoadedTls) -> bool {
        self.lock().differs_from(loaded)
    }

    /// What a reload record says of the TLS files.
    fn note(&self, loaded: &LoadedTls, changed: bool) -> String {
        let expires = loaded
            .material
            .expiries()
            .ok()
            .and_then(|e| {
                e.first()
                    .map(|(_, t)| liaison_types::rfc3339(t.saturating_mul(1000)))
            })
            .unwrap_or_else(|| "?".into());
        let crl = loaded.crls.as_ref().map_or_else(String::new, |c| {
            format!(", crl: {} revoked certificates", c.revoked())
        });
        format!(
            "tls: certificate expires {expires}{crl}{}",
            if changed { "" } else { " (unchanged)" }
        )
    }

    /// Puts a configuration in force for the next handshakes.
    fn put_in_force(&self, loaded: LoadedTls) {
        self.configs.send_replace(Arc::clone(&loaded.server));
        liaison_pki::warn_if_expiring(&loaded.material, now_ms() / 1000);
        let revoked = loaded.crls.as_ref().map_or(0, Crls::revoked);
        *self.lock() = loaded;
        tracing::info!(cert = %self.files.cert.display(), revoked, "certificates, key and crl in force for new connections");
    }
}

/// Reloads the hub's governance file; shared by the `Admin` service and the
/// signal handler.
#[derive(Debug)]
pub struct PolicyReloader {
    state: Arc<HubState>,
    file: PathBuf,
    /// The CRL reloaded with the governance, if configured.
    tls: Option<TlsReload>,
    /// Held for the whole of a reload: reloads run one at a time.
    status: Mutex<ReloadStatus>,
}

impl PolicyReloader {
    /// A reloader of `file` for a hub whose governance in force was just
    /// loaded from it.
    pub fn new(state: Arc<HubState>, file: PathBuf) -> Self {
        Self {
            state,
            file,
            tls: None,
            status: Mutex::new(ReloadStatus {
                loaded_at_ms: now_ms(),
                last_refusal: None,
            }),
        }
    }

    /// Also re-reads the CRL file on every reload.
    pub fn with_tls(mut self, tls: TlsReload) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Re-reads, validates and puts in force the governance file; `actor` is
    /// who asked (an admin's URI, or [`SIGNAL_ACTOR`]).
    ///
    /// An unreadable or invalid file is refused with
    /// [`HubError::PolicyRefused`] and the governance in force stays. A file
    /// identical to the one in force changes nothing and writes no record.
    pub async fn reload(&self, actor: &str) -> Result<Reloaded, HubError> {
        let mut status = self.status.lock().await;
        // Held until the new governance is in force, and shared with state
        // changes: nothing can change the governance between the read below
        // and the swap.
        let change = self.state.governance_change().await;
        let in_force = change.current();
        // Compare with the file as last loaded: administrators' state
        // overrides stay in force across reloads.
        let current = Arc::clone(in_force.file());
        // What decisions are stamped with: the file with the overrides.
        let effective = Arc::clone(in_force.effective());
        let read = match self.read_candidate(&current).await {
            Ok(g) => match self.tls.as_ref().map(TlsReload::read).transpose() {
                Ok(tls) => Ok((g, tls)),
                Err(problem) => Err(format!(
                    "{problem}; the certificates, key and crl in force stay too, fix the file and reload again"
                )),
            },
            Err(problem) => Err(problem),
        };
        let (candidate, new_tls) = match read {
            Ok(read) => read,
            Err(problem) => {
                let err = self.refuse(&effective, problem, actor).await;
                if let HubError::PolicyRefused { problem, .. } = &err {
                    status.last_refusal = Some((now_ms(), problem.clone()));
                }
                return Err(err);
            }
        };
        status.last_refusal = None;
        let crl_changed = match (&self.tls, &new_tls) {
            (Some(tls), Some(loaded)) => tls.changed(loaded),
            _ => false,
        };
        // The TLS files are named in the record when they changed, and
        // always when a CRL is configured (which certificates it revokes is
        // part of what the hub enforces).
        let crl_note = match (&self.tls, &new_tls) {
            (Some(tls), Some(loaded)) if crl_changed || loaded.crls.is_some() => {
                Some(tls.note(loaded, crl_changed))
            }
            _ => None,
        };
        if candidate.version() == current.version() {
            let mut audit_seq = 0;
            if let (true, Some(tls), Some(loaded), Some(note)) =
                (crl_changed, &self.tls, new_tls, &crl_note)
            {
                // The governance is the same but the CRL is new: audit it,
                // then put it in force.
                audit_seq = self
                    .state
                    .store()
                    .audit_policy_change(
                        RULE_RELOAD,
                        format!("version {} unchanged; {note}", effective.version()),
                        effective.version().to_owned(),
                        actor.to_owned(),
                        now_ms(),
                    )
                    .await?;
                tls.put_in_force(loaded);
            } else {
                tracing::info!(actor, version = %effective.version(), "governance reload: file unchanged");
            }
            return Ok(Reloaded {
                previous_version: effective.version().to_owned(),
                version: effective.version().to_owned(),
                changed: false,
                bodies: current.bodies().count(),
                audit_seq,
            });
        }
        // Versions as stamped on decisions: the file with the overrides.
        let next = in_force.with_file(candidate);
        let (old, new) = (
            in_force.effective().version().to_owned(),
            next.effective().version().to_owned(),
        );
        let bodies = next.effective().bodies().count();
        let mut reason = format!("version {old} -> {new}");
        for change in state_changes(in_force.effective(), next.effective()) {
            reason.push_str("; ");
            reason.push_str(&change);
        }
        if let Some(note) = &crl_note {
            reason.push_str("; ");
            reason.push_str(note);
        }
        // Audit first: once the record is durable, every decision stamped
        // with the new version follows it in the log.
        let audit_seq = self
            .state
            .store()
            .audit_policy_change(RULE_RELOAD, reason, new.clone(), actor.to_owned(), now_ms())
            .await?;
        if let (Some(tls), Some(loaded)) = (&self.tls, new_tls) {
            if crl_changed {
                tls.put_in_force(loaded);
            }
        }
        if let Err(e) = self.state.put_in_force(&change, next) {
            // Only a store failure can get here; say so in the log, which
            // otherwise claims the new version is in force.
            let _ = self
                .refuse(
                    &effective,
                    format!("version {new} could not be put in force: {e}"),
                    actor,
                )
                .await;
            return Err(e);
        }
        status.loaded_at_ms = now_ms();
        tracing::info!(actor, previous_version = %old, version = %new, bodies, "governance reloaded");
        Ok(Reloaded {
            previous_version: old,
            version: new,
            changed: true,
            bodies,
            audit_seq,
        })
    }

    /// Reads and validates the file; the error is `file:line:column: key:
    /// problem` where the place is known.
    async fn read_candidate(&self, current: &Governance) -> Result<Governance, String> {
        let name = self.file.display().to_string();
        let text = tokio::fs::read_to_string(&self.file)
            .await
            .map_err(|e| format!("{name}: cannot read the governance file: {e}"))?;
        let gov = Governance::from_toml(&name, &text).map_err(|e| e.to_string())?;
        if gov.federation() != current.federation() {
            return Err(format!(
                "{}: federation: changes from '{}' to '{}'; every certificate names the federation, so a new one needs new certificates and a restart, not a reload",
                key_location(&name, &text, "federation"),
                current.federation(),
                gov.federation()
            ));
        }
        if gov.hub_body() != current.hub_body() {
            return Err(format!(
                "{}: hub_body: changes from '{}' to '{}'; the body that runs the hub cannot change while it runs, restart the hub instead",
                key_location(&name, &text, "hub_body"),
                current.hub_body(),
                gov.hub_body()
            ));
        }
        crate::service::check_log_key(&gov, &self.state.store().log_verifier_text())
            .map_err(|e| format!("{}: {e}", key_location(&name, &text, "log_key")))?;
        Ok(gov)
    }

    /// Audits a refused reload and returns the error for the caller.
    async fn refuse(&self, current: &Governance, problem: String, actor: &str) -> HubError {
        tracing::warn!(actor, version = %current.version(), problem, "governance reload refused");
        let written = self
            .state
            .store()
            .audit_policy_change(
                RULE_RELOAD_REFUSED,
                audit_reason(&problem),
                current.version().to_owned(),
                actor.to_owned(),
                now_ms(),
            )
            .await;
        match written {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not audit a refused governance reload"),
        }
        HubError::PolicyRefused {
            problem,
            kept: current.version().to_owned(),
        }
    }

    /// The governance in force and the state of reloads.
    pub async fn describe(&self) -> pb::GetPolicyResponse {
        let status = self.status.lock().await;
        let gov = self.state.governance();
        let (last_refusal_at_ms, last_refusal) = status.last_refusal.clone().unwrap_or_default();
        pb::GetPolicyResponse {
            version: gov.version().to_owned(),
            file: self.file.display().to_string(),
            bodies: count(gov.bodies().count()),
            federation: gov.federation().to_owned(),
            hub_body: gov.hub_body().to_string(),
            loaded_at_ms: status.loaded_at_ms,
            last_refusal,
            last_refusal_at_ms,
        }
    }

    /// Refuses callers that are not admins of the hub's own body (the
    /// interceptor has already refused other roles).
    fn check_admin(&self, caller: &Identity) -> Result<(), HubError> {
        let gov = self.state.governance();
        if caller.body == *gov.hub_body() {
            return Ok(());
        }
        tracing::warn!(caller = %caller, "refused an admin of another body");
        Err(HubError::NotHubAdmin {
            caller: caller.body.to_string(),
            hub_body: gov.hub_body().to_string(),
        })
    }
}

/// Reloads on every item of `reloads` (the actor who asked) until the
/// stream ends or the hub stops. Failures are logged (and refusals
/// audited); the hub keeps running.
pub(crate) async fn reload_on_signal(
    reloader: Arc<PolicyReloader>,
    mut reloads: impl Stream<Item = &'static str> + Unpin,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            item = reloads.next() => {
                let Some(actor) = item else { return };
                // Outcomes are logged by `reload` itself.
                let _ = reloader.reload(actor).await;
            }
            () = async { let _ = stopping.wait_for(|s| *s).await; } => return,
        }
    }
}

/// `file:line:column` of a top-level `key = ...` line, or just `file`.
fn key_location(name: &str, text: &str, key: &str) -> String {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        // Top-level keys come before the first table header.
        if trimmed.starts_with('[') {
            break;
        }
        let is_key = trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key {
            return format!("{name}:{}:{}", i + 1, line.len() - trimmed.len() + 1);
        }
    }
    name.to_owned()
}

/// One line, bounded: a refusal's reason as written to the audit log.
/// Bodies whose state the new governance changes, for the reload record:
/// a suspended or revoked body's queue is held, not dropped, until it is
/// reinstated.
fn state_changes(old: &Governance, new: &Governance) -> Vec<String> {
    new.bodies()
        .filter_map(|b| {
            let before = old.body(&b.id).map(|o| o.state);
            (before != Some(b.state)).then(|| match (before, b.is_active()) {
                (None, _) => format!("{} added ({})", b.id, b.state),
                (Some(_), true) => format!("{} reinstated: its held queue is delivered", b.id),
                (Some(_), false) => format!("{} {}: its queue is held", b.id, b.state),
            })
        })
        .collect()
}

fn audit_reason(problem: &str) -> String {
    let flat: String = problem
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= MAX_AUDIT_REASON_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_AUDIT_REASON_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The `Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService(pub Arc<PolicyReloader>);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn set_body_state(
        &self,
        req: Request<pb::SetBodyStateRequest>,
    ) -> Result<Response<pb::SetBodyStateResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.check_admin(&caller)?;
        let r = req.into_inner();
        let (previous_version, version, audit_seq) = self
            .0
            .state
            .set_body_state(&r.body, r.state.trim(), &r.reason, &caller)
            .await?;
        Ok(Response::new(pb::SetBodyStateResponse {
            previous_version,
            version,
            audit_seq,
        }))
    }

    async fn reload_policy(
        &self,
        req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.check_admin(&caller)?;
        let r = self.0.reload(&caller.uri()).await?;
        Ok(Response::new(pb::ReloadPolicyResponse {
            previous_version: r.previous_version,
            version: r.version,
            changed: r.changed,
            bodies: count(r.bodies),
            audit_seq: r.audit_seq,
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let caller = caller_from_extensions(&req)?.clone();
        self.0.check_admin(&caller)?;
        Ok(Response::new(self.0.describe().await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_are_located_before_the_first_table() {
        let text = "# comment\nversion = 1\n  federation   = \"x\"\n[[body]]\nfederation = \"y\"\n";
        assert_eq!(key_location("g.toml", text, "federation"), "g.toml:3:3");
        assert_eq!(key_location("g.toml", text, "hub_body"), "g.toml");
        assert_eq!(
            key_location("g.toml", "federation_x = 1\n", "federation"),
            "g.toml"
        );
    }

    #[test]
    fn audit_reasons_are_one_bounded_line() {
        assert_eq!(audit_reason("a\nb"), "a b");
        let long = "x".repeat(1000);
        let r = audit_reason(&long);
        assert_eq!(r.chars().count(), MAX_AUDIT_REASON_CHARS);
        assert!(r.ends_with('…'));
    }
}
