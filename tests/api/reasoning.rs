//! Reasoning ("thinking") text and token counts: relayed in `message.metadata.reasoning`
//! (never in `parts[0]`), the answer's usage in `message.metadata.usage` of its last frame,
//! both stored with the answer, replayed, and kept across a restart.

use crate::anthropic::spawn_anthropic_app;
use crate::helpers::*;
use crate::restart::kill_mid_stream;
use crate::shutdown::Gateway;
use mockllm::{MockLlm, reasoning, word_chunks};
use serde_json::{Value, json};
use std::time::Duration;

/// The reasoning the mock streams for `[mock:reasoning=n]`, whole.
fn mock_reasoning(n: usize) -> String {
    reasoning(n).concat()
}

/// `metadata.reasoning` of a frame or stored message: `None` when the key is absent.
fn reasoning_of(message: &Value) -> Option<&str> {
    let metadata = message["metadata"].as_object().expect("metadata");
    metadata
        .get("reasoning")
        .map(|r| r.as_str().expect("reasoning is a string"))
}

fn frame_reasoning(frame: &Value) -> Option<&str> {
    reasoning_of(&frame["message"])
}

fn frame_id(event: &Event) -> u64 {
    event.id.as_deref().expect("a frame has an id").parse().unwrap()
}

/// The frames of a stream with their ids.
fn frames_with_ids(stream: &Stream) -> Vec<(u64, Value)> {
    stream
        .events
        .iter()
        .filter(|e| is_frame(e))
        .map(|e| (frame_id(e), serde_json::from_str(&e.data).unwrap()))
        .collect()
}

/// The mock's usage for an OpenAI-style echo of `prompt`: 10 prompt tokens, a token a chunk.
fn mock_usage(answer: &str) -> Value {
    json!({"prompt_tokens": 10, "completion_tokens": word_chunks(answer).len()})
}

#[tokio::test]
async fn frames_carry_the_reasoning_so_far_in_metadata_and_parts_0_only_the_answer() {
    let app = spawn_app().await;
    let stream = app.ask("why is the sky blue [mock:reasoning=4]").await;
    stream.assert_finished();
    let answer = echo("why is the sky blue", 0);
    let steps = reasoning(4);
    let frames = frames_with_ids(&stream);
    let chunks = steps.len() + word_chunks(&answer).len();
    assert_eq!(
        frames.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (1..=chunks as u64 + 1).collect::<Vec<_>>(),
        "a reasoning piece is a chunk, and a frame, of its own"
    );
    for (i, (_, frame)) in frames.iter().enumerate() {
        let so_far = steps[..(i + 1).min(steps.len())].concat();
        assert_eq!(frame_reasoning(frame), Some(so_far.as_str()), "frame {i}: {frame}");
        let text = text_of(frame);
        assert!(!text.contains("Thinking"), "reasoning in parts[0]: {text:?}");
        if i < steps.len() {
            assert_eq!(text, "", "no answer text yet in frame {i}");
        }
    }
    assert_eq!(stream.text(), answer);
    assert_eq!(frame_reasoning(&stream.last()), Some(mock_reasoning(4).as_str()));
}

#[tokio::test]
async fn delta_mode_frames_carry_only_the_reasoning_new_since_the_previous_frame() {
    let app = spawn_app().await;
    let stream = app
        .turn(json!({"content": "deltas [mock:reasoning=3] [mock:words=2]", "delta": true}))
        .await;
    stream.assert_finished();
    let frames = stream.frames();
    let steps = reasoning(3);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(frame_reasoning(&frames[i]), Some(step.as_str()), "{}", frames[i]);
        assert_eq!(text_of(&frames[i]), "");
    }
    for frame in &frames[steps.len()..] {
        assert_eq!(frame_reasoning(frame), None, "no new reasoning, no key: {frame}");
    }
    let reasoning: String = frames.iter().filter_map(frame_reasoning).collect();
    let text: String = frames.iter().map(text_of).collect();
    assert_eq!(reasoning, mock_reasoning(3));
    assert_eq!(text, echo("deltas", 2));
}

#[tokio::test]
async fn the_reasoning_field_some_servers_use_is_relayed_the_same_way() {
    let app = spawn_app().await;
    let stream = app
        .ask("other field [mock:reasoning=2] [mock:reasoning-field=reasoning]")
        .await;
    stream.assert_finished();
    assert_eq!(stream.text(), echo("other field", 0));
    assert_eq!(frame_reasoning(&stream.last()), Some(mock_reasoning(2).as_str()));
}

