//! Logs (`tracing`) and metrics (`metrics`, exported for Prometheus).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

mod exporter;
mod logging;

pub use exporter::metrics_handle;
pub use logging::{init_logging, LogFormat, LogGuard};

use corral_core::Endpoint;
use metrics::{Counter, Gauge, Histogram, SharedString};

corral_core::metrics! {
    /// Describes the proxy's own metrics (see [`metrics_handle`]).
    fn describe_own();

    /// Requests answered, by endpoint, status and class; one whose client
    /// left before any answer counts under [`CLIENT_CLOSED_REQUEST`].
    counter REQUESTS_TOTAL = "corral_requests_total",
        "Requests answered, by endpoint, status and class; status 499: the client left before any answer.";
    /// Time from receiving a request to the end of its response body, by
    /// endpoint, model, class and outcome (`completed`, `refused`, `error`,
    /// `cancelled`), in seconds. The status is on [`REQUESTS_TOTAL`]: a status
    /// label here would multiply the histogram's series by every status seen
    /// for a split the outcome already makes.
    histogram(Seconds) REQUEST_DURATION_SECONDS = "corral_request_duration_seconds",
        "Time from receiving a request to the end of its answer, by endpoint, model, class and outcome.";
    /// Requests in progress by class: from the moment classify knows the
    /// class (waiting for a permit, generating, or sending the answer) to
    /// the end of the answer or the client leaving. (`front::call_counted`
    /// counts it before its headers, `observe::InFlight` holds it.)
    gauge REQUESTS_IN_FLIGHT = "corral_requests_in_flight",
        "Requests in progress, by class: waiting for a permit, generating, or sending the answer.";
    /// Time from receiving a request to the first byte of its answer's body,
    /// by endpoint and class, in seconds.
    histogram(Seconds) TIME_TO_FIRST_BYTE_SECONDS = "corral_time_to_first_byte_seconds",
        "Time from receiving a request to the first byte of its answer, by endpoint and class.";
    /// Tokens generated upstream (from `eval_count`), by model and class.
    counter TOKENS_GENERATED_TOTAL = "corral_tokens_generated_total",
        "Tokens generated upstream (eval_count), by model and class.";
    /// Prompt tokens evaluated upstream (from `prompt_eval_count`), by model
    /// and class.
    counter PROMPT_TOKENS_TOTAL = "corral_prompt_tokens_total",
        "Prompt tokens evaluated upstream (prompt_eval_count), by model and class.";
    /// Requests Corral refused, by reason and priority.
    counter REFUSALS_TOTAL = "corral_refusals_total",
        "Requests Corral refused, by reason and priority.";
    /// Connections Corral closed to protect itself, by reason
    /// (`per_address`: over `max_connections_per_address`; `write_stall`: the
    /// client left its answer unread).
    counter CONNECTIONS_CLOSED_TOTAL = "corral_connections_closed_total",
        "Client connections Corral closed to protect itself, by reason (per_address, write_stall).";
    /// Requests the upstream may run at once (the scheduler's capacity).
    gauge UPSTREAM_CAPACITY = "corral_upstream_capacity",
        "Requests the upstream may run at once.";
    /// Requests holding an upstream permit now.
    gauge UPSTREAM_IN_FLIGHT = "corral_upstream_in_flight",
        "Requests holding an upstream permit now.";
    /// Requests waiting for an upstream permit, by priority (`queue_depth`).
    gauge QUEUE_DEPTH = "corral_queue_depth",
        "Requests waiting for an upstream permit, by priority.";
    /// Bytes of request bodies held by waiting requests.
    gauge(Bytes) QUEUE_BYTES = "corral_queue_bytes",
        "Bytes of request bodies held by waiting requests.";
    /// Permits of one pool of the scheduler (`*`, or a model's own).
    gauge POOL_CAPACITY = "corral_pool_capacity",
        "Permits of one pool of the scheduler: `*`, or a model's own.";
    /// Permits held in one pool.
    gauge POOL_IN_FLIGHT = "corral_pool_in_flight", "Permits held in one pool.";
    /// Requests waiting in one pool.
    gauge POOL_QUEUED = "corral_pool_queued", "Requests waiting in one pool.";
}

/// 1 when the upstream answered its last probe, 0 when not.
pub const UPSTREAM_UP: &str = "corral_upstream_up";

/// Distinct model names exported as labels before the rest count as
/// `other`.
pub const DEFAULT_MAX_MODEL_LABELS: usize = 32;

static LABELS: std::sync::OnceLock<LabelPolicy> = std::sync::OnceLock::new();

/// How many distinct values a client-chosen label may take, and the
/// handles of the per-request metrics for each label set seen.
#[derive(Debug)]
struct LabelPolicy {
    per_agent: bool,
    max_models: usize,
    labels: std::sync::Mutex<Labels>,
}

