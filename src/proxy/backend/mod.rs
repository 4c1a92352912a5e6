//! The way to a node: a [`node::Node`] by address and its shared connections
//! ([`connection`]), the connections one client holds for itself ([`lease`]), and the
//! [`job::Job`] each request travels as. The rest of the proxy hands a job to a node and
//! hears back through [`connection::Dispatch`], which the proxy implements; nothing in
//! here knows the router, the sessions or the hold queue.

pub mod connection;
pub mod job;
pub mod lease;
pub mod node;
mod turns;
