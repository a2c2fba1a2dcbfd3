//! Upstream LLM providers behind one interface: a provider takes a chat request and, once
//! the upstream has accepted it, returns a stream of text deltas. The [`router`] holds
//! them, one per configured upstream, and picks, retries and fails over between them.
//!
//! What an upstream sends passes through [`hygiene`] before anything else sees it: its key
//! is redacted ([`redact`]) and what a client does not need is dropped.

pub mod anthropic;
pub mod chunks;
pub mod demo;
pub mod direct;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod hygiene;
pub mod metered;
pub mod openai;
pub mod redact;
pub mod router;
pub mod sse_decode;

use crate::conversation::FinishType;
pub use crate::conversation::Usage;
use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// One message of the upstream conversation, in OpenAI's shape: `content` is a string (or,
/// from `/v1` clients, an array of parts, or null beside `tool_calls`); other fields
/// (`tool_calls`, `tool_call_id`, `name`) are kept as the client sent them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: Value::String(content.to_owned()),
            extra: Map::new(),
        }
    }

    /// The content's text: the string, or the text parts of an array joined by newlines.
    pub fn text(&self) -> Cow<'_, str> {
        match &self.content {
            Value::String(s) => Cow::Borrowed(s),
            Value::Array(parts) => Cow::Owned(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => Cow::Borrowed(""),
        }
    }
}

/// What is asked of the upstream.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The model as the client named it; the router maps it to targets.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Request fields passed through to the upstream as the client sent them (from `/v1`:
    /// `tools`, `tool_choice`, `response_format`, `temperature`, `top_p`, `max_tokens`,
    /// `max_completion_tokens`, `stop`, `n`, `user`, …). Never `model`, `messages`,
    /// `stream` or `stream_options`: the provider sets those.
    pub params: Map<String, Value>,
}

/// A piece of the answer. A piece with nothing in it says the upstream is still sending
/// (keep-alive bytes). The answer ends after the piece that carries `finish`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunk {
    /// New answer text.
    pub text: String,
    /// New reasoning ("thinking") text, kept apart from the answer.
    pub reasoning: String,
    /// The field the upstream sent `reasoning` in, for `/v1` to send it back the same way.
    pub reasoning_field: ReasoningField,
    /// Pieces of tool calls, in the order the upstream sent them.
    pub tool_calls: Vec<ToolCallDelta>,
    /// Token counts, cumulative: the latest one that came is the answer's.
    pub usage: Option<Usage>,
    pub finish: Option<FinishType>,
}

impl Chunk {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// Carries something a client would see (text, reasoning or a tool call): the first such
    /// piece is the answer's first token.
    pub fn has_content(&self) -> bool {
        !self.text.is_empty() || !self.reasoning.is_empty() || !self.tool_calls.is_empty()
    }
}

/// Where OpenAI-compatible servers put reasoning text in a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningField {
    /// `reasoning_content` (DeepSeek, vLLM, and what Anthropic thinking becomes).
    #[default]
    ReasoningContent,
    /// `reasoning` (OpenRouter, Ollama).
    Reasoning,
}

impl ReasoningField {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningField::ReasoningContent => "reasoning_content",
            ReasoningField::Reasoning => "reasoning",
        }
    }
}

/// A piece of one tool call, as OpenAI streams them: the first piece of a call has its `id`
/// and function `name`, later pieces add to its `arguments`; `index` says which call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// What a provider's decoder hands on: a piece of the answer, or why it ended.
pub type Item = Result<Chunk, UpstreamError>;

/// The answer as it arrives. It ends after the piece that carries `finish`, or with an
/// error; dropping it cancels the upstream request.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// Chunks already read, then the stream they were read from.
pub struct Replay {
    read: std::vec::IntoIter<Chunk>,
    rest: ChunkStream,
}

impl Replay {
    pub fn new(read: Vec<Chunk>, rest: ChunkStream) -> Self {
        Self {
            read: read.into_iter(),
            rest,
        }
    }
}

impl Stream for Replay {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.read.next() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None => self.rest.as_mut().poll_next(cx),
        }
    }
}

/// Everything that can go wrong between the gateway and the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream refused the request (HTTP {status}): {message}")]
    Refused {
        status: u16,
        message: String,
        code: Option<String>,
        retry_after: Option<String>,
    },
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
    #[error("the upstream sent nothing for {} s", .0.as_secs_f64())]
    IdleTimeout(Duration),
    #[error("the upstream connection broke: {0}")]
    Broken(String),
    #[error("the upstream reported an error: {message}")]
    InStream { message: String, code: Option<String> },
    #[error("the upstream's answer ended before it was finished")]
    Truncated,
    #[error("the upstream sent an event that is not a chat completion chunk: {0}")]
    BadChunk(String),
    #[error("the answer reached the limit of {limit} bytes")]
    TooLarge { limit: usize },
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// Sends the request and waits for the upstream's status: an error here means nothing
    /// was streamed, so the client can get a real HTTP status.
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError>;

    /// Readies the calling thread to send requests (its HTTP client and connection pool),
    /// so that the first answer a worker gives does not wait for that. Called as each worker
    /// starts.
    fn warm(&self) {}
}
