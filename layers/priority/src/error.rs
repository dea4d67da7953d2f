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
