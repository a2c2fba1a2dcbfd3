//! The embedded default store: one SQLite file, created with its schema on first run and
//! migrated forward by `PRAGMA user_version`. Writes go to a writer thread that commits
//! them in groups (`group_commit.rs`); reads run on tokio's blocking pool. Either way disk
//! waits never stall the threads that relay tokens.

use super::group_commit::{Durability, Writer};
use super::store::columns::{corrupt, decode_ends, encode_ends, kinds, reasoning_ends_of, tokens, usage};
use super::store::{AnswerUpdate, NewTurn, Store, StoreError};
use super::{Conversation, ConversationId, FinishType, Message, MessageId, Status, Summary, now};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Schema versions, applied in order; `user_version` counts how many have run.
/// Never edit a released entry: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: conversations and their message trees.
    "CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        current_node TEXT NOT NULL
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        parent_id TEXT,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        status TEXT NOT NULL,
        create_time REAL NOT NULL,
        model TEXT,
        finish_type TEXT,
        error TEXT
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, create_time);
    CREATE INDEX conversations_by_update ON conversations(update_time DESC);",
    // 2: where each upstream chunk of an answer ends, for resuming after a frame id.
    "ALTER TABLE messages ADD COLUMN chunk_ends BLOB;",
    // 3: the client key name that created a conversation (NULL: created without keys).
    "ALTER TABLE conversations ADD COLUMN owner TEXT;
    CREATE INDEX conversations_by_owner ON conversations(owner, update_time DESC);",
    // 4: an answer's reasoning text (NULL: none) and where each chunk's reasoning ends, and
    // its token counts (NULL: the upstream reported none).
    "ALTER TABLE messages ADD COLUMN reasoning TEXT;
    ALTER TABLE messages ADD COLUMN reasoning_ends BLOB;
    ALTER TABLE messages ADD COLUMN prompt_tokens INTEGER;
    ALTER TABLE messages ADD COLUMN completion_tokens INTEGER;",
];

pub struct SqliteStore {
    /// Reads run on tokio's blocking pool beside the writer (WAL allows that).
    reader: Arc<Mutex<Connection>>,
    writer: Writer,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        recover_interrupted(&conn)?;
        Ok(Self {
            reader: Arc::new(Mutex::new(connect(path)?)),
            writer: Writer::start(conn)?,
        })
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            // Reads change nothing, so the connection behind a poisoned lock is still good.
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&conn)
        })
        .await?
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer; FULL makes each commit survive power loss
    // (the writer commits checkpoints of running answers with NORMAL: see `group_commit`).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The statement journals of the group commit's savepoints stay in memory: as files, a
    // batch of several writes created, wrote and unlinked one in /var/tmp.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this chatgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        log::info!("database migrated to schema version {}", i + 1);
    }
    Ok(())
}

/// Answers still `in_progress` when the database is opened were cut off by a crash or a
/// kill: this process is the file's only user, so nobody is still writing them. They are
/// marked as errors so that clients see what happened rather than a stream that never ends.
fn recover_interrupted(conn: &Connection) -> Result<(), StoreError> {
    let error = serde_json::json!({
        "message": "chatgate stopped before this answer was finished",
        "type": "server_error",
        "code": "gateway_stopped",
    });
    let recovered = conn.execute(
        "UPDATE messages SET status = 'error', finish_type = 'interrupted', error = ?1 WHERE status = 'in_progress'",
        [error.to_string()],
    )?;
    if recovered > 0 {
        log::warn!("{recovered} answer(s) were cut off when chatgate last stopped; they are marked as errors");
    }
    Ok(())
}

fn insert_message(conn: &Connection, conversation: ConversationId, m: &Message) -> Result<(), StoreError> {
    const INSERT: &str = "INSERT INTO messages
        (id, conversation_id, parent_id, role, content, status, create_time, model, finish_type, error, chunk_ends,
         reasoning, reasoning_ends, prompt_tokens, completion_tokens)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";
    // Cached: statements are parsed once per connection, not once per write.
    conn.prepare_cached(INSERT)?.execute(params![
        m.id.to_string(),
        conversation.to_string(),
        m.parent.map(|p| p.to_string()),
        m.role.as_str(),
        m.content,
        m.status.as_str(),
        m.create_time,
        m.model,
        m.finish.map(FinishType::as_str),
        m.error.as_ref().map(|e| e.to_string()),
        encode_ends(&m.chunk_ends),
        reasoning_of(&m.reasoning),
        reasoning_ends_of(&m.reasoning_ends),
        m.usage.map(|u| tokens(u.prompt_tokens)),
        m.usage.map(|u| tokens(u.completion_tokens)),
    ])?;
    Ok(())
}

