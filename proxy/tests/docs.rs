//! The documentation checks itself: every TOML block in the README and
//! `docs/` is a file `corral check-config` accepts, every fenced block
//! says what it holds (a fragment is `text`, never an unmarked block),
//! and every relative link in them and in the crate READMEs points at a
//! file, and a heading, that exists.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

#[path = "docs/markdown.rs"]
mod markdown;
mod support;

use markdown::{anchors, fenced, link_targets, slug};
use support::{config_file, corral, stderr};

/// What a variable named by `key_env` or `env` holds while a block is
/// checked: long enough for a secret, a key without spaces.
const SECRET: &str = "docs-test-secret-0123456789abcdef";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `README.md` and every `.md` under `docs/`.
fn documentation() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    let mut found = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut found);
    found.sort();
    found
}

/// The documentation, and the crates' READMEs (`crates/*/README.md`,
/// `layers/*/README.md`, `proxy/README.md`).
fn every_readme() -> Vec<PathBuf> {
    let mut found = documentation();
    let crates = ["crates", "layers"]
        .into_iter()
        .flat_map(|folder| std::fs::read_dir(root().join(folder)).into_iter().flatten());
    let dirs = crates
        .map(|entry| entry.unwrap().path())
        .chain([root().join("proxy")]);
    for dir in dirs {
        let readme = dir.join("README.md");
        if readme.exists() {
            found.push(readme);
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The variables a block reads its keys and secrets from: every
/// `key_env = "NAME"` and `{ env = "NAME" }`.
fn variables(block: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in block.lines() {
        let code = line.split('#').next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("env = \"") {
            rest = &rest[at + "env = \"".len()..];
            if let Some(end) = rest.find('"') {
                names.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    names
}

#[test]
fn every_toml_block_is_a_config_check_config_accepts() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in documentation() {
        let (blocks, _) = fenced(&read(&path), &shown(&path));
        for block in blocks {
            let first = block.text.lines().next().unwrap_or("").trim().to_string();
            if block.language.is_empty() {
                failures.push(format!(
                    "{}:{}: a fenced block without a language (`{first}`): mark it toml, text, sh, ...",
                    shown(&path),
                    block.line
                ));
                continue;
            }
            if block.language != "toml" {
                continue;
            }
            let name = format!(
                "docs-{}-{}.toml",
                shown(&path).replace(['/', '.'], "_"),
                block.line
            );
            let file = config_file(&name, &block.text);
            let mut command = corral();
            command.arg("check-config").arg(&file);
            for variable in variables(&block.text) {
                command.env(variable, SECRET);
            }
            let output = command.output().unwrap();
            checked += 1;
            if !output.status.success() {
                failures.push(format!(
                    "{}:{}: the block starting `{first}`: {}",
                    shown(&path),
                    block.line,
                    stderr(&output).trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} TOML blocks fail check-config, or blocks are unmarked:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 10,
        "only {checked} TOML blocks found: is the parser broken?"
    );
}

#[test]
fn every_relative_link_resolves() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in every_readme() {
        let (_, prose) = fenced(&read(&path), &shown(&path));
        let dir = path.parent().unwrap();
        for (i, line) in prose.iter().enumerate() {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let at = format!("{}:{}: ({target})", shown(&path), i + 1);
                let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let linked = if file.is_empty() {
                    path.clone()
                } else {
                    dir.join(file)
                };
                if !linked.exists() {
                    failures.push(format!("{at}: {} does not exist", shown(&linked)));
                    continue;
                }
                if anchor.is_empty() {
                    continue;
                }
                if linked.extension().is_none_or(|e| e != "md") {
                    failures.push(format!("{at}: an anchor into a file that is not Markdown"));
                    continue;
                }
                let known = anchors(&read(&linked));
                if !known.iter().any(|a| a == anchor) {
                    failures.push(format!(
                        "{at}: no heading in {} has the anchor #{anchor} (it has: {})",
                        shown(&linked),
                        known.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} relative links are broken:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 20,
        "only {checked} relative links found: is the parser broken?"
    );
}

#[test]
fn anchors_follow_github() {
    assert_eq!(slug("The problem"), "the-problem");
    assert_eq!(slug("`shed`: backpressure"), "shed-backpressure");
    assert_eq!(
        slug("Who is asking: `[identity]`, `[[classes]]`, `[[agents]]`"),
        "who-is-asking-identity-classes-agents"
    );
    assert_eq!(
        slug("Several replicas, one truth: Redis"),
        "several-replicas-one-truth-redis"
    );
    assert_eq!(
        slug("[Keys](security.md) and max_queue"),
        "keys-and-max_queue"
    );
    assert_eq!(
        anchors("# A\n## A\n```\n# not a heading\n```\n"),
        ["a", "a-1"]
    );
    assert_eq!(
        link_targets("see [a](b.md#c), `[x](y)` and ![i](d.svg \"t\")"),
        ["b.md#c", "d.svg"]
    );
    assert_eq!(
        variables("key_env = \"A\"\nx = { env = \"B\" } # env = \"C\""),
        ["A", "B"]
    );
}
