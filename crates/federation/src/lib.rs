//! A whole federation on loopback: a hub and any set of nodes, each with its
//! own sled directory, configured from real configuration files and talking
//! real mutual TLS. Integration tests and `liaison demo` both use it.
//!
//! Listeners are bound on `127.0.0.1:0` before a service starts, so the
//! address is known without waiting; [`wait_until`] waits on conditions,
//! never on fixed sleeps.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use liaison_pki::{DevPkiSpec, TlsFiles, TlsMaterial};
use liaison_policy::Governance;
use liaison_proto::v1::audit_client::AuditClient;
use liaison_proto::v1::federation_client::FederationClient;
use liaison_proto::v1::node_audit_client::NodeAuditClient;
use liaison_proto::v1::officer_client::OfficerClient;
use liaison_types::{BodyId, Role};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// What can go wrong starting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The governance text is invalid.
    #[error(transparent)]
    Policy(#[from] liaison_policy::PolicyError),
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] liaison_pki::PkiError),
    /// The hub failed.
    #[error(transparent)]
    Hub(#[from] liaison_hub::HubError),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] liaison_node::NodeError),
    /// Files or sockets.
    #[error("{0}")]
    Io(String),
    /// A body not in the governance.
    #[error("no body '{0}' in the governance")]
    UnknownBody(String),
    /// A condition did not come true in time.
    #[error("timed out after {0:?} waiting until {1}")]
    Timeout(Duration, String),
}

fn io(context: &str) -> impl Fn(std::io::Error) -> SandboxError + '_ {
    move |e| SandboxError::Io(format!("{context}: {e}"))
}

/// Waits until `check` returns `Some`, polling every 20 ms; fails naming
/// `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, SandboxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Timeout(timeout, what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service running in this process.
#[derive(Debug)]
struct Running<E> {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), E>>,
}

impl<E> Running<E> {
    async fn stop(mut self) -> Result<(), E> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("service task panicked")
    }
}

/// How the hub runs.
#[derive(Debug)]
enum HubProcess {
    InProcess(Running<liaison_hub::HubError>),
    Child(Child),
    Stopped,
}

/// How a node runs.
#[derive(Debug)]
enum NodeProcess {
    InProcess(Running<liaison_node::NodeError>),
    Child { addr: SocketAddr, child: Child },
}

impl NodeProcess {
    fn addr(&self) -> SocketAddr {
        match self {
            Self::InProcess(r) => r.addr,
            Self::Child { addr, .. } => *addr,
        }
    }

    /// Whether it has stopped by itself.
    fn finished(&mut self) -> bool {
        match self {
            Self::InProcess(r) => r.task.is_finished(),
            Self::Child { child, .. } => matches!(child.try_wait(), Ok(Some(_))),
        }
    }
}

/// Options for [`Sandbox::start`].
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Governance file text.
    pub governance: String,
    /// Bodies to start nodes for; `None` means every body.
    pub nodes: Option<Vec<String>>,
    /// Use (and fill if empty) this certificate directory instead of a fresh
    /// one in the sandbox directory.
    pub certs: Option<PathBuf>,
    /// Keep files here instead of a temporary directory.
    pub dir: Option<PathBuf>,
    /// Node retry delays, in milliseconds (initial, max).
    pub retry_ms: (u64, u64),
    /// How often each node witnesses the hub's audit log, in milliseconds
    /// (`[audit] witness_every_ms`; 300 here, so that tests see
    /// cosignatures soon).
    pub witness_every_ms: u64,
    /// Run the hub from the start as a child process of this `liaison`
    /// binary (see [`Sandbox::start_hub_process`]) instead of in this
    /// process, so that no in-process hub ever holds its store.
    pub hub_process: Option<PathBuf>,
    /// Per body, the contents of its node's `[release]` table (four-eyes
    /// release), as TOML lines without the header, for example
    /// `four_eyes_from = "CONFIDENTIAL"\napprovers = ["bob"]`.
    pub release: BTreeMap<String, String>,
    /// Extra lines for the hub configuration: `[tls]` keys (for example
    /// `crl = "/path/crl.pem"`) and `[limits]` keys (for example
    /// `max_connection_age_ms = 1500`).
    pub hub_tls: Vec<String>,
    /// See [`SandboxOptions::hub_tls`].
    pub hub_limits: Vec<String>,
    /// TOML appended to every node's configuration (whole tables, for
    /// example `[link]\npush_batch = 1`).
    pub node_toml: String,
    /// Run the nodes as child processes of this `liaison` binary too (see
    /// [`SandboxOptions::processes`]).
    pub node_process: Option<PathBuf>,
    /// TOML appended to the hub's configuration (whole tables, after
    /// `[limits]`), for example `[telemetry]\notlp_endpoint = "…"`.
    pub hub_toml: String,
    /// Run the child-process hub inside this network namespace (`ip netns
    /// exec`), listening on this address, which the namespace must own and
    /// the hub's certificate must name (network fault tests).
    pub hub_netns: Option<(String, SocketAddr)>,
}

