//! Success or failure of an upstream call: one classifier that retry,
//! breaker and metrics share, so they never disagree about what failed.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// How an upstream call ended, for those who count failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (a 4xx is the client's problem, not the
    /// upstream's).
    Success,
    /// The upstream failed.
    Failure(Failure),
    /// Nobody can tell: the client went away first.
    Ignored,
}

/// What kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A 5xx status.
    Status(u16),
    /// The upstream could not be reached.
    Connect,
    /// The connection broke before an answer.
    Broken,
    /// It did not answer in time.
    Timeout,
    /// The answer's stream broke mid-way.
    Stream,
}

impl Failure {
    /// A short name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Status(502) => "502",
            Failure::Status(503) => "503",
            Failure::Status(504) => "504",
            Failure::Status(_) => "5xx",
            Failure::Connect => "connect",
            Failure::Broken => "broken",
            Failure::Timeout => "timeout",
            Failure::Stream => "stream",
        }
    }

    /// Whether the same request may simply be sent again: the upstream
    /// was unreachable, dropped the connection before any answer (Ollama
    /// dying while it loads a model), overloaded (502/503/504, Ollama's
    /// "server busy"), or too slow; never a 500 that may have done work,
    /// never a stream that had started. (The retry layer sends again only
    /// inference and metadata calls, which change nothing upstream.)
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Failure::Connect | Failure::Broken | Failure::Timeout | Failure::Status(502..=504)
        )
    }
}

/// The outcome an answer's status says, at headers.
///
/// ```
/// use corral_core::{classify_status, Failure, Outcome};
/// use http::StatusCode;
///
/// assert_eq!(classify_status(StatusCode::OK), Outcome::Success);
/// assert_eq!(classify_status(StatusCode::NOT_FOUND), Outcome::Success);
/// assert_eq!(classify_status(StatusCode::SERVICE_UNAVAILABLE), Outcome::Failure(Failure::Status(503)));
/// assert!(Failure::Status(503).is_retryable() && !Failure::Status(500).is_retryable());
/// ```
pub fn classify_status(status: StatusCode) -> Outcome {
    if status.is_server_error() {
        Outcome::Failure(Failure::Status(status.as_u16()))
    } else {
        Outcome::Success
    }
}

/// The outcome an error from further down says: an [`UpstreamFailed`], a
/// [`Timeout`] or a [`StreamBroke`] is the upstream's failure, and so is
/// an I/O error of the connection anywhere in the chain (what a plain
/// hyper or reqwest client gives: refused, reset, cut short); anything
/// else (a refusal by a layer, a bug) is not the upstream's doing.
///
/// ```
/// use corral_core::{classify_error, Failure, Outcome};
/// use std::io::{Error, ErrorKind};
///
/// let refused = Error::new(ErrorKind::ConnectionRefused, "refused");
/// assert_eq!(classify_error(&refused), Outcome::Failure(Failure::Connect));
/// let reset = Error::new(ErrorKind::ConnectionReset, "reset");
/// assert_eq!(classify_error(&reset), Outcome::Failure(Failure::Broken));
/// assert_eq!(classify_error(&Error::other("a bug")), Outcome::Ignored);
/// ```
pub fn classify_error(err: &(dyn std::error::Error + 'static)) -> Outcome {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(failed) = e.downcast_ref::<UpstreamFailed>() {
            return Outcome::Failure(if failed.connect {
                Failure::Connect
            } else {
                Failure::Broken
            });
        }
        if e.is::<Timeout>() {
            return Outcome::Failure(Failure::Timeout);
        }
        if e.is::<StreamBroke>() {
            return Outcome::Failure(Failure::Stream);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused | NotFound | AddrNotAvailable | HostUnreachable
                | NetworkUnreachable => return Outcome::Failure(Failure::Connect),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return Outcome::Failure(Failure::Broken)
                }
                TimedOut => return Outcome::Failure(Failure::Timeout),
                _ => {}
            }
        }
        current = e.source();
    }
    Outcome::Ignored
}

