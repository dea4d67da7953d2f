//! `/corral/keys`: API keys issued, listed and revoked while serving.

use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use corral_core::BoxBody;

use super::control::read_json;
use super::{error, json_response, Admin};
use crate::keys::Issue;

impl Admin {
    /// `GET`: every key issued at run time (digest, agent, class, when
    /// issued, last used here). `POST {"agent": "name", "class":
    /// "batch"}`: issues one; the answer shows the key this once (201).
    pub(super) async fn keys<B>(&self, request: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
        B::Error: Into<corral_core::BoxError>,
    {
        match *request.method() {
            Method::GET => {
                let keys: Vec<serde_json::Value> = self
                    .keys
                    .list()
                    .into_iter()
                    .map(|k| {
                        json!({
                            "digest": k.digest,
                            "agent": k.agent.as_str(),
                            "class": k.class,
                            "created": k.created,
                            "last_used": k.last_used,
                            "revoked": k.revoked,
                        })
                    })
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({"keys": keys, "kept": self.keys.kept()}),
                )
            }
            Method::POST => {
                let issue: Issue =
                    match read_json(request, "{\"agent\": \"name\", \"class\": \"class\"}").await {
                        Ok(issue) => issue,
                        Err(response) => return response,
                    };
                let agent = issue.agent.trim();
                if agent.is_empty() || agent.len() > 200 || agent.chars().any(char::is_control) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "agent must be 1 to 200 characters, none of them control characters".into(),
                    );
                }
                if self.file_agents.contains(agent) {
                    return error(
                        StatusCode::CONFLICT,
                        format!("agent {agent:?} is in the configuration file: its keys are the file's ([[agents]] key_sha256)"),
                    );
                }
                let class = issue.class.as_deref().unwrap_or(&self.class_names[0]);
                if !self.class_names.iter().any(|c| c == class) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "no class {class:?}: the classes are {}",
                            self.class_names.join(", ")
                        ),
                    );
                }
                match self.keys.issue(agent, class).await {
                    Ok((key, digest)) => json_response(
                        StatusCode::CREATED,
                        &json!({
                            "key": key,
                            "digest": digest,
                            "agent": agent,
                            "class": class,
                            "kept": self.keys.kept(),
                            "note": "the key is shown this once: Corral keeps only its digest",
                        }),
                    ),
                    Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST".into()),
        }
    }

    /// `DELETE /corral/keys/{digest or agent}`: revokes that key, or every
    /// key issued for that agent; 404 when there is none.
    pub(super) async fn revoke_key(&self, method: &Method, who: &str) -> Response<BoxBody> {
        if method != Method::DELETE {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use DELETE".into());
        }
        match self.keys.revoke(who).await {
            Ok(0) => error(
                StatusCode::NOT_FOUND,
                format!("no valid key issued at run time is {who:?} or for an agent of that name (keys in the configuration file are revoked there)"),
            ),
            Ok(revoked) => json_response(StatusCode::OK, &json!({"revoked": revoked})),
            Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
        }
    }
}
