//! The storage interface. SQLite is the embedded default and memory is for tests; a
//! networked store (Redis, Postgres) shared by several gateways implements the same trait.

use super::{Conversation, ConversationId, FinishType, Message, MessageId, Status, Summary, Usage};
use async_trait::async_trait;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database worker stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("could not commit: {0}")]
    Commit(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("conversation {0} does not exist")]
    UnknownConversation(ConversationId),
    #[error("{0}")]
    Rejected(String),
}

impl StoreError {
    /// Whether the same write may succeed later (the database was busy, the disk full or
    /// unreachable), as opposed to a write that can never succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code != rusqlite::ErrorCode::ConstraintViolation
            }
            StoreError::Sqlite(_)
            | StoreError::Corrupt(_)
            | StoreError::UnknownConversation(_)
            | StoreError::Rejected(_) => false,
            StoreError::Io(_) | StoreError::Worker(_) | StoreError::Commit(_) => true,
        }
    }
}

/// A new turn: the user message and the (empty, in progress) answer to it, written together.
#[derive(Debug, Clone)]
pub struct NewTurn {
    pub conversation_id: ConversationId,
    /// Set when the turn starts a conversation: its title and root node.
    pub new_conversation: Option<(String, Message)>,
    /// The new conversation's owner (a client key name); ignored when continuing one.
    pub owner: Option<String>,
    pub user: Message,
    pub assistant: Message,
}

/// An answer's text and state: a checkpoint while it runs (`status` in progress), or its end.
#[derive(Debug, Clone)]
pub struct AnswerUpdate {
    pub conversation_id: ConversationId,
    pub id: MessageId,
    pub content: String,
    /// See [`crate::conversation::Message::chunk_ends`].
    pub chunk_ends: Vec<u32>,
    /// See [`crate::conversation::Message::reasoning`].
    pub reasoning: String,
    /// See [`crate::conversation::Message::reasoning_ends`].
    pub reasoning_ends: Vec<u32>,
    pub usage: Option<Usage>,
    pub status: Status,
    pub finish: Option<FinishType>,
    pub error: Option<Value>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The whole conversation, or `None` when there is no such conversation.
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError>;

    /// Writes a turn durably; the assistant message becomes the conversation's current node.
    async fn begin_turn(&self, turn: NewTurn) -> Result<(), StoreError>;

    /// Writes an answer's text and status durably: a checkpoint, or its end.
    async fn update_answer(&self, update: AnswerUpdate) -> Result<(), StoreError>;

    /// Most recently updated first: every conversation (`None`), or those of one owner.
    async fn list(&self, owner: Option<&str>) -> Result<Vec<Summary>, StoreError>;

    /// Removes a conversation and its messages; `false` when there was none.
    async fn delete(&self, id: ConversationId) -> Result<bool, StoreError>;
}
