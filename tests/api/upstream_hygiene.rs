//! What comes from the upstream is cleaned before it reaches a client, the store or the
//! log: the upstream key in any spelling (raw, split across chunks, JSON-escaped,
//! URL-encoded, in an error's code or message, in a header, in a line that is not JSON),
//! bad text (lone surrogates, invalid UTF-8), silence measured in bytes, and an answer
//! capped at `max_answer_bytes`.

use crate::helpers::*;
use crate::shutdown::Gateway;
use chatgate::config::UpstreamKind;
use mockllm::wire::{self, Completion};
use mockllm::{MockLlm, Script};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn completion() -> Completion {
    Completion::new("mock-model", 1)
}

/// A content chunk whose JSON string is written exactly as given (escapes and all).
fn raw_content(json_string: &str) -> String {
    format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{json_string}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

/// A whole answer: role chunk, `middle`, finish chunk, `[DONE]`.
fn answer(middle: Vec<String>) -> Vec<String> {
    let c = completion();
    let mut parts = vec![c.role()];
    parts.extend(middle);
    parts.push(c.finish("stop"));
    parts.push(wire::DONE.to_owned());
    parts
}

/// Every character of `text` as `%XX` (`upper` hex digits or lower).
fn percent(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match upper {
            true => format!("%{b:02X}"),
            false => format!("%{b:02x}"),
        })
        .collect()
}

/// Answers that echo the key in the text, each with the text a client must get.
fn text_echoes() -> Vec<(&'static str, Vec<String>, &'static str)> {
    let c = completion();
    let clean = "before [redacted] after";
    let (head, tail) = KEY.split_at(13);
    vec![
        ("raw", answer(vec![c.content(&format!("before {KEY} after"))]), clean),
        (
            "split across two chunks",
            answer(vec![
                c.content(&format!("before {head}")),
                c.content(&format!("{tail} after")),
            ]),
            clean,
        ),
        (
            "split across three chunks",
            answer(vec![
                c.content(&format!("before {}", &KEY[..5])),
                c.content(&KEY[5..20]),
                c.content(&format!("{} after", &KEY[20..])),
            ]),
            clean,
        ),
        (
            "JSON-escaped",
            answer(vec![raw_content(&format!("before \\u0073k\\u002D{} after", &KEY[3..]))]),
            clean,
        ),
        (
            "every character JSON-escaped",
            answer(vec![raw_content(&format!(
                "before {} after",
                KEY.bytes().map(|b| format!("\\u{b:04x}")).collect::<String>()
            ))]),
            clean,
        ),
        (
            "JSON-escaped twice",
            answer(vec![c.content(&format!("before \\u0073{} after", &KEY[1..]))]),
            clean,
        ),
        (
            "URL-encoded",
            answer(vec![c.content(&format!("before {} after", percent(KEY, true)))]),
            clean,
        ),
        (
            "partly URL-encoded in lower case, split inside an escape",
            answer(vec![
                c.content("before sk%2dtest%2"),
                c.content(&format!("D{}{} after", &KEY[8..30], percent(&KEY[30..], false))),
            ]),
            clean,
        ),
        (
            "in a data line that is not JSON",
            answer(vec![
                c.content("before"),
                format!("data: upstream says {KEY}\n\n"),
                c.content(" after"),
            ]),
            "before after",
        ),
        (
            "in a comment and an unknown field",
            answer(vec![
                format!(": processing for {KEY}\n\n"),
                format!(
                    "data: {}\n\n",
                    json!({"choices": [{"delta": {"content": "before after", "echo": KEY}}], "key": KEY})
                ),
            ]),
            "before after",
        ),
    ]
}

/// An answer that fails mid-stream with the key in its error's message and code.
fn error_echo() -> Vec<String> {
    let error = wire::error_body(&format!("bad key {KEY} here"), "server_error", KEY);
    vec![
        completion().role(),
        completion().content("before"),
        format!("data: {error}\n\n"),
    ]
}

/// Refusals that echo the key: the script, the status and code a client must get, and how
/// many times the gateway tries it (429 and 5xx are retried).
fn refusal_echoes() -> Vec<(&'static str, Script, u16, &'static str, usize)> {
    let message = format!("Incorrect API key provided: {KEY}");
    vec![
        (
            "in the code, the message and headers",
            Script::refuse(401, wire::error_body(&message, "invalid_request_error", KEY))
                .with_header("retry-after", KEY)
                .with_header("x-request-id", KEY),
            502,
            "upstream_http_401",
            1,
        ),
        (
            "in a rate limit's retry-after",
            Script::refuse(429, wire::error_body(&message, "requests", "rate_limit_exceeded"))
                .with_header("retry-after", &format!("10 {KEY}")),
            429,
            "rate_limit_exceeded",
            3,
        ),
        (
            "URL-encoded in an HTML page",
            Script::refuse(503, format!("<html>bad key {}</html>", percent(KEY, false))),
            502,
            "upstream_http_503",
            3,
        ),
    ]
}

