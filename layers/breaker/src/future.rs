use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{
    classify_error, classify_status, AttemptTimedOut, BoxError, Failure, Outcome, WatchBody,
};
use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::breakers::Breakers;
use crate::circuit::Admission;

/// A call in progress on one breaker: recorded exactly once, however it
/// ends.
pub struct Call {
    breakers: Arc<Breakers>,
    key: Arc<str>,
    admission: Admission,
    timed_out: Option<AttemptTimedOut>,
    started: Instant,
    slow: bool,
    done: bool,
}

corral_core::impl_debug!(Call { key, done });

impl Call {
    pub(crate) fn new(
        breakers: Arc<Breakers>,
        key: Arc<str>,
        admission: Admission,
        timed_out: Option<AttemptTimedOut>,
    ) -> Self {
        Self {
            breakers,
            key,
            admission,
            timed_out,
            started: Instant::now(),
            slow: false,
            done: false,
        }
    }

    pub(crate) fn record(&mut self, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.breakers
                .record(&self.key, self.admission, outcome, self.slow);
        }
    }

    /// The answer's headers are here: a slow first byte is noted.
    fn headers_arrived(&mut self) {
        self.slow = self
            .breakers
            .config
            .slow_call_duration
            .is_some_and(|limit| self.started.elapsed() > limit);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before its end: a layer above gave up on it for time
        // (the upstream's failure), or the client left (nobody's).
        let outcome = if self.timed_out.as_ref().is_some_and(AttemptTimedOut::is_set) {
            Outcome::Failure(Failure::Timeout)
        } else {
            Outcome::Ignored
        };
        self.record(outcome);
    }
}

pin_project! {
    /// The response future of [`BreakerService`](crate::BreakerService).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F, call: Option<Call> },
        Refused { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn calling(future: F, call: Call) -> Self {
        Self {
            state: State::Calling {
                future,
                call: Some(call),
            },
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { future, call } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                let Some(mut call) = call.take() else {
                    return Poll::Ready(Err("breaker future polled after completion".into()));
                };
                match result {
                    Ok(response) => {
                        call.headers_arrived();
                        match classify_status(response.status()) {
                            // A success is known only when the stream ends
                            // well: the body carries the call on.
                            Outcome::Success => {
                                Poll::Ready(Ok(WatchBody::response(response, Some(call))))
                            }
                            outcome => {
                                call.record(outcome);
                                Poll::Ready(Ok(WatchBody::response(response, None)))
                            }
                        }
                    }
                    Err(err) => {
                        call.record(classify_error(&*err));
                        Poll::Ready(Err(err))
                    }
                }
            }
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "breaker future polled after completion".into()))),
        }
    }
}
