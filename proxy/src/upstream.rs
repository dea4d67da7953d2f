//! The innermost service: a pooled hyper-util client to the Ollama server.
//!
//! Streams pass through frame by frame, never buffered. A client that
//! goes away drops the upstream response (or the request still waiting for
//! headers), which closes the upstream connection: Ollama sees its client
//! leave and stops generating, as it would without Corral in the path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use corral_core::{headers, Body, BoxBody, BoxError, StreamBroke, UpstreamFailed};
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture as ClientFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use crate::config::UpstreamConfig;
use crate::hop::strip_hop_by_hop;
use crate::upstream_tls::tls_config;
use crate::upstream_url::UpstreamUrl;

/// The version a probe gives a server that has no `/api/version` but
/// answers `/v1/models`.
pub(crate) const OPENAI_ONLY: &str = "unknown (OpenAI-compatible: no /api/version)";

/// The upstream Ollama server (or servers) as a `tower::Service`.
///
/// With several (`[[upstreams]]`), a request the scheduler granted a
/// permit goes where its [`Route`](corral_fleet::Route) says, and moves
/// to another server if that one fails before answering; other requests
/// go to the least busy server up that may serve their model.
#[derive(Clone)]
pub struct Upstream {
    pub(crate) client: Client<HttpsConnector<HttpConnector>, Body>,
    pub(crate) targets: Arc<[Target]>,
    pub(crate) fleet: Option<Arc<corral_fleet::Fleet>>,
    /// With `capacity = "auto"` on some upstream: their controllers.
    pub(crate) measured: Option<Arc<crate::upstreams::Measured>>,
    /// With several upstreams and no `model_load_time`: the fleet learns
    /// what a load costs from streams' first tokens.
    pub(crate) learns_load: bool,
    readiness_timeout: Duration,
}

/// One server requests are sent to.
#[derive(Debug)]
pub struct Target {
    /// Its name, as the fleet knows it.
    pub name: Arc<str>,
    /// Its address.
    pub url: Arc<UpstreamUrl>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.targets.iter().map(|t| t.url.to_string()).collect();
        f.debug_struct("Upstream").field("url", &urls).finish()
    }
}

pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl Upstream {
    /// A client for `config`; fails on a bad URL or an unreadable CA file.
    pub fn new(config: &UpstreamConfig) -> Result<Self, corral_core::ConfigError> {
        use corral_core::ConfigError;
        let url =
            UpstreamUrl::parse(&config.url).map_err(|r| ConfigError::new("upstream.url", r))?;
        let target = Target {
            name: Arc::from(url.authority().as_str()),
            url: Arc::new(url),
        };
        Self::to(config, vec![target], None)
    }

    /// A client for `targets`, with the connection settings of `config`.
    pub(crate) fn to(
        config: &UpstreamConfig,
        targets: Vec<Target>,
        fleet: Option<Arc<corral_fleet::Fleet>>,
    ) -> Result<Self, corral_core::ConfigError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = tls_config(config)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            client,
            targets: targets.into(),
            fleet,
            measured: None,
            learns_load: false,
            readiness_timeout: config.readiness_timeout,
        })
    }

    /// The (first) upstream's address.
    pub fn url(&self) -> &UpstreamUrl {
        &self.targets[0].url
    }

    /// Whether upstream `index` finds its capacity by measuring.
    pub(crate) fn measures(&self, index: usize) -> bool {
        self.measured.as_ref().is_some_and(|m| m.measures(index))
    }

    /// The servers requests go to, in configuration order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// With several upstreams: their permits, health and loaded models.
    pub fn fleet(&self) -> Option<&Arc<corral_fleet::Fleet>> {
        self.fleet.as_ref()
    }

    /// Asks the upstreams for their version, in order: `Ok(version)` of
    /// the first that answers within the readiness timeout.
    pub async fn probe(&self) -> Result<String, String> {
        let mut failed = Vec::new();
        for index in 0..self.targets.len() {
            match self.probe_target(index).await {
                Ok(version) => return Ok(version),
                Err(error) => failed.push(error),
            }
        }
        Err(failed.join("; "))
    }

    /// `GET path` on upstream `index`, its body within the readiness
    /// timeout; a status other than success is an error.
    pub(crate) async fn get(&self, index: usize, path: &str) -> Result<bytes::Bytes, String> {
        let (status, body) = self.fetch(index, path, true).await?;
        if !status.is_success() {
            let url = &self.targets[index].url;
            return Err(format!("{url}{path} answered {status}"));
        }
        Ok(body)
    }

    /// Whether upstream `index` answers `GET path` at all, whatever the
    /// status, within the readiness timeout.
    pub(crate) async fn answers(
        &self,
        index: usize,
        path: &str,
    ) -> Result<http::StatusCode, String> {
        Ok(self.fetch(index, path, false).await?.0)
    }

    /// `GET path` on upstream `index` within the readiness timeout: its
    /// status, and its body when `read`.
    async fn fetch(
        &self,
        index: usize,
        path: &str,
        read: bool,
    ) -> Result<(http::StatusCode, bytes::Bytes), String> {
        let url = &self.targets[index].url;
        let request = get_request(url, path)?;
        let answer = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| root_cause(&e))?;
            let status = response.status();
            if !read {
                return Ok((status, bytes::Bytes::new()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.readiness_timeout, answer)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.readiness_timeout))?
    }

    /// Asks upstream `index` for its version; a server without Ollama's
    /// API (`/api/version` not found: an OpenAI-compatible one, such as
    /// llama.cpp's) is up when it lists its models on `/v1/models`.
    pub(crate) async fn probe_target(&self, index: usize) -> Result<String, String> {
        let (status, body) = self.fetch(index, "/api/version", true).await?;
        let url = &self.targets[index].url;
        if status == http::StatusCode::NOT_FOUND {
            self.get(index, "/v1/models")
                .await
                .map_err(|e| format!("{url}/api/version answered {status}, and {e}"))?;
            return Ok(OPENAI_ONLY.to_string());
        }
        if !status.is_success() {
            return Err(format!("{url}/api/version answered {status}"));
        }
        let version: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("/api/version: {e}"))?;
        Ok(version
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string())
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool opens connections on demand; there is nothing to wait
        // for before calling.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(dispatched) = request.extensions().get::<corral_core::Dispatched>() {
            dispatched.mark();
        }
        // HTTP/2 clients name the host in the URI, not in `Host`.
        let uri_host = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let client_host = request.headers_mut().remove(header::HOST).or(uri_host);
        // Ollama refuses Host headers it does not expect (its DNS
        // rebinding protection): the upstream gets its own name, the
        // client's goes in X-Forwarded-Host.
        if let Some(host) = client_host {
            request
                .headers_mut()
                .insert(headers::X_FORWARDED_HOST, host);
        }
        // The request id is the client's and our logs': Ollama ignores it,
        // and some OpenAI-compatible servers (llama.cpp's) refuse with a
        // 400 an id that is not a UUID.
        request.headers_mut().remove(headers::X_REQUEST_ID);
        // Whatever the client spoke, the upstream hop is HTTP/1.1, as
        // Ollama speaks it.
        *request.version_mut() = http::Version::HTTP_11;
        if self.fleet.is_some() {
            return ResponseFuture {
                state: State::Fleet {
                    future: Box::pin(self.clone().send_in_fleet(request)),
                },
            };
        }
        let url = self.targets[0].url.clone();
        if let Err(error) = aim(&mut request, &url) {
            return ResponseFuture {
                state: State::Failed { error: Some(error) },
            };
        }
        ResponseFuture {
            state: State::Waiting {
                future: self.client.request(request),
                url,
            },
        }
    }
}

