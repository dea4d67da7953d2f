//! Where the next request for a model goes: a pure decision over what
//! each upstream can take now.

use std::time::Duration;

use tokio::time::Instant;

/// How urgent a waiting request is: its effective priority level (0 is
/// priority 1, raised one step per aging period waited), then how long it
/// has waited. Smaller is more urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Urgency {
    /// The effective level, 0 (priority 1) to 9.
    pub level: usize,
    /// When it started waiting.
    pub since: Instant,
}

impl Urgency {
    /// Whether `self` should displace work of urgency `other` even though
    /// serving `self` costs a model load of `margin`: a better level, or
    /// the same level and waiting longer by more than `margin`.
    pub(crate) fn beats(self, other: Option<Urgency>, margin: Duration) -> bool {
        match other {
            None => true,
            Some(other) => {
                self.level < other.level
                    || (self.level == other.level && self.since + margin < other.since)
            }
        }
    }
}

/// What the request asking for a permit brings to the decision.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// How urgent it is.
    pub urgency: Urgency,
    /// How many requests for its model wait, itself included.
    pub waiting: usize,
    /// Its conversation (`X-Session-Id`), hashed: it goes back to the
    /// upstream the conversation last ran on while that one has a permit
    /// free, so the server's prompt cache is reused.
    pub session: Option<u64>,
    /// How long a permit for its model is held on average, once measured:
    /// what waiting for one where the model is loaded would cost.
    pub hold: Option<Duration>,
}

impl Want {
    /// A request moved off an upstream that failed it: it ran already,
    /// so it goes ahead of everything that waits.
    pub(crate) fn moved() -> Self {
        Self {
            urgency: Urgency {
                level: 0,
                since: Instant::now(),
            },
            waiting: usize::MAX,
            session: None,
            hold: None,
        }
    }
}

/// One upstream as the decision sees it, for the model asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Up, and not drained.
    pub(crate) healthy: bool,
    /// It may serve the model.
    pub(crate) serves: bool,
    /// Requests the model runs at once here.
    pub(crate) capacity: usize,
    /// Requests of the model running here.
    pub(crate) in_flight: usize,
    /// The model is loaded here.
    pub(crate) loaded: bool,
    /// Requests of every model running here.
    pub(crate) busy: usize,
    /// Another model may be loaded here without evicting one.
    pub(crate) room: bool,
    /// An idle model that may be evicted for this one.
    pub(crate) evictable: Option<std::sync::Arc<str>>,
    /// The model this upstream is being drained for, if any.
    pub(crate) switching: Option<std::sync::Arc<str>>,
    /// The most urgent request waiting for a model loaded here (none
    /// waiting: `None`).
    pub(crate) resident_urgency: Option<Urgency>,
    /// The operator's weight: a heavier upstream takes more.
    pub(crate) weight: f64,
    /// The request's conversation last ran here.
    pub(crate) sticky: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Choice {
    /// Run it on `upstream` now; `load` when the model must be loaded
    /// there first, evicting `evict` if named.
    Place {
        upstream: usize,
        load: bool,
        evict: Option<std::sync::Arc<str>>,
    },
    /// Nothing can take it now, but `upstream` should stop taking work for
    /// its models so this one can be loaded once they finish.
    Switch(usize),
    /// Wait for a permit to come back.
    Wait,
}

/// Where a request for `model` goes, in this order:
///
/// 1. an upstream with the model loaded and a free permit (the one its
///    conversation ran on, else the least busy for its weight);
/// 2. if the model is loaded somewhere and its permits there come back
///    sooner than a load would take (`margin`; the average hold times
///    the rounds of waiting requests), wait for one of them;
/// 3. an upstream where loading it costs least: room for another model
///    first, else one whose evicted model is idle and wanted by nobody;
/// 4. none, and the model is loaded nowhere: the busy upstream whose
///    work is least urgent is drained for it if it is more urgent than
///    that work by more than `margin` (the cost of a load), else it
///    waits.
///
/// A busy model is never evicted: an upstream is drained first.
pub(crate) fn choose(model: &str, want: &Want, views: &[View], margin: Duration) -> Choice {
    let open_to = |v: &View| v.switching.as_deref().is_none_or(|s| s == model);
    let ratio = |v: &View| (v.in_flight as f64 + 1.0) / (v.capacity.max(1) as f64 * v.weight);
    // 1. Loaded with a free permit.
    let loaded_free = views.iter().enumerate().filter(|(_, v)| {
        v.healthy && v.serves && v.loaded && v.in_flight < v.capacity && open_to(v)
    });
    let best = loaded_free.min_by(|(_, va), (_, vb)| {
        (!va.sticky, ratio(va), va.busy)
            .partial_cmp(&(!vb.sticky, ratio(vb), vb.busy))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some((upstream, _)) = best {
        return Choice::Place {
            upstream,
            load: false,
            evict: None,
        };
    }
    // 2. Loaded, busy: wait if that is shorter than a load.
    let loaded_capacity: usize = views
        .iter()
        .filter(|v| v.healthy && v.serves && v.loaded && open_to(v))
        .map(|v| v.capacity)
        .sum();
    if loaded_capacity > 0 {
        if let Some(hold) = want.hold {
            let rounds = want.waiting.div_ceil(loaded_capacity).max(1);
            if hold.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX)) < margin {
                return Choice::Wait;
            }
        }
    }
    // 3. Load it where that costs least.
    let loadable = views.iter().enumerate().filter(|(_, v)| {
        v.healthy && v.serves && !v.loaded && open_to(v) && (v.room || v.evictable.is_some())
    });
    let best = loadable.min_by(|(_, a), (_, b)| {
        (!a.room, a.busy as f64 / a.weight)
            .partial_cmp(&(!b.room, b.busy as f64 / b.weight))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some((upstream, view)) = best {
        return Choice::Place {
            upstream,
            load: true,
            evict: if view.room {
                None
            } else {
                view.evictable.clone()
            },
        };
    }
    // 4. Drain the upstream whose work matters least.
    drain_for(model, want, views, margin, loaded_capacity)
}

/// Rule 4 of [`choose`]: the upstream to drain for a model loaded nowhere
/// (`loaded_capacity` 0), if the request matters more than its work by
/// more than a load costs; none twice for one model.
fn drain_for(
    model: &str,
    want: &Want,
    views: &[View],
    margin: Duration,
    loaded_capacity: usize,
) -> Choice {
    if loaded_capacity > 0
        || views
            .iter()
            .any(|v| v.healthy && v.switching.as_deref() == Some(model))
    {
        return Choice::Wait;
    }
    let drainable = views.iter().enumerate().filter(|(_, v)| {
        v.healthy
            && v.serves
            && !v.loaded
            && v.switching.is_none()
            && want.urgency.beats(v.resident_urgency, margin)
    });
    // Nobody waiting for its models first, then the least urgent work.
    let best = drainable.max_by_key(|(_, v)| {
        (
            v.resident_urgency.is_none(),
            v.resident_urgency,
            std::cmp::Reverse(v.busy),
        )
    });
    match best {
        Some((upstream, _)) => Choice::Switch(upstream),
        None => Choice::Wait,
    }
}

#[cfg(test)]
mod tests;
