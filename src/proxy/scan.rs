//! SCAN across the masters.
//!
//! The proxy walks the masters one after another, in slot order. Its cursor is
//! `node_cursor * 16384 + slot`, `slot` being the lowest slot of the master being walked.
//! When a master's walk ends with fewer keys found than COUNT asks (10 unless given), the
//! next master's walk starts at once and its keys join the same reply: a small keyspace
//! comes back in one call, as from one node, and a large one a COUNT's worth at a time.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::backend::job::Job;
use super::clients::tracking::Carry;
use super::owed::Pending;
use super::slot_table::SlotTable;
use super::Proxy;
use crate::protocol::reply::{self, array_header, Value};
use crate::protocol::request::parse_i64;
use crate::protocol::{Request, SLOTS};

/// What a node's SCAN answers when the client gives no COUNT.
const DEFAULT_COUNT: usize = 10;

/// Who asks: what each page's job carries.
pub struct Asker {
    pub id: u32,
    pub resp3: bool,
    /// A tracking client's connections.
    pub carry: Option<Carry>,
}

/// Starts a SCAN; its reply comes on the returned `Pending`.
pub fn scan(proxy: &Proxy, asker: Asker, req: Request) -> Pending {
    let ready = |e: Bytes| Pending::Ready(e);
    if req.len() < 2 {
        return ready(reply::arity("scan"));
    }
    let Some(cursor) = std::str::from_utf8(req.arg(1))
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return ready(reply::error("ERR invalid cursor"));
    };
    let table = proxy.table.load_full();
    let slot = match cursor {
        0 => match table.masters().next() {
            Some((slot, _)) => slot,
            None => {
                return ready(reply::error(
                    "CLUSTERDOWN slotguard: no master is known yet (is any seed reachable?)",
                ))
            }
        },
        _ => (cursor % SLOTS as u64) as u16,
    };
    let Some(me) = proxy.me.upgrade() else {
        return ready(reply::error("ERR slotguard: shutting down"));
    };
    let count = count_of(&req);
    let walk = Walk {
        args: req.args().map(Bytes::copy_from_slice).collect(),
        asker,
        table,
        count,
    };
    // The first page is asked for now, in the client's order among its requests.
    let first = walk.page(&me, slot, cursor / SLOTS as u64);
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(walk.run(&me, slot, first).await);
    });
    Pending::Wait(rx)
}

/// The COUNT a SCAN gives, or the default; a COUNT that is not a number is left to the
/// node to refuse.
fn count_of(req: &Request) -> usize {
    (2..req.len().saturating_sub(1))
        .find(|&i| req.arg(i).eq_ignore_ascii_case(b"COUNT"))
        .and_then(|i| parse_i64(req.arg(i + 1)))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_COUNT)
}

/// One SCAN call being answered, a master's page at a time.
struct Walk {
    /// The client's request (its cursor replaced in each page).
    args: Vec<Bytes>,
    asker: Asker,
    table: Arc<SlotTable>,
    count: usize,
}

impl Walk {
    /// Asks the master serving `slot` for its page at `node_cursor`.
    fn page(&self, proxy: &Proxy, slot: u16, node_cursor: u64) -> oneshot::Receiver<Bytes> {
        let node_cursor = node_cursor.to_string();
        let mut args: Vec<&[u8]> = self.args.iter().map(|a| &a[..]).collect();
        args[1] = node_cursor.as_bytes();
        let raw = Request::from_args(&args).into_raw();
        let (mut job, rx) = Job::new(raw, Some(slot), self.asker.id, self.asker.resp3);
        if let Some(carry) = &self.asker.carry {
            carry.apply(&mut job);
        }
        proxy.dispatch(job);
        rx
    }

    /// Gathers pages, from the master serving `slot` on, until COUNT keys are found, a
    /// master's walk is cut short by its own cursor, or the last master is done.
    async fn run(self, proxy: &Proxy, mut slot: u16, first: oneshot::Receiver<Bytes>) -> Bytes {
        let mut keys = Vec::new();
        let mut page = first;
        let next = loop {
            let Ok(bytes) = page.await else {
                return reply::error("ERR slotguard: the SCAN was dropped");
            };
            let Some((node_cursor, found)) = parse_page(&bytes) else {
                // An error, or not a SCAN reply: passed on as it came, unless keys were
                // found before it (then the walk resumes at this master next time).
                match keys.is_empty() {
                    true => return bytes,
                    false => break u64::from(slot),
                }
            };
            keys.extend(found);
            if node_cursor != 0 {
                break node_cursor * SLOTS as u64 + u64::from(slot);
            }
            match self.table.next_master_slot(slot) {
                None => break 0,
                Some(next) if keys.len() >= self.count => break u64::from(next),
                Some(next) => {
                    slot = next;
                    page = self.page(proxy, slot, 0);
                }
            }
        };
        let mut out = BytesMut::new();
        array_header(&mut out, 2);
        reply::bulk(&mut out, next.to_string().as_bytes());
        Value::Array(keys).encode_for(&mut out, self.asker.resp3);
        out.freeze()
    }
}

/// A node's SCAN reply: its cursor and the keys it found.
fn parse_page(bytes: &Bytes) -> Option<(u64, Vec<Value>)> {
    let Value::Array(pair) = Value::parse(bytes).ok()? else {
        return None;
    };
    let [cursor, Value::Array(keys)] = <[Value; 2]>::try_from(pair).ok()? else {
        return None;
    };
    Some((cursor.as_str()?.parse().ok()?, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_read_from_the_options() {
        let count = |args: &[&str]| count_of(&Request::from_args(args));
        assert_eq!(count(&["SCAN", "0"]), DEFAULT_COUNT);
        assert_eq!(count(&["SCAN", "0", "COUNT", "100"]), 100);
        assert_eq!(count(&["SCAN", "0", "MATCH", "a*", "count", "7"]), 7);
        assert_eq!(count(&["SCAN", "0", "COUNT"]), DEFAULT_COUNT);
        assert_eq!(count(&["SCAN", "0", "COUNT", "x"]), DEFAULT_COUNT);
    }

    #[test]
    fn a_page_is_its_cursor_and_keys() {
        let page = Bytes::from_static(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        let (cursor, keys) = parse_page(&page).unwrap();
        assert_eq!((cursor, keys.len()), (17, 2));
        assert!(parse_page(&Bytes::from_static(b"-ERR syntax error\r\n")).is_none());
    }
}
