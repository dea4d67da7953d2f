//! The HTTP client of steps' calls (`http://` and `https://`, HTTP/1)
//! and its resolver, which refuses names of private addresses when
//! connecting.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::log::BoxFuture;

/// A connector for calls an agent aims (a saga's steps, a job's
/// callback): `https://` with the system's roots, and `http://`; a name
/// that resolves to a private address is refused as the connection is
/// made, unless `allow_private`.
///
/// ```
/// let connector = corral_saga::https_or_http(std::time::Duration::from_secs(5), false);
/// let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
///     hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
///         .build(connector);
/// # drop(client);
/// ```
pub fn https_or_http(
    connect_timeout: Duration,
    allow_private: bool,
) -> HttpsConnector<HttpConnector<Checked>> {
    let mut http = HttpConnector::new_with_resolver(Checked {
        gai: GaiResolver::new(),
        allow_private,
    });
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    match builder.with_native_roots() {
        Ok(builder) => builder.https_or_http().enable_http1().wrap_connector(http),
        Err(error) => {
            // No system roots: https calls fail on the certificate, http works.
            tracing::warn!(%error, "no native TLS roots: https saga steps will fail");
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        }
    }
}

/// The client of steps' calls.
pub(super) type StepClient = Client<HttpsConnector<HttpConnector<Checked>>, Full<Bytes>>;

/// The system's resolver, refusing a name that resolves to a private
/// address unless allowed: the addresses checked are the ones connected
/// to, so a name that answers differently to a check made before the
/// call (DNS rebinding) is still caught. (IP literals skip the resolver:
/// callers check them before the call.)
#[derive(Clone, Debug)]
pub struct Checked {
    gai: GaiResolver,
    allow_private: bool,
}

impl tower::Service<Name> for Checked {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gai.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (allow_private, host) = (self.allow_private, name.to_string());
        let resolving = self.gai.call(name);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = resolving.await?.collect();
            let private = addresses
                .iter()
                .find(|a| corral_core::net::private_address(a.ip()));
            match private {
                Some(address) if !allow_private => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves to the private address {}, which is not allowed here",
                        address.ip()
                    ),
                )),
                _ => Ok(addresses.into_iter()),
            }
        })
    }
}

pub(super) fn root(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_resolver_refuses_a_name_of_a_private_address_unless_allowed() {
        use std::str::FromStr;
        use tower::ServiceExt;
        let resolve = |allow_private| {
            let checked = Checked {
                gai: GaiResolver::new(),
                allow_private,
            };
            checked.oneshot(Name::from_str("localhost").unwrap())
        };
        let refused = resolve(false).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("private address"), "{refused}");
        assert!(resolve(true).await.unwrap().next().is_some());
    }
}