/// The upstream could not be reached, or broke before answering: 502.
#[derive(Debug)]
pub struct UpstreamFailed {
    url: String,
    connect: bool,
    message: String,
}

impl UpstreamFailed {
    /// `url` failed: before connecting (`connect`) or after; `message`
    /// says why (the root cause).
    pub fn new(url: impl Into<String>, connect: bool, message: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect,
            message: message.into(),
        }
    }

    /// Whether the connection could not be made at all.
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

crate::refusal! {
    UpstreamFailed as failed {
        status: StatusCode::BAD_GATEWAY,
        reason: if failed.connect {
            "upstream_unreachable"
        } else {
            "upstream_error"
        },
        message(f): if failed.connect {
            write!(f, "upstream {} is unreachable: {}", failed.url, failed.message)
        } else {
            write!(
                f,
                "upstream {} failed before answering: {}",
                failed.url, failed.message
            )
        },
    }
}

/// The upstream's answer broke after it had started: the connection was
/// cut mid-body. It travels up as the body's error, so every layer that
/// watches the body's end counts a failure; the proxy renders it in the
/// client's framing (an NDJSON error line, an SSE error event, or a cut).
#[derive(Debug)]
pub struct StreamBroke {
    message: String,
}

impl StreamBroke {
    /// The stream broke because of `message` (the root cause).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for StreamBroke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream stream broke: {}", self.message)
    }
}

impl std::error::Error for StreamBroke {}

/// One error given to several waiters (requests that shared one upstream
/// call): each gets the same error, whose source is the original, so the
/// proxy finds the refusal in it (a 502, a 504) and a breaker the kind of
/// failure, as for the one request that made the call.
///
/// ```
/// use corral_core::{classify_error, Failure, Outcome, SharedError, UpstreamFailed};
///
/// let shared = SharedError::new(Box::new(UpstreamFailed::new("http://ollama", true, "refused")));
/// let copy = shared.clone();
/// assert_eq!(classify_error(&copy), Outcome::Failure(Failure::Connect));
/// assert!(copy.to_string().contains("unreachable"));
/// ```
#[derive(Debug, Clone)]
pub struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl SharedError {
    /// Shares `error`.
    pub fn new(error: crate::BoxError) -> Self {
        Self(Arc::from(error))
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Waiting for the first byte of an answer.
    FirstByte,
    /// Waiting for the next chunk of a stream.
    Idle,
    /// The whole request.
    Total,
}

/// The upstream did not answer in time: 504.
#[derive(Debug)]
pub struct Timeout {
    kind: TimeoutKind,
    after: Duration,
}

impl Timeout {
    /// A `kind` timeout after `after`.
    pub fn new(kind: TimeoutKind, after: Duration) -> Self {
        Self { kind, after }
    }

    /// Which wait ran out.
    pub fn kind(&self) -> TimeoutKind {
        self.kind
    }
}

crate::refusal! {
    Timeout as timeout {
        status: StatusCode::GATEWAY_TIMEOUT,
        reason: "upstream_timeout",
        message(f): {
            let ms = timeout.after.as_millis();
            match timeout.kind {
                TimeoutKind::FirstByte => write!(f, "the upstream sent nothing within {ms} ms"),
                TimeoutKind::Idle => write!(f, "the upstream's stream stalled for {ms} ms"),
                TimeoutKind::Total => write!(f, "the request took longer than its {ms} ms limit"),
            }
        },
    }
}

/// Set on an attempt's request by a layer that abandons the attempt for
/// taking too long, before it drops it: layers further down that see
/// their future dropped can then tell a timeout (the upstream's failure)
/// from a client that went away (nobody's).
///
/// ```
/// use corral_core::AttemptTimedOut;
///
/// let flag = AttemptTimedOut::default();
/// let seen_below = flag.clone();
/// assert!(!seen_below.is_set());
/// flag.set();
/// assert!(seen_below.is_set());
/// ```
#[derive(Debug, Clone, Default)]
pub struct AttemptTimedOut(Arc<AtomicBool>);

impl AttemptTimedOut {
    /// Marks the attempt as abandoned for time.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it was.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
