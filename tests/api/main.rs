//! Integration tests: the real server on port 0, against the mock upstream (crates/mockllm)
//! speaking OpenAI's exact streaming format, driven over real sockets.

mod auth_and_limits;
mod bad_input;
mod budget_and_prompts;
mod cancellation;
mod checkpoints;
mod concurrency;
mod conversations;
mod cors;
mod edge_security;
mod helpers;
mod lifecycle;
mod restart;
mod resume;
mod routing;
mod shutdown;
mod slow_clients_and_delta;
mod streaming;
mod upstream_errors;
mod upstream_formats;
mod upstream_hygiene;
