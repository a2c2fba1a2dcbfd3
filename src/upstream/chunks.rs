//! OpenAI's streamed `chat.completion.chunk` events, read into [`Chunk`]s: the part of the
//! OpenAI-compatible provider that has no network in it, so that it can be fuzzed.
//!
//! Lenient where upstreams differ, strict where the answer is at stake: a data line that
//! is not JSON is skipped (routers send such lines), one that is JSON but no chunk ends
//! the answer; a lone surrogate escape becomes U+FFFD instead of ending it; every network
//! read yields at least an empty chunk, so that keep-alive bytes count as life.

use super::sse_decode::{AnswerEvents, SseEvent, event_limit};
use super::{Chunk, Item, ReasoningField, ToolCallDelta, UpstreamError, Usage};
use crate::conversation::FinishType;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// One answer's events, read by read.
pub struct ChunkDecoder {
    events: AnswerEvents,
    max_answer_bytes: usize,
    /// A finish reason came.
    finished: bool,
    /// The body is one `chat.completion` JSON object, not events (an upstream that does not
    /// stream although asked to): it is kept whole and read at its end.
    whole: Option<Vec<u8>>,
}

impl ChunkDecoder {
    pub fn new(max_answer_bytes: usize) -> Self {
        Self {
            events: AnswerEvents::new(max_answer_bytes),
            max_answer_bytes,
            finished: false,
            whole: None,
        }
    }

    /// For a body that is one JSON `chat.completion` object (`Content-Type:
    /// application/json` on a 200): the answer is relayed as one chunk when the body ends.
    pub fn whole_json(max_answer_bytes: usize) -> Self {
        Self {
            whole: Some(Vec::new()),
            ..Self::new(max_answer_bytes)
        }
    }

    /// Whether the answer is over: the body need not be read further (`[DONE]`, an error
    /// or the end of the body came).
    pub fn is_over(&self) -> bool {
        self.events.over
    }

    /// One read of the body. A read that completed no chunk with text (a comment, a role
    /// chunk, half a line) still yields an empty chunk: the upstream is alive.
    pub fn read(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        if self.events.over {
            return;
        }
        if let Some(whole) = &mut self.whole {
            if whole.len() + bytes.len() > event_limit(self.max_answer_bytes) {
                self.events.over = true;
                out.push(Err(UpstreamError::TooLarge {
                    limit: self.max_answer_bytes,
                }));
            } else {
                whole.extend_from_slice(bytes);
                out.push(Ok(Chunk::default()));
            }
            return;
        }
        let finished = &mut self.finished;
        self.events.read(bytes, out, |event, out| meaning(event, finished, out));
    }

    /// The body ended: complete if a finish reason came, truncated otherwise.
    pub fn end(&mut self, out: &mut Vec<Item>) {
        if self.events.over {
            return;
        }
        if let Some(whole) = self.whole.take() {
            self.events.over = true;
            out.push(completion(&whole));
            return;
        }
        let finished = &mut self.finished;
        let open = self.events.end(out, |event, out| meaning(event, finished, out));
        if open && !self.finished {
            out.push(Err(UpstreamError::Truncated));
        }
    }
}

/// What one event means for the answer (its chunk, its end, or an error ending it), and
/// whether the answer is over with it.
fn meaning(event: &SseEvent, finished: &mut bool, out: &mut Vec<Item>) -> bool {
    match parse_event(event) {
        Ok(None) => false,
        Ok(Some(Parsed::Chunk(chunk))) => {
            *finished |= chunk.finish.is_some();
            out.push(Ok(chunk));
            false
        }
        Ok(Some(Parsed::Done)) => {
            if !*finished {
                *finished = true;
                out.push(Ok(Chunk {
                    finish: Some(FinishType::Stop),
                    ..Chunk::default()
                }));
            }
            true
        }
        Err(e) => {
            out.push(Err(e));
            true
        }
    }
}

impl super::http::AnswerDecoder for ChunkDecoder {
    fn read(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        ChunkDecoder::read(self, bytes, out);
    }

