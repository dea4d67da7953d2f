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

corral_core::refusal! {
    BodyTooLarge as too_large {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        reason: "body_too_large",
        message(f): write!(
            f,
            "request body is larger than the limit of {} bytes (server.max_request_bytes)",
            too_large.limit
        ),
    }
}

/// The client took longer than `body_read_timeout` to send its body:
/// 408.
#[derive(Debug)]
pub struct BodyTimedOut {
    pub(crate) after: std::time::Duration,
}

corral_core::refusal! {
    BodyTimedOut as timed_out {
        status: StatusCode::REQUEST_TIMEOUT,
        reason: "body_timeout",
        message(f): write!(
            f,
            "the request body did not arrive within {:?} (server.body_read_timeout)",
            timed_out.after
        ),
    }
}

/// The request cannot be understood (malformed JSON, no model, a bad
/// `X-Priority`): 400 with what was wrong.
#[derive(Debug)]
pub struct InvalidRequest {
    pub(crate) message: String,
}

corral_core::refusal! {
    InvalidRequest as invalid {
        status: StatusCode::BAD_REQUEST,
        reason: "invalid_request",
        message(f): f.write_str(&invalid.message),
    }
}

/// The agent did not prove who it is where it must: 401.
#[derive(Debug)]
pub struct Unauthenticated {
    pub(crate) message: &'static str,
}

corral_core::refusal! {
    Unauthenticated as unauthenticated {
        status: StatusCode::UNAUTHORIZED,
        reason: "unauthenticated",
        message(f): f.write_str(unauthenticated.message),
    }
}

/// The client's body could not be read (it hung up, or sent a broken
/// chunked encoding): 400.
#[derive(Debug)]
pub struct BodyReadFailed {
    pub(crate) source: corral_core::BoxError,
}

corral_core::refusal! {
    BodyReadFailed as failed {
        status: StatusCode::BAD_REQUEST,
        reason: "body_read_failed",
        message(f): write!(f, "failed to read the request body: {}", failed.source),
        source: Some(&*failed.source),
    }
}
