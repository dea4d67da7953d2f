use corral_core::{End, OnEnd, WatchBody};

use crate::compartment::Slot;

/// The response body of a confined request: holds its compartment slot
/// until the stream has been sent in full, broken or dropped (core's
/// end-of-stream watcher).
pub type ResponseBody<B> = WatchBody<B, Option<Slot>>;

impl OnEnd for Slot {
    fn on_end(self, _end: End<'_>) {
        // However it ended, the compartment has room again.
    }
}
