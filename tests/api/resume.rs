//! `GET /conv/{id}/stream`: following a live answer, resuming it after a frame id, and
//! replaying an ended one.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

fn id_of(event: &Event) -> u64 {
    event.id.as_ref().expect("a frame id").parse().unwrap()
}

#[tokio::test]
async fn every_stream_starts_with_retry_1000() {
    let app = spawn_app().await;
    let posted = app.ask("hello").await;
    assert_eq!(posted.events[0].retry.as_deref(), Some("1000"), "{:?}", posted.events);
    let got = read_stream(app.get_stream(&posted.conversation_id(), "", None).await).await;
    assert_eq!(got.events[0].retry.as_deref(), Some("1000"), "{:?}", got.events);
}

#[tokio::test]
async fn a_reader_follows_a_live_answer_from_the_start_with_the_same_frames_and_ending() {
    let app = spawn_app().await;
    let (conversation, message) = long_answer(&app, 30, 20).await;
    let response = app.get_stream(&conversation, "", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let stream = read_stream(response).await;
    stream.assert_finished();
    assert_eq!(stream.text(), echo("tell me", 30));
    assert_eq!(stream.message_id(), message);
    assert_eq!(stream.conversation_id(), conversation);
    let last_id = stream.events.iter().filter(|e| e.id.is_some()).map(id_of).next_back();
    assert_eq!(
        last_id,
        Some(33 + 1),
        "the last frame's id counts every chunk, plus itself"
    );
    app.registry_empties().await;
}

#[tokio::test]
async fn last_event_id_resumes_with_everything_after_it_in_the_first_frame() {
    let app = spawn_app().await;
    let (conversation, message) = long_answer(&app, 60, 15).await;
    let mut first = Live::new(app.get_stream(&conversation, "", None).await);
    let seen = first.until_id(10).await;
    let seen_id = first.seen.last().map(id_of).unwrap();
    drop(first);

    let response = app.get_stream(&conversation, "", Some(&seen_id.to_string())).await;
    let mut resumed = Live::new(response);
    assert_eq!(resumed.next().await.unwrap().retry.as_deref(), Some("1000"));
    let catch_up = resumed.next().await.unwrap();
    let frame: Value = serde_json::from_str(&catch_up.data).unwrap();
    assert!(id_of(&catch_up) > seen_id, "the first frame is past the resume point");
    assert!(
        text_of(&frame).starts_with(text_of(&seen)),
        "whole-text mode: the text so far"
    );
    assert_eq!(frame["message"]["id"], message);
    let rest = resumed.finish().await;
    rest.assert_finished();
    assert_eq!(rest.text(), echo("tell me", 60));
    assert_eq!(app.mock.stats().requests, 1, "one upstream request served every reader");
}

#[tokio::test]
async fn the_last_event_id_query_parameter_resumes_too_and_the_header_wins() {
    let app = spawn_app().await;
    let (conversation, message) = long_answer(&app, 40, 20).await;
    let mut first = Live::new(app.get_stream(&conversation, "", None).await);
    first.until_id(5).await;
    drop(first);
    let query = format!("?message_id={message}&last_event_id=3&delta=true");
    let stream = read_stream(app.get_stream(&conversation, &query, None).await).await;
    let text: String = stream.frames().iter().map(|f| text_of(f).to_owned()).collect();
    let chunks = mockllm::word_chunks(&echo("tell me", 40))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(text, chunks[3..].concat(), "delta mode after ?last_event_id=3");

    // The header, sent by EventSource on reconnect, is newer than the URL's query.
    let stream = read_stream(app.get_stream(&conversation, &query, Some("5")).await).await;
    let text: String = stream.frames().iter().map(|f| text_of(f).to_owned()).collect();
    assert_eq!(text, chunks[5..].concat());
}

#[tokio::test]
async fn in_delta_mode_the_text_before_and_after_the_resume_point_is_the_whole_answer() {
    let app = spawn_app().await;
    let (conversation, _) = long_answer(&app, 80, 10).await;
    let mut before = Live::new(app.get_stream(&conversation, "?delta=true", None).await);
    before.until_id(20).await;
    let last = before
        .seen
        .iter()
        .filter(|e| e.id.is_some())
        .map(id_of)
        .next_back()
        .unwrap();
    let text_before: String = before
        .seen
        .iter()
        .filter(|e| e.id.is_some())
        .map(|e| text_of(&serde_json::from_str::<Value>(&e.data).unwrap()).to_owned())
        .collect();
    drop(before);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let after = read_stream(
        app.get_stream(&conversation, "?delta=true", Some(&last.to_string()))
            .await,
    )
    .await;
    after.assert_closed_properly();
    let text_after: String = after.frames().iter().map(|f| text_of(f).to_owned()).collect();
    assert_eq!(
        format!("{text_before}{text_after}"),
        echo("tell me", 80),
        "no gap and no duplicate"
    );
}

#[tokio::test]
async fn an_ended_answer_is_replayed_as_its_last_frame() {
    let app = spawn_app().await;
    let turn = app.ask("replay me [mock:words=5]").await;
    let posted_last = turn.last();
    let replay = read_stream(app.get_stream(&turn.conversation_id(), "", None).await).await;
    replay.assert_finished();
    let frames = replay.frames();
    assert_eq!(frames.len(), 1, "only the last frame: {:?}", replay.events);
    assert_eq!(frames[0], posted_last, "the same last frame as the live stream's");
    let live_ids: Vec<_> = turn.events.iter().filter_map(|e| e.id.clone()).collect();
    let replay_ids: Vec<_> = replay.events.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(replay_ids.last(), live_ids.last(), "the same frame id");

    // In delta mode, the text after the resume point.
    let delta = read_stream(app.get_stream(&turn.conversation_id(), "?delta=true", Some("2")).await).await;
    let answer = echo("replay me", 5);
    let chunks = mockllm::word_chunks(&answer);
    assert_eq!(delta.text(), chunks[2..].concat());
    assert_eq!(delta.last()["message"]["status"], "finished_successfully");
}

#[tokio::test]
async fn message_id_picks_an_answer_and_without_it_the_newest_live_one_is_followed() {
    let app = spawn_app().await;
    let first = app.ask("root question").await;
    let conversation = first.conversation_id();
    let user = first.last()["message"]["metadata"]["parent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let branch = |content: &str| json!({"content": content, "conversation_id": conversation, "parent_message_id": first.message_id()});
    let older = app.background(branch("older [mock:words=40] [mock:delay=20]")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let newer = app.background(branch("newer [mock:words=40] [mock:delay=20]")).await;
    assert_ne!(older["message_id"], newer["message_id"]);

    let followed = read_stream(app.get_stream(&conversation, "", None).await).await;
    assert_eq!(followed.message_id(), newer["message_id"].as_str().unwrap());
    assert_eq!(followed.text(), echo("newer", 40));

    let query = format!("?message_id={}", older["message_id"].as_str().unwrap());
    let picked = read_stream(app.get_stream(&conversation, &query, None).await).await;
    assert_eq!(picked.text(), echo("older", 40));

    // An ended answer by id; a user message is not an answer.
    let query = format!("?message_id={}", first.message_id());
    let replayed = read_stream(app.get_stream(&conversation, &query, None).await).await;
    assert_eq!(replayed.text(), first.text());
    let response = app
        .get_stream(&conversation, &format!("?message_id={user}"), None)
        .await;
    assert_error(response, 404, "message_not_found").await;
}

#[tokio::test]
async fn unknown_conversations_and_messages_get_a_json_404() {
    let app = spawn_app().await;
    let unknown = "7d3f3c3e-1111-4222-8333-944455556666";
    assert_error(app.get_stream(unknown, "", None).await, 404, "conversation_not_found").await;
    assert_error(app.get_stream("not-a-uuid", "", None).await, 404, "not_found").await;
    let turn = app.ask("hi").await;
    let query = format!("?message_id={unknown}");
    assert_error(
        app.get_stream(&turn.conversation_id(), &query, None).await,
        404,
        "message_not_found",
    )
    .await;
}

#[tokio::test]
async fn bad_resume_points_get_a_400_and_points_past_the_answer_mean_its_end() {
    let app = spawn_app().await;
    let turn = app.ask("short [mock:words=3]").await;
    let conversation = turn.conversation_id();
    for bad in ["-1", "abc", "1.5", "99999999999999999999999"] {
        let response = app.get_stream(&conversation, "", Some(bad)).await;
        assert_error(response, 400, "invalid_last_event_id").await;
        let response = app
            .get_stream(&conversation, &format!("?last_event_id={bad}"), None)
            .await;
        assert_error(response, 400, "invalid_last_event_id").await;
    }
    assert_error(
        app.get_stream(&conversation, "?delta=maybe", None).await,
        400,
        "invalid_query",
    )
    .await;

    // Past the end of an ended answer: its last frame, with nothing new in delta mode.
    let past = read_stream(app.get_stream(&conversation, "?delta=true", Some("1000")).await).await;
    past.assert_finished();
    assert_eq!(past.text(), "");

    // Past the end of a live answer: from where it is now, without a hang.
    let (live, _) = long_answer(&app, 20, 20).await;
    let stream = read_stream(app.get_stream(&live, "", Some("500")).await).await;
    stream.assert_finished();
    assert_eq!(stream.text(), echo("tell me", 20));
}

#[tokio::test]
async fn a_hundred_readers_of_one_answer_each_get_the_whole_text() {
    let app = spawn_app().await;
    let (conversation, _) = long_answer(&app, 100, 10).await;
    let readers = (0..100).map(|i| {
        let app = &app;
        let conversation = conversation.clone();
        async move {
            let delta = if i % 2 == 0 { "" } else { "?delta=true" };
            let stream = read_stream(app.get_stream(&conversation, delta, None).await).await;
            stream.assert_finished();
            let text: String = if delta.is_empty() {
                stream.text()
            } else {
                stream.frames().iter().map(|f| text_of(f).to_owned()).collect()
            };
            assert_eq!(text, echo("tell me", 100), "reader {i}");
        }
    });
    futures::future::join_all(readers).await;
    assert_eq!(app.mock.stats().requests, 1);
    app.registry_empties().await;
}

#[tokio::test]
async fn thousands_of_readers_that_come_and_go_leave_nothing_behind() {
    let app = spawn_app().await;
    let (conversation, message) = long_answer(&app, 150, 10).await;
    for _ in 0..20 {
        let batch = (0..100).map(|i| {
            let app = &app;
            let conversation = conversation.clone();
            async move {
                let response = app.get_stream(&conversation, "", Some(&(i % 7).to_string())).await;
                let mut live = Live::new(response);
                // Some leave at once, some after a frame.
                if i % 2 == 0 {
                    live.next().await;
                    live.next().await;
                }
            }
        });
        futures::future::join_all(batch).await;
    }
    let last = read_stream(app.get_stream(&conversation, "", None).await).await;
    last.assert_finished();
    assert_eq!(last.text(), echo("tell me", 150));
    let stored = app.stored_message(&conversation, &message).await;
    assert_eq!(stored["status"], "finished_successfully");
    app.registry_empties().await;
}

#[tokio::test]
async fn a_reader_slower_than_the_upstream_still_gets_the_whole_answer() {
    let app = spawn_app().await;
    let (conversation, _) = long_answer(&app, 3000, 0).await;
    let response = app.get_stream(&conversation, "", None).await;
    // Read nothing while the answer streams, then everything.
    app.mock
        .wait_for_stats(Duration::from_secs(10), |s| s.completed == 1)
        .await;
    let stream = read_stream(response).await;
    stream.assert_finished();
    assert_eq!(stream.text(), echo("tell me", 3000));
    assert!(stream.frames().len() < 3000, "stale frames were skipped");
}
