//! Fuzzing the way from upstream bytes to what leaves the gate: SSE decoding, chunk
//! parsing and the hygiene gate together, on answers that carry the key in every spelling,
//! split across chunks, beside lone surrogates, junk lines and error events, cut into reads
//! at arbitrary points. Nothing may panic, the key may not come out in any spelling, and
//! the output stays proportional to the input.

use super::Chunk;
use super::Item;
use super::chunks::ChunkDecoder;
use super::http::AnswerDecoder;
use super::hygiene::{AnswerGate, Hygiene};
use crate::error::ApiError;
use proptest::prelude::*;
use std::sync::Arc;

pub(super) const KEY: &str = "sk-fz/Q9x_Z-k3y7Lw0p";

/// One byte of the key as it may appear inside a JSON string on the wire.
pub(super) fn spelled_key_byte(b: u8, how: u8) -> String {
    match how % 6 {
        0 => (b as char).to_string(),
        1 if b == b'/' => "\\/".to_owned(),
        1 | 2 => format!("\\u{:04X}", b),
        3 => format!("%{b:02X}"),
        4 => format!("%{b:02x}"),
        // Escaped twice: the decoded text shows `\u00xx`.
        _ => format!("\\\\u{:04x}", b),
    }
}

/// A raw JSON string fragment: a unit that a chunk boundary never splits.
fn token() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        4 => "[ -~é🙂\\\\]{0,8}".prop_map(|text| {
            let quoted = serde_json::to_string(&text).unwrap();
            vec![quoted[1..quoted.len() - 1].to_owned()]
        }),
        3 => prop::collection::vec(any::<u8>(), KEY.len()).prop_map(|how| {
            KEY.bytes().zip(how).map(|(b, h)| spelled_key_byte(b, h)).collect()
        }),
        1 => prop_oneof![
            Just("\\ud800"),
            Just("\\udbff"),
            Just("\\uDC00"),
            Just("\\ud83d\\ude00"),
            Just("\\ud800\\u0041")
        ]
        .prop_map(|s| vec![s.to_owned()]),
    ]
}

/// An event that is not answer text.
fn other_event() -> impl Strategy<Value = String> {
    let key_text = (any::<u8>(), "[a-z ]{0,6}").prop_map(|(how, pad)| {
        let key: String = KEY.bytes().map(|b| spelled_key_byte(b, how)).collect();
        format!("{pad}{key}{pad}")
    });
    prop_oneof![
        Just(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#.to_owned()),
        Just(r#"{"choices":[],"usage":{"total_tokens":3}}"#.to_owned()),
        Just(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#.to_owned()),
        Just("[DONE]".to_owned()),
        key_text.clone().prop_map(|k| format!("not json {k}")),
        key_text.clone().prop_map(|k| format!(r#"{{"choices":"{k}"}}"#)),
        (key_text.clone(), key_text.clone())
            .prop_map(|(m, c)| format!(r#"{{"error":{{"message":"bad {m}","code":"{c}","param":"{m}"}}}}"#)),
        key_text.prop_map(|k| format!(": {k}")),
        "[ -~]{0,20}",
    ]
}

/// Events on the wire: content chunks made of `tokens`, grouped at `cuts`, with `others`
/// in between, each ended by `end` line ends.
fn wire(
    tokens: &[Vec<String>],
    cuts: &[prop::sample::Index],
    others: &[(prop::sample::Index, String)],
    crlf: bool,
) -> Vec<u8> {
    let flat: Vec<&String> = tokens.iter().flatten().collect();
    let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(flat.len() + 1)).collect();
    bounds.push(0);
    bounds.push(flat.len());
    bounds.sort_unstable();
    bounds.dedup();
    let mut events: Vec<String> = bounds
        .windows(2)
        .map(|w| {
            let content: String = flat[w[0]..w[1]].iter().map(|s| s.as_str()).collect();
            format!(r#"data: {{"choices":[{{"delta":{{"content":"{content}"}}}}]}}"#)
        })
        .collect();
    for (at, other) in others {
        let line = match other.strip_prefix(':') {
            Some(_) => other.clone(),
            None => format!("data: {other}"),
        };
        events.insert(at.index(events.len() + 1), line);
    }
    let end = if crlf { "\r\n" } else { "\n" };
    events
        .iter()
        .map(|e| format!("{e}{end}{end}"))
        .collect::<String>()
        .into_bytes()
}

/// Everything that leaves the gate for `bytes` read by `decoder` in pieces cut at `cuts`.
pub(super) fn through_the_gate(
    mut decoder: impl AnswerDecoder,
    bytes: &[u8],
    cuts: &[prop::sample::Index],
) -> Vec<Item> {
    let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut gate = AnswerGate::new(Arc::new(Hygiene::new(Some(KEY))));
    let (mut decoded, mut out) = (Vec::new(), Vec::new());
    let mut last = 0;
    for cut in cuts {
        decoder.read(&bytes[last..cut], &mut decoded);
        last = cut;
    }
    decoder.end(&mut decoded);
    for item in decoded {
        gate.item(item, &mut out);
    }
    gate.end(&mut out);
    out
}

/// `text` with every `%XX`, `\uXXXX` and `\/` decoded, in one pass: what a reader who
/// decodes anything it sees would read.
fn decoded(text: &[u8]) -> Vec<u8> {
    let hex = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.len() >= 3
            && rest[0] == b'%'
            && let Some(b) = hex(&rest[1..3])
        {
            out.push(b as u8);
            i += 3;
        } else if rest.len() >= 6
            && rest[0] == b'\\'
            && rest[1].eq_ignore_ascii_case(&b'u')
            && let Some(c) = hex(&rest[2..6]).and_then(char::from_u32)
        {
            out.extend_from_slice(c.to_string().as_bytes());
            i += 6;
        } else if rest.starts_with(b"\\/") {
            out.push(b'/');
            i += 2;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

pub(super) fn shows_the_key(text: &str) -> bool {
    let key = KEY.as_bytes();
    let has = |t: &[u8]| t.windows(key.len()).any(|w| w == key);
    has(text.as_bytes()) || has(&decoded(text.as_bytes()))
}

fn check(input_len: usize, out: &[Item]) -> Result<(), TestCaseError> {
    let text: String = out
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|c: &Chunk| c.text.as_str())
        .collect();
    prop_assert!(!shows_the_key(&text), "the key in the answer: {text:?}");
    prop_assert!(
        text.len() <= 3 * input_len + 16,
        "{} bytes out of {input_len}",
        text.len()
    );
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
    fn the_key_never_leaves_the_gate_in_any_spelling(
        tokens in prop::collection::vec(token(), 0..12),
        chunk_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        others in prop::collection::vec((any::<prop::sample::Index>(), other_event()), 0..4),
        crlf in any::<bool>(),
        read_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let bytes = wire(&tokens, &chunk_cuts, &others, crlf);
        let out = through_the_gate(ChunkDecoder::new(1 << 20), &bytes, &read_cuts);
        check(bytes.len(), &out)?;
    }

    #[test]
    fn arbitrary_bytes_neither_panic_nor_leak(
        pieces in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..24),
                Just(b"data: ".to_vec()),
                Just(b"\n\n".to_vec()),
                Just(KEY.as_bytes().to_vec()),
                Just(br#"{"choices":[{"delta":{"content":""#.to_vec()),
                Just(br#""}}]}"#.to_vec()),
            ],
            0..24,
        ),
        read_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let bytes = pieces.concat();
        let out = through_the_gate(ChunkDecoder::new(1 << 20), &bytes, &read_cuts);
        check(bytes.len(), &out)?;
    }
}
