//! The dev PKI: a federation CA, the hub, one node per body and sample
//! officer, auditor and admin certificates, written as PEM files.
//!
//! Layout under the PKI directory:
//!
//! ```text
//! ca.pem  ca.key.pem                federation CA
//! hub.pem hub.key.pem               spiffe://<fed>/org/<hub_body>/hub/hub
//! <body>/node.pem ...               spiffe://<fed>/org/<body>/node/node
//! <body>/officer-<name>.pem ...     spiffe://<fed>/org/<body>/officer/<name>
//! <body>/auditor-<name>.pem ...     spiffe://<fed>/org/<body>/auditor/<name>
//! <body>/admin-<name>.pem ...       spiffe://<fed>/org/<body>/admin/<name>
//! <hub_body>/oversight-<name>.pem   spiffe://<fed>/org/<hub_body>/oversight/<name>
//! log.key log.vkey                  the audit log's Ed25519 note key (C2SP
//!                                   signed-note), named <fed>/audit
//! <body>/witness.key witness.vkey   the body's witness key (C2SP
//!                                   tlog-cosignature), named <fed>/witness/<body>
//! witnesses.vkeys                   every body's witness verifier key
//! deconfliction.key                 the federation's deconfliction key (32
//!                                   random bytes, hex), which every node
//!                                   holds and the hub never does
//! ```
//!
//! `ca.pem` is the commit marker: it is always the last file to appear, so a
//! directory with `ca.pem` holds a complete PKI. Everything is first written
//! into a staging directory next to the target and then renamed into place,
//! so a crash leaves either no PKI or a whole one (plus a stray staging
//! directory that is safe to delete).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use liaison_types::{BodyId, Identity, Role};

use crate::{CertificateAuthority, PkiError};

/// File name of the federation CA certificate, the commit marker of a PKI
/// directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the federation CA private key.
pub const CA_KEY_FILE: &str = "ca.key.pem";

/// What the dev PKI contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiSpec {
    /// Federation trust domain, for example `liaison.dev`.
    pub federation: String,
    /// The body that runs the hub.
    pub hub_body: BodyId,
    /// Bodies that get a node certificate and the sample people below.
    pub bodies: Vec<BodyId>,
    /// Officer names issued in every body, for example `["alice", "bob"]`.
    pub officers: Vec<String>,
    /// Auditor names issued in every body, for example `["audit"]`.
    pub auditors: Vec<String>,
    /// Admin names issued in every body.
    pub admins: Vec<String>,
    /// Oversight auditor names (the federation's independent control body,
    /// which reads the whole audit log), issued in the hub's body.
    pub oversight: Vec<String>,
}

/// The sample officers the dev PKI issues in every body.
pub const DEV_OFFICERS: [&str; 3] = ["alice", "bob", "carol"];
/// The sample auditor the dev PKI issues in every body.
pub const DEV_AUDITORS: [&str; 1] = ["audit"];
/// The sample admin the dev PKI issues in every body.
pub const DEV_ADMINS: [&str; 1] = ["admin"];
/// The sample oversight auditor the dev PKI issues in the hub's body.
pub const DEV_OVERSIGHT: [&str; 1] = ["ccf"];

/// The audit log's signing key (secret), in a PKI directory.
pub const LOG_KEY_FILE: &str = "log.key";
/// The audit log's verifier key (public).
pub const LOG_VKEY_FILE: &str = "log.vkey";
/// A body's witness signing key (secret), in its directory.
pub const WITNESS_KEY_FILE: &str = "witness.key";
/// A body's witness verifier key (public), in its directory.
pub const WITNESS_VKEY_FILE: &str = "witness.vkey";
/// Every body's witness verifier key, one per line.
pub const WITNESSES_FILE: &str = "witnesses.vkeys";

/// The federation's deconfliction key (secret; nodes only), in hex.
pub const DECONFLICTION_KEY_FILE: &str = "deconfliction.key";

/// A fresh deconfliction key, as its file holds it.
fn deconfliction_key_text() -> Result<String, PkiError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| PkiError::Spec(format!("no randomness for a key: {e}")))?;
    Ok(format!("{}\n", hex::encode(key)))
}

