//! The body's JSON as byte ranges: an object's members found without
//! building them, and the object written again with members kept,
//! dropped, replaced or added, every byte kept keeping its place.
//!
//! The workspace's `serde_json` keeps no key order and re-serializing
//! would rewrite numbers and escapes: this way the upstream gets the
//! client's own bytes but for the pinned members. The scan trusts its
//! input to be valid JSON (the caller checks it with `serde_json` first).

use std::ops::Range;

/// One member of a JSON object, as byte ranges of the body.
#[derive(Debug)]
pub(super) struct Member {
    /// The key, unescaped.
    pub(super) key: String,
    /// Where its key's opening quote is.
    pub(super) start: usize,
    /// Its value's bytes.
    pub(super) value: Range<usize>,
}

/// A JSON object within the body: its braces and its members.
#[derive(Debug)]
pub(super) struct Object {
    pub(super) open: usize,
    pub(super) close: usize,
    pub(super) members: Vec<Member>,
}

/// What becomes of one member when an object is rebuilt.
pub(super) enum Change {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// The object's text with each member kept, dropped or given a new
/// value, and `appended` members added at its end. What is kept keeps
/// its bytes, and the spacing between members is the file's own.
pub(super) fn rebuild(
    body: &[u8],
    object: &Object,
    change: impl Fn(usize, &Member) -> Change,
    appended: &[(&str, Vec<u8>)],
) -> Vec<u8> {
    let members = &object.members;
    let mut out = Vec::with_capacity(object.close + 1 - object.open + 48);
    let first = members.first().map_or(object.open + 1, |m| m.start);
    out.extend_from_slice(&body[object.open..first]);
    let mut previous: Option<usize> = None;
    for (i, member) in members.iter().enumerate() {
        let change = change(i, member);
        if matches!(change, Change::Drop) {
            continue;
        }
        if let Some(p) = previous {
            // The separator that followed the previous member kept.
            out.extend_from_slice(&body[members[p].value.end..members[p + 1].start]);
        }
        out.extend_from_slice(&body[member.start..member.value.start]);
        match change {
            Change::Replace(value) => out.extend_from_slice(&value),
            _ => out.extend_from_slice(&body[member.value.clone()]),
        }
        previous = Some(i);
    }
    let mut any = previous.is_some();
    for (key, value) in appended {
        if any {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
        any = true;
    }
    let tail = members.last().map_or(object.open + 1, |m| m.value.end);
    out.extend_from_slice(&body[tail..=object.close]);
    out
}

/// The first byte at or after `at` that is not JSON whitespace.
pub(super) fn skip_ws(body: &[u8], mut at: usize) -> usize {
    while body
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// The end (exclusive) of the string whose opening quote is at `at`.
fn string_end(body: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The end (exclusive) of the value starting at `at`, in valid JSON.
fn value_end(body: &[u8], at: usize) -> Option<usize> {
    match *body.get(at)? {
        b'"' => string_end(body, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < body.len() {
                match body[i] {
                    b'"' => {
                        i = string_end(body, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = at;
            while body
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            Some(i)
        }
    }
}

/// The object whose `{` is at `open`, in valid JSON; `None` if no
/// object starts there.
pub(super) fn object_at(body: &[u8], open: usize) -> Option<Object> {
    if body.get(open) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = skip_ws(body, open + 1);
    if body.get(i) == Some(&b'}') {
        return Some(Object {
            open,
            close: i,
            members,
        });
    }
    loop {
        if body.get(i) != Some(&b'"') {
            return None;
        }
        let start = i;
        let key_end = string_end(body, i)?;
        let key: String = serde_json::from_slice(&body[start..key_end]).ok()?;
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        let end = value_end(body, i)?;
        members.push(Member {
            key,
            start,
            value: i..end,
        });
        i = skip_ws(body, end);
        match body.get(i)? {
            b',' => i = skip_ws(body, i + 1),
            b'}' => {
                return Some(Object {
                    open,
                    close: i,
                    members,
                })
            }
            _ => return None,
        }
    }
}
