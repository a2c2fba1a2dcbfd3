//! Any OpenAI-compatible `/chat/completions` API (OpenAI, Azure, vLLM, llama.cpp, Ollama,
//! DeepSeek, routers), streamed.

use super::sse_decode::{SseDecoder, SseEvent};
use super::{ChatMessage, ChatRequest, Chunk, ChunkStream, Provider, UpstreamError};
use crate::conversation::FinishType;
use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
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
}

impl OpenAiProvider {
    pub fn new(base_url: &str, key: Option<String>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            clients: Mutex::default(),
            fallback: build_client()?,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            key,
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
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
        let body = RequestBody {
            model: &request.model,
            messages: &request.messages,
            stream: true,
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
            .map_err(|e| UpstreamError::Unreachable(redact(&describe(&e), self.key.as_deref())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal(response, self.key.as_deref()).await);
        }
        Ok(decode(response, self.key.clone()))
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

async fn refusal(mut response: reqwest::Response, key: Option<&str>) -> UpstreamError {
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
        message: redact(&message, key),
        code,
        retry_after,
    }
}

/// Reads an error's message and code from the shapes upstreams use: OpenAI's
/// `{"error":{"message","code"}}`, `{"error":"…"}` (Ollama), `{"message"}`, `{"detail"}`
/// (FastAPI servers such as vLLM), or plain text.
fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text: String = text.trim().chars().take(500).collect();
        return (Some(text), None);
    };
    let error = json.get("error").unwrap_or(&json);
    let message = match error {
        Value::String(s) => Some(s.clone()),
        _ => ["message", "detail"]
            .iter()
            .find_map(|k| error.get(*k))
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned)),
    };
    let code = error.get("code").and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    (message.or_else(|| Some(json.to_string())), code)
}

/// Removes the operator's key from text bound for a client or a log, and any word that
/// starts like it (OpenAI echoes keys half-masked: `sk-proj-abc***wxyz`).
pub fn redact(text: &str, key: Option<&str>) -> String {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return text.to_owned();
    };
    let text = text.replace(key, "[redacted]");
    match key.get(..6).filter(|_| key.len() >= 12) {
        Some(head) => text
            .split(' ')
            .map(|word| if word.starts_with(head) { "[redacted]" } else { word })
            .collect::<Vec<_>>()
            .join(" "),
        None => text,
    }
}

#[derive(Deserialize)]
struct ChunkWire {
    #[serde(default)]
    choices: Vec<ChoiceWire>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceWire {
    #[serde(default)]
    delta: Option<DeltaWire>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaWire {
    #[serde(default)]
    content: Option<String>,
}

/// What one upstream event means.
enum Parsed {
    Chunk(Chunk),
    Done,
}

fn parse_event(event: &SseEvent, key: Option<&str>) -> Result<Option<Parsed>, UpstreamError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(Some(Parsed::Done));
    }
    if data.is_empty() {
        return Ok(None);
    }
    let chunk: ChunkWire = serde_json::from_str(data).map_err(|e| {
        let shown: String = data.chars().take(200).collect();
        UpstreamError::BadChunk(format!("{e}: {shown}"))
    })?;
    if chunk.error.is_some() || event.event.as_deref() == Some("error") {
        let (message, code) = error_details(data.as_bytes());
        return Err(UpstreamError::InStream {
            message: redact(&message.unwrap_or_default(), key),
            code,
        });
    }
    // Only the first choice is relayed: the gateway never asks for `n > 1`.
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(None); // the usage chunk
    };
    let text = choice.delta.and_then(|d| d.content).unwrap_or_default();
    let finish = choice.finish_reason.map(|reason| match reason.as_str() {
        "length" => FinishType::MaxTokens,
        _ => FinishType::Stop,
    });
    if text.is_empty() && finish.is_none() {
        return Ok(None); // the role chunk
    }
    Ok(Some(Parsed::Chunk(Chunk { text, finish })))
}

/// The response body as deltas. Ends after `[DONE]`; a body that ends without `[DONE]` is
/// complete if a finish reason came, and truncated otherwise.
fn decode(response: reqwest::Response, key: Option<String>) -> ChunkStream {
    Box::pin(async_stream::stream! {
        let mut body = response.bytes_stream();
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        let mut finished = false;
        let mut ended = false;
        'read: while !ended {
            match body.next().await {
                Some(Ok(bytes)) => decoder.feed(&bytes, &mut events),
                Some(Err(e)) => {
                    yield Err(UpstreamError::Broken(redact(&describe(&e), key.as_deref())));
                    return;
                }
                None => {
                    decoder.finish(&mut events);
                    ended = true;
                }
            }
            for event in events.drain(..) {
                match parse_event(&event, key.as_deref()) {
                    Ok(None) => {}
                    Ok(Some(Parsed::Chunk(delta))) => {
                        finished |= delta.finish.is_some();
                        yield Ok(delta);
                    }
                    Ok(Some(Parsed::Done)) => {
                        if !finished {
                            yield Ok(Chunk { text: String::new(), finish: Some(FinishType::Stop) });
                        }
                        finished = true;
                        break 'read;
                    }
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                }
            }
        }
        if !finished {
            yield Err(UpstreamError::Truncated);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_from_several_upstreams() {
        let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            error_details(openai),
            (Some("Rate limit reached".into()), Some("rate_limit_exceeded".into()))
        );
        assert_eq!(
            error_details(br#"{"error":"model 'x' not found"}"#).0.unwrap(),
            "model 'x' not found"
        );
        assert_eq!(error_details(br#"{"detail":"Not Found"}"#).0.unwrap(), "Not Found");
        assert_eq!(
            error_details(b"  <html>bad gateway</html> ").0.unwrap(),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn the_key_and_its_masked_echo_are_redacted() {
        let key = "sk-proj-abcdefghijklmnop1234";
        let text = format!("Incorrect API key provided: {key}. Or sk-proj-abc****1234 here.");
        let clean = redact(&text, Some(key));
        assert!(!clean.contains("abcdefghijklmnop"), "{clean}");
        assert!(!clean.contains("sk-proj-abc"), "{clean}");
        assert!(clean.starts_with("Incorrect API key provided: [redacted]"));
        assert_eq!(redact("nothing secret here", Some(key)), "nothing secret here");
    }

    #[test]
    fn chunks_become_deltas() {
        let event = |data: &str| SseEvent {
            event: None,
            data: data.into(),
        };
        let delta = |d: &str| match parse_event(&event(d), None) {
            Ok(Some(Parsed::Chunk(delta))) => Some(delta),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            delta(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            None
        );
        assert_eq!(delta(r#"{"choices":[],"usage":{"total_tokens":3}}"#), None);
        assert_eq!(
            delta(r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#)
                .unwrap()
                .text,
            "hi"
        );
        assert_eq!(
            delta(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#)
                .unwrap()
                .finish,
            Some(FinishType::MaxTokens)
        );
        assert!(matches!(
            parse_event(&event(r#"{"error":{"message":"boom"}}"#), None),
            Err(UpstreamError::InStream { .. })
        ));
        assert!(matches!(
            parse_event(&event("not json"), None),
            Err(UpstreamError::BadChunk(_))
        ));
    }
}
