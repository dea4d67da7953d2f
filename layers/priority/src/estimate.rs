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
    /// Whether the served wait may teach the correction: not while the
    /// pool has seen too few permits come back to know how long they
    /// are held (the first estimates run far low, and a correction
    /// learned from them overshoots long after).
    pub(crate) teaches: bool,
}

impl Estimate {
    /// An estimate of `position` and `eta`, as it is.
    pub fn new(position: usize, eta: Option<Duration>) -> Self {
        Self {
            position,
            eta,
            raw: eta,
            teaches: true,
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
    // Room for both at once: grown from one, it was copied at every
    // admission (~500 instructions).
    let mut headers = Vec::with_capacity(2);
    headers.push((
        corral_core::headers::X_CORRAL_QUEUE_POSITION,
        HeaderValue::from(estimate.position),
    ));
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

/// How long a permit is held for a request of a given cost: a fixed
/// part and a part per unit of cost, as the pool measured them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HoldModel {
    /// Seconds every request holds its permit, whatever its cost.
    pub(crate) fixed: f64,
    /// Seconds per unit of cost.
    pub(crate) per_cost: f64,
    /// Seconds a permit is held, averaged over the requests seen.
    pub(crate) average: f64,
}

/// A running request past its predicted hold is taken to need this
/// share of it still: its length was underestimated, by how much is not
/// known, and "done any moment" would tell the queue behind it nothing
/// of the wait.
const OVERDUE_SHARE: f64 = 0.1;
/// No wait is estimated longer than a day: the work ahead of a request
/// that asks for an absurd length would otherwise overflow an `Instant`
/// it is added to.
const LONGEST: f64 = 86_400.0;
/// Steps of the bisection in [`nth_start`] at most (a day halved 48
/// times is well under a millisecond), fewer once within [`PRECISION`]
/// seconds: an estimate is told in milliseconds, and the waiting room
/// walks up to 256 reservations, an estimate each, under the pool's
/// lock (1,000 reservations booked: 160–235 µs an arrival at 48 steps,
/// one slot).
const BISECTIONS: usize = 48;
const PRECISION: f64 = 1e-4;

impl HoldModel {
    /// The same hold for every cost.
    pub(crate) fn flat(seconds: f64) -> Self {
        Self {
            fixed: seconds,
            per_cost: 0.0,
            average: seconds,
        }
    }

    /// Seconds a request of `cost` holds its permit.
    pub(crate) fn hold(&self, cost: f64) -> f64 {
        self.fixed + self.per_cost * cost.max(0.0)
    }

    /// Seconds left to a request of `cost` that has held its permit
    /// `elapsed` seconds, by the prediction alone.
    pub(crate) fn remaining(&self, cost: f64, elapsed: f64) -> f64 {
        let hold = self.hold(cost);
        (hold - elapsed).max(hold * OVERDUE_SHARE)
    }
}

/// What the pool measured of its throughput.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Throughput {
    /// Requests it runs at once.
    pub(crate) capacity: usize,
    /// Requests running now.
    pub(crate) in_flight: usize,
    /// Hold against cost, once a permit came back.
    pub(crate) model: Option<HoldModel>,
    /// With a model: in how many seconds each of the `capacity` slots is
    /// free for the queue, soonest first ([`free_slots`]).
    pub(crate) slots: Vec<f64>,
    /// Requests finished per second, recently.
    pub(crate) completions_per_sec: f64,
}

/// In how many seconds each of `capacity` slots is free for the queue,
/// soonest first, given what the running requests have `left` (seconds)
/// and `untracked` more running whose start is not known here (a lease
/// another replica's queue granted), each taken as half of `average`
/// done. More running than slots (capacity lowered): a slot frees for
/// the queue only when enough have finished, so the last `capacity` to
/// finish are the slots.
pub(crate) fn free_slots(
    capacity: usize,
    left: impl Iterator<Item = f64>,
    untracked: usize,
    average: f64,
) -> Vec<f64> {
    let capacity = capacity.max(1);
    let mut running: Vec<f64> = left
        .chain(std::iter::repeat_n(average / 2.0, untracked))
        .map(|s| s.max(0.0))
        .collect();
    running.sort_by(f64::total_cmp);
    let mut slots = vec![0.0; capacity.saturating_sub(running.len())];
    let skip = running.len().saturating_sub(capacity);
    slots.extend(running.into_iter().skip(skip));
    slots
}

/// When the request after `ahead` requests of `each` seconds starts, on
/// slots free at `slots` seconds from now, each request taking the slot
/// free soonest: the `ahead + 1`-th smallest of the slots' start times
/// (`slot + j × each`), found by bisecting on time (each step counts the
/// starts up to a time, slot by slot). A walk of the queue placing each
/// request would cost as many steps as requests ahead, under the pool's
/// lock, at every arrival: 5 µs behind 10,000 instead of 80 ns.
fn nth_start(slots: &[f64], ahead: usize, each: f64) -> f64 {
    let soonest = slots.iter().copied().fold(f64::INFINITY, f64::min);
    if slots.is_empty() || !soonest.is_finite() {
        return 0.0;
    }
    if each <= 0.0 || !each.is_finite() {
        return soonest.max(0.0);
    }
    if let [slot] = slots {
        // One slot: the requests ahead one after another.
        return slot.max(0.0) + ahead as f64 * each;
    }
    let wanted = ahead as f64 + 1.0;
    let starts_by = |t: f64| -> f64 {
        slots
            .iter()
            .filter(|f| **f <= t)
            .map(|f| ((t - f) / each).floor() + 1.0)
            .sum()
    };
    let latest = slots.iter().copied().fold(0.0, f64::max);
    let (mut low, mut high) = (soonest, latest + ahead as f64 * each);
    // Past a day the answer is a day (`LONGEST`): no need to be exact.
    high = high.min(LONGEST.max(soonest));
    if starts_by(high) < wanted {
        return high;
    }
    for _ in 0..BISECTIONS {
        if high - low < PRECISION {
            break;
        }
        let middle = (low + high) / 2.0;
        if starts_by(middle) >= wanted {
            high = middle;
        } else {
            low = middle;
        }
    }
    // The first start after `low`, on its slot: the answer, exact.
    slots
        .iter()
        .map(|f| {
            if *f > low {
                *f
            } else {
                f + (((low - f) / each).floor() + 1.0) * each
            }
        })
        .fold(high, f64::min)
}

/// The wait for a permit behind `ahead`. Room now: none. Else each
/// request ahead takes the slot free soonest, for the hold its share of
/// the cost ahead predicts; the request gets the slot free soonest
/// after them. With no hold measured yet, the count over the recent
/// completion rate; with neither, unknown.
pub(crate) fn eta(ahead: Ahead, throughput: &Throughput) -> Option<Duration> {
    let capacity = throughput.capacity.max(1);
    if throughput.in_flight + ahead.count < capacity {
        return Some(Duration::ZERO);
    }
    if let Some(model) = throughput.model {
        let each = if ahead.count == 0 {
            0.0
        } else {
            model.hold(ahead.cost / ahead.count as f64)
        };
        let start = nth_start(&throughput.slots, ahead.count, each);
        return Duration::try_from_secs_f64(start.clamp(0.0, LONGEST)).ok();
    }
    if throughput.completions_per_sec > 0.0 {
        // Completions needed before a permit is free for it.
        let needed = throughput.in_flight + ahead.count + 1 - capacity;
        let wait = needed as f64 / throughput.completions_per_sec;
        return Duration::try_from_secs_f64(wait.min(LONGEST)).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms to start, 10 ms per unit of cost; `running` seconds left
    /// to each running request.
    fn measured(capacity: usize, running: &[f64]) -> Throughput {
        let model = HoldModel {
            fixed: 0.1,
            per_cost: 0.01,
            average: 2.0,
        };
        Throughput {
            capacity,
            in_flight: running.len(),
            model: Some(model),
            slots: free_slots(capacity, running.iter().copied(), 0, model.average),
            completions_per_sec: 0.0,
        }
    }

    fn ahead(count: usize, cost: f64) -> Ahead {
        Ahead { count, cost }
    }

    fn secs(d: Option<Duration>) -> f64 {
        d.expect("an estimate").as_secs_f64()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_wait_is_when_a_slot_frees_after_the_work_ahead() {
        // Room: no wait.
        assert_eq!(
            eta(ahead(1, 200.0), &measured(4, &[1.0, 1.0])),
            Some(Duration::ZERO)
        );
        // One slot: what the running request has left.
        assert!(close(secs(eta(ahead(0, 0.0), &measured(1, &[0.7]))), 0.7));
        // Then three of cost 200 (2.1 s each) ahead.
        assert!(close(
            secs(eta(ahead(3, 600.0), &measured(1, &[0.7]))),
            0.7 + 6.3
        ));
        // Two slots, one free in 1 s, one in 3 s; two ahead of 1.1 s:
        // both go on the first (1 → 2.1 → 3.2), which is still after
        // the second frees at 3.
        let two = secs(eta(ahead(2, 200.0), &measured(2, &[3.0, 1.0])));
        assert!(close(two, 3.0), "{two}");
        // Short requests ahead wait less than long ones.
        let one = measured(1, &[1.0]);
        assert!(eta(ahead(3, 30.0), &one) < eta(ahead(3, 600.0), &one));
        // Many ahead: two slots take them in turn.
        let many = secs(eta(ahead(1_124, 0.0), &measured(2, &[0.0, 0.0])));
        assert!((many - 562.0 * 0.1).abs() < 1e-6, "{many}");
        // Slots free at 0, 0.25 and 2, holds of 1: starts 0, 0.25, 1,
        // 1.25, 2, 2, 2.25 ...: the sixth is at 2.
        let three = secs(eta(ahead(5, 450.0), &measured(3, &[0.0, 0.25, 2.0])));
        assert!((three - 2.0).abs() < 1e-6, "{three}");
    }

    #[test]
    fn the_slots_come_from_what_runs_and_what_is_free() {
        // Free slots are free now; running ones when they finish.
        assert_eq!(
            free_slots(3, [2.0].into_iter(), 0, 4.0),
            vec![0.0, 0.0, 2.0]
        );
        // Not known where it stands: half the average hold.
        assert_eq!(free_slots(2, [3.0].into_iter(), 1, 4.0), vec![2.0, 3.0]);
        // Capacity lowered under what runs: only the last to finish
        // free a slot for the queue.
        assert_eq!(
            free_slots(2, [5.0, 1.0, 3.0].into_iter(), 0, 4.0),
            vec![3.0, 5.0]
        );
    }

    #[test]
    fn a_running_request_has_its_hold_less_what_it_ran_and_past_it_a_tenth() {
        let model = HoldModel {
            fixed: 0.5,
            per_cost: 0.01,
            average: 1.0,
        };
        assert!(close(model.remaining(100.0, 0.4), 1.1));
        assert!(close(model.remaining(100.0, 9.0), 0.15));
        assert!(close(HoldModel::flat(2.0).hold(1e6), 2.0));
    }

    #[test]
    fn without_holds_the_completion_rate_decides_and_without_either_nothing_is_known() {
        let rate = Throughput {
            capacity: 2,
            in_flight: 2,
            model: None,
            slots: Vec::new(),
            completions_per_sec: 4.0,
        };
        // Three completions needed (two running, two ahead, one slot
        // each): 0.75 s at 4 per second.
        assert!(close(secs(eta(ahead(2, 0.0), &rate)), 0.75));
        let nothing = Throughput {
            completions_per_sec: 0.0,
            ..rate
        };
        assert_eq!(eta(ahead(2, 0.0), &nothing), None);
    }
}
