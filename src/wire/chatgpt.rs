//! The ChatGPT-shaped message, decided once in [`message_json`], in its two forms: the
//! stored message and conversation of `GET /conv/{id}`, built with serde_json; and the live
//! frame, cut once per process out of that same rendering, given each answer's identity
//! when the answer starts, and filled in per frame with the answer's JSON-escaped text (escaped once as it arrives, not again for every frame: each
//! frame carries the whole answer so far, so re-encoding it would cost O(n²) per answer).
//! The reasoning text, when there is any, is filled in the same way; an answer without
//! reasoning or token counts has neither key, so its frames are the same bytes as before
//! either existed.

use crate::conversation::{Conversation, ConversationId, FinishType, Message, MessageId, Role, Status, Usage};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::OnceLock;

/// What identifies one answer on the wire.
#[derive(Debug, Clone)]
pub struct AnswerIdentity {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub parent_id: MessageId,
    pub model: String,
    pub create_time: f64,
}

/// A frame's JSON object, cut where it changes from frame to frame: each piece of fixed
/// text is followed by the slot a frame fills in, and a last piece ends it. The pieces are cut
/// out of [`message_json`]'s own rendering, so live frames and stored messages share one
/// shape, decided there.
pub struct FrameTemplate {
    /// The fixed text of every piece and then the tail, in one buffer: a frame reads it
    /// from one place rather than from an allocation per piece.
    fixed: String,
    /// Where each piece ends in `fixed`, and the slot that follows it.
    pieces: Box<[(u32, Slot)]>,
}

/// What a frame fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `parts[0]`, inside its quotes.
    Text,
    /// `status`, inside its quotes.
    Status,
    EndTurn,
    FinishDetails,
    /// `,"reasoning":"…"` in `metadata`, key and all, or nothing when there is none.
    Reasoning,
    /// `,"usage":{…}` in `metadata`, key and all, or nothing when there is none.
    Usage,
    Error,
    // What one answer fills in once, when its template is made (inside their quotes but
    // the last).
    MessageId,
    ParentId,
    ConversationId,
    Model,
    CreateTime,
}

impl Slot {
    const ALL: [Slot; 12] = [
        Slot::Text,
        Slot::Status,
        Slot::EndTurn,
        Slot::FinishDetails,
        Slot::Reasoning,
        Slot::Usage,
        Slot::Error,
        Slot::MessageId,
        Slot::ParentId,
        Slot::ConversationId,
        Slot::Model,
        Slot::CreateTime,
    ];

    /// The value that stands for the slot while the template is cut out.
    fn marker(self) -> String {
        // A per-process nonce: no model name a client sends can contain it.
        static NONCE: OnceLock<String> = OnceLock::new();
        let nonce = NONCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
        format!("\u{0}{nonce}:{self:?}\u{0}")
    }

    /// Whether the slot's value is a JSON string whose quotes stay in the template.
    fn inside_quotes(self) -> bool {
        matches!(
            self,
            Slot::Text | Slot::Status | Slot::MessageId | Slot::ParentId | Slot::ConversationId | Slot::Model
        )
    }

    /// The `metadata` key of a slot that is left out, key and all, when it has no value.
    fn optional_key(self) -> Option<&'static str> {
        match self {
            Slot::Reasoning => Some("reasoning"),
            Slot::Usage => Some("usage"),
            _ => None,
        }
    }
}

/// What of the answer a frame carries, already JSON-escaped by [`escape_into`]: its text
/// (`parts[0]`) and its reasoning (`metadata.reasoning`, no key when empty).
#[derive(Debug, Clone, Copy)]
pub struct FrameText<'a> {
    pub text: &'a str,
    pub reasoning: &'a str,
}

impl<'a> FrameText<'a> {
    /// Text without reasoning.
    pub fn text(text: &'a str) -> Self {
        Self { text, reasoning: "" }
    }
}

/// How a frame describes the answer: in progress, or its end.
#[derive(Debug, Clone, Copy)]
pub struct FrameState<'a> {
    pub status: Status,
    pub finish: Option<FinishType>,
    pub error: Option<&'a Value>,
    /// The answer's token counts: only its last frame has them.
    pub usage: Option<Usage>,
}

