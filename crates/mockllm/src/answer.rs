//! What the mock sends back for one request: a [`Script`] of status, headers and timed parts.

use crate::directives::{self, Directives};
use crate::wire::{self, Completion};
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One timed piece of a response body.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    /// Sleep this long before sending the bytes.
    #[serde(default)]
    pub delay_ms: u64,
    /// The bytes; over HTTP they are given as text, in `text`.
    #[serde(rename = "text", deserialize_with = "text_bytes")]
    pub bytes: Bytes,
}

impl Part {
    pub(crate) fn new(delay_ms: u64, bytes: impl Into<Bytes>) -> Self {
        Self {
            delay_ms,
            bytes: bytes.into(),
        }
    }
}

fn text_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    String::deserialize(d).map(Bytes::from)
}

/// The exact response for one request.
#[derive(Debug, Clone, Deserialize)]
pub struct Script {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub parts: Vec<Part>,
    /// After the parts, keep the connection open and send nothing.
    #[serde(default)]
    pub stall: bool,
    /// After the parts, send this part again and again until the client goes away.
    #[serde(default)]
    pub repeat: Option<Part>,
}

fn ok() -> u16 {
    200
}

impl Script {
    /// A 200 `text/event-stream` response that sends `parts` back to back.
    pub fn stream<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream; charset=utf-8".into())],
            parts: parts.into_iter().map(|p| Part::new(0, p.into())).collect(),
            stall: false,
            repeat: None,
        }
    }

    /// Like [`Script::stream`], with raw byte parts (which may split a character).
    pub fn stream_bytes(parts: Vec<Vec<u8>>) -> Self {
        Self {
            parts: parts.into_iter().map(|p| Part::new(0, p)).collect(),
            ..Self::stream(Vec::<String>::new())
        }
    }

    /// A refusal with `status` and the API's JSON error body.
    pub fn refuse(status: u16, body: impl Into<String>) -> Self {
        Self::json(status, body)
    }

    /// A JSON response with `status`: a refusal, or an answer that is not streamed.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            parts: vec![Part::new(0, body.into())],
            stall: false,
            repeat: None,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Keep the connection open after the last part.
    pub fn then_stall(mut self) -> Self {
        self.stall = true;
        self
    }

    /// After the parts, send `part` forever (an endless answer), `delay_ms` apart.
    pub fn then_repeat(mut self, delay_ms: u64, part: impl Into<String>) -> Self {
        self.repeat = Some(Part::new(delay_ms, part.into()));
        self
    }

    /// Sleep `ms` before every part.
    pub fn paced(mut self, ms: u64) -> Self {
        for part in &mut self.parts {
            part.delay_ms = ms;
        }
        self
    }
}

/// The script for a request that no test scripted: follow the directives in the last user
/// message, else echo it.
pub fn plan(request: &Value, n: u64) -> Script {
    let model = request["model"].as_str().unwrap_or("mock-model");
    let last_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let (text, d) = directives::parse(last_user);
    if let Some(status) = d.status {
        let mut script = Script::refuse(status, wire::error_for_status(status));
        if let Some(secs) = d.retry_after {
            script = script.with_header("retry-after", &secs.to_string());
        }
        return script;
    }
    let include_usage = request["stream_options"]["include_usage"] == true;
    stream_answer(&echo(&text, &d), model, n, &d, include_usage)
}

pub(crate) fn echo(text: &str, d: &Directives) -> String {
    let mut answer = format!("Echo: {text}");
    for i in 1..=d.words {
        answer.push_str(&format!(" w{i}"));
    }
    answer
}

/// Splits `answer` into word-sized chunks ("Echo:", " hello", " there").
pub fn word_chunks(answer: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for (i, c) in answer.char_indices() {
        if c == ' ' && i > start {
            chunks.push(&answer[start..i]);
            start = i;
        }
    }
    if start < answer.len() {
        chunks.push(&answer[start..]);
    }
    chunks
}

