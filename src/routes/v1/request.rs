//! A Chat Completions request, parsed once into what the upstream is asked and how the
//! client wants the answer.

use crate::error::{RequestError, parse_object};
use crate::upstream::{ChatMessage, ChatRequest};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Request fields passed through to the upstream exactly as the client sent them; any
/// other field is ignored.
const PASSED_THROUGH: &[&str] = &[
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "user",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "metadata",
];

/// The roles a message may have.
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// What a client asked of `/v1/chat/completions`.
#[derive(Debug)]
pub struct CompletionRequest {
    pub upstream: ChatRequest,
    /// Stream `chat.completion.chunk` events (else: one `chat.completion` object).
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage before `[DONE]`.
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl CompletionRequest {
    /// `default_model`: the model of a request that names none.
    pub fn parse(body: &[u8], default_model: &str) -> Result<Self, RequestError> {
        let wire: Wire = parse_object(body)?;
        let messages = wire.messages.ok_or_else(|| {
            invalid(
                "messages",
                "missing_required_parameter",
                "Missing required parameter: 'messages'.".into(),
            )
        })?;
        if messages.is_empty() {
            return Err(invalid(
                "messages",
                "empty_array",
                "Invalid 'messages': empty array. Expected an array with minimum length 1.".into(),
            ));
        }
        if let Some((i, m)) = messages
            .iter()
            .enumerate()
            .find(|(_, m)| !ROLES.contains(&m.role.as_str()))
        {
            return Err(invalid(
                &format!("messages.[{i}].role"),
                "invalid_value",
                format!(
                    "Invalid value: '{}'. Supported values are: {}.",
                    m.role,
                    ROLES.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut rest = wire.rest;
        if let Some(n) = rest.get("n").filter(|n| !n.is_null() && n.as_u64() != Some(1)) {
            return Err(invalid(
                "n",
                "unsupported_value",
                format!("Unsupported value: 'n' is {n}: chatgate relays one choice, so only n=1 is supported."),
            ));
        }
        let params = PASSED_THROUGH
            .iter()
            .filter_map(|name| rest.remove_entry(*name))
            .collect();
        let model = match wire.model.as_deref().map(str::trim) {
            Some(model) if !model.is_empty() => model.to_owned(),
            _ => default_model.to_owned(),
        };
        Ok(Self {
            upstream: ChatRequest {
                model,
                messages,
                params,
            },
            stream: wire.stream.unwrap_or(false),
            include_usage: wire.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        })
    }
}

fn invalid(param: &str, code: &'static str, message: String) -> RequestError {
    RequestError::InvalidParam {
        param: param.to_owned(),
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CompletionRequest, RequestError> {
        CompletionRequest::parse(body.as_bytes(), "default-model")
    }

    #[test]
    fn listed_params_pass_through_as_sent_and_others_are_dropped() {
        let r = parse(
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5,"stop":["x"],
                "tools":[{"type":"function","function":{"name":"f"}}],"n":1,"store":true,
                "stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        let keys: Vec<&str> = r.upstream.params.keys().map(String::as_str).collect();
        assert_eq!(keys, ["tools", "temperature", "stop", "n"]);
        assert_eq!(r.upstream.params["stop"], serde_json::json!(["x"]));
        assert_eq!(r.upstream.model, "default-model");
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn a_message_keeps_its_other_fields_and_unlisted_request_fields_are_skipped() {
        let r = parse(
            r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function"}],"name":"bot"},
                {"content":"x","role":"tool","tool_call_id":"c1"}],
                "prediction":{"type":"content","content":[{"text":"y"}]},"stream":false}"#,
        )
        .unwrap();
        let [call, result] = &r.upstream.messages[..] else {
            panic!("{:?}", r.upstream.messages)
        };
        assert_eq!(call.content, Value::Null, "no content: null");
        assert_eq!(call.extra["tool_calls"][0]["id"], "c1");
        assert_eq!(call.extra["name"], "bot");
        assert_eq!((result.role.as_str(), result.text()), ("tool", "x".into()));
        assert_eq!(result.extra["tool_call_id"], "c1");
        assert!(r.upstream.params.is_empty() && !r.stream);
        // Sent on as it came.
        let sent = serde_json::to_value(call).unwrap();
        assert_eq!(sent["tool_calls"][0]["type"], "function");

        let field = |body: &str| match parse(body) {
            Err(RequestError::InvalidField { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(field(r#"{"messages":[{"content":"x"}]}"#).contains("missing field `role`"));
        assert!(field(r#"{"messages":[{"role":"user","role":"tool"}]}"#).contains("duplicate field `role`"));
        assert!(field(r#"{"messages":[{"role":7}]}"#).contains("invalid type"));
        let array = field(r#"[{"role":"user"}]"#);
        assert_eq!(array, "the request body must be a JSON object, not an array");
    }

    #[test]
    fn bad_requests_name_the_parameter_at_fault() {
        let param = |body: &str| match parse(body) {
            Err(RequestError::InvalidParam { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(r#"{"model":"m"}"#), "messages");
        assert_eq!(param(r#"{"messages":[]}"#), "messages");
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"a"},{"role":"robot","content":"b"}]}"#),
            "messages.[1].role"
        );
        assert_eq!(param(r#"{"messages":[{"role":"user","content":"a"}],"n":2}"#), "n");
        assert!(parse(r#"{"messages":[{"role":"user","content":"a"}],"n":null,"model":" "}"#).is_ok());
        assert!(matches!(parse(r#"{"messages":"#), Err(RequestError::MalformedJson(_))));
        let shape = |body: &str| match parse(body) {
            Err(RequestError::InvalidField { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(shape(r#"{"messages":"hi"}"#).as_deref(), Some("messages"));
        assert_eq!(
            shape(r#"{"messages":[{"role":"user"},{"role":7}]}"#).as_deref(),
            Some("messages.[1].role")
        );
        assert_eq!(
            shape(r#"{"messages":[{"role":"user"}],"stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(
            shape(r#"{"messages":[{"role":"user"}],"stream_options":{"include_usage":1}}"#).as_deref(),
            Some("stream_options.include_usage")
        );
    }
}
