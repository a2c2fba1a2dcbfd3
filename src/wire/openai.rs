//! OpenAI's Chat Completions shapes, as `/v1` sends them: the streamed
//! `chat.completion.chunk` events, the whole `chat.completion` object, in-stream errors and
//! the model list. Each shape is written here and nowhere else.
//!
//! Tool calls get indexes of their own, `0, 1, …` in the order their first pieces came,
//! whatever the upstream numbered them (an upstream that counts a text block first must not
//! leave a hole in a client's array); a call's `id`, `type` and name go with its first
//! piece only, as OpenAI streams them.

use super::chatgpt::{escape_into, escaped_len};
use crate::conversation::FinishType;
use crate::upstream::{Chunk, ReasoningField, Usage};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// The end of a successful stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// What every chunk of one completion shares.
#[derive(Debug, Clone)]
pub struct Completion {
    /// `chatcmpl-…`, the same in every chunk.
    pub id: String,
    /// Seconds since the Unix epoch, the same in every chunk.
    pub created: u64,
    /// The model name the request went to upstream.
    pub model: String,
}

impl Completion {
    pub fn new(model: &str) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_owned(),
        }
    }
}

/// OpenAI's `finish_reason` for how an answer ended.
pub fn finish_reason(finish: FinishType) -> &'static str {
    match finish {
        FinishType::MaxTokens => "length",
        FinishType::ToolCalls => "tool_calls",
        FinishType::ContentFilter => "content_filter",
        // `/v1` never ends an answer as interrupted: a cut answer ends with an error.
        FinishType::Stop | FinishType::Interrupted => "stop",
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UsageObject {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<Usage> for UsageObject {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// Which of a completion's tool calls an upstream piece belongs to.
#[derive(Debug, Default)]
struct CallIndexes {
    /// The upstream's index of each call, in the order the calls started.
    upstream: Vec<u32>,
}

impl CallIndexes {
    /// The call's own index, and whether this piece starts it.
    fn place(&mut self, upstream_index: u32) -> (usize, bool) {
        match self.upstream.iter().position(|&i| i == upstream_index) {
            Some(at) => (at, false),
            None => {
                self.upstream.push(upstream_index);
                (self.upstream.len() - 1, true)
            }
        }
    }
}

/// A tool call's id when the upstream gave none: a client needs one to answer the call.
fn call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

#[derive(Serialize)]
struct ChunkObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<&'a str>,
    choices: &'a [ChunkChoice<'a>],
    /// Absent unless asked for; then `null` in every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageObject>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallPiece<'a>>,
}

#[derive(Serialize)]
struct CallPiece<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionPiece<'a>,
}

#[derive(Serialize)]
struct FunctionPiece<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// One streamed completion's events, rendered in order.
pub struct ChunkWriter {
    completion: Completion,
    include_usage: bool,
    calls: CallIndexes,
    /// The event of a piece that is only text, cut where the text goes.
    text_event: Option<TextEvent>,
}

/// The event of a piece that is only text (most pieces), rendered once per completion as
/// every other event is rendered, with empty content, and cut there: a piece then costs a
/// copy and the escaping of its own text, not a serialization of the whole object.
struct TextEvent {
    rendered: String,
    /// Where the text goes: the closing quote of `"content":""`.
    at: usize,
}

impl TextEvent {
    fn cut(rendered: Bytes) -> Option<Self> {
        const EMPTY: &str = "\"content\":\"\"";
        let rendered = String::from_utf8(rendered.to_vec()).ok()?;
        // The last one: `content` comes after the id and the model, and inside a JSON
        // string every quote is escaped, so neither can hold this text.
        let at = rendered.rfind(EMPTY)? + EMPTY.len() - 1;
        Some(Self { rendered, at })
    }

    fn with(&self, text: &str) -> Bytes {
        let (head, tail) = self.rendered.split_at(self.at);
        // Exactly the room the event takes: a `Bytes` made of a full buffer owns it, where
        // one made of a buffer with room to spare needs an allocation of its own to share it.
        let mut event = String::with_capacity(self.rendered.len() + escaped_len(text));
        event.push_str(head);
        escape_into(&mut event, text);
        event.push_str(tail);
        event.into_bytes().into()
    }
}

impl ChunkWriter {
    /// `include_usage`: the client asked for `stream_options.include_usage`.
    pub fn new(completion: Completion, include_usage: bool) -> Self {
        let mut writer = Self {
            completion,
            include_usage,
            calls: CallIndexes::default(),
            text_event: None,
        };
        let empty = writer.event(
            Delta {
                content: Some(""),
                ..Delta::default()
            },
            None,
        );
        writer.text_event = TextEvent::cut(empty);
        writer
    }

