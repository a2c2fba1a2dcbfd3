//! What the router measures of upstreams: time to first token and time per output chunk,
//! token usage, errors by kind, retries and failovers. Every answer of `/conv` and `/v1`
//! comes out of [`Router::open`](super::router::Router::open), so it is measured there
//! once, for both.
//!
//! Names and attributes follow the OpenTelemetry GenAI conventions where they have one
//! (in Prometheus, dots become underscores and the unit is a suffix); the rest are
//! `chatgate_` metrics.
//!
//! Cost: an answer's labelled series are looked up once, when it opens; after that a chunk
//! costs a clock read and a few additions to the answer's own counts, which reach the
//! shared series with the first chunk a second or more after they were last added
//! ([`FLUSH_EVERY`]), and when the answer ends. A chunk touches nothing another thread
//! writes: no lock, no allocation, no shared atomic.

use super::{Chunk, ChunkStream, Replay, UpstreamError, Usage};
use futures::Stream;
use prometheus::local::LocalHistogram;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// `gen_ai.server.time_to_first_token`'s advised buckets, then a longer tail for reasoning
/// models, which can think for a minute before their first token.
const FIRST_TOKEN_BUCKETS: [f64; 19] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];

/// `gen_ai.server.time_per_output_token`'s advised buckets, below them two for fast
/// upstreams whose chunks come a few milliseconds apart.
const PER_CHUNK_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// How often a running answer adds its chunk timings to the shared histogram (with its
/// next chunk after this much time; an answer that goes silent adds them when it ends).
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `gen_ai.client.token.usage`'s advised buckets.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

/// The labels of an answer's series: the model the client named, the model the upstream
/// was asked for, the API the upstream speaks and the upstream's name.
const ANSWER_LABELS: [&str; 4] = [
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_provider_name",
    "upstream",
];

/// The router's metrics. Made unregistered (a router in a unit test is measured into
/// nothing); [`UpstreamMetrics::register`] shows them on a registry.
pub struct UpstreamMetrics {
    first_token: HistogramVec,
    per_chunk: HistogramVec,
    tokens: HistogramVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    failovers: IntCounterVec,
}

/// Who answers: the labels of one answer's series.
pub struct Answering<'a> {
    /// The model the client named.
    pub asked: &'a str,
    /// The model name the upstream was asked for.
    pub model: &'a str,
    /// The API the upstream speaks (`openai`, `anthropic`, `demo`).
    pub provider: &'a str,
    pub upstream: &'a Arc<str>,
}

impl UpstreamMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        // The one operation the gateway performs, as OpenTelemetry names it.
        let chat = |opts: HistogramOpts| opts.const_label("gen_ai_operation_name", "chat");
        Ok(Self {
            first_token: HistogramVec::new(
                chat(
                    HistogramOpts::new(
                        "gen_ai_server_time_to_first_token_seconds",
                        "Time from the request reaching the router to the upstream's first chunk with content, retries and failovers included.",
                    )
                    .buckets(FIRST_TOKEN_BUCKETS.to_vec()),
                ),
                &ANSWER_LABELS,
            )?,
            per_chunk: HistogramVec::new(
                chat(
                    HistogramOpts::new(
                        "gen_ai_server_time_per_output_token_seconds",
                        "Time between two chunks with content after the first (an upstream chunk is usually one token).",
                    )
                    .buckets(PER_CHUNK_BUCKETS.to_vec()),
                ),
                &ANSWER_LABELS,
            )?,
            tokens: HistogramVec::new(
                chat(
                    HistogramOpts::new(
                        "gen_ai_client_token_usage",
                        "Tokens of one answer as its upstream reported them: gen_ai_token_type input (prompt) or output (completion).",
                    )
                    .buckets(TOKEN_BUCKETS.to_vec()),
                ),
                &[ANSWER_LABELS.as_slice(), &["gen_ai_token_type"]].concat(),
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "chatgate_upstream_errors_total",
                    "Upstream failures by kind: each failed try before the first token, and each error in an answer's stream after it.",
                ),
                &["upstream", "kind"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "chatgate_upstream_retries_total",
                    "Tries of a target again after it failed before the first token.",
                ),
                &["upstream", "gen_ai_request_model"],
            )?,
            failovers: IntCounterVec::new(
                Opts::new(
                    "chatgate_upstream_failovers_total",
                    "Moves to a model's next target; upstream is the one left.",
                ),
                &["upstream", "gen_ai_request_model"],
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.first_token.clone()))?;
        registry.register(Box::new(self.per_chunk.clone()))?;
        registry.register(Box::new(self.tokens.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.retries.clone()))?;
        registry.register(Box::new(self.failovers.clone()))?;
        Ok(())
    }

    /// A try of `upstream` failed with `error`.
    pub fn failed(&self, upstream: &str, error: &UpstreamError) {
        self.errors.with_label_values(&[upstream, error_kind(error)]).inc();
    }

    /// `upstream` is tried again for the client's `model`.
    pub fn retried(&self, upstream: &str, model: &str) {
        self.retries.with_label_values(&[upstream, model]).inc();
    }

    /// The client's `model` leaves `upstream` for its next target.
    pub fn failed_over(&self, upstream: &str, model: &str) {
        self.failovers.with_label_values(&[upstream, model]).inc();
    }

    /// The chunks `read` so far and then `stream`, measured: an answer that `who` gives,
    /// asked for at `asked_at`.
    pub fn meter(
        self: &Arc<Self>,
        read: Vec<Chunk>,
        stream: ChunkStream,
        who: Answering<'_>,
        asked_at: Instant,
    ) -> ChunkStream {
        let labels = [who.asked, who.model, who.provider, &**who.upstream];
        let tokens = |kind| self.tokens.with_label_values(&[labels.as_slice(), &[kind]].concat());
        Box::pin(Metered {
            stream: Replay::new(read, stream),
            since: asked_at,
            flushed: asked_at,
            had_token: false,
            first_token: self.first_token.with_label_values(&labels),
            per_chunk: self.per_chunk.with_label_values(&labels).local(),
            input_tokens: tokens("input"),
            output_tokens: tokens("output"),
            usage: None,
            upstream: Arc::clone(who.upstream),
            metrics: Arc::clone(self),
        })
    }
}

