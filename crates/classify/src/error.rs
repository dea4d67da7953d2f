use std::fmt;

use corral_core::Refusal;
use http::StatusCode;

/// The request body is larger than `max_request_bytes`: 413.
#[derive(Debug)]
pub struct BodyTooLarge {
    pub(crate) limit: usize,
}

impl BodyTooLarge {
    /// The bound that was exceeded, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body is larger than the limit of {} bytes (server.max_request_bytes)",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

impl Refusal for BodyTooLarge {
    fn status(&self) -> StatusCode {
        StatusCode::PAYLOAD_TOO_LARGE
    }

    fn reason(&self) -> &'static str {
        "body_too_large"
    }
}

/// The client took longer than `body_read_timeout` to send its body:
/// 408.
#[derive(Debug)]
pub struct BodyTimedOut {
    pub(crate) after: std::time::Duration,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive within {:?} (server.body_read_timeout)",
            self.after
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl Refusal for BodyTimedOut {
    fn status(&self) -> StatusCode {
        StatusCode::REQUEST_TIMEOUT
    }

    fn reason(&self) -> &'static str {
        "body_timeout"
    }
}

/// The request cannot be understood (malformed JSON, no model, a bad
/// `X-Priority`): 400 with what was wrong.
#[derive(Debug)]
pub struct InvalidRequest {
    pub(crate) message: String,
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidRequest {}

impl Refusal for InvalidRequest {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    fn reason(&self) -> &'static str {
        "invalid_request"
    }
}

/// The agent did not prove who it is where it must: 401.
#[derive(Debug)]
pub struct Unauthenticated {
    pub(crate) message: &'static str,
}

impl fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl std::error::Error for Unauthenticated {}

impl Refusal for Unauthenticated {
    fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn reason(&self) -> &'static str {
        "unauthenticated"
    }
}

/// The client's body could not be read (it hung up, or sent a broken
/// chunked encoding): 400.
#[derive(Debug)]
pub struct BodyReadFailed {
    pub(crate) source: corral_core::BoxError,
}

impl fmt::Display for BodyReadFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed to read the request body: {}", self.source)
    }
}

impl std::error::Error for BodyReadFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Refusal for BodyReadFailed {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    fn reason(&self) -> &'static str {
        "body_read_failed"
    }
}
