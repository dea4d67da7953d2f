//! The level state machine: a smoothed load, thresholds with hysteresis,
//! and an operator's override.

use std::time::Duration;

use corral_core::Level;
use tokio::time::Instant;

/// How finely [`time_below`] steps the load forward.
const STEP: Duration = Duration::from_millis(100);

/// The drain a degraded refusal's `Retry-After` is predicted from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Drain {
    /// The smoothed load now.
    pub(crate) smoothed: f64,
    /// Requests running and waiting now.
    pub(crate) work: f64,
    /// Requests in the system that make 100 % load.
    pub(crate) full: f64,
    /// Requests finished per second, recently.
    pub(crate) rate: f64,
}

/// How long until the smoothed load falls below `threshold`, if the work
/// drains at its recent rate and nothing new arrives (the refusals keep
/// the lower priorities out): the load stepped forward with the same
/// smoothing as [`Levels::observe`]. `None` when nothing drains, or not
/// within `within`.
pub(crate) fn time_below(
    drain: Drain,
    threshold: f64,
    smoothing: Duration,
    within: Duration,
) -> Option<Duration> {
    let mut smoothed = drain.smoothed;
    if smoothed < threshold {
        return Some(Duration::ZERO);
    }
    if drain.rate <= 0.0 || drain.full <= 0.0 {
        return None;
    }
    let dt = STEP.as_secs_f64();
    let alpha = if smoothing.is_zero() {
        1.0
    } else {
        1.0 - (-dt / smoothing.as_secs_f64()).exp()
    };
    let mut elapsed = Duration::ZERO;
    let mut work = drain.work;
    while elapsed < within {
        elapsed += STEP;
        work = (work - drain.rate * dt).max(0.0);
        smoothed += alpha * ((work / drain.full).min(1.0) - smoothed);
        if smoothed < threshold {
            return Some(elapsed);
        }
    }
    None
}

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
    ///
    /// An operator's level says nothing of when it ends: refusals under
    /// it get the configured `Retry-After`.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(smoothed: f64, work: f64, rate: f64) -> Drain {
        Drain {
            smoothed,
            work,
            full: 16.0,
            rate,
        }
    }

    #[test]
    fn the_time_below_a_threshold_is_the_drain_then_the_smoothing() {
        let minute = Duration::from_secs(60);
        // Already below: now.
        assert_eq!(
            time_below(drain(0.4, 8.0, 1.0), 0.5, Duration::ZERO, minute),
            Some(Duration::ZERO)
        );
        // 16 requests at 4 per second, unsmoothed: below 0.69 × 16 =
        // 11.04 once 4.96 are done, 1.24 s (1.3 s, to the step).
        assert_eq!(
            time_below(drain(1.0, 16.0, 4.0), 0.69, Duration::ZERO, minute),
            Some(Duration::from_millis(1_300))
        );
        // Smoothed over 5 s: later, and later still with a slower drain.
        let smoothed = time_below(drain(1.0, 16.0, 4.0), 0.7, Duration::from_secs(5), minute);
        let slower = time_below(drain(1.0, 16.0, 2.0), 0.7, Duration::from_secs(5), minute);
        assert!(smoothed.unwrap() > Duration::from_secs(3), "{smoothed:?}");
        assert!(slower.unwrap() > smoothed.unwrap(), "{slower:?}");
        // Nothing drains, or not in time: unknown.
        assert_eq!(
            time_below(drain(1.0, 16.0, 0.0), 0.7, Duration::ZERO, minute),
            None
        );
        assert_eq!(
            time_below(drain(1.0, 1600.0, 1.0), 0.7, Duration::ZERO, minute),
            None
        );
    }
}
