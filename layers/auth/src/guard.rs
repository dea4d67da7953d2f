//! The decision for one request: its class's permissions, then its
//! signature, freshness and request id.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_core::{Body, BoxError, ConfigError, EndpointKind, RequestMeta};
use http::Request;
use http_body_util::{BodyExt, Limited};

use crate::config::AuthConfig;
use crate::error::{Forbidden, SignatureProblem, SignatureRefused};
use crate::permissions::{models_named, Denied, Permissions};
use crate::replay::ReplayStore;
use crate::sign::Signed;

/// A check that must wait: reading a body, or asking the replay store.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Result<Request<Body>, BoxError>> + Send>>;

/// What to do with a request. Short-lived, moved once: boxing the request
/// would cost an allocation on every request for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission {
    /// Let it through as it is.
    Now(Request<Body>),
    /// Refuse it.
    Refused(BoxError),
    /// Decide once this resolves.
    Later(Pending),
}

/// Seconds since the Unix epoch, with fractions.
pub(crate) type Clock = fn() -> f64;

fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Clone)]
pub(crate) struct Guard {
    permissions: Permissions,
    secrets: HashMap<String, Arc<[u8]>>,
    require_signatures: bool,
    freshness: Duration,
    max_body: usize,
    pub(crate) replay: Arc<dyn ReplayStore>,
    pub(crate) clock: Clock,
}

// Never the secrets.
corral_core::impl_debug!(Guard {
    signing_agents: secrets.len(),
    require_signatures,
    freshness
});

impl Guard {
    pub(crate) fn new(
        config: &AuthConfig,
        replay: Arc<dyn ReplayStore>,
        clock: Option<Clock>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut secrets = HashMap::new();
        for (agent, secret) in &config.secrets {
            secrets.insert(
                agent.clone(),
                Arc::from(secret.resolve(&format!("secrets.{agent}"))?),
            );
        }
        Ok(Self {
            permissions: Permissions::new(config)?,
            secrets,
            require_signatures: config.require_signatures,
            freshness: config.freshness,
            max_body: config.max_signed_body_bytes,
            replay,
            clock: clock.unwrap_or(wall_clock),
        })
    }

    /// Lets the request through, refuses it, or says what to wait for:
    /// the class's permissions first, then the signature's headers, then
    /// the signature itself and its request id's first use.
    pub(crate) fn admit(self: &Arc<Self>, request: Request<Body>) -> Admission {
        let Some(meta) = request.extensions().get::<RequestMeta>() else {
            return Admission::Refused(
                "the auth layer needs the request's identity: put classify before it".into(),
            );
        };
        if let Err(forbidden) = self.permitted(&request, meta) {
            return Admission::Refused(Box::new(forbidden));
        }
        if request.extensions().get::<corral_core::Vouched>().is_some() {
            // The proxy runs it for an agent whose submission was signed
            // (and checked): the job or step carries no signature.
            return Admission::Now(request);
        }
        let check = match self.signature_of(&request, meta.agent.as_str()) {
            Ok(Some(check)) => check,
            Ok(None) => return Admission::Now(request),
            Err(refused) => return Admission::Refused(Box::new(refused)),
        };
        let guard = self.clone();
        if let Some(bytes) = request.body().buffered() {
            if let Err(refused) = guard.verify(&check, &request, bytes) {
                return Admission::Refused(Box::new(refused));
            }
            return Admission::Later(Box::pin(async move {
                guard.remember(&check).await?;
                Ok(request)
            }));
        }
        Admission::Later(Box::pin(async move {
            // A streamed body (a blob upload) is read whole to be hashed:
            // the signature covers it.
            let (parts, body) = request.into_parts();
            let bytes = Limited::new(body, guard.max_body)
                .collect()
                .await
                .map_err(|e| -> BoxError {
                    format!("reading a signed request's body: {e}").into()
                })?
                .to_bytes();
            let request = Request::from_parts(parts, Body::from(bytes.clone()));
            guard.verify(&check, &request, &bytes)?;
            guard.remember(&check).await?;
            Ok(request)
        }))
    }

