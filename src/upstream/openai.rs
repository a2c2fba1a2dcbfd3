//! Any OpenAI-compatible `/chat/completions` API (OpenAI, Azure, vLLM, llama.cpp, Ollama,
//! DeepSeek, routers), streamed. What it returns, answer or error, passes through the
//! [`hygiene`] gate first: the key this provider holds never leaves it.

use super::chunks::{ChunkDecoder, error_details};
use super::hygiene::{self, Hygiene};
use super::{ChatMessage, ChatRequest, ChunkStream, Provider, UpstreamError};
use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

/// Most of an error body worth reading; bodies are short, a proxy's HTML page is not.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

pub struct OpenAiProvider {
    /// One HTTP client, and so one connection pool, per thread. hyper drives a connection
    /// on a task of the runtime that opened it, and actix runs a single-threaded runtime
    /// per worker: a connection opened on one worker and reused from another would wake
    /// the first worker's thread for every chunk of every answer.
    clients: Mutex<HashMap<ThreadId, reqwest::Client>>,
    /// Built at start-up, so that settings that cannot make a client fail there; shared
    /// by any thread whose own client could not be built after all.
    fallback: reqwest::Client,
    url: String,
    key: Option<String>,
    hygiene: Arc<Hygiene>,
    /// An event longer than an answer of this size could be is not read to its end.
    max_answer_bytes: usize,
}

impl OpenAiProvider {
    pub fn new(base_url: &str, key: Option<String>, max_answer_bytes: usize) -> Result<Self, reqwest::Error> {
        Ok(Self {
            clients: Mutex::default(),
            fallback: build_client()?,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            hygiene: Arc::new(Hygiene::new(key.as_deref())),
            key,
            max_answer_bytes,
        })
    }

    /// This thread's client.
    fn client(&self) -> reqwest::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(std::thread::current().id())
            .or_insert_with(|| build_client().unwrap_or_else(|_| self.fallback.clone()))
            .clone()
    }
}

fn build_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // Nagle's algorithm would hold the request's last segment for the ACK of the
        // previous one, adding ~40 ms to every turn.
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
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
        match self.send(request).await {
            Ok(stream) => Ok(hygiene::guard(Arc::clone(&self.hygiene), stream)),
            Err(e) => Err(self.hygiene.error(e)),
        }
    }
}

impl OpenAiProvider {
    /// The request, and the upstream's answer as it came (not yet through the gate).
    async fn send(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        let body = RequestBody {
            model: &request.model,
            messages: &request.messages,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            params: &request.params,
        };
        let body = serde_json::to_vec(&body).map_err(|e| UpstreamError::BadChunk(e.to_string()))?;
        let mut builder = self
            .client()
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        if let Some(key) = &self.key {
            // bearer_auth marks the header sensitive, so it never shows in debug output.
            builder = builder.bearer_auth(key);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal(response).await);
        }
        Ok(decode(response, self.max_answer_bytes))
    }
}

/// The error and its causes on one line: reqwest's own message alone rarely says why.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

async fn refusal(mut response: reqwest::Response) -> UpstreamError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            _ => break,
        }
    }
    let (message, code) = error_details(&body);
    let message = match message {
        Some(m) if !m.is_empty() => m,
        _ => status.canonical_reason().unwrap_or("no reason given").to_owned(),
    };
    UpstreamError::Refused {
        status: status.as_u16(),
        message,
        code,
        retry_after,
    }
}

/// The response body as chunks, read by [`ChunkDecoder`].
fn decode(response: reqwest::Response, max_answer_bytes: usize) -> ChunkStream {
    Box::pin(async_stream::stream! {
        let mut body = response.bytes_stream();
        let mut decoder = ChunkDecoder::new(max_answer_bytes);
        let mut items = Vec::new();
        while !decoder.is_over() {
            match body.next().await {
                Some(Ok(bytes)) => decoder.read(&bytes, &mut items),
                Some(Err(e)) => {
                    yield Err(UpstreamError::Broken(describe(&e)));
                    return;
                }
                None => decoder.end(&mut items),
            }
            for item in items.drain(..) {
                yield item;
            }
        }
    })
}
