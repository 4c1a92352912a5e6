//! The control plane's one error: what failed, and whether trying again may help.
//!
//! Repairs, moves and the journal return it; `heal` backs off on what may pass and reports
//! the rest, and the mover stops on [`Error::Stopped`]. No decision reads an error's text:
//! the text is for people (logs, the CLI, `SLOTGUARD MIGRATIONS`).

use crate::client::ConnError;

/// A control-plane operation that did not complete.
#[derive(Debug, Clone)]
pub enum Error {
    /// The operator stopped it (Ctrl-C, `SLOTGUARD CANCEL`) at a step boundary; the same
    /// request resumes it.
    Stopped,
    /// A node could not be reached, did not answer in time, or answered an error.
    Node(ConnError),
    /// The journal could not be read or written.
    Journal(String),
    /// etcd refused or did not take a write of the shared journal (`[coordination]`).
    Coordination(Refused),
    /// What was asked cannot be done as asked: a bad slot list, an unknown master, a
    /// slot with two owners.
    Plan(String),
    /// The cluster is not yet in the state a step needs (a migration job not listed, a
    /// node that has not seen it is cut off); looking again later may find it is.
    NotReady(String),
}

impl Error {
    /// Whether the same operation, planned again later, may succeed.
    pub fn may_pass(&self) -> bool {
        match self {
            Error::Stopped | Error::Plan(_) => false,
            Error::Node(e) => e.may_pass(),
            // Not the authority: the work is another proxy's.
            Error::Coordination(Refused::NotAuthority) => false,
            Error::Journal(_) | Error::Coordination(_) | Error::NotReady(_) => true,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Stopped => f.write_str("stopped; run the same command again to resume"),
            Error::Node(e) => e.fmt(f),
            Error::Coordination(e) => e.fmt(f),
            Error::Journal(why) | Error::Plan(why) | Error::NotReady(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

/// Why a write to etcd failed.
#[derive(Debug, Clone)]
pub enum Refused {
    /// This proxy does not hold the authority's lease (any more).
    NotAuthority,
    /// etcd did not answer, or answered an error.
    Etcd(String),
    /// etcd refuses writes: its database reached its space quota (its alarm is raised).
    Full(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotAuthority => f.write_str("this proxy does not hold the authority's lease"),
            Refused::Etcd(e) | Refused::Full(e) => write!(f, "etcd: {e}"),
        }
    }
}

impl From<ConnError> for Error {
    fn from(e: ConnError) -> Error {
        Error::Node(e)
    }
}

impl From<Refused> for Error {
    fn from(e: Refused) -> Error {
        Error::Coordination(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Failure;

    fn node(failure: Failure) -> Error {
        Error::Node(ConnError {
            addr: "10.0.0.1:7000".into(),
            failure,
        })
    }

    /// What heal backs off on and tries again soon, and what it reports and leaves for
    /// longest: decided by the kind, never by the words.
    #[test]
    fn what_may_pass_is_told_by_its_kind() {
        for passes in [
            node(Failure::Timeout),
            node(Failure::Connect("refused".into())),
            node(Failure::Io("connection closed".into())),
            node(Failure::Reply(
                "TRYAGAIN Multiple keys request during rehashing".into(),
            )),
            node(Failure::Reply(
                "ERR I'm not the owner of hash slot 7".into(),
            )),
            Error::Journal("cannot write the journal: disk full".into()),
            Error::Coordination(Refused::Etcd("unavailable".into())),
            Error::NotReady("the copy waits".into()),
        ] {
            assert!(passes.may_pass(), "{passes}");
        }
        for stays in [
            Error::Stopped,
            Error::Plan("no live master is x".into()),
            node(Failure::Auth(
                "WRONGPASS invalid username-password pair".into(),
            )),
            node(Failure::Reply("NOPERM this user has no permissions".into())),
            node(Failure::Protocol("bad frame".into())),
            Error::Coordination(Refused::NotAuthority),
        ] {
            assert!(!stays.may_pass(), "{stays}");
        }
    }

    /// The words people read are the ones they read before the errors were typed.
    #[test]
    fn errors_read_as_before() {
        assert_eq!(
            node(Failure::Timeout).to_string(),
            "10.0.0.1:7000: no reply in time"
        );
        assert_eq!(
            node(Failure::Auth("WRONGPASS x".into())).to_string(),
            "10.0.0.1:7000: AUTH: WRONGPASS x"
        );
        assert_eq!(
            Error::Stopped.to_string(),
            "stopped; run the same command again to resume"
        );
        let reply = ConnError::reply("a:1", b"TRYAGAIN later");
        assert_eq!(reply.code(), Some("TRYAGAIN"));
    }
}
