//! A [`Store`] that times its writes for the metrics: any store, as the gateway waits for
//! it (a SQLite write's wait for its group commit included), so one histogram compares
//! the stores an operator may choose between.
//!
//! Writes happen a few times per answer (the turn, a checkpoint a second, the end), never
//! per chunk: a clock read on each side of one costs nothing an answer would notice.

use super::store::{AnswerUpdate, NewTurn, Store, StoreError};
use super::{Conversation, ConversationId, Status, Summary};
use async_trait::async_trait;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// What a write is, as its label says.
#[derive(Clone, Copy)]
enum Write {
    Turn,
    Checkpoint,
    End,
    Delete,
}

const WRITES: [Write; 4] = [Write::Turn, Write::Checkpoint, Write::End, Write::Delete];

impl Write {
    fn label(self) -> &'static str {
        match self {
            Write::Turn => "turn",
            Write::Checkpoint => "checkpoint",
            Write::End => "end",
            Write::Delete => "delete",
        }
    }
}

/// One kind of write's series, looked up once.
struct Series {
    seconds: Histogram,
    failed: IntCounter,
}

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    /// In the order of [`WRITES`].
    series: Vec<Series>,
}

impl MeteredStore {
    /// Wraps `inner`, whose kind (`sqlite`, `memory`) labels its series in `registry`.
    pub fn new(inner: Arc<dyn Store>, kind: &str, registry: &Registry) -> Result<Self, prometheus::Error> {
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "chatgate_store_write_seconds",
                "Time the gateway waits for one write to the conversation store.",
            )
            .const_label("store", kind)
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["write"],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "chatgate_store_write_errors_total",
                "Writes to the conversation store that failed.",
            )
            .const_label("store", kind),
            &["write"],
        )?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        let series = WRITES
            .iter()
            .map(|w| Series {
                seconds: seconds.with_label_values(&[w.label()]),
                failed: failed.with_label_values(&[w.label()]),
            })
            .collect();
        Ok(Self { inner, series })
    }

    async fn timed<T>(&self, write: Write, run: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let series = &self.series[write as usize];
        let started = Instant::now();
        let result = run.await;
        series.seconds.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            series.failed.inc();
        }
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.inner.conversation(id).await
    }

    async fn begin_turn(&self, turn: NewTurn) -> Result<(), StoreError> {
        self.timed(Write::Turn, self.inner.begin_turn(turn)).await
    }

    async fn update_answer(&self, update: AnswerUpdate) -> Result<(), StoreError> {
        let write = match update.status {
            Status::InProgress => Write::Checkpoint,
            _ => Write::End,
        };
        self.timed(write, self.inner.update_answer(update)).await
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<Summary>, StoreError> {
        self.inner.list(owner).await
    }

    async fn delete(&self, id: ConversationId) -> Result<bool, StoreError> {
        self.timed(Write::Delete, self.inner.delete(id)).await
    }
}
