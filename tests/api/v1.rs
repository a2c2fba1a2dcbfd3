//! `/v1`: OpenAI's Chat Completions API, as an OpenAI client sees it (the official SDK
//! itself drives it in `v1_sdk.rs`).

use crate::helpers::*;
use futures::StreamExt;
use mockllm::Script;
use mockllm::wire::{self, Completion};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CLIENT_KEY: &str = "sk-client-v1-0001";

impl TestApp {
    /// `POST /v1/chat/completions` with `body`.
    pub async fn complete(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// A streamed completion that is expected to succeed: its events.
    pub async fn complete_streamed(&self, body: Value) -> Stream {
        let response = self.complete(body).await;
        assert_eq!(response.status(), 200, "body: {:?}", response.text().await);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        read_stream(response).await
    }
}

/// A streaming request for `content`, with `extra` fields.
fn streaming(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "mock-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        "stream": true,
    });
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    body
}

/// The `chat.completion.chunk` objects of a stream, in order (not `[DONE]`, not comments).
fn chunks_of(stream: &Stream) -> Vec<Value> {
    stream
        .events
        .iter()
        .filter(|e| e.comment.is_none() && e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).expect("every event is JSON"))
        .collect()
}

/// The `delta.content` of every chunk, joined.
fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn ends_with_done(stream: &Stream) -> bool {
    stream.events.last().is_some_and(|e| e.data == "[DONE]")
}

#[tokio::test]
async fn a_streamed_completion_is_openai_chunks_ending_in_done() {
    let app = spawn_app().await;
    let stream = app
        .complete_streamed(streaming("hello there [mock:words=5]", json!({})))
        .await;
    assert!(ends_with_done(&stream), "{:?}", stream.events);
    let chunks = chunks_of(&stream);
    assert_eq!(content(&chunks), echo("hello there", 5));

    let first = &chunks[0];
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id, "the same id in every chunk");
        assert_eq!(chunk["created"], first["created"]);
        assert_eq!(chunk["model"], "mock-model");
        assert!(chunk.get("usage").is_none(), "no usage unless asked for: {chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1, "{chunk}");
        assert_eq!(chunk["choices"][0]["index"], 0);
        assert_eq!(chunk["choices"][0]["logprobs"], Value::Null);
    }
    let (last, before) = chunks.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert!(before.iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert!(
        before[1..]
            .iter()
            .all(|c| c["choices"][0]["delta"].get("role").is_none()),
        "only the first chunk names the role"
    );
}

#[tokio::test]
async fn usage_comes_in_a_last_chunk_of_its_own_only_when_asked_for() {
    let app = spawn_app().await;
    let asked = json!({"stream_options": {"include_usage": true}});
    let stream = app.complete_streamed(streaming("count me [mock:words=3]", asked)).await;
    assert!(ends_with_done(&stream));
    let chunks = chunks_of(&stream);
    let (last, before) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let words = mockllm::word_chunks(&echo("count me", 3)).len();
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words})
    );
    for chunk in before {
        assert!(chunk.get("usage").is_some_and(Value::is_null), "usage is null: {chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }

    let not_asked = json!({"stream_options": {"include_usage": false}});
    let stream = app.complete_streamed(streaming("count me", not_asked)).await;
    let chunks = chunks_of(&stream);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"] != json!([]))
    );
    assert_eq!(content(&chunks), echo("count me", 0));
}

#[tokio::test]
async fn tool_calls_stream_with_stable_indexes_and_reassemble_to_the_upstream_arguments() {
    let app = spawn_app().await;
    let tools = json!({"tools": [
        {"type": "function", "function": {"name": "lookup_0", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "lookup_1", "parameters": {"type": "object"}}},
    ], "parallel_tool_calls": true});
    let stream = app
        .complete_streamed(streaming("weather in Zürich [mock:tool-calls=2]", tools))
        .await;
    assert!(ends_with_done(&stream));
    let chunks = chunks_of(&stream);
    let mut calls: Vec<(Value, Value, Value, String)> = Vec::new();
    for chunk in &chunks {
        let Some(pieces) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for piece in pieces {
            let index = piece["index"].as_u64().unwrap() as usize;
            let arguments = piece["function"]["arguments"].as_str().unwrap();
            if index == calls.len() {
                assert_eq!(piece["type"], "function", "{piece}");
                calls.push((
                    piece["id"].clone(),
                    piece["type"].clone(),
                    piece["function"]["name"].clone(),
                    arguments.to_owned(),
                ));
            } else {
                assert!(index < calls.len(), "indexes count up from 0: {piece}");
                assert!(
                    piece.get("id").is_none() && piece.get("type").is_none(),
                    "id and type only on a call's first piece: {piece}"
                );
                assert!(piece["function"].get("name").is_none(), "{piece}");
                calls[index].3.push_str(arguments);
            }
        }
    }
    let expected = mockllm::tool_calls("weather in Zürich", 2);
    assert_eq!(calls.len(), 2);
    for (call, expected) in calls.iter().zip(&expected) {
        assert_eq!(call.0, expected.id.as_str());
        assert_eq!(call.2, expected.name.as_str());
        assert_eq!(call.3, expected.arguments);
    }
    assert!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
            .count()
            > 4,
        "the arguments came in several pieces"
    );
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn reasoning_is_relayed_in_the_field_it_came_in() {
    let app = spawn_app().await;
    for (directive, field, other) in [
        ("", "reasoning_content", "reasoning"),
        ("[mock:reasoning-field=reasoning]", "reasoning", "reasoning_content"),
    ] {
        let prompt = format!("think first [mock:reasoning=3] {directive}");
        let stream = app.complete_streamed(streaming(&prompt, json!({}))).await;
        let chunks = chunks_of(&stream);
        let reasoning: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"][field].as_str())
            .collect();
        assert_eq!(reasoning, mockllm::reasoning(3).concat(), "in {field}");
        assert!(chunks.iter().all(|c| c["choices"][0]["delta"].get(other).is_none()));
        assert_eq!(content(&chunks), echo("think first", 0), "the answer stays apart");
    }
}

