//! The answers `/v1` relays straight from the upstream. They are no generations (nothing is
//! stored, nobody else can follow one), but a shutdown treats them as it treats generations:
//! it lets them finish for the shutdown grace, then ends each with an in-band
//! `gateway_stopping` error before the server stops.

use std::sync::Arc;
use tokio::sync::watch;

pub struct Relays {
    /// How many are running.
    live: watch::Sender<usize>,
    /// Set when the shutdown grace is over: every running one ends now.
    ending: watch::Sender<bool>,
}

impl Relays {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            live: watch::channel(0).0,
            ending: watch::channel(false).0,
        })
    }

    /// Counts a relayed answer as running until the returned [`Relayed`] is dropped.
    pub fn start(self: &Arc<Self>) -> Relayed {
        self.live.send_modify(|n| *n += 1);
        Relayed {
            relays: Arc::clone(self),
            ending: self.ending.subscribe(),
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
        self.ending.send_replace(true);
    }
}

/// One running relayed answer.
pub struct Relayed {
    relays: Arc<Relays>,
    ending: watch::Receiver<bool>,
}

impl Relayed {
    /// Resolves when the answer must end because the gateway is stopping.
    pub async fn ended(&mut self) {
        // The sender lives in `self.relays`: waiting cannot fail.
        let _ = self.ending.wait_for(|ending| *ending).await;
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
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
