//! The deployment files parse and the configs they carry are valid.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;

use corral::Config;

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn the_deployment_files_parse_and_carry_a_valid_config() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy("compose.yaml")).unwrap()).unwrap();
    for service in ["ollama", "corral", "redis", "prometheus", "grafana"] {
        assert!(
            compose["services"][service].is_mapping(),
            "compose has {service}"
        );
    }
    assert_eq!(
        compose["services"]["corral"]["environment"]["CORRAL_UPSTREAM"],
        "http://ollama:11434"
    );

    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(
        &std::fs::read_to_string(deploy("kubernetes/corral.yaml")).unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment", "Service"]);
    let container = &documents[1]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/corral/healthz"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/corral/readyz"
    );
    let toml = documents[0]["data"]["corral.toml"].as_str().unwrap();
    let mut config = Config::parse(toml, Path::new("configmap")).unwrap();
    corral::stack::build(&config, None).unwrap();
    // It listens on the pod's network: it starts only with the token the
    // Deployment gives it.
    assert!(config.check_admin_exposure().is_err());
    assert_eq!(container["env"][0]["name"], "CORRAL_ADMIN_TOKEN");
    config.admin.token = Some("from-the-secret".into());
    assert!(config.check_admin_exposure().is_ok());
    let corral_env = &compose["services"]["corral"]["environment"];
    assert_eq!(corral_env["CORRAL_LISTEN"], "0.0.0.0:11435");
    assert!(corral_env["CORRAL_ADMIN_TOKEN"]
        .as_str()
        .unwrap()
        .starts_with("${CORRAL_ADMIN_TOKEN:?"));
    let prometheus: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        prometheus["scrape_configs"][0]["authorization"]["credentials_file"],
        "/run/secrets/corral_admin_token"
    );

    let config = Config::load(&deploy("corral.toml")).unwrap();
    corral::stack::build(&config, None).unwrap();

    for file in [
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
    ] {
        let _: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(deploy(file)).unwrap()).unwrap();
    }
    let unit = std::fs::read_to_string(deploy("systemd/corral.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/corral --config /etc/corral/corral.toml"));
}
