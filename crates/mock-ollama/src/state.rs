//! The simulated server's state: models, generation slots, blobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::faults::Dice;
use crate::stats::{lock, Counters};
use crate::MockConfig;

pub(crate) struct State {
    pub(crate) config: MockConfig,
    pub(crate) counters: Counters,
    models: Mutex<Models>,
    slots: Mutex<HashMap<String, Arc<ModelSlots>>>,
    /// Requests generating at once per model now: `config.parallel` until
    /// [`State::set_parallel`].
    parallel: AtomicUsize,
    dice: Mutex<Dice>,
    pub(crate) release: Semaphore,
    blobs: Mutex<HashSet<String>>,
    next_id: AtomicU64,
    attempts: Mutex<HashMap<String, usize>>,
}

#[derive(Clone)]
pub(crate) struct ModelInfo {
    pub(crate) name: String,
    pub(crate) modified_at: SystemTime,
    pub(crate) size: u64,
    pub(crate) digest: String,
}

struct Loaded {
    name: String,
    ready_at: Instant,
    last_used: Instant,
}

struct Models {
    available: BTreeMap<String, ModelInfo>,
    loaded: Vec<Loaded>,
}

/// One model's generation slots.
struct ModelSlots {
    semaphore: Arc<Semaphore>,
    /// Slots still to take away after `parallel` went down while they were
    /// busy: the next ones freed are forgotten instead of given back.
    debt: AtomicUsize,
}

impl ModelSlots {
    /// Takes one slot of the debt, if any is owed.
    fn pay_one(&self) -> bool {
        self.debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok()
    }

    /// From `old` slots to `new`: free slots are added or taken away at
    /// once, busy ones as they are freed.
    fn resize(&self, old: usize, new: usize) {
        if new >= old {
            let mut more = new - old;
            while more > 0 && self.pay_one() {
                more -= 1;
            }
            self.semaphore.add_permits(more);
        } else {
            let fewer = old - new;
            let taken = self.semaphore.forget_permits(fewer);
            self.debt.fetch_add(fewer - taken, Ordering::SeqCst);
        }
    }
}

/// A generation slot, held until the answer ends or its client leaves.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<ModelSlots>,
    state: Arc<State>,
    model: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.slots.pay_one() {
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
        self.state.counters.leave_slot(&self.model);
    }
}

/// The queue was full: Ollama's 503.
pub(crate) struct Busy;

/// Leaves the queue count however the wait ends.
struct Waiting<'a>(&'a Counters);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.leave_queue();
    }
}

