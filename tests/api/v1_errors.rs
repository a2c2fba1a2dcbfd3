//! `/v1` when things go wrong, as an OpenAI client sees it: error bodies and statuses before
//! the first token, in-band errors after it, timeouts, the size cap, keys, limits, and a
//! client that goes away cancelling the upstream.

use crate::helpers::*;
use crate::v1::{chunks_of, content, ends_with_done, streaming};
use futures::StreamExt;
use mockllm::Script;
use mockllm::wire::{self, Completion};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CLIENT_KEY: &str = "sk-client-v1-0001";

/// Asserts OpenAI's error body and status; returns the error object.
async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    let error = body["error"].clone();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    error
}

#[tokio::test]
async fn n_other_than_one_is_refused_before_the_upstream() {
    let app = spawn_app().await;
    let error = openai_error(app.complete(streaming("two please", json!({"n": 2}))).await, 400).await;
    assert_eq!(error["param"], "n");
    assert_eq!(error["type"], "invalid_request_error");
    assert!(app.mock.requests().is_empty());
}

#[tokio::test]
async fn bad_requests_get_openai_error_bodies() {
    let app = spawn_app().await;
    let error = openai_error(app.complete(json!({"model": "m"})).await, 400).await;
    assert_eq!(error["param"], "messages");
    let error = openai_error(app.complete(json!({"messages": []})).await, 400).await;
    assert_eq!(error["param"], "messages");
    let error = openai_error(
        app.complete(json!({"messages": [{"role": "wizard", "content": "x"}]}))
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "messages.[0].role");
    let malformed = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    openai_error(malformed, 400).await;
    let wrong_shape = app.complete(json!({"messages": "hello"})).await;
    assert_eq!(openai_error(wrong_shape, 400).await["param"], "messages");
    let wrong_type = app
        .complete(json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}))
        .await;
    let error = openai_error(wrong_type, 400).await;
    assert_eq!(error["param"], "stream");
    assert!(
        error["message"].as_str().unwrap().starts_with("stream: invalid type"),
        "{error}"
    );
    let array = app.complete(json!([{"role": "user", "content": "x"}])).await;
    let error = openai_error(array, 400).await;
    assert_eq!(error["param"], Value::Null);
    assert_eq!(error["message"], "the request body must be a JSON object, not an array");
    let huge = "x".repeat(2 << 20);
    openai_error(app.complete(streaming(&huge, json!({}))).await, 413).await;
    assert!(app.mock.requests().is_empty());

    let unknown = app.client.post(app.url("/v1/completions")).send().await.unwrap();
    assert_eq!(openai_error(unknown, 404).await["code"], "not_found");
    let wrong_method = app.client.get(app.url("/v1/chat/completions")).send().await.unwrap();
    openai_error(wrong_method, 405).await;
}

#[tokio::test]
async fn an_upstream_4xx_keeps_its_status_and_message_and_a_5xx_is_a_502() {
    let app = spawn_app().await;
    let error = openai_error(app.complete(streaming("bad [mock:status=400]", json!({}))).await, 400).await;
    assert_eq!(error["message"], "The request was refused by the mock.");
    assert_eq!(error["type"], "invalid_request_error");

    // A wait longer than any retry budget: the refusal reaches the client at once.
    let response = app
        .complete(streaming(
            "slow down [mock:status=429] [mock:retry-after=30]",
            json!({}),
        ))
        .await;
    assert_eq!(response.headers()["retry-after"], "30");
    let error = openai_error(response, 429).await;
    assert_eq!(
        error["message"],
        "Rate limit reached for requests. Please try again later."
    );
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "rate_limit_exceeded");

    let not_streamed = app
        .complete(json!({"messages": [{"role": "user", "content": "[mock:status=400]"}]}))
        .await;
    openai_error(not_streamed, 400).await;

    let error = openai_error(
        app.complete(streaming("broken [mock:status=503]", json!({}))).await,
        502,
    )
    .await;
    assert_eq!(error["type"], "upstream_error");
}

