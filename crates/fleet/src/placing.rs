//! Placing a request: the views the decision reads, the permit it takes,
//! the conversations remembered.

use std::collections::HashMap;
use std::sync::Arc;

use corral_core::lock;
use tokio::time::Instant;

use crate::fleet::{Fleet, Resident, Slot, State, Up, ALL_MODELS};
use crate::metrics;
use crate::place::{choose, Choice, View, Want};
use crate::spec::ANY_MODEL;

impl Fleet {
    /// A permit for `model` (canonical, or [`ANY_MODEL`]) on the
    /// upstream that should run it now, or `None`: wait.
    pub fn place(&self, model: &str, want: &Want) -> Option<Slot> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.place_locked(&mut state, model, want, now, None)
    }

    /// Places a request for `model`, never on `avoid`; a request moved
    /// off a failed upstream (`avoid` set) drains none for itself.
    pub(crate) fn place_locked(
        &self,
        state: &mut State,
        model: &str,
        want: &Want,
        now: Instant,
        avoid: Option<usize>,
    ) -> Option<Slot> {
        let sticky = want
            .session
            .and_then(|s| state.sessions.get(&s))
            .map(|(u, _)| *u);
        let views: Vec<View> = (0..self.specs.len())
            .map(|u| {
                let mut view = self.view(state, u, model, now);
                view.healthy &= Some(u) != avoid;
                view.sticky = sticky == Some(u);
                view
            })
            .collect();
        match choose(model, want, &views, state.load_cost) {
            Choice::Switch(_) if avoid.is_some() => None,
            Choice::Place {
                upstream,
                load,
                evict,
            } => {
                if let Some(session) = want.session {
                    remember(&mut state.sessions, session, upstream, now);
                }
                Some(self.take(state, upstream, model, load, evict, now))
            }
            Choice::Switch(upstream) => {
                let up = &mut state.ups[upstream];
                up.switching = Some((Arc::from(model), now));
                self.share_switch(upstream, model);
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
        if let Some(evicted) = &evict {
            up.residents.remove(evicted);
            up.evicted.insert(evicted.clone());
        }
        up.evicted.remove(model);
        if load {
            up.loads += 1;
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
                        streaming: 0,
                        last_used: now,
                        expires_at: None,
                    },
                );
                (key.clone(), up.residents.get_mut(model))
            }
        };
        let mut concurrency = 1;
        if let Some(resident) = resident {
            resident.in_flight += 1;
            resident.last_used = now;
            concurrency = resident.in_flight;
        }
        Slot {
            upstream,
            model: key,
            concurrency,
            load,
            evict,
            lease: Slot::next_lease(),
        }
    }

    pub(crate) fn capacity(&self, state: &State, upstream: usize, model: &str) -> usize {
        let set = |m: &str| state.capacity.get(&(upstream, Arc::from(m))).copied();
        let capacity = set(model)
            .or_else(|| {
                (!self.specs[upstream].model_capacity.contains_key(model))
                    .then(|| set(ALL_MODELS))
                    .flatten()
            })
            .unwrap_or_else(|| self.specs[upstream].capacity_of(model));
        self.share_of(capacity)
    }

    /// Whether upstream `u` may serve `model`: configured to, and, once
    /// its `/api/tags` was read, has it.
    pub(crate) fn serves(&self, state: &State, u: usize, model: &str) -> bool {
        self.specs[u].serves(model)
            && (model == ANY_MODEL
                || state.ups[u]
                    .available
                    .as_ref()
                    .is_none_or(|models| models.contains(model)))
    }

    /// The model `up` is drained for, while requests for it that could
    /// run wait (a drain for a model nobody can take is over).
    pub(crate) fn switching(state: &State, up: &Up) -> Option<Arc<str>> {
        up.switching
            .as_ref()
            .filter(|(m, _)| state.wants(m))
            .map(|(m, _)| m.clone())
    }

    /// The model `up` is drained for: another replica's drain (Redis
    /// holds one per upstream), else this replica's own.
    pub(crate) fn drained_for(state: &State, up: &Up) -> Option<Arc<str>> {
        up.remote_switching
            .clone()
            .or_else(|| Self::switching(state, up))
    }

    fn view(&self, state: &State, u: usize, model: &str, now: Instant) -> View {
        let spec = &self.specs[u];
        let up = &state.ups[u];
        let models = || up.residents.iter().filter(|(m, _)| &***m != ANY_MODEL);
        let loaded_count = models().count();
        // In a shared fleet, another replica's drain counts as this one's.
        let switching = Self::drained_for(state, up);
        let wanted = |m: &str| state.wants(m);
        let remote = |m: &str| up.remote.get(m).copied().unwrap_or(0);
        let evictable = models()
            .filter(|(m, r)| {
                r.in_flight + remote(m) == 0 && (!wanted(m) || switching.as_deref() == Some(model))
            })
            .min_by_key(|(_, r)| r.last_used)
            .map(|(m, _)| m.clone());
        let resident_urgency = models().filter_map(|(m, _)| state.urgency_of(m, now)).min();
        View {
            healthy: up.healthy,
            serves: self.serves(state, u, model),
            capacity: self.capacity(state, u, model),
            in_flight: up.residents.get(model).map_or(0, |r| r.in_flight) + remote(model),
            loaded: model == ANY_MODEL || up.residents.contains_key(model),
            busy: up.residents.values().map(|r| r.in_flight).sum::<usize>()
                + up.remote.values().sum::<usize>(),
            room: spec.max_loaded.is_none_or(|max| loaded_count < max),
            evictable,
            switching,
            resident_urgency,
            weight: spec.weight,
            sticky: false,
        }
    }
}

/// The most conversations remembered: past it, the half least recently
/// placed are forgotten (a client inventing session ids grows nothing).
pub const MAX_SESSIONS: usize = 10_000;

fn remember(
    sessions: &mut HashMap<u64, (usize, Instant)>,
    session: u64,
    upstream: usize,
    now: Instant,
) {
    if sessions.len() >= MAX_SESSIONS && !sessions.contains_key(&session) {
        let mut ages: Vec<Instant> = sessions.values().map(|(_, at)| *at).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 2];
        sessions.retain(|_, (_, at)| *at > cut);
    }
    sessions.insert(session, (upstream, now));
}
