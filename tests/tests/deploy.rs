//! The deployment files run as written: every one parses; the image is
//! multi-stage, runs as non-root and serves a config that passes
//! `check-config` on every interface with its upstream from the
//! environment; health checks are commands `corral` has; the admin token
//! reaches Prometheus; Kubernetes probes, budget and replicas hold
//! together; and no shipped config holds a key, so model management in
//! the image's config is open only to a key from the environment.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use corral::cli::Cli;
use corral::Config;
use corral_e2e::{fast, mock, request, send};
use http::Request;
use http_body_util::Full;

/// The variable the shipped configs read the managing agent's key from.
const KEY_VAR: &str = "CORRAL_KEY_INCIDENT_RESPONDER";
/// The key the example config once published (as its digest, with the
/// key in a comment): it must open nothing.
const PUBLISHED_KEY: &str = "sk-corral-example-incident-0001";
/// Where the image keeps its config.
const IMAGE_CONFIG: &str = "/etc/corral/corral.toml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn deploy(path: &str) -> PathBuf {
    repo("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(&deploy(path))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(&read(&deploy(path)))
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn str_of(value: &serde_yaml::Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

/// A fresh key in [`KEY_VAR`], set once for this process before any
/// config that reads it is built (`key_env` is read when the stack is).
fn managing_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = corral::cli::keys::new_key().unwrap();
        std::env::set_var(KEY_VAR, &key);
        key
    })
}

/// One instruction of a Dockerfile, continuation lines joined.
struct Instruction {
    op: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(&deploy("Dockerfile")).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap();
                instructions.push(Instruction {
                    op: op.to_uppercase(),
                    args: args.trim().to_string(),
                });
                current.clear();
            }
        }
    }
    instructions
}

/// The instructions of the image's last stage.
fn final_stage(instructions: &[Instruction]) -> &[Instruction] {
    let last = instructions.iter().rposition(|i| i.op == "FROM").unwrap();
    &instructions[last..]
}

/// A JSON (exec form) argument list after `prefix` in `args`.
fn exec_form(args: &str, prefix: &str) -> Vec<String> {
    let rest = args
        .split_once(prefix)
        .unwrap_or_else(|| panic!("{prefix} in {args}"))
        .1;
    serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("exec form {rest}: {e}"))
}

