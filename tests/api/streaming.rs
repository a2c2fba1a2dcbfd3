//! A turn streams as the contract says; follow-ups, branches and restarts keep history.

use crate::helpers::*;
use chatgate::config::UpstreamKind;
use mockllm::MockLlm;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_question_streams_an_accumulating_answer_and_closes() {
    let app = spawn_app().await;
    let response = app.post_conv(json!({"content": "hello there [mock:words=5]"})).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let stream = read_stream(response).await;

    let frames = stream.frames();
    // "Echo:", " hello", " there", " w1" … " w5": one frame per upstream chunk, then the last.
    assert_eq!(frames.len(), 9, "{:?}", stream.events);
    let texts: Vec<&str> = frames
        .iter()
        .map(|f| f["message"]["content"]["parts"][0].as_str().unwrap())
        .collect();
    assert_eq!(texts[0], "Echo:");
    assert_eq!(texts[1], "Echo: hello");
    assert_eq!(texts[7], "Echo: hello there w1 w2 w3 w4 w5");
    assert_eq!(texts[8], texts[7]);
    for frame in &frames[..8] {
        assert_eq!(frame["message"]["status"], "in_progress");
        assert_eq!(frame["message"]["end_turn"], serde_json::Value::Null);
        assert_eq!(frame["message"]["author"]["role"], "assistant");
        assert_eq!(frame["message"]["metadata"]["model_slug"], "mock-model");
    }
    let ids: Vec<u64> = stream
        .events
        .iter()
        .filter_map(|e| e.id.as_ref())
        .map(|i| i.parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=9).collect::<Vec<_>>(), "every frame has a rising event id");
    assert_eq!(
        stream.last()["message"]["metadata"]["finish_details"],
        json!({"type": "stop"})
    );
    stream.assert_finished();

    // one conversation id and one message id throughout
    let conversation = stream.conversation_id();
    let message = stream.message_id();
    assert!(
        frames
            .iter()
            .all(|f| f["conversation_id"] == conversation.as_str() && f["message"]["id"] == message.as_str())
    );
    assert_eq!(
        sent_messages(&app.mock, 0).last().unwrap(),
        &("user".into(), "hello there [mock:words=5]".into())
    );
    assert_eq!(app.mock.requests()[0]["stream"], true);
}

#[tokio::test]
async fn the_answer_is_stored_with_the_question() {
    let app = spawn_app().await;
    let stream = app.ask("remember me").await;
    let (status, conv) = app.get_json(&format!("/conv/{}", stream.conversation_id())).await;
    assert_eq!(status, 200);
    let answer = &conv["mapping"][stream.message_id()]["message"];
    assert_eq!(answer["content"]["parts"][0], "Echo: remember me");
    assert_eq!(answer["status"], "finished_successfully");
    let question_id = answer["metadata"]["parent_id"].as_str().unwrap();
    assert_eq!(
        conv["mapping"][question_id]["message"]["content"]["parts"][0],
        "remember me"
    );
    assert_eq!(conv["current_node"], stream.message_id());
    assert_eq!(conv["title"], "remember me");
}

#[tokio::test]
async fn a_follow_up_carries_the_history() {
    let app = spawn_app().await;
    let first = app.ask("my name is Ada").await;
    let second = app
        .turn(json!({
            "content": "what is my name?",
            "conversation_id": first.conversation_id(),
            "parent_message_id": first.message_id(),
        }))
        .await;
    second.assert_finished();
    assert_eq!(second.conversation_id(), first.conversation_id());
    let sent = sent_messages(&app.mock, 1);
    let expected = [
        ("system", "You are a helpful, honest assistant."),
        ("user", "my name is Ada"),
        ("assistant", "Echo: my name is Ada"),
        ("user", "what is my name?"),
    ];
    assert_eq!(sent.len(), expected.len(), "{sent:?}");
    for ((role, content), (want_role, want_content)) in sent.iter().zip(expected) {
        assert_eq!(role, want_role);
        assert!(
            content.starts_with(want_content),
            "{content:?} should start with {want_content:?}"
        );
    }
}

#[tokio::test]
async fn without_a_parent_the_turn_continues_from_the_latest_message() {
    let app = spawn_app().await;
    let first = app.ask("one").await;
    app.turn(json!({"content": "two", "conversation_id": first.conversation_id(), "parent_message_id": ""}))
        .await;
    let sent = sent_messages(&app.mock, 1);
    let contents: Vec<&str> = sent.iter().skip(1).map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["one", "Echo: one", "two"]);
}

