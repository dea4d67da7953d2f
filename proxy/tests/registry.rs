//! The layer registry: layers named in `[[layers]]` are built from their
//! options and stacked in order; their errors name the option; a layer
//! that panics costs one request a 500, nothing more.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral::{
    options, stack, BuildContext, Config, LayerConfig, LayerKind, Running, StackLayer, StackService,
};
use corral_core::ConfigError;
use corral_mock_ollama::{MockConfig, MockOllama};
use http::HeaderValue;
use http_body_util::BodyExt;
use tower::util::MapResponseLayer;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TagConfig {
    value: String,
}

/// Appends its `value` to the `x-test-path` response header: the header
/// spells the order in which responses pass the layers.
fn tag(layer: &LayerConfig, _: &BuildContext<'_>) -> Result<StackLayer, ConfigError> {
    let config: TagConfig = options(layer)?;
    if config.value.is_empty() {
        return Err(ConfigError::new("value", "must not be empty"));
    }
    let value = config.value.clone();
    Ok(StackLayer::new(
        MapResponseLayer::new(move |mut response: corral::HttpResponse| {
            let path = match response.headers().get("x-test-path") {
                Some(existing) => format!("{}<{value}", existing.to_str().unwrap()),
                None => value.clone(),
            };
            response
                .headers_mut()
                .insert("x-test-path", HeaderValue::from_str(&path).unwrap());
            response
        }),
        format!("tags responses with {}", config.value),
    ))
}

/// Panics on every request whose path asks for it.
fn explode(_: &LayerConfig, _: &BuildContext<'_>) -> Result<StackLayer, ConfigError> {
    #[derive(Clone)]
    struct Explode;
    impl tower::Layer<StackService> for Explode {
        type Service = StackService;
        fn layer(&self, inner: StackService) -> StackService {
            tower::util::BoxCloneSyncService::new(tower::ServiceExt::map_request(
                inner,
                |request: corral::HttpRequest| {
                    assert!(
                        !request.uri().path().ends_with("/explode"),
                        "boom on request"
                    );
                    request
                },
            ))
        }
    }
    Ok(StackLayer::new(Explode, "panics on /explode"))
}

const TEST_LAYERS: &[LayerKind] = &[
    LayerKind {
        name: "tag",
        about: "tags responses",
        build: tag,
        refusals: &[],
        needs: &[],
        before: &[],
        reads: corral::registry::reads_nothing,
    },
    LayerKind {
        name: "explode",
        about: "panics",
        build: explode,
        refusals: &[],
        needs: &[],
        before: &[],
        reads: corral::registry::reads_nothing,
    },
];

fn config(upstream: &str, layers: &str) -> Config {
    let text =
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n{layers}");
    Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
}

async fn start(upstream: &MockOllama, layers: &str) -> Running {
    let config = config(&upstream.url(), layers);
    let stack = stack::build_with(&config, None, TEST_LAYERS).unwrap();
    Running::start_stack(&config, &stack).await.unwrap()
}

async fn get(url: &str) -> (u16, Option<String>, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let path = response
        .headers()
        .get("x-test-path")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, path, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn layers_are_stacked_in_the_order_listed_outermost_first() {
    let upstream = MockOllama::start(MockConfig::default()).await.unwrap();
    let corral = start(
        &upstream,
        "[[layers]]\nkind = \"tag\"\nvalue = \"outer\"\n[[layers]]\nkind = \"tag\"\nvalue = \"inner\"\n",
    )
    .await;
    let (status, path, _) = get(&format!("{}/api/tags", corral.url())).await;
    assert_eq!(status, 200);
    // The response passes the inner layer first on its way out.
    assert_eq!(path.as_deref(), Some("inner<outer"));
}

/// What building the stack of `text`, read from `corral.toml`, fails with.
fn build_error(text: &str) -> String {
    let file = std::path::Path::new("corral.toml");
    let config = Config::parse(text, file).unwrap();
    let err = stack::build_with(&config, Some(file), TEST_LAYERS).unwrap_err();
    err.to_string()
}

#[test]
fn a_layers_bad_option_names_the_layer_the_option_and_the_options_own_line() {
    let err = build_error("[upstream]\nurl = \"h\"\n\n[[layers]]\nkind = \"tag\"\nvalue = \"a\"\n\n[[layers]]\nkind = \"tag\"\nvalu = \"b\"\n");
    assert_eq!(
        err.split(": unknown field").next().unwrap(),
        "corral.toml:10: layers[1].valu"
    );
    assert!(err.contains("unknown field `valu`"), "{err}");

    let err = build_error("[[layers]]\nkind = \"tag\"\nvalue = \"\"\n");
    assert_eq!(err, "corral.toml:3: layers[0].value: must not be empty");
}

#[test]
fn check_config_lists_every_layer_with_its_summary() {
    let config = config("h", "[[layers]]\nkind = \"tag\"\nvalue = \"x\"\n");
    let stack = stack::build_with(&config, None, TEST_LAYERS).unwrap();
    let text = stack::describe(&config, &stack);
    assert!(text.contains("0. classify"), "{text}");
    assert!(
        text.contains("1. tag        tags responses with x"),
        "{text}"
    );
}

#[tokio::test]
async fn a_panicking_layer_costs_one_request_a_500_and_nothing_else() {
    let upstream = MockOllama::start(MockConfig::default()).await.unwrap();
    let corral = start(&upstream, "[[layers]]\nkind = \"explode\"\n").await;
    let (status, _, body) = get(&format!("{}/explode", corral.url())).await;
    assert_eq!(status, 500);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("unexpected error"),
        "{body}"
    );
    let (status, _, _) = get(&format!("{}/api/version", corral.url())).await;
    assert_eq!(status, 200, "the proxy keeps serving");
}
