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
use crate::place::{Urgency, Want};
use crate::spec::UpstreamSpec;

/// Priority levels.
const LEVELS: usize = 10;

/// What a model load is taken to cost until one is measured: the margin
/// by which a request must outwait the work it displaces.
pub const DEFAULT_LOAD_COST: Duration = Duration::from_secs(2);

pub(crate) use crate::slot::LeaseKey;
pub use crate::slot::Slot;

/// Something waiting for permits (a pool of the scheduler): told when
/// one may have come free.
pub trait Waiting: Send + Sync {
    /// Try again to place what waits.
    fn kick(&self);
}

/// Several upstreams and the permits on each, per model.
pub struct Fleet {
    pub(crate) specs: Vec<UpstreamSpec>,
    pub(crate) state: Mutex<State>,
    waiting: Mutex<Vec<Joined>>,
    /// Shared with other replicas through Redis, once [`Fleet::share`]d.
    #[cfg(feature = "redis")]
    pub(crate) shared: std::sync::OnceLock<Arc<crate::shared::Shared>>,
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

pub(crate) struct State {
    pub(crate) ups: Vec<Up>,
    pub(crate) heads: HashMap<Arc<str>, Head>,
    pub(crate) displaced: VecDeque<Displaced>,
    /// Capacities set at run time, by (upstream, model); the model
    /// [`ALL_MODELS`] for an upstream's default.
    pub(crate) capacity: HashMap<(usize, Arc<str>), usize>,
    pub(crate) load_cost: Duration,
    /// Averages of the time to a stream's first token, without a load and
    /// with one: what a load is learned from.
    pub(crate) first_token: [Option<Duration>; 2],
    /// The upstream each conversation last ran on, and when.
    pub(crate) sessions: HashMap<u64, (usize, Instant)>,
    /// In a shared fleet: the most urgent request waiting per model on
    /// the other replicas, as of the last renewal.
    pub(crate) remote_heads: HashMap<Arc<str>, Urgency>,
}

/// The key of an upstream's default capacity set at run time.
pub(crate) const ALL_MODELS: &str = "";

pub(crate) struct Up {
    pub(crate) healthy: bool,
    pub(crate) residents: HashMap<Arc<str>, Resident>,
    pub(crate) switching: Option<(Arc<str>, Instant)>,
    /// Failures before any answer since the last success.
    pub(crate) failures: u32,
    /// The models it has (its `/api/tags`), once read.
    pub(crate) available: Option<std::collections::HashSet<Arc<str>>>,
    /// Counts the loads Corral sent it: an `/api/ps` asked before the
    /// last one is stale (it may list a model evicted since).
    pub(crate) loads: u64,
    /// Models Corral evicted here that `/api/ps` may still list while the
    /// server unloads them: not taken back from it until it stops.
    pub(crate) evicted: std::collections::HashSet<Arc<str>>,
    /// In a shared fleet: permits other replicas hold here, per model.
    pub(crate) remote: HashMap<Arc<str>, usize>,
    /// In a shared fleet: the model it is drained for, by any replica.
    pub(crate) remote_switching: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Resident {
    pub(crate) in_flight: usize,
    /// Of those, streaming: their first byte came.
    pub(crate) streaming: usize,
    pub(crate) last_used: Instant,
    pub(crate) expires_at: Option<SystemTime>,
}

pub(crate) struct Head {
    oldest: [Option<Instant>; LEVELS],
    pub(crate) waiting: usize,
    aging: Duration,
}

/// A request moved off a failed upstream, waiting for a permit on
/// another.
pub(crate) struct Displaced {
    pub(crate) model: Arc<str>,
    /// The upstream it failed on, avoided even if not (yet) drained.
    pub(crate) avoid: Option<usize>,
    /// How it is placed: a moved request ahead of everything
    /// ([`Want::moved`]), one another replica's claim won over as it was.
    pub(crate) want: Want,
    pub(crate) reply: oneshot::Sender<Slot>,
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

impl State {
    /// Whether requests that could run now wait for `model`: in its
    /// pool, or moved here (off a failed upstream, or refused by Redis).
    pub(crate) fn wants(&self, model: &str) -> bool {
        self.heads.get(model).is_some_and(|h| h.waiting > 0)
            || self.remote_heads.contains_key(model)
            || self
                .displaced
                .iter()
                .any(|d| &*d.model == model && !d.reply.is_closed())
    }
}

impl State {
    /// The most urgent request waiting for `model`, here or (in a shared
    /// fleet) on another replica.
    pub(crate) fn urgency_of(&self, model: &str, now: Instant) -> Option<Urgency> {
        let here = self.heads.get(model).and_then(|h| h.urgency(now));
        let there = self.remote_heads.get(model).copied();
        here.into_iter().chain(there).min()
    }
}

impl Head {
    pub(crate) fn urgency(&self, now: Instant) -> Option<Urgency> {
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
                failures: 0,
                available: None,
                loads: 0,
                evicted: std::collections::HashSet::new(),
                remote: HashMap::new(),
                remote_switching: None,
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
                first_token: [None, None],
                sessions: HashMap::new(),
                remote_heads: HashMap::new(),
            }),
            waiting: Mutex::new(Vec::new()),
            #[cfg(feature = "redis")]
            shared: std::sync::OnceLock::new(),
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

