//! The `corral` binary as an operator runs it in a container and beside
//! one: the image's environment, `corral health` and `corral keys new`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::io::Write;
use std::net::TcpStream;
use std::process::Stdio;

mod support;

use support::{
    assert_says, config_file, corral, free_port, serving_nothing, stderr, terminate, wait_for,
};

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
    terminate(&child);
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
    assert_says(&refused, "CORRAL_ADMIN_TOKEN");
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
    let (port, child) = serving_nothing("127.0.0.1", Stdio::null()).await;
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
    assert_says(&gone, "cannot connect");

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
    assert_says(&hung, "no answer within 300ms");
    drop(silent);

    // Not a plain HTTP address.
    let tls = corral()
        .args(["health", "https://corral.example"])
        .output()
        .unwrap();
    assert_eq!(code(&tls), Some(1));
    assert_says(&tls, "plain HTTP");
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
    assert_says(&bad, "--agent must be non-empty");
}
