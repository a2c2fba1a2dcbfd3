//! The in-process registry: every live generation of this process, its text, and its
//! readers.
//!
//! A generation holds its text once, JSON-escaped as frames carry it (the store's copy is
//! unescaped when it is taken), plus where each chunk ends: that is all its memory,
//! however many readers follow it.
//! The runner never waits for a reader: it appends a chunk and wakes every reader. Each
//! reader keeps only a cursor (the last frame id it sent) and renders a frame when its
//! client is ready for one: one frame per chunk while it keeps up, and, once it has fallen
//! more than [`MAX_BACKLOG`] chunks behind, one frame with everything so far. Every frame
//! carries the whole text (or, in delta mode, everything since the reader's previous
//! frame), so skipping stale frames loses nothing. A frame's id counts the chunks it
//! includes, so an id says exactly how much of the answer a client has seen.
//!
//! Reasoning text is held beside the answer's text the same way, and a chunk that carries
//! only reasoning is a chunk like any other (a frame, an id). An answer without reasoning
//! keeps nothing for it: its chunks cost what they cost before reasoning existed.

use super::{End, Generations, LiveAnswer, Producer, ReadFrom, Reader, ReaderItem, Signal, Snapshot, Target};
use crate::conversation::{ConversationId, FinishType, MessageId, Status};
use crate::wire::chatgpt::{AnswerIdentity, FrameState, FrameTemplate, FrameText, escape_into, unescape};
use crate::wire::sse;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::sync::{Notify, oneshot};

/// Chunks a reader may fall behind before its next frame jumps to the latest text.
pub const MAX_BACKLOG: u64 = 32;

/// A generation's text and state. The text is held JSON-escaped only, as frames carry it:
/// a chunk writes it once; the store's copy is unescaped when it is taken (a checkpoint a
/// second, and the end). What every chunk touches comes first (`repr(C)` keeps the order).
#[repr(C)]
struct Content {
    escaped: String,
    /// Where each chunk ends: (in the text, in `escaped`).
    ends: Vec<(u32, u32)>,
    /// Where each chunk's reasoning ends, as `ends`: empty until the first reasoning comes,
    /// then one per chunk.
    reasoning_ends: Vec<(u32, u32)>,
    /// The reasoning, as `escaped`.
    reasoning_escaped: String,
    heartbeats: u64,
    end: Option<End>,
}

/// Adds `piece` to an escaped text whose chunks end at `ends`, as one more chunk.
fn push_chunk(escaped: &mut String, ends: &mut Vec<(u32, u32)>, piece: &str) {
    let raw = ends.last().map_or(0, |e| e.0) + piece.len() as u32;
    escape_into(escaped, piece);
    // Offsets are u32: answers are capped far below 4 GiB.
    ends.push((raw, escaped.len() as u32));
}

impl Content {
    fn chunks(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Where chunk `n` ends in the escaped text (0 before the first).
    fn escaped_end(&self, n: u64) -> usize {
        match n {
            0 => 0,
            n => self.ends[n as usize - 1].1 as usize,
        }
    }

    /// Where chunk `n`'s reasoning ends in the escaped reasoning (0 before the first).
    fn reasoning_escaped_end(&self, n: u64) -> usize {
        match n {
            0 => 0,
            _ if self.reasoning_ends.is_empty() => 0,
            n => self.reasoning_ends[n as usize - 1].1 as usize,
        }
    }

    /// The escaped text and reasoning from after chunk `from` to the end of chunk `to`.
    fn between(&self, from: u64, to: u64) -> FrameText<'_> {
        FrameText {
            text: &self.escaped[self.escaped_end(from)..self.escaped_end(to)],
            reasoning: &self.reasoning_escaped[self.reasoning_escaped_end(from)..self.reasoning_escaped_end(to)],
        }
    }

    fn all(&self) -> FrameText<'_> {
        FrameText {
            text: &self.escaped,
            reasoning: &self.reasoning_escaped,
        }
    }
}

/// What every chunk touches comes first (`repr(C)` keeps the order): with a thousand
/// answers running, each of their chunks finds these few cache lines cold.
#[repr(C)]
struct Generation {
    content: Mutex<Content>,
    /// Woken on every change; each reader checks what is new for it.
    wake: Notify,
    signals: Signals,
    template: FrameTemplate,
    readers: AtomicUsize,
    identity: AnswerIdentity,
    owner: Option<String>,
}

