//! Finds the operator's upstream key in text from the upstream, however it is spelled, and
//! replaces it with `[redacted]`.
//!
//! Each byte of the key may be written as itself, percent-encoded (`%6B`, any case), as a
//! JSON escape (`\u006b`, any case) or, for `/`, as `\/`; the spellings may be mixed. Text
//! that went through a JSON parser is decoded already, but an upstream may echo the key
//! escaped twice, or URL-encoded, so decoded text is searched for every spelling too.
//!
//! This sits on the per-token path, so a text with no byte that can start a spelling of
//! the key (its first byte, `%` or `\`) costs one SIMD scan (`memchr3`) and nothing else;
//! a candidate that is not the key fails on its first or second byte; nothing is
//! allocated unless something is redacted or held back.

use std::borrow::Cow;

/// What replaces the key.
pub const REDACTED: &str = "[redacted]";

/// Shorter keys are placeholders (`EMPTY` for vLLM, `ollama`), not secrets: redacting
/// them would cut ordinary words out of answers.
const MIN_SECRET_LEN: usize = 8;

/// The key and how to find it.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// `None`: there is no secret to hide.
    key: Option<Vec<u8>>,
}

/// How far a spelling of the key reaches from a candidate position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The whole key, ending here.
    Whole(usize),
    /// The text ends while it still reads as the key.
    Cut,
    Not,
}

impl Redactor {
    pub fn new(key: Option<&str>) -> Self {
        Self {
            key: key
                .map(str::trim)
                .filter(|k| k.len() >= MIN_SECRET_LEN)
                .map(|k| k.as_bytes().to_vec()),
        }
    }

    pub fn is_active(&self) -> bool {
        self.key.is_some()
    }