/// Adds the deconfliction key to a PKI directory that lacks it (one made
/// before plans were deconflicted), by a rename.
fn ensure_deconfliction_key(dir: &Path) -> Result<(), PkiError> {
    let to = dir.join(DECONFLICTION_KEY_FILE);
    if to.exists() {
        return Ok(());
    }
    let staging = Staging::create(dir)?;
    staging.write(DECONFLICTION_KEY_FILE, &deconfliction_key_text()?, true)?;
    fs::rename(staging.path.join(DECONFLICTION_KEY_FILE), &to)
        .map_err(|e| PkiError::io("move into place", &to, e))?;
    let _ = fs::remove_dir_all(&staging.path);
    sync_dir(dir)?;
    tracing::info!(dir = %dir.display(), "added the deconfliction key to the dev pki");
    Ok(())
}

/// The audit log's origin (and note key name) in a federation.
pub fn log_origin(federation: &str) -> String {
    format!("{federation}/audit")
}

/// A body's witness key name in a federation.
pub fn witness_name(federation: &str, body: &BodyId) -> String {
    format!("{federation}/witness/{body}")
}

impl DevPkiSpec {
    /// The dev PKI of a federation: a node for each of `bodies`, and in each
    /// body the sample officers [`DEV_OFFICERS`], auditor [`DEV_AUDITORS`]
    /// and admin [`DEV_ADMINS`] that the demo, the tests and the README use.
    pub fn standard(federation: &str, hub_body: &BodyId, bodies: Vec<BodyId>) -> Self {
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect();
        Self {
            federation: federation.to_owned(),
            hub_body: hub_body.clone(),
            bodies,
            officers: names(&DEV_OFFICERS),
            auditors: names(&DEV_AUDITORS),
            admins: names(&DEV_ADMINS),
            oversight: names(&DEV_OVERSIGHT),
        }
    }

    /// Every leaf of the PKI: its path stem relative to the PKI directory
    /// (`hub`, `europol/node`, `europol/officer-alice`) and its identity.
    ///
    /// Validates every identity, so a bad name is reported before anything
    /// is written.
    pub fn leaves(&self) -> Result<Vec<(String, Identity)>, PkiError> {
        let fed = self.federation.as_str();
        let id = |body: &BodyId, role: Role, name: &str| {
            Identity::new(fed, body.as_str(), role, name).map_err(|e| PkiError::Spec(e.0))
        };
        let mut leaves = vec![("hub".to_owned(), id(&self.hub_body, Role::Hub, "hub")?)];
        for name in &self.oversight {
            leaves.push((
                format!("{}/{}-{name}", self.hub_body, Role::Oversight),
                id(&self.hub_body, Role::Oversight, name)?,
            ));
        }
        let mut seen = Vec::new();
        for body in &self.bodies {
            if seen.contains(&body) {
                continue;
            }
            seen.push(body);
            leaves.push((format!("{body}/node"), id(body, Role::Node, "node")?));
            for (role, names) in [
                (Role::Officer, &self.officers),
                (Role::Auditor, &self.auditors),
                (Role::Admin, &self.admins),
            ] {
                for name in names {
                    leaves.push((format!("{body}/{role}-{name}"), id(body, role, name)?));
                }
            }
        }
        Ok(leaves)
    }
}

/// Writes a fresh dev PKI into `dir`, replacing any PKI already there.
///
/// The directory (and its parents) are created if needed; other files in an
/// existing directory are left alone. Private keys are written with mode
/// 0600 on unix.
pub fn generate_dev_pki(dir: &Path, spec: &DevPkiSpec) -> Result<(), PkiError> {
    generate(dir, spec, true).map(|_| ())
}

