//! What a session owes its client: one [`Pending`] per request, in request order. A reply
//! may be ready at once (answered by the proxy), come from one node, be joined from
//! several, wait for its turn on the client's own connection, or start a subscription.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::job::Job;
use super::merge::{Join, GONE};
use super::wait::Wait;
use super::Proxy;
use crate::protocol::{reply, Request};

/// What a [`Pending::Turn`] starts when its time comes.
pub enum Start {
    Job(Job),
    Wait(Wait),
    /// A command every node must hear (`every_node`), and where its answer goes.
    EveryNode(Request, oneshot::Sender<Bytes>),
}

impl Start {
    pub fn run(self, proxy: &Proxy) {
        match self {
            Start::Job(job) => proxy.dispatch(job),
            Start::Wait(wait) => {
                if let Some(proxy) = proxy.me.upgrade() {
                    super::wait::start(proxy, wait);
                }
            }
            Start::EveryNode(req, reply_to) => {
                if let Some(proxy) = proxy.me.upgrade() {
                    super::every_node::start(proxy, req, reply_to);
                }
            }
        }
    }
}

/// A reply the client is owed, in request order.
pub enum Pending {
    Ready(Bytes),
    Wait(oneshot::Receiver<Bytes>),
    Join(Join),
    /// A request on the client's own connection (a blocking command, WATCH, EXEC after
    /// WATCH). It is sent only once every earlier reply is in, and the session sends
    /// nothing after it before its reply: its order against the client's other requests,
    /// which go on shared connections, is kept.
    Turn(Option<Start>, oneshot::Receiver<Bytes>),
    /// A (P|S)SUBSCRIBE: once every earlier reply is written, the session turns to
    /// [`super::pubsub`] with it.
    Subscribe(Option<Request>),
}

impl Pending {
    /// A job that waits for its turn.
    pub fn turn(job: Job, rx: oneshot::Receiver<Bytes>) -> Pending {
        Pending::Turn(Some(Start::Job(job)), rx)
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        match self {
            Pending::Ready(bytes) => Poll::Ready(std::mem::take(bytes)),
            Pending::Wait(rx) | Pending::Turn(_, rx) => Pin::new(rx)
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

    /// A turn whose time has come: what to start now.
    pub fn launch(&mut self) -> Option<Start> {
        match self {
            Pending::Turn(job, _) => job.take(),
            _ => None,
        }
    }
}
