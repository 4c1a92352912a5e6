//! What a move has done: a bar on a terminal (drawn by `indicatif`), plain lines
//! otherwise, and the snapshot `SLOTGUARD MIGRATIONS` and `/migrations` show.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::routing::MoveProgress;

/// Slots done and keys moved, shown as a bar on a terminal and as plain lines otherwise.
pub struct Progress {
    total: usize,
    pub(super) done: AtomicUsize,
    pub(super) keys: AtomicU64,
    pub(super) started: Instant,
    /// The bar, on a terminal.
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(total: usize, tty: bool) -> Progress {
        let bar = tty.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total as u64),
                ProgressDrawTarget::stderr_with_hz(5),
            );
            let style = ProgressStyle::with_template("[{bar:30}] {pos}/{len} slots, {msg}")
                .expect("a valid template")
                .progress_chars("#-");
            bar.set_style(style);
            bar
        });
        Progress {
            total,
            done: AtomicUsize::new(0),
            keys: AtomicU64::new(0),
            started: Instant::now(),
            bar,
        }
    }

    /// As `/migrations` and `SLOTGUARD MIGRATIONS` show it.
    pub(super) fn published(&self, state: &str, plan: &str, message: &str) -> MoveProgress {
        let seconds = self.started.elapsed().as_secs_f64();
        let keys_moved = self.keys.load(Ordering::Relaxed);
        MoveProgress {
            state: state.to_string(),
            plan: plan.to_string(),
            slots_done: self.done.load(Ordering::Relaxed),
            slots_total: self.total,
            keys_moved,
            keys_per_sec: keys_moved as f64 / seconds.max(0.001),
            seconds,
            message: message.to_string(),
        }
    }

    /// `3400 keys, 1200 keys/s, ETA 0:41`: what the bar shows after the slots.
    fn rates(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let keys = self.keys.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let eta = match done {
            0 => "?".to_string(),
            _ => {
                let left = (secs / done as f64 * (self.total - done) as f64) as u64;
                format!("{}:{:02}", left / 60, left % 60)
            }
        };
        format!("{keys} keys, {:.0} keys/s, ETA {eta}", keys as f64 / secs)
    }

    /// Redraws the bar five times a second on a terminal; a line every five seconds
    /// otherwise.
    pub(super) fn show(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = match self.bar {
                Some(_) => Duration::from_millis(200),
                None => Duration::from_secs(5),
            };
            loop {
                tokio::time::sleep(every).await;
                self.print();
            }
        })
    }

    fn print(&self) {
        let done = self.done.load(Ordering::Relaxed);
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(self.rates());
            }
            None => eprintln!("{done}/{} slots, {}", self.total, self.rates()),
        }
    }

    pub(super) fn finish(&self) {
        self.print();
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