#[tokio::test]
async fn an_error_after_the_first_token_is_an_error_event_and_no_done() {
    let app = spawn_app().await;
    let stream = app
        .complete_streamed(streaming("partial [mock:words=5] [mock:error-after=2]", json!({})))
        .await;
    assert!(!ends_with_done(&stream), "{:?}", stream.events);
    let chunks = chunks_of(&stream);
    let (last, before) = chunks.split_last().unwrap();
    let words = mockllm::word_chunks(&echo("partial", 5))[..2].concat();
    assert_eq!(content(before), words);
    let error = &last["error"];
    assert!(error["message"].as_str().unwrap().contains("crashed"), "{last}");
    assert_eq!(error["code"], "server_error");
    assert!(error.get("type").is_some() && error.get("param").is_some(), "{last}");
    assert!(last.get("choices").is_none());
}

#[tokio::test]
async fn an_upstream_silent_before_the_first_token_is_a_504() {
    let app = spawn_app_with(|s| s.upstream_idle_timeout = Duration::from_millis(300)).await;
    let error = openai_error(app.complete(streaming("wait [mock:stall]", json!({}))).await, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_quiet_upstream_gets_the_stream_opened_after_a_heartbeat_and_errors_come_in_band() {
    let app = spawn_app_with(|s| {
        s.heartbeat = Duration::from_millis(100);
        s.upstream_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let response = app.complete(streaming("wait [mock:stall]", json!({}))).await;
    assert_eq!(response.status(), 200, "the stream opens before the first token");
    let stream = read_stream(response).await;
    let first = &stream.events[0];
    let first: Value = serde_json::from_str(&first.data).expect("the role chunk comes first");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(stream.events.iter().any(|e| e.comment.as_deref() == Some("keep-alive")));
    let chunks = chunks_of(&stream);
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_timeout");
    assert!(!ends_with_done(&stream));
}

#[tokio::test]
async fn an_upstream_silent_after_the_first_token_ends_the_stream_with_an_error_event() {
    let app = spawn_app_with(|s| s.upstream_idle_timeout = Duration::from_millis(300)).await;
    let c = Completion::new("mock-model", 1);
    app.mock
        .enqueue(Script::stream(vec![c.role(), c.content("partial")]).then_stall());
    let stream = app.complete_streamed(streaming("x", json!({}))).await;
    assert!(!ends_with_done(&stream));
    let chunks = chunks_of(&stream);
    assert_eq!(content(&chunks), "partial");
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_timeout");
    upstream_cancelled(&app.mock, Duration::from_secs(5), "the silent upstream is dropped").await;
}

#[tokio::test]
async fn the_upstream_key_never_reaches_a_v1_client_and_nothing_follows_the_finish() {
    let app = spawn_app().await;
    let c = Completion::new("mock-model", 1);
    let (head, tail) = KEY.split_at(10);
    app.mock.enqueue(Script::stream(vec![
        c.role(),
        c.content(&format!("a {head}")),
        c.content(&format!("{tail} b")),
        // What may be the start of the key is held back past the finish, then released.
        c.content(" end sk-"),
        c.content("te"),
        c.finish("stop"),
        c.usage(1, 2),
        wire::DONE.to_owned(),
    ]));
    let stream = app.complete_streamed(streaming("x", json!({}))).await;
    let chunks = chunks_of(&stream);
    assert_eq!(content(&chunks), "a [redacted] b end sk-te");
    let finish = chunks
        .iter()
        .position(|c| !c["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(finish, chunks.len() - 1, "the finish chunk is the last");
    assert!(
        stream
            .events
            .iter()
            .all(|e| !e.data.contains(KEY) && !e.data.contains(tail))
    );
}

#[tokio::test]
async fn an_answer_that_reaches_the_size_limit_is_cut_there_and_ends_in_error() {
    let app = spawn_app_with(|s| s.max_answer_bytes = 20).await;
    let stream = app
        .complete_streamed(streaming("a long one [mock:words=50] [mock:delay=1]", json!({})))
        .await;
    assert!(!ends_with_done(&stream));
    let chunks = chunks_of(&stream);
    assert_eq!(content(&chunks), echo("a long one", 50)[..20]);
    assert_eq!(chunks.last().unwrap()["error"]["code"], "answer_too_large");
    let stats = app.mock.wait_for_stats(Duration::from_secs(5), |s| s.active == 0).await;
    assert_eq!(stats.completed, 0, "the upstream was cut off: {stats:?}");
}

#[tokio::test]
async fn v1_needs_a_client_key_like_every_route() {
    let app = spawn_app_with(|s| s.api_keys = Some(format!("tester:{CLIENT_KEY}"))).await;
    let error = openai_error(app.complete(streaming("hi", json!({}))).await, 401).await;
    assert_eq!(error["type"], "authentication_error");
    assert_eq!(error["code"], "invalid_api_key");
    assert_eq!(error["param"], Value::Null);
    let wrong = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth("sk-wrong")
        .json(&streaming("hi", json!({})))
        .send()
        .await
        .unwrap();
    openai_error(wrong, 401).await;
    let models = app.client.get(app.url("/v1/models")).send().await.unwrap();
    openai_error(models, 401).await;
    assert!(app.mock.requests().is_empty());

    let right = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&streaming("hi", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(content(&chunks_of(&read_stream(right).await)), echo("hi", 0));
    assert_eq!(
        app.mock.authorizations()[0].as_deref(),
        Some(format!("Bearer {KEY}").as_str()),
        "the upstream gets the gateway's key, not the client's"
    );
}

#[tokio::test]
async fn v1_counts_against_the_clients_limits() {
    let app = spawn_app_with(|s| s.limits.turns_per_minute = Some(1)).await;
    app.complete_streamed(streaming("one", json!({}))).await;
    let refused = app.complete(streaming("two", json!({}))).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(openai_error(refused, 429).await["type"], "rate_limit_error");
    assert_eq!(app.mock.requests().len(), 1);

    let app = spawn_app_with(|s| s.limits.streams = Some(1)).await;
    let long = app
        .complete(streaming("long [mock:words=400] [mock:delay=20]", json!({})))
        .await;
    assert_eq!(long.status(), 200);
    let refused = app.complete(streaming("meanwhile", json!({}))).await;
    assert_eq!(openai_error(refused, 429).await["code"], "too_many_streams");
    drop(long);
    app.mock.wait_for_stats(Duration::from_secs(5), |s| s.active == 0).await;
    let mut freed = None;
    for _ in 0..100 {
        let response = app.complete(streaming("after", json!({}))).await;
        if response.status() == 200 {
            freed = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let freed = freed.expect("the slot is given back when the stream ends");
    assert_eq!(content(&chunks_of(&read_stream(freed).await)), echo("after", 0));
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream() {
    let app = spawn_app().await;
    let response = app
        .complete(streaming("long story [mock:words=500] [mock:delay=30]", json!({})))
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\n\n").count() < 3 {
        seen.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    drop(body);
    let stats = upstream_cancelled(&app.mock, Duration::from_secs(5), "the upstream request is dropped").await;
    assert_eq!(stats.completed, 0, "{stats:?}");
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_first_token_cancels_the_upstream() {
    let app = spawn_app().await;
    let mut socket = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let body = streaming("wait [mock:stall]", json!({})).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let stats = app.mock.wait_for_stats(Duration::from_secs(5), |s| s.active == 1).await;
    assert_eq!(stats.active, 1, "{stats:?}");
    drop(socket);
    upstream_cancelled(&app.mock, Duration::from_secs(5), "the upstream request is dropped").await;
}
