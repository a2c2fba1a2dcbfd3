//! Anthropic's streamed Messages events, read into [`Chunk`]s: the part of the Anthropic
//! provider that has no network in it, so that it can be fuzzed.
//!
//! `text_delta`s are the answer, `thinking_delta`s its reasoning, a `tool_use` block and
//! its `input_json_delta`s a tool call (numbered as OpenAI numbers them: the first
//! `tool_use` block is call 0); usage comes cumulative in `message_start` and
//! `message_delta`. The answer is finished only by `message_stop` (with the stop reason
//! `message_delta` gave): a body that ends before it is truncated. `ping`, `signature_delta`,
//! unknown events and unknown block types carry nothing for a client. Every network read
//! yields at least an empty chunk, so that keep-alive bytes count as life.

use super::super::Item;
use super::super::chunks::{self, mend_surrogates, parse_data};
use super::super::http::AnswerDecoder;
use super::super::sse_decode::{AnswerEvents, SseEvent};
use super::super::{Chunk, ReasoningField, ToolCallDelta, UpstreamError, Usage};
use crate::conversation::FinishType;
use serde::Deserialize;
use serde_json::Value;

/// Tool-use blocks open at once; more is no answer, and would only hold memory.
const OPEN_TOOL_BLOCKS: usize = 64;

/// One answer's events, read by read.
pub struct EventDecoder {
    events: AnswerEvents,
    answer: Answer,
}

/// What the events so far said of the answer.
#[derive(Default)]
struct Answer {
    /// What `message_delta` said the answer stopped for.
    stop_reason: Option<String>,
    usage: Usage,
    /// Open `tool_use` blocks: (content block index, tool call index).
    tool_blocks: Vec<(u64, u32)>,
    /// The tool call index the next `tool_use` block gets.
    next_call: u32,
}

impl EventDecoder {
    pub fn new(max_answer_bytes: usize) -> Self {
        Self {
            events: AnswerEvents::new(max_answer_bytes),
            answer: Answer::default(),
        }
    }
}

impl Answer {
    /// What one event means for the answer, added to `out`; whether the answer is over
    /// with it (`message_stop`, or an error).
    fn meaning(&mut self, event: &SseEvent, out: &mut Vec<Item>) -> bool {
        match self.event(event) {
            Ok(Some(chunk)) => {
                // Only `message_stop` finishes an answer.
                let over = chunk.finish.is_some();
                out.push(Ok(chunk));
                over
            }
            Ok(None) => false,
            Err(e) => {
                out.push(Err(e));
                true
            }
        }
    }

