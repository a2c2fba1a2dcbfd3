//! Several upstreams from a config file: a model goes to its targets in order, a target
//! that fails before the first token is retried and then left for the next one, unseen by
//! the client except in `metadata.model_slug`; after the first token nothing is switched.
//! A bad file stops the real binary with the file, line and reason.

use crate::helpers::*;
use chatgate::config::{Settings, UpstreamKind};
use chatgate::config_file;
use mockllm::wire::{self, Completion};
use mockllm::{MockLlm, Script};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};

/// The gateway on a config file: upstream `first` is `app.mock`, upstream `second` the
/// returned mock (or, with `first_closed`, `first` is a port nobody listens on). The model
/// `smart` goes to `first/model-a`, then `second/model-b`; it is the default model.
async fn two_upstreams(first_closed: bool) -> (TestApp, MockLlm) {
    let first = MockLlm::start("127.0.0.1:0").expect("the first mock starts");
    let second = MockLlm::start("127.0.0.1:0").expect("the second mock starts");
    let first_url = match first_closed {
        true => format!("http://127.0.0.1:{}/v1", closed_port()),
        false => first.base_url(),
    };
    let file = format!(
        r#"default_model = "smart"

[upstreams.first]
kind = "openai"
base_url = "{first_url}"

[upstreams.second]
kind = "openai"
base_url = "{}"

[models.smart]
targets = ["first/model-a", "second/model-b"]
"#,
        second.base_url()
    );
    let routing = config_file::parse(&file, Path::new("routes.toml"), |_| None).expect("the file is good");
    let mut settings = Settings::for_tests();
    settings.upstream = UpstreamKind::Routed(routing);
    settings.model = "smart".into();
    settings.prompts_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    (start(settings, first).await, second)
}

/// A port that was free a moment ago and has nobody listening now.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The model each request a mock received asked for.
fn models_asked(mock: &MockLlm) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|r| r["model"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every frame names `slug` as its model, none carries an error, the answer finished; and
/// the stored answer names `slug` too.
async fn assert_answered_unseen_by(app: &TestApp, stream: &Stream, slug: &str) {
    for frame in stream.frames() {
        assert_eq!(frame["message"]["metadata"]["model_slug"], slug, "{frame}");
        assert_eq!(frame["error"], Value::Null, "{frame}");
    }
    stream.assert_finished();
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["metadata"]["model_slug"], slug, "{stored}");
}

/// An SSE error event, as the API sends one mid-stream.
fn error_event(code: &str) -> String {
    format!(
        "data: {}\n\n",
        wire::error_body("Overloaded (mock)", "overloaded_error", code)
    )
}

#[tokio::test]
async fn a_routed_model_goes_to_its_first_target_under_that_targets_model_name() {
    let (app, second) = two_upstreams(false).await;
    let stream = app.ask("route me").await;
    assert_eq!(stream.text(), echo("route me", 0));
    assert_answered_unseen_by(&app, &stream, "model-a").await;
    assert_eq!(models_asked(&app.mock), ["model-a"]);
    assert_eq!(second.stats().requests, 0);
}

#[tokio::test]
async fn a_model_not_under_models_goes_to_the_first_upstream_as_named() {
    let (app, second) = two_upstreams(false).await;
    let stream = app.turn(json!({"content": "hi", "model": "some-other-model"})).await;
    assert_answered_unseen_by(&app, &stream, "some-other-model").await;
    assert_eq!(models_asked(&app.mock), ["some-other-model"]);
    assert_eq!(second.stats().requests, 0);
}

#[tokio::test]
async fn a_503_before_the_first_token_is_retried_then_the_second_target_answers_unseen() {
    let (app, second) = two_upstreams(false).await;
    for _ in 0..3 {
        app.mock.enqueue(Script::refuse(503, wire::error_for_status(503)));
    }
    let stream = app.ask("fail over").await;
    assert_eq!(stream.text(), echo("fail over", 0));
    assert_answered_unseen_by(&app, &stream, "model-b").await;
    assert_eq!(models_asked(&app.mock), ["model-a"; 3]);
    assert_eq!(models_asked(&second), ["model-b"]);
}

#[tokio::test]
async fn a_closed_port_is_left_for_the_next_target() {
    let (app, second) = two_upstreams(true).await;
    let stream = app.ask("anyone?").await;
    assert_answered_unseen_by(&app, &stream, "model-b").await;
    assert_eq!(models_asked(&second), ["model-b"]);
}

#[tokio::test]
async fn a_429_with_retry_after_is_tried_again_on_the_same_target() {
    let (app, second) = two_upstreams(false).await;
    app.mock
        .enqueue(Script::refuse(429, wire::error_for_status(429)).with_header("retry-after", "1"));
    let stream = app.ask("patience").await;
    assert_answered_unseen_by(&app, &stream, "model-a").await;
    assert_eq!(models_asked(&app.mock), ["model-a"; 2]);
    assert_eq!(second.stats().requests, 0);
}

#[tokio::test]
async fn a_400_is_neither_retried_nor_failed_over_and_reaches_the_client() {
    let (app, second) = two_upstreams(false).await;
    let refusal = wire::error_body(
        "Unsupported value: 'temperature' (mock)",
        "invalid_request_error",
        "unsupported_value",
    );
    app.mock.enqueue(Script::refuse(400, refusal));
    let response = app.post_conv(json!({"content": "bad"})).await;
    let body = assert_error(response, 502, "unsupported_value").await;
    assert!(body.to_string().contains("Unsupported value"), "{body}");
    assert_eq!(app.mock.stats().requests, 1);
    assert_eq!(second.stats().requests, 0);
}

