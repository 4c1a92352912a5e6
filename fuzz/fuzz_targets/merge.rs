//! Merging the parts of a split command's reply, in RESP2 and RESP3: whatever frames the
//! nodes answer, the merged reply is exactly one well-formed frame. The first byte picks
//! the merge and the protocol; the rest is split into parts at each `|`, and each must be
//! one whole frame, as the backend connection hands them over. MGET's verbatim merge
//! answers exactly what decoding the parts would.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use slotguard::protocol::reply::ReplyScanner;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<Bytes> = rest
        .split(|&b| b == b'|')
        .take(16)
        .map(Bytes::copy_from_slice)
        .collect();
    let whole = |p: &Bytes| ReplyScanner::default().scan(p).ok().flatten() == Some(p.len());
    if !parts.iter().all(whole) {
        return;
    }
    let resp3 = first & 0x80 != 0;
    let merged = slotguard::proxy::fuzzing::merge(first & 0x7f, &parts, resp3);
    let len = ReplyScanner::default().scan(&merged).ok().flatten();
    assert_eq!(len, Some(merged.len()), "{merged:?}");
    assert!(slotguard::proxy::fuzzing::mget_paths_agree(&parts, resp3));
});
