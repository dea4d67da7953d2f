use std::time::Duration;

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

corral_core::refusal! {
    DeadlineExceeded as exceeded {
        status: StatusCode::GATEWAY_TIMEOUT,
        reason: "deadline_exceeded",
        message(f): write!(
            f,
            "the request's deadline passed after waiting {} ms for the upstream",
            exceeded.waited.as_millis()
        ),
    }
}
