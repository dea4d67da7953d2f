//! Shared setup for Corral's benchmarks: a simulated Ollama with no
//! think time, and a proxy in front of it, in one process.

pub mod fleet;
pub mod herd;
pub mod waits;

use std::time::Duration;

use bytes::Bytes;
use corral::{Config, Running};
use corral_mock_ollama::{MockConfig, MockOllama};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// A simulated Ollama that answers at once: what remains is HTTP and
/// the proxy.
pub async fn instant_upstream(tokens: usize) -> MockOllama {
    MockOllama::start(MockConfig {
        parallel: 1024,
        max_queue: 100_000,
        ttft: Duration::ZERO,
        tokens_per_sec: f64::INFINITY,
        tokens,
        log_capacity: 0,
        ..MockConfig::default()
    })
    .await
    .expect("mock binds")
}

/// A proxy with the default (empty) layer list in front of `upstream`.
pub async fn proxy(upstream: &MockOllama) -> Running {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("address");
    config.upstream.url = upstream.url();
    Running::start(&config).await.expect("proxy starts")
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends one request and reads its whole body; the number of bytes read.
pub async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: &'static str,
) -> usize {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request builds");
    let response = client.request(request).await.expect("answered");
    assert!(response.status().is_success(), "{}", response.status());
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

/// The floor: the least a hyper reverse proxy can do (accept, forward
/// over a pooled client, stream the answer back), with none of Corral's
/// work. Returns its address; it serves until the runtime ends.
pub async fn bare_proxy(upstream: &MockOllama) -> std::net::SocketAddr {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    bare_proxy_at(any, upstream.addr()).await.expect("bind")
}

/// [`bare_proxy`] on a chosen address in front of any upstream address,
/// so the `bare-proxy` binary can run the same floor as a process of its
/// own (the `overhead` bench compares separate processes). Returns the
/// bound address; it serves until the runtime ends.
pub async fn bare_proxy_at(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
) -> std::io::Result<std::net::SocketAddr> {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let authority: http::uri::Authority = upstream
        .to_string()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let authority = authority.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                        let client = client.clone();
                        let authority = authority.clone();
                        async move {
                            let pq = request
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            *request.uri_mut() = http::Uri::builder()
                                .scheme("http")
                                .authority(authority)
                                .path_and_query(pq)
                                .build()
                                .expect("uri");
                            client.request(request).await
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs a bench's `scenario` on a multi-threaded runtime: success, or
/// its error on stderr under `name` and a failing exit status.
pub fn run_main<F, E>(name: &str, scenario: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenario) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
