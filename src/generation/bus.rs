//! The registry across replicas (`--bus redis://…`): every replica keeps its own answers
//! in an in-process registry, as without a bus, and also appends each of their chunks to a
//! Redis stream, so that a reader on any other replica can follow or resume them.
//!
//! On Redis, under `chatgate:`:
//! - `answer:{message}`: a hash naming a live answer's conversation, replica, parent,
//!   model, start time and owner;
//! - `frames:{message}`: the answer's stream. Chunk `n` is the entry `0-n`, so a frame id
//!   (`Last-Event-ID`) is a stream position on every replica; the end is the entry after
//!   the last chunk, with the last frame's status, error and usage;
//! - `live:{conversation}`: the conversation's live answers, by start time;
//! - `replica:{id}`: a replica's lease, renewed every [`LEASE_RENEW`] and with each answer
//!   it announces, and lasting [`LEASE_LASTS`]: a replica without one is dead;
//! - `ctl:{id}`: a replica's control stream: stop requests, and "a reader here still
//!   follows this answer" from the others.
//!
//! A reader on another replica reads through a *mirror*: a generation of that replica's
//! own, one per answer however many of its readers follow it, so its readers get the same
//! frames (coalescing, delta mode, resume) as readers of a local answer. One task feeds
//! every mirror of a replica from one connection, with one `XREAD` for all their streams.
//! While a mirror has readers, the task tells the generating replica every second, which
//! counts them as one reader: an answer read only elsewhere is not "unread".
//!
//! The chunks of every answer of a replica go out through one writer task, which sends
//! whatever has piled up as one pipeline: one round trip for many chunks when they come
//! fast, never one per chunk. Chunks are not retried: a follower that finds a gap (Redis
//! lost a write, or restarted) ends its readers with `bus_failed`, while the answer goes on
//! and is stored on its own replica, where its own readers see nothing of it.

use super::local::{LocalGenerations, Watch};
use super::{End, Generations, LiveAnswer, Producer, ReadFrom, Reader, Signal, Snapshot, Target};
use crate::conversation::store::AnswerUpdate;
use crate::conversation::{ConversationId, FinishType, MessageId, Status, Store, Usage};
use crate::error::{ApiError, ErrorBody};
use crate::metrics::BusCounters;
use crate::wire::chatgpt::AnswerIdentity;
use actix_web::http::StatusCode;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a replica renews its lease.
pub const LEASE_RENEW: Duration = Duration::from_millis(750);
/// How long a lease lasts: a replica silent this long is dead. With the lease of a silent
/// answer's replica looked at every [`LOOK_EVERY`] and reads that block for at most
/// [`BLOCK`], readers elsewhere hear of a death within about 4 s.
pub const LEASE_LASTS: Duration = Duration::from_secs(3);
/// The longest the followers' read waits on Redis for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// An answer that sent nothing for this long has its replica's lease looked at, at the
/// next pause between reads.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often a follower with readers tells the generating replica so.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// A reader elsewhere counts for this long after its replica last said so.
const WATCH_LASTS: Duration = Duration::from_secs(3);
/// How long a finished answer stays on the bus (the contract promises at least 5 minutes);
/// after that, it is replayed from the store.
const ENDED_KEPT_SECS: i64 = 600;
/// A live answer's keys go even if every replica died without ending it.
const LIVE_KEPT_SECS: i64 = 24 * 3600;
/// Every command's answer, and every connection, within this.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// A stop request elsewhere is answered within this, or counts as not stopped.
const STOP_WAIT_SECS: u64 = 30;
/// Chunks one pipeline carries at most.
const BATCH: usize = 512;

/// Why the bus could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

/// `redis://[user[:password]@]host:port/db` without the password, for logs and errors.
pub fn describe(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or("");
                match user.is_empty() {
                    true => format!("{scheme}://{host}"),
                    false => format!("{scheme}://{user}@{host}"),
                }
            }
            None => url.to_owned(),
        },
        None => "an unreadable Redis URL".to_owned(),
    }
}

fn answer_key(message: MessageId) -> String {
    format!("chatgate:answer:{message}")
}

fn frames_key(message: MessageId) -> String {
    format!("chatgate:frames:{message}")
}

fn live_key(conversation: ConversationId) -> String {
    format!("chatgate:live:{conversation}")
}

fn lease_key(replica: &str) -> String {
    format!("chatgate:replica:{replica}")
}

/// Adds to `pipe` an entry of `fields` on `replica`'s control stream, which keeps its last
/// 10,000 or so entries and goes a minute after the last.
fn to_control(pipe: &mut redis::Pipeline, replica: &str, fields: &[(&str, &str)]) {
    let control = control_key(replica);
    pipe.cmd("XADD")
        .arg(&control)
        .arg("MAXLEN")
        .arg("~")
        .arg(10_000)
        .arg("*");
    for (name, value) in fields {
        pipe.arg(*name).arg(*value);
    }
    pipe.ignore().cmd("EXPIRE").arg(&control).arg(60).ignore();
}

fn control_key(replica: &str) -> String {
    format!("chatgate:ctl:{replica}")
}

/// What the writer task sends.
enum Write {
    Chunk {
        message: MessageId,
        n: u64,
        text: String,
        reasoning: String,
    },
    End {
        identity: Box<AnswerIdentity>,
        n: u64,
        end: String,
    },
}

