//! The config's classes and agents, checked and indexed once.

use std::collections::HashMap;

use corral_core::{AgentId, ClassName, ConfigError, Priority};

use super::{Agent, Class};
use crate::config::{AgentConfig, ClassConfig, ClassifyConfig, DEFAULT_CLASS};

fn priority(value: u8, key: &str) -> Result<Priority, ConfigError> {
    Priority::new(value).map_err(|e| ConfigError::new(key, e.to_string()))
}

/// The config's classes, checked; their index by name; and the default
/// class's index (the built-in `default` class added when it is the
/// default and not defined).
pub(super) fn classes_of(config: &ClassifyConfig) -> Result<ClassTable, ConfigError> {
    let mut classes = Vec::with_capacity(config.classes.len() + 1);
    let mut names = HashMap::new();
    for (i, entry) in config.classes.iter().enumerate() {
        let at = |key: &str| format!("classes[{i}].{key}");
        let class = class_of(entry, at)?;
        if names.insert(entry.name.clone(), classes.len()).is_some() {
            return Err(ConfigError::new(
                at("name"),
                format!("class {:?} is defined twice", entry.name),
            ));
        }
        classes.push(class);
    }
    let default_class = match names.get(&config.default_class) {
        Some(&i) => i,
        None if config.default_class == DEFAULT_CLASS => {
            classes.push(Class {
                name: ClassName::from(DEFAULT_CLASS),
                priority: Priority::DEFAULT,
                highest: Priority::HIGHEST,
                lowest: Priority::LOWEST,
                private: false,
                deadline: None,
                ttft: None,
            });
            names.insert(DEFAULT_CLASS.to_string(), classes.len() - 1);
            classes.len() - 1
        }
        None => {
            return Err(ConfigError::new(
                "default_class",
                format!("no [[classes]] entry is named {:?}", config.default_class),
            ))
        }
    };
    Ok(ClassTable {
        classes,
        names,
        default_class,
    })
}

/// The classes, by index; their index by name; the default's index.
pub(super) struct ClassTable {
    pub(super) classes: Vec<Class>,
    pub(super) names: HashMap<String, usize>,
    pub(super) default_class: usize,
}

/// One class entry, checked: a name, a priority range `[highest, lowest]`
/// and a default priority inside it. `at` names a key of the entry.
fn class_of(entry: &ClassConfig, at: impl Fn(&str) -> String) -> Result<Class, ConfigError> {
    if entry.name.trim().is_empty() {
        return Err(ConfigError::new(at("name"), "must not be empty"));
    }
    let default = priority(entry.priority, &at("priority"))?;
    let highest = priority(entry.priorities[0], &at("priorities[0]"))?;
    let lowest = priority(entry.priorities[1], &at("priorities[1]"))?;
    if lowest.is_higher_than(highest) {
        return Err(ConfigError::new(
            at("priorities"),
            format!("the range is [highest, lowest]: {lowest} is a higher priority than {highest}"),
        ));
    }
    if default.is_higher_than(highest) || lowest.is_higher_than(default) {
        return Err(ConfigError::new(
            at("priority"),
            format!("{default} is outside the class's priorities [{highest}, {lowest}]"),
        ));
    }
    Ok(Class {
        name: ClassName::from(entry.name.as_str()),
        priority: default,
        highest,
        lowest,
        private: entry.private,
        deadline: entry.deadline,
        ttft: entry.ttft,
    })
}

/// One agent entry of class `class`, checked, and its key's digest. `at`
/// names a key of the entry.
pub(super) fn agent_of(
    entry: &AgentConfig,
    class: usize,
    in_class: &Class,
    at: impl Fn(&str) -> String,
) -> Result<(Agent, Option<[u8; 32]>), ConfigError> {
    if entry.id.trim().is_empty() {
        return Err(ConfigError::new(at("id"), "must not be empty"));
    }
    let key = entry.key_digest(&at)?;
    // An agent whose key comes from an unset variable is disabled, not
    // keyless.
    let keyed = key.is_some() || entry.key_env.is_some();
    if in_class.private && !keyed {
        // Its private answers would go to whoever sends its id.
        return Err(ConfigError::new(
            at("key"),
            format!(
                "agent {:?} is in the private class {:?}: it needs a key",
                entry.id, in_class.name
            ),
        ));
    }
    let agent = Agent {
        id: AgentId::from(entry.id.as_str()),
        class,
        has_key: keyed,
        revoked: entry.revoked,
    };
    Ok((agent, key))
}
