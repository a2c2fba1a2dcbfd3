//! The one gate between an upstream and everything else: every chunk and every error of an
//! upstream passes through here on its way to a client, the store or the log.
//!
//! The key is redacted ([`Redactor`]) in answer text, however it is spelled or split across
//! chunks, and in every error's text. What a client does not need is not passed on at all:
//! an error keeps its message and, only when it is one of OpenAI's or Anthropic's own, its
//! code; a `Retry-After` only when it is a plain number of seconds; no other field or header.

use super::redact::{Redactor, TextGuard};
use super::{Chunk, Item, ToolCallDelta, UpstreamError};
use std::sync::Arc;

/// Error codes passed on as the upstream sent them; any other code becomes the gateway's.
const KNOWN_CODES: &[&str] = &[
    "rate_limit_exceeded",
    "insufficient_quota",
    "invalid_api_key",
    "model_not_found",
    "context_length_exceeded",
    "server_error",
    // Anthropic's "try again later": the router retries and fails over on it.
    "overloaded_error",
    "content_filter",
    "invalid_prompt",
    "unsupported_parameter",
    "unsupported_value",
    "string_above_max_length",
    // Anthropic's error types, which its provider passes on as codes.
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

/// The longest wait a `Retry-After` may ask of a client.
const RETRY_AFTER_CAP: u64 = 3600;

/// Characters of an upstream's error message passed on.
const MESSAGE_LIMIT: usize = 1000;

/// What one upstream's output is cleaned of.
#[derive(Debug, Default)]
pub struct Hygiene {
    redactor: Redactor,
}

impl Hygiene {
    /// `key`: the upstream key, never to be shown.
    pub fn new(key: Option<&str>) -> Self {
        Self {
            redactor: Redactor::new(key),
        }
    }

    /// An error as it may be shown, stored and logged.
    pub fn error(&self, error: UpstreamError) -> UpstreamError {
        use UpstreamError as U;
        match error {
            U::Refused {
                status,
                message,
                code,
                retry_after,
            } => U::Refused {
                status,
                message: self.message(&message),
                code: known_code(code),
                retry_after: retry_after.as_deref().and_then(seconds),
            },
            U::InStream { message, code } => U::InStream {
                message: self.message(&message),
                code: known_code(code),
            },
            U::Unreachable(m) => U::Unreachable(self.message(&m)),
            U::Broken(m) => U::Broken(self.message(&m)),
            U::BadChunk(m) => U::BadChunk(self.message(&m)),
            e @ (U::IdleTimeout(_) | U::Truncated | U::TooLarge { .. }) => e,
        }
    }

    fn message(&self, text: &str) -> String {
        let text = self.redactor.clean_message(text);
        match text.char_indices().nth(MESSAGE_LIMIT) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }
}

fn known_code(code: Option<String>) -> Option<String> {
    code.filter(|c| KNOWN_CODES.contains(&c.as_str()))
}

/// A `Retry-After` of whole seconds, capped; an HTTP date or anything else is dropped.
fn seconds(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits to parse is more than the cap anyway.
    let seconds = value.parse::<u64>().unwrap_or(u64::MAX).min(RETRY_AFTER_CAP);
    Some(seconds.to_string())
}

/// One answer's way through the gate, item by item. Answer text, reasoning text and
/// tool-call arguments each have their own guard: the key may be split across the pieces
/// of any of them.
pub struct AnswerGate {
    hygiene: Arc<Hygiene>,
    text: TextGuard,
    reasoning: TextGuard,
    arguments: TextGuard,
    /// The tool call whose arguments `arguments` holds back the end of.
    call: Option<u32>,
}

impl AnswerGate {
    pub fn new(hygiene: Arc<Hygiene>) -> Self {
        Self {
            hygiene,
            text: TextGuard::default(),
            reasoning: TextGuard::default(),
            arguments: TextGuard::default(),
            call: None,
        }
    }

    /// Passes one item on. Text that may be the start of the key is held back until the
    /// next item; before an error, what is held is released (it was not the key).
    pub fn item(&mut self, item: Item, out: &mut impl Extend<Item>) {
        match item {
            Ok(mut chunk) => {
                let redactor = &self.hygiene.redactor;
                chunk.text = self.text.pass(redactor, chunk.text);
                if !chunk.reasoning.is_empty() {
                    chunk.reasoning = self.reasoning.pass(redactor, std::mem::take(&mut chunk.reasoning));
                }
                if !chunk.tool_calls.is_empty() {
                    chunk.tool_calls = self.tool_calls(std::mem::take(&mut chunk.tool_calls));
                }
                out.extend([Ok(chunk)]);
            }
            Err(e) => {
                self.end(out);
                out.extend([Err(self.hygiene.error(e))]);
            }
        }
    }

    fn tool_calls(&mut self, calls: Vec<ToolCallDelta>) -> Vec<ToolCallDelta> {
        let hygiene = Arc::clone(&self.hygiene);
        let redactor = &hygiene.redactor;
        let mut out = Vec::with_capacity(calls.len());
        for mut call in calls {
            if self.call.is_some_and(|held| held != call.index) {
                // Another call starts: the previous one's held-back end is its own.
                out.extend(self.release_arguments());
            }
            self.call = Some(call.index);
            call.id = call.id.map(|id| redactor.clean_message(&id));
            call.name = call.name.map(|name| redactor.clean_message(&name));
            call.arguments = self.arguments.pass(redactor, call.arguments);
            out.push(call);
        }
        out
    }

    fn release_arguments(&mut self) -> Option<ToolCallDelta> {
        let held = self.arguments.release();
        let index = self.call?;
        (!held.is_empty()).then(|| ToolCallDelta {
            index,
            arguments: held,
            ..ToolCallDelta::default()
        })
    }

    /// The answer ended: what is held back is released.
    pub fn end(&mut self, out: &mut impl Extend<Item>) {
        let held = Chunk {
            text: self.text.release(),
            reasoning: self.reasoning.release(),
            tool_calls: self.release_arguments().into_iter().collect(),
            ..Chunk::default()
        };
        if held.has_content() {
            out.extend([Ok(held)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-abcdefghijklmnop";

    #[test]
    fn an_error_keeps_only_a_redacted_message_a_known_code_and_plain_seconds() {
        let hygiene = Hygiene::new(Some(KEY));
        let refused = hygiene.error(UpstreamError::Refused {
            status: 401,
            message: format!("bad key {KEY}"),
            code: Some(KEY.into()),
            retry_after: Some(KEY.into()),
        });
        let UpstreamError::Refused {
            message,
            code,
            retry_after,
            ..
        } = refused
        else {
            panic!("still a refusal");
        };
        assert_eq!(message, "bad key [redacted]");
        assert_eq!((code, retry_after), (None, None));
        let known = hygiene.error(UpstreamError::InStream {
            message: "slow down".into(),
            code: Some("rate_limit_exceeded".into()),
        });
        assert!(matches!(known, UpstreamError::InStream { code: Some(c), .. } if c == "rate_limit_exceeded"));
        let overloaded = hygiene.error(UpstreamError::InStream {
            message: "Overloaded".into(),
            code: Some("overloaded_error".into()),
        });
        assert!(matches!(overloaded, UpstreamError::InStream { code: Some(c), .. } if c == "overloaded_error"));
    }

    #[test]
    fn retry_after_is_whole_seconds_at_most_an_hour() {
        assert_eq!(seconds(" 7 ").as_deref(), Some("7"));
        assert_eq!(seconds("86400").as_deref(), Some("3600"));
        assert_eq!(seconds("99999999999999999999999").as_deref(), Some("3600"));
        assert_eq!(seconds("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(seconds("1.5"), None);
        assert_eq!(seconds(""), None);
    }

    #[test]
    fn long_messages_are_cut() {
        let hygiene = Hygiene::new(None);
        let message = hygiene.message(&"é".repeat(5000));
        assert_eq!(message.chars().count(), MESSAGE_LIMIT + 1);
    }

    /// Everything a client would see of `items`, joined per kind.
    fn seen(items: Vec<Chunk>) -> (String, String, String) {
        let mut gate = AnswerGate::new(Arc::new(Hygiene::new(Some(KEY))));
        let mut out = Vec::new();
        for chunk in items {
            gate.item(Ok(chunk), &mut out);
        }
        gate.end(&mut out);
        let mut seen = (String::new(), String::new(), String::new());
        for chunk in out.into_iter().map(Result::unwrap) {
            seen.0.push_str(&chunk.text);
            seen.1.push_str(&chunk.reasoning);
            for call in chunk.tool_calls {
                seen.2.push_str(&format!("{}:{}|", call.index, call.arguments));
            }
        }
        seen
    }

    #[test]
    fn a_key_split_across_reasoning_or_tool_call_pieces_is_redacted() {
        let (head, tail) = KEY.split_at(9);
        let reasoning = |r: &str| Chunk {
            reasoning: r.into(),
            ..Chunk::default()
        };
        let call = |index: u32, arguments: &str| Chunk {
            tool_calls: vec![ToolCallDelta {
                index,
                arguments: arguments.into(),
                ..ToolCallDelta::default()
            }],
            ..Chunk::default()
        };
        let (text, thought, _) = seen(vec![
            Chunk::text("a"),
            reasoning(&format!("x {head}")),
            reasoning(&format!("{tail} y")),
        ]);
        assert_eq!((text.as_str(), thought.as_str()), ("a", "x [redacted] y"));
        let (_, _, calls) = seen(vec![
            call(0, &format!("{{\"k\":\"{head}")),
            call(0, &format!("{tail}\"}}")),
            call(1, "{}"),
        ]);
        assert!(!calls.contains(head) || !calls.contains(tail), "{calls}");
        assert!(calls.contains("[redacted]"), "{calls}");
        // What a call held back stays that call's, and comes before the next call starts.
        let (_, _, calls) = seen(vec![call(0, r#"{"a":"sk-te"#), call(1, "{}")]);
        let pieces: Vec<(&str, &str)> = calls
            .split_terminator('|')
            .map(|p| p.split_once(':').unwrap())
            .collect();
        let of = |i: &str| pieces.iter().filter(|p| p.0 == i).map(|p| p.1).collect::<String>();
        assert_eq!((of("0"), of("1")), (r#"{"a":"sk-te"#.to_owned(), "{}".to_owned()));
        assert_eq!(pieces.last().unwrap().0, "1", "{calls}");
    }
}
