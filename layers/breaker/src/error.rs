use std::fmt;
use std::time::Duration;

use corral_core::Refusal;
use http::StatusCode;

/// The breaker is open: the upstream has been failing, so the request
/// fails fast instead of adding to it. 503 with `Retry-After` = the time
/// left open.
#[derive(Debug)]
pub struct BreakerOpen {
    pub(crate) breaker: String,
    pub(crate) retry_after: Duration,
}

impl BreakerOpen {
    /// Which breaker (`upstream`, or the model's name).
    pub fn breaker(&self) -> &str {
        &self.breaker
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the upstream ({}) is failing: circuit breaker open, retry in {} s",
            self.breaker,
            self.retry_after.as_secs_f64().ceil() as u64
        )
    }
}

impl std::error::Error for BreakerOpen {}

impl Refusal for BreakerOpen {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn reason(&self) -> &'static str {
        "breaker_open"
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}
