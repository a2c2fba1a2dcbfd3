//! Where a request goes: the model a client names maps to targets (an upstream and the
//! model name it knows), tried in order. Before the first token a target that fails for a
//! passing reason is tried again with backoff, then the next one; the client sees none of
//! it, except in the model that answered. After the first token nothing is switched: the
//! error stays in the stream, where the client sees it.

use super::demo::DemoProvider;
use super::metered::{Answering, UpstreamMetrics};
use super::openai::OpenAiProvider;
use super::{ChatRequest, Chunk, ChunkStream, Provider, Replay, UpstreamError};
use crate::config::UpstreamKind;
use crate::config_file::{ApiKind, ModelRoute, Target};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One upstream: its name (from the config file, or `openai`/`demo`), the API it speaks,
/// and its provider.
pub struct Upstream {
    pub name: Arc<str>,
    pub kind: &'static str,
    pub provider: Arc<dyn Provider>,
}

/// How hard a failing target is tried before the next one.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries of one target, the first included.
    pub tries: u32,
    /// The first backoff; each next one doubles, with jitter.
    pub first_backoff: Duration,
    /// The most time spent waiting between tries of one request, over all its targets.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            tries: 3,
            first_backoff: Duration::from_millis(250),
            budget: Duration::from_secs(10),
        }
    }
}

/// An answer that has begun: its stream (the chunks read while choosing the target come
/// first), the upstream that answers and the model name that upstream was asked for.
pub struct Opened {
    pub stream: ChunkStream,
    pub upstream: Arc<str>,
    pub model: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("upstream", &self.upstream)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

pub struct Router {
    /// At least one; the first takes every model not under `models`.
    upstreams: Vec<Upstream>,
    models: Vec<ModelRoute>,
    default_model: String,
    retry: RetryPolicy,
    /// None in unit tests that do not look at them.
    metrics: Option<Arc<UpstreamMetrics>>,
}

/// A try that did not reach the first token.
struct Failed {
    error: UpstreamError,
    /// The chunks read before the error when the upstream had accepted the request (none
    /// carries content); `None` when it refused it or was not reached.
    accepted: Option<Vec<Chunk>>,
}

impl Router {
    /// `upstreams` must not be empty (a router without one answers every request with
    /// `Unreachable`).
    pub fn new(upstreams: Vec<Upstream>, models: Vec<ModelRoute>, default_model: String) -> Self {
        Self {
            upstreams,
            models,
            default_model,
            retry: RetryPolicy::default(),
            metrics: None,
        }
    }

    /// Readies the calling thread to reach every upstream (see [`Provider::warm`]).
    pub fn warm(&self) {
        for upstream in &self.upstreams {
            upstream.provider.warm();
        }
    }

    /// The router, measuring its answers, failures, retries and failovers into `metrics`.
    pub fn measured_by(mut self, metrics: Arc<UpstreamMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The router of the settings: the config file's upstreams and models, or the one
    /// upstream of the environment (or the demo provider).
    pub fn build(
        upstream: &UpstreamKind,
        default_model: &str,
        max_answer_bytes: usize,
    ) -> Result<Self, reqwest::Error> {
        let one = |name: &str, kind, provider: Arc<dyn Provider>| Upstream {
            name: name.into(),
            kind,
            provider,
        };
        let (upstreams, models) = match upstream {
            UpstreamKind::Demo { delay } => (vec![one("demo", "demo", Arc::new(DemoProvider::new(*delay)))], vec![]),
            UpstreamKind::OpenAi { base_url, key } => {
                let provider = OpenAiProvider::new(base_url, key.clone(), max_answer_bytes)?;
                (vec![one("openai", "openai", Arc::new(provider))], vec![])
            }
            UpstreamKind::Anthropic { base_url, key } => {
                let provider = super::anthropic::AnthropicProvider::new(base_url, key.clone(), max_answer_bytes)?;
                (vec![one("anthropic", "anthropic", Arc::new(provider))], vec![])
            }
            UpstreamKind::Routed(routing) => {
                let mut upstreams = Vec::with_capacity(routing.upstreams.len());
                for entry in &routing.upstreams {
                    let (base_url, key) = (entry.base_url.as_str(), entry.key.clone());
                    let provider: Arc<dyn Provider> = match entry.kind {
                        ApiKind::OpenAi => Arc::new(OpenAiProvider::new(base_url, key, max_answer_bytes)?),
                        ApiKind::Anthropic => Arc::new(super::anthropic::AnthropicProvider::new(
                            base_url,
                            key,
                            max_answer_bytes,
                        )?),
                    };
                    upstreams.push(one(&entry.name, entry.kind.as_str(), provider));
                }
                (upstreams, routing.models.clone())
            }
        };
        Ok(Self::new(upstreams, models, default_model.to_owned()))
    }

    /// The model names clients may send: those under `[models]`, and the default model.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = self.models.iter().map(|m| m.name.clone()).collect();
        if !names.contains(&self.default_model) {
            names.push(self.default_model.clone());
        }
        names
    }

