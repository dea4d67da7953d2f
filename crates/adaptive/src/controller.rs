use std::time::Duration;

use corral_core::ConfigError;
use tokio::time::Instant;

use crate::{decide, AdaptiveConfig, Cause, Decision, Sample, Signals};

/// Share of a new rate in the running average of its concurrency.
const RATE_WEIGHT: f64 = 0.3;

/// The limit of one upstream and model, moved by the samples given. Pure:
/// no task, no timer; time is what the caller passes in.
///
/// ```
/// use corral_adaptive::{AdaptiveConfig, Controller, Decision, Sample};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let mut limit = Controller::new(AdaptiveConfig::default()).unwrap();
/// let now = Instant::now();
/// let ms = Duration::from_millis;
/// assert_eq!(limit.limit(), 1);
///
/// // One at a time, first token in 200 ms: the limit is reached, probe 2.
/// let alone = Sample::streamed(1, now, now + ms(200)).with_running(1);
/// assert_eq!(limit.on_sample(&alone, now + ms(3000)), Decision::Raise(2));
/// let two = Sample::streamed(2, now, now + ms(210)).with_running(2);
/// assert_eq!(limit.on_sample(&two, now + ms(3100)), Decision::Raise(3));
/// assert_eq!(limit.baseline_ttft(), Some(ms(200)));
///
/// // The third waited 1.4 s for a slot, while two streamed: back to 2.
/// let waited = Sample::streamed(3, now, now + ms(1600)).with_running(2);
/// assert!(matches!(limit.on_sample(&waited, now + ms(4000)), Decision::Lower { to: 2, .. }));
/// assert_eq!(limit.limit(), 2);
/// assert_eq!(limit.ceiling(now + ms(4000)), Some(3));
/// ```
#[derive(Debug, Clone)]
pub struct Controller {
    config: AdaptiveConfig,
    limit: usize,
    baseline: Option<Duration>,
    /// When the current baseline window began, and its fastest sample.
    window: Option<(Instant, Duration)>,
    gradient: Option<f64>,
    ceiling: Option<Ceiling>,
    /// Tokens per second per request, by concurrency at dispatch (index 0
    /// is concurrency 1).
    rates: Vec<Option<Rate>>,
}

/// A concurrency seen to be too much, not probed before `until`.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    level: usize,
    until: Instant,
    interval: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_sec: f64,
    at: Instant,
}