/// Writes a dev PKI into `dir` unless `dir/ca.pem` already exists; returns
/// whether it generated one.
///
/// An existing PKI is not checked against `spec`: delete the directory (or
/// call [`generate_dev_pki`]) to pick up new bodies or names. When two
/// processes race, exactly one PKI wins and both see it.
pub fn ensure_dev_pki(dir: &Path, spec: &DevPkiSpec) -> Result<bool, PkiError> {
    let marker = dir.join(CA_CERT_FILE);
    if marker
        .try_exists()
        .map_err(|e| PkiError::io("inspect", &marker, e))?
    {
        // A PKI made before the audit log had keys, or before plans were
        // deconflicted, gets them now.
        ensure_note_keys(dir, spec)?;
        ensure_deconfliction_key(dir)?;
        return Ok(false);
    }
    generate(dir, spec, false)
}

/// The note keys of a PKI: the log's and every body's witness key, each
/// pair made from a fresh random seed, and the list of witness verifier
/// keys.
fn note_keys(spec: &DevPkiSpec) -> Result<Vec<(String, String, bool)>, PkiError> {
    use liaison_tlog::note::{key_pair, LOG_KEY_TYPE, WITNESS_KEY_TYPE};
    let seed = || -> Result<[u8; 32], PkiError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| PkiError::Spec(format!("no randomness for a key: {e}")))?;
        Ok(seed)
    };
    let pair =
        |name: &str, ty: u8| key_pair(name, ty, seed()?).map_err(|e| PkiError::Spec(e.to_string()));
    let mut files = Vec::new();
    let (skey, vkey) = pair(&log_origin(&spec.federation), LOG_KEY_TYPE)?;
    files.push((LOG_KEY_FILE.to_owned(), format!("{skey}\n"), true));
    files.push((LOG_VKEY_FILE.to_owned(), format!("{vkey}\n"), false));
    let mut all = String::new();
    let mut seen = Vec::new();
    for body in &spec.bodies {
        if seen.contains(&body) {
            continue;
        }
        seen.push(body);
        let (skey, vkey) = pair(&witness_name(&spec.federation, body), WITNESS_KEY_TYPE)?;
        files.push((
            format!("{body}/{WITNESS_KEY_FILE}"),
            format!("{skey}\n"),
            true,
        ));
        files.push((
            format!("{body}/{WITNESS_VKEY_FILE}"),
            format!("{vkey}\n"),
            false,
        ));
        all.push_str(&vkey);
        all.push('\n');
    }
    files.push((WITNESSES_FILE.to_owned(), all, false));
    files.push((
        DECONFLICTION_KEY_FILE.to_owned(),
        deconfliction_key_text()?,
        true,
    ));
    Ok(files)
}

/// Adds the note keys to a PKI directory that lacks them (one made before
/// the audit log was a signed Merkle log). Each file appears by a rename,
/// the list of witnesses last.
fn ensure_note_keys(dir: &Path, spec: &DevPkiSpec) -> Result<(), PkiError> {
    if dir.join(WITNESSES_FILE).exists() {
        return Ok(());
    }
    let staging = Staging::create(dir)?;
    let files = note_keys(spec)?;
    for (relative, text, secret) in &files {
        staging.write(relative, text, *secret)?;
    }
    for (relative, _, _) in &files {
        let to = dir.join(relative);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| PkiError::io("create", parent, e))?;
        }
        fs::rename(staging.path.join(relative), &to)
            .map_err(|e| PkiError::io("move into place", &to, e))?;
    }
    let _ = fs::remove_dir_all(&staging.path);
    sync_dir(dir)?;
    tracing::info!(dir = %dir.display(), "added the audit log's note keys to the dev pki");
    Ok(())
}

fn generate(dir: &Path, spec: &DevPkiSpec, replace: bool) -> Result<bool, PkiError> {
    let leaves = spec.leaves()?;
    let ca = CertificateAuthority::generate(&format!("liaison {} federation ca", spec.federation))?;

    let staging = Staging::create(dir)?;
    staging.write(CA_KEY_FILE, &ca.key_pem(), true)?;
    staging.write(CA_CERT_FILE, &ca.cert_pem(), false)?;
    for (stem, identity) in &leaves {
        let issued = ca.issue_identity(identity)?;
        staging.write(&format!("{stem}.pem"), &issued.cert_pem, false)?;
        staging.write(&format!("{stem}.key.pem"), &issued.key_pem, true)?;
    }
    for (relative, text, secret) in note_keys(spec)? {
        staging.write(&relative, &text, secret)?;
    }
    let installed = staging.install(dir, replace)?;
    if installed {
        tracing::info!(dir = %dir.display(), federation = %spec.federation, leaves = leaves.len(), "generated dev pki");
    }
    Ok(installed)
}