    /// Whether the only upstream is the built-in demo provider.
    pub fn is_demo(&self) -> bool {
        matches!(self.upstreams.as_slice(), [only] if only.kind == "demo")
    }

    /// The API the first upstream speaks (`openai`, `anthropic` or `demo`).
    pub fn kind(&self) -> &'static str {
        self.upstreams.first().map_or("none", |u| u.kind)
    }

    /// `model` as a label of failure counters: a name the client may send, or `other`. A
    /// model not under `[models]` goes to the upstream as the client named it, and a failing
    /// one must not add a series per name a client makes up.
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        match model == self.default_model || self.models.iter().any(|m| m.name == model) {
            true => model,
            false => "other",
        }
    }

    /// The targets of `model`, in order: its route, or the first upstream as is.
    fn targets(&self, model: &str) -> Vec<Target> {
        match self.models.iter().find(|m| m.name == model) {
            Some(route) => route.targets.clone(),
            None if self.upstreams.is_empty() => vec![],
            None => vec![Target {
                upstream: 0,
                model: model.to_owned(),
            }],
        }
    }

    /// Sends `request` to its model's targets until one gives a first token, and returns
    /// that answer. Each try reads until the first chunk with content (or a finish), but
    /// waits for it at most `first_token_wait` after the upstream accepted: past that, the
    /// try is kept as it is and its later errors are the stream's. `idle` is the longest
    /// silence (keep-alive bytes count as sound, not as tokens).
    ///
    /// Retried, then failed over: connect errors and resets (an answer that ends before
    /// its first token and without a finish too), silence, HTTP 408, 409, 429 and 5xx,
    /// and in-stream errors that say the upstream is overloaded or failing. Any other
    /// error ends it at once. When it ends without an answer, the error is the last
    /// try's: returned when the upstream had refused, else at the head of the stream (the
    /// request was accepted, so the caller stores the turn and shows the error in it).
    pub async fn open(
        &self,
        request: ChatRequest,
        first_token_wait: Duration,
        idle: Duration,
    ) -> Result<Opened, UpstreamError> {
        let asked_at = Instant::now();
        let asked = request.model.clone();
        let label = self.model_label(&asked);
        let mut waited = Duration::ZERO;
        let mut failures = Vec::new();
        let mut last: Option<(Failed, Arc<str>, String)> = None;
        for (n, target) in self.targets(&asked).into_iter().enumerate() {
            let upstream = &self.upstreams[target.upstream];
            let at = format!("{}/{}", upstream.name, target.model);
            if n > 0 {
                log::warn!("model {asked}: failing over to {at}");
                if let (Some(metrics), Some((_, left, _))) = (&self.metrics, &last) {
                    metrics.failed_over(left, label);
                }
            }
            for attempt in 1..=self.retry.tries {
                let mut this = request.clone();
                this.model = target.model.clone();
                let failed = match try_once(upstream.provider.as_ref(), this, first_token_wait, idle).await {
                    Ok((read, stream)) => {
                        if n > 0 || attempt > 1 {
                            log::info!("model {asked}: answered by {at} (try {attempt})");
                        }
                        let stream = match &self.metrics {
                            None => replay(read, stream),
                            Some(metrics) => {
                                let who = Answering {
                                    asked: &asked,
                                    model: &target.model,
                                    provider: upstream.kind,
                                    upstream: &upstream.name,
                                };
                                metrics.meter(read, stream, who, asked_at)
                            }
                        };
                        return Ok(Opened {
                            stream,
                            upstream: Arc::clone(&upstream.name),
                            model: target.model,
                        });
                    }
                    Err(failed) => failed,
                };
                if let Some(metrics) = &self.metrics {
                    metrics.failed(&upstream.name, &failed.error);
                }
                failures.push(format!("{at} try {attempt}: {}", failed.error));
                if !worth_retrying(&failed.error) {
                    log::warn!("model {asked}: {at} failed, not retried: {}", failed.error);
                    let failed = self.hint_models(&asked, failed);
                    return give_up(failed, &upstream.name, target.model);
                }
                let wait = self.retry.wait(attempt, &failed.error);
                let error = failed.error.to_string();
                last = Some((failed, Arc::clone(&upstream.name), target.model.clone()));
                if attempt == self.retry.tries {
                    break;
                }
                if waited + wait > self.retry.budget {
                    log::warn!(
                        "model {asked}: {at} failed ({error}); a retry would wait {} ms, past the retry budget: moving on",
                        wait.as_millis()
                    );
                    break;
                }
                log::warn!(
                    "model {asked}: {at} failed ({error}); try {} of {} in {} ms",
                    attempt + 1,
                    self.retry.tries,
                    wait.as_millis()
                );
                if let Some(metrics) = &self.metrics {
                    metrics.retried(&upstream.name, label);
                }
                tokio::time::sleep(wait).await;
                waited += wait;
            }
        }
        log::warn!("model {asked}: every target failed: {}", failures.join("; "));
        match last {
            Some((failed, upstream, model)) => give_up(failed, &upstream, model),
            None => Err(UpstreamError::Unreachable("no upstream is configured".into())),
        }
    }
}

