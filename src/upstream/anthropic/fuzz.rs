//! Fuzzing the way from an Anthropic upstream's bytes to what leaves the gate: SSE
//! decoding, event reading and the hygiene gate together, on answers that carry the key in
//! every spelling in text, thinking, tool-call arguments, ids and error events, split
//! across events, beside arbitrary bytes, cut into reads at arbitrary points. Nothing may
//! panic, the key may not come out, and the output stays proportional to the input.

use super::super::Chunk;
use super::super::Item;
use super::super::fuzz::{KEY, shows_the_key, spelled_key_byte, through_the_gate};
use super::EventDecoder;
use crate::error::ApiError;
use proptest::prelude::*;

fn event(name: &str, data: &str) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// A `content_block_delta` of `kind` whose string field is written exactly as given.
fn delta(kind: u8, raw: &str) -> Vec<u8> {
    let (index, delta) = match kind % 3 {
        0 => (0, format!(r#"{{"type":"text_delta","text":"{raw}"}}"#)),
        1 => (0, format!(r#"{{"type":"thinking_delta","thinking":"{raw}"}}"#)),
        _ => (1, format!(r#"{{"type":"input_json_delta","partial_json":"{raw}"}}"#)),
    };
    event(
        "content_block_delta",
        &format!(r#"{{"type":"content_block_delta","index":{index},"delta":{delta}}}"#),
    )
}

/// The key spelled inside a JSON string, in one way or another byte by byte.
fn spelled_key(how: &[u8]) -> Vec<String> {
    KEY.bytes()
        .zip(how.iter().cycle())
        .map(|(b, h)| spelled_key_byte(b, *h))
        .collect()
}

/// One piece of the wire: events that carry the key, events of every kind, junk.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let split_key = (
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 1..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(kind, how, at)| {
            let key = spelled_key(&how);
            let at = at.index(key.len() + 1);
            let mut out = delta(kind, &format!("a {}", key[..at].concat()));
            out.extend(delta(kind, &format!("{} b", key[at..].concat())));
            out
        });
    let key_text = prop::collection::vec(any::<u8>(), 1..4).prop_map(|how| spelled_key(&how).concat());
    prop_oneof![
        4 => split_key,
        2 => (any::<u8>(), "[ -~é🙂]{0,8}").prop_map(|(kind, text)| {
            let quoted = serde_json::to_string(&text).unwrap();
            delta(kind, &quoted[1..quoted.len() - 1])
        }),
        1 => key_text.clone().prop_map(|k| event(
            "content_block_start",
            &format!(r#"{{"type":"content_block_start","index":1,"content_block":{{"type":"tool_use","id":"{k}","name":"f{k}","input":{{}}}}}}"#),
        )),
        1 => (key_text.clone(), key_text.clone()).prop_map(|(m, t)| event(
            "error",
            &format!(r#"{{"type":"error","error":{{"type":"{t}","message":"bad {m}"}}}}"#),
        )),
        1 => key_text.prop_map(|k| format!("data: not json {k}\n\n: {k}\n\n").into_bytes()),
        1 => Just(event("message_start", r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#)),
        1 => Just(event("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#)),
        1 => Just(event("content_block_stop", r#"{"type":"content_block_stop","index":1}"#)),
        1 => Just(event("ping", r#"{"type":"ping"}"#)),
        1 => Just(event("message_stop", r#"{"type":"message_stop"}"#)),
        2 => prop::collection::vec(any::<u8>(), 0..24),
        1 => Just(KEY.as_bytes().to_vec()),
    ]
}

fn check(input_len: usize, out: &[Item]) -> Result<(), TestCaseError> {
    let chunks: Vec<&Chunk> = out.iter().filter_map(|i| i.as_ref().ok()).collect();
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    let reasoning: String = chunks.iter().map(|c| c.reasoning.as_str()).collect();
    let calls = chunks.iter().flat_map(|c| &c.tool_calls);
    let arguments: String = calls.clone().map(|c| c.arguments.as_str()).collect();
    let names: Vec<&str> = calls
        .flat_map(|c| [c.id.as_deref(), c.name.as_deref()])
        .flatten()
        .collect();
    for (what, seen) in [("text", &text), ("reasoning", &reasoning), ("arguments", &arguments)] {
        prop_assert!(!shows_the_key(seen), "the key in the {what}: {seen:?}");
    }
    for name in names {
        prop_assert!(!shows_the_key(name), "the key in a tool call's id or name: {name:?}");
    }
    let out_len = text.len() + reasoning.len() + arguments.len();
    prop_assert!(out_len <= 3 * input_len + 16, "{out_len} bytes out of {input_len}");
    for item in out {
        if let Err(e) = item {
            let shown = e.to_string();
            let object = ApiError::from(e.clone()).object().to_string();
            prop_assert!(!shows_the_key(&shown), "the key in an error: {shown}");
            prop_assert!(!shows_the_key(&object), "the key in an error: {object}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn anthropic_events_neither_panic_nor_leak_the_key(
        pieces in prop::collection::vec(piece(), 0..16),
        tool_first in any::<bool>(),
        read_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut bytes = Vec::new();
        if tool_first {
            bytes.extend(event(
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            ));
        }
        bytes.extend(pieces.concat());
        let out = through_the_gate(EventDecoder::new(1 << 20), &bytes, &read_cuts);
        check(bytes.len(), &out)?;
    }
}
