//! The `corral` binary: `check-config`, precedence of flags over the
//! environment over the file, and SIGTERM.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

mod support;

use support::{check, config_file, corral, free_port, stderr, wait_for};

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
    assert!(
        stderr(&top).contains("unknown field `servr`"),
        "{}",
        stderr(&top)
    );
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
    assert!(
        stderr(&missing).contains("missing field `kind`"),
        "{}",
        stderr(&missing)
    );

    let classify = check("[[layers]]\nkind = \"classify\"\n");
    assert!(
        stderr(&classify).contains("always the first layer"),
        "{}",
        stderr(&classify)
    );
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
    assert!(
        TcpStream::connect(("127.0.0.1", env_port)).is_err(),
        "the flag wins over the env"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the flag wins over the file"
    );
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
    assert!(
        TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the env wins over the file"
    );
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
    assert!(
        stderr(&output).contains("--upstream/CORRAL_UPSTREAM"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_taken_address_is_refused_with_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = corral()
        .args(["--listen", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("server.listen: cannot listen on"),
        "{}",
        stderr(&output)
    );
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    assert!(text.contains("corral_upstream_capacity 7"), "{text}");
    assert!(
        text.contains("corral_queue_depth{priority=\"1\"} 0"),
        "{text}"
    );
}

#[test]
fn with_no_config_it_listens_next_to_ollama_and_forwards_to_it() {
    let output = check("");
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("listen     127.0.0.1:11435"), "{shown}");
    assert!(
        shown.contains("upstream   http://127.0.0.1:11434"),
        "{shown}"
    );
}

#[test]
fn with_no_layers_the_stack_protects_and_says_its_capacity_and_where_it_came_from() {
    let output = check("");
    let shown = String::from_utf8_lossy(&output.stdout);
    for layer in [
        "1. shed",
        "2. priority   1 upstream permit(s) per model",
        "3. retry",
        "4. breaker",
    ] {
        assert!(shown.contains(layer), "{layer} in {shown}");
    }
    assert!(
        shown.contains("the default: no [[layers]] listed; `layers = []` for none"),
        "{shown}"
    );
    assert!(
        shown.contains("capacity   1 request at a time per model")
            && shown.contains("--capacity N, CORRAL_CAPACITY=N or [upstream] capacity = N"),
        "{shown}"
    );
    assert!(
        shown.contains("timed-out generations never run again"),
        "{shown}"
    );

    // `layers = []`: a bare pass-through, on purpose.
    let bare = check("layers = []\n");
    let shown = String::from_utf8_lossy(&bare.stdout);
    assert!(shown.contains("0. classify"), "{shown}");
    assert!(!shown.contains("1. "), "{shown}");

    // A capacity in the file says so, and means all models together.
    let file = check("[upstream]\ncapacity = 3\n");
    let shown = String::from_utf8_lossy(&file.stdout);
    assert!(
        shown.contains(
            "capacity   3 request(s) at once, all models together (from [upstream] capacity in"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("2. priority   3 upstream permit(s);"),
        "{shown}"
    );
}

#[tokio::test]
async fn with_no_config_the_startup_line_names_the_stack_and_the_capacity_and_capacity_is_served() {
    let port = free_port();
    let child = corral()
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "127.0.0.1:1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(port).await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /corral/capacity HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"capacity\":1"), "{text}");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("stack=classify, shed, priority, retry, breaker"),
        "{log}"
    );
    assert!(
        log.contains(
            "capacity=1 request at a time per model, Ollama's default OLLAMA_NUM_PARALLEL"
        ),
        "{log}"
    );
}

