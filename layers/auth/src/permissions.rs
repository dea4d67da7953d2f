//! What each class may call, compiled for a lookup per request.

use std::collections::HashMap;

use corral_core::{ConfigError, Endpoint};

use crate::config::{endpoint_set, AuthConfig};

#[derive(Debug, Clone)]
struct Rule {
    endpoints: [bool; Endpoint::ALL.len()],
    /// `None`: any model. Names match with or without `:latest`; a
    /// trailing `*` matches any rest.
    models: Option<Vec<String>>,
}

/// The permissions of every class.
#[derive(Debug, Clone)]
pub(crate) struct Permissions {
    classes: HashMap<String, Rule>,
    default: Rule,
}

/// Why a request is not allowed.
pub(crate) enum Denied {
    Endpoint,
    /// The model that is not allowed.
    Model(String),
}

impl Permissions {
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let default_endpoints = endpoint_set(&config.default_endpoints)
            .map_err(|e| ConfigError::new("default_endpoints", e))?;
        let mut classes = HashMap::new();
        for (name, permissions) in &config.classes {
            let endpoints = match &permissions.endpoints {
                Some(list) => endpoint_set(list)
                    .map_err(|e| ConfigError::new(format!("classes.{name}.endpoints"), e))?,
                None => default_endpoints,
            };
            classes.insert(
                name.clone(),
                Rule {
                    endpoints,
                    models: permissions.models.clone(),
                },
            );
        }
        Ok(Self {
            classes,
            default: Rule {
                endpoints: default_endpoints,
                models: None,
            },
        })
    }

    /// Whether `class` may use only some models.
    pub(crate) fn restricts_models(&self, class: &str) -> bool {
        self.classes
            .get(class)
            .unwrap_or(&self.default)
            .models
            .is_some()
    }

    /// Whether `class` may call `endpoint` naming every model of `names`
    /// (a management body: `model`, `name`, `source`, `destination`,
    /// `from`), as read by [`models_named`].
    pub(crate) fn check_all(
        &self,
        class: &str,
        endpoint: Endpoint,
        names: &[String],
    ) -> Result<(), Denied> {
        self.check(class, endpoint, None)?;
        for name in names {
            self.check(class, endpoint, Some(name))?;
        }
        Ok(())
    }

    /// Whether `class` may call `endpoint` with `model`.
    pub(crate) fn check(
        &self,
        class: &str,
        endpoint: Endpoint,
        model: Option<&str>,
    ) -> Result<(), Denied> {
        let rule = self.classes.get(class).unwrap_or(&self.default);
        let index = Endpoint::ALL
            .iter()
            .position(|e| *e == endpoint)
            .unwrap_or(Endpoint::ALL.len() - 1);
        if !rule.endpoints[index] {
            return Err(Denied::Endpoint);
        }
        match (&rule.models, model) {
            (Some(allowed), Some(model)) if !allowed.iter().any(|a| matches(a, model)) => {
                Err(Denied::Model(model.to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// Every model a management body names, read as Ollama reads it (the
/// last of repeated keys wins); `None` when it cannot be read or names
/// none, which a class limited to some models is refused for: classify
/// reads such bodies leniently, and a body it cannot read must not pass
/// as one that names no model.
pub(crate) fn models_named(body: &[u8]) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    // Every key Ollama would take for one of these, whatever its case.
    let names: Vec<String> = value
        .as_object()?
        .iter()
        .filter(|(key, _)| {
            let key = corral_core::go_key_fold(key);
            ["model", "name", "source", "destination", "from"].contains(&key.as_str())
        })
        .filter_map(|(_, name)| name.as_str())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    (!names.is_empty()).then_some(names)
}

fn matches(pattern: &str, model: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return model.starts_with(prefix);
    }
    let base = |name: &str| name.strip_suffix(":latest").unwrap_or(name).to_string();
    base(pattern) == base(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permissions of an auth config read from `toml_text`.
    fn permissions(toml_text: &str) -> Permissions {
        let config: AuthConfig = toml::from_str(toml_text).unwrap();
        Permissions::new(&config).unwrap()
    }

    #[test]
    fn by_default_a_class_may_infer_and_read_but_not_manage() {
        let p = permissions("");
        assert!(p.check("any", Endpoint::Chat, Some("llama3")).is_ok());
        assert!(p.check("any", Endpoint::Tags, None).is_ok());
        for managing in [
            Endpoint::Pull,
            Endpoint::Delete,
            Endpoint::Create,
            Endpoint::Other,
        ] {
            assert!(
                matches!(p.check("any", managing, None), Err(Denied::Endpoint)),
                "{managing:?}"
            );
        }
    }

    #[test]
    fn a_class_may_be_given_endpoints_and_held_to_models() {
        let p = permissions(
            r#"
            [classes.ops]
            endpoints = ["all"]
            [classes.batch]
            endpoints = ["embed", "v1_embeddings", "tags"]
            models = ["nomic-embed-text", "mxbai*"]
            "#,
        );
        assert!(p.check("ops", Endpoint::Delete, None).is_ok());
        assert!(p
            .check("batch", Endpoint::Embed, Some("nomic-embed-text:latest"))
            .is_ok());
        assert!(p
            .check("batch", Endpoint::Embed, Some("mxbai-embed-large"))
            .is_ok());
        assert!(matches!(
            p.check("batch", Endpoint::Embed, Some("llama3")),
            Err(Denied::Model(_))
        ));
        assert!(matches!(
            p.check("batch", Endpoint::Chat, Some("nomic-embed-text")),
            Err(Denied::Endpoint)
        ));
        assert!(p.check("batch", Endpoint::Tags, None).is_ok());
    }

    #[test]
    fn unknown_endpoint_names_are_refused_at_start() {
        let config: AuthConfig = toml::from_str("[classes.x]\nendpoints = [\"chatt\"]\n").unwrap();
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "classes.x.endpoints");
        assert!(err.to_string().contains("chatt"));
    }
}
