use std::fmt;
use std::time::Duration;

use corral_core::{Level, Priority, Refusal};
use http::StatusCode;

/// Degradation refused the request: its priority is not served at this
/// level. 503 with `Retry-After`.
#[derive(Debug)]
pub struct Degraded {
    pub(crate) level: Level,
    pub(crate) priority: Priority,
    pub(crate) retry_after: Duration,
}

impl fmt::Display for Degraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the service is degraded ({}): priority {} requests are not served now; retry in {} s",
            self.level,
            self.priority,
            self.retry_after.as_secs()
        )
    }
}

impl std::error::Error for Degraded {}

impl Refusal for Degraded {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn reason(&self) -> &'static str {
        "degraded"
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }

    /// `X-Corral-Degraded` with the level, as on every degraded answer.
    fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        http::HeaderValue::from_str(self.level.as_str())
            .map(|level| vec![(crate::service::X_CORRAL_DEGRADED, level)])
            .unwrap_or_default()
    }
}
