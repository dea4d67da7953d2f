//! How long a request will wait: its place in the order of service and
//! the work ahead of it over the throughput the pool measures.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// A request's place in the queue and its expected wait for a permit.
///
/// ```
/// use std::time::Duration;
/// use corral_priority::Estimate;
///
/// let estimate = Estimate::new(3, Some(Duration::from_millis(1500)));
/// assert_eq!(estimate.eta_ms(), Some(1500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Requests ahead of it in the order of service (0: it is next).
    pub position: usize,
    /// How long until it gets a permit; `None` until the pool has
    /// measured how long permits are held.
    pub eta: Option<Duration>,
    /// The wait before the correction learned from the waits served:
    /// what the served wait teaches the correction against.
    pub(crate) raw: Option<Duration>,
}

impl Estimate {
    /// An estimate of `position` and `eta`, as it is.
    pub fn new(position: usize, eta: Option<Duration>) -> Self {
        Self {
            position,
            eta,
            raw: eta,
        }
    }

    /// The wait in whole milliseconds, as the headers carry it.
    pub fn eta_ms(&self) -> Option<u64> {
        self.eta
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// `X-Corral-Queue-Position` and `X-Corral-Queue-Eta-Ms` for `estimate`
/// (no ETA header while the wait is unknown).
pub(crate) fn headers(estimate: &Estimate) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![(
        corral_core::headers::X_CORRAL_QUEUE_POSITION,
        HeaderValue::from(estimate.position),
    )];
    if let Some(ms) = estimate.eta_ms() {
        headers.push((
            corral_core::headers::X_CORRAL_QUEUE_ETA_MS,
            HeaderValue::from(ms),
        ));
    }
    headers
}

/// The work ahead of a request: how many requests, and their predicted
/// cost (prompt tokens + 2 × the tokens they may generate).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Ahead {
    pub(crate) count: usize,
    pub(crate) cost: f64,
}

/// What the pool measured of its throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Throughput {
    /// Requests it runs at once.
    pub(crate) capacity: usize,
    /// Requests running now.
    pub(crate) in_flight: usize,
    /// Seconds a permit is held per unit of predicted cost, averaged.
    pub(crate) seconds_per_cost: Option<f64>,
    /// Seconds a permit is held, averaged.
    pub(crate) average_hold: Option<f64>,
    /// Requests finished per second, recently.
    pub(crate) completions_per_sec: f64,
}

/// The wait for a permit behind `ahead`. Room now: none. Else the work
/// ahead (what runs, half done on average, and what waits ahead, by its
/// predicted cost) drains through `capacity` slots at once; the permit
/// frees when all but the last `capacity - 1` slots' worth is done. With
/// no hold measured yet, the count over the recent completion rate; with
/// neither, unknown.
pub(crate) fn eta(ahead: Ahead, throughput: Throughput) -> Option<Duration> {
    let capacity = throughput.capacity.max(1);
    if throughput.in_flight + ahead.count < capacity {
        return Some(Duration::ZERO);
    }
    let slots = capacity as f64;
    if let (Some(per_cost), Some(hold)) = (throughput.seconds_per_cost, throughput.average_hold) {
        let running = throughput.in_flight as f64 * hold / 2.0;
        let work = running + ahead.cost * per_cost;
        let tail = (slots - 1.0) * hold / 2.0;
        return Duration::try_from_secs_f64(((work - tail) / slots).max(0.0)).ok();
    }
    if throughput.completions_per_sec > 0.0 {
        // Completions needed before a permit is free for it.
        let needed = throughput.in_flight + ahead.count + 1 - capacity;
        return Duration::try_from_secs_f64(needed as f64 / throughput.completions_per_sec).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(capacity: usize, in_flight: usize) -> Throughput {
        // Permits held 2 s on average, 10 ms per unit of cost.
        Throughput {
            capacity,
            in_flight,
            seconds_per_cost: Some(0.01),
            average_hold: Some(2.0),
            completions_per_sec: 0.0,
        }
    }

    fn ahead(count: usize, cost: f64) -> Ahead {
        Ahead { count, cost }
    }

    fn secs(d: Option<Duration>) -> f64 {
        d.expect("an estimate").as_secs_f64()
    }

    #[test]
    fn the_wait_is_the_work_ahead_over_the_slots() {
        // Room: no wait.
        assert_eq!(eta(ahead(1, 200.0), measured(4, 2)), Some(Duration::ZERO));
        // One slot, one running: half a hold.
        assert!((secs(eta(ahead(0, 0.0), measured(1, 1))) - 1.0).abs() < 1e-9);
        // One slot, one running, three of cost 200 (2 s each) ahead.
        assert!((secs(eta(ahead(3, 600.0), measured(1, 1))) - 7.0).abs() < 1e-9);
        // Two slots drain twice as fast, less the other slot's tail.
        let two = secs(eta(ahead(10, 2000.0), measured(2, 2)));
        assert!((two - 10.5).abs() < 1e-9, "{two}");
        // Short requests ahead wait less than long ones.
        assert!(eta(ahead(3, 30.0), measured(1, 1)) < eta(ahead(3, 600.0), measured(1, 1)));
    }

    #[test]
    fn without_holds_the_completion_rate_decides_and_without_either_nothing_is_known() {
        let rate = Throughput {
            capacity: 2,
            in_flight: 2,
            seconds_per_cost: None,
            average_hold: None,
            completions_per_sec: 4.0,
        };
        // Three completions needed (two running, two ahead, one slot
        // each): 0.75 s at 4 per second.
        assert!((secs(eta(ahead(2, 0.0), rate)) - 0.75).abs() < 1e-9);
        let nothing = Throughput {
            completions_per_sec: 0.0,
            ..rate
        };
        assert_eq!(eta(ahead(2, 0.0), nothing), None);
    }
}