    /// `text` with every spelling of the key replaced.
    pub fn clean<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scan(text, false) {
            (Some(clean), _) => Cow::Owned(clean),
            (None, _) => Cow::Borrowed(text),
        }
    }

    /// Like [`Redactor::clean`], and also any word that starts like the key: upstreams
    /// echo keys half-masked (`sk-proj-abc***wxyz`). For error messages, not answers.
    pub fn clean_message(&self, text: &str) -> String {
        let text = self.clean(text);
        let Some(head) = self.key.as_deref().filter(|k| k.len() >= 12).map(|k| &k[..6]) else {
            return text.into_owned();
        };
        text.split(' ')
            .map(|word| match word.as_bytes().starts_with(head) {
                true => REDACTED,
                false => word,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Finds every spelling of the key in `text`. Returns the redacted text when something
    /// was replaced, and, when `streaming`, where a spelling that the text's end cuts off
    /// starts (`text.len()` when none does): the next piece of text may complete it.
    fn scan(&self, text: &str, streaming: bool) -> (Option<String>, usize) {
        let Some(key) = self.key.as_deref() else {
            return (None, text.len());
        };
        let bytes = text.as_bytes();
        let mut clean: Option<String> = None;
        let mut copied = 0;
        let mut at = 0;
        while let Some(found) = memchr::memchr3(key[0], b'%', b'\\', &bytes[at..]) {
            let start = at + found;
            at = start + 1;
            if !text.is_char_boundary(start) {
                continue;
            }
            match reach(key, bytes, start) {
                Reach::Whole(end) if text.is_char_boundary(end) => {
                    let out = clean.get_or_insert_with(|| String::with_capacity(text.len()));
                    out.push_str(&text[copied..start]);
                    out.push_str(REDACTED);
                    copied = end;
                    at = end;
                }
                Reach::Cut if streaming => {
                    if let Some(out) = &mut clean {
                        out.push_str(&text[copied..start]);
                    }
                    return (clean, start);
                }
                _ => {}
            }
        }
        if let Some(out) = &mut clean {
            out.push_str(&text[copied..]);
        }
        (clean, text.len())
    }
}

/// Reads the key from `text[start..]`, one spelled byte after another.
fn reach(key: &[u8], text: &[u8], start: usize) -> Reach {
    let mut at = start;
    for &b in key {
        if at == text.len() {
            return Reach::Cut;
        }
        match spelled(b, &text[at..]) {
            Reach::Whole(len) => at += len,
            other => return other,
        }
    }
    Reach::Whole(at)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `text` starts with a spelling of the byte `b`: `Whole(length)`, `Cut` when it
/// ends inside one, or `Not`.
fn spelled(b: u8, text: &[u8]) -> Reach {
    if text[0] == b {
        return Reach::Whole(1);
    }
    let (hi, lo) = (HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]);
    let percent = [b'%', hi, lo];
    let unicode = [b'\\', b'u', b'0', b'0', hi, lo];
    let slash: &[u8] = if b == b'/' { b"\\/" } else { b"" };
    let ascii: &[u8] = if b.is_ascii() { &unicode } else { b"" };
    let mut cut = false;
    for form in [&percent[..], ascii, slash] {
        if form.is_empty() {
            continue;
        }
        let n = form.len().min(text.len());
        // Hex digits in any case; `\U` is no JSON escape, but hiding it costs nothing.
        if text[..n].eq_ignore_ascii_case(&form[..n]) {
            if n == form.len() {
                return Reach::Whole(n);
            }
            cut = true;
        }
    }
    if cut { Reach::Cut } else { Reach::Not }
}

/// Redacts an answer that arrives in pieces, where the key may be split across pieces: the
/// end of a piece that could be the start of the key is held back until the next piece
/// shows whether it is, and released when the answer ends.
///
/// Holding text back delays it by a token, and tails like `s` or `sk` end many English
/// tokens. So a tail of fewer than [`HOLD_MIN`] literal bytes of the key is passed on at
/// once, and remembered: if the next piece goes on with the rest of the key, that rest is
/// redacted. What a client can then see is at most the key's first three bytes (`sk-`),
/// which are no secret.
#[derive(Debug, Default)]
pub struct TextGuard {
    held: String,
    /// How many of the key's first bytes the text passed on so far may end with.
    passed: Vec<usize>,
}

/// The shortest tail that is held back rather than passed on.
const HOLD_MIN: usize = 4;

impl TextGuard {
    /// The part of `text` (after what was held back) that can be passed on now.
    pub fn pass(&mut self, redactor: &Redactor, mut text: String) -> String {
        let Some(key) = redactor.key.as_deref() else {
            return text;
        };
        if !self.held.is_empty() {
            self.held.push_str(&text);
            text = std::mem::take(&mut self.held);
        }
        let mut out = String::new();
        if !self.passed.is_empty() {
            match self.go_on(key, &text) {
                Continued::Redact(end) => {
                    out.push_str(REDACTED);
                    text.drain(..end);
                }
                Continued::Maybe => {
                    self.held = text;
                    return out;
                }
                Continued::Not => {}
            }
        }
        let (clean, hold_from) = redactor.scan(&text, true);
        let tail = &text[hold_from..];
        if !tail.is_empty() && tail.len() < HOLD_MIN && key.starts_with(tail.as_bytes()) {
            self.passed = (1..=tail.len())
                .rev()
                .filter(|&k| tail.as_bytes().ends_with(&key[..k]))
                .collect();
            out.push_str(&clean.unwrap_or_else(|| std::mem::take(&mut text)));
            return out;
        }
        if hold_from < text.len() {
            self.held.push_str(tail);
        }
        match clean {
            Some(clean) => out.push_str(&clean),
            None if out.is_empty() => {
                text.truncate(hold_from);
                return text;
            }
            None => out.push_str(&text[..hold_from]),
        }
        out
    }

    /// Whether `text` goes on with the rest of a key whose start was passed on.
    fn go_on(&mut self, key: &[u8], text: &str) -> Continued {
        let mut maybe = Vec::new();
        for &k in &self.passed {
            match reach(&key[k..], text.as_bytes(), 0) {
                Reach::Whole(end) if text.is_char_boundary(end) => {
                    self.passed.clear();
                    return Continued::Redact(end);
                }
                Reach::Cut => maybe.push(k),
                _ => {}
            }
        }
        self.passed = maybe;
        match self.passed.is_empty() {
            true => Continued::Not,
            false => Continued::Maybe,
        }
    }

    /// What is still held: the answer ended, so it was not the key.
    pub fn release(&mut self) -> String {
        self.passed.clear();
        std::mem::take(&mut self.held)
    }
}

/// What the start of a piece is, after a piece that ended like the key's first bytes.
enum Continued {
    /// The rest of the key, up to here.
    Redact(usize),
    /// It may still be: the piece ends first.
    Maybe,
    Not,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test/abcdefghij0123";

    fn redactor() -> Redactor {
        Redactor::new(Some(KEY))
    }

    #[test]
    fn every_spelling_is_found() {
        let r = redactor();
        for spelled in [
            KEY.to_owned(),
            KEY.replace('/', "\\/"),
            KEY.replace('s', "\\u0073").replace('-', "\\u002D"),
            KEY.replace('/', "%2f").replace('k', "%6B"),
            KEY.bytes().map(|b| format!("%{b:02X}")).collect(),
            KEY.bytes().map(|b| format!("\\u{:04x}", b)).collect(),
        ] {
            let text = format!("before {spelled} after");
            assert_eq!(r.clean(&text), "before [redacted] after", "{spelled}");
        }
    }

    #[test]
    fn text_without_the_key_is_borrowed_untouched() {
        let r = redactor();
        for text in [
            "plain",
            "50% of sk-tests",
            "a\\nb \\u0073k",
            "sk-test/abcdefghij012",
            "",
        ] {
            assert!(matches!(r.clean(text), Cow::Borrowed(t) if t == text), "{text}");
        }
    }

    #[test]
    fn placeholder_keys_are_not_secrets() {
        assert_eq!(Redactor::new(Some("EMPTY")).clean("EMPTY"), "EMPTY");
        assert_eq!(Redactor::new(None).clean(KEY), KEY);
    }

    #[test]
    fn half_masked_echoes_in_messages_are_hidden() {
        let r = redactor();
        let message = r.clean_message(&format!("key {KEY} or sk-tes****0123 given"));
        assert_eq!(message, "key [redacted] or [redacted] given");
    }

    #[test]
    fn a_key_split_across_pieces_is_held_back_and_redacted() {
        let r = redactor();
        let spelled = format!("x {} y", KEY.replace('b', "%62"));
        for cut in 0..=spelled.len() {
            for second in cut..=spelled.len() {
                let mut guard = TextGuard::default();
                let mut out = guard.pass(&r, spelled[..cut].to_owned());
                out += &guard.pass(&r, spelled[cut..second].to_owned());
                out += &guard.pass(&r, spelled[second..].to_owned());
                out += &guard.release();
                // At most the key's first three bytes may go out before the rest is seen.
                let shown = out.strip_prefix("x ").and_then(|o| o.strip_suffix("[redacted] y"));
                assert!(
                    shown.is_some_and(|s| s.len() < HOLD_MIN && KEY.starts_with(s)),
                    "cut at {cut} and {second}: {out}"
                );
            }
        }
    }

    #[test]
    fn what_only_looked_like_the_key_is_released() {
        let r = redactor();
        let mut guard = TextGuard::default();
        assert_eq!(guard.pass(&r, "see sk-te".into()), "see ");
        assert_eq!(guard.pass(&r, "a".into()), "sk-tea");
        assert_eq!(guard.pass(&r, "asks".into()), "asks", "a short tail is not held back");
        assert_eq!(guard.pass(&r, "k-test/abcdefghij0123!".into()), "[redacted]!");
        assert_eq!(guard.pass(&r, "sk".into()), "sk");
        assert_eq!(guard.pass(&r, "-tes".into()), "", "the rest may still be the key");
        assert_eq!(guard.pass(&r, "ty".into()), "-testy");
        assert_eq!(guard.pass(&r, "100%".into()), "100");
        assert_eq!(guard.release(), "%");
    }
}
