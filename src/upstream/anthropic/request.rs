//! A chat request in OpenAI's shape, as the Anthropic Messages API asks for it: system
//! messages become `system`, tool calls `tool_use` blocks, tool answers `tool_result`
//! blocks of a user turn, OpenAI tools Anthropic tools, and `max_tokens` is always set. Only
//! fields the API knows are sent: it refuses any other.

use super::super::{ChatMessage, ChatRequest};
use serde_json::{Map, Value, json};

/// `max_tokens` when the client sets none: the API requires one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The streamed request's body.
pub fn body(request: &ChatRequest) -> Value {
    let params = &request.params;
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    let (system, messages) = messages(&request.messages);
    if !system.is_empty() {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    // A client that knows Anthropic may ask for thinking in its own terms; its budget is
    // part of `max_tokens`, so the default leaves room for an answer after it.
    let thinking = params.get("thinking").filter(|t| t.is_object());
    let budget = thinking.and_then(|t| t["budget_tokens"].as_u64()).unwrap_or(0);
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_u64))
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_TOKENS.saturating_add(budget));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("stream".into(), json!(true));
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(n) = params.get(key).filter(|v| v.is_number()) {
            body.insert(key.into(), n.clone());
        }
    }
    let stop: Vec<&str> = match params.get("stop") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(all)) => all.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !stop.is_empty() {
        body.insert("stop_sequences".into(), json!(stop));
    }
    let tools: Vec<Value> = params
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| tools.iter().filter_map(tool).collect())
        .unwrap_or_default();
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = params.get("tool_choice").and_then(tool_choice) {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(user) = params.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(thinking) = thinking {
        body.insert("thinking".into(), thinking.clone());
    }
    Value::Object(body)
}

/// The system text, and the turns: consecutive messages of one role become one turn (tool
/// answers after a tool call are one user turn, as the API asks).
fn messages(messages: &[ChatMessage]) -> (String, Vec<Value>) {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message.role.as_str() {
            "system" | "developer" => {
                let text = message.text();
                if !text.is_empty() {
                    system.push(text.into_owned());
                }
                continue;
            }
            "assistant" => ("assistant", assistant_blocks(message)),
            "tool" => ("user", vec![tool_result(message)]),
            _ => ("user", user_blocks(&message.content)),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, held)) if *last == role => held.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            let content = match blocks.as_mut_slice() {
                [only] if only["type"] == "text" => only["text"].take(),
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    (system.join("\n\n"), turns)
}

