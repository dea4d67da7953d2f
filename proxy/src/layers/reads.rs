//! What each layer reads of the whole configuration besides its own
//! options ([`LayerKind::reads`](crate::LayerKind::reads)): a reload
//! carries a layer over, state and all, when its options and these are
//! unchanged, and builds it anew otherwise. (A layer built from its
//! options alone, and the shared state and load of the context, which a
//! reload keeps, reads nothing: [`crate::registry::reads_nothing`].) Each says exactly what its
//! builder reads, so that changing one class's priority (classify's
//! business) leaves the quotas, breakers and queue as they were.

use crate::config::Config;

/// The default class and the classes' names: the classes its
/// permissions name must exist.
pub(crate) fn auth(config: &Config) -> String {
    let names: Vec<&str> = config.classes.iter().map(|c| c.name.as_str()).collect();
    format!("{:?} {names:?}", config.identity.default_class)
}

/// Each class's `rate_limit`.
pub(crate) fn ratelimit(config: &Config) -> String {
    let limits: Vec<_> = config
        .classes
        .iter()
        .map(|c| (&c.name, &c.rate_limit))
        .collect();
    format!("{limits:?}")
}

/// Which classes are critical, and which may fall back for their time
/// to first token.
pub(crate) fn degrade(config: &Config) -> String {
    let flags: Vec<_> = config
        .classes
        .iter()
        .map(|c| (&c.name, c.critical, c.ttft_fallback))
        .collect();
    format!("{flags:?}")
}

/// Each class's compartment.
pub(crate) fn bulkhead(config: &Config) -> String {
    let compartments: Vec<_> = config
        .classes
        .iter()
        .map(|c| (&c.name, &c.compartment))
        .collect();
    format!("{compartments:?}")
}

/// The classes' weights, the capacity per model and whether there is a
/// pool per model, the replicas assumed: not the capacity itself, which
/// a reload sets on the scheduler it carries over.
pub(crate) fn priority(config: &Config) -> String {
    let weights: Vec<_> = config.classes.iter().map(|c| (&c.name, c.weight)).collect();
    format!(
        "{weights:?} {:?} {} {:?}",
        config.upstream.model_capacity,
        config.capacity().1,
        config.state.replicas
    )
}