impl Generation {
    fn lock(&self) -> MutexGuard<'_, Content> {
        // Every update is a single append or assignment: a panic cannot leave it half done.
        self.content.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a runner is told, as flags and a waker rather than a channel: the runner looks at
/// them on every pass of its loop (once per chunk), and a load of one atomic is all that
/// costs when nothing was raised. The runner's waker is registered once, not on every
/// pass: a raise wakes it without taking it.
#[derive(Default)]
#[repr(C)]
struct Signals {
    raised: AtomicU8,
    /// The reply to the stop request that raised [`STOP`].
    stop: Mutex<Option<oneshot::Sender<bool>>>,
    runner: Mutex<Option<Waker>>,
}

const STOP: u8 = 1;
const SHUTDOWN: u8 = 2;
const READERS: u8 = 4;

impl Signals {
    fn raise(&self, flag: u8) {
        self.raised.fetch_or(flag, Ordering::SeqCst);
        if let Some(runner) = &*self.runner_slot() {
            runner.wake_by_ref();
        }
    }

    fn runner_slot(&self) -> MutexGuard<'_, Option<Waker>> {
        // Only ever set or read whole.
        self.runner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_slot(&self) -> MutexGuard<'_, Option<oneshot::Sender<bool>>> {
        // Only ever set or taken whole.
        self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the most urgent raised signal.
    fn take(&self) -> Option<Signal> {
        let raised = self.raised.load(Ordering::SeqCst);
        if raised == 0 {
            return None;
        }
        for flag in [STOP, SHUTDOWN, READERS] {
            if raised & flag == 0 || self.raised.fetch_and(!flag, Ordering::SeqCst) & flag == 0 {
                continue;
            }
            match flag {
                STOP => {
                    if let Some(reply) = self.stop_slot().take() {
                        return Some(Signal::Stop(reply));
                    }
                }
                SHUTDOWN => return Some(Signal::Shutdown),
                _ => return Some(Signal::Readers),
            }
        }
        None
    }
}

#[derive(Default)]
struct Registry {
    by_message: HashMap<MessageId, Arc<Generation>>,
    /// Live answers of each conversation, oldest first.
    by_conversation: HashMap<ConversationId, Vec<MessageId>>,
}

impl Registry {
    fn find(&self, target: Target) -> Option<&Arc<Generation>> {
        let message = match target.message {
            Some(m) => m,
            None => *self.by_conversation.get(&target.conversation)?.last()?,
        };
        self.by_message
            .get(&message)
            .filter(|g| g.identity.conversation_id == target.conversation)
    }

    fn remove(&mut self, identity: &AnswerIdentity) {
        self.by_message.remove(&identity.message_id);
        if let Some(list) = self.by_conversation.get_mut(&identity.conversation_id) {
            list.retain(|m| *m != identity.message_id);
            if list.is_empty() {
                self.by_conversation.remove(&identity.conversation_id);
            }
        }
    }
}

/// The in-process [`Generations`].
#[derive(Default)]
pub struct LocalGenerations {
    registry: Arc<Mutex<Registry>>,
    emptied: Arc<Notify>,
}

impl LocalGenerations {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Each update is a few map operations that cannot panic halfway.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `target` is live here.
    pub fn is_live(&self, target: Target) -> bool {
        self.lock().find(target).is_some()
    }

    /// The conversation of live answer `message`.
    pub fn conversation_of(&self, message: MessageId) -> Option<ConversationId> {
        self.lock().by_message.get(&message).map(|g| g.identity.conversation_id)
    }

    /// [`Generations::subscribe`], without a wait.
    pub fn reader(&self, target: Target, from: ReadFrom) -> Option<Reader> {
        let generation = Arc::clone(self.lock().find(target)?);
        Some(read(generation, from))
    }

    /// Counts a reader elsewhere (on another replica) in, for as long as the returned
    /// guard lives; `None` when `message` is not live here.
    pub fn watch(&self, message: MessageId) -> Option<Watch> {
        let generation = Arc::clone(self.lock().by_message.get(&message)?);
        Some(Watch {
            _reader: Presence::new(generation),
        })
    }
}

/// A reader that is not a [`Reader`] of this process (see [`LocalGenerations::watch`]).
pub struct Watch {
    _reader: Presence,
}

#[async_trait]
impl Generations for LocalGenerations {
    async fn start(&self, identity: AnswerIdentity, owner: Option<String>, never_alone: bool) -> Box<dyn Producer> {
        let generation = Arc::new(Generation {
            owner,
            template: FrameTemplate::new(&identity),
            identity,
            content: Mutex::new(Content {
                escaped: String::new(),
                ends: Vec::new(),
                reasoning_ends: Vec::new(),
                reasoning_escaped: String::new(),
                heartbeats: 0,
                end: None,
            }),
            wake: Notify::new(),
            readers: AtomicUsize::new(0),
            signals: Signals::default(),
        });
        let mut registry = self.lock();
        let id = &generation.identity;
        registry.by_message.insert(id.message_id, Arc::clone(&generation));
        registry
            .by_conversation
            .entry(id.conversation_id)
            .or_default()
            .push(id.message_id);
        drop(registry);
        Box::new(LocalProducer {
            generation,
            runner: None,
            never_alone,
            registry: Arc::clone(&self.registry),
            emptied: Arc::clone(&self.emptied),
            finished: false,
        })
    }

