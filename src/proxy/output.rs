//! A client's output while it waits to be written, and `client.output_buffer_limit`.
//!
//! A session writes what a client is owed; while the client does not take it, more joins
//! it and nothing more of the client is read. A [`Backlog`] watches one such wait: it
//! counts the client in `slotguard_clients_held`, and says when what waits breaks the
//! limit (Redis's hard limit at once, its soft one after its seconds), so that the client
//! is disconnected with an [`OverLimit`].

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;

use crate::config::OutputLimit;
use crate::metrics::Metrics;

/// How often the limits of a client whose output waits are looked at with nothing new
/// come (a reload may have lowered them).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Why a client was disconnected: it left more unread than `key` allows.
#[derive(Debug)]
pub struct OverLimit {
    pub key: &'static str,
    /// `hard` or `soft`.
    pub which: &'static str,
    pub unwritten: usize,
    pub limit: OutputLimit,
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let OverLimit {
            key,
            which,
            unwritten,
            limit,
        } = self;
        write!(
            f,
            "client disconnected: it leaves its replies unread past {key} ({which} limit; \
             {unwritten} bytes unread, limits {} hard, {} soft for {:?})",
            limit.hard, limit.soft, limit.soft_for
        )
    }
}

impl std::error::Error for OverLimit {}

impl OverLimit {
    /// The limit `error` broke, if that is why it ended the client's connection.
    pub fn of(error: &std::io::Error) -> Option<&OverLimit> {
        error.get_ref()?.downcast_ref()
    }
}

/// A client that did not take all it was sent, while its output waits; counted in
/// `slotguard_clients_held` while it lives.
pub struct Backlog<'a> {
    metrics: &'a Metrics,
    /// `client.output_buffer_limit.normal` or `.pubsub`.
    key: &'static str,
    /// Since when what waits is past the soft limit.
    over_soft: Option<Instant>,
}

impl<'a> Backlog<'a> {
    pub fn new(metrics: &'a Metrics, key: &'static str) -> Backlog<'a> {
        metrics.clients_held.inc();
        Backlog {
            metrics,
            key,
            over_soft: None,
        }
    }

    /// When to look at the limits again if nothing new comes: when the soft limit's
    /// seconds run out, and at least every second.
    pub fn look_again(&self, limit: OutputLimit) -> Instant {
        let again = Instant::now() + LOOK_AGAIN;
        let soft = self.over_soft.map(|since| since + limit.soft_for);
        soft.map_or(again, |soft| soft.min(again))
    }

    /// Looks at `unwritten` bytes against `limit`; an error once they break it.
    pub fn look(&mut self, unwritten: usize, limit: OutputLimit) -> Result<(), OverLimit> {
        match limit.over_soft(unwritten) {
            true => _ = self.over_soft.get_or_insert_with(Instant::now),
            false => self.over_soft = None,
        }
        let Some(which) = limit.broken(unwritten, self.over_soft) else {
            return Ok(());
        };
        Err(OverLimit {
            key: self.key,
            which,
            unwritten,
            limit,
        })
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        self.metrics.clients_held.dec();
    }
}

/// Writes what `stream` takes of `chunk` at once: `Ok(None)` when it takes nothing now.
/// Most writes are taken whole this way, before anything else is set up.
pub async fn write_now<S: AsyncWrite + Unpin>(
    stream: &mut S,
    chunk: &[u8],
) -> std::io::Result<Option<usize>> {
    let written = poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_write(cx, chunk))).await;
    match written {
        Poll::Ready(Ok(0)) => Err(std::io::ErrorKind::WriteZero.into()),
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(None),
    }
}

/// Sleeps until `at`; forever when `None`.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
