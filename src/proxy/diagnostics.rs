//! LATENCY and SLOWLOG over the whole cluster: every master is asked, and their answers
//! are merged into what one node holding all of the keys would say.
//!
//! - `LATENCY LATEST`: one row per event, with the latest sample of any master and the
//!   highest maximum.
//! - `LATENCY HISTORY event`: every master's samples, oldest first.
//! - `LATENCY HISTOGRAM`: per command, calls and bucket counts summed. A command the proxy
//!   sends to every master for one client call (CONFIG SET, FLUSHALL, SCRIPT LOAD, ...)
//!   was counted once by each of them: its figures are the highest of any master, not
//!   their sum.
//! - `LATENCY RESET`: the events reset, summed. `LATENCY DOCTOR` and `GRAPH`: each
//!   master's text under its address.
//! - `SLOWLOG GET [n]`: the `n` most recent entries of all masters, newest first. Entry ids
//!   are each node's own, so two entries may share one. `SLOWLOG LEN`: summed.

use crate::protocol::reply::Value;

/// Which LATENCY or SLOWLOG reply is being merged.
#[derive(Debug)]
pub enum Diagnostic {
    Latest,
    History,
    Histogram,
    /// DOCTOR and GRAPH: texts, one per master, in the order of `nodes`.
    Texts {
        nodes: Vec<String>,
    },
    /// SLOWLOG GET: at most `count` entries (`None`: all).
    Slowlog {
        count: Option<usize>,
    },
}

/// Commands one client call sends to every master, by their names in LATENCY HISTOGRAM.
const FANNED_OUT: &[&str] = &[
    "config|set",
    "config|resetstat",
    "config|rewrite",
    "flushall",
    "flushdb",
    "dbsize",
    "keys",
    "info",
    "randomkey",
    "script|load",
    "script|flush",
    "script|exists",
    "script|kill",
    "function|load",
    "function|delete",
    "function|flush",
    "function|restore",
    "function|kill",
    "latency|latest",
    "latency|history",
    "latency|histogram",
    "latency|reset",
    "latency|doctor",
    "latency|graph",
    "slowlog|get",
    "slowlog|len",
    "slowlog|reset",
    "pubsub|channels",
    "pubsub|numsub",
    "pubsub|numpat",
    "pubsub|shardchannels",
    "pubsub|shardnumsub",
];

/// The merged reply, or `None` when a master answered in an unexpected shape.
pub fn merge(how: &Diagnostic, values: Vec<Value>) -> Option<Value> {
    match how {
        Diagnostic::Latest => latest(values),
        Diagnostic::History => history(values),
        Diagnostic::Histogram => histogram(values),
        Diagnostic::Texts { nodes } => texts(nodes, values),
        Diagnostic::Slowlog { count } => slowlog(values, *count),
    }
}

fn latest(values: Vec<Value>) -> Option<Value> {
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for v in values {
        let Value::Array(events) = v else { return None };
        for event in events {
            let Value::Array(row) = event else {
                return None;
            };
            let [name, time, last, max] = &row[..] else {
                return None;
            };
            let (time, max) = (time.as_int()?, max.as_int()?);
            last.as_int()?;
            match rows.iter_mut().find(|r| r[0] == *name) {
                None => rows.push(row),
                Some(seen) => {
                    let seen_max = seen[3].as_int()?;
                    if time > seen[1].as_int()? {
                        *seen = row;
                    }
                    seen[3] = Value::Int(max.max(seen_max));
                }
            }
        }
    }
    Some(Value::Array(rows.into_iter().map(Value::Array).collect()))
}

fn history(values: Vec<Value>) -> Option<Value> {
    let mut samples: Vec<(i64, Value)> = Vec::new();
    for v in values {
        let Value::Array(rows) = v else { return None };
        for row in rows {
            let time = row.as_array()?.first()?.as_int()?;
            samples.push((time, row));
        }
    }
    samples.sort_by_key(|(time, _)| *time);
    Some(Value::Array(samples.into_iter().map(|(_, v)| v).collect()))
}

/// A RESP3 map, or a RESP2 array of alternating keys and values, as pairs.
fn pairs(v: Value) -> Option<Vec<(Value, Value)>> {
    match v {
        Value::Map(pairs) => Some(pairs),
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut items = items.into_iter();
            Some(std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect())
        }
        _ => None,
    }
}

/// One command's figures: calls, and the count in each bucket by its upper bound.
struct Figures {
    name: Value,
    calls: i64,
    buckets: Vec<(i64, i64)>,
}

