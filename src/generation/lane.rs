//! One answer's writes to the store, in order: the turn, checkpoints of the text while it
//! runs, then the end. Checkpoints go through the store's group commit with every other
//! answer's, at most one in flight per answer (a newer one replaces a waiting one), so a
//! running answer costs a write a second, never one per token.
//!
//! A write that fails for a passing reason (the database busy, the disk full) is retried
//! until it succeeds. Meanwhile the end it carries is kept in [`Unsaved`], which reads of
//! the conversation lay over what the store returns: while the process runs, nobody sees
//! an ended answer as still in progress.

use crate::conversation::store::{AnswerUpdate, NewTurn};
use crate::conversation::{Conversation, MessageId, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Ends that the store has not taken yet, by message id.
#[derive(Default)]
pub struct Unsaved(Mutex<HashMap<MessageId, AnswerUpdate>>);

impl Unsaved {
    fn lock(&self) -> MutexGuard<'_, HashMap<MessageId, AnswerUpdate>> {
        // Inserts and removes only: the map behind a poisoned lock is whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lays the ends not yet stored over a conversation read from the store.
    pub fn apply(&self, conversation: &mut Conversation) {
        let unsaved = self.lock();
        if unsaved.is_empty() {
            return;
        }
        for m in &mut conversation.messages {
            if let Some(update) = unsaved.get(&m.id) {
                m.content.clone_from(&update.content);
                m.chunk_ends.clone_from(&update.chunk_ends);
                m.status = update.status;
                m.finish = update.finish;
                m.error.clone_from(&update.error);
            }
        }
    }
}

type EndRequest = (AnswerUpdate, oneshot::Sender<Result<(), StoreError>>);

/// The runner's handle on its answer's writes.
pub struct Lane {
    checkpoints: watch::Sender<Option<AnswerUpdate>>,
    end: Option<oneshot::Sender<EndRequest>>,
}

/// Starts writing `turn`; checkpoints and the end follow through the returned lane.
pub fn open(store: Arc<dyn Store>, unsaved: Arc<Unsaved>, turn: NewTurn) -> Lane {
    let (checkpoints, latest) = watch::channel(None);
    let (end, ended) = oneshot::channel();
    tokio::spawn(run(store, unsaved, turn, latest, ended));
    Lane {
        checkpoints,
        end: Some(end),
    }
}

impl Lane {
    /// Queues a checkpoint; one still waiting is replaced.
    pub fn checkpoint(&self, update: AnswerUpdate) {
        self.checkpoints.send_replace(Some(update));
    }

    /// Writes the end; resolves with the first attempt's outcome. After a passing failure
    /// the write goes on being retried in the background.
    pub async fn end(&mut self, update: AnswerUpdate) -> Result<(), StoreError> {
        let (reply, outcome) = oneshot::channel();
        let Some(end) = self.end.take() else {
            return Err(StoreError::Commit("the answer was already ended".into()));
        };
        if end.send((update, reply)).is_err() {
            return Err(StoreError::Commit("the answer's store task stopped".into()));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(StoreError::Commit("the answer's store task stopped".into())))
    }
}

/// Waits between retries of a failed write: 1 s, doubling up to 10 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

async fn run(
    store: Arc<dyn Store>,
    unsaved: Arc<Unsaved>,
    turn: NewTurn,
    mut latest: watch::Receiver<Option<AnswerUpdate>>,
    mut ended: oneshot::Receiver<EndRequest>,
) {
    let id = turn.assistant.id;
    let mut begun = store.begin_turn(turn.clone()).await;
    let (update, reply) = loop {
        tokio::select! {
            end = &mut ended => match end {
                Ok(end) => break end,
                // The runner is gone without an end: the next start marks the answer.
                Err(_) => return,
            },
            changed = latest.changed(), if begun.is_ok() => {
                if changed.is_err() {
                    continue;
                }
                let checkpoint = latest.borrow_and_update().clone();
                if let Some(checkpoint) = checkpoint
                    && let Err(e) = store.update_answer(checkpoint).await
                {
                    // The next checkpoint, or the end, carries the same text and more.
                    log::warn!("answer {id}: checkpoint not stored: {e}");
                }
            }
        }
    };
    let first = write_end(&*store, &turn, &mut begun, &update).await;
    let retry = first.as_ref().is_err_and(StoreError::is_transient);
    if retry {
        unsaved.lock().insert(id, update.clone());
    }
    let _ = reply.send(first);
    if !retry {
        return;
    }
    let mut wait = RETRY_FIRST;
    let mut tries = 1;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
        tries += 1;
        match write_end(&*store, &turn, &mut begun, &update).await {
            Ok(()) => {
                log::info!("answer {id}: stored after {tries} tries");
                break;
            }
            Err(e) if e.is_transient() => {
                log::warn!(
                    "answer {id}: still not stored ({e}); trying again in {} s",
                    wait.as_secs()
                );
            }
            Err(e) => {
                log::error!("answer {id}: cannot be stored: {e}");
                break;
            }
        }
    }
    unsaved.lock().remove(&id);
}

/// Writes the turn if it is not written yet, then the answer's end.
async fn write_end(
    store: &dyn Store,
    turn: &NewTurn,
    begun: &mut Result<(), StoreError>,
    update: &AnswerUpdate,
) -> Result<(), StoreError> {
    if begun.as_ref().is_err_and(StoreError::is_transient) {
        *begun = store.begin_turn(turn.clone()).await;
    }
    match begun {
        Ok(()) => store.update_answer(update.clone()).await,
        Err(e) if e.is_transient() => Err(StoreError::Commit(format!("the turn is not stored yet: {e}"))),
        Err(e) => Err(StoreError::Rejected(format!("the turn could not be stored: {e}"))),
    }
}
