//! Capacities found by measuring (`capacity = "auto"`): a
//! [`corral_adaptive::Controller`] per (upstream, model), fed one sample
//! per request ([`super::measure`]); the limit it settles on is the
//! capacity the fleet hands out there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_adaptive::{AdaptiveConfig, Controller, Sample};
use corral_core::lock;
use corral_fleet::Fleet;
use tokio::time::Instant;

/// The controllers of the upstreams with `capacity = "auto"`.
pub(crate) struct Measured {
    /// Each upstream's, by index; `None`: its capacity is the operator's.
    configs: Vec<Option<AdaptiveConfig>>,
    controllers: Mutex<HashMap<(usize, Arc<str>), Controller>>,
}

impl Measured {
    pub(crate) fn new(configs: Vec<Option<AdaptiveConfig>>) -> Self {
        Self {
            configs,
            controllers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether upstream `index` finds its capacity by measuring.
    pub(crate) fn measures(&self, index: usize) -> bool {
        self.configs.get(index).is_some_and(Option::is_some)
    }

    /// What a request of `model` on upstream `index` measured; the
    /// model's capacity there follows the controller.
    pub(crate) fn sample(&self, fleet: &Fleet, index: usize, model: &str, sample: &Sample) {
        let Some(Some(config)) = self.configs.get(index) else {
            return;
        };
        let changed = {
            let mut controllers = lock(&self.controllers);
            let key = (index, Arc::<str>::from(model));
            let controller = match controllers.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match Controller::new(config.clone()) {
                        Ok(controller) => e.insert(controller),
                        // Validated with the configuration: never refused here.
                        Err(_) => return,
                    }
                }
            };
            let before = controller.limit();
            controller.on_sample(sample, Instant::now());
            let after = controller.limit();
            (after != before).then_some(after)
        };
        let Some(capacity) = changed else {
            return;
        };
        let name = fleet.name(index).map(|n| n.to_string()).unwrap_or_default();
        metrics::gauge!(corral_fleet::metrics::CAPACITY, "upstream" => name.clone(), "model" => model.to_string())
            .set(capacity as f64);
        tracing::info!(upstream = %name, model, capacity, "capacity found by measuring");
        fleet.set_capacity_here(index, Some(model), capacity);
    }
}
