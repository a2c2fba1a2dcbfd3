//! `GET /metrics`: one registry per application, holding what each room measures — requests
//! at the edge, answers, tokens and failures in the router, store writes and the SQLite
//! writer's commits — and the live answers, counted when scraped.
//!
//! Nothing is done for metrics when nobody scrapes but the counting itself: atomic
//! additions on handles looked up once per request or answer.

use crate::conversation::Store;
use crate::conversation::group_commit;
use crate::conversation::metered::MeteredStore;
use crate::upstream::metered::UpstreamMetrics;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Counted by the bus's writer once per pipeline, never per chunk on the answer's path.
#[derive(Clone)]
pub struct BusCounters {
    pub round_trips: IntCounter,
    pub chunks: IntCounter,
    pub failed: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: IntCounterVec,
    /// The router's: time to first token and per chunk, tokens, errors, retries, failovers.
    pub upstream: Arc<UpstreamMetrics>,
    live_answers: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        // Counted by `edge::requests`, for every request.
        let requests = IntCounterVec::new(
            Opts::new(
                "chatgate_http_requests_total",
                "Requests by route pattern (`page` for the chat page's files, `unmatched` for paths no route takes), method and status.",
            ),
            &["route", "method", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let upstream = Arc::new(UpstreamMetrics::new()?);
        upstream.register(&registry)?;
        let live_answers = IntGauge::new(
            "chatgate_live_answers",
            "Answers running now: generations of /conv and answers /v1 relays.",
        )?;
        registry.register(Box::new(live_answers.clone()))?;
        Ok(Self {
            registry,
            requests,
            upstream,
            live_answers,
        })
    }

    /// Shows the SQLite writer's commit times (only a SQLite store has them).
    pub fn show_store_commits(&self) -> Result<(), prometheus::Error> {
        self.registry.register(Box::new(group_commit::commit_seconds()?))
    }

    /// `store`, its writes timed (`kind` labels them: `sqlite`, `memory`).
    pub fn measure_store(&self, store: Arc<dyn Store>, kind: &str) -> Result<Arc<dyn Store>, prometheus::Error> {
        Ok(Arc::new(MeteredStore::new(store, kind, &self.registry)?))
    }

    /// What the bus's writer counts (only a replica on a bus has them).
    pub fn bus_counters(&self) -> Result<BusCounters, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::new(name, help)?;
            self.registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        Ok(BusCounters {
            round_trips: counter(
                "chatgate_bus_round_trips_total",
                "Pipelines of chunks and ends this replica sent to Redis (one round trip each).",
            )?,
            chunks: counter("chatgate_bus_chunks_total", "Chunks this replica sent to Redis.")?,
            failed: counter(
                "chatgate_bus_write_errors_total",
                "Pipelines Redis did not take (their chunks are missing on the bus).",
            )?,
        })
    }

    /// Everything in the text exposition format, with `live` answers running now.
    pub fn render(&self, live: usize) -> Result<Vec<u8>, prometheus::Error> {
        self.live_answers.set(i64::try_from(live).unwrap_or(i64::MAX));
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(text)
    }
}
