//! Where answers are kept: a size-bounded in-memory map by default, behind
//! a trait a shared store (Redis) can implement.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use crate::answer::Answer;
use crate::key::Key;

/// A kept answer and how long it may be served.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The answer.
    pub answer: Answer,
    /// Until when it is fresh.
    pub fresh_until: Instant,
    /// Until when it may be served stale (when degradation allows).
    pub stale_until: Instant,
}

/// An entry found at once (memory), or one on its way (Redis).
pub enum Lookup {
    /// Known now.
    Now(Option<Arc<Entry>>),
    /// Being looked up elsewhere.
    Later(Pin<Box<dyn Future<Output = Option<Arc<Entry>>> + Send>>),
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Now(entry) => f.debug_tuple("Now").field(&entry.is_some()).finish(),
            Lookup::Later(_) => f.write_str("Later"),
        }
    }
}

impl Lookup {
    /// The entry, however it comes.
    pub async fn found(self) -> Option<Arc<Entry>> {
        match self {
            Lookup::Now(entry) => entry,
            Lookup::Later(entry) => entry.await,
        }
    }
}

/// Who generates an answer no replica has yet.
pub enum Claim {
    /// This replica: the others that ask meanwhile wait for it. Dropping
    /// the guard (once the answer is kept, or it will not be) lets them
    /// go on.
    Generate(ClaimGuard),
    /// Another replica generates it: resolves when it has kept it, gave
    /// up, or went away. Then look the key up again.
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Generate(_) => f.write_str("Generate"),
            Claim::Wait(_) => f.write_str("Wait"),
        }
    }
}

/// What a replica that generates an answer holds for the others; it
/// tells them when dropped.
#[derive(Default)]
pub struct ClaimGuard {
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl ClaimGuard {
    /// A guard that runs `release` when dropped.
    pub fn new(release: impl FnOnce() + Send + 'static) -> Self {
        Self {
            on_drop: Some(Box::new(release)),
        }
    }
}

corral_core::impl_debug!(ClaimGuard {
    shared: on_drop.is_some()
});

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(release) = self.on_drop.take() {
            release();
        }
    }
}

/// A store of answers.
pub trait CacheStore: Send + Sync + 'static {
    /// The entry under `key`, if any is kept.
    fn get(&self, key: &Key) -> Lookup;
    /// Keeps `entry` under `key`.
    fn insert(&self, key: Key, entry: Entry);
    /// Forgets `key`.
    fn remove(&self, key: &Key);
    /// How many entries and bytes are kept.
    fn size(&self) -> (u64, u64);

    /// Whether this replica generates the answer under `key` for a
    /// request of `priority` (1 highest) or waits for another replica that
    /// does: identical requests coalesce across replicas as they do
    /// within one (its flights). A request more urgent than the one
    /// generating does not wait. One process alone: always
    /// [`Claim::Generate`].
    fn claim(&self, key: &Key, priority: u8) -> Pin<Box<dyn Future<Output = Claim> + Send>> {
        let _ = (key, priority);
        Box::pin(std::future::ready(Claim::Generate(ClaimGuard::default())))
    }
}

/// Answers in memory, at most `max_bytes` of them, the least recently
/// used evicted first (moka with a weigher).
pub struct MemoryCache {
    cache: moka::sync::Cache<Key, Arc<Entry>>,
}

corral_core::impl_debug!(MemoryCache {
    entries: cache.entry_count()
});

impl MemoryCache {
    /// A store bounded by `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_key: &Key, entry: &Arc<Entry>| {
                    u32::try_from(entry.answer.weight() + 64).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }
}

impl MemoryCache {
    /// The entry under `key`, if any is kept and not past its stale
    /// lifetime.
    pub fn entry(&self, key: &Key) -> Option<Arc<Entry>> {
        let entry = self.cache.get(key)?;
        if Instant::now() >= entry.stale_until {
            self.cache.invalidate(key);
            return None;
        }
        Some(entry)
    }
}

impl CacheStore for MemoryCache {
    fn get(&self, key: &Key) -> Lookup {
        Lookup::Now(self.entry(key))
    }

    fn insert(&self, key: Key, entry: Entry) {
        self.cache.insert(key, Arc::new(entry));
    }

    fn remove(&self, key: &Key) {
        self.cache.invalidate(key);
    }

    fn size(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
