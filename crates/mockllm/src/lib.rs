//! A mock OpenAI-compatible upstream that speaks the real `/chat/completions` streaming
//! wire format, and Anthropic's `/v1/messages` in its own (a request checked as the real
//! API checks it: `x-api-key`, `anthropic-version`, `max_tokens`, no unknown field). It
//! stands in for the paid LLM in chatgate's Rust tests, browser tests and benchmark, and
//! nothing else.
//!
//! Behaviour is chosen per request, in this order:
//! 1. a [`Script`] queued by the test (in process with [`MockLlm::enqueue`], or over HTTP
//!    with `POST /_mock/script`), which gives the exact bytes to send (and may repeat its
//!    last part forever: an endless answer);
//! 2. directives inside the last user message (`[mock:words=30]`, `[mock:delay=40]`,
//!    `[mock:status=500]`, `[mock:retry-after=7]`, `[mock:error-after=3]`, `[mock:stall]`;
//!    on `/v1/messages` also `[mock:thinking]`, `[mock:tool]`, `[mock:anthropic-overloaded]`,
//!    `[mock:no-stop]` and `[mock:unknown-event]`);
//! 3. the default: `Echo: <the user text>` streamed a word per chunk, 20 ms apart.
//!
//! Every request body is recorded (`GET /_mock/requests`), and every stream is counted as
//! completed or cancelled (`GET /_mock/stats`) so tests can see a gone client's upstream
//! request being dropped.

mod answer;
mod anthropic;
pub mod anthropic_wire;
mod directives;
mod server;
pub mod wire;

pub use answer::{Script, word_chunks};
pub use server::{AnthropicHeaders, MockLlm, Stats};
