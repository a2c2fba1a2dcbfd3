//! Every way real upstreams shape their streams still relays cleanly.

use crate::helpers::*;
use mockllm::Script;
use mockllm::wire::{self, Completion};
use serde_json::json;

fn completion() -> Completion {
    Completion::new("mock-model", 1)
}

/// A normal stream's parts: role chunk, one chunk per piece, finish chunk, `[DONE]`.
fn normal(pieces: &[&str]) -> Vec<String> {
    let c = completion();
    let mut parts = vec![c.role()];
    parts.extend(pieces.iter().map(|p| c.content(p)));
    parts.push(c.finish("stop"));
    parts.push(wire::DONE.to_owned());
    parts
}

async fn relay(app: &TestApp, script: Script) -> Stream {
    app.mock.enqueue(script);
    app.ask("go").await
}

#[tokio::test]
async fn crlf_line_ends_are_understood() {
    let app = spawn_app().await;
    let parts = normal(&["Hello", " world"])
        .into_iter()
        .map(|p| p.replace('\n', "\r\n"));
    let stream = relay(&app, Script::stream(parts).paced(2)).await;
    assert_eq!(stream.text(), "Hello world");
    stream.assert_finished();
}

#[tokio::test]
async fn bare_cr_line_ends_are_understood() {
    let app = spawn_app().await;
    let parts = normal(&["Hello", " world"]).into_iter().map(|p| p.replace('\n', "\r"));
    let stream = relay(&app, Script::stream(parts).paced(2)).await;
    assert_eq!(stream.text(), "Hello world");
    stream.assert_finished();
}

#[tokio::test]
async fn events_split_anywhere_even_inside_a_character_arrive_whole() {
    let app = spawn_app().await;
    let body = normal(&["你好", "🙂 wörld", " done"]).concat();
    // three-byte reads cut through every multi-byte character somewhere
    let bytes = body.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + 3).min(bytes.len());
        pieces.push(bytes[start..end].to_vec());
        start = end;
    }
    app.mock.enqueue(Script::stream_bytes(pieces).paced(1));
    let stream = app.ask("go").await;
    assert_eq!(stream.text(), "你好🙂 wörld done");
    stream.assert_finished();
}

#[tokio::test]
async fn comment_lines_are_skipped() {
    let app = spawn_app().await;
    let mut parts = normal(&["a", "b"]);
    parts.insert(0, ": OPENROUTER PROCESSING\n\n".to_owned());
    parts.insert(2, ": keep-alive\n\n".to_owned());
    let stream = relay(&app, Script::stream(parts)).await;
    assert_eq!(stream.text(), "ab");
    stream.assert_finished();
}

#[tokio::test]
async fn a_stream_ending_without_done_after_its_finish_reason_is_complete() {
    let app = spawn_app().await;
    let mut parts = normal(&["no", " done"]);
    parts.pop();
    let stream = relay(&app, Script::stream(parts)).await;
    assert_eq!(stream.text(), "no done");
    stream.assert_finished();
}

#[tokio::test]
async fn a_stream_cut_before_its_finish_is_an_error_that_keeps_the_partial_text() {
    let app = spawn_app().await;
    let c = completion();
    let stream = relay(
        &app,
        Script::stream([c.role(), c.content("half"), c.content(" an answer")]),
    )
    .await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["message"]["content"]["parts"][0], "half an answer");
    assert_eq!(last["error"]["code"], "upstream_truncated");
    stream.assert_closed_properly();
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["status"], "error");
    assert_eq!(stored["content"]["parts"][0], "half an answer");
}

#[tokio::test]
async fn the_usage_chunk_with_empty_choices_is_ignored() {
    let app = spawn_app().await;
    let mut parts = normal(&["counted"]);
    parts.insert(parts.len() - 1, completion().usage(12, 1));
    let stream = relay(&app, Script::stream(parts)).await;
    assert_eq!(stream.text(), "counted");
    assert_eq!(stream.frames().len(), 2);
    stream.assert_finished();
}

#[tokio::test]
async fn finish_reason_length_becomes_max_tokens() {
    let app = spawn_app().await;
    let c = completion();
    let stream = relay(
        &app,
        Script::stream([c.role(), c.content("cut"), c.finish("length"), wire::DONE.into()]),
    )
    .await;
    assert_eq!(
        stream.last()["message"]["metadata"]["finish_details"],
        json!({"type": "max_tokens"})
    );
    stream.assert_finished();
}

#[tokio::test]
async fn an_error_event_mid_stream_becomes_an_error_frame_with_the_partial_text() {
    let app = spawn_app().await;
    let stream = app.ask("boom [mock:error-after=2]").await;
    let frames = stream.frames();
    let last = stream.last();
    assert_eq!(frames.len(), 3);
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["message"]["content"]["parts"][0], "Echo: boom");
    assert_eq!(last["error"]["code"], "server_error");
    assert!(last["error"]["message"].as_str().unwrap().contains("The model crashed"));
    stream.assert_closed_properly();
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["status"], "error");
    assert_eq!(stored["content"]["parts"][0], "Echo: boom");
    assert_eq!(stored["metadata"]["error"]["code"], "server_error");
}

#[tokio::test]
async fn an_error_event_before_any_token_is_a_real_http_error() {
    let app = spawn_app().await;
    let c = completion();
    let error = wire::error_body("The model is overloaded", "server_error", "overloaded");
    app.mock
        .enqueue(Script::stream([c.role(), format!("data: {error}\n\n")]));
    let response = app.post_conv(json!({"content": "go"})).await;
    // `overloaded` is no code of OpenAI's: the gateway's own code stands in for it.
    let body = assert_error(response, 502, "upstream_error").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The model is overloaded")
    );
}