/// One tool call the mock makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockToolCall {
    pub id: String,
    pub name: String,
    /// The whole arguments JSON, which the mock streams in pieces of a few characters.
    pub arguments: String,
}

/// The tool calls `[mock:tool-calls=N]` makes for the user text `text` (directives removed).
pub fn tool_calls(text: &str, n: usize) -> Vec<MockToolCall> {
    (0..n)
        .map(|i| MockToolCall {
            id: format!("call_mock_{i}"),
            name: format!("lookup_{i}"),
            arguments: serde_json::json!({"query": text, "n": i}).to_string(),
        })
        .collect()
}

/// The reasoning pieces `[mock:reasoning=N]` streams before the answer.
pub fn reasoning(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("Thinking, step {i}. ")).collect()
}

/// `text` in pieces of at most `chars` characters.
fn pieces(text: &str, chars: usize) -> Vec<String> {
    let all: Vec<char> = text.chars().collect();
    all.chunks(chars).map(|c| c.iter().collect()).collect()
}

fn stream_answer(answer: &str, model: &str, n: u64, d: &Directives, include_usage: bool) -> Script {
    let c = Completion::new(model, n);
    let mut parts = vec![Part::new(d.first_delay_ms, c.role())];
    if d.stall {
        return Script {
            parts,
            ..Script::stream(Vec::<String>::new())
        }
        .then_stall();
    }
    for piece in reasoning(d.reasoning) {
        parts.push(Part::new(d.delay_ms, c.reasoning(d.reasoning_field, &piece)));
    }
    if d.tool_calls > 0 {
        let text = answer.strip_prefix("Echo: ").unwrap_or(answer);
        let mut sent = 0;
        for (index, call) in tool_calls(text, d.tool_calls).iter().enumerate() {
            parts.push(Part::new(d.delay_ms, c.tool_call_start(index, &call.id, &call.name)));
            for piece in pieces(&call.arguments, 7) {
                parts.push(Part::new(d.delay_ms, c.tool_call_arguments(index, &piece)));
                sent += 1;
            }
        }
        parts.push(Part::new(0, c.finish("tool_calls")));
        if include_usage {
            parts.push(Part::new(0, c.usage(10, sent)));
        }
        parts.push(Part::new(0, wire::DONE));
        return Script {
            parts,
            ..Script::stream(Vec::<String>::new())
        };
    }
    let chunks = word_chunks(answer);
    let sent = d.error_after.map_or(chunks.len(), |n| n.min(chunks.len()));
    for (i, chunk) in chunks.iter().take(sent).enumerate() {
        parts.push(Part::new(if i == 0 { 0 } else { d.delay_ms }, c.content(chunk)));
    }
    if d.error_after.is_some() {
        let error = wire::error_body(
            "The model crashed while generating (mock).",
            "server_error",
            "server_error",
        );
        parts.push(Part::new(d.delay_ms, format!("data: {error}\n\n")));
        return Script {
            parts,
            ..Script::stream(Vec::<String>::new())
        };
    }
    parts.push(Part::new(0, c.finish(d.finish.unwrap_or("stop"))));
    if include_usage {
        parts.push(Part::new(0, c.usage(10, chunks.len())));
    }
    parts.push(Part::new(0, wire::DONE));
    Script {
        parts,
        ..Script::stream(Vec::<String>::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_call_arguments_are_json_streamed_in_pieces() {
        let calls = tool_calls("weather in Zürich", 2);
        assert_eq!(calls[1].name, "lookup_1");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(args["query"], "weather in Zürich");
        let split = pieces(&calls[0].arguments, 7);
        assert!(split.len() > 2);
        assert_eq!(split.concat(), calls[0].arguments);
    }

    #[test]
    fn words_split_before_spaces_and_rejoin_exactly() {
        let answer = "Echo: hello  there w1";
        let chunks = word_chunks(answer);
        assert_eq!(chunks, vec!["Echo:", " hello", " ", " there", " w1"]);
        assert_eq!(chunks.concat(), answer);
    }
}
