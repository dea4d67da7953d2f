//! Graceful shutdown's signal to the open connections: each one, told,
//! finishes the request it is serving and closes.
//!
//! hyper-util's `GracefulShutdown` did this with a `watch` channel whose
//! `changed()` every connection polled at each of its own polls: 160
//! instructions under callgrind, three times a small request and once a
//! chunk of every stream (benches/RESULTS.md, "Third pass"). Here a
//! connection registers its task's waker once and then reads a flag;
//! the shutdown sets the flag and wakes the registered tasks. Waiting
//! for the connections to end is the server's, on its `JoinSet`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

/// The shutdown's signal, shared by the server and every connection.
#[derive(Clone, Default)]
pub(crate) struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    next: AtomicU64,
    /// The tasks of the connections being watched, by their number.
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Drain {
    /// Watches `conn`: once [`start`](Self::start) is called, `shutdown`
    /// is called on it (at once if the drain has started already).
    pub(crate) fn watch<C: Future>(&self, conn: C, shutdown: fn(Pin<&mut C>)) -> Watched<C> {
        Watched {
            conn,
            shutdown,
            registration: Registration {
                shared: self.shared.clone(),
                id: self.shared.next.fetch_add(1, Ordering::Relaxed),
                waker: None,
                told: false,
            },
        }
    }

    /// Tells every watched connection, now and to come, to finish.
    pub(crate) fn start(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = lock(&self.shared.wakers).drain().map(|(_, w)| w).collect();
        for waker in wakers {
            waker.wake();
        }
    }
}

fn lock(wakers: &Mutex<HashMap<u64, Waker>>) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
    // A waker table stays whole whatever panicked while holding it.
    wakers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection's place among the watched.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
    /// The waker registered, compared at each poll without the lock.
    waker: Option<Waker>,
    /// Whether the connection has been told to finish.
    told: bool,
}

impl Registration {
    /// Whether to tell the connection to finish at this poll (once, the
    /// first poll after the drain started); registers the task first, so
    /// a drain that starts after the flag was read still wakes it.
    fn poll_told(&mut self, cx: &Context<'_>) -> bool {
        if self.told {
            return false;
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            lock(&self.shared.wakers).insert(self.id, waker.clone());
            self.waker = Some(waker);
        }
        self.told = self.shared.stopping.load(Ordering::SeqCst);
        self.told
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.waker.is_some() {
            lock(&self.shared.wakers).remove(&self.id);
        }
    }
}

pin_project! {
    /// A connection watched by a [`Drain`].
    pub(crate) struct Watched<C> {
        #[pin]
        conn: C,
        shutdown: fn(Pin<&mut C>),
        registration: Registration,
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if this.registration.poll_told(cx) {
            (this.shutdown)(this.conn.as_mut());
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that, told to finish, takes one more poll to end (it
    /// wakes itself for it), counting the times it was told.
    struct Conn {
        told: u32,
        polls: u32,
        polls_since_told: u32,
    }

    impl Future for Conn {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.polls += 1;
            if self.told == 0 {
                return Poll::Pending;
            }
            self.polls_since_told += 1;
            if self.polls_since_told < 2 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.told)
        }
    }

    fn tell(mut conn: Pin<&mut Conn>) {
        conn.told += 1;
    }

    fn conn() -> Conn {
        Conn {
            told: 0,
            polls: 0,
            polls_since_told: 0,
        }
    }

    /// A task's waker, as tokio's: its clones wake the same task.
    fn task_waker() -> Waker {
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Task))
    }

    async fn ended<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the connection was never told")
            .unwrap()
    }

    #[tokio::test]
    async fn a_watched_connection_is_told_once_and_woken() {
        let drain = Drain::default();
        let task = tokio::spawn(drain.watch(conn(), tell));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        // Registered and asleep: only the wake can reach it.
        assert_eq!(lock(&drain.shared.wakers).len(), 1);
        drain.start();
        drain.start();
        assert_eq!(ended(task).await, 1);
        assert!(lock(&drain.shared.wakers).is_empty());
    }

    #[tokio::test]
    async fn a_connection_watched_after_the_start_is_told_at_its_first_poll() {
        let drain = Drain::default();
        drain.start();
        let mut watched = Box::pin(drain.watch(conn(), tell));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(watched.as_mut().poll(&mut cx).is_pending());
        assert_eq!(watched.conn.told, 1);
        // Registered after the start's wake-up: gone with the connection.
        assert_eq!(lock(&drain.shared.wakers).len(), 1);
        assert_eq!(watched.as_mut().poll(&mut cx), Poll::Ready(1));
        drop(watched);
        assert!(lock(&drain.shared.wakers).is_empty());
    }

    #[tokio::test]
    async fn a_connection_that_ends_leaves_the_table() {
        let drain = Drain::default();
        let mut watched = Box::pin(drain.watch(conn(), tell));
        let polled = std::future::poll_fn(|cx| Poll::Ready(watched.as_mut().poll(cx))).await;
        assert_eq!(polled, Poll::Pending);
        assert_eq!(lock(&drain.shared.wakers).len(), 1);
        drop(watched);
        assert!(lock(&drain.shared.wakers).is_empty());
    }

    #[test]
    fn a_start_racing_the_first_polls_is_never_missed() {
        // Many connections polled on threads while the drain starts: each
        // either registers before the start (and is woken) or reads the
        // flag after it (and is told at once); none sleeps on.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        for _ in 0..50 {
            let drain = Drain::default();
            let tasks: Vec<_> = (0..32)
                .map(|_| runtime.spawn(drain.watch(conn(), tell)))
                .collect();
            drain.start();
            for task in tasks {
                assert_eq!(runtime.block_on(ended(task)), 1);
            }
        }
    }

    #[test]
    fn polls_after_the_first_take_no_lock_and_register_nothing_new() {
        let drain = Drain::default();
        let mut watched = Box::pin(drain.watch(conn(), tell));
        let waker = task_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(watched.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(lock(&drain.shared.wakers).len(), 1);
        // The lock held elsewhere: a registered connection polls on (were
        // it to take the lock, this thread would deadlock: a hang, not a
        // pass).
        let held = lock(&drain.shared.wakers);
        assert!(watched.as_mut().poll(&mut cx).is_pending());
        drop(held);
        assert_eq!(watched.conn.polls, 4);
    }
}
