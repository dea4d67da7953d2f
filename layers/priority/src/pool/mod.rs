//! One pool of upstream permits and the requests waiting for them.
//!
//! All state sits behind one `std::sync::Mutex`, never held across an
//! `.await`: enqueueing, granting, cancelling and releasing each take it
//! once, so no interleaving of grant, cancel and completion can leak a
//! permit or grant one twice. Wakers are woken after the lock is dropped.

mod admit;
mod ahead;
mod calibrate;
mod hold;
mod index;
mod order;
mod overrun;
mod room;

use crate::map::Map;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::Duration;

use corral_core::{lock, AgentId, LoadSnapshot, Priority};

use crate::config::Reserve;
pub(crate) use admit::Verdict;
pub(crate) use ahead::Me;
use corral_fleet::{Fleet, Slot};
use hold::Holds;
pub(crate) use hold::Lend;
use index::Vtc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Priority levels.
pub(crate) const LEVELS: usize = 10;

/// How many recent completions the drain rate is measured over.
const DRAIN_WINDOW: usize = 64;

/// What a waiting request asks for.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Who asks: fair share is between agents.
    pub agent: AgentId,
    /// Its priority, 1 (highest) to 10.
    pub priority: Priority,
    /// Its class's weight: an agent of weight 2 gets twice the service of
    /// one of weight 1 when both wait at the same priority.
    pub weight: f64,
    /// The service it is expected to cost (prompt tokens + 2 × generated
    /// tokens), charged to its agent when it starts.
    pub cost: f64,
    /// Bytes it holds while waiting (its body).
    pub bytes: usize,
    /// When it stops being worth serving.
    pub deadline: Option<Instant>,
}

/// A pool whose permits are a fleet's, for one model.
pub(crate) struct FleetLink {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) model: Arc<str>,
}

pub(crate) struct Pool {
    name: String,
    /// With several upstreams: whose permits these are. Its capacity is
    /// then the fleet's for the model, and each grant takes a permit on
    /// the upstream the fleet chooses.
    fleet: Option<FleetLink>,
    aging: Duration,
    per_agent_cap: Option<usize>,
    reserve: Option<Reserve>,
    state: Mutex<State>,
    /// Told whenever a ticket leaves the queue or a permit comes back.
    changes: Arc<Notify>,
    /// How far its estimates ran from the waits served, per size.
    calibration: calibrate::Calibration,
    /// Itself, for the timer that ends a permit's hold for a
    /// reservation.
    me: Weak<Pool>,
}

struct State {
    capacity: usize,
    in_flight: usize,
    next_ticket: u64,
    agents: HashMap<AgentId, Agent>,
    waiters: Map<u64, Waiter>,
    queued: [usize; 10],
    /// Per priority level, the predicted cost of what waits there: the
    /// work ahead of a request, for its estimate.
    queued_cost: [f64; 10],
    queued_bytes: usize,
    completions: VecDeque<Instant>,
    /// Per priority level, the agents with a request waiting there and
    /// room under their cap: least served once their next request there
    /// is (so at equal service the shorter request first), and among
    /// equals the one whose request there has waited longest (never by
    /// name).
    ready: [BTreeSet<(Vtc, Instant, AgentId)>; 10],
    /// Per priority level, every waiting ticket, oldest first: the oldest
    /// sets how far the level has aged.
    oldest: [BTreeSet<(Instant, u64)>; 10],
    /// Agents with work waiting or running, least served first.
    active: BTreeSet<(Vtc, AgentId)>,
    /// How long permits are held: what lending predicts from. Kept when
    /// the pool falls idle, unlike the counters.
    holds: Holds,
    /// Reserved permits lent to a lower priority, since the start.
    lent: u64,
    /// Per priority level, the tickets of requests let in for their
    /// reservation, in the order they came back: served first there.
    front: [VecDeque<u64>; 10],
    /// The reservations of requests refused for their deadline.
    room: room::Room,
    /// The permits granted here and not yet given back, by ticket: when
    /// each was granted and its predicted cost, for what each running
    /// request has left.
    running: Map<u64, (Instant, f64)>,
    /// When the timer set to end a permit's hold for a reservation
    /// fires, if one is set.
    hold_timer: Option<Instant>,
    /// How far the holds given back ran from their predictions: what a
    /// running request has left.
    overruns: overrun::Overruns,
}

