use corral_core::{End, OnEnd, Usage, WatchBody};

use crate::lengths::Learning;
use crate::permit::Permit;

/// The response body of a scheduled request: holds its permit until the
/// stream has been sent in full, broken or dropped (core's end-of-stream
/// watcher), because the GPU is busy for the whole generation, not only
/// until the headers.
pub type ResponseBody<B> = WatchBody<B, Option<Settling>>;

/// A permit held until the answer ends. On the way it reads the token
/// counts the answer reports (`prompt_eval_count`/`eval_count`, or
/// OpenAI's and Anthropic's `usage`) and settles the agent's fair-share
/// counter with the real cost when it gives the permit back.
pub struct Settling {
    permit: Permit,
    usage: Usage,
    /// The answer is an error (4xx, 5xx): it generated nothing.
    failed: bool,
    /// What a complete answer teaches the agent's expected lengths.
    learning: Option<Learning>,
}

corral_core::impl_debug!(Settling { usage, failed });

/// What an error answer that reports no usage costs its agent: about one
/// token. Charged its full estimate, an agent whose requests the upstream
/// fails would wait behind every other agent's fair share for work it
/// never got.
const FAILED_COST: f64 = 1.0;

impl Settling {
    pub(crate) fn new(
        permit: Permit,
        status: http::StatusCode,
        learning: Option<Learning>,
    ) -> Self {
        Self {
            permit,
            usage: Usage::default(),
            failed: status.is_client_error() || status.is_server_error(),
            learning,
        }
    }
}

impl OnEnd for Settling {
    fn on_data(&mut self, chunk: &[u8]) {
        self.usage.read(chunk);
    }

    fn on_end(mut self, end: End<'_>) {
        let hold_cost = self.hold_cost();
        // Only an answer sent in full says how long its kind runs: one cut
        // short would teach it shorter than it is. An error generated
        // nothing and held the permit for a moment: what its agent's
        // next request is likely to cost too, while the errors last.
        if let (End::Complete, Some(learning)) = (&end, self.learning.take()) {
            match (self.failed, self.usage.generated) {
                (false, Some(generated)) => learning.learn(generated),
                (true, generated) => learning.learn(generated.unwrap_or(0)),
                (false, None) => {}
            }
        }
        // However it ended, the GPU is free: the permit goes back now,
        // settled with what the answer reported.
        if let Some(cost) = self.usage.cost() {
            self.permit.settle(cost);
        } else if self.failed {
            self.permit.settle_failed(FAILED_COST);
        }
        if let Some(cost) = hold_cost {
            self.permit.settle_hold(cost);
        }
    }
}

impl Settling {
    /// What the request cost as its hold is learnt: the tokens it
    /// generated, as the answer says, with its prompt as it was
    /// predicted. The holds are predicted for costs made that way;
    /// Ollama's `prompt_eval_count` is another measure (the template's
    /// tokens in, those found in its cache out), and a line fitted
    /// across two measures is off by their difference: 50 ms on every
    /// estimate in the `waits` bench (22 tokens predicted from the body,
    /// 3 counted), a quarter of the short waits. (The agent's fair share
    /// is settled with the reported counts: a prompt Ollama had cached
    /// cost the GPU less.)
    fn hold_cost(&self) -> Option<f64> {
        match (&self.learning, self.usage.generated, self.failed) {
            (Some(learning), Some(generated), false) => {
                Some(learning.prompt + 2.0 * generated as f64)
            }
            _ => None,
        }
    }
}
