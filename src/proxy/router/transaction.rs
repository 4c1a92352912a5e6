//! Transactions: MULTI's queue, EXEC on the slot's owner as one unit, WATCH on the
//! client's own connection.

use bytes::Bytes;

use super::send::*;
use crate::metrics::Class;
use crate::protocol::{key_slot, reply, Request};
use crate::proxy::backend::job::Job;
use crate::proxy::client::{Client, Tx};
use crate::proxy::owed::{Pending, Start};
use crate::proxy::table::Multi;
use crate::proxy::Proxy;

/// Most commands one transaction may queue.
pub(super) const MAX_QUEUED: u32 = 100_000;

pub(super) const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";

/// A command between MULTI and EXEC: checked as it would be routed, then queued.
pub(super) fn queue(
    proxy: &Proxy,
    client: &mut Client,
    name: &[u8],
    multi: Multi,
    req: Request,
) -> (Pending, Class) {
    let tx = client
        .tx
        .as_mut()
        .expect("queue() runs inside a transaction");
    let mut fail = |error: Bytes| {
        tx.failed = true;
        (ready(error), Class::Other)
    };
    match multi {
        // As Redis refuses WATCH inside MULTI: the transaction stays as it was.
        Multi::NotInside => {
            return (
                ready(reply::error(&format!(
                    "ERR {} inside MULTI is not allowed",
                    String::from_utf8_lossy(name)
                ))),
                Class::Other,
            )
        }
        Multi::Refuse => return fail(unsupported_error(name, "not inside a transaction")),
        Multi::Queue | Multi::Now => {}
    }
    // As a node refuses it at once, and fails the transaction: an unknown command, a
    // wrong number of arguments, a command a transaction may not hold.
    let commands = proxy.commands();
    match commands.lookup(&req) {
        None if commands.is_complete() => return fail(reply::unknown_command(&req)),
        Some(spec) if !spec.arity_fits(req.len()) => {
            return fail(reply::arity(&spec.name.to_ascii_lowercase()))
        }
        Some(spec) if spec.flags.no_multi => {
            return fail(reply::error("ERR Command not allowed inside a transaction"))
        }
        _ => {}
    }
    drop(commands);
    if matches!(name, b"FLUSHALL" | b"FLUSHDB") {
        tx.flush = Some(req.clone());
    }
    let slot = match place(proxy, &req) {
        Ok(placed) => {
            tx.once |= placed.once;
            tx.writes |= placed.class == Class::Write || placed.once;
            placed.slot
        }
        Err(error) => return fail(error),
    };
    if let Some(s) = slot {
        match tx.slot {
            None => tx.slot = Some(s),
            Some(first) if first != s => {
                return fail(reply::error(&format!(
                    "CROSSSLOT Keys in a transaction must all be in one slot: this command's keys are in slot {s}, the transaction's in slot {first}"
                )))
            }
            Some(_) => {}
        }
    }
    if tx.queued >= MAX_QUEUED {
        return fail(reply::error(
            "ERR slotguard: too many commands in one transaction",
        ));
    }
    tx.body.extend_from_slice(req.raw());
    tx.queued += 1;
    (ready(reply::simple("QUEUED")), Class::Other)
}

