//! Reading Markdown as GitHub does, enough for the docs tests: fenced
//! blocks, link targets outside code spans, heading anchors.

use std::collections::HashMap;

/// One fenced code block.
pub(crate) struct Block {
    /// The first word of its info string, lowercase (`toml`, `sh`, ...).
    pub(crate) language: String,
    /// The line of its opening fence, 1-based.
    pub(crate) line: usize,
    /// Its content, the fence's indentation removed.
    pub(crate) text: String,
}

/// The fenced blocks of a Markdown text, and the text with them blanked
/// out (lines kept, so line numbers still hold).
pub(crate) fn fenced(markdown: &str, name: &str) -> (Vec<Block>, Vec<String>) {
    let mut blocks = Vec::new();
    let mut prose = Vec::new();
    // (fence, indentation, block being read)
    let mut open: Option<(String, usize, Block)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                let ticks = trimmed.chars().take_while(|c| *c == '`').count();
                if ticks >= 3 {
                    let language = trimmed[ticks..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_lowercase();
                    open = Some((
                        "`".repeat(ticks),
                        indent,
                        Block {
                            language,
                            line: i + 1,
                            text: String::new(),
                        },
                    ));
                    prose.push(String::new());
                } else {
                    prose.push(line.to_string());
                }
            }
            Some((fence, fence_indent, block)) => {
                prose.push(String::new());
                if trimmed.starts_with(fence.as_str())
                    && trimmed.trim_end().trim_matches('`').is_empty()
                {
                    let (_, _, block) = open.take().unwrap();
                    blocks.push(block);
                } else {
                    let cut = indent.min(*fence_indent);
                    block.text.push_str(&line[cut..]);
                    block.text.push('\n');
                }
            }
        }
    }
    if let Some((_, _, block)) = open {
        panic!("{name}:{}: this fence is never closed", block.line);
    }
    (blocks, prose)
}

/// A line with its inline code spans blanked out.
pub(crate) fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = "`".repeat(ticks);
        let after = &rest[start + ticks..];
        match after.find(fence.as_str()) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of a prose line's links: `[text](target)`, `![alt](target)`,
/// and reference definitions `[label]: target`.
pub(crate) fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0usize;
        let end = after
            .char_indices()
            .find(|(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth == 0 => true,
                ')' => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
            .map_or(after.len(), |(i, _)| i);
        targets.push(after[..end].to_string());
        rest = &after[end..];
    }
    let trimmed = line.trim_start();
    if let Some(label_end) = trimmed.strip_prefix('[').and_then(|t| t.find("]:")) {
        let target = trimmed[label_end + 3..].trim();
        if !target.is_empty() {
            targets.push(target.to_string());
        }
    }
    targets
        .into_iter()
        .map(|t| {
            // `<path>`, or `path "title"`.
            let t = t.trim();
            let t = t.split_whitespace().next().unwrap_or("");
            t.trim_start_matches('<').trim_end_matches('>').to_string()
        })
        .collect()
}

/// A heading's anchor as GitHub makes it: its text as shown (code marks
/// and link targets dropped), lowercase, spaces to `-`, punctuation but
/// `-` and `_` dropped.
pub(crate) fn slug(heading: &str) -> String {
    let mut shown = String::new();
    let mut rest = heading;
    while let Some(at) = rest.find("](") {
        shown.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        rest = after.find(')').map_or("", |end| &after[end + 1..]);
    }
    shown.push_str(rest);
    shown
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings, duplicates numbered as
/// GitHub numbers them (`name`, `name-1`, ...).
pub(crate) fn anchors(markdown: &str) -> Vec<String> {
    let (_, prose) = fenced(markdown, "a linked file");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for line in prose {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let text = trimmed[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        anchors.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    anchors
}
