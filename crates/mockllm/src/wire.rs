//! The OpenAI `chat.completion.chunk` wire format, byte for byte as the real API sends it.

use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

/// Identity shared by every chunk of one completion.
pub struct Completion {
    pub id: String,
    pub model: String,
    pub created: u64,
}

impl Completion {
    pub fn new(model: &str, n: u64) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            id: format!("chatcmpl-mock{n:08}"),
            model: model.to_owned(),
            created,
        }
    }

    fn chunk(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> String {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        format!("data: {body}\n\n")
    }

    pub fn role(&self) -> String {
        self.chunk(json!({"role": "assistant", "content": "", "refusal": null}), None)
    }

    pub fn content(&self, text: &str) -> String {
        self.chunk(json!({"content": text}), None)
    }

    /// Reasoning text, in the delta field `field` (`reasoning_content` or `reasoning`).
    pub fn reasoning(&self, field: &str, text: &str) -> String {
        self.chunk(json!({ field: text }), None)
    }

    /// The first piece of tool call `index`: its id, type and name, no arguments yet.
    pub fn tool_call_start(&self, index: usize, id: &str, name: &str) -> String {
        let call = json!({"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}});
        self.chunk(json!({"tool_calls": [call]}), None)
    }

    /// A later piece of tool call `index`: more of its arguments.
    pub fn tool_call_arguments(&self, index: usize, arguments: &str) -> String {
        let call = json!({"index": index, "function": {"arguments": arguments}});
        self.chunk(json!({"tool_calls": [call]}), None)
    }

    pub fn finish(&self, reason: &str) -> String {
        self.chunk(json!({}), Some(reason))
    }

    /// The usage chunk the API sends when asked for `stream_options.include_usage`:
    /// its `choices` is empty.
    pub fn usage(&self, prompt_tokens: usize, completion_tokens: usize) -> String {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        format!("data: {body}\n\n")
    }
}

pub const DONE: &str = "data: [DONE]\n\n";

/// The JSON error body the API sends with a non-2xx status, and mid-stream.
pub fn error_body(message: &str, kind: &str, code: &str) -> String {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

/// The error body the real API would send for `status`.
pub fn error_for_status(status: u16) -> String {
    match status {
        401 => error_body(
            "Incorrect API key provided: sk-mock****. You can find your API key at the dashboard.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        429 => error_body(
            "Rate limit reached for requests. Please try again later.",
            "requests",
            "rate_limit_exceeded",
        ),
        s if s >= 500 => error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            "server_error",
        ),
        _ => error_body(
            "The request was refused by the mock.",
            "invalid_request_error",
            "mock_refused",
        ),
    }
}
