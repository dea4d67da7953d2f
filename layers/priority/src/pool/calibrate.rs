//! How far the wait estimates run from the waits served, learned per size
//! of request: the correction the next estimates take.
//!
//! Shorter-first makes a request's wait depend on the shorter ones that
//! arrive after it, which an estimate made at its arrival cannot see: a
//! long request waits longer than the work ahead of it says, a short one
//! about what it says. What each size of request really waited, against
//! what it was told, is the factor its next estimates are multiplied by
//! (a moving average of the log of the ratio, per power of two of
//! predicted cost). Learned from the uncorrected estimate, so the
//! correction does not feed on itself; and only what a request is told
//! is corrected, never what decides whether it is let in (which chooses
//! the requests the correction learns from). Atomics, not the pool's
//! lock: a grant learns, an arrival reads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Sizes of request told apart: powers of two of predicted cost.
const BUCKETS: usize = 24;
/// Waits served before a size's correction is used.
const MIN_SEEN: u32 = 8;
/// The weight of the newest wait in the moving average.
const ALPHA: f64 = 0.1;
/// Estimates and waits shorter than this say nothing of the ratio.
const FLOOR: Duration = Duration::from_millis(50);
/// The correction stays within ×1/4 .. ×4.
const MAX_LOG: f64 = 1.386_294_361_119_890_6; // ln 4

/// The correction per size of request.
#[derive(Debug, Default)]
pub(crate) struct Calibration {
    log_ratio: [AtomicU64; BUCKETS],
    seen: [AtomicU32; BUCKETS],
}

fn bucket(cost: f64) -> usize {
    (cost.max(1.0).log2() as usize).min(BUCKETS - 1)
}

impl Calibration {
    /// `raw`, the estimate of a request of predicted `cost`, as corrected
    /// by what requests of its size really waited.
    pub(crate) fn correct(&self, cost: f64, raw: Option<Duration>) -> Option<Duration> {
        let raw = raw?;
        let b = bucket(cost);
        if self.seen[b].load(Ordering::Relaxed) < MIN_SEEN || raw.is_zero() {
            return Some(raw);
        }
        let log = f64::from_bits(self.log_ratio[b].load(Ordering::Relaxed));
        Duration::try_from_secs_f64(raw.as_secs_f64() * log.exp()).ok()
    }

    /// A request of predicted `cost` told `raw` (uncorrected) waited
    /// `waited`.
    pub(crate) fn learn(&self, cost: f64, raw: Duration, waited: Duration) {
        if raw < FLOOR && waited < FLOOR {
            return;
        }
        let ratio = waited.max(FLOOR).as_secs_f64() / raw.max(FLOOR).as_secs_f64();
        let sample = ratio.ln().clamp(-MAX_LOG, MAX_LOG);
        let b = bucket(cost);
        let seen = self.seen[b].fetch_add(1, Ordering::Relaxed);
        let old = f64::from_bits(self.log_ratio[b].load(Ordering::Relaxed));
        // The plain mean until the average has enough to go on.
        let weight = (1.0 / f64::from(seen + 1)).max(ALPHA);
        let new = old + weight * (sample - old);
        self.log_ratio[b].store(new.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_size_learns_its_own_correction_and_only_once_it_has_seen_enough() {
        let calibration = Calibration::default();
        // Long requests (cost ~1000) waited twice what they were told.
        for _ in 0..MIN_SEEN - 1 {
            calibration.learn(1000.0, ms(1000), ms(2000));
        }
        assert_eq!(
            calibration.correct(1000.0, Some(ms(500))),
            Some(ms(500)),
            "not yet"
        );
        calibration.learn(1000.0, ms(1000), ms(2000));
        let corrected = calibration.correct(1000.0, Some(ms(500))).unwrap();
        assert!(
            (corrected.as_secs_f64() - 1.0).abs() < 1e-6,
            "{corrected:?}"
        );
        // Short ones (cost ~10) are left as they are: nothing learned.
        assert_eq!(calibration.correct(10.0, Some(ms(500))), Some(ms(500)));
        // Unknown stays unknown; no wait stays none.
        assert_eq!(calibration.correct(1000.0, None), None);
        assert_eq!(
            calibration.correct(1000.0, Some(Duration::ZERO)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_correction_is_bounded_and_follows_a_change() {
        let calibration = Calibration::default();
        // Told nothing, waited long: at most ×4.
        for _ in 0..50 {
            calibration.learn(100.0, ms(1), ms(60_000));
        }
        assert_eq!(calibration.correct(100.0, Some(ms(1000))), Some(ms(4000)));
        // Then the estimates become right: the correction fades.
        for _ in 0..100 {
            calibration.learn(100.0, ms(1000), ms(1000));
        }
        let corrected = calibration.correct(100.0, Some(ms(1000))).unwrap();
        assert!(corrected < ms(1010), "{corrected:?}");
    }
}