#[tokio::test]
async fn a_branch_from_an_older_message_does_not_see_the_other_branch() {
    let app = spawn_app().await;
    let first = app.ask("root question").await;
    let conversation = first.conversation_id();
    let left = app
        .turn(json!({"content": "left", "conversation_id": conversation, "parent_message_id": first.message_id()}))
        .await;
    let right = app
        .turn(json!({"content": "right", "conversation_id": conversation, "parent_message_id": first.message_id()}))
        .await;
    let sent = sent_messages(&app.mock, 2);
    let contents: Vec<&str> = sent.iter().skip(1).map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["root question", "Echo: root question", "right"]);

    // the tree holds both branches under the first answer
    let (_, conv) = app.get_json(&format!("/conv/{conversation}")).await;
    let children = conv["mapping"][first.message_id()]["children"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(children.len(), 2);
    for branch in [&left, &right] {
        let answer = &conv["mapping"][branch.message_id()];
        let question = answer["parent"].as_str().unwrap();
        assert!(children.iter().any(|c| c == question));
    }
    assert_eq!(conv["current_node"], right.message_id());
}

#[tokio::test]
async fn editing_the_first_message_branches_from_the_root() {
    let app = spawn_app().await;
    let first = app.ask("first try").await;
    let (_, conv) = app.get_json(&format!("/conv/{}", first.conversation_id())).await;
    let root = conv["mapping"]
        .as_object()
        .unwrap()
        .values()
        .find(|n| n["parent"].is_null())
        .expect("a root node");
    assert!(root["message"].is_null());
    let edited = app
        .turn(json!({"content": "second try", "conversation_id": first.conversation_id(), "parent_message_id": root["id"]}))
        .await;
    edited.assert_finished();
    let contents: Vec<String> = sent_messages(&app.mock, 1)
        .into_iter()
        .skip(1)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(contents, ["second try"]);
}

#[tokio::test]
async fn history_survives_a_restart_on_the_same_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let app = spawn_app_on(&db, MockLlm::start("127.0.0.1:0").unwrap()).await;
    let first = app.ask("survive this").await;
    app.handle.stop(true).await;
    drop(app);

    let app = spawn_app_on(&db, MockLlm::start("127.0.0.1:0").unwrap()).await;
    let (status, list) = app.get_json("/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["conversation_id"], first.conversation_id());
    assert_eq!(list["items"][0]["title"], "survive this");
    let follow_up = app
        .turn(json!({"content": "still there?", "conversation_id": first.conversation_id(), "parent_message_id": first.message_id()}))
        .await;
    follow_up.assert_finished();
    let contents: Vec<String> = sent_messages(&app.mock, 0)
        .into_iter()
        .skip(1)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(contents, ["survive this", "Echo: survive this", "still there?"]);
}

#[tokio::test]
async fn a_slow_first_token_gets_heartbeats_and_then_streams() {
    let app = spawn_app_with(|s| s.heartbeat = Duration::from_millis(100)).await;
    let stream = app.ask("patience [mock:first-delay=450]").await;
    let before_first_frame: Vec<_> = stream
        .events
        .iter()
        .skip_while(|e| e.retry.is_some())
        .take_while(|e| e.id.is_none())
        .collect();
    assert!(before_first_frame.len() >= 2, "{:?}", stream.events);
    assert!(
        before_first_frame
            .iter()
            .all(|e| e.comment.as_deref() == Some("keep-alive"))
    );
    assert_eq!(stream.text(), "Echo: patience");
    stream.assert_finished();
}

#[tokio::test]
async fn the_demo_provider_streams_a_labelled_answer_without_an_upstream() {
    let app = spawn_app_with(|s| {
        s.upstream = UpstreamKind::Demo {
            delay: Duration::from_millis(1),
        }
    })
    .await;
    let stream = app.ask("hi demo").await;
    stream.assert_finished();
    assert!(stream.frames().len() > 10, "it streams word by word");
    let text = stream.text();
    assert!(text.contains("[chatgate demo]") && text.contains("hi demo"), "{text}");
    let (_, config) = app.get_json("/config").await;
    assert_eq!(config["demo"], true);
    assert_eq!(app.mock.stats().requests, 0);
}

#[tokio::test]
async fn an_upstream_that_answers_one_json_object_despite_streaming_is_relayed_as_one_chunk() {
    let app = spawn_app().await;
    app.mock.enqueue(mockllm::Script::json(
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "All at once."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        })
        .to_string(),
    ));
    let stream = app.ask("no streaming here").await;
    stream.assert_finished();
    assert_eq!(stream.text(), "All at once.");
    let frames: Vec<_> = stream.events.iter().filter(|e| e.id.is_some()).collect();
    assert_eq!(
        frames.len(),
        2,
        "one frame for the answer, then the last one: {:?}",
        stream.events
    );
    let (status, conv) = app.get_json(&format!("/conv/{}", stream.conversation_id())).await;
    assert_eq!(status, 200);
    let answer = &conv["mapping"][stream.message_id()]["message"];
    assert_eq!(answer["content"]["parts"][0], "All at once.");
    assert_eq!(answer["status"], "finished_successfully");
}

#[tokio::test]
async fn openai_compatible_upstreams_are_asked_for_the_token_usage() {
    let app = spawn_app().await;
    app.ask("count me").await.assert_finished();
    let asked = &app.mock.requests()[0];
    assert_eq!(asked["stream_options"], json!({"include_usage": true}), "{asked}");
}