#[derive(Default)]
struct Agent {
    /// The virtual token counter: weighted service received.
    vtc: f64,
    in_flight: usize,
    queued: usize,
    /// Tickets waiting, by priority level, oldest first, with when each
    /// was queued.
    levels: [VecDeque<(u64, Instant)>; 10],
}

struct Waiter {
    agent: AgentId,
    level: usize,
    enqueued: Instant,
    cost: f64,
    weight: f64,
    bytes: usize,
    /// Whether it may borrow a reserved permit.
    lend: Lend,
    /// Its conversation, for a fleet to keep it on one upstream.
    session: Option<u64>,
    granted: bool,
    /// With a fleet: the permit granted, on the upstream that runs it.
    slot: Option<Slot>,
    waker: Option<Waker>,
    /// Let in for its reservation: in its level's front lane.
    front: bool,
}

/// What a granted ticket hands its permit.
pub(crate) struct Grant {
    /// Its ticket: the permit gives it back under it.
    pub(crate) ticket: u64,
    pub(crate) agent: AgentId,
    /// The cost estimated when it was queued.
    pub(crate) cost: f64,
    pub(crate) charged: f64,
    pub(crate) weight: f64,
    pub(crate) waited: Duration,
    /// With a fleet: the upstream permit.
    pub(crate) slot: Option<Slot>,
}

/// How long a permit was held, and what its request was estimated to
/// cost: what the pool learns predictions from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold {
    pub(crate) cost: f64,
    pub(crate) held: Duration,
    /// The answer was an error: how long it held the permit says nothing
    /// of what a request costs, and is not learnt.
    pub(crate) failed: bool,
}

