//! One file per resource.

pub mod config;
pub mod conv;
pub mod conversations;
pub mod health;
pub mod prompts;
pub mod web;
