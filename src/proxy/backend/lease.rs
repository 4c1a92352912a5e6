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
//! A tracking client (`CLIENT TRACKING ON`, see `tracking`) sends everything on a lease
//! of its own instead: one connection to each node it uses, kept while it tracks, each
//! started with the client's `CLIENT TRACKING ON`, so that every node tracks exactly the
//! keys this client read there. Such a connection is never given back idle, changes
//! protocol with `HELLO` rather than being replaced, and clears a WATCH with `UNWATCH`.
//!
//! A job carries its lease as a [`Dedicated`], and a lease's connection tells it what
//! happens as a [`Holder`] (both in `job`): `node` and `connection` need not know `lease`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::job::{Dedicated, Holder, Job, Tracks, Way};
use crate::protocol::reply;

/// A client's own backend connections.
#[derive(Default)]
pub struct Lease {
    state: Mutex<State>,
    /// Set for a tracking client: every connection tracks, and one is kept to each node.
    tracking: Option<Tracking>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("tracking", &self.tracking.is_some())
            .finish()
    }
}

/// The `CLIENT TRACKING ON ...` a tracking client's new connection to a node (by address)
/// sends first; `None` while it cannot be said yet (the node's listener has no id yet).
pub type Start = Box<dyn Fn(&str) -> Option<Bytes> + Send + Sync>;

/// How a tracking client's connections start tracking, and where what they hear goes
/// (see [`crate::proxy::clients::tracking`]).
pub struct Tracking {
    pub start: Start,
    /// Where invalidations pushed on the connections go, when they come in-band.
    pub pushes: Option<mpsc::Sender<Bytes>>,
    /// Set when something the client should have heard of is lost: an invalidation
    /// that found no room, or a tracking connection (the client is then told to flush).
    pub lost: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct State {
    /// At most one connection, or with tracking one per node.
    conns: Vec<Conn>,
    /// The node whose connection holds the client's WATCH.
    watch: Option<String>,
    /// The watch cannot be trusted any more: its connection was lost or replaced.
    broken: bool,
    /// The node the last job went to.
    last: Option<String>,
}

#[derive(Debug)]
struct Conn {
    addr: String,
    resp3: bool,
    jobs: mpsc::UnboundedSender<Job>,
    /// The connection's own address, once connected: how the node knows it.
    local: Option<std::net::SocketAddr>,
}

impl Conn {
    fn live(&self, addr: &str) -> bool {
        self.addr == addr && !self.jobs.is_closed()
    }
}

impl Lease {
    /// A lease whose connections track the keys the client reads (`CLIENT TRACKING`).
    pub fn tracking(tracking: Tracking) -> Lease {
        Lease {
            state: Mutex::default(),
            tracking: Some(tracking),
        }
    }

    /// Sends `job` on this lease's connection to the node behind `way`, opening it if
    /// needed. Gives the job back if the connection's task is gone.
    pub fn send(self: &Arc<Self>, way: &dyn Way, job: Job) -> Result<(), Job> {
        let addr = way.addr();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let exec = job.watch() && job.lead().is_some();
        if exec {
            // EXEC runs only where its WATCH is, and the server forgets the watch after it.
            let watch = state.watch.take();
            let broken = std::mem::take(&mut state.broken);
            let live = state.conns.iter().any(|c| c.live(addr));
            if broken || watch.as_deref() != Some(addr) || !live {
                let _ = job.reply.send(nil(job.resp3));
                return Ok(());
            }
        }
        let found = state.conns.iter().position(|c| c.live(addr));
        let at = match (found, &self.tracking) {
            (Some(at), None) if state.conns[at].resp3 == job.resp3 => at,
            (Some(at), Some(_)) => {
                // A tracking connection keeps what it tracks: it changes protocol rather
                // than being replaced.
                let conn = &mut state.conns[at];
                if conn.resp3 != job.resp3 {
                    let hello: &'static [u8] = match job.resp3 {
                        true => b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n",
                        false => b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n",
                    };
                    let _ = conn.jobs.send(quiet(Bytes::from_static(hello), job.resp3));
                    conn.resp3 = job.resp3;
                }
                at
            }
            (_, tracking) => {
                let tracks = match tracking {
                    Some(t) => {
                        let Some(start) = (t.start)(addr) else {
                            // Not tracked there yet: the client is told to flush once it
                            // is (see `tracking`).
                            t.lost.store(true, Ordering::Relaxed);
                            return way.send_shared(job);
                        };
                        state.conns.retain(|c| c.addr != addr);
                        Some(Tracks {
                            start,
                            pushes: t.pushes.clone(),
                            lost: t.lost.clone(),
                        })
                    }
                    None => {
                        if state.watch.is_some() {
                            state.broken = true; // the connection holding the watch is dropped
                        }
                        state.conns.clear();
                        None
                    }
                };
                let holder: std::sync::Weak<dyn Holder> = Arc::downgrade(self) as _;
                let Some(jobs) = way.open(holder, job.resp3, tracks) else {
                    let _ = job.reply.send(reply::error(&format!(
                        "ERR slotguard: every dedicated connection to {addr} is in use (backend.dedicated_connections); try again later"
                    )));
                    return Ok(());
                };
                state.conns.push(Conn {
                    addr: addr.to_string(),
                    resp3: job.resp3,
                    jobs,
                    local: None,
                });
                state.conns.len() - 1
            }
        };
        if job.watch() && !exec {
            state.watch = Some(addr.to_string());
        }
        state.last = Some(addr.to_string());
        state.conns[at].jobs.send(job).map_err(|e| e.0)
    }

