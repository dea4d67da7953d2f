use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{AgentId, BoxError, Priority};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::ShedReason;
use crate::shared::{wait_for_space, Admitted, Shared};

type Wait = Pin<Box<dyn Future<Output = bool> + Send>>;

pin_project! {
    /// The response future of [`ShedService`](crate::ShedService).
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        state: State<S, F, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, R> {
        Waiting {
            wait: Wait,
            shared: Arc<Shared>,
            call: Option<(S, R, Priority, AgentId)>,
        },
        Calling {
            #[pin]
            future: F,
            // Held until the answer starts: a request counts as waiting
            // until then.
            admitted: Option<Admitted>,
        },
        Refused {
            error: Option<BoxError>,
        },
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    pub(crate) fn passing(future: F, admitted: Option<Admitted>) -> Self {
        Self {
            state: State::Calling { future, admitted },
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }

    pub(crate) fn waiting(
        shared: Arc<Shared>,
        inner: S,
        request: R,
        priority: Priority,
        agent: AgentId,
    ) -> Self {
        Self {
            state: State::Waiting {
                wait: Box::pin(wait_for_space(shared.clone())),
                shared,
                call: Some((inner, request, priority, agent)),
            },
        }
    }
}

impl<S, F, R, T, E> Future for ResponseFuture<S, F, R>
where
    S: Service<R, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { wait, shared, call } => {
                    let room = ready!(wait.as_mut().poll(cx));
                    let Some((mut inner, request, priority, agent)) = call.take() else {
                        return Poll::Ready(Err("shed future polled after completion".into()));
                    };
                    if !room {
                        let load = shared.view().snapshot();
                        let shed = shared.refuse(
                            ShedReason::NoRoomInTime,
                            priority,
                            &load,
                            tokio::time::Instant::now(),
                        );
                        return Poll::Ready(Err(shed.into()));
                    }
                    let admitted = shared.admit(&agent);
                    let future = inner.call(request);
                    this.state.set(State::Calling {
                        future,
                        admitted: Some(admitted),
                    });
                }
                StateProj::Calling { future, admitted } => {
                    let output = ready!(future.poll(cx));
                    admitted.take();
                    return Poll::Ready(output.map_err(Into::into));
                }
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "shed future polled after completion".into())));
                }
            }
        }
    }
}
