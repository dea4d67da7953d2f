use std::time::Duration;

use http::{HeaderValue, StatusCode};

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

corral_core::refusal! {
    RateLimited as limited {
        status: StatusCode::TOO_MANY_REQUESTS,
        reason: "rate_limited",
        retry_after: Some(limited.retry_after),
        message(f): {
            let (whose, what) = match limited.policy {
                "agent-requests" => ("this agent", "requests"),
                "agent-tokens" => ("this agent", "generated tokens"),
                "class-requests" => ("this agent's class", "requests"),
                _ => ("this agent's class", "generated tokens"),
            };
            write!(
                f,
                "rate limit reached: {whose} may use {} {what} a minute; retry in {} s",
                limited.limit,
                limited.retry_after.as_secs_f64().ceil() as u64
            )
        },
        headers: {
            let reset = limited.retry_after.as_secs_f64().ceil() as u64;
            let mut headers = vec![(crate::headers::RATELIMIT_POLICY, limited.policies.clone())];
            let value = HeaderValue::from_str(&format!("\"{}\";r=0;t={reset}", limited.policy));
            if let Ok(value) = value {
                headers.push((crate::headers::RATELIMIT, value));
            }
            headers
        },
    }
}
