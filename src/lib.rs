//! pgmux: a connection-pooling Postgres proxy.
//!
//! A request flows one way — listener → client session → router → pool → server
//! connection — and replies flow back. Each folder is one of those concepts.

pub mod auth;
pub mod config;
pub mod protocol;
pub mod tls;
