//! The tree as clients see it: ChatGPT's message object and `mapping`, and walking a branch.

use super::{Conversation, Message, MessageId, Role, Status};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// A message as ChatGPT's web client reads it. The live SSE frames (`crate::sse`) render
/// the same shape by hand, and a test there keeps the two equal.
pub fn message_json(m: &Message) -> Value {
    let mut metadata = json!({
        "model_slug": m.model,
        "parent_id": m.parent.map(|p| p.to_string()),
        "finish_details": m.finish.map(|f| json!({"type": f.as_str()})),
    });
    if let Some(error) = &m.error {
        metadata["error"] = error.clone();
    }
    json!({
        "id": m.id.to_string(),
        "author": {"role": m.role.as_str()},
        "create_time": m.create_time,
        "content": {"content_type": "text", "parts": [m.content]},
        "status": m.status.as_str(),
        "end_turn": end_turn(m),
        "metadata": metadata,
    })
}

fn end_turn(m: &Message) -> Value {
    if m.role == Role::Assistant && m.status == Status::FinishedSuccessfully {
        Value::Bool(true)
    } else {
        Value::Null
    }
}

/// `GET /conv/{id}`: the conversation with every node, keyed by id.
pub fn conversation_json(c: &Conversation) -> Value {
    let mut children: HashMap<MessageId, Vec<String>> = HashMap::new();
    for m in &c.messages {
        if let Some(parent) = m.parent {
            children.entry(parent).or_default().push(m.id.to_string());
        }
    }
    let mut mapping = Map::with_capacity(c.messages.len());
    for m in &c.messages {
        let message = match m.role {
            Role::Root => Value::Null,
            _ => message_json(m),
        };
        mapping.insert(
            m.id.to_string(),
            json!({
                "id": m.id.to_string(),
                "parent": m.parent.map(|p| p.to_string()),
                "children": children.remove(&m.id).unwrap_or_default(),
                "message": message,
            }),
        );
    }
    json!({
        "conversation_id": c.id.to_string(),
        "title": c.title,
        "create_time": c.create_time,
        "update_time": c.update_time,
        "current_node": c.current_node.to_string(),
        "mapping": mapping,
    })
}

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
