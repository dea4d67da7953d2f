//! The names of the headers Corral reads and writes.

use http::HeaderName;

/// The request id, kept from the client or made by Corral, and returned.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The agent's name for itself, used when it has no API key.
pub const X_AGENT_ID: HeaderName = HeaderName::from_static("x-agent-id");
/// The priority an agent asks for, 1 (highest) to 10 (lowest).
pub const X_PRIORITY: HeaderName = HeaderName::from_static("x-priority");
/// How many milliseconds from now the answer stops being useful.
pub const X_DEADLINE_MS: HeaderName = HeaderName::from_static("x-deadline-ms");
/// How many milliseconds to the first token the agent aims for: a request
/// that would wait longer may run on a smaller model where its class
/// allows it.
pub const X_CORRAL_TTFT_MS: HeaderName = HeaderName::from_static("x-corral-ttft-ms");
/// Why Corral refused a request (`shed`, `rate_limited`, ...).
pub const X_CORRAL_REASON: HeaderName = HeaderName::from_static("x-corral-reason");
/// The priority the request was served with.
pub const X_CORRAL_PRIORITY: HeaderName = HeaderName::from_static("x-corral-priority");
/// The client's address, appended by each proxy on the way.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The `Host` the client asked for, since the upstream gets its own.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The scheme the client used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// How long the request waited for an upstream permit, in milliseconds.
pub const X_CORRAL_QUEUE_MS: HeaderName = HeaderName::from_static("x-corral-queue-ms");
/// On a refusal with `Retry-After`: the same wait in milliseconds (the
/// header itself has whole seconds).
pub const X_CORRAL_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-corral-retry-after-ms");
/// The same again under the name the OpenAI SDKs read before
/// `Retry-After` (`retry-after-ms`), so their automatic retries wait the
/// time told to the millisecond rather than rounded up to seconds.
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// How many requests were ahead of this one in the order of service when
/// it arrived (on the answer, and on a refusal that estimated it).
pub const X_CORRAL_QUEUE_POSITION: HeaderName = HeaderName::from_static("x-corral-queue-position");
/// How long this request was estimated to wait for its permit when it
/// arrived, in milliseconds: the work ahead over the measured throughput.
pub const X_CORRAL_QUEUE_ETA_MS: HeaderName = HeaderName::from_static("x-corral-queue-eta-ms");
/// A conversation's id, chosen by the client: with several upstreams,
/// its requests go back to the server that ran it before, so that
/// server's prompt cache is reused.
pub const X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
/// With several upstreams: the one that answered; in a request Corral
/// does not schedule (a metadata read, a model pull), the one to send it
/// to.
pub const X_CORRAL_UPSTREAM: HeaderName = HeaderName::from_static("x-corral-upstream");