/// `GET path` on `url`, with the upstream's own name as `Host`.
fn get_request(url: &UpstreamUrl, path: &str) -> Result<Request<Body>, String> {
    let uri = url.join(path).map_err(|e| e.to_string())?;
    let mut request = Request::get(uri)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    if let Ok(host) = HeaderValue::from_str(url.authority().as_str()) {
        request.headers_mut().insert(header::HOST, host);
    }
    Ok(request)
}

/// Points `request` (its URI holding the client's path and query) at
/// `url`, with the upstream's own name as `Host`.
pub(crate) fn aim(request: &mut Request<Body>, url: &UpstreamUrl) -> Result<(), BoxError> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let uri = url
        .join(path_and_query)
        .map_err(|e| format!("cannot build the upstream URI: {e}"))?;
    *request.uri_mut() = uri;
    if let Ok(host) = HeaderValue::from_str(url.authority().as_str()) {
        request.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

/// The upstream's response as it goes up the stack: hop-by-hop headers
/// gone, its body's errors typed.
pub(crate) fn passed_through(mut response: Response<hyper::body::Incoming>) -> Response<BoxBody> {
    strip_hop_by_hop(response.headers_mut());
    // Refusals are Corral's to name: an upstream's header would be
    // counted as one.
    response
        .headers_mut()
        .remove(corral_core::headers::X_CORRAL_REASON);
    // A break mid-way stays a typed error on its way up: every layer
    // counts it, the front renders it.
    response.map(|body| {
        body.map_err(|e| Box::new(StreamBroke::new(root_cause(&e))) as BoxError)
            .boxed_unsync()
    })
}

pin_project! {
    /// The answer of [`Upstream`]: the response with its body passed
    /// through, or [`UpstreamFailed`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Waiting {
            #[pin]
            future: ClientFuture,
            url: Arc<UpstreamUrl>,
        },
        Failed {
            error: Option<BoxError>,
        },
        Fleet {
            future: Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>,
        },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<BoxBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Waiting { future, url } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(match result {
                    Ok(response) => Ok(passed_through(response)),
                    Err(source) => Err(Box::new(UpstreamFailed::new(
                        url.to_string(),
                        source.is_connect(),
                        root_cause(&source),
                    ))),
                })
            }
            StateProj::Fleet { future } => future.as_mut().poll(cx),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "upstream future polled after completion".into()))),
        }
    }
}
