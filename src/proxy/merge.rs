//! Replies assembled from several parts: a multi-key command split by slot, or a command
//! sent to every master. Each part's reply is decoded and combined into one reply for
//! the client; the first error among the parts is the reply.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::diagnostics::{self, Diagnostic};
use crate::protocol::reply::{self, array_header, Value};

/// How the parts combine.
#[derive(Debug)]
pub enum Merge {
    /// MGET: part `i` answered for the original key positions `positions[i]`.
    MGet {
        positions: Vec<Vec<usize>>,
        total: usize,
    },
    /// `+OK` when every part says so (MSET, FLUSHALL, SCRIPT FLUSH).
    AllOk,
    /// The largest count: the proxy's own (`local`) or any part's (PUBLISH's receivers,
    /// PUBSUB NUMPAT's unique patterns).
    Largest { local: u64 },
    /// The sum of integer replies (DEL, EXISTS, DBSIZE, ...).
    SumInts,
    /// The concatenation of array replies (KEYS).
    Concat,
    /// The union of array replies, each element once (PUBSUB CHANNELS).
    Union,
    /// Name-count pairs summed by name, as an array or a RESP3 map (PUBSUB NUMSUB).
    SumPairs,
    /// RANDOMKEY: parts are (DBSIZE, RANDOMKEY) pairs, one per master; a master's key is
    /// chosen in proportion to its key count.
    RandomKey,
    /// The first reply (SCRIPT LOAD: every master answers the same digest).
    First,
    /// Element-wise maximum of integer arrays (SCRIPT EXISTS: a script some master has
    /// runs anywhere, since the proxy loads it where an EVALSHA finds it missing).
    MaxEach,
    /// INFO: the proxy's own sections (`own`, in Redis's format) and the masters' merged,
    /// those the client asked for.
    Info {
        own: String,
        wanted: super::info::Wanted,
    },
    /// LATENCY and SLOWLOG replies of every master.
    Diagnostic(Diagnostic),
}

/// A reply still being assembled.
pub struct Join {
    parts: Vec<oneshot::Receiver<Bytes>>,
    got: Vec<Bytes>,
    merge: Merge,
    /// The client speaks RESP3: the merged reply is encoded in it.
    resp3: bool,
}

impl Join {
    pub fn new(parts: Vec<oneshot::Receiver<Bytes>>, merge: Merge, resp3: bool) -> Join {
        Join {
            got: Vec::with_capacity(parts.len()),
            parts,
            merge,
            resp3,
        }
    }

