//! The built-in demo provider: with no upstream configured, the gateway still streams a
//! clearly labelled canned answer, word by word at a human pace, so a new user sees
//! streaming and memory work before owning a key.

use super::{ChatRequest, Chunk, ChunkStream, Provider, UpstreamError};
use crate::conversation::FinishType;
use async_trait::async_trait;
use std::time::Duration;

pub struct DemoProvider {
    delay: Duration,
}

impl DemoProvider {
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

/// The canned answer: it quotes the question and counts the earlier messages it was sent,
/// which shows that the conversation is remembered.
pub fn answer(request: &ChatRequest) -> String {
    let question = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text())
        .unwrap_or_default();
    let quoted: String = question.chars().take(200).collect();
    let earlier = request
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .count()
        .saturating_sub(1);
    format!(
        "**[chatgate demo]** This is a canned answer from chatgate's built-in demo provider, \
         not from a language model: no upstream is configured.\n\n\
         You asked: \"{quoted}\"\n\n\
         The gateway sent {earlier} earlier message(s) of this conversation along with it, \
         so follow-ups and branches work just as they will with a real model.\n\n\
         To talk to a real model, restart with an upstream, for example:\n\n\
         ```sh\nOPENAI_API_KEY=sk-... chatgate\n\
         OPENAI_BASE_URL=http://localhost:11434/v1 CHATGATE_MODEL=llama3.1 chatgate\n```"
    )
}

#[async_trait]
impl Provider for DemoProvider {
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        let text = answer(&request);
        let delay = self.delay;
        Ok(Box::pin(async_stream::stream! {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c == ' ' && i > start {
                    tokio::time::sleep(delay).await;
                    yield Ok(Chunk::text(&text[start..i]));
                    start = i;
                }
            }
            tokio::time::sleep(delay).await;
            yield Ok(Chunk { finish: Some(FinishType::Stop), ..Chunk::text(&text[start..]) });
        }))
    }
}
