//! Admission: who may call what, how often, and when a request gets to
//! the upstream (auth, ratelimit, shed, bulkhead, priority).

use std::sync::Arc;
use std::time::Duration;

use corral_core::ConfigError;
use corral_priority::{PriorityConfig, PriorityLayer};
use serde::Deserialize;

use crate::config::LayerConfig;
use crate::svc::{options, BuildContext, StackLayer};

/// `kind = "priority"`: its own options; capacity comes from
/// `[upstream]`, weights from `[[classes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PriorityOptions {
    #[serde(with = "humantime_serde")]
    aging: Duration,
    max_in_flight_per_agent: Option<usize>,
    default_generation_tokens: u64,
    reserve: Option<corral_priority::Reserve>,
    /// With shared state: how long a permit is held without renewal,
    /// so a replica that dies gives its permits back within it.
    #[serde(with = "humantime_serde")]
    lease_ttl: Duration,
}

impl Default for PriorityOptions {
    fn default() -> Self {
        let defaults = PriorityConfig::default();
        Self {
            aging: defaults.aging,
            max_in_flight_per_agent: defaults.max_in_flight_per_agent,
            default_generation_tokens: defaults.default_generation_tokens,
            reserve: defaults.reserve,
            lease_ttl: Duration::from_secs(10),
        }
    }
}

pub(crate) fn priority(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let options: PriorityOptions = options(layer)?;
    let upstream = &context.config.upstream;
    let (capacity, per_model) = context.config.capacity();
    let config = PriorityConfig {
        capacity,
        per_model,
        model_capacity: upstream.model_capacity.clone(),
        aging: options.aging,
        max_in_flight_per_agent: options.max_in_flight_per_agent,
        default_generation_tokens: options.default_generation_tokens,
        class_weights: context
            .config
            .classes
            .iter()
            .map(|c| (c.name.clone(), c.weight))
            .collect(),
        reserve: options.reserve,
    };
    // Checked here too, so `check-config` (which connects to nothing)
    // refuses it.
    if options.lease_ttl < Duration::from_millis(300) {
        return Err(ConfigError::new(
            "lease_ttl",
            format!(
                "{} is too short to renew: use 300ms or more",
                humantime::format_duration(options.lease_ttl)
            ),
        ));
    }
    let (priority, shared) = match (context.fleet, context.state) {
        (Some(fleet), state) => {
            let scheduler = corral_priority::Scheduler::with_fleet(&config, fleet.clone())?;
            let mut shared = format!(", over {} upstreams", fleet.specs().len());
            if let Some(state) = state {
                fleet.share(state.clone(), options.lease_ttl)?;
                shared += &format!(
                    ", shared through Redis (leases of {})",
                    humantime::format_duration(options.lease_ttl)
                );
            }
            (
                PriorityLayer::new(&config)?.with_scheduler(scheduler),
                shared,
            )
        }
        (None, Some(state)) => {
            let scheduler =
                corral_priority::Scheduler::shared(&config, state.clone(), options.lease_ttl)?;
            scheduler.assume_replicas(context.config.state.replicas);
            (
                PriorityLayer::new(&config)?.with_scheduler(scheduler),
                format!(
                    ", shared through Redis (leases of {})",
                    humantime::format_duration(options.lease_ttl)
                ),
            )
        }
        (None, None) => (PriorityLayer::new(&config)?, String::new()),
    };
    let _ = context.controls.scheduler.set(priority.scheduler().clone());
    // With the estimates a request's time-to-first-token objective reads.
    context.load.set(priority.load())?;
    Ok(StackLayer::new(
        priority,
        describe(&config, per_model, context.fleet.is_some(), &shared),
    ))
}