    fn end(&mut self, out: &mut Vec<Item>) {
        ChunkDecoder::end(self, out);
    }

    fn is_over(&self) -> bool {
        ChunkDecoder::is_over(self)
    }
}

#[derive(Deserialize)]
struct ChunkWire {
    #[serde(default, deserialize_with = "first_choice")]
    choices: Option<ChoiceWire>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    usage: Option<UsageWire>,
}

/// A chunk's first choice: only it is relayed (`n` above 1 is refused before the
/// upstream). The others are skipped, and no list is made of them.
fn first_choice<'de, D: serde::Deserializer<'de>>(choices: D) -> Result<Option<ChoiceWire>, D::Error> {
    struct First;
    impl<'de> serde::de::Visitor<'de> for First {
        type Value = Option<ChoiceWire>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of choices")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let first = seq.next_element()?;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    choices.deserialize_seq(First)
}

#[derive(Deserialize)]
struct UsageWire {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ChoiceWire {
    #[serde(default)]
    delta: Option<MessageWire>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// A message, or a delta of one: the same fields.
#[derive(Deserialize)]
struct MessageWire {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallWire>,
}

impl MessageWire {
    /// Puts the message's text, reasoning and tool calls into `chunk`. A delta numbers its
    /// tool calls (`index`); a whole message lists them in order.
    fn fill(self, chunk: &mut Chunk, numbered: bool) {
        chunk.text = self.content.unwrap_or_default();
        if let Some(reasoning) = self.reasoning_content.filter(|r| !r.is_empty()) {
            chunk.reasoning = reasoning;
        } else if let Some(reasoning) = self.reasoning.filter(|r| !r.is_empty()) {
            chunk.reasoning = reasoning;
            chunk.reasoning_field = ReasoningField::Reasoning;
        }
        chunk.tool_calls = self
            .tool_calls
            .into_iter()
            .enumerate()
            .map(|(i, call)| {
                let function = call.function.unwrap_or(FunctionWire {
                    name: None,
                    arguments: None,
                });
                ToolCallDelta {
                    index: match numbered {
                        true => call.index,
                        false => u32::try_from(i).unwrap_or(u32::MAX),
                    },
                    id: call.id,
                    name: function.name,
                    arguments: function.arguments.unwrap_or_default(),
                }
            })
            .collect();
    }
}

#[derive(Deserialize)]
struct ToolCallWire {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionWire>,
}

#[derive(Deserialize)]
struct FunctionWire {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// What one upstream event means.
enum Parsed {
    Chunk(Chunk),
    Done,
}

fn parse_event(event: &SseEvent) -> Result<Option<Parsed>, UpstreamError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(Some(Parsed::Done));
    }
    if event.event.as_deref() == Some("error") {
        return Err(in_stream_error(data));
    }
    if data.is_empty() {
        return Ok(None);
    }
    let Some(chunk) = parse_data::<ChunkWire>(data)? else {
        return Ok(None);
    };
    if chunk.error.is_some() {
        return Err(in_stream_error(data));
    }
    let usage = chunk.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    });
    let Some(choice) = chunk.choices else {
        // The usage chunk (`"choices":[]`).
        return Ok(usage.map(|usage| {
            Parsed::Chunk(Chunk {
                usage: Some(usage),
                ..Chunk::default()
            })
        }));
    };
    let mut out = Chunk {
        usage,
        finish: choice.finish_reason.map(|reason| FinishType::from_upstream(&reason)),
        ..Chunk::default()
    };
    if let Some(delta) = choice.delta {
        delta.fill(&mut out, true);
    }
    if !out.has_content() && out.finish.is_none() && out.usage.is_none() {
        return Ok(None); // the role chunk
    }
    Ok(Some(Parsed::Chunk(out)))
}