#[tokio::test]
async fn a_resume_in_the_middle_of_the_reasoning_gives_exactly_the_rest() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "resume me [mock:reasoning=8] [mock:delay=80]"}))
        .await;
    assert_eq!(response.status(), 200);
    let mut first = Live::new(response);
    let second_frame = first.until_id(2).await;
    let conversation = second_frame["conversation_id"].as_str().unwrap().to_owned();
    let steps = reasoning(8);
    assert_eq!(frame_reasoning(&second_frame), Some(steps[..2].concat().as_str()));

    // A second reader, live, from after frame 2, in delta mode: its frames add up to the rest.
    let resumed = read_stream(app.get_stream(&conversation, "?delta=true", Some("2")).await).await;
    resumed.assert_finished();
    let frames = resumed.frames();
    let reasoning_rest: String = frames.iter().filter_map(frame_reasoning).collect();
    let text: String = frames.iter().map(text_of).collect();
    assert_eq!(reasoning_rest, steps[2..].concat());
    assert_eq!(text, echo("resume me", 0));
    // Without delta mode, the first frame after frame 2 has everything so far.
    let whole = first.finish().await;
    let (_, third) = frames_with_ids(&whole)
        .into_iter()
        .find(|(id, _)| *id == 3)
        .expect("frame 3");
    assert_eq!(frame_reasoning(&third), Some(steps[..3].concat().as_str()));

    // The ended answer, replayed after frame 5 (inside the reasoning) and after frame 9
    // (inside the text): exactly what follows.
    let message = whole.message_id();
    app.stored_message(&conversation, &message).await;
    let replayed = read_stream(app.get_stream(&conversation, "?delta=true", Some("5")).await).await;
    let last = replayed.last();
    assert_eq!(frame_reasoning(&last), Some(steps[5..].concat().as_str()));
    assert_eq!(text_of(&last), echo("resume me", 0));
    let replayed = read_stream(app.get_stream(&conversation, "?delta=true", Some("9")).await).await;
    let last = replayed.last();
    assert_eq!(frame_reasoning(&last), None, "nothing of the reasoning is left: {last}");
    assert_eq!(text_of(&last), " resume me");
    let replayed = read_stream(app.get_stream(&conversation, "", Some("5")).await).await;
    assert_eq!(frame_reasoning(&replayed.last()), Some(mock_reasoning(8).as_str()));
}

#[tokio::test]
async fn get_conv_returns_the_reasoning_and_the_usage_the_upstream_reported() {
    let app = spawn_app().await;
    let stream = app.ask("count tokens [mock:reasoning=2] [mock:words=3]").await;
    stream.assert_finished();
    let answer = echo("count tokens", 3);
    let usage = mock_usage(&answer);
    let frames = stream.frames();
    let (last, progress) = frames.split_last().unwrap();
    assert_eq!(last["message"]["metadata"]["usage"], usage, "{last}");
    for frame in progress {
        assert!(frame["message"]["metadata"].get("usage").is_none(), "{frame}");
    }

    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["content"]["parts"][0], answer.as_str());
    assert_eq!(reasoning_of(&stored), Some(mock_reasoning(2).as_str()));
    assert_eq!(stored["metadata"]["usage"], usage);
    // The replayed last frame is the live one.
    let replay = read_stream(app.get_stream(&stream.conversation_id(), "", None).await).await;
    assert_eq!(replay.last(), *last);
}

#[tokio::test]
async fn an_answer_without_reasoning_has_no_reasoning_key_anywhere() {
    let app = spawn_app().await;
    let stream = app.ask("plain [mock:words=2]").await;
    stream.assert_finished();
    for frame in stream.frames() {
        assert_eq!(frame_reasoning(&frame), None, "{frame}");
    }
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(reasoning_of(&stored), None, "{stored}");
    assert_eq!(stored["metadata"]["usage"], mock_usage(&echo("plain", 2)));
    let (_, conversation) = app.get_json(&format!("/conv/{}", stream.conversation_id())).await;
    for node in conversation["mapping"].as_object().unwrap().values() {
        if node["message"].is_object() {
            assert_eq!(reasoning_of(&node["message"]), None, "{node}");
        }
    }
}

#[tokio::test]
async fn stream_false_returns_the_reasoning_and_the_usage() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "at once [mock:reasoning=3]", "stream": false}))
        .await;
    assert_eq!(response.status(), 200);
    let last: Value = response.json().await.unwrap();
    let answer = echo("at once", 0);
    assert_eq!(last["message"]["content"]["parts"][0], answer.as_str());
    assert_eq!(frame_reasoning(&last), Some(mock_reasoning(3).as_str()));
    assert_eq!(last["message"]["metadata"]["usage"], mock_usage(&answer));
}

