//! Each published crate's README is its crate documentation (`//!` in
//! `lib.rs`), whose examples run as doctests: the README cannot drift
//! from code that compiles. `UPDATE_READMES=1 cargo test -p corral-e2e
//! --test crate_readmes` writes them; the test fails when one is stale.
//! The manifests carry what the registry needs.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The published crates: their folders.
fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["crates", "layers"]
        .into_iter()
        .flat_map(|folder| std::fs::read_dir(root().join(folder)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.push(root().join("proxy"));
    dirs.sort();
    dirs
}

/// `[`Name`]` and `[text](path::to)` are rustdoc's links: plain code or
/// text on GitHub and crates.io.
fn without_intra_doc_links(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find(']') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let text = &after[..end];
        let tail = &after[end + 1..];
        if let Some(target) = tail.strip_prefix('(') {
            let close = target.find(')').unwrap_or(target.len());
            let url = &target[..close];
            if url.starts_with("http") {
                out.push_str(&format!("[{text}]({url})"));
            } else {
                out.push_str(text);
            }
            rest = target.get(close + 1..).unwrap_or("");
        } else {
            out.push_str(text);
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The README a crate's `lib.rs` documentation makes.
fn readme_of(dir: &Path) -> String {
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let name = std::fs::read_to_string(dir.join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("name = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .unwrap();
    let mut out = format!(
        "<!-- Made from src/lib.rs by tests/tests/crate_readmes.rs: edit the crate docs, then run it with UPDATE_READMES=1. -->\n\n# {name}\n\n"
    );
    let mut in_code = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            if line.trim().is_empty() || line.starts_with("#!") {
                continue;
            }
            break;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with("```") {
            if !in_code {
                let lang = doc.trim_start_matches('`');
                let lang = if lang.is_empty()
                    || lang.split(',').any(|t| {
                        matches!(
                            t.trim(),
                            "no_run" | "ignore" | "should_panic" | "compile_fail"
                        )
                    }) {
                    "rust"
                } else {
                    lang
                };
                out.push_str(&format!("```{lang}\n"));
            } else {
                out.push_str("```\n");
            }
            in_code = !in_code;
            continue;
        }
        if in_code {
            // Hidden doctest lines are not shown.
            if doc == "#" || doc.starts_with("# ") {
                continue;
            }
            out.push_str(doc);
        } else if let Some(heading) = doc.strip_prefix("# ") {
            out.push_str(&format!("## {heading}"));
        } else {
            out.push_str(&without_intra_doc_links(doc));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "\nPart of [Corral](https://github.com/corral-rs/corral); API documentation on [docs.rs](https://docs.rs/{name}). Licensed under MIT or Apache-2.0.\n"
    ));
    out
}

#[test]
fn every_crate_readme_is_its_crate_documentation() {
    let update = std::env::var_os("UPDATE_READMES").is_some();
    let mut stale = Vec::new();
    for dir in crates() {
        let wanted = readme_of(&dir);
        let path = dir.join("README.md");
        if update {
            std::fs::write(&path, &wanted).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(wanted.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale READMEs (run UPDATE_READMES=1 cargo test -p corral-e2e --test crate_readmes): {stale:?}"
    );
}

#[test]
fn every_crate_carries_what_the_registry_needs() {
    for dir in crates() {
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let package = manifest["package"].as_table().unwrap();
        let name = package["name"].as_str().unwrap();
        for key in [
            "description",
            "readme",
            "keywords",
            "categories",
            "documentation",
            "rust-version",
            "license",
            "repository",
        ] {
            assert!(package.contains_key(key), "{name} has no {key}");
        }
        let keywords = package["keywords"].as_array().unwrap();
        assert!(
            (1..=5).contains(&keywords.len()),
            "{name}: crates.io takes 1 to 5 keywords"
        );
        assert_eq!(
            package["documentation"].as_str().unwrap(),
            format!("https://docs.rs/{name}")
        );
    }
}
