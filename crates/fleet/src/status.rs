//! What the fleet can take and holds, for the scheduler, the admin API
//! and requests nobody scheduled.

use std::sync::Arc;

use corral_core::lock;

use crate::fleet::{Fleet, ModelStatus, UpstreamStatus, ALL_MODELS};
use crate::spec::ANY_MODEL;

impl Fleet {
    /// Permits `model` may hold at once: across the upstreams up that
    /// may serve it, and those its requests still hold on upstreams
    /// drained since (they come back when those requests end).
    pub fn capacity_for(&self, model: &str) -> usize {
        let state = lock(&self.state);
        (0..self.specs.len())
            .map(|u| {
                let up = &state.ups[u];
                if up.healthy && self.serves(&state, u, model) {
                    self.capacity(&state, u, model)
                } else {
                    up.residents.get(model).map_or(0, |r| r.in_flight)
                }
            })
            .sum()
    }

    /// Permits across the fleet as it stands: on each upstream up, those
    /// of the models loaded there (its default capacity if none is), and
    /// those still held on upstreams drained since. What the load, and
    /// shedding and degradation from it, are measured against.
    pub fn total_capacity(&self) -> usize {
        let state = lock(&self.state);
        (0..self.specs.len())
            .map(|u| {
                let up = &state.ups[u];
                let running: usize = up.residents.values().map(|r| r.in_flight).sum();
                if !up.healthy {
                    return running;
                }
                let loaded: usize = up
                    .residents
                    .keys()
                    .filter(|m| &***m != ANY_MODEL)
                    .map(|m| self.capacity(&state, u, m))
                    .sum();
                loaded.max(self.capacity(&state, u, ANY_MODEL)).max(running)
            })
            .sum()
    }

    /// Whether any upstream may serve `model` (canonical): configured to,
    /// and has it if its `/api/tags` was read. Down or not: a request for
    /// a model only a drained upstream serves waits for it.
    pub fn serves_anywhere(&self, model: &str) -> bool {
        let state = lock(&self.state);
        (0..self.specs.len()).any(|u| self.serves(&state, u, model))
    }

    /// Sets how many requests of `model` upstream `index` runs at once
    /// (a capacity found by measuring, or the admin's); `None`: of every
    /// model without a capacity of its own there.
    /// In a shared fleet every replica takes it; see
    /// [`Fleet::set_capacity_here`] for a capacity this replica measured.
    pub fn set_capacity(&self, index: usize, model: Option<&str>, capacity: usize) {
        self.share_capacity(index, model.unwrap_or(ALL_MODELS), capacity.max(1));
        self.set_capacity_here(index, model, capacity);
    }

    /// [`Fleet::set_capacity`] for this replica alone (what it measured
    /// with `capacity = "auto"`: each replica measures its own).
    pub fn set_capacity_here(&self, index: usize, model: Option<&str>, capacity: usize) {
        let model = model.unwrap_or(ALL_MODELS);
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
    /// with it loaded if one has, the least busy; none of `avoid` (tried
    /// already) while another may serve it.
    pub fn pick(&self, model: Option<&str>, avoid: &[usize]) -> usize {
        let state = lock(&self.state);
        let model = model.unwrap_or(ANY_MODEL);
        (0..self.specs.len())
            .filter(|u| self.serves(&state, *u, model) && !avoid.contains(u))
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

    /// Requests of `model` streaming on upstream `index` (their first byte
    /// came, their end not yet) after `delta` more.
    pub fn streaming(&self, index: usize, model: &str, delta: isize) -> usize {
        let mut state = lock(&self.state);
        let Some(resident) = state
            .ups
            .get_mut(index)
            .and_then(|up| up.residents.get_mut(model))
        else {
            return 0;
        };
        resident.streaming = resident.streaming.saturating_add_signed(delta);
        resident.streaming
    }

    /// Requests of `model` running (or sent) on upstream `index`.
    pub fn running(&self, index: usize, model: &str) -> usize {
        lock(&self.state)
            .ups
            .get(index)
            .and_then(|up| up.residents.get(model))
            .map_or(0, |r| r.in_flight)
    }

    /// Whether requests that could run now wait for `model` (canonical).
    pub fn is_wanted(&self, model: &str) -> bool {
        lock(&self.state).wants(model)
    }

    /// The index of the upstream named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| &*s.name == name)
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
                        // Other replicas' too, in a shared fleet.
                        in_flight: r.in_flight + up.remote.get(model).copied().unwrap_or(0),
                        capacity: self.capacity(&state, u, model),
                        expires_at: r.expires_at,
                    })
                    .collect();
                models.sort_by(|a, b| a.model.cmp(&b.model));
                UpstreamStatus {
                    name: spec.name.clone(),
                    healthy: up.healthy,
                    switching_to: Self::drained_for(&state, up),
                    models,
                }
            })
            .collect()
    }
}
