//! Capacities found by measuring (`capacity = "auto"`): a controller per
//! (upstream, model) from [`corral_adaptive`], fed by the proxy with one
//! [`Sample`] per request; the capacity it settles on is the one the
//! fleet hands out.

use std::sync::Arc;

use corral_adaptive::{Controller, Sample};
use corral_core::lock;
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::metrics;

impl Fleet {
    /// Whether upstream `index` finds its capacity by measuring.
    pub fn measures(&self, index: usize) -> bool {
        self.specs.get(index).is_some_and(|s| s.auto.is_some())
    }

    /// What a request of `model` on upstream `index` measured. With
    /// `capacity = "auto"` there, the model's capacity follows; a raised
    /// one lets waiting requests in at once.
    pub fn sample(&self, index: usize, model: &str, sample: &Sample) {
        let Some(config) = self.specs.get(index).and_then(|s| s.auto.clone()) else {
            return;
        };
        let now = Instant::now();
        let raised = {
            let mut state = lock(&self.state);
            let key = (index, Arc::<str>::from(model));
            let controller = match state.auto.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match Controller::new(config) {
                    Ok(controller) => e.insert(controller),
                    // Validated with the configuration: never refused here.
                    Err(_) => return,
                },
            };
            let before = controller.limit();
            controller.on_sample(sample, now);
            let after = controller.limit();
            if after == before {
                return;
            }
            state.capacity.insert(key, after);
            ::metrics::gauge!(
                metrics::CAPACITY,
                "upstream" => self.specs[index].name.to_string(),
                "model" => model.to_string()
            )
            .set(after as f64);
            tracing::info!(
                upstream = %self.specs[index].name,
                model,
                capacity = after,
                "capacity found by measuring"
            );
            after > before
        };
        if raised {
            self.kick();
        }
    }

    /// Requests of `model` streaming on upstream `index` (their first byte
    /// came, their end not yet) after `delta` more: what a sample's
    /// `running` is.
    pub fn streaming(&self, index: usize, model: &str, delta: isize) -> usize {
        let mut state = lock(&self.state);
        let Some(resident) = state
            .ups
            .get_mut(index)
            .and_then(|up| up.residents.get_mut(model))
        else {
            return 0;
        };
        resident.streaming = resident.streaming.saturating_add_signed(delta);
        resident.streaming
    }
}