    /// Ready once every part has answered.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        while self.got.len() < self.parts.len() {
            let part = &mut self.parts[self.got.len()];
            match Pin::new(part).poll(cx) {
                Poll::Ready(Ok(bytes)) => self.got.push(bytes),
                Poll::Ready(Err(_)) => return Poll::Ready(reply::error(GONE)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(merge(&self.merge, &self.got, self.resp3))
    }
}

/// A random number, from the standard library's randomly keyed hasher.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// Said when a part's reply channel closed without a reply (the proxy is stopping).
pub const GONE: &str = "ERR slotguard: request dropped while shutting down";

/// Merges the parts' replies; `resp3`: the client's protocol (the parts came in it too).
pub(super) fn merge(how: &Merge, parts: &[Bytes], resp3: bool) -> Bytes {
    // The common cases need no decoding: every part `+OK`, or every part an integer.
    match how {
        Merge::AllOk if parts.iter().all(|p| p.first() == Some(&b'+')) => {
            if let Some(first) = parts.first() {
                return first.clone();
            }
        }
        Merge::MGet { positions, total } => {
            if let Some(merged) = mget_verbatim(parts, positions, *total, resp3) {
                return merged;
            }
        }
        Merge::SumInts => {
            let ints: Option<i64> = parts.iter().try_fold(0i64, |sum, p| {
                let digits = p.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
                sum.checked_add(crate::protocol::request::parse_i64(digits)?)
            });
            if let Some(sum) = ints {
                return reply::int(sum);
            }
        }
        _ => {}
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in parts {
        match Value::parse(part) {
            Ok(Value::Error(_)) => return part.clone(),
            Ok(v) => values.push(v),
            Err(e) => return reply::error(&format!("ERR slotguard: bad reply from a node: {e}")),
        }
    }
    match merge_values(how, values, resp3) {
        Some(bytes) => bytes,
        None => reply::error("ERR slotguard: a node answered a part of this command unexpectedly"),
    }
}

/// MGET's parts, each value copied once into its place without decoding. `None` when a
/// part is anything but an array of bulk strings and nils in the client's protocol: the
/// general path answers for those (an error, say).
fn mget_verbatim(
    parts: &[Bytes],
    positions: &[Vec<usize>],
    total: usize,
    resp3: bool,
) -> Option<Bytes> {
    let mut items: Vec<&[u8]> = vec![&[]; total];
    let mut size = 0;
    for (part, positions) in parts.iter().zip(positions) {
        let (count, mut rest) = header(part.strip_prefix(b"*")?)?;
        if usize::try_from(count).ok()? != positions.len() {
            return None;
        }
        for &pos in positions {
            let len = item_len(rest, resp3)?;
            *items.get_mut(pos)? = &rest[..len];
            size += len;
            rest = &rest[len..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    let mut out = BytesMut::with_capacity(size + 24);
    array_header(&mut out, total);
    for item in items {
        out.extend_from_slice(item);
    }
    Some(out.freeze())
}

/// The length of one MGET value at the start of `buf`: a bulk string or the protocol's
/// nil.
fn item_len(buf: &[u8], resp3: bool) -> Option<usize> {
    if resp3 && buf.starts_with(b"_\r\n") {
        return Some(3);
    }
    let (len, data) = header(buf.strip_prefix(b"$")?)?;
    let head = buf.len() - data.len();
    if len == -1 && !resp3 {
        return Some(head);
    }
    let end = head + usize::try_from(len).ok()? + 2;
    (buf.get(end - 2..end)? == b"\r\n").then_some(end)
}

/// A header's number and what follows its line; `None` unless the number is written as
/// Redis writes it (no sign but `-1`'s, no leading zero), so a copied header is the one
/// encoding it again would give.
fn header(buf: &[u8]) -> Option<(i64, &[u8])> {
    let eol = buf.iter().position(|&b| b == b'\r')?;
    let rest = buf[eol..].strip_prefix(b"\r\n")?;
    let digits = &buf[..eol];
    let canonical = digits == b"0"
        || digits == b"-1"
        || digits.first().is_some_and(|d| (b'1'..=b'9').contains(d));
    if !canonical {
        return None;
    }
    Some((crate::protocol::request::parse_i64(digits)?, rest))
}

/// For the fuzz target and tests: the verbatim MGET merge, when it applies, answers
/// exactly what decoding and encoding again would.
pub(super) fn mget_paths_agree(
    parts: &[Bytes],
    positions: Vec<Vec<usize>>,
    total: usize,
    resp3: bool,
) -> bool {
    let Some(verbatim) = mget_verbatim(parts, &positions, total, resp3) else {
        return true;
    };
    let Ok(values) = parts
        .iter()
        .map(Value::parse)
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    merge_values(&Merge::MGet { positions, total }, values, resp3) == Some(verbatim)
}

fn merge_values(how: &Merge, values: Vec<Value>, resp3: bool) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match how {
        Merge::MGet { positions, total } => {
            let mut slots: Vec<Value> = vec![Value::Nil; *total];
            for (value, positions) in values.into_iter().zip(positions) {
                let Value::Array(items) = value else {
                    return None;
                };
                if items.len() != positions.len() {
                    return None;
                }
                for (item, &pos) in items.into_iter().zip(positions) {
                    slots[pos] = item;
                }
            }
            Value::Array(slots).encode_for(&mut out, resp3);
        }
        Merge::AllOk | Merge::First => values.into_iter().next()?.encode_for(&mut out, resp3),
        Merge::Largest { local } => {
            let mut largest = *local as i64;
            for v in &values {
                largest = largest.max(v.as_int()?);
            }
            return Some(reply::int(largest));
        }
        Merge::SumInts => {
            let mut sum = 0i64;
            for v in &values {
                sum = sum.checked_add(v.as_int()?)?;
            }
            return Some(reply::int(sum));
        }
        Merge::Concat => {
            let mut all = Vec::new();
            for v in values {
                let Value::Array(items) = v else { return None };
                all.extend(items);
            }
            Value::Array(all).encode_for(&mut out, resp3);
        }
        Merge::Union => {
            let mut all: Vec<Value> = Vec::new();
            for v in values {
                let Value::Array(items) = v else { return None };
                for item in items {
                    if !all.contains(&item) {
                        all.push(item);
                    }
                }
            }
            Value::Array(all).encode_for(&mut out, resp3);
        }
        Merge::SumPairs => {
            let mut sums: Vec<(Value, i64)> = Vec::new();
            let mut map = false;
            for v in values {
                let pairs: Vec<(Value, Value)> = match v {
                    Value::Map(pairs) => {
                        map = true;
                        pairs
                    }
                    Value::Array(items) if items.len() % 2 == 0 => {
                        let mut items = items.into_iter();
                        std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
                    }
                    _ => return None,
                };
                for (name, count) in pairs {
                    let count = count.as_int()?;
                    match sums.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, sum)) => *sum += count,
                        None => sums.push((name, count)),
                    }
                }
            }
            if map {
                out.extend_from_slice(format!("%{}\r\n", sums.len()).as_bytes());
                for (name, sum) in sums {
                    name.encode_for(&mut out, resp3);
                    Value::Int(sum).encode_for(&mut out, resp3);
                }
            } else {
                let flat = sums
                    .into_iter()
                    .flat_map(|(name, sum)| [name, Value::Int(sum)])
                    .collect();
                Value::Array(flat).encode_for(&mut out, resp3);
            }
        }
        Merge::RandomKey => {
            let pairs: Vec<(i64, Value)> = values
                .chunks_exact(2)
                .map(|pair| Some((pair[0].as_int()?.max(0), pair[1].clone())))
                .collect::<Option<_>>()?;
            let total: i64 = pairs.iter().map(|(n, _)| n).sum();
            let mut pick = if total > 0 {
                random() % total as u64
            } else {
                0
            } as i64;
            // A master that emptied between its count and its pick gives no key: then
            // any other's.
            let chosen = pairs
                .iter()
                .find(|(n, key)| {
                    pick -= n;
                    pick < 0 && *key != Value::Nil
                })
                .or_else(|| pairs.iter().find(|(_, key)| *key != Value::Nil))
                .map_or(Value::Nil, |(_, key)| key.clone());
            chosen.encode_for(&mut out, resp3);
        }
        Merge::MaxEach => {
            let mut maxes: Option<Vec<i64>> = None;
            for v in &values {
                let ints: Option<Vec<i64>> = v.as_array()?.iter().map(Value::as_int).collect();
                let ints = ints?;
                maxes = Some(match maxes {
                    None => ints,
                    Some(m) => m.iter().zip(&ints).map(|(a, b)| *a.max(b)).collect(),
                });
            }
            Value::Array(maxes?.into_iter().map(Value::Int).collect()).encode_for(&mut out, resp3);
        }
        Merge::Info { own, wanted } => {
            let texts: Option<Vec<&str>> = values.iter().map(Value::as_str).collect();
            let text = super::info::merge(wanted, own, &texts?);
            reply::text(&mut out, text.as_bytes(), resp3);
        }
        Merge::Diagnostic(how) => match diagnostics::merge(how, values)? {
            Value::Bulk(text) => reply::text(&mut out, &text, resp3),
            merged => merged.encode_for(&mut out, resp3),
        },
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(how: Merge, parts: &[&'static [u8]]) -> Bytes {
        let parts: Vec<Bytes> = parts.iter().map(|p| Bytes::from_static(p)).collect();
        merge(&how, &parts, false)
    }

    /// The same for a RESP3 client (whose parts came over RESP3 connections).
    fn merged3(how: Merge, parts: &[&'static [u8]]) -> Bytes {
        let parts: Vec<Bytes> = parts.iter().map(|p| Bytes::from_static(p)).collect();
        merge(&how, &parts, true)
    }

    #[test]
    fn mget_values_are_copied_as_decoding_would_place_them() {
        let parts = |ps: &[&'static [u8]]| -> Vec<Bytes> {
            ps.iter().map(|p| Bytes::from_static(p)).collect()
        };
        let two = vec![vec![2, 0], vec![1]];
        let resp2 = parts(&[b"*2\r\n$1\r\na\r\n$-1\r\n", b"*1\r\n$0\r\n\r\n"]);
        assert!(mget_verbatim(&resp2, &two, 3, false).is_some());
        assert!(mget_paths_agree(&resp2, two.clone(), 3, false));
        assert_eq!(
            &merge(
                &Merge::MGet {
                    positions: two.clone(),
                    total: 3
                },
                &resp2,
                false
            )[..],
            b"*3\r\n$-1\r\n$0\r\n\r\n$1\r\na\r\n"
        );
        // A RESP2 nil for a RESP3 client, an error, a short part: the general path.
        assert!(mget_verbatim(&resp2, &two, 3, true).is_none());
        assert!(mget_paths_agree(&resp2, two.clone(), 3, true));
        let error = parts(&[b"-TRYAGAIN x\r\n", b"*1\r\n$0\r\n\r\n"]);
        assert!(mget_verbatim(&error, &two, 3, false).is_none());
        let short = parts(&[b"*2\r\n$1\r\na\r\n", b"*1\r\n$0\r\n\r\n"]);
        assert!(mget_verbatim(&short, &two, 3, false).is_none());
        let padded = parts(&[b"*1\r\n$01\r\na\r\n", b"*1\r\n$0\r\n\r\n"]);
        assert!(mget_verbatim(&padded, &[vec![0], vec![1]], 2, false).is_none());
        let long = parts(&[b"*1\r\n$1\r\na\r\n$1\r\nb\r\n", b"*1\r\n$0\r\n\r\n"]);
        assert!(mget_verbatim(&long, &[vec![0], vec![1]], 2, false).is_none());
    }

    #[test]
    fn randomkey_picks_masters_in_proportion_to_their_keys() {
        let only_second: &[&[u8]] = &[b":0\r\n", b"$-1\r\n", b":5\r\n", b"$1\r\nb\r\n"];
        for _ in 0..20 {
            assert_eq!(&merged(Merge::RandomKey, only_second)[..], b"$1\r\nb\r\n");
        }
        let both: &[&[u8]] = &[b":1\r\n", b"$1\r\na\r\n", b":1\r\n", b"$1\r\nb\r\n"];
        let picks: Vec<Bytes> = (0..200).map(|_| merged(Merge::RandomKey, both)).collect();
        assert!(picks.iter().any(|p| &p[..] == b"$1\r\na\r\n"));
        assert!(picks.iter().any(|p| &p[..] == b"$1\r\nb\r\n"));
        // Counted, then emptied before its pick: another master's key.
        let emptied: &[&[u8]] = &[b":9\r\n", b"$-1\r\n", b":1\r\n", b"$1\r\nb\r\n"];
        assert_eq!(&merged(Merge::RandomKey, emptied)[..], b"$1\r\nb\r\n");
    }

    #[test]
    fn resp3_clients_get_resp3_nulls_maps_and_text() {
        let how = Merge::MGet {
            positions: vec![vec![0, 2], vec![1]],
            total: 3,
        };
        let got = merged3(how, &[b"*2\r\n$1\r\na\r\n_\r\n", b"*1\r\n_\r\n"]);
        assert_eq!(&got[..], b"*3\r\n$1\r\na\r\n_\r\n_\r\n");
        assert_eq!(
            &merged3(
                Merge::RandomKey,
                &[b":0\r\n", b"_\r\n", b":0\r\n", b"_\r\n"]
            )[..],
            b"_\r\n"
        );
        assert_eq!(
            &merged(Merge::RandomKey, &[b":0\r\n", b"$-1\r\n"])[..],
            b"$-1\r\n"
        );
        let got = merged3(
            Merge::SumPairs,
            &[b"%1\r\n$1\r\nc\r\n:1\r\n", b"%1\r\n$1\r\nc\r\n:2\r\n"],
        );
        assert_eq!(&got[..], b"%1\r\n$1\r\nc\r\n:3\r\n");
        let own = "# Proxy\r\nslotguard_version:0\r\n".to_string();
        let wanted =
            super::super::info::Wanted::from_request(&crate::protocol::Request::from_args(&[
                "INFO",
            ]));
        let info = || Merge::Info {
            own: own.clone(),
            wanted: wanted.clone(),
        };
        let text = "# Keyspace\r\ndb0:keys=1\r\n\r\n# Proxy\r\nslotguard_version:0\r\n";
        let got = merged3(info(), &[b"=28\r\ntxt:# Keyspace\r\ndb0:keys=1\r\n\r\n"]);
        let want = format!("={}\r\ntxt:{text}\r\n", text.len() + 4);
        assert_eq!(String::from_utf8_lossy(&got), want);
        let got = merged(info(), &[b"$24\r\n# Keyspace\r\ndb0:keys=1\r\n\r\n"]);
        let want = format!("${}\r\n{text}\r\n", text.len());
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    #[test]
    fn mget_restores_the_client_order() {
        let how = Merge::MGet {
            positions: vec![vec![0, 2], vec![1]],
            total: 3,
        };
        let got = merged(how, &[b"*2\r\n$1\r\na\r\n$-1\r\n", b"*1\r\n$1\r\nb\r\n"]);
        assert_eq!(&got[..], b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n");
    }

    #[test]
    fn pubsub_counts_are_summed_by_name() {
        let arrays = merged(
            Merge::SumPairs,
            &[
                b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:0\r\n",
                b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:5\r\n",
            ],
        );
        assert_eq!(&arrays[..], b"*4\r\n$1\r\na\r\n:3\r\n$1\r\nb\r\n:5\r\n");
        let maps = merged(
            Merge::SumPairs,
            &[b"%1\r\n$1\r\na\r\n:1\r\n", b"%1\r\n$1\r\na\r\n:2\r\n"],
        );
        assert_eq!(&maps[..], b"%1\r\n$1\r\na\r\n:3\r\n");
        let union = merged(
            Merge::Union,
            &[b"*1\r\n$1\r\na\r\n", b"*2\r\n$1\r\nb\r\n$1\r\na\r\n"],
        );
        assert_eq!(&union[..], b"*2\r\n$1\r\na\r\n$1\r\nb\r\n");
    }

    #[test]
    fn sums_and_errors() {
        assert_eq!(
            &merged(Merge::SumInts, &[b":2\r\n", b":3\r\n"])[..],
            b":5\r\n"
        );
        assert_eq!(
            &merged(Merge::SumInts, &[b":2\r\n", b"-ERR boom\r\n"])[..],
            b"-ERR boom\r\n"
        );
        assert!(merged(Merge::SumInts, &[b"+OK\r\n"]).starts_with(b"-ERR slotguard"));
    }

    #[test]
    fn script_exists_on_any_master_is_enough() {
        let got = merged(
            Merge::MaxEach,
            &[b"*2\r\n:0\r\n:0\r\n", b"*2\r\n:1\r\n:0\r\n"],
        );
        assert_eq!(&got[..], b"*2\r\n:1\r\n:0\r\n");
    }
}
