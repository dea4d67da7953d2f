//! What the `corral` binary keeps to itself: it refuses to open its admin
//! API to the network without a token, hashes keys for the config, and
//! never logs keys, secrets, signatures or prompts.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

mod support;

use support::{assert_says, config_file, corral, free_port, stderr, wait_for};

#[test]
fn an_admin_api_open_to_the_network_without_a_token_is_refused_at_start() {
    let port = free_port();
    let output = corral()
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("admin.token"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
}

#[tokio::test]
async fn with_a_token_or_a_loopback_admin_listener_it_starts_on_any_address() {
    for (env, file) in [
        (Some("a-long-admin-token"), ""),
        (None, "[admin]\nlisten = \"127.0.0.1:0\"\n"),
    ] {
        let port = free_port();
        let path = config_file(&format!("exposed-{port}.toml"), file);
        let mut command = corral();
        command
            .args(["--listen", &format!("0.0.0.0:{port}"), "--config"])
            .arg(&path)
            .stderr(Stdio::null());
        if let Some(token) = env {
            command.env("CORRAL_ADMIN_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        wait_for(port).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn hash_key_prints_the_digest_of_an_argument_or_of_standard_input() {
    let expected = corral_auth::key_digest("sk-planner-0123");
    let output = corral()
        .args(["hash-key", "sk-planner-0123"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), expected);

    let mut child = corral()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"sk-planner-0123\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), expected);

    let short = corral().args(["hash-key", "short"]).output().unwrap();
    assert!(!short.status.success());
    assert_says(&short, "at least 8");
}

// Multi-threaded: the simulated Ollama runs while this test blocks on
// plain sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_key_signature_or_prompt_even_at_trace_level() {
    let upstream = corral_e2e::mock(corral_e2e::streaming(4, 1000.0)).await;
    let port = free_port();
    let key = "sk-log-canary-0123456789";
    let secret = "SECRET-CANARY, long enough";
    let path = config_file(
        &format!("logs-{port}.toml"),
        &format!(
            "[upstream]\nurl = \"{}\"\n[[agents]]\nid = \"logger\"\nkey = \"{key}\"\n\n[[layers]]\nkind = \"auth\"\nsecrets = {{ logger = {{ value = \"{secret}\" }} }}\n\n[[layers]]\nkind = \"priority\"\n",
            upstream.url()
        ),
    );
    for format in ["text", "json"] {
        let log_path = path.with_extension(format!("{format}.log"));
        let mut child = corral()
            .env("RUST_LOG", "trace")
            .args([
                "--config",
                path.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--log-format", format])
            // A file, not a pipe: trace logs would fill a pipe no one
            // reads while the request runs.
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        wait_for(port).await;
        let body = r#"{"model":"llama3","prompt":"PROMPT-CANARY what is secret","stream":false}"#;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let request_id = format!("log-test-{format}");
        let signature = corral_auth::Signed {
            agent: "logger",
            method: "POST",
            path_and_query: "/api/generate",
            timestamp: &timestamp,
            request_id: &request_id,
            body: body.as_bytes(),
        }
        .sign(secret.as_bytes());
        let request = format!(
            "POST /api/generate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nx-signature: {signature}\r\nx-timestamp: {timestamp}\r\nx-request-id: {request_id}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        let logs = std::fs::read_to_string(&log_path).unwrap();
        assert!(logs.contains("logger"), "the request was logged: {logs}");
        for canary in [key, secret, &signature, "PROMPT-CANARY"] {
            assert!(!logs.contains(canary), "{format} logs hold {canary}");
        }
        if format == "json" {
            // One JSON object a line; the access line carries the
            // request's span: its id, agent, endpoint and status.
            for line in logs.lines().filter(|l| !l.trim().is_empty()) {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
            let access = logs
                .lines()
                .find(|l| l.contains("corral::access"))
                .unwrap_or_else(|| panic!("no access line: {logs}"));
            for field in [request_id.as_str(), "\"logger\"", "\"generate\"", "200"] {
                assert!(access.contains(field), "{field} not in {access}");
            }
        }
    }
}
