//! An in-memory store for tests and throwaway runs: nothing survives the process.

use super::store::{AnswerUpdate, NewTurn, Store, StoreError};
use super::{Conversation, ConversationId, Summary, now};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub struct MemoryStore {
    conversations: Mutex<HashMap<ConversationId, Conversation>>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConversationId, Conversation>> {
        // Every update below is a single push or assignment, so a panic elsewhere cannot
        // leave a conversation half-written: the data behind a poisoned lock is still whole.
        self.conversations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        Ok(self.lock().get(&id).cloned())
    }

    async fn begin_turn(&self, turn: NewTurn) -> Result<(), StoreError> {
        let mut all = self.lock();
        if let Some((title, root)) = turn.new_conversation {
            all.entry(turn.conversation_id).or_insert_with(|| Conversation {
                id: turn.conversation_id,
                title,
                create_time: root.create_time,
                update_time: root.create_time,
                current_node: root.id,
                messages: vec![root],
                owner: turn.owner,
            });
        }
        let conversation = all
            .get_mut(&turn.conversation_id)
            .ok_or(StoreError::UnknownConversation(turn.conversation_id))?;
        conversation.current_node = turn.assistant.id;
        conversation.update_time = turn.assistant.create_time;
        conversation.messages.push(turn.user);
        conversation.messages.push(turn.assistant);
        Ok(())
    }

    async fn update_answer(&self, update: AnswerUpdate) -> Result<(), StoreError> {
        let mut all = self.lock();
        let conversation = all
            .get_mut(&update.conversation_id)
            .ok_or(StoreError::UnknownConversation(update.conversation_id))?;
        conversation.update_time = now();
        if let Some(m) = conversation.messages.iter_mut().find(|m| m.id == update.id) {
            m.content = update.content;
            m.chunk_ends = update.chunk_ends;
            m.reasoning = update.reasoning;
            m.reasoning_ends = update.reasoning_ends;
            m.usage = update.usage;
            m.status = update.status;
            m.finish = update.finish;
            m.error = update.error;
        }
        Ok(())
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<Summary>, StoreError> {
        let mut items: Vec<Summary> = self
            .lock()
            .values()
            .filter(|c| owner.is_none() || c.owner.as_deref() == owner)
            .map(|c| Summary {
                id: c.id,
                title: c.title.clone(),
                update_time: c.update_time,
            })
            .collect();
        items.sort_by(|a, b| b.update_time.total_cmp(&a.update_time));
        Ok(items)
    }

    async fn delete(&self, id: ConversationId) -> Result<bool, StoreError> {
        Ok(self.lock().remove(&id).is_some())
    }
}