    /// A stream's first token came `after` its dispatch; `loaded`: its
    /// model was loaded for it. Once both kinds were seen, a load is
    /// taken to cost the difference of their averages (at least 100 ms).
    pub fn first_token(&self, after: Duration, loaded: bool) {
        let mut state = lock(&self.state);
        let average = &mut state.first_token[usize::from(loaded)];
        *average = Some(match *average {
            None => after,
            // A moving average: a slow machine or a bigger model moves it.
            Some(was) => (was * 7 + after) / 8,
        });
        if let [Some(plain), Some(loading)] = state.first_token {
            state.load_cost = loading
                .saturating_sub(plain)
                .max(Duration::from_millis(100));
        }
    }

    /// What a model load is taken to cost now.
    pub fn load_cost(&self) -> Duration {
        lock(&self.state).load_cost
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
        self.serve_displaced(&mut lock(&self.state), now);
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

    /// Gives `slot` back, to a request displaced from a failed upstream
    /// first; call [`Fleet::kick`] after letting go of any pool's lock.
    pub fn free(&self, slot: Slot) {
        let now = Instant::now();
        self.release_shared(&slot.key());
        let mut state = lock(&self.state);
        release(&mut state, &slot, now);
        self.serve_displaced(&mut state, now);
    }

    /// A request placed here that another replica's claim won over:
    /// it waits for the next permit for `model` (never on `avoid`),
    /// ahead of this replica's queue, placed as `want` says (it may drain
    /// an upstream unless `avoid` is set).
    pub(crate) fn requeue(
        &self,
        model: &str,
        want: Want,
        avoid: Option<usize>,
    ) -> oneshot::Receiver<Slot> {
        let now = Instant::now();
        let (reply, answer) = oneshot::channel();
        let mut state = lock(&self.state);
        state.displaced.push_back(Displaced {
            model: Arc::from(model),
            avoid,
            want,
            reply,
        });
        self.serve_displaced(&mut state, now);
        answer
    }

    pub(crate) fn serve_displaced(&self, state: &mut State, now: Instant) {
        let mut kept = VecDeque::new();
        while let Some(displaced) = state.displaced.pop_front() {
            if displaced.reply.is_closed() {
                continue;
            }
            let want = displaced.want;
            match self.place_locked(state, &displaced.model, &want, now, displaced.avoid) {
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

    /// A pool for `model` tells what waits in it: the oldest request per
    /// priority level, how many could be served now (not held back by
    /// their agents' caps; none: the model is not wanted), and its aging
    /// step.
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
}

pub(crate) fn release(state: &mut State, slot: &Slot, now: Instant) {
    if let Some(resident) = state
        .ups
        .get_mut(slot.upstream)
        .and_then(|up| up.residents.get_mut(&slot.model))
    {
        resident.in_flight = resident.in_flight.saturating_sub(1);
        resident.last_used = now;
    }
}