/// Reasoning is NULL when there is none.
fn reasoning_of(reasoning: &str) -> Option<&str> {
    Some(reasoning).filter(|r| !r.is_empty())
}

fn message_id(raw: &str) -> Result<MessageId, StoreError> {
    MessageId::parse(raw).map_err(|_| corrupt("message id", raw))
}

type MessageRow = (
    String,
    Option<String>,
    String,
    String,
    String,
    f64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    // reasoning, reasoning_ends, prompt_tokens, completion_tokens
    (Option<String>, Option<Vec<u8>>, Option<i64>, Option<i64>),
);

fn message_from_row(row: MessageRow) -> Result<Message, StoreError> {
    let (id, parent, role, content, status, create_time, model, finish, error, ends, extra) = row;
    let (reasoning, reasoning_ends, prompt_tokens, completion_tokens) = extra;
    let kinds = kinds(&role, &status, finish.as_deref(), error.as_deref())?;
    Ok(Message {
        id: message_id(&id)?,
        parent: parent.as_deref().map(message_id).transpose()?,
        role: kinds.role,
        content,
        status: kinds.status,
        create_time,
        model,
        finish: kinds.finish,
        error: kinds.error,
        chunk_ends: decode_ends(ends),
        reasoning: reasoning.unwrap_or_default(),
        reasoning_ends: decode_ends(reasoning_ends),
        usage: usage(prompt_tokens, completion_tokens),
    })
}

