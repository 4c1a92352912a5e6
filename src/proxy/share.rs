//! A client's share of the node connections: how many replies it may have owed at once.
//!
//! `client.max_pending` bounds their count. On connections that every client shares,
//! bytes matter more: a client that pipelines GETs of large values puts all it asked for
//! ahead of everyone else's next request. So a client's window is also sized by what its
//! replies weigh: `client.max_inflight_bytes` over the weight, at least one request.
//!
//! The weight rises at once to a heavier reply and sinks by an eighth of the difference
//! towards a lighter one: one large reply narrows the window at once, and a client whose
//! replies are small again regains its depth within a few dozen of them. Before any reply
//! has told it, a client may have [`FIRST_WINDOW`] requests in flight.

/// Requests a new client may have in flight before its replies have a weight.
pub const FIRST_WINDOW: usize = 32;

/// What a client's replies have weighed, in bytes.
#[derive(Debug)]
pub struct Share {
    weight: usize,
}

impl Share {
    /// A client that has had no reply yet, under a budget of `budget` bytes.
    pub fn new(budget: usize) -> Share {
        Share {
            weight: (budget / FIRST_WINDOW).max(1),
        }
    }

    /// Counts a reply of `len` bytes.
    pub fn weigh(&mut self, len: usize) {
        self.weight = match len.checked_sub(self.weight) {
            Some(_) => len,
            None => self.weight - (self.weight - len) / 8,
        }
        .max(1);
    }

    /// Replies the client may have owed at once: `budget` bytes' worth, at least one,
    /// at most `max_pending`.
    pub fn window(&self, budget: usize, max_pending: usize) -> usize {
        (budget / self.weight).clamp(1, max_pending.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1024 * 1024;

    #[test]
    fn large_replies_narrow_the_window_at_once_and_small_ones_widen_it_again() {
        let mut share = Share::new(MB);
        assert_eq!(share.window(MB, 10_000), FIRST_WINDOW);
        share.weigh(100 * 1024);
        assert_eq!(share.window(MB, 10_000), 10, "1 MB of 100 KB replies");
        share.weigh(5); // `+OK\r\n`
        assert_eq!(
            share.window(MB, 10_000),
            11,
            "one small reply changes little"
        );
        for _ in 0..100 {
            share.weigh(5);
        }
        assert_eq!(
            share.window(MB, 10_000),
            10_000,
            "small replies: max_pending"
        );
        share.weigh(600 * MB);
        assert_eq!(
            share.window(MB, 10_000),
            1,
            "a reply past the budget: one at a time"
        );
        assert_eq!(Share::new(MB).window(MB, 4), 4, "never past max_pending");
    }

    #[test]
    fn empty_replies_and_tiny_budgets_keep_one_request_going() {
        let mut share = Share::new(1);
        for _ in 0..50 {
            share.weigh(0);
        }
        assert_eq!(share.window(1, 10), 1);
        assert_eq!(share.window(0, 10), 1);
    }
}
