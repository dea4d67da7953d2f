use std::time::Duration;

use http::StatusCode;

/// The request's compartment is full (and its waiting room too, or the
/// wait ran out): 503, with `Retry-After` when a slot would be free for
/// it (the requests waiting there, and those running half done, over the
/// compartment's slots at its measured hold time; 1 s before one is
/// measured).
#[derive(Debug)]
pub struct CompartmentFull {
    pub(crate) compartment: String,
    pub(crate) max_concurrent: usize,
    pub(crate) waited: Option<Duration>,
    /// When a slot would be free for it, from the compartment's measured
    /// hold time and the requests waiting there.
    pub(crate) retry_after: Duration,
}

impl CompartmentFull {
    /// The compartment's name.
    pub fn compartment(&self) -> &str {
        &self.compartment
    }
}

corral_core::refusal! {
    CompartmentFull as full {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "bulkhead_full",
        retry_after: Some(full.retry_after),
        message(f): match full.waited {
            None => write!(
                f,
                "compartment {:?} is full: {} requests of its kind are running",
                full.compartment, full.max_concurrent
            ),
            Some(waited) => write!(
                f,
                "compartment {:?} stayed full ({} running) for the {} ms this request could wait",
                full.compartment,
                full.max_concurrent,
                waited.as_millis()
            ),
        },
    }
}