/// Ollama names `llama3` and `llama3:latest` the same model.
pub(crate) fn canonical(name: &str) -> String {
    let name = name.trim();
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn digest_of(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(name.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl State {
    pub(crate) fn new(config: MockConfig) -> Self {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        let available = config
            .models
            .iter()
            .map(|m| {
                let name = canonical(m);
                let info = ModelInfo {
                    name: name.clone(),
                    modified_at: epoch,
                    size: 1_000_000 + name.len() as u64 * 1_000,
                    digest: digest_of(&name),
                };
                (name, info)
            })
            .collect();
        Self {
            parallel: AtomicUsize::new(config.parallel.max(1)),
            dice: Mutex::new(Dice::new(config.seed)),
            config,
            counters: Counters::default(),
            models: Mutex::new(Models {
                available,
                loaded: Vec::new(),
            }),
            slots: Mutex::new(HashMap::new()),
            release: Semaphore::new(0),
            blobs: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn roll(&self, p: f64) -> bool {
        lock(&self.dice).roll(p)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn model(&self, name: &str) -> Option<ModelInfo> {
        lock(&self.models).available.get(&canonical(name)).cloned()
    }

    pub(crate) fn models(&self) -> Vec<ModelInfo> {
        lock(&self.models).available.values().cloned().collect()
    }

    pub(crate) fn add_model(&self, name: &str) {
        let name = canonical(name);
        lock(&self.models)
            .available
            .entry(name.clone())
            .or_insert_with(|| ModelInfo {
                digest: digest_of(&name),
                size: 1_000_000 + name.len() as u64 * 1_000,
                modified_at: SystemTime::now(),
                name,
            });
    }

    pub(crate) fn remove_model(&self, name: &str) -> bool {
        let name = canonical(name);
        let mut models = lock(&self.models);
        models.loaded.retain(|l| l.name != name);
        models.available.remove(&name).is_some()
    }

    /// The loaded models with when each stops being kept (5 minutes after
    /// last use, Ollama's default `keep_alive`).
    pub(crate) fn loaded(&self) -> Vec<(ModelInfo, SystemTime)> {
        let models = lock(&self.models);
        let now = Instant::now();
        models
            .loaded
            .iter()
            .filter_map(|l| {
                let info = models.available.get(&l.name)?.clone();
                let since = now.saturating_duration_since(l.last_used);
                let expires = SystemTime::now() + Duration::from_secs(300).saturating_sub(since);
                Some((info, expires))
            })
            .collect()
    }

    pub(crate) fn unload(&self, name: &str) {
        let name = canonical(name);
        lock(&self.models).loaded.retain(|l| l.name != name);
    }

    /// The request that started loading `name` left before it was ready:
    /// the load is given up, as Ollama gives it up.
    pub(crate) fn abort_load(&self, name: &str) {
        let name = canonical(name);
        let now = Instant::now();
        let mut models = lock(&self.models);
        let before = models.loaded.len();
        models
            .loaded
            .retain(|l| l.name != name || l.ready_at <= now);
        if models.loaded.len() < before {
            self.counters.aborted_loads.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Makes `name` loaded, evicting the least recently used model beyond
    /// `max_loaded_models`; returns how long until it is ready.
    pub(crate) fn ensure_loaded(&self, name: &str) -> Duration {
        let name = canonical(name);
        let now = Instant::now();
        let mut models = lock(&self.models);
        if let Some(loaded) = models.loaded.iter_mut().find(|l| l.name == name) {
            loaded.last_used = now;
            return loaded.ready_at.saturating_duration_since(now);
        }
        self.counters.model_loads.fetch_add(1, Ordering::SeqCst);
        let max = self.config.max_loaded_models.max(1);
        while models.loaded.len() >= max {
            let oldest = models
                .loaded
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| l.last_used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            models.loaded.remove(oldest);
            self.counters.model_evictions.fetch_add(1, Ordering::SeqCst);
        }
        let ready_at = now + self.config.load_time;
        models.loaded.push(Loaded {
            name,
            ready_at,
            last_used: now,
        });
        self.config.load_time
    }

    /// A generation slot for `model`: at once if one is free, after a wait
    /// if the queue has room, else [`Busy`].
    pub(crate) async fn acquire(self: &Arc<Self>, model: &str) -> Result<Slot, Busy> {
        let key = canonical(model);
        let slots = lock(&self.slots)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(ModelSlots {
                    semaphore: Arc::new(Semaphore::new(self.parallel.load(Ordering::SeqCst))),
                    debt: AtomicUsize::new(0),
                })
            })
            .clone();
        let semaphore = slots.semaphore.clone();
        let permit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let max = self.config.max_queue as u64;
                let admitted =
                    self.counters
                        .queued
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                            (q < max).then_some(q + 1)
                        });
                match admitted {
                    Ok(before) => {
                        self.counters
                            .peak_queued
                            .fetch_max(before + 1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        self.counters.busy_rejections.fetch_add(1, Ordering::SeqCst);
                        return Err(Busy);
                    }
                }
                let _waiting = Waiting(&self.counters);
                semaphore.acquire_owned().await.map_err(|_| Busy)?
            }
        };
        self.counters.enter_slot(&key);
        Ok(Slot {
            permit: Some(permit),
            slots,
            state: self.clone(),
            model: key,
        })
    }

    /// Requests generating at once per model now.
    pub(crate) fn parallel(&self) -> usize {
        self.parallel.load(Ordering::SeqCst)
    }

    /// Changes the slots of every model to `n` (at least 1), as a restart
    /// with another `OLLAMA_NUM_PARALLEL` would; requests generating keep
    /// their slots until they end, waiting ones keep waiting.
    pub(crate) fn set_parallel(&self, n: usize) {
        let n = n.max(1);
        // The lock orders resizes with slot sets made meanwhile.
        let slots = lock(&self.slots);
        let old = self.parallel.swap(n, Ordering::SeqCst);
        for model in slots.values() {
            model.resize(old, n);
        }
    }

    /// Counts an attempt of request `id`; how many came before it.
    pub(crate) fn attempt(&self, id: &str) -> usize {
        let mut attempts = lock(&self.attempts);
        let seen = attempts.entry(id.to_string()).or_default();
        *seen += 1;
        *seen - 1
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        lock(&self.blobs).contains(digest)
    }

    pub(crate) fn add_blob(&self, digest: String) {
        lock(&self.blobs).insert(digest);
    }
}

/// Gives up a load when dropped before it is done.
pub(crate) struct AbortLoad<'a> {
    pub(crate) state: Option<Arc<State>>,
    pub(crate) model: &'a str,
}

impl Drop for AbortLoad<'_> {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.abort_load(self.model);
        }
    }
}
