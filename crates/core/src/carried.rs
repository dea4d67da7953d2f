//! What a request carries in its extensions for the proxy's own use:
//! never read from the wire, so no client can set it.

use std::sync::Arc;

use crate::AgentId;

/// Put in a request's extensions by whoever wants to know when it leaves
/// the stack for the upstream (an async job's runner tells `queued` from
/// `running` by it); the upstream service marks it as it sends. A clone
/// marks the same flag, so retries' copies of the request count too.
///
/// ```
/// use corral_core::Dispatched;
///
/// let dispatched = Dispatched::default();
/// let in_the_request = dispatched.clone();
/// assert!(!dispatched.is_marked());
/// in_the_request.mark();
/// assert!(dispatched.is_marked());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Dispatched(Arc<std::sync::atomic::AtomicBool>);

impl Dispatched {
    /// The request has been sent upstream.
    pub fn mark(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether it has.
    pub fn is_marked(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Put in a request's extensions by the proxy itself (never read from
/// the wire): the request is from this agent, identified when it was
/// accepted. An async job or a saga's step runs later, on any replica,
/// without the key it was submitted with (Redis never holds the key);
/// `classify` takes the agent from here, and the auth layer does not ask
/// it to sign again (its submission was checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// The agent.
    pub agent: AgentId,
    /// Whether a key proved it when it was accepted.
    pub authenticated: bool,
}