    /// The chunk one event gives the answer, if it gives one.
    fn event(&mut self, event: &SseEvent) -> Result<Option<Chunk>, UpstreamError> {
        let data = event.data.trim();
        if event.event.as_deref() == Some("error") {
            return Err(in_stream_error(data));
        }
        if data.is_empty() {
            return Ok(None);
        }
        let Some(wire) = parse_data::<EventWire>(data)? else {
            return Ok(None);
        };
        let chunk = match wire {
            EventWire::MessageStart { message } => self.count(message.usage),
            EventWire::ContentBlockStart { index, content_block } => match content_block {
                BlockWire::Text { text } => Chunk::text(text),
                BlockWire::Thinking { thinking } => reasoning(thinking),
                BlockWire::ToolUse { id, name } => {
                    if self.tool_blocks.len() >= OPEN_TOOL_BLOCKS {
                        return Err(UpstreamError::BadChunk(format!(
                            "more than {OPEN_TOOL_BLOCKS} tool calls open at once"
                        )));
                    }
                    let call = self.next_call;
                    self.next_call = self.next_call.saturating_add(1);
                    self.tool_blocks.push((index, call));
                    Chunk {
                        tool_calls: vec![ToolCallDelta {
                            index: call,
                            id: Some(id),
                            name: Some(name),
                            arguments: String::new(),
                        }],
                        ..Chunk::default()
                    }
                }
                BlockWire::Other => return Ok(None),
            },
            EventWire::ContentBlockDelta { index, delta } => match delta {
                DeltaWire::TextDelta { text } => Chunk::text(text),
                DeltaWire::ThinkingDelta { thinking } => reasoning(thinking),
                DeltaWire::InputJsonDelta { partial_json } => {
                    let call = self.tool_blocks.iter().find(|(block, _)| *block == index);
                    match call {
                        Some(&(_, call)) if !partial_json.is_empty() => Chunk {
                            tool_calls: vec![ToolCallDelta {
                                index: call,
                                arguments: partial_json,
                                ..ToolCallDelta::default()
                            }],
                            ..Chunk::default()
                        },
                        _ => return Ok(None),
                    }
                }
                DeltaWire::Other => return Ok(None),
            },
            EventWire::ContentBlockStop { index } => {
                self.tool_blocks.retain(|(block, _)| *block != index);
                return Ok(None);
            }
            EventWire::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(reason);
                }
                self.count(usage)
            }
            EventWire::MessageStop {} => {
                let reason = self.stop_reason.as_deref().unwrap_or("end_turn");
                Chunk {
                    finish: Some(FinishType::from_upstream(reason)),
                    ..Chunk::default()
                }
            }
            EventWire::Error {} => return Err(in_stream_error(data)),
            EventWire::Ping {} | EventWire::Unknown => return Ok(None),
        };
        let empty = !chunk.has_content() && chunk.usage.is_none() && chunk.finish.is_none();
        Ok((!empty).then_some(chunk))
    }

    /// A chunk with the usage so far, after `usage` is added to it.
    fn count(&mut self, usage: UsageWire) -> Chunk {
        if let Some(input) = usage.input_tokens {
            self.usage.prompt_tokens = input;
        }
        if let Some(output) = usage.output_tokens {
            self.usage.completion_tokens = output;
        }
        Chunk {
            usage: Some(self.usage),
            ..Chunk::default()
        }
    }
}

impl AnswerDecoder for EventDecoder {
    /// One read of the body. A read that completed no event with something in it (a ping,
    /// half a line) still yields an empty chunk: the upstream is alive.
    fn read(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        let answer = &mut self.answer;
        self.events.read(bytes, out, |event, out| answer.meaning(event, out));
    }

    /// The body ended: complete only after `message_stop`, truncated otherwise.
    fn end(&mut self, out: &mut Vec<Item>) {
        let answer = &mut self.answer;
        if self.events.end(out, |event, out| answer.meaning(event, out)) {
            out.push(Err(UpstreamError::Truncated));
        }
    }

    fn is_over(&self) -> bool {
        self.events.over
    }
}

fn reasoning(thinking: String) -> Chunk {
    Chunk {
        reasoning: thinking,
        reasoning_field: ReasoningField::ReasoningContent,
        ..Chunk::default()
    }
}

fn in_stream_error(data: &str) -> UpstreamError {
    let (message, code) = error_details(mend_surrogates(data).as_bytes());
    UpstreamError::InStream {
        message: message.unwrap_or_default(),
        code,
    }
}

/// Reads an error's message and type from Anthropic's `{"type":"error","error":{"type",
/// "message"}}`, or, from a proxy in front of it, any shape [`chunks::error_details`] reads.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    if let Ok(json) = serde_json::from_slice::<Value>(body)
        && let Some(error) = json.get("error").filter(|e| e.is_object())
    {
        let message = error.get("message").and_then(Value::as_str).map(str::to_owned);
        let kind = error.get("type").and_then(Value::as_str).map(str::to_owned);
        if message.is_some() || kind.is_some() {
            return (message, kind);
        }
    }
    chunks::error_details(body)
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventWire {
    MessageStart {
        #[serde(default)]
        message: MessageWire,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u64,
        content_block: BlockWire,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u64,
        delta: DeltaWire,
    },
    ContentBlockStop {
        #[serde(default)]
        index: u64,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaWire,
        #[serde(default)]
        usage: UsageWire,
    },
    MessageStop {},
    Ping {},
    Error {},
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize, Default)]
struct MessageWire {
    #[serde(default)]
    usage: UsageWire,
}

