//! With no detached grace (`--detached-grace 0`), a client that goes away cancels the
//! upstream request at once, and its partial answer is stored.

use crate::helpers::*;
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_and_its_partial_answer_is_stored() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::ZERO).await;
    let response = app
        .post_conv(json!({"content": "long story [mock:words=500] [mock:delay=30]"}))
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\n\n").count() < 3 {
        let chunk = body.next().await.expect("more frames").unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let frames = parse_events(seen.split_inclusive("\n\n").take(3).collect::<String>().as_str());
    let conversation = frames.conversation_id();
    let message = frames.message_id();
    let seen_text = frames.text();
    drop(body);
    let gone = Instant::now();

    let stats = upstream_cancelled(
        &app.mock,
        Duration::from_secs(1),
        "the upstream request was not cancelled within a second",
    )
    .await;
    assert!(gone.elapsed() < Duration::from_secs(1));
    assert_eq!(stats.completed, 0);

    let stored = app.stored_message(&conversation, &message).await;
    assert_eq!(stored["status"], "finished_partial_completion");
    assert_eq!(stored["metadata"]["finish_details"]["type"], "interrupted");
    let text = stored["content"]["parts"][0].as_str().unwrap();
    assert!(
        text.starts_with(&seen_text),
        "{text:?} holds at least what the client saw, {seen_text:?}"
    );
    assert!(!text.contains("w500"), "the answer was cut short: {text}");
}

#[tokio::test]
async fn a_client_that_gives_up_before_the_first_token_cancels_the_upstream() {
    let app = spawn_app_with(|s| s.detached_grace = Duration::ZERO).await;
    // A raw socket, so that "going away" is exactly a closed connection.
    let mut socket = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let body = json!({"content": "wait [mock:stall]"}).to_string();
    let request = format!(
        "POST /conv HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let stats = app.mock.wait_for_stats(Duration::from_secs(2), |s| s.active == 1).await;
    assert_eq!(stats.active, 1, "{stats:?}");
    drop(socket);
    upstream_cancelled(&app.mock, Duration::from_secs(1), "the upstream request is dropped").await;
}

#[tokio::test]
async fn a_client_that_leaves_while_heartbeats_flow_cancels_the_upstream() {
    let app = spawn_app_with(|s| {
        s.heartbeat = Duration::from_millis(50);
        s.detached_grace = Duration::ZERO;
    })
    .await;
    let response = app.post_conv(json!({"content": "wait [mock:stall]"})).await;
    assert_eq!(response.status(), 200, "after one heartbeat interval the stream opens");
    let mut body = response.bytes_stream();
    let mut first = body.next().await.unwrap().unwrap();
    if first.starts_with(b"retry:") && first.len() == "retry: 1000\n\n".len() {
        first = body.next().await.unwrap().unwrap();
    }
    assert!(first.ends_with(b": keep-alive\n\n"), "{first:?}");
    drop(body);
    upstream_cancelled(&app.mock, Duration::from_secs(1), "the upstream request is dropped").await;
}
