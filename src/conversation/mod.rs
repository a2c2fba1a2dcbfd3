//! Conversations as a message tree: the domain types, the [`Store`] trait and its
//! SQLite, PostgreSQL and in-memory implementations.

pub mod group_commit;
pub mod memory;
pub mod metered;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod tree;

pub use store::{Store, StoreError};

use serde_json::Value;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The UUID of a ", $what, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Parses the canonical hyphenated form (any case).
            pub fn parse(raw: &str) -> Result<Self, uuid::Error> {
                Uuid::try_parse(raw.trim()).map(Self)
            }

            /// As a store with a UUID type keeps it.
            pub fn uuid(self) -> Uuid {
                self.0
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(ConversationId, "conversation");
uuid_id!(MessageId, "message");

/// Who wrote a message. `Root` is the empty node every conversation's tree hangs from, so
/// that a first message can be edited (branched) like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Root,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "root" => Some(Role::Root),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// A message's state, named as ChatGPT names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    FinishedSuccessfully,
    /// Stopped before the answer ended: a Stop, or nobody left reading it.
    FinishedPartialCompletion,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::FinishedSuccessfully => "finished_successfully",
            Status::FinishedPartialCompletion => "finished_partial_completion",
            Status::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "in_progress" => Some(Status::InProgress),
            "finished_successfully" => Some(Status::FinishedSuccessfully),
            "finished_partial_completion" => Some(Status::FinishedPartialCompletion),
            "error" => Some(Status::Error),
            _ => None,
        }
    }
}

/// Why an answer ended (`metadata.finish_details.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishType {
    Stop,
    MaxTokens,
    /// The model asked for tools to be called (`/v1` only: `/conv` sends no tools).
    ToolCalls,
    /// The upstream's content filter ended it.
    ContentFilter,
    /// Cut short by a Stop, by nobody reading, or by an error.
    Interrupted,
}

impl FinishType {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishType::Stop => "stop",
            FinishType::MaxTokens => "max_tokens",
            FinishType::ToolCalls => "tool_calls",
            FinishType::ContentFilter => "content_filter",
            FinishType::Interrupted => "interrupted",
        }
    }

    /// An upstream's finish reason (OpenAI's, or Anthropic's `stop_reason`): anything
    /// else is a plain stop.
    pub fn from_upstream(reason: &str) -> Self {
        match reason {
            "length" | "max_tokens" => FinishType::MaxTokens,
            "tool_calls" | "tool_use" | "function_call" => FinishType::ToolCalls,
            "content_filter" | "refusal" => FinishType::ContentFilter,
            _ => FinishType::Stop,
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "stop" => Some(FinishType::Stop),
            "max_tokens" => Some(FinishType::MaxTokens),
            "tool_calls" => Some(FinishType::ToolCalls),
            "content_filter" => Some(FinishType::ContentFilter),
            "interrupted" => Some(FinishType::Interrupted),
            _ => None,
        }
    }
}

/// One node of a conversation's tree, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub parent: Option<MessageId>,
    pub role: Role,
    pub content: String,
    pub status: Status,
    /// Seconds since the Unix epoch.
    pub create_time: f64,
    pub model: Option<String>,
    pub finish: Option<FinishType>,
    /// The `{message,type,code}` object of an answer that ended in error.
    pub error: Option<Value>,
    /// Where each upstream chunk of an answer's text ends (byte offsets into `content`), so
    /// that a reader resuming after frame `N` gets exactly the text after chunk `N`.
    pub chunk_ends: Vec<u32>,
    /// An answer's reasoning ("thinking") text, kept apart from `content`; empty when the
    /// upstream sent none.
    pub reasoning: String,
    /// Where each chunk's reasoning ends (byte offsets into `reasoning`), one per chunk as
    /// `chunk_ends`; empty when there is no reasoning.
    pub reasoning_ends: Vec<u32>,
    /// The answer's token counts, when the upstream reported them.
    pub usage: Option<Usage>,
}

impl Message {
    pub fn root(create_time: f64) -> Self {
        Self::new(
            None,
            Role::Root,
            String::new(),
            Status::FinishedSuccessfully,
            create_time,
        )
    }

    pub fn new(parent: Option<MessageId>, role: Role, content: String, status: Status, create_time: f64) -> Self {
        Self {
            id: MessageId::new(),
            parent,
            role,
            content,
            status,
            create_time,
            model: None,
            finish: None,
            error: None,
            chunk_ends: Vec::new(),
            reasoning: String::new(),
            reasoning_ends: Vec::new(),
            usage: None,
        }
    }
}

/// Token counts of one answer, as its upstream reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A whole conversation: its messages oldest first, the root among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: ConversationId,
    pub title: String,
    pub create_time: f64,
    pub update_time: f64,
    /// The newest message: where a turn without `parent_message_id` continues.
    pub current_node: MessageId,
    pub messages: Vec<Message>,
    /// The client key name that created it; `None`: created without keys, and then
    /// visible only while keys are off.
    pub owner: Option<String>,
}

impl Conversation {
    pub fn message(&self, id: MessageId) -> Option<&Message> {
        self.messages.iter().find(|m| m.id == id)
    }
}

/// A row of `GET /conversations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: ConversationId,
    pub title: String,
    pub update_time: f64,
}

/// Seconds since the Unix epoch, with sub-second precision as ChatGPT sends it.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A conversation's title: its first user message, on one line, cut at a word near 60 chars.
pub fn title_from(content: &str) -> String {
    const MAX: usize = 60;
    let line = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX {
        return line;
    }
    let cut: String = line.chars().take(MAX).collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space > MAX / 2 => &cut[..space],
        _ => &cut,
    };
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_line_and_cut_at_a_word() {
        assert_eq!(title_from("  Hello\n  world "), "Hello world");
        let long = "word ".repeat(30);
        let title = title_from(&long);
        assert!(title.ends_with('…'));
        assert!(title.chars().count() <= 61);
        assert!(!title.contains("wor…"));
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = MessageId::new();
        assert_eq!(MessageId::parse(&id.to_string()).unwrap(), id);
        assert!(ConversationId::parse("not-a-uuid").is_err());
    }
}
