//! A request on its way to a node: the raw bytes, the slot, and where the reply goes.
//! It is moved through a channel and a few queues on its way, so it is kept small; what
//! few requests carry is boxed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::lease::Lease;
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
    /// Runs on the client's own connection instead of a shared one.
    pub lease: Option<Arc<Lease>>,
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

    pub fn lease(&self) -> Option<&Arc<Lease>> {
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