impl SandboxOptions {
    /// Every body of `governance` gets a node, in a fresh temporary directory.
    pub fn new(governance: &str) -> Self {
        Self {
            governance: governance.to_owned(),
            nodes: None,
            certs: None,
            dir: None,
            retry_ms: (50, 500),
            witness_every_ms: 300,
            hub_process: None,
            release: BTreeMap::new(),
            hub_tls: Vec::new(),
            hub_limits: Vec::new(),
            node_toml: String::new(),
            node_process: None,
            hub_toml: String::new(),
            hub_netns: None,
        }
    }

    /// Appends `toml` (whole tables) to the hub's configuration.
    pub fn hub_toml(mut self, toml: &str) -> Self {
        self.hub_toml.push_str(toml);
        self.hub_toml.push('\n');
        self
    }

    /// Appends `toml` (whole tables) to every node's configuration.
    pub fn node_toml(mut self, toml: &str) -> Self {
        self.node_toml.push_str(toml);
        self.node_toml.push('\n');
        self
    }

    /// Run the hub and every node as child processes of `exe` (the
    /// `liaison` binary), so that each has its own CPU and memory figures
    /// and can be killed.
    pub fn processes(mut self, exe: &Path) -> Self {
        self.hub_process = Some(exe.to_path_buf());
        self.node_process = Some(exe.to_path_buf());
        self
    }

    /// Adds `line` (TOML, for example `crl = "/path/crl.pem"`) to the hub's
    /// `[tls]` table.
    pub fn hub_tls(mut self, line: &str) -> Self {
        self.hub_tls.push(line.to_owned());
        self
    }

    /// Adds `line` (TOML, for example `max_connection_age_ms = 1500`) to the
    /// hub's `[limits]` table.
    pub fn hub_limits(mut self, line: &str) -> Self {
        self.hub_limits.push(line.to_owned());
        self
    }

    /// Gives `body`'s node a `[release]` table with these TOML lines (see
    /// [`SandboxOptions::release`]).
    pub fn release(mut self, body: &str, table: &str) -> Self {
        self.release.insert(body.to_owned(), table.to_owned());
        self
    }

    /// Start nodes only for these bodies.
    pub fn nodes(mut self, bodies: &[&str]) -> Self {
        self.nodes = Some(bodies.iter().map(|b| (*b).to_owned()).collect());
        self
    }

    /// Run the hub as a child process of `exe` (the `liaison` binary) from
    /// the start, so that it can be killed with SIGKILL.
    pub fn hub_process(mut self, exe: &Path) -> Self {
        self.hub_process = Some(exe.to_path_buf());
        self
    }

    /// Run the hub as a child process of `exe` inside the network
    /// namespace `netns`, listening on `addr` (see
    /// [`SandboxOptions::hub_netns`]).
    pub fn hub_in_netns(mut self, exe: &Path, netns: &str, addr: SocketAddr) -> Self {
        self.hub_process = Some(exe.to_path_buf());
        self.hub_netns = Some((netns.to_owned(), addr));
        self
    }
}

/// A running federation on loopback.
#[derive(Debug)]
pub struct Sandbox {
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    certs: PathBuf,
    governance: Governance,
    hub_addr: Option<SocketAddr>,
    hub: HubProcess,
    nodes: BTreeMap<String, NodeProcess>,
    retry_ms: (u64, u64),
    witness_every_ms: u64,
    release: BTreeMap<String, String>,
    hub_tls: Vec<String>,
    hub_limits: Vec<String>,
    node_toml: String,
    node_process: Option<PathBuf>,
    hub_toml: String,
    hub_netns: Option<(String, SocketAddr)>,
    /// Where the in-process hub's `/metrics` listens.
    hub_metrics: Option<SocketAddr>,
    /// Where each in-process node's `/metrics` listens.
    node_metrics: BTreeMap<String, SocketAddr>,
}

