//! Resilience: what to do when the upstream fails or the load rises
//! (retry, breaker, degrade).

use std::time::Duration;

use corral_core::ConfigError;

use crate::config::LayerConfig;
use crate::svc::{options, BuildContext, StackLayer};

/// `kind = "retry"`: its options are [`corral_retry::RetryConfig`]'s.
pub(crate) fn retry(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let config: corral_retry::RetryConfig = options(layer)?;
    let retry = corral_retry::RetryLayer::new(&config)?.with_events(context.events.clone());
    let limit = |d: Option<Duration>| {
        d.map_or("none".to_string(), |d| {
            humantime::format_duration(d).to_string()
        })
    };
    let fallback = if config.fallback_models.is_empty() {
        String::new()
    } else {
        format!("; fallback {}", config.fallback_models.join(" -> "))
    };
    Ok(StackLayer::new(
        retry,
        format!(
            "{} attempts, backoff up to {} (x{}, cap {}), budget {}% + {}/s; timed-out generations {}; first byte {} (streams only), idle {}, total {}{fallback}",
            config.max_attempts,
            humantime::format_duration(config.initial_backoff),
            config.backoff_multiplier,
            humantime::format_duration(config.max_backoff),
            config.budget_ratio * 100.0,
            config.budget_min_per_sec,
            if config.rerun_timed_out {
                "run again"
            } else {
                "never run again"
            },
            limit(config.first_byte_timeout),
            limit(config.idle_timeout),
            limit(config.total_timeout),
        ),
    ))
}

/// `kind = "breaker"`: its options are [`corral_breaker::BreakerConfig`]'s.
pub(crate) fn breaker(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let config: corral_breaker::BreakerConfig = options(layer)?;
    let breaker = corral_breaker::BreakerLayer::new(&config)?.with_bus(context.bus.clone());
    if context.controls.breaker.set(breaker.clone()).is_err() {
        return Err(ConfigError::new(
            "kind",
            "a stack has one breaker layer: `breaker` is listed twice",
        ));
    }
    let mut trips = Vec::new();
    if let Some(n) = config.consecutive_failures {
        trips.push(format!("{n} failures in a row"));
    }
    if let Some(rate) = config.failure_rate {
        trips.push(format!("{}% of the window failing", rate * 100.0));
    }
    if let Some(slow) = config.slow_call_duration {
        trips.push(format!(
            "{}% slower than {}",
            config.slow_call_rate * 100.0,
            humantime::format_duration(slow)
        ));
    }
    Ok(StackLayer::new(
        breaker,
        format!(
            "{}; trips on {}; open {}, {} probe(s)",
            if config.per_model {
                "per model"
            } else {
                "per upstream"
            },
            trips.join(" or "),
            humantime::format_duration(config.open_for),
            config.half_open_probes
        ),
    ))
}

/// `kind = "degrade"`: its options are [`corral_degrade::DegradeConfig`]'s;
/// classes with `critical = true` join `critical_classes`, those with
/// `ttft_fallback = true` join `ttft_fallback_classes`.
pub(crate) fn degrade(
    layer: &LayerConfig,
    context: &BuildContext<'_>,
) -> Result<StackLayer, ConfigError> {
    let mut config: corral_degrade::DegradeConfig = options(layer)?;
    for class in context.config.classes.iter().filter(|c| c.critical) {
        if !config.critical_classes.contains(&class.name) {
            config.critical_classes.push(class.name.clone());
        }
    }
    for class in context.config.classes.iter().filter(|c| c.ttft_fallback) {
        if !config.ttft_fallback_classes.contains(&class.name) {
            config.ttft_fallback_classes.push(class.name.clone());
        }
    }
    let degrade = corral_degrade::DegradeLayer::new(&config)?
        .with_load(context.load.clone())
        .with_bus(context.bus.clone());
    if context
        .controls
        .degrade
        .set(degrade.controller().clone())
        .is_err()
    {
        return Err(ConfigError::new(
            "kind",
            "a stack has one degrade layer: `degrade` is listed twice",
        ));
    }
    let pct = |v: f64| format!("{:.0}%", v * 100.0);
    Ok(StackLayer::new(
        degrade,
        format!(
            "up at {}/{}/{}, down at {}/{}/{}; L1 caps tokens at {}; L2 model {}; critical classes: {}",
            pct(config.up[0]),
            pct(config.up[1]),
            pct(config.up[2]),
            pct(config.down[0]),
            pct(config.down[1]),
            pct(config.down[2]),
            config.l1_max_tokens.map_or("none".into(), |n| n.to_string()),
            config.l2_model.as_deref().unwrap_or("unchanged"),
            if config.critical_classes.is_empty() { "none".to_string() } else { config.critical_classes.join(", ") },
        ) + &if config.ttft_fallback_classes.is_empty() {
            String::new()
        } else {
            format!("; smaller model for a missed TTFT: {}", config.ttft_fallback_classes.join(", "))
        },
    ))
}
