//! One cluster node, by address, and its connections.
//!
//! A [`Node`] keeps a few shared connections (RESP2 and RESP3), each owned by one task
//! (`connection`), and an allowance of dedicated ones for clients that need a connection
//! of their own (`lease`). A client's jobs for one node always go to the same connection
//! (chosen by the client's pin), which is what keeps its pipeline in order across nodes
//! and redirects.
//!
//! RESP3 clients' jobs go to connections that said `HELLO 3` themselves, so the node
//! answers in the protocol the client speaks and replies still pass through untouched.
//!
//! The way to a node is one collaboration in four files, with no circle between them: a
//! [`Job`] may carry its client's lease; a node hands such a job to it through
//! [`Way`] and [`Holder`] (`job`), the interfaces `lease` implements, so `node` never
//! names `lease` and `lease` never names `node`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::connection::{self, greeting, Broken, Dispatch, Owner, Target, Tracks};
use super::job::{Holder, Job, Way};
use super::turns::Turns;
use crate::config::{Config, ReadFrom};
use crate::metrics::Metrics;
use crate::tls::{write, Stream};

/// One cluster node and its connections.
pub struct Node {
    pub addr: String,
    /// RESP2 connections.
    conns: Vec<mpsc::UnboundedSender<Job>>,
    /// RESP3 connections, for clients that said `HELLO 3`.
    conns3: Vec<mpsc::UnboundedSender<Job>>,
    /// What a new connection task needs.
    target: Target,
    /// Where the connection tasks hand back what is not simply a client's reply.
    proxy: Weak<dyn Dispatch>,
    /// Dedicated connections still free (see [`Lease`]).
    dedicated: Arc<Semaphore>,
    /// Connected sockets kept ready for dedicated connections (see [`Spares`]).
    spares: Arc<Mutex<Spares>>,
    /// The order new dedicated connections write their first request in.
    turns: Arc<Turns>,
}

/// Sockets already connected to the node, for the next dedicated connections: a blocking
/// command then starts as soon as a shared request would, instead of after a connect (a
/// write another client sends at the same moment would otherwise reach the node first).
/// Made after the node's first dedicated connection, [`SPARES`] at most, plain TCP only.
#[derive(Default)]
struct Spares {
    ready: Vec<TcpStream>,
    connecting: usize,
}

/// Most sockets kept ready per node.
const SPARES: usize = 2;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).finish()
    }
}

impl Node {
    /// Starts the connection tasks (they connect when the first job arrives).
    pub fn spawn(
        addr: String,
        config: &Config,
        proxy: Weak<dyn Dispatch>,
        metrics: &Arc<Metrics>,
        replicated: &Arc<AtomicBool>,
    ) -> Node {
        let target = Target {
            addr: addr.clone(),
            resp3: false,
            auth: config.backend_auth.as_ref().map(|a| a.request()),
            readonly: config.read_from != ReadFrom::Master,
            tls: config.backend_tls.clone(),
            connect_timeout: config.connect_timeout,
            dedicated_idle: config.dedicated_idle,
            metrics: metrics.clone(),
            latency: metrics.node_latency(&addr),
            replicated: replicated.clone(),
        };
        let spawn = |resp3: bool| -> Vec<_> {
            (0..config.backend_connections)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let target = Target {
                        resp3,
                        ..target.clone()
                    };
                    tokio::spawn(connection::run(target, rx, proxy.clone(), None));
                    tx
                })
                .collect()
        };
        let (conns, conns3) = (spawn(false), spawn(true));
        Node {
            addr,
            conns,
            conns3,
            target,
            proxy,
            dedicated: Arc::new(Semaphore::new(config.dedicated_connections)),
            spares: Arc::default(),
            turns: Arc::default(),
        }
    }

    /// Queues a job on the connection its pin selects, or on its client's own connection.
    /// Gives the job back if that connection's task is gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        if let Some(lease) = job.lease().cloned() {
            return lease.send(self, job);
        }
        self.send_shared(job)
    }

    /// Queues a job on the shared connection its pin selects, even if it has a lease.
    pub fn send_shared(&self, job: Job) -> Result<(), Job> {
        let conns = if job.resp3 { &self.conns3 } else { &self.conns };
        let conn = &conns[job.pin as usize % conns.len()];
        conn.send(job).map_err(|e| e.0)
    }

    /// One of the node's dedicated connections, for a connection managed elsewhere
    /// (subscriptions); `None` when all are taken.
    pub fn dedicated_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.dedicated.clone().try_acquire_owned().ok()
    }

    /// Opens a connection for `holder` alone (one that tracks keys with `tracks`); `None`
    /// when the node's allowance is used up.
    pub fn open_dedicated(
        &self,
        holder: Weak<dyn Holder>,
        resp3: bool,
        tracks: Option<Tracks>,
    ) -> Option<mpsc::UnboundedSender<Job>> {
        let permit = self.dedicated_permit()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let target = Target {
            resp3,
            ..self.target.clone()
        };
        let owner = Owner {
            lease: holder,
            _permit: permit,
            connected: self.take_spare(),
            turn: Some(self.turns.ticket()),
            tracks,
        };
        tokio::spawn(connection::run(target, rx, self.proxy.clone(), Some(owner)));
        Some(tx)
    }

    /// A spare socket that is still open, if one is ready; more are made for next time.
    fn take_spare(&self) -> Option<crate::tls::Stream> {
        if self.target.tls.is_some() {
            return None;
        }
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = None;
        while let Some(socket) = spares.ready.pop() {
            // Still open: nothing to read yet. A node that closed it (a restart) is not.
            let mut probe = [0u8; 1];
            let open = matches!(socket.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if open {
                taken = Some(crate::tls::Stream::Tcp(socket));
                break;
            }
        }
        for _ in spares.ready.len() + spares.connecting..SPARES {
            spares.connecting += 1;
            let (addr, limit) = (self.addr.clone(), self.target.connect_timeout);
            let pool = self.spares.clone();
            tokio::spawn(async move {
                let socket = tokio::time::timeout(limit, TcpStream::connect(&addr)).await;
                let mut spares = pool.lock().unwrap_or_else(|e| e.into_inner());
                spares.connecting -= 1;
                if let Ok(Ok(socket)) = socket {
                    socket.set_nodelay(true).ok();
                    spares.ready.push(socket);
                }
            });
        }
        taken
    }
}

/// What a node offers a client's own connections.
impl Way for Node {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn send_shared(&self, job: Job) -> Result<(), Job> {
        Node::send_shared(self, job)
    }

    fn open(
        &self,
        holder: Weak<dyn Holder>,
        resp3: bool,
        tracks: Option<Tracks>,
    ) -> Option<mpsc::UnboundedSender<Job>> {
        self.open_dedicated(holder, resp3, tracks)
    }
}

/// Connects to a node for a connection managed outside this module (a subscription, a
/// tracking connection) and sends the greeting, then `then`. Gives the stream and how many
/// replies belong to the greeting.
pub async fn dial(
    addr: &str,
    config: &Config,
    resp3: bool,
    then: &[u8],
) -> Result<(Stream, usize), Broken> {
    let mut stream = crate::tls::connect(addr, config.connect_timeout, config.backend_tls.as_ref())
        .await
        .map_err(Broken::Connect)?;
    let auth = config.backend_auth.as_ref().map(|a| a.request());
    let (mut hello, replies) = greeting(auth.as_deref(), false, resp3);
    hello.extend_from_slice(then);
    write(&mut stream, &hello).await.map_err(Broken::Write)?;
    Ok((stream, replies))
}
