//! Keeping this replica's view in step with Redis: what each answer
//! says of an upstream, the renewals, and what other replicas announce.

use std::sync::{Arc, Weak};
use std::time::Duration;

use corral_core::lock;
use tokio::time::Instant;

use super::{Report, DOWN, FREED, WANTS_EVERY};
use crate::fleet::{Fleet, Resident, ALL_MODELS};
use crate::spec::ANY_MODEL;

impl Fleet {
    /// Takes what Redis says of upstream `index` into this replica's
    /// view: the permits other replicas hold, the models loaded (one this
    /// replica had that Redis does not list, with nothing of it running
    /// here, was evicted by another), the drain, the capacities set.
    pub(crate) fn apply(&self, index: usize, report: &Report) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        for (model, capacity) in &report.capacity {
            let model = if model.is_empty() {
                Arc::from(ALL_MODELS)
            } else {
                model.clone()
            };
            state.capacity.insert((index, model), (*capacity).max(1));
        }
        let Some(up) = state.ups.get_mut(index) else {
            return;
        };
        up.remote = report
            .models
            .iter()
            .filter(|(_, others, _)| *others > 0)
            .map(|(model, others, _)| (model.clone(), *others))
            .collect();
        up.remote_switching = report.drained_for.clone();
        // Drained by another replica for another model: this replica's
        // own drain lost (Redis refuses its claims until that one ends).
        if let (Some((mine, _)), Some(theirs)) = (&up.switching, &report.drained_for) {
            if mine != theirs {
                up.switching = None;
            }
        }
        let listed = |model: &str| report.models.iter().any(|(m, _, r)| *r && &**m == model);
        let unlisted: Vec<Arc<str>> = up
            .residents
            .iter()
            .filter(|(m, r)| r.in_flight == 0 && &***m != ANY_MODEL && !listed(m))
            .map(|(m, _)| m.clone())
            .collect();
        for model in unlisted {
            // Evicted by another replica, or unused past keep_alive: not
            // taken back from `/api/ps` while the server still lists it.
            up.residents.remove(&model);
            up.evicted.insert(model);
        }
        for (model, _, resident) in &report.models {
            if *resident && !up.residents.contains_key(model) {
                up.evicted.remove(model);
                up.residents.insert(
                    model.clone(),
                    Resident {
                        in_flight: 0,
                        streaming: 0,
                        last_used: now,
                        expires_at: None,
                    },
                );
            }
        }
    }

    /// Renews this replica's leases and drains every third of the TTL,
    /// reads each upstream's state, and tries again what waits; shares
    /// what its queue waits for more often ([`WANTS_EVERY`]), as drains
    /// are decided on it.
    pub(super) async fn keep_alive(fleet: Weak<Self>, ttl: Duration) {
        let Some(mut health) = fleet
            .upgrade()
            .and_then(|f| f.shared.get().map(|s| s.state.health()))
        else {
            return;
        };
        let mut ticks = tokio::time::interval(WANTS_EVERY.min(ttl / 3));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        loop {
            let back = tokio::select! {
                _ = ticks.tick() => false,
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    *health.borrow_and_update()
                }
            };
            let Some(fleet) = fleet.upgrade() else {
                return;
            };
            let live = fleet.shared.get().is_some_and(|s| s.is_live());
            if live {
                fleet.share_wants().await;
            } else {
                // What other replicas held is not known any more: each
                // places alone with its share (and its renewals find out
                // when Redis is back).
                fleet.forget_others();
            }
            // Back from an outage: this replica's permits count at once.
            if back || renewed.elapsed() >= ttl / 3 {
                renewed = Instant::now();
                fleet.renew().await;
            }
        }
    }

    /// Forgets what the other replicas hold, drain and want.
    fn forget_others(&self) {
        let changed = {
            let mut state = lock(&self.state);
            let mut changed = !state.remote_heads.is_empty();
            state.remote_heads.clear();
            for up in &mut state.ups {
                changed |= !up.remote.is_empty() || up.remote_switching.is_some();
                up.remote.clear();
                up.remote_switching = None;
            }
            changed
        };
        if changed {
            self.kick();
        }
    }

    async fn renew(&self) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        for index in 0..self.specs.len() {
            let mut extra = vec![self.draining(index).unwrap_or_default()];
            extra.extend(
                lock(&shared.held)[index]
                    .iter()
                    .map(|(lease, model)| format!("{lease}\t{model}")),
            );
            let _ = self.run(index, "renew", extra).await;
        }
        self.kick();
    }

    /// The model this replica drains upstream `index` for, while
    /// requests it could serve wait for it here.
    fn draining(&self, index: usize) -> Option<String> {
        let state = lock(&self.state);
        let up = state.ups.get(index)?;
        Self::switching(&state, up).map(|m| m.to_string())
    }

    /// Hears the other replicas: a permit given back (the upstream's
    /// state is read and what waits tries again), an upstream failing.
    pub(super) async fn hear_replicas(fleet: Weak<Self>) {
        let Some(state) = fleet
            .upgrade()
            .and_then(|f| f.shared.get().map(|s| s.state.clone()))
        else {
            return;
        };
        let mut pushed = state.subscribe(FREED).await;
        let _ = state.subscribe(DOWN).await;
        loop {
            let message = match pushed.recv().await {
                Ok(message) => message,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(fleet) = fleet.upgrade() else {
                return;
            };
            fleet.heard(&message, state.replica()).await;
        }
    }

    async fn heard(&self, message: &corral_core::Pushed, replica: &str) {
        if message.channel == FREED {
            if let Some(index) = self.index_of(&message.payload) {
                let _ = self.run(index, "peek", Vec::new()).await;
                self.kick();
            }
        } else if message.channel == DOWN {
            let from_other = message
                .payload
                .split_once('\t')
                .filter(|(from, _)| *from != replica);
            if let Some(index) = from_other.and_then(|(_, name)| self.index_of(name)) {
                self.drain_quietly(index);
            }
        }
    }
}
