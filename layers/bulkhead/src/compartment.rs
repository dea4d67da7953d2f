//! Compartments, their slots, and the rules that choose one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_core::RequestMeta;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
}

/// A running request's place in its compartment, held by the response
/// body until the stream ends.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    compartment: Arc<Compartment>,
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

    fn full(&self, waited: Option<Duration>) -> CompartmentFull {
        metrics::counter!(BULKHEAD_REJECTIONS_TOTAL, "compartment" => self.name.to_string())
            .increment(1);
        CompartmentFull {
            compartment: self.name.to_string(),
            max_concurrent: self.max_concurrent,
            waited,
        }
    }
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
