//! Server-Sent Events out: the ChatGPT-shaped message frame, and the event framing.
//!
//! A frame is rendered by hand from pieces fixed for the whole answer plus the answer's
//! text, which is JSON-escaped once as it arrives rather than again for every frame: each
//! frame carries the whole answer so far, so re-encoding it would cost O(n²) per answer.

use crate::conversation::{ConversationId, FinishType, MessageId, Status};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use std::fmt::Write;

/// The end of the stream, after the last data frame.
pub const DONE: &[u8] = b"data: [DONE]\n\n";
pub const CLOSE: &[u8] = b"event: close\ndata: close\n\n";
/// A comment: ignored by clients, it keeps proxies from closing a quiet connection.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// What identifies one answer on the wire.
#[derive(Debug, Clone)]
pub struct AnswerIdentity {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub parent_id: MessageId,
    pub model: String,
    pub create_time: f64,
}

/// The answer so far, raw and JSON-escaped, and the frames it makes.
pub struct AnswerFrames {
    /// `{"message":{"id":…,"content":{"content_type":"text","parts":["`
    head: String,
    /// `,"metadata":{"model_slug":…,"parent_id":…,"finish_details":`
    metadata: String,
    /// `}},"conversation_id":"…","error":`
    tail: String,
    text: String,
    escaped: String,
    deltas: u64,
}

/// How a frame describes the answer: in progress, or its end.
#[derive(Debug, Clone, Copy)]
pub struct FrameState<'a> {
    pub status: Status,
    pub finish: Option<FinishType>,
    pub error: Option<&'a Value>,
}

impl FrameState<'_> {
    pub const IN_PROGRESS: FrameState<'static> = FrameState {
        status: Status::InProgress,
        finish: None,
        error: None,
    };
}

