//! Certificates, keys and the CRL reloaded without a restart: on SIGHUP, or
//! when one of the files changes (checked every few seconds). A reload
//! reads every file again and builds the server and client configurations
//! from them; if anything is wrong, the configuration in force stays and
//! the error says what to fix. New handshakes take the new configuration;
//! connections already open keep theirs until they end (the servers close
//! every connection after `[limits] max_connection_age_ms`).
//!
//! During a CA rotation the CA file holds both CA certificates, old and
//! new, so that certificates of either are trusted; once every certificate
//! has been reissued under the new CA, the old one is removed from the
//! file (see `liaison pki rotate`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};

use crate::{client_config, server_config_with_crls, Crls, PkiError, TlsFiles, TlsMaterial};

/// Everything a process's TLS is built from, as read from its files.
#[derive(Clone)]
pub struct LoadedTls {
    /// The certificates and the key.
    pub material: TlsMaterial,
    /// The CRL, if configured.
    pub crls: Option<Crls>,
    /// The server configuration they give.
    pub server: Arc<ServerConfig>,
    /// The client configuration they give (a node's, to the hub).
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("material", &self.material)
            .finish_non_exhaustive()
    }
}

impl LoadedTls {
    /// Reads every file of `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, PkiError> {
        let material = TlsMaterial::load(files)?;
        let crls = match &files.crl {
            Some(path) => Some(Crls::load(path, &material.ca_pem)?),
            None => None,
        };
        let server = server_config_with_crls(&material, crls.as_ref())?;
        let client = client_config(&material)?;
        Ok(Self {
            material,
            crls,
            server,
            client,
        })
    }

    /// Whether `other` holds other certificates, key or CRL than `self`.
    pub fn differs_from(&self, other: &Self) -> bool {
        self.material.ca_pem != other.material.ca_pem
            || self.material.cert_pem != other.material.cert_pem
            || self.material.key_pem != other.material.key_pem
            || self.crls.as_ref().map(Crls::pem) != other.crls.as_ref().map(Crls::pem)
    }
}

/// What identifies a file's content cheaply: its modification time and
/// length (`None` while it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

/// The stamps of every file of `files`.
fn stamps(files: &TlsFiles) -> Vec<(PathBuf, Stamp)> {
    std::iter::once(&files.ca)
        .chain([&files.cert, &files.key])
        .chain(files.crl.as_ref())
        .map(|p| {
            let stamp = std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p.clone(), stamp)
        })
        .collect()
}

/// Yields an item whenever a file of `files` changes (checked every
/// `every`), until the receiver goes away; and every [`EXPIRY_CHECK_EVERY`]
/// logs a warning for a certificate that expires within
/// [`EXPIRY_WARNING`], so that a process that is never reloaded still says
/// so well before. A file being rewritten may be
/// seen half-written: the reload then fails, says so, and the next change
/// (the end of the write) reloads again.
pub fn watch_files(files: TlsFiles, every: Duration) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut last = stamps(&files);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut warned = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = tx.closed() => return,
            }
            if warned.elapsed() >= EXPIRY_CHECK_EVERY {
                warned = tokio::time::Instant::now();
                if let Ok(m) = TlsMaterial::load(&files) {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                    warn_if_expiring(&m, now);
                }
            }
            let now = stamps(&files);
            if now != last {
                last = now;
                let names: Vec<String> =
                    last.iter().map(|(p, _)| p.display().to_string()).collect();
                tracing::info!(files = %names.join(", "), "a certificate, key or crl file changed; reloading");
                // A reload already asked for covers this change too.
                let _ = tx.try_send(());
            }
        }
    });
    rx
}

/// When the certificate in `files` expires (Unix seconds), as the file is
/// now: what a process takes within [`TLS_CHECK_EVERY`] of a change. `None`
/// if it cannot be read.
pub fn cert_expires(files: &TlsFiles) -> Option<i64> {
    TlsMaterial::load(files)
        .and_then(|m| m.expiries())
        .ok()?
        .into_iter()
        .find(|(which, _)| *which == "cert")
        .map(|(_, at)| at)
}

/// How often the certificate, key and CRL files are checked for a change.
pub const TLS_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often a running process checks its certificates' expiry.
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// How soon before expiry a certificate is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Logs a warning for each certificate of `material` that expires within
/// [`EXPIRY_WARNING`] of `now_s` (Unix seconds), or has expired; returns
/// how many.
pub fn warn_if_expiring(material: &TlsMaterial, now_s: i64) -> usize {
    let Ok(expiries) = material.expiries() else {
        return 0;
    };
    let within = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    let mut warned = 0;
    for (which, at) in expiries {
        let left = at - now_s;
        if left < within {
            warned += 1;
            tracing::warn!(
                certificate = which,
                expires_in_days = left / 86_400,
                "certificate expires soon (or has expired); issue a new one and reload (SIGHUP)"
            );
        }
    }
    warned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_near_its_end_is_warned_about_and_one_far_from_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::DevPkiSpec::standard(
            "liaison.test",
            &liaison_types::BodyId::parse("alpha").unwrap(),
            vec![liaison_types::BodyId::parse("alpha").unwrap()],
        );
        crate::generate_dev_pki(dir.path(), &spec).unwrap();
        let m = TlsMaterial::load(&TlsFiles::in_dev_dir(dir.path(), "hub")).unwrap();
        let cert_expires = m.expiries().unwrap()[0].1;
        assert_eq!(
            warn_if_expiring(&m, cert_expires - 365 * 86_400 + 3600),
            0,
            "a year left"
        );
        assert_eq!(
            warn_if_expiring(&m, cert_expires - 10 * 86_400),
            1,
            "ten days left: the leaf"
        );
        assert_eq!(warn_if_expiring(&m, cert_expires + 1), 1, "expired");
    }

    #[tokio::test]
    async fn a_changed_file_is_noticed_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            crl: None,
        };
        for p in [&files.ca, &files.cert, &files.key] {
            std::fs::write(p, "x").unwrap();
        }
        let mut changes = watch_files(files.clone(), Duration::from_millis(20));
        let quiet = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await;
        assert!(quiet.is_err(), "nothing changed");
        std::fs::write(&files.cert, "longer now").unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
        assert_eq!(seen.unwrap(), Some(()));
        std::fs::remove_file(&files.key).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await;
        assert_eq!(seen.unwrap(), Some(()), "a file gone is a change too");
    }
}
