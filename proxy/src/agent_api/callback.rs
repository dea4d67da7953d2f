//! A job's callback: its final state, `POST`ed once to the URL its owner
//! gave, signed with the auth layer's scheme, retried with backoff.
//!
//! Loopback, private, link-local and unspecified addresses are refused
//! (checked when the job is submitted for a literal address, and by the
//! connection's own resolver for a name: the addresses checked are the
//! ones connected to) unless `[jobs] allow_private_callbacks`: a job
//! must not become a way into the proxy's own network.

use std::time::Duration;

use bytes::Bytes;
use corral_jobs::JobsConfig;
use http::{header, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use corral_jobs::metrics::JOBS_CALLBACKS_FAILED_TOTAL;

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<corral_saga::Checked>>, Full<Bytes>>;

/// Delivers callbacks.
#[derive(Clone)]
pub(crate) struct Callbacks {
    client: HttpsClient,
    secret: Option<String>,
    allow_private: bool,
    attempts: u32,
    timeout: Duration,
}

/// Whether `url` may be called back: `http` or `https`, with a host that
/// is not a private address written out unless `allow_private` (names
/// are checked when called).
pub(crate) fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?}: only http and https URLs are called back")),
    }
    let Some(host) = uri.host() else {
        return Err(format!("{url:?} has no host"));
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match corral_core::net::literal_private(host) {
        Some(ip) if !allow_private => Err(format!(
            "{ip} is a private or loopback address; [jobs] allow_private_callbacks allows it"
        )),
        _ => Ok(()),
    }
}

impl Callbacks {
    pub(crate) fn new(config: &JobsConfig) -> Self {
        // The saga steps' connector: the addresses it refuses are the
        // ones it would connect to, so a name that resolves one way for
        // the check and another for the call is still caught.
        let connector =
            corral_saga::https_or_http(config.callback_timeout, config.allow_private_callbacks);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            client,
            secret: config
                .callback_secret_env
                .as_deref()
                .and_then(|var| std::env::var(var).ok())
                .filter(|s| !s.is_empty()),
            allow_private: config.allow_private_callbacks,
            attempts: config.callback_attempts,
            timeout: config.callback_timeout,
        }
    }

    /// Sends `state` to `url` in the background, retrying with backoff.
    pub(crate) fn deliver(&self, url: String, state: serde_json::Value) {
        let callbacks = self.clone();
        tokio::spawn(async move {
            let body = Bytes::from(serde_json::to_vec(&state).unwrap_or_default());
            let job = state["id"].as_str().unwrap_or_default().to_string();
            let mut backoff = Duration::from_millis(500);
            for attempt in 1..=callbacks.attempts {
                match callbacks.once(&url, &job, body.clone()).await {
                    Ok(()) => return,
                    Err(reason) => {
                        tracing::warn!(job, url, attempt, reason, "job callback failed");
                        if reason.starts_with("refused:") {
                            break;
                        }
                    }
                }
                if attempt < callbacks.attempts {
                    let jitter =
                        Duration::from_millis(fastrand::u64(..=backoff.as_millis() as u64 / 2));
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
            metrics::counter!(JOBS_CALLBACKS_FAILED_TOTAL).increment(1);
        });
    }

    /// One attempt.
    async fn once(&self, url: &str, job: &str, body: Bytes) -> Result<(), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("refused: {e}"))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        if !self.allow_private {
            let addresses =
                tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port)))
                    .await
                    .map_err(|_| format!("cannot resolve {host} within {:?}", self.timeout))?
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?;
            for address in addresses {
                if corral_core::net::private_address(address.ip()) {
                    return Err(format!(
                        "refused: {host} is a private or loopback address ({}); [jobs] allow_private_callbacks allows it",
                        address.ip()
                    ));
                }
            }
        }
        let client = &self.client;
        let timestamp = corral_core::unix_now().to_string();
        let path = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        let mut request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-timestamp", &timestamp)
            .header("x-request-id", job)
            .header("x-agent-id", "corral")
            .body(Full::new(body.clone()))
            .map_err(|e| format!("refused: {e}"))?;
        if let Some(secret) = &self.secret {
            let signed = corral_auth::Signed {
                agent: "corral",
                method: "POST",
                path_and_query: &path,
                timestamp: &timestamp,
                request_id: job,
                body: &body,
            };
            if let Ok(value) = signed.sign(secret.as_bytes()).parse() {
                request.headers_mut().insert("x-signature", value);
            }
        }
        let response = tokio::time::timeout(self.timeout, client.request(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_taken() {
        assert!(check_url("https://agents.example.com/done", false).is_ok());
        assert!(check_url("ftp://example.com/", false).is_err());
        assert!(check_url("/relative", false).is_err());
        assert!(check_url("not a url", false).is_err());
        assert!(check_url("http://10.0.0.7:8080/done", false).is_err());
        assert!(check_url("http://[::1]/done", false).is_err());
        assert!(check_url("http://10.0.0.7:8080/done", true).is_ok());
    }
}