impl FrameState<'_> {
    pub const IN_PROGRESS: FrameState<'static> = FrameState {
        status: Status::InProgress,
        finish: None,
        error: None,
        usage: None,
    };
}

/// The frame's JSON object cut once per process, the answer's identity left out as well:
/// each piece of fixed text followed by the slot that comes after it, then the tail.
struct Skeleton {
    pieces: Vec<(String, Slot)>,
    tail: String,
}

impl Skeleton {
    /// Cut out of [`message_json`]'s own rendering, every slot a marker.
    fn cut() -> Self {
        let mut answer = Message::new(
            Some(MessageId::new()),
            Role::Assistant,
            Slot::Text.marker(),
            Status::InProgress,
            0.0,
        );
        answer.model = Some(Slot::Model.marker());
        answer.reasoning = Slot::Reasoning.marker();
        let mut message = message_json(&answer);
        message["id"] = Value::String(Slot::MessageId.marker());
        message["create_time"] = Value::String(Slot::CreateTime.marker());
        message["status"] = Value::String(Slot::Status.marker());
        message["end_turn"] = Value::String(Slot::EndTurn.marker());
        message["metadata"]["parent_id"] = Value::String(Slot::ParentId.marker());
        message["metadata"]["finish_details"] = Value::String(Slot::FinishDetails.marker());
        // Where `message_json` puts it: after the reasoning.
        message["metadata"]["usage"] = Value::String(Slot::Usage.marker());
        let object = json!({
            "message": message,
            "conversation_id": Slot::ConversationId.marker(),
            "error": Slot::Error.marker(),
        });
        let rendered = object.to_string();

        let mut found: Vec<(usize, usize, Slot)> = Slot::ALL
            .into_iter()
            .filter_map(|slot| {
                let escaped = Value::String(slot.marker()).to_string();
                let cut = if slot.inside_quotes() {
                    escaped[1..escaped.len() - 1].to_owned()
                } else if let Some(key) = slot.optional_key() {
                    // Never the first key of `metadata`: a comma comes before it.
                    format!(",\"{key}\":{escaped}")
                } else {
                    escaped
                };
                rendered.find(&cut).map(|at| (at, at + cut.len(), slot))
            })
            .collect();
        found.sort_by_key(|(at, ..)| *at);
        let mut pieces = Vec::with_capacity(found.len());
        let mut from = 0;
        for (at, end, slot) in found {
            pieces.push((rendered[from..at].to_owned(), slot));
            from = end;
        }
        Self {
            pieces,
            tail: rendered[from..].to_owned(),
        }
    }
}

impl FrameTemplate {
    /// The answer's template: the process's skeleton with its identity filled in (a few
    /// hundred bytes copied; the skeleton is rendered and cut once, at the first answer).
    pub fn new(who: &AnswerIdentity) -> Self {
        static SKELETON: OnceLock<Skeleton> = OnceLock::new();
        let skeleton = SKELETON.get_or_init(Skeleton::cut);
        let mut fixed = String::with_capacity(512);
        let mut pieces = Vec::with_capacity(Slot::ALL.len());
        for (text, slot) in &skeleton.pieces {
            fixed.push_str(text);
            // Formatting into the template's own buffer.
            match slot {
                Slot::MessageId => {
                    let _ = write!(fixed, "{}", who.message_id);
                }
                Slot::ParentId => {
                    let _ = write!(fixed, "{}", who.parent_id);
                }
                Slot::ConversationId => {
                    let _ = write!(fixed, "{}", who.conversation_id);
                }
                Slot::Model => escape_into(&mut fixed, &who.model),
                // As serde_json writes a number (`null` for one it cannot hold).
                Slot::CreateTime => fixed.push_str(&Value::from(who.create_time).to_string()),
                // A template is a few hundred bytes.
                _ => pieces.push((fixed.len() as u32, *slot)),
            }
        }
        fixed.push_str(&skeleton.tail);
        Self {
            fixed,
            pieces: pieces.into_boxed_slice(),
        }
    }

