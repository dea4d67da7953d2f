//! What a body may hold at most: the check `read` makes before it
//! parses.

/// What a body may hold at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) max_json_depth: usize,
    pub(crate) max_messages: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_json_depth: crate::config::DEFAULT_MAX_JSON_DEPTH,
            max_messages: crate::config::DEFAULT_MAX_MESSAGES,
        }
    }
}

/// Whether `body`'s arrays and objects nest deeper than `max`. A scan of
/// the bytes: `serde_json` bounds its own recursion, but skips ignored
/// fields without one, and the body goes on to the upstream's parser.
pub(super) fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}
