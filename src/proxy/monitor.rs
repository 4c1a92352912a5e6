//! MONITOR: every command that passes through the proxy, from any client, as Redis prints
//! it (`+1339518083.107412 [0 127.0.0.1:60866] "set" "x" "6"`), with the arguments that
//! carry passwords redacted (AUTH, HELLO ... AUTH, MIGRATE ... AUTH|AUTH2). Admin commands
//! are not shown, as a node does not show them.
//!
//! It costs nothing while no one monitors: a session looks at one counter per request.
//! While someone does, each request is written once into a broadcast channel; a monitor
//! that falls further behind than the channel holds is disconnected, as Redis disconnects
//! a monitor past its output limit.
//!
//! A client in MONITOR mode may send PING (answered, and shown), RESET (back to an
//! ordinary client) and QUIT; anything else gets Redis's refusal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use super::client::Client;
use super::Proxy;
use crate::protocol::{reply, Request, Scanner};
use crate::tls::{write, Stream};

/// Lines a monitor may fall behind before it is disconnected.
const BEHIND: usize = 4096;

/// The proxy's monitors.
pub struct Monitors {
    watching: AtomicUsize,
    lines: broadcast::Sender<Bytes>,
}

impl Default for Monitors {
    fn default() -> Self {
        Monitors {
            watching: AtomicUsize::new(0),
            lines: broadcast::channel(BEHIND).0,
        }
    }
}

impl Monitors {
    /// Whether anyone monitors: one load per request.
    #[inline]
    pub fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed) > 0
    }

    /// Shows `req`, sent by the client at `peer`, to every monitor.
    pub fn feed(&self, proxy: &Proxy, req: &Request, peer: &SocketAddr) {
        let admin = proxy.commands().lookup(req).is_some_and(|c| c.flags.admin);
        if !admin {
            let _ = self.lines.send(line(req, peer, SystemTime::now()));
        }
    }

    /// A new monitor: it sees every line fed from now on, until it is dropped.
    fn watch(&self) -> Watch<'_> {
        let lines = self.lines.subscribe();
        self.watching.fetch_add(1, Ordering::Relaxed);
        Watch {
            monitors: self,
            lines,
        }
    }
}

/// One monitor's place in the channel.
struct Watch<'a> {
    monitors: &'a Monitors,
    lines: broadcast::Receiver<Bytes>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.monitors.watching.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a client left MONITOR mode.
pub enum Left {
    /// RESET: an ordinary client again.
    Reset,
    /// QUIT, a protocol error, or the client went away: close.
    Close,
}