/// Chunk bytes that may wait for Redis: past this (Redis is slow or hung), chunks are left
/// out, and readers elsewhere end with `bus_failed` at the gap, rather than the queue
/// growing without end. Ends are always queued.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// The way to the writer task.
#[derive(Clone)]
struct Writes {
    sender: mpsc::UnboundedSender<Write>,
    /// Bytes of chunk text queued and not yet sent.
    queued: Arc<AtomicUsize>,
}

impl Writes {
    /// Queues a chunk; `false` when it was left out.
    fn chunk(&self, message: MessageId, n: u64, text: &str, reasoning: &str) -> bool {
        let bytes = text.len() + reasoning.len();
        if self.queued.fetch_add(bytes, Ordering::Relaxed) > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        let _ = self.sender.send(Write::Chunk {
            message,
            n,
            text: text.to_owned(),
            reasoning: reasoning.to_owned(),
        });
        true
    }

    fn end(&self, identity: &AnswerIdentity, n: u64, end: &End) {
        let _ = self.sender.send(Write::End {
            identity: Box::new(identity.clone()),
            n,
            end: encode_end(end),
        });
    }
}

/// The replica's side of the bus, shared by its registry and its tasks.
struct Bus {
    client: Client,
    conn: ConnectionManager,
    /// This replica's id: a new one at every start.
    replica: String,
    writes: Writes,
    store: Arc<dyn Store>,
    heartbeat: Duration,
    /// Readers on other replicas of this replica's answers, until their lapse.
    watched: Mutex<HashMap<MessageId, (Watch, Instant)>>,
}

/// The [`Generations`] of a replica on a bus.
pub struct BusGenerations {
    /// This replica's answers.
    own: Arc<LocalGenerations>,
    /// Answers of other replicas that readers here follow.
    mirrors: Arc<LocalGenerations>,
    /// The answers followed here (one mirror each), and the way to the task that feeds
    /// their mirrors on each thread that serves requests (see [`follow_loop`]).
    following: Arc<tokio::sync::Mutex<HashSet<MessageId>>>,
    follow: Mutex<HashMap<std::thread::ThreadId, mpsc::UnboundedSender<Follower>>>,
    bus: Arc<Bus>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each holder does a few map operations that cannot panic halfway.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connection(client: &Client) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

impl BusGenerations {
    /// Joins the bus at `url`: connects, takes a lease and starts the replica's tasks.
    pub async fn join(
        url: &str,
        store: Arc<dyn Store>,
        heartbeat: Duration,
        counters: BusCounters,
    ) -> Result<Self, BusError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let replica = uuid::Uuid::new_v4().to_string();
        renew_lease(&mut conn, &replica).await?;
        let control = connection(&client).await?;
        let (sender, queue) = mpsc::unbounded_channel();
        let writes = Writes {
            sender,
            queued: Arc::default(),
        };
        let bus = Arc::new(Bus {
            client,
            conn: conn.clone(),
            replica,
            writes,
            store,
            heartbeat,
            watched: Mutex::default(),
        });
        let own = Arc::new(LocalGenerations::default());
        tokio::spawn(write(conn.clone(), queue, Arc::clone(&bus.writes.queued), counters));
        tokio::spawn(keep_lease(Arc::downgrade(&bus)));
        tokio::spawn(control_loop(Arc::downgrade(&bus), Arc::downgrade(&own), control));
        log::info!("replica {} joined the bus", bus.replica);
        Ok(Self {
            own,
            mirrors: Arc::new(LocalGenerations::default()),
            following: Arc::default(),
            follow: Mutex::default(),
            bus,
        })
    }

    /// Per-client limits counted on this bus, for every replica on it.
    pub fn limiter(&self, limits: crate::config::ClientLimits) -> crate::limits::shared::SharedLimiter {
        crate::limits::shared::SharedLimiter::new(limits, self.bus.conn.clone(), self.bus.replica.clone())
    }

    /// The newest live answer of `conversation`, on any replica.
    async fn newest(&self, conversation: ConversationId) -> Result<Option<MessageId>, RedisError> {
        let mut conn = self.bus.conn.clone();
        let newest: Vec<String> = redis::cmd("ZRANGE")
            .arg(live_key(conversation))
            .arg(-1)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        Ok(newest.first().and_then(|m| MessageId::parse(m).ok()))
    }

    /// The answer `target` names, on the bus: its message and its hash.
    async fn find(&self, target: Target) -> Result<Option<(MessageId, Meta)>, RedisError> {
        let message = match target.message {
            Some(m) => m,
            None => match self.newest(target.conversation).await? {
                Some(m) => m,
                None => return Ok(None),
            },
        };
        let mut conn = self.bus.conn.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(answer_key(message))
            .query_async(&mut conn)
            .await?;
        Ok(Meta::parse(message, &fields)
            .filter(|m| m.identity.conversation_id == target.conversation)
            .map(|m| (message, m)))
    }

