//! What runs beside the connections while the proxy serves: the upstream
//! probe, the bus into the event log, the metrics upkeep.

use std::time::Duration;

use crate::telemetry;

/// Asks the upstream for its version every `period`, for the
/// `corral_upstream_up` gauge (and the alert on it).
pub(crate) async fn probe_upstream(upstream: crate::upstream::Upstream, period: Duration) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut was_up = None;
    loop {
        every.tick().await;
        let up = upstream.probe().await;
        metrics::gauge!(telemetry::UPSTREAM_UP).set(if up.is_ok() { 1.0 } else { 0.0 });
        if was_up != Some(up.is_ok()) {
            match &up {
                Ok(version) => {
                    tracing::info!(upstream = %upstream.url(), version = %version, "upstream answers")
                }
                Err(error) => {
                    tracing::warn!(upstream = %upstream.url(), error = %error, "upstream does not answer")
                }
            }
            was_up = Some(up.is_ok());
        }
    }
}

/// State changes announced on the bus go into the event log too.
pub(crate) async fn forward_bus(
    mut bus: tokio::sync::broadcast::Receiver<corral_core::BusMessage>,
    events: std::sync::Arc<dyn corral_events::EventStore>,
    replica: std::sync::Arc<str>,
) {
    use corral_core::{channels, NewEvent};
    loop {
        match bus.recv().await {
            // The other replicas record their own announcements.
            Ok(message) if message.publisher != replica => {}
            Ok(message) => {
                let kind = match &*message.channel {
                    channels::BREAKER_STATE => "breaker",
                    channels::DEGRADATION_LEVEL => "degradation",
                    channels::BACKPRESSURE => "backpressure",
                    channels::CAPACITY_UPDATE => "capacity",
                    channels::PRIORITY_CHANGE => "priority",
                    _ => continue,
                };
                events.record(NewEvent::new(kind, message.message));
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                tracing::warn!(lost, "the event log fell behind the bus");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Histograms are summed as samples arrive; drain them now and then so
/// memory stays flat between scrapes.
pub(crate) async fn metrics_upkeep() {
    let handle = telemetry::metrics_handle();
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}
