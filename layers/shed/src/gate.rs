//! The gate: its state, shared by every clone of the service, and its
//! decisions: admit, refuse, or wait for room.

use corral_core::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{channels, AgentId, Bus, LoadCell, LoadSnapshot, Priority, UpstreamLoad};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::ShedConfig;
use crate::error::{Shed, ShedReason};
use crate::metrics::{BACKPRESSURE_EVENTS_TOTAL, DROPPED_REQUESTS_TOTAL, PRIORITY_LABELS};

pub(crate) struct Gate {
    pub(crate) config: ShedConfig,
    pub(crate) load: LoadCell,
    own: Arc<OwnQueue>,
    per_agent: Mutex<HashMap<AgentId, usize>>,
    codel: Mutex<Codel>,
    events: Mutex<Events>,
    pub(crate) bus: Option<Arc<dyn Bus>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shed")
            .field("config", &self.config)
            .finish()
    }
}

/// What shed counts itself when no scheduler is in the stack: requests
/// admitted whose answer has not started.
struct OwnQueue {
    waiting: AtomicUsize,
    changes: Notify,
}

impl UpstreamLoad for OwnQueue {
    fn snapshot(&self) -> LoadSnapshot {
        let mut load = LoadSnapshot::idle(0);
        load.queued[4] = self.waiting.load(Ordering::Relaxed);
        load
    }

    fn changes(&self) -> Option<&Notify> {
        Some(&self.changes)
    }
}

#[derive(Default)]
struct Codel {
    first_above: Option<Instant>,
    dropping: bool,
}

#[derive(Default)]
struct Events {
    last: Option<Instant>,
    by_reason: BTreeMap<&'static str, u64>,
    by_priority: BTreeMap<u8, u64>,
}

pub(crate) enum Decision {
    Admit(Admitted),
    WaitForSpace,
    Refuse(Shed),
}

/// A request let through: counted until its answer starts (or it is
/// dropped), then it frees its place.
pub(crate) struct Admitted {
    gate: Arc<Gate>,
    agent: Option<AgentId>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.own.waiting.fetch_sub(1, Ordering::Relaxed);
        if let Some(agent) = &self.agent {
            let mut per_agent = lock(&self.gate.per_agent);
            if let Some(n) = per_agent.get_mut(agent) {
                *n -= 1;
                if *n == 0 {
                    per_agent.remove(agent);
                }
            }
        }
        self.gate.own.changes.notify_waiters();
    }
}

impl Gate {
    pub(crate) fn new(config: ShedConfig, load: LoadCell, bus: Option<Arc<dyn Bus>>) -> Self {
        Self {
            config,
            load,
            own: Arc::new(OwnQueue {
                waiting: AtomicUsize::new(0),
                changes: Notify::new(),
            }),
            per_agent: Mutex::new(HashMap::new()),
            codel: Mutex::new(Codel::default()),
            events: Mutex::new(Events::default()),
            bus,
        }
    }

    /// The queue shed watches: the scheduler's when the stack has one,
    /// else its own count.
    pub(crate) fn view(&self) -> Arc<dyn UpstreamLoad> {
        match self.load.get() {
            Some(load) => load.clone(),
            None => self.own.clone(),
        }
    }

    pub(crate) fn full(&self, load: &LoadSnapshot) -> bool {
        load.queued_total() >= self.config.max_queue
            || self
                .config
                .max_queue_bytes
                .is_some_and(|max| load.queued_bytes >= max)
    }

    /// Admit, refuse or wait, for a request of `priority` from `agent`.
    pub(crate) fn decide(self: &Arc<Self>, priority: Priority, agent: &AgentId) -> Decision {
        let now = Instant::now();
        let load = self.view().snapshot();
        let droppable = priority.get() > self.config.drop_above;

        if let Some(max) = self.config.max_waiting_per_agent {
            let waiting = lock(&self.per_agent).get(agent).copied().unwrap_or(0);
            if waiting >= max {
                return Decision::Refuse(self.refuse(
                    ShedReason::AgentQueueFull,
                    priority,
                    &load,
                    now,
                ));
            }
        }
        if self.config.codel && self.codel(now, &load) && droppable {
            metrics::counter!(BACKPRESSURE_EVENTS_TOTAL, "priority" => label(priority))
                .increment(1);
            return Decision::Refuse(self.refuse(ShedReason::QueueDelay, priority, &load, now));
        }
        if self.full(&load) {
            metrics::counter!(BACKPRESSURE_EVENTS_TOTAL, "priority" => label(priority))
                .increment(1);
            if droppable {
                return Decision::Refuse(self.refuse(ShedReason::QueueFull, priority, &load, now));
            }
            return Decision::WaitForSpace;
        }
        Decision::Admit(self.admit(agent))
    }

    pub(crate) fn admit(self: &Arc<Self>, agent: &AgentId) -> Admitted {
        self.own.waiting.fetch_add(1, Ordering::Relaxed);
        let agent = self.config.max_waiting_per_agent.map(|_| {
            *lock(&self.per_agent).entry(agent.clone()).or_default() += 1;
            agent.clone()
        });
        Admitted {
            gate: self.clone(),
            agent,
        }
    }

    /// CoDel's rule on the oldest waiting request's delay: shed once it
    /// has stayed above target for a whole interval, stop as soon as it
    /// falls below.
    fn codel(&self, now: Instant, load: &LoadSnapshot) -> bool {
        let sojourn = load
            .oldest_waiting_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        let mut codel = lock(&self.codel);
        if sojourn < self.config.codel_target {
            if codel.dropping {
                tracing::info!(
                    delay_ms = sojourn.as_millis() as u64,
                    "queue delay back under target: delay shedding off"
                );
            }
            *codel = Codel::default();
        } else {
            match codel.first_above {
                None => codel.first_above = Some(now + self.config.codel_interval),
                Some(until) if now >= until && !codel.dropping => {
                    codel.dropping = true;
                    tracing::warn!(
                        delay_ms = sojourn.as_millis() as u64,
                        "queue delay above target for a whole interval: shedding low priorities"
                    );
                }
                _ => {}
            }
        }
        codel.dropping
    }

