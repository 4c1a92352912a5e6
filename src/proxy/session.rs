//! One client connection.
//!
//! Reads whatever the client sent, takes every complete request off the buffer, routes each
//! one (which sends it on its way at once), and keeps a FIFO of the replies owed. Replies
//! are written in request order; everything ready is gathered into one write. A client
//! with its window of replies outstanding (`client.max_pending`, fewer when its replies
//! are large: see [`super::share`]) is not read from until they drain, and neither is a
//! client whose replies wait for it to read them: a client that pipelines without reading
//! holds a bounded share of the node connections and of the proxy's memory. One that
//! leaves more unread than `client.output_buffer_limit` is disconnected, as Redis does.
//!
//! On shutdown a session stops reading, writes the replies it owes (held requests
//! included), and closes.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn, Instrument};

use super::buffers::{grow_aside, Outgoing, GROW_ASIDE};
use super::client::Client;
use super::clients::{Bell, LastCommand};
use super::output::{sleep_until, write_now, Backlog, OverLimit};
use super::owed::Pending;
use super::router::route;
use super::share::Share;
use super::{monitor, pubsub};
use super::{Admission, Proxy};
use crate::metrics::{Class, LocalRequests, Metrics, Took};
use crate::protocol::{reply, Scanner};
use crate::tls::Stream;

/// Read buffer growth step, once a client sends more than [`READ_IDLE`] at once; it
/// grows further with what has arrived, up to [`READ_MAX_STEP`] at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The read buffer of a client with nothing buffered, until it sends more than this at
/// once: most requests fit, and thousands of idle clients cost little.
const READ_IDLE: usize = 1024;
/// Below this much free room the read buffer grows before the next read.
const READ_LOW: usize = 2048;
/// Below this much room left in an empty small buffer, a new one is taken before the next
/// read.
const READ_SPARE: usize = 256;
/// Most reserved at once for a large request still arriving.
const READ_MAX_STEP: usize = 4 * 1024 * 1024;
/// How long a client may take over its TLS handshake.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);
/// Most bytes buffered unrouted while a request waits for its turn.
const TURN_READ: usize = 64 * 1024;

/// A reply owed, with what the metrics need to know about its request.
struct Owed {
    reply: Pending,
    class: Class,
    since: Instant,
    /// Not written: the client said `CLIENT REPLY OFF` or `SKIP`.
    silent: bool,
}

/// Serves one client until it disconnects, sends QUIT, breaks the protocol, idles past
/// `client.idle_timeout`, or the proxy shuts down.
pub async fn run(proxy: Arc<Proxy>, tcp: TcpStream, _admission: Admission) {
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return;
    };
    tcp.set_nodelay(true).ok();
    let tls = proxy.config().tls.clone();
    let mut stream = match tls {
        None => Stream::Tcp(tcp),
        Some(tls) => match tokio::time::timeout(HANDSHAKE, tls.0.accept(tcp)).await {
            Ok(Ok(stream)) => Stream::Server(Box::new(stream)),
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let metrics = proxy.metrics.clone();
    metrics.client_connections.inc();
    metrics.client_connections_total.inc();
    let mut client = Client::new(proxy.session_id(), peer, local, &proxy.config());
    let entry = client.entry.clone();
    let _registered = proxy.clients.register(entry.clone());
    // A span at debug level: entered on every poll of the session, an enabled one cost
    // about 6% of a plain request's instructions (callgrind). The one warning a session
    // logs names the client itself (below).
    let span = tracing::debug_span!("client", id = client.id, %peer);
    if proxy.stopping() {
        entry.bell.ring(Bell::STOP); // shutdown rang every client before this one came
    }
    let id = client.id;
    let serve = serve(&proxy, &mut client, &mut stream).instrument(span.clone());
    tokio::pin!(serve);
    // The bell is looked at here on every wake-up, which registers the task's wake-up for
    // any ring: `serve` looks at STOP without registering one of its own.
    let result = poll_fn(|cx| {
        if entry.bell.poll(cx, Bell::KILL).is_ready() {
            debug!(parent: &span, "killed by CLIENT KILL");
            return Poll::Ready(Ok(()));
        }
        serve.as_mut().poll(cx)
    })
    .await;
    match result {
        Err(e) if OverLimit::of(&e).is_some() => {
            warn!(id, %peer, "{e}");
        }
        Err(e) => debug!(parent: &span, error = %e, "client connection ended"),
        Ok(()) => {}
    }
    metrics.client_connections.dec();
}

/// Moves the replies at the front that are already answered into `out`. A request that
/// waits for its turn is sent when it reaches the front.
fn take_ready(proxy: &Proxy, owed: &mut VecDeque<Owed>, out: &mut Outgoing, counts: &mut Counts) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut took = None; // one clock read for every reply written together
    while let Some(front) = owed.front_mut() {
        front.reply.launch(proxy);
        match front.reply.poll(&mut cx) {
            Poll::Ready(bytes) => {
                let done = owed.pop_front().expect("front exists");
                let seconds = took.get_or_insert_with(Took::now).of(done.since);
                emit(out, &bytes, &done, counts, seconds);
            }
            Poll::Pending => break,
        }
    }
}

