//! The fleet's state: what runs and what is loaded where, who waits for
//! which model, and the permits handed out per (upstream, model).
//!
//! One `std::sync::Mutex`, never held across an `.await` and never held
//! while a pool's lock is taken: pools call in with their own lock held
//! (pool, then fleet), and the fleet wakes pools only after letting go.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use corral_core::lock;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics;
use crate::place::{choose, Choice, Urgency, View, Want};
use crate::spec::{UpstreamSpec, ANY_MODEL};

/// Priority levels.
const LEVELS: usize = 10;

/// How long an upstream stays drained for a model that has not taken it:
/// its waiters may have left or be held back by their agents' caps.
const SWITCH_HOLD: Duration = Duration::from_secs(30);

/// What a model load is taken to cost until one is measured: the margin
/// by which a request must outwait the work it displaces.
pub const DEFAULT_LOAD_COST: Duration = Duration::from_secs(2);

/// A permit on one upstream for one model. Given back with
/// [`Fleet::free`]; [`crate::Route`] does that for a request.
#[derive(Debug)]
pub struct Slot {
    pub(crate) upstream: usize,
    pub(crate) model: Arc<str>,
}

impl Slot {
    /// The upstream it is on, by index.
    pub fn upstream(&self) -> usize {
        self.upstream
    }

    /// The model it runs.
    pub fn model(&self) -> &str {
        &self.model
    }
}

/// Something waiting for permits (a pool of the scheduler): told when
/// one may have come free.
pub trait Waiting: Send + Sync {
    /// Try again to place what waits.
    fn kick(&self);
}

/// Several upstreams and the permits on each, per model.
pub struct Fleet {
    specs: Vec<UpstreamSpec>,
    state: Mutex<State>,
    waiting: Mutex<Vec<Joined>>,
}

/// A pool that joined, and the model it waits for.
type Joined = (Arc<str>, Weak<dyn Waiting>);

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field(
                "upstreams",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct State {
    ups: Vec<Up>,
    heads: HashMap<Arc<str>, Head>,
    displaced: VecDeque<Displaced>,
    /// Capacities found at run time, by (upstream, model).
    capacity: HashMap<(usize, Arc<str>), usize>,
    load_cost: Duration,
}

struct Up {
    healthy: bool,
    residents: HashMap<Arc<str>, Resident>,
    switching: Option<(Arc<str>, Instant)>,
}

#[derive(Debug, Clone)]
struct Resident {
    in_flight: usize,
    last_used: Instant,
    expires_at: Option<SystemTime>,
}

struct Head {
    oldest: [Option<Instant>; LEVELS],
    waiting: usize,
    aging: Duration,
}

struct Displaced {
    model: Arc<str>,
    reply: oneshot::Sender<Slot>,
}

/// One upstream's state, for the status page and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: Arc<str>,
    /// Whether it takes requests.
    pub healthy: bool,
    /// The model it is being drained for.
    pub switching_to: Option<Arc<str>>,
    /// What is loaded there, by name: running, capacity, until when.
    pub models: Vec<ModelStatus>,
}

/// One model on one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatus {
    /// The model.
    pub model: Arc<str>,
    /// Its requests running there.
    pub in_flight: usize,
    /// How many it may run there at once.
    pub capacity: usize,
    /// When Ollama will unload it, as `/api/ps` says.
    pub expires_at: Option<SystemTime>,
}

impl Head {
    fn urgency(&self, now: Instant) -> Option<Urgency> {
        self.oldest
            .iter()
            .enumerate()
            .filter_map(|(level, oldest)| {
                let since = (*oldest)?;
                let steps = if self.aging.is_zero() {
                    0
                } else {
                    now.saturating_duration_since(since).as_nanos() / self.aging.as_nanos()
                };
                let level = level.saturating_sub(usize::try_from(steps).unwrap_or(usize::MAX));
                Some(Urgency { level, since })
            })
            .min()
    }
}

impl Fleet {
    /// A fleet of `specs`, all taken as up until a probe says otherwise.
    pub fn new(specs: Vec<UpstreamSpec>) -> Arc<Self> {
        metrics::describe();
        let ups = specs
            .iter()
            .map(|_| Up {
                healthy: true,
                residents: HashMap::new(),
                switching: None,
            })
            .collect();
        Arc::new(Self {
            specs,
            state: Mutex::new(State {
                ups,
                heads: HashMap::new(),
                displaced: VecDeque::new(),
                capacity: HashMap::new(),
                load_cost: DEFAULT_LOAD_COST,
            }),
            waiting: Mutex::new(Vec::new()),
        })
    }

