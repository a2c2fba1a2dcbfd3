//! The store several replicas share: PostgreSQL, through a pool of connections. Its schema
//! is created and migrated forward at start (versions in `chatgate_schema`, one replica at
//! a time under an advisory lock).
//!
//! An answer in progress belongs to the replica that generates it. Each replica renews a
//! lease in the `replicas` table every few seconds and, while at it, ends the answers
//! still in progress whose replica let its lease lapse (it was killed or lost the
//! database): they become errors with code `gateway_stopped` and keep their checkpointed
//! text, as SQLite's answers do when the one process that wrote them starts again.
//!
//! Texts that come from clients or upstreams (titles, answers, reasoning) are kept as
//! UTF-8 bytes (`bytea`), because PostgreSQL's `text` cannot hold a NUL character and an
//! answer must come back exactly as it was relayed, byte offsets of its chunks included.

use super::store::columns::{decode_ends, encode_ends, kinds, reasoning_ends_of, tokens, usage};
use super::store::{AnswerUpdate, NewTurn, Store, StoreError};
use super::{Conversation, ConversationId, FinishType, Message, MessageId, Status, Summary};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::Row;
use uuid::Uuid;

/// Schema versions, applied in order; `chatgate_schema` holds the ones that ran. Never edit
/// a released entry: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: conversations, their message trees, and the replicas' leases.
    "CREATE TABLE conversations (
        id uuid PRIMARY KEY,
        title bytea NOT NULL,
        create_time double precision NOT NULL,
        update_time double precision NOT NULL,
        current_node uuid NOT NULL,
        owner text
    );
    CREATE INDEX conversations_by_update ON conversations (update_time DESC);
    CREATE INDEX conversations_by_owner ON conversations (owner, update_time DESC);
    CREATE TABLE messages (
        id uuid PRIMARY KEY,
        -- The order messages were written in, for messages of the same create_time.
        seq bigint GENERATED ALWAYS AS IDENTITY,
        conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        parent_id uuid,
        role text NOT NULL,
        content bytea NOT NULL,
        status text NOT NULL,
        create_time double precision NOT NULL,
        model text,
        finish_type text,
        error text,
        chunk_ends bytea,
        reasoning bytea,
        reasoning_ends bytea,
        prompt_tokens bigint,
        completion_tokens bigint,
        -- The replica generating an answer in progress.
        replica uuid
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, create_time, seq);
    CREATE INDEX messages_in_progress ON messages (replica) WHERE status = 'in_progress';
    CREATE TABLE replicas (
        id uuid PRIMARY KEY,
        -- Seconds since the Unix epoch, by the database's clock.
        seen_at double precision NOT NULL
    );",
];

/// Taken by the replica that migrates: any two chatgates on one database agree on it.
const MIGRATION_LOCK: i64 = 0x6368_6174_6761_7465;
/// The longest the migration waits for a lock (the migration lock, held by a replica
/// migrating, or a table's): the start fails then, saying so, rather than hanging. A
/// `lock_timeout` the URL sets (`?options=-c%20lock_timeout%3D…`) is kept.
const MIGRATION_LOCK_WAIT: &str = "60s";

/// The database's clock, in seconds since the Unix epoch: every replica's lease is read
/// and written by the same clock.
const DB_NOW: &str = "extract(epoch FROM clock_timestamp())::double precision";

/// Connections kept open at most.
const POOL_SIZE: usize = 16;
/// The longest a connection may take to open.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// The longest a query (or a wait for a free connection) may take.
const QUERY_LIMIT: Duration = Duration::from_secs(30);

/// How each replica keeps its answers its own.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// How often a replica renews its lease (and ends the answers of lapsed ones).
    pub renew_every: Duration,
    /// How long a lease lasts without renewal.
    pub lasts: Duration,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            renew_every: Duration::from_secs(2),
            lasts: Duration::from_secs(10),
        }
    }
}

