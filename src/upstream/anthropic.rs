//! PLACEHOLDER, to be replaced at merge by the real Anthropic Messages API provider (written
//! on another branch). It exists so that the router can name the kind and the branch
//! compiles; every request it gets fails as unreachable.

use super::{ChatRequest, ChunkStream, Provider, UpstreamError};
use async_trait::async_trait;

pub struct AnthropicProvider;

impl AnthropicProvider {
    pub fn new(base_url: &str, key: Option<String>, max_answer_bytes: usize) -> Result<Self, reqwest::Error> {
        let _ = (base_url, key, max_answer_bytes);
        Ok(Self)
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    async fn stream_chat(&self, _request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        Err(UpstreamError::Unreachable(
            "the Anthropic provider is not built in yet".into(),
        ))
    }
}
