//! pgmux: a connection-pooling Postgres proxy.
//!
//! A request flows one way — listener ([`proxy`]) → client session ([`client`]) →
//! router ([`route`]) → pool ([`pool`]) → server connection ([`server`]) — and replies
//! flow back. Each module is one of those concepts; [`protocol`] frames the bytes,
//! [`auth`] and [`tls`] secure both sides, [`cancel`] routes CancelRequests, and
//! [`uring`] carries the relay's plain sockets over io_uring.

pub mod auth;
pub mod cancel;
pub mod client;
pub mod config;
pub mod observe;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod route;
pub mod server;
pub mod stash;
pub mod tls;
pub mod uring;
pub mod workers;
