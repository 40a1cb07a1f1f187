//! The node's errors, and the one place they become gRPC statuses.

use liaison_store::StoreError;
use liaison_types::ValidationError;
use tonic::{Code, Status};

/// Everything that can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The officer sent a malformed or inconsistent message (caller's fault).
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
    /// The caller belongs to another body (caller's fault).
    #[error("{caller} belongs to {caller_body}, but this node serves {node_body}; use your own body's node")]
    WrongBody {
        /// Caller identity.
        caller: String,
        /// Caller's body.
        caller_body: String,
        /// This node's body.
        node_body: String,
    },
    /// The labels name another body as origin (caller's fault).
    #[error(
        "labels.origin is {claimed} but this node submits for {node_body}; leave origin empty"
    )]
    OriginMismatch {
        /// Body named in the labels.
        claimed: String,
        /// This node's body.
        node_body: String,
    },
    /// The message id was already used for different content (caller's fault).
    #[error("message id {0} was already submitted with different content; use a new message id")]
    IdReused(String),
    /// The message cannot be retracted in its state.
    #[error("message {message_id} is {status}; it never reached the hub, so there is nothing to retract")]
    NotRetractable {
        /// The message.
        message_id: String,
        /// Its state.
        status: &'static str,
    },
    /// No such inbox message.
    #[error("no message {0} in this node's inbox")]
    NotFound(String),
    /// No such outbox message.
    #[error("no message {0} in this node's outbox")]
    NotInOutbox(String),
    /// No such message awaiting approval.
    #[error("message {0} is not awaiting approval; see `liaison approvals` for those that are")]
    NotAwaiting(String),
    /// An officer submitted more than the node's `[officers]
    /// max_submissions_per_minute` (nothing was stored).
    #[error("{officer} submitted as many messages in the last minute as this node allows one officer ([officers] max_submissions_per_minute = {limit}); nothing was stored, send again in {retry_in_ms} ms")]
    RateLimited {
        /// The officer's SPIFFE id.
        officer: String,
        /// The limit.
        limit: u32,
        /// When the next submission would be admitted.
        retry_in_ms: u64,
    },
    /// A request field is wrong (caller's fault).
    #[error("{field}: {problem}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong and what would be right.
        problem: String,
    },
    /// The submitter tried to approve or refuse their own message (caller's
    /// fault): four-eyes release needs a second officer.
    #[error("you submitted message {message_id}; four-eyes release needs a second officer of your body to approve or refuse it")]
    OwnMessage {
        /// The message.
        message_id: String,
    },
    /// The caller is not one of the node's approvers (caller's fault).
    #[error("{caller} may not approve or refuse messages on this node; {who}")]
    NotApprover {
        /// Caller identity.
        caller: String,
        /// Who may, in words.
        who: String,
    },
    /// The message is not awaiting approval any more, or never was.
    #[error("message {message_id}: {problem}")]
    NotAwaitingApproval {
        /// The message.
        message_id: String,
        /// Its state and why the request cannot apply.
        problem: String,
    },
    /// A message needs four-eyes approval but no officer other than its
    /// submitter may approve it on this node (operator's configuration).
    #[error("this message needs four-eyes approval ({reason}) but no officer other than you may approve it on this node ([release] approvers: {approvers}); nothing was stored; ask the node's operator to add a second approver")]
    NoOtherApprover {
        /// Why it needs approval.
        reason: String,
        /// The configured approvers.
        approvers: String,
    },
    /// No such forward request on this node.
    #[error("no forward request {0} for this body's messages; see `liaison forwards` for those there are")]
    UnknownForwardRequest(String),
    /// The forward request was already decided the other way.
    #[error("forward request {request_id}: {problem}")]
    ForwardDecided {
        /// The request.
        request_id: String,
        /// Its state and why the decision cannot apply.
        problem: String,
    },
    /// The hub could not be reached or refused (peer's fault or transient).
    #[error("hub: {0}")]
    Hub(Status),
    /// The witness of the hub's audit log cannot do what was asked (the
    /// hub's checkpoint does not verify, say).
    #[error("audit log witness: {0}")]
    Witness(String),
    /// Only an admin of the body may do this.
    #[error("{0} is not an admin certificate; clearing the audit log alarm takes an admin of the node's body")]
    NotAdmin(String),
    /// The hub gave no audit record for the message (routed by an earlier
    /// version, or not yet routed).
    #[error("the hub's audit log holds no record of message {0} that this node knows of (not yet routed, or routed before the log was a merkle tree)")]
    NotRecorded(String),
    /// A plan this body did not originate on this node.
    #[error(
        "plan {0} is not a plan of this body on this node; list them with `liaison plans list`"
    )]
    UnknownPlan(String),
    /// A plan that ended (closed or cancelled) cannot change.
    #[error("plan {plan_id} was {status}; an ended plan does not change, so submit a new plan")]
    PlanEnded {
        /// The plan.
        plan_id: String,
        /// `closed` or `cancelled`.
        status: String,
    },
    /// Another officer sent a version of the plan meanwhile.
    #[error("plan {plan_id} changed meanwhile (now version {version}); read it again and resend")]
    PlanChanged {
        /// The plan.
        plan_id: String,
        /// The version it is at.
        version: u32,
    },
    /// Targets given, but this node holds no deconfliction key.
    #[error("this node has no deconfliction key, so it cannot send targets; set [plans] deconfliction_key in its configuration (the dev PKI makes certs-dev/deconfliction.key)")]
    NoDeconflictionKey,
    /// No notice with that reference (as given, escaped for display).
    #[error("no deconfliction notice {} on this node; list them with `liaison plans list`", liaison_types::text::escape_line_prefix(.0, 64))]
    UnknownNotice(String),
    /// A notice in a state that forbids the change.
    #[error("deconfliction notice {reference} {problem}")]
    NoticeState {
        /// The notice.
        reference: String,
        /// Why not.
        problem: String,
    },
    /// Storage failed (our fault).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A configuration file is wrong (operator's fault, at startup).
    #[error("{file}: {problem}")]
    Config {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// Certificates could not be loaded (operator's fault, at startup).
    #[error(transparent)]
    Pki(#[from] liaison_pki::PkiError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Filesystem error at startup.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let code = match &e {
            NodeError::Invalid(_) => Code::InvalidArgument,
            NodeError::BadRequest { .. } => Code::InvalidArgument,
            NodeError::RateLimited { .. } => Code::ResourceExhausted,
            NodeError::WrongBody { .. }
            | NodeError::OriginMismatch { .. }
            | NodeError::OwnMessage { .. }
            | NodeError::NotApprover { .. }
            | NodeError::NotAdmin(_) => Code::PermissionDenied,
            NodeError::IdReused(_) => Code::AlreadyExists,
            NodeError::NotFound(_)
            | NodeError::NotInOutbox(_)
            | NodeError::NotAwaiting(_)
            | NodeError::UnknownForwardRequest(_)
            | NodeError::UnknownPlan(_)
            | NodeError::UnknownNotice(_) => Code::NotFound,
            NodeError::PlanChanged { .. } => Code::Aborted,
            NodeError::NotAwaitingApproval { .. }
            | NodeError::NoOtherApprover { .. }
            | NodeError::NotRetractable { .. }
            | NodeError::ForwardDecided { .. }
            | NodeError::NotRecorded(_)
            | NodeError::PlanEnded { .. }
            | NodeError::NoDeconflictionKey
            | NodeError::NoticeState { .. }
            | NodeError::Witness(_) => Code::FailedPrecondition,
            // The hub's own verdict on the caller's input passes through.
            NodeError::Hub(s)
                if liaison_proto::status::classify(s.code()).fault
                    == liaison_proto::status::Fault::Caller =>
            {
                s.code()
            }
            // A record that does not decode will not heal by retrying.
            NodeError::Store(StoreError::Corrupt { .. }) => Code::Internal,
            // A full disk: retried by the caller once there is room.
            NodeError::Store(StoreError::NoSpace(_)) => Code::ResourceExhausted,
            NodeError::Hub(_) | NodeError::Store(_) => Code::Unavailable,
            NodeError::Config { .. }
            | NodeError::Pki(_)
            | NodeError::Transport(_)
            | NodeError::Io { .. } => Code::Internal,
        };
        // A rate-limited officer is counted and warned about where the
        // limit is applied, not logged as a failure of the node's.
        if !matches!(e, NodeError::RateLimited { .. })
            && liaison_proto::status::classify(code).fault != liaison_proto::status::Fault::Caller
        {
            tracing::error!(error = %e, "error answering a request");
        }
        Status::new(code, e.to_string())
    }
}
