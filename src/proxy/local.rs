//! Commands the proxy answers itself: connection state (PING, ECHO, SELECT, AUTH, HELLO,
//! CLIENT) and the one-node cluster it shows cluster-aware clients (CLUSTER SLOTS, SHARDS,
//! NODES, INFO, MYID, KEYSLOT): every slot served at the address the client connected to.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::client::Client;
use super::table::{Acl, Entry};
use super::Proxy;
use crate::config::{same_secret, Access};
use crate::protocol::reply::{self, arity, array_header, bulk, Value};
use crate::protocol::{key_slot, Request};

pub fn ping(req: &Request) -> Bytes {
    match req.len() {
        1 => reply::simple("PONG"),
        2 => reply::bulk_reply(req.arg(1)),
        _ => arity("ping"),
    }
}

pub fn echo(req: &Request) -> Bytes {
    if req.len() != 2 {
        return arity("echo");
    }
    reply::bulk_reply(req.arg(1))
}

pub fn select(req: &Request) -> Bytes {
    if req.len() != 2 {
        return arity("select");
    }
    match req.arg(1) {
        b"0" => Bytes::from_static(reply::OK),
        _ => reply::error("ERR SELECT is not allowed in cluster mode"),
    }
}

/// Checks a password against the proxy's. `user` must be `default` (or absent).
/// Checks a user's password; the client becomes that user.
fn log_in(
    proxy: &Proxy,
    client: &mut Client,
    user: Option<&[u8]>,
    pass: &[u8],
) -> Result<(), Bytes> {
    let config = proxy.config();
    let user = user.unwrap_or(b"default");
    let (ip, now) = (client.peer.ip(), Instant::now());
    if let Err(wait) = proxy.auth_limit.check(ip, now) {
        return Err(reply::error(&format!(
            "ERR slotguard: too many failed AUTH attempts from {ip}; try again in {:.1}s",
            wait.as_secs_f64()
        )));
    }
    let found = if user == b"default" {
        if config.password.is_none() && config.users.is_empty() {
            return Err(reply::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ));
        }
        config
            .password
            .as_deref()
            .filter(|expected| same_secret(expected.as_bytes(), pass))
            .map(|_| ("default", Access::Admin))
    } else {
        config
            .users
            .iter()
            .find(|u| u.name.as_bytes() == user && same_secret(u.password.as_bytes(), pass))
            .map(|u| (u.name.as_str(), u.access))
    };
    let Some((name, access)) = found else {
        proxy.auth_limit.failed(ip, now);
        return Err(reply::error(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ));
    };
    client.authenticated = true;
    client.user = name.into();
    client.access = access;
    Ok(())
}

pub fn auth(proxy: &Proxy, client: &mut Client, req: &Request) -> Bytes {
    let result = match req.len() {
        2 => log_in(proxy, client, None, req.arg(1)),
        3 => log_in(proxy, client, Some(req.arg(1)), req.arg(2)),
        _ => return reply::error("ERR syntax error"),
    };
    match result {
        Ok(()) => Bytes::from_static(reply::OK),
        Err(e) => e,
    }
}

/// The error for a command this client's user may not run, if it may not: by the
/// command's line in [`super::table`] (`Acl`), and for the rest by the server's flags.
pub fn forbidden(
    proxy: &Proxy,
    client: &Client,
    entry: Option<&Entry>,
    name: &[u8],
    req: &Request,
) -> Option<Bytes> {
    let acl = entry.map_or(Acl::Flags, |e| e.acl.of(req));
    let allowed = match (client.access, acl) {
        (Access::Admin, _) => true,
        (_, Acl::Admin) => false,
        (Access::ReadWrite, _) => true,
        (Access::ReadOnly, Acl::Writes) => false,
        (Access::ReadOnly, Acl::Flags | Acl::BySub { .. }) => {
            !proxy.commands().lookup(req).is_some_and(|c| c.flags.write)
        }
    };
    (!allowed).then(|| noperm(client, name))
}

