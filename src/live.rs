//! An answer in flight, between the relay that writes it and the response body that reads
//! it at the client's pace.
//!
//! The relay never waits for the client: it appends each delta to the shared answer, notes
//! where the delta ends, and wakes the body. The body renders a frame only when the client
//! is ready for one: one frame per delta while it keeps up (a burst of deltas that arrived
//! together still gives one frame each), and, once it has fallen more than
//! [`MAX_BACKLOG`] deltas behind, one frame with everything so far. Every frame carries
//! the whole text, so skipping stale frames loses nothing, and an answer holds its text
//! and a few offsets, never a queue of stale frames. A frame's id counts the deltas it
//! includes, so an id says exactly how much of the answer a client has seen.
//!
//! In delta mode (`"delta": true` in the request) each frame's `parts[0]` holds only the
//! text added since the previous frame, so bytes on the wire grow linearly with the answer.

use crate::conversation::{FinishType, Status};
use crate::sse::{self, AnswerFrames, AnswerIdentity, FrameState};
use bytes::Bytes;
use futures::Stream;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot};

/// How the answer ended, once it has.
struct End {
    status: Status,
    finish: FinishType,
    error: Option<Value>,
}

/// Deltas a client may fall behind before its next frame jumps to the latest text.
pub const MAX_BACKLOG: usize = 32;

struct State {
    frames: AnswerFrames,
    /// Deltas not yet sent: (frame id, where its text ends).
    unsent: VecDeque<(u64, usize)>,
    heartbeats: usize,
    end: Option<End>,
}

/// The writer's side.
pub struct LiveAnswer {
    shared: Arc<Shared>,
    /// Closed when the body is dropped: the client is gone.
    gone: oneshot::Sender<()>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single append or assignment: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reader's side: becomes the response body.
pub struct Body {
    shared: Arc<Shared>,
    delta: bool,
    _alive: oneshot::Receiver<()>,
}

/// A new answer with nothing in it yet.
pub fn answer(identity: &AnswerIdentity, delta: bool) -> (LiveAnswer, Body) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: AnswerFrames::new(identity),
            unsent: VecDeque::new(),
            heartbeats: 0,
            end: None,
        }),
        wake: Notify::new(),
    });
    let (gone, alive) = oneshot::channel();
    let body = Body {
        shared: Arc::clone(&shared),
        delta,
        _alive: alive,
    };
    (LiveAnswer { shared, gone }, body)
}

impl LiveAnswer {
    pub fn push(&self, delta: &str) {
        let mut state = self.shared.lock();
        state.frames.push(delta);
        if state.unsent.len() == MAX_BACKLOG {
            // The client is not keeping up: its next frame will carry everything.
            state.unsent.clear();
        }
        let boundary = (state.frames.deltas(), state.frames.end());
        state.unsent.push_back(boundary);
        drop(state);
        self.shared.wake.notify_one();
    }

    pub fn heartbeat(&self) {
        self.shared.lock().heartbeats += 1;
        self.shared.wake.notify_one();
    }

    /// Ends the answer: the body sends the last frame, `[DONE]` and `close`.
    pub fn end(&self, status: Status, finish: FinishType, error: Option<Value>) {
        self.shared.lock().end = Some(End { status, finish, error });
        self.shared.wake.notify_one();
    }

    pub fn text(&self) -> String {
        self.shared.lock().frames.text().to_owned()
    }

    /// Resolves when the client has gone away (the body was dropped).
    pub async fn gone(&mut self) {
        self.gone.closed().await;
    }
}

impl Body {
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> {
        async_stream::stream! {
            // Own the whole body, `_alive` included, for as long as the stream lives: the
            // relay takes its end being dropped to mean the client is gone.
            let this = self;
            // where the last frame's text ended (delta mode sends from there)
            let mut since = 0usize;
            loop {
                let next = {
                    let mut state = this.shared.lock();
                    let from = if this.delta { since } else { 0 };
                    if state.heartbeats > 0 {
                        state.heartbeats -= 1;
                        Next::One(Bytes::from_static(sse::HEARTBEAT))
                    } else if let Some((id, end)) = state.unsent.pop_front() {
                        since = end;
                        Next::One(state.frames.frame(id, from..end, FrameState::IN_PROGRESS))
                    } else if let Some(end) = &state.end {
                        let frames = &state.frames;
                        let last = FrameState { status: end.status, finish: Some(end.finish), error: end.error.as_ref() };
                        Next::Last(frames.frame(frames.deltas() + 1, from..frames.end(), last))
                    } else {
                        Next::Wait
                    }
                };
                match next {
                    Next::One(bytes) => yield Ok(bytes),
                    Next::Last(bytes) => {
                        yield Ok(bytes);
                        yield Ok(Bytes::from_static(sse::DONE));
                        yield Ok(Bytes::from_static(sse::CLOSE));
                        break;
                    }
                    // notify_one keeps a permit when nobody waits, so a wake between the
                    // check above and this wait is not lost.
                    Next::Wait => this.shared.wake.notified().await,
                }
            }
        }
    }
}

enum Next {
    One(Bytes),
    Last(Bytes),
    Wait,
}
