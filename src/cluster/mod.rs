//! The control plane: what the cluster looks like, and keeping the slot map true to it.

pub mod authority;
pub mod conn;
pub mod diagnose;
pub mod heal;
pub mod journal;
pub mod nodes;
pub mod repair;
pub mod topology;
pub mod view;
