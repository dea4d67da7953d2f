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
    /// Whether the connection is to finish now; registers the task first,
    /// so a drain that starts after the flag was read still wakes it.
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

    /// A connection that ends once told to, counting the times it was.
    struct Conn {
        told: u32,
        polls: u32,
    }

    impl Future for Conn {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            self.polls += 1;
            if self.told > 0 {
                Poll::Ready(self.told)
            } else {
                Poll::Pending
            }
        }
    }

    fn tell(mut conn: Pin<&mut Conn>) {
        conn.told += 1;
    }

    fn conn() -> Conn {
        Conn { told: 0, polls: 0 }
    }

    #[tokio::test]
    async fn a_watched_connection_is_told_once_and_woken() {
        let drain = Drain::default();
        let task = tokio::spawn(drain.watch(conn(), tell));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drain.start();
        drain.start();
        assert_eq!(task.await.unwrap(), 1);
        assert!(lock(&drain.shared.wakers).is_empty());
    }

    #[tokio::test]
    async fn a_connection_watched_after_the_start_is_told_at_its_first_poll() {
        let drain = Drain::default();
        drain.start();
        let mut watched = std::pin::pin!(drain.watch(conn(), tell));
        let told = std::future::poll_fn(|cx| Poll::Ready(watched.as_mut().poll(cx))).await;
        assert_eq!(told, Poll::Ready(1));
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
                let told = runtime
                    .block_on(async {
                        tokio::time::timeout(std::time::Duration::from_secs(10), task).await
                    })
                    .expect("a connection was never told")
                    .unwrap();
                assert_eq!(told, 1);
            }
        }
    }

    #[test]
    fn polls_after_the_first_take_no_lock_and_register_nothing_new() {
        let drain = Drain::default();
        let mut watched = Box::pin(drain.watch(conn(), tell));
        // A task's waker, as tokio's: its clones wake the same task.
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: Arc<Self>) {}
        }
        let waker = Waker::from(Arc::new(Task));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(watched.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(lock(&drain.shared.wakers).len(), 1);
        // The lock held elsewhere: a registered connection polls on.
        let held = lock(&drain.shared.wakers);
        assert!(watched.as_mut().poll(&mut cx).is_pending());
        drop(held);
        assert_eq!(watched.conn.polls, 4);
    }
}
