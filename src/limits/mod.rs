//! Per-client limits: turns per sliding minute, and live answers at once. In-process
//! behind [`Limiter`]; replicas on a bus share theirs through Redis (`shared`).

pub mod shared;

use crate::config::ClientLimits;
use crate::error::ApiError;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Held by a running answer; dropping it (the answer ended) frees the client's slot.
pub type StreamSlot = Box<dyn Send + Sync>;

#[async_trait::async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Takes one of `client`'s live-answer slots, or refuses (`TooManyStreams`).
    async fn stream_slot(&self, client: &str) -> Result<Option<StreamSlot>, ApiError>;
    /// Counts a turn, or refuses it (`RateLimited`, not counted).
    async fn count_turn(&self, client: &str) -> Result<(), ApiError>;
}

/// The in-process [`Limiter`]. Its memory is bounded by the clients active in the last
/// minute and those with live answers: the others are forgotten.
pub struct LocalLimiter {
    limits: ClientLimits,
    turns: Mutex<Turns>,
    streams: Arc<Mutex<HashMap<String, u32>>>,
}

#[derive(Default)]
struct Turns {
    by_client: HashMap<String, VecDeque<Instant>>,
    swept: Option<Instant>,
}

impl LocalLimiter {
    pub fn new(limits: ClientLimits) -> Self {
        Self {
            limits,
            turns: Mutex::new(Turns::default()),
            streams: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        // Each update is a few map operations that cannot panic halfway.
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_turn_at(&self, client: &str, now: Instant) -> Result<(), ApiError> {
        let Some(limit) = self.limits.turns_per_minute else {
            return Ok(());
        };
        let mut turns = self.turns();
        // Now and then, forget every client whose window has emptied.
        if turns.swept.is_none_or(|at| now.duration_since(at) >= WINDOW) {
            turns.by_client.retain(|_, times| {
                expire(times, now);
                !times.is_empty()
            });
            turns.swept = Some(now);
        }
        let times = turns.by_client.entry(client.to_owned()).or_default();
        expire(times, now);
        if times.len() >= limit as usize {
            let oldest = times.front().copied().unwrap_or(now);
            let left = (oldest + WINDOW).saturating_duration_since(now);
            return Err(ApiError::RateLimited {
                limit,
                retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        times.push_back(now);
        Ok(())
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant) {
    while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        times.pop_front();
    }
}

fn lock(streams: &Mutex<HashMap<String, u32>>) -> MutexGuard<'_, HashMap<String, u32>> {
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live answer's slot: given back on drop.
struct Slot {
    client: String,
    streams: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut streams = lock(&self.streams);
        if let Some(n) = streams.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.client);
            }
        }
    }
}

impl LocalLimiter {
    /// [`Limiter::stream_slot`], without a wait.
    pub fn take_slot(&self, client: &str) -> Result<Option<StreamSlot>, ApiError> {
        let Some(limit) = self.limits.streams else {
            return Ok(None);
        };
        let mut streams = lock(&self.streams);
        let live = streams.entry(client.to_owned()).or_insert(0);
        if *live >= limit {
            return Err(ApiError::TooManyStreams(limit));
        }
        *live += 1;
        Ok(Some(Box::new(Slot {
            client: client.to_owned(),
            streams: Arc::clone(&self.streams),
        })))
    }
}

#[async_trait::async_trait]
impl Limiter for LocalLimiter {
    async fn stream_slot(&self, client: &str) -> Result<Option<StreamSlot>, ApiError> {
        self.take_slot(client)
    }

    async fn count_turn(&self, client: &str) -> Result<(), ApiError> {
        self.count_turn_at(client, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(turns: Option<u32>, streams: Option<u32>) -> LocalLimiter {
        LocalLimiter::new(ClientLimits {
            turns_per_minute: turns,
            streams,
        })
    }

    #[test]
    fn the_window_slides_and_refused_turns_do_not_count() {
        let l = limiter(Some(2), None);
        let t0 = Instant::now();
        assert!(l.count_turn_at("a", t0).is_ok());
        assert!(l.count_turn_at("a", t0 + Duration::from_secs(20)).is_ok());
        match l.count_turn_at("a", t0 + Duration::from_secs(30)) {
            Err(ApiError::RateLimited { retry_after, .. }) => assert_eq!(retry_after, 30),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(l.count_turn_at("b", t0 + Duration::from_secs(30)).is_ok(), "per client");
        // The first turn has left the window; the refused one never entered it.
        assert!(l.count_turn_at("a", t0 + Duration::from_secs(60)).is_ok());
        assert!(l.count_turn_at("a", t0 + Duration::from_secs(61)).is_err());
    }

    #[test]
    fn clients_with_an_empty_window_are_forgotten() {
        let l = limiter(Some(5), None);
        let t0 = Instant::now();
        for i in 0..100 {
            l.count_turn_at(&format!("c{i}"), t0).unwrap();
        }
        l.count_turn_at("late", t0 + Duration::from_secs(61)).unwrap();
        assert_eq!(l.turns().by_client.len(), 1);
    }

    #[test]
    fn a_stream_slot_is_given_back_when_dropped() {
        let l = limiter(None, Some(1));
        let slot = l.take_slot("a").unwrap();
        assert!(matches!(l.take_slot("a"), Err(ApiError::TooManyStreams(1))));
        assert!(l.take_slot("b").is_ok());
        drop(slot);
        assert!(l.take_slot("a").is_ok());
        assert!(
            lock(&l.streams).is_empty(),
            "nothing kept for clients without live answers"
        );
    }
}
