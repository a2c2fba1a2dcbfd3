//! One file per resource.

pub mod config;
pub mod conv;
pub mod conversations;
pub mod health;
pub mod metrics;
pub mod prompts;
pub mod stop;
pub mod stream;
pub mod v1;
pub mod web;

use crate::conversation::ConversationId;
use crate::error::RequestError;

/// An id that is not a UUID names no conversation: 404, as for any unknown one.
fn conversation_id(raw: &str) -> Result<ConversationId, RequestError> {
    ConversationId::parse(raw).map_err(|_| RequestError::NoRoute(format!("/conv/{raw}")))
}
