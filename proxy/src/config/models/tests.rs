use std::path::Path;

use super::*;
use crate::Config;

fn parse(text: &str) -> Result<Config, crate::LoadError> {
    Config::parse(text, Path::new("corral.toml"))
}

fn mins(n: u64) -> KeepAlive {
    KeepAlive::For(Duration::from_secs(60 * n))
}

#[test]
fn each_form_of_each_option_is_read() {
    let text = r#"
[models."llama3:8b"]
num_ctx = 8192
keep_alive = "30m"

[models.qwen3]
num_ctx = { min = 2048, max = 8192 }
keep_alive = { min = "5m", max = "1h" }

[models."a"]
keep_alive = -1
[models."b"]
keep_alive = "-1"
[models."c"]
keep_alive = 90
[models."d"]
keep_alive = { max = "-1" }
num_ctx = { min = 4096 }
"#;
    let config = parse(text).unwrap();
    let m = &config.models;
    assert_eq!(m["llama3:8b"].num_ctx, Some(Setting::Set(8192)));
    assert_eq!(m["llama3:8b"].keep_alive, Some(Setting::Set(mins(30))));
    assert_eq!(
        m["qwen3"].num_ctx,
        Some(Setting::Clamp {
            min: Some(2048),
            max: Some(8192)
        })
    );
    assert_eq!(
        m["qwen3"].keep_alive,
        Some(Setting::Clamp {
            min: Some(mins(5)),
            max: Some(mins(60))
        })
    );
    assert_eq!(m["a"].keep_alive, Some(Setting::Set(KeepAlive::Forever)));
    assert_eq!(m["b"].keep_alive, Some(Setting::Set(KeepAlive::Forever)));
    assert_eq!(
        m["c"].keep_alive,
        Some(Setting::Set(KeepAlive::For(Duration::from_secs(90))))
    );
    assert_eq!(
        m["d"].keep_alive,
        Some(Setting::Clamp {
            min: None,
            max: Some(KeepAlive::Forever)
        })
    );
    assert_eq!(
        m["d"].num_ctx,
        Some(Setting::Clamp {
            min: Some(4096),
            max: None
        })
    );
}

#[test]
fn a_refused_value_names_the_file_line_key_and_reason() {
    // (the file, what it says)
    let table: [(&str, &str); 10] = [
        (
            "[models.\"llama3\"]\nnum_ctx = 0\n",
            "corral.toml:2: models.\"llama3\".num_ctx: must be between 1 and 2147483647",
        ),
        (
            "[models.\"llama3\"]\nkeep_alive = \"5m\"\nnum_ctx = { min = 0 }\n",
            "corral.toml:3: models.\"llama3\".num_ctx.min: must be between 1 and 2147483647",
        ),
        (
            "[models.\"llama3\"]\nnum_ctx = { min = 8192, max = 2048 }\n",
            "corral.toml:2: models.\"llama3\".num_ctx.min: must be at most max (2048)",
        ),
        (
            "[models.\"llama3\"]\nkeep_alive = { min = \"1h\", max = \"5m\" }\n",
            "corral.toml:2: models.\"llama3\".keep_alive.min: must be at most max (5m)",
        ),
        (
            "[models.\"llama3\"]\nkeep_alive = { min = -1, max = \"5m\" }\n",
            "corral.toml:2: models.\"llama3\".keep_alive.min: must be at most max (5m)",
        ),
        (
            "[models.\"llama3\"]\nnum_ctx = {}\n",
            "corral.toml:2: models.\"llama3\".num_ctx: a range needs `min`, `max` or both (or give one value to pin it)",
        ),
        (
            "[models.\"llama3\"]\nnum_ctx = 1\n\n[models.\"llama3:latest\"]\nnum_ctx = 2\n",
            "corral.toml:4: models.\"llama3:latest\": is the same model as models.\"llama3\" (Ollama reads both as \"llama3:latest\"): keep one",
        ),
        (
            "[server]\n\n[models.\"x\"]\nnum_ctx = -5\n",
            "corral.toml:4: models.x.num_ctx: invalid value: integer `-5`, expected u64",
        ),
        (
            "[models.\"x\"]\nkeep_alive = \"soon\"\n",
            "corral.toml:2: models.x.keep_alive: \"soon\" is not a duration (\"30m\", \"1h 30m\"), seconds, or -1 for forever: expected number at 0",
        ),
        (
            "[models.\"x\"]\nnum_ctx = 8192\nnum_gpu = 1\n",
            "corral.toml:3: models.x.num_gpu: unknown field `num_gpu`, expected `num_ctx` or `keep_alive`",
        ),
    ];
    for (text, said) in table {
        let err = parse(text).expect_err(text);
        assert_eq!(err.to_string(), said, "{text}");
    }
}

#[test]
fn unknown_keys_in_a_range_are_refused() {
    let err = parse("[models.\"x\"]\nnum_ctx = { min = 1, most = 2 }\n").unwrap_err();
    assert_eq!(err.key, "models.x.num_ctx");
    assert!(err.reason.contains("unknown key `most`"), "{err}");
    assert_eq!(err.line, Some(2));
}

#[test]
fn a_keep_alive_too_long_for_ollama_is_refused() {
    let err = parse("[models.\"x\"]\nkeep_alive = \"300years\"\n").unwrap_err();
    assert!(err.reason.contains("292 years"), "{err}");
}

#[test]
fn a_clamp_moves_a_value_into_its_range_and_leaves_absence_alone() {
    let clamp = Setting::Clamp {
        min: Some(2048u64),
        max: Some(8192),
    };
    // (asked, given)
    let table = [
        (None, None),
        (Some(512), Some(2048)),
        (Some(4096), Some(4096)),
        (Some(32768), Some(8192)),
    ];
    for (asked, given) in table {
        assert_eq!(clamp.apply(asked), given, "{asked:?}");
    }
    assert_eq!(Setting::Set(8192u64).apply(None), Some(8192));
    assert_eq!(Setting::Set(8192u64).apply(Some(2)), Some(8192));
    let forever_at_most = Setting::Clamp {
        min: Some(mins(5)),
        max: None,
    };
    assert_eq!(
        forever_at_most.apply(Some(KeepAlive::For(Duration::ZERO))),
        Some(mins(5))
    );
    assert_eq!(
        forever_at_most.apply(Some(KeepAlive::Forever)),
        Some(KeepAlive::Forever)
    );
}

#[test]
fn the_line_of_a_key_is_found_in_its_table() {
    let text = "[server]\n[models.'a:b']\nnum_ctx = 1\n[models.\"c\"]\n keep_alive = 3\n";
    assert_eq!(line_of(text, "models.\"a:b\".num_ctx"), Some(3));
    assert_eq!(line_of(text, "models.\"c\".keep_alive.max"), Some(5));
    assert_eq!(
        line_of(text, "models.\"c\".num_ctx"),
        Some(4),
        "else the header"
    );
    assert_eq!(line_of(text, "server.listen"), None);
}