    /// An event `id: {id}` carrying `carried`.
    pub fn frame(&self, id: u64, carried: FrameText<'_>, state: FrameState<'_>) -> Bytes {
        let mut out = BytesMut::with_capacity(self.fixed.len() + carried.text.len() + carried.reasoning.len() + 200);
        out.put_slice(b"id: ");
        // Formatting into the frame's own buffer: nothing else is allocated per frame.
        let _ = write!(out, "{id}");
        out.put_slice(b"\ndata: ");
        self.object_into(&mut out, carried, state);
        out.put_slice(b"\n\n");
        out.freeze()
    }

    /// The frame's JSON object alone, as `"stream": false` answers it.
    pub fn object(&self, carried: FrameText<'_>, state: FrameState<'_>) -> Bytes {
        let mut out = BytesMut::with_capacity(self.fixed.len() + carried.text.len() + carried.reasoning.len() + 180);
        self.object_into(&mut out, carried, state);
        out.freeze()
    }

    fn object_into(&self, out: &mut BytesMut, carried: FrameText<'_>, state: FrameState<'_>) {
        let mut from = 0;
        for &(end, slot) in &self.pieces {
            out.put_slice(&self.fixed.as_bytes()[from..end as usize]);
            from = end as usize;
            match slot {
                Slot::Text => out.put_slice(carried.text.as_bytes()),
                Slot::Reasoning if carried.reasoning.is_empty() => {}
                Slot::Reasoning => {
                    out.put_slice(br#","reasoning":""#);
                    out.put_slice(carried.reasoning.as_bytes());
                    out.put_slice(b"\"");
                }
                Slot::Usage => {
                    if let Some(usage) = state.usage {
                        // Formatting into the frame's own buffer: nothing else is allocated.
                        let _ = write!(
                            out,
                            r#","usage":{{"prompt_tokens":{},"completion_tokens":{}}}"#,
                            usage.prompt_tokens, usage.completion_tokens
                        );
                    }
                }
                Slot::Status => out.put_slice(state.status.as_str().as_bytes()),
                Slot::EndTurn if state.status == Status::FinishedSuccessfully => out.put_slice(b"true"),
                Slot::EndTurn => out.put_slice(b"null"),
                Slot::FinishDetails => match state.finish {
                    Some(f) => {
                        out.put_slice(br#"{"type":""#);
                        out.put_slice(f.as_str().as_bytes());
                        out.put_slice(br#""}"#);
                    }
                    None => out.put_slice(b"null"),
                },
                // Filled in when the template was made.
                Slot::MessageId | Slot::ParentId | Slot::ConversationId | Slot::Model | Slot::CreateTime => {}
                Slot::Error => match state.error {
                    // Formatting into the frame's own buffer: nothing else is allocated.
                    Some(error) => {
                        let _ = write!(out, "{error}");
                    }
                    None => out.put_slice(b"null"),
                },
            }
        }
        out.put_slice(&self.fixed.as_bytes()[from..]);
    }
}

/// The two-byte escape of `b` inside a JSON string, if it has one; the other control
/// characters take `\u00XX`, and every other byte stands for itself.
fn short_escape(b: u8) -> Option<&'static str> {
    match b {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        b'\n' => Some("\\n"),
        b'\r' => Some("\\r"),
        b'\t' => Some("\\t"),
        _ => None,
    }
}

/// Appends `text` to `out` as the inside of a JSON string.
pub fn escape_into(out: &mut String, text: &str) {
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = short_escape(b);
        if escape.is_none() && b >= 0x20 {
            continue;
        }
        out.push_str(&text[start..i]);
        match escape {
            Some(escape) => out.push_str(escape),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// How many bytes [`escape_into`] writes for `text`, so that room for exactly them can be
/// made first.
pub fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match short_escape(b) {
            Some(escape) => escape.len(),
            None if b < 0x20 => 6,
            None => 1,
        })
        .sum()
}

/// The text that [`escape_into`] escaped as `escaped`.
pub fn unescape(escaped: &str) -> String {
    let mut quoted = String::with_capacity(escaped.len() + 2);
    quoted.push('"');
    quoted.push_str(escaped);
    quoted.push('"');
    // What `escape_into` writes is always the inside of a JSON string.
    serde_json::from_str(&quoted).unwrap_or_default()
}

/// A stored message as ChatGPT's web client reads it: the same shape as a frame's `message`.
pub fn message_json(m: &Message) -> Value {
    let mut metadata = json!({
        "model_slug": m.model,
        "parent_id": m.parent.map(|p| p.to_string()),
        "finish_details": m.finish.map(|f| json!({"type": f.as_str()})),
    });
    if !m.reasoning.is_empty() {
        metadata["reasoning"] = Value::String(m.reasoning.clone());
    }
    if let Some(usage) = m.usage {
        metadata["usage"] = usage_json(usage);
    }
    if let Some(error) = &m.error {
        metadata["error"] = error.clone();
    }
    json!({
        "id": m.id.to_string(),
        "author": {"role": m.role.as_str()},
        "create_time": m.create_time,
        "content": {"content_type": "text", "parts": [m.content]},
        "status": m.status.as_str(),
        "end_turn": end_turn(m),
        "metadata": metadata,
    })
}

/// `metadata.usage`.
pub fn usage_json(usage: Usage) -> Value {
    json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens})
}

