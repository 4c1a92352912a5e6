//! The control plane: what the cluster looks like, and keeping the slot map true to it.
//!
//! It publishes into `routing` (the slot map, the authority's per-slot flags, the command
//! table, a status snapshot) and hears from the data plane only through `routing::Hint`s.
//! Nothing here knows how clients are served.

pub mod authority;
pub mod coordination;
pub mod diagnose;
pub mod error;
pub mod heal;
pub mod journal;
pub mod mover;
pub mod nodes;
pub mod promotion;
pub mod repair;
pub mod topology;
pub mod view;

pub use error::Error;