/// How the start-up log describes the scheduler.
fn describe(config: &PriorityConfig, per_model: bool, fleet: bool, shared: &str) -> String {
    let models = if config.model_capacity.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = config
            .model_capacity
            .iter()
            .map(|(m, c)| format!("{m}={c}"))
            .collect();
        format!(" (models: {})", list.join(", "))
    };
    let cap = config
        .max_in_flight_per_agent
        .map(|c| format!(", at most {c} per agent"))
        .unwrap_or_default();
    let reserve = config
        .reserve
        .map(|r| format!(", {} held for priority <= {}", r.permits, r.up_to_priority))
        .unwrap_or_default();
    let per = if per_model { " per model" } else { "" };
    let permits = if fleet {
        // The fleet's: each upstream's, per loaded model.
        "one queue per model".to_string()
    } else {
        format!("{} upstream permit(s){per}{models}", config.capacity)
    };
    format!(
        "{permits}{shared}{cap}{reserve}; aging one step per {}",
        humantime::format_duration(config.aging)
    )
}

/// `kind = "shed"`: its options are [`corral_shed::ShedConfig`]'s.
pub(crate) fn shed(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let config: corral_shed::ShedConfig = options(layer)?;
    let shed = corral_shed::ShedLayer::new(&config)?
        .with_load(context.load.clone())
        .with_bus(context.bus.clone());
    let codel = if config.codel {
        format!(
            "; delay shedding above {} for {}",
            humantime::format_duration(config.codel_target),
            humantime::format_duration(config.codel_interval)
        )
    } else {
        String::new()
    };
    Ok(StackLayer::new(
        shed,
        format!(
            "at most {} waiting; priorities above {} refused at once when full, the others wait up to {}{codel}",
            config.max_queue,
            config.drop_above,
            humantime::format_duration(config.wait_for_space)
        ),
    ))
}

