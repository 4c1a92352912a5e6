//! The admin listener: a small HTTP/1.1 responder (one request per connection).
//!
//! - `/metrics`: Prometheus text format.
//! - `/status`: JSON: nodes, the slot map, unsettled slots, held requests, migrations.
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 once the slot map is loaded and every slot is served or held.
//! - `/`: a page that draws the 16384 slots, refreshed from `/status`.
//!
//! With `admin.token` set, every path but `/healthz` and the page needs `Authorization:
//! Bearer <token>` (the page takes it from its address, `/#token=...`, for `/status`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::same_secret;
use crate::protocol::SLOTS;
use crate::proxy::snapshot::Snapshot;
use crate::proxy::Proxy;

/// Largest request head read.
const MAX_HEAD: usize = 8192;
const PAGE: &str = include_str!("page.html");

/// Longest pause after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let mut backoff = Duration::ZERO;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                tokio::spawn(answer(proxy.clone(), stream));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, longer each time, rather
                // than spin.
                backoff = next_backoff(backoff);
                tracing::warn!(error = %e, ?backoff, "admin accept failed");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// 10 ms, doubling up to [`ACCEPT_BACKOFF_MAX`].
fn next_backoff(last: Duration) -> Duration {
    (last * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX)
}

async fn answer(proxy: Arc<Proxy>, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 && head.len() + n <= MAX_HEAD => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let token = proxy.admin_token();
    // The health check and the page itself (static, no data) are open.
    let allowed = path == b"/healthz"
        || path == b"/"
        || token.is_none_or(|t| bearer(&head).is_some_and(|b| same_secret(b, t.as_bytes())));
    let (status, kind, body) = if !allowed {
        (
            "401 Unauthorized\r\nwww-authenticate: Bearer",
            "text/plain",
            "a bearer token is required (admin.token)\n".to_string(),
        )
    } else if method != b"GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else {
        route(&proxy, path)
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// The token of an `Authorization: Bearer` header in a request head.
fn bearer(head: &[u8]) -> Option<&[u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !name.eq_ignore_ascii_case(b"authorization") {
            return None;
        }
        let value = value.trim_ascii();
        let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
        scheme
            .eq_ignore_ascii_case(b"bearer")
            .then(|| token.trim_ascii())
    })
}

fn route(proxy: &Proxy, path: &[u8]) -> (&'static str, &'static str, String) {
    match path {
        b"/metrics" => ("200 OK", "text/plain; version=0.0.4", proxy.metrics_text()),
        b"/status" => ("200 OK", "application/json", status(proxy).to_string()),
        b"/migrations" => (
            "200 OK",
            "application/json",
            moving(&proxy.snapshot()).to_string(),
        ),
        b"/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        b"/readyz" => match readiness(&proxy.snapshot()) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        b"/" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    }
}

/// Why the proxy is not ready.
enum NotReady {
    /// No slot map yet.
    NoMap,
    /// Slots with no owner and no held request.
    Unserved(usize),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::NoMap => f.write_str("the slot map is not loaded yet"),
            NotReady::Unserved(n) => write!(f, "{n} slots have no owner"),
        }
    }
}

/// Ready once the slot map is loaded and every slot is served or has held requests.
fn readiness(now: &Snapshot) -> Result<(), NotReady> {
    if now.table.generation == 0 {
        return Err(NotReady::NoMap);
    }
    let unserved = (0..SLOTS as u16)
        .filter(|&s| {
            now.table.owner(s).is_none() && !now.held.iter().any(|(h, _, _)| *h == Some(s))
        })
        .count();
    if unserved > 0 {
        return Err(NotReady::Unserved(unserved));
    }
    Ok(())
}

/// The last move of slots asked for through the proxy (`SLOTGUARD MIGRATE`, ...).
fn moving(now: &Snapshot) -> Value {
    serde_json::to_value(now.moving.as_ref()).unwrap_or(Value::Null)
}

/// The `/status` document.
pub fn status(proxy: &Proxy) -> Value {
    document(&proxy.snapshot())
}

fn document(now: &Snapshot) -> Value {
    let (map, status) = (&now.map, &now.status);
    let view = &status.view;
    // Owner ranges of the slot map the proxy routes by.
    let ranges: Vec<Value> = map
        .ranges()
        .into_iter()
        .map(|(a, b, addr)| json!([a, b, addr]))
        .collect();
    // Every slot the authority does not call stable, with its repair plan.
    let unsettled: Vec<Value> = status
        .decisions
        .iter()
        .map(|d| json!({"slot": d.slot, "state": d.state, "plan": d.plan}))
        .collect();
    let mut migrations: Vec<Value> = Vec::new();
    for node in &view.nodes {
        for (slot, target) in &node.migrating {
            let to = view.addr_of(target).unwrap_or(target);
            migrations.push(json!({"slot": slot, "from": node.addr, "to": to}));
        }
    }
    let held: Vec<Value> = now
        .held
        .iter()
        .map(|(slot, n, waited)| json!({"slot": slot, "requests": n, "waiting_ms": waited.as_millis() as u64}))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": now.uptime.as_secs(),
        "clients": now.clients,
        "ready": readiness(now).is_ok(),
        "slot_map": {"generation": map.generation, "covered": map.covered(), "ranges": ranges},
        "nodes": view.nodes,
        "nodes_answering": view.answered,
        "unsettled": unsettled,
        "held": held,
        "migrations": migrations,
        "moving": moving(now),
        "authority": now.authority.as_ref(),
        "durability": {
            "ack": match now.ack {
                crate::config::Ack::Master => "master",
                crate::config::Ack::Replicated => "replicated",
            },
            "masters_without_replica": view.unprotected(),
            "promote": match now.promote {
                crate::config::Promote::Synced => "synced",
                crate::config::Promote::Any => "any",
            },
            "replicas_kept_from_failover": now.replicas_kept_from_failover,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_up_to_a_second() {
        let mut pause = Duration::ZERO;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            pause = next_backoff(pause);
            pauses.push(pause.as_millis());
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }
}
