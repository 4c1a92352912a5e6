//! What a session owes its client: one [`Pending`] per request, in request order. A reply
//! may be ready at once (answered by the proxy), come from one node, be joined from
//! several, wait for its turn on the client's own connection, or start a subscription.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use prometheus::IntGauge;
use tokio::sync::oneshot;

use super::backend::job::Job;
use super::every_node::Reach;
use super::fan::Split;
use super::merge::{Join, GONE};
use super::wait::Wait;
use super::Proxy;
use crate::protocol::{reply, Request};

/// What a [`Pending::Turn`] starts when its time comes.
pub enum Start {
    Job(Job),
    /// A blocking command: the client counts as blocked until its reply.
    Block(Job),
    /// WAIT: the client counts as blocked until its reply, as in Redis.
    Wait(Wait),
    /// A command for every node or master (`every_node`), and where its answer goes.
    EveryNode(Request, Reach, oneshot::Sender<Bytes>),
    /// A large fan-out, a window at a time (`fan`), and where its answer goes.
    Fan(Split, oneshot::Sender<Bytes>),
}

impl Start {
    /// Sends it on its way; for a blocking command or WAIT, the client counts as blocked
    /// while the returned guard lives.
    pub fn run(self, proxy: &Proxy) -> Option<Blocked> {
        let blocked = matches!(self, Start::Block(_) | Start::Wait(_))
            .then(|| Blocked::new(&proxy.metrics.clients_blocked));
        match self {
            Start::Job(job) | Start::Block(job) => proxy.dispatch(job),
            Start::Wait(wait) => {
                if let Some(proxy) = proxy.me.upgrade() {
                    super::wait::start(proxy, wait);
                }
            }
            Start::EveryNode(req, reach, reply_to) => {
                if let Some(proxy) = proxy.me.upgrade() {
                    super::every_node::start(proxy, req, reach, reply_to);
                }
            }
            Start::Fan(split, reply_to) => {
                if let Some(proxy) = proxy.me.upgrade() {
                    super::fan::start(proxy, split, reply_to);
                }
            }
        }
        blocked
    }
}

/// A client counted in `blocked_clients` while this lives.
pub struct Blocked(IntGauge);

impl Blocked {
    fn new(gauge: &IntGauge) -> Blocked {
        gauge.inc();
        Blocked(gauge.clone())
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request on the client's own connection (a blocking command, WATCH, EXEC after
/// WATCH), WAIT, or CONFIG SET on every node. It starts only once every earlier reply is
/// in, and the session sends nothing after it before its reply: its order against the
/// client's other requests, which go on shared connections, is kept.
pub struct Turn {
    /// What to start when the turn comes; `None` once started (or nothing to start).
    start: Option<Start>,
    reply: oneshot::Receiver<Bytes>,
    /// Set while the client is blocked in it.
    blocked: Option<Blocked>,
}

/// A reply the client is owed, in request order.
pub enum Pending {
    Ready(Bytes),
    Wait(oneshot::Receiver<Bytes>),
    Join(Join),
    Turn(Turn),
    /// A (P|S)SUBSCRIBE, or MONITOR: once every earlier reply is written, the session
    /// turns to [`super::pubsub`] (or [`super::monitor`]) with it.
    Subscribe(Option<Request>),
}

impl Pending {
    /// Waits for its turn, then starts `start`.
    pub fn turn(start: Start, reply: oneshot::Receiver<Bytes>) -> Pending {
        Pending::Turn(Turn {
            start: Some(start),
            reply,
            blocked: None,
        })
    }

    /// Waits for its turn and for `reply`, started elsewhere (CLIENT TRACKING ON).
    pub fn turn_for(reply: oneshot::Receiver<Bytes>) -> Pending {
        Pending::Turn(Turn {
            start: None,
            reply,
            blocked: None,
        })
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        match self {
            Pending::Ready(bytes) => Poll::Ready(std::mem::take(bytes)),
            Pending::Wait(rx) | Pending::Turn(Turn { reply: rx, .. }) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| reply::error(GONE))),
            Pending::Join(join) => join.poll(cx),
            Pending::Subscribe(_) => Poll::Pending,
        }
    }

    pub fn is_turn(&self) -> bool {
        matches!(self, Pending::Turn(..) | Pending::Subscribe(_))
    }

    /// A subscription whose time has come: the command that starts it.
    pub fn subscription(&mut self) -> Option<Request> {
        match self {
            Pending::Subscribe(req) => req.take(),
            _ => None,
        }
    }

    /// A turn whose time has come: starts what it waited to start.
    pub fn launch(&mut self, proxy: &Proxy) {
        if let Pending::Turn(turn) = self {
            if let Some(start) = turn.start.take() {
                turn.blocked = start.run(proxy);
            }
        }
    }
}
