//! Exactly once, for writes that must not run twice (INCR, LPUSH, ...), with
//! `durability.ack = "replicated"`.
//!
//! Such a write, written to a connection that then broke, may or may not have run. Sent
//! again it could apply twice; not sent again, its client would have to hear an error.
//! So in replicated mode the proxy sends it inside a script that first looks for a
//! marker, a key of the write's own slot named uniquely for this write:
//!
//! - no marker: the script runs the write, stores its reply in the marker (for
//!   [`MARKER_TTL_MS`]) and answers the reply. The write and the marker replicate together
//!   (a script's effects travel as one transaction), so a replica has both or neither.
//! - a marker: the write ran already; the script answers the stored reply.
//!
//! Sent again after a break (to the same master, or to the replica that took over), the
//! script answers exactly what the first run did, or runs the write for the first time
//! where it never arrived or died with its master before reaching a replica. The write
//! becomes repeatable, and is parked and sent again like any other.
//!
//! Only writes whose reply a script gives back unchanged, in RESP2 and RESP3, are wrapped:
//! an integer, a bulk string, a status or a null (see [`WRAPPED`]). A transaction, a
//! script of the client's own, and a write with an array reply stay as they are: in doubt
//! after a break, they are answered an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::protocol::slot::slot_tag;
use crate::protocol::Request;
use crate::routing::command::{CommandSpec, KeyPositions};

/// The script. `KEYS[1]` is the marker, the other keys are the write's (declared, so
/// that the node checks them as it checks the write's own); `ARGV[1]` is the marker's
/// lifetime in milliseconds and the rest is the write itself. Integers are stored with
/// `%.0f`: a script sees every integer as a Lua number, exact up to 2^53.
pub const SCRIPT: &str = "\
local m = redis.call('GET', KEYS[1])
if m then
  local kind, v = string.sub(m, 1, 1), string.sub(m, 2)
  if kind == 'i' then return tonumber(v) end
  if kind == 'b' then return v end
  if kind == 's' then return {ok = v} end
  return nil
end
local r = redis.pcall(unpack(ARGV, 2))
if type(r) == 'table' and r.err then return r end
if type(r) == 'number' then m = 'i' .. string.format('%.0f', r)
elseif type(r) == 'string' then m = 'b' .. r
elseif type(r) == 'table' and r.ok then m = 's' .. r.ok
else m = 'n'; r = nil end
redis.call('SET', KEYS[1], m, 'PX', ARGV[1])
return r
";

/// How long a marker lives at least. A write is sent again only while it is held, so for
/// at most `hold.timeout` (20 s by default) after its first try; a marker lives twice
/// that, and never less than this.
const MARKER_TTL: Duration = Duration::from_secs(120);

/// The writes that are wrapped: each must not run twice, and answers an integer, a bulk
/// string, a status or a null. Pops that take a count answer arrays, and are not wrapped.
const WRAPPED: &[&str] = &[
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "INCRBYFLOAT",
    "APPEND",
    "LPUSH",
    "RPUSH",
    "LPUSHX",
    "RPUSHX",
    "LINSERT",
    "LPOP",
    "RPOP",
    "SPOP",
    "RPOPLPUSH",
    "LMOVE",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HSETNX",
    "SETNX",
    "GETSET",
    "GETDEL",
    "SET",
    "XADD",
];

/// Most arguments a wrapped write may have: the script passes them through Lua's stack.
const MOST_ARGS: usize = 1000;

/// Names the markers of this process's writes, unique across restarts.
pub struct Markers {
    sha: String,
    run: String,
    next: AtomicU64,
}

impl Default for Markers {
    fn default() -> Self {
        Self::new()
    }
}

impl Markers {
    pub fn new() -> Markers {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = format!("{nanos}:{}", std::process::id());
        let run = sha1_smol::Sha1::from(seed).digest().to_string()[..16].to_string();
        Markers {
            sha: sha1_smol::Sha1::from(SCRIPT).digest().to_string(),
            run,
            next: AtomicU64::new(0),
        }
    }

    /// The script's SHA1, for `EVALSHA`.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// `req` as the script that runs it once, or `None` when it is not wrapped (see
    /// [`WRAPPED`]). `spec` is the command's, `slot` its keys' slot; `hold` is how long a
    /// write may be held and sent again.
    pub fn wrap(
        &self,
        spec: &CommandSpec,
        req: &Request,
        slot: u16,
        hold: Duration,
    ) -> Option<Bytes> {
        let name = spec.name.as_str();
        if !WRAPPED.contains(&name) || req.len() > MOST_ARGS {
            return None;
        }
        // A pop with a count answers an array.
        if matches!(name, "LPOP" | "RPOP" | "SPOP") && req.len() != 2 {
            return None;
        }
        let mut keys = KeyPositions::new();
        spec.key_positions(req, &mut keys);
        if keys.is_empty() {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let marker = format!("{{{}}}slotguard:once:{}:{seq}", slot_tag(slot), self.run);
        let numkeys = (keys.len() + 1).to_string();
        let ttl = MARKER_TTL.max(hold * 2).as_millis().to_string();
        let mut args: Vec<&[u8]> = Vec::with_capacity(req.len() + keys.len() + 5);
        args.extend([
            b"EVALSHA".as_slice(),
            self.sha.as_bytes(),
            numkeys.as_bytes(),
            marker.as_bytes(),
        ]);
        args.extend(keys.iter().map(|&k| req.arg(k)));
        args.push(ttl.as_bytes());
        args.extend(req.args());
        Some(Request::from_args(&args).into_raw())
    }
}
