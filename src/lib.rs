//! chatgate: an AI chat streaming gateway.
//!
//! Where a token goes: `routes/conv.rs` takes the turn, `turn/` resolves it against the
//! stored conversation (`conversation/`) and fits the history, `upstream/openai.rs` streams
//! the upstream's answer (decoded by `upstream/sse_decode.rs`), `generation/runner.rs`
//! appends each chunk to the live generation (`generation/local.rs`), whose readers render
//! frames (`wire/`) at their own pace, and `generation/lane.rs` stores the answer.

pub mod config;
pub mod config_file;
pub mod conversation;
pub mod edge;
pub mod error;
pub mod generation;
pub mod limits;
pub mod metrics;
pub mod prompts;
pub mod relays;
pub mod routes;
pub mod startup;
pub mod state;
pub mod turn;
pub mod upstream;
pub mod wire;
