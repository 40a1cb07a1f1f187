//! The `liaison` command for liaison officers, auditors and operators.
//!
//! Officers talk to their own body's node (`submit`, `outbox`, `inbox`,
//! `show`, `ack`, `explain`); auditors talk to the hub (`audit list`,
//! `audit verify`); operators start services (`hub`, `node`), make the dev
//! PKI (`pki init`), write node configurations for it (`dev node-config`)
//! and check governance files (`policy check`); `demo` runs the whole
//! federation on this machine. See `exit` for exit codes.
#![forbid(unsafe_code)]

/// Prints a line to standard output; a closed pipe (`liaison audit list |
/// head`) ends the command quietly instead of panicking.
macro_rules! say {
    () => { $crate::write_line(format_args!(""))? };
    ($($arg:tt)*) => { $crate::write_line(format_args!($($arg)*))? };
}

mod admin;
mod approvals;
pub mod audit;
mod batch;
mod bench;
mod config;
mod crash;
pub mod demo;
pub mod exit;
mod forwards;
mod health;
pub mod message;
mod officer;
mod ops;
mod plans;
mod status;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use liaison_pki::{TlsFiles, TlsMaterial};

pub use exit::Failure;
pub use message::MessageSpec;

/// Liaison: federated, policy-routed exchange of threat assessments,
/// operational plans and alerts between the bodies of the INTERPOL Dialogue.
#[derive(Debug, Parser)]
#[command(name = "liaison", version, about, max_term_width = 100)]
pub struct Cli {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences for people.
    Human,
    /// One JSON document (or JSON lines for streams), for scripts.
    Json,
}

/// Who you are and where to connect.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Server address, for example https://127.0.0.1:7401 (your node, or the hub for audit).
    #[arg(long, env = "LIAISON_SERVER")]
    pub server: String,
    /// Directory of the certificates (the dev PKI layout).
    #[arg(long, env = "LIAISON_CERTS", default_value = "certs-dev")]
    pub certs: PathBuf,
    /// Your certificate within --certs, for example europol/officer-alice.
    #[arg(long = "as", env = "LIAISON_AS")]
    pub identity: Option<String>,
    /// Your certificate file (overrides --as).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Your private key file.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// The federation CA file (default: ca.pem in --certs).
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