fn end_turn(m: &Message) -> Value {
    if m.role == Role::Assistant && m.status == Status::FinishedSuccessfully {
        Value::Bool(true)
    } else {
        Value::Null
    }
}

/// `GET /conv/{id}`: the conversation with every node, keyed by id.
pub fn conversation_json(c: &Conversation) -> Value {
    let mut children: HashMap<MessageId, Vec<String>> = HashMap::new();
    for m in &c.messages {
        if let Some(parent) = m.parent {
            children.entry(parent).or_default().push(m.id.to_string());
        }
    }
    let mut mapping = Map::with_capacity(c.messages.len());
    for m in &c.messages {
        let message = match m.role {
            Role::Root => Value::Null,
            _ => message_json(m),
        };
        mapping.insert(
            m.id.to_string(),
            json!({
                "id": m.id.to_string(),
                "parent": m.parent.map(|p| p.to_string()),
                "children": children.remove(&m.id).unwrap_or_default(),
                "message": message,
            }),
        );
    }
    json!({
        "conversation_id": c.id.to_string(),
        "title": c.title,
        "create_time": c.create_time,
        "update_time": c.update_time,
        "current_node": c.current_node.to_string(),
        "mapping": mapping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn identity() -> AnswerIdentity {
        AnswerIdentity {
            conversation_id: ConversationId::new(),
            message_id: MessageId::new(),
            parent_id: MessageId::new(),
            model: "gpt-\"4o\"".into(),
            create_time: 1732170000.125,
        }
    }

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, text);
        out
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
        let template = FrameTemplate::new(&who);
        let text = "Hello, \"world\"\n\u{1}";
        let (id, progress) = data_of(&template.frame(2, FrameText::text(&escaped(text)), FrameState::IN_PROGRESS));
        assert_eq!(id, 2);
        let mut stored = Message::new(
            Some(who.parent_id),
            Role::Assistant,
            text.to_owned(),
            Status::InProgress,
            who.create_time,
        );
        stored.id = who.message_id;
        stored.model = Some(who.model.clone());
        assert_eq!(progress["message"], message_json(&stored));
        assert_eq!(progress["conversation_id"], who.conversation_id.to_string());
        assert_eq!(progress["error"], Value::Null);
        assert_eq!(progress["message"]["content"]["parts"][0], text);

        let finished = FrameState {
            status: Status::FinishedSuccessfully,
            finish: Some(FinishType::Stop),
            error: None,
            usage: None,
        };
        let (id, last) = data_of(&template.frame(3, FrameText::text(&escaped(text)), finished));
        assert_eq!(id, 3);
        stored.status = Status::FinishedSuccessfully;
        stored.finish = Some(FinishType::Stop);
        assert_eq!(last["message"], message_json(&stored));
        assert_eq!(last["message"]["end_turn"], true);
        assert_eq!(last["message"]["metadata"]["finish_details"], json!({"type": "stop"}));
        let object: Value =
            serde_json::from_slice(&template.object(FrameText::text(&escaped(text)), finished)).unwrap();
        assert_eq!(object, last);
    }

    #[test]
    fn an_error_frame_carries_the_error_object() {
        let template = FrameTemplate::new(&identity());
        let error = json!({"message": "boom", "type": "upstream_error", "code": "x"});
        let failed = FrameState {
            status: Status::Error,
            finish: Some(FinishType::Interrupted),
            error: Some(&error),
            usage: None,
        };
        let (_, frame) = data_of(&template.frame(2, FrameText::text("partial"), failed));
        assert_eq!(frame["error"], error);
        assert_eq!(frame["message"]["status"], "error");
        assert_eq!(frame["message"]["content"]["parts"][0], "partial");
    }

    #[test]
    fn reasoning_and_usage_are_in_metadata_only_when_there_are_some() {
        let who = identity();
        let template = FrameTemplate::new(&who);
        let bytes = template.frame(1, FrameText::text("answer"), FrameState::IN_PROGRESS);
        // Byte for byte what the message renders as without either key.
        let mut plain_message = Message::new(
            Some(who.parent_id),
            Role::Assistant,
            "answer".to_owned(),
            Status::InProgress,
            who.create_time,
        );
        plain_message.id = who.message_id;
        plain_message.model = Some(who.model.clone());
        let object = json!({
            "message": message_json(&plain_message),
            "conversation_id": who.conversation_id.to_string(),
            "error": null,
        });
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            format!("id: 1\ndata: {object}\n\n")
        );
        let (_, plain) = data_of(&bytes);
        let metadata = plain["message"]["metadata"].as_object().unwrap();
        assert!(!metadata.contains_key("reasoning") && !metadata.contains_key("usage"));

        let reasoning = "Let me \"think\"\n";
        let usage = Usage {
            prompt_tokens: 12,
            completion_tokens: 34,
        };
        let finished = FrameState {
            status: Status::FinishedSuccessfully,
            finish: Some(FinishType::Stop),
            error: None,
            usage: Some(usage),
        };
        let (_, last) = data_of(&template.frame(
            3,
            FrameText {
                text: "answer",
                reasoning: &escaped(reasoning),
            },
            finished,
        ));
        let mut stored = Message::new(
            Some(who.parent_id),
            Role::Assistant,
            "answer".to_owned(),
            Status::FinishedSuccessfully,
            who.create_time,
        );
        stored.id = who.message_id;
        stored.model = Some(who.model.clone());
        stored.finish = Some(FinishType::Stop);
        stored.reasoning = reasoning.to_owned();
        stored.usage = Some(usage);
        assert_eq!(last["message"], message_json(&stored));
        assert_eq!(last["message"]["metadata"]["reasoning"], reasoning);
        assert_eq!(
            last["message"]["metadata"]["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 34})
        );
        assert_eq!(last["message"]["content"]["parts"][0], "answer");
    }

    proptest! {
        /// Every answer's template is the process's one skeleton with its identity filled
        /// in: whatever the model's name and the time, a frame is the stored shape.
        #[test]
        fn any_identity_makes_frames_of_the_stored_shape(model in any::<String>(), create_time in any::<f64>()) {
            let who = AnswerIdentity { model, create_time, ..identity() };
            let template = FrameTemplate::new(&who);
            let (_, frame) = data_of(&template.frame(1, FrameText::text(&escaped("hi")), FrameState::IN_PROGRESS));
            let mut stored = Message::new(Some(who.parent_id), Role::Assistant, "hi".to_owned(), Status::InProgress, who.create_time);
            stored.id = who.message_id;
            stored.model = Some(who.model.clone());
            // Both as a client reads them, from their text (a float parses back the same
            // from the same text only).
            let stored: Value = serde_json::from_str(&message_json(&stored).to_string()).unwrap();
            prop_assert_eq!(&frame["message"], &stored);
            prop_assert_eq!(&frame["conversation_id"], &Value::String(who.conversation_id.to_string()));
        }

        #[test]
        fn escaping_round_trips_any_text(
            // Any text, and text made mostly of what needs escaping (which any text seldom
            // has): control characters, quotes, backslashes, beside multi-byte characters.
            pieces in prop::collection::vec(prop_oneof![any::<String>(), "[\\x00-\\x1f\"\\\\aé😀]{0,12}"], 0..5)
        ) {
            let mut escaped = String::new();
            for p in &pieces {
                let before = escaped.len();
                escape_into(&mut escaped, p);
                prop_assert_eq!(escaped.len() - before, escaped_len(p), "the length told beforehand");
            }
            let parsed: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
            prop_assert_eq!(&parsed, &pieces.concat());
            prop_assert_eq!(unescape(&escaped), parsed);
        }
    }
}