/// The outcome of polling a ticket.
pub(crate) enum Poll {
    Waiting,
    Granted(Grant),
    Gone,
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

impl Pool {
    pub(crate) fn new(
        name: String,
        capacity: usize,
        aging: Duration,
        per_agent_cap: Option<usize>,
        reserve: Option<Reserve>,
        changes: Arc<Notify>,
        fleet: Option<FleetLink>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            name,
            fleet,
            aging,
            per_agent_cap,
            reserve,
            changes,
            calibration: calibrate::Calibration::default(),
            state: Mutex::new(State {
                capacity,
                in_flight: 0,
                next_ticket: 0,
                agents: HashMap::new(),
                waiters: Map::default(),
                queued: [0; 10],
                queued_cost: [0.0; 10],
                queued_bytes: 0,
                completions: VecDeque::with_capacity(DRAIN_WINDOW),
                ready: Default::default(),
                oldest: Default::default(),
                active: BTreeSet::new(),
                holds: Holds::default(),
                lent: 0,
                front: Default::default(),
                room: room::Room::default(),
                running: Map::default(),
                hold_timer: None,
                overruns: overrun::Overruns::default(),
            }),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A request of predicted `cost` told it would wait `raw` (before
    /// correction) waited `waited` for its permit.
    pub(crate) fn learn_wait(&self, cost: f64, raw: Duration, waited: Duration) {
        self.calibration.learn(cost, raw, waited);
    }

    /// Queues `ticket` (at its level's front if it came back for its
    /// reservation) and grants what can be granted; its id.
    pub(crate) fn enqueue(&self, ticket: Ticket, session: Option<u64>, front: bool) -> u64 {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let id = state.next_ticket;
        state.next_ticket += 1;
        let level = usize::from(ticket.priority.get() - 1);
        let floor = state.active.first().map(|(vtc, _)| vtc.0);
        state.unindex(&ticket.agent);
        let agent = state.agents.entry(ticket.agent.clone()).or_default();
        if agent.queued == 0 && agent.in_flight == 0 {
            // Back from idle: start level with the least served active
            // agent, so idling banks no credit.
            if let Some(floor) = floor {
                agent.vtc = agent.vtc.max(floor);
            }
        }
        agent.queued += 1;
        agent.levels[level].push_back((id, now));
        state.queued[level] += 1;
        state.queued_cost[level] += ticket.cost;
        state.queued_bytes += ticket.bytes;
        state.oldest[level].insert((now, id));
        if front {
            state.front[level].push_back(id);
        }
        let lend = state.holds.lend(
            self.reserve,
            ticket.agent.as_str(),
            ticket.priority.get(),
            ticket.cost,
        );
        state.waiters.insert(
            id,
            Waiter {
                agent: ticket.agent.clone(),
                level,
                enqueued: now,
                cost: ticket.cost,
                weight: ticket.weight,
                bytes: ticket.bytes,
                lend,
                session,
                granted: false,
                slot: None,
                waker: None,
                front,
            },
        );
        state.index(&ticket.agent, self.per_agent_cap);
        let wakers = self.dispatch(&mut state, now);
        drop(state);
        wake_all(wakers);
        id
    }

    /// Whether ticket `id` has its permit; registers `waker` if not.
    pub(crate) fn poll(&self, id: u64, waker: &Waker) -> Poll {
        let mut state = lock(&self.state);
        match state.waiters.get_mut(&id) {
            None => Poll::Gone,
            Some(waiter) if waiter.granted => {
                let Some(waiter) = state.waiters.remove(&id) else {
                    return Poll::Gone;
                };
                Poll::Granted(Grant {
                    ticket: id,
                    agent: waiter.agent,
                    cost: waiter.cost,
                    charged: waiter.cost / waiter.weight,
                    weight: waiter.weight,
                    waited: Instant::now().saturating_duration_since(waiter.enqueued),
                    slot: waiter.slot,
                })
            }
            Some(waiter) => {
                match &mut waiter.waker {
                    Some(existing) if existing.will_wake(waker) => {}
                    slot => *slot = Some(waker.clone()),
                }
                Poll::Waiting
            }
        }
    }

    /// Takes ticket `id` out, granted or not: a cancelled wait, or a
    /// deadline. A grant it had is given back. How long it waited.
    pub(crate) fn withdraw(&self, id: u64) -> Option<Duration> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        // Out of the sorted sets while its ticket still keys them.
        let agent_id = state.waiters.get(&id)?.agent.clone();
        state.unindex(&agent_id);
        let waiter = state.waiters.remove(&id)?;
        let freed = waiter.granted;
        if waiter.granted {
            // Granted but never taken: undo the grant, charge nothing.
            state.in_flight -= 1;
            state.running.remove(&id);
            if let (Some(link), Some(slot)) = (&self.fleet, waiter.slot) {
                link.fleet.free(slot);
            }
            if let Some(agent) = state.agents.get_mut(&agent_id) {
                agent.in_flight -= 1;
                agent.vtc -= waiter.cost / waiter.weight;
            }
        } else {
            state.queued[waiter.level] -= 1;
            // Back to exactly nothing when the level empties: no drift.
            state.queued_cost[waiter.level] = if state.queued[waiter.level] == 0 {
                0.0
            } else {
                (state.queued_cost[waiter.level] - waiter.cost).max(0.0)
            };
            state.queued_bytes -= waiter.bytes;
            state.oldest[waiter.level].remove(&(waiter.enqueued, id));
            if waiter.front {
                state.front[waiter.level].retain(|t| *t != id);
            }
            if let Some(agent) = state.agents.get_mut(&agent_id) {
                agent.queued -= 1;
                agent.levels[waiter.level].retain(|(t, _)| *t != id);
            }
        }
        state.index(&agent_id, self.per_agent_cap);
        state.forget_idle();
        let wakers = self.dispatch(&mut state, now);
        drop(state);
        wake_all(wakers);
        self.changes.notify_waiters();
        if freed {
            self.kick_fleet();
        }
        Some(now.saturating_duration_since(waiter.enqueued))
    }

    /// The permit of `ticket` (if granted here) comes back after `hold`;
    /// `correction` adjusts the agent's counter by what the request
    /// really cost against what it was charged.
    pub(crate) fn release(
        &self,
        ticket: Option<u64>,
        agent_id: &AgentId,
        correction: f64,
        hold: Hold,
        slot: Option<Slot>,
    ) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let (Some(link), Some(slot)) = (&self.fleet, slot) {
            link.fleet.free(slot);
        }
        let running = ticket.and_then(|ticket| state.running.remove(&ticket));
        if !hold.failed {
            // Not from the first holds: requests queued before any
            // answer was seen are predicted their prompt alone, and ran
            // ten times that; one such ratio among a few skews every
            // residual after it.
            let model = state
                .holds
                .model()
                .filter(|_| state.holds.seen() >= ahead::TEACHING);
            if let (Some((since, cost)), Some(model)) = (running, model) {
                let held = now.saturating_duration_since(since).as_secs_f64();
                state.overruns.record(model.hold(cost), held);
            }
            state.holds.record(agent_id, hold.cost, hold.held);
        }
        state.in_flight = state.in_flight.saturating_sub(1);
        state.unindex(agent_id);
        if let Some(agent) = state.agents.get_mut(agent_id) {
            agent.in_flight = agent.in_flight.saturating_sub(1);
            agent.vtc += correction;
        }
        state.index(agent_id, self.per_agent_cap);
        state.completed(now);
        state.forget_idle();
        let wakers = self.dispatch(&mut state, now);
        drop(state);
        wake_all(wakers);
        self.changes.notify_waiters();
        self.kick_fleet();
    }

