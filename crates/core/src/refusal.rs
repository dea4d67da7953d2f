use std::error::Error;
use std::time::Duration;

use http::StatusCode;

/// What a layer's refusal tells the proxy so it can answer the client.
///
/// Each layer names its refusal for the condition (`RateLimited`, `Shed`,
/// `BreakerOpen`) and implements this trait; its `Display` is the message
/// the client reads, a lowercase phrase. The proxy alone turns refusals into
/// responses, with the status, `X-Corral-Reason` and `Retry-After` given
/// here.
///
/// ```
/// use corral_core::{find_refusal, BoxError, Refusal};
/// use http::StatusCode;
///
/// #[derive(Debug)]
/// struct Shed;
/// impl std::fmt::Display for Shed {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("too many requests are waiting")
///     }
/// }
/// impl std::error::Error for Shed {}
/// impl Refusal for Shed {
///     fn status(&self) -> StatusCode { StatusCode::SERVICE_UNAVAILABLE }
///     fn reason(&self) -> &'static str { "shed" }
/// }
///
/// let err: BoxError = Box::new(Shed);
/// let refusal = find_refusal(&*err, &[corral_core::as_refusal::<Shed>]).unwrap();
/// assert_eq!(refusal.reason(), "shed");
/// ```
pub trait Refusal: Error + Send + Sync + 'static {
    /// The HTTP status the client gets.
    fn status(&self) -> StatusCode;

    /// The `X-Corral-Reason` value: a short `snake_case` word that names
    /// the condition (`shed`, `rate_limited`, `breaker_open`).
    fn reason(&self) -> &'static str;

    /// How long the client should wait before trying again, when known.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Further headers the answer carries (a rate limit's `RateLimit`
    /// and `RateLimit-Policy`).
    fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        Vec::new()
    }
}

/// `err` as a [`Refusal`] if it is a `T`; the proxy keeps a list of
/// these, one per refusal type, and tries them along the error chain.
pub fn as_refusal<'a, T: Refusal>(err: &'a (dyn Error + 'static)) -> Option<&'a dyn Refusal> {
    err.downcast_ref::<T>().map(|r| r as &dyn Refusal)
}

/// Recognises one refusal type in an error: [`as_refusal`] for
/// that type.
pub type RefusalCast = for<'a> fn(&'a (dyn Error + 'static)) -> Option<&'a dyn Refusal>;

/// The first refusal along `err`'s chain of sources that one of `casts`
/// recognises.
pub fn find_refusal<'a>(
    err: &'a (dyn Error + Send + Sync + 'static),
    casts: &[RefusalCast],
) -> Option<&'a dyn Refusal> {
    let mut current: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(refusal) = casts.iter().find_map(|cast| cast(e)) {
            return Some(refusal);
        }
        current = e.source();
    }
    None
}
