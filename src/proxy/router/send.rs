//! How a routed request leaves: to one slot's owner, split by slot, to every master, or
//! refused with the reason.

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::ReadFrom;
use crate::metrics::Class;
use crate::protocol::{key_slot, reply, Request, SLOTS};
use crate::proxy::backend::job::Job;
use crate::proxy::client::Client;
use crate::proxy::fan::{self, Split, SplitKind};
use crate::proxy::merge::{Join, Merge};
use crate::proxy::owed::{Pending, Start};
use crate::proxy::Proxy;
use crate::routing::command::KeyPositions;
pub(super) fn ready(bytes: Bytes) -> Pending {
    Pending::Ready(bytes)
}

pub(super) fn refused(name: &[u8], why: &str) -> (Pending, Class) {
    (unsupported(name, why), Class::Other)
}

pub(super) fn parse_slot(arg: &[u8]) -> Option<u16> {
    let slot: u16 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    ((slot as usize) < SLOTS).then_some(slot)
}

pub(super) fn unsupported(name: &[u8], why: &str) -> Pending {
    ready(unsupported_error(name, why))
}

pub(super) fn unsupported_error(name: &[u8], why: &str) -> Bytes {
    reply::error(&format!(
        "ERR slotguard: '{}' is not supported: {why}",
        String::from_utf8_lossy(name).to_lowercase()
    ))
}
/// Any other command: by its keys' slot, or to any master when it has none. A blocking
/// command runs on the client's own connection.
pub(super) fn keyed(proxy: &Proxy, client: &mut Client, req: Request) -> (Pending, Class) {
    let placed = match place(proxy, &req) {
        Ok(placed) => placed,
        Err(error) => return (ready(error), Class::Other),
    };
    let once = match (placed.once, placed.slot) {
        (true, Some(slot)) if !placed.blocking => proxy.run_once(&req, slot),
        _ => None,
    };
    let (mut job, rx) = job(client, req, placed.slot);
    job.write = placed.class == Class::Write || placed.once;
    match once {
        // Sent again as often as need be, it runs once.
        Some(script) => job.raw = script,
        None => job.once = placed.once,
    }
    // A blocking command, or a request so large that on a shared connection other
    // clients' requests would wait while it is written, runs on the client's own
    // connection, in its turn.
    if placed.blocking || job.raw.len() > LARGE_REQUEST {
        if let (false, Some(slot), Class::Write) = (placed.blocking, placed.slot, placed.class) {
            client.wrote(Some(slot));
        }
        job.extra().lease = Some(client.lease());
        let start = match placed.blocking {
            true => Start::Block(job),
            false => Start::Job(job),
        };
        return (Pending::turn(start, rx), placed.class);
    }
    match (placed.slot, placed.class) {
        (Some(_), Class::Read) if client.read_from != ReadFrom::Master => {
            job.read_from = client.read_from;
        }
        (Some(slot), Class::Write) => client.wrote(Some(slot)),
        _ => {}
    }
    proxy.dispatch(job);
    (Pending::Wait(rx), placed.class)
}

/// Requests larger than this travel on the client's own connection (see [`keyed`]).
pub(super) const LARGE_REQUEST: usize = 1024 * 1024;

/// Where a command goes.
pub(super) struct Placed {
    /// The slot of its keys; `None`: keyless.
    pub(super) slot: Option<u16>,
    pub(super) class: Class,
    /// It may block: it needs a connection of its own.
    pub(super) blocking: bool,
    /// It must not run twice (see [`Job::once`]).
    pub(super) once: bool,
}

/// Where a command goes, or the error to answer instead (refused, or keys in more than one
/// slot).
pub(super) fn place(proxy: &Proxy, req: &Request) -> Result<Placed, Bytes> {
    let commands = proxy.commands();
    let Some(spec) = commands.lookup(req) else {
        // Unknown here, maybe known to the server: it will answer for itself.
        // Nothing is known of what it does: it is not sent twice.
        return Ok(Placed {
            slot: None,
            class: Class::Other,
            blocking: false,
            once: true,
        });
    };
    let flags = spec.flags;
    let class = if flags.write {
        Class::Write
    } else if flags.readonly {
        Class::Read
    } else {
        Class::Other
    };
    let refuse = |why: &str| Err(unsupported_error(spec.name.as_bytes(), why));
    if spec.name == "DEBUG" {
        return debug(req);
    }
    // Flagged admin, but they only look: answered by a master (PFDEBUG by its key's).
    if flags.admin && !matches!(spec.name.as_str(), "PFSELFTEST" | "PFDEBUG") {
        return refuse("admin commands are not forwarded; run them on the nodes");
    }
    let blocking = flags.blocking && !is_xread_without_block(&spec.name, req);
    if flags.pubsub
        && !matches!(spec.name.as_str(), "PUBLISH" | "SPUBLISH" | "PUBSUB")
        && !spec.name.starts_with("PUBSUB|")
    {
        return refuse("pub/sub subscriptions are not supported through slotguard yet");
    }
    if matches!(spec.name.as_str(), "EVAL" | "EVAL_RO") && req.len() > 1 {
        proxy.remember_script(&req.arg_bytes(1));
    }
    let mut keys = KeyPositions::new();
    spec.key_positions(req, &mut keys);
    let mut slot = None;
    for &pos in &keys {
        let s = key_slot(req.arg(pos));
        match slot {
            None => slot = Some((s, pos)),
            Some((first, first_pos)) if first != s => {
                return Err(reply::error(&format!(
                    "CROSSSLOT Keys in request don't hash to the same slot (key '{}' is in slot {first}, key '{}' in slot {s})",
                    String::from_utf8_lossy(req.arg(first_pos)),
                    String::from_utf8_lossy(req.arg(pos)),
                )))
            }
            Some(_) => {}
        }
    }
    Ok(Placed {
        slot: slot.map(|(s, _)| s),
        class,
        blocking,
        once: spec.runs_once(req),
    })
}