/// A metrics listener on loopback, port 0.
async fn metrics_listener() -> Result<(TcpListener, SocketAddr), SandboxError> {
    let l = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(io("binding a metrics listener"))?;
    let addr = l.local_addr().map_err(io("reading a metrics address"))?;
    Ok((l, addr))
}

impl Sandbox {
    /// Writes the governance, makes the certificates, starts the hub and the
    /// nodes in this process.
    pub async fn start(opts: SandboxOptions) -> Result<Self, SandboxError> {
        let governance = Governance::from_toml("governance.toml", &opts.governance)?;
        let (temp, dir) = match &opts.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("liaison-sandbox-")
                    .tempdir()
                    .map_err(io("creating a temporary directory"))?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating the sandbox directory"))?;
        std::fs::write(dir.join("governance.toml"), &opts.governance)
            .map_err(io("writing governance.toml"))?;
        let certs = std::path::absolute(opts.certs.clone().unwrap_or_else(|| dir.join("certs")))
            .map_err(io("resolving the certificate directory"))?;
        liaison_pki::ensure_dev_pki(&certs, &dev_spec(&governance))?;
        let mut sandbox = Self {
            _temp: temp,
            dir,
            certs,
            governance,
            hub_addr: None,
            hub: HubProcess::Stopped,
            nodes: BTreeMap::new(),
            retry_ms: opts.retry_ms,
            witness_every_ms: opts.witness_every_ms,
            release: opts.release.clone(),
            hub_tls: opts.hub_tls.clone(),
            hub_limits: opts.hub_limits.clone(),
            node_toml: opts.node_toml.clone(),
            node_process: opts.node_process.clone(),
            hub_toml: opts.hub_toml.clone(),
            hub_netns: opts.hub_netns.clone(),
            hub_metrics: None,
            node_metrics: BTreeMap::new(),
        };
        match &opts.hub_process {
            Some(exe) => sandbox.start_hub_process(exe).await?,
            None => sandbox.start_hub().await?,
        }
        let bodies: Vec<String> = match opts.nodes {
            Some(n) => n,
            None => sandbox
                .governance
                .bodies()
                .map(|b| b.id.to_string())
                .collect(),
        };
        for body in bodies {
            sandbox.start_node(&body).await?;
        }
        sandbox.wait_ready().await?;
        Ok(sandbox)
    }

