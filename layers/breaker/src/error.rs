use std::time::Duration;

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

corral_core::refusal! {
    BreakerOpen as open {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "breaker_open",
        retry_after: Some(open.retry_after),
        message(f): write!(
            f,
            "the upstream ({}) is failing: circuit breaker open, retry in {} s",
            open.breaker,
            open.retry_after.as_secs_f64().ceil() as u64
        ),
    }
}