    /// The first event: the assistant's role, and empty content.
    pub fn opening(&self) -> Bytes {
        self.event(
            Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            },
            None,
        )
    }

    /// The events for one piece of the answer: its content, then its finish, if any.
    pub fn piece(&mut self, chunk: &Chunk, out: &mut impl Extend<Bytes>) {
        let only_text = chunk.reasoning.is_empty() && chunk.tool_calls.is_empty();
        if let Some(text_event) = self.text_event.as_ref().filter(|_| only_text && !chunk.text.is_empty()) {
            out.extend([text_event.with(&chunk.text)]);
        } else if chunk.has_content() {
            let mut delta = Delta {
                content: (!chunk.text.is_empty()).then_some(chunk.text.as_str()),
                ..Delta::default()
            };
            if !chunk.reasoning.is_empty() {
                let reasoning = Some(chunk.reasoning.as_str());
                match chunk.reasoning_field {
                    ReasoningField::ReasoningContent => delta.reasoning_content = reasoning,
                    ReasoningField::Reasoning => delta.reasoning = reasoning,
                }
            }
            for call in &chunk.tool_calls {
                let (index, first) = self.calls.place(call.index);
                delta.tool_calls.push(CallPiece {
                    index,
                    id: first.then(|| call.id.clone().unwrap_or_else(call_id)),
                    kind: first.then_some("function"),
                    function: FunctionPiece {
                        name: match first {
                            true => Some(call.name.as_deref().unwrap_or("")),
                            // A name that comes late is passed on as it came.
                            false => call.name.as_deref(),
                        },
                        arguments: &call.arguments,
                    },
                });
            }
            out.extend([self.event(delta, None)]);
        }
        if let Some(finish) = chunk.finish {
            out.extend([self.event(Delta::default(), Some(finish_reason(finish)))]);
        }
    }

    /// The last chunk before `[DONE]`, `"choices":[]` and the answer's usage, when the client
    /// asked for it. An upstream that reported none is reported as zeros.
    pub fn usage(&self, usage: Option<Usage>) -> Option<Bytes> {
        self.include_usage.then(|| {
            data_event(&ChunkObject {
                choices: &[],
                usage: Some(Some(usage.unwrap_or_default().into())),
                ..self.head()
            })
        })
    }

    fn event(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        let choice = [ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }];
        data_event(&ChunkObject {
            choices: &choice,
            ..self.head()
        })
    }

    fn head(&self) -> ChunkObject<'_> {
        ChunkObject {
            id: &self.completion.id,
            object: "chat.completion.chunk",
            created: self.completion.created,
            model: &self.completion.model,
            system_fingerprint: None,
            choices: &[],
            usage: self.include_usage.then_some(None),
        }
    }
}

/// An error after the stream began: `data: {"error":{…}}`. OpenAI's SDKs raise it as an
/// `APIError`; no `[DONE]` follows it.
pub fn error_event(object: &Value) -> Bytes {
    let mut object = object.clone();
    if let Value::Object(map) = &mut object {
        map.entry("param").or_insert(Value::Null);
    }
    data_event(&serde_json::json!({ "error": object }))
}

/// Room for a chunk of a few words without growing the buffer (the object around the text
/// is about 200 bytes).
const RENDERED_CAPACITY: usize = 320;

/// `data: {object}`, written straight into the buffer that becomes its bytes.
fn data_event(object: &impl Serialize) -> Bytes {
    let mut event = Vec::with_capacity(RENDERED_CAPACITY);
    event.extend_from_slice(b"data: ");
    // Serializing strings, numbers and JSON values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut event, object);
    event.extend_from_slice(b"\n\n");
    event.into()
}

/// A whole answer, gathered for a client that did not ask to stream.
#[derive(Debug, Default)]
pub struct Gathered {
    text: String,
    reasoning: String,
    reasoning_field: ReasoningField,
    calls: CallIndexes,
    call_parts: Vec<GatheredCall>,
    finish: Option<FinishType>,
}

#[derive(Debug, Default)]
struct GatheredCall {
    id: String,
    name: String,
    arguments: String,
}

impl Gathered {
    pub fn add(&mut self, chunk: Chunk) {
        self.text.push_str(&chunk.text);
        if !chunk.reasoning.is_empty() {
            self.reasoning.push_str(&chunk.reasoning);
            self.reasoning_field = chunk.reasoning_field;
        }
        for call in chunk.tool_calls {
            let (index, first) = self.calls.place(call.index);
            if first {
                self.call_parts.push(GatheredCall {
                    id: call.id.clone().unwrap_or_else(call_id),
                    ..GatheredCall::default()
                });
            }
            let gathered = &mut self.call_parts[index];
            if let Some(name) = call.name {
                gathered.name.push_str(&name);
            }
            gathered.arguments.push_str(&call.arguments);
        }
        self.finish = chunk.finish.or(self.finish);
    }

