use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also when a thread panicked while holding it.
///
/// Corral's locks guard state whose every change completes before
/// anything can panic, so a poisoned lock still holds consistent state:
/// going on serves the next requests, where failing would refuse them all
/// for one panic.
///
/// ```
/// let seen = std::sync::Mutex::new(1);
/// *corral_core::lock(&seen) += 1;
/// assert_eq!(*corral_core::lock(&seen), 2);
/// ```
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