#[derive(Debug, Default)]
struct Labels {
    /// The models with a label of their own.
    models: HashMap<String, SharedString, foldhash::fast::RandomState>,
    /// The handles for each (endpoint, class, model label), by the hash
    /// of the three: looked up with borrowed names, no key to build.
    /// foldhash, randomly seeded, where SipHash's three rounds were ~600
    /// instructions a request; the model label is bounded and the rest
    /// are Corral's own names.
    handles: HashMap<u64, Vec<Arc<RequestMetrics>>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
}

impl LabelPolicy {
    fn new(per_agent: bool, max_models: usize) -> Self {
        Self {
            per_agent,
            max_models,
            labels: std::sync::Mutex::new(Labels::default()),
        }
    }
}

fn labels() -> &'static LabelPolicy {
    LABELS.get_or_init(|| LabelPolicy::new(false, DEFAULT_MAX_MODEL_LABELS))
}

/// Sets the label policy once per process (the first proxy's `[metrics]`
/// wins: the recorder is global).
pub fn configure_labels(per_agent: bool, max_models: usize) {
    let _ = LABELS.set(LabelPolicy::new(per_agent, max_models));
}

impl Labels {
    /// A model name as a label: the first `max_model_labels` names seen
    /// are themselves, the rest `other`, so a client cannot grow the
    /// series without bound.
    fn model(&mut self, model: &str, max_models: usize) -> SharedString {
        if let Some(label) = self.models.get(model) {
            return label.clone();
        }
        if self.models.len() >= max_models {
            return SharedString::const_str("other");
        }
        let label = SharedString::from(Arc::<str>::from(model));
        self.models.insert(model.to_string(), label.clone());
        label
    }
}

/// The handles of the metrics every answer updates, for one endpoint,
/// class and model label.
///
/// The `metrics` macros build a key (a vector of labels), hash it and
/// look it up in the recorder's registry at every call: seven calls per
/// request cost ~7,000 instructions, a tenth of the proxy's own work.
/// The handles are the same every time for the same labels, so they are
/// looked up once and kept (the recorder keeps every series for the life
/// of the process anyway). Each is registered when first used, as the
/// macro would have: no series appears on `/metrics` earlier than before.
pub(crate) struct RequestMetrics {
    endpoint: Endpoint,
    class: SharedString,
    model: SharedString,
    in_flight: Gauge,
    first_byte: OnceLock<Histogram>,
    durations: [OnceLock<Histogram>; OUTCOMES.len()],
    answered: [OnceLock<Counter>; STATUSES.len()],
    generated: OnceLock<Counter>,
    prompt: OnceLock<Counter>,
}

corral_core::impl_debug!(RequestMetrics {
    endpoint,
    class,
    model
});

/// How an answer can end (see `Observation::finish`).
const OUTCOMES: [&str; 4] = ["completed", "refused", "error", "cancelled"];
/// The statuses with a label that costs no allocation (`status_label`).
const STATUSES: [u16; 15] = [
    200, 201, 204, 304, 400, 401, 403, 404, 413, 429, 499, 500, 502, 503, 504,
];

/// nginx's "client closed request": the status `corral_requests_total`
/// counts a request under when its client left before any answer, so
/// the counter's sum is every request, as the duration histogram's is.
pub(crate) const CLIENT_CLOSED_REQUEST: http::StatusCode = match http::StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a status code"),
};

/// The handles for a request to `endpoint` in `class` (`None`: not
/// classified) for `model`.
pub(crate) fn request_metrics(
    endpoint: Endpoint,
    class: Option<&str>,
    model: Option<&str>,
) -> Arc<RequestMetrics> {
    use std::hash::BuildHasher;
    let policy = labels();
    let mut labels = policy.labels.lock().unwrap_or_else(|p| p.into_inner());
    let model = match model {
        Some(model) => labels.model(model, policy.max_models),
        None => SharedString::const_str("none"),
    };
    let class_str = class.unwrap_or("none");
    let hash = labels.hasher.hash_one((endpoint, class_str, &*model));
    let found = labels.handles.get(&hash).and_then(|bucket| {
        bucket
            .iter()
            .find(|h| h.endpoint == endpoint && *h.class == *class_str && h.model == model)
    });
    if let Some(handles) = found {
        return handles.clone();
    }
    let class = match class {
        Some(class) => SharedString::from(Arc::<str>::from(class)),
        None => SharedString::const_str("none"),
    };
    let handles = Arc::new(RequestMetrics {
        endpoint,
        in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT, "class" => class.clone()),
        class,
        model,
        first_byte: OnceLock::new(),
        durations: Default::default(),
        answered: Default::default(),
        generated: OnceLock::new(),
        prompt: OnceLock::new(),
    });
    labels
        .handles
        .entry(hash)
        .or_default()
        .push(handles.clone());
    handles
}

impl RequestMetrics {
    /// The class label.
    pub(crate) fn class(&self) -> &SharedString {
        &self.class
    }

