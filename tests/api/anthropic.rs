//! The Anthropic Messages API as the upstream: `/conv` against the mock's `/v1/messages`,
//! which checks a request as the real API does (`x-api-key`, `anthropic-version`,
//! `max_tokens`, roles, no unknown field) and streams Anthropic's events.

use crate::helpers::*;
use crate::shutdown::Gateway;
use chatgate::config::UpstreamKind;
use mockllm::Script;
use mockllm::anthropic_wire::{Message, error_body, error_event};
use serde_json::{Value, json};

/// The gateway against the mock's Anthropic side, with the test key.
pub async fn spawn_anthropic_app() -> TestApp {
    spawn_app_with(|s| {
        // The mock was started for this app: its OpenAI URL names its port.
        let UpstreamKind::OpenAi { base_url, key } = &s.upstream else {
            panic!("the helpers start against the mock's OpenAI side");
        };
        s.upstream = UpstreamKind::Anthropic {
            base_url: base_url.trim_end_matches("/v1").to_owned(),
            key: key.clone(),
        };
        s.model = "claude-mock".into();
    })
    .await
}

/// Fails when `seen` holds the key or any 16 characters of it.
fn assert_no_key(what: &str, seen: &str) {
    let key = KEY.as_bytes();
    if let Some(window) = key.windows(16).find(|w| seen.as_bytes().windows(16).any(|s| s == *w)) {
        panic!("{what} shows the key ({}):\n{seen}", String::from_utf8_lossy(window));
    }
}

#[tokio::test]
async fn a_streamed_anthropic_answer_arrives_with_the_exact_text_and_is_stored() {
    let app = spawn_anthropic_app().await;
    let stream = app.ask("hello there [mock:words=3]").await;
    assert_eq!(stream.text(), echo("hello there", 3));
    stream.assert_finished();
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["content"]["parts"][0], echo("hello there", 3).as_str());
    assert_eq!(stored["status"], "finished_successfully");
    let headers = app.mock.anthropic_headers();
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].api_key.as_deref(), Some(KEY));
    assert_eq!(headers[0].version.as_deref(), Some("2023-06-01"));
}

#[tokio::test]
async fn max_tokens_and_the_system_prompt_reach_anthropic_as_it_expects() {
    let app = spawn_anthropic_app().await;
    let first = app.turn(json!({"content": "bonjour", "prompt": "translator"})).await;
    first.assert_finished();
    app.turn(json!({"content": "merci", "conversation_id": first.conversation_id()}))
        .await
        .assert_finished();
    let requests = app.mock.requests();
    let system = requests[0]["system"].as_str().expect("a top-level system string");
    assert!(system.starts_with("You are a professional translator."), "{system}");
    let sent = &requests[1];
    assert_eq!(sent["model"], "claude-mock");
    assert_eq!(sent["max_tokens"], 4096);
    assert_eq!(sent["stream"], true);
    assert!(sent["system"].is_string(), "{sent}");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "bonjour"},
            {"role": "assistant", "content": "Echo: bonjour"},
            {"role": "user", "content": "merci"},
        ]),
        "no system role among the messages"
    );
}

#[tokio::test]
async fn thinking_is_never_part_of_the_answer_text() {
    let app = spawn_anthropic_app().await;
    let stream = app.ask("ponder this [mock:thinking]").await;
    stream.assert_finished();
    assert_eq!(stream.text(), "Echo: ponder this");
    for frame in stream.frames() {
        let text = text_of(&frame);
        assert!(!text.contains("Thinking about"), "reasoning in parts[0]: {text}");
    }
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["content"]["parts"][0], "Echo: ponder this");
}

#[tokio::test]
async fn a_tool_call_ends_the_answer_with_tool_calls_as_its_finish() {
    let app = spawn_anthropic_app().await;
    let stream = app.ask("weather in Paris [mock:tool]").await;
    stream.assert_finished();
    assert_eq!(stream.text(), "Echo: weather in Paris");
    let last = stream.last();
    assert_eq!(
        last["message"]["metadata"]["finish_details"],
        json!({"type": "tool_calls"})
    );
}

#[tokio::test]
async fn overloaded_after_the_200_but_before_any_text_is_an_error_response() {
    let app = spawn_anthropic_app().await;
    let response = app
        .post_conv(json!({"content": "busy? [mock:anthropic-overloaded]"}))
        .await;
    let body = assert_error(response, 502, "overloaded_error").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Overloaded"),
        "{body}"
    );
}

#[tokio::test]
async fn anthropic_refusals_keep_their_status_mapping_and_error_type() {
    let app = spawn_anthropic_app().await;
    let response = app.post_conv(json!({"content": "hi [mock:status=529]"})).await;
    assert_error(response, 502, "overloaded_error").await;
    let response = app
        .post_conv(json!({"content": "hi [mock:status=429] [mock:retry-after=7]"}))
        .await;
    assert_eq!(response.headers()["retry-after"], "7");
    let body = assert_error(response, 429, "rate_limit_error").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("rate limit"),
        "{body}"
    );
    let response = app.post_conv(json!({"content": "hi [mock:status=400]"})).await;
    assert_error(response, 502, "invalid_request_error").await;
    let (_, list) = app.get_json("/conversations").await;
    assert_eq!(list["items"], json!([]), "a refused turn leaves no conversation");
}

