use std::fmt;
use std::time::Duration;

use corral_core::Refusal;
use http::StatusCode;

/// The request's deadline passed while it waited for the upstream: 504.
#[derive(Debug)]
pub struct DeadlineExceeded {
    pub(crate) waited: Duration,
}

impl DeadlineExceeded {
    /// How long it waited before giving up.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request's deadline passed after waiting {} ms for the upstream",
            self.waited.as_millis()
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

impl Refusal for DeadlineExceeded {
    fn status(&self) -> StatusCode {
        StatusCode::GATEWAY_TIMEOUT
    }

    fn reason(&self) -> &'static str {
        "deadline_exceeded"
    }
}
