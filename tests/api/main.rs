//! Integration tests: the real server on port 0, against the mock upstream (crates/mockllm)
//! speaking OpenAI's (or Anthropic's) exact streaming format, driven over real sockets.

mod anthropic;
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
mod metrics;
mod nginx_server;
mod postgres_server;
mod postgres_store;
mod reasoning;
mod redis_server;
mod replicas;
mod restart;
mod resume;
mod routing;
mod shutdown;
mod slow_clients_and_delta;
mod store_suite;
mod streaming;
mod upstream_connections;
mod upstream_errors;
mod upstream_formats;
mod upstream_hygiene;
mod v1;
mod v1_errors;
mod v1_sdk;
mod v1_shutdown;
mod watched;
