//! `POST /v1/messages`: Anthropic's Messages API. A request is checked as the real API
//! checks it (its headers, `max_tokens`, roles, no field it does not know), then answered
//! by the same directives as the OpenAI side, in Anthropic's streaming events or, when
//! `stream` is not true, as one message object.

use crate::answer::{self, Part, Script, word_chunks};
use crate::anthropic_wire::{self, Message, error_body, event};
use crate::directives::{self, Directives};
use serde_json::{Value, json};

/// The request fields the API accepts; any other is refused, as the real API refuses it.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stream",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "thinking",
    "service_tier",
];

/// Input tokens the mock reports for every request.
const INPUT_TOKENS: u64 = 10;

/// The refusal the real API would give this request, if any.
pub fn refusal(api_key: Option<&str>, version: Option<&str>, body: &Value) -> Option<Script> {
    if api_key.is_none_or(str::is_empty) {
        return Some(Script::refuse(
            401,
            error_body("authentication_error", "x-api-key header is required"),
        ));
    }
    if version.is_none_or(str::is_empty) {
        return invalid("anthropic-version: header is required");
    }
    let Some(fields) = body.as_object() else {
        return invalid("Input should be a valid dictionary");
    };
    if let Some(extra) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return invalid(&format!("{extra}: Extra inputs are not permitted"));
    }
    if !body["model"].is_string() {
        return invalid("model: Field required");
    }
    match &body["max_tokens"] {
        Value::Null => return invalid("max_tokens: Field required"),
        n if n.as_u64().is_none_or(|n| n == 0) => {
            return invalid("max_tokens: Input should be a valid positive integer");
        }
        _ => {}
    }
    let Some(messages) = body["messages"].as_array() else {
        return invalid("messages: Field required");
    };
    for (i, message) in messages.iter().enumerate() {
        if !matches!(message["role"].as_str(), Some("user" | "assistant")) {
            return invalid(&format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
        }
        let empty = match &message["content"] {
            Value::String(s) => s.is_empty(),
            Value::Array(blocks) => blocks.is_empty() || blocks.iter().any(|b| !b["type"].is_string()),
            _ => true,
        };
        if empty && i + 1 < messages.len() {
            return invalid(&format!(
                "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            ));
        }
    }
    match &body["system"] {
        Value::Null | Value::String(_) => {}
        Value::Array(blocks) if blocks.iter().all(|b| b["type"] == "text" && b["text"].is_string()) => {}
        _ => return invalid("system: Input should be a valid string"),
    }
    if let Some(thinking) = body.get("thinking") {
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(0);
        match (thinking["type"].as_str(), thinking["budget_tokens"].as_u64()) {
            (Some("disabled"), _) => {}
            (Some("enabled"), Some(budget)) if (1024..max_tokens).contains(&budget) => {}
            (Some("enabled"), _) => {
                return invalid(
                    "thinking.enabled.budget_tokens: Input should be at least 1024 and less than max_tokens",
                );
            }
            _ => return invalid("thinking: Input tag does not match 'enabled' or 'disabled'"),
        }
    }
    if let Some(tools) = body.get("tools") {
        let well_formed = |t: &Value| t["name"].is_string() && t["input_schema"].is_object();
        if !tools.as_array().is_some_and(|t| t.iter().all(well_formed)) {
            return invalid("tools: each tool needs a name and an input_schema");
        }
    }
    None
}

fn invalid(message: &str) -> Option<Script> {
    Some(Script::refuse(400, error_body("invalid_request_error", message)))
}

/// The script for a request that no test scripted: follow the directives in the last user
/// message, else echo it.
pub fn plan(request: &Value, n: u64) -> Script {
    let model = request["model"].as_str().unwrap_or("mock-model");
    let (text, d) = directives::parse(&last_user_text(request));
    if let Some(status) = d.status {
        let mut script = Script::refuse(status, anthropic_wire::error_for_status(status));
        if let Some(secs) = d.retry_after {
            script = script.with_header("retry-after", &secs.to_string());
        }
        return script;
    }
    let answer = Answer {
        text: answer::echo(&text, &d),
        thinking: (d.thinking || request["thinking"]["type"] == "enabled").then(|| format!("Thinking about: {text}")),
        tool: d
            .tool
            .then(|| request["tools"][0]["name"].as_str().unwrap_or("mock_tool").to_owned()),
    };
    let message = Message::new(model, n);
    if request["stream"] == true {
        stream(&answer, &message, &d)
    } else {
        Script::json(200, answer.object(&message).to_string())
    }
}

/// The text of the last user message: its string, or its text blocks and tool results.
fn last_user_text(request: &Value) -> String {
    let Some(message) = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str(),
                Some("tool_result") => b["content"].as_str(),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What the mock answers.
struct Answer {
    text: String,
    thinking: Option<String>,
    /// The name of the tool it calls.
    tool: Option<String>,
}

impl Answer {
    fn tool_id(message: &Message) -> String {
        format!("toolu_{}", message.id)
    }

    fn tool_input(&self) -> Value {
        json!({"text": self.text})
    }

    fn stop_reason(&self) -> &'static str {
        if self.tool.is_some() { "tool_use" } else { "end_turn" }
    }

    fn object(&self, message: &Message) -> Value {
        let mut content = Vec::new();
        if let Some(thinking) = &self.thinking {
            content.push(json!({"type": "thinking", "thinking": thinking, "signature": "mock-signature"}));
        }
        content.push(json!({"type": "text", "text": self.text}));
        if let Some(name) = &self.tool {
            content.push(json!({
                "type": "tool_use",
                "id": Self::tool_id(message),
                "name": name,
                "input": self.tool_input(),
            }));
        }
        let usage = json!({"input_tokens": INPUT_TOKENS, "output_tokens": word_chunks(&self.text).len()});
        message.object(Value::Array(content), Some(self.stop_reason()), usage)
    }
}

fn stream(answer: &Answer, m: &Message, d: &Directives) -> Script {
    let mut parts = vec![Part::new(d.first_delay_ms, m.start(INPUT_TOKENS))];
    if d.stall {
        return Script {
            parts,
            ..Script::stream(Vec::<String>::new())
        }
        .then_stall();
    }
    parts.push(Part::new(0, m.ping()));
    if d.unknown_event {
        let data = json!({"type": "mock_unknown", "detail": "an event type the client has never seen"});
        parts.push(Part::new(0, event("mock_unknown", &data)));
    }
    let mut output_tokens = 0;
    let mut index = 0;
    if let Some(thinking) = &answer.thinking {
        parts.push(Part::new(0, m.thinking_start(index)));
        for chunk in word_chunks(thinking) {
            parts.push(Part::new(d.delay_ms, m.thinking_delta(index, chunk)));
            output_tokens += 1;
        }
        parts.push(Part::new(0, m.signature_delta(index, "mock-signature")));
        parts.push(Part::new(0, m.block_stop(index)));
        index += 1;
    }
    let chunks = word_chunks(&answer.text);
    let fails = d.overloaded || d.error_after.is_some();
    let sent = match (d.error_after, d.overloaded) {
        (Some(n), _) => n.min(chunks.len()),
        (None, true) => 0,
        (None, false) => chunks.len(),
    };
    if sent > 0 || !fails {
        parts.push(Part::new(0, m.text_start(index)));
    }
    for (i, chunk) in chunks.iter().take(sent).enumerate() {
        parts.push(Part::new(
            if i == 0 { 0 } else { d.delay_ms },
            m.text_delta(index, chunk),
        ));
        output_tokens += 1;
    }
    if fails {
        let error = match d.overloaded {
            true => anthropic_wire::error_event("overloaded_error", "Overloaded"),
            false => anthropic_wire::error_event("api_error", "Internal server error"),
        };
        parts.push(Part::new(d.delay_ms, error));
        return Script {
            parts,
            ..Script::stream(Vec::<String>::new())
        };
    }
    parts.push(Part::new(0, m.block_stop(index)));
    if let Some(name) = &answer.tool {
        index += 1;
        parts.push(Part::new(0, m.tool_use_start(index, &Answer::tool_id(m), name)));
        let input = answer.tool_input().to_string();
        let half = input
            .char_indices()
            .nth(input.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        for piece in [&input[..half], &input[half..]] {
            parts.push(Part::new(d.delay_ms, m.input_json_delta(index, piece)));
        }
        parts.push(Part::new(0, m.block_stop(index)));
        output_tokens += 2;
    }
    parts.push(Part::new(0, m.delta(answer.stop_reason(), output_tokens)));
    if !d.no_stop {
        parts.push(Part::new(0, m.stop()));
    }
    Script {
        parts,
        ..Script::stream(Vec::<String>::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content: &str) -> Value {
        json!({
            "model": "claude-mock",
            "max_tokens": 100,
            "stream": true,
            "messages": [{"role": "user", "content": content}],
        })
    }

    /// The events a script sends, as (name, data) pairs.
    fn events(script: &Script) -> Vec<(String, Value)> {
        let body: String = script
            .parts
            .iter()
            .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
            .collect();
        body.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("two lines");
                let name = name.strip_prefix("event: ").expect("a named event");
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data")).unwrap();
                assert_eq!(data["type"], name, "the data repeats the event's name");
                (name.to_owned(), data)
            })
            .collect()
    }

    fn names(script: &Script) -> Vec<String> {
        events(script).into_iter().map(|(n, _)| n).collect()
    }

    fn text_of(script: &Script, delta: &str, field: &str) -> String {
        events(script)
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == delta)
            .map(|(_, d)| d["delta"][field].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_request_without_max_tokens_or_headers_is_refused_as_the_api_refuses_it() {
        let mut body = request("hi");
        assert!(refusal(Some("k"), Some("2023-06-01"), &body).is_none());
        let status = |s: Option<Script>| s.map(|s| s.status);
        assert_eq!(status(refusal(None, Some("2023-06-01"), &body)), Some(401));
        assert_eq!(status(refusal(Some("k"), None, &body)), Some(400));
        body.as_object_mut().unwrap().remove("max_tokens");
        let refused = refusal(Some("k"), Some("2023-06-01"), &body).expect("refused");
        let error: Value = serde_json::from_slice(&refused.parts[0].bytes).unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"].as_str().unwrap().contains("max_tokens"));
        let mut system_role = request("hi");
        system_role["messages"] = json!([{"role": "system", "content": "be brief"}]);
        assert_eq!(status(refusal(Some("k"), Some("v"), &system_role)), Some(400));
        let mut thinking = request("hi");
        thinking["max_tokens"] = json!(2000);
        thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
        assert!(refusal(Some("k"), Some("v"), &thinking).is_none());
        thinking["thinking"]["budget_tokens"] = json!(2000);
        assert_eq!(status(refusal(Some("k"), Some("v"), &thinking)), Some(400));
        let mut extra = request("hi");
        extra["stream_options"] = json!({"include_usage": true});
        assert_eq!(status(refusal(Some("k"), Some("v"), &extra)), Some(400));
    }

    #[test]
    fn a_streamed_answer_follows_the_event_flow_of_the_reference() {
        let script = plan(&request("hello there"), 1);
        assert_eq!(
            names(&script),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(text_of(&script, "text_delta", "text"), "Echo: hello there");
        let events = events(&script);
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], INPUT_TOKENS);
        assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(events[7].1["usage"]["output_tokens"], 3);
    }

    #[test]
    fn thinking_and_a_tool_call_come_as_blocks_of_their_own() {
        let mut body = request("weather [mock:thinking] [mock:tool]");
        body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let script = plan(&body, 1);
        assert_eq!(
            text_of(&script, "thinking_delta", "thinking"),
            "Thinking about: weather"
        );
        assert_eq!(text_of(&script, "signature_delta", "signature"), "mock-signature");
        assert_eq!(text_of(&script, "text_delta", "text"), "Echo: weather");
        let input: Value = serde_json::from_str(&text_of(&script, "input_json_delta", "partial_json")).unwrap();
        assert_eq!(input, json!({"text": "Echo: weather"}));
        let events = events(&script);
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        let kinds: Vec<_> = starts
            .iter()
            .map(|s| s["content_block"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["thinking", "text", "tool_use"]);
        assert_eq!(starts[2]["index"], 2);
        assert_eq!(starts[2]["content_block"]["name"], "get_weather");
        let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn overloaded_no_stop_and_unknown_events_on_request() {
        let overloaded = plan(&request("hi [mock:anthropic-overloaded]"), 1);
        assert_eq!(names(&overloaded), ["message_start", "ping", "error"]);
        let error = &events(&overloaded)[2].1;
        assert_eq!(
            error["error"],
            json!({"type": "overloaded_error", "message": "Overloaded"})
        );
        let late = plan(&request("a b c [mock:anthropic-overloaded] [mock:error-after=2]"), 1);
        assert_eq!(text_of(&late, "text_delta", "text"), "Echo: a");
        assert_eq!(names(&late).last().unwrap(), "error");
        let cut = names(&plan(&request("hi [mock:no-stop]"), 1));
        assert_eq!(cut.last().unwrap(), "message_delta");
        assert!(names(&plan(&request("hi [mock:unknown-event]"), 1)).contains(&"mock_unknown".to_owned()));
    }

    #[test]
    fn a_request_not_streamed_gets_the_message_object_and_a_status_its_error_shape() {
        let mut body = request("hello");
        body["stream"] = json!(false);
        let script = plan(&body, 7);
        assert_eq!(script.status, 200);
        let message: Value = serde_json::from_slice(&script.parts[0].bytes).unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(message["id"], "msg_mock00000007");
        assert_eq!(message["content"], json!([{"type": "text", "text": "Echo: hello"}]));
        assert_eq!(message["stop_reason"], "end_turn");
        let refused = plan(&request("hi [mock:status=529]"), 1);
        assert_eq!(refused.status, 529);
        let error: Value = serde_json::from_slice(&refused.parts[0].bytes).unwrap();
        assert_eq!(error["error"]["type"], "overloaded_error");
    }
}
