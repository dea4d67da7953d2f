//! A connection's wakes to itself, handled within the poll that made
//! them.
//!
//! hyper runs the service's future inside the connection's task, so a
//! request whose body the proxy reads (classify parses every inference
//! body) wakes its own task while it is polled: the body's first read
//! tells the connection it wants data, and the data sent wakes the
//! reader, both the same task. tokio reschedules a task woken during its
//! own poll as a yield, and a yield always wakes a parked worker to
//! steal it (`schedule_local`, `is_yield`): a `futex` wake and a worker
//! that spins up, a request. One connection sending requests one after
//! another showed it: ~2 `futex` calls a request where the bare hyper
//! proxy (whose request body the client connection's task reads, another
//! task) made none, and 50 µs more added latency than the bare proxy for
//! 12 µs more CPU.
//!
//! [`Repolled`] gives the connection a waker of its own: a wake while the
//! connection is being polled only marks it, and the connection is
//! polled again at once, in the same task poll, a few times at most
//! before it yields to the scheduler as tokio would have; a wake at any
//! other time goes to the task.
//!
//! What that changes besides: hyper's own fairness yield (a self-wake
//! after 16 rounds of its HTTP/1 loop) is also polled again, so a busy
//! pipelining connection holds its worker for up to four times as long
//! before it yields; tokio's coop budget still yields (its deferred
//! wake comes after the task's poll, when the wake goes to the task).
//! HTTP/2 gains little: its requests run in tasks of their own. A panic
//! in the connection's poll leaves the state marked as polling; tokio
//! never polls a panicked task again, so nothing waits on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use corral_core::lock;

/// Polls in a row a connection may have when each wakes it again; then
/// it yields, so that one connection cannot hold its worker.
const POLLS_IN_A_ROW: usize = 4;

/// Not being polled: a wake goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake marks it.
const POLLING: u8 = 1;
/// Being polled, and woken meanwhile: polled again.
const WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// `inner`, polled again at once when it wakes itself while polled.
    pub(crate) struct Repolled<F> {
        #[pin]
        inner: F,
        wakes: Option<(Arc<Wakes>, Waker)>,
    }
}

impl<F> Repolled<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self { inner, wakes: None }
    }
}

/// Where a wake goes: the task's waker, and whether the connection is
/// being polled.
#[derive(Default)]
struct Wakes {
    state: AtomicU8,
    /// The waker of the task that first polled the connection: the one a
    /// connection keeps (it is its own task), read with one load.
    task: OnceLock<Waker>,
    /// Set if a poll ever came with another waker: from then on, wakes
    /// go to the last one, kept in `moved`.
    has_moved: AtomicBool,
    moved: Mutex<Option<Waker>>,
}

impl Wakes {
    /// Keeps `waker` as the one to wake.
    fn register(&self, waker: &Waker) {
        match self.task.get() {
            None => {
                let _ = self.task.set(waker.clone());
            }
            Some(task) if task.will_wake(waker) && !self.has_moved.load(Ordering::Acquire) => {}
            Some(_) => {
                let mut moved = lock(&self.moved);
                if !moved.as_ref().is_some_and(|last| last.will_wake(waker)) {
                    *moved = Some(waker.clone());
                }
                self.has_moved.store(true, Ordering::Release);
            }
        }
    }

    fn wake_task(&self) {
        if self.has_moved.load(Ordering::Acquire) {
            if let Some(waker) = lock(&self.moved).as_ref() {
                waker.wake_by_ref();
            }
        } else if let Some(waker) = self.task.get() {
            waker.wake_by_ref();
        }
    }
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // One atomic for both the mark and the poll's end: a wake either
        // marks a poll that then sees the mark, or finds the poll over
        // and wakes the task. Never neither.
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.wake_task(),
        }
    }
}

impl<F: Future> Future for Repolled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let (wakes, waker) = this.wakes.get_or_insert_with(|| {
            let wakes = Arc::new(Wakes::default());
            let waker = Waker::from(wakes.clone());
            (wakes, waker)
        });
        wakes.register(cx.waker());
        let mut inner_cx = Context::from_waker(waker);
        for _ in 0..POLLS_IN_A_ROW {
            wakes.state.store(POLLING, Ordering::Release);
            let poll = this.inner.as_mut().poll(&mut inner_cx);
            let woken = wakes.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
            if poll.is_ready() || !woken {
                return poll;
            }
        }
        // Still waking itself: other tasks first, as tokio would.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task's waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Wakes itself during each of its first `wakes` polls, then is
    /// ready; counts its polls.
    struct SelfWaking {
        wakes: usize,
        polls: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_during_the_poll_is_a_poll_again_not_a_wake_of_the_task() {
        let task = Arc::new(Count::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(Repolled::new(SelfWaking { wakes: 2, polls: 0 }));
        assert_eq!(future.as_mut().poll(&mut cx), Poll::Ready(3));
        assert_eq!(task.get(), 0, "the task was not rescheduled");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_after_a_few_polls() {
        let task = Arc::new(Count::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(Repolled::new(SelfWaking {
            wakes: usize::MAX,
            polls: 0
        }));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(future.inner.polls, POLLS_IN_A_ROW);
        assert_eq!(task.get(), 1, "yielded: the task woken once");
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(future.inner.polls, 2 * POLLS_IN_A_ROW);
        assert_eq!(task.get(), 2);
    }

    /// Pending until told, keeping the last waker it was given.
    #[derive(Default)]
    struct Told {
        told: Arc<std::sync::atomic::AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Told {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.told.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn a_wake_between_polls_wakes_the_task_the_last_poll_came_from() {
        let told = Told::default();
        let (flag, kept) = (told.told.clone(), told.waker.clone());
        let mut future = std::pin::pin!(Repolled::new(told));
        let mut poll_from = |task: &Arc<Count>| {
            let waker = Waker::from(task.clone());
            future.as_mut().poll(&mut Context::from_waker(&waker))
        };
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        assert!(poll_from(&first).is_pending());
        // Moved to another task (the runtime gives a new waker).
        assert!(poll_from(&second).is_pending());
        flag.store(true, Ordering::SeqCst);
        kept.lock().unwrap().take().unwrap().wake();
        assert_eq!((first.get(), second.get()), (0, 1));
        assert!(poll_from(&second).is_ready());
    }

    /// Another thread wakes the connection at any moment, during a poll
    /// or between two: no wake is ever lost (the future would never
    /// finish).
    #[test]
    fn wakes_from_another_thread_racing_the_polls_are_never_lost() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        for _ in 0..200 {
            let told = Told::default();
            let (flag, kept) = (told.told.clone(), told.waker.clone());
            let task = runtime.spawn(Repolled::new(told));
            let waking = std::thread::spawn(move || {
                let wake = || {
                    let waker = kept.lock().unwrap().clone();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                };
                for _ in 0..49 {
                    wake();
                    std::thread::yield_now();
                }
                flag.store(true, Ordering::SeqCst);
                // The wakes after the flag, whatever the polls did.
                wake();
                std::thread::yield_now();
                wake();
            });
            waking.join().unwrap();
            runtime
                .block_on(async {
                    tokio::time::timeout(std::time::Duration::from_secs(10), task).await
                })
                .expect("a wake was lost")
                .unwrap();
        }
    }
}
