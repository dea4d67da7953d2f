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

/// No upstream of the fleet may serve the model the request names (none
/// lists it in `models`, or none has it): 404, as Ollama answers for a
/// model it does not have.
#[derive(Debug)]
pub struct ModelNotServed {
    pub(crate) model: String,
}

corral_core::refusal! {
    ModelNotServed as refused {
        status: StatusCode::NOT_FOUND,
        reason: "model_not_served",
        message(f): write!(
            f,
            "model \"{}\" not found: no upstream serves it",
            refused.model
        ),
    }
}

/// Requests wait for more models at once than the scheduler keeps
/// queues for ([`MAX_MODEL_POOLS`](crate::MAX_MODEL_POOLS)), none idle
/// long enough to make room: 503, try again.
#[derive(Debug)]
pub struct TooManyModels {
    pub(crate) model: String,
}

corral_core::refusal! {
    TooManyModels as refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "too_many_models",
        retry_after: Some(std::time::Duration::from_secs(5)),
        message(f): write!(
            f,
            "too many models are asked for at once to queue for \"{}\" too; try again",
            refused.model
        ),
    }
}

/// The request's deadline cannot be met: the work ahead of it takes
/// longer by the queue's estimate. 503 at arrival, with `Retry-After`:
/// when a request with the same deadline would be served in time (the
/// work ahead that is too much drained), rather than after waiting in
/// vain.
#[derive(Debug)]
pub struct DeadlineUnreachable {
    pub(crate) estimate: crate::Estimate,
    /// How long it had until its deadline.
    pub(crate) budget: Duration,
}

impl DeadlineUnreachable {
    /// Its place in the queue and its estimated wait.
    pub fn estimate(&self) -> crate::Estimate {
        self.estimate
    }
}

corral_core::refusal! {
    DeadlineUnreachable as refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "deadline_unreachable",
        retry_after: refused.estimate.eta.map(|eta| eta.saturating_sub(refused.budget)),
        message(f): write!(
            f,
            "the request's deadline is {} ms away but the queue ahead of it takes about {} ms",
            refused.budget.as_millis(),
            refused.estimate.eta_ms().unwrap_or(0)
        ),
        headers: crate::estimate::headers(&refused.estimate),
    }
}
