//! How many of the proxy's clients listen to each channel and pattern.
//!
//! A node's `PUBLISH` counts the subscribers connected to that node, and the proxy's
//! subscriptions are spread over the masters, so a node's count is not what one Redis
//! would answer. The proxy counts its own subscribers here and answers `PUBLISH` with the
//! larger of the two counts: every client of this proxy that receives the message is
//! counted, as on one node.

use std::sync::Mutex;

use bytes::Bytes;
use rustc_hash::FxHashMap;

/// Subscriptions of the proxy's clients, counted by channel and by pattern.
#[derive(Default)]
pub struct Subscribers {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    channels: FxHashMap<Bytes, u64>,
    patterns: FxHashMap<Bytes, u64>,
}

impl Subscribers {
    /// A client subscribed to `name` (a pattern when `pattern`).
    pub fn add(&self, pattern: bool, name: &Bytes) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let map = if pattern {
            &mut counts.patterns
        } else {
            &mut counts.channels
        };
        *map.entry(name.clone()).or_default() += 1;
    }

    /// A client unsubscribed from `name`, or went away.
    pub fn remove(&self, pattern: bool, name: &Bytes) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let map = if pattern {
            &mut counts.patterns
        } else {
            &mut counts.channels
        };
        if let Some(n) = map.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                map.remove(name);
            }
        }
    }

    /// How many different patterns the proxy's clients subscribe to (`PUBSUB NUMPAT`).
    pub fn patterns(&self) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.patterns.len() as u64
    }

    /// The clients a message on `channel` reaches: its subscribers, and every pattern
    /// subscription that matches it.
    pub fn receivers(&self, channel: &[u8]) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let direct = counts.channels.get(channel).copied().unwrap_or(0);
        let by_pattern: u64 = counts
            .patterns
            .iter()
            .filter(|(p, _)| glob(p, channel))
            .map(|(_, n)| n)
            .sum();
        direct + by_pattern
    }
}

/// Redis's glob-style match (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as PSUBSCRIBE uses it.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it now stands for.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if let Some((width, matched)) = one(pattern, p, text[t]) {
            if matched {
                p += width;
                t += 1;
                continue;
            }
        } else if pattern.get(p) == Some(&b'*') {
            star = Some((p, t));
            p += 1;
            continue;
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one text byte against the pattern element at `p`: its width and whether it
/// matched; `None` at a `*` or the pattern's end.
fn one(pattern: &[u8], p: usize, c: u8) -> Option<(usize, bool)> {
    match *pattern.get(p)? {
        b'*' => None,
        b'?' => Some((1, true)),
        b'\\' if p + 1 < pattern.len() => Some((2, pattern[p + 1] == c)),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            while i < pattern.len() && pattern[i] != b']' {
                if pattern[i] == b'\\' && i + 1 < pattern.len() {
                    matched |= pattern[i + 1] == c;
                    i += 2;
                } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']'
                {
                    let (lo, hi) = (
                        pattern[i].min(pattern[i + 2]),
                        pattern[i].max(pattern[i + 2]),
                    );
                    matched |= (lo..=hi).contains(&c);
                    i += 3;
                } else {
                    matched |= pattern[i] == c;
                    i += 1;
                }
            }
            // An unclosed `[` runs to the pattern's end, as in Redis.
            let width = (i + 1).min(pattern.len()) - p;
            Some((width.max(1), matched != negate))
        }
        other => Some((1, other == c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_in_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("chan.*", "chan.foo", true),
            ("chan.*", "chan.", true),
            ("chan.*", "chan", false),
            ("*", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("news.[ab]*", "news.bx", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                glob(pattern.as_bytes(), text.as_bytes()),
                *want,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn receivers_count_channels_and_matching_patterns() {
        let s = Subscribers::default();
        let ch = Bytes::from_static(b"chan1");
        s.add(false, &ch);
        s.add(false, &ch);
        s.add(true, &Bytes::from_static(b"chan*"));
        s.add(true, &Bytes::from_static(b"other*"));
        assert_eq!(s.receivers(b"chan1"), 3);
        assert_eq!(s.receivers(b"chan2"), 1);
        s.remove(false, &ch);
        s.remove(false, &ch);
        s.remove(false, &ch); // one too many changes nothing
        assert_eq!(s.receivers(b"chan1"), 1);
    }
}
