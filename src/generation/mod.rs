//! Answers as *generations*: an answer runs in the gateway, not in the connection that
//! asked for it. One task (`runner`) drives the upstream into the generation; any number
//! of readers follow it, each from its own cursor, and may leave and come back.
//!
//! The registry of live generations and their fan-out sit behind [`Generations`]: the
//! in-process one (`local`), and for several replicas the bus (`bus`), which wraps it
//! with Redis Streams, without touching the runner or the routes. Readers never hold the
//! store or the upstream: only the runner does.

pub mod bus;
pub mod lane;
pub mod local;
pub mod replay;
pub mod runner;

use crate::conversation::{ConversationId, FinishType, MessageId, Status, Usage};
use crate::error::ErrorBody;
use crate::wire::chatgpt::AnswerIdentity;
use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// How a generation ended.
#[derive(Debug, Clone)]
pub struct End {
    pub status: Status,
    pub finish: FinishType,
    pub error: Option<ErrorBody>,
    /// The answer's token counts, when the upstream reported them.
    pub usage: Option<Usage>,
}

/// What a reader asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadFrom {
    /// The last frame id the reader has (`Last-Event-ID`); `None`: from the start.
    pub after: Option<u64>,
    /// Frames carry only the text (and reasoning) added since the reader's previous frame.
    pub delta: bool,
    /// Before anything was sent, an answer that fails is handed over as
    /// [`ReaderItem::Refused`], so that `POST /conv` can answer with a real HTTP status.
    pub refuse_early: bool,
    /// Only the last frame's JSON object, as [`ReaderItem::Final`] (`"stream": false`).
    pub final_only: bool,
}

/// What a reader yields.
#[derive(Debug)]
pub enum ReaderItem {
    /// SSE bytes: a frame, a heartbeat comment, `[DONE]` or `close`.
    Bytes(Bytes),
    /// The answer failed before anything was sent (only with `refuse_early`).
    Refused(ErrorBody),
    /// The last frame's JSON object (only with `final_only`).
    Final(Bytes),
}

/// A reader's view of one generation. Dropping it leaves the generation; when the last
/// reader leaves, the runner hears of it ([`Signal::Readers`]).
pub type Reader = Pin<Box<dyn Stream<Item = ReaderItem> + Send>>;

/// What a runner is told while it drives a generation.
#[derive(Debug)]
pub enum Signal {
    /// `POST /conv/{id}/stop`: end now, then answer `true` once the end is stored.
    Stop(oneshot::Sender<bool>),
    /// The number of readers changed; [`Producer::readers`] says how many there are now.
    Readers,
    /// The gateway's shutdown grace is over: end now.
    Shutdown,
}

/// The text of a generation so far, for the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub text: String,
    pub chunk_ends: Vec<u32>,
    /// Empty, both, when there is no reasoning.
    pub reasoning: String,
    pub reasoning_ends: Vec<u32>,
}

/// The runner's side of one generation.
pub trait Producer: Send {
    /// Adds one upstream chunk's text and reasoning (either may be empty, not both): one
    /// chunk, one frame; readers are woken.
    fn append(&mut self, text: &str, reasoning: &str);
    /// A keep-alive comment for readers waiting for the first chunk.
    fn heartbeat(&mut self);
    /// Ends the generation: readers get the last frame, `[DONE]` and `close`, and the
    /// registry forgets it.
    fn finish(&mut self, end: End);
    fn snapshot(&self) -> Snapshot;
    fn readers(&self) -> usize;
    /// The next signal, if there is one; otherwise `cx` is woken when one comes. Polled on
    /// every pass of the runner's loop, so it allocates nothing and takes no lock when
    /// there is no signal.
    fn poll_signal(&mut self, cx: &mut Context<'_>) -> Poll<Signal>;
}

/// A conversation's newest live answer, as the registry knows it.
#[derive(Debug, Clone)]
pub struct LiveAnswer {
    pub message: MessageId,
    /// The client key name its conversation belongs to (`None`: no owner).
    pub owner: Option<String>,
}

/// Which generation a reader or a stop means.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub conversation: ConversationId,
    /// `None`: the conversation's newest live answer.
    pub message: Option<MessageId>,
}

/// The registry of live generations.
#[async_trait]
pub trait Generations: Send + Sync + 'static {
    /// Registers a new generation. A `never_alone` one (a background turn) is never ended
    /// for having no reader. `owner`: the client key name its conversation belongs to.
    async fn start(&self, identity: AnswerIdentity, owner: Option<String>, never_alone: bool) -> Box<dyn Producer>;
    /// The conversation's newest live generation; `None` when none is live. An answer is
    /// live before its turn is stored (the turn is written while it streams): this is
    /// where it, and a new conversation's owner, are known meanwhile.
    async fn newest(&self, conversation: ConversationId) -> Option<LiveAnswer>;
    /// Follows a generation from `from` while it is live (on a bus: also while the bus
    /// keeps an ended one); `None` otherwise (the store replays it).
    async fn subscribe(&self, target: Target, from: ReadFrom) -> Option<Reader>;
    /// Asks a live generation to stop; resolves to whether it was stopped by this request.
    async fn stop(&self, target: Target) -> bool;
    /// Tells every live generation to end now ([`Signal::Shutdown`]).
    fn shutdown(&self);
    /// How many generations are live.
    fn live(&self) -> usize;
    /// Resolves once no generation is live.
    async fn drained(&self);
}
