//! First come, first written: the order in which new dedicated connections to one node
//! send their first request.
//!
//! Two clients that each send a blocking command, one right after the other, get a
//! dedicated connection each. The tasks behind those connections start at about the same
//! moment, and the scheduler may run the second first; the node would then block the
//! clients in the other order and serve the second client first, where a direct
//! connection serves the first (Redis's own suite tests exactly this). So each new
//! dedicated connection takes a ticket when it is opened, in the order the requests came,
//! and writes its first batch only once every earlier ticket of the node has written its
//! own or given up. Connecting still happens in parallel; only the first write waits.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// One node's tickets.
#[derive(Debug)]
pub struct Turns {
    next: AtomicU64,
    state: watch::Sender<Served>,
}

#[derive(Debug, Default)]
struct Served {
    /// Every ticket below this one has had its turn.
    below: u64,
    /// Tickets done out of order (a connection that failed before its turn).
    ahead: BTreeSet<u64>,
}

impl Default for Turns {
    fn default() -> Turns {
        Turns {
            next: AtomicU64::new(0),
            state: watch::Sender::new(Served::default()),
        }
    }
}

impl Turns {
    /// The next place in line.
    pub fn ticket(self: &Arc<Self>) -> Turn {
        Turn {
            number: self.next.fetch_add(1, Ordering::Relaxed),
            turns: self.clone(),
        }
    }
}

/// A place in line; dropping it lets the next one go.
#[derive(Debug)]
pub struct Turn {
    number: u64,
    turns: Arc<Turns>,
}

impl Turn {
    /// Waits until every earlier place in line is done.
    pub async fn wait(&self) {
        let mut state = self.turns.state.subscribe();
        // The sender lives in `turns`, which this turn keeps alive.
        let _ = state.wait_for(|s| s.below >= self.number).await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.state.send_modify(|s| {
            s.ahead.insert(self.number);
            while s.ahead.remove(&s.below) {
                s.below += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_ticket_waits_for_every_earlier_one() {
        let turns = Arc::new(Turns::default());
        let (first, second, third) = (turns.ticket(), turns.ticket(), turns.ticket());
        first.wait().await; // the first goes at once
        let waiting = tokio::spawn(async move {
            third.wait().await;
        });
        // The second gives up before its turn; the third still waits for the first.
        drop(second);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the third's turn came")
            .unwrap();
    }
}
