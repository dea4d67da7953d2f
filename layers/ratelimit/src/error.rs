use std::fmt;
use std::time::Duration;

use corral_core::Refusal;
use http::{HeaderName, HeaderValue, StatusCode};

/// The agent (or its class) spent its quota: 429 with `Retry-After` and
/// the IETF `RateLimit` / `RateLimit-Policy` headers.
#[derive(Debug)]
pub struct RateLimited {
    pub(crate) policy: &'static str,
    pub(crate) limit: u64,
    pub(crate) retry_after: Duration,
    pub(crate) policies: HeaderValue,
}

impl RateLimited {
    /// Which quota: `agent-requests`, `agent-tokens`, `class-requests`,
    /// `class-tokens`.
    pub fn policy(&self) -> &'static str {
        self.policy
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whose, what) = match self.policy {
            "agent-requests" => ("this agent", "requests"),
            "agent-tokens" => ("this agent", "generated tokens"),
            "class-requests" => ("this agent's class", "requests"),
            _ => ("this agent's class", "generated tokens"),
        };
        write!(
            f,
            "rate limit reached: {whose} may use {} {what} a minute; retry in {} s",
            self.limit,
            self.retry_after.as_secs_f64().ceil() as u64
        )
    }
}

impl std::error::Error for RateLimited {}

impl Refusal for RateLimited {
    fn status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }

    fn reason(&self) -> &'static str {
        "rate_limited"
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let reset = self.retry_after.as_secs_f64().ceil() as u64;
        let mut headers = vec![(crate::headers::RATELIMIT_POLICY, self.policies.clone())];
        if let Ok(value) = HeaderValue::from_str(&format!("\"{}\";r=0;t={reset}", self.policy)) {
            headers.push((crate::headers::RATELIMIT, value));
        }
        headers
    }
}
