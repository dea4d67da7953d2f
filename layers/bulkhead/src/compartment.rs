//! Compartments, their slots, and the rules that choose one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{lock, RequestMeta};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{BulkheadConfig, CompartmentConfig, RuleConfig};
use crate::error::CompartmentFull;
use crate::metrics::{BULKHEAD_IN_USE, BULKHEAD_REJECTIONS_TOTAL, BULKHEAD_SATURATION};

pub(crate) struct Compartment {
    pub(crate) name: Arc<str>,
    max_concurrent: usize,
    max_waiting: usize,
    max_wait: Duration,
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// How long a slot is held, averaged; `None` before one came back.
    hold: Mutex<Option<Duration>>,
}

/// The weight of the newest hold in a compartment's average.
const HOLD_SMOOTHING: f64 = 0.2;

/// A running request's place in its compartment, held by the response
/// body until the stream ends.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    compartment: Arc<Compartment>,
    since: Instant,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Slot").field(&self.compartment.name).finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit is released after this body runs: count it gone now.
        self.compartment.report(1);
        self.compartment.learn(self.since.elapsed());
    }
}

impl Compartment {
    fn new(config: &CompartmentConfig) -> Self {
        let compartment = Self {
            name: Arc::from(config.name.as_str()),
            max_concurrent: config.max_concurrent,
            max_waiting: config.max_waiting,
            max_wait: config.max_wait,
            semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
            waiting: AtomicUsize::new(0),
            hold: Mutex::new(None),
        };
        // Every configured compartment is exported from the start, at 0:
        // a dashboard or an `absent()` alert can tell "idle" from "not
        // running".
        compartment.report(0);
        metrics::counter!(BULKHEAD_REJECTIONS_TOTAL, "compartment" => compartment.name.to_string())
            .absolute(0);
        compartment
    }

    fn report(&self, leaving: usize) {
        let in_use =
            (self.max_concurrent - self.semaphore.available_permits()).saturating_sub(leaving);
        let labels = [("compartment", self.name.to_string())];
        metrics::gauge!(BULKHEAD_IN_USE, &labels).set(in_use as f64);
        metrics::gauge!(BULKHEAD_SATURATION, &labels)
            .set(in_use as f64 / self.max_concurrent as f64);
    }

    /// Requests running in it now.
    pub(crate) fn in_use(&self) -> usize {
        self.max_concurrent - self.semaphore.available_permits()
    }

    /// A slot was held for `held`.
    fn learn(&self, held: Duration) {
        let mut hold = lock(&self.hold);
        *hold = Some(match *hold {
            None => held,
            Some(old) => old.mul_f64(1.0 - HOLD_SMOOTHING) + held.mul_f64(HOLD_SMOOTHING),
        });
    }

    fn full(&self, waited: Option<Duration>) -> CompartmentFull {
        metrics::counter!(BULKHEAD_REJECTIONS_TOTAL, "compartment" => self.name.to_string())
            .increment(1);
        let waiting = self.waiting.load(Ordering::Acquire);
        CompartmentFull {
            compartment: self.name.to_string(),
            max_concurrent: self.max_concurrent,
            waited,
            retry_after: retry_after(*lock(&self.hold), waiting, self.max_concurrent),
        }
    }
}

/// When a slot would be free for a request refused now, with `waiting`
/// ahead of it: those running half done on average, each waiting one a
/// whole `hold`, spread over the `slots` (as the scheduler estimates a
/// wait): (`waiting` + ½) × `hold` / `slots`. Before a hold is measured,
/// 1 s. Between 100 ms and 10 minutes.
pub(crate) fn retry_after(hold: Option<Duration>, waiting: usize, slots: usize) -> Duration {
    let Some(hold) = hold else {
        return Duration::from_secs(1);
    };
    let turns = (waiting as f64 + 0.5) / slots.max(1) as f64;
    Duration::try_from_secs_f64(hold.as_secs_f64() * turns)
        .unwrap_or(Duration::MAX)
        .clamp(Duration::from_millis(100), Duration::from_secs(600))
}

