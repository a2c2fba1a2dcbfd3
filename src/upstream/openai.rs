//! Any OpenAI-compatible `/chat/completions` API (OpenAI, Azure, vLLM, llama.cpp, Ollama,
//! DeepSeek, routers), streamed. What it returns, answer or error, passes through the
//! [`hygiene`] gate first: the key this provider holds never leaves it.

use super::chunks::{ChunkDecoder, error_details};
use super::http::{self, AnswerDecoder, Clients, Endpoint, ErrorResponse, gated};
use super::hygiene::Hygiene;
use super::{ChatMessage, ChatRequest, ChunkStream, Provider, UpstreamError};
use async_trait::async_trait;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Serialize;
use std::sync::Arc;

pub struct OpenAiProvider {
    clients: Clients,
    url: Endpoint,
    key: Option<String>,
    hygiene: Arc<Hygiene>,
    /// An event longer than an answer of this size could be is not read to its end.
    max_answer_bytes: usize,
}

impl OpenAiProvider {
    pub fn new(base_url: &str, key: Option<String>, max_answer_bytes: usize) -> Result<Self, reqwest::Error> {
        Ok(Self {
            clients: Clients::new()?,
            url: Endpoint::new(base_url, "/chat/completions"),
            hygiene: Arc::new(Hygiene::new(key.as_deref())),
            key,
            max_answer_bytes,
        })
    }
}

#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    /// Usage comes in a last chunk of its own (`"choices":[]`) only when asked for.
    stream_options: StreamOptions,
    #[serde(flatten)]
    params: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        gated(&self.hygiene, self.send(request).await)
    }

    fn warm(&self) {
        self.clients.get();
    }
}

impl OpenAiProvider {
    /// The request, and the upstream's answer as it came with the decoder that reads it
    /// (not yet through the gate).
    async fn send(&self, request: ChatRequest) -> Result<(http::Response, impl AnswerDecoder), UpstreamError> {
        let body = RequestBody {
            model: &request.model,
            messages: &request.messages,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            params: &request.params,
        };
        let body = serde_json::to_vec(&body).map_err(|e| UpstreamError::BadChunk(e.to_string()))?;
        let mut builder = self
            .url
            .post(&self.clients)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        if let Some(key) = &self.key {
            // bearer_auth marks the header sensitive, so it never shows in debug output.
            builder = builder.bearer_auth(key);
        }
        let response = http::send(&self.clients, builder).await?;
        if !response.status.is_success() {
            return Err(refusal(response).await);
        }
        // Some servers answer with one JSON object although asked to stream.
        let json = response
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
        let decoder = match json {
            true => ChunkDecoder::whole_json(self.max_answer_bytes),
            false => ChunkDecoder::new(self.max_answer_bytes),
        };
        Ok((response, decoder))
    }
}

async fn refusal(response: http::Response) -> UpstreamError {
    let error = ErrorResponse::read(response).await;
    let (message, code) = error_details(&error.body);
    UpstreamError::Refused {
        status: error.status.as_u16(),
        message: error.message_or_reason(message),
        code,
        retry_after: error.retry_after,
    }
}