#[tokio::test]
async fn listen_takes_the_forms_ollama_host_takes() {
    let shown = check("[server]\nlisten = \":11435\"\n");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("listen     0.0.0.0:11435"),
        "{shown:?}"
    );
    let shown = check("[server]\nlisten = \"localhost\"\n");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("listen     127.0.0.1:11435"),
        "{shown:?}"
    );

    let port = free_port();
    let child = corral()
        .args([
            "--listen",
            &format!("localhost:{port}"),
            "--upstream",
            "127.0.0.1:1",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap();

    // Every interface without a token would open the admin API: refused,
    // saying what to do.
    let open = corral()
        .args(["--listen", ":0", "--upstream", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!open.status.success());
    assert!(stderr(&open).contains("admin.token"), "{}", stderr(&open));
    let bad = corral()
        .args(["--listen", "127.0.0.1:http"])
        .output()
        .unwrap();
    assert!(stderr(&bad).contains("port"), "{}", stderr(&bad));
}

/// The image's environment, from `deploy/Dockerfile`'s ENV lines (one
/// instruction, continued with backslashes, plain `NAME=value` pairs).
fn image_env() -> Vec<(String, String)> {
    let dockerfile = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"),
    )
    .unwrap();
    let mut env = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines().map(str::trim) {
        let words = match line.strip_prefix("ENV ") {
            Some(rest) => rest,
            None if in_env => line,
            None => continue,
        };
        for pair in words.trim_end_matches('\\').split_whitespace() {
            let (name, value) = pair.split_once('=').unwrap();
            env.push((name.to_string(), value.to_string()));
        }
        in_env = line.ends_with('\\');
    }
    assert!(!env.is_empty(), "the image sets its environment");
    env
}

fn code(output: &std::process::Output) -> Option<i32> {
    output.status.code()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `corral` as the image runs it (its ENV, `deploy/corral.toml` where it
/// copies it) with what `docker run -e` adds, on a free port of every
/// interface. The port and the child.
async fn like_the_image(upstream: &str, extra: &[(&str, &str)]) -> (u16, std::process::Child) {
    let port = free_port();
    let mut command = corral();
    command.env_remove("CORRAL_KEY_INCIDENT_RESPONDER");
    for (name, value) in image_env() {
        let value = match name.as_str() {
            "CORRAL_CONFIG" => {
                assert_eq!(value, "/etc/corral/corral.toml");
                concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/corral.toml").to_string()
            }
            "CORRAL_LISTEN" => {
                let image = corral::listen::parse_listen(&value).unwrap();
                assert!(image.ip().is_unspecified(), "every interface: {value}");
                format!("0.0.0.0:{port}")
            }
            _ => value,
        };
        command.env(name, value);
    }
    command.env("CORRAL_UPSTREAM", upstream);
    for (name, value) in extra {
        command.env(name, value);
    }
    // Its log goes to a file: a child that exits instead of listening
    // says why.
    let log = config_file(&format!("image-{port}.log"), "");
    let mut child = command
        .arg("serve")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..1000 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (port, child);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "corral exited ({status}) instead of serving: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {port}");
}

fn stop(child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{status}");
}

/// `corral health` as a container's health check runs it: with the
/// image's CORRAL_LISTEN (here on `port`) and nothing else.
fn health(port: u16, args: &[&str]) -> std::process::Output {
    corral()
        .env("CORRAL_LISTEN", format!("0.0.0.0:{port}"))
        .arg("health")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_with_only_the_upstream_and_token_and_its_health_check_passes() {
    let upstream = corral_e2e::mock(corral_e2e::fast()).await;
    let token = "a-token-from-docker-run";
    let key = String::from_utf8(corral().args(["keys", "new"]).output().unwrap().stdout).unwrap();
    let key = key.lines().next().unwrap();
    let (port, child) = like_the_image(
        &upstream.url(),
        &[
            ("CORRAL_ADMIN_TOKEN", token),
            ("CORRAL_KEY_INCIDENT_RESPONDER", key),
        ],
    )
    .await;

    // The health check finds it through CORRAL_LISTEN (0.0.0.0: asked on
    // loopback).
    let alive = health(port, &[]);
    assert_eq!(code(&alive), Some(0), "{}", stderr(&alive));
    assert_eq!(
        stdout(&alive).trim(),
        format!("http://127.0.0.1:{port}/corral/healthz: ok")
    );
    let ready = health(port, &["--ready"]);
    assert_eq!(code(&ready), Some(0), "{}", stderr(&ready));
    assert!(
        stdout(&ready).contains("/corral/readyz: ready (upstream version"),
        "{}",
        stdout(&ready)
    );

    // The admin API is on the network: the token opens /metrics, nothing
    // else does.
    let get = |auth: Option<&str>| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let auth = auth
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        text
    };
    assert!(get(None).starts_with("HTTP/1.1 401"));
    assert!(get(Some("a-guess")).starts_with("HTTP/1.1 401"));
    assert!(get(Some(token)).starts_with("HTTP/1.1 200"));
    stop(child);

    // Without the token it refuses to start, saying what to set.
    let refused = corral()
        .env("CORRAL_LISTEN", format!("0.0.0.0:{}", free_port()))
        .env("CORRAL_UPSTREAM", upstream.url())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("CORRAL_ADMIN_TOKEN"),
        "{}",
        stderr(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_without_the_managing_key_and_that_agent_is_disabled() {
    let upstream = corral_e2e::mock(corral_e2e::fast()).await;
    let (port, child) = like_the_image(&upstream.url(), &[("CORRAL_ADMIN_TOKEN", "t0ken")]).await;
    let alive = health(port, &[]);
    assert_eq!(code(&alive), Some(0), "{}", stderr(&alive));
    let claimed = corral_e2e::send(
        http::Request::builder()
            .method("DELETE")
            .uri(format!("http://127.0.0.1:{port}/api/delete"))
            .header("x-agent-id", "incident-responder")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                r#"{"model":"llama3"}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(
        claimed.status, 401,
        "its id cannot be claimed without a key"
    );
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_1_with_one_line_when_corral_is_down_unready_or_silent() {
    // Up, its upstream down: alive, not ready.
    let port = free_port();
    let child = corral()
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "127.0.0.1:1",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port).await;
    let url = format!("http://127.0.0.1:{port}");
    let alive = corral().args(["health", &url]).output().unwrap();
    assert_eq!(code(&alive), Some(0), "{}", stderr(&alive));
    let ready = corral().args(["health", "--ready", &url]).output().unwrap();
    assert_eq!(code(&ready), Some(1));
    let why = stderr(&ready);
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(
        why.starts_with(&format!(
            "corral health: {url}/corral/readyz: 503 Service Unavailable: not ready: "
        )),
        "{why}"
    );
    stop(child);

    // Gone.
    let gone = corral()
        .args(["health", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(code(&gone), Some(1));
    assert!(
        stderr(&gone).contains("cannot connect"),
        "{}",
        stderr(&gone)
    );

    // A 200 that says "not ready" is not ready (grep -q ready said it was).
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_port = liar.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = liar.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            std::io::Read::read_exact(&mut stream, &mut byte).unwrap();
            head.push(byte[0]);
        }
        let body = r#"{"status":"not ready"}"#;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8(head).unwrap()
    });
    let fooled = corral()
        .args(["health", "--ready", &format!(":{liar_port}")])
        .output()
        .unwrap();
    assert_eq!(code(&fooled), Some(1));
    assert!(
        stderr(&fooled).contains(r#"200 OK but status "not ready", not "ready""#),
        "{}",
        stderr(&fooled)
    );
    let asked = server.join().unwrap();
    assert!(
        asked.starts_with("GET /corral/readyz HTTP/1.1\r\n"),
        "{asked}"
    );

    // A socket that never answers: the timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hung = corral()
        .args([
            "health",
            "--timeout",
            "300ms",
            &format!("127.0.0.1:{silent_port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&hung), Some(1));
    assert!(
        stderr(&hung).contains("no answer within 300ms"),
        "{}",
        stderr(&hung)
    );
    drop(silent);

    // Not a plain HTTP address.
    let tls = corral()
        .args(["health", "https://corral.example"])
        .output()
        .unwrap();
    assert_eq!(code(&tls), Some(1));
    assert!(stderr(&tls).contains("plain HTTP"), "{}", stderr(&tls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_new_prints_a_fresh_key_once_and_an_entry_that_admits_only_it() {
    let new = || {
        let output = corral()
            .args(["keys", "new", "--agent", "ops-lead", "--class", "ops"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        let (key, entry) = text.split_once('\n').unwrap();
        assert!(key.starts_with("sk-corral-"), "{key}");
        assert!(!entry.contains(key), "the key is printed once");
        (key.to_string(), entry.to_string())
    };
    let (key, entry) = new();
    let (other, _) = new();
    assert_ne!(key, other, "fresh every time");

    // The entry holds the digest hash-key gives for the key.
    let mut hash = corral()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(hash.stdin.take().unwrap(), "{key}").unwrap();
    let digest = stdout(&hash.wait_with_output().unwrap());
    assert!(
        entry.contains(&format!("key_sha256 = \"{}\"", digest.trim())),
        "{entry}"
    );

    // Pasted into a config, it admits that key and no other.
    let upstream = corral_e2e::mock(corral_e2e::fast()).await;
    let port = free_port();
    let path = config_file(
        "keys-new.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n[identity]\nrequire_key = true\n[[classes]]\nname = \"ops\"\n\n{entry}",
            upstream.url()
        ),
    );
    let checked = corral().arg("check-config").arg(&path).output().unwrap();
    assert!(checked.status.success(), "{}", stderr(&checked));
    let child = corral()
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port).await;
    let tags = |key: &str| {
        http::Request::builder()
            .uri(format!("http://127.0.0.1:{port}/api/tags"))
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    assert_eq!(corral_e2e::send(tags(&key)).await.status, 200);
    assert_eq!(corral_e2e::send(tags(&other)).await.status, 401);
    stop(child);

    let bad = corral()
        .args(["keys", "new", "--agent", ""])
        .output()
        .unwrap();
    assert_eq!(code(&bad), Some(1));
    assert!(
        stderr(&bad).contains("--agent must be non-empty"),
        "{}",
        stderr(&bad)
    );
}
