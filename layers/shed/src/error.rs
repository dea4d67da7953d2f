use std::time::Duration;

use corral_core::Priority;
use http::StatusCode;

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The queue was full and the request's priority is refused at once.
    QueueFull,
    /// The queue was full and stayed full while the request waited for
    /// room.
    NoRoomInTime,
    /// The queue delay has been above target for a whole interval.
    QueueDelay,
    /// The agent already has its most requests waiting.
    AgentQueueFull,
}

impl ShedReason {
    /// A short name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::NoRoomInTime => "no_room_in_time",
            ShedReason::QueueDelay => "queue_delay",
            ShedReason::AgentQueueFull => "agent_queue_full",
        }
    }
}

/// A request refused to keep the queue in bounds: 503 with `Retry-After`
/// (429 when it is the agent's own quota), `X-Corral-Reason: shed`.
#[derive(Debug)]
pub struct Shed {
    pub(crate) reason: ShedReason,
    pub(crate) priority: Priority,
    pub(crate) queued: usize,
    pub(crate) retry_after: Duration,
}

impl Shed {
    /// Why.
    pub fn reason(&self) -> ShedReason {
        self.reason
    }

    /// The refused request's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

corral_core::refusal! {
    Shed as shed {
        status: match shed.reason {
            ShedReason::AgentQueueFull => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        },
        reason: match shed.reason {
            ShedReason::AgentQueueFull => "agent_queue_full",
            _ => "shed",
        },
        retry_after: Some(shed.retry_after),
        message(f): {
            let wait = shed.retry_after.as_secs().max(1);
            match shed.reason {
                ShedReason::QueueFull => write!(
                    f,
                    "server busy: {} requests are waiting and priority {} is refused while the queue is full; retry in {wait} s",
                    shed.queued, shed.priority
                ),
                ShedReason::NoRoomInTime => write!(
                    f,
                    "server busy: the queue stayed full ({} waiting) while this request waited for room; retry in {wait} s",
                    shed.queued
                ),
                ShedReason::QueueDelay => write!(
                    f,
                    "server overloaded: requests wait too long, so priority {} is refused for now; retry in {wait} s",
                    shed.priority
                ),
                ShedReason::AgentQueueFull => write!(
                    f,
                    "too many requests from this agent are already waiting; retry in {wait} s"
                ),
            }
        },
    }
}
