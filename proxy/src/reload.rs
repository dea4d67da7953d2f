//! Reloading the configuration while serving: `SIGHUP`, `POST
//! /corral/reload`, a watched file, or another replica's reload on the
//! bus.
//!
//! The new configuration is read, checked and built first, exactly as
//! `check-config` and a start would; a bad one is refused with the same
//! message, and the old one goes on serving. A good one takes over for
//! the requests that arrive after it: a request keeps the stack it
//! arrived on to its end (its permit, its stream), and the layers that
//! still fit are carried over into the new stack as they are
//! ([`stack::rebuild`]): the queue keeps its order, caches, counters,
//! breakers and quotas go on. Settings read only when the listeners are
//! bound or the shared parts made (the addresses, the connection limits,
//! the upstreams, Redis, the event log, the agent API's) need a restart:
//! a reload that changes one is refused, naming it.

use std::sync::{Arc, Weak};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin::Admin;
use crate::config::{Config, LoadError, NO_FILE};
use crate::front::{AdminSlot, Proxying};
use crate::stack::{self, Stack};

/// Where a reload reads its configuration from: the file and the
/// command line's flags over it, as at start.
pub type Source = Arc<dyn Fn() -> Result<Config, LoadError> + Send + Sync>;

/// Where a reload of `config` reads: its file again, if it came from
/// one (the settings given in code or by flags over it are not read
/// again: a reload that would drop the admin token is refused).
pub(crate) fn file_source(config: &Config) -> Source {
    match config.source.clone() {
        Some(path) => Arc::new(move || Config::load(&path)),
        None => Arc::new(|| {
            Err(LoadError {
                file: std::path::PathBuf::from(NO_FILE),
                line: None,
                key: String::new(),
                reason: "started without a configuration file: there is none to read again".into(),
            })
        }),
    }
}

/// Reloads the configuration of a running proxy.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    live: tokio::sync::Mutex<Live>,
    /// The newest moment the configuration serving now answers for, in
    /// seconds since the Unix epoch (as the bus's timestamps): when it
    /// was read, or the last reload another replica announced that this
    /// one answered (reloaded, or tried to). Announced before then, a
    /// reload is passed by. Written under `live`.
    seen: std::sync::Mutex<f64>,
    proxying: Proxying,
    admin: AdminSlot,
    agents: crate::agent_api::AgentApi,
    metrics: PrometheusHandle,
}

/// The configuration serving now, and its stack.
struct Live {
    config: Config,
    stack: Stack,
}

corral_core::impl_debug!(Reloader {});

/// A reloader as the admin API holds it: weakly, the reloader holding
/// the admin API.
#[derive(Clone, Default)]
pub(crate) struct ReloadHandle(Weak<Inner>);

impl ReloadHandle {
    pub(crate) fn get(&self) -> Option<Reloader> {
        self.0.upgrade().map(|inner| Reloader { inner })
    }
}

/// Why a reload was refused; the old configuration serves on.
#[derive(Debug)]
pub enum ReloadError {
    /// The new configuration is refused, as `check-config` would.
    Refused(LoadError),
    /// It changes settings that only a restart applies.
    NeedsRestart(Vec<&'static str>),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => e.fmt(f),
            Self::NeedsRestart(settings) => write!(
                f,
                "not reloaded: {} changed, which only a restart applies",
                settings.join(", ")
            ),
        }
    }
}

impl std::error::Error for ReloadError {}

impl Reloader {
    pub(crate) fn new(
        source: Source,
        (config, stack): (Config, Stack),
        proxying: Proxying,
        (admin, agents): (AdminSlot, crate::agent_api::AgentApi),
        metrics: PrometheusHandle,
    ) -> Self {
        let read_at = config.read_at.unwrap_or_else(corral_core::unix_now_f64);
        Self {
            inner: Arc::new(Inner {
                source,
                seen: std::sync::Mutex::new(read_at),
                live: tokio::sync::Mutex::new(Live { config, stack }),
                proxying,
                admin,
                agents,
                metrics,
            }),
        }
    }

    /// Reloads for a reload another replica announced at `at` (seconds
    /// since the Unix epoch, by that replica's clock): `None`, passed by,
    /// when the configuration serving now was read after it or the
    /// announcement was answered already.
    ///
    /// Answered even when the reload is refused: a replica is asked once
    /// per announcement, not again at each replay of the kept one (a
    /// replica whose clock runs behind the announcer's would otherwise
    /// read its stamp as news after every reload, and reload again).
    pub async fn reload_announced(&self, at: f64) -> Option<Result<Vec<String>, ReloadError>> {
        let mut live = self.inner.live.lock().await;
        if at <= *corral_core::lock(&self.inner.seen) {
            return None;
        }
        let reloaded = (self.inner.source)()
            .map_err(ReloadError::Refused)
            .and_then(|config| self.take_over(&mut live, config));
        let mut seen = corral_core::lock(&self.inner.seen);
        *seen = seen.max(at);
        Some(reloaded)
    }

    pub(crate) fn handle(&self) -> ReloadHandle {
        ReloadHandle(Arc::downgrade(&self.inner))
    }

