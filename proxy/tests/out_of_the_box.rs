//! What a new user meets first: `corral` with no configuration (the
//! protective default stack, Ollama's own capacity, said at start and by
//! `check-config`) and the listen addresses Ollama users type.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::process::Stdio;

mod support;

use support::{assert_says, check, corral, get_raw, serving_nothing, stderr, terminate};

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

#[test]
fn models_with_a_capacity_of_their_own_are_named_in_the_capacity_line() {
    let output =
        check("[upstream]\nmodel_capacity = { \"llama3:70b\" = 2, \"nomic-embed-text\" = 4 }\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(
            "capacity   llama3:70b: 2 at a time, nomic-embed-text: 4 at a time ([upstream] model_capacity, each in a pool of its own); 1 request at a time per other model, Ollama's default"
        ),
        "{shown}"
    );

    let output = check("[upstream]\ncapacity = 3\nmodel_capacity = { \"llama3:70b\" = 1 }\n");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(
            "capacity   llama3:70b: 1 at a time ([upstream] model_capacity, each in a pool of its own); 3 request(s) at once, the other models together (from [upstream] capacity in"
        ),
        "{shown}"
    );
}

#[tokio::test]
async fn with_no_config_the_startup_line_names_the_stack_and_the_capacity_and_capacity_is_served() {
    let (port, child) = serving_nothing("127.0.0.1", Stdio::piped()).await;
    let text = get_raw(port, "/corral/capacity");
    terminate(&child);
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

    let (_, child) = serving_nothing("localhost", Stdio::null()).await;
    terminate(&child);
    child.wait_with_output().unwrap();

    // Every interface without a token would open the admin API: refused,
    // saying what to do.
    let open = corral()
        .args(["--listen", ":0", "--upstream", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!open.status.success());
    assert_says(&open, "admin.token");
    let bad = corral()
        .args(["--listen", "127.0.0.1:http"])
        .output()
        .unwrap();
    assert_says(&bad, "port");
}