/// Counts, for one answer, the errors raised about its upstream outside the upstream's
/// stream: the silence and size limits that the runner and the `/v1` relay keep.
#[derive(Clone)]
pub struct Tally {
    metrics: Arc<UpstreamMetrics>,
    upstream: Arc<str>,
}

impl Tally {
    pub fn new(metrics: Arc<UpstreamMetrics>, upstream: Arc<str>) -> Self {
        Self { metrics, upstream }
    }

    /// `error` ends the answer: it is counted, and handed back.
    pub fn raised(&self, error: UpstreamError) -> UpstreamError {
        self.metrics.failed(&self.upstream, &error);
        error
    }
}

/// The kind of an upstream failure, as a label: few values, whatever the upstream says.
pub fn error_kind(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::Refused { status: 429, .. } => "refused_429",
        UpstreamError::Refused { status: 400..=499, .. } => "refused_4xx",
        UpstreamError::Refused { status: 500..=599, .. } => "refused_5xx",
        UpstreamError::Refused { .. } => "refused_other",
        UpstreamError::Unreachable(_) => "unreachable",
        UpstreamError::IdleTimeout(_) => "idle_timeout",
        UpstreamError::Broken(_) => "broken",
        UpstreamError::InStream { .. } => "in_stream",
        UpstreamError::Truncated => "truncated",
        UpstreamError::BadChunk(_) => "bad_chunk",
        UpstreamError::TooLarge { .. } => "too_large",
    }
}

/// An answer's stream as it passes to whoever reads it, timed chunk by chunk.
struct Metered {
    stream: Replay,
    /// When the request reached the router, then when the last chunk with content passed.
    since: Instant,
    /// When `per_chunk` was last added to the shared histogram.
    flushed: Instant,
    had_token: bool,
    first_token: Histogram,
    /// This answer's chunk timings, not yet in the shared histogram.
    per_chunk: LocalHistogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
    /// The latest usage the upstream reported (each one is cumulative); recorded once, when
    /// the answer ends or is dropped.
    usage: Option<Usage>,
    upstream: Arc<str>,
    metrics: Arc<UpstreamMetrics>,
}

impl Metered {
    fn saw(&mut self, chunk: &Chunk) {
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        if !chunk.has_content() {
            return;
        }
        let now = Instant::now();
        let took = now.duration_since(self.since).as_secs_f64();
        match self.had_token {
            false => self.first_token.observe(took),
            true => self.per_chunk.observe(took),
        }
        self.had_token = true;
        self.since = now;
        if now.duration_since(self.flushed) >= FLUSH_EVERY {
            self.per_chunk.flush();
            self.flushed = now;
        }
    }

    /// The answer ended, or was dropped: its timings and tokens go to the shared series.
    fn record_usage(&mut self) {
        self.per_chunk.flush();
        if let Some(usage) = self.usage.take() {
            self.input_tokens.observe(usage.prompt_tokens as f64);
            self.output_tokens.observe(usage.completion_tokens as f64);
        }
    }
}

impl Stream for Metered {
    type Item = Result<Chunk, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = Pin::new(&mut this.stream).poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(chunk))) => this.saw(chunk),
            Poll::Ready(Some(Err(error))) => this.metrics.failed(&this.upstream, error),
            Poll::Ready(None) => this.record_usage(),
            Poll::Pending => {}
        }
        item
    }
}

