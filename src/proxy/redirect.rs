//! What a node's error reply means to the proxy: a redirect to follow (`MOVED`, `ASK`), a
//! reason to wait and try again (`TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, ...), or an answer
//! for the client. Also what a client is told when it waited too long.

use std::time::Duration;

/// `ASKING`, sent before a request that was answered with ASK.
pub const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// Why a request waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Behind earlier requests for the same slot.
    Queued,
    /// No node owns the slot in the current map.
    NoOwner,
    /// The owner could not be reached.
    Unreachable(String),
    /// The owner answered CLUSTERDOWN.
    ClusterDown(String),
    /// A multi-key request met a slot in migration.
    TryAgain,
    /// The owner is loading, or was a master no more.
    NotReady(String),
    /// Redirects did not settle within the hop limit.
    Redirects,
    /// The authority holds the slot while it repairs it.
    Repair,
}

impl Reason {
    /// The error a client gets when its request waited too long.
    pub fn error(&self, slot: Option<u16>, waited: Duration) -> String {
        let slot = match slot {
            Some(s) => format!("slot {s}"),
            None => "keyless request".to_string(),
        };
        let secs = waited.as_secs_f64();
        match self {
            Reason::TryAgain => {
                format!("TRYAGAIN {slot} stayed in migration (held {secs:.1}s)")
            }
            Reason::ClusterDown(text) => {
                format!("CLUSTERDOWN {slot} is not served (held {secs:.1}s): {text}")
            }
            Reason::NoOwner | Reason::Queued => {
                format!("CLUSTERDOWN {slot} has no owner (held {secs:.1}s)")
            }
            Reason::Unreachable(why) => {
                format!("CLUSTERDOWN {slot} has no reachable owner (held {secs:.1}s): {why}")
            }
            Reason::NotReady(why) => {
                format!("CLUSTERDOWN {slot} owner is not ready (held {secs:.1}s): {why}")
            }
            Reason::Redirects => {
                format!("CLUSTERDOWN {slot} redirects did not settle (held {secs:.1}s)")
            }
            Reason::Repair => {
                format!("TRYAGAIN {slot} has no owner: repair in progress (held {secs:.1}s)")
            }
        }
    }
}

/// What an error reply asks the proxy to do instead of passing it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, addr: String },
    Ask { slot: u16, addr: String },
    Hold(Reason),
}

/// Reads an error reply; `None` when it should go to the client as it is.
pub fn classify(frame: &[u8], from: &str) -> Option<Redirect> {
    let text = frame.strip_prefix(b"-")?;
    let text = text.strip_suffix(b"\r\n").unwrap_or(text);
    let text = std::str::from_utf8(text).ok()?;
    let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
    let target = |rest: &str| -> Option<(u16, String)> {
        let (slot, addr) = rest.split_once(' ')?;
        let slot = slot.parse().ok().filter(|&s: &u16| s < 16384)?;
        // An empty host (":7001") means the host this connection already talks to.
        let addr = match addr.strip_prefix(':') {
            Some(port) => format!("{}:{port}", from.rsplit_once(':').map_or(from, |(h, _)| h)),
            None => addr.to_string(),
        };
        Some((slot, addr))
    };
    Some(match code {
        "MOVED" => {
            let (slot, addr) = target(rest)?;
            Redirect::Moved { slot, addr }
        }
        "ASK" => {
            let (slot, addr) = target(rest)?;
            Redirect::Ask { slot, addr }
        }
        "TRYAGAIN" => Redirect::Hold(Reason::TryAgain),
        "CLUSTERDOWN" => Redirect::Hold(Reason::ClusterDown(text.to_string())),
        "LOADING" | "MASTERDOWN" | "READONLY" => {
            Redirect::Hold(Reason::NotReady(format!("{from}: {text}")))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_cluster_errors() {
        let from = "10.0.0.1:7000";
        assert_eq!(
            classify(b"-MOVED 3999 127.0.0.1:6381\r\n", from),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            classify(b"-ASK 12 :7002\r\n", from),
            Some(Redirect::Ask {
                slot: 12,
                addr: "10.0.0.1:7002".into()
            })
        );
        assert_eq!(
            classify(
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                from
            ),
            Some(Redirect::Hold(Reason::TryAgain))
        );
        assert!(matches!(
            classify(b"-CLUSTERDOWN Hash slot not served\r\n", from),
            Some(Redirect::Hold(Reason::ClusterDown(_)))
        ));
        assert_eq!(classify(b"-ERR wrong number of arguments\r\n", from), None);
        assert_eq!(
            classify(b"-WRONGTYPE Operation against a key\r\n", from),
            None
        );
        assert_eq!(classify(b"-MOVED 99999 h:1\r\n", from), None);
        assert_eq!(classify(b"-MOVED\r\n", from), None);
    }
}
