//! `corral-adaptive`: finds how many requests an Ollama server usefully
//! runs at once per model (`capacity = "auto"`), by measuring time to
//! first token and tokens per second as the number let in changes.
//!
//! Ollama runs `OLLAMA_NUM_PARALLEL` requests at once per loaded model;
//! more wait inside it, where Corral cannot order them by priority. Corral
//! does not know that number (it is the operator's, may differ per
//! server, and changes with a restart), so a [`Controller`] per upstream
//! and model finds it: the caller lets in [`Controller::limit`] requests
//! at once and gives one [`Sample`] per request. It is pure: no task, no
//! timer, the time is passed in.
//!
//! ```
//! use corral_adaptive::{AdaptiveConfig, Controller, Sample};
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! let ms = Duration::from_millis;
//! let mut auto = Controller::new(AdaptiveConfig::default()).unwrap();
//! let mut now = Instant::now();
//! // A server with 2 slots: the first token 200 ms after a request gets a
//! // slot; a request beyond 2 waits 3 s for one. One round of requests at
//! // a time, each sample given as its answer ends.
//! for _ in 0..7 {
//!     let limit = auto.limit();
//!     for concurrency in 1..=limit {
//!         let waited = if concurrency > 2 { ms(3000) } else { ms(0) };
//!         let first_byte = now + waited + ms(200);
//!         let sample = Sample::streamed(concurrency, now, first_byte)
//!             .with_running(concurrency.min(2))
//!             .with_generation(100, ms(2800));
//!         auto.on_sample(&sample, first_byte + ms(2800));
//!     }
//!     now += ms(6000);
//! }
//! assert_eq!(auto.limit(), 2);
//! assert_eq!(auto.baseline_ttft(), Some(ms(200)));
//! // 3 was probed, queued, and is not probed again for a while.
//! assert_eq!(auto.ceiling(now), Some(3));
//! ```
//!
//! # The algorithm
//!
//! Gradient-style, as Envoy's adaptive concurrency filter
//! (<https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/adaptive_concurrency_filter>:
//! `gradient = minRTT / sampleRTT`, the limit scaled by it plus a
//! headroom) and Netflix's concurrency-limits
//! (<https://github.com/Netflix/concurrency-limits>: `Gradient2Limit`
//! compares a short and a long average of the round trip, `VegasLimit`
//! estimates the queue from `limit × (1 − rttNoLoad / rtt)`). Both treat
//! the server as a black box whose latency rises smoothly with load. An
//! Ollama server is not smooth: it has `P` slots, so a request either
//! finds one (time to first token near the baseline, gradient near 1) or
//! waits for a running answer to end (seconds more, gradient far below
//! 1). So the gradient here is read per sample as a verdict, and the
//! concurrency at dispatch turns it into a bound:
//!
//! - the **baseline** is the fastest unqueued time to first token
//!   (Vegas's `rttNoLoad`), renewed every `baseline_window` from the
//!   fastest sample of the last window so it follows lasting change;
//! - a sample is **queued** when its time to first token is above
//!   `queue_ratio × baseline + queue_margin` (2 × + 50 ms): a gradient
//!   under about ½;
//! - **queued at concurrency `c`** proves fewer than `c` slots; the
//!   requests streaming at its first byte (`running`) each hold one, and
//!   one more may be between answers, evaluating its prompt. The limit
//!   drops at once to `min(c − 1, running + 1)`, and `c` becomes a
//!   **ceiling** not probed for `probe_interval` (5 s), doubled at each
//!   failed probe of the same level up to `max_probe_interval` (20 s). A
//!   queued sample dispatched above the limit is from before a back-off
//!   and changes nothing;
//! - **clean with the limit reached** (`running`, else `concurrency`, at
//!   least the limit) proves the limit: it goes up one, unless that meets
//!   the ceiling. `running` never exceeds the slots, so the limit never
//!   goes past `P + 1`: one request in excess at a time, seen as soon as
//!   it is late;
//! - **tokens per second** are kept per concurrency (a running average,
//!   fresh for `rate_memory`): if the last request let in adds less than
//!   `min_gain` (0.2) of one request's rate to the total (a saturated GPU
//!   that slows every stream as much as it adds one), the limit steps
//!   back and that level becomes a ceiling. This is the useful
//!   parallelism, which can be below `OLLAMA_NUM_PARALLEL`.
//!
//! The decision is the pure [`decide`], tested as a table; the
//! [`Controller`] keeps the baseline, the ceiling and the rates.
//!
//! # Why time to first token
//!
//! For an LLM server the whole duration says little: it grows with the
//! answer's length, which the client chooses. Time to first token is
//! prompt evaluation plus any wait for a slot, and the wait is what
//! shows that too many were let in; tokens per second show what sharing
//! the GPU costs each stream.
//!
//! # What the caller gives
//!
//! Per request, in a [`Sample`]: the concurrency at dispatch (required);
//! the time to first token (first body byte of a stream); for streams
//! the number streaming at its first byte (`running`, which makes the
//! back-off exact); whether the model had to load; tokens and the time
//! they took. Loads inflate the time to first token: such samples are
//! never counted as queued nor as baseline, only their rate counts.
//! Whole (not streamed) answers send their headers at the end, so the
//! first byte is the whole duration; [`Sample::whole`] takes Ollama's
//! own `eval_count`/`eval_duration`/`load_duration` from the final
//! message ([`OllamaTimings`]) and counts the time before generation as
//! the time to first token. A request still without its first byte after
//! [`Controller::overdue_after`] can be given at once with
//! [`Sample::waiting`], so the back-off does not wait for its end. A
//! server seen to restart is told with [`Controller::restarted`]. The
//! caller exports [`Controller::limit`], [`Controller::baseline_ttft`]
//! and [`Controller::gradient`] per upstream and model, and logs the
//! [`Decision`]s that change the limit.
//!
//! # Guarantees
//!
//! Against a server of `P` slots and 131 clients that always want more,
//! streams reported with `running` and late requests with
//! [`Sample::waiting`] (tested on a simulated server in virtual time,
//! five seeds, and on `corral-mock-ollama` over sockets):
//!
//! - from `initial = 1`, the limit is within `P ± 1` in a few seconds
//!   and stays there, at `P` but for probes at `P + 1` (above 90 % of
//!   the time at `P`), each ended by the first late request;
//! - after the server changes its `P` (3 → 6 → 2), it settles again
//!   within a minute: up within `max_probe_interval` plus an answer per
//!   step (13–23 s), down within seconds;
//! - at a probe at most one request waits inside the server, and never
//!   more than one per slot from `initial = 1` or after `P` went up; the
//!   503 of a full Ollama queue is never reached;
//! - after a restart seen as such (its requests failed) and told with
//!   [`Controller::restarted`], the limit climbs again from `initial`:
//!   within ±1 of the new `P` in 10–14 s, never more than one request
//!   waiting inside, whether `P` went up or down;
//! - a GPU that saturates below `OLLAMA_NUM_PARALLEL` holds the limit at
//!   its useful parallelism (tested: 6 slots, no gain past 3 → 3 to 4).
//!
//! # Limits
//!
//! - An `initial` above `P` lets `initial − P` wait inside the server
//!   until the first answer; start at 1 (the default) to avoid that.
//! - When `P` goes down while answers run, their slots vanish as they
//!   end, and requests let in meanwhile wait inside until the first is
//!   late: up to as many as the slots lost (6 → 2: 3 in the simulation, 4
//!   on the mock), for a few seconds. A restart that fails the running
//!   requests is the case [`Controller::restarted`] handles without it.
//! - Whole answers give no `running`: the proof of a limit is the
//!   concurrency at dispatch, which counts answers already on the wire,
//!   so a probe can go to `P + 2` (two waiting inside) before a queue is
//!   seen; and a late whole answer is only seen at its end.
//! - The verdict assumes prompts of a similar size: a much longer prompt
//!   evaluates for longer and can look queued (the limit then drops by
//!   one, or to `running + 1`, and is back after `probe_interval`); a
//!   time to first token net of known prompt evaluation avoids it.
//! - Other clients of the same server (another proxy, a direct user)
//!   take slots Corral does not count; the limit then settles lower, as
//!   it should. Replicas sharing one server each need the count of all
//!   (issue 8's shared state) for `concurrency` and `running` to hold.
//! - The throughput rule needs steady rates; with very different answer
//!   lengths per concurrency it is noisy. `min_gain = 0` turns it off.
//!
//! # Cost
//!
//! A sample is a few comparisons and one running average: no allocation
//! after [`Controller::new`], which keeps one rate per possible limit
//! (`max`, 32 by default).
//!
//! # When not to use it
//!
//! When the operator knows `OLLAMA_NUM_PARALLEL` and it does not change,
//! a fixed capacity is exact from the first request and never probes.
//! Behind something that queues on its own (another proxy, a load
//! balancer with its own limit) the time to first token no longer shows
//! Ollama's slots, and the limit found is that of the whole path.

mod config;
mod controller;
mod decide;
mod sample;

pub use config::{
    AdaptiveConfig, DEFAULT_BASELINE_WINDOW, DEFAULT_INITIAL, DEFAULT_MAX,
    DEFAULT_MAX_PROBE_INTERVAL, DEFAULT_MIN, DEFAULT_MIN_GAIN, DEFAULT_PROBE_INTERVAL,
    DEFAULT_QUEUE_MARGIN, DEFAULT_QUEUE_RATIO, DEFAULT_RATE_MEMORY,
};
pub use controller::Controller;
pub use decide::{decide, Cause, Decision, Signals};
pub use sample::{Generation, OllamaTimings, Sample, LOADED_AT_LEAST};