impl Controller {
    /// A controller at `config.initial`, once the config is valid.
    pub fn new(config: AdaptiveConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            limit: config.initial,
            rates: vec![None; config.max],
            config,
            baseline: None,
            window: None,
            gradient: None,
            ceiling: None,
        })
    }

    /// Requests to let in at once now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The baseline time to first token: the fastest unqueued sample,
    /// renewed each `baseline_window`; `None` before the first.
    pub fn baseline_ttft(&self) -> Option<Duration> {
        self.baseline
    }

    /// The last sample's gradient, baseline over its time to first token
    /// (Envoy's `minRTT / sampleRTT`): about 1 when it found a free slot,
    /// far below when it waited for one.
    pub fn gradient(&self) -> Option<f64> {
        self.gradient
    }

    /// The concurrency seen too much that is not probed again before its
    /// interval ends, if one is in force at `now`.
    pub fn ceiling(&self, now: Instant) -> Option<usize> {
        self.ceiling.filter(|c| now < c.until).map(|c| c.level)
    }

    /// The time to first token beyond which a request counts as queued:
    /// a request still without its first byte after this long can be
    /// given as [`Sample::waiting`]. `None` before the first sample.
    pub fn overdue_after(&self) -> Option<Duration> {
        self.baseline.map(|b| self.threshold(b))
    }

    /// The server restarted or reloaded the model (its requests failed,
    /// `/api/ps` shows a new runner): its parallelism may be anything now.
    /// The limit goes back to `initial` (at most what it was), the
    /// ceiling and the rates are forgotten; the baseline stays. Without
    /// this, a limit above the new parallelism is found too much only as
    /// the requests let in wait inside the server.
    ///
    /// ```
    /// use corral_adaptive::{AdaptiveConfig, Controller, Sample};
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// let mut auto = Controller::new(AdaptiveConfig::default()).unwrap();
    /// let now = Instant::now();
    /// for c in 1..=3 {
    ///     let sample = Sample::streamed(c, now, now + Duration::from_millis(200)).with_running(c);
    ///     auto.on_sample(&sample, now);
    /// }
    /// assert_eq!(auto.limit(), 4);
    /// auto.restarted();
    /// assert_eq!(auto.limit(), 1);
    /// assert_eq!(auto.baseline_ttft(), Some(Duration::from_millis(200)));
    /// ```
    pub fn restarted(&mut self) {
        self.limit = self.limit.min(self.config.initial);
        self.ceiling = None;
        self.rates.iter_mut().for_each(|r| *r = None);
    }

    /// Takes one sample into account at `now`; says what it did.
    pub fn on_sample(&mut self, sample: &Sample, now: Instant) -> Decision {
        self.roll_window(now);
        let queued = sample
            .ttft
            .filter(|_| !sample.loaded)
            .map(|ttft| self.judge(ttft, now));
        if let Some(rate) = sample.generation.and_then(|g| g.tokens_per_sec()) {
            if queued != Some(true) {
                self.record_rate(sample.concurrency, rate, now);
            }
        }
        let signals = Signals {
            limit: self.limit,
            queued,
            concurrency: sample.concurrency,
            running: sample.running,
            ceiling: self.ceiling(now),
            gain: self.gain(now),
        };
        let decision = decide(&signals, &self.config);
        if queued == Some(true) && sample.concurrency <= self.limit + 1 {
            self.mark_ceiling(sample.concurrency, now);
        }
        match decision {
            Decision::Hold => {}
            Decision::Raise(to) => self.limit = to,
            Decision::Lower { to, cause } => {
                if cause == Cause::NoGain {
                    self.mark_ceiling(self.limit, now);
                }
                self.limit = to;
            }
        }
        decision
    }

    fn threshold(&self, baseline: Duration) -> Duration {
        baseline.mul_f64(self.config.queue_ratio) + self.config.queue_margin
    }

    /// Whether `ttft` waited for a slot; keeps the baseline and gradient.
    fn judge(&mut self, ttft: Duration, now: Instant) -> bool {
        self.window = Some(match self.window {
            Some((start, fastest)) => (start, fastest.min(ttft)),
            None => (now, ttft),
        });
        let Some(baseline) = self.baseline else {
            self.baseline = Some(ttft);
            self.gradient = Some(1.0);
            return false;
        };
        self.gradient = Some(baseline.as_secs_f64() / ttft.as_secs_f64().max(1e-9));
        let queued = ttft > self.threshold(baseline);
        if !queued {
            self.baseline = Some(baseline.min(ttft));
        }
        queued
    }

    /// Each `baseline_window`, the baseline becomes the fastest sample of
    /// the window that ended, so it follows a lasting rise.
    fn roll_window(&mut self, now: Instant) {
        if let Some((start, fastest)) = self.window {
            if now.saturating_duration_since(start) >= self.config.baseline_window {
                self.baseline = Some(fastest);
                self.window = None;
            }
        }
    }

    fn record_rate(&mut self, concurrency: usize, per_sec: f64, now: Instant) {
        let Some(slot) = self.rates.get_mut(concurrency.max(1) - 1) else {
            return;
        };
        let memory = self.config.rate_memory;
        let per_sec = match slot {
            Some(old) if now.saturating_duration_since(old.at) <= memory => {
                old.per_sec + RATE_WEIGHT * (per_sec - old.per_sec)
            }
            _ => per_sec,
        };
        *slot = Some(Rate { per_sec, at: now });
    }

    fn rate(&self, concurrency: usize, now: Instant) -> Option<f64> {
        let rate = (*self.rates.get(concurrency.checked_sub(1)?)?)?;
        (now.saturating_duration_since(rate.at) <= self.config.rate_memory).then_some(rate.per_sec)
    }

    /// What the `limit`-th request adds to the total tokens per second, in
    /// requests' worth.
    fn gain(&self, now: Instant) -> Option<f64> {
        let l = self.limit;
        let at = self.rate(l, now)?;
        let below = self.rate(l.checked_sub(1)?, now)?;
        (at > 0.0).then(|| (l as f64 * at - (l - 1) as f64 * below) / at)
    }

    /// `level` was seen too much: not probed again for `probe_interval`,
    /// doubled each time a probe of the same level fails again.
    fn mark_ceiling(&mut self, level: usize, now: Instant) {
        let interval = match self.ceiling {
            Some(c) if c.level == level && now < c.until => return,
            Some(c) if c.level < level && now < c.until => return,
            Some(c) if c.level == level => (c.interval * 2).min(self.config.max_probe_interval),
            _ => self.config.probe_interval,
        };
        self.ceiling = Some(Ceiling {
            level,
            until: now + interval,
            interval,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A stream dispatched at `c` with `c` streaming, first token after
    /// `ttft` ms.
    fn stream(c: usize, ttft: u64) -> Sample {
        Sample {
            ttft: Some(ms(ttft)),
            ..Sample::new(c)
        }
        .with_running(c)
    }

    fn at(limit: usize) -> Controller {
        Controller::new(AdaptiveConfig {
            initial: limit,
            ..AdaptiveConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_load_is_neither_queued_nor_baseline() {
        let mut auto = at(2);
        let now = Instant::now();
        let load = stream(2, 5_000).with_loaded(true);
        assert_eq!(auto.on_sample(&load, now), Decision::Hold);
        assert_eq!((auto.limit(), auto.baseline_ttft()), (2, None));
        auto.on_sample(&stream(1, 200), now);
        let load = stream(2, 5_000).with_loaded(true);
        assert_eq!(auto.on_sample(&load, now), Decision::Hold);
        assert_eq!(auto.baseline_ttft(), Some(ms(200)));
    }

    #[test]
    fn the_baseline_follows_a_lasting_rise_after_a_window() {
        let mut auto = at(4);
        let now = Instant::now();
        auto.on_sample(&stream(1, 200), now);
        // Every prompt is longer now: looks queued at first ...
        let later = now + ms(1_000);
        assert!(matches!(
            auto.on_sample(&stream(3, 600), later),
            Decision::Lower { .. }
        ));
        for s in [10, 20, 30, 40, 50, 60] {
            auto.on_sample(&stream(1, 600), later + Duration::from_secs(s));
        }
        // ... until a window holds only the longer ones: the fastest of
        // it is the baseline.
        assert_eq!(auto.baseline_ttft(), Some(ms(600)));
        assert_eq!(auto.overdue_after(), Some(ms(1_250)));
    }

    #[test]
    fn a_ceiling_doubles_with_each_failed_probe_of_its_level() {
        let mut auto = at(3);
        let mut now = Instant::now();
        auto.on_sample(&stream(1, 200), now);
        let probe = |auto: &mut Controller, now| {
            assert_eq!(auto.on_sample(&stream(3, 200), now), Decision::Raise(4));
            let late = Sample::waiting(4, ms(900)).with_running(3);
            assert!(matches!(
                auto.on_sample(&late, now),
                Decision::Lower { to: 3, .. }
            ));
        };
        for wait in [5, 10, 20, 20] {
            probe(&mut auto, now);
            assert_eq!(
                auto.ceiling(now + Duration::from_secs(wait) - ms(1)),
                Some(4)
            );
            now += Duration::from_secs(wait);
            assert_eq!(auto.ceiling(now), None, "{wait}");
        }
    }

    #[test]
    fn no_gain_steps_back_and_holds_that_level_off() {
        let mut auto = at(3);
        let now = Instant::now();
        // One request: 40 tokens/s; two: 20 each; three: 13.3 each.
        for (c, per_sec) in [(1, 40), (2, 20), (3, 13)] {
            let sample = stream(c, 200).with_generation(per_sec, Duration::from_secs(1));
            auto.on_sample(&sample, now);
        }
        assert_eq!(auto.limit(), 2);
        assert_eq!(auto.ceiling(now), Some(3));
    }

    #[test]
    fn a_restart_goes_back_to_initial_and_forgets_the_ceiling() {
        let mut auto = at(1);
        let now = Instant::now();
        for c in 1..=3 {
            auto.on_sample(&stream(c, 200), now);
        }
        auto.on_sample(&Sample::waiting(4, ms(900)).with_running(3), now);
        assert_eq!((auto.limit(), auto.ceiling(now)), (3, Some(4)));
        auto.restarted();
        assert_eq!((auto.limit(), auto.ceiling(now)), (1, None));
    }
}