/// Writes `out` to the client, leaving it empty. While the client does not take it
/// ([`wait_out`]), the replies that come meanwhile join it, and nothing more of the client
/// is read. Once what waits behind the first piece breaks
/// `client.output_buffer_limit.normal` (read live, so a reload is in force on clients
/// connected before it), the client is disconnected, as Redis disconnects a client over
/// its output buffer limit. The first piece (a large reply, or the small ones gathered
/// before it) goes whatever its size: one reply larger than the limit is let through.
async fn write_out(
    proxy: &Proxy,
    stream: &mut Stream,
    out: &mut Outgoing,
    owed: &mut VecDeque<Owed>,
    counts: &mut Counts<'_>,
) -> std::io::Result<()> {
    // Let through whole, whatever the limit: the piece being written first.
    let mut exempt = out.chunk().len();
    while !out.is_empty() {
        let Some(n) = write_now(stream, out.chunk()).await? else {
            break;
        };
        out.advance(n);
        exempt = exempt.saturating_sub(n);
    }
    if !out.is_empty() {
        // The client does not take what it is sent.
        let backlog = Backlog::new(counts.shared, "client.output_buffer_limit.normal");
        wait_out(proxy, stream, out, owed, counts, exempt, backlog).await?;
    }
    if !matches!(stream, Stream::Tcp(_)) {
        stream.flush().await?;
    }
    Ok(())
}

/// The rest of [`write_out`], for a client that did not take all it was sent: the
/// replies that come meanwhile join its output, and its limits are looked at as they do,
/// and every second.
async fn wait_out(
    proxy: &Proxy,
    stream: &mut Stream,
    out: &mut Outgoing,
    owed: &mut VecDeque<Owed>,
    counts: &mut Counts<'_>,
    mut exempt: usize,
    mut backlog: Backlog<'_>,
) -> std::io::Result<()> {
    while !out.is_empty() {
        let look_again = backlog.look_again(proxy.config().output_limit);
        tokio::select! {
            biased;
            n = stream.write(out.chunk()) => match n? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => {
                    out.advance(n);
                    exempt = exempt.saturating_sub(n);
                    continue;
                }
            },
            bytes = poll_fn(|cx| {
                let front = owed.front_mut().expect("guarded");
                front.reply.launch(proxy);
                front.reply.poll(cx)
            }), if !owed.is_empty() => {
                let done = owed.pop_front().expect("guarded");
                emit(out, &bytes, &done, counts, Took::now().of(done.since));
            }
            () = tokio::time::sleep_until(look_again.into()) => {}
        }
        if let Err(over) = backlog.look(out.len() - exempt, proxy.config().output_limit) {
            counts.shared.clients_over_output_limit.inc();
            return Err(std::io::Error::other(over));
        }
    }
    Ok(())
}

/// What a session learns from its replies: the shared metrics, its requests' counts
/// (kept apart and added to the shared ones before each wait, see [`LocalRequests`]), and
/// what its replies weigh.
struct Counts<'a> {
    shared: &'a Metrics,
    requests: LocalRequests,
    share: Share,
}

