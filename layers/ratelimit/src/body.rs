use corral_core::{End, OnEnd, Usage, WatchBody};

use crate::plan::Settle;

/// The response body of a rate-limited request (core's end-of-stream
/// watcher): reads the tokens the answer reports and corrects the token
/// quotas when it ends.
pub type ResponseBody<B> = WatchBody<B, Option<Correction>>;

/// The token charge made up front, corrected by what the answer reports
/// once it ends.
#[derive(Debug)]
pub struct Correction {
    settle: Settle,
    usage: Usage,
    /// The answer is an error (4xx, 5xx).
    failed: bool,
}

impl Correction {
    pub(crate) fn new(settle: Settle, status: http::StatusCode) -> Self {
        Self {
            settle,
            usage: Usage::default(),
            failed: status.is_client_error() || status.is_server_error(),
        }
    }
}

impl OnEnd for Correction {
    fn on_data(&mut self, chunk: &[u8]) {
        self.usage.read(chunk);
    }

    fn on_end(self, end: End<'_>) {
        match (end, self.usage.generated) {
            // Complete: what it says it generated.
            (End::Complete, Some(generated)) => self.settle.settle(generated),
            // Broken or abandoned: the counts so far (Anthropic's
            // `message_start` says 0) are no refund; more than estimated
            // is charged.
            (_, Some(generated)) => self.settle.settle_at_least(generated),
            // An error that reports nothing generated nothing: the charge
            // comes back.
            (_, None) if self.failed => self.settle.settle(0),
            // An answer that says nothing (a stream without usage, a
            // client that left before the counts): the estimate stands.
            (_, None) => self.settle.keep(),
        }
    }
}
