//! Calls on `/corral/registry` as the registry tests make them.

use corral_e2e::{request_with, send, Reply};

/// `method` on `/corral/registry{path}` as `agent`.
pub(crate) async fn call(url: &str, method: &str, path: &str, agent: &str, body: &str) -> Reply {
    let url = format!("{url}/corral/registry{path}");
    send(request_with(
        method,
        &url,
        body.to_string(),
        &[("x-agent-id", agent), ("content-type", "application/json")],
    ))
    .await
}

pub(crate) fn announce(capabilities: &str, ttl_secs: f64) -> String {
    format!(
        r#"{{"capabilities": {capabilities}, "models": ["llama3.2:3b"], "endpoint": "http://summarizer.internal:8080", "ttl_secs": {ttl_secs}, "metadata": {{"region": "eu"}}}}"#
    )
}

pub(crate) fn agents(reply: &Reply) -> Vec<String> {
    let body = reply.json();
    body["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of agents: {body}"))
        .iter()
        .map(|entry| entry["agent"].as_str().unwrap().to_string())
        .collect()
}

/// `method` on `/corral/registry{path}` with only `headers`.
pub(crate) async fn call_with(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let url = format!("{url}/corral/registry{path}");
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(request_with(method, &url, body.to_string(), &all)).await
}