/// EXEC: the transaction goes to its slot's owner as one unit (`MULTI`, the commands,
/// `EXEC`); the client gets EXEC's reply. A hold holds it whole. After WATCH it runs on the
/// connection that holds the watch.
///
/// A transaction that flushes (`FLUSHALL`, `FLUSHDB`) flushes its own node inside it, and
/// every other master as it is sent: not at one instant across the cluster (no cluster
/// can), but before any later command of the client's.
pub(super) fn exec(proxy: &Proxy, client: &mut Client, mut tx: Tx) -> Pending {
    let watched = client.watch;
    if tx.failed {
        client.unwatch();
        return ready(reply::error(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
    }
    let slot = match (watched, tx.slot) {
        (Some(w), Some(s)) if w != s => {
            client.unwatch();
            return ready(reply::error(&format!(
                "CROSSSLOT slotguard: the transaction's keys are in slot {s}, the watched keys in slot {w}; EXEC discarded"
            )));
        }
        (w, s) => s.or(w),
    };
    // Keyless, one that flushes runs on a master the client tracks keys on (a node tells
    // its tracking clients of a flush after EXEC's reply), or where slot 0 lives.
    let slot = slot.or(tx
        .flush
        .as_ref()
        .map(|_| tracked_slot(proxy, client).unwrap_or(0)));
    if let (Some(flush), Some(slot)) = (tx.flush.take(), slot) {
        flush_elsewhere(proxy, client, flush, slot);
    }
    if slot.is_some() {
        client.wrote(slot);
    }
    let (mut job, rx) = job_raw(client, Bytes::from_static(EXEC), slot);
    job.once = tx.once;
    job.write = tx.writes;
    let extra = job.extra();
    extra.lead = Some(tx.body.freeze());
    extra.lead_replies = tx.queued + 1;
    if watched.is_some() {
        client.watch = None;
        let extra = job.extra();
        extra.watch = true;
        extra.lease = Some(client.lease());
    }
    Pending::turn(Start::Job(job), rx)
}

/// A slot of a master the client has a tracking connection to.
pub(super) fn tracked_slot(proxy: &Proxy, client: &Client) -> Option<u16> {
    let nodes = client.tracking.as_ref()?.lease.nodes();
    let table = proxy.table.load();
    let mut masters = table.masters();
    masters
        .find(|(_, node)| nodes.contains(&node.addr))
        .map(|(slot, _)| slot)
}

/// Sends a transaction's `FLUSHALL` or `FLUSHDB` to every master but the one that serves
/// `slot` (where the transaction runs), on shared connections (a tracking client's own
/// would hear the flush before EXEC's reply). The client does not wait for them.
pub(super) fn flush_elsewhere(proxy: &Proxy, client: &Client, flush: Request, slot: u16) {
    let table = proxy.table.load();
    let owner = table.owner(slot).map(|n| n.addr.clone());
    let replies: Vec<_> = table
        .masters()
        .filter(|(_, node)| Some(&node.addr) != owner.as_ref())
        .map(|(slot, _)| {
            let raw = flush.raw().clone();
            let (job, rx) = Job::new(raw, Some(slot), client.id, client.resp3);
            proxy.dispatch(job);
            rx
        })
        .collect();
    tokio::spawn(async move {
        for rx in replies {
            let _ = rx.await;
        }
    });
}

/// WATCH: sent on the client's own connection to the owner of the keys' slot; the
/// transaction's EXEC will run there.
pub(super) fn watch(client: &mut Client, req: Request) -> (Pending, Class) {
    if req.len() < 2 {
        return (ready(reply::arity("watch")), Class::Other);
    }
    // Every argument is a key.
    let slot = key_slot(req.arg(1));
    if let Some(other) = req.args().skip(2).find(|k| key_slot(k) != slot) {
        return (
            ready(reply::error(&format!(
                "CROSSSLOT Keys in request don't hash to the same slot (key '{}' is in slot {slot}, key '{}' in slot {})",
                String::from_utf8_lossy(req.arg(1)),
                String::from_utf8_lossy(other),
                key_slot(other)
            ))),
            Class::Other,
        );
    }
    if let Some(first) = client.watch.filter(|&w| w != slot) {
        return (
            ready(reply::error(&format!(
                "CROSSSLOT slotguard: watched keys must all be in one slot: these are in slot {slot}, the ones watched already in slot {first}"
            ))),
            Class::Other,
        );
    }
    client.watch = Some(slot);
    let (mut job, rx) = job(client, req, Some(slot));
    let extra = job.extra();
    extra.watch = true;
    extra.lease = Some(client.lease());
    (Pending::turn(Start::Job(job), rx), Class::Read)
}
