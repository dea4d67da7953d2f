//! `[[layers]]`: the stack below `classify`, as the file lists it, and
//! the lines its keys were written on for error messages.

use serde::Deserialize;

/// The stack with no `[[layers]]` at all: what protects an Ollama server
/// out of the box. Bounded admission (`shed`), the scheduler (permits by
/// priority, fair share, aging), retries of what is safe to retry, and a
/// breaker, with their defaults.
pub const DEFAULT_LAYERS: [&str; 4] = ["shed", "priority", "retry", "breaker"];

/// `[[layers]]`: one layer of the stack, its `kind` and its options.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    /// Which layer (`shed`, `priority`, ...).
    pub kind: String,
    /// Its options, every key but `kind`.
    pub options: toml::Table,
    /// The line of the file it starts on, for error messages.
    pub line: Option<usize>,
    /// The line of each key of its table (and its sub-tables), for error
    /// messages that name a key.
    pub key_lines: Vec<(String, usize)>,
}

impl LayerConfig {
    /// The line of `key` (a dotted path such as `compartments[1].name`:
    /// its last name is looked for, the second written for an index of
    /// 1, as in an array of tables), else of the table's header.
    ///
    /// ```
    /// let text = "[[layers]]\nkind = \"bulkhead\"\n[[layers.compartments]]\nname = \"a\"\nmax_concurrent = 1\n[[layers.compartments]]\nname = \"b\"\nmax_concurrent = 0\n";
    /// let config = corral::Config::parse(text, std::path::Path::new("x.toml")).unwrap();
    /// let layer = &config.layers()[0];
    /// assert_eq!(layer.line_of("compartments[1].max_concurrent"), Some(8));
    /// assert_eq!(layer.line_of("compartments[0].max_concurrent"), Some(5));
    /// assert_eq!(layer.line_of("unheard_of"), Some(1), "else the header's");
    /// ```
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let mut segments = key.rsplit('.');
        let last = segments.next().unwrap_or(key);
        let name = last.split('[').next().unwrap_or(last);
        // `parent[i].name`: the i-th time `name` was written.
        let nth = segments
            .next()
            .and_then(|parent| parent.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok())
            .unwrap_or(0);
        let mut lines = self.key_lines.iter().filter(|(k, _)| k == name);
        lines
            .clone()
            .nth(nth)
            .or_else(|| lines.next())
            .map(|(_, line)| *line)
            .or(self.line)
    }
}

/// The keys written in the `[[layers]]` table that starts at `header`
/// (1-based), up to the next `[[layers]]`, with their lines.
pub(crate) fn key_lines(text: &str, header: usize) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate().skip(header) {
        let trimmed = line.trim_start();
        if trimmed.starts_with("[[layers]]")
            || (trimmed.starts_with('[')
                && !trimmed.starts_with("[layers.")
                && !trimmed.starts_with("[[layers."))
        {
            break;
        }
        if let Some((key, _)) = trimmed.split_once('=') {
            let key = key.trim().trim_matches('"');
            if !key.is_empty() && !key.starts_with('#') {
                found.push((key.to_string(), i + 1));
            }
        }
    }
    found
}

impl<'de> Deserialize<'de> for LayerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut options = toml::Table::deserialize(d)?;
        let kind = match options.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`kind` must be a string naming the layer, not {}",
                    other.type_str()
                )))
            }
            None => {
                return Err(D::Error::custom(
                    "missing field `kind` (which layer this is)",
                ))
            }
        };
        Ok(Self {
            kind,
            options,
            line: None,
            key_lines: Vec::new(),
        })
    }
}

/// The line of `section.key` (a key of a plain `[section]` table) in
/// `text`: for errors the checks after parsing find.
///
pub(crate) fn section_line_of(text: &str, key: &str) -> Option<usize> {
    let (section, name) = key.split_once('.')?;
    let header = format!("[{section}]");
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            inside = trimmed.starts_with(&header);
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((found, _)) = trimmed.split_once('=') {
            if found.trim().trim_matches('"') == name {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod section_tests {
    #[test]
    fn a_key_of_a_section_is_found_on_its_line() {
        let text =
            "[server]\nlisten = \"x\"\n\n[traces]\n# a comment\notlp_endpoint = \"grpc://c\"\n";
        assert_eq!(
            super::section_line_of(text, "traces.otlp_endpoint"),
            Some(6)
        );
        assert_eq!(super::section_line_of(text, "server.listen"), Some(2));
        assert_eq!(super::section_line_of(text, "traces.listen"), None);
        assert_eq!(super::section_line_of(text, "nodot"), None);
    }
}
