//! With `capacity = "auto"`: what each request on such an upstream
//! measured (time to first byte, requests streaming then, Ollama's own
//! timings at the end), given to the fleet as it ends.

use std::sync::Arc;

use corral_adaptive::{OllamaTimings, Sample};
use corral_core::{End, OnEnd};
use corral_fleet::Fleet;

use super::auto::Measured;
use tokio::time::Instant;

/// How much of the end of an answer is kept to read Ollama's timings
/// from its last message.
const TAIL: usize = 2048;

/// Watches one answer's body for the fleet's controller.
pub(crate) struct Measure {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) measured: Arc<Measured>,
    pub(crate) upstream: usize,
    pub(crate) model: Arc<str>,
    /// Requests of the model running there when it was sent, itself
    /// included.
    pub(crate) concurrency: usize,
    pub(crate) dispatched: Instant,
    pub(crate) loaded: bool,
    pub(crate) streamed: bool,
    first: Option<(Instant, usize)>,
    tail: Vec<u8>,
}

impl Measure {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        fleet: Arc<Fleet>,
        measured: Arc<Measured>,
        upstream: usize,
        model: Arc<str>,
        concurrency: usize,
        dispatched: Instant,
        loaded: bool,
        streamed: bool,
    ) -> Self {
        Self {
            fleet,
            measured,
            upstream,
            model,
            concurrency,
            dispatched,
            loaded,
            streamed,
            first: None,
            tail: Vec::new(),
        }
    }
}

impl OnEnd for Measure {
    fn on_data(&mut self, chunk: &[u8]) {
        if self.first.is_none() {
            let running = if self.streamed {
                self.fleet.streaming(self.upstream, &self.model, 1)
            } else {
                0
            };
            self.first = Some((Instant::now(), running));
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }

    fn on_end(self, end: End<'_>) {
        let Some((first, running)) = self.first else {
            return;
        };
        if self.streamed {
            self.fleet.streaming(self.upstream, &self.model, -1);
        }
        if !matches!(end, End::Complete) {
            return;
        }
        let timings = timings(&self.tail);
        let sample = if self.streamed {
            let mut sample = Sample::streamed(self.concurrency, self.dispatched, first)
                .with_running(running)
                .with_loaded(self.loaded);
            if let Some(t) = &timings {
                if let (Some(tokens), Some(nanos)) = (t.eval_count, t.eval_duration) {
                    sample = sample.with_generation(tokens, std::time::Duration::from_nanos(nanos));
                }
                // Placed beside the request that started a load, it waited
                // for the load too: Ollama says so in its own timings.
                let waited_for_load = t.load_duration.is_some_and(|d| {
                    std::time::Duration::from_nanos(d) >= corral_adaptive::LOADED_AT_LEAST
                });
                if waited_for_load {
                    sample = sample.with_loaded(true);
                }
            }
            sample
        } else {
            let Some(timings) = timings else {
                return;
            };
            let elapsed = Instant::now().saturating_duration_since(self.dispatched);
            let sample = Sample::whole(self.concurrency, elapsed, &timings);
            let loaded = sample.loaded || self.loaded;
            sample.with_loaded(loaded)
        };
        self.measured
            .sample(&self.fleet, self.upstream, &self.model, &sample);
    }
}

/// Ollama's timings from the end of an answer: its last message holds
/// `total_duration` and what follows it (`load_duration`,
/// `prompt_eval_*`, `eval_*`) up to its closing brace.
fn timings(tail: &[u8]) -> Option<OllamaTimings> {
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind("\"total_duration\"")?;
    let rest = text[at..].trim_end();
    let end = rest.find('}')?;
    serde_json::from_str(&format!("{{{}}}", &rest[..end])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_are_read_from_the_last_message() {
        let ndjson = b"{\"response\":\"a\",\"done\":false}\n{\"response\":\"\",\"done\":true,\"context\":[1,2],\"total_duration\":5000,\"load_duration\":10,\"prompt_eval_count\":3,\"prompt_eval_duration\":20,\"eval_count\":7,\"eval_duration\":4000}\n";
        let t = timings(ndjson).unwrap();
        assert_eq!(
            (t.eval_count, t.eval_duration, t.load_duration),
            (Some(7), Some(4000), Some(10))
        );
        assert!(
            timings(b"data: {\"choices\":[]}\n\n").is_none(),
            "OpenAI's shape has none"
        );
    }
}