#[derive(Deserialize, Default)]
struct UsageWire {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct MessageDeltaWire {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockWire {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaWire {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    ThinkingDelta {
        #[serde(default)]
        thinking: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    fn decode_reads(reads: &[String]) -> Vec<Item> {
        let mut decoder = EventDecoder::new(1 << 20);
        let mut out = Vec::new();
        for read in reads {
            decoder.read(read.as_bytes(), &mut out);
        }
        decoder.end(&mut out);
        out
    }

    fn start() -> String {
        event(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        )
    }

    fn text(index: u64, text: &str) -> String {
        event(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            ),
        )
    }

    fn stop_reason(reason: &str, output_tokens: u64) -> String {
        event(
            "message_delta",
            &format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}","stop_sequence":null}},"usage":{{"output_tokens":{output_tokens}}}}}"#
            ),
        )
    }

    fn stop() -> String {
        event("message_stop", r#"{"type":"message_stop"}"#)
    }

    fn chunks(items: Vec<Item>) -> Vec<Chunk> {
        items.into_iter().map(|i| i.expect("no error")).collect()
    }

    #[test]
    fn a_text_answer_with_pings_usage_and_its_stop_reason() {
        let out = chunks(decode_reads(&[
            start(),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            event("ping", r#"{"type": "ping"}"#),
            text(0, "Hello") + &text(0, "!"),
            event("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            stop_reason("max_tokens", 15),
            stop(),
        ]));
        let answer: String = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(answer, "Hello!");
        let last_usage = out.iter().filter_map(|c| c.usage).next_back();
        assert_eq!(
            last_usage,
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15
            })
        );
        let finishes: Vec<_> = out.iter().filter_map(|c| c.finish).collect();
        assert_eq!(finishes, [FinishType::MaxTokens], "only message_stop finishes");
        assert!(out.last().unwrap().finish.is_some());
    }

    #[test]
    fn stop_reasons_become_finish_types() {
        for (reason, finish) in [
            ("end_turn", FinishType::Stop),
            ("stop_sequence", FinishType::Stop),
            ("max_tokens", FinishType::MaxTokens),
            ("tool_use", FinishType::ToolCalls),
            ("refusal", FinishType::ContentFilter),
        ] {
            let out = chunks(decode_reads(&[start(), stop_reason(reason, 1), stop()]));
            assert_eq!(out.last().unwrap().finish, Some(finish), "{reason}");
        }
    }

    #[test]
    fn thinking_is_reasoning_and_signatures_carry_nothing() {
        let out = chunks(decode_reads(&[
            start(),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see."}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
            ),
            text(1, "Yes."),
            stop_reason("end_turn", 9),
            stop(),
        ]));
        let reasoning: String = out.iter().map(|c| c.reasoning.as_str()).collect();
        let answer: String = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!((reasoning.as_str(), answer.as_str()), ("Let me see.", "Yes."));
        let thought = out.iter().find(|c| !c.reasoning.is_empty()).unwrap();
        assert_eq!(thought.reasoning_field, ReasoningField::ReasoningContent);
        assert!(
            !out.iter()
                .any(|c| c.text.contains("EqQB") || c.reasoning.contains("EqQB"))
        );
    }

