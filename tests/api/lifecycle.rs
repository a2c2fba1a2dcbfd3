//! An answer's life apart from its connection: background and non-streaming turns, Stop,
//! and the detached grace.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[tokio::test]
async fn a_background_turn_answers_202_with_its_ids_and_runs_with_no_reader() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::ZERO).await;
    let response = app
        .post_conv(json!({"content": "in the background [mock:words=20] [mock:delay=10]", "background": true}))
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let conversation = str_of(&accepted, "conversation_id");
    let message = str_of(&accepted, "message_id");
    assert_eq!(
        str_of(&accepted, "stream_url"),
        format!("/conv/{conversation}/stream?message_id={message}")
    );

    // Nobody reads it, and with no grace at all it still runs to its end.
    let stored = app.stored_message(conversation, message).await;
    assert_eq!(stored["status"], "finished_successfully");
    assert_eq!(stored["content"]["parts"][0], echo("in the background", 20));
    assert_eq!(stored["metadata"]["parent_id"], accepted["parent_message_id"]);
    let (_, tree) = app.get_json(&format!("/conv/{conversation}")).await;
    assert_eq!(
        tree["mapping"][str_of(&accepted, "parent_message_id")]["message"]["author"]["role"],
        "user"
    );
    assert_eq!(app.mock.stats().cancelled, 0);

    // The stream URL replays it.
    let replay = read_stream(
        app.client
            .get(app.url(str_of(&accepted, "stream_url")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    replay.assert_finished();
    assert_eq!(replay.text(), echo("in the background", 20));
}

#[tokio::test]
async fn a_background_turn_that_the_upstream_refuses_gets_the_refusal() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "no [mock:status=429] [mock:retry-after=30]", "background": true}))
        .await;
    assert_eq!(response.headers()["retry-after"], "30");
    assert_error(response, 429, "rate_limit_exceeded").await;
}

#[tokio::test]
async fn stream_false_waits_and_returns_the_last_frame_as_json() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "all at once [mock:words=8]", "stream": false}))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let last: Value = response.json().await.unwrap();
    assert_eq!(last["message"]["status"], "finished_successfully");
    assert_eq!(last["message"]["end_turn"], true);
    assert_eq!(last["message"]["content"]["parts"][0], echo("all at once", 8));
    assert_eq!(last["error"], Value::Null);
    let conversation = str_of(&last, "conversation_id");
    // The same object a stream's last frame carries.
    let replay = read_stream(app.get_stream(conversation, "", None).await).await;
    assert_eq!(replay.last(), last);

    // An upstream failure mid-answer: the last frame carries it; before any text: a status.
    let response = app
        .post_conv(json!({"content": "fail [mock:words=8] [mock:error-after=3]", "stream": false}))
        .await;
    assert_eq!(response.status(), 200);
    let last: Value = response.json().await.unwrap();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["error"]["code"], "server_error");
    let response = app
        .post_conv(json!({"content": "fail [mock:status=500]", "stream": false}))
        .await;
    assert_error(response, 502, "server_error").await;
}

#[tokio::test]
async fn stop_ends_the_answer_for_every_reader_and_stores_it_interrupted() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "go on [mock:words=1000] [mock:delay=20]"}))
        .await;
    let mut poster = Live::new(response);
    let first = poster.until_id(3).await;
    let conversation = str_of(&first, "conversation_id").to_owned();
    let message = first["message"]["id"].as_str().unwrap().to_owned();
    let mut watcher = Live::new(app.get_stream(&conversation, "", None).await);
    watcher.until_id(5).await;

    let (status, body) = app.stop(&conversation, Some(json!({"message_id": message}))).await;
    assert_eq!((status, body), (200, json!({"stopped": true})));

    for reader in [poster, watcher] {
        let stream = reader.finish().await;
        stream.assert_closed_properly();
        let last = stream.last();
        assert_eq!(last["message"]["status"], "finished_partial_completion");
        assert_eq!(last["message"]["metadata"]["finish_details"]["type"], "interrupted");
        assert_eq!(last["error"], Value::Null);
        assert!(!text_of(&last).contains("w1000"));
    }
    upstream_cancelled(&app.mock, Duration::from_secs(2), "the upstream request was cancelled").await;
    // Stored before the stop was answered.
    let (_, tree) = app.get_json(&format!("/conv/{conversation}")).await;
    let stored = &tree["mapping"][&message]["message"];
    assert_eq!(stored["status"], "finished_partial_completion");
    assert_eq!(stored["metadata"]["finish_details"]["type"], "interrupted");
    assert!(
        stored["content"]["parts"][0]
            .as_str()
            .unwrap()
            .starts_with("Echo: go on w1")
    );
    app.registry_empties().await;
}