#[tokio::test]
async fn anthropic_thinking_is_relayed_as_reasoning_with_anthropics_token_counts() {
    let app = spawn_anthropic_app().await;
    let stream = app.ask("ponder this [mock:thinking]").await;
    stream.assert_finished();
    let thinking = "Thinking about: ponder this";
    let answer = "Echo: ponder this";
    assert_eq!(stream.text(), answer);
    assert_eq!(frame_reasoning(&stream.last()), Some(thinking));
    let output_tokens = word_chunks(thinking).len() + word_chunks(answer).len();
    let usage = json!({"prompt_tokens": 10, "completion_tokens": output_tokens});
    assert_eq!(stream.last()["message"]["metadata"]["usage"], usage);
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(reasoning_of(&stored), Some(thinking));
    assert_eq!(stored["metadata"]["usage"], usage);
}

#[tokio::test]
async fn reasoning_and_usage_survive_a_restart_and_a_kill_keeps_the_checkpointed_reasoning() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let mut gateway = Gateway::start(&db, &mock, &[]).await;

    // One answer that ends.
    let ended = gateway.stream("kept [mock:reasoning=3]").await.finish().await;
    ended.assert_finished();
    let (conversation, message) = (ended.conversation_id(), ended.message_id());
    gateway.stored(&conversation, &message).await;

    // One killed while it is still reasoning.
    let (killed_conversation, killed_message, remembered) =
        kill_mid_stream(&mut gateway, "long thoughts [mock:reasoning=300] [mock:delay=20]").await;
    let remembered = frame_reasoning(&remembered).unwrap().to_owned();
    assert!(remembered.starts_with("Thinking, step 1. "), "{remembered:?}");

    let gateway = Gateway::start(&db, &mock, &[]).await;
    let stored = gateway.stored(&conversation, &message).await;
    assert_eq!(reasoning_of(&stored), Some(mock_reasoning(3).as_str()));
    assert_eq!(stored["metadata"]["usage"], mock_usage(&echo("kept", 0)));
    assert_eq!(stored["content"]["parts"][0], echo("kept", 0).as_str());
    // Resumed after frame 1 of the ended answer, in delta mode: the rest of the reasoning.
    let replay = gateway
        .get_stream(&conversation, "?delta=true", Some("1"))
        .await
        .rest(Duration::from_secs(10))
        .await;
    let last = replay.last();
    assert_eq!(frame_reasoning(&last), Some(reasoning(3)[1..].concat().as_str()));
    assert_eq!(last["message"]["metadata"]["usage"], mock_usage(&echo("kept", 0)));

    let cut = gateway.stored(&killed_conversation, &killed_message).await;
    assert_eq!(cut["status"], "error", "{cut}");
    let cut_reasoning = reasoning_of(&cut).expect("the checkpointed reasoning");
    assert!(
        cut_reasoning.starts_with(&remembered),
        "the stored reasoning {cut_reasoning:?} holds what was checkpointed, {remembered:?}"
    );
    assert_eq!(cut["content"]["parts"][0], "", "no answer text had come yet");
}

#[tokio::test]
async fn endless_reasoning_ends_at_max_answer_bytes_and_the_upstream_is_cancelled() {
    let limit = 16 * 1024 + 1;
    let app = spawn_app_with(|s| s.max_answer_bytes = limit).await;
    let c = mockllm::wire::Completion::new("mock-model", 1);
    app.mock.enqueue(
        mockllm::Script::stream([c.role(), c.content("Before: ")])
            .then_repeat(0, c.reasoning("reasoning_content", &"é".repeat(300))),
    );
    let stream = app.ask("think forever").await;
    let last = stream.last();
    assert_eq!(last["error"]["code"], "answer_too_large", "{last}");
    assert_eq!(stream.text(), "Before: ", "the text is kept whole");
    let reasoning = frame_reasoning(&last).unwrap();
    assert_eq!(reasoning.len(), limit - 1, "cut at the limit, on a character boundary");
    assert!(reasoning.chars().all(|c| c == 'é'));
    stream.assert_closed_properly();
    upstream_cancelled(
        &app.mock,
        Duration::from_secs(5),
        "the endless upstream request is dropped",
    )
    .await;
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(reasoning_of(&stored), Some(reasoning));
}