impl Connection {
    /// Loads the certificate, key and CA this connection uses.
    pub fn material(&self) -> Result<TlsMaterial> {
        let files = match (&self.cert, &self.key, &self.identity) {
            (Some(cert), Some(key), _) => TlsFiles {
                ca: self.ca.clone().unwrap_or_else(|| self.certs.join(liaison_pki::CA_CERT_FILE)),
                cert: cert.clone(),
                key: key.clone(),
                crl: None,
            },
            (_, _, Some(stem)) => {
                let mut f = TlsFiles::in_dev_dir(&self.certs, stem);
                if let Some(ca) = &self.ca {
                    f.ca = ca.clone();
                }
                f
            }
            _ => {
                return Err(Failure {
                    code: 2,
                    message: "say who you are: --as <body>/<role>-<name> (for example europol/officer-alice) or --cert and --key"
                        .into(),
                }
                .into())
            }
        };
        Ok(TlsMaterial::load(&files)?)
    }
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a threat assessment, plan or alert to your node.
    Submit(officer::SubmitArgs),
    /// Submit many messages at once from a JSON Lines file (one message per
    /// line): the node stores each batch of up to 1024 in one write.
    SubmitBatch(batch::BatchArgs),
    /// Ask the hub who would receive a message, and why, without sending it.
    Explain(officer::SubmitArgs),
    /// List what you submitted and how the hub routed it.
    Outbox(officer::ListArgs),
    /// List your body's inbox, newest first.
    Inbox(officer::InboxArgs),
    /// Show one inbox message in full.
    Show(officer::IdArgs),
    /// Acknowledge (mark as read) an inbox message.
    Ack(officer::IdArgs),
    /// Retract a message your body sent: the hub withdraws it from every
    /// recipient (one still awaiting approval is withdrawn on your node).
    Retract(officer::RetractArgs),
    /// List your body's messages awaiting a second officer's approval
    /// (four-eyes release), or read one in full.
    Approvals(approvals::ApprovalsArgs),
    /// Approve a message awaiting four-eyes approval: your node sends it to
    /// the hub (an approver of your body, not its submitter).
    Approve(officer::IdArgs),
    /// Refuse a message awaiting four-eyes approval: it is never sent.
    Refuse(approvals::RefuseArgs),
    /// Ask to pass a message you received on to another body (third-party
    /// rule): the originator consents or refuses, unless it allowed onward
    /// release; the hub delivers it only if the rules allow.
    Forward(forwards::ForwardArgs),
    /// List other bodies' requests to pass on messages your body sent.
    Forwards(forwards::ForwardsArgs),
    /// Consent to a forward request for a message your body sent.
    ForwardApprove(forwards::ApproveForwardArgs),
    /// Refuse a forward request for a message your body sent: it is never
    /// passed on.
    ForwardRefuse(forwards::RefuseForwardArgs),
    /// Show your node's status (officer certificate): its link to the hub,
    /// outbox and inbox, certificate, alarms; or, against the hub with an
    /// admin or auditor certificate, every body: connected, queue depth,
    /// oldest undelivered, last seen, state. Exit code 7 on an alarm.
    Status(status::StatusArgs),
    /// Check the gRPC health of a hub or a node (grpc.health.v1), as a load
    /// balancer or probe does: exit code 0 when SERVING, 7 when not.
    Health(health::HealthArgs),
    /// Plans and deconfliction: your body's plans with their notices, the
    /// calendar of other bodies' plans, submit, update, close and cancel,
    /// acknowledge and resolve notices, ask for contact.
    #[command(subcommand)]
    Plans(plans::PlansCommand),
    /// Read, prove and verify the hub's audit log (auditor or oversight
    /// certificate), offline too.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Configuration files: check a hub's or a node's before starting it.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Development PKI.
    #[command(subcommand)]
    Pki(ops::PkiCommand),
    /// Try Liaison by hand on one machine: write a node configuration for
    /// the dev PKI.
    #[command(subcommand)]
    Dev(ops::DevCommand),
    /// Governance files: check one, list the rules, or replay past traffic
    /// under a new one.
    #[command(subcommand)]
    Policy(ops::PolicyCommand),
    /// Administer the hub: reload its governance, show the one in force
    /// (admin certificate of the hub's body).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Run the hub from a configuration file.
    Hub(ops::ServeArgs),
    /// Run an organisation node from a configuration file.
    Node(ops::ServeArgs),
    /// Run the whole federation on this machine, route a realistic set of
    /// messages and check every inbox against the routing matrix.
    Demo(demo::DemoArgs),
    /// Measure the federation (a hub and eleven nodes as child processes)
    /// against a bare tonic mutual-TLS echo of the same run.
    Bench(bench::BenchArgs),
    /// Kill the hub and nodes (child processes) under load, restart them,
    /// and check the whole history: nothing acknowledged lost, nothing
    /// twice, nothing to a body the policy withheld it from, order kept.
    CrashTest(crash::CrashArgs),
    /// The bare echo server that `bench` measures (started by it).
    #[command(hide = true)]
    BenchEchoServer(bench::EchoServerArgs),
}

/// Writes one line to standard output. Whatever it holds, no control
/// character but a newline or a tab reaches the terminal (see
/// [`liaison_types::text`]); fields that must stay on one line are escaped
/// further with [`one_line`] where they are formatted.
pub fn write_line(line: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    let text = line.to_string();
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", liaison_types::text::escape_text(&text)) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::quiet().into()),
        other => Ok(other?),
    }
}

/// A field shown inside one line of a listing (a title, a reason): line
/// breaks and other control characters are shown as escapes.
pub(crate) fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    liaison_types::text::escape_line(s)
}

/// How to run this very program again from a shell, for the commands the
/// CLI suggests: the path of the running executable, quoted for a POSIX
/// shell where it needs it (`liaison` if the path cannot be found).
pub(crate) fn this_program() -> String {
    std::env::current_exe().map_or_else(
        |_| "liaison".to_owned(),
        |p| shell_word(&p.display().to_string()),
    )
}

