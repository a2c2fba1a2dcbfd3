//! `[mock:key=value]` directives inside a user message, so a client that can only type
//! (the browser tests) can script the mock.

/// What the last user message asked of the mock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// Extra words appended to the echo (`w1 w2 …`).
    pub words: usize,
    /// Milliseconds between chunks.
    pub delay_ms: u64,
    /// Milliseconds before the first chunk.
    pub first_delay_ms: u64,
    /// Refuse with this HTTP status.
    pub status: Option<u16>,
    /// `Retry-After` seconds to send with a refusal.
    pub retry_after: Option<u64>,
    /// Send this many content chunks, then an in-stream error event.
    pub error_after: Option<usize>,
    /// Send the role chunk, then nothing, forever.
    pub stall: bool,
    /// Answer with this many parallel tool calls instead of text (see [`crate::tool_calls`]).
    pub tool_calls: usize,
    /// Stream this many reasoning pieces before the answer (see [`crate::reasoning`]).
    pub reasoning: usize,
    /// The delta field reasoning comes in: `reasoning_content` (DeepSeek, vLLM) or
    /// `reasoning` (OpenRouter, Ollama).
    pub reasoning_field: &'static str,
    /// The finish reason sent (`stop`, or `tool_calls` for tool calls).
    pub finish: Option<&'static str>,
    /// Anthropic: after `message_start` (and `error-after` words), an `overloaded_error` event.
    pub overloaded: bool,
    /// Anthropic: think aloud (a thinking block) before answering.
    pub thinking: bool,
    /// Anthropic: answer with a call of the request's first tool.
    pub tool: bool,
    /// Anthropic: end the stream without `message_stop`.
    pub no_stop: bool,
    /// Anthropic: send an event of a type the reference does not name.
    pub unknown_event: bool,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            words: 0,
            delay_ms: 20,
            first_delay_ms: 0,
            status: None,
            retry_after: None,
            error_after: None,
            stall: false,
            tool_calls: 0,
            reasoning: 0,
            reasoning_field: "reasoning_content",
            finish: None,
            overloaded: false,
            thinking: false,
            tool: false,
            no_stop: false,
            unknown_event: false,
        }
    }
}

/// Splits `text` into the text with every directive removed, and the directives.
/// Unknown or malformed directives are left in the text, so a typo shows in the echo.
pub fn parse(text: &str) -> (String, Directives) {
    let mut directives = Directives::default();
    let mut clean = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[mock:") {
        clean.push_str(&rest[..start]);
        let after = &rest[start + "[mock:".len()..];
        let Some(end) = after.find(']') else {
            clean.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let body = &after[..end];
        if !apply(&mut directives, body) {
            clean.push_str(&rest[start..start + "[mock:".len() + end + 1]);
        }
        rest = &after[end + 1..];
    }
    clean.push_str(rest);
    (clean.split_whitespace().collect::<Vec<_>>().join(" "), directives)
}

fn apply(d: &mut Directives, body: &str) -> bool {
    let (key, value) = body.split_once('=').unwrap_or((body, ""));
    let number = value.trim().parse::<u64>();
    match (key.trim(), number) {
        ("words", Ok(n)) => d.words = n as usize,
        ("delay", Ok(n)) => d.delay_ms = n,
        ("first-delay", Ok(n)) => d.first_delay_ms = n,
        ("status", Ok(n)) => d.status = u16::try_from(n).ok(),
        ("retry-after", Ok(n)) => d.retry_after = Some(n),
        ("error-after", Ok(n)) => d.error_after = Some(n as usize),
        ("stall", _) => d.stall = true,
        ("tool-calls", Ok(n)) => d.tool_calls = n as usize,
        ("reasoning", Ok(n)) => d.reasoning = n as usize,
        ("reasoning-field", _) => match value.trim() {
            "reasoning" => d.reasoning_field = "reasoning",
            "reasoning_content" => d.reasoning_field = "reasoning_content",
            _ => return false,
        },
        ("finish", _) => match value.trim() {
            "stop" => d.finish = Some("stop"),
            "length" => d.finish = Some("length"),
            "content_filter" => d.finish = Some("content_filter"),
            _ => return false,
        },
        ("anthropic-overloaded", _) => d.overloaded = true,
        ("thinking", _) => d.thinking = true,
        ("tool", _) => d.tool = true,
        ("no-stop", _) => d.no_stop = true,
        ("unknown-event", _) => d.unknown_event = true,
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_removed_from_the_text_and_applied() {
        let (text, d) = parse("hello [mock:words=3] there [mock:status=429][mock:retry-after=7]");
        assert_eq!(text, "hello there");
        assert_eq!(d.words, 3);
        assert_eq!(d.status, Some(429));
        assert_eq!(d.retry_after, Some(7));
        let (_, d) = parse("[mock:tool-calls=2][mock:reasoning=3][mock:reasoning-field=reasoning][mock:finish=length]");
        assert_eq!((d.tool_calls, d.reasoning, d.reasoning_field), (2, 3, "reasoning"));
        assert_eq!(d.finish, Some("length"));
        let (text, d) = parse("think [mock:thinking][mock:tool] [mock:no-stop][mock:anthropic-overloaded]");
        assert_eq!(text, "think");
        assert!(d.thinking && d.tool && d.no_stop && d.overloaded && !d.unknown_event);
    }

    #[test]
    fn unknown_directives_stay_in_the_text() {
        let (text, d) = parse("a [mock:nope=1] b [mock:words=x]");
        assert_eq!(text, "a [mock:nope=1] b [mock:words=x]");
        assert_eq!(d, Directives::default());
    }
}