#[tokio::test]
async fn passed_through_params_reach_the_upstream_exactly_as_sent() {
    let app = spawn_app().await;
    let params = json!({
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "temperature": 0.25,
        "top_p": 0.5,
        "max_tokens": 77,
        "max_completion_tokens": 88,
        "stop": ["END", "\n\n"],
        "n": 1,
        "user": "user-42",
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
        "logit_bias": {"50256": -100},
        "logprobs": true,
        "top_logprobs": 2,
        "reasoning_effort": "low",
        "metadata": {"k": "v"},
    });
    let mut body = streaming("params", params.clone());
    body["store"] = json!(true);
    body["frobnicate"] = json!("yes");
    body["model"] = json!("some-other-model");
    let stream = app.complete_streamed(body).await;
    assert_eq!(chunks_of(&stream)[0]["model"], "some-other-model");
    let sent = &app.mock.requests()[0];
    for (name, value) in params.as_object().unwrap() {
        assert_eq!(&sent[name], value, "{name} passes through as sent");
    }
    assert!(
        sent.get("store").is_none() && sent.get("frobnicate").is_none(),
        "{sent}"
    );
    assert_eq!(sent["model"], "some-other-model");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "params"}])
    );
}

#[tokio::test]
async fn messages_of_every_role_reach_the_upstream_with_their_tool_fields() {
    let app = spawn_app().await;
    let messages = json!([
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "look it up"}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "user", "content": "and so?"},
    ]);
    let response = app.complete(json!({"messages": messages})).await;
    assert_eq!(response.status(), 200);
    let object: Value = response.json().await.unwrap();
    assert_eq!(object["model"], "mock-model", "no model: the default");
    assert_eq!(app.mock.requests()[0]["messages"], messages);
}

#[tokio::test]
async fn a_completion_that_is_not_streamed_is_one_chat_completion_object() {
    let app = spawn_app().await;
    let response = app
        .complete(json!({"model": "mock-model", "messages": [{"role": "user", "content": "whole [mock:words=4] [mock:reasoning=2]"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let object: Value = response.json().await.unwrap();
    assert!(object["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(object["object"], "chat.completion");
    assert_eq!(object["model"], "mock-model");
    let choice = &object["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], echo("whole", 4));
    assert_eq!(choice["message"]["reasoning_content"], mockllm::reasoning(2).concat());
    assert!(choice["message"].get("tool_calls").is_none());
    let usage = &object["usage"];
    assert_eq!(usage["prompt_tokens"], 10);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(10 + usage["completion_tokens"].as_u64().unwrap())
    );

    let response = app
        .complete(json!({"messages": [{"role": "user", "content": "call [mock:tool-calls=2]"}], "stream": false}))
        .await;
    let object: Value = response.json().await.unwrap();
    let message = &object["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    let expected = mockllm::tool_calls("call", 2);
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    for (call, expected) in calls.iter().zip(&expected) {
        assert_eq!(call["id"], expected.id.as_str());
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], expected.name.as_str());
        assert_eq!(call["function"]["arguments"], expected.arguments.as_str());
    }
    assert_eq!(object["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn finish_reasons_are_openais() {
    let app = spawn_app().await;
    let stream = app
        .complete_streamed(streaming("cut [mock:finish=length]", json!({})))
        .await;
    assert_eq!(
        chunks_of(&stream).last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

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
    openai_error(wrong_shape, 400).await;
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
    let stats = app
        .mock
        .wait_for_stats(Duration::from_secs(5), |s| s.cancelled == 1)
        .await;
    assert_eq!(stats.cancelled, 1, "the silent upstream is dropped: {stats:?}");
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
    let stats = app
        .mock
        .wait_for_stats(Duration::from_secs(5), |s| s.cancelled == 1)
        .await;
    assert_eq!((stats.cancelled, stats.completed), (1, 0), "{stats:?}");
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
    let stats = app
        .mock
        .wait_for_stats(Duration::from_secs(5), |s| s.cancelled == 1)
        .await;
    assert_eq!(stats.cancelled, 1, "{stats:?}");
}

#[tokio::test]
async fn nothing_is_stored() {
    let app = spawn_app().await;
    app.complete_streamed(streaming("remember nothing", json!({}))).await;
    let response = app
        .complete(json!({"messages": [{"role": "user", "content": "nor this"}]}))
        .await;
    assert_eq!(response.status(), 200);
    let (status, list) = app.get_json("/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"], json!([]));
    assert_eq!(app.generations.live(), 0);
}

#[tokio::test]
async fn models_lists_the_models_clients_may_name() {
    let app = spawn_app().await;
    let (status, list) = app.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], "mock-model");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "chatgate");
    assert!(data[0]["created"].is_u64());
}
