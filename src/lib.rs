//! slotguard: a Redis Cluster proxy that absorbs redirects, holds requests while a slot
//! has no owner, and keeps every acknowledged write.
//!
//! Layout: `protocol` (bytes on the wire), `proxy` (the data plane), `cluster` (the
//! control plane), `routing` (what the two planes share; neither imports the other),
//! `client` (a one-request-at-a-time node connection), `admin` (health endpoints),
//! `config`, `server` (wiring), and `localcluster` (a real local cluster for
//! `slotguard demo` and the tests).
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod localcluster;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod tls;
