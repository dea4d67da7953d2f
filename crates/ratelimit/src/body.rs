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
}

impl Correction {
    pub(crate) fn new(settle: Settle) -> Self {
        Self {
            settle,
            usage: Usage::default(),
        }
    }
}

impl OnEnd for Correction {
    fn on_data(&mut self, chunk: &[u8]) {
        self.usage.read(chunk);
    }

    fn on_end(self, _end: End<'_>) {
        // A broken or abandoned answer is charged what it generated, if it
        // said; else the estimate stands.
        if let Some(generated) = self.usage.generated {
            self.settle.settle(generated);
        }
    }
}