    /// A reader of another replica's answer, through this replica's mirror of it.
    async fn follow(&self, target: Target, from: ReadFrom) -> Result<Option<Reader>, RedisError> {
        let Some((message, meta)) = self.find(target).await? else {
            return Ok(None);
        };
        let mirror_target = Target {
            conversation: target.conversation,
            message: Some(message),
        };
        // Held until the mirror is in place: one mirror per answer, however many readers
        // come at once.
        let mut following = self.following.lock().await;
        if following.contains(&message) {
            return Ok(self.mirrors.reader(mirror_target, from));
        }
        // The mirror holds every chunk so far before its first reader comes: a resume
        // point is placed within what the answer already has.
        let entries: StreamRangeReply = redis::cmd("XRANGE")
            .arg(frames_key(message))
            .arg("-")
            .arg("+")
            .query_async(&mut self.bus.conn.clone())
            .await?;
        let producer = self
            .mirrors
            .start(meta.identity.clone(), meta.owner.clone(), false)
            .await;
        let now = Instant::now();
        let mut follower = Follower {
            message,
            identity: meta.identity,
            replica: meta.replica,
            chunks: 0,
            ended: false,
            producer,
            heard: now,
            beat: now,
            told: None,
        };
        // An answer that has ended is read from the bus too (for as long as its stream is
        // kept): the reader comes in before the end, so that its resume point is placed in
        // the text rather than after the end.
        let mut entries = entries.ids;
        let end = match entries.last().is_some_and(|e| e.map.contains_key("end")) {
            true => entries.pop(),
            false => None,
        };
        follower.take_or_fail(entries);
        following.insert(message);
        // Subscribed while the set is held: the follower cannot see no reader and end the
        // mirror before this reader is in.
        let reader = self.mirrors.reader(mirror_target, from);
        drop(following);
        if let Some(end) = end {
            follower.take_or_fail(vec![end]);
        }
        // An ended one too: the task takes it off the set.
        self.feed(follower);
        Ok(reader)
    }

    /// Hands `follower` to this thread's [`follow_loop`], started with the thread's first
    /// follower (or again, if its runtime stopped and took the task with it).
    fn feed(&self, follower: Follower) {
        let mut loops = locked(&self.follow);
        let thread = std::thread::current().id();
        let follower = match loops.get(&thread) {
            Some(running) => match running.send(follower) {
                Ok(()) => return,
                Err(mpsc::error::SendError(follower)) => follower,
            },
            None => follower,
        };
        let (sender, followers) = mpsc::unbounded_channel();
        tokio::spawn(follow_loop(
            Arc::clone(&self.bus),
            Arc::clone(&self.following),
            followers,
        ));
        let _ = sender.send(follower);
        loops.insert(thread, sender);
    }

    /// Asks the replica generating `target` to stop it.
    async fn stop_elsewhere(&self, target: Target) -> Result<bool, RedisError> {
        let Some((message, meta)) = self.find(target).await? else {
            return Ok(false);
        };
        if meta.replica == self.bus.replica {
            // Ended here meanwhile.
            return Ok(false);
        }
        let mut conn = self.bus.conn.clone();
        let alive: bool = redis::cmd("EXISTS")
            .arg(lease_key(&meta.replica))
            .query_async(&mut conn)
            .await?;
        if !alive {
            // Its readers are told by their followers; the store by any replica's sweep.
            return Ok(false);
        }
        let reply = format!("chatgate:reply:{}", uuid::Uuid::new_v4());
        let mut pipe = redis::pipe();
        let message = message.to_string();
        to_control(
            &mut pipe,
            &meta.replica,
            &[("op", "stop"), ("message", &message), ("reply", &reply)],
        );
        pipe.exec_async(&mut conn).await?;
        // A blocking pop of its own: the shared connection must not wait behind it.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(STOP_WAIT_SECS + 5)));
        let mut waiting = self
            .bus
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let answer: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&reply)
            .arg(STOP_WAIT_SECS)
            .query_async(&mut waiting)
            .await?;
        Ok(answer.is_some_and(|(_, stopped)| stopped == "1"))
    }
}

/// A live answer's hash.
struct Meta {
    identity: AnswerIdentity,
    replica: String,
    owner: Option<String>,
}

impl Meta {
    fn parse(message: MessageId, fields: &HashMap<String, String>) -> Option<Self> {
        Some(Self {
            identity: AnswerIdentity {
                conversation_id: ConversationId::parse(fields.get("conversation")?).ok()?,
                message_id: message,
                parent_id: MessageId::parse(fields.get("parent")?).ok()?,
                model: fields.get("model")?.clone(),
                create_time: fields.get("created")?.parse().ok()?,
            },
            replica: fields.get("replica")?.clone(),
            owner: fields.get("owner").cloned(),
        })
    }
}

/// The end of a mirror nobody reads any more: nobody sees it.
fn detached() -> End {
    End {
        status: Status::FinishedPartialCompletion,
        finish: FinishType::Interrupted,
        error: None,
        usage: None,
    }
}

fn end_of(error: &ApiError) -> End {
    End {
        status: Status::Error,
        finish: FinishType::Interrupted,
        error: Some(error.into()),
        usage: None,
    }
}

/// An end as the stream carries it.
fn encode_end(end: &End) -> String {
    json!({
        "status": end.status.as_str(),
        "finish": end.finish.as_str(),
        "error": end.error.as_ref().map(|e| &e.object),
        "http_status": end.error.as_ref().map(|e| e.status.as_u16()),
        "usage": end.usage,
    })
    .to_string()
}