fn histogram(values: Vec<Value>) -> Option<Value> {
    let mut commands: Vec<Figures> = Vec::new();
    for v in values {
        for (name, figures) in pairs(v)? {
            let fanned = name.as_str().is_some_and(|n| FANNED_OUT.contains(&n));
            let calls = figures.field("calls")?.as_int()?;
            let buckets: Vec<(i64, i64)> = pairs(figures.field("histogram_usec")?.clone())?
                .into_iter()
                .map(|(bound, count)| Some((bound.as_int()?, count.as_int()?)))
                .collect::<Option<_>>()?;
            let Some(seen) = commands.iter_mut().find(|c| c.name == name) else {
                commands.push(Figures {
                    name,
                    calls,
                    buckets,
                });
                continue;
            };
            let add = |a: i64, b: i64| if fanned { a.max(b) } else { a + b };
            seen.calls = add(seen.calls, calls);
            for (bound, count) in buckets {
                match seen.buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, c)) => *c = add(*c, count),
                    None => seen.buckets.push((bound, count)),
                }
            }
        }
    }
    let commands = commands
        .into_iter()
        .map(|mut c| {
            c.buckets.sort_unstable();
            let buckets = c
                .buckets
                .into_iter()
                .map(|(bound, count)| (Value::Int(bound), Value::Int(count)))
                .collect();
            let figures = vec![
                (bulk("calls"), Value::Int(c.calls)),
                (bulk("histogram_usec"), Value::Map(buckets)),
            ];
            (c.name, Value::Map(figures))
        })
        .collect();
    Some(Value::Map(commands))
}

fn texts(nodes: &[String], values: Vec<Value>) -> Option<Value> {
    let mut out = String::new();
    for (node, v) in nodes.iter().zip(values) {
        out.push_str(&format!("# {node}\n{}\n", v.as_str()?));
    }
    Some(Value::Bulk(out.into()))
}

fn slowlog(values: Vec<Value>, count: Option<usize>) -> Option<Value> {
    let mut entries: Vec<(i64, i64, Value)> = Vec::new();
    for v in values {
        let Value::Array(rows) = v else { return None };
        for row in rows {
            let fields = row.as_array()?;
            let (id, time) = (fields.first()?.as_int()?, fields.get(1)?.as_int()?);
            entries.push((time, id, row));
        }
    }
    entries.sort_by_key(|&(time, id, _)| std::cmp::Reverse((time, id)));
    entries.truncate(count.unwrap_or(usize::MAX));
    Some(Value::Array(entries.into_iter().map(|(.., v)| v).collect()))
}

fn bulk(text: &'static str) -> Value {
    Value::Bulk(bytes::Bytes::from_static(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(frame: &'static [u8]) -> Value {
        Value::parse(&Bytes::from_static(frame)).unwrap()
    }

    fn encoded(v: Value, resp3: bool) -> String {
        let mut out = bytes::BytesMut::new();
        v.encode_for(&mut out, resp3);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn histograms_sum_but_a_fanned_out_command_counts_once() {
        let a = parse(b"*4\r\n$3\r\nset\r\n*4\r\n$5\r\ncalls\r\n:2\r\n$14\r\nhistogram_usec\r\n*4\r\n:1\r\n:1\r\n:2\r\n:2\r\n$16\r\nconfig|resetstat\r\n*4\r\n$5\r\ncalls\r\n:1\r\n$14\r\nhistogram_usec\r\n*2\r\n:8\r\n:1\r\n");
        let b = parse(b"%2\r\n$3\r\nset\r\n%2\r\n$5\r\ncalls\r\n:1\r\n$14\r\nhistogram_usec\r\n%1\r\n:4\r\n:1\r\n$16\r\nconfig|resetstat\r\n%2\r\n$5\r\ncalls\r\n:1\r\n$14\r\nhistogram_usec\r\n%1\r\n:16\r\n:1\r\n");
        let merged = histogram(vec![a, b]).unwrap();
        let set = merged.field("set").unwrap();
        assert_eq!(set.field("calls"), Some(&Value::Int(3)));
        assert_eq!(
            encoded(set.field("histogram_usec").unwrap().clone(), false),
            "*6\r\n:1\r\n:1\r\n:2\r\n:2\r\n:4\r\n:1\r\n"
        );
        let config = merged.field("config|resetstat").unwrap();
        assert_eq!(config.field("calls"), Some(&Value::Int(1)));
        assert!(encoded(merged, true).starts_with("%2\r\n$3\r\nset\r\n%2\r\n"));
    }

    #[test]
    fn latest_keeps_the_newest_sample_and_the_highest_max() {
        let a = parse(b"*1\r\n*4\r\n$7\r\ncommand\r\n:100\r\n:5\r\n:50\r\n");
        let b = parse(b"*2\r\n*4\r\n$7\r\ncommand\r\n:200\r\n:7\r\n:9\r\n*4\r\n$4\r\nfork\r\n:1\r\n:1\r\n:1\r\n");
        let merged = latest(vec![a, b]).unwrap();
        assert_eq!(
            encoded(merged, false),
            "*2\r\n*4\r\n$7\r\ncommand\r\n:200\r\n:7\r\n:50\r\n*4\r\n$4\r\nfork\r\n:1\r\n:1\r\n:1\r\n"
        );
    }

    #[test]
    fn slowlog_is_newest_first_and_cut_to_count() {
        let entry = |id: i64, time: i64| {
            Value::Array(vec![
                Value::Int(id),
                Value::Int(time),
                Value::Int(10),
                Value::Array(vec![bulk("get")]),
                bulk("127.0.0.1:1"),
                bulk(""),
            ])
        };
        let a = Value::Array(vec![entry(1, 30), entry(0, 10)]);
        let b = Value::Array(vec![entry(0, 20)]);
        let got = slowlog(vec![a, b], Some(2)).unwrap();
        let times: Vec<i64> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_array().unwrap()[1].as_int().unwrap())
            .collect();
        assert_eq!(times, [30, 20]);
        assert!(slowlog(vec![Value::Int(1)], None).is_none());
    }
}
