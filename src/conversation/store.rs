//! The storage interface. SQLite is the embedded default, PostgreSQL the store several
//! replicas share, and memory is for tests.

use super::{Conversation, ConversationId, FinishType, Message, MessageId, Status, Summary, Usage};
use async_trait::async_trait;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection to the database could be had in time (the pool's own limits).
    #[error("PostgreSQL: {0}")]
    Unreachable(String),
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

/// An error and what caused it, as one line: tokio-postgres keeps the reason (a refused
/// connection, the server's own message) in the error's source, not in its text.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

impl StoreError {
    /// Whether the same write may succeed later (the database was busy, the disk full or
    /// unreachable), as opposed to a write that can never succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code != rusqlite::ErrorCode::ConstraintViolation
            }
            // A constraint (23), bad data (22) or a bad statement (42) fails again; a lost
            // connection, a timeout or a server going down (no SQLSTATE, 08, 57) may not.
            StoreError::Postgres(e) => e
                .code()
                .is_none_or(|c| !["22", "23", "42"].iter().any(|class| c.code().starts_with(class))),
            StoreError::Sqlite(_)
            | StoreError::Corrupt(_)
            | StoreError::UnknownConversation(_)
            | StoreError::Rejected(_) => false,
            StoreError::Io(_) | StoreError::Worker(_) | StoreError::Commit(_) | StoreError::Unreachable(_) => true,
        }
    }
}

/// How the SQL stores keep the columns that are not plain values.
pub(super) mod columns {
    use super::StoreError;
    use crate::conversation::{FinishType, Role, Status, Usage};
    use serde_json::Value;

    /// Chunk ends as little-endian `u32`s, four bytes a chunk.
    pub fn encode_ends(ends: &[u32]) -> Vec<u8> {
        ends.iter().flat_map(|e| e.to_le_bytes()).collect()
    }

    pub fn decode_ends(raw: Option<Vec<u8>>) -> Vec<u32> {
        raw.unwrap_or_default()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Reasoning ends are NULL when there is no reasoning.
    pub fn reasoning_ends_of(ends: &[u32]) -> Option<Vec<u8>> {
        Some(ends).filter(|e| !e.is_empty()).map(encode_ends)
    }

    /// A token count as a signed 64-bit integer column.
    pub fn tokens(n: u64) -> i64 {
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    pub fn corrupt(what: &str, value: &str) -> StoreError {
        StoreError::Corrupt(format!("{what} {value:?}"))
    }

    /// A message's kind and state as the SQL stores keep them: as text.
    pub struct Kinds {
        pub role: Role,
        pub status: Status,
        pub finish: Option<FinishType>,
        pub error: Option<Value>,
    }

    pub fn kinds(role: &str, status: &str, finish: Option<&str>, error: Option<&str>) -> Result<Kinds, StoreError> {
        Ok(Kinds {
            role: Role::parse(role).ok_or_else(|| corrupt("role", role))?,
            status: Status::parse(status).ok_or_else(|| corrupt("status", status))?,
            finish: match finish {
                Some(f) => Some(FinishType::parse(f).ok_or_else(|| corrupt("finish type", f))?),
                None => None,
            },
            error: match error {
                Some(e) => Some(serde_json::from_str(e).map_err(|_| corrupt("error", e))?),
                None => None,
            },
        })
    }

    /// Token counts are both there or not at all.
    pub fn usage(prompt_tokens: Option<i64>, completion_tokens: Option<i64>) -> Option<Usage> {
        match (prompt_tokens, completion_tokens) {
            (Some(p), Some(c)) => Some(Usage {
                prompt_tokens: p.max(0) as u64,
                completion_tokens: c.max(0) as u64,
            }),
            _ => None,
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