/// Redis's refusal of a command to a user without the right.
fn noperm(client: &Client, name: &[u8]) -> Bytes {
    reply::error(&format!(
        "NOPERM User {} has no permissions to run the '{}' command",
        client.user,
        String::from_utf8_lossy(name).to_lowercase()
    ))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches the client's protocol.
pub fn hello(proxy: &Proxy, client: &mut Client, req: &Request) -> Bytes {
    let mut i = 1;
    let mut resp3 = client.resp3;
    if req.len() > 1 {
        match req.arg(1) {
            b"2" => resp3 = false,
            b"3" => resp3 = true,
            _ => return reply::error("NOPROTO unsupported protocol version"),
        }
        i = 2;
    }
    let mut name = None;
    while i < req.len() {
        let opt = req.arg(i).to_ascii_uppercase();
        match opt.as_slice() {
            b"AUTH" if i + 2 < req.len() => {
                if let Err(e) = log_in(proxy, client, Some(req.arg(i + 1)), req.arg(i + 2)) {
                    return e;
                }
                i += 3;
            }
            b"SETNAME" if i + 1 < req.len() => {
                name = Some(req.arg_bytes(i + 1));
                i += 2;
            }
            _ => {
                return reply::error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(req.arg(i))
                ))
            }
        }
    }
    if !client.authenticated {
        return noauth();
    }
    client.resp3 = resp3;
    if let Some(name) = name {
        client.name = Some(name);
    }
    let fields = [
        ("server", Value::Bulk(Bytes::from_static(b"redis"))),
        (
            "version",
            Value::Bulk(Bytes::from(proxy.routing.server_version.load().to_string())),
        ),
        ("proto", Value::Int(if resp3 { 3 } else { 2 })),
        ("id", Value::Int(client.id as i64)),
        ("mode", Value::Bulk(Bytes::from_static(b"cluster"))),
        ("role", Value::Bulk(Bytes::from_static(b"master"))),
        ("modules", Value::Array(vec![])),
    ];
    let mut out = BytesMut::new();
    if resp3 {
        out.extend_from_slice(format!("%{}\r\n", fields.len()).as_bytes());
    } else {
        array_header(&mut out, fields.len() * 2);
    }
    for (k, v) in fields {
        bulk(&mut out, k.as_bytes());
        v.encode(&mut out);
    }
    out.freeze()
}

pub fn noauth() -> Bytes {
    reply::error("NOAUTH Authentication required.")
}

