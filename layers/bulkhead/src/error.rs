use std::fmt;
use std::time::Duration;

use corral_core::Refusal;
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

impl fmt::Display for CompartmentFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.waited {
            None => write!(
                f,
                "compartment {:?} is full: {} requests of its kind are running",
                self.compartment, self.max_concurrent
            ),
            Some(waited) => write!(
                f,
                "compartment {:?} stayed full ({} running) for the {} ms this request could wait",
                self.compartment,
                self.max_concurrent,
                waited.as_millis()
            ),
        }
    }
}

impl std::error::Error for CompartmentFull {}

impl Refusal for CompartmentFull {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn reason(&self) -> &'static str {
        "bulkhead_full"
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}