/// `text` with every `%XX`, `\uXXXX` and `\/` decoded: what a reader who decodes anything
/// would read.
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
            && rest.starts_with(b"\\u")
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

/// Fails when `seen` holds the key, or any 16 characters of it, raw or in any spelling.
fn assert_no_key(what: &str, seen: &[u8]) {
    let key = KEY.as_bytes();
    for text in [seen.to_vec(), decoded(seen)] {
        if let Some(window) = key.windows(16).find(|w| text.windows(16).any(|t| t == *w)) {
            panic!(
                "{what} shows the key ({:?}):\n{}",
                String::from_utf8_lossy(window),
                String::from_utf8_lossy(seen)
            );
        }
    }
}

/// A whole `POST /conv` exchange as a client sees it: status, headers and body as text.
async fn exchange(client: &reqwest::Client, url: String) -> (u16, String, String) {
    let response = client
        .post(url)
        .header("Accept", "text/event-stream")
        .json(&json!({"content": "echo it"}))
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let body = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the answer ends within 30 s")
        .expect("the body reads");
    (status, headers, body)
}

/// The stored answer of a streamed exchange, as `GET /conv/{id}` shows it, in full.
async fn stored_conversation(client: &reqwest::Client, base: &str, body: &str) -> (Value, String) {
    let last = parse_events(body).last();
    let id = last["conversation_id"].as_str().expect("a conversation id");
    let message = last["message"]["id"].as_str().expect("a message id");
    for _ in 0..200 {
        let conversation: Value = client
            .get(format!("{base}/conv/{id}"))
            .send()
            .await
            .expect("the gateway answers")
            .json()
            .await
            .expect("a JSON body");
        let stored = conversation["mapping"][message]["message"].clone();
        if stored.is_object() && stored["status"] != "in_progress" {
            return (stored, conversation.to_string());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the answer {message} was never stored as ended");
}

#[tokio::test]
async fn the_key_in_answer_text_is_redacted_in_every_spelling_and_the_text_around_it_arrives() {
    let app = spawn_app().await;
    for (form, parts, expected) in text_echoes() {
        app.mock.enqueue(Script::stream(parts).paced(2));
        let (status, headers, body) = exchange(&app.client, app.url("/conv")).await;
        assert_eq!(status, 200, "{form}: {body}");
        assert_no_key(form, format!("{headers}{body}").as_bytes());
        let stream = parse_events(&body);
        assert_eq!(stream.text(), expected, "{form}");
        stream.assert_finished();
        let (stored, conversation) = stored_conversation(&app.client, &app.address, &body).await;
        assert_eq!(stored["content"]["parts"][0], expected, "{form}");
        assert_no_key(form, conversation.as_bytes());
    }
}

#[tokio::test]
async fn a_key_with_a_slash_is_redacted_when_the_upstream_escapes_the_slash() {
    let key = "sk-test/abcdefghijklmnop/0123456789";
    let app = spawn_app_with(|s| {
        if let UpstreamKind::OpenAi { key: k, .. } = &mut s.upstream {
            *k = Some(key.to_owned());
        }
    })
    .await;
    let escaped = key.replace('/', "\\/");
    app.mock.enqueue(Script::stream(answer(vec![
        raw_content(&format!("before {}", &escaped[..12])),
        raw_content(&format!("{} after", &escaped[12..])),
    ])));
    let stream = app.ask("go").await;
    assert_eq!(stream.text(), "before [redacted] after");
    stream.assert_finished();
}

#[tokio::test]
async fn an_error_mid_stream_passes_on_a_redacted_message_and_never_the_upstreams_own_code() {
    let app = spawn_app().await;
    app.mock.enqueue(Script::stream(error_echo()));
    let (status, headers, body) = exchange(&app.client, app.url("/conv")).await;
    assert_eq!(status, 200, "{body}");
    assert_no_key("the error frame", format!("{headers}{body}").as_bytes());
    let last = parse_events(&body).last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["message"]["content"]["parts"][0], "before");
    assert_eq!(last["error"]["code"], "upstream_error");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(message.contains("bad key [redacted] here"), "{message}");
    let (stored, conversation) = stored_conversation(&app.client, &app.address, &body).await;
    assert_eq!(stored["metadata"]["error"]["code"], "upstream_error");
    assert_no_key("the stored error", conversation.as_bytes());
}

#[tokio::test]
async fn a_refusal_passes_on_a_redacted_message_a_known_code_and_only_plain_seconds() {
    let app = spawn_app().await;
    for (form, script, status, code, tries) in refusal_echoes() {
        for _ in 0..tries {
            app.mock.enqueue(script.clone());
        }
        let (got, headers, body) = exchange(&app.client, app.url("/conv")).await;
        forget_scripts(&app.mock).await;
        assert_eq!(got, status, "{form}: {body}");
        assert_no_key(form, format!("{headers}{body}").as_bytes());
        let body: Value = serde_json::from_str(&body).expect("a JSON error body");
        assert_eq!(body["error"]["code"], code, "{form}: {body}");
        assert!(!headers.contains("\"retry-after\": "), "{form}: {headers}");
        assert!(!headers.contains("\"x-request-id\": "), "{form}: {headers}");
    }
    let (_, list) = app.get_json("/conversations").await;
    assert_no_key("the conversation list", list.to_string().as_bytes());

    // A plain number of seconds is passed on, at most an hour (both longer than the retry
    // budget: not waited for, tried once).
    for (sent, passed) in [("60", "60"), ("86400", "3600")] {
        app.mock
            .enqueue(Script::refuse(429, wire::error_for_status(429)).with_header("retry-after", sent));
        let response = app.post_conv(json!({"content": "hi"})).await;
        assert_eq!(response.headers()["retry-after"], passed);
        assert_error(response, 429, "rate_limit_exceeded").await;
    }
}

#[tokio::test]
async fn a_lone_surrogate_and_invalid_utf8_become_replacement_characters_and_the_answer_goes_on() {
    let app = spawn_app().await;
    let c = completion();
    let mut parts: Vec<Vec<u8>> = vec![
        c.role().into_bytes(),
        raw_content("high \\ud800 alone,").into_bytes(),
        raw_content(" low \\uDC00 alone,").into_bytes(),
    ];
    let mut invalid = raw_content(" bytes X and Y,").into_bytes();
    for (from, to) in [(b'X', 0xff), (b'Y', 0xc3)] {
        let at = invalid.iter().position(|&b| b == from).unwrap();
        invalid[at] = to;
    }
    parts.push(invalid);
    parts.push(raw_content(" a pair \\ud83d\\ude00 whole").into_bytes());
    parts.push(c.finish("stop").into_bytes());
    parts.push(wire::DONE.as_bytes().to_vec());
    app.mock.enqueue(Script::stream_bytes(parts).paced(2));
    let stream = app.ask("go").await;
    assert_eq!(
        stream.text(),
        "high \u{fffd} alone, low \u{fffd} alone, bytes \u{fffd} and \u{fffd}, a pair 😀 whole"
    );
    stream.assert_finished();
}

/// Keep-alive bytes of every kind: a comment, an empty line, a role chunk, a chunk with
/// empty `choices`, a usage chunk, an empty content chunk.
fn keep_alives() -> Vec<String> {
    let c = completion();
    vec![
        ": keep-alive\n\n".into(),
        "\n".into(),
        c.role(),
        "data: {\"choices\":[]}\n\n".into(),
        c.usage(3, 0),
        c.content(""),
    ]
}

#[tokio::test]
async fn keep_alive_bytes_count_as_life_for_the_idle_timeout() {
    let app = spawn_app_with(|s| s.upstream_idle_timeout = Duration::from_millis(300)).await;
    let c = completion();
    // One second of keep-alive bytes, 100 ms apart, before the first word.
    let mut parts: Vec<String> = keep_alives().into_iter().cycle().take(10).collect();
    parts.extend([c.content("thought it over"), c.finish("stop"), wire::DONE.into()]);
    app.mock.enqueue(Script::stream(parts).paced(100));
    let started = std::time::Instant::now();
    let stream = app.ask("think hard").await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert_eq!(stream.text(), "thought it over");
    stream.assert_finished();
}

#[tokio::test]
async fn an_upstream_that_falls_silent_after_keep_alives_is_still_cut_off() {
    let app = spawn_app_with(|s| s.upstream_idle_timeout = Duration::from_millis(300)).await;
    let c = completion();
    let mut parts = vec![c.content("so far")];
    parts.extend(keep_alives());
    app.mock.enqueue(Script::stream(parts).paced(100).then_stall());
    let stream = app.ask("go").await;
    let last = stream.last();
    assert_eq!(last["message"]["content"]["parts"][0], "so far");
    assert_eq!(last["error"]["code"], "upstream_timeout");
    stream.assert_closed_properly();
    upstream_cancelled(
        &app.mock,
        Duration::from_secs(2),
        "the silent upstream request is dropped",
    )
    .await;
}

#[tokio::test]
async fn an_endless_answer_ends_at_max_answer_bytes_and_the_upstream_is_cancelled() {
    // An odd limit, in an answer of two-byte characters: the cut falls inside one.
    let limit = 64 * 1024 + 1;
    let app = spawn_app_with(|s| s.max_answer_bytes = limit).await;
    let c = completion();
    app.mock
        .enqueue(Script::stream([c.role()]).then_repeat(0, c.content(&"é".repeat(500))));
    let stream = app.ask("never stop").await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["error"]["code"], "answer_too_large");
    assert_eq!(last["error"]["type"], "upstream_error");
    let text = stream.text();
    assert_eq!(text.len(), limit - 1);
    assert!(text.chars().all(|c| c == 'é'));
    stream.assert_closed_properly();
    upstream_cancelled(
        &app.mock,
        Duration::from_secs(5),
        "the endless upstream request is dropped",
    )
    .await;
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["status"], "error");
    assert_eq!(stored["content"]["parts"][0], text.as_str());
    assert_eq!(stored["metadata"]["error"]["code"], "answer_too_large");
}