    /// The upstreams, in configuration order.
    pub fn specs(&self) -> &[UpstreamSpec] {
        &self.specs
    }

    /// The name of upstream `index`.
    pub fn name(&self, index: usize) -> Option<&Arc<str>> {
        self.specs.get(index).map(|s| &s.name)
    }

    /// Sets what a model load is taken to cost (the margin a request must
    /// outwait the work it would displace by).
    pub fn set_load_cost(&self, cost: Duration) {
        lock(&self.state).load_cost = cost;
    }

    /// `waiting` (a pool for `model`) is told when permits may be free.
    pub fn join(&self, model: &str, waiting: Weak<dyn Waiting>) {
        let mut list = lock(&self.waiting);
        list.retain(|(_, w)| w.strong_count() > 0);
        list.push((Arc::from(model), waiting));
    }

    /// Tells every pool to try again, the most urgent first.
    pub fn kick(&self) {
        let now = Instant::now();
        let mut pools: Vec<(Option<Urgency>, Arc<dyn Waiting>)> = {
            let list = lock(&self.waiting);
            let state = lock(&self.state);
            list.iter()
                .filter_map(|(model, w)| {
                    let urgency = state.heads.get(model).and_then(|h| h.urgency(now));
                    Some((urgency, w.upgrade()?))
                })
                .collect()
        };
        // Waiting pools first, the most urgent first; then the rest.
        pools.sort_by_key(|(urgency, _)| (urgency.is_none(), *urgency));
        for (_, pool) in pools {
            pool.kick();
        }
    }