/// Appends one reply, to a request that took `seconds`, to the output and counts it.
fn emit(out: &mut Outgoing, bytes: &Bytes, done: &Owed, counts: &mut Counts, seconds: f64) {
    counts.share.weigh(bytes.len());
    if bytes.first() == Some(&b'-') {
        counts.shared.client_error(bytes);
    }
    counts.requests.request(done.class, seconds);
    if !done.silent {
        out.push(bytes);
    }
}

/// Why [`take_requests`] stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Every complete request was routed; more bytes are needed.
    All,
    /// `max` replies are owed, or a request waits for its turn (see [`Pending::Turn`]);
    /// requests may wait in the buffer.
    Full,
    /// QUIT, or a protocol error (answered, then the connection closes): read no more.
    Done,
}

/// Routes the complete requests in `rbuf`, until `max` replies (the client's window) are
/// owed; the rest stays buffered until replies drain.
fn take_requests(
    proxy: &Proxy,
    client: &mut Client,
    scanner: &mut Scanner,
    rbuf: &mut BytesMut,
    owed: &mut VecDeque<Owed>,
    max: usize,
) -> Taken {
    let now = Instant::now();
    let mut last = None;
    let taken = loop {
        if owed.len() >= max {
            break Taken::Full;
        }
        match scanner.next(rbuf) {
            Ok(Some(req)) => {
                last = Some(LastCommand::of(&req));
                if proxy.monitors.watching() {
                    proxy.monitors.feed(proxy, &req, &client.peer);
                }
                let (reply, class) = route(proxy, client, req);
                owed.push_back(Owed {
                    reply,
                    class,
                    since: now,
                    silent: client.replies.next_silent(),
                });
                if client.quit {
                    break Taken::Done;
                }
                if waits_for_turn(owed) {
                    break Taken::Full;
                }
            }
            Ok(None) => break Taken::All,
            Err(e) => {
                // As Redis does: say what was wrong, then close.
                let reply = Pending::Ready(reply::error(&format!("ERR {e}")));
                owed.push_back(Owed {
                    reply,
                    class: Class::Other,
                    since: now,
                    silent: false,
                });
                break Taken::Done;
            }
        }
    };
    // What other clients see of this one (CLIENT LIST), once per batch.
    if last.is_some() {
        client.entry.publish(&client.itself(), last, now);
    }
    taken
}

/// A request waits for its turn: nothing after it is routed until its reply is in.
fn waits_for_turn(owed: &VecDeque<Owed>) -> bool {
    owed.back().is_some_and(|o| o.reply.is_turn())
}

