use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

/// The request's deadline passed while it waited for the upstream: 504,
/// with `X-Corral-Queue-Ms` as an answer has: the client sees how long
/// it waited.
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
        headers: vec![queue_ms(exceeded.waited)],
    }
}

/// `X-Corral-Queue-Ms`: how long a request waited for a permit.
fn queue_ms(waited: Duration) -> (HeaderName, HeaderValue) {
    let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    (
        corral_core::headers::X_CORRAL_QUEUE_MS,
        HeaderValue::from(ms),
    )
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
/// longer by the queue's estimate. 503 at arrival, rather than after
/// waiting in vain, with `Retry-After`: when it would be let in. A
/// request whose client named it (`X-Request-Id`) holds a reservation
/// for then: sent again with the same id at that time, it is let in
/// ahead of fresh arrivals; sooner, it is refused with the time left
/// ([`DeadlineUnreachable::early`]), told its place is kept till then.
/// One without is told when the work ahead is down to its deadline.
#[derive(Debug)]
pub struct DeadlineUnreachable {
    pub(crate) estimate: crate::Estimate,
    /// How long it had until its deadline.
    pub(crate) budget: Duration,
    /// When it would be let in.
    pub(crate) retry_after: Option<Duration>,
    /// Whether it holds a reservation for then.
    pub(crate) reserved: bool,
    /// Whether it came back before its reservation was due: refused for
    /// the time left, not for its deadline.
    pub(crate) early: bool,
}

impl DeadlineUnreachable {
    /// Its place in the queue and its estimated wait.
    pub fn estimate(&self) -> crate::Estimate {
        self.estimate
    }

    /// How long until it would be let in, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether it holds a reservation: sent again with the same
    /// `X-Request-Id` at [`DeadlineUnreachable::retry_after`], it is let
    /// in ahead of fresh arrivals.
    pub fn reserved(&self) -> bool {
        self.reserved
    }

    /// Whether it came back before its reservation was due: refused for
    /// the time left ([`DeadlineUnreachable::retry_after`]), not because
    /// the queue is longer than its deadline.
    pub fn early(&self) -> bool {
        self.early
    }

    /// What the client reads. Back early, it is told its place is kept,
    /// not the queue and its deadline: the queue may be well within it,
    /// and the two would read as a contradiction.
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept_ms = self.retry_after.unwrap_or_default().as_millis();
        if self.early {
            return write!(
                f,
                "the request is back before its reservation is due: its place is kept for {kept_ms} ms from now: send it again with the same X-Request-Id then"
            );
        }
        write!(
            f,
            "the request's deadline is {} ms away but the queue ahead of it takes about {} ms",
            self.budget.as_millis(),
            self.estimate.eta_ms().unwrap_or(0),
        )?;
        if self.reserved {
            write!(
                f,
                "; its place is kept for {kept_ms} ms from now: send it again with the same X-Request-Id then"
            )?;
        }
        Ok(())
    }
}

corral_core::refusal! {
    DeadlineUnreachable as refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "deadline_unreachable",
        retry_after: refused.retry_after,
        message(f): refused.describe(f),
        headers: crate::estimate::headers(&refused.estimate),
    }
}