fn text_block(text: &str) -> Option<Value> {
    // The API refuses empty text blocks.
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// A user message's content: its text, images where they are simple to carry over.
fn user_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => text_block(text).into_iter().collect(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part["type"].as_str() {
                Some("image_url") => {
                    let url = &part["image_url"];
                    image(url["url"].as_str().or(url.as_str()).unwrap_or(""))
                }
                _ => part["text"].as_str().and_then(text_block),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An OpenAI image URL (`data:` or `http(s):`) as an image block.
fn image(url: &str) -> Option<Value> {
    if let Some(inline) = url.strip_prefix("data:") {
        let (media_type, data) = inline.split_once(";base64,")?;
        return Some(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    (url.starts_with("https://") || url.starts_with("http://"))
        .then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// An assistant message's text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(message: &ChatMessage) -> Vec<Value> {
    let mut blocks: Vec<Value> = text_block(&message.text()).into_iter().collect();
    let calls = message.extra.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let function = &call["function"];
        // Arguments are a JSON string in OpenAI's shape, an object in Anthropic's.
        let input = function["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        blocks.push(json!({
            "type": "tool_use",
            "id": call["id"].as_str().unwrap_or(""),
            "name": function["name"].as_str().unwrap_or(""),
            "input": input,
        }));
    }
    blocks
}

/// A `role: "tool"` message as the `tool_result` block of a user turn.
fn tool_result(message: &ChatMessage) -> Value {
    json!({
        "type": "tool_result",
        "tool_use_id": message.extra.get("tool_call_id").and_then(Value::as_str).unwrap_or(""),
        "content": message.text(),
    })
}

/// An OpenAI function tool as an Anthropic tool.
fn tool(tool: &Value) -> Option<Value> {
    let function = tool.get("function").unwrap_or(tool);
    let name = function["name"].as_str()?;
    let mut out = json!({
        "name": name,
        "input_schema": function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let Some(description) = function["description"].as_str() {
        out["description"] = json!(description);
    }
    Some(out)
}

fn tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        _ => {
            let name = choice["function"]["name"].as_str()?;
            Some(json!({"type": "tool", "name": name}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: Value) -> ChatMessage {
        serde_json::from_value(value).expect("a message")
    }

    fn request(messages: Vec<ChatMessage>, params: Value) -> ChatRequest {
        ChatRequest {
            model: "claude-x".into(),
            messages,
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn system_messages_become_system_and_max_tokens_is_always_sent() {
        let body = body(&request(
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("developer", "Be kind."),
                ChatMessage::new("user", "hi"),
            ],
            json!({}),
        ));
        assert_eq!(body["system"], "Be brief.\n\nBe kind.");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], "claude-x");
        let without_system = super::body(&request(vec![ChatMessage::new("user", "hi")], json!({})));
        assert!(without_system.get("system").is_none());
    }

    #[test]
    fn known_params_are_carried_over_and_others_are_not() {
        let body = body(&request(
            vec![ChatMessage::new("user", "hi")],
            json!({
                "max_completion_tokens": 77, "temperature": 0.2, "top_p": 0.9, "stop": "END",
                "user": "u-1", "response_format": {"type": "json_object"}, "n": 1,
                "stream_options": {"include_usage": true}, "frequency_penalty": 0.5,
            }),
        ));
        assert_eq!(body["max_tokens"], 77);
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["metadata"], json!({"user_id": "u-1"}));
        for absent in ["response_format", "n", "stream_options", "frequency_penalty", "stop"] {
            assert!(body.get(absent).is_none(), "{absent}");
        }
        let list = super::body(&request(
            vec![ChatMessage::new("user", "hi")],
            json!({"max_tokens": 5, "max_completion_tokens": 9, "stop": ["a", "b"]}),
        ));
        assert_eq!(
            (list["max_tokens"].clone(), list["stop_sequences"].clone()),
            (json!(5), json!(["a", "b"]))
        );
        let thinking = super::body(&request(
            vec![ChatMessage::new("user", "hi")],
            json!({"thinking": {"type": "enabled", "budget_tokens": 2000}}),
        ));
        assert_eq!(thinking["thinking"]["budget_tokens"], 2000);
        assert_eq!(
            thinking["max_tokens"],
            DEFAULT_MAX_TOKENS + 2000,
            "room for the answer after the thinking"
        );
    }

    #[test]
    fn tools_tool_calls_and_tool_answers_take_anthropics_shapes() {
        let messages = vec![
            ChatMessage::new("user", "weather in Paris and Rome?"),
            message(json!({
                "role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}},
                ],
            })),
            message(json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})),
            message(json!({"role": "tool", "tool_call_id": "call_2", "content": "rainy"})),
        ];
        let params = json!({
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }}],
            "tool_choice": "required",
        });
        let body = body(&request(messages, params));
        assert_eq!(
            body["tools"],
            json!([{"name": "get_weather", "description": "Weather by city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
        );
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        let turns = body["messages"].as_array().unwrap();
        assert_eq!(turns.len(), 3, "{turns:?}");
        assert_eq!(
            turns[1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
            ]})
        );
        assert_eq!(
            turns[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "rainy"},
            ]})
        );
    }

    #[test]
    fn content_parts_become_text_and_image_blocks() {
        let user = message(json!({"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": {"url": "ftp://nope"}},
            {"type": "input_audio", "input_audio": {}},
            {"type": "text", "text": ""},
        ]}));
        let body = body(&request(vec![user, ChatMessage::new("assistant", "")], json!({})));
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]}]),
            "an empty message is left out"
        );
    }
}
