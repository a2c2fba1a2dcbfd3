//! chatgate: an AI chat streaming gateway.
//!
//! Where a token goes: `routes/conv.rs` takes the turn, `turn.rs` resolves it against the
//! stored conversation (`conversation/`), `upstream/openai.rs` streams the upstream's
//! answer (decoded by `upstream/sse_decode.rs`), `relay.rs` turns each delta into a
//! frame (`sse.rs`) that the response body (`live.rs`) sends at the client's pace,
//! and stores the answer.

pub mod config;
pub mod conversation;
pub mod error;
pub mod live;
pub mod prompts;
pub mod relay;
pub mod routes;
pub mod sse;
pub mod startup;
pub mod turn;
pub mod upstream;