/// `kind = "bulkhead"`: compartments and rules from its options, then a
/// rule per class that names a `compartment`.
pub(crate) fn bulkhead(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let mut config: corral_bulkhead::BulkheadConfig = options(layer)?;
    config.validate()?;
    for (i, class) in context.config.classes.iter().enumerate() {
        let Some(compartment) = &class.compartment else {
            continue;
        };
        if !config.compartments.iter().any(|c| &c.name == compartment) {
            // Reported where the operator wrote it, not as a layer option.
            return Err(ConfigError::new(
                "",
                format!(
                    "classes[{i}].compartment: unknown compartment {compartment:?} (the bulkhead layer defines: {})",
                    config.compartments.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        config.rules.push(corral_bulkhead::RuleConfig {
            compartment: compartment.clone(),
            class: Some(class.name.clone()),
            agent: None,
            endpoint: None,
            model: None,
        });
    }
    let bulkhead = corral_bulkhead::BulkheadLayer::new(&config)?;
    let compartments: Vec<String> = config
        .compartments
        .iter()
        .map(|c| format!("{} {}", c.name, c.max_concurrent))
        .collect();
    Ok(StackLayer::new(
        bulkhead,
        format!(
            "compartments: {}; {} rule(s)",
            compartments.join(", "),
            config.rules.len()
        ),
    ))
}

/// `kind = "ratelimit"`: quotas from each class's `rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RateLimitOptions {
    default_generation_tokens: u64,
    budget_mode: corral_ratelimit::BudgetMode,
}

impl Default for RateLimitOptions {
    fn default() -> Self {
        Self {
            default_generation_tokens: corral_ratelimit::DEFAULT_GENERATION_TOKENS,
            budget_mode: corral_ratelimit::BudgetMode::Enforce,
        }
    }
}

pub(crate) fn ratelimit(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let options: RateLimitOptions = options(layer)?;
    let config = corral_ratelimit::RateLimitConfig {
        classes: context
            .config
            .classes
            .iter()
            .filter_map(|c| c.rate_limit.clone().map(|limits| (c.name.clone(), limits)))
            .collect(),
        default_generation_tokens: options.default_generation_tokens,
        budget_mode: options.budget_mode,
    };
    let shared = context.state.is_some();
    let layer = corral_ratelimit::RateLimitLayer::new(&config).map(|layer| match context.state {
        Some(state) => layer.with_store(Arc::new(corral_ratelimit::RedisRates::new(state.clone()))),
        None => layer,
    });
    let layer = layer.map_err(|e| {
        // The limits live in [[classes]]: say so.
        ConfigError::new("", format!("[[classes]] rate_limit: {e}"))
    })?;
    // Read by `/corral/usage`; a second ratelimit layer's are not shown.
    let _ = context.controls.budgets.set(layer.budgets());
    let limited: Vec<String> = config
        .classes
        .iter()
        .map(|(name, l)| {
            let mut parts = Vec::new();
            if let Some(n) = l.requests_per_minute {
                parts.push(format!("{n} req/min"));
            }
            if let Some(n) = l.tokens_per_minute {
                parts.push(format!("{n} tok/min"));
            }
            if let Some(n) = l.class_requests_per_minute {
                parts.push(format!("class {n} req/min"));
            }
            if let Some(n) = l.class_tokens_per_minute {
                parts.push(format!("class {n} tok/min"));
            }
            let budgets = [
                ("", l.tokens_per_day, "day"),
                ("", l.tokens_per_month, "month"),
                ("class ", l.class_tokens_per_day, "day"),
                ("class ", l.class_tokens_per_month, "month"),
            ];
            for (whose, n, per) in budgets {
                if let Some(n) = n {
                    parts.push(format!("{whose}{n} tok/{per}"));
                }
            }
            if l.budget_mode.unwrap_or(options.budget_mode) == corral_ratelimit::BudgetMode::Shadow
                && parts
                    .iter()
                    .any(|p| p.ends_with("day") || p.ends_with("month"))
            {
                parts.push("budgets in shadow".into());
            }
            format!("{name} ({})", parts.join(", "))
        })
        .collect();
    let summary = if limited.is_empty() {
        "no class has a rate_limit".to_string()
    } else if shared {
        format!("{}; quotas shared through Redis", limited.join("; "))
    } else {
        limited.join("; ")
    };
    Ok(StackLayer::new(layer, summary))
}

/// `kind = "auth"`: its options are [`corral_auth::AuthConfig`]'s; the
/// classes it names must be the config's.
pub(crate) fn auth(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let config: corral_auth::AuthConfig = options(layer)?;
    let identity = &context.config.identity;
    for class in config.classes.keys() {
        let known = class == &identity.default_class
            || context.config.classes.iter().any(|c| &c.name == class);
        if !known {
            // A typo would quietly give that class the default rights.
            return Err(ConfigError::new(
                format!("classes.{class}"),
                format!("no [[classes]] entry is named {class:?}"),
            ));
        }
    }
    let state = &context.config.state;
    let auth = match (&state.backend, &state.redis_url, context.state) {
        // Serving: the replica's one Redis connection.
        (crate::config::Backend::Redis, _, Some(shared)) => {
            let store = corral_auth::RedisReplay::with_state(shared.clone(), config.replay_memory);
            corral_auth::AuthLayer::new(&config)?.with_store(std::sync::Arc::new(store))
        }
        (crate::config::Backend::Redis, Some(url), None) => {
            let store = corral_auth::RedisReplay::new(
                url,
                &state.key_prefix,
                state.redis_timeout,
                config.replay_memory,
            )
            .map_err(|e| ConfigError::new(format!("state.{}", e.key()), e.reason()))?;
            corral_auth::AuthLayer::new(&config)?.with_store(std::sync::Arc::new(store))
        }
        _ => corral_auth::AuthLayer::new(&config)?,
    };
    // The agent API checks signatures on what it accepts with the same
    // secrets and replay memory.
    let _ = context.controls.auth.set(auth.clone());
    let signing = match (config.secrets.len(), config.require_signatures) {
        (_, true) => "every agent signs".to_string(),
        (0, false) => "no signatures".to_string(),
        (n, false) => format!("{n} agent(s) sign"),
    };
    Ok(StackLayer::new(
        auth,
        format!(
            "{signing} (freshness {}, {} request ids remembered{}); classes call {} unless listed ({} listed)",
            humantime::format_duration(config.freshness),
            config.replay_memory,
            match state.backend {
                crate::config::Backend::Redis => ", shared through Redis",
                crate::config::Backend::Memory => "",
            },
            config.default_endpoints.join(", "),
            config.classes.len(),
        ),
    ))
}
