//! The client request scanner fed in random chunks must find exactly what it finds in
//! the same bytes fed whole: the same requests, then the same error or the same need for
//! more bytes. The first byte of the input sets the chunk sizes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use slotguard::protocol::request::{Limits, Scanner};

/// Small limits, so that the limit paths are reached too.
fn limits() -> Limits {
    Limits {
        max_args: 64,
        max_bulk_len: 4096,
        max_request_bytes: 16 * 1024,
    }
}

/// The requests found (their raw bytes) and whether scanning ended in an error.
fn scan(input: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut scanner = Scanner::new(limits());
    let mut buf = BytesMut::new();
    let mut found = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match scanner.next(&mut buf) {
                Ok(Some(req)) => found.push(req.raw().to_vec()),
                Ok(None) => break,
                Err(_) => return (found, true),
            }
        }
    }
    (found, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let whole = scan(input, input.len());
    let chunked = scan(input, 1 + first as usize % 17);
    assert_eq!(whole, chunked);
});