#[tokio::test]
async fn a_stream_that_ends_without_message_stop_is_an_in_band_error_with_the_text_stored() {
    let app = spawn_anthropic_app().await;
    let stream = app.ask("cut short [mock:no-stop]").await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["error"]["code"], "upstream_truncated");
    assert_eq!(text_of(&last), "Echo: cut short");
    stream.assert_closed_properly();
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["status"], "error");
    assert_eq!(stored["content"]["parts"][0], "Echo: cut short");
    assert_eq!(stored["metadata"]["error"]["code"], "upstream_truncated");
}

#[tokio::test]
async fn an_error_event_mid_answer_ends_it_in_band_with_the_partial_text() {
    let app = spawn_anthropic_app().await;
    let stream = app
        .ask("one two three [mock:anthropic-overloaded] [mock:error-after=2]")
        .await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["error"]["code"], "overloaded_error");
    assert_eq!(text_of(&last), "Echo: one");
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["content"]["parts"][0], "Echo: one");
}

#[tokio::test]
async fn unknown_events_and_pings_are_ignored() {
    let app = spawn_anthropic_app().await;
    let stream = app.ask("still here [mock:unknown-event]").await;
    stream.assert_finished();
    assert_eq!(stream.text(), "Echo: still here");
}

/// An answer whose text, thinking and error echo the key, the key split across events.
fn echoing_answer() -> Vec<String> {
    let m = Message::new("claude-mock", 1);
    let (head, tail) = KEY.split_at(13);
    vec![
        m.start(10),
        m.thinking_start(0),
        m.thinking_delta(0, &format!("the key is {KEY}")),
        m.block_stop(0),
        m.text_start(1),
        m.text_delta(1, &format!("before {head}")),
        m.text_delta(1, &format!("{tail} after")),
        m.block_stop(1),
        m.delta("end_turn", 3),
        m.stop(),
    ]
}

#[tokio::test]
async fn the_key_reaches_neither_a_client_nor_the_store_when_anthropic_echoes_it() {
    let app = spawn_anthropic_app().await;
    app.mock.enqueue(Script::stream(echoing_answer()).paced(2));
    let response = app.post_conv(json!({"content": "echo it"})).await;
    let headers = format!("{:?}", response.headers());
    let body = response.text().await.unwrap();
    assert_no_key("the answer", &format!("{headers}{body}"));
    let stream = parse_events(&body);
    assert_eq!(stream.text(), "before [redacted] after");
    stream.assert_finished();
    let (_, conversation) = app.get_json(&format!("/conv/{}", stream.conversation_id())).await;
    assert_no_key("the stored conversation", &conversation.to_string());

    // An error event mid-answer, and a refusal, that quote the key.
    let m = Message::new("claude-mock", 2);
    app.mock.enqueue(Script::stream([
        m.start(10),
        m.text_start(0),
        m.text_delta(0, "so far"),
        error_event("api_error", &format!("upstream saw {KEY}")),
    ]));
    let stream = app.ask("again").await;
    let last = stream.last();
    assert_eq!(text_of(&last), "so far");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(message.contains("upstream saw [redacted]"), "{message}");
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_no_key("the stored error", &stored.to_string());
    app.mock.enqueue(Script::refuse(
        401,
        error_body("authentication_error", &format!("invalid x-api-key {KEY}")),
    ));
    let response = app.post_conv(json!({"content": "and again"})).await;
    let body: Value = assert_error(response, 502, "authentication_error").await;
    assert_no_key("the refusal", &body.to_string());
    assert!(
        body["error"]["message"].as_str().unwrap().contains("[redacted]"),
        "{body}"
    );
}

#[tokio::test]
async fn a_request_anthropic_would_refuse_is_refused_by_the_mock_too() {
    // The mock's checks are what make the tests above mean something: without a key or
    // max_tokens, the mock refuses as the API does.
    let app = spawn_app_with(|s| {
        let UpstreamKind::OpenAi { base_url, .. } = &s.upstream else {
            panic!("the helpers start against the mock's OpenAI side");
        };
        s.upstream = UpstreamKind::Anthropic {
            base_url: base_url.trim_end_matches("/v1").to_owned(),
            key: None,
        };
    })
    .await;
    let response = app.post_conv(json!({"content": "no key"})).await;
    let body = assert_error(response, 502, "authentication_error").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("x-api-key"),
        "{body}"
    );
}

#[tokio::test]
async fn the_binary_with_only_anthropic_settings_answers_through_anthropic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let mock = mockllm::MockLlm::start("127.0.0.1:0").unwrap();
    let env = [
        ("ANTHROPIC_API_KEY", KEY),
        ("ANTHROPIC_BASE_URL", &mock.anthropic_base_url()),
    ];
    let gateway = Gateway::start_with_env(&db, &[], &env).await;
    let stream = gateway.stream("only a key [mock:words=3]").await.finish().await;
    assert_eq!(stream.text(), echo("only a key", 3));
    stream.assert_finished();
    let headers = mock.anthropic_headers();
    assert_eq!(headers.len(), 1, "the answer came from /v1/messages");
    assert_eq!(headers[0].api_key.as_deref(), Some(KEY));
    assert_eq!(
        mock.requests()[0]["model"],
        "claude-sonnet-4-5",
        "Anthropic's default model"
    );
    assert_no_key("the log", &gateway.log());

    // The key alone (no URL) means Anthropic's own API.
    let db = dir.path().join("alone.db");
    let alone = Gateway::start_with_env(&db, &[], &[("ANTHROPIC_API_KEY", KEY)]).await;
    // The log is read on its own thread: it may lag the address on stdout.
    let said = "upstream: https://api.anthropic.com/v1/messages (Anthropic)";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !alone.log().contains(said) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = alone.log();
    assert!(log.contains(said), "{log}");
    assert_no_key("the log", &log);
}
