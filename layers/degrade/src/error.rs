use std::time::Duration;

use corral_core::{Level, Priority};
use http::StatusCode;

/// Degradation refused the request: its priority is not served at this
/// level. 503 with `Retry-After`.
#[derive(Debug)]
pub struct Degraded {
    pub(crate) level: Level,
    pub(crate) priority: Priority,
    pub(crate) retry_after: Duration,
}

corral_core::refusal! {
    Degraded as degraded {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "degraded",
        retry_after: Some(degraded.retry_after),
        message(f): write!(
            f,
            "the service is degraded ({}): priority {} requests are not served now; retry in {} s",
            degraded.level,
            degraded.priority,
            degraded.retry_after.as_secs()
        ),
        // `X-Corral-Degraded` with the level, as on every degraded answer.
        headers: http::HeaderValue::from_str(degraded.level.as_str())
            .map(|level| vec![(crate::service::X_CORRAL_DEGRADED, level)])
            .unwrap_or_default(),
    }
}
