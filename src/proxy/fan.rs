//! Multi-key commands split by slot (MGET, MSET, DEL, EXISTS, ...), and a large fan-out
//! sent a window at a time.
//!
//! An MGET of 100,000 keys over every slot is some 16,000 parts. Sent at once, they queue
//! on the shared connection to each node ahead of every other client's requests, which
//! then wait for the whole fan-out. Instead, a fan-out of more than [`WINDOW`] parts keeps
//! only that many in flight: each part answered lets the next one be built and sent, and
//! other clients' requests find at most a window's worth ahead of them.
//!
//! It runs as a turn (see [`super::owed::Turn`]): it starts once every earlier reply of
//! the client is in, and nothing the client sends after it is sent before its reply, so
//! parts sent late cannot see the client's later writes.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::backend::job::Job;
use super::clients::tracking::Carry;
use super::merge::{merge, Merge, GONE};
use super::Proxy;
use crate::protocol::{key_slot, reply, Request};

/// Parts of one fan-out in flight at a time.
pub const WINDOW: usize = 256;

/// How a split command's parts' replies make one.
#[derive(Clone, Copy)]
pub enum SplitKind {
    /// The values, in the order of the keys.
    MGet,
    /// `+OK` from every part.
    MSet,
    /// The sum of the parts' counts.
    Sum,
}

/// A multi-key command split by slot: keys start at argument 1, each `stride` arguments
/// long (MSET: key and value).
pub struct Split {
    req: Request,
    stride: usize,
    kind: SplitKind,
    /// Key positions by slot, in order of first appearance.
    groups: Vec<(u16, SmallVec<[usize; 4]>)>,
    /// Whose parts: the client's id (for replica pinning) and protocol.
    pin: u32,
    resp3: bool,
    /// A tracking client's: its parts take its tracking connections.
    carry: Option<Carry>,
}

impl Split {
    pub fn new(
        req: Request,
        stride: usize,
        kind: SplitKind,
        pin: u32,
        resp3: bool,
        carry: Option<Carry>,
    ) -> Split {
        Split {
            groups: by_slot(&req, stride),
            req,
            stride,
            kind,
            pin,
            resp3,
            carry,
        }
    }

    pub fn parts(&self) -> usize {
        self.groups.len()
    }

    /// The request for group `g`'s slot.
    pub fn part(&self, g: usize) -> (Job, oneshot::Receiver<Bytes>) {
        let (slot, group) = &self.groups[g];
        let stride = self.stride;
        let keys = group
            .iter()
            .flat_map(|&i| (i..i + stride).map(|j| self.req.arg(j)));
        let raw = Request::wire(std::iter::once(self.req.arg(0)).chain(keys));
        let (mut job, rx) = Job::new(raw, Some(*slot), self.pin, self.resp3);
        if let Some(carry) = &self.carry {
            carry.apply(&mut job);
        }
        (job, rx)
    }

    /// How the parts' replies, in group order, make one.
    pub fn merge(&self) -> Merge {
        match self.kind {
            SplitKind::MGet => Merge::MGet {
                positions: (self.groups.iter())
                    .map(|(_, group)| group.iter().map(|&i| (i - 1) / self.stride).collect())
                    .collect(),
                total: (self.req.len() - 1) / self.stride,
            },
            SplitKind::MSet => Merge::AllOk,
            SplitKind::Sum => Merge::SumInts,
        }
    }
}

/// Key positions (from argument 1, every `stride`) grouped by slot, in order of first
/// appearance. A few slots are looked up in the list; past that, in a hash map by slot, so
/// 100,000 keys over every slot cost 100,000 lookups rather than a scan of 16,384 groups
/// each. (A table of every slot, 64 KB filled for each request, cost a ten-key MSET 60%
/// of its instructions.)
fn by_slot(req: &Request, stride: usize) -> Vec<(u16, SmallVec<[usize; 4]>)> {
    const SCANNED: usize = 16;
    let keys = (req.len() - 1) / stride;
    let mut groups: Vec<(u16, SmallVec<[usize; 4]>)> = Vec::with_capacity(keys.min(SCANNED));
    let mut index: FxHashMap<u16, usize> = FxHashMap::default();
    for i in (1..req.len()).step_by(stride) {
        let slot = key_slot(req.arg(i));
        let found = if groups.len() <= SCANNED {
            groups.iter().position(|(s, _)| *s == slot)
        } else {
            if index.is_empty() {
                index.reserve(keys);
                index.extend(groups.iter().enumerate().map(|(g, (s, _))| (*s, g)));
            }
            index.get(&slot).copied()
        };
        match found {
            Some(g) => groups[g].1.push(i),
            None => {
                if !index.is_empty() {
                    index.insert(slot, groups.len());
                }
                groups.push((slot, SmallVec::from_elem(i, 1)));
            }
        }
    }
    groups
}

/// Sends `split`'s parts a window at a time and answers `reply` with the merged reply.
pub fn start(proxy: Arc<Proxy>, split: Split, reply: oneshot::Sender<Bytes>) {
    tokio::spawn(async move {
        let mut got = Vec::with_capacity(split.parts());
        let mut waiting = VecDeque::with_capacity(WINDOW);
        let mut next = 0;
        loop {
            while waiting.len() < WINDOW && next < split.parts() {
                let (job, rx) = split.part(next);
                proxy.dispatch(job);
                waiting.push_back(rx);
                next += 1;
            }
            let Some(part) = waiting.pop_front() else {
                break;
            };
            match part.await {
                Ok(bytes) => got.push(bytes),
                Err(_) => {
                    let _ = reply.send(reply::error(GONE));
                    return;
                }
            }
            if reply.is_closed() {
                return; // the client is gone: the rest is not sent
            }
        }
        let _ = reply.send(merge(&split.merge(), &got, split.resp3));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_grouped_by_slot_in_order_of_first_appearance() {
        // Enough slots to go past the scanned list, and keys of a slot spread apart.
        let keys: Vec<String> = (0..40).chain(0..40).map(|i| format!("k{i}")).collect();
        let mut args = vec!["MGET".to_string()];
        args.extend(keys.iter().cloned());
        let req = Request::from_args(&args);
        let groups = by_slot(&req, 1);
        let mut expected: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = key_slot(key.as_bytes());
            match expected.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, positions)) => positions.push(i + 1),
                None => expected.push((slot, vec![i + 1])),
            }
        }
        let groups: Vec<(u16, Vec<usize>)> =
            groups.into_iter().map(|(s, g)| (s, g.to_vec())).collect();
        assert_eq!(groups, expected);
        assert!(groups.len() > 8);
    }
}
