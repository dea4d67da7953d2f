use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::compartment::Compartments;
use crate::config::BulkheadConfig;
use crate::service::BulkheadService;

/// Puts a [`BulkheadService`] in front of a service; all share the
/// compartments.
#[derive(Clone)]
pub struct BulkheadLayer {
    compartments: Arc<Compartments>,
}

impl std::fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.compartments.all.iter().map(|c| &*c.name).collect();
        f.debug_struct("BulkheadLayer")
            .field("compartments", &names)
            .finish()
    }
}

impl BulkheadLayer {
    /// A layer for `config`, or the key and reason it is refused for
    /// (unknown compartments in rules among them).
    pub fn new(config: &BulkheadConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            compartments: Arc::new(Compartments::new(config)),
        })
    }

    /// Each compartment's name and requests running in it now.
    pub fn usage(&self) -> Vec<(String, usize)> {
        self.compartments
            .all
            .iter()
            .map(|c| (c.name.to_string(), c.in_use()))
            .collect()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService::new(inner, self.compartments.clone())
    }
}