pub struct PostgresStore {
    pool: Pool,
    /// This process, as its answers in progress name it.
    replica: Uuid,
    /// Renews the lease; stopped with the store.
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Where a URL points, without its password, for messages.
pub fn describe(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
                .map(|(host, port)| match host {
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
                })
                .collect();
            format!(
                "postgres://{}@{}/{}",
                config.get_user().unwrap_or(""),
                hosts.join(","),
                config.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "an unreadable PostgreSQL URL".to_owned(),
    }
}

impl PostgresStore {
    /// Connects to the database at `url`, brings its schema up to date and takes a lease.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, Lease::default()).await
    }

    pub async fn open_with(url: &str, lease: Lease) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Rejected(format!("bad PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_LIMIT);
        }
        if config.get_application_name().is_none() {
            config.application_name("chatgate");
        }
        // TLS when the server offers it (`sslmode=prefer`, the default) or the URL asks for
        // it (`sslmode=require`), with the server's certificate checked.
        let tls = native_tls::TlsConnector::new()
            .map_err(|e| StoreError::Rejected(format!("cannot set up TLS for PostgreSQL: {e}")))?;
        let manager = Manager::from_config(
            config,
            postgres_native_tls::MakeTlsConnector::new(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(QUERY_LIMIT))
            .create_timeout(Some(CONNECT_LIMIT))
            .recycle_timeout(Some(CONNECT_LIMIT))
            .build()
            .map_err(|e| StoreError::Rejected(format!("cannot set up the PostgreSQL pool: {e}")))?;
        let replica = Uuid::new_v4();
        let mut client = connection(&pool).await?;
        migrate(&mut client).await?;
        renew(&client, replica, lease).await?;
        drop(client);
        let keeper = tokio::spawn(keep(pool.clone(), replica, lease));
        Ok(Self { pool, replica, keeper })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        connection(&self.pool).await
    }
}

async fn connection(pool: &Pool) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            StoreError::Unreachable("no connection to the database could be had in time".into())
        }
        other => StoreError::Unreachable(other.to_string()),
    })
}

/// `work`, or an error once it has taken longer than a query may.
async fn limited<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(QUERY_LIMIT, work).await.unwrap_or_else(|_| {
        Err(StoreError::Unreachable(format!(
            "no answer within {}s",
            QUERY_LIMIT.as_secs()
        )))
    })
}

async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let mut lock_wait: String = tx.query_one("SHOW lock_timeout", &[]).await?.get(0);
    if lock_wait == "0" {
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{MIGRATION_LOCK_WAIT}'"))
            .await?;
        lock_wait = MIGRATION_LOCK_WAIT.to_owned();
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => StoreError::Unreachable(format!(
                "the schema could not be migrated: another process has held the migration lock for \
                 longer than lock_timeout ({lock_wait}); is a replica stuck migrating?"
            )),
            _ => e.into(),
        })?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS chatgate_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let version: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM chatgate_schema", &[])
        .await?
        .get(0);
    let version = version.max(0) as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this chatgate knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql).await?;
        let applied = i as i32 + 1;
        tx.execute("INSERT INTO chatgate_schema (version) VALUES ($1)", &[&applied])
            .await?;
        log::info!("PostgreSQL schema migrated to version {applied}");
    }
    tx.commit().await?;
    Ok(())
}

/// Renews `replica`'s lease and ends the answers of replicas whose lease lapsed.
async fn renew(client: &Object, replica: Uuid, lease: Lease) -> Result<(), StoreError> {
    limited(async {
        client
            .execute(
                &format!(
                    "INSERT INTO replicas (id, seen_at) VALUES ($1, {DB_NOW})
                     ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
                ),
                &[&replica],
            )
            .await?;
        let error = serde_json::json!({
            "message": "the chatgate replica generating this answer stopped before it was finished",
            "type": "server_error",
            "code": "gateway_stopped",
        })
        .to_string();
        let lasts = lease.lasts.as_secs_f64();
        let ended = client
            .execute(
                &format!(
                    "UPDATE messages SET status = 'error', finish_type = 'interrupted', error = $1, replica = NULL
                     WHERE status = 'in_progress' AND NOT EXISTS (
                         SELECT 1 FROM replicas r WHERE r.id = messages.replica AND r.seen_at > {DB_NOW} - $2
                     )"
                ),
                &[&error, &lasts],
            )
            .await?;
        if ended > 0 {
            log::warn!(
                "{ended} answer(s) were cut off when the replica generating them stopped; they are marked as errors"
            );
        }
        // Leases lapsed a day ago name replicas that are gone for good.
        client
            .execute(&format!("DELETE FROM replicas WHERE seen_at < {DB_NOW} - 86400"), &[])
            .await?;
        Ok(())
    })
    .await
}

