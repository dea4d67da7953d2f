//! The coalesced call: one upstream call shared by identical requests.
//! Its frames are kept as they come, and every reader (the leader and
//! each follower) reads them from the first, so a late follower first
//! gets what was already produced.

use corral_core::lock;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use corral_core::BoxError;
use http::{HeaderMap, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;

/// The head, frames and end of the leader's call, and who still reads it.
pub(crate) struct Coalesced {
    state: Mutex<State>,
    abandoned: Notify,
}

enum Head {
    Waiting,
    Ready {
        status: StatusCode,
        headers: HeaderMap,
    },
    Failed(Option<BoxError>),
}

enum End {
    Open,
    Done,
    Broken(String),
}

struct State {
    head: Head,
    chunks: Vec<Bytes>,
    end: End,
    readers: usize,
    closed: bool,
    wakers: Vec<Waker>,
}

impl Coalesced {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                head: Head::Waiting,
                chunks: Vec::new(),
                end: End::Open,
                readers: 0,
                closed: false,
                wakers: Vec::new(),
            }),
            abandoned: Notify::new(),
        })
    }

    /// A new reader from the first frame; `None` once the call stopped
    /// taking readers (everyone left and the call was dropped).
    pub(crate) fn reader(self: &Arc<Self>, leader: bool) -> Option<Reader> {
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        state.readers += 1;
        Some(Reader {
            call: self.clone(),
            next: 0,
            leader,
        })
    }

    fn wake(state: &mut State) {
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
    }

    pub(crate) fn headers(&self, status: StatusCode, headers: HeaderMap) {
        let mut state = lock(&self.state);
        state.head = Head::Ready { status, headers };
        Self::wake(&mut state);
    }

    pub(crate) fn failed(&self, error: BoxError) {
        let mut state = lock(&self.state);
        state.head = Head::Failed(Some(error));
        state.end = End::Broken("the upstream call failed".into());
        Self::wake(&mut state);
    }

    pub(crate) fn chunk(&self, chunk: Bytes) {
        let mut state = lock(&self.state);
        state.chunks.push(chunk);
        Self::wake(&mut state);
    }

    pub(crate) fn end(&self, broken: Option<String>) {
        let mut state = lock(&self.state);
        state.end = match broken {
            Some(message) => End::Broken(message),
            None => End::Done,
        };
        Self::wake(&mut state);
    }

    /// Resolves when nobody listens any more; then no one can join.
    pub(crate) async fn abandoned(&self) {
        loop {
            self.abandoned.notified().await;
            let mut state = lock(&self.state);
            if state.readers == 0 {
                state.closed = true;
                return;
            }
        }
    }
}

/// One reader of a coalesced call: the leader or a follower.
pub(crate) struct Reader {
    call: Arc<Coalesced>,
    next: usize,
    leader: bool,
}

/// What a reader gets once the headers are known.
pub(crate) enum HeadOutcome {
    Ready(StatusCode, HeaderMap),
    /// The call failed: the leader gets its error, the others try on
    /// their own.
    Failed(Option<BoxError>),
}

impl Reader {
    /// Waits for the answer's headers.
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<HeadOutcome> {
        let mut state = lock(&self.call.state);
        match &mut state.head {
            Head::Waiting => {
                state.wakers.push(cx.waker().clone());
                Poll::Pending
            }
            Head::Ready { status, headers } => {
                Poll::Ready(HeadOutcome::Ready(*status, headers.clone()))
            }
            Head::Failed(error) => Poll::Ready(HeadOutcome::Failed(if self.leader {
                error.take()
            } else {
                None
            })),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = lock(&self.call.state);
        state.readers -= 1;
        if state.readers == 0 {
            drop(state);
            self.call.abandoned.notify_one();
        }
    }
}

/// The answer's body as one reader sees it.
pub(crate) struct ReaderBody {
    reader: Reader,
    finished: bool,
}

impl ReaderBody {
    pub(crate) fn new(reader: Reader) -> Self {
        Self {
            reader,
            finished: false,
        }
    }
}

impl http_body::Body for ReaderBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let reader = &mut this.reader;
        let mut state = lock(&reader.call.state);
        if let Some(chunk) = state.chunks.get(reader.next).cloned() {
            reader.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &state.end {
            End::Done => Poll::Ready(None),
            End::Broken(message) => {
                let message = message.clone();
                drop(state);
                // Said once to each reader; the next poll ends its body.
                this.finished = true;
                Poll::Ready(Some(Err(message.into())))
            }
            End::Open => {
                state.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
