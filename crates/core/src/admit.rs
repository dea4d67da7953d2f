//! The one shape of a layer that waits to be let in, then calls: a permit
//! (priority), a compartment's slot (bulkhead), room in the queue (shed),
//! a quota's verdict (ratelimit). Each layer gives the wait (an admission
//! future) and what to do with the answer and what the admission gave; the
//! states in between are written once, here.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_core::{AdmitThenCall, BoxError};
//! use tower::service_fn;
//!
//! let inner = service_fn(|request: u32| async move { Ok::<_, BoxError>(request * 2) });
//! // Let in at once with a guard of "slot 7".
//! let admitted = AdmitThenCall::admitting(std::future::ready(Ok::<_, BoxError>("slot 7")), inner, 21);
//! let (answer, guard) = admitted.await.unwrap();
//! assert_eq!((answer, guard), (42, Some("slot 7")));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::Service;

use crate::BoxError;

pin_project! {
    /// Waits for an admission `A` (whose output is what the request holds
    /// while it runs, `G`, or a refusal), then calls the inner service
    /// `S` with the request `R`; resolves to the answer and the guard.
    pub struct AdmitThenCall<A, S, R, F, G> {
        #[pin]
        state: State<A, S, R, F, G>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A, S, R, F, G> {
        Admitting {
            #[pin]
            admit: A,
            call: Option<(S, R)>,
        },
        Calling {
            #[pin]
            future: F,
            guard: Option<G>,
        },
        Refused {
            error: Option<BoxError>,
        },
    }
}

impl<A, S, R, F, G> AdmitThenCall<A, S, R, F, G> {
    /// Waits for `admit`, then calls `inner` with `request`.
    pub fn admitting(admit: A, inner: S, request: R) -> Self {
        Self {
            state: State::Admitting {
                admit,
                call: Some((inner, request)),
            },
        }
    }

    /// Already called (let in at once, or not concerned), holding `guard`.
    pub fn calling(future: F, guard: Option<G>) -> Self {
        Self {
            state: State::Calling { future, guard },
        }
    }

    /// Refused before any call.
    pub fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<A, S, R, F, G, AE, T, E> Future for AdmitThenCall<A, S, R, F, G>
where
    A: Future<Output = Result<G, AE>>,
    AE: Into<BoxError>,
    S: Service<R, Future = F>,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<(T, Option<G>), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting { admit, call } => {
                    let guard = ready!(admit.poll(cx)).map_err(Into::into)?;
                    let Some((mut inner, request)) = call.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    // The inner service was made ready for this call by
                    // the layer's `poll_ready` (a clone left behind waits
                    // for the next one).
                    let future = inner.call(request);
                    this.state.set(State::Calling {
                        future,
                        guard: Some(guard),
                    });
                }
                StateProj::Calling { future, guard } => {
                    let answer = ready!(future.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok((answer, guard.take())));
                }
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "polled after completion".into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::service_fn;

    type Inner = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, BoxError>>>;

    fn inner() -> Inner {
        service_fn(|request: u32| std::future::ready(Ok(request + 1)))
    }

    #[tokio::test]
    async fn a_refused_admission_never_calls_and_a_refusal_is_the_answer() {
        let denied = AdmitThenCall::admitting(
            std::future::ready(Err::<(), BoxError>("full".into())),
            inner(),
            1,
        );
        assert_eq!(denied.await.unwrap_err().to_string(), "full");
        let refused: AdmitThenCall<std::future::Ready<Result<(), BoxError>>, Inner, u32, _, ()> =
            AdmitThenCall::refused("shed".into());
        assert_eq!(refused.await.unwrap_err().to_string(), "shed");
    }

    #[tokio::test]
    async fn a_call_already_made_hands_back_its_guard() {
        let mut service = inner();
        let future = Service::call(&mut service, 41);
        let called: AdmitThenCall<std::future::Ready<Result<&str, BoxError>>, Inner, u32, _, _> =
            AdmitThenCall::calling(future, Some("permit"));
        assert_eq!(called.await.unwrap(), (42, Some("permit")));
    }
}
