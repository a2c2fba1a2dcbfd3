//! The answers `/v1` relays straight from the upstream. They are no generations (nothing is
//! stored, nobody else can follow one), but a shutdown treats them as it treats generations:
//! it lets them finish for the shutdown grace, then ends each with an in-band
//! `gateway_stopping` error before the server stops.

use futures::task::AtomicWaker;
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::watch;

pub struct Relays {
    /// How many are running.
    live: watch::Sender<usize>,
    /// The end signal of each running one, by a number of its own.
    running: Mutex<HashMap<u64, Arc<Ending>>>,
    next: AtomicU64,
    /// Set when the shutdown grace is over: every running one ends now, and any that
    /// starts later ends at once.
    ending: AtomicBool,
}

/// One relayed answer's end signal: a flag and the waker of the task that reads it, so
/// that looking at it (on every piece of the answer) is a load, not a lock.
#[derive(Default)]
struct Ending {
    set: AtomicBool,
    reader: AtomicWaker,
}

impl Relays {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            live: watch::channel(0).0,
            running: Mutex::default(),
            next: AtomicU64::new(0),
            ending: AtomicBool::new(false),
        })
    }

    fn running(&self) -> MutexGuard<'_, HashMap<u64, Arc<Ending>>> {
        // Inserts and removes only: the map behind a poisoned lock is whole.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a relayed answer as running until the returned [`Relayed`] is dropped.
    pub fn start(self: &Arc<Self>) -> Relayed {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let ending = Arc::new(Ending::default());
        self.running().insert(id, Arc::clone(&ending));
        // Looked at after it is listed: `end_all` either sees it or has set the flag.
        if self.ending.load(Ordering::SeqCst) {
            ending.set.store(true, Ordering::SeqCst);
        }
        self.live.send_modify(|n| *n += 1);
        Relayed {
            relays: Arc::clone(self),
            id,
            ending,
        }
    }

    pub fn live(&self) -> usize {
        *self.live.borrow()
    }

    /// Resolves once none is running.
    pub async fn drained(&self) {
        let mut live = self.live.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// Ends every running one (each sees [`Relayed::ended`] resolve).
    pub fn end_all(&self) {
        self.ending.store(true, Ordering::SeqCst);
        for ending in self.running().values() {
            ending.set.store(true, Ordering::SeqCst);
            ending.reader.wake();
        }
    }
}

/// One running relayed answer.
pub struct Relayed {
    relays: Arc<Relays>,
    id: u64,
    ending: Arc<Ending>,
}

impl Relayed {
    /// Resolves when the answer must end because the gateway is stopping.
    pub async fn ended(&mut self) {
        poll_fn(|cx| self.poll_ended(cx)).await
    }

    /// Ready once the answer must end because the gateway is stopping.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let ending = &self.ending;
        if ending.set.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        ending.reader.register(cx.waker());
        match ending.set.load(Ordering::SeqCst) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.relays.running().remove(&self.id);
        self.relays.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drained_waits_for_the_last_one_and_end_all_reaches_every_one() {
        let relays = Relays::new();
        let mut one = relays.start();
        let two = relays.start();
        assert_eq!(relays.live(), 2);
        let still_running = tokio::time::timeout(Duration::from_millis(20), relays.drained()).await;
        assert!(still_running.is_err());
        relays.end_all();
        one.ended().await;
        drop((one, two));
        relays.drained().await;
        assert_eq!(relays.live(), 0);
    }
}
