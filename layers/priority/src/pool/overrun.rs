//! How long a running request has left, from how far the holds given
//! back ran from what was predicted when they started.
//!
//! A request's predicted hold is exact when its length was told and a
//! guess when it was not (every request of an agent new to a model is
//! predicted the model's average length). "The prediction less what it
//! ran, at least a tenth of it once overdue" then says the many requests
//! running past the average are done any moment, and the queue behind
//! them is told half its wait (the `waits` bench, lengths untold: told
//! 0.66 × the wait served, median). What the holds given back ran over
//! their predictions is the distribution a running request's hold is
//! drawn from: what it has left, having run `elapsed`, is what those that
//! ran longer than that had left then, on average (its mean residual
//! life). Told lengths give ratios near 1, and back the plain
//! prediction.

use std::collections::VecDeque;

/// Holds remembered: the recent ones, as the work changes.
const REMEMBERED: usize = 64;
/// Holds seen before their distribution is used.
const MIN_SEEN: usize = 8;
/// A hold counts as at most this many times its prediction: one stuck
/// request must not make every running request look long.
const MAX_RATIO: f64 = 4.0;

/// The ratios of held to predicted of the recent holds, kept sorted with
/// their sums from each one to the largest.
#[derive(Debug, Default)]
pub(crate) struct Overruns {
    recent: VecDeque<f64>,
    sorted: Vec<f64>,
    /// `tail[i]`: the sum of `sorted[i..]`.
    tail: Vec<f64>,
}

impl Overruns {
    /// A permit predicted to be held `predicted` seconds was held `held`.
    pub(crate) fn record(&mut self, predicted: f64, held: f64) {
        if !(predicted > 0.0 && held.is_finite() && held >= 0.0) {
            return;
        }
        // Kept sorted by moving one value out and one in: sorting the 64
        // at every permit given back was ~3,800 instructions of the
        // default stack's request (callgrind, benches/RESULTS.md).
        if self.recent.len() == REMEMBERED {
            if let Some(old) = self.recent.pop_front() {
                let at = self.sorted.partition_point(|r| r.total_cmp(&old).is_lt());
                self.sorted.remove(at);
            }
        }
        let ratio = (held / predicted).min(MAX_RATIO);
        self.recent.push_back(ratio);
        let at = self.sorted.partition_point(|r| r.total_cmp(&ratio).is_le());
        self.sorted.insert(at, ratio);
        self.tail.clear();
        self.tail.resize(self.sorted.len() + 1, 0.0);
        for i in (0..self.sorted.len()).rev() {
            self.tail[i] = self.tail[i + 1] + self.sorted[i];
        }
    }

    /// Seconds left to a request predicted to hold `predicted` seconds
    /// that has held `elapsed`: the mean of what the holds seen, scaled
    /// to its prediction, had left past `elapsed`. `None` while too few
    /// were seen, or when it ran longer than any of them did.
    pub(crate) fn left(&self, predicted: f64, elapsed: f64) -> Option<f64> {
        if self.sorted.len() < MIN_SEEN || predicted <= 0.0 {
            return None;
        }
        let ran = elapsed.max(0.0) / predicted;
        let first = self.sorted.partition_point(|r| *r <= ran);
        let longer = self.sorted.len() - first;
        if longer == 0 {
            return None;
        }
        let mean = self.tail[first] / longer as f64;
        Some((mean * predicted - elapsed.max(0.0)).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_ratios_stay_sorted_as_old_ones_leave() {
        let mut overruns = Overruns::default();
        let mut rng = 12345u64;
        for _ in 0..500 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let held = (rng >> 33) as f64 / f64::from(u32::MAX) * 6.0;
            overruns.record(1.0, held);
            let mut expected: Vec<f64> = overruns.recent.iter().copied().collect();
            expected.sort_by(f64::total_cmp);
            assert_eq!(overruns.sorted, expected);
            assert_eq!(overruns.tail.len(), expected.len() + 1);
            assert!((overruns.tail[0] - expected.iter().sum::<f64>()).abs() < 1e-9);
        }
        assert_eq!(overruns.recent.len(), REMEMBERED);
    }

    #[test]
    fn exact_predictions_leave_the_prediction_less_what_ran() {
        let mut overruns = Overruns::default();
        assert_eq!(overruns.left(1.0, 0.2), None, "nothing seen");
        for _ in 0..MIN_SEEN {
            overruns.record(2.0, 2.0);
        }
        let left = overruns.left(1.0, 0.25).unwrap();
        assert!((left - 0.75).abs() < 1e-9, "{left}");
        // Past every hold seen: unknown, the caller falls back.
        assert_eq!(overruns.left(1.0, 1.5), None);
    }

    #[test]
    fn a_spread_of_lengths_gives_the_mean_residual_life() {
        let mut overruns = Overruns::default();
        // Predicted 1 s each, held 0.2, 0.6, 1.0, 1.4, 1.8 s (twice).
        for held in [0.2, 0.6, 1.0, 1.4, 1.8, 0.2, 0.6, 1.0, 1.4, 1.8] {
            overruns.record(1.0, held);
        }
        // At the start: the mean hold.
        let left = overruns.left(1.0, 0.0).unwrap();
        assert!((left - 1.0).abs() < 1e-9, "{left}");
        // Past the mean, not "any moment": those longer than 1.1 s
        // (1.4 and 1.8) had 0.5 s left on average.
        let left = overruns.left(1.0, 1.1).unwrap();
        assert!((left - 0.5).abs() < 1e-9, "{left}");
        // Scaled to a request predicted twice as long.
        let left = overruns.left(2.0, 2.2).unwrap();
        assert!((left - 1.0).abs() < 1e-9, "{left}");
    }

    #[test]
    fn only_the_recent_holds_count_and_nonsense_is_ignored() {
        let mut overruns = Overruns::default();
        for _ in 0..REMEMBERED {
            overruns.record(1.0, 3.0);
        }
        for _ in 0..REMEMBERED {
            overruns.record(1.0, 1.0);
        }
        overruns.record(0.0, 1.0);
        overruns.record(1.0, f64::NAN);
        let left = overruns.left(1.0, 0.0).unwrap();
        assert!((left - 1.0).abs() < 1e-9, "{left}");
    }
}
