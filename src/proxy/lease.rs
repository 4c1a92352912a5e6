//! Backend connections that one client holds for itself.
//!
//! A blocking command stalls every request behind it on its connection, and a WATCH
//! belongs to the connection that sent it, so neither can use the shared connections. A
//! client that sends one gets a [`Lease`]: one connection, to one node at a time, out of that
//! node's allowance (`backend.dedicated_connections`). The connection moves when the
//! client's next such command is for another node, is given back after
//! `backend.dedicated_idle` with nothing in flight (unless it holds a WATCH), and closes
//! when the client goes; a client that disconnects while blocked closes it at once, which
//! ends the blocked command on the node too.
//!
//! Jobs on a lease travel like any other: they wait in the hold queue, follow redirects and
//! are retried after a lost connection. Only the connection they end up on differs.
//!
//! A WATCH is only as good as the connection that holds it. When that connection is lost,
//! or the watched slot's owner changes, EXEC answers nil without running, exactly what a
//! client sees when a watched key changed; it retries, as optimistic locking always does.
//!
//! `lease`, `job`, `node` and `connection` use each other: one collaboration (see `node`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::job::Job;
use super::node::Node;
use crate::protocol::reply;

/// A client's own backend connection.
#[derive(Debug, Default)]
pub struct Lease {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    conn: Option<Conn>,
    /// The node whose connection holds the client's WATCH.
    watch: Option<String>,
    /// The watch cannot be trusted any more: its connection was lost or replaced.
    broken: bool,
}

#[derive(Debug)]
struct Conn {
    addr: String,
    resp3: bool,
    jobs: mpsc::UnboundedSender<Job>,
    /// The connection's own address, once connected: how the node knows it.
    local: Option<std::net::SocketAddr>,
}

impl Lease {
    /// Sends `job` on this lease's connection to `node`, opening it if needed. Gives the
    /// job back if the connection's task is gone.
    pub fn send(self: &Arc<Self>, node: &Node, job: Job) -> Result<(), Job> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let exec = job.watch() && job.lead().is_some();
        if exec {
            // EXEC runs only where its WATCH is, and the server forgets the watch after it.
            let watch = state.watch.take();
            let broken = std::mem::take(&mut state.broken);
            let live = state.conn.as_ref().is_some_and(|c| {
                c.addr == node.addr && c.resp3 == job.resp3 && !c.jobs.is_closed()
            });
            if broken || watch.as_deref() != Some(node.addr.as_str()) || !live {
                let _ = job.reply.send(nil(job.resp3));
                return Ok(());
            }
        }
        let reuse = state
            .conn
            .as_ref()
            .is_some_and(|c| c.addr == node.addr && c.resp3 == job.resp3 && !c.jobs.is_closed());
        if !reuse {
            if state.watch.is_some() {
                state.broken = true; // the connection holding the watch is dropped
            }
            state.conn = None;
            let Some(jobs) = node.open_dedicated(self, job.resp3) else {
                let _ = job.reply.send(reply::error(&format!(
                    "ERR slotguard: every dedicated connection to {} is in use (backend.dedicated_connections); try again later",
                    node.addr
                )));
                return Ok(());
            };
            state.conn = Some(Conn {
                addr: node.addr.clone(),
                resp3: job.resp3,
                jobs,
                local: None,
            });
        }
        if job.watch() && !exec {
            state.watch = Some(node.addr.clone());
        }
        let conn = state.conn.as_ref().expect("opened above");
        conn.jobs.send(job).map_err(|e| e.0)
    }

    /// True when the client's WATCH lives on its connection to `addr`.
    pub fn holds_watch(&self, addr: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.watch.as_deref() == Some(addr) && !state.broken
    }

    /// The lease's connection to `addr` connected from `local`.
    pub fn connected(&self, addr: &str, local: std::net::SocketAddr) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = state.conn.as_mut().filter(|c| c.addr == addr) {
            conn.local = Some(local);
        }
    }

    /// The node and the address its connection comes from, while it is open.
    pub fn connection(&self) -> Option<(String, std::net::SocketAddr)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let conn = state.conn.as_ref().filter(|c| !c.jobs.is_closed())?;
        Some((conn.addr.clone(), conn.local?))
    }

    /// The connection to `addr` broke: a watch it held is gone.
    pub fn lost(&self, addr: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.watch.as_deref() == Some(addr) {
            state.broken = true;
        }
    }

    /// UNWATCH, DISCARD: forgets the watch. Its connection is closed, which clears the
    /// watch on the node without a request of its own.
    pub fn unwatch(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.watch.take().is_some() {
            state.conn = None;
        }
        state.broken = false;
    }
}

/// The nil reply EXEC gives when a watched key changed.
fn nil(resp3: bool) -> Bytes {
    Bytes::from_static(if resp3 { b"_\r\n" } else { b"*-1\r\n" })
}
