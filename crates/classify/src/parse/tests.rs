use super::*;

#[test]
fn an_ollama_generate_body_gives_model_stream_and_options() {
    let body = br#"{"model":"llama3","prompt":"why?","stream":false,"options":{"num_predict":64,"temperature":0,"seed":7,"num_ctx":4096}}"#;
    let facts = read(Endpoint::Generate, Bounds::default(), body).unwrap();
    assert_eq!(facts.model.as_deref(), Some("llama3"));
    assert_eq!(facts.stream, Some(false));
    assert_eq!(
        facts.generation,
        GenerationParams {
            max_tokens: Some(64),
            temperature: Some(0.0),
            seed: Some(7)
        }
    );
}

#[test]
fn an_openai_body_gives_max_tokens_temperature_and_seed() {
    let body = br#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"max_tokens":12,"temperature":0.2,"seed":1,"stream":true}"#;
    let facts = read(Endpoint::OpenAiChat, Bounds::default(), body).unwrap();
    assert_eq!(facts.generation.max_tokens, Some(12));
    assert_eq!(facts.generation.temperature, Some(0.2));
    assert_eq!(facts.generation.seed, Some(1));
    assert_eq!(facts.stream, Some(true));
}

#[test]
fn an_anthropic_messages_body_gives_model_stream_max_tokens_and_messages() {
    let body = br#"{"model":"llama3","max_tokens":300,"system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"temperature":0.5}"#;
    let facts = read(Endpoint::AnthropicMessages, Bounds::default(), body).unwrap();
    assert_eq!(facts.model.as_deref(), Some("llama3"));
    assert_eq!(facts.stream, Some(true));
    assert_eq!(facts.generation.max_tokens, Some(300));
    assert_eq!(facts.generation.temperature, Some(0.5));
    let too_many = Bounds {
        max_messages: 0,
        ..Bounds::default()
    };
    assert!(read(Endpoint::AnthropicMessages, too_many, body).is_err());
    let err = read(
        Endpoint::AnthropicMessages,
        Bounds::default(),
        br#"{"messages":[]}"#,
    )
    .unwrap_err();
    assert_eq!(err.message, "model is required");
}

#[test]
fn a_responses_body_gives_model_stream_and_max_output_tokens() {
    let body = br#"{"model":"llama3","input":"why?","max_output_tokens":40,"stream":false,"temperature":0}"#;
    let facts = read(Endpoint::OpenAiResponses, Bounds::default(), body).unwrap();
    assert_eq!(facts.model.as_deref(), Some("llama3"));
    assert_eq!(facts.stream, Some(false));
    assert_eq!(facts.generation.max_tokens, Some(40));
    assert_eq!(facts.generation.temperature, Some(0.0));
}

#[test]
fn unbounded_num_predict_means_no_cap() {
    let facts = read(
        Endpoint::Chat,
        Bounds::default(),
        br#"{"model":"m","options":{"num_predict":-1}}"#,
    )
    .unwrap();
    assert_eq!(facts.generation.max_tokens, None);
}

#[test]
fn options_of_odd_types_are_left_to_the_upstream() {
    let facts = read(
        Endpoint::Chat,
        Bounds::default(),
        br#"{"model":"m","options":{"temperature":"hot","seed":[1]}}"#,
    )
    .unwrap();
    assert_eq!(facts.generation, GenerationParams::default());
    // Skipped whole, whatever they nest: what follows is still read.
    let facts = read(
        Endpoint::Chat,
        Bounds::default(),
        br#"{"model":"m","max_tokens":null,"temperature":true,"options":{"num_predict":{"a":[1,{"b":"}"}]},"temperature":[[2],{}]},"seed":3,"messages":"hi","max_completion_tokens":9}"#,
    )
    .unwrap();
    assert_eq!(
        facts.generation,
        GenerationParams {
            max_tokens: Some(9),
            temperature: None,
            seed: Some(3),
        }
    );
}

#[test]
fn malformed_json_on_an_inference_endpoint_says_where() {
    let err = read(
        Endpoint::Generate,
        Bounds::default(),
        br#"{"model":"llama3","prompt":"#,
    )
    .unwrap_err();
    assert!(
        err.message.starts_with("invalid JSON in request body"),
        "{}",
        err.message
    );
    assert!(err.message.contains("line 1"), "{}", err.message);
}

#[test]
fn a_body_that_is_not_an_object_is_refused() {
    let err = read(Endpoint::Embed, Bounds::default(), b"[1,2]").unwrap_err();
    assert_eq!(err.message, "invalid request body: expected a JSON object");
}

