//! The hub's errors, and the one place they become gRPC statuses (with
//! codes whose meaning for clients is the table of
//! [`liaison_proto::status`]).

use liaison_store::StoreError;
use liaison_types::ValidationError;
use tonic::{Code, Status};

/// Everything that can go wrong in the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The caller sent a malformed or inconsistent message (caller's fault).
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
    /// A node named another body as origin (caller's fault; audited).
    #[error("this node is {caller} but the message names {claimed} as origin; a node may only submit its own body's messages")]
    OriginMismatch {
        /// Body proven by the certificate.
        caller: String,
        /// Body named in the labels.
        claimed: String,
    },
    /// The message id was already used for different content (caller's fault).
    #[error("message id {message_id} was already submitted with different content; use a new message id")]
    IdReused {
        /// The reused id.
        message_id: String,
    },
    /// An acknowledgement beyond the end of the queue (caller's fault).
    #[error("cannot acknowledge position {seq}: the queue ends at {last}")]
    AckBeyondQueue {
        /// Position acknowledged.
        seq: u64,
        /// Last position in the queue.
        last: u64,
    },
    /// A governance reload was refused: the file is unreadable or invalid,
    /// or changes what a running hub cannot change (operator's fault). The
    /// governance in force stays.
    #[error("governance reload refused: {problem}; version {kept} stays in force, fix the file and reload again")]
    PolicyRefused {
        /// What is wrong, `file:line:column: key: problem` where known.
        problem: String,
        /// The version that stays in force.
        kept: String,
    },
    /// An admin certificate of a body other than the hub's (caller's fault).
    #[error("an admin of {caller} may not administer this hub; its admin api is open to admin certificates of {hub_body}")]
    NotHubAdmin {
        /// Body proven by the certificate.
        caller: String,
        /// The body that runs the hub.
        hub_body: String,
    },
    /// The caller's body is suspended or revoked (its queue is held).
    #[error("body {body} is {state}; its deliveries are held until the federation reinstates it")]
    NotActive {
        /// The body.
        body: String,
        /// Its state.
        state: String,
    },
    /// A body tried to change a plan another body originated (caller's
    /// fault; audited).
    #[error("{caller} did not originate plan {plan_id}; only its originator may change it")]
    PlanNotOrigin {
        /// The caller's body.
        caller: String,
        /// The plan.
        plan_id: String,
    },
    /// A new plan whose id the hub already holds (audited).
    #[error("plan {plan_id} already exists (version {version}); send a new version as an update, or give a new plan a new id")]
    PlanExists {
        /// The plan.
        plan_id: String,
        /// The version held.
        version: u32,
    },
    /// A plan message out of turn (audited): `problem` says why and what to do.
    #[error("{problem}")]
    PlanRefused {
        /// The plan.
        plan_id: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A body sent as many plan versions in the last hour as the
    /// governance allows (audited).
    #[error("{body} sent {limit} plan versions in the last hour, as many as the federation allows (governance [plans] max_versions_per_hour); send this version again after {retry_at}")]
    PlanRate {
        /// The sending body.
        body: String,
        /// The limit.
        limit: u32,
        /// When the oldest of them leaves the hour (RFC 3339).
        retry_at: String,
    },
    /// A recipient's queue is at its quota: the submission is refused
    /// whole (nothing stored) until the recipient's node catches up.
    #[error("the queue for {peer} is full: {queued} {unit} wait for its node to acknowledge them, the hub's limit ([queues] {setting}); nothing was stored, and the sending node retries once {peer}'s node catches up")]
    QueueFull {
        /// The recipient whose queue is full.
        peer: String,
        /// The configuration key of the limit reached.
        setting: &'static str,
        /// What the limit counts (`messages` or `bytes`).
        unit: &'static str,
        /// How many are queued now.
        queued: u64,
    },
    /// An earlier submission of the same batch was refused for now: this
    /// one is refused too, so that a sender's messages reach each
    /// recipient in the order sent.
    #[error("held back behind message {earlier} of the same batch, which was refused for now ({why}); nothing was stored for this one, send it again after that one")]
    HeldBack {
        /// The earlier message.
        earlier: String,
        /// Why it was refused.
        why: String,
    },
    /// No such message at the hub.
    #[error("no message {0} at the hub; check the message id")]
    UnknownMessage(String),
    /// The caller's body did not originate the message (caller's fault).
    #[error("{caller} did not originate message {message_id}; only its originator may retract it")]
    NotOrigin {
        /// The caller's body.
        caller: String,
        /// The message.
        message_id: String,
    },
    /// The caller's body asks to pass on a message it never received
    /// (caller's fault; audited).
    #[error("{caller} never received message {message_id}; only a body the message was delivered to may ask to pass it on")]
    NotARecipient {
        /// The caller's body.
        caller: String,
        /// The message.
        message_id: String,
    },
    /// The third-party rule or the message's state does not allow passing it
    /// on (caller's request cannot apply).
    #[error("message {message_id} cannot be passed on: {problem}")]
    ForwardNotAllowed {
        /// The message.
        message_id: String,
        /// Why not.
        problem: String,
    },
    /// No such forward request at the hub.
    #[error("no forward request {0} at the hub; check the request id")]
    UnknownForward(String),
    /// The caller's body did not originate the message of a forward request
    /// (caller's fault).
    #[error("{caller} did not originate message {message_id}; only its originator may decide on forward request {request_id}")]
    NotForwardOrigin {
        /// The caller's body.
        caller: String,
        /// The message.
        message_id: String,
        /// The request.
        request_id: String,
    },
    /// The forward request was already decided the other way.
    #[error("forward request {request_id} was already decided ({state}, by {by}); a decision cannot be changed")]
    ForwardDecided {
        /// The request.
        request_id: String,
        /// Its state.
        state: &'static str,
        /// Who decided.
        by: String,
    },
    /// The caller's body is not in the federation configuration.
    #[error("body {0} is not a member of this federation; ask the hub operator to add it to the governance file")]
    UnknownBody(String),
    /// A proof or checkpoint asked of a tree the log does not have
    /// (caller's fault).
    #[error("{0}")]
    BadProofRequest(String),
    /// A node asked for the proof of a record about another body.
    #[error("audit record {seq} does not concern {caller}; a node gets only the proofs of records about its own body (an auditor reads the others)")]
    NotYourRecord {
        /// The caller's body.
        caller: String,
        /// The record's position.
        seq: u64,
    },
    /// A witness's cosignature that does not verify (caller's fault).
    #[error("cosignature refused: {0}")]
    BadCosignature(String),
    /// The hub has no witness key for the caller's body.
    #[error("the hub has no witness key for {0}; add the body's witness verifier key to the file named by [audit] witnesses and restart the hub")]
    NoWitnessKey(String),
    /// Storage failed (our fault).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A submission's routing and its audit records could not be written:
    /// nothing of it was routed (the hub fails closed).
    #[error("nothing was routed: the audit log could not be appended ({0}); the hub routes again by itself once its store works, so retry")]
    Unrecorded(StoreError),
    /// A configuration file is wrong (operator's fault, at startup).
    #[error("{file}: {problem}")]
    Config {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The governance file is wrong (operator's fault, at startup).
    #[error(transparent)]
    Policy(#[from] liaison_policy::PolicyError),
    /// Certificates could not be loaded (operator's fault, at startup).
    #[error(transparent)]
    Pki(#[from] liaison_pki::PkiError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A task of ours failed (panicked or was cancelled).
    #[error("{what} failed: {problem}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// How it failed.
        problem: String,
    },
    /// Filesystem or socket error at startup.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl HubError {
    /// The gRPC code this error is answered with: the one mapping.
    pub fn code(&self) -> Code {
        match self {
            HubError::Invalid(_) => Code::InvalidArgument,
            HubError::OriginMismatch { .. }
            | HubError::UnknownBody(_)
            | HubError::NotHubAdmin { .. }
            | HubError::NotOrigin { .. }
            | HubError::NotARecipient { .. }
            | HubError::NotForwardOrigin { .. }
            | HubError::NotActive { .. }
            | HubError::PlanNotOrigin { .. }
            | HubError::NotYourRecord { .. } => Code::PermissionDenied,
            HubError::PlanExists { .. } => Code::AlreadyExists,
            HubError::PlanRefused { .. } => Code::FailedPrecondition,
            HubError::PlanRate { .. } | HubError::QueueFull { .. } | HubError::HeldBack { .. } => {
                Code::ResourceExhausted
            }
            HubError::BadProofRequest(_) => Code::OutOfRange,
            HubError::BadCosignature(_) => Code::InvalidArgument,
            HubError::NoWitnessKey(_) => Code::FailedPrecondition,
            HubError::UnknownMessage(_) | HubError::UnknownForward(_) => Code::NotFound,
            HubError::PolicyRefused { .. }
            | HubError::ForwardNotAllowed { .. }
            | HubError::ForwardDecided { .. } => Code::FailedPrecondition,
            HubError::IdReused { .. } => Code::AlreadyExists,
            HubError::AckBeyondQueue { .. } => Code::OutOfRange,
            // A record that does not decode will not heal by retrying: the
            // key is named, and the alarm is the error log below.
            HubError::Store(StoreError::Corrupt { .. }) => Code::Internal,
            // A full disk: nothing stored; the node retries once there is
            // room.
            HubError::Store(StoreError::NoSpace(_))
            | HubError::Unrecorded(StoreError::NoSpace(_)) => Code::ResourceExhausted,
            HubError::Store(_) | HubError::Unrecorded(_) => Code::Unavailable,
            HubError::Config { .. }
            | HubError::Policy(_)
            | HubError::Pki(_)
            | HubError::Transport(_)
            | HubError::Task { .. }
            | HubError::Io { .. } => Code::Internal,
        }
    }
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Self {
        let code = e.code();
        // Backpressure is no failure of the hub's: it is counted and
        // warned about where it is decided.
        let backpressure = matches!(
            e,
            HubError::PlanRate { .. } | HubError::QueueFull { .. } | HubError::HeldBack { .. }
        );
        if !backpressure
            && liaison_proto::status::classify(code).fault != liaison_proto::status::Fault::Caller
        {
            tracing::error!(error = %e, code = %code, "internal error answering a request");
        }
        Status::new(code, e.to_string())
    }
}