impl Router {
    /// An upstream's 404 for a model this gateway does not route (most likely a model the
    /// upstream does not know) says which models clients may name.
    fn hint_models(&self, asked: &str, mut failed: Failed) -> Failed {
        let routed = self.models.iter().any(|m| m.name == asked);
        if let UpstreamError::Refused {
            status: 404, message, ..
        } = &mut failed.error
            && !routed
        {
            message.push_str(&format!(
                " (the models this gateway routes: {})",
                self.models().join(", ")
            ));
        }
        failed
    }
}

impl RetryPolicy {
    /// How long to wait after try `attempt` failed with `error`: the `Retry-After` seconds
    /// when the upstream sent them, else an exponential backoff with jitter.
    fn wait(&self, attempt: u32, error: &UpstreamError) -> Duration {
        if let UpstreamError::Refused {
            retry_after: Some(seconds),
            ..
        } = error
            && let Ok(seconds) = seconds.trim().parse::<u64>()
            && seconds > 0
        {
            return Duration::from_secs(seconds);
        }
        let full = self
            .first_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        // Half fixed, half random: retries of many requests that failed together spread out.
        full / 2 + full.mul_f64(random_fraction() / 2.0)
    }
}

/// A number in [0, 1), from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a failure before the first token may pass: worth a retry and another target.
fn worth_retrying(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Unreachable(_)
        | UpstreamError::Broken(_)
        | UpstreamError::IdleTimeout(_)
        | UpstreamError::Truncated => true,
        UpstreamError::Refused { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
        UpstreamError::InStream { code, .. } => code.as_deref().is_some_and(|c| {
            matches!(
                c,
                "overloaded_error" | "server_error" | "api_error" | "rate_limit_error" | "rate_limit_exceeded"
            )
        }),
        UpstreamError::BadChunk(_) | UpstreamError::TooLarge { .. } => false,
    }
}

/// The last failure, as the caller gets it: an error when nothing was accepted, else the
/// accepted stream's chunks and then the error.
fn give_up(failed: Failed, upstream: &Arc<str>, model: String) -> Result<Opened, UpstreamError> {
    let Some(read) = failed.accepted else {
        return Err(failed.error);
    };
    Ok(Opened {
        stream: replay(read, Box::pin(futures::stream::once(async { Err(failed.error) }))),
        upstream: Arc::clone(upstream),
        model,
    })
}

/// `read` and then `rest`.
fn replay(read: Vec<Chunk>, rest: ChunkStream) -> ChunkStream {
    if read.is_empty() {
        return rest;
    }
    Box::pin(Replay::new(read, rest))
}

/// `stream`, whose next item must come by `deadline`: the silence before a try was kept
/// counts towards the idle timeout (whoever reads on measures from the moment it starts).
fn heard_by(mut stream: ChunkStream, deadline: Instant, idle: Duration) -> ChunkStream {
    Box::pin(async_stream::stream! {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                yield Err(UpstreamError::IdleTimeout(idle));
                return;
            }
            Ok(None) => return,
            Ok(Some(item)) => yield item,
        }
        while let Some(item) = stream.next().await {
            yield item;
        }
    })
}