fn decode_end(raw: &str) -> Option<End> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let error = match &value["error"] {
        serde_json::Value::Null => None,
        object => Some(ErrorBody {
            status: value["http_status"]
                .as_u64()
                .and_then(|s| StatusCode::from_u16(s as u16).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            object: object.clone(),
            retry_after: None,
        }),
    };
    Some(End {
        status: Status::parse(value["status"].as_str()?)?,
        finish: FinishType::parse(value["finish"].as_str()?)?,
        error,
        usage: serde_json::from_value::<Option<Usage>>(value["usage"].clone()).ok()?,
    })
}

/// What went wrong with the stream a follower reads.
enum Broken {
    Redis(RedisError),
    /// An entry that is not the next chunk or the end.
    Gap(String),
}

impl From<RedisError> for Broken {
    fn from(e: RedisError) -> Self {
        Broken::Redis(e)
    }
}

/// An answer of another replica that readers here follow: what has been fed into its
/// mirror so far.
struct Follower {
    message: MessageId,
    identity: AnswerIdentity,
    replica: String,
    /// Chunks taken so far.
    chunks: u64,
    ended: bool,
    producer: Box<dyn Producer>,
    /// When it last took an entry, or its replica's lease was last looked at.
    heard: Instant,
    /// When its readers last got a keep-alive (or a chunk).
    beat: Instant,
    /// When it last told the generating replica that readers here follow the answer.
    told: Option<Instant>,
}