#[tokio::test]
async fn an_error_event_after_a_200_but_before_the_first_token_fails_over_unseen() {
    let (app, second) = two_upstreams(false).await;
    let c = Completion::new("model-a", 1);
    for _ in 0..3 {
        app.mock
            .enqueue(Script::stream([c.role(), error_event("overloaded_error")]));
    }
    let stream = app.ask("try elsewhere").await;
    assert_eq!(stream.text(), echo("try elsewhere", 0));
    assert_answered_unseen_by(&app, &stream, "model-b").await;
    assert_eq!(app.mock.stats().requests, 3);
    assert_eq!(second.stats().requests, 1);
}

#[tokio::test]
async fn an_error_after_the_first_token_stays_in_the_stream_and_nothing_is_switched() {
    let (app, second) = two_upstreams(false).await;
    let c = Completion::new("model-a", 1);
    app.mock.enqueue(Script::stream([
        c.role(),
        c.content("half an answer"),
        error_event("overloaded_error"),
    ]));
    let stream = app.ask("go").await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["message"]["content"]["parts"][0], "half an answer");
    assert_eq!(last["message"]["metadata"]["model_slug"], "model-a");
    assert_eq!(last["error"]["code"], "overloaded_error", "{last}");
    stream.assert_closed_properly();
    assert_eq!(app.mock.stats().requests, 1);
    assert_eq!(second.stats().requests, 0, "no switch after the first token");
}

#[tokio::test]
async fn retries_stop_within_the_waiting_budget() {
    let (app, second) = two_upstreams(false).await;
    // Every try is refused and asks for 4 s: the first target is tried three times (8 s of
    // waiting), the second once (another 4 s would pass the 10 s budget).
    let response = app
        .post_conv(json!({"content": "busy [mock:status=503] [mock:retry-after=4]"}))
        .await;
    assert_error(response, 502, "server_error").await;
    assert_eq!(app.mock.stats().requests, 3);
    assert_eq!(second.stats().requests, 1);
}

/// Runs the real binary on `config` (with `env` set) until it exits: (exit code, stderr).
async fn start_with_config(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    command
        .args(["--listen", "127.0.0.1:0", "--store", "memory", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("OPENAI_") || key.starts_with("CHATGATE_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let run = tokio::task::spawn_blocking(move || command.output().expect("the binary runs"));
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("a bad config file stops start-up at once")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_config_file_stops_start_up_with_the_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    let name = config.display().to_string();

    std::fs::write(
        &config,
        "[upstreams.main]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_enw = \"KEY\"\n",
    )
    .unwrap();
    let (code, stderr) = start_with_config(&config, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{name}:4:1: ")), "{stderr}");
    assert!(stderr.contains("unknown field `api_key_enw`"), "{stderr}");

    std::fs::write(
        &config,
        "[upstreams.main]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"CHATGATE_TEST_NO_SUCH_KEY\"\n",
    )
    .unwrap();
    let (code, stderr) = start_with_config(&config, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{name}:4:15: ")), "{stderr}");
    assert!(
        stderr.contains("CHATGATE_TEST_NO_SUCH_KEY") && stderr.contains("not set"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        "[upstreams.main]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[models.smart]\ntargets = [\"main/a\", \"other/b\"]\n",
    )
    .unwrap();
    let (code, stderr) = start_with_config(&config, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{name}:6:22: ")), "{stderr}");
    assert!(
        stderr.contains("\"other\"") && stderr.contains("not under [upstreams]"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_background_turn_is_failed_over_on_a_refusal_and_its_answer_names_the_second_model() {
    let (app, second) = two_upstreams(false).await;
    for _ in 0..3 {
        app.mock.enqueue(Script::refuse(503, wire::error_for_status(503)));
    }
    let accepted = app.background(json!({"content": "in the background"})).await;
    let url = accepted["stream_url"].as_str().expect("a stream_url");
    let replay = read_stream(app.client.get(app.url(url)).send().await.unwrap()).await;
    assert_eq!(replay.text(), echo("in the background", 0));
    assert_answered_unseen_by(&app, &replay, "model-b").await;
    assert_eq!(app.mock.stats().requests, 3);
    assert_eq!(second.stats().requests, 1);
}

#[tokio::test]
async fn an_unknown_model_the_upstream_does_not_know_is_a_404_that_names_the_routed_models() {
    let (app, second) = two_upstreams(false).await;
    app.mock.enqueue(Script::refuse(
        404,
        wire::error_body(
            "The model `gpt-9` does not exist",
            "invalid_request_error",
            "model_not_found",
        ),
    ));
    let response = app
        .complete(json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("gpt-9"), "{message}");
    assert!(message.contains("smart"), "the routed models are named: {message}");
    assert_eq!(models_asked(&app.mock), ["gpt-9"], "not retried");
    assert_eq!(second.stats().requests, 0, "not failed over");
}

#[tokio::test]
async fn v1_is_routed_and_failed_over_like_conv_and_its_chunks_name_the_model_that_answered() {
    let (app, second) = two_upstreams(false).await;
    for _ in 0..3 {
        app.mock.enqueue(Script::refuse(503, wire::error_for_status(503)));
    }
    let stream = app
        .complete_streamed(crate::v1::streaming("route me too", json!({"model": "smart"})))
        .await;
    let chunks = crate::v1::chunks_of(&stream);
    assert_eq!(crate::v1::content(&chunks), echo("route me too", 0));
    assert!(chunks.iter().all(|c| c["model"] == "model-b"), "{chunks:?}");
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{chunks:?}");
    assert!(crate::v1::ends_with_done(&stream));
    assert_eq!(models_asked(&app.mock), ["model-a"; 3]);
    assert_eq!(models_asked(&second), ["model-b"]);
}
