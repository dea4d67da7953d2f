//! Applies what other replicas announce on the shared bus: the settings
//! an operator changed through one replica's admin API.

use std::sync::Arc;

use corral_core::{channels, BusMessage, Level};
use tokio::sync::broadcast;

use crate::registry::Controls;

/// Listens to `bus` for as long as it runs: an operator's forced
/// degradation level, heard from another replica, is forced here too.
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
        }
    }
}
