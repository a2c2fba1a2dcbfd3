//! The task that drives one generation: it reads the upstream's chunks (their text and
//! reasoning) into the generation, checkpoints them, and, when the answer ends, stores it
//! with its token counts and ends the generation.
//!
//! The runner, not a connection, owns the upstream stream, so an answer outlives its
//! readers. It ends early on a Stop, on the gateway's shutdown, or when nobody has read it
//! for the detached grace (a reload or a dropped network within the grace picks it up
//! again). Ending drops the upstream stream, which closes the upstream connection: nobody
//! pays for tokens nobody will read.

use super::lane::{self, Lane, Unsaved};
use super::{End, Producer, Signal};
use crate::conversation::store::{AnswerUpdate, NewTurn};
use crate::conversation::{FinishType, Status, Store, Usage};
use crate::error::{ApiError, ErrorBody};
use crate::upstream::metered::Tally;
use crate::upstream::{ChunkStream, UpstreamError};
use crate::wire::chatgpt::AnswerIdentity;
use futures::StreamExt;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};

/// The times a runner keeps.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between keep-alive comments while waiting for the first chunk.
    pub heartbeat: Duration,
    /// Until the first keep-alive comment: less than `heartbeat` when the client has
    /// already waited (for the router to find a first token) before the answer started.
    pub first_heartbeat: Duration,
    /// The upstream's longest silence.
    pub idle: Duration,
    /// How long an answer nobody reads keeps going (zero: it stops at once).
    pub detached_grace: Duration,
    /// The longest time new text waits before it is checkpointed.
    pub checkpoint: Duration,
}

/// What an answer may grow to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// UTF-8 bytes of its text, and of its reasoning: an answer either of which reaches it
    /// is ended (`answer_too_large`).
    pub max_answer_bytes: usize,
}

/// Everything one generation's runner needs.
pub struct Run {
    pub identity: AnswerIdentity,
    pub stream: ChunkStream,
    pub turn: NewTurn,
    pub producer: Box<dyn Producer>,
    pub store: Arc<dyn Store>,
    pub unsaved: Arc<Unsaved>,
    pub timing: Timing,
    pub limits: Limits,
    /// The client's live-answer slot (see `limits`), held until the answer has ended.
    pub slot: Option<crate::limits::StreamSlot>,
    /// Counts the errors the runner raises itself (silence, size) for the metrics.
    pub tally: Tally,
}

/// How an answer ended.
enum Ending {
    Finished(FinishType),
    /// By `POST …/stop`: the requester is answered once the end is stored.
    Stopped(oneshot::Sender<bool>),
    /// Nobody read it for the detached grace.
    Unread,
    ShuttingDown,
    Failed(ApiError),
}

/// The least time an answer started without a reader waits for its first one.
const FIRST_READER_WAIT: Duration = Duration::from_secs(5);

/// Runs the generation on its own task.
pub fn spawn(run: Run) {
    let Run {
        identity,
        stream,
        turn,
        producer,
        store,
        unsaved,
        timing,
        limits,
        slot,
        tally,
    } = run;
    let runner = Runner {
        identity,
        producer,
        tally,
        // The turn is written while the answer streams, so the first token does not wait
        // for the disk; the end waits for it (see `lane`).
        lane: lane::open(store, unsaved, turn),
        timing,
        limits,
        started: Instant::now(),
        usage: None,
    };
    tokio::spawn(drive(runner, stream, slot));
}

/// The task: every held stream has one, so what it holds across its awaits is kept small
/// (the end, which runs once, is boxed).
async fn drive(mut runner: Runner, mut stream: ChunkStream, slot: Option<crate::limits::StreamSlot>) {
    let ending = runner.relay(&mut stream).await;
    // Drop the upstream before the final write: tokens nobody reads stop now.
    drop(stream);
    Box::pin(runner.end(ending)).await;
    drop(slot);
}

/// One generation's runner, once started.
struct Runner {
    identity: AnswerIdentity,
    producer: Box<dyn Producer>,
    tally: Tally,
    lane: Lane,
    timing: Timing,
    limits: Limits,
    started: Instant,
    /// The latest token counts the upstream sent.
    usage: Option<Usage>,
}