    /// The node the client's last job went to and the address its connection comes from,
    /// while it is open.
    pub fn connection(&self) -> Option<(String, std::net::SocketAddr)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = state.last.as_deref()?;
        let conn = state.conns.iter().find(|c| c.live(last))?;
        Some((conn.addr.clone(), conn.local?))
    }

    /// UNWATCH, DISCARD: forgets the watch. Its connection is closed, which clears the
    /// watch on the node without a request of its own; a tracking connection, which must
    /// stay, is sent `UNWATCH`.
    pub fn unwatch(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = state.watch.take() {
            match &self.tracking {
                None => state.conns.clear(),
                Some(_) => {
                    if let Some(conn) = state.conns.iter().find(|c| c.live(&addr)) {
                        let _ = conn.jobs.send(quiet(
                            Bytes::from_static(b"*1\r\n$7\r\nUNWATCH\r\n"),
                            conn.resp3,
                        ));
                    }
                }
            }
        }
        state.broken = false;
    }

    /// The nodes this lease has an open connection to.
    pub fn nodes(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let live = state.conns.iter().filter(|c| !c.jobs.is_closed());
        live.map(|c| c.addr.clone()).collect()
    }

    /// Closes the connection to `addr` once what is in flight on it is answered; the
    /// client's next job for that node opens another.
    pub fn forget(&self, addr: &str) {
        tracing::debug!(addr, "forgetting a tracking connection");
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.conns.retain(|c| c.addr != addr);
    }

    /// A tracking client changed its options (a second `CLIENT TRACKING ON`): each open
    /// connection is sent `request(node)`, ahead of the client's next jobs. One whose
    /// request cannot be said yet is closed, and the client told to flush.
    pub fn retrack(&self, request: impl Fn(&str) -> Option<Bytes>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut unsaid = false;
        state.conns.retain(|conn| match request(&conn.addr) {
            Some(raw) => {
                let _ = conn.jobs.send(quiet(raw, conn.resp3));
                true
            }
            None => {
                unsaid = true;
                false
            }
        });
        if let (true, Some(tracking)) = (unsaid, &self.tracking) {
            tracking.lost.store(true, Ordering::Relaxed);
        }
    }

    /// Sends `raw` on the connection to `node` (opening it), with a reply no client
    /// reads; gives the receiver of that reply.
    pub fn send_quiet(
        self: &Arc<Self>,
        way: &dyn Way,
        raw: &'static [u8],
        resp3: bool,
    ) -> oneshot::Receiver<Bytes> {
        let (mut job, rx) = Job::new(Bytes::from_static(raw), None, 0, resp3);
        job.extra().lease = Some(self.clone());
        if let Err(job) = self.send(way, job) {
            let _ = job.reply.send(reply::error("ERR connection closed"));
        }
        rx
    }
}

impl Dedicated for Lease {
    fn send(self: Arc<Self>, way: &dyn Way, job: Job) -> Result<(), Job> {
        Lease::send(&self, way, job)
    }
}

impl Holder for Lease {
    /// The lease's connection to `addr` connected from `local`.
    fn connected(&self, addr: &str, local: std::net::SocketAddr) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = state.conns.iter_mut().find(|c| c.live(addr)) {
            conn.local = Some(local);
        }
    }

    /// The connection to `addr` broke: a watch it held is gone, and so is what it tracked.
    fn lost(&self, addr: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.watch.as_deref() == Some(addr) {
            state.broken = true;
        }
        if let Some(tracking) = &self.tracking {
            tracing::debug!(addr, "tracking connection lost");
            tracking.lost.store(true, Ordering::Relaxed);
        }
    }

    /// True when the client's WATCH lives on its connection to `addr`.
    fn holds_watch(&self, addr: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.watch.as_deref() == Some(addr) && !state.broken
    }
}

/// A request sent on a lease's connection for the proxy's own sake: its reply is read and
/// dropped. The receiver is kept until then, since a dedicated connection closes when the
/// client of its oldest request has gone.
fn quiet(raw: Bytes, resp3: bool) -> Job {
    let (job, rx) = Job::new(raw, None, 0, resp3);
    tokio::spawn(async move {
        let _ = rx.await;
    });
    job
}

/// The nil reply EXEC gives when a watched key changed.
fn nil(resp3: bool) -> Bytes {
    Bytes::from_static(if resp3 { b"_\r\n" } else { b"*-1\r\n" })
}
