//! Upstreams failing and coming back, and what the proxy learns of
//! them: what is loaded (`/api/ps`), what they have (`/api/tags`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use corral_core::lock;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::fleet::{release, Displaced, Fleet, Resident, Slot, State};
use crate::metrics;
use crate::spec::ANY_MODEL;

/// Failures before any answer, in a row, that drain an upstream which
/// still accepts connections (a refused connection drains it at once).
pub const FAILURES_BEFORE_DRAINING: u32 = 3;

impl Fleet {
    /// The request on `slot` failed before any answer (`connect`: its
    /// connection was refused): it gets a permit on another upstream that
    /// may serve its model as soon as one is free, ahead of every waiting
    /// request. The upstream is drained at once if it refused the
    /// connection, else after [`FAILURES_BEFORE_DRAINING`] in a row, until
    /// a probe finds it answering. `Err(slot)` when no other upstream up
    /// may serve the model: the failure is the request's.
    pub fn failover(&self, slot: Slot, connect: bool) -> Result<oneshot::Receiver<Slot>, Slot> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let elsewhere = (0..self.specs.len()).any(|u| {
            u != slot.upstream && state.ups[u].healthy && self.serves(&state, u, &slot.model)
        });
        if !elsewhere {
            return Err(slot);
        }
        self.count_failure(&mut state, slot.upstream, connect);
        ::metrics::counter!(metrics::FAILOVERS_TOTAL, "upstream" => self.specs[slot.upstream].name.to_string())
            .increment(1);
        let (reply, answer) = oneshot::channel();
        self.release_shared(&slot.key());
        release(&mut state, &slot, now);
        state.displaced.push_back(Displaced {
            model: slot.model.clone(),
            avoid: Some(slot.upstream),
            want: crate::Want::moved(),
            reply,
        });
        self.serve_displaced(&mut state, now);
        Ok(answer)
    }

    /// A request nobody scheduled failed on upstream `index` before any
    /// answer (`connect`: refused).
    pub fn failed(&self, index: usize, connect: bool) {
        let mut state = lock(&self.state);
        self.count_failure(&mut state, index, connect);
    }

    /// Upstream `index` answered a request.
    pub fn answered(&self, index: usize) {
        if let Some(up) = lock(&self.state).ups.get_mut(index) {
            up.failures = 0;
        }
    }

    fn count_failure(&self, state: &mut State, index: usize, connect: bool) {
        let Some(up) = state.ups.get_mut(index) else {
            return;
        };
        up.failures += 1;
        if (connect || up.failures >= FAILURES_BEFORE_DRAINING) && self.mark(state, index, false) {
            self.announce_down(index);
        }
    }

    /// Upstream `index` answers its probe (or stopped answering).
    pub fn set_healthy(&self, index: usize, healthy: bool) {
        let changed = {
            let mut state = lock(&self.state);
            if healthy {
                if let Some(up) = state.ups.get_mut(index) {
                    up.failures = 0;
                }
            }
            self.mark(&mut state, index, healthy)
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
            // Whatever it had loaded is gone with it (a probe tells once
            // it is back); what still runs there is given back by its
            // requests.
            up.residents.retain(|_, r| r.in_flight > 0);
            up.switching = None;
            tracing::warn!(upstream = %name, "upstream failed: drained until it answers again");
        }
        true
    }

    /// Another replica found upstream `index` failing: drained here too
    /// until this replica's probe finds it answering.
    #[cfg(feature = "redis")]
    pub(crate) fn drain_quietly(&self, index: usize) {
        let mut state = lock(&self.state);
        self.mark(&mut state, index, false);
    }

    /// Whether upstream `index` takes requests.
    pub fn is_healthy(&self, index: usize) -> bool {
        lock(&self.state).ups.get(index).is_some_and(|u| u.healthy)
    }

    /// A mark to take before asking upstream `index` what it has loaded,
    /// for [`Fleet::observe_loaded`].
    pub fn loads_sent(&self, index: usize) -> u64 {
        lock(&self.state).ups.get(index).map_or(0, |u| u.loads)
    }

    /// What upstream `index` has loaded, as its `/api/ps` lists it:
    /// `(canonical name, expires at)`, asked after [`Fleet::loads_sent`]
    /// said `asked`. Models it no longer lists and nothing runs on are
    /// taken as unloaded. An answer asked before Corral sent the upstream
    /// another load is stale (it may list the model that load evicted)
    /// and is ignored.
    pub fn observe_loaded(
        &self,
        index: usize,
        asked: u64,
        loaded: Vec<(String, Option<SystemTime>)>,
    ) {
        let now = Instant::now();
        {
            let mut state = lock(&self.state);
            let Some(up) = state.ups.get_mut(index) else {
                return;
            };
            if up.loads != asked {
                return;
            }
            // Evicted by Corral, still listed while the server unloads it.
            up.evicted
                .retain(|model| loaded.iter().any(|(m, _)| m == &**model));
            let evicted = up.evicted.clone();
            let loaded: Vec<_> = loaded
                .into_iter()
                .filter(|(m, _)| !evicted.contains(m.as_str()))
                .collect();
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
                        streaming: 0,
                        last_used: now,
                        expires_at: None,
                    });
                resident.expires_at = expires_at;
            }
        }
        self.kick();
    }

    /// The models upstream `index` has, as its `/api/tags` lists them
    /// (canonical names): it is sent no request for another.
    pub fn observe_available(&self, index: usize, models: Vec<String>) {
        let changed = {
            let mut state = lock(&self.state);
            let Some(up) = state.ups.get_mut(index) else {
                return;
            };
            let models: HashSet<Arc<str>> = models.into_iter().map(Arc::from).collect();
            let changed = up.available.as_ref() != Some(&models);
            up.available = Some(models);
            changed
        };
        if changed {
            self.kick();
        }
    }
}
