//! Applies what other replicas announce on the shared bus: the settings
//! an operator changed through one replica's admin API.

use std::sync::Arc;

use corral_core::{channels, BusMessage, Level};
use tokio::sync::broadcast;

use crate::svc::Controls;

/// Listens to `bus` for as long as it runs: an operator's forced
/// degradation level, or an agent's priority, set on another replica, is
/// set here too; a breaker another replica opened opens here.
/// The upstream's capacity needs no follower with shared state: the
/// scheduler reads it from Redis.
pub(crate) async fn follow(
    mut bus: broadcast::Receiver<BusMessage>,
    controls: Arc<Controls>,
    replica: Arc<str>,
) {
    loop {
        let message = match bus.recv().await {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "the bus follower fell behind");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if message.publisher == replica {
            continue;
        }
        if &*message.channel == channels::DEGRADATION_LEVEL
            && message.message["cause"] == "operator"
        {
            let Some(controller) = controls.degrade.get() else {
                continue;
            };
            let forced = match &message.message["forced"] {
                serde_json::Value::String(level) => match level.parse::<Level>() {
                    Ok(level) => Some(level),
                    Err(error) => {
                        tracing::warn!(%error, publisher = %message.publisher, "ignored a forced level from another replica");
                        continue;
                    }
                },
                _ => None,
            };
            controller.follow(forced);
        } else if &*message.channel == channels::BREAKER_STATE && message.message["to"] == "open" {
            let Some(breakers) = controls.breaker.get() else {
                continue;
            };
            let (Some(breaker), Some(open_for)) = (
                message.message["breaker"].as_str(),
                message.message["open_for_secs"].as_f64(),
            ) else {
                continue;
            };
            // A kept message replayed at start may be old: only what is
            // left of its time counts.
            let left = open_for - (corral_core::unix_now_f64() - message.timestamp).max(0.0);
            if left > 0.0 {
                breakers.follow(breaker, std::time::Duration::from_secs_f64(left));
            }
        } else if &*message.channel == channels::PRIORITY_CHANGE {
            let Some(overrides) = controls.priorities.get() else {
                continue;
            };
            let Some(agent) = message.message["agent"].as_str() else {
                continue;
            };
            let priority = message.message["priority"]
                .as_u64()
                .and_then(|p| u8::try_from(p).ok())
                .and_then(|p| corral_core::Priority::new(p).ok());
            overrides.set(agent, priority);
        }
    }
}