async fn serve(proxy: &Proxy, client: &mut Client, stream: &mut Stream) -> std::io::Result<()> {
    // The session's copy of the settings, taken again when a read follows a reload (one
    // plain load a read).
    let mut generation = proxy.routing.config_generation();
    let mut config = proxy.config().clone();
    proxy.first_map(config.hold_timeout).await;
    let mut counts = Counts {
        shared: &proxy.metrics,
        requests: proxy.metrics.local_requests(),
        share: Share::new(config.max_inflight_bytes),
    };
    // Shutdown rings the client's bell; `run` registers its wake-up.
    let entry = client.entry.clone();
    let bell = &entry.bell;
    let mut scanner = Scanner::new(config.limits.clone());
    // Both start empty: an idle client costs little (see READ_IDLE).
    let mut rbuf = BytesMut::new();
    // Reserved in `rbuf` since it was new: past 4 READ_MAX_STEPs it is let go once empty,
    // so that a client that once sent a large value does not keep its room.
    let mut reserved = 0;
    let mut out = Outgoing::default();
    let mut owed: VecDeque<Owed> = VecDeque::new();
    let mut reading = true;
    // Complete requests may be waiting in `rbuf` for room among the replies owed.
    let mut backlog = false;
    let mut last_request = Instant::now();
    loop {
        // Everything already answered goes out in one write.
        take_ready(proxy, &mut owed, &mut out, &mut counts);
        if !out.is_empty() {
            write_out(proxy, stream, &mut out, &mut owed, &mut counts).await?;
        }
        let window = counts
            .share
            .window(config.max_inflight_bytes, config.max_pending);
        if bell.rung(Bell::STOP) {
            reading = false;
        }
        if let Some(first) = owed.front_mut().and_then(|o| o.reply.subscription()) {
            owed.pop_front();
            if first.arg(0).eq_ignore_ascii_case(b"MONITOR") {
                match monitor::serve(proxy, client, stream, &mut scanner, &mut rbuf).await? {
                    monitor::Left::Reset => {
                        backlog = true; // requests may have arrived behind the RESET
                        continue;
                    }
                    monitor::Left::Close => return Ok(()),
                }
            }
            client.entry.subscribed(true);
            let left = pubsub::serve(proxy, client, stream, &mut scanner, &mut rbuf, first).await?;
            client.entry.subscribed(false);
            match left {
                pubsub::Left::Unsubscribed => {
                    backlog = true; // requests may have arrived behind the last UNSUBSCRIBE
                    continue;
                }
                pubsub::Left::Close => return Ok(()),
            }
        }
        // Requests already buffered are taken as room frees up.
        let turn = waits_for_turn(&owed);
        if reading && backlog && owed.len() < window && !turn {
            let taken = take_requests(proxy, client, &mut scanner, &mut rbuf, &mut owed, window);
            reading = taken != Taken::Done;
            backlog = taken == Taken::Full;
            continue;
        }
        if !reading && owed.is_empty() {
            return Ok(());
        }
        // While a request waits for its turn (a blocking command, say), a little more is
        // read, so that a client that disconnects is noticed and its connection freed.
        let want_read =
            reading && ((!backlog && owed.len() < window) || (turn && rbuf.len() < TURN_READ));
        if want_read {
            // Grow only when little room is left: requests split off the buffer still
            // share it, so a reserve may have to allocate and copy what is left. It grows
            // with what has arrived, never with what a request announces: a client that
            // announces a huge bulk and sends it slowly holds what it sent.
            let wanted = scanner.wanted().saturating_sub(rbuf.len());
            if rbuf.is_empty() && reserved > 4 * READ_MAX_STEP {
                rbuf = BytesMut::new();
                reserved = 0;
            }
            if rbuf.is_empty() && wanted == 0 && rbuf.capacity() < READ_CHUNK {
                // What is left of the buffer takes the next requests: replaced by a new one
                // for each (the old one is still shared with requests in flight) it cost
                // two allocations a request.
                if rbuf.capacity() < READ_SPARE {
                    rbuf.reserve(READ_IDLE);
                }
            } else if rbuf.capacity() - rbuf.len() < READ_LOW {
                let step = rbuf.len().clamp(READ_CHUNK, READ_MAX_STEP);
                let step = match wanted {
                    0 => step,
                    _ => step.min(wanted.max(READ_LOW)),
                };
                if rbuf.len() >= GROW_ASIDE {
                    rbuf = grow_aside(std::mem::take(&mut rbuf), step).await;
                } else {
                    rbuf.reserve(step);
                }
                reserved += step;
            }
        }
        let idle_at = config
            .idle_timeout
            .filter(|_| owed.is_empty())
            .map(|limit| last_request + limit);
        counts.requests.flush(); // what the replies written so far counted
        let idle = sleep_until(idle_at);
        tokio::select! {
            biased;
            bytes = poll_fn(|cx| owed.front_mut().expect("guarded").reply.poll(cx)), if !owed.is_empty() => {
                let done = owed.pop_front().expect("guarded");
                emit(&mut out, &bytes, &done, &mut counts, Took::now().of(done.since));
            }
            read = stream.read_buf(&mut rbuf), if want_read => {
                if read? == 0 {
                    return Ok(()); // the client closed; its outstanding replies are dropped
                }
                last_request = Instant::now();
                let now_generation = proxy.routing.config_generation();
                if now_generation != generation {
                    generation = now_generation;
                    config = proxy.config().clone();
                    scanner.set_limits(config.limits.clone());
                }
                if turn {
                    backlog = true;
                    continue;
                }
                let taken = take_requests(proxy, client, &mut scanner, &mut rbuf, &mut owed, window);
                reading = taken != Taken::Done;
                backlog = taken == Taken::Full;
            }
            push = client.next_push(), if client.tracking.is_some() => match push {
                Some(push) => out.extend_from_slice(&push),
                None => client.tracking = None, // its connections gave up
            },
            () = poll_fn(|_| match bell.rung(Bell::STOP) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }), if reading => reading = false,
            _ = idle => {
                debug!("closing an idle client");
                return Ok(());
            }
        }
    }
}