    async fn newest(&self, conversation: ConversationId) -> Option<LiveAnswer> {
        let registry = self.lock();
        let message = *registry.by_conversation.get(&conversation)?.last()?;
        registry.by_message.get(&message).map(|g| LiveAnswer {
            message,
            owner: g.owner.clone(),
        })
    }

    async fn subscribe(&self, target: Target, from: ReadFrom) -> Option<Reader> {
        self.reader(target, from)
    }

    async fn stop(&self, target: Target) -> bool {
        let Some(generation) = self.lock().find(target).map(Arc::clone) else {
            return false;
        };
        let (reply, stopped) = oneshot::channel();
        {
            let mut slot = generation.signals.stop_slot();
            if slot.is_some() {
                // Another request is stopping it: that one stops it.
                return false;
            }
            *slot = Some(reply);
        }
        // Looked at after the reply is in place: an answer that ended meanwhile has either
        // dropped the reply (see `finish`) or is seen ended here.
        if generation.lock().end.is_some() {
            generation.signals.stop_slot().take();
        } else {
            generation.signals.raise(STOP);
        }
        drop(generation);
        // The runner drops the reply unanswered when the answer ended first.
        stopped.await.unwrap_or(false)
    }

    fn shutdown(&self) {
        for generation in self.lock().by_message.values() {
            generation.signals.raise(SHUTDOWN);
        }
    }

    fn live(&self) -> usize {
        self.lock().by_message.len()
    }

    async fn drained(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

struct LocalProducer {
    generation: Arc<Generation>,
    /// The waker registered in the generation's signals.
    runner: Option<Waker>,
    never_alone: bool,
    registry: Arc<Mutex<Registry>>,
    emptied: Arc<Notify>,
    finished: bool,
}

impl Producer for LocalProducer {
    fn append(&mut self, text: &str, reasoning: &str) {
        let mut guard = self.generation.lock();
        let content = &mut *guard;
        if !reasoning.is_empty() || !content.reasoning_ends.is_empty() {
            // The chunks before the first reasoning had none.
            let before = content.ends.len();
            content.reasoning_ends.resize(before, (0, 0));
            push_chunk(&mut content.reasoning_escaped, &mut content.reasoning_ends, reasoning);
        }
        push_chunk(&mut content.escaped, &mut content.ends, text);
        drop(guard);
        self.generation.wake.notify_waiters();
    }

    fn heartbeat(&mut self) {
        self.generation.lock().heartbeats += 1;
        self.generation.wake.notify_waiters();
    }

    fn finish(&mut self, end: End) {
        self.generation.lock().end = Some(end);
        self.finished = true;
        // A stop that came too late to be taken is answered: it did not stop the answer.
        self.generation.signals.stop_slot().take();
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.remove(&self.generation.identity);
        let empty = registry.by_message.is_empty();
        drop(registry);
        self.generation.wake.notify_waiters();
        if empty {
            self.emptied.notify_waiters();
        }
    }

    fn snapshot(&self) -> Snapshot {
        let content = self.generation.lock();
        Snapshot {
            text: unescape(&content.escaped),
            chunk_ends: content.ends.iter().map(|e| e.0).collect(),
            reasoning: unescape(&content.reasoning_escaped),
            reasoning_ends: content.reasoning_ends.iter().map(|e| e.0).collect(),
        }
    }

    fn readers(&self) -> usize {
        if self.never_alone {
            // Never alone: a background answer runs to its end without readers.
            usize::MAX
        } else {
            self.generation.readers.load(Ordering::SeqCst)
        }
    }

    fn poll_signal(&mut self, cx: &mut Context<'_>) -> Poll<Signal> {
        let signals = &self.generation.signals;
        if !self.runner.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered before the look below: a raise after the look wakes this waker.
            let waker = cx.waker().clone();
            *signals.runner_slot() = Some(waker.clone());
            self.runner = Some(waker);
        }
        match signals.take() {
            Some(signal) => Poll::Ready(signal),
            None => Poll::Pending,
        }
    }
}

impl Drop for LocalProducer {
    /// A runner that ends without finishing (it panicked) must not leave readers waiting.
    fn drop(&mut self) {
        if !self.finished {
            let error = crate::error::ApiError::Internal("the answer's task stopped unexpectedly");
            self.finish(End {
                status: Status::Error,
                finish: FinishType::Interrupted,
                error: Some((&error).into()),
                usage: None,
            });
        }
    }
}

/// Counts a reader in for as long as it lives.
struct Presence(Arc<Generation>);

impl Presence {
    fn new(generation: Arc<Generation>) -> Self {
        if generation.readers.fetch_add(1, Ordering::SeqCst) == 0 {
            generation.signals.raise(READERS);
        }
        Self(generation)
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if self.0.readers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.signals.raise(READERS);
        }
    }
}

/// What a reader does next.
enum Next {
    Send(Bytes),
    Last(Bytes),
    Refuse(crate::error::ErrorBody),
    Final(Bytes),
    Wait,
}

/// A reader following `generation` from `from`.
fn read(generation: Arc<Generation>, from: ReadFrom) -> Reader {
    // The cursor is placed now, not at the first poll: chunks that arrive in between are
    // then frames of their own, as for a reader that was there all along.
    let mut cursor = Cursor::new(&generation.lock(), from);
    let presence = Presence::new(generation);
    Box::pin(async_stream::stream! {
        let presence = presence;
        let generation = &presence.0;
        'read: loop {
            let wake = generation.wake.notified();
            tokio::pin!(wake);
            // Registered before the checks, so that a change made after one still wakes
            // this reader; kept while frames are sent, so that a frame costs no new one.
            wake.as_mut().enable();
            loop {
                let next = cursor.next(&generation.lock(), &generation.template);
                match next {
                    Next::Send(bytes) => yield ReaderItem::Bytes(bytes),
                    Next::Last(bytes) => {
                        yield ReaderItem::Bytes(bytes);
                        yield ReaderItem::Bytes(Bytes::from_static(sse::DONE));
                        yield ReaderItem::Bytes(Bytes::from_static(sse::CLOSE));
                        break 'read;
                    }
                    Next::Refuse(error) => {
                        yield ReaderItem::Refused(error);
                        break 'read;
                    }
                    Next::Final(object) => {
                        yield ReaderItem::Final(object);
                        break 'read;
                    }
                    Next::Wait => break,
                }
            }
            wake.await;
        }
    })
}

