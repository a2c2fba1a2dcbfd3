//! The path of a token: one task per answer reads the upstream's deltas, turns each into a
//! frame and hands it to the client's response body through a channel, then stores the
//! answer and ends the stream.
//!
//! Cancellation is explicit. Before the stream opens, the handler awaits the task's
//! verdict; after, the response body owns the channel's receiver. Either way, when the
//! client goes away actix drops what it holds (the handler, or the body), the task sees
//! its end of the oneshot or the channel closed, and it drops the upstream stream at
//! once, which closes the upstream connection: nobody pays for tokens nobody reads.
//! actix-web drops those only once it notices the disconnect, so the server disallows
//! half-closed connections: a client's FIN is then noticed even while nothing is written.

use crate::conversation::store::{AnswerUpdate, NewTurn};
use crate::conversation::{FinishType, Status, StoreError};
use crate::error::ApiError;
use crate::live::{self, Body, LiveAnswer};
use crate::sse::AnswerIdentity;
use crate::startup::AppState;
use crate::upstream::{ChunkStream, UpstreamError};
use actix_web::web::Data;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::sleep;

/// The task's answer to the handler, given once: stream, or fail with a real HTTP status.
pub enum Verdict {
    Stream(Body),
    Refuse(ApiError),
}

/// How an answer ended.
enum Ending {
    Finished(FinishType),
    ClientGone,
    Failed(ApiError),
}

/// Starts relaying an accepted upstream stream. The returned verdict arrives with the
/// first token, or after one heartbeat interval without one (then the stream opens with a
/// heartbeat comment), or as a refusal when the upstream fails before its first token.
/// `delta`: frames carry only new text (see `live`).
pub fn start(
    state: Data<AppState>,
    stream: ChunkStream,
    new_turn: NewTurn,
    identity: AnswerIdentity,
    delta: bool,
) -> oneshot::Receiver<Verdict> {
    let (verdict_tx, verdict_rx) = oneshot::channel();
    let (live, body) = live::answer(&identity, delta);
    let relay = Relay {
        identity,
        live,
        pending: Some((verdict_tx, body)),
        state,
    };
    tokio::spawn(relay.run(stream, new_turn));
    verdict_rx
}

struct Relay {
    state: Data<AppState>,
    identity: AnswerIdentity,
    live: LiveAnswer,
    /// Until the verdict is given: where to give it, and the response body.
    pending: Option<(oneshot::Sender<Verdict>, Body)>,
}

impl Relay {
    async fn run(mut self, mut stream: ChunkStream, new_turn: NewTurn) {
        let started = Instant::now();
        // The turn is written while the answer streams, so the first token does not wait
        // for the disk; the end of the answer waits for both writes (see `end`).
        let store = Arc::clone(&self.state.store);
        let begun = tokio::spawn(async move { store.begin_turn(new_turn).await });
        let ending = self.relay(&mut stream).await;
        // Drop the upstream before the final write: a gone client's tokens stop now.
        drop(stream);
        self.end(ending, begun, started).await;
    }

    /// Resolves when the client is gone: before the verdict, the handler (and with it the
    /// request) was dropped; after it, the response body was.
    async fn client_gone(&mut self) {
        match &mut self.pending {
            Some((verdict, _)) => verdict.closed().await,
            None => self.live.gone().await,
        }
    }

    async fn relay(&mut self, stream: &mut ChunkStream) -> Ending {
        let settings = &self.state.settings;
        let (heartbeat_every, idle_limit) = (settings.heartbeat, settings.upstream_idle_timeout);
        let heartbeat = sleep(heartbeat_every);
        let idle = sleep(idle_limit);
        tokio::pin!(heartbeat, idle);
        let mut finish = None;
        let mut has_text = false;
        loop {
            tokio::select! {
                biased;
                _ = self.client_gone() => return Ending::ClientGone,
                _ = &mut idle => {
                    return match finish {
                        Some(f) => Ending::Finished(f),
                        None => Ending::Failed(UpstreamError::IdleTimeout(idle_limit).into()),
                    };
                }
                _ = &mut heartbeat, if !has_text => {
                    if !self.open() {
                        return Ending::ClientGone;
                    }
                    self.live.heartbeat();
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + heartbeat_every);
                }
                item = stream.next() => {
                    match item {
                        Some(Ok(delta)) => {
                            if !delta.text.is_empty() {
                                has_text = true;
                                if !self.open() {
                                    return Ending::ClientGone;
                                }
                                self.live.push(&delta.text);
                            }
                            finish = delta.finish.or(finish);
                            idle.as_mut().reset(tokio::time::Instant::now() + idle_limit);
                        }
                        Some(Err(e)) => return Ending::Failed(e.into()),
                        None => {
                            return match finish {
                                Some(f) => Ending::Finished(f),
                                None => Ending::Failed(UpstreamError::Truncated.into()),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Opens the stream if it is not open yet. `false`: the client is gone.
    fn open(&mut self) -> bool {
        match self.pending.take() {
            Some((verdict, body)) => verdict.send(Verdict::Stream(body)).is_ok(),
            None => true,
        }
    }

    fn refuse(&mut self, error: ApiError) {
        if let Some((verdict, _)) = self.pending.take() {
            // The handler may be gone with its client; then there is nobody to tell.
            let _ = verdict.send(Verdict::Refuse(error));
        }
    }

    async fn end(mut self, ending: Ending, begun: JoinHandle<Result<(), StoreError>>, started: Instant) {
        let (mut status, finish, mut error) = match ending {
            Ending::Finished(f) => (Status::FinishedSuccessfully, f, None),
            Ending::ClientGone => (Status::FinishedPartialCompletion, FinishType::Interrupted, None),
            Ending::Failed(e) => (Status::Error, FinishType::Interrupted, Some(e)),
        };
        let text = self.live.text();
        let id = &self.identity;
        log::info!(
            "conversation {} answer {}: {} after {:.0} ms, {} bytes{}",
            id.conversation_id,
            id.message_id,
            status.as_str(),
            started.elapsed().as_secs_f64() * 1000.0,
            text.len(),
            error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
        );
        let update = AnswerUpdate {
            conversation_id: id.conversation_id,
            id: id.message_id,
            content: text,
            status,
            finish: Some(finish),
            error: error.as_ref().map(ApiError::object),
        };
        let stored = match begun.await {
            Ok(Ok(())) => self.state.store.finish_answer(update).await,
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = stored {
            log::error!("conversation {}: could not store the answer: {e}", id.conversation_id);
            if status != Status::FinishedPartialCompletion {
                status = Status::Error;
                error = Some(e.into());
            }
        }
        // Failed before anything was sent: the client gets a real HTTP status instead.
        if let Some(e) = error.take_if(|_| self.pending.is_some()) {
            self.refuse(e);
            return;
        }
        // Opened (an answer that ended before any text still streams its last frame) and
        // ended in every case, so that no body can wait forever; after a client left,
        // both are no-ops that nobody reads.
        let _ = self.open();
        self.live.end(status, finish, error.as_ref().map(ApiError::object));
    }
}