#[derive(Deserialize)]
struct CompletionWire {
    #[serde(default)]
    choices: Vec<CompletionChoiceWire>,
    #[serde(default)]
    usage: Option<UsageWire>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionChoiceWire {
    #[serde(default)]
    message: Option<MessageWire>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// A whole `chat.completion` object as one chunk: its first choice's message, its usage
/// and its finish (a plain stop when it names none).
fn completion(body: &[u8]) -> Item {
    let text = String::from_utf8_lossy(body);
    let wire: CompletionWire = match serde_json::from_str(&mend_surrogates(&text)) {
        Ok(wire) => wire,
        // serde's message can quote the body's strings: only where it failed is kept.
        Err(e) => {
            return Err(UpstreamError::BadChunk(format!(
                "a JSON body that is no chat completion (at line {} column {})",
                e.line(),
                e.column()
            )));
        }
    };
    if wire.error.is_some() {
        return Err(in_stream_error(&text));
    }
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(UpstreamError::BadChunk("a chat completion without choices".into()));
    };
    let mut chunk = Chunk {
        usage: wire.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }),
        finish: Some(FinishType::from_upstream(
            choice.finish_reason.as_deref().unwrap_or("stop"),
        )),
        ..Chunk::default()
    };
    if let Some(message) = choice.message {
        message.fill(&mut chunk, false);
    }
    Ok(chunk)
}

/// An event's data as `T`: a line that is not JSON is skipped (`None`; routers send such
/// lines), JSON of another shape ends the answer.
pub(super) fn parse_data<T: serde::de::DeserializeOwned>(data: &str) -> Result<Option<T>, UpstreamError> {
    match serde_json::from_str(&mend_surrogates(data)) {
        Ok(parsed) => Ok(Some(parsed)),
        Err(e) if e.is_syntax() || e.is_eof() => {
            // Its content may be anything, the key included: only its size is logged.
            log::debug!("skipped an upstream data line that is not JSON ({} bytes)", data.len());
            Ok(None)
        }
        // serde's message can quote the event's strings: only where it failed is kept.
        Err(e) => Err(UpstreamError::BadChunk(format!(
            "JSON of another shape (at column {})",
            e.column()
        ))),
    }
}

fn in_stream_error(data: &str) -> UpstreamError {
    let (message, code) = error_details(mend_surrogates(data).as_bytes());
    UpstreamError::InStream {
        message: message.unwrap_or_default(),
        code,
    }
}

/// Reads an error's message and code from the shapes upstreams use: OpenAI's
/// `{"error":{"message","code"}}`, `{"error":"…"}` (Ollama), `{"message"}`, `{"detail"}`
/// (FastAPI servers such as vLLM), or plain text.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text: String = text.trim().chars().take(500).collect();
        return (Some(text), None);
    };
    let error = json.get("error").unwrap_or(&json);
    let message = match error {
        Value::String(s) => Some(s.clone()),
        _ => ["message", "detail"]
            .iter()
            .find_map(|k| error.get(*k))
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned)),
    };
    let code = error.get("code").and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    (message.or_else(|| Some(json.to_string())), code)
}

/// serde_json refuses a surrogate escape that is not half of a pair (`\ud800` alone), and
/// tokenizers do cut pairs: such an escape becomes `\ufffd`. Only data with a `\u`
/// followed by `d` is looked at closely, so the common line costs one `memchr` scan.
pub(super) fn mend_surrogates(data: &str) -> Cow<'_, str> {
    let bytes = data.as_bytes();
    let suspect = memchr::memchr_iter(b'\\', bytes)
        .any(|i| bytes.get(i + 1) == Some(&b'u') && matches!(bytes.get(i + 2), Some(b'd' | b'D')));
    if !suspect {
        return Cow::Borrowed(data);
    }
    let mut mended = String::with_capacity(data.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = bytes.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let slash = at + found;
        if bytes.get(slash + 1) != Some(&b'u') {
            // An escape of one character (`\\`, `\"`, `\n`…): its second byte is no escape.
            at = slash + 2;
            continue;
        }
        at = slash + 6;
        let lone = match hex4(bytes, slash + 2) {
            Some(0xD800..=0xDBFF) => match (bytes.get(slash + 6..slash + 8), hex4(bytes, slash + 8)) {
                (Some(b"\\u"), Some(0xDC00..=0xDFFF)) => {
                    at = slash + 12;
                    false
                }
                _ => true,
            },
            Some(0xDC00..=0xDFFF) => true,
            _ => false,
        };
        if lone {
            mended.push_str(&data[copied..slash]);
            mended.push_str("\\ufffd");
            copied = slash + 6;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(data);
    }
    mended.push_str(&data[copied..]);
    Cow::Owned(mended)
}

