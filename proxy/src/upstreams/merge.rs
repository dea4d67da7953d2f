//! The lists every upstream answers for itself (`/api/tags`, `/api/ps`,
//! `/v1/models`), merged: a client asking what models there are sees
//! those of every server up, each once.

use corral_core::{BoxBody, BoxError, UpstreamFailed};
use http::{header, HeaderValue, Response, StatusCode};

use crate::upstream::Upstream;

/// The list member and the key naming an entry in it, for `path`.
pub(crate) fn merged_list(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/api/tags" | "/api/ps" => Some(("models", "name")),
        "/v1/models" => Some(("data", "id")),
        _ => None,
    }
}

/// `path` asked of every upstream up, their lists merged (the first
/// server's entry for a name wins, in configuration order).
pub(crate) async fn gather(upstream: &Upstream, path: &str) -> Result<Response<BoxBody>, BoxError> {
    let Some((list, key)) = merged_list(path) else {
        return Err(format!("{path} is not a list to merge").into());
    };
    let fleet = upstream.fleet();
    let asked: Vec<usize> = (0..upstream.targets().len())
        .filter(|u| fleet.is_none_or(|f| f.is_healthy(*u)))
        .collect();
    let mut answers = Vec::with_capacity(asked.len());
    for index in asked {
        answers.push(upstream.get(index, path).await);
    }
    let mut merged: Option<serde_json::Value> = None;
    let mut failures = Vec::new();
    for answer in answers {
        let value = match answer.map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                failures.push(e.to_string());
                continue;
            }
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        merged = Some(match merged {
            None => value,
            Some(mut into) => {
                merge_into(&mut into, &value, list, key);
                into
            }
        });
    }
    let Some(merged) = merged else {
        return Err(Box::new(UpstreamFailed::new(
            path.to_string(),
            false,
            failures.join("; "),
        )));
    };
    let mut response = Response::new(corral_core::full(merged.to_string()));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(response)
}

/// Appends to `into[list]` the entries of `from[list]` whose `key` it
/// does not hold yet.
fn merge_into(into: &mut serde_json::Value, from: &serde_json::Value, list: &str, key: &str) {
    let Some(extra) = from.get(list).and_then(|l| l.as_array()) else {
        return;
    };
    let Some(entries) = into.get_mut(list).and_then(|l| l.as_array_mut()) else {
        return;
    };
    for entry in extra {
        let name = entry.get(key);
        if name.is_none() || !entries.iter().any(|e| e.get(key) == name) {
            entries.push(entry.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_are_merged_by_name_the_first_server_winning() {
        let mut a = json!({"models": [{"name": "llama3:latest", "size": 1}]});
        let b = json!({"models": [{"name": "llama3:latest", "size": 2}, {"name": "qwen:7b"}]});
        merge_into(&mut a, &b, "models", "name");
        assert_eq!(
            a,
            json!({"models": [{"name": "llama3:latest", "size": 1}, {"name": "qwen:7b"}]})
        );
        let mut v = json!({"object": "list", "data": [{"id": "a"}]});
        merge_into(
            &mut v,
            &json!({"data": [{"id": "b"}, {"id": "a"}]}),
            "data",
            "id",
        );
        assert_eq!(
            v,
            json!({"object": "list", "data": [{"id": "a"}, {"id": "b"}]})
        );
        assert_eq!(merged_list("/api/show"), None);
    }
}
