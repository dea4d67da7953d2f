//! The `corral` binary: `check-config`, precedence of flags over the
//! environment over the file, and SIGTERM.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::net::TcpStream;
use std::process::{Command, Stdio};

mod support;

use support::{
    assert_says, check, config_file, corral, free_port, get_raw, stderr, terminate, wait_for,
};

/// Whether a connection to `port` is refused.
fn nothing_listens_on(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn check_config_prints_the_resolved_stack() {
    let output = check(
        r#"
[server]
listen = "127.0.0.1:11435"
max_request_bytes = 1048576

[upstream]
url = "gpu-box"

[[classes]]
name = "opus"
priority = 3
priorities = [2, 5]

[[agents]]
id = "planner"
key = "sk-planner-0123"
class = "opus"
"#,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains(": ok"), "{out}");
    assert!(out.contains("upstream   http://gpu-box:11434"), "{out}");
    assert!(out.contains("0. classify"), "{out}");
    assert!(out.contains("1048576 bytes"), "{out}");
    assert!(out.contains("opus (priority 3, may ask 2..5)"), "{out}");
    assert!(out.contains("default (priority 5, may ask 1..10)"), "{out}");
}

#[test]
fn an_unknown_key_is_refused_with_file_line_key_and_reason() {
    let output = check("[server]\nlisten = \"127.0.0.1:1\"\nlisen_typo = 3\n");
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains(".toml:3"), "{err}");
    assert!(
        err.contains("server.lisen_typo") || err.contains("lisen_typo"),
        "{err}"
    );
    assert!(err.contains("unknown field"), "{err}");

    let top = check("[servr]\n");
    assert_says(&top, "unknown field `servr`");
}

#[test]
fn an_unknown_layer_kind_names_its_position_and_line() {
    let output = check("[upstream]\nurl = \"h\"\n\n[[layers]]\nkind = \"teleport\"\n");
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(".toml:4: layers[0].kind: unknown layer kind \"teleport\""),
        "{err}"
    );

    let missing = check("[[layers]]\nmax_queue = 3\n");
    assert_says(&missing, "missing field `kind`");

    let classify = check("[[layers]]\nkind = \"classify\"\n");
    assert_says(&classify, "always the first layer");
}

