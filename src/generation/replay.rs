//! An answer that is no longer live, replayed from the store as its last frame.

use crate::conversation::{ConversationId, FinishType, Message, Status};
use crate::wire::chatgpt::{AnswerIdentity, FrameState, FrameTemplate, escape_into};
use crate::wire::sse;
use bytes::Bytes;

/// `retry`, the last frame of `answer` for a reader that has frames up to `after`, `[DONE]`
/// and `close`. The frame's id is one more than the answer's chunks, as it was live; in
/// delta mode its text is what follows chunk `after` (a point past the end means the end).
pub fn last_frame(conversation_id: ConversationId, answer: &Message, after: Option<u64>, delta: bool) -> Vec<Bytes> {
    let identity = AnswerIdentity {
        conversation_id,
        message_id: answer.id,
        parent_id: answer.parent.unwrap_or(answer.id),
        model: answer.model.clone().unwrap_or_default(),
        create_time: answer.create_time,
    };
    let ends = &answer.chunk_ends;
    let start = match (delta, after) {
        (true, Some(n)) if n > 0 => ends
            .get((n as usize).min(ends.len()).saturating_sub(1))
            .map_or(0, |e| *e as usize),
        _ => 0,
    };
    // An offset off a character boundary (a damaged row) falls back to the whole text.
    let text = answer.content.get(start..).unwrap_or(&answer.content);
    let mut escaped = String::with_capacity(text.len() + 16);
    escape_into(&mut escaped, text);
    let state = FrameState {
        status: answer.status,
        finish: answer.finish.or(match answer.status {
            Status::InProgress => None,
            _ => Some(FinishType::Interrupted),
        }),
        error: answer.error.as_ref(),
    };
    let frame = FrameTemplate::new(&identity).frame(ends.len() as u64 + 1, &escaped, state);
    vec![
        Bytes::from_static(sse::RETRY),
        frame,
        Bytes::from_static(sse::DONE),
        Bytes::from_static(sse::CLOSE),
    ]
}
