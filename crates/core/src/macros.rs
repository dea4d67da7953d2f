//! Macros for what every layer writes the same way: its metrics, a
//! `Debug` that shows only some fields, its service struct, its
//! refusals. Each states the varying part once and generates the rest, so
//! the layers cannot drift apart in the parts that should not vary.

/// Declares a layer's metrics once: for each, its kind, the `const` that
/// names it (with the doc comment given) and the help text the recorder
/// gets; generates the consts and `pub fn describe()`, which describes
/// them all to the installed recorder. A first line `fn name();` (with a
/// visibility, attributes and docs) names that function otherwise.
///
/// A kind is `counter`, `gauge` or `histogram`; a [`metrics::Unit`]
/// variant may follow the kind (`gauge(Bytes)`). `, exported at 0` after
/// a counter's help text also sets it to that value in the function, so
/// alerts, ratios and dashboards find it before its first event.
///
/// ```
/// mod metrics {
///     corral_core::metrics! {
///         /// Requests refused.
///         counter REFUSED_TOTAL = "demo_refused_total", "Requests refused.", exported at 0;
///         /// Bytes held.
///         gauge(Bytes) HELD_BYTES = "demo_held_bytes", "Bytes of bodies held.";
///     }
///
///     pub mod more {
///         corral_core::metrics! {
///             /// Describes the other metrics.
///             pub(crate) fn describe_more();
///             /// Time taken.
///             histogram(Seconds) TAKEN = "demo_taken_seconds", "Time taken.";
///         }
///     }
/// }
/// assert_eq!(metrics::REFUSED_TOTAL, "demo_refused_total");
/// // Without a recorder installed, these do nothing.
/// metrics::describe();
/// metrics::more::describe_more();
/// ```
#[macro_export]
macro_rules! metrics {
    (@describe counter $name:ident $($unit:ident)? $help:literal) => {
        $crate::__private::metrics::describe_counter!(
            $name, $($crate::__private::metrics::Unit::$unit,)? $help
        )
    };
    (@describe gauge $name:ident $($unit:ident)? $help:literal) => {
        $crate::__private::metrics::describe_gauge!(
            $name, $($crate::__private::metrics::Unit::$unit,)? $help
        )
    };
    (@describe histogram $name:ident $($unit:ident)? $help:literal) => {
        $crate::__private::metrics::describe_histogram!(
            $name, $($crate::__private::metrics::Unit::$unit,)? $help
        )
    };
    (@start counter $name:ident $start:literal) => {
        $crate::__private::metrics::counter!($name).absolute($start)
    };
    (
        @declare [$($describe:tt)*]
        $(
            $(#[$attr:meta])*
            $kind:ident $(($unit:ident))? $name:ident = $metric:literal, $help:literal
                $(, exported at $start:literal)?;
        )+
    ) => {
        $(
            $(#[$attr])*
            pub const $name: &str = $metric;
        )+

        $($describe)*() {
            $(
                $crate::metrics!(@describe $kind $name $($unit)? $help);
                $($crate::metrics!(@start $kind $name $start);)?
            )+
        }
    };
    (
        $(#[$describe_attr:meta])*
        $vis:vis fn $describe:ident();
        $($metrics:tt)+
    ) => {
        $crate::metrics!(@declare [$(#[$describe_attr])* $vis fn $describe] $($metrics)+);
    };
    ($($metrics:tt)+) => {
        $crate::metrics!(
            @declare [
                /// Describes the metrics to the installed recorder.
                pub fn describe
            ]
            $($metrics)+
        );
    };
}

/// `Debug` for a type that shows only the fields named, or values reached
/// from them (`label: field.inner`, `label: field.len()`): what is worth
/// reading in a log, without requiring `Debug` of what is not (a wrapped
/// service, handles, secrets). Type parameters get no bound.
///
/// ```
/// struct Pool<S> { name: String, config: Config, waiting: Vec<u8>, inner: S }
/// #[derive(Debug)]
/// struct Config { size: usize }
/// corral_core::impl_debug!(Pool<S> { name, size: config.size, waiting: waiting.len() });
///
/// let pool = Pool { name: "gpu".into(), config: Config { size: 2 }, waiting: vec![1], inner: () };
/// assert_eq!(format!("{pool:?}"), r#"Pool { name: "gpu", size: 2, waiting: 1 }"#);
/// ```
#[macro_export]
macro_rules! impl_debug {
    (
        $ty:ident $(<$($param:ident),+>)?
        { $($label:ident $(: $($seg:ident $(($($arg:tt)*))?).+)?),* $(,)? }
    ) => {
        impl $(<$($param),+>)? ::std::fmt::Debug for $ty $(<$($param),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(::std::stringify!($ty))
                    $(.field(
                        ::std::stringify!($label),
                        $crate::impl_debug!(@field self $label $(: $($seg $(($($arg)*))?).+)?),
                    ))*
                    .finish()
            }
        }
    };
    (@field $self:ident $label:ident) => {
        &$self.$label
    };
    (@field $self:ident $label:ident : $($path:tt)+) => {
        &$self.$($path)+
    };
}

/// A layer's service: the struct, holding the wrapped service in `inner`
/// and the fields given, cloned with the layer's state; the accessors of
/// [`define_inner_service_accessors!`](crate::define_inner_service_accessors);
/// a `pub(crate) fn new` taking the inner service and the fields in
/// order; and, with `debug(…)` after the struct,
/// [`impl_debug!`](crate::impl_debug) of the fields named there.
///
/// ```
/// use std::sync::Arc;
///
/// corral_core::layer_service! {
///     /// Counts requests.
///     pub struct Counting<S> {
///         seen: Arc<str>,
///     }
///     debug(seen)
/// }
///
/// let counting = Counting::new(7, Arc::from("all"));
/// assert_eq!(format!("{counting:?}"), r#"Counting { seen: "all" }"#);
/// assert_eq!(*counting.clone().get_ref(), 7);
/// ```
#[macro_export]
macro_rules! layer_service {
    (
        $(#[$attr:meta])*
        pub struct $name:ident<S> {
            $($field:ident: $ty:ty),* $(,)?
        }
        $(debug($($shown:tt)*))?
    ) => {
        $(#[$attr])*
        #[derive(Clone)]
        pub struct $name<S> {
            inner: S,
            $($field: $ty,)*
        }

        impl<S> $name<S> {
            $crate::define_inner_service_accessors!();

            pub(crate) fn new(inner: S, $($field: $ty),*) -> Self {
                Self { inner, $($field),* }
            }
        }

        $($crate::impl_debug!($name<S> { $($shown)* });)?
    };
}

/// `Display`, `Error` and [`Refusal`](crate::Refusal) for a layer's
/// refusal, said once: after `as`, the name its fields are read through;
/// then its status, its `X-Corral-Reason`, optionally how long to wait,
/// the message the client reads (written to `f`), optionally its source
/// and further headers. Each part is the body of the method it stands
/// for.
///
/// ```
/// use corral_core::Refusal;
/// use http::StatusCode;
///
/// #[derive(Debug)]
/// struct Full { waiting: usize }
/// corral_core::refusal! {
///     Full as full {
///         status: StatusCode::SERVICE_UNAVAILABLE,
///         reason: if full.waiting > 10 { "very_full" } else { "full" },
///         retry_after: Some(std::time::Duration::from_secs(1)),
///         message(f): write!(f, "{} requests are waiting", full.waiting),
///     }
/// }
///
/// let full = Full { waiting: 3 };
/// assert_eq!(full.to_string(), "3 requests are waiting");
/// assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(full.reason(), "full");
/// assert!(std::error::Error::source(&full).is_none());
/// ```
#[macro_export]
macro_rules! refusal {
    (
        $ty:ident as $this:ident {
            status: $status:expr,
            reason: $reason:expr,
            $(retry_after: $retry_after:expr,)?
            message($f:ident): $message:expr,
            $(source: $source:expr,)?
            $(headers: $headers:expr,)?
        }
    ) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, $f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let $this = self;
                $message
            }
        }

        impl ::std::error::Error for $ty {
            $(
                fn source(&self) -> ::std::option::Option<&(dyn ::std::error::Error + 'static)> {
                    let $this = self;
                    $source
                }
            )?
        }

        // Not every part reads the refusal's fields: the binding may go
        // unused.
        #[allow(unused_variables)]
        impl $crate::Refusal for $ty {
            fn status(&self) -> $crate::__private::http::StatusCode {
                let $this = self;
                $status
            }

            fn reason(&self) -> &'static str {
                let $this = self;
                $reason
            }

            $(
                fn retry_after(&self) -> ::std::option::Option<::std::time::Duration> {
                    let $this = self;
                    $retry_after
                }
            )?

            $(
                fn headers(
                    &self,
                ) -> ::std::vec::Vec<(
                    $crate::__private::http::HeaderName,
                    $crate::__private::http::HeaderValue,
                )> {
                    let $this = self;
                    $headers
                }
            )?
        }
    };
}
