//! How an event reaches the log: held by the thread that recorded it,
//! in a shard of its own, and merged into the log in batches.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use corral_core::lock;
use crossbeam_utils::CachePadded;

use super::{now, Inner, State};
use crate::packed::Packed;
use crate::projection::AgentUsage;

/// Events a shard holds when it wakes the merging thread.
pub(super) const BATCH: usize = 256;

/// Events a shard holds at most: past it (the merging thread is behind,
/// or could not start) the recording thread merges them itself.
pub(super) const SHARD_LIMIT: usize = 4096;

/// An event numbered and stamped by the thread that recorded it, not yet
/// in the log's [`State`].
pub(super) struct Held {
    id: u64,
    timestamp: f64,
    kind: &'static str,
    agent: Option<Range<usize>>,
    packed: Packed,
    /// What it adds to its agent's usage, counted as it was recorded
    /// (from the fields at hand, not read back from `packed`).
    counted: AgentUsage,
    class: Option<Range<usize>>,
}

/// The events some threads recorded since the last merge. The agents'
/// names are written one after another in one string: no allocation per
/// event once the buffers have grown.
#[derive(Default)]
pub(super) struct Shard {
    held: Vec<Held>,
    names: String,
}

impl State {
    /// Takes every event the shards hold and inserts them in the order
    /// of their ids. The shards are all locked at once: an event is
    /// numbered and held under its shard's lock, so no id below the
    /// highest taken can still be on its way, and ids in the log only
    /// grow, without gaps. The caller holds the state's lock, so two
    /// merges never interleave.
    pub(super) fn merge(&mut self, shards: &[CachePadded<Mutex<Shard>>]) {
        if self.taken.len() < shards.len() {
            self.taken.resize_with(shards.len(), Shard::default);
        }
        {
            let mut locked: Vec<MutexGuard<'_, Shard>> = shards.iter().map(|s| lock(s)).collect();
            if locked.iter().all(|shard| shard.held.is_empty()) {
                return;
            }
            for (shard, taken) in locked.iter_mut().zip(&mut self.taken) {
                std::mem::swap(&mut **shard, taken);
            }
        }
        let mut taken = std::mem::take(&mut self.taken);
        // Each shard's events are in the order of their ids: merged by
        // taking the lowest of the shards' next ones (two or three
        // shards hold events at most times), each event moved once.
        let mut heads: Vec<_> = taken
            .iter_mut()
            .filter(|shard| !shard.held.is_empty())
            .map(|shard| (shard.held.drain(..).peekable(), &shard.names))
            .collect();
        loop {
            let lowest = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(at, (held, _))| Some((held.peek()?.id, at)))
                .min();
            let Some((_, at)) = lowest else { break };
            let (held, names) = &mut heads[at];
            let Some(held) = held.next() else { break };
            let agent = held.agent.map(|range| &names[range]);
            let class = held.class.map(|range| &names[range]);
            let counted = (&held.counted, class);
            self.insert(
                held.id,
                held.timestamp,
                held.kind,
                agent,
                held.packed,
                counted,
            );
        }
        drop(heads);
        for shard in &mut taken {
            shard.names.clear();
        }
        self.taken = taken;
    }
}

impl Inner {
    /// The state, with every event held merged into it.
    pub(super) fn merged(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        state.merge(&self.shards);
        state
    }

    /// Numbers and stamps an event and holds it in the recording
    /// thread's shard, with what it adds to its agent's usage; its id
    /// and time.
    pub(super) fn hold(
        self: &Arc<Self>,
        kind: &'static str,
        agent: Option<&str>,
        packed: Packed,
        (counted, class): (AgentUsage, Option<&str>),
    ) -> (u64, f64) {
        let timestamp = now();
        let index = shard_index(self.shards.len());
        let mut shard = lock(&self.shards[index]);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut name = |name: &str| {
            let start = shard.names.len();
            shard.names.push_str(name);
            start..shard.names.len()
        };
        let agent = agent.map(&mut name);
        let class = class.map(&mut name);
        shard.held.push(Held {
            id,
            timestamp,
            kind,
            agent,
            packed,
            counted,
            class,
        });
        let held = shard.held.len();
        drop(shard);
        if held == BATCH {
            self.wake_merger();
        } else if held >= SHARD_LIMIT {
            drop(self.merged());
        }
        (id, timestamp)
    }

    /// Wakes the merging thread, started at the first call.
    fn wake_merger(self: &Arc<Self>) {
        let merger = self.merger.get_or_init(|| {
            let log = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("corral-events".into())
                .spawn(move || merge_when_woken(&log))
                .map(|handle| {
                    let thread = handle.thread().clone();
                    *lock(&self.joiner) = Some(handle);
                    thread
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot start the event log's merging thread; requests merge their events"))
                .ok()
        });
        if let Some(merger) = merger {
            merger.unpark();
        }
    }
}

/// The merging thread: merges when woken, until the log is dropped.
fn merge_when_woken(log: &Weak<Inner>) {
    loop {
        std::thread::park();
        let Some(log) = log.upgrade() else { return };
        if log.closed.load(Ordering::Acquire) {
            return;
        }
        drop(log.merged());
    }
}

/// The shard of the calling thread: threads are numbered in the order
/// they first record, and share shards round the ring.
fn shard_index(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.try_with(|index| *index).unwrap_or(0) % shards
}
