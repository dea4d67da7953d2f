//! Making a step's call: where it goes, how it gets there (in process
//! through [`Local`], or over the network), the request with its
//! idempotency key, the private-address check before it, the timeout,
//! and the polling of an async job.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;

use super::answer::{job_result, read_answer, read_local, verdict, Answer};
use super::client::root;
use super::{join, Call, HttpSteps, Local};
use crate::saga::{StepContext, StepResult};

impl HttpSteps {
    /// Makes `call` with the context's key, as the saga's agent when it
    /// goes to Corral.
    pub(super) async fn execute(&self, call: &Call, context: &StepContext) -> StepResult {
        let key = &context.idempotency_key;
        let (uri, on_corral) = self.target(call, context.target.as_deref()).await?;
        if !on_corral && !self.inner.allow_private_targets {
            self.refuse_private(&call.method, &uri).await?;
        }
        let via = self.via(on_corral, context);
        let mut request = match via {
            Via::Local { .. } => build(call, call.path.as_deref().unwrap_or("/"), key)?,
            Via::Network { .. } => build(call, &uri, key)?,
        };
        if let Via::Network {
            agent: Some(agent), ..
        } = via
        {
            identify(&mut request, Some(agent));
        }
        if call.respond_async && on_corral {
            let prefer = HeaderValue::from_static("respond-async");
            request.headers_mut().insert("prefer", prefer);
        }
        let answer = self.exchange(request, via).await?;
        match (&answer.location, answer.status) {
            (Some(location), StatusCode::ACCEPTED) if call.respond_async && on_corral => {
                self.await_job(location, via).await
            }
            _ => verdict(&call.method, &uri, answer.status, answer.body),
        }
    }

    /// How a call reaches its target: in process for Corral when a
    /// [`Local`] is set and the saga has an agent, else over the network.
    fn via<'a>(&'a self, on_corral: bool, context: &'a StepContext) -> Via<'a> {
        let agent = context.agent.as_deref();
        match (on_corral, self.inner.local.get(), agent) {
            (true, Some(local), Some(agent)) => Via::Local {
                local,
                agent,
                authenticated: context.authenticated,
            },
            (true, _, agent) => Via::Network {
                agent,
                corral: true,
            },
            (false, _, _) => Via::Network {
                agent: None,
                corral: false,
            },
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        via: Via<'_>,
    ) -> Result<Answer, String> {
        match via {
            Via::Local {
                local,
                agent,
                authenticated,
            } => {
                self.local(local.clone(), agent, authenticated, request)
                    .await
            }
            Via::Network { corral, .. } => self.send(request, corral).await,
        }
    }

    /// Where `call` goes, and whether that is Corral itself; an agent
    /// target goes to `picked` (logged for the step) when given.
    async fn target(&self, call: &Call, picked: Option<&str>) -> Result<(String, bool), String> {
        let path = call.path.as_deref().unwrap_or("/");
        match (&call.url, &call.agent) {
            (Some(url), _) => Ok((url.clone(), false)),
            (None, Some(agent)) => {
                let base = match picked {
                    Some(base) => base.to_string(),
                    None => self.inner.resolve.resolve(&agent.capability).await?,
                };
                Ok((join(&base, path), false))
            }
            (None, None) => Ok((join(&self.corral(), path), true)),
        }
    }

    /// Refuses `uri` when its host resolves (within the call timeout) to
    /// any private address: checked before each call, since a name may
    /// point anywhere, and a registry entry is whatever an agent wrote.
    async fn refuse_private(&self, method: &str, uri: &str) -> Result<(), String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("{method} {uri}: {e}"))?;
        let host = parsed
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let https = parsed.scheme_str() == Some("https");
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addresses = match tokio::time::timeout(self.inner.call_timeout, lookup).await {
            Ok(Ok(addresses)) => addresses,
            Ok(Err(e)) => return Err(format!("{method} {uri}: cannot resolve {host}: {e}")),
            Err(_) => return Err(format!("{method} {uri}: {host} not resolved in time")),
        };
        for address in addresses {
            if corral_core::net::private_address(address.ip()) {
                return Err(format!(
                    "{method} {uri}: {host} is the private address {} (allow_private_targets is off)",
                    address.ip()
                ));
            }
        }
        Ok(())
    }

    async fn send(&self, request: Request<Full<Bytes>>, corral: bool) -> Result<Answer, String> {
        let what = format!("{} {}", request.method(), request.uri());
        let client = if corral {
            &self.inner.corral_client
        } else {
            &self.inner.client
        };
        let exchange = async {
            let response = client.request(request).await.map_err(|e| root(&e))?;
            read_answer(response).await
        };
        self.within(&what, exchange).await
    }

    async fn local(
        &self,
        local: Arc<dyn Local>,
        agent: &str,
        authenticated: bool,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let what = format!("{} {}", request.method(), request.uri());
        let exchange = async {
            let response = local.call(agent, authenticated, request).await;
            read_local(response).await
        };
        self.within(&what, exchange).await
    }

    async fn within(
        &self,
        what: &str,
        exchange: impl std::future::Future<Output = Result<Answer, String>>,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(self.inner.call_timeout, exchange).await {
            Ok(answer) => answer.map_err(|e| format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what}: no answer within {:?}",
                self.inner.call_timeout
            )),
        }
    }

    /// Polls the job at `location` (on Corral) until it ends.
    async fn await_job(&self, location: &str, via: Via<'_>) -> StepResult {
        let url = match via {
            Via::Local { .. } => location.to_string(),
            Via::Network { .. } => join(&self.corral(), location),
        };
        let poll = async {
            loop {
                let mut request = Request::get(&url)
                    .body(Full::default())
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if let Via::Network { agent, .. } = via {
                    identify(&mut request, agent);
                }
                let answer = self.exchange(request, via).await?;
                if !answer.status.is_success() {
                    return Err(format!("GET {url} answered {}", answer.status).into());
                }
                if let Some(result) = job_result(&url, &answer.body) {
                    return result;
                }
                tokio::time::sleep(self.inner.job_poll_interval).await;
            }
        };
        match tokio::time::timeout(self.inner.job_timeout, poll).await {
            Ok(result) => result,
            Err(_) => Err(format!("job {url} not done within {:?}", self.inner.job_timeout).into()),
        }
    }
}

/// How a call reaches its target.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// In process, as the saga's agent.
    Local {
        local: &'a Arc<dyn Local>,
        agent: &'a str,
        authenticated: bool,
    },
    /// Over the network, naming the agent with `X-Agent-Id` to Corral
    /// (`corral`: to Corral's own address, which may be loopback).
    Network {
        agent: Option<&'a str>,
        corral: bool,
    },
}

/// The request for `call` to `uri`, carrying the idempotency key.
fn build(call: &Call, uri: &str, key: &str) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder().method(call.method.as_str()).uri(uri);
    for (name, value) in &call.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder = builder.header("idempotency-key", key);
    let body = match &call.body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(body.to_string()))
        }
        None => Full::default(),
    };
    builder
        .body(body)
        .map_err(|e| format!("{} {uri}: {e}", call.method))
}

/// A call to Corral is made as the submitting agent.
fn identify<B>(request: &mut Request<B>, agent: Option<&str>) {
    if let Some(value) = agent.and_then(|a| HeaderValue::from_str(a).ok()) {
        request.headers_mut().insert("x-agent-id", value);
    }
}