fn load(conn: &Connection, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
    let key = id.to_string();
    let head = conn
        .query_row(
            "SELECT title, create_time, update_time, current_node, owner FROM conversations WHERE id = ?1",
            [&key],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((title, create_time, update_time, current_node, owner)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, parent_id, role, content, status, create_time, model, finish_type, error, chunk_ends,
                reasoning, reasoning_ends, prompt_tokens, completion_tokens
         FROM messages WHERE conversation_id = ?1 ORDER BY create_time, rowid",
    )?;
    let rows = stmt.query_map([&key], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            (r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?),
        ))
    })?;
    let mut messages = Vec::new();
    for row in rows {
        messages.push(message_from_row(row?)?);
    }
    Ok(Some(Conversation {
        id,
        title,
        create_time,
        update_time,
        current_node: message_id(&current_node)?,
        messages,
        owner,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.read(move |conn| load(conn, id)).await
    }

    async fn begin_turn(&self, turn: NewTurn) -> Result<(), StoreError> {
        // Deferred: the turn is written beside its answer's first token, and its commit
        // should not compete with it (see `group_commit`).
        self.writer
            .write_as(Durability::Deferred, move |tx| {
                let key = turn.conversation_id.to_string();
                if let Some((title, root)) = &turn.new_conversation {
                    tx.prepare_cached(
                        "INSERT INTO conversations (id, title, create_time, update_time, current_node, owner)
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        key,
                        title,
                        root.create_time,
                        root.id.to_string(),
                        turn.owner
                    ])?;
                    insert_message(tx, turn.conversation_id, root)?;
                }
                let changed = tx
                    .prepare_cached("UPDATE conversations SET current_node = ?2, update_time = ?3 WHERE id = ?1")?
                    .execute(params![key, turn.assistant.id.to_string(), turn.assistant.create_time])?;
                if changed == 0 {
                    return Err(StoreError::UnknownConversation(turn.conversation_id));
                }
                insert_message(tx, turn.conversation_id, &turn.user)?;
                insert_message(tx, turn.conversation_id, &turn.assistant)?;
                Ok(())
            })
            .await
    }

    async fn update_answer(&self, update: AnswerUpdate) -> Result<(), StoreError> {
        // A checkpoint of a running answer is not synced by itself; the end is synced at
        // once (see `group_commit`).
        let durability = match update.status {
            Status::InProgress => Durability::Unsynced,
            _ => Durability::Now,
        };
        self.writer
            .write_as(durability, move |tx| {
                tx.prepare_cached(
                    "UPDATE messages SET content = ?2, status = ?3, finish_type = ?4, error = ?5, chunk_ends = ?6,
                        reasoning = ?7, reasoning_ends = ?8, prompt_tokens = ?9, completion_tokens = ?10
                     WHERE id = ?1",
                )?
                .execute(params![
                    update.id.to_string(),
                    update.content,
                    update.status.as_str(),
                    update.finish.map(FinishType::as_str),
                    update.error.as_ref().map(|e| e.to_string()),
                    encode_ends(&update.chunk_ends),
                    reasoning_of(&update.reasoning),
                    reasoning_ends_of(&update.reasoning_ends),
                    update.usage.map(|u| tokens(u.prompt_tokens)),
                    update.usage.map(|u| tokens(u.completion_tokens)),
                ])?;
                // A conversation's update time is when its turn began (`begin_turn`) or its
                // answer ended, not every checkpoint in between: lists do not reorder
                // while answers run, and a checkpoint costs one row, not a row and the
                // conversations' indexes.
                if durability == Durability::Now {
                    tx.prepare_cached("UPDATE conversations SET update_time = ?2 WHERE id = ?1")?
                        .execute(params![update.conversation_id.to_string(), now()])?;
                }
                Ok(())
            })
            .await
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<Summary>, StoreError> {
        let owner = owner.map(str::to_owned);
        self.read(move |conn| {
            // `?1 IS NULL`: no owner asked for, every conversation.
            let mut stmt = conn.prepare_cached(
                "SELECT id, title, update_time FROM conversations WHERE ?1 IS NULL OR owner = ?1
                 ORDER BY update_time DESC",
            )?;
            let rows = stmt.query_map([owner], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
            let mut items = Vec::new();
            for row in rows {
                let (id, title, update_time) = row?;
                let id = ConversationId::parse(&id).map_err(|_| corrupt("conversation id", &id))?;
                items.push(Summary { id, title, update_time });
            }
            Ok(items)
        })
        .await
    }

    async fn delete(&self, id: ConversationId) -> Result<bool, StoreError> {
        let (found, answer) = tokio::sync::oneshot::channel();
        self.writer
            .write(move |conn| {
                let deleted = conn.execute("DELETE FROM conversations WHERE id = ?1", [id.to_string()])?;
                let _ = found.send(deleted > 0);
                Ok(())
            })
            .await?;
        Ok(answer.await.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{Role, Usage};

    fn turn(conversation_id: ConversationId) -> NewTurn {
        let root = Message::root(1.0);
        let user = Message::new(Some(root.id), Role::User, "q".into(), Status::FinishedSuccessfully, 2.0);
        let assistant = Message::new(Some(user.id), Role::Assistant, String::new(), Status::InProgress, 2.0);
        NewTurn {
            conversation_id,
            new_conversation: Some(("q".into(), root)),
            owner: Some("alice".into()),
            user,
            assistant,
        }
    }

    #[tokio::test]
    async fn an_answer_cut_off_by_a_crash_is_marked_as_an_error_on_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let id = ConversationId::new();
        let t = turn(id);
        let answer = t.assistant.id;
        SqliteStore::open(&path).unwrap().begin_turn(t).await.unwrap();

        let reopened = SqliteStore::open(&path).unwrap();
        let conversation = reopened.conversation(id).await.unwrap().unwrap();
        let m = conversation.message(answer).unwrap();
        assert_eq!(m.status, Status::Error);
        assert_eq!(m.finish, Some(FinishType::Interrupted));
        assert_eq!(m.error.as_ref().unwrap()["code"], "gateway_stopped");
    }

    #[tokio::test]
    async fn a_checkpoint_committed_without_a_sync_is_in_the_file_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let id = ConversationId::new();
        let t = turn(id);
        let answer = t.assistant.id;
        let store = SqliteStore::open(&path).unwrap();
        store.begin_turn(t).await.unwrap();
        let checkpoint = AnswerUpdate {
            conversation_id: id,
            id: answer,
            content: "so far".into(),
            chunk_ends: vec![2, 6, 6],
            reasoning: "hmm".into(),
            reasoning_ends: vec![0, 0, 3],
            usage: Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
            }),
            status: Status::InProgress,
            finish: None,
            error: None,
        };
        store.update_answer(checkpoint).await.unwrap();
        // no end: the process stops here
        drop(store);

        let reopened = SqliteStore::open(&path).unwrap();
        let conversation = reopened.conversation(id).await.unwrap().unwrap();
        let m = conversation.message(answer).unwrap();
        assert_eq!(
            (m.content.as_str(), m.chunk_ends.as_slice()),
            ("so far", &[2, 6, 6][..])
        );
        assert_eq!(
            (m.reasoning.as_str(), m.reasoning_ends.as_slice()),
            ("hmm", &[0, 0, 3][..])
        );
        assert_eq!(m.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((7, 3)));
        assert_eq!(m.finish, Some(FinishType::Interrupted));
    }

    #[tokio::test]
    async fn a_conversation_keeps_its_owner_and_lists_are_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let id = ConversationId::new();
        store.begin_turn(turn(id)).await.unwrap();
        let stored = store.conversation(id).await.unwrap().unwrap();
        assert_eq!(stored.owner.as_deref(), Some("alice"));
        assert_eq!(store.list(Some("alice")).await.unwrap().len(), 1);
        assert!(store.list(Some("bob")).await.unwrap().is_empty());
        assert_eq!(store.list(None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_rather_than_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(SqliteStore::open(&path), Err(StoreError::Corrupt(_))));
    }
}
