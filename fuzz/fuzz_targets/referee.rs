//! The hand-written parsers held to a maintained one: the same bytes go to slotguard's
//! request scanner and reply scanner and to the `redis-protocol` crate's decoders, which
//! must find the same frames, or both need more bytes, or both refuse.
//!
//! Requests: what a client sends as a multibulk (`*<n>` of `$<len>` strings). The crate
//! decodes any RESP2 frame, so a frame it accepts that is not an array of strings is one
//! Redis refuses as a request, and slotguard must refuse it too. Inline commands are not
//! the crate's business and are left to the `request_chunks` target.
//!
//! Replies: every frame the crate's RESP3 decoder (a superset of RESP2) accepts, the reply
//! scanner finds with the same length and `Value::parse` reads as the same value. The
//! other way is looser on purpose: a reply comes from a node, and the scanner only finds
//! where it ends, so a double or a big number is not checked digit by digit (the crate
//! refuses `,x`; slotguard passes it on as the node sent it). And slotguard may refuse a
//! frame written other than the one way RESP writes it (`*+0`, a line with a bare `\n`,
//! RESP3's streamed frames, which no server sends), never read it as something else.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::decode::decode as decode_resp2;
use redis_protocol::resp2::types::OwnedFrame as Resp2;
use redis_protocol::resp3::decode::complete::decode as decode_resp3;
use redis_protocol::resp3::encode::complete::encode;
use redis_protocol::resp3::types::OwnedFrame as Resp3;
use redis_protocol::resp3::types::Resp3Frame;
use slotguard::protocol::reply::{ReplyScanner, Value};
use slotguard::protocol::request::{Limits, Request, Scanner};

fn limits() -> Limits {
    Limits {
        max_args: 1 << 20,
        max_bulk_len: 1 << 30,
        max_request_bytes: 1 << 31,
    }
}

/// What a parser made of the bytes: a frame of this many bytes, more needed, or refused.
#[derive(Debug, PartialEq)]
enum Verdict<T> {
    Frame(usize, T),
    More,
    Refused,
}

fn ours_request(data: &[u8]) -> Verdict<Vec<Vec<u8>>> {
    let mut buf = BytesMut::from(data);
    match Scanner::new(limits()).next(&mut buf) {
        Ok(Some(req)) => Verdict::Frame(req.raw().len(), req.args().map(<[u8]>::to_vec).collect()),
        Ok(None) => Verdict::More,
        Err(_) => Verdict::Refused,
    }
}

fn theirs_request(data: &[u8]) -> Verdict<Vec<Vec<u8>>> {
    match decode_resp2(data) {
        Ok(Some((Resp2::Array(parts), len))) => {
            let args: Option<Vec<Vec<u8>>> = parts
                .into_iter()
                .map(|p| match p {
                    Resp2::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect();
            match args {
                Some(args) => Verdict::Frame(len, args),
                None => Verdict::Refused,
            }
        }
        Ok(Some(_)) => Verdict::Refused,
        Ok(None) => Verdict::More,
        Err(_) => Verdict::Refused,
    }
}

/// The crate's frame in slotguard's terms; `None` where they cannot be compared: sets and
/// maps (the crate keeps them in hash tables, unordered and without repeats) and the
/// RESP3 scalars slotguard keeps as text.
fn value(frame: Resp3) -> Option<Value> {
    let text = |b: Vec<u8>| Bytes::from(b);
    Some(match frame {
        Resp3::SimpleString { data, .. } => Value::Simple(text(data)),
        Resp3::SimpleError { data, .. } => Value::Error(Bytes::from(data.into_bytes())),
        Resp3::BlobError { data, .. } => Value::Error(text(data)),
        Resp3::BlobString { data, .. } => Value::Bulk(text(data)),
        Resp3::Number { data, .. } => Value::Int(data),
        Resp3::Null => Value::Nil,
        Resp3::Array { data, .. } | Resp3::Push { data, .. } => {
            Value::Array(data.into_iter().map(value).collect::<Option<_>>()?)
        }
        _ => return None,
    })
}

/// Whether `bytes` are written the one way RESP writes `frame`. What is not (`*+0`, `:01`,
/// a line with a `\n` not after `\r`, which the crate reads on past and writes back as it
/// came; RESP3's streamed frames, which no server sends), slotguard may refuse where the
/// crate reads it. A bare `\n` in a string's data counts too: this errs on the lenient side.
fn canonical(frame: &Resp3, bytes: &[u8]) -> bool {
    let mut out = vec![0; frame.encode_len(false)];
    let bare_newline =
        (0..bytes.len()).any(|i| bytes[i] == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
    let streamed = matches!(bytes.first(), Some(b'.' | b';'))
        || bytes
            .windows(3)
            .any(|w| w == b"?\r\n" || w[..2] == *b"\n." || w[..2] == *b"\n;");
    encode(&mut out, frame, false).is_ok() && out[..] == bytes[..] && !bare_newline && !streamed
}

/// A verbatim string (`=`) too short to hold the `xxx:` format the crate wants.
fn short_verbatim(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|i| {
        (i == 0 || bytes[i - 1] == b'\n')
            && bytes[i] == b'='
            && matches!(bytes.get(i + 1), Some(b'0'..=b'3'))
            && bytes.get(i + 2) == Some(&b'\r')
    })
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'*') {
        let (ours, theirs) = (ours_request(data), theirs_request(data));
        // `*0`, `*-1`, any count below 1: Redis reads past it to the next request, and so
        // does slotguard; the crate reads an empty array, a null, or refuses `*-2`.
        let skipped = data.starts_with(b"*0") || data.starts_with(b"*-");
        // Framing that is not written the one way RESP writes it (a bulk's end that is not
        // `\r\n`, which Redis and the crate skip unread; `$02`): slotguard may refuse it,
        // never read it as something else.
        let loose = matches!(&theirs, Verdict::Frame(len, args)
            if ours == Verdict::Refused && Request::from_args(args).raw()[..] != data[..*len]);
        // Where the crate needs more, slotguard may already refuse: an element that is not
        // a `$` string can never make a request (Redis refuses it there too).
        let early = theirs == Verdict::More && ours == Verdict::Refused;
        if !skipped && !loose && !early {
            assert_eq!(ours, theirs, "request {:?}", String::from_utf8_lossy(data));
        }
    }
    let ours = ReplyScanner::default().scan(data);
    match decode_resp3(data) {
        Ok(Some((frame, len))) => {
            let canonical = canonical(&frame, &data[..len]);
            if ours.is_err() && !canonical {
                return;
            }
            assert_eq!(
                ours.ok().flatten(),
                Some(len),
                "reply {:?}",
                String::from_utf8_lossy(data)
            );
            if let Some(theirs) = value(frame).filter(|_| canonical) {
                let parsed = Value::parse(&Bytes::copy_from_slice(&data[..len]));
                assert_eq!(
                    parsed.ok(),
                    Some(theirs),
                    "reply {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
        // The crate wants a verbatim string to hold its `xxx:` format; slotguard passes on a
        // shorter one as a node would have sent it (none does).
        Ok(None) if short_verbatim(data) => {}
        Ok(None) => {
            assert!(
                !matches!(ours, Ok(Some(_))),
                "reply {:?}: ours found a frame in what the crate needs more of",
                String::from_utf8_lossy(data)
            );
        }
        Err(_) => {}
    }
});