impl Follower {
    /// Takes entries into the mirror, in order.
    fn take(&mut self, entries: Vec<StreamId>) -> Result<(), Broken> {
        for entry in entries {
            if self.ended {
                break;
            }
            let position = entry.id.strip_prefix("0-").and_then(|n| n.parse::<u64>().ok());
            if position != Some(self.chunks + 1) {
                return Err(Broken::Gap(format!(
                    "entry {} where chunk {} was due",
                    entry.id,
                    self.chunks + 1
                )));
            }
            let field = |name: &str| match entry.map.get(name) {
                Some(Value::BulkString(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            };
            if let Some(end) = field("end") {
                let end = decode_end(&end).ok_or_else(|| Broken::Gap(format!("an unreadable end: {end}")))?;
                self.producer.finish(end);
                self.ended = true;
                break;
            }
            let (text, reasoning) = (field("t").unwrap_or_default(), field("r").unwrap_or_default());
            self.producer.append(&text, &reasoning);
            self.chunks += 1;
            self.beat = Instant::now();
        }
        Ok(())
    }

    /// Takes entries, or ends the mirror's readers with `bus_failed` when they do not follow.
    fn take_or_fail(&mut self, entries: Vec<StreamId>) {
        if let Err(broken) = self.take(entries) {
            self.fail(broken);
        }
    }

    /// Ends the mirror's readers with `bus_failed`.
    fn fail(&mut self, broken: Broken) {
        let why = match broken {
            Broken::Redis(e) => e.to_string(),
            Broken::Gap(why) => why,
        };
        log::warn!("answer {}: the bus failed: {why}", self.message);
        self.producer.finish(end_of(&ApiError::Bus(why)));
        self.ended = true;
    }

    /// The generating replica is dead: ends the answer for it with `gateway_stopped`, on
    /// the store (if it is still in progress there) and on the bus, with all the text the
    /// bus has. Another replica may be doing the same: the first end on the stream counts.
    async fn end_for_the_dead(&mut self, bus: &Bus) -> Result<(), Broken> {
        let mut conn = bus.conn.clone();
        // Whatever came just before the death.
        let rest: StreamRangeReply = redis::cmd("XRANGE")
            .arg(frames_key(self.message))
            .arg(format!("0-{}", self.chunks + 1))
            .arg("+")
            .query_async(&mut conn)
            .await?;
        self.take(rest.ids)?;
        if self.ended {
            return Ok(());
        }
        let end = end_of(&ApiError::ReplicaStopped);
        let snapshot = self.producer.snapshot();
        self.store_end(&*bus.store, snapshot, &end).await;
        let added: Result<Value, RedisError> = redis::cmd("XADD")
            .arg(frames_key(self.message))
            .arg(format!("0-{}", self.chunks + 1))
            .arg("end")
            .arg(encode_end(&end))
            .query_async(&mut conn)
            .await;
        match added {
            // Another replica ended it first (its end is read next).
            Err(e) if e.to_string().contains("equal or smaller") => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => {
                let mut pipe = redis::pipe();
                ended_keys(&mut pipe, &self.identity);
                let _: Result<(), RedisError> = pipe.exec_async(&mut conn).await;
                log::warn!(
                    "answer {}: its replica {} stopped before it was finished; ended for it",
                    self.message,
                    self.replica
                );
                self.producer.finish(end);
                self.ended = true;
                Ok(())
            }
        }
    }

    /// Stores a dead replica's answer as ended, with `snapshot`, unless it has ended there.
    /// (`&mut`: the follower is not shared, so it need not be `Sync` across the wait.)
    async fn store_end(&mut self, store: &dyn Store, snapshot: Snapshot, end: &End) {
        let id = self.identity.conversation_id;
        let in_progress = match store.conversation(id).await {
            Ok(c) => c.is_some_and(|c| c.message(self.message).is_some_and(|m| m.status == Status::InProgress)),
            Err(e) => {
                log::error!("answer {}: not ended in the store: {e}", self.message);
                return;
            }
        };
        if !in_progress {
            return;
        }
        let update = AnswerUpdate {
            conversation_id: id,
            id: self.message,
            content: snapshot.text,
            chunk_ends: snapshot.chunk_ends,
            reasoning: snapshot.reasoning,
            reasoning_ends: snapshot.reasoning_ends,
            usage: None,
            status: end.status,
            finish: Some(end.finish),
            error: end.error.as_ref().map(|e| e.object.clone()),
        };
        if let Err(e) = store.update_answer(update).await {
            log::error!("answer {}: not ended in the store: {e}", self.message);
        }
    }
}

/// Feeds the mirrors of the answers first followed on one thread, from one connection: one
/// `XREAD` for all of their streams, blocking up to [`BLOCK`] when none has anything new.
/// One per thread that serves requests (actix-web's workers, one per core), so that a
/// chunk reaches the mirror, and the reader that made it, without leaving the thread (a
/// single task on a thread apart cost a lone reader's chunks a third more CPU); the
/// connections to Redis are as many as those threads, however many answers are followed.
/// A new follower wakes a read in progress (`CLIENT UNBLOCK` from another connection), so
/// that its chunks are not held back by the others' wait. Between reads it looks after
/// each follower: a mirror without readers ends, readers waiting for a first token get
/// keep-alives, the generating replicas hear that readers here follow their answers, and
/// an answer silent for [`LOOK_EVERY`] has its replica's lease looked at. A read that
/// fails is tried once more on a new connection (the old one may have gone stale while
/// idle, Redis restarted) before the followers end with `bus_failed`.
async fn follow_loop(
    bus: Arc<Bus>,
    following: Arc<tokio::sync::Mutex<HashSet<MessageId>>>,
    mut new: mpsc::UnboundedReceiver<Follower>,
) {
    // by stream key
    let mut followed: HashMap<String, Follower> = HashMap::new();
    // the connection that blocks, and its client id for `CLIENT UNBLOCK`
    let mut reading: Option<(MultiplexedConnection, i64)> = None;
    let mut open = true;
    let mut failed_once = false;
    loop {
        if followed.is_empty() {
            match new.recv().await {
                Some(follower) => followed.insert(frames_key(follower.message), follower),
                None => return,
            };
        }
        while let Ok(follower) = new.try_recv() {
            followed.insert(frames_key(follower.message), follower);
        }
        tend(&bus, &following, &mut followed).await;
        if followed.is_empty() {
            if !open {
                return;
            }
            continue;
        }
        if reading.is_none() {
            match reading_connection(&bus.client).await {
                Ok(r) => reading = Some(r),
                Err(e) => {
                    failed_once = false;
                    let why = e.to_string();
                    for follower in followed.values_mut() {
                        follower.fail(Broken::Gap(why.clone()));
                    }
                    continue;
                }
            }
        }
        let Some((conn, id)) = reading.as_ref().map(|(c, id)| (c.clone(), *id)) else {
            continue;
        };
        let mut woken = Vec::new();
        let reply = {
            let read = read_all(&followed);
            let mut conn = conn;
            let mut read = std::pin::pin!(read.query_async::<Option<StreamReadReply>>(&mut conn));
            loop {
                tokio::select! {
                    reply = &mut read => break reply,
                    follower = new.recv(), if open => match follower {
                        Some(follower) => {
                            woken.push(follower);
                            unblock(&bus, id).await;
                        }
                        None => open = false,
                    },
                    // the read may not have reached Redis when it was woken
                    () = tokio::time::sleep(Duration::from_millis(20)), if !woken.is_empty() => unblock(&bus, id).await,
                }
            }
        };
        match reply {
            Ok(Some(reply)) => {
                failed_once = false;
                let now = Instant::now();
                for key in reply.keys {
                    if let Some(follower) = followed.get_mut(&key.key) {
                        follower.heard = now;
                        follower.take_or_fail(key.ids);
                    }
                }
            }
            Ok(None) => failed_once = false,
            Err(e) => {
                // the connection is not used again
                reading = None;
                if failed_once {
                    let why = e.to_string();
                    for follower in followed.values_mut() {
                        follower.fail(Broken::Gap(why.clone()));
                    }
                } else {
                    log::debug!("the bus's reading connection failed ({e}): a new one");
                }
                failed_once = !failed_once;
            }
        }
        for follower in woken {
            followed.insert(frames_key(follower.message), follower);
        }
    }
}

async fn reading_connection(client: &Client) -> Result<(MultiplexedConnection, i64), RedisError> {
    let mut conn = connection(client).await?;
    let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
    Ok((conn, id))
}

/// The `XREAD` of the entries after each follower's last chunk.
fn read_all(followed: &HashMap<String, Follower>) -> redis::Cmd {
    let mut read = redis::cmd("XREAD");
    read.arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS");
    for key in followed.keys() {
        read.arg(key);
    }
    for follower in followed.values() {
        read.arg(format!("0-{}", follower.chunks));
    }
    read
}

/// Ends the blocking read of the client `id` at once, as if it had timed out.
async fn unblock(bus: &Bus, id: i64) {
    let mut conn = bus.conn.clone();
    let unblocked: Result<i64, RedisError> = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async(&mut conn).await;
    if let Err(e) = unblocked {
        log::debug!("the bus's reading connection could not be woken: {e}");
    }
}

/// Looks after each follower between reads (see [`follow_loop`]); those that ended leave.
async fn tend(bus: &Bus, following: &tokio::sync::Mutex<HashSet<MessageId>>, followed: &mut HashMap<String, Follower>) {
    let now = Instant::now();
    let waker = futures::task::noop_waker();
    let mut unread = Vec::new();
    for (key, follower) in followed.iter_mut().filter(|(_, f)| !f.ended) {
        if let Poll::Ready(Signal::Shutdown) = follower.producer.poll_signal(&mut Context::from_waker(&waker)) {
            follower.producer.finish(end_of(&ApiError::Stopping));
            follower.ended = true;
        } else if follower.producer.readers() == 0 {
            unread.push(key.clone());
        } else if follower.chunks == 0 && now.duration_since(follower.beat) >= bus.heartbeat {
            follower.producer.heartbeat();
            follower.beat = now;
        }
    }
    if !unread.is_empty() {
        let mut following = following.lock().await;
        // Looked at again with the set held: no reader can come in meanwhile.
        for key in unread {
            if followed.get(&key).is_some_and(|f| f.producer.readers() == 0)
                && let Some(mut follower) = followed.remove(&key)
            {
                following.remove(&follower.message);
                follower.producer.finish(detached());
            }
        }
    }
    tell_watching(bus, followed, now).await;
    look_at_leases(bus, followed, now).await;
    let ended: Vec<String> = followed
        .iter()
        .filter(|(_, f)| f.ended)
        .map(|(key, _)| key.clone())
        .collect();
    if !ended.is_empty() {
        let mut following = following.lock().await;
        for key in ended {
            if let Some(follower) = followed.remove(&key) {
                following.remove(&follower.message);
            }
        }
    }
}

/// Tells the generating replicas, every [`WATCH_EVERY`], that readers here follow their
/// answers: one pipeline for all.
async fn tell_watching(bus: &Bus, followed: &mut HashMap<String, Follower>, now: Instant) {
    let mut pipe = redis::pipe();
    let mut telling = 0;
    for follower in followed.values_mut().filter(|f| !f.ended) {
        if follower.told.is_some_and(|at| now.duration_since(at) < WATCH_EVERY) {
            continue;
        }
        follower.told = Some(now);
        telling += 1;
        let message = follower.message.to_string();
        to_control(&mut pipe, &follower.replica, &[("op", "watch"), ("message", &message)]);
    }
    if telling == 0 {
        return;
    }
    if let Err(e) = pipe.exec_async(&mut bus.conn.clone()).await {
        log::debug!("the replicas generating {telling} answer(s) could not be told of readers here: {e}");
    }
}

/// For each answer silent for [`LOOK_EVERY`]: is it still on the bus, and is its replica
/// alive? One pipeline for all; an answer whose replica is dead is ended for it.
async fn look_at_leases(bus: &Bus, followed: &mut HashMap<String, Follower>, now: Instant) {
    let silent: Vec<&String> = followed
        .iter()
        .filter(|(_, f)| !f.ended && now.duration_since(f.heard) >= LOOK_EVERY)
        .map(|(key, _)| key)
        .collect();
    if silent.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for key in &silent {
        let follower = &followed[*key];
        pipe.cmd("EXISTS")
            .arg(lease_key(&follower.replica))
            .cmd("EXISTS")
            .arg(frames_key(follower.message))
            .cmd("EXISTS")
            .arg(answer_key(follower.message));
    }
    let silent: Vec<String> = silent.into_iter().cloned().collect();
    let found: Result<Vec<bool>, RedisError> = pipe.query_async(&mut bus.conn.clone()).await;
    let found = match found {
        Ok(found) if found.len() == 3 * silent.len() => found,
        Ok(_) => return,
        Err(e) => {
            let why = e.to_string();
            for key in &silent {
                if let Some(follower) = followed.get_mut(key) {
                    follower.fail(Broken::Gap(why.clone()));
                }
            }
            return;
        }
    };
    for (key, found) in silent.iter().zip(found.chunks(3)) {
        let Some(follower) = followed.get_mut(key) else {
            continue;
        };
        follower.heard = now;
        let (alive, exists, announced) = (found[0], found[1], found[2]);
        // Kept until well after the end: gone, the bus lost them (Redis restarted empty).
        if (!exists && follower.chunks > 0) || !announced {
            follower.fail(Broken::Gap(
                "the answer is gone from the bus (was Redis restarted?)".into(),
            ));
        } else if !alive && let Err(broken) = follower.end_for_the_dead(bus).await {
            follower.fail(broken);
        }
    }
}

/// What makes an ended answer's keys expire, and takes it off its conversation's list.
fn ended_keys(pipe: &mut redis::Pipeline, identity: &AnswerIdentity) {
    pipe.cmd("EXPIRE")
        .arg(frames_key(identity.message_id))
        .arg(ENDED_KEPT_SECS)
        .ignore()
        .cmd("EXPIRE")
        .arg(answer_key(identity.message_id))
        .arg(ENDED_KEPT_SECS)
        .ignore()
        .cmd("ZREM")
        .arg(live_key(identity.conversation_id))
        .arg(identity.message_id.to_string())
        .ignore();
}

/// Takes or renews the replica's lease.
fn lease(pipe: &mut redis::Pipeline, replica: &str) {
    pipe.cmd("SET")
        .arg(lease_key(replica))
        .arg(1)
        .arg("PX")
        .arg(LEASE_LASTS.as_millis() as u64)
        .ignore();
}

async fn renew_lease(conn: &mut ConnectionManager, replica: &str) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    lease(&mut pipe, replica);
    pipe.exec_async(conn).await
}

/// Renews the lease, and forgets readers elsewhere that lapsed, until the replica's
/// registry is gone.
async fn keep_lease(bus: std::sync::Weak<Bus>) {
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tick.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        let mut conn = bus.conn.clone();
        if let Err(e) = renew_lease(&mut conn, &bus.replica).await {
            log::warn!("replica {}: the bus lease was not renewed: {e}", bus.replica);
        }
        let now = Instant::now();
        locked(&bus.watched).retain(|_, (_, until)| *until > now);
    }
}

