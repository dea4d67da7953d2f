/// The ready service out of `inner`, with a clone left in its place.
///
/// `poll_ready` made `inner` ready for the call at hand. A layer that
/// calls it later (after a wait, or in a task of its own) takes that one
/// with the request; the clone stays behind for the next request, and the
/// next `poll_ready` makes it ready in turn.
///
/// ```
/// let mut inner = vec![1];
/// let ready = corral_core::take_ready(&mut inner);
/// inner.push(2);
/// assert_eq!((ready, inner), (vec![1], vec![1, 2]));
/// ```
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