/// A place now, or a reason to wait, or a refusal.
pub(crate) enum Entry {
    Now(Slot),
    Wait(
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Slot, CompartmentFull>> + Send>>,
    ),
    Full(CompartmentFull),
}

pub(crate) fn enter(compartment: &Arc<Compartment>) -> Entry {
    if let Ok(permit) = compartment.semaphore.clone().try_acquire_owned() {
        compartment.report(0);
        return Entry::Now(Slot {
            _permit: permit,
            compartment: compartment.clone(),
            since: Instant::now(),
        });
    }
    let max = compartment.max_waiting;
    let admitted = compartment
        .waiting
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w < max).then_some(w + 1)
        });
    if admitted.is_err() {
        return Entry::Full(compartment.full(None));
    }
    let compartment = compartment.clone();
    Entry::Wait(Box::pin(async move {
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = Leave(&compartment.waiting);
        match tokio::time::timeout(
            compartment.max_wait,
            compartment.semaphore.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => {
                compartment.report(0);
                Ok(Slot {
                    _permit: permit,
                    compartment: compartment.clone(),
                    since: Instant::now(),
                })
            }
            _ => Err(compartment.full(Some(compartment.max_wait))),
        }
    }))
}

/// The compartments and the rules, compiled.
pub(crate) struct Compartments {
    pub(crate) all: Vec<Arc<Compartment>>,
    rules: Vec<(RuleConfig, usize)>,
    pub(crate) all_endpoints: bool,
}

fn canonical(model: &str) -> &str {
    model.strip_suffix(":latest").unwrap_or(model)
}

impl Compartments {
    pub(crate) fn new(config: &BulkheadConfig) -> Self {
        let all: Vec<Arc<Compartment>> = config
            .compartments
            .iter()
            .map(|c| Arc::new(Compartment::new(c)))
            .collect();
        let rules = config
            .rules
            .iter()
            .filter_map(|r| {
                all.iter()
                    .position(|c| *c.name == *r.compartment)
                    .map(|i| (r.clone(), i))
            })
            .collect();
        Self {
            all,
            rules,
            all_endpoints: config.all_endpoints,
        }
    }

    /// The compartment of the first rule `meta` matches.
    pub(crate) fn choose(&self, meta: &RequestMeta) -> Option<&Arc<Compartment>> {
        self.rules.iter().find_map(|(rule, i)| {
            let matches = rule
                .class
                .as_deref()
                .is_none_or(|c| c == meta.class.as_str())
                && rule
                    .agent
                    .as_deref()
                    .is_none_or(|a| a == meta.agent.as_str())
                && rule
                    .endpoint
                    .as_deref()
                    .is_none_or(|e| e == meta.endpoint.as_str())
                && rule.model.as_deref().is_none_or(|m| {
                    meta.model
                        .as_deref()
                        .is_some_and(|got| canonical(got) == canonical(m))
                });
            matches.then(|| &self.all[*i])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_when_a_slot_would_be_free() {
        let ms = Duration::from_millis;
        let cases = [
            // Nothing measured: a second.
            (None, 0, 2, ms(1_000)),
            // 2 s holds over 2 slots, none waiting: half a hold's turn.
            (Some(ms(2_000)), 0, 2, ms(500)),
            // Three waiting ahead: 3.5 turns of 1 s each.
            (Some(ms(2_000)), 3, 2, ms(3_500)),
            // Bounded both ways.
            (Some(ms(10)), 0, 4, ms(100)),
            (Some(ms(60_000)), 1_000, 1, ms(600_000)),
        ];
        for (hold, waiting, slots, expected) in cases {
            assert_eq!(
                retry_after(hold, waiting, slots),
                expected,
                "hold {hold:?}, {waiting} waiting, {slots} slots"
            );
        }
    }
}
