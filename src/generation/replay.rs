//! An answer that is no longer live, replayed from the store as its last frame.

use crate::conversation::{ConversationId, FinishType, Message, Status};
use crate::wire::chatgpt::{AnswerIdentity, FrameState, FrameTemplate, FrameText, escape_into};
use crate::wire::sse;
use bytes::Bytes;

/// `retry`, the last frame of `answer` for a reader that has frames up to `after`, `[DONE]`
/// and `close`. The frame's id is one more than the answer's chunks, as it was live; in
/// delta mode its text and reasoning are what follows chunk `after` (a point past the end
/// means the end).
pub fn last_frame(conversation_id: ConversationId, answer: &Message, after: Option<u64>, delta: bool) -> Vec<Bytes> {
    let identity = AnswerIdentity {
        conversation_id,
        message_id: answer.id,
        parent_id: answer.parent.unwrap_or(answer.id),
        model: answer.model.clone().unwrap_or_default(),
        create_time: answer.create_time,
    };
    let ends = &answer.chunk_ends;
    let after = if delta { after.unwrap_or(0) } else { 0 };
    let text = rest(&answer.content, ends, after);
    let mut escaped = String::with_capacity(text.len() + 16);
    escape_into(&mut escaped, text);
    let reasoning = rest(&answer.reasoning, &answer.reasoning_ends, after);
    let mut reasoning_escaped = String::new();
    escape_into(&mut reasoning_escaped, reasoning);
    let state = FrameState {
        status: answer.status,
        finish: answer.finish.or(match answer.status {
            Status::InProgress => None,
            _ => Some(FinishType::Interrupted),
        }),
        error: answer.error.as_ref(),
        usage: answer.usage,
    };
    let carried = FrameText {
        text: &escaped,
        reasoning: &reasoning_escaped,
    };
    let frame = FrameTemplate::new(&identity).frame(ends.len() as u64 + 1, carried, state);
    vec![
        Bytes::from_static(sse::RETRY),
        frame,
        Bytes::from_static(sse::DONE),
        Bytes::from_static(sse::CLOSE),
    ]
}

/// What of `text` follows chunk `after`, given where each chunk ends (a point past the end
/// means the end; no ends, as for an answer without reasoning, mean the whole text).
fn rest<'a>(text: &'a str, ends: &[u32], after: u64) -> &'a str {
    let start = match after {
        0 => 0,
        n => ends
            .get((n as usize).min(ends.len()).saturating_sub(1))
            .map_or(0, |e| *e as usize),
    };
    // An offset off a character boundary (a damaged row) falls back to the whole text.
    text.get(start..).unwrap_or(text)
}
