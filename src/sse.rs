//! Server-Sent Events out: the ChatGPT-shaped message frame, and the event framing.
//!
//! A frame is rendered by hand from pieces fixed for the whole answer plus the answer's
//! text, which is JSON-escaped once as it arrives rather than again for every frame: each
//! frame carries the whole answer so far, so re-encoding it would cost O(n²) per answer.

use crate::conversation::{ConversationId, FinishType, MessageId, Status};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

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
    next_id: u64,
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
            next_id: 1,
        }
    }

    pub fn push(&mut self, delta: &str) {
        self.text.push_str(delta);
        escape_into(&mut self.escaped, delta);
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// The id of the next event: events of one answer are numbered from 1.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// An `in_progress` frame with the whole answer so far.
    pub fn progress(&mut self) -> Bytes {
        self.frame(Status::InProgress, None, None)
    }

    /// The last data frame: finished, cut short, or failed with `error`.
    pub fn last(&mut self, status: Status, finish: Option<FinishType>, error: Option<&Value>) -> Bytes {
        self.frame(status, finish, error)
    }

    fn frame(&mut self, status: Status, finish: Option<FinishType>, error: Option<&Value>) -> Bytes {
        let id = self.next_id;
        self.next_id += 1;
        let end_turn = if status == Status::FinishedSuccessfully {
            "true"
        } else {
            "null"
        };
        let error = error.map_or_else(|| "null".to_owned(), Value::to_string);
        let mut out =
            BytesMut::with_capacity(self.head.len() + self.escaped.len() + self.metadata.len() + self.tail.len() + 160);
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(self.head.as_bytes());
        out.put_slice(self.escaped.as_bytes());
        out.put_slice(br#""]},"status":""#);
        out.put_slice(status.as_str().as_bytes());
        out.put_slice(br#"","end_turn":"#);
        out.put_slice(end_turn.as_bytes());
        out.put_slice(self.metadata.as_bytes());
        match finish {
            Some(f) => {
                out.put_slice(br#"{"type":""#);
                out.put_slice(f.as_str().as_bytes());
                out.put_slice(br#""}"#);
            }
            None => out.put_slice(b"null"),
        }
        out.put_slice(self.tail.as_bytes());
        out.put_slice(error.as_bytes());
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
        let (id, progress) = data_of(&frames.progress());
        assert_eq!(id, 1);
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

        let (id, last) = data_of(&frames.last(Status::FinishedSuccessfully, Some(FinishType::Stop), None));
        assert_eq!(id, 2);
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
        let (_, frame) = data_of(&frames.last(Status::Error, Some(FinishType::Interrupted), Some(&error)));
        assert_eq!(frame["error"], error);
        assert_eq!(frame["message"]["status"], "error");
        assert_eq!(frame["message"]["content"]["parts"][0], "partial");
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