/// Serves a client in MONITOR mode, from its `MONITOR` on.
pub async fn serve(
    proxy: &Proxy,
    client: &mut Client,
    stream: &mut Stream,
    scanner: &mut Scanner,
    rbuf: &mut BytesMut,
) -> std::io::Result<Left> {
    let mut watch = proxy.monitors.watch();
    write(stream, reply::OK).await?;
    let mut out = BytesMut::new();
    loop {
        while let Some(req) = scanner
            .next(rbuf)
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            let name = req.arg(0).to_ascii_uppercase();
            match name.as_slice() {
                b"PING" => {
                    proxy.monitors.feed(proxy, &req, &client.peer);
                    out.extend_from_slice(b"+PONG\r\n");
                }
                b"QUIT" => {
                    write(stream, reply::OK).await?;
                    return Ok(Left::Close);
                }
                b"RESET" => {
                    client.reset(&proxy.config());
                    write(stream, b"+RESET\r\n").await?;
                    return Ok(Left::Reset);
                }
                _ => out.extend_from_slice(b"-ERR Replica can't interact with the keyspace\r\n"),
            }
        }
        if !out.is_empty() {
            write(stream, &out).await?;
            out.clear();
        }
        tokio::select! {
            read = stream.read_buf(rbuf) => if read? == 0 {
                return Ok(Left::Close);
            },
            line = watch.lines.recv() => match line {
                Ok(line) => {
                    out.extend_from_slice(&line);
                    // Whatever else is there goes in the same write.
                    while let Ok(line) = watch.lines.try_recv() {
                        out.extend_from_slice(&line);
                    }
                    stream.write_all(&out).await?;
                    out.clear();
                }
                Err(broadcast::error::RecvError::Lagged(lines)) => {
                    return Err(std::io::Error::other(format!(
                        "monitor disconnected: it fell {lines} lines behind"
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(Left::Close),
            },
        }
    }
}

/// A MONITOR line for `req` from `peer` at `at`, in Redis's format.
fn line(req: &Request, peer: &SocketAddr, at: SystemTime) -> Bytes {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut out = BytesMut::with_capacity(64 + req.raw().len());
    out.put_slice(
        format!(
            "+{}.{:06} [0 {peer}]",
            since.as_secs(),
            since.subsec_micros()
        )
        .as_bytes(),
    );
    let redacted = redacted(req);
    for (i, arg) in req.args().enumerate() {
        out.put_u8(b' ');
        match redacted.contains(&i) {
            true => out.put_slice(b"\"(redacted)\""),
            false => repr(&mut out, arg),
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The positions of the arguments Redis redacts: passwords.
fn redacted(req: &Request) -> Vec<usize> {
    let is = |i: usize, word: &[u8]| req.arg(i).eq_ignore_ascii_case(word);
    if is(0, b"AUTH") {
        return (1..req.len()).collect();
    }
    if is(0, b"HELLO") {
        if let Some(at) = (2..req.len()).find(|&i| is(i, b"AUTH")) {
            return vec![at + 1, at + 2];
        }
    }
    if is(0, b"MIGRATE") {
        let mut hidden = Vec::new();
        for i in 6..req.len() {
            if is(i, b"AUTH") {
                hidden.push(i + 1);
            } else if is(i, b"AUTH2") {
                hidden.extend([i + 1, i + 2]);
            }
        }
        return hidden;
    }
    Vec::new()
}

/// `bytes` quoted as Redis's `sdscatrepr` quotes them.
fn repr(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u8(b'"');
    for &b in bytes {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'"' => out.put_slice(b"\\\""),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x07 => out.put_slice(b"\\a"),
            0x08 => out.put_slice(b"\\b"),
            0x20..=0x7e => out.put_u8(b),
            _ => out.put_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(args: &[&[u8]]) -> String {
        let req = Request::from_args(args);
        let peer: SocketAddr = "127.0.0.1:46608".parse().unwrap();
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_796_647_187_876_479);
        String::from_utf8(line(&req, &peer, at).to_vec()).unwrap()
    }

    #[test]
    fn lines_are_quoted_as_redis_quotes_them() {
        assert_eq!(
            line_of(&[b"set", b"a b", b"x\\ny\"z"]),
            "+1796647187.876479 [0 127.0.0.1:46608] \"set\" \"a b\" \"x\\\\ny\\\"z\"\r\n"
        );
        assert_eq!(
            line_of(&[b"set", b"bin", b"\x01\xff\n"]),
            "+1796647187.876479 [0 127.0.0.1:46608] \"set\" \"bin\" \"\\x01\\xff\\n\"\r\n"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert!(line_of(&[b"auth", b"secret"]).ends_with("] \"auth\" \"(redacted)\"\r\n"));
        assert!(line_of(&[b"AUTH", b"user", b"secret"])
            .ends_with("] \"AUTH\" \"(redacted)\" \"(redacted)\"\r\n"));
        assert!(line_of(&[b"hello", b"3", b"auth", b"default", b"pw"])
            .ends_with("\"hello\" \"3\" \"auth\" \"(redacted)\" \"(redacted)\"\r\n"));
        let migrate = line_of(&[
            b"MIGRATE", b"h", b"1", b"", b"0", b"100", b"AUTH2", b"u", b"p", b"KEYS", b"k",
        ]);
        assert!(
            migrate.ends_with("\"AUTH2\" \"(redacted)\" \"(redacted)\" \"KEYS\" \"k\"\r\n"),
            "{migrate}"
        );
    }
}