/// DEBUG subcommands that look at one key (or a few of one slot): its master answers.
pub(super) const DEBUG_KEYED: &[&str] =
    &["OBJECT", "DIGEST-VALUE", "SDSLEN", "LISTPACK", "ZIPLIST"];
/// DEBUG subcommands that only look, log or wait: any master answers.
pub(super) const DEBUG_KEYLESS: &[&str] = &["HELP", "SLEEP", "LOG", "STRINGMATCH-LEN", "JMAP"];

/// Where a DEBUG goes: to the master of its key, or to any master, for what only looks or
/// waits. What can crash, restart or rewrite a node, or change how it works for every
/// client (SEGFAULT, RELOAD, SET-ACTIVE-EXPIRE, ...), stays refused: run it on the node.
pub(super) fn debug(req: &Request) -> Result<Placed, Bytes> {
    let sub = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
    let placed = |slot| Placed {
        slot,
        class: Class::Other,
        blocking: false,
        once: false,
    };
    if DEBUG_KEYLESS.contains(&sub.as_str()) {
        return Ok(placed(None));
    }
    if !DEBUG_KEYED.contains(&sub.as_str()) {
        let name = format!("debug {}", sub.to_lowercase());
        let why = "it can crash, restart or rewrite a node, or change it for every client; run it on the node";
        return Err(unsupported_error(name.trim_end().as_bytes(), why));
    }
    if req.len() < 3 {
        return Err(reply::error(&format!(
            "ERR wrong number of arguments for 'debug|{}' command",
            sub.to_lowercase()
        )));
    }
    let slot = key_slot(req.arg(2));
    if (3..req.len()).any(|i| key_slot(req.arg(i)) != slot) {
        return Err(reply::error(
            "CROSSSLOT Keys in request don't hash to the same slot",
        ));
    }
    Ok(placed(Some(slot)))
}

/// XREAD and XREADGROUP are flagged blocking, but only block with a BLOCK option.
pub(super) fn is_xread_without_block(name: &str, req: &Request) -> bool {
    matches!(name, "XREAD" | "XREADGROUP") && !req.args().any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

pub(super) fn job(
    client: &Client,
    req: Request,
    slot: Option<u16>,
) -> (Job, oneshot::Receiver<Bytes>) {
    job_raw(client, req.into_raw(), slot)
}

/// The client's job for `raw`; a tracking client's takes its tracking connections.
pub(super) fn job_raw(
    client: &Client,
    raw: Bytes,
    slot: Option<u16>,
) -> (Job, oneshot::Receiver<Bytes>) {
    let (mut job, rx) = Job::new(raw, slot, client.id, client.resp3);
    if let Some(tracker) = &client.tracking {
        tracker.carry().apply(&mut job);
    }
    (job, rx)
}

/// Sends a request to one slot's owner (or any master for `None`).
pub(super) fn one(proxy: &Proxy, client: &Client, req: Request, slot: Option<u16>) -> Pending {
    let (job, rx) = job(client, req, slot);
    proxy.dispatch(job);
    Pending::Wait(rx)
}

/// A multi-key command split by slot (see [`fan`]). One slot: sent as it is.
pub(super) fn split(
    proxy: &Proxy,
    client: &Client,
    req: Request,
    stride: usize,
    kind: SplitKind,
) -> Pending {
    if req.len() < 2 || !(req.len() - 1).is_multiple_of(stride) {
        return ready(reply::arity(
            &String::from_utf8_lossy(req.arg(0)).to_lowercase(),
        ));
    }
    let first = key_slot(req.arg(1));
    let groups_needed = (1..req.len())
        .step_by(stride)
        .any(|i| key_slot(req.arg(i)) != first);
    if !groups_needed {
        return one(proxy, client, req, Some(first));
    }
    let carry = client.tracking.as_ref().map(|t| t.carry());
    let split = Split::new(req, stride, kind, client.id, client.resp3, carry);
    // So many parts that sent at once they would keep other clients waiting: a window
    // at a time, in the client's turn.
    if split.parts() > fan::WINDOW {
        let (reply, rx) = oneshot::channel();
        return Pending::turn(Start::Fan(split, reply), rx);
    }
    let parts = (0..split.parts())
        .map(|g| {
            let (job, rx) = split.part(g);
            proxy.dispatch(job);
            rx
        })
        .collect();
    Pending::Join(Join::new(parts, split.merge(), client.resp3))
}

/// Sends the same request to every master; each part follows its master's lowest slot,
/// so a failover in between re-routes it to the promoted replica.
pub(super) fn all_masters(proxy: &Proxy, client: &Client, req: &Request, merge: Merge) -> Pending {
    let table = proxy.table.load();
    let parts: Vec<_> = table
        .masters()
        .map(|(slot, _)| {
            let (job, rx) = job(client, req.clone(), Some(slot));
            proxy.dispatch(job);
            rx
        })
        .collect();
    if parts.is_empty() {
        return ready(reply::error(
            "CLUSTERDOWN slotguard: no master is known yet (is any seed reachable?)",
        ));
    }
    Pending::Join(Join::new(parts, merge, client.resp3))
}
