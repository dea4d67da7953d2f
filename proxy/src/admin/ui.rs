//! `/corral/ui`: the status page, and `/corral/ui/stream`, what it shows,
//! live.
//!
//! The page is one HTML file with its script, compiled into the binary
//! (no build step: a table and a few bars need no framework). It holds no
//! data, so it is served without the admin token; its script asks for
//! the token (or takes it from the address's `#token=`) and reads
//! `/corral/ui/stream` with it, as server-sent events: a snapshot of the
//! pools, the queue, the agents, breakers, degradation and cache every
//! second, and the event log's new entries as they are recorded. The
//! settings it changes go through the admin API's own endpoints
//! (`/corral/degrade`, `/corral/capacity`, `/corral/priority`).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::json;

use corral_core::{BoxBody, BoxError};

use super::Admin;

/// The page.
const PAGE: &str = include_str!("ui.html");
/// How often the stream sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);
/// The most events one message carries (the page keeps the last ones).
const EVENTS_PER_MESSAGE: usize = 50;
/// The events read at most for one message (oldest first: past it, the
/// next message goes on from there).
const SCANNED: usize = 10_000;
/// The agents a snapshot lists at most, the most active first.
const AGENTS: usize = 200;

/// `GET /corral/ui`: the page.
pub(super) fn page() -> Response<BoxBody> {
    let mut response = Response::new(corral_core::full(PAGE));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page runs its own script only, and talks to this origin only.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Where one stream is.
struct Follower {
    admin: Admin,
    /// The last event sent, and when it was recorded.
    last_event: (u64, f64),
    first: bool,
}

impl Admin {
    /// `GET /corral/ui/stream`: server-sent events, `snapshot` every
    /// second and `events` whenever the log has new ones, until the page
    /// goes.
    pub(super) fn ui_stream(&self) -> Response<BoxBody> {
        let follower = Follower {
            admin: self.clone(),
            // The page opens on the last minute's events.
            last_event: (0, corral_core::unix_now_f64() - 60.0),
            first: true,
        };
        let frames = futures_util::stream::unfold(follower, |mut follower| async move {
            if !follower.first {
                tokio::time::sleep(EVERY).await;
            }
            follower.first = false;
            let message = follower.next_message().await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from(message))),
                follower,
            ))
        });
        let mut response = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// What the page shows now.
    async fn ui_snapshot(&self) -> serde_json::Value {
        let pools: Vec<serde_json::Value> = self
            .controls
            .scheduler
            .get()
            .map(|s| s.pools())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, load)| {
                let oldest = load
                    .oldest_waiting_since
                    .map(|since| since.elapsed().as_millis() as u64);
                json!({
                    "pool": name,
                    "capacity": load.capacity,
                    "in_flight": load.in_flight,
                    "queued": load.queued_total(),
                    "queued_by_priority": load.queued,
                    "oldest_wait_ms": oldest,
                })
            })
            .collect();
        let mut agents: Vec<(String, corral_events::AgentUsage)> =
            self.events.usage().await.into_iter().collect();
        agents.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
        let total_agents = agents.len();
        agents.truncate(AGENTS);
        let priorities: Vec<serde_json::Value> = self
            .controls
            .priorities
            .get()
            .map(|o| o.list())
            .unwrap_or_default()
            .into_iter()
            .map(|(agent, priority)| json!({"agent": agent, "priority": priority.get()}))
            .collect();
        json!({
            "time": corral_core::unix_now_f64(),
            "status": self.status().await,
            "pools": pools,
            "agents": agents.into_iter().map(|(agent, usage)| json!({"agent": agent, "usage": usage})).collect::<Vec<_>>(),
            "agents_total": total_agents,
            "priorities": priorities,
        })
    }
}

impl Follower {
    /// The next message: the snapshot, and the events recorded since the
    /// last one sent (the last few, on the first).
    async fn next_message(&mut self) -> String {
        let snapshot = self.admin.ui_snapshot().await;
        let mut text = sse("snapshot", &snapshot);
        let (last_id, last_time) = self.last_event;
        let query = corral_events::Query {
            since: Some(last_time),
            limit: Some(SCANNED),
            ..corral_events::Query::default()
        };
        let mut events: Vec<corral_core::Event> = self
            .admin
            .events
            .replay(query)
            .await
            .into_iter()
            .filter(|e| e.id > last_id)
            .collect();
        if let Some(last) = events.last() {
            self.last_event = (last.id, last.timestamp);
            let skip = events.len().saturating_sub(EVENTS_PER_MESSAGE);
            events.drain(..skip);
            text.push_str(&sse("events", &json!(events)));
        }
        text
    }
}

/// One server-sent event named `event` carrying `data` as JSON on one
/// line.
fn sse(event: &str, data: &serde_json::Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}
