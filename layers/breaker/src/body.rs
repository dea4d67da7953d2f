use corral_core::{End, OnEnd, WatchBody};

use crate::future::Call;

/// The response body of a call whose headers said success (core's
/// end-of-stream watcher): a clean end is a success, a broken stream a
/// failure, a client that leaves nothing.
pub type ResponseBody<B> = WatchBody<B, Option<Call>>;

impl OnEnd for Call {
    fn on_end(mut self, end: End<'_>) {
        match end {
            // Dropped: `Call`'s own drop tells a timeout from a client
            // that left.
            End::Cancelled => {}
            end => self.record(end.outcome()),
        }
    }
}