/// Reads the replica's control stream: stop requests and readers elsewhere.
async fn control_loop(
    bus: std::sync::Weak<Bus>,
    own: std::sync::Weak<LocalGenerations>,
    mut conn: MultiplexedConnection,
) {
    let mut last = "0-0".to_owned();
    loop {
        let (Some(bus), Some(own)) = (bus.upgrade(), own.upgrade()) else {
            return;
        };
        let read: Result<Option<StreamReadReply>, RedisError> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(control_key(&bus.replica))
            .arg(&last)
            .query_async(&mut conn)
            .await;
        let entries: Vec<StreamId> = match read {
            Ok(reply) => reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default(),
            Err(e) => {
                log::warn!("replica {}: the control stream could not be read: {e}", bus.replica);
                let client = bus.client.clone();
                drop((bus, own));
                tokio::time::sleep(Duration::from_millis(500)).await;
                // A connection of its own does not come back by itself (Redis restarted).
                if let Ok(again) = connection(&client).await {
                    conn = again;
                }
                continue;
            }
        };
        for entry in entries {
            last = entry.id.clone();
            let get = |name: &str| entry.get::<String>(name);
            let Some(message) = get("message").and_then(|m| MessageId::parse(&m).ok()) else {
                continue;
            };
            match get("op").as_deref() {
                Some("watch") => {
                    let mut watched = locked(&bus.watched);
                    let until = Instant::now() + WATCH_LASTS;
                    match watched.get_mut(&message) {
                        Some(watch) => watch.1 = until,
                        None => {
                            if let Some(watch) = own.watch(message) {
                                watched.insert(message, (watch, until));
                            }
                        }
                    }
                }
                Some("stop") => {
                    let Some(reply) = get("reply") else { continue };
                    let (own, mut conn) = (Arc::clone(&own), bus.conn.clone());
                    tokio::spawn(async move {
                        let stopped = stop_here(&own, message).await;
                        let answered: Result<(), RedisError> = redis::pipe()
                            .cmd("LPUSH")
                            .arg(&reply)
                            .arg(if stopped { "1" } else { "0" })
                            .ignore()
                            .cmd("EXPIRE")
                            .arg(&reply)
                            .arg(60)
                            .ignore()
                            .exec_async(&mut conn)
                            .await;
                        if let Err(e) = answered {
                            log::warn!("answer {message}: a stop from another replica was not answered: {e}");
                        }
                    });
                }
                _ => {}
            }
        }
    }
}

