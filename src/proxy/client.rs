//! What the proxy knows of one client connection: who it is, what it may run, the protocol
//! it speaks, and the state its commands leave behind (a transaction being queued, a
//! WATCH, the client's own backend connection, slots written since its last WAIT, its
//! tracking). The session owns it; the router reads and changes it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::backend::lease::Lease;
use super::clients::tracking::Tracker;
use super::clients::{Entry, Itself};
use crate::config::{Access, Config, ReadFrom};

/// Slots remembered for WAIT before it asks every master instead.
const MAX_WROTE: usize = 32;
/// In `Client::wrote`: WAIT asks every master.
pub const EVERY_MASTER: u16 = u16::MAX;

const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";

/// A client connection's state.
#[derive(Debug)]
pub struct Client {
    pub id: u32,
    pub peer: SocketAddr,
    /// The proxy address this client connected to; what CLUSTER SLOTS reports.
    pub local: SocketAddr,
    pub name: Option<Bytes>,
    pub authenticated: bool,
    /// The proxy user the client is (`default` until AUTH says otherwise).
    pub user: String,
    /// What that user may run.
    pub access: Access,
    /// Where this client's reads go (`backend.read_from` when it connected).
    pub read_from: ReadFrom,
    /// Switched to RESP3 by `HELLO 3`.
    pub resp3: bool,
    /// QUIT was received: close once the replies before it are written.
    pub quit: bool,
    /// Between MULTI and EXEC: the commands queued so far.
    pub tx: Option<Tx>,
    /// The client's own backend connection, once it needed one.
    pub lease: Option<Arc<Lease>>,
    /// After WATCH: the slot of the watched keys.
    pub watch: Option<u16>,
    /// Slots written to since the last WAIT (empty after many: every master).
    pub wrote: Vec<u16>,
    /// `CLIENT TRACKING ON`: the connections that report changed keys.
    pub tracking: Option<Tracker>,
    /// `CLIENT REPLY`: which replies are written.
    pub replies: Replies,
    /// What other clients see of this one (CLIENT LIST, KILL, UNBLOCK).
    pub entry: Arc<Entry>,
}

/// `CLIENT REPLY ON|OFF|SKIP`, as Redis keeps it.
#[derive(Debug, Default)]
pub struct Replies {
    /// OFF: no reply is written until ON.
    pub off: bool,
    /// SKIP was said: the next command's reply is not written.
    pub skip_next: bool,
    /// This command's reply is not written.
    skip: bool,
}

impl Replies {
    /// Whether the reply of the request just routed goes unwritten; moves SKIP on by one
    /// request.
    pub fn next_silent(&mut self) -> bool {
        let silent = self.off || self.skip;
        self.skip = std::mem::take(&mut self.skip_next);
        silent
    }

    /// `CLIENT REPLY ON`.
    pub fn on(&mut self) {
        *self = Replies::default();
    }
}

/// A transaction being queued. It runs as one unit on one connection of the owner of its
/// slot: every key must be in the slot of the first.
#[derive(Debug)]
pub struct Tx {
    /// `MULTI` and the queued commands, as they go on the wire.
    pub body: BytesMut,
    pub queued: u32,
    pub slot: Option<u16>,
    /// A command was refused while queueing: EXEC answers EXECABORT, as Redis does.
    pub failed: bool,
    /// A queued command must not run twice, so neither may the transaction.
    pub once: bool,
    /// A queued command writes.
    pub writes: bool,
    /// A `FLUSHALL` or `FLUSHDB` is queued: the other masters run it too (see `router`).
    pub flush: Option<crate::protocol::Request>,
}

impl Tx {
    /// A transaction that has queued nothing yet.
    pub fn new() -> Tx {
        Tx {
            body: BytesMut::from(MULTI),
            queued: 0,
            slot: None,
            failed: false,
            once: false,
            writes: false,
            flush: None,
        }
    }
}