/// Renews the lease for as long as the store lives.
async fn keep(pool: Pool, replica: Uuid, lease: Lease) {
    let mut tick = tokio::time::interval(lease.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let renewed = async { renew(&connection(&pool).await?, replica, lease).await }.await;
        if let Err(e) = renewed {
            log::warn!(
                "cannot renew this replica's lease in PostgreSQL (its answers in progress may be ended by another replica): {e}"
            );
        }
    }
}

fn text(what: &str, raw: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(raw).map_err(|_| StoreError::Corrupt(format!("{what} that is not UTF-8")))
}

/// PostgreSQL's `text` cannot hold NUL: the few short texts kept as `text` (a model's name,
/// an owner's, an error object's JSON, which escapes NUL itself) lose it.
fn plain(value: &str) -> String {
    value.replace('\0', "\u{FFFD}")
}

async fn insert_message(
    client: &impl GenericClient,
    conversation: ConversationId,
    m: &Message,
    replica: Option<Uuid>,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO messages
             (id, conversation_id, parent_id, role, content, status, create_time, model, finish_type, error,
              chunk_ends, reasoning, reasoning_ends, prompt_tokens, completion_tokens, replica)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &m.id.uuid(),
                &conversation.uuid(),
                &m.parent.map(MessageId::uuid),
                &m.role.as_str(),
                &m.content.as_bytes(),
                &m.status.as_str(),
                &m.create_time,
                &m.model.as_deref().map(plain),
                &m.finish.map(FinishType::as_str),
                &m.error.as_ref().map(|e| e.to_string()),
                &encode_ends(&m.chunk_ends),
                &Some(m.reasoning.as_bytes()).filter(|r| !r.is_empty()),
                &reasoning_ends_of(&m.reasoning_ends),
                &m.usage.map(|u| tokens(u.prompt_tokens)),
                &m.usage.map(|u| tokens(u.completion_tokens)),
                &replica.filter(|_| m.status == Status::InProgress),
            ],
        )
        .await?;
    Ok(())
}

