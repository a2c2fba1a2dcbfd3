//! What every handler shares. Routes import this; it imports no route.

use crate::config::Settings;
use crate::conversation::{Conversation, ConversationId, MessageId, Store, StoreError, Summary};
use crate::edge::auth::{Client, Keyring};
use crate::error::{ApiError, RequestError};
use crate::generation::Generations;
use crate::generation::lane::Unsaved;
use crate::generation::runner::{Limits, Timing};
use crate::limits::{Limiter, StreamSlot};
use crate::metrics::Metrics;
use crate::prompts::Presets;
use crate::relays::Relays;
use crate::upstream::router::Router;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// A running answer's new text waits at most this long before it is checkpointed; with
/// the commit itself, it is on disk within a second of arriving.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(750);

/// How long a read waits for a live answer's turn to be stored (one commit, normally)
/// before it takes the store as it is.
const TURN_WAIT: Duration = Duration::from_secs(5);

/// Pauses between reads that wait for a turn to be stored: 1 ms, then twice as long each
/// time up to 50 ms, for at most [`TURN_WAIT`] in all.
struct Patience {
    until: Instant,
    pause: Duration,
}

impl Patience {
    fn new() -> Self {
        Self {
            until: Instant::now() + TURN_WAIT,
            pause: Duration::from_millis(1),
        }
    }

    /// Waits the next pause; false, at once, when the time is up.
    async fn wait(&mut self) -> bool {
        if Instant::now() >= self.until {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(50));
        true
    }
}

pub struct AppState {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    /// The upstreams, and where each model goes.
    pub router: Router,
    pub presets: Presets,
    pub generations: Arc<dyn Generations>,
    pub unsaved: Arc<Unsaved>,
    /// Set on SIGTERM/SIGINT: no new answer starts (a kept-alive connection may still ask).
    pub stopping: AtomicBool,
    /// The client keys, when `settings.auth_on()`.
    pub keys: Option<Keyring>,
    pub limiter: Arc<dyn Limiter>,
    /// The answers `/v1` is relaying, for a shutdown to wait for and end.
    pub relays: Arc<Relays>,
    /// What `GET /metrics` shows.
    pub metrics: Metrics,
}

impl AppState {
    /// A conversation as it is now: the store's copy, with its newest live answer in it,
    /// and answers that ended but are not stored yet (the store is failing) laid over it.
    pub async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.conversation_having(id, None).await
    }

    /// As [`Self::conversation`], but when `needed` is given and stored, the live answers
    /// are not looked at.
    ///
    /// An answer's turn is written while the answer streams, so that the first token does
    /// not wait for the disk; but its client knows of it from the first frame (or the 202),
    /// and may read the conversation, continue it or delete it at once, on any replica. A
    /// read that does not find the newest live answer waits for its turn to be stored.
    async fn conversation_having(
        &self,
        id: ConversationId,
        needed: Option<MessageId>,
    ) -> Result<Option<Conversation>, StoreError> {
        let has = |c: &Option<Conversation>, m: MessageId| c.as_ref().is_some_and(|c| c.message(m).is_some());
        // An answer leaves the registry only once its turn and its end are stored: looked
        // at before the read, one that is gone then is in what the read finds.
        let mut live = match needed {
            None => self.generations.newest(id).await,
            Some(_) => None,
        };
        let mut conversation = self.store.conversation(id).await?;
        if let Some(m) = needed
            && !has(&conversation, m)
        {
            live = self.generations.newest(id).await;
            if live.is_none() {
                // It may have ended since the read.
                conversation = self.store.conversation(id).await?;
            }
        }
        if let Some(live) = live {
            let mut patience = Patience::new();
            while !has(&conversation, live.message) && patience.wait().await {
                conversation = self.store.conversation(id).await?;
            }
        }
        if let Some(c) = &mut conversation {
            self.unsaved.apply(c);
        }
        Ok(conversation)
    }

    /// The conversations of `owner` (every one when `None`), newest first, with those
    /// whose first turn this replica is still writing (their clients know of them).
    pub async fn conversations(&self, owner: Option<&str>) -> Result<Vec<Summary>, StoreError> {
        let starting = self.unsaved.starting(owner);
        let mut patience = Patience::new();
        loop {
            // Looked at before the read: a turn stored by then is in what it reads.
            let writing: Vec<ConversationId> = starting
                .iter()
                .copied()
                .filter(|id| self.unsaved.is_starting(*id))
                .collect();
            let list = self.store.list(owner).await?;
            let listed = writing.iter().all(|id| list.iter().any(|c| c.id == *id));
            if listed || !patience.wait().await {
                return Ok(list);
            }
        }
    }

    /// Conversation `id` as `client` may see it: a conversation of another key is
    /// `UnknownConversation` (404), exactly as one that does not exist.
    pub async fn owned_conversation(&self, id: ConversationId, client: &Client) -> Result<Conversation, ApiError> {
        self.owned_conversation_having(id, None, client).await
    }

    /// As [`Self::owned_conversation`], for a caller that needs only message `needed`.
    pub async fn owned_conversation_having(
        &self,
        id: ConversationId,
        needed: Option<MessageId>,
        client: &Client,
    ) -> Result<Conversation, ApiError> {
        match self.conversation_having(id, needed).await? {
            Some(c) if client.may_see(c.owner.as_deref()) => Ok(c),
            _ => Err(RequestError::UnknownConversation(id).into()),
        }
    }

    /// Admits a new answer for `client` under its limits, checked last before the upstream
    /// sees anything, so that only a turn that goes upstream counts: its live-answer slot
    /// first (a turn the slot refuses is not counted), then its turn. The slot is held
    /// until the answer has ended.
    pub async fn admit_turn(&self, client: &Client) -> Result<Option<StreamSlot>, ApiError> {
        let limited = client.limit_key();
        let slot = self.limiter.stream_slot(&limited).await?;
        self.limiter.count_turn(&limited).await?;
        Ok(slot)
    }

    /// Refuses (404) a conversation `client` may not see, stored or still only live (its
    /// first answer runs before its row is stored). Without keys, everything is visible and
    /// nothing is read.
    pub async fn check_owner(&self, id: ConversationId, client: &Client) -> Result<(), ApiError> {
        if let Client::Address(_) = client {
            return Ok(());
        }
        let visible = match self.generations.newest(id).await {
            Some(live) => client.may_see(live.owner.as_deref()),
            None => self
                .store
                .conversation(id)
                .await?
                .is_some_and(|c| client.may_see(c.owner.as_deref())),
        };
        match visible {
            true => Ok(()),
            false => Err(RequestError::UnknownConversation(id).into()),
        }
    }

    /// The model names clients may send.
    pub fn model_names(&self) -> Vec<String> {
        self.router.models()
    }

    pub fn timing(&self) -> Timing {
        Timing {
            heartbeat: self.settings.heartbeat,
            first_heartbeat: self.settings.heartbeat,
            idle: self.settings.upstream_idle_timeout,
            detached_grace: self.settings.detached_grace,
            checkpoint: CHECKPOINT_EVERY,
        }
    }

    /// The models clients may name (`GET /v1/models`).
    pub fn limits(&self) -> Limits {
        Limits {
            max_answer_bytes: self.settings.max_answer_bytes,
        }
    }
}
