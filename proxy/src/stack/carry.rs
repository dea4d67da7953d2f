//! What a reload carries over from the stack serving now: each layer
//! whose options and what it reads of the configuration are unchanged
//! ([`LayerKind::reads`]), as it is, with the handles the admin API
//! drives; and a new capacity, set on the scheduler carried over.
//!
//! A layer carried over is the same value: its queue keeps its order,
//! running requests keep their permits, caches, counters, breakers and
//! quotas go on. The scheduler decides for the rest: the layers around
//! it read its load through the stack's load cell, so when it is built
//! anew (or added, or removed) every layer is built anew with a new cell,
//! and the requests already in the old one finish there.

use std::sync::Arc;

use crate::config::{Config, LayerConfig};
use crate::registry::LayerKind;
use crate::svc::{Controls, StackLayer};

use super::Stack;

/// A layer as built, with what it was built from.
#[derive(Clone)]
pub(crate) struct Built {
    pub(crate) kind: &'static str,
    pub(crate) options: toml::Table,
    pub(crate) reads: String,
    pub(crate) layer: StackLayer,
}

/// Aborts its task when dropped.
pub(crate) struct StopOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a layer is built anew rather than carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anew {
    /// The stack before had no such layer there.
    Added,
    /// The scheduler is built anew, added or removed.
    Scheduler,
    /// Its options changed.
    Options,
    /// What it reads of the rest of the configuration changed.
    Reads,
}

impl Anew {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "new in the stack",
            Self::Scheduler => {
                "the scheduler is built anew, and the layers reading its load with it"
            }
            Self::Options => "its options changed",
            Self::Reads => "what it reads of [[classes]], [identity] or [upstream] changed",
        }
    }
}

/// For each layer of the new stack, the layer of the old to carry over,
/// or why not.
pub(crate) struct Plan {
    decisions: Vec<Result<Built, Anew>>,
    keeps_load: bool,
    previous: Arc<Controls>,
    capacity: (usize, usize),
    removed: Vec<&'static str>,
}

impl Plan {
    /// Decides, for `listed` (of `kinds`) in `config`, what carries over
    /// from `previous`, built from `before`. The n-th layer of a kind
    /// takes the place of the old stack's n-th of that kind.
    pub(crate) fn new(
        previous: &Stack,
        before: &Config,
        config: &Config,
        listed: &[LayerConfig],
        kinds: &[&LayerKind],
    ) -> Self {
        let old = |at: usize| -> Option<&Built> {
            let kind = kinds[at].name;
            let nth = kinds[..at].iter().filter(|k| k.name == kind).count();
            previous.built.iter().filter(|b| b.kind == kind).nth(nth)
        };
        let fits = |at: usize| -> Result<Built, Anew> {
            let old = old(at).ok_or(Anew::Added)?;
            if old.options != listed[at].options {
                return Err(Anew::Options);
            }
            if old.reads != (kinds[at].reads)(config) {
                return Err(Anew::Reads);
            }
            Ok(old.clone())
        };
        let had_scheduler = previous.built.iter().any(|b| b.kind == "priority");
        let scheduler = kinds.iter().position(|k| k.name == "priority");
        let keeps_load = match (had_scheduler, scheduler) {
            (true, Some(at)) => fits(at).is_ok(),
            (false, None) => true,
            _ => false,
        };
        let decisions = (0..listed.len())
            .map(|at| match fits(at) {
                Ok(_) if !keeps_load => Err(Anew::Scheduler),
                fit => fit,
            })
            .collect();
        let mut removed: Vec<&'static str> = previous.built.iter().map(|b| b.kind).collect();
        for kind in kinds {
            if let Some(at) = removed.iter().position(|k| *k == kind.name) {
                removed.remove(at);
            }
        }
        Self {
            decisions,
            keeps_load,
            previous: previous.controls.clone(),
            capacity: (before.capacity().0, config.capacity().0),
            removed,
        }
    }

    /// Whether the scheduler's load cell carries over (the scheduler
    /// does, or neither stack has one).
    pub(crate) fn keeps_load(&self) -> bool {
        self.keeps_load
    }

    /// Layer `at`, carried over, its admin handle put in `controls`;
    /// `None` when it is to be built anew.
    pub(crate) fn carried(&self, at: usize, controls: &Controls) -> Option<StackLayer> {
        let built = self.decisions.get(at)?.as_ref().ok()?;
        hand_over(built.kind, &self.previous, controls);
        Some(built.layer.clone())
    }

    /// What became of layer `at`, of `kind`, in a sentence.
    pub(crate) fn note(&self, at: usize, kind: &str) -> String {
        match self.decisions.get(at) {
            Some(Ok(_)) => format!("layers[{at}] {kind}: carried over, state and all"),
            Some(Err(why)) => format!(
                "layers[{at}] {kind}: built anew ({}); its state starts empty",
                why.as_str()
            ),
            None => format!("layers[{at}] {kind}: built anew"),
        }
    }

    /// Once the layers are built: a new capacity set on the scheduler
    /// carried over, the layers gone; in sentences.
    pub(crate) fn after(&self, config: &Config, controls: &Controls) -> Vec<String> {
        let mut notes = Vec::new();
        let (before, now) = self.capacity;
        let carried_scheduler =
            self.keeps_load && config.layers().iter().any(|l| l.kind == "priority");
        if before != now && carried_scheduler {
            if let Some(scheduler) = controls.scheduler.get() {
                scheduler.set_capacity(now);
                notes.push(format!("[upstream] capacity: {before} → {now}"));
            }
        }
        for kind in &self.removed {
            notes.push(format!("{kind}: removed from the stack"));
        }
        notes
    }
}

/// Whether `config`'s scheduler is `previous`'s as it is: both stacks
/// have none, or both one of the same options reading the same (a
/// reload that would build another is refused: the old one's running
/// permits would not count against the new one's, nor, with shared
/// state, its leases against the new one's).
pub(crate) fn keeps_scheduler(previous: &Stack, config: &Config) -> bool {
    let old = previous.built.iter().find(|b| b.kind == "priority");
    let listed = config.layers();
    let new = listed.iter().find(|l| l.kind == "priority");
    match (old, new) {
        (None, None) => true,
        (Some(old), Some(new)) => {
            old.options == new.options && old.reads == crate::layers::reads::priority(config)
        }
        _ => false,
    }
}

/// Puts the admin handle of a carried layer of `kind` from `previous`
/// into `controls`.
fn hand_over(kind: &str, previous: &Controls, controls: &Controls) {
    fn copy<T: Clone>(from: &std::sync::OnceLock<T>, to: &std::sync::OnceLock<T>) {
        if let Some(value) = from.get() {
            let _ = to.set(value.clone());
        }
    }
    match kind {
        "priority" => copy(&previous.scheduler, &controls.scheduler),
        "degrade" => copy(&previous.degrade, &controls.degrade),
        "cache" => copy(&previous.cache, &controls.cache),
        "breaker" => copy(&previous.breaker, &controls.breaker),
        "auth" => copy(&previous.auth, &controls.auth),
        "ratelimit" => copy(&previous.budgets, &controls.budgets),
        _ => {}
    }
}