#[test]
fn a_model_of_the_wrong_type_is_refused() {
    let err = read(Endpoint::Chat, Bounds::default(), br#"{"model":5}"#).unwrap_err();
    assert!(err.message.contains("expected a string"), "{}", err.message);
}

#[test]
fn an_inference_body_without_model_is_refused_like_ollama() {
    assert_eq!(
        read(Endpoint::Chat, Bounds::default(), br#"{"messages":[]}"#)
            .unwrap_err()
            .message,
        "model is required"
    );
    assert_eq!(
        read(Endpoint::Chat, Bounds::default(), b"  ")
            .unwrap_err()
            .message,
        "missing request body"
    );
}

#[test]
fn management_bodies_are_read_leniently_and_accept_the_older_name() {
    assert_eq!(
        read(Endpoint::Show, Bounds::default(), br#"{"name":"llama3"}"#)
            .unwrap()
            .model
            .as_deref(),
        Some("llama3")
    );
    assert_eq!(
        read(
            Endpoint::Copy,
            Bounds::default(),
            br#"{"source":"a","destination":"b"}"#
        )
        .unwrap()
        .model
        .as_deref(),
        Some("a")
    );
    assert_eq!(
        read(Endpoint::Pull, Bounds::default(), b"not json").unwrap(),
        BodyFacts::default()
    );
}

#[test]
fn hostile_bodies_are_refused_with_the_reason() {
    let refused = |body: &[u8]| {
        read(Endpoint::Chat, Bounds::default(), body)
            .unwrap_err()
            .message
    };
    assert!(refused(b"{\"model\":\"m\",\"prompt\":\"\xff\xfe\"}")
        .contains("not UTF-8 (bad byte at 23)"));
    assert!(refused(br#"{"model":"a","model":"b"}"#).contains("duplicate field `model`"));
    let deep = format!(
        r#"{{"model":"m","format":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert!(refused(deep.as_bytes()).contains("nested deeper than 100 levels"));
    // Brackets inside strings are text, not nesting.
    let text = format!(r#"{{"model":"m","prompt":"{}"}}"#, "[{\\\"".repeat(500));
    assert!(
        read(Endpoint::Chat, Bounds::default(), text.as_bytes()).is_ok(),
        "{text}"
    );
    let messages = format!(
        r#"{{"model":"m","messages":[{}]}}"#,
        [r#"{"role":"user","content":"x"}"#; 5].join(",")
    );
    let small = Bounds {
        max_json_depth: 100,
        max_messages: 4,
    };
    let err = read(Endpoint::Chat, small, messages.as_bytes())
        .unwrap_err()
        .message;
    assert!(
        err.contains("5 messages, more than the limit of 4"),
        "{err}"
    );
    assert!(read(Endpoint::Chat, Bounds::default(), messages.as_bytes()).is_ok());
    for body in [
        r#"{"model":"allowed","Model":"other"}"#,
        r#"{"MODEL":"other"}"#,
        "{\"model\":\"a\",\"mode\u{17f}l\":\"b\"}"
            .replace("mode\u{17f}l", "\u{17f}eed")
            .as_str(),
        r#"{"model":"m","Stream":true}"#,
        r#"{"model":"m","Max_Output_Tokens":5}"#,
        // Found whatever follows it, in the same pass that reads the fields.
        r#"{"Model":"other","model":"allowed","prompt":"x"}"#,
    ] {
        let err = refused(body.as_bytes());
        assert!(err.contains("only by case"), "{body}: {err}");
    }
    // Case in values, or in keys Corral does not read, is Ollama's business.
    assert!(read(
        Endpoint::Chat,
        Bounds::default(),
        br#"{"model":"LLaMA3","Prompt":"x"}"#
    )
    .is_ok());
    // A list is not an object, even one whose first element could pass
    // for the model (serde's derived readers took it so).
    assert!(refused(br#"["llama3"]"#).contains("expected a JSON object"));
    assert!(refused(br#"{"model":5}"#).contains("expected a string"));
    assert!(refused(br#"{"model":null,"model":"m"}"#).contains("duplicate field `model`"));
    let huge = br#"{"model":"m","options":{"num_predict":1e999}}"#;
    assert!(refused(huge).contains("invalid JSON"));
}

#[test]
fn escaped_model_names_are_decoded() {
    let facts = read(
        Endpoint::Chat,
        Bounds::default(),
        br#"{"model":"ll\u0061ma3"}"#,
    )
    .unwrap();
    assert_eq!(facts.model.as_deref(), Some("llama3"));
}