    /// The `chat.completion` object, with the answer's `usage` (zeros if unknown).
    pub fn object(self, completion: &Completion, usage: Option<Usage>) -> Value {
        let mut message = serde_json::json!({
            "role": "assistant",
            // OpenAI's content is null for an answer that is only tool calls.
            "content": match self.text.is_empty() && !self.call_parts.is_empty() {
                true => Value::Null,
                false => Value::String(self.text),
            },
            "refusal": null,
        });
        if !self.reasoning.is_empty() {
            message[self.reasoning_field.as_str()] = Value::String(self.reasoning);
        }
        if !self.call_parts.is_empty() {
            message["tool_calls"] = self
                .call_parts
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
        }
        serde_json::json!({
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(self.finish.unwrap_or(FinishType::Stop)),
            }],
            "usage": UsageObject::from(usage.unwrap_or_default()),
        })
    }
}

/// `GET /v1/models`: the models clients may name.
pub fn model_list(names: &[String]) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|name| {
            // chatgate does not know when a model was made.
            serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "chatgate"})
        })
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ToolCallDelta;
    use proptest::prelude::*;

    proptest! {
        /// A piece that is only text goes out through the cut event: the same object as
        /// the whole serialization gives, whatever the text, the model and the options.
        #[test]
        fn a_text_piece_is_the_object_the_whole_serialization_gives(
            text in "\\PC{1,40}|[\u{0}-\u{1f}\"\\\\/]{1,8}",
            model in "[a-z\"\\\\:{},]{1,12}",
            include_usage: bool,
        ) {
            let mut writer = ChunkWriter::new(Completion::new(&model), include_usage);
            let mut out = Vec::new();
            writer.piece(&Chunk::text(text.clone()), &mut out);
            let whole = writer.event(Delta { content: Some(&text), ..Delta::default() }, None);
            let parse = |event: &[u8]| -> Value {
                let event = std::str::from_utf8(event).unwrap();
                serde_json::from_str(event.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap()).unwrap()
            };
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(parse(&out[0]), parse(&whole));
        }
    }

    fn events(writer: &mut ChunkWriter, chunk: Chunk) -> Vec<Value> {
        let mut out = Vec::new();
        writer.piece(&chunk, &mut out);
        out.iter()
            .map(|e| {
                let text = std::str::from_utf8(e).unwrap();
                serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
            })
            .collect()
    }

    fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Chunk {
        Chunk {
            tool_calls: vec![ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                name: name.map(str::to_owned),
                arguments: arguments.into(),
            }],
            ..Chunk::default()
        }
    }

    #[test]
    fn tool_calls_are_numbered_from_zero_and_named_on_their_first_piece_only() {
        let mut writer = ChunkWriter::new(Completion::new("m"), false);
        let first = events(&mut writer, call(3, Some("call_a"), Some("f"), "{\"a\""));
        let piece = &first[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(piece["index"], 0);
        assert_eq!(piece["id"], "call_a");
        assert_eq!(piece["type"], "function");
        assert_eq!(piece["function"]["name"], "f");
        let more = events(&mut writer, call(3, None, None, ":1}"));
        let piece = &more[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(piece["index"], 0);
        assert!(piece.get("id").is_none() && piece.get("type").is_none(), "{piece}");
        assert!(piece["function"].get("name").is_none(), "{piece}");
        let second = events(&mut writer, call(5, None, Some("g"), "{}"));
        let piece = &second[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(piece["index"], 1);
        assert!(piece["id"].as_str().unwrap().starts_with("call_"), "an id is made up");
    }

    #[test]
    fn usage_is_null_in_every_chunk_and_comes_last_only_when_asked_for() {
        let mut writer = ChunkWriter::new(Completion::new("m"), true);
        let finish = Chunk {
            text: "hi".into(),
            finish: Some(FinishType::MaxTokens),
            ..Chunk::default()
        };
        let out = events(&mut writer, finish);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()));
        assert_eq!(out[1]["choices"][0]["finish_reason"], "length");
        let usage = writer.usage(None).unwrap();
        assert!(std::str::from_utf8(&usage).unwrap().contains(r#""choices":[]"#));
        let writer = ChunkWriter::new(Completion::new("m"), false);
        assert!(writer.usage(None).is_none());
        let mut writer = writer;
        let out = events(&mut writer, Chunk::text("x"));
        assert!(out[0].get("usage").is_none(), "{}", out[0]);
    }

    #[test]
    fn a_gathered_answer_of_tool_calls_has_null_content() {
        let mut gathered = Gathered::default();
        gathered.add(call(0, Some("c1"), Some("f"), "{\"x\":"));
        gathered.add(call(0, None, None, "1}"));
        gathered.add(Chunk {
            reasoning: "hm".into(),
            reasoning_field: ReasoningField::Reasoning,
            finish: Some(FinishType::ToolCalls),
            ..Chunk::default()
        });
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 3,
        };
        let object = gathered.object(&Completion::new("m"), Some(usage));
        let choice = &object["choices"][0];
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(choice["message"]["reasoning"], "hm");
        assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(object["usage"]["total_tokens"], 5);
    }
}