    /// With a fleet: a permit came back, which another model's pool may
    /// be waiting for (the upstream may now load its model).
    fn kick_fleet(&self) {
        if let Some(link) = &self.fleet {
            link.fleet.kick();
        }
    }

    /// The fleet this pool's permits are on, and its model there.
    pub(crate) fn fleet(&self) -> Option<&FleetLink> {
        self.fleet.as_ref()
    }

    /// Counts a permit held outside this pool (a lease this replica holds
    /// in Redis) as running here, so falling back to this pool does not
    /// add to what already runs.
    #[cfg(feature = "redis")]
    pub(crate) fn occupy(&self) {
        lock(&self.state).in_flight += 1;
    }

    /// The permit counted by [`Pool::occupy`] is given back after
    /// `hold`.
    #[cfg(feature = "redis")]
    pub(crate) fn vacate(&self, agent_id: &AgentId, hold: Hold) {
        let mut state = lock(&self.state);
        if !hold.failed {
            state.holds.record(agent_id, hold.cost, hold.held);
        }
        state.in_flight = state.in_flight.saturating_sub(1);
        // A completion all the same: the drain rate (the degrade layer's
        // Retry-After reads it) counts the shared queue's too.
        let now = Instant::now();
        state.completed(now);
        let wakers = self.dispatch(&mut state, now);
        drop(state);
        wake_all(wakers);
        self.changes.notify_waiters();
    }

    /// Changes the capacity; waiting requests are granted at once if it
    /// grew, running ones finish if it shrank.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        let mut state = lock(&self.state);
        state.capacity = capacity;
        let wakers = self.dispatch(&mut state, Instant::now());
        drop(state);
        wake_all(wakers);
    }

    pub(crate) fn snapshot(&self) -> LoadSnapshot {
        let now = Instant::now();
        let state = lock(&self.state);
        let oldest = state
            .oldest
            .iter()
            .filter_map(|o| o.first().map(|(t, _)| *t))
            .min();
        let capacity = match &self.fleet {
            Some(link) => link.fleet.capacity_for(&link.model),
            None => state.capacity,
        };
        LoadSnapshot {
            capacity,
            in_flight: state.in_flight,
            queued: state.queued,
            queued_bytes: state.queued_bytes,
            oldest_waiting_since: oldest,
            completions_per_sec: state.drain_rate(now),
        }
    }

    /// Whether `ticket` may borrow a reserved permit, from what this
    /// pool has measured (the shared pool marks its tickets with it).
    #[cfg(feature = "redis")]
    pub(crate) fn lend(&self, ticket: &Ticket) -> Lend {
        lock(&self.state).holds.lend(
            self.reserve,
            ticket.agent.as_str(),
            ticket.priority.get(),
            ticket.cost,
        )
    }

    /// How long a permit is held on average, once one came back.
    pub(crate) fn average_hold(&self) -> Option<Duration> {
        lock(&self.state).holds.pool()
    }

    /// Reservations kept for requests refused for their deadline (those
    /// past their time forgotten first).
    pub(crate) fn reservations(&self) -> usize {
        let mut state = lock(&self.state);
        state.room.expire(Instant::now());
        state.room.len()
    }

    /// Reserved permits lent to a lower priority, since the start.
    pub(crate) fn lent(&self) -> u64 {
        lock(&self.state).lent
    }

    /// The virtual token counter of `agent`, for tests and status.
    pub(crate) fn counter(&self, agent: &str) -> Option<f64> {
        lock(&self.state).agents.get(agent).map(|a| a.vtc)
    }
}

impl State {
    /// A request finished at `now`: the drain rate's window moves on.
    fn completed(&mut self, now: Instant) {
        if self.completions.len() == DRAIN_WINDOW {
            self.completions.pop_front();
        }
        self.completions.push_back(now);
    }
}

impl corral_fleet::Waiting for Pool {
    fn kick(&self) {
        let mut state = lock(&self.state);
        let wakers = self.dispatch(&mut state, Instant::now());
        drop(state);
        wake_all(wakers);
    }
}