/// A step of a dev PKI rotation (`liaison pki rotate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// New keys and certificates for every leaf, under the CA in force.
    Leaves,
    /// A new CA: the CA file then holds the new CA and the old one (both
    /// trusted) and the CA key is the new one; the leaves are left alone,
    /// so that every party can take the new CA file before any presents a
    /// certificate of the new CA. [`Rotation::Leaves`] then reissues them
    /// under it; certificates of the old CA are accepted until
    /// [`Rotation::Finish`].
    NewCa,
    /// The end of a CA rotation: the CA file holds the new CA only, and
    /// certificates of the old one are refused.
    Finish,
}

/// What a rotation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// Leaves reissued.
    pub leaves: usize,
    /// CA certificates trusted now.
    pub trusted_cas: usize,
}

/// Rotates the dev PKI in `dir` one step. Every file is replaced by a
/// rename (the CA file first, then each key before its certificate), so a
/// process that reloads meanwhile reads whole files; one that reads a new
/// key with the old certificate refuses that reload and takes the next.
pub fn rotate_dev_pki(dir: &Path, spec: &DevPkiSpec, step: Rotation) -> Result<Rotated, PkiError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let current = CertificateAuthority::load(dir)?;
    let trusted = current.cert_pem();
    let blocks = trusted.matches("-----BEGIN CERTIFICATE-----").count();
    let staging = Staging::create(dir)?;
    let (signer, ca_text, reissue) = match step {
        Rotation::Leaves => (current, None, true),
        Rotation::NewCa => {
            if blocks > 1 {
                return Err(PkiError::Rotation(format!(
                    "{} already holds {blocks} CA certificates: a CA rotation is under way; finish it with `liaison pki rotate --finish` first",
                    ca_path.display()
                )));
            }
            let new = CertificateAuthority::generate(&format!(
                "liaison {} federation ca {}",
                spec.federation,
                since_epoch_secs()
            ))?;
            staging.write(CA_KEY_FILE, &new.key_pem(), true)?;
            let both = format!("{}{}", new.cert_pem(), trusted);
            (new, Some(both), false)
        }
        Rotation::Finish => {
            if blocks < 2 {
                return Err(PkiError::Rotation(format!(
                    "{} holds one CA certificate: no CA rotation is under way (start one with `liaison pki rotate --ca`)",
                    ca_path.display()
                )));
            }
            let first = first_pem_block(&trusted).ok_or_else(|| {
                PkiError::Rotation(format!("{} holds no certificate", ca_path.display()))
            })?;
            (current, Some(first), false)
        }
    };
    let mut order: Vec<String> = Vec::new();
    if let Some(text) = &ca_text {
        staging.write(CA_CERT_FILE, text, false)?;
        order.push(CA_CERT_FILE.to_owned());
        if step == Rotation::NewCa {
            order.push(CA_KEY_FILE.to_owned());
        }
    }
    let mut leaves = 0;
    if reissue {
        for (stem, identity) in spec.leaves()? {
            let issued = signer.issue_identity(&identity)?;
            staging.write(&format!("{stem}.key.pem"), &issued.key_pem, true)?;
            staging.write(&format!("{stem}.pem"), &issued.cert_pem, false)?;
            order.push(format!("{stem}.key.pem"));
            order.push(format!("{stem}.pem"));
            leaves += 1;
        }
    }
    for relative in &order {
        let to = dir.join(relative);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| PkiError::io("create", parent, e))?;
        }
        fs::rename(staging.path.join(relative), &to)
            .map_err(|e| PkiError::io("move into place", &to, e))?;
    }
    sync_dir(dir)?;
    let trusted_cas = fs::read_to_string(&ca_path)
        .map_err(|e| PkiError::io("read", &ca_path, e))?
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    tracing::info!(dir = %dir.display(), ?step, leaves, trusted_cas, "rotated dev pki");
    Ok(Rotated {
        leaves,
        trusted_cas,
    })
}

