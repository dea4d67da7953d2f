//! The level state machine: a smoothed load, thresholds with hysteresis,
//! and an operator's override.

use std::time::Duration;

use corral_core::Level;
use tokio::time::Instant;

/// Where the machine stands.
#[derive(Debug, Clone)]
pub struct Levels {
    level: Level,
    smoothed: f64,
    last: Option<Instant>,
    forced: Option<Level>,
}

/// A change of the effective level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// From.
    pub from: Level,
    /// To.
    pub to: Level,
}

impl Default for Levels {
    fn default() -> Self {
        Self::new()
    }
}

impl Levels {
    /// Normal, no load seen.
    pub fn new() -> Self {
        Self {
            level: Level::Normal,
            smoothed: 0.0,
            last: None,
            forced: None,
        }
    }

    /// The level in force: the operator's, else the load's.
    pub fn effective(&self) -> Level {
        self.forced.unwrap_or(self.level)
    }

    /// The smoothed load, 0 to 1.
    pub fn load(&self) -> f64 {
        self.smoothed
    }

    /// The operator's level, if one is forced.
    pub fn forced(&self) -> Option<Level> {
        self.forced
    }

    /// Folds in a load sample taken at `now`; the change of the effective
    /// level, if any.
    pub fn observe(
        &mut self,
        load: f64,
        now: Instant,
        smoothing: Duration,
        up: [f64; 3],
        down: [f64; 3],
    ) -> Option<Change> {
        let before = self.effective();
        let alpha = match self.last {
            None => 1.0,
            Some(_) if smoothing.is_zero() => 1.0,
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                1.0 - (-dt / smoothing.as_secs_f64()).exp()
            }
        };
        self.last = Some(now);
        self.smoothed += alpha * (load.clamp(0.0, 1.0) - self.smoothed);
        // Step as far as the load says: a jump from idle to full goes
        // straight to Critical.
        loop {
            let s = self.smoothed;
            let next = match self.level {
                Level::Normal if s > up[0] => Level::L1,
                Level::L1 if s > up[1] => Level::L2,
                Level::L1 if s < down[0] => Level::Normal,
                Level::L2 if s > up[2] => Level::Critical,
                Level::L2 if s < down[1] => Level::L1,
                Level::Critical if s < down[2] => Level::L2,
                same => same,
            };
            if next == self.level {
                break;
            }
            self.level = next;
        }
        let after = self.effective();
        (after != before).then_some(Change {
            from: before,
            to: after,
        })
    }

    /// Forces `level` (or releases with `None`); the change, if any.
    pub fn force(&mut self, level: Option<Level>) -> Option<Change> {
        let before = self.effective();
        self.forced = level;
        let after = self.effective();
        (after != before).then_some(Change {
            from: before,
            to: after,
        })
    }
}
