//! The backend reply scanner and parser: a frame the scanner finds whole parses, its
//! encoding in either protocol scans as exactly one frame, and scanning the same bytes
//! in two pieces finds the same frame.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use slotguard::protocol::reply::{ReplyScanner, Value};

fn frame_len(bytes: &[u8]) -> Option<usize> {
    ReplyScanner::default().scan(bytes).ok().flatten()
}

fuzz_target!(|data: &[u8]| {
    let Ok(Some(len)) = ReplyScanner::default().scan(data) else {
        return;
    };
    assert!(len <= data.len());
    // The same bytes offered in two pieces: the first scan may need more, never differ.
    let cut = len / 2;
    let mut split = ReplyScanner::default();
    if let Ok(Some(early)) = split.scan(&data[..cut]) {
        panic!("a frame of {len} bytes found in its first {cut}: {early}");
    }
    assert_eq!(split.scan(&data[..len]).ok().flatten(), Some(len));
    let frame = Bytes::copy_from_slice(&data[..len]);
    let Ok(value) = Value::parse(&frame) else {
        return;
    };
    for resp3 in [false, true] {
        let mut out = BytesMut::new();
        value.encode_for(&mut out, resp3);
        assert_eq!(frame_len(&out), Some(out.len()), "{value:?} re-encoded");
    }
});