pub fn client(client: &mut Client, req: &Request) -> Bytes {
    if req.len() < 2 {
        return arity("client");
    }
    let sub = req.arg(1).to_ascii_uppercase();
    match (sub.as_slice(), req.len()) {
        (b"SETNAME", 3) => {
            if req.arg(2).iter().any(|&b| b <= b' ' || b > b'~') {
                return reply::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            client.name = (!req.arg(2).is_empty()).then(|| req.arg_bytes(2));
            Bytes::from_static(reply::OK)
        }
        (b"GETNAME", 2) => match &client.name {
            Some(name) => reply::bulk_reply(name),
            None => reply::nil(client.resp3),
        },
        (b"ID", 2) => reply::int(client.id as i64),
        (b"SETINFO", 4) | (b"NO-EVICT", 3) | (b"NO-TOUCH", 3) => Bytes::from_static(reply::OK),
        // OFF and SKIP have no reply of their own; SKIP silences the next command's.
        (b"REPLY", 3) => match req.arg(2).to_ascii_uppercase().as_slice() {
            b"ON" => {
                client.replies.on();
                Bytes::from_static(reply::OK)
            }
            b"OFF" => {
                client.replies.off = true;
                Bytes::new()
            }
            b"SKIP" => {
                client.replies.skip_next = !client.replies.off;
                Bytes::new()
            }
            _ => reply::error("ERR syntax error"),
        },
        (b"CACHING", 3) => caching(client, req.arg(2)),
        (b"GETREDIR", 2) => {
            reply::int(super::clients::tracking::redirect(client.tracking.as_ref()))
        }
        _ => reply::error(&format!(
            "ERR slotguard: CLIENT {} is not supported through the proxy",
            String::from_utf8_lossy(&sub)
        )),
    }
}

/// `CLIENT CACHING yes|no`: whether the next command's reads are tracked, with `OPTIN`
/// or `OPTOUT` (Redis's words for the errors).
fn caching(client: &mut Client, arg: &[u8]) -> Bytes {
    let Some(tracker) = &mut client.tracking else {
        return reply::error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
    };
    match arg.to_ascii_uppercase().as_slice() {
        b"YES" if tracker.mode().optin => tracker.caching = Some(true),
        b"YES" => {
            return reply::error(
                "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            )
        }
        b"NO" if tracker.mode().optout => tracker.caching = Some(false),
        b"NO" => {
            return reply::error(
                "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            )
        }
        _ => return reply::error("ERR syntax error"),
    }
    Bytes::from_static(reply::OK)
}

/// `CLUSTER ...`: the proxy presents itself as a one-node cluster owning every slot.
/// Returns `None` for subcommands the slot's owner should answer.
pub fn cluster(proxy: &Proxy, client: &Client, req: &Request) -> Option<Bytes> {
    if req.len() < 2 {
        return Some(arity("cluster"));
    }
    let sub = req.arg(1).to_ascii_uppercase();
    let ip = client.local.ip().to_string();
    let port = client.local.port();
    let id = proxy.id.as_str();
    let mut out = BytesMut::new();
    match sub.as_slice() {
        b"SLOTS" => {
            array_header(&mut out, 1);
            array_header(&mut out, 3);
            Value::Int(0).encode(&mut out);
            Value::Int(16383).encode(&mut out);
            array_header(&mut out, 3);
            bulk(&mut out, ip.as_bytes());
            Value::Int(port as i64).encode(&mut out);
            bulk(&mut out, id.as_bytes());
        }
        b"SHARDS" => {
            array_header(&mut out, 1);
            array_header(&mut out, 4);
            bulk(&mut out, b"slots");
            Value::Array(vec![Value::Int(0), Value::Int(16383)]).encode(&mut out);
            bulk(&mut out, b"nodes");
            array_header(&mut out, 1);
            let node = [
                ("id", Value::Bulk(Bytes::from(id.to_string()))),
                ("port", Value::Int(port as i64)),
                ("ip", Value::Bulk(Bytes::from(ip.clone()))),
                ("endpoint", Value::Bulk(Bytes::from(ip.clone()))),
                ("role", Value::Bulk(Bytes::from_static(b"master"))),
                ("replication-offset", Value::Int(0)),
                ("health", Value::Bulk(Bytes::from_static(b"online"))),
            ];
            array_header(&mut out, node.len() * 2);
            for (k, v) in node {
                bulk(&mut out, k.as_bytes());
                v.encode(&mut out);
            }
        }
        b"NODES" => {
            let line = format!("{id} {ip}:{port}@{port} myself,master - 0 0 1 connected 0-16383\n");
            bulk(&mut out, line.as_bytes());
        }
        b"INFO" => {
            let text =
                "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n\
                cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\n\
                cluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n";
            bulk(&mut out, text.as_bytes());
        }
        b"MYID" => bulk(&mut out, id.as_bytes()),
        b"KEYSLOT" if req.len() == 3 => Value::Int(key_slot(req.arg(2)) as i64).encode(&mut out),
        b"KEYSLOT" => return Some(arity("cluster|keyslot")),
        b"COUNTKEYSINSLOT" | b"GETKEYSINSLOT" => return None,
        _ => {
            return Some(reply::error(&format!(
                "ERR slotguard: CLUSTER {} is not supported through the proxy",
                String::from_utf8_lossy(&sub)
            )))
        }
    }
    Some(out.freeze())
}

/// The `INFO` sections that describe the proxy's own process, in Redis's format: `server`,
/// `clients`, `replication` (a master with no replica), `cpu`, and `proxy`.
pub fn info_sections(proxy: &Proxy, client: &Client) -> String {
    let m = &proxy.metrics;
    let uptime = proxy.started.elapsed().as_secs();
    let now_usec = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let (user, sys) = super::info::cpu_seconds();
    let zeros = "0".repeat(40);
    format!(
        "# Server\r\nredis_version:{version}\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\n\
         redis_mode:cluster\r\nos:{os} {arch}\r\narch_bits:64\r\nprocess_id:{pid}\r\n\
         run_id:{id}\r\ntcp_port:{port}\r\nserver_time_usec:{now_usec}\r\n\
         uptime_in_seconds:{uptime}\r\nuptime_in_days:{days}\r\nhz:10\r\n\r\n\
         # Clients\r\nconnected_clients:{clients}\r\ncluster_connections:0\r\n\
         maxclients:{maxclients}\r\nblocked_clients:{blocked}\r\ntracking_clients:{tracking}\r\n\r\n\
         # Replication\r\nrole:master\r\nconnected_slaves:0\r\n\
         master_failover_state:no-failover\r\nmaster_replid:{id}\r\nmaster_replid2:{zeros}\r\n\
         master_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\n\
         repl_backlog_size:0\r\nrepl_backlog_first_byte_offset:0\r\nrepl_backlog_histlen:0\r\n\r\n\
         # CPU\r\nused_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\n\
         used_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\n\
         used_cpu_sys_main_thread:{sys:.6}\r\nused_cpu_user_main_thread:{user:.6}\r\n\r\n\
         # Proxy\r\nslotguard_version:{ours}\r\nslotguard_redirects_absorbed:{redirects}\r\n\
         slotguard_requests_held:{held}\r\nslotguard_slot_map_generation:{generation}\r\n\
         slotguard_nodes:{nodes}\r\n",
        version = proxy.routing.server_version.load(),
        os = std::env::consts::OS,
        arch = std::env::consts::ARCH,
        pid = std::process::id(),
        id = proxy.id,
        port = client.local.port(),
        days = uptime / 86400,
        clients = proxy.clients.count(),
        tracking = proxy.clients.tracking(),
        maxclients = proxy.config().max_clients,
        blocked = m.clients_blocked.get(),
        ours = env!("CARGO_PKG_VERSION"),
        redirects = m.redirects_total(),
        held = proxy.hold.len(),
        generation = proxy.table.load().generation,
        nodes = proxy.nodes_known(),
    )
}

/// (P|S)UNSUBSCRIBE from a client that subscribed to nothing: what Redis answers.
pub fn not_subscribed(resp3: bool, req: &Request) -> Bytes {
    let what = req.arg(0).to_ascii_lowercase();
    let what = std::str::from_utf8(&what).unwrap_or("unsubscribe");
    if req.len() < 2 {
        return confirmation(resp3, what, None, 0);
    }
    let mut out = BytesMut::new();
    for i in 1..req.len() {
        out.extend_from_slice(&confirmation(resp3, what, Some(req.arg(i)), 0));
    }
    out.freeze()
}

/// An element of a push or array the proxy writes itself.
pub enum Item<'a> {
    Text(&'a [u8]),
    Bulk(Option<&'a [u8]>),
    Int(usize),
}

/// A pub/sub frame: a push for RESP3 clients, an array for RESP2 ones.
pub fn push(resp3: bool, items: &[Item]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(if resp3 { b'>' } else { b'*' });
    out.put_slice(items.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for item in items {
        match item {
            Item::Text(text) | Item::Bulk(Some(text)) => reply::bulk(&mut out, text),
            Item::Bulk(None) if resp3 => out.put_slice(b"_\r\n"),
            Item::Bulk(None) => out.put_slice(b"$-1\r\n"),
            Item::Int(n) => {
                out.put_u8(b':');
                out.put_slice(n.to_string().as_bytes());
                out.put_slice(b"\r\n");
            }
        }
    }
    out.freeze()
}

/// `subscribe ch 3` and the like.
pub fn confirmation(resp3: bool, what: &str, name: Option<&[u8]>, count: usize) -> Bytes {
    push(
        resp3,
        &[
            Item::Text(what.as_bytes()),
            Item::Bulk(name),
            Item::Int(count),
        ],
    )
}
