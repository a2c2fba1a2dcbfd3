//! `GET /metrics`: Prometheus text that shows requests by route pattern and status, time to
//! first token and per chunk, tokens, upstream errors, retries and failovers, store writes
//! and commits, and live answers — and never a raw path, an id or a key.

use crate::helpers::*;
use crate::v1::streaming;
use chatgate::config::{Settings, StoreKind, UpstreamKind};
use chatgate::config_file;
use mockllm::{MockLlm, Script, wire, word_chunks};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One sample line: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format, failing the test on any line that is not in it.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next(), words.next());
            assert!(matches!(kind, Some("HELP" | "TYPE")), "a bad comment: {line:?}");
            assert!(name.is_some_and(is_metric_name), "a bad name: {line:?}");
            if kind == Some("TYPE") {
                let kind = words.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line:?}"
                );
            }
            continue;
        }
        samples.push(parse_sample(line).unwrap_or_else(|| panic!("not a sample line: {line:?}")));
    }
    samples
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",…} value`, with `\\`, `\"` and `\n` escaped in values.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"")?;
            let key = &rest[..eq];
            if !is_metric_name(key) {
                return None;
            }
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = &rest[eq + 2 + close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = match rest.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The gateway's metrics.
pub struct Scraped {
    pub text: String,
    samples: Vec<Sample>,
}

impl Scraped {
    /// The sum of the samples named `name` that carry every label of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
            .sum()
    }

    /// The one sample named `name` with exactly `labels` (all of them): its value.
    pub fn exactly(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in:\n{}", self.text);
        found[0].value
    }
}