/// One try of one target: the chunks read and the rest of the stream, once it has given
/// its first token (or a finish), or once `first_token_wait` has passed without an error.
async fn try_once(
    provider: &dyn Provider,
    request: ChatRequest,
    first_token_wait: Duration,
    idle: Duration,
) -> Result<(Vec<Chunk>, ChunkStream), Failed> {
    let refused = |error| Failed { error, accepted: None };
    let mut stream = match tokio::time::timeout(idle, provider.stream_chat(request)).await {
        Err(_) => return Err(refused(UpstreamError::IdleTimeout(idle))),
        Ok(Err(error)) => return Err(refused(error)),
        Ok(Ok(stream)) => stream,
    };
    let commit_at = Instant::now() + first_token_wait;
    let mut heard = Instant::now();
    let mut read = Vec::new();
    loop {
        let silent_at = heard + idle;
        match tokio::time::timeout_at(commit_at.min(silent_at), stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                heard = Instant::now();
                let first = chunk.has_content() || chunk.finish.is_some();
                // Bare keep-alives only said the upstream is alive: nothing to keep.
                if first || chunk.usage.is_some() {
                    read.push(chunk);
                }
                if first {
                    return Ok((read, stream));
                }
            }
            Ok(Some(Err(error))) => {
                return Err(Failed {
                    error,
                    accepted: Some(read),
                });
            }
            // Ended before any token and without a finish: as good as a reset.
            Ok(None) => {
                return Err(Failed {
                    error: UpstreamError::Truncated,
                    accepted: Some(read),
                });
            }
            Err(_) if silent_at <= commit_at => {
                return Err(Failed {
                    error: UpstreamError::IdleTimeout(idle),
                    accepted: Some(read),
                });
            }
            // The first token is slow but the upstream is fine so far: keep this try, so
            // the caller can start sending heartbeats.
            Err(_) => return Ok((read, heard_by(stream, silent_at, idle))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::FinishType;
    use crate::upstream::metered::UpstreamMetrics;
    use async_trait::async_trait;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// What a fake upstream does with one request.
    #[derive(Clone)]
    enum Outcome {
        Refuse(UpstreamError),
        /// Items, each after its delay; then, with `stall`, silence forever.
        Stream(Vec<(u64, Result<Chunk, UpstreamError>)>, bool),
    }

    /// An upstream that plays queued outcomes, then `otherwise` forever, and records the
    /// model of every request.
    struct Fake {
        queue: Mutex<VecDeque<Outcome>>,
        otherwise: Outcome,
        asked: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(queue: Vec<Outcome>, otherwise: Outcome) -> Arc<Self> {
            Arc::new(Self {
                queue: Mutex::new(queue.into()),
                otherwise,
                asked: Mutex::default(),
            })
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Provider for Fake {
        async fn stream_chat(&self, request: ChatRequest) -> Result<ChunkStream, UpstreamError> {
            self.asked.lock().unwrap().push(request.model);
            let outcome = self.queue.lock().unwrap().pop_front();
            match outcome.unwrap_or_else(|| self.otherwise.clone()) {
                Outcome::Refuse(e) => Err(e),
                Outcome::Stream(items, stall) => Ok(Box::pin(async_stream::stream! {
                    for (ms, item) in items {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        yield item;
                    }
                    if stall {
                        std::future::pending::<()>().await;
                    }
                })),
            }
        }
    }

    fn answer(text: &str) -> Outcome {
        let done = Chunk {
            finish: Some(FinishType::Stop),
            ..Chunk::default()
        };
        Outcome::Stream(
            vec![(0, Ok(Chunk::default())), (0, Ok(Chunk::text(text))), (0, Ok(done))],
            false,
        )
    }

    fn refused(status: u16, retry_after: Option<&str>) -> Outcome {
        Outcome::Refuse(UpstreamError::Refused {
            status,
            message: format!("HTTP {status}"),
            code: None,
            retry_after: retry_after.map(str::to_owned),
        })
    }

    fn in_stream(code: &str) -> Result<Chunk, UpstreamError> {
        Err(UpstreamError::InStream {
            message: "it went wrong".into(),
            code: Some(code.into()),
        })
    }

    /// Upstreams `a` and `b`; the model `smart` goes to `b/big`, then `a/small`.
    fn router(a: &Arc<Fake>, b: &Arc<Fake>) -> Router {
        let upstream = |name: &str, fake: &Arc<Fake>| Upstream {
            name: name.into(),
            kind: "openai",
            provider: Arc::clone(fake) as Arc<dyn Provider>,
        };
        let route = ModelRoute {
            name: "smart".into(),
            targets: vec![
                Target {
                    upstream: 1,
                    model: "big".into(),
                },
                Target {
                    upstream: 0,
                    model: "small".into(),
                },
            ],
        };
        Router::new(vec![upstream("a", a), upstream("b", b)], vec![route], "smart".into())
    }

    fn ask(model: &str) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            ..ChatRequest::default()
        }
    }

    const WAIT: Duration = Duration::from_secs(15);
    const IDLE: Duration = Duration::from_secs(60);

    async fn open(router: &Router, model: &str) -> Result<Opened, UpstreamError> {
        router.open(ask(model), WAIT, IDLE).await
    }

    async fn text_of(opened: Opened) -> (String, Option<UpstreamError>) {
        let mut stream = opened.stream;
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.push_str(&chunk.text),
                Err(e) => return (text, Some(e)),
            }
        }
        (text, None)
    }

    /// The text of an answer that must end without an error.
    async fn whole_text(opened: Opened) -> String {
        match text_of(opened).await {
            (text, None) => text,
            (text, Some(e)) => panic!("{text:?} ended with {e}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_goes_to_its_first_target_and_any_other_to_the_first_upstream_as_is() {
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], answer("from b")));
        let router = router(&a, &b);
        let opened = open(&router, "smart").await.unwrap();
        assert_eq!((&*opened.upstream, opened.model.as_str()), ("b", "big"));
        assert_eq!(whole_text(opened).await, "from b");
        let opened = open(&router, "gpt-4o").await.unwrap();
        assert_eq!((&*opened.upstream, opened.model.as_str()), ("a", "gpt-4o"));
        assert_eq!((a.asked(), b.asked()), (vec!["gpt-4o".into()], vec!["big".into()]));
        assert_eq!(router.models(), ["smart"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_5xx_is_tried_three_times_then_the_next_target_answers() {
        let (a, b) = (
            Fake::new(vec![], answer("from a")),
            Fake::new(vec![], refused(503, None)),
        );
        let router = router(&a, &b);
        let opened = open(&router, "smart").await.unwrap();
        assert_eq!((&*opened.upstream, opened.model.as_str()), ("a", "small"));
        assert_eq!(text_of(opened).await.0, "from a");
        assert_eq!(b.asked().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_a_failover_and_each_failed_try_are_counted_and_the_answer_is_timed() {
        let (a, b) = (
            Fake::new(vec![], answer("from a")),
            Fake::new(vec![], refused(503, None)),
        );
        let metrics = Arc::new(UpstreamMetrics::new().unwrap());
        let registry = prometheus::Registry::new();
        metrics.register(&registry).unwrap();
        let router = router(&a, &b).measured_by(Arc::clone(&metrics));
        assert_eq!(whole_text(open(&router, "smart").await.unwrap()).await, "from a");
        let mut text = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        prometheus::Encoder::encode(&encoder, &registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            r#"chatgate_upstream_errors_total{kind="refused_5xx",upstream="b"} 3"#,
            r#"chatgate_upstream_retries_total{gen_ai_request_model="smart",upstream="b"} 2"#,
            r#"chatgate_upstream_failovers_total{gen_ai_request_model="smart",upstream="b"} 1"#,
            r#"gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="smart",gen_ai_response_model="small",upstream="a"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_its_retry_after_and_the_same_target_answers() {
        let b = Fake::new(vec![refused(429, Some("1"))], answer("from b"));
        let a = Fake::new(vec![], answer("from a"));
        let started = Instant::now();
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(&*opened.upstream, "b");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!((a.asked().len(), b.asked().len()), (0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn other_4xx_are_neither_retried_nor_failed_over() {
        let (a, b) = (
            Fake::new(vec![], answer("from a")),
            Fake::new(vec![], refused(400, None)),
        );
        let error = open(&router(&a, &b), "smart").await.unwrap_err();
        assert!(matches!(error, UpstreamError::Refused { status: 400, .. }), "{error}");
        assert_eq!((a.asked().len(), b.asked().len()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_stops_at_the_budget_and_the_last_targets_error_is_returned() {
        let (a, b) = (
            Fake::new(vec![], refused(503, Some("3"))),
            Fake::new(vec![], refused(429, Some("4"))),
        );
        let started = Instant::now();
        let error = open(&router(&a, &b), "smart").await.unwrap_err();
        // b: try, 4 s, try, 4 s, try; a: try, and its 3 s would pass the 10 s budget.
        assert!(matches!(error, UpstreamError::Refused { status: 503, .. }), "{error}");
        assert_eq!((a.asked().len(), b.asked().len()), (1, 3));
        assert_eq!(started.elapsed(), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_past_the_budget_moves_on_at_once() {
        let (a, b) = (
            Fake::new(vec![], answer("from a")),
            Fake::new(vec![], refused(429, Some("30"))),
        );
        let started = Instant::now();
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(&*opened.upstream, "a");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(b.asked().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overload_before_the_first_token_fails_over_and_keep_alives_are_not_tokens() {
        let overloaded = Outcome::Stream(
            vec![(0, Ok(Chunk::default())), (5, in_stream("overloaded_error"))],
            false,
        );
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], overloaded));
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(&*opened.upstream, "a");
        assert_eq!(whole_text(opened).await, "from a");
        assert_eq!(b.asked().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_token_an_error_stays_in_the_stream() {
        let broken = Outcome::Stream(
            vec![(0, Ok(Chunk::text("half"))), (0, in_stream("overloaded_error"))],
            false,
        );
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], broken));
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(&*opened.upstream, "b");
        let (text, error) = text_of(opened).await;
        assert_eq!(text, "half");
        assert!(matches!(error, Some(UpstreamError::InStream { .. })));
        assert!(a.asked().is_empty(), "no switch after the first token");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_before_the_first_token_is_retried_then_failed_over() {
        let silent = Outcome::Stream(vec![(0, Ok(Chunk::default()))], true);
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], silent));
        let router = router(&a, &b);
        let opened = router.open(ask("smart"), WAIT, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&*opened.upstream, "a");
        assert_eq!(b.asked().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_token_is_waited_for_once_then_the_try_is_kept() {
        let slow = Outcome::Stream(
            vec![(0, Ok(Chunk::default())), (20_000, Ok(Chunk::text("late")))],
            false,
        );
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], slow));
        let started = Instant::now();
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(started.elapsed(), WAIT);
        assert_eq!(&*opened.upstream, "b");
        assert_eq!(whole_text(opened).await, "late");
        assert!(a.asked().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_silence_before_a_kept_try_counts_towards_the_idle_timeout() {
        let silent = Outcome::Stream(vec![(0, Ok(Chunk::default()))], true);
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], silent));
        let started = Instant::now();
        let opened = router(&a, &b)
            .open(ask("smart"), WAIT, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), WAIT, "kept after the first-token wait");
        let (text, error) = text_of(opened).await;
        assert_eq!(text, "");
        assert!(matches!(error, Some(UpstreamError::IdleTimeout(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(20), "20 s after the last byte");
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_after_the_upstream_accepted_comes_at_the_head_of_the_stream() {
        let refusing = Outcome::Stream(vec![(0, in_stream("invalid_prompt"))], false);
        let (a, b) = (Fake::new(vec![], answer("from a")), Fake::new(vec![], refusing));
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(&*opened.upstream, "b");
        let (text, error) = text_of(opened).await;
        assert_eq!(text, "");
        assert!(matches!(error, Some(UpstreamError::InStream { .. })));
        assert_eq!((a.asked().len(), b.asked().len()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_cut_before_its_first_token_is_tried_again() {
        let cut = Outcome::Stream(vec![(0, Ok(Chunk::default()))], false);
        let (a, b) = (
            Fake::new(vec![], answer("from a")),
            Fake::new(vec![cut], answer("from b")),
        );
        let opened = open(&router(&a, &b), "smart").await.unwrap();
        assert_eq!(whole_text(opened).await, "from b");
        assert_eq!((a.asked().len(), b.asked().len()), (0, 2));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_retry_after_wins() {
        let policy = RetryPolicy::default();
        let e = UpstreamError::Broken("reset".into());
        for attempt in 1..=3 {
            let full = Duration::from_millis(250 << (attempt - 1));
            let wait = policy.wait(attempt, &e);
            assert!(wait >= full / 2 && wait <= full, "{wait:?}");
        }
        let Outcome::Refuse(limited) = refused(429, Some("2")) else {
            unreachable!()
        };
        assert_eq!(policy.wait(1, &limited), Duration::from_secs(2));
    }
}
