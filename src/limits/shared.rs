//! Limits shared by the replicas on a bus: each client's turns and live answers are
//! counted in Redis, so that a client counts once whichever replica it reaches.
//!
//! - `chatgate:turns:{client}`: the client's turns of the last minute, a sorted set by
//!   Redis's own clock (the replicas' clocks may differ);
//! - `chatgate:streams:{client}`: the client's live answers, each named by the replica
//!   running it: an answer of a replica whose lease lapsed (it died) stops counting.
//!
//! Each check is one script, so two replicas cannot both take the last place. While Redis
//! cannot be reached, each replica counts on its own (and logs it): the limits loosen to
//! one count per replica rather than refusing every turn.

use super::{Limiter, LocalLimiter, StreamSlot};
use crate::config::ClientLimits;
use crate::error::ApiError;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

/// Counts a turn unless the client has `ARGV[1]` in the last minute; returns -1 when
/// counted, else the milliseconds until the oldest leaves the window.
const TURNS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + 60000 - now
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return -1
";

/// Adds live answer `ARGV[2]` (`replica/id`) unless the client has `ARGV[1]` on replicas
/// that are alive; returns 1 when added.
const STREAMS: &str = r"
local live = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local replica = string.match(member, '^([^/]*)/')
  if replica and redis.call('EXISTS', 'chatgate:replica:' .. replica) == 1 then
    live = live + 1
  else
    redis.call('SREM', KEYS[1], member)
  end
end
if live >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], 86400)
return 1
";

/// The [`Limiter`] of a replica on a bus.
pub struct SharedLimiter {
    limits: ClientLimits,
    conn: ConnectionManager,
    replica: String,
    turns: Script,
    streams: Script,
    /// Counts while Redis cannot be reached.
    fallback: LocalLimiter,
}

impl SharedLimiter {
    /// Limits counted on the bus `conn` joins, by replica `replica` (whose lease is
    /// `chatgate:replica:{replica}`).
    pub fn new(limits: ClientLimits, conn: ConnectionManager, replica: String) -> Self {
        Self {
            limits,
            conn,
            replica,
            turns: Script::new(TURNS),
            streams: Script::new(STREAMS),
            fallback: LocalLimiter::new(limits),
        }
    }
}

/// A live answer's place on the bus: given back on drop.
struct SharedSlot {
    conn: ConnectionManager,
    key: String,
    member: String,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        let (mut conn, key, member) = (
            self.conn.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        // Dropped by an answer's task, on a runtime; if not (the process is ending), the
        // place lapses with this replica's lease.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let given_back: Result<(), RedisError> =
                    redis::cmd("SREM").arg(&key).arg(&member).exec_async(&mut conn).await;
                if let Err(e) = given_back {
                    log::warn!("a live answer's place in {key} was not given back (it lapses with this replica): {e}");
                }
            });
        }
    }
}

#[async_trait::async_trait]
impl Limiter for SharedLimiter {
    async fn stream_slot(&self, client: &str) -> Result<Option<StreamSlot>, ApiError> {
        let Some(limit) = self.limits.streams else {
            return Ok(None);
        };
        let key = format!("chatgate:streams:{client}");
        let member = format!("{}/{}", self.replica, uuid::Uuid::new_v4());
        let mut conn = self.conn.clone();
        let taken: Result<i64, RedisError> = self
            .streams
            .key(&key)
            .arg(limit)
            .arg(&member)
            .invoke_async(&mut conn)
            .await;
        match taken {
            Ok(1) => Ok(Some(Box::new(SharedSlot { conn, key, member }))),
            Ok(_) => Err(ApiError::TooManyStreams(limit)),
            Err(e) => {
                log::warn!("the bus cannot count live answers ({e}): this replica counts its own");
                self.fallback.take_slot(client)
            }
        }
    }

    async fn count_turn(&self, client: &str) -> Result<(), ApiError> {
        let Some(limit) = self.limits.turns_per_minute else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        let counted: Result<i64, RedisError> = self
            .turns
            .key(format!("chatgate:turns:{client}"))
            .arg(limit)
            .arg(uuid::Uuid::new_v4().to_string())
            .invoke_async(&mut conn)
            .await;
        match counted {
            Ok(-1) => Ok(()),
            Ok(wait_ms) => Err(ApiError::RateLimited {
                limit,
                retry_after: (wait_ms.max(1) as u64).div_ceil(1000),
            }),
            Err(e) => {
                log::warn!("the bus cannot count turns ({e}): this replica counts its own");
                self.fallback.count_turn(client).await
            }
        }
    }
}