impl TestApp {
    /// `GET /metrics`, with `key` if given; the status and, on 200, the parsed text.
    async fn metrics_with(&self, key: Option<&str>) -> (u16, Option<Scraped>) {
        let mut request = self.client.get(self.url("/metrics"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(kind, "text/plain; version=0.0.4");
        let text = response.text().await.unwrap();
        let samples = parse(&text);
        (status, Some(Scraped { text, samples }))
    }

    pub async fn metrics(&self) -> Scraped {
        let (status, scraped) = self.metrics_with(None).await;
        assert_eq!(status, 200);
        scraped.expect("a body")
    }

    /// The metrics once no answer runs and `ready` holds of them (answers record their
    /// tokens when they end, just after their last byte is sent).
    async fn metrics_once(&self, ready: impl Fn(&Scraped) -> bool) -> Scraped {
        for _ in 0..500 {
            let scraped = self.metrics().await;
            if scraped.exactly("chatgate_live_answers", &[]) == 0.0 && ready(&scraped) {
                return scraped;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the answers never ended in the metrics:\n{}", self.metrics().await.text);
    }
}

/// The gateway on a SQLite file (kept in `dir`) and a config file: model `smart` goes to
/// `first/model-a` (`app.mock`), then `second/model-b` (the returned mock).
async fn two_upstreams_on_sqlite(dir: &Path) -> (TestApp, MockLlm) {
    let first = MockLlm::start("127.0.0.1:0").expect("the first mock starts");
    let second = MockLlm::start("127.0.0.1:0").expect("the second mock starts");
    let file = format!(
        "default_model = \"smart\"\n\n\
         [upstreams.first]\nkind = \"openai\"\nbase_url = \"{}\"\n\n\
         [upstreams.second]\nkind = \"openai\"\nbase_url = \"{}\"\n\n\
         [models.smart]\ntargets = [\"first/model-a\", \"second/model-b\"]\n",
        first.base_url(),
        second.base_url()
    );
    let routing = config_file::parse(&file, Path::new("routes.toml"), |_| None).expect("the file is good");
    let mut settings = Settings::for_tests();
    settings.upstream = UpstreamKind::Routed(routing);
    settings.model = "smart".into();
    settings.store = StoreKind::Sqlite(dir.join("metrics.db"));
    settings.prompts_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    (start(settings, first).await, second)
}

/// The completion tokens the mock reports for an echo of `prompt`: one a chunk.
fn completion_tokens(prompt: &str) -> f64 {
    word_chunks(&echo(prompt, 0)).len() as f64
}

/// The mock reports this many prompt tokens for every request.
const MOCK_PROMPT_TOKENS: f64 = 10.0;

const SMART_ON_FIRST: [(&str, &str); 4] = [
    ("gen_ai_request_model", "smart"),
    ("gen_ai_response_model", "model-a"),
    ("gen_ai_provider_name", "openai"),
    ("upstream", "first"),
];

#[tokio::test]
async fn a_conv_turn_and_a_v1_completion_show_by_route_pattern_with_their_times_tokens_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _second) = two_upstreams_on_sqlite(dir.path()).await;
    let stream = app.ask("hello metrics").await;
    stream.assert_finished();
    let conversation = stream.conversation_id();
    let replayed = app
        .get_stream(&conversation, "?api_key=sk-query-secret-123", None)
        .await;
    assert_eq!(replayed.status(), 200);
    read_stream(replayed).await;
    let (status, _) = app.get_json(&format!("/conv/{conversation}")).await;
    assert_eq!(status, 200);
    let body = streaming(
        "count my tokens",
        json!({"model": "smart", "stream_options": {"include_usage": true}}),
    );
    app.complete_streamed(body).await;

    let output = completion_tokens("hello metrics") + completion_tokens("count my tokens");
    let tokens = [("gen_ai_token_type", "output"), ("upstream", "first")];
    let m = app
        .metrics_once(|m| m.sum("gen_ai_client_token_usage_sum", &tokens) == output)
        .await;
    let requests = |route, method| {
        m.exactly(
            "chatgate_http_requests_total",
            &[("route", route), ("method", method), ("status", "200")],
        )
    };
    assert_eq!(requests("/conv", "POST"), 1.0);
    assert_eq!(requests("/conv/{id}/stream", "GET"), 1.0);
    assert_eq!(requests("/conv/{id}", "GET"), 1.0);
    assert_eq!(requests("/v1/chat/completions", "POST"), 1.0);
    assert!(!m.text.contains(&conversation), "an id in a label:\n{}", m.text);
    assert!(
        !m.text.contains("api_key") && !m.text.contains("sk-query-secret-123"),
        "a query in a label:\n{}",
        m.text
    );

    let answer: Vec<(&str, &str)> = [SMART_ON_FIRST.as_slice(), &[("gen_ai_operation_name", "chat")]].concat();
    assert_eq!(
        m.exactly("gen_ai_server_time_to_first_token_seconds_count", &answer),
        2.0
    );
    assert!(m.exactly("gen_ai_server_time_per_output_token_seconds_count", &answer) > 0.0);
    let input = [("gen_ai_token_type", "input"), ("gen_ai_request_model", "smart")];
    assert_eq!(m.sum("gen_ai_client_token_usage_sum", &input), 2.0 * MOCK_PROMPT_TOKENS);
    assert_eq!(m.sum("gen_ai_client_token_usage_count", &input), 2.0);
    assert!(m.exactly("chatgate_store_commit_seconds_count", &[("store", "sqlite")]) > 0.0);
    // One `/conv` turn was written; `/v1` writes nothing.
    let turns = [("store", "sqlite"), ("write", "turn")];
    assert_eq!(m.exactly("chatgate_store_write_seconds_count", &turns), 1.0);
    assert_eq!(m.sum("chatgate_upstream_failovers_total", &[]), 0.0);
}

#[tokio::test]
async fn a_failover_its_retries_and_upstream_errors_are_counted_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (app, second) = two_upstreams_on_sqlite(dir.path()).await;
    for _ in 0..3 {
        app.mock.enqueue(Script::refuse(503, wire::error_for_status(503)));
    }
    app.ask("fail over").await.assert_finished();
    assert_eq!(second.stats().requests, 1);
    // After the first token there is no switch: the error is the answer's, in the stream.
    let broken = app.ask("break [mock:error-after=1]").await;
    assert_eq!(broken.last()["message"]["status"], "error");

    let m = app
        .metrics_once(|m| m.sum("chatgate_upstream_errors_total", &[("kind", "in_stream")]) > 0.0)
        .await;
    let first = |kind| {
        m.exactly(
            "chatgate_upstream_errors_total",
            &[("upstream", "first"), ("kind", kind)],
        )
    };
    assert_eq!(first("refused_5xx"), 3.0);
    assert_eq!(first("in_stream"), 1.0);
    assert_eq!(m.sum("chatgate_upstream_errors_total", &[("upstream", "second")]), 0.0);
    let smart_on_first = [("upstream", "first"), ("gen_ai_request_model", "smart")];
    assert_eq!(m.exactly("chatgate_upstream_retries_total", &smart_on_first), 2.0);
    assert_eq!(m.exactly("chatgate_upstream_failovers_total", &smart_on_first), 1.0);
    let on_second = [("upstream", "second"), ("gen_ai_response_model", "model-b")];
    assert_eq!(
        m.sum("gen_ai_server_time_to_first_token_seconds_count", &on_second),
        1.0
    );
    assert_eq!(
        m.sum("gen_ai_server_time_to_first_token_seconds_count", &SMART_ON_FIRST),
        1.0
    );
}

#[tokio::test]
async fn a_model_no_route_names_is_no_label_of_the_failure_counters() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "x [mock:status=503]", "model": "made-up-1"}))
        .await;
    assert_error(response, 502, "server_error").await;
    let m = app.metrics_once(|_| true).await;
    assert!(!m.text.contains("made-up-1"), "{}", m.text);
    let other = [("upstream", "openai"), ("gen_ai_request_model", "other")];
    assert_eq!(m.exactly("chatgate_upstream_retries_total", &other), 2.0);
    let refused = [("upstream", "openai"), ("kind", "refused_5xx")];
    assert_eq!(m.exactly("chatgate_upstream_errors_total", &refused), 3.0);
}

