//! `/v1`: OpenAI's Chat Completions API, as an OpenAI client sees it: the shapes of what
//! it gets and what reaches the upstream (errors, limits and cancellation in `v1_errors.rs`;
//! the official SDKs themselves drive it in `v1_sdk.rs`).

use crate::helpers::*;
use serde_json::{Value, json};

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
pub fn streaming(content: &str, extra: Value) -> Value {
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
pub fn chunks_of(stream: &Stream) -> Vec<Value> {
    stream
        .events
        .iter()
        .filter(|e| e.comment.is_none() && e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).expect("every event is JSON"))
        .collect()
}

/// The `delta.content` of every chunk, joined.
pub fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

pub fn ends_with_done(stream: &Stream) -> bool {
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

#[tokio::test]
async fn an_anthropic_upstream_streams_as_openai_chunks_with_its_thinking_and_tool_call() {
    let app = crate::anthropic::spawn_anthropic_app().await;
    let tools = json!({
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "stream_options": {"include_usage": true},
    });
    let mut body = streaming("weather in Paris [mock:thinking] [mock:tool]", tools);
    body["model"] = json!("claude-mock");
    let stream = app.complete_streamed(body).await;
    assert!(ends_with_done(&stream));
    let chunks = chunks_of(&stream);
    assert!(chunks.iter().all(|c| c["model"] == "claude-mock"));
    assert_eq!(content(&chunks), "Echo: weather in Paris");
    let thinking: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert!(!thinking.is_empty(), "thinking comes as reasoning_content");
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(
        pieces.iter().all(|p| p["index"] == 0),
        "the one call is index 0: {pieces:?}"
    );
    assert_eq!(pieces[0]["function"]["name"], "lookup");
    assert!(pieces[0]["id"].as_str().unwrap().starts_with("toolu_"));
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).expect("the arguments are JSON");
    assert_eq!(arguments, json!({"text": "Echo: weather in Paris"}));
    let (usage, rest) = chunks.split_last().unwrap();
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{usage}");

    let refused = app
        .complete(streaming("hi [mock:status=429] [mock:retry-after=30]", json!({})))
        .await;
    assert_eq!(refused.status(), 429, "Anthropic's 429 stays a 429 on /v1");
}
