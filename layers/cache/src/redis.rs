//! Answers in Redis, shared by every replica, with this replica's memory
//! in front.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::RedisState;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::key::Key;
use crate::store::{CacheStore, Claim, ClaimGuard, Entry, Lookup, MemoryCache};

/// Answers kept in Redis (`<prefix>cache:<key in hex>`, expiring with the
/// entry's stale lifetime), so an answer one replica generated is served
/// by all of them.
///
/// A [`MemoryCache`] of this replica sits in front: a hit there is
/// answered without a round trip (an entry never changes: the same key
/// is the same deterministic answer), a hit in Redis is copied into it,
/// and it answers alone while Redis is away. Redis' own `maxmemory`
/// bounds the shared store; [`CacheStore::size`] counts this replica's
/// memory.
///
/// Identical requests coalesce across replicas too: the first replica to
/// miss claims the key (`SET NX` of `cache:flight:<key>`, kept alive while
/// it generates), the others wait until its answer is in Redis (told on
/// the `cache:done` channel; a claim whose holder died runs out within
/// 30 s) and serve it, marked `X-Corral-Cache: coalesced`. They see the
/// answer once it is whole, not chunk by chunk as joiners on the same
/// replica do.
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
/// let layer = CacheLayer::new(&config).map(|l| l.with_store(Arc::new(store))).unwrap();
/// # drop(layer);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisCache {
    state: RedisState,
    memory: Arc<MemoryCache>,
    /// Keys this replica claimed and has not yet released.
    claims: Arc<Mutex<HashMap<Key, String>>>,
}

/// How long a claim lives without renewal (renewed every third of it).
const CLAIM: Duration = Duration::from_secs(30);
/// The longest a replica waits for another's answer.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The channel a released claim is told on (payload: the key in hex).
const DONE: &str = "cache:done";

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
            memory: Arc::new(MemoryCache::new(max_bytes)),
            claims: Arc::default(),
        }
    }

    fn redis_key(&self, key: &Key) -> String {
        self.state.key(&format!("cache:{}", hex(key)))
    }

    fn claim_key(&self, key: &Key) -> String {
        self.state.key(&format!("cache:flight:{}", hex(key)))
    }

    /// Adds to `pipeline` what tells the waiting replicas `key` is done,
    /// if this replica held its claim.
    fn release(&self, key: &Key, pipeline: &mut redis::Pipeline) -> bool {
        let held = corral_core::lock(&self.claims).remove(key);
        let Some(value) = held else {
            return false;
        };
        pipeline
            .cmd("EVAL")
            .arg(IF_OURS)
            .arg(1)
            .arg(self.claim_key(key))
            .arg(value)
            .arg("DEL")
            .ignore()
            .cmd("PUBLISH")
            .arg(self.state.key(DONE))
            .arg(hex(key))
            .ignore();
        true
    }

    /// Resolves when the replica that claimed `key` released it, its
    /// claim ran out, or [`MAX_WAIT`] passed.
    async fn wait_for(self, key: Key) {
        let mut pushed = self.state.subscribe(DONE).await;
        let name = hex(&key);
        let claim = self.claim_key(&key);
        let answer = self.redis_key(&key);
        // The first tick checks at once: the claim may have been released
        // before this replica subscribed.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let deadline = tokio::time::sleep(MAX_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                message = pushed.recv() => match message {
                    Ok(message) if message.channel == DONE && message.payload == name => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = check.tick() => {
                    // Gone, or the answer is there already (a release that
                    // was lost leaves the claim until it runs out).
                    let mut pipeline = redis::pipe();
                    pipeline.cmd("EXISTS").arg(&claim).cmd("EXISTS").arg(&answer);
                    match self.state.pipeline::<(i64, i64)>(&pipeline).await {
                        Ok((1, 0)) => {}
                        _ => return,
                    }
                }
                () = &mut deadline => return,
            }
        }
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
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The entry, then the release of this replica's claim, in one
        // transaction: a replica told the key is done finds it.
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        let json = serde_json::to_string(&stored);
        let writes = match &json {
            Ok(json) if !lifetime.is_zero() => {
                pipeline
                    .cmd("SET")
                    .arg(self.redis_key(&key))
                    .arg(json)
                    .arg("PX")
                    .arg(
                        u64::try_from(lifetime.as_millis())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    )
                    .ignore();
                true
            }
            _ => false,
        };
        let released = self.release(&key, &mut pipeline);
        if !writes && !released {
            return;
        }
        let state = self.state.clone();
        runtime.spawn(async move {
            // Not kept in Redis: the other replicas generate it again.
            let _ = state.pipeline::<()>(&pipeline).await;
        });
    }

    fn claim(&self, key: &Key, priority: u8) -> Pin<Box<dyn Future<Output = Claim> + Send>> {
        if !self.state.is_up() {
            return Box::pin(std::future::ready(Claim::Generate(ClaimGuard::default())));
        }
        let store = self.clone();
        let key = *key;
        Box::pin(async move {
            let claim = store.claim_key(&key);
            // `NX GET`: claimed when there was no holder; else the holder,
            // `replica priority`.
            let value = format!("{} {priority}", store.state.replica());
            let mut set = redis::cmd("SET");
            set.arg(&claim)
                .arg(&value)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(CLAIM.as_millis() as u64);
            match store.state.query::<Option<String>>(&set).await {
                Ok(None) => {
                    corral_core::lock(&store.claims).insert(key, value.clone());
                    let keeper = tokio::spawn(keep_claim(store.state.clone(), claim, value));
                    Claim::Generate(ClaimGuard::new(move || {
                        keeper.abort();
                        // Not kept (an error, too large, not 200): tell the
                        // others to go on.
                        let mut pipeline = redis::pipe();
                        if store.release(&key, &mut pipeline) {
                            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                                runtime.spawn(async move {
                                    let _ = store.state.pipeline::<()>(&pipeline).await;
                                });
                            }
                        }
                    }))
                }
                Ok(Some(holder)) => {
                    let holder_priority = holder
                        .rsplit(' ')
                        .next()
                        .and_then(|p| p.parse::<u8>().ok())
                        .unwrap_or(u8::MAX);
                    if priority < holder_priority {
                        // More urgent than the request generating it,
                        // which may still wait for its permit: no waiting
                        // behind it.
                        Claim::Generate(ClaimGuard::default())
                    } else {
                        Claim::Wait(Box::pin(store.wait_for(key)))
                    }
                }
                Err(_) => Claim::Generate(ClaimGuard::default()),
            }
        })
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

/// Keeps a claim alive while its holder generates.
async fn keep_claim(state: RedisState, claim: String, value: String) {
    let mut ticks = tokio::time::interval(CLAIM / 3);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let mut extend = redis::cmd("EVAL");
        extend
            .arg(IF_OURS)
            .arg(1)
            .arg(&claim)
            .arg(&value)
            .arg("PEXPIRE")
            .arg(CLAIM.as_millis() as u64);
        let _ = state.query::<i64>(&extend).await;
    }
}

/// Runs `ARGV[2]` (`DEL`, or `PEXPIRE` with `ARGV[3]`) on the claim only
/// while it is still this replica's: one that ran out and was taken by
/// another replica is not touched.
const IF_OURS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'DEL' then
  return redis.call('DEL', KEYS[1])
end
return redis.call('PEXPIRE', KEYS[1], ARGV[3])
";
