use std::time::Duration;

use http::StatusCode;

/// The request's compartment is full (and its waiting room too, or the
/// wait ran out): 503.
#[derive(Debug)]
pub struct CompartmentFull {
    pub(crate) compartment: String,
    pub(crate) max_concurrent: usize,
    pub(crate) waited: Option<Duration>,
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
        retry_after: Some(Duration::from_secs(1)),
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