impl Runner {
    async fn relay(&mut self, stream: &mut ChunkStream) -> Ending {
        let (timing, producer) = (self.timing, &mut self.producer);
        let limit = self.limits.max_answer_bytes;
        let (mut answer_bytes, mut reasoning_bytes) = (0, 0);
        let started = Instant::now();
        // One timer for every deadline (a chunk polls one timer, not four); each deadline
        // is `Some` only while it applies.
        let mut deadlines = Deadlines {
            heartbeat: Some(started + timing.first_heartbeat),
            grace: None,
            checkpoint: None,
            // When the upstream last sent anything: the idle deadline follows from it.
            heard: started,
            idle: timing.idle,
        };
        let mut finish = None;
        // Started with nobody reading (a background turn that asked to be cancelled when
        // unread): its first reader has the grace, and at least a few seconds, to come.
        let mut alone = producer.readers() == 0;
        if alone {
            deadlines.grace = Some(started + timing.detached_grace.max(FIRST_READER_WAIT));
        }
        let timer = sleep_until(deadlines.next());
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                signal = poll_fn(|cx| producer.poll_signal(cx)) => match signal {
                    Signal::Stop(reply) => return Ending::Stopped(reply),
                    Signal::Shutdown => return Ending::ShuttingDown,
                    Signal::Readers if producer.readers() > 0 => {
                        alone = false;
                        deadlines.grace = None;
                    }
                    Signal::Readers if timing.detached_grace.is_zero() => return Ending::Unread,
                    Signal::Readers => {
                        // The grace starts again each time the last reader leaves.
                        if !alone {
                            deadlines.grace = Some(Instant::now() + timing.detached_grace);
                            alone = true;
                            rearm(timer.as_mut(), &deadlines);
                        }
                    }
                },
                // Never ready: the store writes move on as they complete.
                () = poll_fn(|cx| self.lane.poll(cx)) => {}
                () = &mut timer => {
                    // Each deadline is looked at when the timer fires: a chunk only notes
                    // its time, and the timer catches up with it here.
                    let now = Instant::now();
                    if deadlines.grace.is_some_and(|at| at <= now) {
                        return Ending::Unread;
                    }
                    if deadlines.heard + timing.idle <= now {
                        return match finish {
                            Some(f) => Ending::Finished(f),
                            None => Ending::Failed(self.tally.raised(UpstreamError::IdleTimeout(timing.idle)).into()),
                        };
                    }
                    if deadlines.heartbeat.is_some_and(|at| at <= now) {
                        producer.heartbeat();
                        deadlines.heartbeat = Some(now + timing.heartbeat);
                    }
                    if deadlines.checkpoint.is_some_and(|at| at <= now) {
                        deadlines.checkpoint = None;
                        let snapshot = producer.snapshot();
                        self.lane.checkpoint(AnswerUpdate {
                            conversation_id: self.identity.conversation_id,
                            id: self.identity.message_id,
                            content: snapshot.text,
                            chunk_ends: snapshot.chunk_ends,
                            reasoning: snapshot.reasoning,
                            reasoning_ends: snapshot.reasoning_ends,
                            usage: self.usage,
                            status: Status::InProgress,
                            finish: None,
                            error: None,
                        });
                    }
                    timer.as_mut().reset(deadlines.next());
                }
                item = stream.next() => match item {
                    // Any chunk, even an empty one (keep-alive bytes), shows the upstream is alive.
                    Some(Ok(mut chunk)) => {
                        // Reaching the limit ends the answer, unless the answer is finishing anyway.
                        // The text and the reasoning each have the limit, as on `/v1`.
                        let finishing = chunk.finish.or(finish).is_some();
                        let (text_room, reasoning_room) = (limit - answer_bytes, limit - reasoning_bytes);
                        let too_large = overflows(chunk.text.len(), text_room, finishing)
                            || overflows(chunk.reasoning.len(), reasoning_room, finishing);
                        if too_large {
                            chunk.text.truncate(floor_char_boundary(&chunk.text, text_room));
                            chunk.reasoning.truncate(floor_char_boundary(&chunk.reasoning, reasoning_room));
                        }
                        if chunk.usage.is_some() {
                            self.usage = chunk.usage;
                        }
                        let now = Instant::now();
                        if !chunk.text.is_empty() || !chunk.reasoning.is_empty() {
                            answer_bytes += chunk.text.len();
                            reasoning_bytes += chunk.reasoning.len();
                            producer.append(&chunk.text, &chunk.reasoning);
                            // Heartbeats are for the wait before the first text.
                            deadlines.heartbeat = None;
                            if deadlines.checkpoint.is_none() {
                                deadlines.checkpoint = Some(now + timing.checkpoint);
                                rearm(timer.as_mut(), &deadlines);
                            }
                        }
                        if too_large {
                            // Ended here: the caller drops the stream, which cancels the upstream.
                            return Ending::Failed(self.tally.raised(UpstreamError::TooLarge { limit }).into());
                        }
                        finish = chunk.finish.or(finish);
                        deadlines.heard = now;
                    }
                    Some(Err(e)) => return Ending::Failed(e.into()),
                    None => {
                        return match finish {
                            Some(f) => Ending::Finished(f),
                            None => Ending::Failed(self.tally.raised(UpstreamError::Truncated).into()),
                        };
                    }
                },
            }
        }
    }

    /// Stores the answer, then ends the generation: every reader gets the last frame after
    /// the answer is on disk, so nothing a client saw can be lost.
    async fn end(self, ending: Ending) {
        let mut stop_reply = None;
        let (mut status, finish, mut error) = match ending {
            Ending::Finished(f) => (Status::FinishedSuccessfully, f, None),
            Ending::Stopped(reply) => {
                stop_reply = Some(reply);
                (Status::FinishedPartialCompletion, FinishType::Interrupted, None)
            }
            Ending::Unread => (Status::FinishedPartialCompletion, FinishType::Interrupted, None),
            Ending::ShuttingDown => (Status::Error, FinishType::Interrupted, Some(ApiError::Stopping)),
            Ending::Failed(e) => (Status::Error, FinishType::Interrupted, Some(e)),
        };
        let Runner {
            identity,
            mut producer,
            lane,
            started,
            usage,
            ..
        } = self;
        let identity = &identity;
        let snapshot = producer.snapshot();
        log::info!(
            "conversation {} answer {}: {} after {:.0} ms, {} bytes{}",
            identity.conversation_id,
            identity.message_id,
            status.as_str(),
            started.elapsed().as_secs_f64() * 1000.0,
            snapshot.text.len(),
            error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
        );
        let update = AnswerUpdate {
            conversation_id: identity.conversation_id,
            id: identity.message_id,
            content: snapshot.text,
            chunk_ends: snapshot.chunk_ends,
            reasoning: snapshot.reasoning,
            reasoning_ends: snapshot.reasoning_ends,
            usage,
            status,
            finish: Some(finish),
            error: error.as_ref().map(ApiError::object),
        };
        if let Err(e) = lane.end(update).await {
            log::error!(
                "conversation {} answer {}: not stored: {e}",
                identity.conversation_id,
                identity.message_id
            );
            status = Status::Error;
            error = Some(e.into());
        }
        producer.finish(End {
            status,
            finish,
            error: error.as_ref().map(ErrorBody::from),
            usage,
        });
        if let Some(reply) = stop_reply {
            let _ = reply.send(true);
        }
    }
}