    #[test]
    fn tool_use_blocks_become_tool_calls_numbered_from_zero() {
        let tool = |index: u64, id: &str| {
            event(
                "content_block_start",
                &format!(
                    r#"{{"type":"content_block_start","index":{index},"content_block":{{"type":"tool_use","id":"{id}","name":"get_weather","input":{{}}}}}}"#
                ),
            )
        };
        let json = |index: u64, partial: &str| {
            event(
                "content_block_delta",
                &format!(
                    r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"input_json_delta","partial_json":{}}}}}"#,
                    serde_json::to_string(partial).unwrap()
                ),
            )
        };
        let block_stop = |index: u64| {
            event(
                "content_block_stop",
                &format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
            )
        };
        let out = chunks(decode_reads(&[
            start(),
            text(0, "Checking."),
            block_stop(0),
            tool(1, "toolu_a"),
            json(1, ""),
            json(1, "{\"city\": "),
            json(1, "\"Paris\"}"),
            block_stop(1),
            tool(2, "toolu_b"),
            json(2, "{}"),
            block_stop(2),
            stop_reason("tool_use", 40),
            stop(),
        ]));
        let calls: Vec<ToolCallDelta> = out.iter().flat_map(|c| c.tool_calls.clone()).collect();
        assert_eq!(calls.len(), 5, "{calls:?}");
        assert_eq!(
            calls[0],
            ToolCallDelta {
                index: 0,
                id: Some("toolu_a".into()),
                name: Some("get_weather".into()),
                arguments: String::new()
            }
        );
        let arguments = |call: u32| -> String {
            calls
                .iter()
                .filter(|c| c.index == call)
                .map(|c| c.arguments.as_str())
                .collect()
        };
        assert_eq!(arguments(0), "{\"city\": \"Paris\"}");
        assert_eq!(calls[3].id.as_deref(), Some("toolu_b"));
        assert_eq!(arguments(1), "{}");
        assert_eq!(out.last().unwrap().finish, Some(FinishType::ToolCalls));
    }

    #[test]
    fn an_error_event_is_an_in_stream_error_with_its_type() {
        let out = decode_reads(&[
            start(),
            text(0, "Hi"),
            event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            text(0, "never read"),
        ]);
        let Some(Err(UpstreamError::InStream { message, code })) = out.last() else {
            panic!("{out:?}");
        };
        assert_eq!(
            (message.as_str(), code.as_deref()),
            ("Overloaded", Some("overloaded_error"))
        );
        assert!(!out.iter().any(|i| matches!(i, Ok(c) if c.text == "never read")));
    }

    #[test]
    fn a_body_that_ends_without_message_stop_is_truncated_even_after_a_stop_reason() {
        let out = decode_reads(&[start(), text(0, "Hi"), stop_reason("end_turn", 2)]);
        assert!(matches!(out.last(), Some(Err(UpstreamError::Truncated))), "{out:?}");
        assert!(!out.iter().any(|i| matches!(i, Ok(c) if c.finish.is_some())));
    }

    #[test]
    fn unknown_events_and_blocks_are_ignored_and_every_read_yields_a_chunk() {
        let out = chunks(decode_reads(&[
            start(),
            event("mock_unknown", r#"{"type":"mock_unknown","detail":{"a":1}}"#),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"x"}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
            ),
            ": a comment\n\n".to_owned(),
            "data: not json\n\n".to_owned(),
            text(1, "ok"),
            stop(),
        ]));
        let texts: Vec<&str> = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["", "", "", "", "", "", "ok", ""]);
        assert_eq!(out.last().unwrap().finish, Some(FinishType::Stop));
    }

    #[test]
    fn json_of_another_shape_is_a_bad_chunk_that_quotes_nothing() {
        let out = decode_reads(&[event(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":["a secret"]}}"#,
        )]);
        let Some(Err(UpstreamError::BadChunk(why))) = out.last() else {
            panic!("{out:?}");
        };
        assert!(!why.contains("secret"), "{why}");
    }

    #[test]
    fn error_bodies_in_anthropics_shape_and_others() {
        let anthropic =
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"},"request_id":"req_1"}"#;
        assert_eq!(
            error_details(anthropic),
            (Some("Slow down".into()), Some("rate_limit_error".into()))
        );
        assert_eq!(
            error_details(b"<html>bad gateway</html>").0.as_deref(),
            Some("<html>bad gateway</html>")
        );
    }

    #[test]
    fn an_endless_line_is_too_large_for_the_answer() {
        let mut decoder = EventDecoder::new(10);
        let mut out = Vec::new();
        let endless = vec![b'x'; 8 * 1024];
        while !decoder.is_over() {
            decoder.read(&endless, &mut out);
        }
        assert!(matches!(out.last(), Some(Err(UpstreamError::TooLarge { limit: 10 }))));
    }
}
