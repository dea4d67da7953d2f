//! The layers an operator can name in `[[layers]]`.
//!
//! Each layer crate plugs in with one line in [`LAYERS`], listed in the
//! order a request meets them in the recommended stack: its `kind`, a
//! sentence, the function that builds it from its options, its refusal
//! types so the proxy can answer them, and its rules on the other layers
//! (which must be there, which it must come before), which
//! [`check_order`] holds a stack to. `classify` is not here: it is always
//! the first layer, built from `[server]`, `[identity]`, `[[classes]]`
//! and `[[agents]]`.

use corral_core::{ConfigError, RefusalCast};

use crate::config::LayerConfig;
pub use crate::svc::{options, BuildContext, Controls, StackLayer};

/// One kind of layer.
#[derive(Clone, Copy)]
pub struct LayerKind {
    /// Its `kind` in `[[layers]]`.
    pub name: &'static str,
    /// What it does, one sentence, for `check-config`.
    pub about: &'static str,
    /// Builds it from its options and the context (the whole config, for
    /// classes and capacity; the load cell); errors name the option.
    pub build: fn(&LayerConfig, &BuildContext<'_>) -> Result<StackLayer, ConfigError>,
    /// Its refusal types.
    pub refusals: &'static [RefusalCast],
    /// Kinds the stack must also have, and why.
    pub needs: &'static [(&'static str, &'static str)],
    /// Kinds that, when listed, must come after it, and why.
    pub before: &'static [(&'static str, &'static str)],
    /// What its builder reads of the whole config besides its options,
    /// as text to compare: on a reload the layer is carried over, with
    /// its state (queues, counters, caches, breakers), when its options
    /// and this are unchanged, and built anew otherwise.
    pub reads: fn(&crate::Config) -> String,
}

corral_core::impl_debug!(LayerKind { name });

/// Why `auth` goes first: a cache hit or a merged embedding is answered
/// without the layers after it, where auth would check nothing.
const AUTH_FIRST: &str = "answers requests without the layers after it";
/// Why `degrade` needs the scheduler.
const DEGRADE_NEEDS: &str =
    "degrade reads its load from the priority layer's scheduler: without one it would read 0 for ever";

/// The layers this build of `corral` knows, by `kind`, in the order a
/// request meets them in the recommended stack. Layer crates add one
/// line each (their builders are in `layers/`).
#[rustfmt::skip]
pub const LAYERS: &[LayerKind] = &[
    LayerKind { name: "auth", about: "per-class permissions (endpoints, models) and HMAC-signed requests with replay protection", build: crate::layers::auth, refusals: corral_auth::REFUSALS, needs: &[], before: &[("cache", AUTH_FIRST), ("batch", AUTH_FIRST)], reads: crate::layers::reads::auth },
    LayerKind { name: "ratelimit", about: "per-agent and per-class GCRA quotas of requests and tokens", build: crate::layers::ratelimit, refusals: corral_ratelimit::REFUSALS, needs: &[], before: &[], reads: crate::layers::reads::ratelimit },
    LayerKind { name: "degrade", about: "load-driven levels: cap tokens, smaller models, refuse or answer defaults", build: crate::layers::degrade, refusals: corral_degrade::REFUSALS, needs: &[("priority", DEGRADE_NEEDS)], before: &[], reads: crate::layers::reads::degrade },
    LayerKind { name: "cache", about: "exact-match cache of deterministic answers, coalescing of identical requests", build: crate::layers::cache, refusals: corral_cache::REFUSALS, needs: &[], before: &[], reads: reads_nothing },
    LayerKind { name: "batch", about: "merges concurrent single embeddings into one upstream call", build: crate::layers::batch, refusals: corral_batch::REFUSALS, needs: &[], before: &[], reads: reads_nothing },
    LayerKind { name: "bulkhead", about: "named compartments with their own concurrency limits", build: crate::layers::bulkhead, refusals: corral_bulkhead::REFUSALS, needs: &[], before: &[], reads: crate::layers::reads::bulkhead },
    LayerKind { name: "shed", about: "bounded queue: lowest priorities refused first, delay shedding, Retry-After", build: crate::layers::shed, refusals: corral_shed::REFUSALS, needs: &[], before: &[], reads: reads_nothing },
    LayerKind { name: "priority", about: "the scheduler: upstream permits by priority, fair share, aging, deadlines", build: crate::layers::priority, refusals: corral_priority::REFUSALS, needs: &[], before: &[], reads: crate::layers::reads::priority },
    LayerKind { name: "retry", about: "safe retries with jittered backoff and a budget, stream-aware timeouts, model fallback", build: crate::layers::retry, refusals: corral_retry::REFUSALS, needs: &[], before: &[], reads: reads_nothing },
    LayerKind { name: "breaker", about: "circuit breaker per upstream or model: fail fast while it fails", build: crate::layers::breaker, refusals: corral_breaker::REFUSALS, needs: &[], before: &[], reads: reads_nothing },
];

/// [`LayerKind::reads`] of a layer built from its options alone.
pub fn reads_nothing(_: &crate::Config) -> String {
    String::new()
}

/// Holds the `[[layers]]` listed to each kind's rules: the kinds it needs
/// are there, the kinds it must come before come after it. The error
/// names the layer's index (for its line) and the rule broken.
pub fn check_order(
    listed: &[LayerConfig],
    registry: &[LayerKind],
) -> Result<(), (usize, ConfigError)> {
    let position = |kind: &str| listed.iter().position(|l| l.kind == kind);
    for (at, layer) in listed.iter().enumerate() {
        let Some(kind) = registry.iter().find(|k| k.name == layer.kind) else {
            continue;
        };
        for (needed, why) in kind.needs {
            if position(needed).is_none() {
                return Err((
                    at,
                    ConfigError::new("kind", format!("{why}: list a `{needed}` layer too")),
                ));
            }
        }
        for (later, why) in kind.before {
            if position(later).is_some_and(|p| p < at) {
                return Err((
                    at,
                    ConfigError::new(
                        "kind",
                        format!("{} must come before {later}, which {why}", kind.name),
                    ),
                ));
            }
        }
    }
    Ok(())
}
