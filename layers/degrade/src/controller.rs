//! The level in force, kept current from the scheduler's load, and the
//! operator's override.

use std::sync::{Arc, Mutex};

use corral_core::{channels, lock, Bus, Level, LoadCell};
use tokio::time::Instant;

use crate::config::DegradeConfig;
use crate::levels::{time_below, Change, Drain, Levels};
use crate::metrics::{DEGRADATION_LEVEL, DEGRADATION_LOAD};

/// The degrade layer's state, shared with whoever controls it (the admin
/// API forces and releases levels through it).
pub struct Controller {
    pub(crate) config: DegradeConfig,
    pub(crate) load: LoadCell,
    levels: Mutex<Levels>,
    pub(crate) bus: Option<Arc<dyn Bus>>,
}

corral_core::impl_debug!(Controller { status: status() });

/// The level, the load behind it, and the override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    /// The level in force.
    pub level: Level,
    /// The smoothed load, 0 to 1.
    pub load: f64,
    /// The operator's level, when forced.
    pub forced: Option<Level>,
}

impl Controller {
    pub(crate) fn new(config: DegradeConfig, load: LoadCell, bus: Option<Arc<dyn Bus>>) -> Self {
        metrics::gauge!(DEGRADATION_LEVEL).set(0.0);
        Self {
            config,
            load,
            levels: Mutex::new(Levels::new()),
            bus,
        }
    }

    /// The raw load now: work in the system over what saturates it.
    fn sample(&self) -> f64 {
        let Some(load) = self.load.get() else {
            return 0.0;
        };
        let snapshot = load.snapshot();
        let work = (snapshot.in_flight + snapshot.queued_total()) as f64;
        let full = snapshot.capacity.max(1) as f64 * self.config.saturation;
        (work / full).min(1.0)
    }

    /// How long until a request refused at `level` would be let in: until
    /// the smoothed load is below the threshold down to `to`, the highest
    /// level that lets it in, as the work drains at its recent rate; the
    /// configured `retry_after` at most, and when the level is forced or
    /// nothing drains.
    pub(crate) fn retry_after(&self, to: Level) -> std::time::Duration {
        let ceiling = self.config.retry_after;
        let (smoothed, forced) = {
            let levels = lock(&self.levels);
            (levels.load(), levels.forced())
        };
        let (Some(load), None) = (self.load.get(), forced) else {
            return ceiling;
        };
        let snapshot = load.snapshot();
        let drain = Drain {
            smoothed,
            work: (snapshot.in_flight + snapshot.queued_total()) as f64,
            full: snapshot.capacity.max(1) as f64 * self.config.saturation,
            rate: snapshot.completions_per_sec,
        };
        let threshold = self.config.down[usize::from(to.as_number()).min(2)];
        time_below(drain, threshold, self.config.smoothing, ceiling).map_or(ceiling, |t| {
            t.max(std::time::Duration::from_secs(1)).min(ceiling)
        })
    }

    /// Samples the load and returns the level in force.
    pub fn level(&self) -> Level {
        let sample = self.sample();
        let (level, change) = {
            let mut levels = lock(&self.levels);
            let change = levels.observe(
                sample,
                Instant::now(),
                self.config.smoothing,
                self.config.up,
                self.config.down,
            );
            (
                levels.effective(),
                change.map(|c| (c, levels.load(), levels.forced())),
            )
        };
        if let Some((change, load, forced)) = change {
            self.announce(change, load, forced);
        }
        level
    }

    /// Samples the load every `every`, for as long as it runs: the level
    /// (its gauge, its bus event, the admin API's view) follows the load
    /// when no request comes to sample it, so a burst that ends in
    /// silence does not leave the level, and its alert, up. The proxy
    /// spawns it; a Rust service using the layer may too.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use corral_degrade::{DegradeConfig, DegradeLayer};
    ///
    /// let layer = DegradeLayer::new(&DegradeConfig::default()).map(|l| l.with_load(corral_core::LoadCell::default())).unwrap();
    /// let ticker = tokio::spawn(layer.controller().clone().keep_current(std::time::Duration::from_secs(1)));
    /// ticker.abort();
    /// # });
    /// ```
    pub async fn keep_current(self: Arc<Self>, every: std::time::Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.level();
        }
    }

    /// Forces `level` until released with `None`, and tells the other
    /// replicas (a setting on the bus: `system:degradation:level`, field
    /// `forced`).
    pub fn force(&self, level: Option<Level>) {
        self.apply_forced(level, true);
    }

    /// Applies a level forced on another replica, heard on the bus: as
    /// [`Controller::force`], without telling the bus again.
    pub fn follow(&self, level: Option<Level>) {
        if lock(&self.levels).forced() == level {
            return;
        }
        self.apply_forced(level, false);
    }

    fn apply_forced(&self, level: Option<Level>, tell: bool) {
        let (change, load, effective) = {
            let mut levels = lock(&self.levels);
            let change = levels.force(level);
            (change, levels.load(), levels.effective())
        };
        let by = if tell {
            "this replica"
        } else {
            "another replica"
        };
        match level {
            Some(level) => {
                tracing::warn!(level = %level, by, "degradation level forced by the operator")
            }
            None => tracing::info!(by, "forced degradation level released"),
        }
        if let Some(change) = change {
            self.record(change, load);
        }
        if let (true, Some(bus)) = (tell, &self.bus) {
            bus.publish_state(
                channels::DEGRADATION_LEVEL,
                "forced",
                serde_json::json!({
                    "cause": "operator",
                    "forced": level.map(Level::as_str),
                    "level": effective.as_str(),
                    "load": load,
                }),
            );
        }
    }

    /// Where it stands.
    pub fn status(&self) -> Status {
        let levels = lock(&self.levels);
        Status {
            level: levels.effective(),
            load: levels.load(),
            forced: levels.forced(),
        }
    }

    fn announce(&self, change: Change, load: f64, forced: Option<Level>) {
        self.record(change, load);
        if let Some(bus) = &self.bus {
            bus.publish(
                channels::DEGRADATION_LEVEL,
                serde_json::json!({
                    "cause": "load",
                    "level": change.to.as_str(),
                    "from": change.from.as_str(),
                    "load": load,
                    "forced": forced.map(Level::as_str),
                }),
            );
        }
    }

    /// Logs a change and sets its gauges.
    fn record(&self, change: Change, load: f64) {
        let Change { from, to } = change;
        if to > from {
            tracing::warn!(from = %from, to = %to, load, "degradation level raised");
        } else {
            tracing::info!(from = %from, to = %to, load, "degradation level lowered");
        }
        metrics::gauge!(DEGRADATION_LEVEL).set(f64::from(to.as_number()));
        metrics::gauge!(DEGRADATION_LOAD).set(load);
    }
}