    /// When to come back after a refusal for `reason`
    /// ([`retry_after`]).
    pub(crate) fn retry_after(&self, reason: ShedReason, load: &LoadSnapshot) -> Duration {
        retry_after(
            reason,
            load,
            self.config.max_queue,
            self.config.wait_for_space,
        )
    }

    /// Counts a refusal, publishes backpressure now and then, and builds
    /// it.
    pub(crate) fn refuse(
        &self,
        reason: ShedReason,
        priority: Priority,
        load: &LoadSnapshot,
        now: Instant,
    ) -> Shed {
        let retry_after = self.retry_after(reason, load);
        metrics::counter!(DROPPED_REQUESTS_TOTAL, "reason" => reason.as_str(), "priority" => label(priority))
            .increment(1);
        let mut events = lock(&self.events);
        *events.by_reason.entry(reason.as_str()).or_default() += 1;
        *events.by_priority.entry(priority.get()).or_default() += 1;
        let due = events
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.config.event_interval);
        if due {
            events.last = Some(now);
            let by_reason = std::mem::take(&mut events.by_reason);
            let by_priority = std::mem::take(&mut events.by_priority);
            drop(events);
            if let Some(bus) = &self.bus {
                let refused: u64 = by_reason.values().sum();
                // The latest is kept: a replica that starts or reconnects
                // learns the fleet was being told to slow down.
                bus.publish_state(
                    channels::BACKPRESSURE,
                    "latest",
                    serde_json::json!({
                        "refused": refused,
                        "by_reason": by_reason,
                        "by_priority": by_priority.iter().map(|(p, n)| (p.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                        "queued": load.queued_total(),
                        "max_queue": self.config.max_queue,
                        "retry_after_secs": retry_after.as_secs().max(1),
                    }),
                );
            }
        }
        Shed {
            reason,
            priority,
            queued: load.queued_total(),
            retry_after,
        }
    }
}

/// When a request refused for `reason` would be let in, from the
/// measured drain rate: a full queue, once enough requests have left for
/// there to be room (the waiting beyond `max_queue`, and one more); a
/// queue too slow or an agent with too many waiting, once the queue
/// ahead has drained. Without a rate, `wait_for_space`. Between 100 ms
/// and 10 minutes.
pub(crate) fn retry_after(
    reason: ShedReason,
    load: &LoadSnapshot,
    max_queue: usize,
    wait_for_space: Duration,
) -> Duration {
    let queued = load.queued_total();
    let leaving = match reason {
        ShedReason::QueueFull | ShedReason::NoRoomInTime => {
            (queued + 1).saturating_sub(max_queue).max(1)
        }
        ShedReason::QueueDelay | ShedReason::AgentQueueFull => queued.max(1),
    };
    let estimate = if load.completions_per_sec > 0.0 {
        Duration::try_from_secs_f64(leaving as f64 / load.completions_per_sec)
            .unwrap_or(Duration::MAX)
    } else {
        wait_for_space
    };
    estimate.clamp(Duration::from_millis(100), Duration::from_secs(600))
}

fn label(priority: Priority) -> &'static str {
    PRIORITY_LABELS[usize::from(priority.get() - 1)]
}

/// Waits until the queue has room or `wait_for_space` has passed: `true`
/// for room.
pub(crate) async fn wait_for_space(gate: Arc<Gate>) -> bool {
    let deadline = Instant::now() + gate.config.wait_for_space;
    let load = gate.view();
    loop {
        let notified = load.changes().map(Notify::notified);
        tokio::pin!(notified);
        if let Some(notified) = notified.as_mut().as_pin_mut() {
            // Registered before looking, so a change in between is not
            // missed.
            notified.enable();
        }
        if !gate.full(&load.snapshot()) {
            return true;
        }
        match notified.as_pin_mut() {
            Some(notified) => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => return false,
                }
            }
            None => {
                // A load that never notifies: look again now and then.
                let next = (Instant::now() + Duration::from_millis(50)).min(deadline);
                tokio::time::sleep_until(next).await;
                if next == deadline {
                    return !gate.full(&load.snapshot());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_when_it_would_be_let_in() {
        let load = |queued: usize, rate: f64| {
            let mut load = LoadSnapshot::idle(2);
            load.queued[4] = queued;
            load.completions_per_sec = rate;
            load
        };
        let wait = Duration::from_secs(5);
        let ms = Duration::from_millis;
        let cases = [
            // Full at 100: one must leave, at 4 a second.
            (ShedReason::QueueFull, load(100, 4.0), ms(250)),
            // 110 waiting: eleven must leave.
            (ShedReason::NoRoomInTime, load(110, 4.0), ms(2_750)),
            // Too slow, or the agent's own too many: the queue drains.
            (ShedReason::QueueDelay, load(100, 4.0), ms(25_000)),
            (ShedReason::AgentQueueFull, load(20, 4.0), ms(5_000)),
            // No rate measured: the wait for space.
            (ShedReason::QueueFull, load(100, 0.0), wait),
            // Bounded both ways.
            (ShedReason::QueueFull, load(100, 1_000.0), ms(100)),
            (ShedReason::QueueDelay, load(100_000, 1.0), ms(600_000)),
        ];
        for (reason, load, expected) in cases {
            assert_eq!(
                retry_after(reason, &load, 100, wait),
                expected,
                "{reason:?} with {} waiting",
                load.queued_total()
            );
        }
    }
}