    /// `corral_requests_in_flight` for the class.
    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// The first byte of the answer went out `secs` after arrival.
    pub(crate) fn first_byte(&self, secs: f64) {
        self.first_byte
            .get_or_init(|| {
                metrics::histogram!(TIME_TO_FIRST_BYTE_SECONDS, "endpoint" => self.endpoint.as_str(), "class" => self.class.clone())
            })
            .record(secs);
    }

    /// The client left `secs` after arrival, before any answer: counted
    /// as `cancelled` with [`CLIENT_CLOSED_REQUEST`], of no tokens.
    pub(crate) fn left(&self, agent: Option<&str>, secs: f64) {
        let usage = corral_core::Usage::default();
        self.finished(CLIENT_CLOSED_REQUEST, agent, "cancelled", secs, usage);
    }

    /// The answer ended: counts it, its duration and its tokens.
    pub(crate) fn finished(
        &self,
        status: http::StatusCode,
        agent: Option<&str>,
        outcome: &'static str,
        secs: f64,
        usage: corral_core::Usage,
    ) {
        let endpoint = SharedString::const_str(self.endpoint.as_str());
        match (
            agent.and_then(agent_label),
            STATUSES.iter().position(|s| *s == status.as_u16()),
        ) {
            (None, Some(i)) => self.answered[i]
                .get_or_init(|| {
                    metrics::counter!(REQUESTS_TOTAL, "endpoint" => endpoint.clone(), "status" => status_label(status),
                        "class" => self.class.clone())
                })
                .increment(1),
            (None, None) => metrics::counter!(REQUESTS_TOTAL, "endpoint" => endpoint.clone(), "status" => status_label(status),
                "class" => self.class.clone())
            .increment(1),
            // Per-agent series are the operator's choice for a small
            // fleet: looked up each time.
            (Some(agent), _) => metrics::counter!(REQUESTS_TOTAL, "endpoint" => endpoint.clone(), "status" => status_label(status),
                "class" => self.class.clone(), "agent" => agent)
            .increment(1),
        }
        let duration = |outcome: &'static str| {
            metrics::histogram!(REQUEST_DURATION_SECONDS, "endpoint" => endpoint.clone(), "model" => self.model.clone(),
                "class" => self.class.clone(), "outcome" => outcome)
        };
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.durations[i]
                .get_or_init(|| duration(OUTCOMES[i]))
                .record(secs),
            None => duration(outcome).record(secs),
        }
        if let Some(generated) = usage.generated {
            self.generated
                .get_or_init(|| {
                    metrics::counter!(TOKENS_GENERATED_TOTAL, "model" => self.model.clone(), "class" => self.class.clone())
                })
                .increment(generated);
        }
        if let Some(prompt) = usage.prompt {
            self.prompt
                .get_or_init(|| {
                    metrics::counter!(PROMPT_TOKENS_TOTAL, "model" => self.model.clone(), "class" => self.class.clone())
                })
                .increment(prompt);
        }
    }
}

/// The agent as a label, only when the operator turned it on.
fn agent_label(agent: &str) -> Option<SharedString> {
    labels()
        .per_agent
        .then(|| SharedString::from(agent.to_string()))
}

/// Sets each pool's gauges, at scrape time.
pub fn record_pools(pools: &[(String, corral_core::LoadSnapshot)]) {
    for (pool, load) in pools {
        let pool = SharedString::from(pool.clone());
        metrics::gauge!(POOL_CAPACITY, "pool" => pool.clone()).set(load.capacity as f64);
        metrics::gauge!(POOL_IN_FLIGHT, "pool" => pool.clone()).set(load.in_flight as f64);
        metrics::gauge!(POOL_QUEUED, "pool" => pool).set(load.queued_total() as f64);
    }
}

/// Exports every configured class's in-flight gauge at 0, so dashboards
/// and `absent()` alerts see the class before its first request.
pub fn export_classes<'a>(classes: impl IntoIterator<Item = &'a str>) {
    for class in classes {
        metrics::gauge!(REQUESTS_IN_FLIGHT, "class" => class.to_string()).increment(0.0);
    }
}

const PRIORITY_LABELS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// Sets the scheduler's gauges from `load`: read at scrape time, so the
/// request path pays nothing for them.
pub fn record_load(load: &corral_core::LoadSnapshot) {
    metrics::gauge!(UPSTREAM_CAPACITY).set(load.capacity as f64);
    metrics::gauge!(UPSTREAM_IN_FLIGHT).set(load.in_flight as f64);
    metrics::gauge!(QUEUE_BYTES).set(load.queued_bytes as f64);
    for (label, depth) in PRIORITY_LABELS.iter().zip(load.queued) {
        metrics::gauge!(QUEUE_DEPTH, "priority" => *label).set(depth as f64);
    }
}

/// A status code as a label value, without allocating for common ones.
fn status_label(status: http::StatusCode) -> metrics::SharedString {
    let fixed = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(fixed)
}
