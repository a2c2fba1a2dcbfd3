//! Anthropic's Messages API wire format, as its streaming reference describes it: every
//! event is named (`event: content_block_delta`) and its JSON repeats the name in `type`;
//! errors are `{"type":"error","error":{"type","message"}}`, in a body or as an event.

use serde_json::{Value, json};

/// Identity shared by every event of one message.
pub struct Message {
    pub id: String,
    pub model: String,
}

/// One named event, as the API frames it.
pub fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Message {
    pub fn new(model: &str, n: u64) -> Self {
        Self {
            id: format!("msg_mock{n:08}"),
            model: model.to_owned(),
        }
    }

    /// The message object with `content` and `usage`, as `message_start` carries it (empty
    /// content, no stop reason) and as a non-streamed answer is.
    pub fn object(&self, content: Value, stop_reason: Option<&str>, usage: Value) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": self.model,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage,
        })
    }

    /// `message_start`: the message, empty, with its input token count.
    pub fn start(&self, input_tokens: u64) -> String {
        let usage = json!({"input_tokens": input_tokens, "output_tokens": 1});
        event(
            "message_start",
            &json!({"type": "message_start", "message": self.object(json!([]), None, usage)}),
        )
    }

    pub fn ping(&self) -> String {
        event("ping", &json!({"type": "ping"}))
    }

    fn block_start(&self, index: usize, block: Value) -> String {
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    }

    pub fn text_start(&self, index: usize) -> String {
        self.block_start(index, json!({"type": "text", "text": ""}))
    }

    pub fn thinking_start(&self, index: usize) -> String {
        self.block_start(index, json!({"type": "thinking", "thinking": "", "signature": ""}))
    }

    pub fn tool_use_start(&self, index: usize, id: &str, name: &str) -> String {
        self.block_start(index, json!({"type": "tool_use", "id": id, "name": name, "input": {}}))
    }

    fn block_delta(&self, index: usize, delta: Value) -> String {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    pub fn text_delta(&self, index: usize, text: &str) -> String {
        self.block_delta(index, json!({"type": "text_delta", "text": text}))
    }

    pub fn thinking_delta(&self, index: usize, thinking: &str) -> String {
        self.block_delta(index, json!({"type": "thinking_delta", "thinking": thinking}))
    }

    pub fn signature_delta(&self, index: usize, signature: &str) -> String {
        self.block_delta(index, json!({"type": "signature_delta", "signature": signature}))
    }

    pub fn input_json_delta(&self, index: usize, partial_json: &str) -> String {
        self.block_delta(index, json!({"type": "input_json_delta", "partial_json": partial_json}))
    }

    pub fn block_stop(&self, index: usize) -> String {
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        )
    }

    /// `message_delta`: the stop reason and the output tokens so far (cumulative).
    pub fn delta(&self, stop_reason: &str, output_tokens: u64) -> String {
        event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": output_tokens},
            }),
        )
    }

    pub fn stop(&self) -> String {
        event("message_stop", &json!({"type": "message_stop"}))
    }
}

/// An error event after a 200, e.g. `("overloaded_error", "Overloaded")`.
pub fn error_event(kind: &str, message: &str) -> String {
    event(
        "error",
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// The JSON body of an error response.
pub fn error_body(kind: &str, message: &str) -> String {
    json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_mock0000000000000000",
    })
    .to_string()
}

/// The error type and a message the API would send with `status`.
pub fn error_for_status(status: u16) -> String {
    let (kind, message) = match status {
        400 => ("invalid_request_error", "The request was refused by the mock."),
        401 => ("authentication_error", "invalid x-api-key"),
        402 => ("billing_error", "Your credit balance is too low."),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "The requested resource could not be found."),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit.",
        ),
        504 => ("timeout_error", "The request timed out."),
        529 => ("overloaded_error", "Overloaded"),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => ("invalid_request_error", "The request was refused by the mock."),
    };
    error_body(kind, message)
}
