//! Upstream LLM providers behind one interface: a provider takes a chat request and, once
//! the upstream has accepted it, returns a stream of text deltas.
//!
//! What an upstream sends passes through [`hygiene`] before anything else sees it: its key
//! is redacted ([`redact`]) and what a client does not need is dropped.

pub mod chunks;
pub mod demo;
#[cfg(test)]
mod fuzz;
pub mod hygiene;
pub mod openai;
pub mod redact;
pub mod sse_decode;

use crate::conversation::FinishType;
use async_trait::async_trait;
use futures::Stream;
use serde::Serialize;
use std::pin::Pin;
use std::time::Duration;

/// One message of the upstream conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// What is asked of the upstream.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
}

/// A piece of the answer: new text, and, on the last piece, why the answer ended. A piece
/// with neither says the upstream is still sending (keep-alive bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    pub text: String,
    pub finish: Option<FinishType>,
}

/// The answer as it arrives. It ends after the piece that carries `finish`, or with an
/// error; dropping it cancels the upstream request.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, UpstreamError>> + Send>>;

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
}

/// The configured provider.
pub enum AnyProvider {
    OpenAi(openai::OpenAiProvider),
    Demo(demo::DemoProvider),
}

impl AnyProvider {
    pub fn is_demo(&self) -> bool {
        matches!(self, AnyProvider::Demo(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            AnyProvider::OpenAi(_) => "openai",
            AnyProvider::Demo(_) => "demo",
        }
    }
}

#[async_trait]
impl Provider for AnyProvider {
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        match self {
            AnyProvider::OpenAi(p) => p.stream_chat(request).await,
            AnyProvider::Demo(p) => p.stream_chat(request).await,
        }
    }
}