/// A runner's deadlines, kept by one timer.
struct Deadlines {
    /// The next keep-alive comment, while no text has come.
    heartbeat: Option<Instant>,
    /// The end of the detached grace, while nobody reads.
    grace: Option<Instant>,
    /// The next checkpoint, while there is text not yet checkpointed.
    checkpoint: Option<Instant>,
    heard: Instant,
    idle: Duration,
}

impl Deadlines {
    /// The earliest deadline.
    fn next(&self) -> Instant {
        [self.heartbeat, self.grace, self.checkpoint]
            .into_iter()
            .flatten()
            .fold(self.heard + self.idle, Instant::min)
    }
}

/// Brings the timer forward when a deadline earlier than its own was set (a later one
/// waits for the timer to fire and set it again).
fn rearm(timer: std::pin::Pin<&mut tokio::time::Sleep>, deadlines: &Deadlines) {
    let next = deadlines.next();
    if next < timer.deadline() {
        timer.reset(next);
    }
}

/// Whether `len` more bytes reach a limit with `room` left: reaching it exactly is fine
/// only for the answer's last piece.
fn overflows(len: usize, room: usize, finishing: bool) -> bool {
    len > room || (len == room && len > 0 && !finishing)
}

/// The largest char boundary of `text` at or before `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}
