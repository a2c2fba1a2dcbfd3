//! One clock for the mock (which stamps chunks) and the clients (which receive them): both
//! live in this process, so their instants compare exactly.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
