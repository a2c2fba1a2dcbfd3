//! One answer's writes to the store, in order: the turn, checkpoints of the text while it
//! runs, then the end. Checkpoints go through the store's group commit with every other
//! answer's, at most one in flight per answer (a newer one replaces a waiting one), so a
//! running answer costs a write a second, never one per token. The writes are driven by
//! the answer's runner, on its task.
//!
//! A write that fails for a passing reason (the database busy, the disk full) is retried
//! until it succeeds. Meanwhile the end it carries is kept in [`Unsaved`], which reads of
//! the conversation lay over what the store returns: while the process runs, nobody sees
//! an ended answer as still in progress. [`Unsaved`] also names the conversations whose
//! first turn is being written, so that a list read meanwhile can wait for them.

use crate::conversation::store::{AnswerUpdate, NewTurn};
use crate::conversation::{Conversation, ConversationId, MessageId, Store, StoreError};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

/// What the store has not taken yet: ends, by message id, and the conversations whose
/// first turn is being written, with their owners.
#[derive(Default)]
pub struct Unsaved {
    ends: Mutex<HashMap<MessageId, AnswerUpdate>>,
    starting: Mutex<HashMap<ConversationId, Option<String>>>,
}

/// Inserts and removes only: a map behind a poisoned lock is whole.
fn locked<T>(map: &Mutex<T>) -> MutexGuard<'_, T> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

impl Unsaved {
    fn lock(&self) -> MutexGuard<'_, HashMap<MessageId, AnswerUpdate>> {
        locked(&self.ends)
    }

    /// The conversations of `owner` (every one when `None`) whose first turn is being
    /// written: a list read now may not have them yet.
    pub fn starting(&self, owner: Option<&str>) -> Vec<ConversationId> {
        locked(&self.starting)
            .iter()
            .filter(|(_, o)| owner.is_none() || o.as_deref() == owner)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn is_starting(&self, id: ConversationId) -> bool {
        locked(&self.starting).contains_key(&id)
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
                m.reasoning.clone_from(&update.reasoning);
                m.reasoning_ends.clone_from(&update.reasoning_ends);
                m.usage = update.usage;
                m.status = update.status;
                m.finish = update.finish;
                m.error.clone_from(&update.error);
            }
        }
    }
}

/// A write under way.
type Writing = Pin<Box<dyn Future<Output = Written> + Send>>;

enum Written {
    Turn(Result<(), StoreError>),
    Checkpoint(Result<(), StoreError>),
}

/// One answer's writes, driven by its runner's own task (no task or channel of its own):
/// the runner polls [`Lane::poll`] on every pass of its loop, and awaits [`Lane::end`].
pub struct Lane {
    id: MessageId,
    store: Arc<dyn Store>,
    unsaved: Arc<Unsaved>,
    /// Kept until the turn is stored, to write it again if the first attempt failed.
    turn: Option<Box<NewTurn>>,
    /// The turn's write: `None` while it is under way.
    begun: Option<Result<(), StoreError>>,
    writing: Option<Writing>,
    /// The newest checkpoint not yet under way.
    waiting: Option<AnswerUpdate>,
    /// While the turn that starts a conversation is being written.
    starting: Option<Starting>,
}

/// A conversation listed in [`Unsaved`] as starting, until this is dropped.
struct Starting {
    unsaved: Arc<Unsaved>,
    conversation: ConversationId,
}

impl Drop for Starting {
    fn drop(&mut self) {
        locked(&self.unsaved.starting).remove(&self.conversation);
    }
}

/// Starts writing `turn`; checkpoints and the end follow through the returned lane.
pub fn open(store: Arc<dyn Store>, unsaved: Arc<Unsaved>, turn: NewTurn) -> Lane {
    let writing = begin(Arc::clone(&store), turn.clone());
    let starting = turn.new_conversation.is_some().then(|| {
        locked(&unsaved.starting).insert(turn.conversation_id, turn.owner.clone());
        Starting {
            unsaved: Arc::clone(&unsaved),
            conversation: turn.conversation_id,
        }
    });
    Lane {
        starting,
        id: turn.assistant.id,
        store,
        unsaved,
        turn: Some(Box::new(turn)),
        begun: None,
        writing: Some(writing),
        waiting: None,
    }
}

fn begin(store: Arc<dyn Store>, turn: NewTurn) -> Writing {
    Box::pin(async move { Written::Turn(store.begin_turn(turn).await) })
}

impl Lane {
    /// Queues a checkpoint; one still waiting is replaced.
    pub fn checkpoint(&mut self, update: AnswerUpdate) {
        self.waiting = Some(update);
    }

    /// Moves the writes on; never ready. The runner's task is woken when a write is done.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(writing) = &mut self.writing {
                let Poll::Ready(written) = writing.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.writing = None;
                self.settle(written);
            }
            if !matches!(self.begun, Some(Ok(()))) {
                return Poll::Pending;
            }
            let Some(update) = self.waiting.take() else {
                return Poll::Pending;
            };
            let store = Arc::clone(&self.store);
            self.writing = Some(Box::pin(async move {
                Written::Checkpoint(store.update_answer(update).await)
            }));
        }
    }

    fn settle(&mut self, written: Written) {
        match written {
            Written::Turn(begun) => {
                if begun.is_ok() {
                    self.turn = None;
                }
                self.begun = Some(begun);
                self.starting = None;
            }
            // The next checkpoint, or the end, carries the same text and more.
            Written::Checkpoint(Err(e)) => log::warn!("answer {}: checkpoint not stored: {e}", self.id),
            Written::Checkpoint(Ok(())) => {}
        }
    }

    /// Writes the end, after the write under way; resolves with the first attempt's
    /// outcome. After a passing failure the write goes on being retried on a task of its
    /// own, and the end is laid over reads of the conversation meanwhile.
    pub async fn end(mut self, update: AnswerUpdate) -> Result<(), StoreError> {
        if let Some(writing) = self.writing.take() {
            let written = writing.await;
            self.settle(written);
        }
        // The end carries the same text and more.
        self.waiting = None;
        let mut begun = self.begun.take().unwrap_or(Ok(()));
        let first = write_end(&*self.store, self.turn.as_deref(), &mut begun, &update).await;
        if first.as_ref().is_err_and(StoreError::is_transient) {
            let id = update.id;
            self.unsaved.lock().insert(id, update.clone());
            tokio::spawn(retry(self.store, self.unsaved, self.turn, begun, update));
        }
        first
    }
}

/// Waits between retries of a failed write: 1 s, doubling up to 10 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

async fn retry(
    store: Arc<dyn Store>,
    unsaved: Arc<Unsaved>,
    turn: Option<Box<NewTurn>>,
    mut begun: Result<(), StoreError>,
    update: AnswerUpdate,
) {
    let id = update.id;
    let mut wait = RETRY_FIRST;
    let mut tries = 1;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
        tries += 1;
        match write_end(&*store, turn.as_deref(), &mut begun, &update).await {
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
    turn: Option<&NewTurn>,
    begun: &mut Result<(), StoreError>,
    update: &AnswerUpdate,
) -> Result<(), StoreError> {
    if begun.as_ref().is_err_and(StoreError::is_transient)
        && let Some(turn) = turn
    {
        *begun = store.begin_turn(turn.clone()).await;
    }
    match begun {
        Ok(()) => store.update_answer(update.clone()).await,
        Err(e) if e.is_transient() => Err(StoreError::Commit(format!("the turn is not stored yet: {e}"))),
        Err(e) => Err(StoreError::Rejected(format!("the turn could not be stored: {e}"))),
    }
}
