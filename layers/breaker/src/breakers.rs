//! The breakers of a layer, by key, and what a transition sets off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{channels, lock, Bus, Outcome};
use tokio::time::Instant;

use crate::circuit::{Admission, Circuit, State, Transition};
use crate::config::BreakerConfig;
use crate::error::BreakerOpen;
use crate::metrics::{BREAKER_REJECTIONS_TOTAL, BREAKER_STATE, BREAKER_TRANSITIONS_TOTAL};

pub(crate) struct Breakers {
    pub(crate) config: BreakerConfig,
    circuits: Mutex<HashMap<Arc<str>, Circuit>>,
    bus: Option<Arc<dyn Bus>>,
}

/// Models with a breaker of their own at most with `per_model` (the
/// upstream's comes on top, for the rest).
pub(crate) const MAX_MODEL_BREAKERS: usize = 64;

/// The name of the upstream-wide breaker.
pub(crate) const UPSTREAM: &str = "upstream";

impl Breakers {
    pub(crate) fn new(config: BreakerConfig, bus: Option<Arc<dyn Bus>>) -> Self {
        let breakers = Self {
            config,
            circuits: Mutex::new(HashMap::new()),
            bus,
        };
        // Exported from the start, closed and never refused: "0" is not
        // "not running".
        metrics::gauge!(BREAKER_STATE, "breaker" => UPSTREAM).set(0.0);
        metrics::counter!(BREAKER_REJECTIONS_TOTAL, "breaker" => UPSTREAM).absolute(0);
        breakers
    }

    /// The breaker a call to `model` goes through with `per_model`: the
    /// model's own while fewer than [`MAX_MODEL_BREAKERS`] exist, else the
    /// upstream's. Model names come from clients: the map and the
    /// `breaker` label must not grow with whatever they send.
    pub(crate) fn key_for(&self, model: Arc<str>, upstream: &Arc<str>) -> Arc<str> {
        let circuits = lock(&self.circuits);
        if circuits.contains_key(&model) || circuits.len() < MAX_MODEL_BREAKERS {
            model
        } else {
            upstream.clone()
        }
    }

    /// Lets a call on breaker `key` through, or refuses it.
    pub(crate) fn admit(&self, key: &Arc<str>) -> Result<Admission, BreakerOpen> {
        let now = Instant::now();
        let (admission, transition) = {
            let mut circuits = lock(&self.circuits);
            let circuit = circuits.entry(key.clone()).or_default();
            circuit.admit(&self.config, now)
        };
        if let Some(transition) = transition {
            self.announce(key, transition, now);
        }
        admission.map_err(|retry_after| {
            metrics::counter!(BREAKER_REJECTIONS_TOTAL, "breaker" => key.to_string()).increment(1);
            BreakerOpen {
                breaker: key.to_string(),
                retry_after: retry_after.max(Duration::from_secs(1)),
            }
        })
    }

    /// Records how a call on breaker `key` ended.
    pub(crate) fn record(
        &self,
        key: &Arc<str>,
        admission: Admission,
        outcome: Outcome,
        slow: bool,
    ) {
        let now = Instant::now();
        let transition = {
            let mut circuits = lock(&self.circuits);
            let circuit = circuits.entry(key.clone()).or_default();
            circuit.record(&self.config, now, admission, outcome, slow)
        };
        if let Some(transition) = transition {
            self.announce(key, transition, now);
        }
    }

    /// Opens breaker `key` for `open_for`, as another replica's did;
    /// not announced on the bus again.
    pub(crate) fn follow(&self, key: &str, open_for: Duration) {
        let now = Instant::now();
        let key: Arc<str> = Arc::from(key);
        let transition = {
            let mut circuits = lock(&self.circuits);
            if !circuits.contains_key(&key)
                && circuits.len() >= MAX_MODEL_BREAKERS
                && &*key != UPSTREAM
            {
                return;
            }
            circuits
                .entry(key.clone())
                .or_default()
                .open_until(now + open_for)
        };
        if let Some(transition) = transition {
            self.announce_from(&key, transition, now, false);
        }
    }

    /// Each breaker's state.
    pub(crate) fn states(&self) -> Vec<(String, State)> {
        lock(&self.circuits)
            .iter()
            .map(|(k, c)| (k.to_string(), c.state()))
            .collect()
    }

    /// Logs the change once, sets the gauge, tells the bus.
    fn announce(&self, key: &Arc<str>, transition: Transition, now: Instant) {
        self.announce_from(key, transition, now, true);
    }

    /// As [`Breakers::announce`]; the bus is told only when `tell`.
    fn announce_from(&self, key: &Arc<str>, transition: Transition, now: Instant, tell: bool) {
        let Transition { from, to } = transition;
        match to {
            State::Open { until } => tracing::warn!(
                breaker = %key,
                from = from.as_str(),
                open_for_secs = until.saturating_duration_since(now).as_secs_f64(),
                "circuit breaker opened: failing fast"
            ),
            State::HalfOpen => {
                tracing::info!(breaker = %key, "circuit breaker half open: probing the upstream")
            }
            State::Closed => {
                tracing::info!(breaker = %key, "circuit breaker closed: the upstream recovered")
            }
        }
        metrics::gauge!(BREAKER_STATE, "breaker" => key.to_string()).set(f64::from(to.as_number()));
        metrics::counter!(BREAKER_TRANSITIONS_TOTAL, "breaker" => key.to_string(), "to" => to.as_str()).increment(1);
        if let (true, Some(bus)) = (tell, &self.bus) {
            let retry_after = match to {
                State::Open { until } => Some(until.saturating_duration_since(now).as_secs_f64()),
                _ => None,
            };
            // Kept per breaker, so a replica that starts while it is open
            // learns it.
            bus.publish_state(
                channels::BREAKER_STATE,
                key,
                serde_json::json!({
                    "breaker": &**key,
                    "from": from.as_str(),
                    "to": to.as_str(),
                    "state": to.as_number(),
                    "open_for_secs": retry_after,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_model_breakers_stop_at_their_bound() {
        let breakers = Breakers::new(BreakerConfig::default(), None);
        let upstream: Arc<str> = Arc::from(UPSTREAM);
        for i in 0..1000 {
            let key = breakers.key_for(Arc::from(format!("model-{i}")), &upstream);
            let _ = breakers.admit(&key);
        }
        // The models' own, and the upstream's that the rest share.
        assert_eq!(lock(&breakers.circuits).len(), MAX_MODEL_BREAKERS + 1);
        let known = breakers.key_for(Arc::from("model-3"), &upstream);
        assert_eq!(&*known, "model-3", "a model with a breaker keeps it");
        let late = breakers.key_for(Arc::from("model-999"), &upstream);
        assert_eq!(&*late, UPSTREAM);
    }
}