/// Stops this replica's answer `message`, whatever its conversation.
async fn stop_here(own: &LocalGenerations, message: MessageId) -> bool {
    match own.conversation_of(message) {
        Some(conversation) => {
            own.stop(Target {
                conversation,
                message: Some(message),
            })
            .await
        }
        None => false,
    }
}

/// Sends the chunks and ends of this replica's answers, a pipeline at a time.
async fn write(
    mut conn: ConnectionManager,
    mut queue: mpsc::UnboundedReceiver<Write>,
    queued: Arc<AtomicUsize>,
    counters: BusCounters,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let (mut bytes, mut chunks) = (0, 0);
        for write in batch.drain(..) {
            match write {
                Write::Chunk {
                    message,
                    n,
                    text,
                    reasoning,
                } => {
                    bytes += text.len() + reasoning.len();
                    chunks += 1;
                    let command = pipe
                        .cmd("XADD")
                        .arg(frames_key(message))
                        .arg(format!("0-{n}"))
                        .arg("t")
                        .arg(text);
                    if !reasoning.is_empty() {
                        command.arg("r").arg(reasoning);
                    }
                    command.ignore();
                }
                Write::End { identity, n, end } => {
                    pipe.cmd("XADD")
                        .arg(frames_key(identity.message_id))
                        .arg(format!("0-{n}"))
                        .arg("end")
                        .arg(end)
                        .ignore();
                    ended_keys(&mut pipe, &identity);
                }
            }
        }
        let sent = pipe.exec_async(&mut conn).await;
        queued.fetch_sub(bytes, Ordering::Relaxed);
        counters.round_trips.inc();
        counters.chunks.inc_by(chunks);
        if let Err(e) = sent {
            counters.failed.inc();
            log::warn!("the bus did not take a batch of chunks: {e}");
        }
    }
}

/// One of this replica's answers: its own registry's, with every chunk and the end also
/// sent to the bus.
struct BusProducer {
    local: Box<dyn Producer>,
    identity: AnswerIdentity,
    chunks: u64,
    writes: Writes,
    /// Chunks were left off the bus (logged once).
    left_off: bool,
}

