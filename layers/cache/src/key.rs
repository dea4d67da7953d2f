//! What may be cached, and under which key.

use corral_core::{Endpoint, RequestMeta};
use http::{header, HeaderMap, HeaderName};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Namespace;

/// `bypass` skips the cache; `force` caches an answer that is not
/// deterministic.
pub const X_CORRAL_CACHE: HeaderName = HeaderName::from_static("x-corral-cache");

/// The key of an answer: a SHA-256.
pub type Key = [u8; 32];

/// What the request allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Use {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// Whether an answer to this request may come from the cache and go into
/// it: embeddings always; generations when deterministic (temperature 0
/// or a seed) or forced; never when the client says `bypass` or
/// `no-store`.
pub(crate) fn usage(meta: &RequestMeta, headers: &HeaderMap) -> Use {
    let never = Use {
        read: false,
        write: false,
    };
    let asked = headers
        .get(X_CORRAL_CACHE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if asked.as_deref() == Some("bypass") {
        return never;
    }
    let control = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let no_store = control.contains("no-store");
    let no_cache = control.contains("no-cache");
    let deterministic = match meta.endpoint {
        Endpoint::Embed | Endpoint::Embeddings | Endpoint::OpenAiEmbeddings => true,
        Endpoint::Generate
        | Endpoint::Chat
        | Endpoint::OpenAiChat
        | Endpoint::OpenAiCompletions
        | Endpoint::AnthropicMessages
        | Endpoint::OpenAiResponses => {
            meta.generation.temperature == Some(0.0)
                || meta.generation.seed.is_some()
                || asked.as_deref() == Some("force")
        }
        _ => false,
    };
    if !deterministic {
        return never;
    }
    Use {
        read: !no_store && !no_cache,
        write: !no_store,
    }
}

/// Fields that change how the answer is delivered, not what it says.
const DELIVERY: [&str; 3] = ["stream", "keep_alive", "stream_options"];

/// The key of `body` (a JSON object) for `meta`'s endpoint and namespace:
/// the hash of its canonical form (keys sorted, delivery fields left out).
pub(crate) fn key(meta: &RequestMeta, body: &Value, namespace: Namespace) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(b"corral-cache-v1\0");
    hasher.update(meta.endpoint.as_str().as_bytes());
    hasher.update(b"\0");
    match namespace {
        // A private class's agents share with no one, whatever the
        // namespace (and not with their own public entries either).
        _ if meta.private => {
            hasher.update(b"private-agent:");
            hasher.update(meta.agent.as_str().as_bytes());
        }
        Namespace::None => {}
        Namespace::Agent => {
            hasher.update(b"agent:");
            hasher.update(meta.agent.as_str().as_bytes());
        }
        Namespace::Class => {
            hasher.update(b"class:");
            hasher.update(meta.class.as_str().as_bytes());
        }
    }
    hasher.update(b"\0");
    if let Value::Object(map) = body {
        let mut keys: Vec<&String> = map
            .keys()
            .filter(|k| !DELIVERY.contains(&k.as_str()))
            .collect();
        keys.sort();
        hasher.update(b"{");
        for k in keys {
            canonical(&Value::String(k.clone()), &mut hasher);
            hasher.update(b":");
            canonical(&map[k], &mut hasher);
            hasher.update(b",");
        }
        hasher.update(b"}");
    } else {
        canonical(body, &mut hasher);
    }
    hasher.finalize().into()
}

/// Feeds `value` in a canonical form: object keys sorted at every depth,
/// so two requests that differ only in key order share a key.
fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for k in keys {
                canonical(&Value::String(k.clone()), hasher);
                hasher.update(b":");
                canonical(&map[k], hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        other => hasher.update(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RequestMeta {
        RequestMeta::new("r".into(), Endpoint::Chat)
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn key_order_and_delivery_fields_do_not_change_the_key() {
        let a = key(
            &meta(),
            &parse(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"seed":1,"temperature":0},"stream":true}"#,
            ),
            Namespace::None,
        );
        let b = key(
            &meta(),
            &parse(
                r#"{"options":{"temperature":0,"seed":1},"stream":false,"keep_alive":"5m","messages":[{"content":"x","role":"user"}],"model":"m"}"#,
            ),
            Namespace::None,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn what_determines_the_answer_changes_the_key() {
        let base = key(
            &meta(),
            &parse(r#"{"model":"m","prompt":"x"}"#),
            Namespace::None,
        );
        for other in [
            r#"{"model":"n","prompt":"x"}"#,
            r#"{"model":"m","prompt":"y"}"#,
            r#"{"model":"m","prompt":"x","format":"json"}"#,
        ] {
            assert_ne!(
                base,
                key(&meta(), &parse(other), Namespace::None),
                "{other}"
            );
        }
    }

    #[test]
    fn namespaces_keep_tenants_apart() {
        let body = parse(r#"{"model":"m","prompt":"x"}"#);
        let a = meta().with_agent("a".into(), "c".into(), false);
        let b = meta().with_agent("b".into(), "c".into(), false);
        assert_eq!(
            key(&a, &body, Namespace::None),
            key(&b, &body, Namespace::None)
        );
        assert_ne!(
            key(&a, &body, Namespace::Agent),
            key(&b, &body, Namespace::Agent)
        );
        assert_eq!(
            key(&a, &body, Namespace::Class),
            key(&b, &body, Namespace::Class)
        );
    }

    #[test]
    fn a_private_class_shares_with_no_one_whatever_the_namespace() {
        let body = parse(r#"{"model":"m","prompt":"x"}"#);
        let private = |agent: &str| {
            let mut meta = meta().with_agent(agent.into(), "c".into(), true);
            meta.private = true;
            meta
        };
        let public = meta().with_agent("b".into(), "c".into(), true);
        for namespace in [Namespace::None, Namespace::Class, Namespace::Agent] {
            assert_ne!(
                key(&private("a"), &body, namespace),
                key(&private("b"), &body, namespace),
                "{namespace:?}"
            );
            assert_ne!(
                key(&private("b"), &body, namespace),
                key(&public, &body, namespace),
                "{namespace:?}: b's private answers are not its public ones"
            );
        }
    }
}
