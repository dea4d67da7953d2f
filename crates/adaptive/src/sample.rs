use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// A `load_duration` at least this long in Ollama's final message means the
/// model had to load (a loaded model reports a few milliseconds).
pub const LOADED_AT_LEAST: Duration = Duration::from_millis(100);

/// What one request to one upstream and model showed: give the
/// [`Controller`](crate::Controller) one per request, when it ends (or
/// earlier with [`Sample::waiting`] when its first byte is late).
///
/// Only `concurrency` is required; every other part is used when given.
///
/// ```
/// use corral_adaptive::Sample;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// // A stream: dispatched third at once, first NDJSON line 210 ms later,
/// // then 100 tokens in 2.5 s while two others were streaming too.
/// let dispatched = Instant::now();
/// let sample = Sample::streamed(3, dispatched, dispatched + Duration::from_millis(210))
///     .with_running(3)
///     .with_generation(100, Duration::from_millis(2500));
/// assert_eq!(sample.ttft, Some(Duration::from_millis(210)));
/// assert_eq!(sample.generation.unwrap().tokens_per_sec(), Some(40.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Requests in flight to this upstream and model when this one was
    /// dispatched, this one included.
    pub concurrency: usize,
    /// Time from dispatch to the first token: the first body byte of a
    /// stream, or what Ollama's final message says for a whole answer
    /// ([`Sample::whole`]); `None` when not known (the client left first).
    pub ttft: Option<Duration>,
    /// Requests to this upstream and model streaming when this one's first
    /// byte came (first byte seen, end not yet), this one included. Each
    /// holds a slot, so this is a lower bound of the server's parallelism;
    /// it makes the back-off exact. Streams only.
    pub running: Option<usize>,
    /// The model had to load for this request: its time to first token
    /// says nothing of queueing.
    pub loaded: bool,
    /// Tokens generated and how long generating them took.
    pub generation: Option<Generation>,
}

/// Tokens generated and the time they took (from the first token to the
/// last, or Ollama's `eval_duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Tokens generated (Ollama's `eval_count`).
    pub tokens: u64,
    /// How long generating them took.
    pub duration: Duration,
}

impl Generation {
    /// Tokens per second; `None` for no tokens or no time.
    pub fn tokens_per_sec(&self) -> Option<f64> {
        let secs = self.duration.as_secs_f64();
        (self.tokens > 0 && secs > 0.0).then(|| self.tokens as f64 / secs)
    }
}

/// The timings of Ollama's final message (`done: true`), in nanoseconds
/// as Ollama writes them; deserializes from that message.
///
/// ```
/// use corral_adaptive::OllamaTimings;
///
/// let done: OllamaTimings = serde_json::from_str(r#"{
///     "done": true, "total_duration": 3200000000, "load_duration": 2000000,
///     "prompt_eval_count": 26, "prompt_eval_duration": 200000000,
///     "eval_count": 100, "eval_duration": 2900000000
/// }"#).unwrap();
/// assert_eq!(done.eval_count, Some(100));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct OllamaTimings {
    /// The whole request inside Ollama.
    pub total_duration: Option<u64>,
    /// Loading the model (a few milliseconds when it was loaded).
    pub load_duration: Option<u64>,
    /// Evaluating the prompt.
    pub prompt_eval_duration: Option<u64>,
    /// Tokens generated.
    pub eval_count: Option<u64>,
    /// Generating them.
    pub eval_duration: Option<u64>,
}

impl Sample {
    /// A request dispatched at `concurrency` (this one included), nothing
    /// else known yet.
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency,
            ttft: None,
            running: None,
            loaded: false,
            generation: None,
        }
    }

    /// A stream dispatched at `concurrency` whose first body byte (first
    /// NDJSON line, first SSE event) came at `first_byte`.
    pub fn streamed(concurrency: usize, dispatched: Instant, first_byte: Instant) -> Self {
        Self {
            ttft: Some(first_byte.saturating_duration_since(dispatched)),
            ..Self::new(concurrency)
        }
    }

    /// A request still without its first byte after `waited`: given once
    /// `waited` passes [`Controller::overdue_after`](crate::Controller::overdue_after),
    /// it is known queued without waiting for its end, and the controller
    /// backs off at once. `running` is counted now.
    ///
    /// ```
    /// use corral_adaptive::Sample;
    /// use std::time::Duration;
    ///
    /// let late = Sample::waiting(4, Duration::from_millis(900)).with_running(3);
    /// assert_eq!(late.ttft, Some(Duration::from_millis(900)));
    /// assert_eq!(late.generation, None);
    /// ```
    pub fn waiting(concurrency: usize, waited: Duration) -> Self {
        Self {
            ttft: Some(waited),
            ..Self::new(concurrency)
        }
    }

    /// A whole (not streamed) answer, dispatched at `concurrency`, that
    /// took `elapsed` from dispatch to its end, with the timings of its
    /// body. Its headers came at the end, so the time to first token is
    /// `elapsed` less `eval_duration` (waiting, loading and the prompt);
    /// a `load_duration` of at least [`LOADED_AT_LEAST`] marks it loaded.
    /// Without `eval_duration` the time to first token stays unknown.
    ///
    /// ```
    /// use corral_adaptive::{OllamaTimings, Sample};
    /// use std::time::Duration;
    ///
    /// let timings = OllamaTimings {
    ///     eval_count: Some(100),
    ///     eval_duration: Some(2_900_000_000),
    ///     load_duration: Some(2_000_000),
    ///     ..OllamaTimings::default()
    /// };
    /// let sample = Sample::whole(2, Duration::from_millis(3120), &timings);
    /// assert_eq!(sample.ttft, Some(Duration::from_millis(220)));
    /// assert!(!sample.loaded);
    /// assert_eq!(sample.generation.unwrap().tokens, 100);
    /// ```
    pub fn whole(concurrency: usize, elapsed: Duration, timings: &OllamaTimings) -> Self {
        let eval = timings.eval_duration.map(Duration::from_nanos);
        Self {
            ttft: eval.map(|eval| elapsed.saturating_sub(eval)),
            loaded: timings
                .load_duration
                .is_some_and(|d| Duration::from_nanos(d) >= LOADED_AT_LEAST),
            generation: timings
                .eval_count
                .zip(eval)
                .map(|(tokens, duration)| Generation { tokens, duration }),
            ..Self::new(concurrency)
        }
    }

    /// The same, with `running` requests streaming at its first byte (see
    /// the field).
    pub fn with_running(mut self, running: usize) -> Self {
        self.running = Some(running);
        self
    }

    /// The same, with `tokens` generated in `duration`.
    pub fn with_generation(mut self, tokens: u64, duration: Duration) -> Self {
        self.generation = Some(Generation { tokens, duration });
        self
    }

    /// The same, marked as having loaded the model (or not).
    pub fn with_loaded(mut self, loaded: bool) -> Self {
        self.loaded = loaded;
        self
    }
}