#[tokio::test]
async fn metrics_need_a_client_key_when_keys_are_on_and_never_show_one() {
    let app = spawn_app_with(|s| s.api_keys = Some(format!("alice:{KEY}"))).await;
    let (status, _) = app.metrics_with(None).await;
    assert_eq!(status, 401);
    let (status, _) = app.metrics_with(Some("sk-not-a-key")).await;
    assert_eq!(status, 401);
    let unknown = "7b0a8d36-5d6c-4a39-9a49-3c4b1f0e2a11";
    let response = app
        .client
        .get(app.url(&format!("/conv/{unknown}/stream?api_key={KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, m) = app.metrics_with(Some(KEY)).await;
    assert_eq!(status, 200);
    let m = m.expect("a body");
    let refused = [("route", "/metrics"), ("method", "GET"), ("status", "401")];
    assert_eq!(m.exactly("chatgate_http_requests_total", &refused), 2.0);
    let stream = [("route", "/conv/{id}/stream"), ("method", "GET"), ("status", "404")];
    assert_eq!(m.exactly("chatgate_http_requests_total", &stream), 1.0);
    assert!(!m.text.contains(KEY) && !m.text.contains(unknown), "{}", m.text);
}

#[tokio::test]
async fn the_pages_files_count_as_page_and_without_a_page_other_paths_as_unmatched() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>chat</title>").unwrap();
    std::fs::write(web.path().join("app.js"), "console.log(1)").unwrap();
    let app = spawn_app_with(|s| s.web_dir = web.path().to_owned()).await;
    for (path, status) in [("/", 200), ("/app.js", 200), ("/no/such/file.js?api_key=sk-nope", 404)] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let m = app.metrics().await;
    let page = |status| {
        m.exactly(
            "chatgate_http_requests_total",
            &[("route", "page"), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!((page("200"), page("404")), (2.0, 1.0));
    for raw in ["app.js", "/no/such", "sk-nope"] {
        assert!(!m.text.contains(raw), "{raw} in:\n{}", m.text);
    }
    // The memory store has no commits to time.
    assert!(!m.text.contains("chatgate_store_commit_seconds"), "{}", m.text);

    let unbuilt = spawn_app_with(|s| s.web_dir = web.path().join("not-built")).await;
    let (status, _) = unbuilt.get_json("/no/such/path?api_key=sk-nope").await;
    assert_eq!(status, 404);
    let m = unbuilt.metrics().await;
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(m.exactly("chatgate_http_requests_total", &unmatched), 1.0);
    assert!(
        !m.text.contains("/no/such") && !m.text.contains("sk-nope"),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn answers_the_gateway_cuts_at_the_size_limit_are_counted_as_too_large_on_conv_and_v1() {
    let app = spawn_app_with(|s| s.max_answer_bytes = 4096).await;
    let c = wire::Completion::new("mock-model", 1);
    for _ in 0..2 {
        app.mock
            .enqueue(Script::stream([c.role()]).then_repeat(0, c.content(&"x".repeat(500))));
    }
    let stream = app.ask("never stop").await;
    assert_eq!(stream.last()["error"]["code"], "answer_too_large");
    let response = app
        .complete(json!({"messages": [{"role": "user", "content": "never stop"}], "stream": true}))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("answer_too_large"), "{body}");

    let m = app
        .metrics_once(|m| m.sum("chatgate_upstream_errors_total", &[("kind", "too_large")]) >= 2.0)
        .await;
    assert_eq!(m.sum("chatgate_upstream_errors_total", &[("kind", "too_large")]), 2.0);
}

#[tokio::test]
async fn every_kind_of_store_write_is_timed_on_the_memory_store() {
    let app = spawn_app().await;
    // Long enough (about 1.6 s) for a checkpoint while it runs.
    let stream = app.ask("time my writes [mock:words=40] [mock:delay=40]").await;
    stream.assert_finished();
    let conversation = stream.conversation_id();
    let deleted = app.delete_conversation(&conversation).await;
    assert_eq!(deleted.status(), 204);

    let m = app
        .metrics_once(|m| m.sum("chatgate_store_write_seconds_count", &[("write", "end")]) > 0.0)
        .await;
    let writes = |write| {
        m.exactly(
            "chatgate_store_write_seconds_count",
            &[("store", "memory"), ("write", write)],
        )
    };
    assert_eq!(writes("turn"), 1.0);
    assert!(writes("checkpoint") >= 1.0, "{}", m.text);
    assert_eq!(writes("end"), 1.0);
    assert_eq!(writes("delete"), 1.0);
    let failed = m.sum("chatgate_store_write_errors_total", &[("store", "memory")]);
    assert_eq!(failed, 0.0);
}
