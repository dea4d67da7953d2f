//! The memory of request ids already seen, so a captured request cannot
//! be sent again while its timestamp is still fresh.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use corral_core::BoxError;
use tokio::time::Instant;

/// What [`ReplayStore::remember`] returns: whether the id was new.
pub type Remembered = Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>>;

/// Where seen request ids are kept: in this process, or (with the Redis
/// backend) shared by every replica.
pub trait ReplayStore: Send + Sync + 'static {
    /// Remembers `key` for `ttl`; `true` if it was not already
    /// remembered.
    fn remember(&self, key: String, ttl: Duration) -> Remembered;
}

/// Seen ids in memory, at most `capacity` of them.
///
/// Past the capacity the oldest id is forgotten early (and counted in
/// [`MemoryReplay::evicted`]): a sustained rate above capacity over twice
/// the freshness window would otherwise grow memory without bound. Size
/// the capacity for the fleet's request rate times that window.
///
/// ```
/// use corral_auth::{MemoryReplay, ReplayStore};
/// use std::time::Duration;
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// rt.block_on(async {
///     let seen = MemoryReplay::new(1000);
///     let ttl = Duration::from_secs(600);
///     assert!(seen.remember("planner\nreq-1".into(), ttl).await.unwrap());
///     assert!(!seen.remember("planner\nreq-1".into(), ttl).await.unwrap());
/// });
/// ```
#[derive(Debug)]
pub struct MemoryReplay {
    capacity: usize,
    state: Mutex<State>,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    expires: HashMap<String, Instant>,
    /// Keys in the order they were remembered, with their expiry; ids
    /// share one lifetime per layer, so this is also expiry order.
    order: VecDeque<(Instant, String)>,
}

impl MemoryReplay {
    /// A memory of at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            evicted: AtomicU64::new(0),
        }
    }

    /// Ids forgotten before their time for lack of room.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().expires.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation completes before anything can panic.
        corral_core::lock(&self.state)
    }

    fn remember_now(&self, key: String, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        while let Some((expiry, _)) = state.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((expiry, old)) = state.order.pop_front() {
                // Only forget it if it was not remembered again since.
                if state.expires.get(&old) == Some(&expiry) {
                    state.expires.remove(&old);
                }
            }
        }
        if state.expires.get(&key).is_some_and(|e| *e > now) {
            return false;
        }
        let expiry = now + ttl;
        state.expires.insert(key.clone(), expiry);
        state.order.push_back((expiry, key));
        while state.expires.len() > self.capacity {
            let Some((expiry, old)) = state.order.pop_front() else {
                break;
            };
            if state.expires.get(&old) == Some(&expiry) {
                state.expires.remove(&old);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::REPLAY_EVICTIONS_TOTAL).increment(1);
            }
        }
        true
    }
}

impl ReplayStore for MemoryReplay {
    fn remember(&self, key: String, ttl: Duration) -> Remembered {
        let new = self.remember_now(key, ttl);
        Box::pin(std::future::ready(Ok(new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_id_is_remembered_for_its_lifetime_then_forgotten() {
        let seen = MemoryReplay::new(10);
        let ttl = Duration::from_secs(60);
        assert!(seen.remember("a".into(), ttl).await.unwrap());
        assert!(!seen.remember("a".into(), ttl).await.unwrap());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!seen.remember("a".into(), ttl).await.unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(seen.remember("a".into(), ttl).await.unwrap());
        assert_eq!(
            seen.len(),
            1,
            "the expired entry was dropped, not kept twice"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_capacity_the_oldest_id_is_forgotten_and_counted() {
        let seen = MemoryReplay::new(3);
        let ttl = Duration::from_secs(60);
        for key in ["a", "b", "c", "d"] {
            assert!(seen.remember(key.into(), ttl).await.unwrap());
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.evicted(), 1);
        assert!(!seen.remember("d".into(), ttl).await.unwrap());
        assert!(
            seen.remember("a".into(), ttl).await.unwrap(),
            "a was evicted"
        );
    }
}