#[test]
fn bad_values_are_refused_with_the_key_and_reason() {
    let cases = [
        (
            "[server]\nmax_request_bytes = \"big\"\n",
            "server.max_request_bytes",
        ),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        (
            "[server]\nshutdown_grace = \"soon\"\n",
            "server.shutdown_grace",
        ),
        ("[upstream]\nurl = \"ftp://x\"\n", "upstream.url"),
        (
            "[[classes]]\nname = \"a\"\npriority = 11\n",
            "classes[0].priority",
        ),
        (
            "[[agents]]\nid = \"a\"\nclass = \"ghost\"\n",
            "agents[0].class",
        ),
        (
            "[identity]\ndefault_class = \"ghost\"\n",
            "identity.default_class",
        ),
        (
            "[upstream]\nca_file = \"/no/such/ca.pem\"\n",
            "upstream.ca_file",
        ),
        ("[upstream]\ncapacity = 0\n", "upstream.capacity"),
        ("[admin]\ntoken = \"two words\"\n", "admin.token"),
        ("[admin]\ntoken = \"\"\n", "admin.token"),
        (
            "[[classes]]\nname = \"a\"\nweight = 0\n",
            "classes[0].weight",
        ),
        (
            "[[classes]]\nname = \"a\"\ncompartment = \"x\"\n[[layers]]\nkind = \"bulkhead\"\n",
            "classes[0].compartment: unknown compartment",
        ),
        (
            "[[layers]]\nkind = \"bulkhead\"\n[[layers.rules]]\ncompartment = \"x\"\n",
            "layers[0].rules[0].compartment",
        ),
        (
            "[[layers]]\nkind = \"shed\"\nmax_queue = 0\n",
            "layers[0].max_queue",
        ),
        (
            "[[layers]]\nkind = \"priority\"\naging = \"often\"\n",
            "layers[0].aging",
        ),
        (
            "[[layers]]\nkind = \"priority\"\n[[layers]]\nkind = \"priority\"\n",
            "listed twice",
        ),
        (
            "[[layers]]\nkind = \"degrade\"\n",
            "list a `priority` layer too",
        ),
        (
            "[[layers]]\nkind = \"cache\"\n[[layers]]\nkind = \"auth\"\n",
            "layers[1].kind: auth must come before cache",
        ),
        (
            "[[layers]]\nkind = \"auth\"\n[layers.classes.ghost]\nendpoints = [\"all\"]\n",
            "layers[0].classes.ghost",
        ),
        ("[server]\nmax_header_bytes = 100\n", "server.max_header_bytes"),
        ("[state]\nbackend = \"redis\"\n", "state.redis_url: is required"),
        (
            "[state]\nbackend = \"redis\"\nredis_url = \"nonsense\"\n",
            "state.redis_url",
        ),
        ("[server]\nwrite_stall_timeout = \"0s\"\n", "server.write_stall_timeout"),
        ("[state]\nreplicas = 0\n", "state.replicas"),
        (
            "[[layers]]\nkind = \"priority\"\nlease_ttl = \"100ms\"\n",
            "layers[0].lease_ttl",
        ),
        ("[server]\nmax_headers = 1000000\n", "server.max_headers"),
        ("[server]\nbody_read_timeout = \"1000y\"\n", "server.body_read_timeout"),
        (
            "[[classes]]\nname = \"ops\"\nprivate = true\n[[agents]]\nid = \"a\"\nclass = \"ops\"\n",
            "agents[0].key",
        ),
    ];
    for (text, key) in cases {
        let output = check(text);
        assert!(!output.status.success(), "{text}");
        assert!(stderr(&output).contains(key), "{text}: {}", stderr(&output));
    }
    let missing = corral()
        .args(["check-config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("cannot read the file"));
}

#[tokio::test]
async fn flags_override_the_environment_which_overrides_the_file_and_sigterm_stops_cleanly() {
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let path = config_file(
        "precedence.toml",
        &format!("[server]\nlisten = \"127.0.0.1:{file_port}\"\n"),
    );

    let mut child = corral()
        .env("CORRAL_CONFIG", &path)
        .env("CORRAL_LISTEN", format!("127.0.0.1:{env_port}"))
        .env("CORRAL_UPSTREAM", "ftp://not-even-valid")
        .args([
            "--listen",
            &format!("127.0.0.1:{flag_port}"),
            "--upstream",
            "127.0.0.1:1",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(flag_port).await;
    assert!(nothing_listens_on(env_port), "the flag wins over the env");
    assert!(nothing_listens_on(file_port), "the flag wins over the file");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");

    let mut child = corral()
        .env("CORRAL_CONFIG", &path)
        .env("CORRAL_LISTEN", format!("127.0.0.1:{env_port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(env_port).await;
    assert!(nothing_listens_on(file_port), "the env wins over the file");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_bad_upstream_from_the_environment_is_refused_at_start() {
    let output = corral()
        .env("CORRAL_UPSTREAM", "ftp://x")
        .env("CORRAL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_says(&output, "--upstream/CORRAL_UPSTREAM");
}

#[test]
fn a_taken_address_is_refused_with_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = corral()
        .args(["--listen", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_says(&output, "server.listen: cannot listen on");
}

#[tokio::test]
async fn the_capacity_flag_overrides_the_file_and_shows_in_the_metrics() {
    let port = free_port();
    let path = config_file(
        "capacity.toml",
        "[upstream]\nurl = \"127.0.0.1:1\"\ncapacity = 2\n\n[[layers]]\nkind = \"priority\"\n",
    );
    let check = corral().arg("check-config").arg(&path).output().unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("1. priority   2 upstream permit(s)"),
        "{check:?}"
    );

    let mut child = corral()
        .env("CORRAL_CAPACITY", "5")
        .args([
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--capacity",
            "7",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port).await;
    let text = get_raw(port, "/metrics");
    terminate(&child);
    child.wait().unwrap();
    assert!(text.contains("corral_upstream_capacity 7"), "{text}");
    assert!(
        text.contains("corral_queue_depth{priority=\"1\"} 0"),
        "{text}"
    );
}