    /// Checks the signature of a request `agent` makes to the proxy
    /// itself (an async job's submission), whose `body` was read whole:
    /// `Ok` when it is signed right and fresh, or need not be signed.
    ///
    /// The request is looked at now; only the replay check is left to
    /// the future, which holds nothing of the request.
    pub(crate) fn check_signature(
        self: &Arc<Self>,
        request: &Request<Body>,
        agent: &str,
        body: &bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>> {
        let check = match self.signature_of(request, agent) {
            Ok(Some(check)) => check,
            Ok(None) => return Box::pin(std::future::ready(Ok(()))),
            Err(refused) => return Box::pin(std::future::ready(Err(refused.into()))),
        };
        if let Err(refused) = self.verify(&check, request, body) {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let guard = self.clone();
        Box::pin(async move { guard.remember(&check).await })
    }

    /// Whether the agent's class may make this call, on the models it
    /// names.
    fn permitted(&self, request: &Request<Body>, meta: &RequestMeta) -> Result<(), Forbidden> {
        let class = meta.class.as_str();
        let endpoint = meta.endpoint;
        let checked = if self.permissions.restricts_models(class)
            && endpoint.has_json_body()
            && endpoint.kind() != EndpointKind::Inference
        {
            // Copy and create name two models; a body classify could not
            // read names none it knows of.
            let Some(names) = request.body().buffered().and_then(|b| models_named(b)) else {
                return Err(Forbidden::new(format!(
                    "agents of class {class:?} may use only some models, and this body names none that can be read"
                )));
            };
            self.permissions.check_all(class, endpoint, &names)
        } else {
            self.permissions
                .check(class, endpoint, meta.model.as_deref())
        };
        checked.map_err(|denied| match denied {
            Denied::Endpoint => Forbidden::new(format!(
                "agents of class {class:?} may not call {} {} (the auth layer's classes.{class}.endpoints allows it)",
                request.method(),
                request.uri().path()
            )),
            Denied::Model(model) => Forbidden::new(format!(
                "agents of class {class:?} may not use the model {model:?} (the auth layer's classes.{class}.models lists what they may)"
            )),
        })
    }

    /// The signature `agent` sent, once its headers are whole and its
    /// timestamp fresh; `None` when it need not sign and did not.
    fn signature_of(
        &self,
        request: &Request<Body>,
        agent: &str,
    ) -> Result<Option<Check>, SignatureRefused> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let invalid = |message: String| SignatureRefused::new(SignatureProblem::Invalid, message);
        let (signature, secret) = match (header("x-signature"), self.secrets.get(agent)) {
            (None, None) if !self.require_signatures => return Ok(None),
            (None, _) => {
                return Err(SignatureRefused::new(
                    SignatureProblem::Missing,
                    format!("agent {agent:?} must sign its requests: send X-Timestamp, X-Request-Id and X-Signature"),
                ))
            }
            (Some(_), None) => {
                return Err(invalid(format!(
                    "agent {agent:?} has no signing secret: it cannot sign"
                )))
            }
            (Some(signature), Some(secret)) => (signature, secret.clone()),
        };
        let timestamp = header("x-timestamp")
            .ok_or_else(|| invalid("a signed request needs X-Timestamp".into()))?;
        let sent = timestamp
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite())
            .ok_or_else(|| invalid("X-Timestamp must be seconds since the Unix epoch".into()))?;
        let skew = ((self.clock)() - sent).abs();
        if skew > self.freshness.as_secs_f64() {
            return Err(SignatureRefused::new(
                SignatureProblem::Stale,
                format!(
                    "X-Timestamp is {} s from Corral's clock; requests are accepted within {} s: send the time of sending, in seconds since the Unix epoch",
                    // A far-off stamp is not worth its 300 digits.
                    if skew < 1e12 { format!("{skew:.0}") } else { "more than 10^12".to_string() },
                    self.freshness.as_secs()
                ),
            ));
        }
        let request_id = header("x-request-id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| invalid("a signed request needs X-Request-Id".into()))?;
        Ok(Some(Check {
            agent: agent.to_string(),
            timestamp,
            request_id,
            signature,
            secret,
        }))
    }

    fn verify(
        &self,
        check: &Check,
        request: &Request<Body>,
        body: &Bytes,
    ) -> Result<(), SignatureRefused> {
        let signed = Signed {
            agent: &check.agent,
            method: request.method().as_str(),
            path_and_query: request.uri().path_and_query().map_or("/", |p| p.as_str()),
            timestamp: &check.timestamp,
            request_id: &check.request_id,
            body,
        };
        if signed.verify(&check.secret, &check.signature) {
            Ok(())
        } else {
            Err(SignatureRefused::new(
                SignatureProblem::Invalid,
                "the signature does not match the request: see the signing string in docs/security.md (Signed requests)",
            ))
        }
    }

    async fn remember(&self, check: &Check) -> Result<(), BoxError> {
        // A request id stays spent as long as a request carrying it could
        // still be fresh: its timestamp may be up to one window ahead.
        let key = format!("{}\n{}", check.agent, check.request_id);
        if self.replay.remember(key, self.freshness * 2).await? {
            Ok(())
        } else {
            Err(Box::new(SignatureRefused::new(
                SignatureProblem::Replayed,
                format!(
                    "request id {:?} was already used by this agent within the last {} s",
                    check.request_id,
                    (self.freshness * 2).as_secs()
                ),
            )))
        }
    }
}

struct Check {
    agent: String,
    timestamp: String,
    request_id: String,
    signature: String,
    secret: Arc<[u8]>,
}
