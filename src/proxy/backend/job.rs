//! A request on its way to a node: the raw bytes, the slot, and where the reply goes.
//! It is moved through a channel and a few queues on its way, so it is kept small; what
//! few requests carry is boxed.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::config::ReadFrom;

/// A request on its way to a node, with where its reply goes.
#[derive(Debug)]
pub struct Job {
    /// The request as it goes on the wire. Only the bytes travel: a job is moved several
    /// times on its way, so it is kept small.
    pub raw: Bytes,
    /// The slot the request is for; `None` for keyless requests (any master serves them).
    pub slot: Option<u16>,
    /// Chooses the connection, so one client's jobs to a node share one.
    pub pin: u32,
    /// The client speaks RESP3: use a RESP3 connection.
    pub resp3: bool,
    /// Redirects followed so far.
    pub hops: u8,
    /// A read that may go to a replica (`backend.read_from`).
    pub read_from: ReadFrom,
    /// It writes: with `durability.ack = "replicated"` its reply waits for the replicas.
    pub write: bool,
    /// It must not run twice (INCR, LPUSH, a script, ...): once written to a connection
    /// that then broke, it is answered an error instead of being sent again.
    pub once: bool,
    /// When the job first had to wait (for the hold deadline).
    pub held_since: Option<Instant>,
    /// What few jobs carry: boxed, so that the common job stays small to move.
    pub extra: Option<Box<Extra>>,
    pub reply: oneshot::Sender<Bytes>,
}

/// A client's own node connections (`lease` has them): a job that carries them travels on
/// them instead of a shared connection. The interfaces between a job's way to a node
/// (`node`, `connection`, `lease`) are here, so that none of those files needs another
/// that needs it back.
pub trait Dedicated: Send + Sync + std::fmt::Debug {
    /// Sends `job` on the client's own connection to the node behind `way`, opening it if
    /// needed; gives the job back if that connection's task is gone.
    fn send(self: Arc<Self>, way: &dyn Way, job: Job) -> Result<(), Job>;
}

/// What a node offers a client's own connections (`node` has it).
pub trait Way {
    /// The node's address.
    fn addr(&self) -> &str;
    /// Queues `job` on the shared connection its pin selects.
    fn send_shared(&self, job: Job) -> Result<(), Job>;
    /// Opens a connection out of the node's allowance for `holder` alone (one that tracks
    /// keys with `tracks`); `None` when the allowance is used up.
    fn open(
        &self,
        holder: Weak<dyn Holder>,
        resp3: bool,
        tracks: Option<Tracks>,
    ) -> Option<mpsc::UnboundedSender<Job>>;
}

/// What a client's own connection tells, and asks, the client that holds it (`lease`).
pub trait Holder: Send + Sync {
    /// The connection to `addr` is open, from `local`.
    fn connected(&self, addr: &str, local: std::net::SocketAddr);
    /// The connection to `addr` broke.
    fn lost(&self, addr: &str);
    /// The client's WATCH lives on its connection to `addr` (kept open while idle).
    fn holds_watch(&self, addr: &str) -> bool;
}

/// A tracking client's connection: how it starts tracking, and where the invalidations
/// the node pushes on it go.
pub struct Tracks {
    /// `CLIENT TRACKING ON ...`, sent after the greeting.
    pub start: Bytes,
    /// The client's pushes, when invalidations come in-band (RESP3 without REDIRECT).
    pub pushes: Option<mpsc::Sender<Bytes>>,
    /// Set when an invalidation finds no room: the client is told to flush.
    pub lost: Arc<AtomicBool>,
}

/// The parts of a job that only some requests have.
#[derive(Debug, Default)]
pub struct Extra {
    /// Sent first, on the same connection, as one unit with the request; its replies are
    /// not the client's (`ASKING` after an ASK, `SCRIPT LOAD` after a NOSCRIPT, or both).
    pub prefix: Option<Bytes>,
    /// How many replies the prefix gets.
    pub prefix_replies: u8,
    /// A transaction's `MULTI` and queued commands, sent after the prefix and before the
    /// request (`EXEC`); unlike the prefix it travels with the job through redirects.
    pub lead: Option<Bytes>,
    /// How many replies the lead gets.
    pub lead_replies: u32,
    /// Runs on the client's own connection instead of a shared one (its `lease`).
    pub lease: Option<Arc<dyn Dedicated>>,
    /// WATCH, or an EXEC under a WATCH: must run on the connection holding the watch.
    pub watch: bool,
}

impl Job {
    pub fn new(
        raw: Bytes,
        slot: Option<u16>,
        pin: u32,
        resp3: bool,
    ) -> (Job, oneshot::Receiver<Bytes>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            raw,
            slot,
            pin,
            resp3,
            hops: 0,
            read_from: ReadFrom::Master,
            write: false,
            once: false,
            held_since: None,
            extra: None,
            reply,
        };
        (job, rx)
    }

    /// The job's rare parts, made on first use.
    pub fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn prefix(&self) -> Option<&Bytes> {
        self.extra.as_ref()?.prefix.as_ref()
    }

    pub fn lead(&self) -> Option<&Bytes> {
        self.extra.as_ref()?.lead.as_ref()
    }

    pub fn lease(&self) -> Option<&Arc<dyn Dedicated>> {
        self.extra.as_ref()?.lease.as_ref()
    }

    /// WATCH, or an EXEC under a WATCH.
    pub fn watch(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.watch)
    }

    /// Replies to skip before the request's own: the prefix's and the lead's.
    pub fn skipped_replies(&self) -> u32 {
        self.extra
            .as_ref()
            .map_or(0, |e| e.prefix_replies as u32 + e.lead_replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_stays_small_to_move() {
        // Every request's job is moved through a channel and two queues; what only a few
        // carry is boxed.
        assert!(
            std::mem::size_of::<Job>() <= 80,
            "{}",
            std::mem::size_of::<Job>()
        );
    }
}
