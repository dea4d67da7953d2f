//! Unit tests of `registry.rs`.

use super::*;

#[test]
fn paths_name_their_target() {
    let table = [
        ("/corral/registry", Some(Target::All)),
        ("/corral/registry/", Some(Target::All)),
        ("/corral/registry/a", Some(Target::Agent("a".into()))),
        (
            "/corral/registry/team%2Fa",
            Some(Target::Agent("team/a".into())),
        ),
        (
            "/corral/registry/a/heartbeat",
            Some(Target::Heartbeat("a".into())),
        ),
        ("/corral/registry/a/b", None),
        ("/corral/registry/%FF", None),
    ];
    for (path, expected) in table {
        assert_eq!(Target::parse(path).ok(), expected, "{path}");
    }
}

#[test]
fn queries_give_the_capability_or_a_refusal() {
    assert_eq!(capability(None).ok(), Some(None));
    assert_eq!(
        capability(Some("capability=code%2Dreview")).ok(),
        Some(Some("code-review".to_string()))
    );
    assert!(capability(Some("model=llama3")).is_err());
}