/// One reader's position in a generation.
struct Cursor {
    from: ReadFrom,
    /// The id of the last frame sent: how many chunks the reader has.
    sent: u64,
    /// The first frame catches up with everything so far at once.
    catch_up: bool,
    heartbeats: u64,
    /// Anything sent yet (a frame or a heartbeat).
    opened: bool,
}

impl Cursor {
    fn new(content: &Content, from: ReadFrom) -> Self {
        // A resume point past the answer (a stale or foreign id) means "from here on".
        let sent = from.after.unwrap_or(0).min(content.chunks());
        Self {
            from,
            sent,
            catch_up: content.chunks() > sent,
            heartbeats: content.heartbeats,
            opened: false,
        }
    }

    fn next(&mut self, content: &Content, template: &FrameTemplate) -> Next {
        let chunks = content.chunks();
        if self.from.final_only {
            let Some(end) = &content.end else { return Next::Wait };
            return Next::Final(template.object(content.all(), state_of(end)));
        }
        if content.heartbeats > self.heartbeats {
            self.heartbeats = content.heartbeats;
            self.opened = true;
            return Next::Send(Bytes::from_static(sse::HEARTBEAT));
        }
        // In delta mode a frame has what came after the reader's previous frame.
        let from = if self.from.delta { self.sent } else { 0 };
        if chunks > self.sent {
            let id = if self.catch_up || chunks - self.sent > MAX_BACKLOG {
                chunks
            } else {
                self.sent + 1
            };
            self.catch_up = false;
            self.opened = true;
            self.sent = id;
            return Next::Send(template.frame(id, content.between(from, id), FrameState::IN_PROGRESS));
        }
        let Some(end) = &content.end else { return Next::Wait };
        if let Some(error) = end.error.as_ref().filter(|_| self.from.refuse_early && !self.opened) {
            return Next::Refuse(error.clone());
        }
        Next::Last(template.frame(chunks + 1, content.between(from, chunks), state_of(end)))
    }
}

fn state_of(end: &End) -> FrameState<'_> {
    FrameState {
        status: end.status,
        finish: Some(end.finish),
        error: end.error.as_ref().map(|e| &e.object),
        usage: end.usage,
    }
}