/// `s` as one word of a POSIX shell command line: as it is if that is safe,
/// else in single quotes.
pub(crate) fn shell_word(s: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b);
    if !s.is_empty() && s.bytes().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let out = cli.output;
    match cli.command {
        Command::Submit(a) => officer::submit(a, out).await,
        Command::Plans(c) => plans::run(c, out).await,
        Command::SubmitBatch(a) => batch::submit_batch(a, out).await,
        Command::Explain(a) => officer::explain(a, out).await,
        Command::Outbox(a) => officer::outbox(a, out).await,
        Command::Inbox(a) => officer::inbox(a, out).await,
        Command::Show(a) => officer::show(a, out).await,
        Command::Ack(a) => officer::ack(a, out).await,
        Command::Retract(a) => officer::retract(a, out).await,
        Command::Approvals(a) => approvals::approvals(a, out).await,
        Command::Approve(a) => approvals::approve(a, out).await,
        Command::Refuse(a) => approvals::refuse(a, out).await,
        Command::Forward(a) => forwards::forward(a, out).await,
        Command::Forwards(a) => forwards::forwards(a, out).await,
        Command::ForwardApprove(a) => forwards::approve(a, out).await,
        Command::ForwardRefuse(a) => forwards::refuse(a, out).await,
        Command::Status(a) => status::status(a, out).await,
        Command::Health(a) => health::health(a, out).await,
        Command::Audit(c) => audit::run(c, out).await,
        Command::Config(c) => config::run(c, out),
        Command::Pki(c) => ops::pki(c, out),
        Command::Dev(c) => ops::dev(c, out),
        Command::Policy(c) => ops::policy(c, out),
        Command::Admin(c) => admin::run(c, out).await,
        Command::Hub(a) => ops::hub(a).await,
        Command::Node(a) => ops::node(a).await,
        Command::Demo(a) => demo::run(a, out).await,
        Command::Bench(a) => bench::run(a, out).await,
        Command::CrashTest(a) => crash::run(a, out).await,
        Command::BenchEchoServer(a) => bench::echo_server(a).await,
    }
}

/// Parses the process arguments, runs, prints any error and returns the
/// exit code.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Failure>().is_some_and(Failure::is_quiet) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {}", liaison_types::text::escape_text(&message));
            exit::code_of(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use liaison_types::{Classification, HandlingCode, Kind, Priority, Tlp};

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The message flags take the lenient forms a message file takes too
    /// (`threat-assessment`, `tlp:amber`), so their values are listed in
    /// their help by hand: this keeps each list complete.
    #[test]
    fn the_help_of_every_message_flag_lists_every_value_it_accepts() {
        let cli = Cli::command();
        let submit = cli.find_subcommand("submit").unwrap();
        let help = |id: &str| {
            submit
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help())
                .map(ToString::to_string)
                .unwrap_or_else(|| panic!("submit has no documented --{id}"))
        };
        let lists: [(&str, Vec<&str>); 5] = [
            ("kind", Kind::ALL.iter().map(|v| v.as_str()).collect()),
            (
                "classification",
                Classification::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            (
                "priority",
                Priority::ALL.iter().map(|v| v.as_str()).collect(),
            ),
            ("tlp", Tlp::ALL.iter().map(|v| v.as_str()).collect()),
            (
                "handling_code",
                HandlingCode::ALL.iter().map(|v| v.as_str()).collect(),
            ),
        ];
        for (id, values) in lists {
            let text = help(id);
            for v in values {
                assert!(text.contains(v), "--{id} help {text:?} does not list {v}");
            }
        }
    }

    #[test]
    fn suggested_commands_quote_only_what_a_shell_would_split() {
        let cases = [
            ("/usr/local/bin/liaison", "/usr/local/bin/liaison"),
            ("certs-dev", "certs-dev"),
            ("/home/a b/liaison", "'/home/a b/liaison'"),
            ("it's", r"'it'\''s'"),
            ("$HOME", "'$HOME'"),
            ("", "''"),
        ];
        for (word, quoted) in cases {
            assert_eq!(shell_word(word), quoted, "{word}");
        }
    }
}