/// The four hex digits at `bytes[at..]` as a UTF-16 code unit.
fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.into(),
        }
    }

    fn chunk(data: &str) -> Option<Chunk> {
        match parse_event(&event(data)) {
            Ok(Some(Parsed::Chunk(chunk))) => Some(chunk),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn error_shapes_from_several_upstreams() {
        let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            error_details(openai),
            (Some("Rate limit reached".into()), Some("rate_limit_exceeded".into()))
        );
        assert_eq!(
            error_details(br#"{"error":"model 'x' not found"}"#).0.unwrap(),
            "model 'x' not found"
        );
        assert_eq!(error_details(br#"{"detail":"Not Found"}"#).0.unwrap(), "Not Found");
        assert_eq!(
            error_details(b"  <html>bad gateway</html> ").0.unwrap(),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn chunks_become_deltas() {
        assert_eq!(
            chunk(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            None
        );
        let usage =
            chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#).unwrap();
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 5
            })
        );
        assert!(!usage.has_content());
        let reasoning = chunk(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#).unwrap();
        assert_eq!((reasoning.reasoning.as_str(), reasoning.text.as_str()), ("hmm", ""));
        assert_eq!(reasoning.reasoning_field, ReasoningField::ReasoningContent);
        let reasoning = chunk(r#"{"choices":[{"delta":{"reasoning":"so"}}]}"#).unwrap();
        assert_eq!(reasoning.reasoning_field, ReasoningField::Reasoning);
        let call = chunk(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            call.tool_calls,
            vec![ToolCallDelta {
                index: 1,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a".into()
            }]
        );
        let end = chunk(r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#).unwrap();
        assert_eq!(end.finish, Some(FinishType::ToolCalls));
        assert_eq!(
            chunk(r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#)
                .unwrap()
                .text,
            "hi"
        );
        assert_eq!(
            chunk(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#)
                .unwrap()
                .finish,
            Some(FinishType::MaxTokens)
        );
        assert!(matches!(
            parse_event(&event(r#"{"error":{"message":"boom"}}"#)),
            Err(UpstreamError::InStream { .. })
        ));
    }

    #[test]
    fn only_the_first_choice_is_read_and_an_empty_list_is_the_usage_chunk() {
        let two = r#"{"choices":[{"delta":{"content":"first"}},{"delta":{"content":"second"}},7]}"#;
        assert_eq!(chunk(two).unwrap().text, "first");
        let usage = chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#).unwrap();
        assert_eq!(
            (usage.text.as_str(), usage.usage.map(|u| u.prompt_tokens)),
            ("", Some(3))
        );
        assert!(matches!(
            parse_event(&event(r#"{"choices":null}"#)),
            Err(UpstreamError::BadChunk(_))
        ));
    }

    #[test]
    fn a_line_that_is_not_json_is_skipped_and_json_of_another_shape_is_an_error() {
        assert_eq!(chunk("not json"), None);
        assert_eq!(chunk(r#"{"choices":[{"delta":"#), None);
        let Err(UpstreamError::BadChunk(why)) = parse_event(&event(r#"{"choices":"a secret"}"#)) else {
            panic!("a chunk of another shape is an error");
        };
        assert!(!why.contains("secret"), "{why}");
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let text = |content: &str| {
            chunk(&format!(r#"{{"choices":[{{"delta":{{"content":"{content}"}}}}]}}"#))
                .unwrap()
                .text
        };
        assert_eq!(text(r"a\ud800b"), "a\u{fffd}b");
        assert_eq!(text(r"a\uDC00b"), "a\u{fffd}b");
        assert_eq!(text(r"\ud800\ud800\udc00"), "\u{fffd}\u{10000}");
        assert_eq!(text(r"\ud83d\ude00 \ud800\u0041"), "😀 \u{fffd}A");
        assert_eq!(text(r"\\ud800 \ud800"), "\\ud800 \u{fffd}");
        assert_eq!(text(r"end\ud800"), "end\u{fffd}");
        assert!(matches!(mend_surrogates(r"\n \u00e9 \\u"), Cow::Borrowed(_)));
    }

    fn decode_reads(reads: &[&[u8]]) -> Vec<Item> {
        let mut decoder = ChunkDecoder::new(1 << 20);
        let mut out = Vec::new();
        for read in reads {
            decoder.read(read, &mut out);
        }
        decoder.end(&mut out);
        out
    }

    #[test]
    fn every_read_without_text_still_yields_an_empty_chunk() {
        let out = decode_reads(&[
            b": keep-alive\n\n",
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choi",
            b"ces\":[],\"usage\":{}}\n\n",
            b"\n",
            b"data: [DONE]\n\n",
        ]);
        let texts: Vec<_> = out.iter().map(|i| i.as_ref().unwrap().text.as_str()).collect();
        assert_eq!(texts, ["", "", "hi", "", "", ""]);
        assert_eq!(out.last().unwrap().as_ref().unwrap().finish, Some(FinishType::Stop));
    }

    #[test]
    fn a_body_that_ends_without_a_finish_is_truncated() {
        let out = decode_reads(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"]);
        assert!(matches!(out.last(), Some(Err(UpstreamError::Truncated))));
    }

    #[test]
    fn an_endless_line_is_too_large_for_the_answer() {
        let mut decoder = ChunkDecoder::new(10);
        let mut out = Vec::new();
        let endless = vec![b'x'; 8 * 1024];
        while !decoder.is_over() {
            decoder.read(&endless, &mut out);
        }
        assert!(matches!(out.last(), Some(Err(UpstreamError::TooLarge { limit: 10 }))));
    }

    #[test]
    fn a_whole_json_completion_is_one_chunk_with_its_finish_and_usage() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there","reasoning_content":"hm","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;
        let mut decoder = ChunkDecoder::whole_json(1 << 20);
        let mut out = Vec::new();
        let (a, b) = body.split_at(30);
        decoder.read(a, &mut out);
        decoder.read(b, &mut out);
        decoder.end(&mut out);
        let chunks: Vec<Chunk> = out.into_iter().map(Result::unwrap).collect();
        assert!(
            chunks[..2].iter().all(|c| *c == Chunk::default()),
            "reads are life, not text"
        );
        let answer = &chunks[2];
        assert_eq!((answer.text.as_str(), answer.reasoning.as_str()), ("Hello there", "hm"));
        assert_eq!(answer.finish, Some(FinishType::MaxTokens));
        assert_eq!(answer.usage.map(|u| u.completion_tokens), Some(2));
        assert_eq!(answer.tool_calls[0].name.as_deref(), Some("f"));
        for bad in [&br#"{"choices":[]}"#[..], b"not json", br#"{"error":{"message":"no"}}"#] {
            let mut decoder = ChunkDecoder::whole_json(1 << 20);
            let mut out = Vec::new();
            decoder.read(bad, &mut out);
            decoder.end(&mut out);
            assert!(out.last().unwrap().is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut decoder = ChunkDecoder::whole_json(2);
        let mut out = Vec::new();
        while !decoder.is_over() {
            decoder.read(&[b' '; 4096], &mut out);
        }
        assert!(matches!(out.last(), Some(Err(UpstreamError::TooLarge { .. }))));
    }
}
