//! Answering with fewer upstream calls: answers kept and shared, calls
//! merged (cache, batch).

use std::sync::Arc;

use corral_core::ConfigError;

use crate::config::LayerConfig;
use crate::svc::{options, BuildContext, StackLayer};

/// `kind = "cache"`: its options are [`corral_cache::CacheConfig`]'s.
pub(crate) fn cache(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let config: corral_cache::CacheConfig = options(layer)?;
    let cache = corral_cache::CacheLayer::new(&config)?;
    let cache = match context.state {
        Some(state) => cache.with_store(Arc::new(corral_cache::RedisCache::new(
            state.clone(),
            config.max_bytes,
        ))),
        None => cache,
    };
    if context.controls.cache.set(cache.store().clone()).is_err() {
        return Err(ConfigError::new(
            "kind",
            "a stack has one cache: `cache` is listed twice",
        ));
    }
    Ok(StackLayer::new(
        cache,
        format!(
            "deterministic answers for {} ({} stale), up to {} MiB{}, {}{}",
            humantime::format_duration(config.ttl),
            humantime::format_duration(config.stale_for),
            config.max_bytes / (1024 * 1024),
            if context.state.is_some() {
                " in memory in front of Redis"
            } else {
                ""
            },
            match config.namespace {
                corral_cache::Namespace::None => "shared by all agents",
                corral_cache::Namespace::Agent => "kept apart per agent",
                corral_cache::Namespace::Class => "kept apart per class",
            },
            if config.coalesce {
                "; identical requests in flight coalesced"
            } else {
                ""
            }
        ),
    ))
}

/// `kind = "batch"`: its options are [`corral_batch::BatchConfig`]'s.
pub(crate) fn batch(
    layer: &LayerConfig,
    _context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let config: corral_batch::BatchConfig = options(layer)?;
    let batch = corral_batch::BatchLayer::new(&config)?;
    Ok(StackLayer::new(
        batch,
        format!(
            "/api/embed calls within {} merged, at most {} inputs",
            humantime::format_duration(config.window),
            config.max_inputs
        ),
    ))
}