fn message_from_row(row: &Row) -> Result<Message, StoreError> {
    let kinds = kinds(
        row.try_get("role")?,
        row.try_get("status")?,
        row.try_get("finish_type")?,
        row.try_get("error")?,
    )?;
    Ok(Message {
        id: MessageId::from_uuid(row.try_get("id")?),
        parent: row.try_get::<_, Option<Uuid>>("parent_id")?.map(MessageId::from_uuid),
        role: kinds.role,
        content: text("an answer", row.try_get("content")?)?,
        status: kinds.status,
        create_time: row.try_get("create_time")?,
        model: row.try_get("model")?,
        finish: kinds.finish,
        error: kinds.error,
        chunk_ends: decode_ends(row.try_get("chunk_ends")?),
        reasoning: match row.try_get::<_, Option<Vec<u8>>>("reasoning")? {
            Some(raw) => text("a reasoning", raw)?,
            None => String::new(),
        },
        reasoning_ends: decode_ends(row.try_get("reasoning_ends")?),
        usage: usage(row.try_get("prompt_tokens")?, row.try_get("completion_tokens")?),
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        limited(async {
            let client = self.client().await?;
            let head = client
                .query_opt(
                    "SELECT title, create_time, update_time, current_node, owner FROM conversations WHERE id = $1",
                    &[&id.uuid()],
                )
                .await?;
            let Some(head) = head else { return Ok(None) };
            let statement = client
                .prepare_cached(
                    "SELECT id, parent_id, role, content, status, create_time, model, finish_type, error, chunk_ends,
                            reasoning, reasoning_ends, prompt_tokens, completion_tokens
                     FROM messages WHERE conversation_id = $1 ORDER BY create_time, seq",
                )
                .await?;
            let rows = client.query(&statement, &[&id.uuid()]).await?;
            let messages = rows.iter().map(message_from_row).collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Conversation {
                id,
                title: text("a title", head.try_get("title")?)?,
                create_time: head.try_get("create_time")?,
                update_time: head.try_get("update_time")?,
                current_node: MessageId::from_uuid(head.try_get("current_node")?),
                messages,
                owner: head.try_get("owner")?,
            }))
        })
        .await
    }

    async fn begin_turn(&self, turn: NewTurn) -> Result<(), StoreError> {
        limited(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let id = turn.conversation_id.uuid();
            if let Some((title, root)) = &turn.new_conversation {
                tx.execute(
                    "INSERT INTO conversations (id, title, create_time, update_time, current_node, owner)
                     VALUES ($1, $2, $3, $3, $4, $5)",
                    &[
                        &id,
                        &title.as_bytes(),
                        &root.create_time,
                        &root.id.uuid(),
                        &turn.owner.as_deref().map(plain),
                    ],
                )
                .await?;
                insert_message(&tx, turn.conversation_id, root, None).await?;
            }
            let changed = tx
                .execute(
                    "UPDATE conversations SET current_node = $2, update_time = $3 WHERE id = $1",
                    &[&id, &turn.assistant.id.uuid(), &turn.assistant.create_time],
                )
                .await?;
            if changed == 0 {
                return Err(StoreError::UnknownConversation(turn.conversation_id));
            }
            insert_message(&tx, turn.conversation_id, &turn.user, None).await?;
            insert_message(&tx, turn.conversation_id, &turn.assistant, Some(self.replica)).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn update_answer(&self, update: AnswerUpdate) -> Result<(), StoreError> {
        limited(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let running = update.status == Status::InProgress;
            let statement = tx
                .prepare_cached(
                    "UPDATE messages SET content = $2, status = $3, finish_type = $4, error = $5, chunk_ends = $6,
                        reasoning = $7, reasoning_ends = $8, prompt_tokens = $9, completion_tokens = $10, replica = $11
                     WHERE id = $1",
                )
                .await?;
            tx.execute(
                &statement,
                &[
                    &update.id.uuid(),
                    &update.content.as_bytes(),
                    &update.status.as_str(),
                    &update.finish.map(FinishType::as_str),
                    &update.error.as_ref().map(|e| e.to_string()),
                    &encode_ends(&update.chunk_ends),
                    &Some(update.reasoning.as_bytes()).filter(|r| !r.is_empty()),
                    &reasoning_ends_of(&update.reasoning_ends),
                    &update.usage.map(|u| tokens(u.prompt_tokens)),
                    &update.usage.map(|u| tokens(u.completion_tokens)),
                    &Some(self.replica).filter(|_| running),
                ],
            )
            .await?;
            // As in SQLite: a conversation's update time moves when a turn begins or its
            // answer ends, not at every checkpoint, so lists do not reorder while answers run.
            if !running {
                tx.execute(
                    "UPDATE conversations SET update_time = $2 WHERE id = $1",
                    &[&update.conversation_id.uuid(), &super::now()],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<Summary>, StoreError> {
        limited(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, title, update_time FROM conversations WHERE $1::text IS NULL OR owner = $1
                     ORDER BY update_time DESC",
                    &[&owner],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(Summary {
                        id: ConversationId::from_uuid(row.try_get("id")?),
                        title: text("a title", row.try_get("title")?)?,
                        update_time: row.try_get("update_time")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete(&self, id: ConversationId) -> Result<bool, StoreError> {
        limited(async {
            let client = self.client().await?;
            let deleted = client
                .execute("DELETE FROM conversations WHERE id = $1", &[&id.uuid()])
                .await?;
            Ok(deleted > 0)
        })
        .await
    }
}
