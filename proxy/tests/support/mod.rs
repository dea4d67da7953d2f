//! What the tests of the `corral` binary share: running it, writing
//! config files, waiting for it to listen.

#![allow(dead_code)] // each test file uses its own share

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub(crate) mod registry;
pub(crate) mod replica;
pub(crate) mod steps;

pub(crate) fn corral() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    for var in [
        "CORRAL_CONFIG",
        "CORRAL_LISTEN",
        "CORRAL_UPSTREAM",
        "CORRAL_LOG_FORMAT",
        "CORRAL_ADMIN_TOKEN",
        "CORRAL_CAPACITY",
        "CORRAL_REDIS_URL",
        "CORRAL_WATCH_CONFIG",
    ] {
        command.env_remove(var);
    }
    command
}

pub(crate) fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

pub(crate) fn check(text: &str) -> Output {
    let path = config_file(&format!("check-{:x}.toml", fxhash(text)), text);
    corral().arg("check-config").arg(&path).output().unwrap()
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts `output`'s stderr says `expected`, showing all of it if not.
pub(crate) fn assert_says(output: &Output, expected: &str) {
    let err = stderr(output);
    assert!(err.contains(expected), "{expected:?} not in: {err}");
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the child listens: a process has no event to wait on.
pub(crate) async fn wait_for(port: u16) {
    for _ in 0..1000 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {port}");
}

/// `corral --listen {host}:{port}` in front of an upstream that is not
/// there, its stderr to `stderr`, once it listens: its port and itself.
pub(crate) async fn serving_nothing(host: &str, stderr: Stdio) -> (u16, Child) {
    let port = free_port();
    let listen = format!("{host}:{port}");
    let child = corral()
        .args(["--listen", &listen, "--upstream", "127.0.0.1:1"])
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_for(port).await;
    (port, child)
}

/// `GET path` on `port` over a plain socket, the whole answer as text
/// (status line and headers included).
pub(crate) fn get_raw(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    text
}

/// Sends SIGTERM to `child` (a graceful stop, as an operator's).
pub(crate) fn terminate(child: &std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}