#[tokio::test]
async fn stop_without_a_body_stops_the_newest_live_answer() {
    let app = spawn_app().await;
    let accepted = app
        .background(json!({"content": "go on [mock:words=1000] [mock:delay=20]"}))
        .await;
    let conversation = str_of(&accepted, "conversation_id");
    let mut watcher = Live::new(app.get_stream(conversation, "", None).await);
    watcher.until_id(2).await;
    let (status, body) = app.stop(conversation, None).await;
    assert_eq!((status, body), (200, json!({"stopped": true})));
    assert_eq!(
        watcher.finish().await.last()["message"]["status"],
        "finished_partial_completion"
    );
}

#[tokio::test]
async fn stop_with_nothing_running_says_false_and_bad_stops_are_refused() {
    let app = spawn_app().await;
    let turn = app.ask("done already").await;
    let conversation = turn.conversation_id();
    assert_eq!(app.stop(&conversation, None).await, (200, json!({"stopped": false})));
    let other = json!({"message_id": "7d3f3c3e-1111-4222-8333-944455556666"});
    assert_eq!(
        app.stop(&conversation, Some(other)).await,
        (200, json!({"stopped": false}))
    );
    let (status, body) = app.stop("7d3f3c3e-1111-4222-8333-944455556666", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("conversation_not_found"))
    );
    let (status, body) = app.stop(&conversation, Some(json!({"message_id": "nope"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_field")));
    assert_eq!(body["error"]["param"], "message_id");
    let response = app
        .client
        .post(app.url(&format!("/conv/{conversation}/stop")))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "malformed_json").await;
    let (status, body) = app
        .stop(&conversation, Some(json!(["7d3f3c3e-1111-4222-8333-944455556666"])))
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_field")));
    let (status, body) = app.stop(&conversation, Some(json!({"message_id": 7}))).await;
    assert_eq!((status, body["error"]["param"].as_str()), (422, Some("message_id")));
    // The finished answer is untouched.
    let stored = app.stored_message(&conversation, &turn.message_id()).await;
    assert_eq!(stored["status"], "finished_successfully");
}

#[tokio::test]
async fn a_stop_racing_the_end_of_an_answer_is_either_a_stop_or_a_no_op() {
    let app = spawn_app().await;
    for delay in [0, 5, 10, 15, 20, 25, 30, 35] {
        let accepted = app
            .background(json!({"content": format!("race [mock:words=3] [mock:delay={delay}]")}))
            .await;
        let conversation = str_of(&accepted, "conversation_id");
        let message = str_of(&accepted, "message_id");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) = app.stop(conversation, None).await;
        assert_eq!(status, 200);
        let stored = app.stored_message(conversation, message).await;
        let expected = if body["stopped"] == true {
            "finished_partial_completion"
        } else {
            "finished_successfully"
        };
        assert_eq!(stored["status"], expected, "stop said {body}");
        let replay = read_stream(app.get_stream(conversation, "", None).await).await;
        assert_eq!(replay.last()["message"]["status"], expected);
    }
    app.registry_empties().await;
}

#[tokio::test]
async fn a_reader_that_comes_back_within_the_grace_continues_the_same_upstream_request() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::from_secs(5)).await;
    let response = app
        .post_conv(json!({"content": "reload [mock:words=60] [mock:delay=20]"}))
        .await;
    let mut first = Live::new(response);
    let frame = first.until_id(5).await;
    let conversation = str_of(&frame, "conversation_id").to_owned();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.mock.stats().cancelled, 0, "the answer goes on with no reader");

    let resumed = read_stream(app.get_stream(&conversation, "", Some("5")).await).await;
    resumed.assert_finished();
    assert_eq!(resumed.text(), echo("reload", 60));
    let stats = app.mock.stats();
    assert_eq!((stats.requests, stats.completed, stats.cancelled), (1, 1, 0));
}

