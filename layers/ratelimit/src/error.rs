use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::budget::Period;

use http::{HeaderValue, StatusCode};

/// The agent (or its class) spent its quota: 429 with `Retry-After` and
/// the IETF `RateLimit` / `RateLimit-Policy` headers.
#[derive(Debug)]
pub struct RateLimited {
    pub(crate) policy: &'static str,
    pub(crate) limit: u64,
    pub(crate) retry_after: Duration,
    /// A budget's window, and when it ends (since the Unix epoch).
    pub(crate) resets_at: Option<(Period, Duration)>,
    pub(crate) policies: HeaderValue,
}

impl RateLimited {
    /// Which quota: `agent-requests`, `agent-tokens`, `class-requests`,
    /// `class-tokens`, or a budget: `agent-tokens-day`,
    /// `agent-tokens-month`, `class-tokens-day`, `class-tokens-month`.
    pub fn policy(&self) -> &'static str {
        self.policy
    }

    /// When a spent budget is whole again; `None` for a per-minute
    /// quota.
    pub fn resets_at(&self) -> Option<SystemTime> {
        self.resets_at.map(|(_, at)| UNIX_EPOCH + at)
    }
}

corral_core::refusal! {
    RateLimited as limited {
        status: StatusCode::TOO_MANY_REQUESTS,
        reason: if limited.resets_at.is_some() { "budget_spent" } else { "rate_limited" },
        retry_after: Some(limited.retry_after),
        message(f): {
            let whose = if limited.policy.starts_with("agent") { "this agent" } else { "this agent's class" };
            if let Some((period, at)) = limited.resets_at {
                return write!(
                    f,
                    "token budget spent: {whose} may generate {} tokens a {} (UTC); it is whole again at {}",
                    limited.limit,
                    period.name(),
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + at)
                );
            }
            let what = if limited.policy.ends_with("requests") { "requests" } else { "generated tokens" };
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