impl Client {
    /// What CLIENT LIST and the others show of this client as it is now.
    pub fn itself(&self) -> Itself<'_> {
        Itself {
            id: self.id,
            peer: self.peer,
            local: self.local,
            name: &self.name,
            user: &self.user,
            resp3: self.resp3,
            multi: self.tx.as_ref().map(|tx| tx.queued),
            redir: super::clients::tracking::redirect(self.tracking.as_ref()),
        }
    }

    /// A client that just connected: the `default` user, authenticated unless the proxy
    /// has a password or users, speaking RESP2.
    pub fn new(id: u32, peer: SocketAddr, local: SocketAddr, config: &Config) -> Client {
        Client {
            id,
            peer,
            local,
            name: None,
            authenticated: config.password.is_none() && config.users.is_empty(),
            user: "default".into(),
            access: Access::Admin,
            read_from: config.read_from,
            resp3: false,
            quit: false,
            tx: None,
            lease: None,
            watch: None,
            wrote: Vec::new(),
            tracking: None,
            replies: Replies::default(),
            entry: Arc::new(Entry::new(id, peer, local)),
        }
    }

    /// Remembers a slot the client wrote to, for WAIT; past a few (or `None`: a write to
    /// several slots), WAIT asks every master.
    pub fn wrote(&mut self, slot: Option<u16>) {
        match (slot, self.wrote.first()) {
            (_, Some(&EVERY_MASTER)) => {}
            (Some(slot), _) if self.wrote.len() < MAX_WROTE => {
                if self.wrote.last() != Some(&slot) {
                    self.wrote.push(slot);
                }
            }
            _ => self.wrote = vec![EVERY_MASTER],
        }
    }

    /// The client's own connection, made on first use; while it tracks, its tracking
    /// connections.
    pub fn lease(&mut self) -> Arc<Lease> {
        if let Some(tracker) = &self.tracking {
            return tracker.lease.clone();
        }
        let entry = &self.entry;
        self.lease
            .get_or_insert_with(|| {
                let lease = Arc::new(Lease::default());
                entry.leased(&lease);
                lease
            })
            .clone()
    }

    /// `RESET`, as a node resets a connection, for this client alone: the transaction
    /// and watch discarded, replies on, tracking off, the client's own connections
    /// closed (what a blocking command or WATCH left on them goes with them), RESP2, no
    /// name, and the `default` user (authenticated only if it needs no password). Nothing
    /// is sent to a node: the shared connections keep their state for everyone else.
    pub fn reset(&mut self, config: &Config) {
        self.tx = None;
        self.unwatch();
        self.tracking = None;
        self.lease = None;
        self.replies.on();
        self.resp3 = false;
        self.name = None;
        self.user = "default".into();
        self.access = Access::Admin;
        self.authenticated = config.password.is_none() && config.users.is_empty();
        self.read_from = config.read_from;
    }

    /// UNWATCH, DISCARD, EXEC: the client watches nothing any more.
    pub fn unwatch(&mut self) {
        if self.watch.take().is_some() {
            if let Some(tracker) = &self.tracking {
                tracker.lease.unwatch();
            }
            if let Some(lease) = &self.lease {
                lease.unwatch();
            }
        }
    }

    /// The next invalidation for a tracking client; never, for one that does not track.
    /// A RESP2 client hears none (as from a node: pushes are RESP3's).
    pub async fn next_push(&mut self) -> Option<Bytes> {
        let resp3 = self.resp3;
        let Some(tracker) = &mut self.tracking else {
            return std::future::pending().await;
        };
        loop {
            let push = tracker.next().await?;
            if resp3 {
                return Some(push);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Client::new(1, addr, addr, &Config::default())
    }

    #[test]
    fn client_reply_skip_silences_the_next_reply_and_off_all_until_on() {
        let mut r = Replies::default();
        assert!(!r.next_silent());
        r.skip_next = true; // CLIENT REPLY SKIP (its own reply is empty)
        assert!(!r.next_silent());
        assert!(r.next_silent(), "the command after SKIP");
        assert!(!r.next_silent());
        r.off = true; // CLIENT REPLY OFF
        assert!(r.next_silent());
        assert!(r.next_silent());
        r.on();
        assert!(!r.next_silent(), "CLIENT REPLY ON answers");
    }

    #[test]
    fn writes_are_remembered_per_slot_until_there_are_too_many() {
        let mut c = client();
        c.wrote(Some(5));
        c.wrote(Some(5));
        c.wrote(Some(7));
        assert_eq!(c.wrote, [5, 7]);
        for slot in 100..100 + MAX_WROTE as u16 {
            c.wrote(Some(slot));
        }
        assert_eq!(c.wrote, [EVERY_MASTER], "past a few slots, every master");
        c.wrote(Some(9));
        assert_eq!(c.wrote, [EVERY_MASTER]);
        let mut c = client();
        c.wrote(None);
        assert_eq!(c.wrote, [EVERY_MASTER], "a write to several slots");
    }
}