impl Drop for Metered {
    /// An answer cut short (its reader went away, or it reached its size limit) still
    /// counts the tokens reported so far.
    fn drop(&mut self) {
        self.record_usage();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<(u64, f64)> {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().to_vec())
            .find(|m| {
                labels
                    .iter()
                    .all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v))
            })
            .map(|m| match m.get_histogram().get_sample_count() {
                0 if m.get_counter().get_value() > 0.0 => (m.get_counter().get_value() as u64, 0.0),
                n => (n, m.get_histogram().get_sample_sum()),
            })
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_timed_per_chunk_and_its_last_usage_counted_once() {
        let metrics = Arc::new(UpstreamMetrics::new().unwrap());
        let registry = Registry::new();
        metrics.register(&registry).unwrap();
        let usage = |completion_tokens| Chunk {
            usage: Some(Usage {
                prompt_tokens: 7,
                completion_tokens,
            }),
            ..Chunk::default()
        };
        let items = vec![
            Chunk::default(),
            Chunk::text("a"),
            usage(1),
            Chunk::text("b"),
            Chunk::text("c"),
            usage(3),
        ];
        let upstream: Arc<str> = "up".into();
        let asked_at = Instant::now();
        let paced = futures::stream::iter(items).then(|c| async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Ok(c)
        });
        let who = Answering {
            asked: "smart",
            model: "big",
            provider: "openai",
            upstream: &upstream,
        };
        let stream = metrics.meter(Vec::new(), Box::pin(paced), who, asked_at);
        assert_eq!(stream.collect::<Vec<_>>().await.len(), 6);
        let answer = [("gen_ai_request_model", "smart"), ("upstream", "up")];
        let (n, sum) = value(&registry, "gen_ai_server_time_to_first_token_seconds", &answer).unwrap();
        assert_eq!(n, 1);
        assert!((sum - 0.2).abs() < 1e-6, "{sum}");
        let (n, sum) = value(&registry, "gen_ai_server_time_per_output_token_seconds", &answer).unwrap();
        assert_eq!(n, 2);
        assert!((sum - 0.3).abs() < 1e-6, "{sum}");
        let output = [("gen_ai_token_type", "output"), ("gen_ai_response_model", "big")];
        assert_eq!(value(&registry, "gen_ai_client_token_usage", &output), Some((1, 3.0)));
        let input = [("gen_ai_token_type", "input"), ("gen_ai_provider_name", "openai")];
        assert_eq!(value(&registry, "gen_ai_client_token_usage", &input), Some((1, 7.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_answer_shows_its_chunk_timings_about_once_a_second_and_its_read_chunks_first() {
        let metrics = Arc::new(UpstreamMetrics::new().unwrap());
        let registry = Registry::new();
        metrics.register(&registry).unwrap();
        let upstream: Arc<str> = "up".into();
        let who = Answering {
            asked: "m",
            model: "m",
            provider: "openai",
            upstream: &upstream,
        };
        let paced = futures::stream::iter(["b", "c", "d", "e", "f", "g"]).then(|t| async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Ok(Chunk::text(t))
        });
        let mut stream = metrics.meter(vec![Chunk::text("a")], Box::pin(paced), who, Instant::now());
        let per_chunk = |registry: &Registry| {
            value(
                registry,
                "gen_ai_server_time_per_output_token_seconds",
                &[("upstream", "up")],
            )
            .map(|(n, _)| n)
        };
        let mut texts = String::new();
        // "a" was read before the answer opened; "b" to "e" come 300 ms apart, the last
        // of them 1.2 s after the answer was asked for.
        for _ in 0..5 {
            texts.push_str(&stream.next().await.unwrap().unwrap().text);
        }
        assert_eq!(texts, "abcde");
        assert_eq!(
            per_chunk(&registry),
            Some(4),
            "timings more than a second old are shown"
        );
        while stream.next().await.is_some() {}
        assert_eq!(per_chunk(&registry), Some(6));
    }

    #[tokio::test]
    async fn an_error_in_the_stream_is_counted_by_its_kind() {
        let metrics = Arc::new(UpstreamMetrics::new().unwrap());
        let registry = Registry::new();
        metrics.register(&registry).unwrap();
        let upstream: Arc<str> = "up".into();
        let items: Vec<Result<Chunk, UpstreamError>> = vec![Ok(Chunk::text("a")), Err(UpstreamError::Truncated)];
        let who = Answering {
            asked: "m",
            model: "m",
            provider: "openai",
            upstream: &upstream,
        };
        let stream = metrics.meter(Vec::new(), Box::pin(futures::stream::iter(items)), who, Instant::now());
        drop(stream.collect::<Vec<_>>().await);
        let truncated = [("upstream", "up"), ("kind", "truncated")];
        assert_eq!(
            value(&registry, "chatgate_upstream_errors_total", &truncated),
            Some((1, 0.0))
        );
    }
}