    /// A permit for `model` (canonical, or [`ANY_MODEL`]) on the
    /// upstream that should run it now, or `None`: wait.
    pub fn place(&self, model: &str, want: &Want) -> Option<Slot> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.place_locked(&mut state, model, want, now)
    }

    fn place_locked(
        &self,
        state: &mut State,
        model: &str,
        want: &Want,
        now: Instant,
    ) -> Option<Slot> {
        let views: Vec<View> = (0..self.specs.len())
            .map(|u| self.view(state, u, model, now))
            .collect();
        match choose(model, want, &views, state.load_cost) {
            Choice::Place {
                upstream,
                load,
                evict,
            } => Some(self.take(state, upstream, model, load, evict, now)),
            Choice::Switch(upstream) => {
                let up = &mut state.ups[upstream];
                up.switching = Some((Arc::from(model), now));
                tracing::info!(
                    upstream = %self.specs[upstream].name,
                    model,
                    "draining the upstream's models to load a more urgent one"
                );
                None
            }
            Choice::Wait => None,
        }
    }

    fn take(
        &self,
        state: &mut State,
        upstream: usize,
        model: &str,
        load: bool,
        evict: Option<Arc<str>>,
        now: Instant,
    ) -> Slot {
        let name = &self.specs[upstream].name;
        let up = &mut state.ups[upstream];
        if let Some(evicted) = evict {
            up.residents.remove(&evicted);
        }
        if load {
            ::metrics::counter!(metrics::MODEL_LOADS_TOTAL, "upstream" => name.to_string(), "model" => model.to_string())
                .increment(1);
        }
        if up.switching.as_ref().is_some_and(|(m, _)| &**m == model) {
            up.switching = None;
        }
        let (key, resident) = match up.residents.get_key_value(model) {
            Some((key, _)) => (key.clone(), up.residents.get_mut(model)),
            None => {
                let key: Arc<str> = Arc::from(model);
                up.residents.insert(
                    key.clone(),
                    Resident {
                        in_flight: 0,
                        last_used: now,
                        expires_at: None,
                    },
                );
                (key.clone(), up.residents.get_mut(model))
            }
        };
        if let Some(resident) = resident {
            resident.in_flight += 1;
            resident.last_used = now;
        }
        Slot {
            upstream,
            model: key,
        }
    }

    fn capacity(&self, state: &State, upstream: usize, model: &str) -> usize {
        state
            .capacity
            .get(&(upstream, Arc::from(model)))
            .copied()
            .unwrap_or_else(|| self.specs[upstream].capacity_of(model))
    }

    fn view(&self, state: &State, u: usize, model: &str, now: Instant) -> View {
        let spec = &self.specs[u];
        let up = &state.ups[u];
        let models = || up.residents.iter().filter(|(m, _)| &***m != ANY_MODEL);
        let loaded_count = models().count();
        let switching = up
            .switching
            .as_ref()
            .filter(|(_, since)| now.saturating_duration_since(*since) < SWITCH_HOLD)
            .map(|(m, _)| m.clone());
        let wanted = |m: &str| state.heads.get(m).is_some_and(|h| h.waiting > 0);
        let evictable = models()
            .filter(|(m, r)| {
                r.in_flight == 0 && (!wanted(m) || switching.as_deref() == Some(model))
            })
            .min_by_key(|(_, r)| r.last_used)
            .map(|(m, _)| m.clone());
        let resident_urgency = models()
            .filter_map(|(m, _)| state.heads.get(m).and_then(|h| h.urgency(now)))
            .min();
        View {
            healthy: up.healthy,
            serves: spec.serves(model),
            capacity: self.capacity(state, u, model),
            in_flight: up.residents.get(model).map_or(0, |r| r.in_flight),
            loaded: model == ANY_MODEL || up.residents.contains_key(model),
            busy: up.residents.values().map(|r| r.in_flight).sum(),
            room: spec.max_loaded.is_none_or(|max| loaded_count < max),
            evictable,
            switching,
            resident_urgency,
            weight: spec.weight,
        }
    }

    /// Gives `slot` back, to a request displaced from a failed upstream
    /// first; call [`Fleet::kick`] after letting go of any pool's lock.
    pub fn free(&self, slot: Slot) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        release(&mut state, &slot, now);
        self.serve_displaced(&mut state, now);
    }

    fn serve_displaced(&self, state: &mut State, now: Instant) {
        let mut kept = VecDeque::new();
        while let Some(displaced) = state.displaced.pop_front() {
            if displaced.reply.is_closed() {
                continue;
            }
            // It was running already: ahead of everything that waits.
            let want = Want {
                urgency: Urgency {
                    level: 0,
                    since: now,
                },
                waiting: usize::MAX,
                affinity: None,
                hold: None,
            };
            match self.place_locked(state, &displaced.model, &want, now) {
                Some(slot) => {
                    if let Err(slot) = displaced.reply.send(slot) {
                        release(state, &slot, now);
                    }
                }
                None => kept.push_back(displaced),
            }
        }
        state.displaced = kept;
    }

    /// The request on `slot` failed before any answer because its
    /// upstream did: the upstream is taken out until a probe finds it
    /// back, and the request gets a permit elsewhere as soon as one is
    /// free, ahead of every waiting request. `Err(slot)` when no other
    /// upstream up may serve its model.
    pub fn failover(&self, slot: Slot) -> Result<oneshot::Receiver<Slot>, Slot> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.mark(&mut state, slot.upstream, false);
        let elsewhere = (0..self.specs.len()).any(|u| {
            u != slot.upstream && state.ups[u].healthy && self.specs[u].serves(&slot.model)
        });
        if !elsewhere {
            return Err(slot);
        }
        ::metrics::counter!(metrics::FAILOVERS_TOTAL, "upstream" => self.specs[slot.upstream].name.to_string())
            .increment(1);
        let (reply, answer) = oneshot::channel();
        release(&mut state, &slot, now);
        state.displaced.push_back(Displaced {
            model: slot.model.clone(),
            reply,
        });
        self.serve_displaced(&mut state, now);
        Ok(answer)
    }

    /// Upstream `index` answers (or stopped answering).
    pub fn set_healthy(&self, index: usize, healthy: bool) {
        let changed = {
            let mut state = lock(&self.state);
            let changed = self.mark(&mut state, index, healthy);
            if changed && healthy {
                self.serve_displaced(&mut state, Instant::now());
            }
            changed
        };
        if changed && healthy {
            self.kick();
        }
    }

    fn mark(&self, state: &mut State, index: usize, healthy: bool) -> bool {
        let Some(up) = state.ups.get_mut(index) else {
            return false;
        };
        if up.healthy == healthy {
            return false;
        }
        up.healthy = healthy;
        let name = &self.specs[index].name;
        ::metrics::gauge!(metrics::UPSTREAM_HEALTHY, "upstream" => name.to_string())
            .set(if healthy { 1.0 } else { 0.0 });
        if healthy {
            tracing::info!(upstream = %name, "upstream back: taking requests again");
        } else {
            // Whatever it had loaded is gone with it; what still runs
            // there is given back by its requests.
            up.residents.retain(|_, r| r.in_flight > 0);
            up.switching = None;
            tracing::warn!(upstream = %name, "upstream failed: drained until it answers again");
        }
        true
    }

    /// Whether upstream `index` takes requests.
    pub fn is_healthy(&self, index: usize) -> bool {
        lock(&self.state).ups.get(index).is_some_and(|u| u.healthy)
    }

    /// What upstream `index` has loaded, as its `/api/ps` lists it:
    /// `(canonical name, expires at)`. Models it no longer lists and
    /// nothing runs on are taken as unloaded.
    pub fn observe_loaded(&self, index: usize, loaded: Vec<(String, Option<SystemTime>)>) {
        let now = Instant::now();
        {
            let mut state = lock(&self.state);
            let Some(up) = state.ups.get_mut(index) else {
                return;
            };
            up.residents.retain(|model, resident| {
                resident.in_flight > 0
                    || &**model == ANY_MODEL
                    || loaded.iter().any(|(m, _)| m == &**model)
            });
            for (model, expires_at) in loaded {
                let resident = up
                    .residents
                    .entry(Arc::from(model.as_str()))
                    .or_insert(Resident {
                        in_flight: 0,
                        last_used: now,
                        expires_at: None,
                    });
                resident.expires_at = expires_at;
            }
        }
        self.kick();
    }

    /// A pool for `model` tells what waits in it: the oldest request per
    /// priority level, how many, and its aging step.
    pub fn publish(
        &self,
        model: &str,
        oldest: [Option<Instant>; LEVELS],
        waiting: usize,
        aging: Duration,
    ) {
        let mut state = lock(&self.state);
        if waiting == 0 {
            if state.heads.remove(model).is_some() {
                for up in &mut state.ups {
                    if up.switching.as_ref().is_some_and(|(m, _)| &**m == model) {
                        up.switching = None;
                    }
                }
            }
            return;
        }
        let head = Head {
            oldest,
            waiting,
            aging,
        };
        match state.heads.get_mut(model) {
            Some(existing) => *existing = head,
            None => {
                state.heads.insert(Arc::from(model), head);
            }
        }
    }

    /// Permits `model` may hold at once across the upstreams up and
    /// allowed to serve it.
    pub fn capacity_for(&self, model: &str) -> usize {
        let state = lock(&self.state);
        (0..self.specs.len())
            .filter(|u| state.ups[*u].healthy && self.specs[*u].serves(model))
            .map(|u| self.capacity(&state, u, model))
            .sum()
    }

    /// Sets how many requests of `model` upstream `index` runs at once
    /// (a capacity found by measuring, or the admin's).
    pub fn set_capacity(&self, index: usize, model: &str, capacity: usize) {
        {
            let mut state = lock(&self.state);
            state
                .capacity
                .insert((index, Arc::from(model)), capacity.max(1));
        }
        self.kick();
    }

    /// The upstream for a request nobody scheduled (a metadata read, a
    /// stack without a `priority` layer): up, allowed to serve `model`,
    /// with it loaded if one has, the least busy.
    pub fn pick(&self, model: Option<&str>) -> usize {
        let state = lock(&self.state);
        let model = model.unwrap_or(ANY_MODEL);
        (0..self.specs.len())
            .filter(|u| self.specs[*u].serves(model))
            .min_by_key(|u| {
                let up = &state.ups[*u];
                (
                    !up.healthy,
                    !up.residents.contains_key(model),
                    up.residents.values().map(|r| r.in_flight).sum::<usize>(),
                )
            })
            .unwrap_or(0)
    }

    /// Each upstream's state.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let state = lock(&self.state);
        self.specs
            .iter()
            .enumerate()
            .map(|(u, spec)| {
                let up = &state.ups[u];
                let mut models: Vec<ModelStatus> = up
                    .residents
                    .iter()
                    .map(|(model, r)| ModelStatus {
                        model: model.clone(),
                        in_flight: r.in_flight,
                        capacity: self.capacity(&state, u, model),
                        expires_at: r.expires_at,
                    })
                    .collect();
                models.sort_by(|a, b| a.model.cmp(&b.model));
                UpstreamStatus {
                    name: spec.name.clone(),
                    healthy: up.healthy,
                    switching_to: up.switching.as_ref().map(|(m, _)| m.clone()),
                    models,
                }
            })
            .collect()
    }
}

fn release(state: &mut State, slot: &Slot, now: Instant) {
    if let Some(resident) = state
        .ups
        .get_mut(slot.upstream)
        .and_then(|up| up.residents.get_mut(&slot.model))
    {
        resident.in_flight = resident.in_flight.saturating_sub(1);
        resident.last_used = now;
    }
}