    /// Waits until the hub and every node complete a TLS handshake, or
    /// returns the error of one that stopped.
    pub async fn wait_ready(&mut self) -> Result<(), SandboxError> {
        let fed = self.governance.federation().to_owned();
        let hub_stem = format!("{}/node", self.governance.hub_body());
        let mut targets = vec![(None, self.hub_url(), hub_stem, Role::Hub)];
        for body in self.nodes.keys() {
            targets.push((
                Some(body.clone()),
                self.node_url(body)?,
                format!("{body}/officer-alice"),
                Role::Node,
            ));
        }
        for (body, url, stem, role) in targets {
            let material = self.material(&stem)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let finished = match &body {
                    None => matches!(&self.hub, HubProcess::InProcess(r) if r.task.is_finished()),
                    Some(b) => self.nodes.get_mut(b).is_some_and(NodeProcess::finished),
                };
                if finished {
                    return Err(match body {
                        None => self
                            .stop_hub()
                            .await
                            .err()
                            .unwrap_or_else(|| SandboxError::Io("hub stopped".into())),
                        Some(b) => self
                            .stop_node(&b)
                            .await
                            .err()
                            .unwrap_or_else(|| SandboxError::Io(format!("{b} node stopped"))),
                    });
                }
                if liaison_pki::connect(&url, &material, Some(role), &fed)
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(SandboxError::Io(format!("{url} did not answer within 30s")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The sandbox's directory (configs, stores, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate directory.
    pub fn certs(&self) -> &Path {
        &self.certs
    }

    /// The governance in force.
    pub fn governance(&self) -> &Governance {
        &self.governance
    }

    /// The hub's address.
    pub fn hub_url(&self) -> String {
        format!("https://{}", self.hub_addr.expect("hub was started once"))
    }

    /// A running node's address.
    pub fn node_url(&self, body: &str) -> Result<String, SandboxError> {
        let node = self
            .nodes
            .get(body)
            .ok_or_else(|| SandboxError::UnknownBody(format!("{body} (no node running)")))?;
        Ok(format!("https://{}", node.addr()))
    }

    /// Bodies with a running node.
    pub fn running_nodes(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Where the hub's `/metrics` listens (plain HTTP), when it runs in
    /// this process.
    pub fn hub_metrics_addr(&self) -> Option<SocketAddr> {
        match self.hub {
            HubProcess::InProcess(_) => self.hub_metrics,
            _ => None,
        }
    }

    /// Where `body`'s node's `/metrics` listens (plain HTTP), when it runs
    /// in this process.
    pub fn node_metrics_addr(&self, body: &str) -> Option<SocketAddr> {
        match self.nodes.get(body) {
            Some(NodeProcess::InProcess(_)) => self.node_metrics.get(body).copied(),
            _ => None,
        }
    }

    /// Certificate material for a leaf of the dev PKI, for example
    /// `europol/officer-alice`.
    pub fn material(&self, stem: &str) -> Result<TlsMaterial, SandboxError> {
        Ok(TlsMaterial::load(&TlsFiles::in_dev_dir(&self.certs, stem))?)
    }

    fn hub_config_text(&self, addr: SocketAddr) -> String {
        let c = &self.certs;
        let mut text = format!(
            "version = 1\nlisten = \"{addr}\"\ndata_dir = \"hub-data\"\ngovernance = \"governance.toml\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            c.join("ca.pem").display(),
            c.join("hub.pem").display(),
            c.join("hub.key.pem").display()
        );
        for line in &self.hub_tls {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[audit]\nsigning_key = \"{}\"\nwitnesses = \"{}\"\n",
            c.join(liaison_pki::LOG_KEY_FILE).display(),
            c.join(liaison_pki::WITNESSES_FILE).display()
        ));
        if !self.hub_limits.is_empty() {
            text.push_str("\n[limits]\n");
            for line in &self.hub_limits {
                text.push_str(line);
                text.push('\n');
            }
        }
        if !self.hub_toml.is_empty() {
            text.push('\n');
            text.push_str(&self.hub_toml);
        }
        text
    }

    fn write_hub_config(&self, addr: SocketAddr) -> Result<PathBuf, SandboxError> {
        let path = self.dir.join("hub.toml");
        std::fs::write(&path, self.hub_config_text(addr)).map_err(io("writing hub.toml"))?;
        Ok(path)
    }

    /// Binds the hub's address: port 0 the first time, the same port after.
    async fn bind_hub(&self) -> Result<TcpListener, SandboxError> {
        let addr = self
            .hub_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        TcpListener::bind(addr)
            .await
            .map_err(io("binding the hub listener"))
    }

    /// Starts (or restarts, on the same port and store) the hub in this process.
    pub async fn start_hub(&mut self) -> Result<(), SandboxError> {
        let listener = self.bind_hub().await?;
        let addr = listener
            .local_addr()
            .map_err(io("reading the hub address"))?;
        self.hub_addr = Some(addr);
        let config = liaison_hub::HubConfig::load(&self.write_hub_config(addr)?)?;
        let (metrics, metrics_addr) = metrics_listener().await?;
        self.hub_metrics = Some(metrics_addr);
        let listeners = liaison_hub::Listeners {
            api: listener,
            metrics: Some(metrics),
            ready: None,
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(report_exit(
            "hub".into(),
            liaison_hub::run(config, listeners, async {
                let _ = stopped.await;
            }),
        ));
        self.hub = HubProcess::InProcess(Running {
            addr,
            stop: Some(stop),
            task,
        });
        Ok(())
    }

    /// Starts (or restarts) the hub as a child process of `exe` (the
    /// `liaison` binary), on the same port and store, and waits until it
    /// listens. The child can then be killed with SIGKILL by [`Sandbox::kill_hub`].
    pub async fn start_hub_process(&mut self, exe: &Path) -> Result<(), SandboxError> {
        // Reserve a port the first time by binding and releasing it (in a
        // namespace of its own, the hub's address is its own).
        let addr = match (self.hub_addr, &self.hub_netns) {
            (Some(a), _) => a,
            (None, Some((_, a))) => *a,
            (None, None) => self
                .bind_hub()
                .await?
                .local_addr()
                .map_err(io("reading the hub address"))?,
        };
        self.hub_addr = Some(addr);
        let config = self.write_hub_config(addr)?;
        let serve: [&std::ffi::OsStr; 3] =
            ["hub".as_ref(), "--config".as_ref(), config.as_os_str()];
        let (child, _) = match &self.hub_netns {
            None => start_server(exe, &serve, &self.dir, "hub").await?,
            Some((netns, _)) => {
                // `ip netns exec` enters the namespace and executes the hub
                // in its own process: the child is still the hub.
                let mut args: Vec<&std::ffi::OsStr> = vec![
                    "netns".as_ref(),
                    "exec".as_ref(),
                    netns.as_ref(),
                    exe.as_os_str(),
                ];
                args.extend(serve);
                start_server(Path::new("ip"), &args, &self.dir, "hub").await?
            }
        };
        self.hub = HubProcess::Child(child);
        Ok(())
    }

    /// The process id of a child-process hub (see
    /// [`Sandbox::start_hub_process`]), to send it signals; `None` when the
    /// hub runs in this process or is stopped.
    pub fn hub_pid(&self) -> Option<u32> {
        match &self.hub {
            HubProcess::Child(child) => Some(child.id()),
            _ => None,
        }
    }

    /// Kills a child-process hub with SIGKILL and reaps it.
    pub fn kill_hub(&mut self) {
        if let HubProcess::Child(mut child) = std::mem::replace(&mut self.hub, HubProcess::Stopped)
        {
            child.kill().expect("sending SIGKILL to the hub");
            child.wait().expect("reaping the hub");
        }
    }

    /// Stops the hub gracefully (a child process gets SIGTERM, and SIGKILL
    /// if it has not ended within 10 s).
    pub async fn stop_hub(&mut self) -> Result<(), SandboxError> {
        match std::mem::replace(&mut self.hub, HubProcess::Stopped) {
            HubProcess::InProcess(r) => r.stop().await?,
            HubProcess::Child(mut child) => stop_child(&mut child).await,
            HubProcess::Stopped => {}
        }
        Ok(())
    }

    /// Writes `body`'s node configuration, listening on `listen`.
    fn write_node_config(&self, body: &str, listen: &str) -> Result<PathBuf, SandboxError> {
        let id = BodyId::parse(body).map_err(|_| SandboxError::UnknownBody(body.to_owned()))?;
        if self.governance.body(&id).is_none() {
            return Err(SandboxError::UnknownBody(body.to_owned()));
        }
        let c = &self.certs;
        let mut text = format!(
            "version = 1\nbody = \"{body}\"\nlisten = \"{listen}\"\nhub = \"{}\"\ndata_dir = \"nodes/{body}\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[audit]\nlog_key = \"{}\"\nwitness_key = \"{}\"\nwitness_every_ms = {}\n\n[plans]\ndeconfliction_key = \"{}\"\n\n[retry]\ninitial_backoff_ms = {}\nmax_backoff_ms = {}\n",
            self.hub_url(),
            c.join("ca.pem").display(),
            c.join(body).join("node.pem").display(),
            c.join(body).join("node.key.pem").display(),
            c.join(liaison_pki::LOG_VKEY_FILE).display(),
            c.join(body).join(liaison_pki::WITNESS_KEY_FILE).display(),
            self.witness_every_ms,
            c.join(liaison_pki::DECONFLICTION_KEY_FILE).display(),
            self.retry_ms.0,
            self.retry_ms.1,
        );
        if let Some(table) = self.release.get(body) {
            text.push_str(&format!("\n[release]\n{table}\n"));
        }
        if !self.node_toml.is_empty() {
            text.push('\n');
            text.push_str(&self.node_toml);
        }
        let path = self.dir.join(format!("node-{body}.toml"));
        std::fs::write(&path, text).map_err(io("writing a node config"))?;
        Ok(path)
    }

    /// Starts (or restarts, with the same store) a node: in this process,
    /// or as a child process if the sandbox runs its nodes so.
    pub async fn start_node(&mut self, body: &str) -> Result<(), SandboxError> {
        if let Some(exe) = self.node_process.clone() {
            return self.start_node_process(body, &exe).await;
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(io("binding a node listener"))?;
        let addr = listener
            .local_addr()
            .map_err(io("reading a node address"))?;
        let path = self.write_node_config(body, &addr.to_string())?;
        let config = liaison_node::NodeConfig::load(&path)?;
        let (metrics, metrics_addr) = metrics_listener().await?;
        self.node_metrics.insert(body.to_owned(), metrics_addr);
        let listeners = liaison_node::Listeners {
            api: listener,
            metrics: Some(metrics),
            ready: None,
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(report_exit(
            format!("{body} node"),
            liaison_node::run(config, listeners, async {
                let _ = stopped.await;
            }),
        ));
        self.nodes.insert(
            body.to_owned(),
            NodeProcess::InProcess(Running {
                addr,
                stop: Some(stop),
                task,
            }),
        );
        Ok(())
    }

    /// Starts a node as a child process of `exe` on a port of its own
    /// choosing (port 0; it writes the one it bound to its ready file).
    async fn start_node_process(&mut self, body: &str, exe: &Path) -> Result<(), SandboxError> {
        let config = self.write_node_config(body, "127.0.0.1:0")?;
        let (child, addr) = start_server(
            exe,
            &["node".as_ref(), "--config".as_ref(), config.as_os_str()],
            &self.dir,
            &format!("node-{body}"),
        )
        .await?;
        self.nodes
            .insert(body.to_owned(), NodeProcess::Child { addr, child });
        Ok(())
    }

    /// The process id of `body`'s node when it runs as a child process.
    pub fn node_pid(&self, body: &str) -> Option<u32> {
        match self.nodes.get(body) {
            Some(NodeProcess::Child { child, .. }) => Some(child.id()),
            _ => None,
        }
    }

    /// Kills `body`'s child-process node with SIGKILL and reaps it; its
    /// store stays for a restart. `false` if it runs in this process or
    /// is not running.
    pub fn kill_node(&mut self, body: &str) -> bool {
        match self.nodes.remove(body) {
            Some(NodeProcess::Child { mut child, .. }) => {
                child.kill().expect("sending SIGKILL to a node");
                child.wait().expect("reaping a node");
                true
            }
            Some(other) => {
                self.nodes.insert(body.to_owned(), other);
                false
            }
            None => false,
        }
    }

    /// Stops a node gracefully; its store stays for a restart.
    pub async fn stop_node(&mut self, body: &str) -> Result<(), SandboxError> {
        match self.nodes.remove(body) {
            Some(NodeProcess::InProcess(n)) => n.stop().await?,
            Some(NodeProcess::Child { mut child, .. }) => stop_child(&mut child).await,
            None => {}
        }
        Ok(())
    }

    /// Stops every service.
    pub async fn shutdown(mut self) -> Result<(), SandboxError> {
        let bodies: Vec<String> = self.nodes.keys().cloned().collect();
        for b in bodies {
            self.stop_node(&b).await?;
        }
        self.stop_hub().await
    }

    /// An officer's client to their own node: `officer("europol", "alice")`.
    pub async fn officer(
        &self,
        body: &str,
        name: &str,
    ) -> Result<OfficerClient<Channel>, SandboxError> {
        self.officer_at(body, &format!("{body}/officer-{name}"))
            .await
    }

    /// A mutual-TLS channel to `body`'s node with the dev certificate `stem`.
    async fn node_channel(&self, body: &str, stem: &str) -> Result<Channel, SandboxError> {
        let url = self.node_url(body)?;
        Ok(liaison_pki::connect(
            &url,
            &self.material(stem)?,
            Some(Role::Node),
            self.governance.federation(),
        )
        .await?)
    }

    /// A client to `body`'s node using any dev certificate.
    pub async fn officer_at(
        &self,
        body: &str,
        stem: &str,
    ) -> Result<OfficerClient<Channel>, SandboxError> {
        Ok(OfficerClient::new(self.node_channel(body, stem).await?))
    }

    /// A `NodeAudit` client to `body`'s node with any dev certificate (an
    /// officer's, an auditor's or an admin's of that body).
    pub async fn node_audit(
        &self,
        body: &str,
        stem: &str,
    ) -> Result<NodeAuditClient<Channel>, SandboxError> {
        Ok(NodeAuditClient::new(self.node_channel(body, stem).await?))
    }

    /// A raw federation client to the hub with any dev certificate, for
    /// example `europol/node`.
    pub async fn hub_as(&self, stem: &str) -> Result<FederationClient<Channel>, SandboxError> {
        Ok(FederationClient::new(self.hub_channel(stem).await?))
    }

    /// Waits until `origin`'s outbox entry for `message_id` has left the
    /// `queued` state (routed, or rejected by the hub) and returns it.
    pub async fn settled(
        &self,
        origin: &str,
        message_id: &str,
        timeout: Duration,
    ) -> Result<liaison_proto::v1::OutboxEntry, SandboxError> {
        let officer = self.officer(origin, "alice").await?;
        wait_until(&format!("the hub routes {message_id}"), timeout, || {
            let mut officer = officer.clone();
            async move {
                let list = officer
                    .list_outbox(liaison_proto::v1::ListOutboxRequest { limit: 1000 })
                    .await
                    .ok()?
                    .into_inner();
                list.entries
                    .into_iter()
                    .find(|e| e.message_id == message_id && e.status != "queued")
            }
        })
        .await
    }

    /// A channel to the hub with the dev certificate `stem`.
    async fn hub_channel(&self, stem: &str) -> Result<Channel, SandboxError> {
        let m = self.material(stem)?;
        Ok(liaison_pki::connect(
            &self.hub_url(),
            &m,
            Some(Role::Hub),
            self.governance.federation(),
        )
        .await?)
    }

    /// An admin's client to the hub's Admin API: `admin("interpol")`.
    pub async fn admin(
        &self,
        body: &str,
    ) -> Result<liaison_proto::v1::admin_client::AdminClient<Channel>, SandboxError> {
        let ch = self.hub_channel(&format!("{body}/admin-admin")).await?;
        Ok(liaison_proto::v1::admin_client::AdminClient::new(ch))
    }

    /// An auditor's client to the hub: `auditor("interpol")`.
    pub async fn auditor(&self, body: &str) -> Result<AuditClient<Channel>, SandboxError> {
        let ch = self.hub_channel(&format!("{body}/auditor-audit")).await?;
        Ok(AuditClient::new(ch))
    }

    /// An audit client with the oversight auditor's certificate (the
    /// federation's independent control body, issued in the hub's body),
    /// who reads the whole log.
    pub async fn oversight(&self) -> Result<AuditClient<Channel>, SandboxError> {
        let stem = format!(
            "{}/oversight-{}",
            self.governance.hub_body(),
            liaison_pki::DEV_OVERSIGHT[0]
        );
        let ch = self.hub_channel(&stem).await?;
        Ok(AuditClient::new(ch))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let HubProcess::Child(child) = &mut self.hub {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in self.nodes.values_mut() {
            if let NodeProcess::Child { child, .. } = node {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts `exe args… --ready-file <dir>/<name>.ready --exit-with-parent
/// <this process>` (a `liaison` server command) with its standard error in
/// `<dir>/<name>.log`, and waits up to 30 s for the address it writes to the
/// ready file once it listens. The server ends with this process however
/// this one ends (a panic that aborts, a SIGKILL); if it exits or does not
/// listen in time, the error holds its log.
pub async fn start_server(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    dir: &Path,
    name: &str,
) -> Result<(Child, SocketAddr), SandboxError> {
    let ready = dir.join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| SandboxError::Io(format!("creating {}: {e}", log_path.display())))?;
    let mut child = Command::new(exe)
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--exit-with-parent")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| SandboxError::Io(format!("spawning the {name} process: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                return Ok((child, addr));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(SandboxError::Io(format!(
                "{name} process exited with {status}: {log}"
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Io(format!(
                "{name} process did not start listening within 30s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks a child process to stop (SIGTERM) and waits up to 10 s, then kills it.
async fn stop_child(child: &mut Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a service to its end and logs why it stopped, if it failed.
async fn report_exit<E: std::fmt::Display>(
    name: String,
    service: impl Future<Output = Result<(), E>>,
) -> Result<(), E> {
    let result = service.await;
    if let Err(e) = &result {
        tracing::error!(service = %name, error = %e, "service stopped with an error");
    }
    result
}

/// The dev PKI for a governance: a node for every body, and the pki crate's
/// sample people in each ([`DevPkiSpec::standard`]).
pub fn dev_spec(gov: &Governance) -> DevPkiSpec {
    DevPkiSpec::standard(
        gov.federation(),
        gov.hub_body(),
        gov.bodies().map(|b| b.id.clone()).collect(),
    )
}
