//! The Anthropic Messages API (`POST /v1/messages`), streamed. The request is translated
//! from OpenAI's shape ([`request`]), the events are read by [`events`]; what comes back,
//! answer or error, passes through the [`hygiene`] gate first, as the OpenAI provider's
//! does: the key this provider holds never leaves it.

mod events;
#[cfg(test)]
mod fuzz;
mod request;

pub use events::{EventDecoder, error_details};

use super::http::{self, AnswerDecoder, Clients, Endpoint, ErrorResponse, gated};
use super::hygiene::Hygiene;
use super::{ChatRequest, ChunkStream, Provider, UpstreamError};
use async_trait::async_trait;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use std::sync::Arc;

/// The API version this provider speaks.
const VERSION: &str = "2023-06-01";

pub struct AnthropicProvider {
    clients: Clients,
    url: Endpoint,
    /// The key as a header value, marked sensitive so that it never shows in debug output.
    key: Option<HeaderValue>,
    hygiene: Arc<Hygiene>,
    /// An event longer than an answer of this size could be is not read to its end.
    max_answer_bytes: usize,
}

impl AnthropicProvider {
    /// `base_url` without `/v1` (`https://api.anthropic.com`); `/v1/messages` is appended.
    pub fn new(base_url: &str, key: Option<String>, max_answer_bytes: usize) -> Result<Self, reqwest::Error> {
        Ok(Self {
            clients: Clients::new()?,
            url: Endpoint::new(base_url, "/v1/messages"),
            hygiene: Arc::new(Hygiene::new(key.as_deref())),
            // A key that is no header value would be refused as no key by the API: it is
            // not sent, and the API says why.
            key: key.and_then(|k| HeaderValue::from_str(&k).ok()).map(|mut k| {
                k.set_sensitive(true);
                k
            }),
            max_answer_bytes,
        })
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        gated(&self.hygiene, self.send(request).await)
    }

    fn warm(&self) {
        self.clients.get();
    }
}

impl AnthropicProvider {
    /// The request, and the upstream's answer as it came with the decoder that reads it
    /// (not yet through the gate).
    async fn send(&self, request: ChatRequest) -> Result<(http::Response, impl AnswerDecoder), UpstreamError> {
        let body = serde_json::to_vec(&request::body(&request)).map_err(|e| UpstreamError::BadChunk(e.to_string()))?;
        let mut builder = self
            .url
            .post(&self.clients)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .header("anthropic-version", VERSION)
            .body(body);
        if let Some(key) = &self.key {
            builder = builder.header("x-api-key", key.clone());
        }
        let response = http::send(&self.clients, builder).await?;
        if !response.status.is_success() {
            return Err(refusal(response).await);
        }
        Ok((response, EventDecoder::new(self.max_answer_bytes)))
    }
}

/// An error response: its message, and its error type (`overloaded_error`, …) as the code.
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