impl Producer for BusProducer {
    fn append(&mut self, text: &str, reasoning: &str) {
        self.local.append(text, reasoning);
        self.chunks += 1;
        if !self
            .writes
            .chunk(self.identity.message_id, self.chunks, text, reasoning)
            && !self.left_off
        {
            self.left_off = true;
            log::warn!(
                "answer {}: chunks left off the bus from chunk {}, as it is not keeping up: readers on other replicas end with bus_failed",
                self.identity.message_id,
                self.chunks
            );
        }
    }

    fn heartbeat(&mut self) {
        self.local.heartbeat();
    }

    fn finish(&mut self, end: End) {
        self.writes.end(&self.identity, self.chunks + 1, &end);
        self.local.finish(end);
    }

    fn snapshot(&self) -> Snapshot {
        self.local.snapshot()
    }

    fn readers(&self) -> usize {
        self.local.readers()
    }

    fn poll_signal(&mut self, cx: &mut Context<'_>) -> Poll<Signal> {
        self.local.poll_signal(cx)
    }
}

#[async_trait]
impl Generations for BusGenerations {
    async fn start(&self, identity: AnswerIdentity, owner: Option<String>, never_alone: bool) -> Box<dyn Producer> {
        let (message, conversation) = (identity.message_id, identity.conversation_id);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(answer_key(message))
            .arg("conversation")
            .arg(conversation.to_string())
            .arg("replica")
            .arg(&self.bus.replica)
            .arg("parent")
            .arg(identity.parent_id.to_string())
            .arg("model")
            .arg(&identity.model)
            .arg("created")
            .arg(identity.create_time.to_string())
            .ignore();
        if let Some(owner) = &owner {
            pipe.cmd("HSET")
                .arg(answer_key(message))
                .arg("owner")
                .arg(owner)
                .ignore();
        }
        pipe.cmd("EXPIRE")
            .arg(answer_key(message))
            .arg(LIVE_KEPT_SECS)
            .ignore()
            .cmd("ZADD")
            .arg(live_key(conversation))
            .arg(identity.create_time)
            .arg(message.to_string())
            .ignore()
            .cmd("EXPIRE")
            .arg(live_key(conversation))
            .arg(LIVE_KEPT_SECS)
            .ignore();
        // The lease too: after a Redis restart, which loses it, a new answer must not look
        // like a dead replica's to readers elsewhere until the next renewal.
        lease(&mut pipe, &self.bus.replica);
        let mut conn = self.bus.conn.clone();
        // Before the answer's first chunk, and before a 202 names it: a reader on another
        // replica finds it as soon as its client knows of it.
        if let Err(e) = pipe.exec_async(&mut conn).await {
            log::warn!("answer {message}: not announced on the bus, so only this replica can follow it: {e}");
        }
        let local = self.own.start(identity.clone(), owner, never_alone).await;
        Box::new(BusProducer {
            local,
            identity,
            chunks: 0,
            writes: self.bus.writes.clone(),
            left_off: false,
        })
    }

    async fn newest(&self, conversation: ConversationId) -> Option<LiveAnswer> {
        if let Some(live) = self.own.newest(conversation).await {
            return Some(live);
        }
        let target = Target {
            conversation,
            message: None,
        };
        match self.find(target).await {
            Ok(found) => found.map(|(message, meta)| LiveAnswer {
                message,
                owner: meta.owner,
            }),
            Err(e) => {
                log::warn!("conversation {conversation}: the bus could not be asked for its live answer: {e}");
                None
            }
        }
    }

    async fn subscribe(&self, target: Target, from: ReadFrom) -> Option<Reader> {
        if let Some(reader) = self.own.subscribe(target, from).await {
            return Some(reader);
        }
        match self.follow(target, from).await {
            Ok(reader) => reader,
            Err(e) => {
                log::warn!("conversation {}: the bus could not be read: {e}", target.conversation);
                None
            }
        }
    }

    async fn stop(&self, target: Target) -> bool {
        if self.own.is_live(target) {
            return self.own.stop(target).await;
        }
        match self.stop_elsewhere(target).await {
            Ok(stopped) => stopped,
            Err(e) => {
                log::warn!(
                    "conversation {}: a stop could not be sent over the bus: {e}",
                    target.conversation
                );
                false
            }
        }
    }

    fn shutdown(&self) {
        self.own.shutdown();
        self.mirrors.shutdown();
    }

    fn live(&self) -> usize {
        self.own.live()
    }

    async fn drained(&self) {
        self.own.drained().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        assert_eq!(describe("redis://:s3cret@cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(describe("redis://me:s3cret@cache:6379/0"), "redis://me@cache:6379/0");
        assert_eq!(describe("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn an_end_crosses_the_bus_unchanged() {
        let end = End {
            status: Status::Error,
            finish: FinishType::Interrupted,
            error: Some((&ApiError::ReplicaStopped).into()),
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 9,
            }),
        };
        let back = decode_end(&encode_end(&end)).unwrap();
        assert_eq!(back.status, Status::Error);
        assert_eq!(back.finish, FinishType::Interrupted);
        assert_eq!(back.usage, end.usage);
        let error = back.error.unwrap();
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.object["code"], "gateway_stopped");
        let ok = decode_end(&encode_end(&detached())).unwrap();
        assert!(ok.error.is_none() && ok.usage.is_none());
    }
}