/// Every file of the database (the main file, its WAL and shared memory) as bytes.
fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the directory reads") {
        let path = entry.expect("an entry").path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).expect("the file reads"));
        }
    }
    bytes
}

#[tokio::test]
async fn the_key_reaches_no_client_no_database_file_and_no_debug_log() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start_logging(&dir.path().join("chatgate.db"), &mock, &[], "debug").await;
    let mut seen = String::new();
    let mut answers = text_echoes()
        .into_iter()
        .map(|(form, parts, _)| (form, Script::stream(parts)))
        .collect::<Vec<_>>();
    answers.push(("an error mid-stream", Script::stream(error_echo())));
    for (form, script) in answers {
        mock.enqueue(script);
        let (status, headers, body) = exchange(&gateway.client, gateway.url("/conv")).await;
        assert_eq!(status, 200, "{form}: {body}");
        let (_, conversation) = stored_conversation(&gateway.client, &gateway.address, &body).await;
        seen += &format!("{form}: {headers}\n{body}\n{conversation}\n");
    }
    for (form, script, status, _, tries) in refusal_echoes() {
        for _ in 0..tries {
            mock.enqueue(script.clone());
        }
        let (got, headers, body) = exchange(&gateway.client, gateway.url("/conv")).await;
        forget_scripts(&mock).await;
        assert_eq!(got, status, "{form}: {body}");
        seen += &format!("{form}: {headers}\n{body}\n");
    }
    assert!(seen.contains("[redacted]"));
    assert_no_key("what clients saw", seen.as_bytes());

    gateway.signal("TERM");
    assert!(gateway.exits_within(Duration::from_secs(10)).await.success());
    let log = gateway.log();
    assert!(log.contains("DEBUG"), "the log is at debug level:\n{log}");
    assert!(
        log.contains("not JSON"),
        "the skipped line is logged, without its content:\n{log}"
    );
    assert_no_key("the log", log.as_bytes());
    let database = database_bytes(dir.path());
    assert!(database.windows(12).any(|w| w == b"before after"));
    assert_no_key("the database files", &database);
}

#[tokio::test]
async fn a_key_given_as_a_flag_is_warned_about_and_a_key_file_is_not() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flagged = Gateway::start(&dir.path().join("a.db"), &mock, &["--upstream-key", KEY]).await;
    let warned = |log: &str| log.contains("shows in the process list");
    assert!(warned(&flagged.log()), "{}", flagged.log());
    drop(flagged);

    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let path = key_file.to_str().unwrap();
    let from_file = Gateway::start(&dir.path().join("b.db"), &mock, &["--upstream-key-file", path]).await;
    let response = from_file.post_conv(json!({"content": "hello"})).await;
    let stream = read_stream(response).await;
    stream.assert_finished();
    assert_eq!(stream.text(), "Echo: hello");
    assert!(!warned(&from_file.log()), "{}", from_file.log());
    assert!(!from_file.log().contains(KEY));
    let sent = mock.authorizations();
    let bearer = format!("Bearer {KEY}");
    assert_eq!(
        sent.last().unwrap().as_deref(),
        Some(bearer.as_str()),
        "the file's key, trimmed"
    );
}
