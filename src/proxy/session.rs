//! One client connection.
//!
//! Reads whatever the client sent, takes every complete request off the buffer, routes each
//! one (which sends it on its way at once), and keeps a FIFO of the replies owed. Replies
//! are written in request order; everything ready is gathered into one write. A client
//! with `client.max_pending` replies outstanding is not read from until they drain, so a
//! client that pipelines without reading cannot grow the proxy's memory without bound.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::router::{route, Client, Pending};
use super::Proxy;
use crate::protocol::{reply, Scanner};

/// Read buffer growth step; larger requests grow it to what they announce, in steps.
const READ_CHUNK: usize = 16 * 1024;
/// Below this much free room the read buffer grows before the next read.
const READ_LOW: usize = 2048;
/// Most reserved at once for a large bulk still arriving.
const READ_MAX_STEP: usize = 4 * 1024 * 1024;

/// Serves one client until it disconnects, sends QUIT, or breaks the protocol.
pub async fn run(proxy: Arc<Proxy>, mut stream: TcpStream) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    stream.set_nodelay(true).ok();
    proxy
        .stats
        .connected_clients
        .fetch_add(1, Ordering::Relaxed);
    proxy
        .stats
        .total_connections
        .fetch_add(1, Ordering::Relaxed);
    let mut client = Client {
        id: proxy.session_id(),
        peer,
        local,
        name: None,
        authenticated: proxy.config.password.is_none(),
        resp3: false,
        quit: false,
    };
    let result = serve(&proxy, &mut client, &mut stream).await;
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "client connection ended");
    }
    proxy
        .stats
        .connected_clients
        .fetch_sub(1, Ordering::Relaxed);
}

/// Moves the replies at the front that are already answered into `out`.
fn take_ready(pending: &mut VecDeque<Pending>, out: &mut BytesMut) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Some(front) = pending.front_mut() {
        match front.poll(&mut cx) {
            Poll::Ready(bytes) => {
                out.extend_from_slice(&bytes);
                pending.pop_front();
            }
            Poll::Pending => break,
        }
    }
}

async fn serve(proxy: &Proxy, client: &mut Client, stream: &mut TcpStream) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let mut scanner = Scanner::new(proxy.config.limits.clone());
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let max_pending = proxy.config.max_pending;
    let mut reading = true;
    loop {
        // Everything already answered goes out in one write.
        take_ready(&mut pending, &mut out);
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
            if out.capacity() > 4 * READ_MAX_STEP {
                out = BytesMut::with_capacity(READ_CHUNK);
            }
        }
        if !reading && pending.is_empty() {
            return Ok(());
        }
        let want_read = reading && pending.len() < max_pending;
        if want_read {
            // Grow only when little room is left: requests split off the buffer still
            // share it, so a reserve may have to allocate and copy what is left.
            let wanted = scanner
                .wanted()
                .saturating_sub(rbuf.len())
                .min(READ_MAX_STEP);
            if rbuf.capacity() - rbuf.len() < wanted.max(READ_LOW) {
                rbuf.reserve(wanted.max(READ_CHUNK));
            }
        }
        tokio::select! {
            biased;
            bytes = poll_fn(|cx| pending.front_mut().expect("guarded").poll(cx)), if !pending.is_empty() => {
                out.extend_from_slice(&bytes);
                pending.pop_front();
            }
            read = rd.read_buf(&mut rbuf), if want_read => {
                if read? == 0 {
                    return Ok(()); // the client closed; its outstanding replies are dropped
                }
                loop {
                    match scanner.next(&mut rbuf) {
                        Ok(Some(req)) => {
                            proxy.stats.total_commands.fetch_add(1, Ordering::Relaxed);
                            pending.push_back(route(proxy, client, req));
                            if client.quit {
                                reading = false;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // As Redis does: say what was wrong, then close.
                            pending.push_back(Pending::Ready(reply::error(&format!("ERR {e}"))));
                            reading = false;
                            break;
                        }
                    }
                }
            }
        }
    }
}
