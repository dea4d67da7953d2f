//! What a job is: the request to run, where it stands, what it answered.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A job's id: a random UUID (version 4), unguessable enough that one
/// agent cannot find another's (reading also needs the owner). A UUID,
/// because the job's request goes upstream with it as its
/// `X-Request-Id`, and some servers accept no other shape there
/// (llama-cpp-python's answers 400 to anything else).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A new id: 122 random bits from the operating system's generator
    /// (agents without keys share an identity; for them the id is the
    /// secret).
    pub fn generate() -> Self {
        Self(corral_core::secret_uuid())
    }

    /// An id as a client sent it, if it has the shape of one.
    ///
    /// ```
    /// use corral_jobs::JobId;
    ///
    /// let id = JobId::generate();
    /// assert_eq!(id.as_str().len(), 36);
    /// assert_eq!(JobId::parse(id.as_str()), Some(id));
    /// assert_eq!(JobId::parse("../../etc/passwd"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        let shaped = text.len() == 36
            && text.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        shaped.then(|| Self(text.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The request a job runs: what the client sent, less its credentials
/// (the job runs as the agent that was identified when it was accepted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// `POST`, mostly.
    pub method: String,
    /// The path and query: `/api/chat`.
    pub path: String,
    /// The headers to send, credentials removed.
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(skip)]
    pub body: Bytes,
    /// The agent that submitted it.
    pub agent: String,
    /// Whether its key proved it.
    pub authenticated: bool,
    /// Where to tell the outcome, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The submitter's address, for `X-Forwarded-For` when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Its `Idempotency-Key`: the same agent submitting the same key
    /// again (a saga's step run again after a crash) gets the same job,
    /// not a second generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A job as the store accepted it: new, or the one an earlier
/// submission with the same idempotency key made.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The job.
    pub state: JobState,
    /// Whether it was made by an earlier submission.
    pub repeated: bool,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, not yet sent upstream (waiting for a runner, or in the
    /// priority queue like a live request).
    Queued,
    /// Sent upstream: generating.
    Running,
    /// Answered (a status below 400).
    Done,
    /// Refused, failed upstream, or broken mid-answer.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl Status {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }

    /// Its name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// The head of a job's answer: as a live client would have received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Its status code.
    pub status: u16,
    /// Its headers.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The value of header `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a job is, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Its id.
    pub id: JobId,
    /// Who submitted it.
    pub agent: String,
    /// Its path: `/api/chat`.
    pub endpoint: String,
    /// Where it stands.
    pub status: Status,
    /// When it was accepted, seconds since the Unix epoch.
    pub submitted_at: f64,
    /// When it was last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// Times it was started: more than one when a replica died running it.
    pub attempts: u32,
    /// The replica running it, or that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Its answer's head, once it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Head>,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes of its answer so far.
    pub bytes: u64,
    /// Whether its answer was not kept whole (too large).
    #[serde(default)]
    pub truncated: bool,
}

impl JobState {
    /// A job just accepted.
    pub fn queued(id: JobId, request: &JobRequest) -> Self {
        Self {
            id,
            agent: request.agent.clone(),
            endpoint: request.path.clone(),
            status: Status::Queued,
            submitted_at: corral_core::unix_now_f64(),
            started_at: None,
            finished_at: None,
            attempts: 0,
            replica: None,
            response: None,
            reason: None,
            bytes: 0,
            truncated: false,
        }
    }
}

/// How a job ended, as its runner tells the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Answered whole.
    Done,
    /// Failed, and why.
    Failed(String),
    /// Cancelled by its owner.
    Cancelled,
}

impl Outcome {
    pub(crate) fn apply(&self, state: &mut JobState) {
        let (status, reason) = match self {
            Outcome::Done => (
                match state.response.as_ref().map(|h| h.status) {
                    Some(status) if status >= 400 => Status::Failed,
                    _ => Status::Done,
                },
                None,
            ),
            Outcome::Failed(reason) => (Status::Failed, Some(reason.clone())),
            Outcome::Cancelled => (Status::Cancelled, Some("cancelled by its owner".into())),
        };
        state.status = status;
        if reason.is_some() || state.reason.is_none() {
            state.reason = reason.or_else(|| {
                (status == Status::Failed)
                    .then_some(state.response.as_ref())
                    .flatten()
                    .map(|h| format!("answered {}", h.status))
            });
        }
        state.finished_at = Some(corral_core::unix_now_f64());
    }
}

/// A job's answer so far: its chunks from one index on, and whether it
/// has ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunks {
    /// The chunks, in order, from the index asked for.
    pub chunks: Vec<Bytes>,
    /// Whether the job had ended when they were read.
    pub ended: bool,
    /// The attempt they are of: a job taken over starts its answer
    /// again, and a reader who had the first attempt's must start over.
    pub attempt: u32,
}