    /// Reads the configuration again from its source and takes it over;
    /// what it did, line by line.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        // One at a time, the file read under the lock: two reloads racing
        // would each carry over from the stack the other replaces, and
        // the file read first could be applied last.
        let mut live = self.inner.live.lock().await;
        let config = (self.inner.source)().map_err(ReloadError::Refused)?;
        self.take_over(&mut live, config)
    }

    /// Takes `config` over (checked as at start); what it did, line by
    /// line.
    pub async fn reload_to(&self, config: Config) -> Result<Vec<String>, ReloadError> {
        let mut live = self.inner.live.lock().await;
        self.take_over(&mut live, config)
    }

    fn take_over(&self, live: &mut Live, config: Config) -> Result<Vec<String>, ReloadError> {
        let file = config
            .source
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(NO_FILE));
        config
            .validate()
            .and_then(|()| config.check_admin_exposure())
            .map_err(|e| ReloadError::Refused(LoadError::from_config(&file, e, None)))?;
        let mut changed = needs_restart(&live.config, &config);
        if !stack::keeps_scheduler(&live.stack, &config) {
            changed.push("the priority layer (its options, the classes' weights, the per-model capacities, or whether there is one)");
        }
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(changed));
        }
        let (stack, notes) =
            stack::rebuild(&live.stack, &live.config, &config, config.source.as_deref())
                .map_err(ReloadError::Refused)?;
        let admin =
            Admin::new(&stack, self.inner.metrics.clone(), &config).reloading(self.handle());
        self.inner.proxying.switch(&stack);
        self.inner.agents.switch(&stack);
        self.inner.admin.store(Arc::new(admin));
        tracing::warn!(changes = %notes.join("; "), "configuration reloaded");
        let read_at = config.read_at.unwrap_or_else(corral_core::unix_now_f64);
        let mut seen = corral_core::lock(&self.inner.seen);
        *seen = seen.max(read_at);
        drop(seen);
        live.config = config;
        live.stack = stack;
        Ok(notes)
    }
}

/// The settings that differ between `before` and `after` that only a
/// restart applies.
pub(crate) fn needs_restart(before: &Config, after: &Config) -> Vec<&'static str> {
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut upstream = (before.upstream.clone(), after.upstream.clone());
    // The capacity is set on the running scheduler.
    upstream.0.capacity = None;
    upstream.1.capacity = None;
    // With several upstreams (or max_loaded_models) the capacity is the
    // fleet's, per upstream: set it through /corral/capacity.
    let fleet_capacity =
        !after.fleet_entries().is_empty() && before.upstream.capacity != after.upstream.capacity;
    // An admin token given in code or by a flag the file does not hold
    // must not fall off on a reload: the admin API would be open.
    let token_removed = before.admin.token.is_some() && after.admin.token.is_none();
    let checks: [(&'static str, bool); 14] = [
        (
            "[upstream] capacity, with several upstreams (set it per upstream: POST /corral/capacity)",
            !fleet_capacity,
        ),
        ("[admin] token (removed: restart to open the admin API)", !token_removed),
        ("[server]", same(&before.server, &after.server)),
        (
            "[admin] listen",
            same(&before.admin.listen, &after.admin.listen),
        ),
        (
            "[upstream] (all but capacity)",
            same(&upstream.0, &upstream.1),
        ),
        ("[[upstreams]]", same(&before.upstreams, &after.upstreams)),
        ("[state]", same(&before.state, &after.state)),
        ("[events]", same(&before.events, &after.events)),
        ("[metrics]", same(&before.metrics, &after.metrics)),
        ("[jobs]", same(&before.jobs, &after.jobs)),
        ("[registry]", same(&before.registry, &after.registry)),
        ("[sagas]", same(&before.sagas, &after.sagas)),
        ("[traces]", same(&before.traces, &after.traces)),
        (
            "[identity] keys_file",
            same(&before.identity.keys_file, &after.identity.keys_file),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
}

/// Reloads whenever another replica announces a reload on the bus, for
/// as long as the bus runs. Each replica's last reload is kept in Redis
/// and replayed when this replica starts or comes back to Redis: one
/// announced before this replica read its configuration, or answered
/// already, is passed by ([`Reloader::reload_announced`]), so a replica
/// cut from Redis during a reload reloads on its return and one started
/// later does not reload for nothing. The times compared are two
/// replicas' clocks: a skew larger than the time between a file's read
/// and a reload announced elsewhere can pass one by.
pub(crate) async fn follow_reloads(
    mut bus: tokio::sync::broadcast::Receiver<corral_core::BusMessage>,
    replica: Arc<str>,
    reloader: ReloadHandle,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let message = match bus.recv().await {
            Ok(message) => message,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if &*message.channel != corral_core::channels::CONFIG_RELOAD || message.publisher == replica
        {
            continue;
        }
        let Some(reloader) = reloader.get() else {
            return;
        };
        if let Some(Err(error)) = reloader.reload_announced(message.timestamp).await {
            tracing::error!(%error, publisher = %message.publisher, "another replica reloaded; this one could not")
        }
    }
}

/// Reloads whenever the file at `path` changes (its length or time of
/// change), checking every `every`.
pub(crate) async fn watch_file(
    path: std::path::PathBuf,
    every: std::time::Duration,
    reloader: ReloadHandle,
) {
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut seen = stamp(&path);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = stamp(&path);
        if now == seen || now.is_none() {
            continue;
        }
        seen = now;
        let Some(reloader) = reloader.get() else {
            return;
        };
        if let Err(error) = reloader.reload().await {
            tracing::error!(%error, file = %path.display(), "the changed file was not loaded; the old configuration serves on");
        }
    }
}
