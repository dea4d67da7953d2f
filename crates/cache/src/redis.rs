//! Answers in Redis, shared by every replica, with this replica's memory
//! in front.

use std::sync::Arc;
use std::time::Duration;

use corral_core::RedisState;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::key::Key;
use crate::store::{CacheStore, Entry, Lookup, MemoryStore};

/// Answers kept in Redis (`<prefix>cache:<key in hex>`, expiring with the
/// entry's stale lifetime), so an answer one replica generated is served
/// by all of them.
///
/// A [`MemoryStore`] of this replica sits in front: a hit there is
/// answered without a round trip (an entry never changes: the same key
/// is the same deterministic answer), a hit in Redis is copied into it,
/// and it answers alone while Redis is away. Redis' own `maxmemory`
/// bounds the shared store; [`CacheStore::size`] counts this replica's
/// memory. Identical requests coalesce within a replica, not across
/// replicas: the second replica to ask while the first is generating
/// calls the upstream too.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use corral_cache::{CacheConfig, CacheLayer, RedisCache};
/// use corral_core::RedisState;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let state = RedisState::new("redis://127.0.0.1:6379", "corral:", "replica-1", Duration::from_millis(200)).unwrap();
/// let config = CacheConfig::default();
/// let store = RedisCache::new(state, config.max_bytes);
/// let layer = CacheLayer::with_store(&config, Arc::new(store)).unwrap();
/// # drop(layer);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisCache {
    state: RedisState,
    memory: Arc<MemoryStore>,
}

/// An entry as Redis keeps it: the answer, and its lifetimes as Unix
/// milliseconds (replicas share a wall clock, not an `Instant`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    answer: Answer,
    fresh_until_ms: u64,
    stale_until_ms: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisCache {
    /// A store under `state`'s prefix + `cache:`, with up to `max_bytes`
    /// of answers in this replica's memory in front.
    pub fn new(state: RedisState, max_bytes: u64) -> Self {
        Self {
            state,
            memory: Arc::new(MemoryStore::new(max_bytes)),
        }
    }

    fn redis_key(&self, key: &Key) -> String {
        self.state.key(&format!("cache:{}", hex(key)))
    }
}

impl CacheStore for RedisCache {
    fn get(&self, key: &Key) -> Lookup {
        let local = self.memory.entry(key);
        let fresh_here = local
            .as_ref()
            .is_some_and(|e| Instant::now() < e.fresh_until);
        if fresh_here || !self.state.is_up() {
            return Lookup::Now(local);
        }
        let store = self.clone();
        let key = *key;
        Lookup::Later(Box::pin(async move {
            let mut command = redis::cmd("GET");
            command.arg(store.redis_key(&key));
            let Ok(Some(json)) = store.state.query::<Option<String>>(&command).await else {
                return local;
            };
            let Ok(stored) = serde_json::from_str::<Stored>(&json) else {
                return local;
            };
            let now_ms = unix_ms();
            let now = Instant::now();
            let at = |ms: u64| now + Duration::from_millis(ms.saturating_sub(now_ms));
            let entry = Entry {
                answer: stored.answer,
                fresh_until: at(stored.fresh_until_ms),
                stale_until: at(stored.stale_until_ms),
            };
            if entry.stale_until <= now {
                return local;
            }
            store.memory.insert(key, entry.clone());
            Some(Arc::new(entry))
        }))
    }

    fn insert(&self, key: Key, entry: Entry) {
        let now = Instant::now();
        let now_ms = unix_ms();
        let ms = |until: Instant| {
            now_ms.saturating_add(
                u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
            )
        };
        let stored = Stored {
            answer: entry.answer.clone(),
            fresh_until_ms: ms(entry.fresh_until),
            stale_until_ms: ms(entry.stale_until),
        };
        let lifetime = entry.stale_until.saturating_duration_since(now);
        self.memory.insert(key, entry);
        let (Ok(json), Ok(runtime)) = (
            serde_json::to_string(&stored),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        if lifetime.is_zero() || !self.state.is_up() {
            return;
        }
        let mut command = redis::cmd("SET");
        command.arg(self.redis_key(&key)).arg(json).arg("PX").arg(
            u64::try_from(lifetime.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let state = self.state.clone();
        runtime.spawn(async move {
            // Not kept in Redis: the other replicas generate it again.
            let _ = state.query::<()>(&command).await;
        });
    }

    fn remove(&self, key: &Key) {
        self.memory.remove(key);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut command = redis::cmd("DEL");
        command.arg(self.redis_key(key));
        let state = self.state.clone();
        runtime.spawn(async move {
            let _ = state.query::<i64>(&command).await;
        });
    }

    fn size(&self) -> (u64, u64) {
        self.memory.size()
    }
}