/// The image's environment (its ENV lines).
fn image_env(stage: &[Instruction]) -> BTreeMap<String, String> {
    stage
        .iter()
        .filter(|i| i.op == "ENV")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(!v.contains('"'), "plain values: {pair}");
                    (k.to_string(), v.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The config the image serves: the file it copies to [`IMAGE_CONFIG`],
/// with the image's environment over it as `corral` applies it.
fn image_config() -> Config {
    let instructions = dockerfile();
    let stage = final_stage(&instructions);
    let source = stage
        .iter()
        .filter(|i| i.op == "COPY" && !i.args.starts_with("--from"))
        .find_map(|i| i.args.strip_suffix(IMAGE_CONFIG))
        .expect("the image copies a config to /etc/corral/corral.toml")
        .trim();
    let env = image_env(stage);
    assert_eq!(env["CORRAL_CONFIG"], IMAGE_CONFIG, "the image serves it");
    let mut config = Config::load(&repo(source)).unwrap();
    config.server.listen = corral::listen::parse_listen(&env["CORRAL_LISTEN"]).unwrap();
    config.upstream.url = env["CORRAL_UPSTREAM"].clone();
    config.validate().unwrap();
    config
}

#[test]
fn the_image_is_multi_stage_non_root_and_its_config_passes_check_config() {
    let instructions = dockerfile();
    let froms = instructions.iter().filter(|i| i.op == "FROM").count();
    assert!(froms >= 2, "a build stage and a runtime stage");
    let stage = final_stage(&instructions);
    assert!(
        stage
            .iter()
            .any(|i| i.op == "COPY" && i.args.starts_with("--from=build")),
        "only the binary comes from the build stage"
    );
    let user = stage.iter().rfind(|i| i.op == "USER").unwrap();
    let uid: u32 = user.args.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "numeric and non-root, so runAsNonRoot can check it");

    // Its health check and its command are commands corral has.
    let health = stage.iter().find(|i| i.op == "HEALTHCHECK").unwrap();
    let check = exec_form(&health.args, "CMD");
    assert_eq!(check, ["corral", "health"]);
    Cli::try_from_args(&check).unwrap();
    let entrypoint = exec_form(
        &stage.iter().find(|i| i.op == "ENTRYPOINT").unwrap().args,
        "",
    );
    let cmd = exec_form(&stage.iter().find(|i| i.op == "CMD").unwrap().args, "");
    assert_eq!(entrypoint, ["corral"]);
    Cli::try_from_args(entrypoint.iter().chain(&cmd)).unwrap();

    // check-config passes, with the managing agent's key set.
    managing_key();
    let mut config = image_config();
    corral::stack::build(&config, None).unwrap();
    // Every interface of the container: it starts only with the token.
    assert!(config.server.listen.ip().is_unspecified());
    assert_eq!(
        config.check_admin_exposure().unwrap_err().key(),
        "admin.token"
    );
    config.admin.token = Some("from-CORRAL_ADMIN_TOKEN".into());
    config.check_admin_exposure().unwrap();
    corral::UpstreamUrl::parse(&config.upstream.url).unwrap();

    let ignored = read(&repo(".dockerignore"));
    for kept_out in [".git", "target"] {
        assert!(
            ignored.lines().any(|l| l.trim() == kept_out),
            "{kept_out} is out of the build context"
        );
    }
}

/// Every TOML text shipped under deploy/: the files and the ConfigMaps'.
fn shipped_configs() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![deploy("")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.display().to_string();
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".toml") {
                found.push((name, read(&path)));
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                for document in serde_yaml::Deserializer::from_str(&read(&path)) {
                    let document: serde_yaml::Value =
                        serde::Deserialize::deserialize(document).unwrap();
                    if document["kind"] != "ConfigMap" {
                        continue;
                    }
                    for (key, value) in document["data"].as_mapping().unwrap() {
                        if str_of(key).ends_with(".toml") {
                            found.push((format!("{name}: {}", str_of(key)), str_of(value).into()));
                        }
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_shipped_config_holds_a_key_and_management_is_only_for_keys_from_the_environment() {
    let configs = shipped_configs();
    assert!(configs.len() >= 2, "corral.toml and the ConfigMap's");
    for (name, text) in &configs {
        // Neither a key in the clear nor a digest: a digest written here
        // is of a key someone can read somewhere.
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let key = line.split('=').next().unwrap().trim();
            assert!(
                !["key", "key_sha256", "token", "value"].contains(&key),
                "{name}: {line}"
            );
        }
        assert!(!text.contains("sk-corral-"), "{name}: no example key");
        let raw: toml::Table = text.parse().unwrap();

        // Classes that may call more than inference and metadata (model
        // management) hold only agents whose key comes from the
        // environment, and no agent lands in them without one.
        let privileged: Vec<&str> = raw
            .get("layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter(|l| l["kind"].as_str() == Some("auth"))
            .flat_map(|auth| {
                assert!(
                    auth.get("default_endpoints").is_none(),
                    "{name}: the default (inference, metadata) for classes not named"
                );
                auth.get("classes")
                    .and_then(|c| c.as_table())
                    .into_iter()
                    .flatten()
                    .filter(|(_, rule)| {
                        rule.get("endpoints")
                            .and_then(|e| e.as_array())
                            .is_some_and(|e| {
                                e.iter().any(|kind| {
                                    !["inference", "metadata"].contains(&kind.as_str().unwrap())
                                })
                            })
                    })
                    .map(|(class, _)| class.as_str())
            })
            .collect();
        assert!(
            !privileged.is_empty(),
            "{name}: some class may manage models"
        );
        let default_class = raw
            .get("identity")
            .and_then(|i| i.get("default_class"))
            .and_then(|c| c.as_str())
            .unwrap_or("default");
        assert!(!privileged.contains(&default_class), "{name}");
        for agent in raw["agents"].as_array().unwrap() {
            let class = agent
                .get("class")
                .and_then(|c| c.as_str())
                .unwrap_or(default_class);
            if privileged.contains(&class) {
                assert!(
                    agent.get("key_env").is_some(),
                    "{name}: {agent} manages models: its key comes from the environment"
                );
            }
        }
    }
}

/// Every way to ask for model management, as (method, path, body).
fn management_requests() -> Vec<(&'static str, String, &'static str)> {
    let blob = format!(
        "/api/blobs/sha256:{}",
        corral_auth::key_digest("") // the SHA-256 of no bytes, hex
    );
    vec![
        (
            "POST",
            "/api/pull".into(),
            r#"{"model":"llama3","stream":false}"#,
        ),
        (
            "POST",
            "/api/push".into(),
            r#"{"model":"llama3","stream":false}"#,
        ),
        (
            "POST",
            "/api/create".into(),
            r#"{"model":"mine","from":"llama3","stream":false}"#,
        ),
        (
            "POST",
            "/api/copy".into(),
            r#"{"source":"llama3","destination":"llama3-copy"}"#,
        ),
        ("DELETE", "/api/delete".into(), r#"{"model":"llama3"}"#),
        ("POST", blob.clone(), ""),
        ("HEAD", blob, ""),
    ]
}

fn with_headers(
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Request<Full<bytes::Bytes>> {
    let mut request = request(method, url, body.to_string());
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

/// `config`, started against a simulated Ollama: no management request
/// without the key from the environment reaches the upstream; with it,
/// one does.
async fn management_needs_the_key_from_the_environment(mut config: Config, what: &str) {
    let key = managing_key();
    let upstream = mock(fast()).await;
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = upstream.url();
    config.admin.token = Some("the-admin-token".into());
    let keyless: Vec<String> = config
        .agents
        .iter()
        .filter(|a| a.key_env.is_none())
        .map(|a| a.id.clone())
        .collect();
    let corral = corral::Running::start(&config).await.unwrap();
    let url = corral.url();

    let published = format!("Bearer {PUBLISHED_KEY}");
    let mut callers: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-agent-id", "incident-responder")],
        vec![("authorization", &published)],
        vec![
            ("authorization", &published),
            ("x-agent-id", "incident-responder"),
        ],
    ];
    callers.extend(keyless.iter().map(|id| vec![("x-agent-id", id.as_str())]));
    for (method, path, body) in management_requests() {
        for headers in &callers {
            let reply = send(with_headers(method, &format!("{url}{path}"), body, headers)).await;
            assert!(
                [401, 403].contains(&reply.status.as_u16()),
                "{what}: {method} {path} with {headers:?}: {} {:?}",
                reply.status,
                reply.body
            );
        }
    }
    let management = |uri: &str| {
        [
            "/api/pull",
            "/api/push",
            "/api/create",
            "/api/copy",
            "/api/delete",
            "/api/blobs",
        ]
        .iter()
        .any(|p| uri.starts_with(p))
    };
    let reached: Vec<String> = upstream
        .requests()
        .into_iter()
        .filter(|r| management(&r.uri))
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert!(reached.is_empty(), "{what}: the upstream saw {reached:?}");

    // The key from the environment may.
    let bearer = format!("Bearer {key}");
    let reply = send(with_headers(
        "DELETE",
        &format!("{url}/api/delete"),
        r#"{"model":"llama3"}"#,
        &[("authorization", &bearer)],
    ))
    .await;
    assert_eq!(reply.status, 200, "{what}: {:?}", reply.body);
    assert!(
        upstream.requests().iter().any(|r| r.uri == "/api/delete"),
        "{what}: the delete reached Ollama"
    );
    corral.shutdown().await;
}

#[tokio::test]
async fn in_the_image_config_only_the_key_from_the_environment_manages_models() {
    management_needs_the_key_from_the_environment(image_config(), "the image").await;
}

/// The Kubernetes manifest's documents, by kind.
fn kubernetes() -> BTreeMap<String, serde_yaml::Value> {
    let documents = yaml_documents("kubernetes/corral.yaml");
    let kinds: Vec<&str> = documents.iter().map(|d| str_of(&d["kind"])).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    );
    documents
        .into_iter()
        .map(|d| (str_of(&d["kind"]).to_string(), d))
        .collect()
}

fn configmap_config(k8s: &BTreeMap<String, serde_yaml::Value>) -> Config {
    let toml = str_of(&k8s["ConfigMap"]["data"]["corral.toml"]);
    Config::parse(toml, Path::new("configmap")).unwrap()
}

#[tokio::test]
async fn in_the_configmap_only_the_key_from_the_environment_manages_models() {
    let config = configmap_config(&kubernetes());
    management_needs_the_key_from_the_environment(config, "the ConfigMap").await;
}

#[test]
fn kubernetes_probes_liveness_and_readiness_on_healthz_with_the_token_from_a_secret() {
    managing_key();
    let k8s = kubernetes();
    let deployment = &k8s["Deployment"];
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let port = str_of(&container["ports"][0]["name"]);
    // Readiness on healthz: readyz fails while Ollama is down and would
    // take every replica out (agents would get connection refused, not
    // Corral's 503 with Retry-After).
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["path"], "/corral/healthz",
            "{probe}"
        );
        assert_eq!(container[probe]["httpGet"]["port"], port, "{probe}");
    }
    assert!(["IfNotPresent", "Always"].contains(&str_of(&container["imagePullPolicy"])));
    if str_of(&container["image"]).ends_with(":latest") {
        assert_eq!(container["imagePullPolicy"], "Always");
    }
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    Cli::try_from_args(std::iter::once("corral").chain(args.iter().copied())).unwrap();

    // The config mounted where --config looks, valid, listening on the
    // pod's network: it starts only with the token from the Secret.
    let mount = str_of(&container["volumeMounts"][0]["mountPath"]);
    let config_arg = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    assert_eq!(config_arg, format!("{mount}/corral.toml"));
    let mut config = configmap_config(&k8s);
    corral::stack::build(&config, None).unwrap();
    assert!(config.check_admin_exposure().is_err());
    // The image's CORRAL_LISTEN overrides the file: they agree, on the
    // container's port.
    let instructions = dockerfile();
    let image_listen =
        corral::listen::parse_listen(&image_env(final_stage(&instructions))["CORRAL_LISTEN"])
            .unwrap();
    assert_eq!(config.server.listen, image_listen);
    assert_eq!(
        container["ports"][0]["containerPort"].as_u64(),
        Some(u64::from(image_listen.port()))
    );
    let env = container["env"].as_sequence().unwrap();
    let token = env
        .iter()
        .find(|e| e["name"] == "CORRAL_ADMIN_TOKEN")
        .unwrap();
    let secret = &token["valueFrom"]["secretKeyRef"];
    config.admin.token = Some("from-the-secret".into());
    config.check_admin_exposure().unwrap();
    let key = env.iter().find(|e| e["name"] == KEY_VAR).unwrap();
    assert_eq!(
        key["valueFrom"]["secretKeyRef"]["optional"], true,
        "the pod starts without the managing agent's key"
    );
    assert!(
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > config.server.shutdown_grace.as_secs(),
        "streams in flight may finish"
    );

    // More than one replica only with Redis, and the config says how many.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(config.state.replicas as u64, replicas);
    let redis = env.iter().any(|e| e["name"] == "CORRAL_REDIS_URL")
        || config.state.backend == corral::config::Backend::Redis;
    assert!(replicas == 1 || redis, "{replicas} replicas need Redis");
    let commented = read(&deploy("kubernetes/corral.yaml"));
    assert!(commented.contains("#   value: redis://redis:6379/0"));
    let redis_docs = yaml_documents("kubernetes/redis.yaml");
    let redis_service = redis_docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(redis_service["metadata"]["name"], "redis");
    assert_eq!(redis_service["spec"]["ports"][0]["port"], 6379);

    // The budget covers the pods and never blocks a drain.
    let labels = &pod["metadata"]["labels"];
    let pdb = &k8s["PodDisruptionBudget"]["spec"];
    assert_eq!(&pdb["selector"]["matchLabels"], labels);
    assert!(pdb["maxUnavailable"].as_u64().unwrap() >= 1);

    // The Service reaches the container's port.
    let service = &k8s["Service"]["spec"];
    assert_eq!(&service["selector"], labels);
    assert_eq!(service["ports"][0]["targetPort"], port);

    // Prometheus scrapes /metrics with the token from the same Secret.
    let monitor = yaml("kubernetes/servicemonitor.yaml");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(
        &monitor["spec"]["selector"]["matchLabels"],
        &k8s["Service"]["metadata"]["labels"]
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["authorization"]["type"], "Bearer");
    assert_eq!(
        endpoint["authorization"]["credentials"]["name"],
        secret["name"]
    );
    assert_eq!(
        endpoint["authorization"]["credentials"]["key"],
        secret["key"]
    );
}

#[test]
fn compose_checks_health_with_the_binary_and_gives_prometheus_the_token() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for service in [
        "ollama",
        "ollama-pull",
        "corral",
        "redis",
        "prometheus",
        "grafana",
    ] {
        assert!(services[service].is_mapping(), "compose has {service}");
    }
    let corral = &services["corral"];

    // The health check is `corral health`, no shell (dash has no
    // /dev/tcp) and no grep (which found "ready" in "not ready").
    let test: Vec<&str> = corral["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(test, ["CMD", "corral", "health"]);
    Cli::try_from_args(&test[1..]).unwrap();

    // The image's environment under compose's: every interface, the
    // upstream a service of this file, the token required.
    let instructions = dockerfile();
    let mut env = image_env(final_stage(&instructions));
    for (name, value) in corral["environment"].as_mapping().unwrap() {
        match value.as_str() {
            Some(value) => env.insert(str_of(name).into(), value.into()),
            None => {
                assert!(value.is_null(), "{name:?}: passed through from the shell");
                env.remove(str_of(name))
            }
        };
    }
    let listen = corral::listen::parse_listen(&env["CORRAL_LISTEN"]).unwrap();
    assert!(listen.ip().is_unspecified());
    let upstream = corral::UpstreamUrl::parse(&env["CORRAL_UPSTREAM"]).unwrap();
    let host = upstream.authority().host();
    assert!(
        services[host].is_mapping(),
        "the upstream {host} is a service"
    );
    assert!(env["CORRAL_ADMIN_TOKEN"].starts_with("${CORRAL_ADMIN_TOKEN:?"));
    assert!(
        corral["environment"][KEY_VAR].is_null(),
        "never a literal key"
    );
    for port in corral["ports"].as_sequence().unwrap() {
        assert!(str_of(port).starts_with("127.0.0.1:"), "this host only");
    }

    // The model is pulled from Ollama by a one-shot service; the GPU
    // reservation is there to uncomment.
    let pull = &services["ollama-pull"];
    assert_eq!(pull["depends_on"]["ollama"]["condition"], "service_healthy");
    assert!(str_of(&pull["environment"]["OLLAMA_HOST"]).starts_with("ollama:"));
    assert!(str_of(&pull["entrypoint"][2]).contains("ollama pull"));
    assert!(services["ollama"]["deploy"].is_null());
    let text = read(&deploy("compose.yaml"));
    assert!(text.contains("#           capabilities: [gpu]"));

    // Prometheus reads the token from the secret made of the same variable
    // and sends it to corral's /metrics.
    assert_eq!(
        compose["secrets"]["corral_admin_token"]["environment"],
        "CORRAL_ADMIN_TOKEN"
    );
    let prometheus = &services["prometheus"];
    assert!(prometheus["secrets"]
        .as_sequence()
        .unwrap()
        .contains(&"corral_admin_token".into()));
    assert!(prometheus["volumes"]
        .as_sequence()
        .unwrap()
        .contains(&"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro".into()));
    let scrape = &yaml("prometheus/prometheus.yml")["scrape_configs"][0];
    assert_eq!(
        scrape["authorization"]["credentials_file"],
        "/run/secrets/corral_admin_token"
    );
    assert_eq!(scrape["metrics_path"], "/metrics");
    assert_eq!(
        scrape["static_configs"][0]["targets"][0],
        format!("corral:{}", listen.port())
    );

    // Grafana has the Prometheus datasource every panel names, and the
    // dashboard where its provider looks.
    let grafana = &services["grafana"];
    let volumes: Vec<&str> = grafana["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(volumes.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro"));
    let datasource = &yaml("grafana/provisioning/datasources/prometheus.yaml")["datasources"][0];
    assert_eq!(datasource["type"], "prometheus");
    assert_eq!(datasource["url"], "http://prometheus:9090");
    let provider = &yaml("grafana/provisioning/dashboards/corral.yaml")["providers"][0];
    let dashboards = str_of(&provider["options"]["path"]);
    assert!(volumes
        .iter()
        .any(|v| v.starts_with("./grafana/corral-dashboard.json:")
            && v.contains(&format!(":{dashboards}/"))));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&deploy("grafana/corral-dashboard.json"))).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if let Some(uid) = panel["datasource"]["uid"].as_str() {
            assert_eq!(uid, str_of(&datasource["uid"]), "{}", panel["title"]);
        }
    }
}

#[test]
fn the_rest_parses_and_the_licenses_are_at_the_root() {
    for file in [
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
    ] {
        let _ = yaml(file);
    }
    let unit = read(&deploy("systemd/corral.service"));
    assert!(unit.contains("ExecStart=/usr/local/bin/corral --config /etc/corral/corral.toml"));
    assert!(unit.contains("EnvironmentFile=-/etc/corral/corral.env"));

    let guide = read(&deploy("README.md"));
    for topic in [
        "docker run",
        "compose",
        "Kubernetes",
        "systemd",
        "corral keys new",
        "corral health",
        "by hand",
    ] {
        assert!(guide.contains(topic), "deploy/README.md covers {topic}");
    }

    assert!(read(&repo("LICENSE-MIT")).contains("Copyright (c) The Corral authors"));
    let apache = read(&repo("LICENSE-APACHE"));
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
}
