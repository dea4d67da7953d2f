//! The `corral` binary reloads its configuration on SIGHUP and, with
//! `--watch-config`, when the file changes; a bad file leaves the old
//! configuration serving and says why in the log.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

mod support;

use support::{config_file, corral, free_port, get_raw, terminate, wait_for};

fn text(port: u16, upstream: &str, capacity: usize) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{upstream}\"\ncapacity = {capacity}\n\n[[layers]]\nkind = \"priority\"\n"
    )
}

/// Waits until `/corral/config` on `port` says `expected`.
async fn until_config_says(port: u16, expected: &str) {
    for _ in 0..500 {
        if get_raw(port, "/corral/config").contains(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the config never said {expected}: {}",
        get_raw(port, "/corral/config")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_a_watched_file_reload_and_a_bad_file_leaves_the_old_one() {
    let upstream = corral_e2e::mock(corral_e2e::fast()).await;
    let port = free_port();
    let path = config_file(
        &format!("reload-{port}.toml"),
        &text(port, &upstream.url(), 2),
    );
    let log = config_file(&format!("reload-{port}.log"), "");
    let mut child = corral()
        .arg("--config")
        .arg(&path)
        .arg("--watch-config")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(port).await;
    until_config_says(port, "\"capacity\":2").await;

    // The file changes: watched, it is loaded within a second or two.
    std::fs::write(&path, text(port, &upstream.url(), 3)).unwrap();
    until_config_says(port, "\"capacity\":3").await;

    // A bad file: refused, the old one serves on, the log says why.
    std::fs::write(
        &path,
        text(port, &upstream.url(), 3).replace("capacity = 3", "capacity = -1"),
    )
    .unwrap();
    let mut logged = String::new();
    for _ in 0..500 {
        logged = std::fs::read_to_string(&log).unwrap();
        if logged.contains("the old configuration serves on") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged.contains("upstream.capacity"), "{logged}");
    assert!(get_raw(port, "/corral/config").contains("\"capacity\":3"));

    // SIGHUP reads it again (fixed meanwhile; the watcher may be first,
    // either way the new one is in).
    std::fs::write(&path, text(port, &upstream.url(), 4)).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    until_config_says(port, "\"capacity\":4").await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop it"
    );
    terminate(&child);
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_alone_reloads_without_a_watcher() {
    let upstream = corral_e2e::mock(corral_e2e::fast()).await;
    let port = free_port();
    let path = config_file(&format!("hup-{port}.toml"), &text(port, &upstream.url(), 2));
    let mut child = corral()
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port).await;
    // Not watched: only the signal reads the file again.
    std::fs::write(&path, text(port, &upstream.url(), 7)).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    until_config_says(port, "\"capacity\":7").await;
    terminate(&child);
    assert!(child.wait().unwrap().success());
}