/// The first PEM block of `text`, with its end line.
fn first_pem_block(text: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &text[start..end]))
}

fn since_epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A private directory next to the target where a PKI is assembled; removed
/// on drop unless it was renamed into place.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(target: &Path) -> Result<Self, PkiError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = target.file_name().ok_or_else(|| {
            PkiError::io(
                "use",
                target,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the pki directory needs a name",
                ),
            )
        })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| PkiError::io("create", &parent, e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = parent.join(format!(
            ".{}.staging-{}-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).map_err(|e| PkiError::io("create", &path, e))?;
        Ok(Self { path })
    }

    fn write(&self, relative: &str, contents: &str, secret: bool) -> Result<(), PkiError> {
        let path = self.path.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| PkiError::io("create", parent, e))?;
        }
        write_new_file(&path, contents.as_bytes(), secret)
    }

    /// Moves the staged PKI to `target`. Returns false when `replace` is
    /// false and another process completed a PKI there first.
    fn install(self, target: &Path, replace: bool) -> Result<bool, PkiError> {
        for dir in staged_dirs(&self.path)? {
            sync_dir(&dir)?;
        }
        // The common case: the target does not exist (or is an empty
        // directory) and one rename publishes everything at once.
        let rename_err = match fs::rename(&self.path, target) {
            Ok(()) => {
                sync_dir(
                    target
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                )?;
                return Ok(true);
            }
            Err(e) => e,
        };
        if !target.is_dir() {
            return Err(PkiError::io("create", target, rename_err));
        }
        let marker = target.join(CA_CERT_FILE);
        if !replace && marker.exists() {
            return Ok(false);
        }
        // The target holds other files: withdraw the marker first so that
        // nobody accepts a half-replaced PKI, move the files in one by one,
        // and put the new marker in last.
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::io("remove", &marker, e)),
        }
        let mut files = Vec::new();
        staged_files(&self.path, Path::new(""), &mut files)?;
        files.retain(|f| f != Path::new(CA_CERT_FILE));
        let mut touched = std::collections::BTreeSet::new();
        for relative in files {
            let to = target.join(&relative);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|e| PkiError::io("create", parent, e))?;
                touched.insert(parent.to_path_buf());
            }
            fs::rename(self.path.join(&relative), &to)
                .map_err(|e| PkiError::io("move into place", &to, e))?;
        }
        for dir in &touched {
            sync_dir(dir)?;
        }
        fs::rename(self.path.join(CA_CERT_FILE), &marker)
            .map_err(|e| PkiError::io("move into place", &marker, e))?;
        sync_dir(target)?;
        Ok(true)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove dev pki staging directory; delete it by hand");
            }
        }
    }
}

/// `root` and every directory below it.
fn staged_dirs(root: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].clone();
        for entry in fs::read_dir(&dir).map_err(|e| PkiError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| PkiError::io("list", &dir, e))?;
            if entry
                .file_type()
                .map_err(|e| PkiError::io("inspect", entry.path(), e))?
                .is_dir()
            {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(dirs)
}

/// Paths of all files below `root`, relative to it.
fn staged_files(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), PkiError> {
    let dir = root.join(relative);
    for entry in fs::read_dir(&dir).map_err(|e| PkiError::io("list", &dir, e))? {
        let entry = entry.map_err(|e| PkiError::io("list", &dir, e))?;
        let rel = relative.join(entry.file_name());
        if entry
            .file_type()
            .map_err(|e| PkiError::io("inspect", entry.path(), e))?
            .is_dir()
        {
            staged_files(root, &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Creates `path` (which must not exist), writes `contents` and flushes them
/// to disk. Secrets are readable by the owner only.
fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .map_err(|e| PkiError::io("create", path, e))?;
    file.write_all(contents)
        .map_err(|e| PkiError::io("write", path, e))?;
    file.sync_all().map_err(|e| PkiError::io("flush", path, e))
}

/// Makes a directory's entries durable (renames and new files in it).
fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| PkiError::io("flush", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
