//! `corral-saga`: sagas for AI agents. Steps with their compensations run
//! in order; when one fails (or the saga is cancelled), the steps done
//! are compensated in reverse order. Every transition is written to a log
//! *before* it takes effect, so a process that dies mid-way is resumed
//! from the log by another: the saga either finishes or compensates.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use corral_saga::{MemoryLog, Runner, Saga, SagaConfig, SagaStatus, StepContext};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let undone = Arc::new(Mutex::new(Vec::new()));
//! let undo = |undone: &Arc<Mutex<Vec<String>>>| {
//!     let undone = undone.clone();
//!     move |cx: StepContext| {
//!         undone.lock().unwrap().push(cx.idempotency_key);
//!         async { Ok(json!(null)) }
//!     }
//! };
//! let saga = Saga::new("trip-1")
//!     .step("flight", |_: StepContext| async { Ok(json!({"seat": "12A"})) }, undo(&undone))
//!     .step("hotel", |_: StepContext| async { Ok(json!({"room": 4})) }, undo(&undone))
//!     .step("car", |_: StepContext| async { Err("no car left".into()) }, undo(&undone));
//!
//! let runner = Runner::new(Arc::new(MemoryLog::new()), "replica-1", SagaConfig::default());
//! assert_eq!(runner.run(&saga).await.unwrap(), SagaStatus::Compensated);
//! assert_eq!(*undone.lock().unwrap(), ["trip-1:1:compensate", "trip-1:0:compensate"]);
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Write-ahead.** `step_started` is durable before a step's action
//!   runs, `compensating` before its compensation, `step_done` /
//!   `compensated` after. A runner that dies between them leaves a log
//!   that [`decide`] reads back as "run it again".
//! - **Exactly-once effects, with idempotent servers.** An action or
//!   compensation run again after a crash gets the same
//!   [`StepContext::idempotency_key`] (`{saga}:{step}:action`,
//!   `{saga}:{step}:compensate`): a server that applies each key once
//!   makes the effect happen once. Corral cannot do better: an effect
//!   made just before a crash and not yet logged is invisible to it.
//! - **What is compensated.** Steps whose action succeeded, in reverse.
//!   A step started and never ended when the saga turned to compensation
//!   (it was cancelled while the step's runner died) is compensated too:
//!   its effect is unknown, and calling its compensation with its key is
//!   safe. A step whose action *failed* is not compensated. After a crash
//!   mid-step with no failure yet, the step is run again, with its key.
//! - **One runner at a time.** A runner holds a lease on the saga
//!   ([`SagaLog::claim`]), renewed every third of `lease_ttl` while it
//!   works; a saga whose lease lapsed is taken over by
//!   [`Runner::resume_unfinished`] on any process sharing the log. A
//!   runner's appends are checked against its lease in the same step
//!   ([`SagaLog::append_held`]): one that lost it (or could not renew it
//!   for a whole `lease_ttl`, cut off from the log) stops, and cannot
//!   write into its successor's log. A step's `step_done` is never undone
//!   by a stale runner's later entries: a step that succeeded is always
//!   compensated.
//! - **Resumption survives bad sagas.** A saga the resumer cannot claim,
//!   read or rebuild is skipped until the next pass; one that failed to
//!   rebuild [`MAX_RESUME_FAILURES`] times ends `failed`.
//! - **Compensations are retried** with a doubling backoff
//!   (`compensation_attempts`); when all fail the saga ends `failed`.
//!
//! # Logs
//!
//! [`MemoryLog`] lives in the process (sagas survive nothing but a
//! dropped runner). [`RedisLog`] keeps each saga's log in a Redis stream
//! of its own, `saga:{id}`, appended with an awaited `XADD` before the
//! step runs: the shared event log (`RedisEvents`) is fire-and-forget and
//! may drop events while Redis is away, so it cannot be the write-ahead
//! log. A set `sagas:unfinished` lists the sagas to resume, and
//! `saga:{id}:lease` (`SET NX PX`) is the lease; a runner's append is a
//! script that writes only while `GET saga:{id}:lease` is its own, and a
//! cancellation only while the saga is in `sagas:unfinished`. Every transition is also
//! recorded as a `saga` event to an [`EventSink`](corral_core::EventSink)
//! ([`Runner::with_events`]), for operators.
//!
//! # HTTP sagas
//!
//! [`Definition`] is a saga whose steps are HTTP calls (to an URL, to a
//! path on Corral itself, possibly as an async job, or to an agent found
//! by capability), serializable so that any replica rebuilds it from the
//! log: [`HttpSteps::saga`], [`HttpSteps::rebuild`]. Every call carries
//! `Idempotency-Key`; a 2xx answer is success, its status and JSON body
//! (cut to [`MAX_OUTPUT_BYTES`], marked `truncated`) the step's output.
//! Calls to Corral, async ones and `/corral/` paths included, are made
//! as the saga's agent through [`Local`] in the proxy's own process
//! (vouched for, no key needed nor stored) whenever the saga has an
//! agent; only without a [`Local`] do they go to Corral's address over
//! the network, with `X-Agent-Id`. An agent target is picked in the
//! registry once, before the step's first attempt, and logged
//! (`resolved`): a re-run and the compensation go to the same agent.
//! Targets other than Corral that are (or resolve to) loopback, private,
//! link-local or metadata addresses are refused unless
//! [`SagaConfig::allow_private_targets`].
//!
//! # Cost and limits
//!
//! Each step costs two log appends (three with a failure), each
//! compensation two, plus a read of the log between steps and a lease
//! renewal every third of `lease_ttl`: with Redis, a few round trips per
//! step, nothing next to an LLM call. A saga gives no isolation: others
//! see a step's effect before the saga ends, and a compensation is a new
//! action, not a rollback. Not for steps whose servers cannot deduplicate
//! by idempotency key (an effect may then happen twice after a crash), nor
//! for work that must be atomic: use a database transaction there. HTTP
//! steps speak `http://` and `https://` (the system's roots), HTTP/1.
//!
//! # Metrics
//!
//! `corral_sagas_started_total`, `corral_sagas_completed_total`
//! (completion rate: completed / started), `corral_sagas_compensated_total`,
//! `corral_coordination_failures_total{reason="step"|"compensation"|"stuck"|"resume"}`
//! ([`metrics`]).

mod config;
mod decide;
mod http;
mod log;
pub mod metrics;
mod redis_log;
mod runner;
mod saga;
mod transition;

pub use config::*;
pub use decide::{decide, status, step_states, Next, Phase, SagaStatus, StepState};
pub use http::{
    https_or_http, new_saga_id, AgentTarget, Call, Checked, Definition, HttpSteps, Local, NoAgents,
    Resolve, StepDefinition, MAX_OUTPUT_BYTES,
};
pub use log::{BoxFuture, LogResult, LogUnavailable, MemoryLog, SagaLog};
pub use redis_log::RedisLog;
pub use runner::{Rebuild, Runner, SagaError, MAX_RESUME_FAILURES};
pub use saga::{Action, Saga, Step, StepContext, StepResult};
pub use transition::Transition;
