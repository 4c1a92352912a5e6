//! Buffers through which a large value (a 500 MB `SET`, or its `GET`'s reply) passes
//! without holding up the other clients of the thread, and with about one copy of it
//! held.
//!
//! - [`Outgoing`], bytes waiting to be written, in order. Small pieces are copied
//!   together, so that a batch of requests or replies goes out in one syscall; a large
//!   one is written from where it already is. Copying it would hold a second copy, and
//!   touching that many fresh pages stalls the thread.
//! - [`grow_aside`]: a read buffer that must grow while holding megabytes copies them
//!   on a blocking thread.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A read buffer holding this much grows with [`grow_aside`].
pub const GROW_ASIDE: usize = 8 * 1024 * 1024;
/// Pieces at least this large are written from where they are, not copied.
pub const COPY_MAX: usize = 64 * 1024;
/// Room kept for the small pieces when the buffer is let go after a burst.
const FRESH: usize = 16 * 1024;

/// `buf` with room for at least `more` bytes, and at least twice as large. Growing copies
/// what it holds into a new allocation: for a value of hundreds of megabytes still
/// arriving that takes long enough to hold up every other client of the thread, so it is
/// done on a blocking thread while the thread serves them.
pub async fn grow_aside(buf: BytesMut, more: usize) -> BytesMut {
    let room = (buf.len() + more).max(2 * buf.len());
    let copy = move || {
        let mut bigger = BytesMut::with_capacity(room);
        bigger.extend_from_slice(&buf);
        bigger
    };
    tokio::task::spawn_blocking(copy)
        .await
        .expect("copying a buffer does not panic")
}

#[derive(Default)]
pub struct Outgoing {
    /// Written first, in order: large pieces, and the small ones copied before each.
    parts: VecDeque<Bytes>,
    /// Small pieces after the last large one.
    tail: BytesMut,
    len: usize,
}

impl Outgoing {
    pub fn with_capacity(capacity: usize) -> Self {
        Outgoing {
            parts: VecDeque::new(),
            tail: BytesMut::with_capacity(capacity),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `bytes` in.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Adds `bytes`, copied if small.
    pub fn push(&mut self, bytes: &Bytes) {
        if bytes.len() < COPY_MAX {
            return self.extend_from_slice(bytes);
        }
        if !self.tail.is_empty() {
            self.parts.push_back(self.tail.split().freeze());
        }
        self.parts.push_back(bytes.clone());
        self.len += bytes.len();
    }

    /// The next bytes to write: never empty unless everything is written.
    pub fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&self.tail[..], |part| &part[..])
    }

    /// `n` bytes of [`Outgoing::chunk`] were written.
    pub fn advance(&mut self, n: usize) {
        self.len -= n;
        match self.parts.front_mut() {
            Some(part) => {
                part.advance(n);
                if part.is_empty() {
                    self.parts.pop_front();
                }
            }
            None => self.tail.advance(n),
        }
        if self.is_empty() {
            self.let_go_of_a_burst();
        }
    }

    /// Writes everything.
    pub async fn write_all<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> std::io::Result<()> {
        while !self.is_empty() {
            let n = self.chunk().len();
            stream.write_all(self.chunk()).await?;
            self.advance(n);
        }
        Ok(())
    }

    /// Drops what was not written.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.tail.clear();
        self.len = 0;
        self.let_go_of_a_burst();
    }

    /// Empty after a burst of small pieces: the room they took goes.
    fn let_go_of_a_burst(&mut self) {
        if self.tail.capacity() > 16 * COPY_MAX {
            self.tail = BytesMut::with_capacity(FRESH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut Outgoing, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while !out.is_empty() {
            let n = out.chunk().len().min(step);
            got.extend_from_slice(&out.chunk()[..n]);
            out.advance(n);
        }
        got
    }

    #[test]
    fn pieces_come_out_in_order_whatever_their_size() {
        let large = Bytes::from(vec![b'L'; COPY_MAX]);
        let mut out = Outgoing::default();
        let mut want = Vec::new();
        for piece in [&b"a"[..], &large, b"bc", &large, &large, b"d"] {
            out.push(&Bytes::copy_from_slice(piece));
            want.extend_from_slice(piece);
        }
        assert_eq!(out.len(), want.len());
        assert_eq!(drain(&mut out, 1000), want);
        assert!(out.chunk().is_empty());
    }

    #[test]
    fn a_large_piece_is_not_copied() {
        let large = Bytes::from(vec![b'L'; COPY_MAX]);
        let mut out = Outgoing::default();
        out.push(&large);
        assert_eq!(out.chunk().as_ptr(), large.as_ptr());
    }

    #[test]
    fn clear_leaves_it_empty_and_usable() {
        let mut out = Outgoing::default();
        out.extend_from_slice(b"abc");
        out.push(&Bytes::from(vec![0; COPY_MAX]));
        out.extend_from_slice(b"d");
        out.clear();
        assert!(out.is_empty() && out.chunk().is_empty());
        out.extend_from_slice(b"e");
        assert_eq!(drain(&mut out, 1), b"e");
    }
}