#[tokio::test]
async fn an_answer_nobody_comes_back_to_is_cancelled_after_the_grace_and_stored_interrupted() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::from_millis(1500)).await;
    let response = app
        .post_conv(json!({"content": "abandon [mock:words=2000] [mock:delay=20]"}))
        .await;
    let mut reader = Live::new(response);
    let frame = reader.until_id(3).await;
    let conversation = str_of(&frame, "conversation_id").to_owned();
    let message = frame["message"]["id"].as_str().unwrap().to_owned();
    drop(reader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.mock.stats().cancelled, 0, "still within the grace");
    upstream_cancelled(&app.mock, Duration::from_secs(10), "cancelled once the grace was over").await;
    let stored = app.stored_message(&conversation, &message).await;
    assert_eq!(stored["status"], "finished_partial_completion");
    assert_eq!(stored["metadata"]["finish_details"]["type"], "interrupted");
    let stored_text = stored["content"]["parts"][0].as_str().unwrap();
    assert!(stored_text.len() > text_of(&frame).len(), "it went on during the grace");
    app.registry_empties().await;
}

#[tokio::test]
async fn the_grace_starts_again_each_time_the_last_reader_leaves() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::from_millis(1500)).await;
    let accepted_by_post = app
        .post_conv(json!({"content": "twice [mock:words=2000] [mock:delay=20]"}))
        .await;
    let mut reader = Live::new(accepted_by_post);
    let frame = reader.until_id(2).await;
    let conversation = str_of(&frame, "conversation_id").to_owned();
    drop(reader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut back = Live::new(app.get_stream(&conversation, "", None).await);
    back.until_id(60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(back);
    // 2 s after the first reader left: past the first grace, within the second.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        app.mock.stats().cancelled,
        0,
        "the second departure restarted the grace"
    );
    upstream_cancelled(&app.mock, Duration::from_secs(10), "the upstream request is dropped").await;
}

#[tokio::test]
async fn a_background_turn_with_cancel_unread_is_cancelled_once_its_readers_are_gone() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::from_millis(1500)).await;
    let accepted = app
        .background(json!({"content": "page turn [mock:words=2000] [mock:delay=20]", "cancel_unread": true}))
        .await;
    let conversation = str_of(&accepted, "conversation_id");
    let message = str_of(&accepted, "message_id");
    let mut reader = Live::new(app.get_stream(conversation, "", None).await);
    reader.until_id(3).await;
    drop(reader);
    upstream_cancelled(
        &app.mock,
        Duration::from_secs(10),
        "cancelled once nobody read it for the grace",
    )
    .await;
    let stored = app.stored_message(conversation, message).await;
    assert_eq!(stored["status"], "finished_partial_completion");

    // Nobody ever comes: it waits for a first reader, then goes the same way.
    let accepted = app
        .background(json!({"content": "nobody [mock:words=2000] [mock:delay=20]", "cancel_unread": true}))
        .await;
    let stats = app
        .mock
        .wait_for_stats(Duration::from_secs(15), |s| s.cancelled == 2)
        .await;
    assert_eq!(stats.cancelled, 2);
    let stored = app
        .stored_message(str_of(&accepted, "conversation_id"), str_of(&accepted, "message_id"))
        .await;
    assert_eq!(stored["status"], "finished_partial_completion");
}

