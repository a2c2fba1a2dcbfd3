//! Walking a conversation's tree.

use super::{Conversation, Message, MessageId};
use std::collections::HashMap;

/// The branch ending at `leaf`, root first. Stops at a missing or repeated parent, so a
/// damaged tree yields a shorter branch instead of a loop.
pub fn branch(c: &Conversation, leaf: MessageId) -> Vec<&Message> {
    let by_id: HashMap<MessageId, &Message> = c.messages.iter().map(|m| (m.id, m)).collect();
    let mut path = Vec::new();
    let mut next = Some(leaf);
    while let Some(id) = next {
        let Some(m) = by_id.get(&id) else { break };
        if path.len() > c.messages.len() {
            break;
        }
        path.push(*m);
        next = m.parent;
    }
    path.reverse();
    path
}