impl AnswerFrames {
    pub fn new(who: &AnswerIdentity) -> Self {
        let model = Value::String(who.model.clone());
        Self {
            head: format!(
                r#"{{"message":{{"id":"{}","author":{{"role":"assistant"}},"create_time":{},"content":{{"content_type":"text","parts":[""#,
                who.message_id,
                Value::from(who.create_time),
            ),
            metadata: format!(
                r#","metadata":{{"model_slug":{model},"parent_id":"{}","finish_details":"#,
                who.parent_id
            ),
            tail: format!(r#"}}}},"conversation_id":"{}","error":"#, who.conversation_id),
            text: String::new(),
            escaped: String::new(),
            deltas: 0,
        }
    }

    pub fn push(&mut self, delta: &str) {
        self.text.push_str(delta);
        escape_into(&mut self.escaped, delta);
        self.deltas += 1;
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// How many deltas the answer holds so far.
    pub fn deltas(&self) -> u64 {
        self.deltas
    }

    /// Where the text ends now: an offset for [`AnswerFrames::frame`]'s `range`.
    pub fn end(&self) -> usize {
        self.escaped.len()
    }

    /// An event `id: {id}` whose `parts[0]` is the text in `range`, given as offsets taken
    /// from [`AnswerFrames::end`] (from 0 for the whole answer up to then).
    pub fn frame(&self, id: u64, range: std::ops::Range<usize>, state: FrameState<'_>) -> Bytes {
        let text = &self.escaped[range];
        let end_turn = if state.status == Status::FinishedSuccessfully {
            "true"
        } else {
            "null"
        };
        let mut out =
            BytesMut::with_capacity(self.head.len() + text.len() + self.metadata.len() + self.tail.len() + 160);
        out.put_slice(b"id: ");
        // Formatting into the frame's own buffer: nothing else is allocated per frame.
        let _ = write!(out, "{id}");
        out.put_slice(b"\ndata: ");
        out.put_slice(self.head.as_bytes());
        out.put_slice(text.as_bytes());
        out.put_slice(br#""]},"status":""#);
        out.put_slice(state.status.as_str().as_bytes());
        out.put_slice(br#"","end_turn":"#);
        out.put_slice(end_turn.as_bytes());
        out.put_slice(self.metadata.as_bytes());
        match state.finish {
            Some(f) => {
                out.put_slice(br#"{"type":""#);
                out.put_slice(f.as_str().as_bytes());
                out.put_slice(br#""}"#);
            }
            None => out.put_slice(b"null"),
        }
        out.put_slice(self.tail.as_bytes());
        match state.error {
            Some(error) => {
                let _ = write!(out, "{error}");
            }
            None => out.put_slice(b"null"),
        }
        out.put_slice(b"}\n\n");
        out.freeze()
    }
}

/// Appends `text` to `out` as the inside of a JSON string.
fn escape_into(out: &mut String, text: &str) {
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::tree::message_json;
    use crate::conversation::{Message, Role};
    use proptest::prelude::*;
    use serde_json::json;

    fn identity() -> AnswerIdentity {
        AnswerIdentity {
            conversation_id: ConversationId::new(),
            message_id: MessageId::new(),
            parent_id: MessageId::new(),
            model: "gpt-\"4o\"".into(),
            create_time: 1732170000.125,
        }
    }

    fn data_of(frame: &Bytes) -> (u64, Value) {
        let text = std::str::from_utf8(frame).unwrap();
        let rest = text.strip_prefix("id: ").unwrap();
        let (id, rest) = rest.split_once('\n').unwrap();
        let data = rest.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap();
        assert!(!data.contains('\n'));
        (id.parse().unwrap(), serde_json::from_str(data).unwrap())
    }

    #[test]
    fn frames_match_the_stored_message_shape() {
        let who = identity();
        let mut frames = AnswerFrames::new(&who);
        frames.push("Hello, ");
        frames.push("\"world\"\n\u{1}");
        let (id, progress) = data_of(&frames.frame(frames.deltas(), 0..frames.end(), FrameState::IN_PROGRESS));
        assert_eq!(id, 2);
        let mut stored = Message::new(
            Some(who.parent_id),
            Role::Assistant,
            frames.text().to_owned(),
            Status::InProgress,
            who.create_time,
        );
        stored.id = who.message_id;
        stored.model = Some(who.model.clone());
        assert_eq!(progress["message"], message_json(&stored));
        assert_eq!(progress["conversation_id"], who.conversation_id.to_string());
        assert_eq!(progress["error"], Value::Null);
        assert_eq!(progress["message"]["content"]["parts"][0], "Hello, \"world\"\n\u{1}");

        let finished = FrameState {
            status: Status::FinishedSuccessfully,
            finish: Some(FinishType::Stop),
            error: None,
        };
        let (id, last) = data_of(&frames.frame(3, 0..frames.end(), finished));
        assert_eq!(id, 3);
        stored.status = Status::FinishedSuccessfully;
        stored.finish = Some(FinishType::Stop);
        assert_eq!(last["message"], message_json(&stored));
        assert_eq!(last["message"]["end_turn"], true);
        assert_eq!(last["message"]["metadata"]["finish_details"], json!({"type": "stop"}));
    }

    #[test]
    fn an_error_frame_carries_the_error_object() {
        let mut frames = AnswerFrames::new(&identity());
        frames.push("partial");
        let error = json!({"message": "boom", "type": "upstream_error", "code": "x"});
        let failed = FrameState {
            status: Status::Error,
            finish: Some(FinishType::Interrupted),
            error: Some(&error),
        };
        let (_, frame) = data_of(&frames.frame(2, 0..frames.end(), failed));
        assert_eq!(frame["error"], error);
        assert_eq!(frame["message"]["status"], "error");
        assert_eq!(frame["message"]["content"]["parts"][0], "partial");
    }

    #[test]
    fn a_delta_frame_carries_only_the_text_after_its_offset() {
        let mut frames = AnswerFrames::new(&identity());
        frames.push("one ");
        let since = frames.end();
        frames.push("\"two\" ");
        frames.push("three");
        let (_, frame) = data_of(&frames.frame(3, since..frames.end(), FrameState::IN_PROGRESS));
        assert_eq!(frame["message"]["content"]["parts"][0], "\"two\" three");
    }

    proptest! {
        #[test]
        fn escaping_round_trips_any_text(pieces in prop::collection::vec(any::<String>(), 0..5)) {
            let mut escaped = String::new();
            for p in &pieces {
                escape_into(&mut escaped, p);
            }
            let parsed: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
            prop_assert_eq!(parsed, pieces.concat());
        }
    }
}