/// An answer's turn is written while it streams, and its client knows of it from the 202
/// or the first frame: on `read_on` (`on` itself, or another replica), the conversation is
/// read, continued and deleted at once, as if it had been stored before. Each step a few
/// times: the store's write and the client's request race.
pub async fn announced_answers_are_read_continued_and_deleted_at_once(on: &TestApp, read_on: &TestApp) {
    for round in 0..5 {
        let accepted = on
            .background(json!({"content": format!("announced {round} [mock:words=20] [mock:delay=10]")}))
            .await;
        let conversation = str_of(&accepted, "conversation_id");
        let (status, tree) = read_on.get_json(&format!("/conv/{conversation}")).await;
        assert_eq!(status, 200, "round {round}, read after the 202: {tree}");
        let user = &tree["mapping"][str_of(&accepted, "parent_message_id")]["message"];
        assert_eq!(user["author"]["role"], "user", "round {round}: {tree}");
        let answer = &tree["mapping"][str_of(&accepted, "message_id")]["message"];
        assert_eq!(answer["author"]["role"], "assistant", "round {round}: {tree}");
        assert_eq!(tree["current_node"], accepted["message_id"]);

        let mut live = Live::new(
            on.post_conv(json!({"content": format!("streamed {round} [mock:words=20] [mock:delay=10]")}))
                .await,
        );
        let first = live.next_frame().await;
        let conversation = first["conversation_id"].as_str().unwrap();
        let (status, tree) = read_on.get_json(&format!("/conv/{conversation}")).await;
        assert_eq!(status, 200, "round {round}, read after the first frame: {tree}");
        let message = first["message"]["id"].as_str().unwrap();
        assert_eq!(tree["mapping"][message]["message"]["author"]["role"], "assistant");
        live.rest(Duration::from_secs(10)).await.assert_finished();

        let accepted = on
            .background(json!({"content": format!("branched {round} [mock:words=20] [mock:delay=10]")}))
            .await;
        let branch = read_on
            .turn(json!({
                "content": "another answer to it",
                "conversation_id": accepted["conversation_id"],
                "parent_message_id": accepted["parent_message_id"],
            }))
            .await;
        branch.assert_finished();
        assert_eq!(branch.text(), echo("another answer to it", 0));

        let cancelled = on.mock.stats().cancelled;
        let accepted = on
            .background(json!({"content": format!("deleted {round} [mock:words=200] [mock:delay=10]")}))
            .await;
        let conversation = str_of(&accepted, "conversation_id");
        let deleted = read_on.delete_conversation(conversation).await;
        assert_eq!(deleted.status(), 204, "round {round}: {:?}", deleted.text().await);
        // Its answer is stopped (one run to its end is not counted as cancelled), and does
        // not bring the conversation back when it ends.
        let stats = on
            .mock
            .wait_for_stats(Duration::from_secs(5), |s| s.cancelled > cancelled)
            .await;
        assert_eq!(
            stats.cancelled,
            cancelled + 1,
            "round {round}: the upstream request is cancelled"
        );
        on.registry_empties().await;
        let (status, body) = read_on.get_json(&format!("/conv/{conversation}")).await;
        assert_eq!(status, 404, "round {round}: {body}");
    }
}

/// A new conversation is listed as soon as its client knows of it (the 202, the first
/// frame), on the replica that writes its first turn.
pub async fn new_conversations_are_listed_at_once(app: &TestApp) {
    fn item<'a>(list: &'a Value, conversation: &Value) -> Option<&'a Value> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["conversation_id"] == *conversation)
    }
    for round in 0..5 {
        let accepted = app
            .background(json!({"content": format!("listed {round} [mock:words=20] [mock:delay=10]")}))
            .await;
        let (status, list) = app.get_json("/conversations").await;
        assert_eq!(status, 200);
        // (Answers of the rounds before end meanwhile and move their conversations up: the
        // new one need not be first.)
        let listed = item(&list, &accepted["conversation_id"]);
        let listed = listed.unwrap_or_else(|| panic!("round {round}, after the 202: {list}"));
        assert_eq!(
            listed["title"],
            format!("listed {round} [mock:words=20] [mock:delay=10]")
        );

        let mut live = Live::new(app.post_conv(json!({"content": format!("listed too {round}")})).await);
        let first = live.next_frame().await;
        let (_, list) = app.get_json("/conversations").await;
        assert!(
            item(&list, &first["conversation_id"]).is_some(),
            "round {round}, after the first frame: {list}"
        );
        live.rest(Duration::from_secs(10)).await.assert_finished();
    }
}

#[tokio::test]
async fn an_answer_announced_is_read_listed_continued_and_deleted_at_once_on_sqlite() {
    let app = spawn_app().await;
    announced_answers_are_read_continued_and_deleted_at_once(&app, &app).await;
    new_conversations_are_listed_at_once(&app).await;
}
